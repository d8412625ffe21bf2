//! Shared harness for the integration tests: temp model directories, a
//! handle on a running `appliance-server` process, and a raw HTTP/1.1 client.
//!
//! Everything has a deadline, so a hung server fails a test instead of
//! hanging CI. Servers bind `127.0.0.1:0` and the test reads the chosen port
//! from the `listening on` log line, which avoids pick-then-bind port races.

// Each test crate uses a different subset of these helpers.
#![allow(dead_code)]

use std::{
    fs,
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

pub const BIN: &str = env!("CARGO_BIN_EXE_appliance-server");
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(15);
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// A temp directory holding a model directory `<tmp>/<name>`: a tiny but
/// real (random-weight) Llama checkpoint the engine can load and warm up in
/// milliseconds, with a word-level tokenizer and a chat template.
pub struct ModelDir {
    _tmp: tempfile::TempDir,
    pub path: PathBuf,
}

/// Words of the tiny tokenizer; ids follow the specials `<s>`, `</s>`, `<unk>`.
pub const TINY_WORDS: [&str; 13] = [
    "hello",
    "world",
    "user",
    "assistant",
    "system",
    ":",
    "hi",
    "there",
    "how",
    "are",
    "you",
    "?",
    "!",
];
const TINY_HIDDEN: usize = 8;
const TINY_HEADS: usize = 2;
const TINY_KV_HEADS: usize = 1;
const TINY_FFN: usize = 16;

pub fn model_dir(name: &str) -> ModelDir {
    let tmp = tempfile::tempdir().expect("create temp dir");
    let path = tmp.path().join(name);
    fs::create_dir(&path).expect("create model dir");
    let vocab = 3 + TINY_WORDS.len();
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab,
        "hidden_size": TINY_HIDDEN,
        "intermediate_size": TINY_FFN,
        "num_hidden_layers": 1,
        "num_attention_heads": TINY_HEADS,
        "num_key_value_heads": TINY_KV_HEADS,
        "max_position_embeddings": 64,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "bos_token_id": 0,
        "eos_token_id": 1,
        "torch_dtype": "float32",
    });
    fs::write(path.join("config.json"), config.to_string()).expect("write config.json");
    fs::write(path.join("tokenizer.json"), tiny_tokenizer().to_string())
        .expect("write tokenizer.json");
    let tok_config = serde_json::json!({
        "bos_token": "<s>",
        "eos_token": "</s>",
        "chat_template": "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} {% endfor %}{% if add_generation_prompt %}assistant :{% endif %}",
    });
    fs::write(path.join("tokenizer_config.json"), tok_config.to_string())
        .expect("write tokenizer_config.json");
    fs::write(path.join("model.safetensors"), tiny_weights(vocab)).expect("write weights");
    ModelDir { _tmp: tmp, path }
}

fn tiny_tokenizer() -> serde_json::Value {
    let special = |id: usize, content: &str| {
        serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true})
    };
    let mut vocab = serde_json::Map::new();
    for (i, w) in ["<s>", "</s>", "<unk>"]
        .iter()
        .chain(TINY_WORDS.iter())
        .enumerate()
    {
        vocab.insert((*w).to_owned(), i.into());
    }
    serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [special(0, "<s>"), special(1, "</s>"), special(2, "<unk>")],
        "normalizer": null,
        "pre_tokenizer": {"type": "WhitespaceSplit"},
        "post_processor": null,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"},
    })
}

