#!/usr/bin/env python3
"""Records what Hugging Face transformers renders for the tool-calling chat
templates in runtime/src/engine/chat_template/testdata/ (Hermes/Qwen, Llama 3
JSON and Mistral styles) on the conversations of cases.json, into
expected.json. The Rust tests render the same and must match byte for byte:
transformers' `apply_chat_template` is what the models were trained with.

Usage: pip install transformers==4.57.1 && scripts/record-chat-templates.py
"""

import json
import pathlib

from transformers.utils.chat_template_utils import render_jinja_template

DIR = pathlib.Path(__file__).resolve().parent.parent / "runtime/src/engine/chat_template/testdata"
SPECIAL = {"bos_token": "<s>", "eos_token": "</s>"}


def main():
    spec = json.loads((DIR / "cases.json").read_text())
    out = {}
    for template in sorted(DIR.glob("*.jinja")):
        source = template.read_text()
        rendered = {}
        for name, case in spec["cases"].items():
            texts, _ = render_jinja_template(
                conversations=[case["messages"]],
                tools=spec["tools"] if case["tools"] else None,
                chat_template=source,
                add_generation_prompt=True,
                **SPECIAL,
            )
            rendered[name] = texts[0]
        out[template.stem] = rendered
    (DIR / "expected.json").write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
