"""Drives a running appliance-server with the official OpenAI Python client.

Run by tests/openai_client.rs, which starts the server and asserts on what
this prints. Input: one JSON object on stdin with `base_url`, `api_key`,
`model`, `chat` ({messages, max_tokens}) and `completion` ({prompt,
max_tokens}). Output: one JSON object on stdout with what the client saw.
Any unexpected exception fails the script (non-zero exit), and so the test.
"""

import json
import sys

import openai


def usage_of(usage):
    if usage is None:
        return None
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }


def greedy(spec, kind, stream=False):
    """Arguments for a greedy `kind` ("chat" or "completion") request:
    the spec's prompt or messages and max_tokens, streamed with usage if
    `stream`."""
    args = {"model": spec["model"], "temperature": 0, **spec[kind]}
    if stream:
        args.update(stream=True, stream_options={"include_usage": True})
    return args


def chat_stream(client, spec):
    roles, pieces, finish, usage, chunks = [], [], [], None, 0
    stream = client.chat.completions.create(**greedy(spec, "chat", stream=True))
    for chunk in stream:
        chunks += 1
        assert chunk.object == "chat.completion.chunk", chunk
        if chunk.usage is not None:
            usage = usage_of(chunk.usage)
        for choice in chunk.choices:
            if choice.delta.role:
                roles.append(choice.delta.role)
            if choice.delta.content:
                pieces.append(choice.delta.content)
            if choice.finish_reason:
                finish.append(choice.finish_reason)
    return {
        "roles": roles,
        "text": "".join(pieces),
        "finish_reasons": finish,
        "usage": usage,
        "chunks": chunks,
    }


def completion_stream(client, spec):
    pieces, finish, usage = [], [], None
    stream = client.completions.create(**greedy(spec, "completion", stream=True))
    for chunk in stream:
        if chunk.usage is not None:
            usage = usage_of(chunk.usage)
        for choice in chunk.choices:
            pieces.append(choice.text)
            if choice.finish_reason:
                finish.append(choice.finish_reason)
    return {"text": "".join(pieces), "finish_reasons": finish, "usage": usage}


def error_of(call):
    try:
        call()
    except openai.APIStatusError as e:
        return {
            "class": type(e).__name__,
            "status": e.status_code,
            "code": e.code,
            "param": e.param,
            "type": e.type,
        }
    return None


def main():
    spec = json.load(sys.stdin)
    client = openai.OpenAI(
        base_url=spec["base_url"], api_key=spec["api_key"], max_retries=0, timeout=60
    )
    out = {"client_version": openai.__version__}
    out["models"] = [m.id for m in client.models.list().data]

    chat = client.chat.completions.create(**greedy(spec, "chat"))
    out["chat"] = {
        "role": chat.choices[0].message.role,
        "text": chat.choices[0].message.content,
        "finish_reason": chat.choices[0].finish_reason,
        "usage": usage_of(chat.usage),
        "object": chat.object,
    }
    out["chat_stream"] = chat_stream(client, spec)

    completion = client.completions.create(**greedy(spec, "completion"))
    out["completion"] = {
        "text": completion.choices[0].text,
        "finish_reason": completion.choices[0].finish_reason,
        "usage": usage_of(completion.usage),
        "object": completion.object,
    }
    out["completion_stream"] = completion_stream(client, spec)

    # Logprobs as the client's typed models read them.
    chat = client.chat.completions.create(
        **greedy(spec, "chat"), logprobs=True, top_logprobs=3
    )
    content = chat.choices[0].logprobs.content
    out["chat_logprobs"] = {
        "text": b"".join(bytes(t.bytes) for t in content).decode("utf-8", "replace"),
        "greedy_is_top": all(
            t.top_logprobs[0].token == t.token
            and t.top_logprobs[0].logprob == t.logprob
            for t in content
        ),
        "sorted": all(
            [a.logprob for a in t.top_logprobs]
            == sorted((a.logprob for a in t.top_logprobs), reverse=True)
            for t in content
        ),
        "top_counts": sorted({len(t.top_logprobs) for t in content}),
        "tokens": len(content),
    }
    completion = client.completions.create(**greedy(spec, "completion"), logprobs=2)
    lp = completion.choices[0].logprobs
    out["completion_logprobs"] = {
        "tokens": len(lp.tokens),
        "offsets_grow": lp.text_offset == sorted(lp.text_offset),
        "sampled_in_top": all(
            lp.top_logprobs[i].get(t) == lp.token_logprobs[i]
            for i, t in enumerate(lp.tokens)
        ),
    }
    # n choices, seeded sampling repeatable.
    seeded = dict(greedy(spec, "completion"), temperature=1.0, seed=11, n=3)
    first = client.completions.create(**seeded)
    again = client.completions.create(**seeded)
    out["n"] = {
        "indices": [c.index for c in first.choices],
        "repeatable": [c.text for c in first.choices] == [c.text for c in again.choices],
        "completion_tokens": first.usage.completion_tokens,
    }
    # A field the server does not implement is refused by name.
    out["unimplemented"] = error_of(
        lambda: client.chat.completions.create(
            **greedy(spec, "chat"), extra_body={"guided_decoding_backend": "x"}
        )
    )

    out["not_found"] = error_of(
        lambda: client.chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "hi"}]
        )
    )
    out["bad_request"] = error_of(
        lambda: client.completions.create(model=spec["model"], prompt="hi", top_p=5)
    )
    wrong_key = openai.OpenAI(
        base_url=spec["base_url"], api_key="wrong-key", max_retries=0, timeout=60
    )
    out["unauthorized"] = error_of(lambda: wrong_key.models.list())
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
