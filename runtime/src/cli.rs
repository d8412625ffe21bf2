//! The command-line contract of `appliance-server`: serve flags, the
//! `healthcheck` subcommand, and the `APPLIANCE_*` environment variables that
//! mirror every flag.
//!
//! This interface is what the builder writes into image entrypoints and what
//! operators put in `docker run -e ...`, so it is parsed in full now, even for
//! flags whose consumer (the inference engine) arrives later: a typo or an
//! impossible value must fail at startup, not be silently ignored.
//!
//! Every argument hides its env value in `--help` (`hide_env_values`), because
//! `APPLIANCE_API_KEY` would otherwise be printed verbatim.

use std::{env, path::PathBuf};

pub use crate::engine::device::{DTypeChoice as DType, DeviceChoice as Device};
use clap::{Args, Parser, Subcommand};

use crate::{auth::Secret, kv::ByteSize};

#[derive(Debug, Parser)]
#[command(
    name = "appliance-server",
    version = env!("APPLIANCE_VERSION_LINE"),
    about = "OpenAI-compatible inference server for appliance images",
    subcommand_negates_reqs = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Probe GET <URL>/ready and exit 0 iff it answers 200 (for Docker HEALTHCHECK).
    Healthcheck(HealthcheckArgs),
}

#[derive(Debug, Args)]
pub struct HealthcheckArgs {
    /// Base URL of the server (plain http only) [default: http://127.0.0.1:$APPLIANCE_PORT, port 8000 if unset]
    #[arg(
        long,
        env = "APPLIANCE_HEALTHCHECK_URL",
        hide_env_values = true,
        value_name = "URL"
    )]
    pub url: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("APPLIANCE_PORT={value:?} is not a valid port (expected 0-65535)")]
    InvalidPortEnv { value: String },
    #[error(
        "--device cuda was requested but this build has no CUDA support (built without the `cuda` feature)"
    )]
    CudaUnavailable,
    #[error("--block-size {0} is not a multiple of 16")]
    BlockSize(u32),
}

impl HealthcheckArgs {
    /// `--url`, or the local server on `$APPLIANCE_PORT` (8000 if unset):
    /// inside the image the healthcheck runs with the same environment as the
    /// server, so a port changed through the env var is followed automatically.
    pub fn resolved_url(&self) -> Result<String, CliError> {
        if let Some(url) = &self.url {
            return Ok(url.clone());
        }
        let port = match env::var("APPLIANCE_PORT") {
            Ok(value) => value
                .trim()
                .parse::<u16>()
                .map_err(|_| CliError::InvalidPortEnv { value })?,
            Err(_) => DEFAULT_PORT,
        };
        Ok(format!("http://127.0.0.1:{port}"))
    }
}

