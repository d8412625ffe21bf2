//! Serving behaviour of the real binary: SSE streaming framing and chunk
//! shapes (checked against the reference fixtures), concurrent requests,
//! the bounded queue (429 + `Retry-After`), cancellation on client
//! disconnect, SIGTERM draining a stream, and the per-request log line.
//!
//! "Long" generations use the tiny test model with a context of 2^20
//! tokens and `ignore_eos`: running to the end would take far longer than
//! any deadline here, so a test that relies on a slot being freed fails
//! (by deadline) unless cancellation really happened. No assertion is
//! about elapsed time.

use crate::common;

use std::{
    fs,
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    thread,
    time::{Duration, Instant},
};

use common::{
    Response, Server, assert_openai_error, connect, get, request, without_special_tokens,
};
use serde_json::{Value, json};

const DEADLINE: Duration = Duration::from_secs(30);

fn start_fixture(name: &str, extra: &[&str]) -> Server {
    Server::start_fixture(&common::fixtures_dir().join(name), extra)
}

/// The tiny model with a context so long that generating to its end never
/// happens within a test.
fn long_context_model() -> common::ModelDir {
    let model = common::model_dir("tiny");
    let path = model.path.join("config.json");
    let mut config: Value =
        serde_json::from_slice(&fs::read(&path).expect("read config")).expect("config JSON");
    config["max_position_embeddings"] = json!(1 << 20);
    fs::write(&path, config.to_string()).expect("write config");
    model
}

fn start_tiny(model: &common::ModelDir, extra: &[&str]) -> Server {
    Server::start_ready(&model.path, extra)
}

/// KV memory for the long-context model: 2^21 tokens of its 32 bytes each,
/// instead of a default sized for --max-num-seqs sequences of 2^20.
const LONG_CONTEXT_KV: [&str; 2] = ["--kv-cache-memory", "64MiB"];

/// The tiny model on one generation slot with `max_queued` waiting places.
fn start_one_slot(model: &common::ModelDir, max_queued: &str) -> Server {
    start_tiny(
        model,
        &[
            "--max-concurrent-requests",
            "1",
            "--max-queued-requests",
            max_queued,
            LONG_CONTEXT_KV[0],
            LONG_CONTEXT_KV[1],
        ],
    )
}

fn endless(stream: bool) -> Value {
    json!({"model": "tiny", "prompt": "hello world", "max_tokens": 1 << 19,
        "ignore_eos": true, "temperature": 0, "stream": stream})
}

/// A request that fits any free slot at once.
fn short() -> Value {
    json!({"model": "tiny", "prompt": "hi", "max_tokens": 2, "ignore_eos": true})
}

fn post(port: u16, path: &str, body: &Value) -> Response {
    request(port, "POST", path, &[], &body.to_string())
}

/// An SSE response read incrementally from a raw socket: HTTP/1.1 chunked
/// transfer decoding, then frames split at the blank line.
struct Sse {
    reader: BufReader<TcpStream>,
    status: u16,
    head: String,
    pending: Vec<u8>,
    body_done: bool,
}

