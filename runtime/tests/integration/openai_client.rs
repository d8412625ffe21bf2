//! The official OpenAI Python client (`openai`, installed by
//! `scripts/install-test-deps`) against the real server on a reference
//! checkpoint: chat and completions, plain and streamed (with
//! `include_usage`), the model list, and errors surfacing as the client's
//! typed exceptions. `openai_client.py` does the calls and prints what it
//! saw; this test asserts on it, including that greedy text equals the
//! fixture's reference decode.

use crate::common;

use std::time::Duration;

use common::{Case, Server, without_special_tokens};
use serde_json::json;

#[test]
fn the_official_openai_python_client_works() {
    let name = "qwen2-tied";
    let dir = common::fixtures_dir().join(name);
    let reference = common::fixture_reference(&dir);
    let (chat, completion) = (reference.case("chat"), reference.case("completion"));
    let key = "sk-openai-client-test";
    let server = Server::start_fixture(&dir, &["--api-key", key]);
    let spec = json!({
        "base_url": format!("http://127.0.0.1:{}/v1", server.port),
        "api_key": key,
        "model": name,
        "chat": {"messages": chat.prompt, "max_tokens": reference.max_new_tokens},
        "completion": {"prompt": completion.prompt, "max_tokens": reference.max_new_tokens},
    });

    let out =
        common::run_client_script("openai_client.py", &spec, &server, Duration::from_secs(120));
    assert_eq!(out["client_version"], "3.54.0", "the pinned client");
    assert_eq!(out["models"], json!([name]));

    let usage = |c: &Case| {
        json!({"prompt_tokens": c.input_ids.len(), "completion_tokens": c.output_ids.len(),
            "total_tokens": c.input_ids.len() + c.output_ids.len()})
    };
    let chat_text = without_special_tokens(&dir, &chat.output_text);
    let r = &out["chat"];
    assert_eq!(r["object"], "chat.completion");
    assert_eq!(r["role"], "assistant");
    assert_eq!(r["text"], chat_text);
    assert_eq!(r["finish_reason"], chat.finish_reason);
    assert_eq!(r["usage"], usage(chat));
    let r = &out["chat_stream"];
    assert_eq!(r["roles"], json!(["assistant"]), "{r}");
    assert_eq!(r["text"], chat_text);
    assert_eq!(r["finish_reasons"], json!([chat.finish_reason]));
    assert_eq!(r["usage"], usage(chat));
    assert!(r["chunks"].as_u64().is_some_and(|n| n > 3), "{r}");

    let completion_text = without_special_tokens(&dir, &completion.output_text);
    let r = &out["completion"];
    assert_eq!(r["object"], "text_completion");
    assert_eq!(r["text"], completion_text);
    assert_eq!(r["finish_reason"], completion.finish_reason);
    assert_eq!(r["usage"], usage(completion));
    let r = &out["completion_stream"];
    assert_eq!(r["text"], completion_text);
    assert_eq!(r["finish_reasons"], json!([completion.finish_reason]));
    assert_eq!(r["usage"], usage(completion));

    let r = &out["chat_logprobs"];
    // Special tokens included, as transformers decoded the reference.
    assert_eq!(
        r["text"], chat.output_text,
        "the tokens' bytes spell the text: {r}"
    );
    assert_eq!(r["tokens"], chat.output_ids.len());
    assert_eq!(
        (&r["greedy_is_top"], &r["sorted"], &r["top_counts"]),
        (&json!(true), &json!(true), &json!([3])),
        "{r}"
    );
    let r = &out["completion_logprobs"];
    assert_eq!(r["tokens"], completion.output_ids.len(), "{r}");
    assert_eq!(
        (&r["offsets_grow"], &r["sampled_in_top"]),
        (&json!(true), &json!(true)),
        "{r}"
    );
    let r = &out["n"];
    assert_eq!(r["indices"], json!([0, 1, 2]), "{r}");
    assert_eq!(r["repeatable"], true, "{r}");
    let e = &out["unimplemented"];
    assert_eq!(e["class"], "BadRequestError", "{e}");
    assert_eq!(e["param"], "guided_decoding_backend", "{e}");

    let e = &out["not_found"];
    assert_eq!(e["class"], "NotFoundError", "{e}");
    assert_eq!(
        (e["status"].clone(), e["code"].clone()),
        (json!(404), json!("model_not_found"))
    );
    let e = &out["bad_request"];
    assert_eq!(e["class"], "BadRequestError", "{e}");
    assert_eq!(e["param"], "top_p");
    let e = &out["unauthorized"];
    assert_eq!(e["class"], "AuthenticationError", "{e}");
    assert_eq!(e["status"], 401);
    assert!(
        !server.output().contains(key),
        "the key leaked into the log"
    );
}
