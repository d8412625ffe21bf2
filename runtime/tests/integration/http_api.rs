//! End-to-end tests of the HTTP API against the real binary: probes, model
//! listing, the 501 contract for unimplemented OpenAI routes (generation
//! itself is covered by `completions.rs`), and API-key
//! authentication (including that the key never reaches the logs).

use crate::common;

use std::fs;

use common::{Server, assert_openai_error, get, model_dir, request};

#[test]
fn serves_probes_models_and_refuses_to_fake_inference() {
    let model = model_dir("tiny-llama");
    let server = Server::start(&["--model", model.path.to_str().expect("utf-8 path")], &[]);

    let health = get(server.port, "/health", &[]);
    assert_eq!(health.status, 200);
    assert_eq!(health.json(), serde_json::json!({"status": "ok"}));

    let ready = server.wait_ready();
    assert_eq!(
        ready,
        serde_json::json!({"status": "ready", "model": "tiny-llama"})
    );

    let models = get(server.port, "/v1/models", &[]);
    assert_eq!(models.status, 200);
    let models = models.json();
    assert_eq!(models["object"], "list");
    let data = models["data"].as_array().expect("data array");
    assert_eq!(data.len(), 1);
    assert_eq!(data[0]["id"], "tiny-llama");
    assert_eq!(data[0]["object"], "model");

    let one = get(server.port, "/v1/models/tiny-llama", &[]);
    assert_eq!(one.status, 200);
    assert_eq!(one.json()["id"], "tiny-llama");
    let other = get(server.port, "/v1/models/other", &[]);
    assert_eq!(assert_openai_error(&other, 404), "invalid_request_error");

    let chat = request(
        server.port,
        "POST",
        "/v1/chat/completions",
        &[],
        r#"{"model":"tiny-llama","messages":[{"role":"user","content":"hi"}],"max_tokens":2}"#,
    );
    assert_eq!(chat.status, 200, "{chat:?}");
    assert_eq!(chat.json()["object"], "chat.completion");
    for path in ["/v1/embeddings", "/v1/responses"] {
        let r = request(server.port, "POST", path, &[], "{}");
        assert_eq!(assert_openai_error(&r, 501), "not_implemented", "{path}");
        let err = &r.json()["error"];
        assert!(err["param"].is_null() && err["code"].is_null(), "{err}");
    }

    let version = get(server.port, "/version", &[]);
    assert_eq!(version.status, 200);
    let version = version.json();
    assert_eq!(version["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(version["model"], "tiny-llama");
    assert!(version["features"].is_array());
    let commit = &version["commit"];
    assert!(
        commit.is_null() || commit.as_str().is_some_and(|c| c.len() == 40),
        "{commit}"
    );
    // The weights digest is computed in the background after `ready`; it must equal the
    // README's sha256sum recipe (and the image label `appliance.model.files.sha256`).
    let recipe = std::process::Command::new("sh")
        .arg("-c")
        .arg("find . -type f | sed 's|^\\./||' | LC_ALL=C sort | xargs sha256sum | sha256sum")
        .current_dir(&model.path)
        .output()
        .expect("sh");
    let expected = format!("sha256:{}", &String::from_utf8_lossy(&recipe.stdout)[..64]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let digest = loop {
        let v = get(server.port, "/version", &[]).json();
        if let Some(d) = v["weights_digest"].as_str() {
            break d.to_string();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no weights_digest: {v}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(digest, expected);

    let unknown = get(server.port, "/nope", &[]);
    assert_openai_error(&unknown, 404);
    let wrong_method = request(server.port, "POST", "/v1/models", &[], "{}");
    assert_openai_error(&wrong_method, 405);

    // One access-log line per request, with method, path, status, duration.
    let out = server.output();
    assert!(out.contains("GET /health 200 "), "{out}");
    assert!(out.contains("POST /v1/chat/completions 200 "), "{out}");
    assert!(out.contains("POST /v1/embeddings 501 "), "{out}");
    assert!(out.contains("weights: 1 file(s)"), "{out}");
}

#[test]
fn served_model_name_comes_from_the_environment() {
    let model = model_dir("dir-name");
    let server = Server::start(
        &["--model", model.path.to_str().expect("utf-8 path")],
        &[("APPLIANCE_SERVED_MODEL_NAME", "org/custom-name")],
    );
    assert_eq!(server.wait_ready()["model"], "org/custom-name");
    let models = get(server.port, "/v1/models", &[]).json();
    assert_eq!(models["data"][0]["id"], "org/custom-name");
    // Served names may contain '/', so retrieval uses a catch-all segment.
    assert_eq!(
        get(server.port, "/v1/models/org/custom-name", &[]).status,
        200
    );
}

const KEY: &str = "k3y-7d1f0c2b9e-never-log-me";

fn check_auth(server: &Server) {
    let bearer = format!("Bearer {KEY}");
    let port = server.port;

    // Probes are public: Docker/Kubernetes cannot send a key.
    assert_eq!(get(port, "/health", &[]).status, 200);
    server.wait_ready();

    let missing = get(port, "/v1/models", &[]);
    assert_eq!(assert_openai_error(&missing, 401), "invalid_request_error");
    assert_eq!(missing.json()["error"]["code"], "invalid_api_key");
    assert_eq!(
        missing.header("www-authenticate").as_deref(),
        Some("Bearer")
    );

    let wrong = get(
        port,
        "/v1/models",
        &[("Authorization", "Bearer not-the-key")],
    );
    assert_openai_error(&wrong, 401);
    assert!(
        !wrong.body.contains("not-the-key"),
        "must not echo the token"
    );
    assert_openai_error(&get(port, "/v1/models", &[("Authorization", KEY)]), 401);

    assert_eq!(
        get(port, "/v1/models", &[("Authorization", &bearer)]).status,
        200
    );
    assert_eq!(
        get(
            port,
            "/v1/models",
            &[("authorization", &format!("bearer {KEY}"))]
        )
        .status,
        200
    );
    assert_openai_error(&get(port, "/version", &[]), 401);
    assert_eq!(
        get(port, "/version", &[("Authorization", &bearer)]).status,
        200
    );
    let chat = request(port, "POST", "/v1/chat/completions", &[], "{}");
    assert_openai_error(&chat, 401);
    let chat = request(
        port,
        "POST",
        "/v1/chat/completions",
        &[("Authorization", &bearer)],
        "{}",
    );
    // Past auth: the empty body is refused for what it is.
    assert_openai_error(&chat, 400);
    assert_openai_error(&get(port, "/unknown", &[]), 401);
}

fn stop_and_check_no_leak(mut server: Server) {
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit().code(), Some(0));
    let out = server.output();
    assert!(out.contains("GET /v1/models 401"), "{out}");
    assert!(
        !out.contains(KEY),
        "the API key leaked into the output:\n{out}"
    );
}

#[test]
fn api_key_file_protects_everything_but_probes() {
    let model = model_dir("tiny");
    let secrets = tempfile::tempdir().expect("tempdir");
    let key_file = secrets.path().join("api-key");
    fs::write(&key_file, format!("{KEY}\n")).expect("write key file");

    let server = Server::start(
        &[
            "--model",
            model.path.to_str().expect("utf-8 path"),
            "--api-key-file",
            key_file.to_str().expect("utf-8 path"),
        ],
        &[],
    );
    check_auth(&server);
    stop_and_check_no_leak(server);
}

#[test]
fn api_key_from_the_environment_works_and_stays_hidden() {
    let model = model_dir("tiny");
    let server = Server::start(
        &["--model", model.path.to_str().expect("utf-8 path")],
        &[("APPLIANCE_API_KEY", KEY)],
    );
    check_auth(&server);
    stop_and_check_no_leak(server);

    // `--help` lists the env var but never its value.
    let mut cmd = common::command();
    cmd.arg("--help").env("APPLIANCE_API_KEY", KEY);
    let out = common::run_with_timeout(cmd, common::EXIT_TIMEOUT);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("APPLIANCE_API_KEY"), "{help}");
    assert!(!help.contains(KEY), "{help}");
}

#[test]
fn tokenize_and_detokenize_validate_their_input() {
    let model = model_dir("tiny");
    let server = Server::start(&["--model", model.path.to_str().expect("utf-8 path")], &[]);
    server.wait_ready();
    let post = |path: &str, body: &str| request(server.port, "POST", path, &[], body);

    let r = post("/tokenize", r#"{"prompt":"hello world"}"#);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.json(),
        serde_json::json!({"tokens": [3, 4], "count": 2, "max_model_len": 64})
    );
    let r = post(
        "/tokenize",
        r#"{"messages":[{"role":"user","content":"hi"}],"add_generation_prompt":true}"#,
    );
    assert_eq!(r.status, 200, "{r:?}");
    // "user : hi assistant :" in the tiny word vocabulary.
    assert_eq!(r.json()["tokens"], serde_json::json!([5, 8, 9, 6, 8]));
    let r = post("/detokenize", r#"{"tokens":[3,4]}"#);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["prompt"], "hello world");

    for (path, body, param) in [
        ("/tokenize", "{}", None),
        ("/tokenize", r#"{"prompt":"a","messages":[]}"#, None),
        ("/tokenize", r#"{"messages":"hi"}"#, Some("messages")),
        (
            "/tokenize",
            r#"{"messages":[{"content":"hi"}]}"#,
            Some("messages"),
        ),
        ("/tokenize", "{not json", None),
        ("/detokenize", r#"{"tokens":[999]}"#, Some("tokens")),
        ("/detokenize", r#"{"tokens":[-1]}"#, None),
    ] {
        let r = post(path, body);
        assert_eq!(
            assert_openai_error(&r, 400),
            "invalid_request_error",
            "{body}"
        );
        assert_eq!(r.json()["error"]["param"].as_str(), param, "{body}");
    }
    let r = post("/tokenize", r#"{"model":"other","prompt":"hi"}"#);
    assert_openai_error(&r, 404);
}
