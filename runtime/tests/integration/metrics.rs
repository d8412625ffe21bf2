//! End-to-end tests of `GET /metrics`: the real binary on a reference
//! fixture checkpoint, real completions, and a scrape checked by value and
//! by the real `promtool check metrics` (Debian package `prometheus`,
//! installed by `scripts/install-test-deps`; the test fails without it).

use crate::common;

use std::{collections::BTreeMap, path::PathBuf, process::Command};

use common::{Response, Server, get, request};
use serde_json::{Value, json};

const KEY: &str = "metrics-test-key";
const AUTH: (&str, &str) = ("Authorization", "Bearer metrics-test-key");

/// Every family the server must expose, with its Prometheus type.
const FAMILIES: [(&str, &str); 14] = [
    ("vllm:num_requests_running", "gauge"),
    ("vllm:num_requests_waiting", "gauge"),
    ("vllm:kv_cache_usage_perc", "gauge"),
    ("vllm:num_preemptions_total", "counter"),
    ("vllm:prefix_cache_queries_total", "counter"),
    ("vllm:prefix_cache_hits_total", "counter"),
    ("vllm:cache_config_info", "gauge"),
    ("vllm:prompt_tokens_total", "counter"),
    ("vllm:generation_tokens_total", "counter"),
    ("vllm:request_success_total", "counter"),
    ("vllm:time_to_first_token_seconds", "histogram"),
    ("vllm:time_per_output_token_seconds", "histogram"),
    ("vllm:e2e_request_latency_seconds", "histogram"),
    ("vllm:request_queue_time_seconds", "histogram"),
];

fn checkpoint() -> PathBuf {
    common::fixture_checkpoints()
        .into_iter()
        .find(|d| d.ends_with("llama-gqa"))
        .expect("the llama-gqa reference fixture")
}

fn start() -> Server {
    Server::start_fixture(
        &checkpoint(),
        &["--served-model-name", "metrics-model", "--api-key", KEY],
    )
}

fn scrape(server: &Server) -> String {
    let r = get(server.port, "/metrics", &[AUTH]);
    assert_eq!(r.status, 200, "{r:?}");
    let content_type = r.header("content-type").expect("content-type");
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    r.body
}

/// Sample lines as `series → value`, where `series` is the text before the
/// value (name plus label set, exactly as exposed).
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap_or_else(|| panic!("{l:?}"));
            let value = value.parse().unwrap_or_else(|e| panic!("{l:?}: {e}"));
            (series.to_owned(), value)
        })
        .collect()
}

fn value(samples: &BTreeMap<String, f64>, series: &str) -> f64 {
    *samples
        .get(series)
        .unwrap_or_else(|| panic!("no series {series} in {samples:#?}"))
}

fn post(server: &Server, path: &str, body: &Value) -> Response {
    request(server.port, "POST", path, &[AUTH], &body.to_string())
}

/// Runs `promtool check metrics` on `text`. Exit 0 is clean. Exit 3 means
/// lint findings; the only one tolerated is promlint's "metric names
/// should not contain ':'", which every vLLM name triggers by design (colons
/// are legal in the exposition format; promlint reserves them by convention
/// for recording rules, and dashboards query the `vllm:` names). Anything
/// else — a parse error (exit 1), a missing `_total`, missing help text, a
/// malformed histogram — fails the test.
fn promtool_check(text: &str) {
    let child = common::spawn_with_input(
        Command::new("promtool").args(["check", "metrics"]),
        text.as_bytes(),
        "run promtool (install it with scripts/install-test-deps)",
    );
    let out = child.wait_with_output().expect("promtool output");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let code = out.status.code();
    assert!(
        matches!(code, Some(0 | 3)),
        "promtool failed ({:?}):\n{report}\non:\n{text}",
        out.status
    );
    let findings: Vec<&str> = report.lines().filter(|l| !l.trim().is_empty()).collect();
    let colon = "metric names should not contain ':'";
    let other: Vec<&&str> = findings.iter().filter(|l| !l.ends_with(colon)).collect();
    assert!(
        other.is_empty(),
        "promtool problems:\n{report}\non:\n{text}"
    );
    // Exit 3 must come with findings, and the colon findings must name
    // exactly our families: proof promtool parsed the whole scrape.
    if code == Some(3) {
        let mut named: Vec<&str> = findings
            .iter()
            .map(|l| l.split_whitespace().next().expect("metric name"))
            .collect();
        named.sort_unstable();
        let mut expected: Vec<&str> = FAMILIES.iter().map(|(n, _)| *n).collect();
        expected.sort_unstable();
        assert_eq!(named, expected, "{report}");
    }
}