impl Sse {
    fn open(port: u16, path: &str, body: &Value) -> Self {
        let mut stream = connect(port);
        let body = body.to_string();
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(req.as_bytes()).expect("send request");
        let mut reader = BufReader::new(stream);
        let mut head = String::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).expect("read head");
            assert!(!line.is_empty(), "connection closed in the head: {head:?}");
            if line == "\r\n" {
                break;
            }
            head.push_str(&line);
        }
        Self {
            reader,
            status: common::status_code(&head),
            head,
            pending: Vec::new(),
            body_done: false,
        }
    }

    fn header(&self, name: &str) -> Option<String> {
        Response {
            status: self.status,
            head: self.head.clone(),
            body: String::new(),
        }
        .header(name)
    }

    /// Reads one transfer chunk into `pending`; false at the last chunk.
    fn read_chunk(&mut self) -> bool {
        let mut size = String::new();
        self.reader.read_line(&mut size).expect("chunk size");
        let size = usize::from_str_radix(size.trim_end(), 16)
            .unwrap_or_else(|_| panic!("bad chunk size line {size:?}"));
        let mut data = vec![0; size + 2];
        self.reader.read_exact(&mut data).expect("chunk data");
        assert_eq!(&data[size..], b"\r\n", "chunk not terminated by CRLF");
        data.truncate(size);
        self.pending.extend_from_slice(&data);
        size > 0
    }

    /// The next raw frame (`data: …\n\n`), or `None` at the end of the body.
    fn next_frame(&mut self) -> Option<String> {
        loop {
            if let Some(at) = self.pending.windows(2).position(|w| w == b"\n\n") {
                let frame: Vec<u8> = self.pending.drain(..at + 2).collect();
                return Some(String::from_utf8(frame).expect("UTF-8 frame"));
            }
            if self.body_done {
                assert!(
                    self.pending.is_empty(),
                    "bytes after the last frame: {:?}",
                    String::from_utf8_lossy(&self.pending)
                );
                return None;
            }
            self.body_done = !self.read_chunk();
        }
    }

    /// The next frame's JSON (`None` for `[DONE]`), checking the framing:
    /// exactly one `data: ` line per frame, nothing else.
    fn next_json(&mut self) -> Option<Value> {
        let frame = self.next_frame().expect("a frame before the end");
        let data = frame
            .strip_prefix("data: ")
            .and_then(|f| f.strip_suffix("\n\n"))
            .unwrap_or_else(|| panic!("not a data frame: {frame:?}"));
        assert!(!data.contains('\n'), "multi-line frame: {frame:?}");
        if data == "[DONE]" {
            return None;
        }
        Some(serde_json::from_str(data).unwrap_or_else(|e| panic!("frame JSON ({e}): {data}")))
    }

    /// Every JSON frame up to `[DONE]`, then checks the body ends there.
    fn collect(mut self) -> Vec<Value> {
        assert_eq!(self.status, 200, "{}", self.head);
        let mut frames = Vec::new();
        while let Some(v) = self.next_json() {
            frames.push(v);
        }
        assert_eq!(self.next_frame(), None, "a frame after [DONE]");
        frames
    }
}

fn ids(v: &Value) -> Vec<u32> {
    serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("token ids ({e}): {v}"))
}

#[test]
fn streams_reproduce_the_reference_with_openai_chunk_shapes() {
    for name in ["llama-gqa", "qwen2-tied"] {
        let dir = common::fixtures_dir().join(name);
        let reference = common::fixture_reference(&dir);
        let server = start_fixture(name, &[]);
        for (i, case) in reference.cases.iter().enumerate() {
            let label = format!("{name} case {i} ({})", case.kind);
            let chat = case.kind == "chat";
            let (path, mut body) = if chat {
                (
                    "/v1/chat/completions",
                    json!({"model": name, "messages": case.prompt}),
                )
            } else {
                (
                    "/v1/completions",
                    json!({"model": name, "prompt": case.prompt}),
                )
            };
            body["max_tokens"] = json!(reference.max_new_tokens);
            body["temperature"] = json!(0);
            let whole = post(server.port, path, &body);
            assert_eq!(whole.status, 200, "{label}: {whole:?}");
            let whole = whole.json();

            body["stream"] = json!(true);
            body["stream_options"] = json!({"include_usage": true});
            body["return_token_ids"] = json!(true);
            let sse = Sse::open(server.port, path, &body);
            assert_eq!(
                sse.header("content-type").as_deref(),
                Some("text/event-stream"),
                "{label}"
            );
            let frames = sse.collect();
            let (last, chunks) = frames.split_last().expect("frames");
            let (finale, content) = chunks.split_last().expect("a final chunk");
            let object = if chat {
                "chat.completion.chunk"
            } else {
                "text_completion"
            };
            for f in &frames {
                assert_eq!(f["object"], object, "{label}: {f}");
                assert_eq!(f["id"], frames[0]["id"], "{label}: one id per stream");
                assert_eq!(f["model"], name, "{label}");
                assert!(f["created"].as_u64().is_some_and(|t| t > 0), "{label}");
            }
            for f in chunks {
                assert_eq!(f["choices"].as_array().map(Vec::len), Some(1), "{f}");
                assert!(f["usage"].is_null() && f.get("usage").is_some(), "{f}");
            }
            // The usage chunk: no choices, the totals.
            assert_eq!(last["choices"], json!([]), "{label}");
            let n = case.output_ids.len();
            // Earlier cases of the same template may have left part of the
            // prompt in the prefix cache.
            let cached = last["usage"]["prompt_tokens_details"]["cached_tokens"]
                .as_u64()
                .unwrap_or_else(|| panic!("{label}: no cached_tokens in {last}"));
            assert!(
                cached % 16 == 0 && cached < case.input_ids.len() as u64,
                "{label}: {last}"
            );
            assert_eq!(
                last["usage"],
                json!({"prompt_tokens": case.input_ids.len(), "completion_tokens": n,
                    "total_tokens": case.input_ids.len() + n,
                    "prompt_tokens_details": {"cached_tokens": cached}}),
                "{label}"
            );
            assert_eq!(finale["choices"][0]["finish_reason"], case.finish_reason);
            let mut text = String::new();
            let mut tokens = Vec::new();
            for f in content {
                let choice = &f["choices"][0];
                assert!(choice["finish_reason"].is_null(), "{label}: {f}");
                tokens.extend(ids(&choice["token_ids"]));
            }
            tokens.extend(ids(&finale["choices"][0]["token_ids"]));
            assert_eq!(tokens, case.output_ids, "{label}");
            if chat {
                let first = &content[0]["choices"][0]["delta"];
                assert_eq!(
                    *first,
                    json!({"role": "assistant", "content": ""}),
                    "{label}"
                );
                assert_eq!(ids(&content[0]["prompt_token_ids"]), case.input_ids);
                for f in &content[1..] {
                    let delta = &f["choices"][0]["delta"];
                    assert!(delta.get("role").is_none(), "{label}: {f}");
                    let piece = delta["content"].as_str().expect("content delta");
                    assert!(!piece.is_empty(), "{label}: empty delta {f}");
                    text.push_str(piece);
                }
                assert_eq!(finale["choices"][0]["delta"], json!({}), "{label}");
                assert_eq!(text, whole["choices"][0]["message"]["content"], "{label}");
            } else {
                let first = &content[0]["choices"][0];
                assert_eq!(ids(&first["prompt_token_ids"]), case.input_ids, "{label}");
                for f in content {
                    text.push_str(f["choices"][0]["text"].as_str().expect("text"));
                }
                assert_eq!(finale["choices"][0]["text"], "", "{label}");
                assert_eq!(text, whole["choices"][0]["text"], "{label}");
            }
            assert_eq!(
                text,
                without_special_tokens(&dir, &case.output_text),
                "{label}: transformers' decode"
            );
        }
    }
}