/// A safetensors file (written by hand: 8-byte header length, JSON header,
/// little-endian f32 data) with deterministic pseudo-random weights.
fn tiny_weights(vocab: usize) -> Vec<u8> {
    let (h, kv) = (TINY_HIDDEN, TINY_HIDDEN / TINY_HEADS * TINY_KV_HEADS);
    let l = "model.layers.0";
    let tensors: Vec<(String, Vec<usize>)> = vec![
        ("model.embed_tokens.weight".into(), vec![vocab, h]),
        (format!("{l}.input_layernorm.weight"), vec![h]),
        (format!("{l}.self_attn.q_proj.weight"), vec![h, h]),
        (format!("{l}.self_attn.k_proj.weight"), vec![kv, h]),
        (format!("{l}.self_attn.v_proj.weight"), vec![kv, h]),
        (format!("{l}.self_attn.o_proj.weight"), vec![h, h]),
        (format!("{l}.post_attention_layernorm.weight"), vec![h]),
        (format!("{l}.mlp.gate_proj.weight"), vec![TINY_FFN, h]),
        (format!("{l}.mlp.up_proj.weight"), vec![TINY_FFN, h]),
        (format!("{l}.mlp.down_proj.weight"), vec![h, TINY_FFN]),
        ("model.norm.weight".into(), vec![h]),
        ("lm_head.weight".into(), vec![vocab, h]),
    ];
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    let mut state: u32 = 12345;
    for (name, shape) in &tensors {
        let n: usize = shape.iter().product();
        let start = data.len();
        for _ in 0..n {
            let value = if shape.len() == 1 {
                1.0f32
            } else {
                state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
                ((state >> 16) % 1000) as f32 / 1000.0 - 0.5
            };
            data.extend_from_slice(&value.to_le_bytes());
        }
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    let header = serde_json::Value::Object(header).to_string();
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&data);
    out
}

/// A command for the server binary with a clean, deterministic environment.
pub fn command() -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_clear().env("RUST_LOG", "info");
    cmd
}

/// Runs `cmd` to completion, killing it (and failing) after `timeout`.
pub fn run_with_timeout(mut cmd: Command, timeout: Duration) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn appliance-server");
    let stdout = capture(child.stdout.take().expect("stdout piped"));
    let stderr = capture(child.stderr.take().expect("stderr piped"));
    let status = wait_with_deadline(&mut child, timeout).unwrap_or_else(|| {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{cmd:?} did not exit within {timeout:?}");
    });
    let collect = |h: thread::JoinHandle<Vec<u8>>| h.join().expect("reader thread");
    Output {
        status,
        stdout: collect(stdout),
        stderr: collect(stderr),
    }
}

fn capture(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        buf
    })
}

/// Spawns `cmd` with piped stdio and writes `input` to its stdin, then
/// closes it; `what` says what failed to start (and how to install it).
pub fn spawn_with_input(cmd: &mut Command, input: &[u8], what: &str) -> Child {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    child
        .stdin
        .take()
        .expect("stdin piped")
        .write_all(input)
        .unwrap_or_else(|e| panic!("write to {cmd:?}: {e}"));
    child
}

