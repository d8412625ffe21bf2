//! The KV pool seen from outside: a server whose pool holds a fraction of
//! what its clients ask for queues, preempts and finishes every admitted
//! request (429 beyond the queue, never a crash or a failed request), keeps
//! its memory within weights + pool + a margin, and refuses at once a
//! prompt that could never fit.

use crate::common;

use std::{thread, time::Duration};

use common::{Server, assert_openai_error, get, request};
use serde_json::{Value, json};

/// llama-gqa: 3 layers × 2 KV heads × 16 dims × f32, K and V.
const BYTES_PER_TOKEN: usize = 2 * 3 * 2 * 16 * 4;
/// 12 blocks of 16 tokens: 192 tokens, one and a half requests' worth.
const POOL_BLOCKS: usize = 12;
/// The server's own memory beyond weights and pool (README, "Sizing the
/// KV cache"): code, runtime, tokenizer, one step's activations.
const MARGIN: u64 = 96 << 20;

fn start(extra: &[&str]) -> Server {
    let dir = common::fixtures_dir().join("llama-gqa");
    let pool = (POOL_BLOCKS * 16 * BYTES_PER_TOKEN).to_string();
    let mut args = vec!["--kv-cache-memory", pool.as_str()];
    args.extend_from_slice(extra);
    Server::start_fixture(&dir, &args)
}

fn post(port: u16, body: &Value) -> common::Response {
    request(port, "POST", "/v1/completions", &[], &body.to_string())
}

fn metric(port: u16, name: &str) -> f64 {
    let body = get(port, "/metrics", &[]).body;
    body.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{body}"))
}

fn status_kib(pid: i32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in {status}"))
}

#[test]
fn four_times_what_the_pool_holds_is_queued_preempted_and_served() {
    let server = start(&["--max-num-seqs", "6", "--max-queued-requests", "6"]);
    let port = server.port;
    let log = server.output();
    assert!(
        log.contains(&format!("KV cache: {POOL_BLOCKS} blocks of 16 tokens")),
        "{log}"
    );
    // 30 prompt + 100 generated tokens: 9 blocks each, so the pool holds
    // one such request and a half; 16 arrive at once (6 running, 6 queued).
    let clients: usize = 16;
    let bodies: Vec<Value> = (0..clients)
        .map(|i| {
            let prompt: Vec<usize> = (0..30).map(|t| (t * 13 + i * 31) % 500 + 3).collect();
            json!({"model": "llama-gqa", "prompt": prompt, "max_tokens": 100,
                "ignore_eos": true, "temperature": 0})
        })
        .collect();
    let results: Vec<common::Response> = thread::scope(|s| {
        let handles: Vec<_> = bodies
            .iter()
            .map(|b| s.spawn(move || post(port, b)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("client"))
            .collect()
    });
    let served: Vec<&common::Response> = results.iter().filter(|r| r.status == 200).collect();
    let refused = results.iter().filter(|r| r.status == 429).count();
    for r in results.iter().filter(|r| r.status != 200) {
        assert_eq!(assert_openai_error(r, 429), "overloaded");
    }
    assert_eq!(served.len() + refused, clients);
    assert!(
        served.len() >= 12,
        "the 12 places were served: {}",
        served.len()
    );
    assert!(refused >= 1, "16 requests on 12 places: some were refused");
    for r in &served {
        let v = r.json();
        assert_eq!(v["usage"]["completion_tokens"], 100, "{v}");
        assert_eq!(v["choices"][0]["finish_reason"], "length", "{v}");
    }
    // The same greedy request gives the same text whether or not it was
    // preempted on the way.
    let again = post(port, &bodies[0]);
    if results[0].status == 200 {
        assert_eq!(
            again.json()["choices"][0]["text"],
            results[0].json()["choices"][0]["text"]
        );
    }
    assert!(
        metric(port, "vllm:num_preemptions_total{") > 0.0,
        "nothing was preempted"
    );
    // The gauge is published after the step that finished the last request, which may come
    // just after its response reached the client (vLLM's gauges lag the same way): wait for it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut usage = metric(port, "vllm:kv_cache_usage_perc{");
    while usage != 0.0 && std::time::Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
        usage = metric(port, "vllm:kv_cache_usage_perc{");
    }
    assert_eq!(usage, 0.0, "blocks left in use");
    assert_eq!(get(port, "/health", &[]).status, 200);

    // Memory: weights + pool + margin, whatever the load did.
    let weights = std::fs::metadata(common::fixtures_dir().join("llama-gqa/model.safetensors"))
        .expect("weights")
        .len();
    let pool = (POOL_BLOCKS * 16 * BYTES_PER_TOKEN) as u64;
    let peak = status_kib(server.pid(), "VmHWM:") * 1024;
    assert!(
        peak <= weights + pool + MARGIN,
        "peak RSS {peak} > weights {weights} + pool {pool} + margin {MARGIN}"
    );
    thread::sleep(Duration::from_millis(50));
    let mut server = server;
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit().code(), Some(0), "{}", server.output());
}

#[test]
fn a_prompt_that_can_never_fit_is_refused_at_once_with_the_numbers() {
    let server = start(&[]);
    let prompt: Vec<u32> = (0..200).map(|t| t % 500 + 3).collect();
    let r = post(
        server.port,
        &json!({"model": "llama-gqa", "prompt": prompt, "max_tokens": 1}),
    );
    assert_eq!(assert_openai_error(&r, 400), "invalid_request_error");
    let v = r.json();
    let message = v["error"]["message"].as_str().expect("message");
    assert!(message.contains("200 tokens"), "{message}");
    assert!(message.contains("192 tokens"), "{message}");
    assert!(message.contains("--kv-cache-memory"), "{message}");
    assert_eq!(v["error"]["param"], "prompt");
    // A prompt that fits is served, and may run to the pool's end.
    let prompt: Vec<u32> = (0..150).map(|t| t % 500 + 3).collect();
    let r = post(
        server.port,
        &json!({"model": "llama-gqa", "prompt": prompt, "max_tokens": 100, "ignore_eos": true}),
    );
    assert_eq!(r.status, 200, "{r:?}");
    let v = r.json();
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    // Positions 0..192 fit: the token sampled after position 191 is the 43rd.
    assert_eq!(
        v["usage"]["completion_tokens"], 43,
        "ends where the pool does: {v}"
    );
}
