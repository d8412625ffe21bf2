#!/usr/bin/env python3
"""Token ids llama.cpp's llama-server gives for a set of texts, on the GGUFs the tokenizer tests use.

    scripts/record-llamacpp-tokenize.py [--out runtime/tests/data/gguf/tokenize.llamacpp.json]

Why: when a model directory has no tokenizer.json, the runtime rebuilds the tokenizer from the GGUF's
metadata (runtime/src/checkpoint/gguf_tokenizer.rs), and llama.cpp is the reference for what that
metadata means. runtime/tests/integration/gguf_tokenizer.rs compares the runtime's ids with the ones recorded here:

  * spm-tiny: runtime/tests/data/gguf/spm-tiny.gguf (scripts/make-spm-gguf-testdata.py), a
    SentencePiece ("llama") vocabulary with control and user-defined tokens;
  * llama-gqa-<pre>: the llama-gqa fixture's byte-level BPE vocabulary written by
    scripts/fixture-to-gguf.py --type f32 --pre <pre>, for each pre-tokenizer name in PRES, so the
    split regexes the runtime picks for tokenizer.ggml.pre are checked against llama.cpp's own.

Each file's sha256 is recorded; the test regenerates the fixture GGUFs and checks the digest first, so
the comparison is with llama.cpp on the very same bytes.

How: for each file, `llama-server -m GGUF -t 2 -np 1 -c 512` is started and every text of TEXTS is
sent to POST /tokenize with {"content": text, "add_special": false|true, "parse_special": true}
(special tokens written in the text are matched, as the runtime does). Output:

    {"llama_cpp": "<version>", "texts": [...], "files": [{"name", "gguf_sha256", "generator",
     "fixture"?, "args"?, "ids": [[...] per text], "ids_add_special": [[...] per text],
     "transformers"?: {"version", "ids": [...], "decoded": [...]}}]}

transformers (--transformers-python, default /var/cache/appliance-py/bin/python when it exists) is a
second opinion, recorded and summarised, not asserted by the tests: its GGUF tokenizer loader
(transformers.integrations.gguf) gives `ids` for add_special_tokens=False and `decoded`, the
decoding of llama.cpp's ids with special tokens kept. Known difference: for SentencePiece it
prefixes "▁" only at the start of the text, llama.cpp after every special token too.

Exit status: 0; 1 when llama-server fails; 2 on bad input.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("record_llamacpp_ids", REPO / "scripts" / "record-llamacpp-ids.py")
ids_mod = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ids_mod)

CONVERTER = REPO / "scripts" / "fixture-to-gguf.py"
SPM_GGUF = REPO / "runtime" / "tests" / "data" / "gguf" / "spm-tiny.gguf"
DEFAULT_OUT = REPO / "runtime" / "tests" / "data" / "gguf" / "tokenize.llamacpp.json"
DEFAULT_TRANSFORMERS_PYTHON = Path("/var/cache/appliance-py/bin/python")
FIXTURE = "llama-gqa"
PRES = ("gpt-2", "default", "llama-bpe", "qwen2", "starcoder", "falcon")

TEXTS = [
    "",
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    " leading space",
    "  two leading spaces and trailing   ",
    "   ",
    "\n\n\n",
    "tabs\tand\nnewlines\r\n\n  indented\n\t\tx",
    "digits 1234567 and 3.14159, 1,000,000 and 2024-06-01",
    "don't you'll I'M WE'RE she's it'\u017f",
    "na\u00efve caf\u00e9, Gr\u00fc\u00dfe aus M\u00fcnchen, \u0417\u0434\u0440\u0430\u0432\u0441\u0442\u0432\u0443\u0439\u0442\u0435, "
    "\u6771\u4eac\u30bf\u30ef\u30fc, \uc548\ub155\ud558\uc138\uc694",
    "emoji \U0001F642\U0001F680 family \U0001F469\u200d\U0001F469\u200d\U0001F467 flag \U0001F1E9\U0001F1EA",
    "punctuation!!! ... ?!, (parens) [brackets] {braces} <angle> $100 + 5 = ^~|` @#%&*_",
    "<|im_start|>user\nHow do I pin a model revision?<|im_end|>\n<|im_start|>assistant\n",
    "a<|im_start|>b<|im_end|>c",
    "<s>bos and eos in text</s> <|begin_of_text|>x<|eot_id|>",
    "<think>reasoning</think> answer",
    "code: fn main() { println!(\"{}\", x + 1); }\n    return 0;",
    "\u0001\u001f control \u007f chars",
    "x86_64 and arm64v8, utf-8, 0xDEADBEEF, snake_case and camelCase",
    "repeat " * 40,
]

TRANSFORMERS_SNIPPET = r"""
import json, sys
from transformers import __version__
from transformers.integrations.gguf.gguf_tokenizer_mapping import get_gguf_tokenizer, convert_gguf_tokenizer
path, texts_file, ids_file = sys.argv[1:4]
texts = json.load(open(texts_file))
llama_ids = json.load(open(ids_file))
arch, tok_dict, _ = get_gguf_tokenizer(path)
tok, _ = convert_gguf_tokenizer(arch, tok_dict)
print(json.dumps({
    "version": __version__,
    "ids": [tok.encode(t, add_special_tokens=False).ids for t in texts],
    "decoded": [tok.decode(ids, skip_special_tokens=False) for ids in llama_ids],
}))
"""


def tokenize(server, text: str, add_special: bool) -> list[int]:
    body = {"content": text, "add_special": add_special, "parse_special": True}
    req = urllib.request.Request(f"http://127.0.0.1:{server.port}/tokenize", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        tokens = json.loads(r.read())["tokens"]
    if not all(isinstance(t, int) for t in tokens):
        raise ids_mod.ServerError(f"/tokenize returned {tokens!r}")
    return tokens


def transformers_opinion(python: Path, gguf: Path, ids: list[list[int]], tmp: Path) -> dict | None:
    texts_file, ids_file = tmp / "texts.json", tmp / "ids.json"
    texts_file.write_text(json.dumps(TEXTS))
    ids_file.write_text(json.dumps(ids))
    p = subprocess.run([str(python), "-c", TRANSFORMERS_SNIPPET, str(gguf), str(texts_file), str(ids_file)],
                       capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        print(f"transformers failed on {gguf.name} (not recorded):\n{p.stderr.strip()[-2000:]}", flush=True)
        return None
    return json.loads(p.stdout.strip().splitlines()[-1])


def record_file(args, name: str, gguf: Path, tmp: Path, extra: dict) -> dict:
    srv = ids_mod.LlamaServer(args.llama_server, gguf, tmp / f"{name}.log", args.startup_timeout, [])
    try:
        ids = [tokenize(srv, t, False) for t in TEXTS]
        ids_special = [tokenize(srv, t, True) for t in TEXTS]
    finally:
        srv.close()
    record = {"name": name, "gguf_sha256": ids_mod.sha256_file(gguf), **extra, "ids": ids,
              "ids_add_special": ids_special}
    if args.transformers_python and args.transformers_python.is_file():
        opinion = transformers_opinion(args.transformers_python, gguf, ids, tmp)
        if opinion is not None:
            record["transformers"] = opinion
            same = sum(a == b for a, b in zip(opinion["ids"], ids))
            decoded = sum(d == t for d, t in zip(opinion["decoded"], TEXTS))
            print(f"{name}: transformers {opinion['version']} gives llama.cpp's ids for {same}/{len(TEXTS)} texts, "
                  f"decodes llama.cpp's ids back to the text for {decoded}/{len(TEXTS)}", flush=True)
            for i, (a, b) in enumerate(zip(opinion["ids"], ids)):
                if a != b:
                    print(f"  text {i} {TEXTS[i][:40]!r}: transformers {a[:12]}..., llama.cpp {b[:12]}...")
    print(f"{name}: {len(TEXTS)} texts tokenized, sha256 {record['gguf_sha256']}", flush=True)
    return record


def render(doc: dict) -> str:
    # one text / one id list per line keeps diffs of re-recordings readable
    def block(items: list, indent: str) -> str:
        return "[\n" + ",\n".join(indent + json.dumps(x, ensure_ascii=False) for x in items) + "\n" + indent[:-2] + "]"

    out = ["{", f'  "llama_cpp": {json.dumps(doc["llama_cpp"])},', f'  "texts": {block(doc["texts"], "    ")},',
           '  "files": [']
    files = []
    for f in doc["files"]:
        lines = ["    {"]
        items = []
        for k, v in f.items():
            if k in ("ids", "ids_add_special"):
                items.append(f'      {json.dumps(k)}: {block(v, "        ")}')
            elif k == "transformers":
                inner = [f'        "version": {json.dumps(v["version"])}',
                         f'        "ids": {block(v["ids"], "          ")}',
                         f'        "decoded": {block(v["decoded"], "          ")}']
                items.append(f'      "transformers": {{\n' + ",\n".join(inner) + "\n      }")
            else:
                items.append(f"      {json.dumps(k)}: {json.dumps(v)}")
        lines.append(",\n".join(items))
        lines.append("    }")
        files.append("\n".join(lines))
    out.append(",\n".join(files))
    out.append("  ]")
    out.append("}")
    return "\n".join(out) + "\n"


def run(args) -> int:
    if not args.llama_server.is_file():
        raise ids_mod.InputError(f"{args.llama_server}: llama-server not found (--llama-server)")
    if not SPM_GGUF.is_file():
        raise ids_mod.InputError(f"{SPM_GGUF}: missing (scripts/make-spm-gguf-testdata.py writes it)")
    fixture = args.fixtures / FIXTURE
    if not (fixture / "tokenizer.json").is_file():
        raise ids_mod.InputError(f"{fixture}: no tokenizer.json (--fixtures)")
    version = ids_mod.llama_cpp_version(args.llama_server)
    print(f"llama.cpp: {version}", flush=True)
    files = []
    with tempfile.TemporaryDirectory(prefix="llamacpp-tokenize-") as d:
        tmp = Path(d)
        files.append(record_file(args, "spm-tiny", SPM_GGUF, tmp,
                                 {"generator": "scripts/make-spm-gguf-testdata.py",
                                  "path": str(SPM_GGUF.relative_to(REPO / "runtime"))}))
        for pre in PRES:
            gguf = tmp / f"{FIXTURE}-{pre}" / "model.gguf"
            gguf.parent.mkdir()
            conv_args = ["--type", "f32", "--pre", pre]
            p = subprocess.run([sys.executable, str(CONVERTER), str(fixture), str(gguf), *conv_args],
                               capture_output=True, text=True)
            if p.returncode != 0:
                raise ids_mod.InputError(f"fixture-to-gguf.py failed for --pre {pre}:\n{p.stderr.strip()}")
            files.append(record_file(args, f"{FIXTURE}-{pre}", gguf, tmp,
                                     {"generator": "scripts/fixture-to-gguf.py", "fixture": FIXTURE,
                                      "args": conv_args}))
    doc = {"llama_cpp": version, "texts": TEXTS, "files": files}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(doc), encoding="utf-8")
    json.loads(args.out.read_text(encoding="utf-8"))  # the hand-rolled layout must still be JSON
    print(f"wrote {args.out}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fixtures", type=Path, default=ids_mod.DEFAULT_FIXTURES,
                    help=f"default {ids_mod.DEFAULT_FIXTURES}")
    ap.add_argument("--llama-server", type=Path, default=ids_mod.DEFAULT_SERVER,
                    help=f"default {ids_mod.DEFAULT_SERVER}")
    ap.add_argument("--transformers-python", type=Path,
                    default=DEFAULT_TRANSFORMERS_PYTHON if DEFAULT_TRANSFORMERS_PYTHON.is_file() else None,
                    help="a python with transformers, for the second opinion (default "
                         f"{DEFAULT_TRANSFORMERS_PYTHON} if present)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"default {DEFAULT_OUT}")
    ap.add_argument("--startup-timeout", type=float, default=120.0, help="seconds to wait for /health")
    args = ap.parse_args()
    try:
        return run(args)
    except ids_mod.InputError as e:
        print(f"record-llamacpp-tokenize: error: {e}", file=sys.stderr)
        return 2
    except ids_mod.ServerError as e:
        print(f"record-llamacpp-tokenize: llama-server: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