pub fn wait_with_deadline(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// A running server. Killed on drop if the test did not stop it.
pub struct Server {
    child: Child,
    pub port: u16,
    output: Arc<Mutex<String>>,
}

impl Server {
    /// Starts the server on `127.0.0.1:0` with `args` and extra `env`, and
    /// waits until it logs its listening address.
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut cmd = command();
        cmd.args(["--host", "127.0.0.1", "--port", "0"])
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        Self::spawn(cmd)
    }

    /// Starts the server on the model directory `model` with `extra` args,
    /// and waits until it is ready.
    pub fn start_ready(model: &Path, extra: &[&str]) -> Self {
        let mut args = vec!["--model", model.to_str().expect("utf-8 model path")];
        args.extend_from_slice(extra);
        let server = Self::start(&args, &[]);
        server.wait_ready();
        server
    }

    /// Starts the server on a reference checkpoint, on the CPU (where the
    /// references were computed), with `extra` args, and waits until ready.
    pub fn start_fixture(dir: &Path, extra: &[&str]) -> Self {
        let mut args = vec!["--device", "cpu"];
        args.extend_from_slice(extra);
        Self::start_ready(dir, &args)
    }

    /// Starts `cmd` as-is (the caller chooses host and port).
    pub fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd.spawn().expect("spawn appliance-server");
        let output = Arc::new(Mutex::new(String::new()));
        for pipe in [
            Box::new(child.stdout.take().expect("stdout piped")) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().expect("stderr piped")),
        ] {
            let output = Arc::clone(&output);
            thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    let mut out = output.lock().expect("output lock");
                    out.push_str(&line);
                    out.push('\n');
                }
            });
        }
        let mut server = Self {
            child,
            port: 0,
            output,
        };
        server.port = server.wait_for_listening();
        server
    }

    fn wait_for_listening(&mut self) -> u16 {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            let out = self.output();
            if let Some(rest) = out.split("listening on http://").nth(1) {
                let addr: SocketAddr = rest
                    .split_whitespace()
                    .next()
                    .and_then(|a| a.parse().ok())
                    .unwrap_or_else(|| panic!("unparseable listening line in:\n{out}"));
                return addr.port();
            }
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!("server exited early with {status}:\n{out}");
            }
            assert!(
                Instant::now() < deadline,
                "server did not start listening within {STARTUP_TIMEOUT:?}:\n{out}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Polls `/ready` until 200; returns its body.
    pub fn wait_ready(&self) -> serde_json::Value {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            let r = get(self.port, "/ready", &[]);
            if r.status == 200 {
                return r.json();
            }
            assert!(
                Instant::now() < deadline,
                "server not ready within {STARTUP_TIMEOUT:?}: last {r:?}\n{}",
                self.output()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Everything the server wrote to stdout and stderr so far.
    pub fn output(&self) -> String {
        self.output.lock().expect("output lock").clone()
    }

    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("pid fits i32")
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: plain kill(2) on the pid of a child this test spawned and
        // has not yet reaped, so the pid cannot have been reused.
        let rc = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(rc, 0, "kill({}, {signal}) failed", self.pid());
    }

    /// Waits for the process to exit; fails the test after [`EXIT_TIMEOUT`].
    pub fn wait_exit(&mut self) -> ExitStatus {
        match wait_with_deadline(&mut self.child, EXIT_TIMEOUT) {
            Some(status) => {
                // Give the reader threads a moment to drain the pipes.
                thread::sleep(Duration::from_millis(100));
                status
            }
            None => panic!(
                "server did not exit within {EXIT_TIMEOUT:?}:\n{}",
                self.output()
            ),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Response {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    }
}

pub fn get(port: u16, path: &str, headers: &[(&str, &str)]) -> Response {
    request(port, "GET", path, headers, "")
}

/// One request over a fresh connection with `Connection: close`.
pub fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Response {
    let mut stream = connect(port);
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !body.is_empty() {
        req.push_str("Content-Type: application/json\r\n");
    }
    for (name, value) in headers {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    stream.write_all(req.as_bytes()).expect("send request");
    read_response(&mut stream)
}

pub fn connect(port: u16) -> TcpStream {
    let stream = TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), IO_TIMEOUT)
        .expect("connect to server");
    stream.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    stream.set_write_timeout(Some(IO_TIMEOUT)).expect("timeout");
    stream
}

/// Reads a whole `Connection: close` response (server closes after it).
pub fn read_response(stream: &mut TcpStream) -> Response {
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read response");
    let text = String::from_utf8(raw).expect("UTF-8 response");
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header terminator in {text:?}"));
    Response {
        status: status_code(head),
        head: head.to_owned(),
        body: body.to_owned(),
    }
}

/// The status code from a response head's status line.
pub fn status_code(head: &str) -> u16 {
    head.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {head:?}"))
}

/// A port nothing listens on (bound, then released).
pub fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// The JSON object `base` with the fields of `extra` added or replaced.
pub fn merged(mut base: serde_json::Value, extra: &serde_json::Value) -> serde_json::Value {
    base.as_object_mut()
        .expect("base is an object")
        .extend(extra.as_object().expect("extra is an object").clone());
    base
}

/// Asserts the OpenAI error shape and returns `error.type`.
pub fn assert_openai_error(r: &Response, status: u16) -> String {
    assert_eq!(r.status, status, "{r:?}");
    let v = r.json();
    let err = v
        .get("error")
        .unwrap_or_else(|| panic!("no error object: {v}"));
    assert!(
        err["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{v}"
    );
    for key in ["type", "param", "code"] {
        assert!(err.get(key).is_some(), "missing error.{key}: {v}");
    }
    err["type"]
        .as_str()
        .expect("error.type is a string")
        .to_owned()
}

/// Lists a directory's entries, for "wrote nothing" checks.
pub fn list_dir(path: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(path)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// `../shared/fixtures/models`, beside the workspace.
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/models")
}

/// The reference checkpoints (`../shared/fixtures/models/*`, plus the project's own in
/// `runtime/tests/fixtures/*`, each with a `reference.json`), sorted by name.
/// Panics, failing the test, when the shared ones are missing: numerics are never silently skipped.
pub fn fixture_checkpoints() -> Vec<PathBuf> {
    let dir = fixtures_dir();
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| {
        panic!(
            "reference fixtures missing at {} ({e}); these tests need them",
            dir.display()
        )
    });
    let own = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let own = std::fs::read_dir(&own)
        .unwrap_or_else(|e| panic!("project fixtures missing at {} ({e})", own.display()));
    let mut dirs: Vec<PathBuf> = entries
        .chain(own)
        .map(|e| e.expect("fixture entry").path())
        .filter(|p| p.join("reference.json").is_file())
        .collect();
    dirs.sort_by_key(|p| p.file_name().map(|n| n.to_owned()));
    assert!(!dirs.is_empty(), "no checkpoints in {}", dir.display());
    dirs
}

/// A checkpoint's `reference.json`: what transformers (float32, greedy)
/// made of each prompt.
#[derive(Debug, serde::Deserialize)]
pub struct Reference {
    pub max_new_tokens: usize,
    pub cases: Vec<Case>,
}

#[derive(Debug, serde::Deserialize)]
pub struct Case {
    /// `completion` (`prompt` is a string) or `chat` (a message list).
    pub kind: String,
    pub prompt: serde_json::Value,
    pub input_ids: Vec<u32>,
    pub output_ids: Vec<u32>,
    /// Decoded with special tokens (see [`without_special_tokens`]).
    pub output_text: String,
    pub finish_reason: String,
    pub first_logits_top5: Top5,
}

#[derive(Debug, serde::Deserialize)]
pub struct Top5 {
    pub ids: Vec<u32>,
    pub values: Vec<f32>,
}

impl Reference {
    /// The first case of `kind`.
    pub fn case(&self, kind: &str) -> &Case {
        self.cases
            .iter()
            .find(|c| c.kind == kind)
            .unwrap_or_else(|| panic!("a {kind} case"))
    }
}

/// A checkpoint's `reference.json`.
pub fn fixture_reference(dir: &Path) -> Reference {
    let raw = std::fs::read(dir.join("reference.json")).expect("read reference.json");
    serde_json::from_slice(&raw).expect("parse reference.json")
}

/// `text` without the checkpoint's special tokens: the reference decodes
/// with them, OpenAI servers leave them out (vLLM's `skip_special_tokens`
/// default).
pub fn without_special_tokens(dir: &Path, text: &str) -> String {
    let raw = fs::read(dir.join("tokenizer.json")).expect("read tokenizer.json");
    let tokenizer: serde_json::Value = serde_json::from_slice(&raw).expect("tokenizer JSON");
    let mut text = text.to_owned();
    for t in tokenizer["added_tokens"].as_array().expect("added_tokens") {
        if t["special"] == true {
            text = text.replace(t["content"].as_str().expect("content"), "");
        }
    }
    text
}

/// Runs `tests/<script>` (an OpenAI-client script) with `input` as JSON on stdin against
/// `server`, and returns the JSON it prints. Only 127.0.0.1 is reached: no proxy may intercept
/// the client's requests. Fails with the script's and the server's output.
#[allow(dead_code)]
pub fn run_client_script(
    script: &str,
    input: &serde_json::Value,
    server: &Server,
    deadline: Duration,
) -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(script);
    let mut python = Command::new("python3");
    python.arg(&path).env("NO_PROXY", "*");
    for var in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        python.env_remove(var);
    }
    let mut child = spawn_with_input(
        &mut python,
        input.to_string().as_bytes(),
        "run python3 (scripts/install-test-deps installs it with openai and jsonschema)",
    );
    let status = wait_with_deadline(&mut child, deadline).unwrap_or_else(|| {
        let _ = child.kill();
        panic!("{script} did not finish within {deadline:?}")
    });
    let output = child.wait_with_output().expect("script output");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        status.success(),
        "{script} failed ({status}):\n{stderr}\n{stdout}\nserver log:\n{}",
        server.output()
    );
    serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("{script} output is not JSON ({e}): {stdout}\n{stderr}"))
}