#[test]
fn streams_never_emit_stop_strings() {
    let name = "llama-gqa";
    let dir = common::fixtures_dir().join(name);
    let reference = common::fixture_reference(&dir);
    let case = &reference.cases[0];
    let server = start_fixture(name, &[]);
    // A stop string made of the ends of two tokens' texts, so that its
    // first part must be held back while it is still only a prefix.
    let text = &case.output_text;
    let chars: Vec<char> = text.chars().collect();
    let stop: String = chars[chars.len() / 2..chars.len() / 2 + 3].iter().collect();
    let cut = text.find(&stop).expect("stop occurs");
    let body = json!({"model": name, "prompt": case.prompt, "max_tokens": reference.max_new_tokens,
        "temperature": 0, "stop": [stop], "stream": true});
    let frames = Sse::open(server.port, "/v1/completions", &body).collect();
    let streamed: String = frames
        .iter()
        .map(|f| f["choices"][0]["text"].as_str().expect("text"))
        .collect();
    assert_eq!(streamed, text[..cut], "stop {stop:?} in {text:?}");
    let last = frames.last().expect("a final chunk");
    assert_eq!(last["choices"][0]["finish_reason"], "stop");
}

#[test]
fn parallel_greedy_requests_match_sequential_ones() {
    let name = "mistral";
    let dir = common::fixtures_dir().join(name);
    let reference = common::fixture_reference(&dir);
    let server = start_fixture(name, &["--max-concurrent-requests", "4"]);
    let port = server.port;
    let bodies: Vec<(&str, Value)> = reference
        .cases
        .iter()
        .map(|c| {
            let key = if c.kind == "chat" {
                "messages"
            } else {
                "prompt"
            };
            let path = if c.kind == "chat" {
                "/v1/chat/completions"
            } else {
                "/v1/completions"
            };
            (
                path,
                json!({"model": name, key: c.prompt, "max_tokens": reference.max_new_tokens,
                    "temperature": 0, "return_token_ids": true}),
            )
        })
        .collect();
    let run = |(path, body): &(&str, Value)| {
        let r = post(port, path, body);
        assert_eq!(r.status, 200, "{r:?}");
        ids(&r.json()["choices"][0]["token_ids"])
    };
    let sequential: Vec<Vec<u32>> = bodies.iter().map(run).collect();
    for (got, case) in sequential.iter().zip(&reference.cases) {
        assert_eq!(*got, case.output_ids);
    }
    // 12 requests at once on 4 slots: some wait in the queue.
    let parallel: Vec<Vec<Vec<u32>>> = thread::scope(|s| {
        let handles: Vec<_> = (0..3)
            .flat_map(|_| bodies.iter())
            .map(|b| s.spawn(move || run(b)))
            .collect();
        let results: Vec<Vec<u32>> = handles
            .into_iter()
            .map(|h| h.join().expect("client thread"))
            .collect();
        results.chunks(bodies.len()).map(<[_]>::to_vec).collect()
    });
    for round in parallel {
        assert_eq!(round, sequential);
    }
}

