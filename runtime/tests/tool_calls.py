"""Tool calling through the official OpenAI Python client, arguments validated
by Python's `jsonschema`.

Run by tests/tool_calls.rs against random-weight fixture models: forced calls
(a named function, `required`) must produce arguments that validate whatever
the model; free-text (`auto`) calls are read back in the server's tool-call
format (`--tool-call-parser hermes` here), which a regex constraint makes the
random model write. Input on stdin: `servers`, a list of {`base_url`,
`model`, `full`}; the full checks run where `full` is true, the multi-turn
history check on every server. Prints one JSON object; any exception fails.
"""

import concurrent.futures
import json
import sys
import urllib.request

import jsonschema
import openai

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 10},
        "unit": {"enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TIME = {
    "type": "object",
    "properties": {"zone": {"enum": ["UTC", "CET", "PST"]}},
    "required": ["zone"],
    "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather forecast.", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "get_time", "description": "Current time.", "parameters": TIME}},
]
SCHEMAS = {"get_weather": WEATHER, "get_time": TIME}
MESSAGES = [{"role": "user", "content": "What is the weather in Oslo?"}]


def check_calls(calls):
    """Every call names a tool and its arguments validate against that tool's schema."""
    assert calls, "no tool calls"
    names = []
    for call in calls:
        assert call["type"] == "function", call
        assert call["id"], call
        schema = SCHEMAS[call["function"]["name"]]
        jsonschema.validate(json.loads(call["function"]["arguments"]), schema)
        names.append(call["function"]["name"])
    return names


def as_dicts(calls):
    return [{"id": c.id, "type": c.type, "function": {"name": c.function.name, "arguments": c.function.arguments}} for c in calls or []]


def streamed(client, **kw):
    """What a client reassembles from a stream: content, calls by index, finish_reason."""
    content, calls, finish = "", {}, None
    for chunk in client.chat.completions.create(stream=True, **kw):
        for c in chunk.choices:
            content += c.delta.content or ""
            for d in c.delta.tool_calls or []:
                call = calls.setdefault(d.index, {"id": None, "type": None, "function": {"name": None, "arguments": ""}})
                if d.id:
                    assert call["id"] is None, "id sent twice"
                    call["id"], call["type"] = d.id, d.type
                if d.function and d.function.name:
                    call["function"]["name"] = d.function.name
                if d.function and d.function.arguments:
                    call["function"]["arguments"] += d.function.arguments
            finish = c.finish_reason or finish
    return content, [calls[i] for i in sorted(calls)], finish