pub const DEFAULT_PORT: u16 = 8000;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Model directory (must contain config.json and *.safetensors weights)
    #[arg(
        long,
        env = "APPLIANCE_MODEL",
        hide_env_values = true,
        value_name = "DIR",
        required = true
    )]
    pub model: Option<PathBuf>,

    /// Model name reported by the API [default: the model directory's name]
    #[arg(
        long,
        env = "APPLIANCE_SERVED_MODEL_NAME",
        hide_env_values = true,
        value_name = "NAME",
        value_parser = clap::builder::NonEmptyStringValueParser::new()
    )]
    pub served_model_name: Option<String>,

    /// Address to listen on
    #[arg(
        long,
        env = "APPLIANCE_HOST",
        hide_env_values = true,
        default_value = "0.0.0.0"
    )]
    pub host: String,

    /// Port to listen on (0 picks a free port; the chosen one is logged)
    #[arg(long, env = "APPLIANCE_PORT", hide_env_values = true, default_value_t = DEFAULT_PORT)]
    pub port: u16,

    /// Compute device for the inference engine
    #[arg(
        long,
        env = "APPLIANCE_DEVICE",
        hide_env_values = true,
        value_enum,
        default_value_t = Device::Auto
    )]
    pub device: Device,

    /// Weight/activation dtype for the inference engine
    #[arg(
        long,
        env = "APPLIANCE_DTYPE",
        hide_env_values = true,
        value_enum,
        default_value_t = DType::Auto
    )]
    pub dtype: DType,

    /// Maximum context length (prompt + generated tokens) [default: from config.json]
    #[arg(
        long,
        env = "APPLIANCE_MAX_MODEL_LEN",
        hide_env_values = true,
        value_name = "N",
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub max_model_len: Option<u32>,

    /// API key clients must send as `Authorization: Bearer <KEY>`; prefer --api-key-file, command lines are visible in `ps`
    #[arg(
        long,
        env = "APPLIANCE_API_KEY",
        hide_env_values = true,
        value_name = "KEY",
        conflicts_with = "api_key_file"
    )]
    pub api_key: Option<Secret>,

    /// File whose (whitespace-trimmed) content is the API key
    #[arg(
        long,
        env = "APPLIANCE_API_KEY_FILE",
        hide_env_values = true,
        value_name = "FILE"
    )]
    pub api_key_file: Option<PathBuf>,

    /// Sequences in the engine's batches at once (vLLM's name; `--max-concurrent-requests` is an alias)
    #[arg(
        long,
        alias = "max-concurrent-requests",
        env = "APPLIANCE_MAX_NUM_SEQS",
        hide_env_values = true,
        value_name = "N",
        default_value_t = 128,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub max_num_seqs: u32,

    /// Tokens one engine step may process: a decode token per running sequence plus prompt chunks [default: 512 on CPU, 8192 on CUDA]
    #[arg(
        long,
        env = "APPLIANCE_MAX_NUM_BATCHED_TOKENS",
        hide_env_values = true,
        value_name = "N",
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub max_num_batched_tokens: Option<u32>,

    /// KV cache size in bytes (e.g. 4GiB, 512MiB) [default: the smallest of 4 GiB, half the memory limit left after the weights, and what --max-num-seqs sequences of --max-model-len tokens need]
    #[arg(
        long,
        env = "APPLIANCE_KV_CACHE_MEMORY",
        hide_env_values = true,
        value_name = "BYTES"
    )]
    pub kv_cache_memory: Option<ByteSize>,

    /// Tokens per KV cache block (a multiple of 16)
    #[arg(
        long,
        env = "APPLIANCE_BLOCK_SIZE",
        hide_env_values = true,
        value_name = "N",
        default_value_t = 16,
        value_parser = clap::value_parser!(u32).range(16..)
    )]
    pub block_size: u32,

    /// Reuse the KV cache of identical prompt prefixes across requests (the default)
    #[arg(long, overrides_with = "no_enable_prefix_caching")]
    pub enable_prefix_caching: bool,

    /// Turn prefix caching off
    #[arg(long, overrides_with = "enable_prefix_caching")]
    pub no_enable_prefix_caching: bool,

    /// CPU threads for inference [default: the CPUs this process may use (affinity and cgroup quota)]
    #[arg(
        long,
        env = "APPLIANCE_THREADS",
        hide_env_values = true,
        value_name = "N",
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub threads: Option<u32>,

    /// Requests allowed to wait for a batch slot before new ones get 429
    #[arg(
        long,
        env = "APPLIANCE_MAX_QUEUED_REQUESTS",
        hide_env_values = true,
        value_name = "N",
        default_value_t = 128
    )]
    pub max_queued_requests: u32,

    /// How the model writes tool calls, read back for `tool_choice: auto`
    /// (vLLM's flag); by default recognised from the chat template's markers
    #[arg(
        long,
        env = "APPLIANCE_TOOL_CALL_PARSER",
        hide_env_values = true,
        value_name = "FORMAT"
    )]
    pub tool_call_parser: Option<crate::api::tools::ToolCallParser>,

    /// Seconds to let in-flight requests finish after SIGTERM/SIGINT
    #[arg(
        long,
        env = "APPLIANCE_SHUTDOWN_TIMEOUT",
        hide_env_values = true,
        value_name = "SECS",
        default_value_t = 30
    )]
    pub shutdown_timeout: u64,
}

impl ServeArgs {
    /// Rejects device choices this binary cannot honour. Done at startup, not
    /// by the engine, so a misconfigured image fails before it looks healthy.
    pub fn check_device(&self) -> Result<(), CliError> {
        if self.device == Device::Cuda && !cfg!(feature = "cuda") {
            return Err(CliError::CudaUnavailable);
        }
        if !self.block_size.is_multiple_of(16) {
            return Err(CliError::BlockSize(self.block_size));
        }
        Ok(())
    }

    /// Prefix caching is on unless `--no-enable-prefix-caching` came last.
    pub fn prefix_caching(&self) -> bool {
        !self.no_enable_prefix_caching
    }

