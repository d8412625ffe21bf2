//! Prometheus metrics under vLLM's names, types and bucket boundaries, so
//! that Grafana dashboards and alerts written for vLLM work unchanged.
//!
//! The `prometheus` crate (TiKV's) renders text format 0.0.4 with metric
//! names exactly as registered: vLLM's `vllm:` prefix and the `_total`
//! suffix it exposes on counters survive as they are. (The official
//! `prometheus-client` crate appends `_total` itself and writes OpenMetrics,
//! whose counter `# TYPE` line names the family without the suffix.)
//! Counters, gauges and histogram observations are lock-free atomics;
//! only `render` walks the registry.
//!
//! Every series carries `model_name` (the served model name). vLLM also adds
//! `engine="0"`; this server has one engine, so the label is left out.

use std::time::Duration;

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

/// The `Content-Type` of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// vLLM's `finished_reason` label values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishedReason {
    Stop,
    Length,
    Abort,
}

impl FinishedReason {
    const ALL: [FinishedReason; 3] = [Self::Stop, Self::Length, Self::Abort];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
            Self::Abort => "abort",
        }
    }
}

/// vLLM's boundaries (vllm/v1/metrics/loggers.py), in seconds.
const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];
const TPOT_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
    40.0, 80.0,
];
/// Shared by the e2e latency and queue time histograms, as in vLLM.
const REQUEST_LATENCY_BUCKETS: &[f64] = &[
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
    480.0, 960.0, 1920.0, 7680.0,
];

/// The server's metrics; `Send + Sync`, shared through `AppState`.
pub struct Metrics {
    registry: Registry,
    running: IntGauge,
    waiting: IntGauge,
    prompt_tokens: IntCounter,
    generation_tokens: IntCounter,
    /// Indexed like [`FinishedReason::ALL`]; resolved once so that
    /// `request_finished` does no label lookup.
    success: [IntCounter; 3],
    queue_time: Histogram,
    ttft: Histogram,
    tpot: Histogram,
    e2e: Histogram,
    kv_usage: Gauge,
    preemptions: IntCounter,
    prefix_queries: IntCounter,
    prefix_hits: IntCounter,
    cache_config: IntGaugeVec,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    pub fn new(model_name: &str) -> Self {
        let registry = Registry::new();
        let opts =
            |name: &str, help: &str| Opts::new(name, help).const_label("model_name", model_name);
        let gauge =
            |name: &str, help: &str| register(&registry, IntGauge::with_opts(opts(name, help)));
        let counter =
            |name: &str, help: &str| register(&registry, IntCounter::with_opts(opts(name, help)));
        let histogram = |name: &str, help: &str, buckets: &[f64]| {
            let opts = HistogramOpts::from(opts(name, help)).buckets(buckets.to_vec());
            register(&registry, Histogram::with_opts(opts))
        };

        let running = gauge(
            "vllm:num_requests_running",
            "Number of requests in model execution batches.",
        );
        let waiting = gauge(
            "vllm:num_requests_waiting",
            "Number of requests waiting to be processed.",
        );
        let prompt_tokens = counter(
            "vllm:prompt_tokens_total",
            "Number of prefill tokens processed.",
        );
        let generation_tokens = counter(
            "vllm:generation_tokens_total",
            "Number of generation tokens processed.",
        );
        let success_vec = register(
            &registry,
            IntCounterVec::new(
                opts(
                    "vllm:request_success_total",
                    "Count of successfully processed requests.",
                ),
                &["finished_reason"],
            ),
        );
        // Creating every child up front exposes each reason at 0 from the
        // first scrape, so `rate()` sees the first increment.
        let success = FinishedReason::ALL.map(|r| success_vec.with_label_values(&[r.as_str()]));
        let kv_usage = register(
            &registry,
            Gauge::with_opts(opts(
                "vllm:kv_cache_usage_perc",
                "KV-cache usage. 1 means 100 percent usage.",
            )),
        );
        let preemptions = counter(
            "vllm:num_preemptions_total",
            "Cumulative number of preemption from the engine.",
        );
        let prefix_queries = counter(
            "vllm:prefix_cache_queries_total",
            "Prefix cache queries, in terms of number of queried tokens.",
        );
        let prefix_hits = counter(
            "vllm:prefix_cache_hits_total",
            "Prefix cache hits, in terms of number of cached tokens.",
        );
        let cache_config = register(
            &registry,
            IntGaugeVec::new(
                opts(
                    "vllm:cache_config_info",
                    "Information of the LLMEngine CacheConfig",
                ),
                &[
                    "block_size",
                    "num_gpu_blocks",
                    "enable_prefix_caching",
                    "cache_dtype",
                ],
            ),
        );

        Self {
            kv_usage,
            preemptions,
            prefix_queries,
            prefix_hits,
            cache_config,
            running,
            waiting,
            prompt_tokens,
            generation_tokens,
            success,
            ttft: histogram(
                "vllm:time_to_first_token_seconds",
                "Histogram of time to first token in seconds.",
                TTFT_BUCKETS,
            ),
            tpot: histogram(
                "vllm:time_per_output_token_seconds",
                "Histogram of time per output token in seconds.",
                TPOT_BUCKETS,
            ),
            e2e: histogram(
                "vllm:e2e_request_latency_seconds",
                "Histogram of e2e request latency in seconds.",
                REQUEST_LATENCY_BUCKETS,
            ),
            queue_time: histogram(
                "vllm:request_queue_time_seconds",
                "Histogram of time spent in WAITING phase for request.",
                REQUEST_LATENCY_BUCKETS,
            ),
            registry,
        }
    }