def full(client, model, out):
    base = dict(model=model, messages=MESSAGES, tools=TOOLS, max_tokens=200, temperature=1.0)
    named = {"type": "function", "function": {"name": "get_weather"}}

    # A named function: the output is its arguments, valid every time; half streamed, in one batch.
    def forced(i):
        if i % 2:
            content, calls, finish = streamed(client, **base, seed=i, tool_choice=named)
        else:
            r = client.chat.completions.create(**base, seed=i, tool_choice=named)
            m = r.choices[0].message
            content, calls, finish = m.content, as_dicts(m.tool_calls), r.choices[0].finish_reason
        assert not content, content
        assert len(calls) == 1 and calls[0]["function"]["name"] == "get_weather", calls
        check_calls(calls)
        return finish, calls[0]["function"]["arguments"]

    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(forced, range(16)))
    out["named"] = {"finishes": sorted({f for f, _ in results}), "distinct": len({a for _, a in results})}

    # required: one or more calls, each valid against its own function. The random model may
    # go on adding calls: room for many.
    base = dict(base, max_tokens=460)
    names, finishes, counts = set(), set(), []
    for i in range(8):
        r = client.chat.completions.create(**base, seed=100 + i, tool_choice="required", n=2)
        for choice in r.choices:
            names.update(check_calls(as_dicts(choice.message.tool_calls)))
            finishes.add(choice.finish_reason)
            counts.append(len(choice.message.tool_calls))
        content, calls, finish = streamed(client, **base, seed=200 + i, tool_choice="required")
        names.update(check_calls(calls))
        finishes.add(finish)
        assert not content, content
    out["required"] = {"names": sorted(names), "finishes": sorted(finishes), "max_calls": max(counts)}
    r = client.chat.completions.create(**base, seed=7, tool_choice="required", parallel_tool_calls=False)
    out["required_single"] = len(r.choices[0].message.tool_calls)

    # auto: the model's own format (hermes), forced into being by a regex on the free text.
    call = '<tool_call>\n{"name": "get_time", "arguments": {"zone": "(UTC|CET)"}}\n</tool_call>'
    regex = r"(Checking\. )?" + call.replace("{", r"\{").replace("}", r"\}")
    auto = []
    for i in range(4):
        kw = dict(base, seed=300 + i, tool_choice="auto", extra_body={"guided_regex": regex})
        if i % 2:
            content, calls, finish = streamed(client, **kw)
        else:
            r = client.chat.completions.create(**kw)
            m = r.choices[0].message
            content, calls, finish = m.content, as_dicts(m.tool_calls), r.choices[0].finish_reason
        check_calls(calls)
        assert content in (None, "", "Checking. "), content
        assert "<tool_call>" not in (content or ""), content
        auto.append(finish)
    out["auto"] = sorted(set(auto))
    # auto on plain text: content, no calls; none: never calls.
    short = dict(base, max_tokens=12)
    r = client.chat.completions.create(**short, seed=1)
    out["auto_plain"] = {"calls": len(r.choices[0].message.tool_calls or []), "content": isinstance(r.choices[0].message.content, str)}
    r = client.chat.completions.create(**short, seed=1, tool_choice="none")
    out["none_calls"] = len(r.choices[0].message.tool_calls or [])

    # Errors name the field.
    errors = {}
    for key, kw in {
        "unknown_function": dict(tool_choice={"type": "function", "function": {"name": "nope"}}),
        "bad_tool_type": dict(tools=[{"type": "retrieval", "function": {"name": "x"}}]),
        "with_response_format": dict(tool_choice="required", response_format={"type": "json_object"}),
    }.items():
        try:
            client.chat.completions.create(**dict(base, **kw))
            errors[key] = None
        except openai.BadRequestError as e:
            errors[key] = e.param
    out["errors"] = errors


def history(client, base_url, model):
    """A finished call and its result go back to the model: rendered by the template, answered."""
    args = json.dumps({"city": "Oslo", "unit": "celsius"})
    messages = MESSAGES + [
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "call_abc", "type": "function", "function": {"name": "get_weather", "arguments": args}}]},
        {"role": "tool", "tool_call_id": "call_abc", "content": "Sunny, 21 degrees"},
    ]
    r = client.chat.completions.create(model=model, messages=messages, tools=TOOLS, tool_choice="none", max_tokens=8, temperature=0)
    # The prompt the template made of it, through the server's own /tokenize.
    root = base_url.rsplit("/v1", 1)[0]

    def post(path, body):
        req = urllib.request.Request(root + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            return json.load(resp)

    ids = post("/tokenize", {"model": model, "messages": messages, "tools": TOOLS})
    text = post("/detokenize", {"model": model, "tokens": ids["tokens"]})["prompt"]
    return {
        "answered": r.choices[0].finish_reason in ("stop", "length"),
        "prompt_tokens_match": r.usage.prompt_tokens == ids["count"],
        "prompt": text,
    }


def main():
    spec = json.load(sys.stdin)
    out = {"history": {}}
    for server in spec["servers"]:
        client = openai.OpenAI(base_url=server["base_url"], api_key="x", max_retries=0, timeout=120)
        if server.get("full"):
            full(client, server["model"], out)
        out["history"][server["model"]] = history(client, server["base_url"], server["model"])
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
