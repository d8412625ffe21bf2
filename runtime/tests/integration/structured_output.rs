//! Structured outputs end to end: `structured_output.py` drives the server
//! with the official OpenAI client (JSON schema — 50 concurrent requests,
//! half streamed —, `json_object`, vLLM's `guided_regex`, `guided_choice`
//! and `structured_outputs`) and validates every output with Python's
//! `jsonschema`; this test asserts on what it saw. The fixture has random
//! weights, so without the grammar's mask it never writes valid JSON.

use crate::common;

use std::time::Duration;

use common::Server;
use serde_json::json;

#[test]
fn constrained_outputs_always_validate() {
    let name = "llama-gqa";
    let dir = common::fixtures_dir().join(name);
    let server = Server::start_fixture(&dir, &[]);
    let spec = json!({
        "base_url": format!("http://127.0.0.1:{}/v1", server.port),
        "model": name,
    });
    let out = common::run_client_script(
        "structured_output.py",
        &spec,
        &server,
        Duration::from_secs(300),
    );
    let schema = &out["schema"];
    assert_eq!(schema["valid"], 50, "{out}");
    // Every one ended because the grammar completed (EOS), none cut by max_tokens.
    assert_eq!(schema["finishes"], json!(["stop"]), "{out}");
    assert!(
        schema["distinct"].as_u64().unwrap() > 10,
        "seeds sample apart: {out}"
    );
    assert_eq!(out["json_object"], 6, "{out}");
    assert_eq!(out["regex"], 6, "{out}");
    assert!(out["choice_seen"].as_u64().unwrap() >= 2, "{out}");
    assert_eq!(out["structured_outputs_choice"], true, "{out}");
    assert_eq!(out["unconstrained_valid"], 0, "{out}");
    let bad = &out["bad_schema"];
    assert_eq!(bad["param"], "response_format", "{out}");
    assert!(
        bad["message"].as_str().unwrap().contains("strin"),
        "the error names the problem: {out}"
    );
}