#[test]
fn metrics_need_the_api_key() {
    let server = start();
    let r = get(server.port, "/metrics", &[]);
    common::assert_openai_error(&r, 401);
    let r = get(
        server.port,
        "/metrics",
        &[("Authorization", "Bearer wrong-key")],
    );
    common::assert_openai_error(&r, 401);
    assert_eq!(get(server.port, "/metrics", &[AUTH]).status, 200);
}

#[test]
fn a_completion_moves_the_counters_by_its_usage_and_promtool_accepts_the_scrape() {
    let server = start();
    let before_text = scrape(&server);
    for (name, kind) in FAMILIES {
        assert!(
            before_text.contains(&format!("# TYPE {name} {kind}\n")),
            "{name} {kind} missing:\n{before_text}"
        );
    }
    promtool_check(&before_text);
    let before = samples(&before_text);

    // A refused request is no request_success and adds no tokens.
    let bad = post(
        &server,
        "/v1/completions",
        &json!({"model": "metrics-model", "prompt": "hello", "temperature": -1}),
    );
    assert_eq!(bad.status, 400, "{bad:?}");

    let r = post(
        &server,
        "/v1/completions",
        &json!({"model": "metrics-model", "prompt": "Docker images for LLM inference",
                "max_tokens": 6, "temperature": 0}),
    );
    assert_eq!(r.status, 200, "{r:?}");
    let v = r.json();
    let prompt_tokens = v["usage"]["prompt_tokens"].as_f64().expect("usage");
    let completion_tokens = v["usage"]["completion_tokens"].as_f64().expect("usage");
    let finish_reason = v["choices"][0]["finish_reason"]
        .as_str()
        .expect("finish_reason");
    assert!(prompt_tokens > 0.0 && completion_tokens > 0.0, "{v}");

    let label = "model_name=\"metrics-model\"";
    // The worker records a request just after its client got the last byte: wait for it.
    let e2e_count = format!("vllm:e2e_request_latency_seconds_count{{{label}}}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let after_text = loop {
        let text = scrape(&server);
        if value(&samples(&text), &e2e_count) > value(&before, &e2e_count) {
            break text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never recorded: {text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    promtool_check(&after_text);
    let after = samples(&after_text);
    let delta = |series: &str| value(&after, series) - value(&before, series);

    assert_eq!(
        delta(&format!("vllm:prompt_tokens_total{{{label}}}")),
        prompt_tokens
    );
    assert_eq!(
        delta(&format!("vllm:generation_tokens_total{{{label}}}")),
        completion_tokens
    );
    for reason in ["stop", "length", "abort"] {
        let series = format!("vllm:request_success_total{{finished_reason=\"{reason}\",{label}}}");
        let expected = if reason == finish_reason { 1.0 } else { 0.0 };
        assert_eq!(delta(&series), expected, "{series}");
    }
    for histogram in [
        "vllm:time_to_first_token_seconds",
        "vllm:e2e_request_latency_seconds",
        "vllm:request_queue_time_seconds",
    ] {
        assert_eq!(
            delta(&format!("{histogram}_count{{{label}}}")),
            1.0,
            "{histogram}"
        );
        assert_eq!(
            delta(&format!("{histogram}_bucket{{{label},le=\"+Inf\"}}")),
            1.0,
            "{histogram}"
        );
    }
    // A first token takes real work; time from arrival to it cannot be 0.
    assert!(delta(&format!("vllm:time_to_first_token_seconds_sum{{{label}}}")) > 0.0);
    assert!(
        delta(&format!("vllm:e2e_request_latency_seconds_sum{{{label}}}"))
            >= delta(&format!("vllm:time_to_first_token_seconds_sum{{{label}}}"))
    );
    // One time-per-output-token observation per token after the first.
    assert_eq!(
        delta(&format!(
            "vllm:time_per_output_token_seconds_count{{{label}}}"
        )),
        completion_tokens - 1.0
    );
    assert_eq!(
        value(&after, &format!("vllm:num_requests_running{{{label}}}")),
        0.0
    );
    assert_eq!(
        value(&after, &format!("vllm:num_requests_waiting{{{label}}}")),
        0.0
    );
    // Every sample carries the served model name.
    for series in after.keys() {
        assert!(series.contains(label), "{series}");
    }
}

#[test]
fn kv_cache_and_prefix_cache_metrics_follow_the_engine() {
    let server = start();
    let label = "model_name=\"metrics-model\"";
    let text = scrape(&server);
    let before = samples(&text);
    let config = before
        .keys()
        .find(|k| k.starts_with("vllm:cache_config_info{"))
        .unwrap_or_else(|| panic!("no cache_config_info:\n{text}"));
    assert!(config.contains("block_size=\"16\""), "{config}");
    assert!(
        config.contains("enable_prefix_caching=\"True\""),
        "{config}"
    );
    let blocks: usize = config
        .split("num_gpu_blocks=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("num_gpu_blocks in {config}"));
    assert!(blocks > 0);
    assert!(
        server
            .output()
            .contains(&format!("KV cache: {blocks} blocks of 16 tokens")),
        "the log and the metric agree: {}",
        server.output()
    );

    // 40 prompt tokens: the second identical request finds 2 full blocks,
    // then 7 of the 8 tokens in the first request's partial third block
    // (the last prompt token is always computed: its logits are needed).
    let prompt: Vec<u32> = (0..40).map(|i| 10 + i * 7 % 400).collect();
    let body = json!({"model": "metrics-model", "prompt": prompt, "max_tokens": 3,
        "temperature": 0, "ignore_eos": true});
    let first = post(&server, "/v1/completions", &body).json();
    let second = post(&server, "/v1/completions", &body).json();
    assert_eq!(
        first["usage"]["prompt_tokens_details"]["cached_tokens"], 0,
        "{first}"
    );
    assert_eq!(
        second["usage"]["prompt_tokens_details"]["cached_tokens"], 39,
        "{second}"
    );
    assert_eq!(first["choices"][0]["text"], second["choices"][0]["text"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let after = loop {
        let after = samples(&scrape(&server));
        let done = format!("vllm:e2e_request_latency_seconds_count{{{label}}}");
        if value(&after, &done) - value(&before, &done) >= 2.0 {
            break after;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "requests never recorded"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    let delta = |series: &str| value(&after, series) - value(&before, series);
    assert_eq!(
        delta(&format!("vllm:prefix_cache_queries_total{{{label}}}")),
        80.0
    );
    assert_eq!(
        delta(&format!("vllm:prefix_cache_hits_total{{{label}}}")),
        39.0
    );
    assert_eq!(
        delta(&format!("vllm:num_preemptions_total{{{label}}}")),
        0.0
    );
    // Every block is free again once the requests are done.
    assert_eq!(
        value(&after, &format!("vllm:kv_cache_usage_perc{{{label}}}")),
        0.0
    );
}

/// The tolerance above is narrow: any other promtool finding fails.
#[test]
#[should_panic(expected = "promtool problems")]
fn promtool_check_rejects_a_counter_without_total() {
    promtool_check(
        "# HELP vllm:prompt_tokens Number of prefill tokens processed.\n\
         # TYPE vllm:prompt_tokens counter\n\
         vllm:prompt_tokens{model_name=\"m\"} 1\n",
    );
}

#[test]
#[should_panic(expected = "promtool failed")]
fn promtool_check_rejects_unparseable_text() {
    promtool_check("# TYPE vllm:prompt_tokens_total counter\nvllm:prompt_tokens_total{ 1\n");
}