/// Polls `/metrics` until `line_prefix` shows `value`.
fn wait_for_metric(port: u16, line_prefix: &str, value: &str) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let body = get(port, "/metrics", &[]).body;
        let found = body
            .lines()
            .any(|l| l.starts_with(line_prefix) && l.rsplit(' ').next() == Some(value));
        if found {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{line_prefix} never became {value}:\n{body}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

fn abort_count_line() -> &'static str {
    "vllm:request_success_total{finished_reason=\"abort\""
}

/// Sends `body` until it is served (200), accepting only 429s before that.
fn served_eventually(port: u16, body: &Value) -> Value {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let r = post(port, "/v1/completions", body);
        if r.status == 200 {
            return r.json();
        }
        assert_openai_error(&r, 429);
        assert!(Instant::now() < deadline, "the slot was never freed");
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_full_queue_answers_429_with_retry_after() {
    let model = long_context_model();
    let server = start_one_slot(&model, "0");
    let port = server.port;
    let mut long = Sse::open(port, "/v1/completions", &endless(true));
    assert_eq!(long.status, 200);
    assert!(long.next_json().is_some(), "the long stream started");
    let short = short();
    let r = post(port, "/v1/completions", &short);
    assert_eq!(assert_openai_error(&r, 429), "overloaded");
    assert_eq!(r.header("retry-after").as_deref(), Some("1"));
    assert_eq!(r.json()["error"]["code"], "queue_full");
    let r = post(
        port,
        "/v1/chat/completions",
        &json!({"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}),
    );
    assert_openai_error(&r, 429);
    // Refusals are not request outcomes.
    let metrics = get(port, "/metrics", &[]).body;
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("vllm:request_success_total{") && !l.ends_with(" 0")),
        "{metrics}"
    );
    drop(long);
    let v = served_eventually(port, &short);
    assert_eq!(v["usage"]["completion_tokens"], 2, "{v}");
}

#[test]
fn one_queued_request_waits_and_the_next_gets_429() {
    let model = long_context_model();
    let server = start_one_slot(&model, "1");
    let port = server.port;
    let mut running = Sse::open(port, "/v1/completions", &endless(true));
    assert!(running.next_json().is_some(), "the long stream started");
    // Admitted (headers sent) but waiting for the only slot.
    let waiting_body = json!({"model": "tiny", "prompt": "hi", "max_tokens": 3,
        "ignore_eos": true, "stream": true});
    let waiting = Sse::open(port, "/v1/completions", &waiting_body);
    assert_eq!(waiting.status, 200);
    wait_for_metric(port, "vllm:num_requests_waiting{", "1");
    wait_for_metric(port, "vllm:num_requests_running{", "1");
    let short = short();
    let r = post(port, "/v1/completions", &short);
    assert_openai_error(&r, 429);
    assert_eq!(r.header("retry-after").as_deref(), Some("1"));

    // A waiting client that leaves gives its queue place back at once.
    drop(waiting);
    wait_for_metric(port, "vllm:num_requests_waiting{", "0");
    wait_for_metric(port, abort_count_line(), "1");
    let waiting = Sse::open(port, "/v1/completions", &waiting_body);
    assert_eq!(waiting.status, 200);
    wait_for_metric(port, "vllm:num_requests_waiting{", "1");

    drop(running);
    let frames = waiting.collect();
    let last = frames.last().expect("final chunk");
    assert_eq!(last["choices"][0]["finish_reason"], "length");
    wait_for_metric(port, abort_count_line(), "2");
    let v = served_eventually(port, &short);
    assert_eq!(v["choices"][0]["finish_reason"], "length");
}

#[test]
fn a_disconnected_client_frees_the_only_slot() {
    let model = long_context_model();
    let server = start_one_slot(&model, "0");
    let port = server.port;
    let short = short();

    // Streaming: the client reads a chunk, then goes away.
    let mut sse = Sse::open(port, "/v1/completions", &endless(true));
    assert!(sse.next_json().is_some());
    drop(sse);
    served_eventually(port, &short);
    wait_for_metric(port, abort_count_line(), "1");

    // Non-streaming: the client gives up while the generation runs.
    let mut stream = connect(port);
    let body = endless(false).to_string();
    write!(
        stream,
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    wait_for_metric(port, "vllm:num_requests_running{", "1");
    drop(stream);
    served_eventually(port, &short);
    wait_for_metric(port, abort_count_line(), "2");

    let log = server.output();
    let aborted: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" finished: ") && l.contains("finish=abort"))
        .collect();
    assert_eq!(aborted.len(), 2, "{log}");
    for line in aborted {
        let generated: usize = line
            .split("generation_tokens=")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no generation_tokens in {line}"));
        assert!(generated < 1 << 19, "{line}");
    }
}

