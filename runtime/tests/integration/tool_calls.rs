//! Tool calling end to end: `tool_calls.py` drives the servers with the
//! official OpenAI client (a forced named function, `tool_choice:
//! "required"`, streamed calls reassembled by the client, `auto` read back in
//! the Hermes format, a multi-turn conversation with a `tool` result) and
//! validates every call's arguments with Python's `jsonschema`; this test
//! asserts on what it saw. The fixtures have random weights: forced calls
//! validate only because the grammar enforces them.

use crate::common;

use std::time::Duration;

use common::Server;
use serde_json::json;

#[test]
fn tool_calls_validate_and_round_trip() {
    // The fixtures' chat templates name no tool-call format: `auto` needs the flag.
    let names = ["llama-gqa", "mistral", "qwen2-tied"];
    let servers: Vec<(String, Server)> = names
        .iter()
        .map(|name| {
            let dir = common::fixtures_dir().join(name);
            let server = Server::start_fixture(&dir, &["--tool-call-parser", "hermes"]);
            (name.to_string(), server)
        })
        .chain(std::iter::once({
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/qwen3");
            ("qwen3".to_string(), Server::start_fixture(&dir, &[]))
        }))
        .collect();
    let spec = json!({
        "servers": servers.iter().enumerate().map(|(i, (name, server))| json!({
            "base_url": format!("http://127.0.0.1:{}/v1", server.port),
            "model": name,
            "full": i == 0,
        })).collect::<Vec<_>>(),
    });
    let out = common::run_client_script(
        "tool_calls.py",
        &spec,
        &servers[0].1,
        Duration::from_secs(400),
    );

    let named = &out["named"];
    assert_eq!(named["finishes"], json!(["tool_calls"]), "{out}");
    assert!(
        named["distinct"].as_u64().unwrap() > 4,
        "seeds sample apart: {out}"
    );
    let required = &out["required"];
    assert_eq!(required["finishes"], json!(["tool_calls"]), "{out}");
    assert_eq!(
        required["names"],
        json!(["get_time", "get_weather"]),
        "{out}"
    );
    assert_eq!(out["required_single"], 1, "{out}");
    assert_eq!(out["auto"], json!(["tool_calls"]), "{out}");
    assert_eq!(
        out["auto_plain"],
        json!({"calls": 0, "content": true}),
        "{out}"
    );
    assert_eq!(out["none_calls"], 0, "{out}");
    assert_eq!(
        out["errors"],
        json!({"unknown_function": "tool_choice", "bad_tool_type": "tools",
            "with_response_format": "tool_choice"}),
        "{out}"
    );
    for (name, _) in &servers {
        let h = &out["history"][name];
        assert_eq!(h["answered"], true, "{name}: {out}");
        assert_eq!(h["prompt_tokens_match"], true, "{name}: {out}");
        // These fixtures' templates are ChatML: the tool result is a turn of its own.
        let prompt = h["prompt"].as_str().unwrap();
        assert!(
            prompt.contains("tool\nSunny, 21 degrees"),
            "{name}: {prompt}"
        );
    }
}
