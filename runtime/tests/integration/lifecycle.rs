//! Process lifecycle tests: graceful shutdown on SIGTERM/SIGINT (drain, then
//! exit 0), the drain timeout, startup failures that must exit non-zero with
//! a message naming the path, and that the server writes no files.

use crate::common;

use std::{
    fs,
    io::Write,
    net::{SocketAddr, TcpStream},
    process::Output,
    thread,
    time::{Duration, Instant},
};

use common::{
    EXIT_TIMEOUT, Server, command, connect, list_dir, model_dir, read_response, run_with_timeout,
};

fn start(extra: &[&str]) -> (common::ModelDir, Server) {
    let model = model_dir("tiny");
    let mut args = vec!["--model", model.path.to_str().expect("utf-8 path")];
    args.extend_from_slice(extra);
    let server = Server::start(&args, &[]);
    server.wait_ready();
    (model, server)
}

#[test]
fn sigterm_exits_zero() {
    let (_model, mut server) = start(&[]);
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit().code(), Some(0), "{}", server.output());
    assert!(server.output().contains("received SIGTERM"));
}

#[test]
fn sigint_exits_zero() {
    let (_model, mut server) = start(&[]);
    server.signal(libc::SIGINT);
    assert_eq!(server.wait_exit().code(), Some(0), "{}", server.output());
}

#[test]
fn sigterm_drains_an_in_flight_request() {
    let (_model, mut server) = start(&["--shutdown-timeout", "10"]);
    let mut stream = connect(server.port);
    // Half a request: the connection is busy, not idle.
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .expect("send");
    thread::sleep(Duration::from_millis(200));
    server.signal(libc::SIGTERM);
    thread::sleep(Duration::from_millis(300));

    // No new connections once shutdown began...
    let addr = SocketAddr::from(([127, 0, 0, 1], server.port));
    assert!(TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err());

    // ...but the in-flight request completes, and the connection is closed.
    stream.write_all(b"\r\n").expect("finish request");
    let response = read_response(&mut stream);
    assert_eq!(response.status, 200);
    assert_eq!(response.header("connection").as_deref(), Some("close"));
    assert_eq!(server.wait_exit().code(), Some(0), "{}", server.output());
}

#[test]
fn shutdown_timeout_bounds_the_drain() {
    let (_model, mut server) = start(&["--shutdown-timeout", "1"]);
    let mut stream = connect(server.port);
    stream.write_all(b"GET /health HTTP/1.1\r\n").expect("send");
    thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit().code(), Some(0), "{}", server.output());
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(8), "took {elapsed:?}");
    assert!(
        server.output().contains("shutdown timeout of 1s elapsed"),
        "{}",
        server.output()
    );
    drop(stream);
}

fn run_server(args: &[&str]) -> Output {
    let mut cmd = command();
    cmd.args(["--host", "127.0.0.1", "--port", "0"]).args(args);
    run_with_timeout(cmd, EXIT_TIMEOUT)
}

fn assert_fails_naming(out: &Output, needle: &str) {
    assert!(!out.status.success(), "expected failure");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(needle),
        "stderr should name {needle:?}:\n{err}"
    );
    assert!(
        !err.contains("listening on"),
        "failed before binding:\n{err}"
    );
}

#[test]
fn missing_model_dir_fails_naming_the_path() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let missing = tmp.path().join("no-such-model");
    let missing = missing.to_str().expect("utf-8 path");
    let out = run_server(&["--model", missing]);
    assert_eq!(out.status.code(), Some(1));
    assert_fails_naming(&out, missing);
}

#[test]
fn missing_config_json_fails_naming_the_path() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("model");
    fs::create_dir(&dir).expect("mkdir");
    let out = run_server(&["--model", dir.to_str().expect("utf-8 path")]);
    assert_eq!(out.status.code(), Some(1));
    assert_fails_naming(&out, &dir.join("config.json").display().to_string());
}

#[test]
fn invalid_config_json_fails_naming_the_path() {
    let model = model_dir("broken");
    let config = model.path.join("config.json");
    fs::write(&config, "{\"model_type\": ").expect("write");
    let out = run_server(&["--model", model.path.to_str().expect("utf-8 path")]);
    assert_eq!(out.status.code(), Some(1));
    assert_fails_naming(&out, &config.display().to_string());
}