#[test]
fn sigterm_drains_a_streaming_request() {
    let model = long_context_model();
    let mut server = start_tiny(
        &model,
        &[
            "--shutdown-timeout",
            "60",
            LONG_CONTEXT_KV[0],
            LONG_CONTEXT_KV[1],
        ],
    );
    // Seconds of generation (debug build), so the signal arrives while
    // the stream is still being generated.
    let n = 4000;
    let body = json!({"model": "tiny", "prompt": "hello", "max_tokens": n, "ignore_eos": true,
        "temperature": 0, "stream": true, "return_token_ids": true});
    let mut sse = Sse::open(server.port, "/v1/completions", &body);
    let first = sse.next_json().expect("first chunk");
    server.signal(libc::SIGTERM);
    let mut tokens = ids(&first["choices"][0]["token_ids"]).len();
    let frames = sse.collect();
    for f in &frames {
        tokens += ids(&f["choices"][0]["token_ids"]).len();
    }
    assert_eq!(tokens, n, "the whole stream arrived");
    let last = frames.last().expect("final chunk");
    assert_eq!(last["choices"][0]["finish_reason"], "length");
    assert_eq!(server.wait_exit().code(), Some(0), "{}", server.output());
    let log = server.output();
    assert!(log.contains("received SIGTERM"), "{log}");
    assert!(log.contains(&format!("generation_tokens={n} ")), "{log}");
}

#[test]
fn each_request_logs_one_line_without_the_key() {
    let model = common::model_dir("tiny");
    let key = "sk-serving-test-key-7f3a";
    let server = start_tiny(&model, &["--api-key", key]);
    let auth = format!("Bearer {key}");
    let body = json!({"model": "tiny", "prompt": "hello", "max_tokens": 5, "ignore_eos": true});
    let r = request(
        server.port,
        "POST",
        "/v1/completions",
        &[("Authorization", &auth)],
        &body.to_string(),
    );
    assert_eq!(r.status, 200, "{r:?}");
    let id = r.json()["id"].as_str().expect("id").to_owned();
    let deadline = Instant::now() + DEADLINE;
    let line = loop {
        let log = server.output();
        if let Some(line) = log.lines().find(|l| l.contains(&id)) {
            break line.to_owned();
        }
        assert!(Instant::now() < deadline, "no log line for {id}:\n{log}");
        thread::sleep(Duration::from_millis(20));
    };
    assert!(line.contains(" INFO "), "{line}");
    for part in [
        "prompt_tokens=1 ",
        "generation_tokens=5 ",
        "queue=",
        "ttft=",
        "total=",
        "finish=length",
    ] {
        assert!(line.contains(part), "{part:?} missing in {line}");
    }
    assert_eq!(server.output().matches(&id).count(), 1);
    assert!(
        !server.output().contains(key),
        "the key leaked into the log"
    );
}