    /// Gauge `vllm:num_requests_running`; the scheduler sets it whenever it
    /// changes.
    pub fn set_running(&self, n: usize) {
        self.running.set(saturating_i64(n));
    }

    /// Gauge `vllm:num_requests_waiting`; the scheduler sets it whenever it
    /// changes.
    pub fn set_waiting(&self, n: usize) {
        self.waiting.set(saturating_i64(n));
    }

    /// Gauge `vllm:kv_cache_usage_perc`: the share of KV blocks in use (0-1).
    pub fn set_kv_cache_usage(&self, fraction: f64) {
        self.kv_usage.set(fraction);
    }

    /// Counter `vllm:num_preemptions_total`.
    pub fn add_preemptions(&self, n: u64) {
        self.preemptions.inc_by(n);
    }

    /// Counters `vllm:prefix_cache_queries_total` / `_hits_total`, in tokens.
    pub fn add_prefix_cache(&self, queries: u64, hits: u64) {
        self.prefix_queries.inc_by(queries);
        self.prefix_hits.inc_by(hits);
    }

    /// `vllm:cache_config_info` (value 1): the KV pool as configured. vLLM
    /// names the block count `num_gpu_blocks` whatever the device.
    pub fn set_cache_config(
        &self,
        block_size: usize,
        num_blocks: usize,
        prefix_caching: bool,
        dtype: &str,
    ) {
        self.cache_config
            .with_label_values(&[
                block_size.to_string().as_str(),
                num_blocks.to_string().as_str(),
                if prefix_caching { "True" } else { "False" },
                dtype,
            ])
            .set(1);
    }

    /// Histogram `vllm:request_queue_time_seconds` (enqueue → start of
    /// prefill).
    pub fn observe_queue_time(&self, d: Duration) {
        self.queue_time.observe(d.as_secs_f64());
    }

    /// Histogram `vllm:time_to_first_token_seconds` (arrival → first token).
    pub fn observe_time_to_first_token(&self, d: Duration) {
        self.ttft.observe(d.as_secs_f64());
    }

    /// Histogram `vllm:time_per_output_token_seconds`: one observation per
    /// output token after the first (the gap since the previous token).
    pub fn observe_time_per_output_token(&self, d: Duration) {
        self.tpot.observe(d.as_secs_f64());
    }

    /// Counters `vllm:prompt_tokens_total`, `vllm:generation_tokens_total`,
    /// `vllm:request_success_total{finished_reason}` and histogram
    /// `vllm:e2e_request_latency_seconds`. Requests refused before they run
    /// (429, 400) are not reported here; client disconnects are `Abort`.
    pub fn request_finished(
        &self,
        prompt_tokens: usize,
        generation_tokens: usize,
        reason: FinishedReason,
        e2e: Duration,
    ) {
        self.prompt_tokens.inc_by(prompt_tokens as u64);
        self.generation_tokens.inc_by(generation_tokens as u64);
        self.success[reason as usize].inc();
        self.e2e.observe(e2e.as_secs_f64());
    }

