"""Structured outputs through the official OpenAI Python client, validated by
Python's `jsonschema` (an implementation independent of the grammar engine).

Run by tests/structured_output.rs against a random-weight fixture model, the
hardest case: unconstrained, it never writes valid JSON. Input on stdin:
`base_url`, `model`. Prints one JSON object with counts; any exception fails.
"""

import concurrent.futures
import json
import re
import sys

import jsonschema
import openai

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "kind": {"enum": ["gpu", "cpu", "tpu"]},
        "count": {"type": "integer", "minimum": 0, "maximum": 999},
        "tags": {
            "type": "array",
            "items": {"type": "string", "maxLength": 6},
            "minItems": 1,
            "maxItems": 3,
        },
        "owner": {
            "type": "object",
            "properties": {"id": {"type": "integer", "minimum": 0, "maximum": 99999}, "ok": {"type": "boolean"}},
            "required": ["id", "ok"],
            "additionalProperties": False,
        },
    },
    "required": ["name", "kind", "count", "tags", "owner"],
    "additionalProperties": False,
}
REGEX = r"[0-9]{3}-[a-z]{2,5}"
CHOICES = ["yes", "no", "maybe later"]


def main():
    spec = json.load(sys.stdin)
    client = openai.OpenAI(base_url=spec["base_url"], api_key="x", max_retries=0, timeout=120)
    model = spec["model"]
    messages = [{"role": "user", "content": "Describe a machine as JSON."}]
    base = dict(model=model, messages=messages, max_tokens=300, temperature=1.0)

    def schema_call(i):
        fmt = {"type": "json_schema", "json_schema": {"name": "machine", "schema": SCHEMA, "strict": True}}
        if i % 2:
            pieces, finish = [], None
            for chunk in client.chat.completions.create(**base, seed=i, response_format=fmt, stream=True):
                for c in chunk.choices:
                    pieces.append(c.delta.content or "")
                    finish = c.finish_reason or finish
            return "".join(pieces), finish
        r = client.chat.completions.create(**base, seed=i, response_format=fmt)
        return r.choices[0].message.content, r.choices[0].finish_reason

    out = {}
    # 50 schema requests at once: they run in the same batches.
    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(schema_call, range(50)))
    valid, finishes, distinct = 0, set(), set()
    for text, finish in results:
        jsonschema.validate(json.loads(text), SCHEMA)
        valid += 1
        finishes.add(finish)
        distinct.add(text)
    out["schema"] = {"valid": valid, "finishes": sorted(finishes), "distinct": len(distinct)}

    # json_object, streaming and not.
    objects = 0
    for i in range(6):
        r = client.chat.completions.create(**base, seed=100 + i, response_format={"type": "json_object"})
        value = json.loads(r.choices[0].message.content)
        assert isinstance(value, dict), value
        objects += 1
    out["json_object"] = objects

    # vLLM's fields on both endpoints: regex and choice.
    regex_ok = 0
    for i in range(6):
        r = client.completions.create(
            model=model, prompt="Code:", max_tokens=20, temperature=1.0, seed=i,
            extra_body={"guided_regex": REGEX},
        )
        assert re.fullmatch(REGEX, r.choices[0].text), r.choices[0].text
        regex_ok += 1
    out["regex"] = regex_ok
    seen = set()
    for i in range(10):
        r = client.chat.completions.create(**base, seed=i, extra_body={"guided_choice": CHOICES})
        text = r.choices[0].message.content
        assert text in CHOICES, text
        seen.add(text)
    out["choice_seen"] = len(seen)
    r = client.chat.completions.create(
        **base, seed=3, extra_body={"structured_outputs": {"choice": CHOICES}}
    )
    out["structured_outputs_choice"] = r.choices[0].message.content in CHOICES

    # Without a constraint the same model does not write JSON (the test can fail).
    free = 0
    for i in range(5):
        r = client.chat.completions.create(**base, seed=i)
        try:
            jsonschema.validate(json.loads(r.choices[0].message.content), SCHEMA)
            free += 1
        except Exception:
            pass
    out["unconstrained_valid"] = free

    # A schema the engine cannot compile is a 400 naming the problem.
    try:
        client.chat.completions.create(
            **base,
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "strin"}}},
        )
        out["bad_schema"] = None
    except openai.BadRequestError as e:
        out["bad_schema"] = {"param": e.param, "message": e.message}
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