#[test]
fn generation_config_defaults_apply_when_the_request_leaves_them_unset() {
    let model = common::model_dir("tiny");
    let greedy = |server: &Server, extra: Value| {
        let body = common::merged(
            json!({"model": "tiny", "prompt": "hello", "max_tokens": 12, "ignore_eos": true,
                "return_token_ids": true}),
            &extra,
        );
        let r = post(server.port, "/v1/completions", &body);
        assert_eq!(r.status, 200, "{r:?}");
        ids(&r.json()["choices"][0]["token_ids"])
    };
    // Reference: explicit greedy, no defaults file.
    let server = start_tiny(&model, &[]);
    let reference = greedy(&server, json!({"temperature": 0}));
    drop(server);

    // The file makes unset requests greedy; an explicit temperature wins.
    let write = |v: Value| {
        fs::write(model.path.join("generation_config.json"), v.to_string()).expect("write")
    };
    write(json!({"temperature": 0.0, "top_k": 1}));
    let server = start_tiny(&model, &[]);
    for _ in 0..3 {
        assert_eq!(greedy(&server, json!({})), reference);
    }
    let sampled: Vec<Vec<u32>> = (0..4u64)
        .map(|seed| {
            greedy(
                &server,
                json!({"temperature": 2.0, "top_k": -1, "seed": seed}),
            )
        })
        .collect();
    assert!(
        sampled.iter().any(|s| *s != reference),
        "explicit sampling settings were overridden: {sampled:?}"
    );
    drop(server);

    // Every eos_token_id listed there stops generation (without ignore_eos).
    let stop_at = reference[3];
    write(json!({"temperature": 0.0, "eos_token_id": [1, stop_at]}));
    let server = start_tiny(&model, &[]);
    let body = json!({"model": "tiny", "prompt": "hello", "max_tokens": 12,
        "return_token_ids": true});
    let v = post(server.port, "/v1/completions", &body).json();
    let got = ids(&v["choices"][0]["token_ids"]);
    let first = reference
        .iter()
        .position(|&t| t == stop_at || t == 1)
        .expect("occurs");
    assert_eq!(got, reference[..first], "{v}");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    drop(server);

    // `max_new_tokens` there is the default `max_tokens` of chat requests, as in vLLM; legacy
    // completions keep OpenAI's 16.
    write(json!({"temperature": 0.0, "max_new_tokens": 3}));
    let server = start_tiny(&model, &[]);
    let chat = post(
        server.port,
        "/v1/chat/completions",
        &json!({"model": "tiny", "messages": [{"role": "user", "content": "hello"}],
            "ignore_eos": true}),
    );
    assert_eq!(chat.status, 200, "{chat:?}");
    let v = chat.json();
    assert_eq!(v["usage"]["completion_tokens"], 3, "{v}");
    assert_eq!(v["choices"][0]["finish_reason"], "length", "{v}");
    let v = post(
        server.port,
        "/v1/completions",
        &json!({"model": "tiny", "prompt": "hello", "ignore_eos": true}),
    )
    .json();
    assert_eq!(v["usage"]["completion_tokens"], 16, "{v}");
}

#[test]
fn penalties_change_greedy_output_over_http() {
    let name = "llama-gqa";
    let dir = common::fixtures_dir().join(name);
    let reference = common::fixture_reference(&dir);
    let case = reference
        .cases
        .iter()
        .find(|c| {
            let mut seen = c.output_ids.clone();
            seen.sort_unstable();
            seen.dedup();
            seen.len() < c.output_ids.len()
        })
        .expect("a case whose greedy output repeats an id");
    let server = start_fixture(name, &[]);
    let run = |extra: Value| {
        let body = common::merged(
            json!({"model": name, "prompt": case.input_ids, "temperature": 0,
                "max_tokens": reference.max_new_tokens, "return_token_ids": true}),
            &extra,
        );
        let r = post(server.port, "/v1/completions", &body);
        assert_eq!(r.status, 200, "{r:?}");
        ids(&r.json()["choices"][0]["token_ids"])
    };
    assert_eq!(run(json!({})), case.output_ids);
    assert_eq!(
        run(json!({"presence_penalty": 0, "repetition_penalty": 1})),
        case.output_ids,
        "neutral values change nothing"
    );
    let out = run(json!({"presence_penalty": 2, "frequency_penalty": 2}));
    assert_ne!(out, case.output_ids);
    assert_eq!(
        out[0], case.output_ids[0],
        "nothing generated yet to penalize"
    );
    assert_ne!(run(json!({"repetition_penalty": 2})), case.output_ids);
}