    /// Prometheus text exposition format 0.0.4 (see [`CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        let mut out = Vec::with_capacity(8 << 10);
        // Encoding gathered families into a Vec cannot fail: the families
        // come from our own registry and are well-formed.
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding of registered metrics");
        String::from_utf8(out).expect("text encoder writes UTF-8")
    }
}

/// Registration fails only on an invalid or duplicate name, which the
/// constant names above rule out; the unit tests construct every metric.
fn register<M: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    metric: prometheus::Result<M>,
) -> M {
    let metric = metric.expect("valid metric definition");
    registry
        .register(Box::new(metric.clone()))
        .expect("unique metric name");
    metric
}

fn saturating_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(text: &'a str, prefix: &str) -> &'a str {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line starting with {prefix:?} in:\n{text}"))
    }

    fn value(text: &str, prefix: &str) -> f64 {
        let l = line(text, prefix);
        l.rsplit_once(' ')
            .expect("sample value")
            .1
            .parse()
            .expect("number")
    }

    #[test]
    fn fresh_registry_exposes_every_series_at_zero() {
        // The list of families and their types is the contract checked
        // (with promtool) by `tests/metrics.rs`; here, that each has help.
        let text = Metrics::new("llama").render();
        let families: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next())
            .collect();
        // `vllm:cache_config_info` appears once the engine sets it.
        assert_eq!(families.len(), 13, "{text}");
        for name in [
            "vllm:kv_cache_usage_perc{",
            "vllm:num_preemptions_total{",
            "vllm:prefix_cache_queries_total{",
            "vllm:prefix_cache_hits_total{",
        ] {
            assert_eq!(value(&text, name), 0.0, "{name}");
        }
        for name in families {
            line(&text, &format!("# HELP {name} "));
        }
        for reason in ["stop", "length", "abort"] {
            assert_eq!(
                value(
                    &text,
                    &format!(
                        "vllm:request_success_total{{finished_reason=\"{reason}\",model_name=\"llama\"}}"
                    )
                ),
                0.0
            );
        }
        // Every sample line carries the model_name label.
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(l.contains("model_name=\"llama\""), "{l}");
        }
    }

    #[test]
    fn request_finished_moves_counters_by_the_given_amounts() {
        let m = Metrics::new("m");
        m.request_finished(7, 3, FinishedReason::Stop, Duration::from_millis(400));
        m.request_finished(5, 16, FinishedReason::Length, Duration::from_secs(2));
        m.request_finished(2, 1, FinishedReason::Abort, Duration::from_millis(10));
        let text = m.render();
        assert_eq!(value(&text, "vllm:prompt_tokens_total{"), 14.0);
        assert_eq!(value(&text, "vllm:generation_tokens_total{"), 20.0);
        for (reason, n) in [("stop", 1.0), ("length", 1.0), ("abort", 1.0)] {
            assert_eq!(
                value(
                    &text,
                    &format!("vllm:request_success_total{{finished_reason=\"{reason}\"")
                ),
                n
            );
        }
        assert_eq!(value(&text, "vllm:e2e_request_latency_seconds_count{"), 3.0);
        let sum = value(&text, "vllm:e2e_request_latency_seconds_sum{");
        assert!((sum - 2.41).abs() < 1e-9, "{sum}");
        // 0.01 s and 0.4 s fall at or under 0.5; 2 s only under 2.0.
        assert_eq!(
            value(
                &text,
                "vllm:e2e_request_latency_seconds_bucket{model_name=\"m\",le=\"0.5\"}"
            ),
            2.0
        );
        assert_eq!(
            value(
                &text,
                "vllm:e2e_request_latency_seconds_bucket{model_name=\"m\",le=\"1.5\"}"
            ),
            2.0
        );
        assert_eq!(
            value(
                &text,
                "vllm:e2e_request_latency_seconds_bucket{model_name=\"m\",le=\"2\"}"
            ),
            3.0
        );
        assert_eq!(
            value(
                &text,
                "vllm:e2e_request_latency_seconds_bucket{model_name=\"m\",le=\"+Inf\"}"
            ),
            3.0
        );
    }

    #[test]
    fn cache_metrics_report_what_the_engine_sets() {
        let m = Metrics::new("m");
        m.set_cache_config(16, 4096, true, "f16");
        m.set_kv_cache_usage(0.25);
        m.add_preemptions(2);
        m.add_prefix_cache(100, 48);
        m.add_prefix_cache(10, 0);
        let text = m.render();
        assert_eq!(
            value(
                &text,
                "vllm:cache_config_info{block_size=\"16\",cache_dtype=\"f16\",enable_prefix_caching=\"True\",model_name=\"m\",num_gpu_blocks=\"4096\"}"
            ),
            1.0,
            "{text}"
        );
        assert_eq!(value(&text, "vllm:kv_cache_usage_perc{"), 0.25);
        assert_eq!(value(&text, "vllm:num_preemptions_total{"), 2.0);
        assert_eq!(value(&text, "vllm:prefix_cache_queries_total{"), 110.0);
        assert_eq!(value(&text, "vllm:prefix_cache_hits_total{"), 48.0);
    }

    #[test]
    fn gauges_follow_the_last_value_set() {
        let m = Metrics::new("m");
        m.set_running(3);
        m.set_waiting(9);
        m.set_running(1);
        let text = m.render();
        assert_eq!(value(&text, "vllm:num_requests_running{"), 1.0);
        assert_eq!(value(&text, "vllm:num_requests_waiting{"), 9.0);
    }

    #[test]
    fn histograms_use_vllm_bucket_boundaries() {
        let m = Metrics::new("m");
        m.observe_time_to_first_token(Duration::from_millis(30));
        m.observe_time_per_output_token(Duration::from_millis(60));
        m.observe_queue_time(Duration::from_millis(100));
        let text = m.render();
        let bounds = |name: &str| -> Vec<String> {
            let prefix = format!("{name}_bucket{{model_name=\"m\",le=\"");
            text.lines()
                .filter_map(|l| l.strip_prefix(prefix.as_str()))
                .map(|rest| rest.split('"').next().expect("le").to_owned())
                .collect()
        };
        let expect = |b: &[f64]| -> Vec<String> {
            b.iter()
                .map(|v| v.to_string())
                .chain(["+Inf".to_owned()])
                .collect()
        };
        assert_eq!(
            bounds("vllm:time_to_first_token_seconds"),
            expect(TTFT_BUCKETS)
        );
        assert_eq!(
            bounds("vllm:time_per_output_token_seconds"),
            expect(TPOT_BUCKETS)
        );
        assert_eq!(
            bounds("vllm:e2e_request_latency_seconds"),
            expect(REQUEST_LATENCY_BUCKETS)
        );
        assert_eq!(
            bounds("vllm:request_queue_time_seconds"),
            expect(REQUEST_LATENCY_BUCKETS)
        );
        assert_eq!(TTFT_BUCKETS.len(), 22);
        assert_eq!(TPOT_BUCKETS.len(), 19);
        assert_eq!(REQUEST_LATENCY_BUCKETS.len(), 21);
        // 30 ms: above 0.02, within 0.04.
        let ttft = "vllm:time_to_first_token_seconds_bucket{model_name=\"m\",le=";
        assert_eq!(value(&text, &format!("{ttft}\"0.02\"}}")), 0.0);
        assert_eq!(value(&text, &format!("{ttft}\"0.04\"}}")), 1.0);
        let tpot = "vllm:time_per_output_token_seconds_bucket{model_name=\"m\",le=";
        assert_eq!(value(&text, &format!("{tpot}\"0.05\"}}")), 0.0);
        assert_eq!(value(&text, &format!("{tpot}\"0.075\"}}")), 1.0);
        assert_eq!(value(&text, "vllm:request_queue_time_seconds_count{"), 1.0);
    }

    #[test]
    fn model_name_is_escaped_in_label_values() {
        let text = Metrics::new("a\"b\\c\nd").render();
        assert!(
            text.contains("vllm:num_requests_running{model_name=\"a\\\"b\\\\c\\nd\"} 0"),
            "{text}"
        );
    }
}