#[test]
fn missing_api_key_file_fails_naming_the_path() {
    let model = model_dir("tiny");
    let key = model.path.join("absent-key");
    let key = key.to_str().expect("utf-8 path");
    let out = run_server(&[
        "--model",
        model.path.to_str().expect("utf-8 path"),
        "--api-key-file",
        key,
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert_fails_naming(&out, key);
}

#[test]
fn failed_weight_inventory_exits_non_zero() {
    let model = model_dir("tiny");
    let dangling = model.path.join("model-00002-of-00002.safetensors");
    std::os::unix::fs::symlink(model.path.join("missing-blob"), &dangling).expect("symlink");
    let out = run_server(&["--model", model.path.to_str().expect("utf-8 path")]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    // This failure happens after binding, while /ready says "loading".
    assert!(err.contains("listening on"), "{err}");
    assert!(err.contains(&dangling.display().to_string()), "{err}");
}

#[test]
fn api_key_and_api_key_file_conflict() {
    let model = model_dir("tiny");
    let out = run_server(&[
        "--model",
        model.path.to_str().expect("utf-8 path"),
        "--api-key",
        "abc",
        "--api-key-file",
        "/dev/null",
    ]);
    assert_eq!(out.status.code(), Some(2), "clap usage error");
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot be used with"));
}

#[test]
fn cuda_device_needs_a_cuda_build() {
    if cfg!(feature = "cuda") {
        return;
    }
    let model = model_dir("tiny");
    let out = run_server(&[
        "--model",
        model.path.to_str().expect("utf-8 path"),
        "--device",
        "cuda",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert_fails_naming(&out, "cuda");
}

#[test]
fn writes_no_files() {
    let model = model_dir("tiny");
    let cwd = tempfile::tempdir().expect("tempdir");
    let before = list_dir(&model.path);
    let mut cmd = command();
    cmd.current_dir(cwd.path())
        .args(["--host", "127.0.0.1", "--port", "0", "--model"])
        .arg(&model.path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut server = Server::spawn(cmd);
    server.wait_ready();
    assert_eq!(common::get(server.port, "/v1/models", &[]).status, 200);
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit().code(), Some(0));
    assert!(
        list_dir(cwd.path()).is_empty(),
        "wrote into the working dir"
    );
    assert_eq!(list_dir(&model.path), before, "modified the model dir");
}

/// A checkpoint that cannot load: `/ready` never turns 200, and the process
/// exits 1 after binding with a message naming the file at fault.
fn assert_load_fails_naming(model: &common::ModelDir, file: &std::path::Path) {
    let out = run_server(&["--model", model.path.to_str().expect("utf-8 path")]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("listening on"), "{err}");
    assert!(
        !err.contains("] ready") && !err.contains(" ready\n"),
        "{err}"
    );
    assert!(err.contains(&file.display().to_string()), "{err}");
}

#[test]
fn corrupt_weights_exit_non_zero_naming_the_file() {
    let model = model_dir("tiny");
    let weights = model.path.join("model.safetensors");
    fs::write(&weights, [0u8; 64]).expect("write");
    assert_load_fails_naming(&model, &weights);
}

#[test]
fn missing_tokenizer_exits_non_zero_naming_the_file() {
    let model = model_dir("tiny");
    let tokenizer = model.path.join("tokenizer.json");
    fs::remove_file(&tokenizer).expect("remove");
    assert_load_fails_naming(&model, &tokenizer);
}

#[test]
fn unsupported_architecture_fails_before_binding() {
    let model = model_dir("tiny");
    let config = model.path.join("config.json");
    fs::write(&config, r#"{"architectures":["GPT2LMHeadModel"],"vocab_size":16,"hidden_size":8,"intermediate_size":16,"num_hidden_layers":1,"num_attention_heads":2}"#).expect("write");
    let out = run_server(&["--model", model.path.to_str().expect("utf-8 path")]);
    assert_eq!(out.status.code(), Some(1));
    assert_fails_naming(&out, &config.display().to_string());
}