/// A `vllm:` counter's value (summed over its label sets).
fn counter(port: u16, name: &str) -> f64 {
    get(port, "/metrics", &[])
        .body
        .lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The logprob entries of a chat choice, or of a completion choice in chat's
/// shape (`token`, `logprob`, and `top_logprobs` as sorted `(token, logprob)`).
type LogprobEntry = (String, f64, Vec<(String, f64)>);

fn logprob_entries(choice: &Value, chat: bool) -> Vec<LogprobEntry> {
    let lp = &choice["logprobs"];
    if chat {
        lp["content"]
            .as_array()
            .unwrap_or_else(|| panic!("no logprobs.content in {choice}"))
            .iter()
            .map(|e| {
                let bytes: Vec<u8> = serde_json::from_value(e["bytes"].clone()).expect("bytes");
                let token = e["token"].as_str().expect("token").to_owned();
                assert_eq!(
                    String::from_utf8_lossy(&bytes),
                    token,
                    "bytes spell the token"
                );
                let top = e["top_logprobs"]
                    .as_array()
                    .expect("top_logprobs")
                    .iter()
                    .map(|t| {
                        (
                            t["token"].as_str().unwrap().to_owned(),
                            t["logprob"].as_f64().unwrap(),
                        )
                    })
                    .collect();
                (token, e["logprob"].as_f64().expect("logprob"), top)
            })
            .collect()
    } else {
        let tokens = lp["tokens"].as_array().expect("tokens");
        (0..tokens.len())
            .map(|i| {
                let mut top: Vec<(String, f64)> = lp["top_logprobs"][i]
                    .as_object()
                    .expect("top_logprobs map")
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_f64().unwrap()))
                    .collect();
                top.sort_by(|a, b| b.1.total_cmp(&a.1));
                (
                    tokens[i].as_str().unwrap().to_owned(),
                    lp["token_logprobs"][i].as_f64().expect("token_logprob"),
                    top,
                )
            })
            .collect()
    }
}

#[test]
fn logprobs_are_the_reference_distribution_whole_and_streamed() {
    for name in ["llama-gqa", "qwen2-tied", "mistral"] {
        let dir = common::fixtures_dir().join(name);
        let reference = common::fixture_reference(&dir);
        let server = start_fixture(name, &[]);
        for (i, case) in reference.cases.iter().enumerate() {
            let label = format!("{name} case {i} ({})", case.kind);
            let chat = case.kind == "chat";
            let (path, mut body) = if chat {
                let body = json!({"model": name, "messages": case.prompt,
                    "logprobs": true, "top_logprobs": 5});
                ("/v1/chat/completions", body)
            } else {
                let body = json!({"model": name, "prompt": case.input_ids, "logprobs": 5});
                ("/v1/completions", body)
            };
            body["max_tokens"] = json!(reference.max_new_tokens);
            body["temperature"] = json!(0);
            body["return_token_ids"] = json!(true);
            let whole = post(server.port, path, &body);
            assert_eq!(whole.status, 200, "{label}: {whole:?}");
            let choice = whole.json()["choices"][0].clone();
            assert_eq!(ids(&choice["token_ids"]), case.output_ids, "{label}");
            let entries = logprob_entries(&choice, chat);
            assert_eq!(
                entries.len(),
                case.output_ids.len(),
                "{label}: one per token"
            );
            for (token, logprob, top) in &entries {
                // Completions key the alternatives by text: two ids with the same lossy text
                // share an entry.
                assert!(
                    top.len() == 5 || (!chat && (1..5).contains(&top.len())),
                    "{label}"
                );
                assert!(
                    top.windows(2).all(|w| w[0].1 >= w[1].1),
                    "{label}: sorted {top:?}"
                );
                // Greedy: the sampled token is the most likely one.
                assert_eq!(top[0], (token.clone(), *logprob), "{label}");
                assert!(*logprob <= 0.0, "{label}");
                let mass: f64 = top.iter().map(|t| t.1.exp()).sum();
                assert!(mass <= 1.0 + 1e-5, "{label}: {mass}");
            }
            // The first token's top 5 against transformers' logits: a log-softmax keeps
            // differences between logits.
            let (_, first, top) = &entries[0];
            let want = &case.first_logits_top5.values;
            for (k, (_, lp)) in top.iter().enumerate().take_while(|_| top.len() == 5) {
                let (got, want) = (lp - first, f64::from(want[k] - want[0]));
                assert!(
                    (got - want).abs() < 2e-3,
                    "{label}: top {k}: {got} vs {want}"
                );
            }
            if !chat {
                let offsets = &choice["logprobs"]["text_offset"];
                assert_eq!(offsets[0], 0, "{label}");
            }

            body["stream"] = json!(true);
            let frames = Sse::open(server.port, path, &body).collect();
            let mut streamed = Vec::new();
            let mut streamed_offsets = Vec::new();
            for f in &frames {
                let c = &f["choices"][0];
                if chat {
                    streamed.extend(logprob_entries(c, true));
                } else {
                    streamed.extend(logprob_entries(c, false));
                    for o in c["logprobs"]["text_offset"].as_array().expect("offsets") {
                        streamed_offsets.push(o.clone());
                    }
                }
            }
            // The same tokens with the same values, up to float rounding: the second request
            // finds the prompt in the prefix cache, so its prefill runs in other chunks.
            assert_eq!(streamed.len(), entries.len(), "{label}: streamed logprobs");
            for (s, e) in streamed.iter().zip(&entries) {
                let close = |a: f64, b: f64| (a - b).abs() < 1e-4;
                assert!(s.0 == e.0 && close(s.1, e.1), "{label}: {s:?} vs {e:?}");
                assert_eq!(s.2.len(), e.2.len(), "{label}");
                for (a, b) in s.2.iter().zip(&e.2) {
                    assert!(a.0 == b.0 && close(a.1, b.1), "{label}: {a:?} vs {b:?}");
                }
            }
            if !chat {
                assert_eq!(
                    json!(streamed_offsets),
                    choice["logprobs"]["text_offset"],
                    "{label}"
                );
            }
        }
    }
}