    /// `--threads`, else the CPUs this process may run on: the affinity
    /// mask and the cgroup CPU quota (what `std::thread::available_parallelism`
    /// reads), not the host's core count.
    pub fn threads(&self) -> usize {
        self.threads.map_or_else(
            || std::thread::available_parallelism().map_or(1, |n| n.get()),
            |n| n as usize,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("appliance-server").chain(args.iter().copied()))
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn full_serve_command_line() {
        let cli = parse(&[
            "--model",
            "/models/m",
            "--served-model-name",
            "m1",
            "--host",
            "127.0.0.1",
            "--port",
            "9000",
            "--device",
            "cpu",
            "--dtype",
            "bf16",
            "--max-model-len",
            "4096",
            "--api-key",
            "k",
            "--max-concurrent-requests",
            "4",
            "--max-num-batched-tokens",
            "256",
            "--kv-cache-memory",
            "1.5GiB",
            "--block-size",
            "32",
            "--no-enable-prefix-caching",
            "--threads",
            "3",
            "--max-queued-requests",
            "0",
            "--shutdown-timeout",
            "5",
        ])
        .expect("valid command line");
        assert!(cli.command.is_none());
        let s = cli.serve;
        assert_eq!(s.model, Some(PathBuf::from("/models/m")));
        assert_eq!(s.served_model_name.as_deref(), Some("m1"));
        assert_eq!((s.host.as_str(), s.port), ("127.0.0.1", 9000));
        assert_eq!((s.device, s.dtype), (Device::Cpu, DType::Bf16));
        assert_eq!(s.max_model_len, Some(4096));
        assert_eq!(s.api_key.as_ref().map(Secret::expose), Some("k"));
        assert_eq!((s.max_num_seqs, s.max_queued_requests), (4, 0));
        assert_eq!(s.max_num_batched_tokens, Some(256));
        assert_eq!(s.kv_cache_memory, Some(ByteSize(3 << 29)));
        assert_eq!(s.block_size, 32);
        assert!(!s.prefix_caching());
        assert_eq!(s.threads(), 3);
        assert_eq!(s.shutdown_timeout, 5);
    }

    #[test]
    fn defaults() {
        let s = parse(&["--model", "/m"]).expect("valid").serve;
        assert_eq!((s.host.as_str(), s.port), ("0.0.0.0", 8000));
        assert_eq!((s.device, s.dtype), (Device::Auto, DType::Auto));
        assert_eq!(s.shutdown_timeout, 30);
        assert!(s.api_key.is_none() && s.api_key_file.is_none());
        assert_eq!((s.max_num_seqs, s.block_size), (128, 16));
        assert!(s.prefix_caching());
        assert!(s.kv_cache_memory.is_none() && s.max_num_batched_tokens.is_none());
        assert!(s.threads() >= 1);
        let s = parse(&[
            "--model",
            "/m",
            "--no-enable-prefix-caching",
            "--enable-prefix-caching",
        ])
        .expect("valid")
        .serve;
        assert!(s.prefix_caching(), "the last of the pair wins");
        let s = parse(&["--model", "/m", "--max-num-seqs", "9"])
            .expect("valid")
            .serve;
        assert_eq!(s.max_num_seqs, 9);
    }

    #[test]
    fn invalid_command_lines_are_rejected() {
        assert!(parse(&[]).is_err(), "--model is required");
        assert!(parse(&["--model", "/m", "--api-key", "k", "--api-key-file", "/f"]).is_err());
        assert!(parse(&["--model", "/m", "--device", "tpu"]).is_err());
        assert!(parse(&["--model", "/m", "--dtype", "f64"]).is_err());
        assert!(parse(&["--model", "/m", "--max-model-len", "0"]).is_err());
        assert!(parse(&["--model", "/m", "--max-concurrent-requests", "0"]).is_err());
        assert!(parse(&["--model", "/m", "--max-num-batched-tokens", "0"]).is_err());
        assert!(parse(&["--model", "/m", "--kv-cache-memory", "lots"]).is_err());
        assert!(parse(&["--model", "/m", "--block-size", "8"]).is_err());
        let odd = parse(&["--model", "/m", "--block-size", "24"])
            .expect("parses")
            .serve;
        assert!(
            odd.check_device()
                .unwrap_err()
                .to_string()
                .contains("multiple of 16")
        );
        assert!(parse(&["--model", "/m", "--port", "70000"]).is_err());
        assert!(parse(&["--model", "/m", "--api-key", ""]).is_err());
        assert!(parse(&["--model", "/m", "--served-model-name", ""]).is_err());
    }

    #[test]
    fn healthcheck_needs_no_model() {
        let cli = parse(&["healthcheck", "--url", "http://127.0.0.1:1"]).expect("valid");
        match cli.command {
            Some(Command::Healthcheck(h)) => {
                assert_eq!(h.url.as_deref(), Some("http://127.0.0.1:1"));
                assert_eq!(h.resolved_url().ok().as_deref(), Some("http://127.0.0.1:1"));
            }
            None => panic!("expected the healthcheck subcommand"),
        }
    }

    #[test]
    fn debug_output_hides_the_key() {
        let cli = parse(&["--model", "/m", "--api-key", "topsecret"]).expect("valid");
        assert!(!format!("{cli:?}").contains("topsecret"));
    }

    #[test]
    fn cuda_device_requires_the_cuda_feature() {
        let s = parse(&["--model", "/m", "--device", "cuda"])
            .expect("valid")
            .serve;
        assert_eq!(s.check_device().is_ok(), cfg!(feature = "cuda"));
        let s = parse(&["--model", "/m"]).expect("valid").serve;
        assert!(s.check_device().is_ok());
    }
}