#[test]
fn n_choices_share_one_prefill_and_follow_their_seeds() {
    let name = "llama-gqa";
    let dir = common::fixtures_dir().join(name);
    let reference = common::fixture_reference(&dir);
    let server = start_fixture(name, &[]);
    // A prompt of three full KV blocks and a bit, unseen by the prefix cache.
    let prompt: Vec<u32> = (0..52u32).map(|i| 40 + (i * 7) % 300).collect();
    let completions = |extra: Value| {
        let body = common::merged(
            json!({"model": name, "prompt": prompt, "max_tokens": 12, "ignore_eos": true}),
            &extra,
        );
        let r = post(server.port, "/v1/completions", &body);
        assert_eq!(r.status, 200, "{r:?}");
        r.json()
    };
    let texts = |v: &Value| -> Vec<String> {
        let choices = v["choices"].as_array().expect("choices");
        for (i, c) in choices.iter().enumerate() {
            assert_eq!(c["index"], i, "{v}");
        }
        choices
            .iter()
            .map(|c| c["text"].as_str().unwrap().to_owned())
            .collect()
    };

    let hits = counter(server.port, "vllm:prefix_cache_hits_total");
    let greedy = completions(json!({"n": 3, "temperature": 0}));
    let greedy_texts = texts(&greedy);
    assert_eq!(greedy_texts.len(), 3);
    assert!(
        greedy_texts.iter().all(|t| *t == greedy_texts[0]),
        "{greedy}"
    );
    assert_eq!(greedy["usage"]["prompt_tokens"], prompt.len());
    assert_eq!(greedy["usage"]["completion_tokens"], 36);
    // Choices 1 and 2 found the first choice's three full blocks in the cache.
    let shared = counter(server.port, "vllm:prefix_cache_hits_total") - hits;
    assert_eq!(shared, 2.0 * 48.0, "prefix cache hits of the later choices");

    let seeded = json!({"n": 3, "temperature": 1.0, "seed": 7});
    let a = texts(&completions(seeded.clone()));
    let b = texts(&completions(seeded));
    assert_eq!(a, b, "a seeded request is repeatable");
    assert!(
        a[0] != a[1] || a[1] != a[2],
        "the choices sample apart: {a:?}"
    );
    // Choice i samples with seed + i: choice 1 of seed 7 is choice 0 of seed 8.
    let shifted = texts(&completions(json!({"n": 1, "temperature": 1.0, "seed": 8})));
    assert_eq!(shifted[0], a[1]);

    // Chat, streamed: each choice opens with its role, ends with its finish_reason, and
    // reassembles to the same text as without streaming.
    let case = reference.case("chat");
    let body = json!({"model": name, "messages": case.prompt, "n": 2, "temperature": 0,
        "max_tokens": reference.max_new_tokens, "stream": true,
        "stream_options": {"include_usage": true}});
    let frames = Sse::open(server.port, "/v1/chat/completions", &body).collect();
    let mut text = [String::new(), String::new()];
    let mut roles = [0, 0];
    let mut finishes = [0, 0];
    for f in &frames[..frames.len() - 1] {
        let c = &f["choices"][0];
        let i = c["index"].as_u64().expect("index") as usize;
        if c["delta"]["role"] == "assistant" {
            roles[i] += 1;
        }
        text[i].push_str(c["delta"]["content"].as_str().unwrap_or(""));
        if !c["finish_reason"].is_null() {
            finishes[i] += 1;
            assert_eq!(c["finish_reason"], case.finish_reason);
        }
    }
    assert_eq!((roles, finishes), ([1, 1], [1, 1]), "{frames:?}");
    let want = without_special_tokens(&dir, &case.output_text);
    assert_eq!(text, [want.clone(), want]);
    let usage = &frames[frames.len() - 1]["usage"];
    assert_eq!(
        usage["completion_tokens"],
        2 * case.output_ids.len(),
        "{usage}"
    );
}
