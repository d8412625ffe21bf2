//! Server lifecycle: validate configuration, check the model directory, bind,
//! load in the background, serve, and drain on shutdown.
//!
//! Ordering matters for operators. Everything that can be wrong with the
//! configuration (device, API key file, model directory, config.json) is
//! checked *before* the port is bound, so a broken image exits non-zero at
//! once; that includes resolving `config.json` into a model spec (an
//! unsupported architecture is a configuration error). Slow work (weight
//! inventory, loading the engine, the warm-up generation) runs *after*
//! binding, so `/health` answers while `/ready` says `loading`.

use std::{
    io,
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use appliance_common::HumanBytes;
use tokio::{net::TcpListener, task::JoinHandle};
use tracing::{error, info, warn};

use crate::{
    api::{self, AppState},
    auth::{self, KeyFileError, Secret},
    build_info::{self, BuildInfo},
    checkpoint::model_dir::{ModelDir, ModelError},
    checkpoint::weights,
    cli::{CliError, ServeArgs},
    engine::{self, Engine, LoadOptions},
    errors::chain,
    readiness::{self, Readiness, ReadinessTx},
    shutdown::{Reason, Shutdown, Signals},
};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Cli(#[from] CliError),
    #[error("--model is required")]
    NoModel,
    #[error(transparent)]
    KeyFile(#[from] KeyFileError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("the embedded build info is unreadable")]
    BuildInfo(#[from] serde_json::Error),
    #[error("cannot start the async runtime")]
    Runtime(#[source] io::Error),
    #[error("cannot install SIGTERM/SIGINT handlers")]
    Signals(#[source] io::Error),
    #[error("cannot listen on {addr}")]
    Bind {
        addr: String,
        #[source]
        source: io::Error,
    },
    #[error("the HTTP server stopped unexpectedly")]
    Server(#[source] io::Error),
    #[error("the HTTP server task panicked")]
    ServerPanicked,
    #[error("loading failed: {0}")]
    LoadFailed(String),
}

/// Runs the server until a signal (`Ok`, exit 0) or a fatal error (`Err`).
pub fn run(args: ServeArgs) -> Result<(), ServeError> {
    args.check_device()?;
    let model_path = args.model.clone().ok_or(ServeError::NoModel)?;
    let api_key = match (&args.api_key, &args.api_key_file) {
        (Some(key), _) => Some(key.clone()),
        (None, Some(path)) => Some(auth::read_key_file(path)?),
        (None, None) => None,
    };
    // Reads config.json once and resolves it: an unsupported architecture
    // is refused here, before binding.
    let model = ModelDir::open(&model_path, args.served_model_name.as_deref())?;
    let build = build_info::current()?;
    log_startup(&args, &model, &build, api_key.is_some());

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(ServeError::Runtime)?;
    let result = runtime.block_on(serve(&args, model, build, api_key));
    // Do not let a stuck blocking task (a slow disk under the loader) keep a
    // stopping container alive past the drain it was already given.
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

fn log_startup(args: &ServeArgs, model: &ModelDir, build: &BuildInfo, auth: bool) {
    let features = if build.features.is_empty() {
        "none".to_owned()
    } else {
        build.features.join(",")
    };
    info!(
        "appliance-server {} (features: {features}; {}; {})",
        build.version, build.target, build.profile
    );
    info!(
        "model {} served as {:?}: model_type={}, architectures=[{}]",
        model.path.display(),
        model.served_name,
        model.config.model_type.as_deref().unwrap_or("unknown"),
        model.config.architectures.join(", ")
    );
    info!(
        "engine settings: device={:?} dtype={:?} threads={} max_model_len={} max_num_seqs={} max_num_batched_tokens={} max_queued_requests={} block_size={} prefix_caching={}",
        args.device,
        args.dtype,
        args.threads(),
        args.max_model_len
            .map_or_else(|| "from config".to_owned(), |n| n.to_string()),
        args.max_num_seqs,
        args.max_num_batched_tokens
            .map_or_else(|| "device default".to_owned(), |n| n.to_string()),
        args.max_queued_requests,
        args.block_size,
        args.prefix_caching(),
    );
    if auth {
        info!("API key required on all routes except /health and /ready");
    } else {
        warn!("no API key configured: the API is open to anyone who can reach the port");
    }
}

async fn serve(
    args: &ServeArgs,
    model: ModelDir,
    build: BuildInfo,
    api_key: Option<Secret>,
) -> Result<(), ServeError> {
    let shutdown = Shutdown::default();
    let signals = Signals::install().map_err(ServeError::Signals)?;
    tokio::spawn(signals.watch(shutdown.clone()));

    let listener = TcpListener::bind((args.host.as_str(), args.port))
        .await
        .map_err(|source| ServeError::Bind {
            addr: display_addr(&args.host, args.port),
            source,
        })?;
    match listener.local_addr() {
        Ok(addr) => info!("listening on http://{addr}"),
        Err(_) => info!(
            "listening on http://{}",
            display_addr(&args.host, args.port)
        ),
    }

    let (ready_tx, ready_rx) = readiness::channel();
    let metrics = Arc::new(crate::metrics::Metrics::new(&model.served_name));
    let state = Arc::new(AppState {
        model_name: model.served_name.clone(),
        created: crate::errors::unix_now(),
        build,
        api_key,
        readiness: ready_rx,
        engine: OnceLock::new(),
        weights_digest: Arc::default(),
        scheduler: crate::scheduler::Scheduler::new(
            crate::scheduler::SchedulerConfig {
                max_num_seqs: args.max_num_seqs as usize,
                max_queued: args.max_queued_requests as usize,
            },
            Arc::clone(&metrics),
        ),
        metrics,
        tool_call_parser: args.tool_call_parser,
    });
    let options = LoadOptions {
        device: args.device,
        dtype: args.dtype,
        max_model_len: args.max_model_len.map(|n| n as usize),
        candle_ops: false,
        threads: Some(args.threads()),
    };
    let pool = PoolOptions {
        kv_cache_memory: args.kv_cache_memory.map(|b| b.0),
        block_size: args.block_size as usize,
        max_num_seqs: args.max_num_seqs as usize,
        max_num_batched_tokens: args.max_num_batched_tokens.map(|n| n as usize),
        prefix_caching: args.prefix_caching(),
    };
    tokio::spawn(load(
        model,
        options,
        pool,
        Arc::clone(&state),
        ready_tx.clone(),
        shutdown.clone(),
    ));

    let stop_accepting = {
        let shutdown = shutdown.clone();
        async move {
            shutdown.triggered().await;
        }
    };
    let router = api::router(Arc::clone(&state));
    let mut server: JoinHandle<io::Result<()>> = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(stop_accepting)
            .await
    });

    let reason = tokio::select! {
        biased;
        reason = shutdown.triggered() => {
            ready_tx.set(Readiness::ShuttingDown);
            let budget = Duration::from_secs(args.shutdown_timeout);
            drain(&mut server, &shutdown, budget, &state.scheduler).await;
            reason
        }
        ended = &mut server => match (ended, shutdown.reason()) {
            // Nothing was in flight: the graceful shutdown finished before
            // this task got to observe the trigger.
            (Ok(Ok(())), Some(reason)) => reason,
            (Ok(Ok(())), None) => {
                return Err(ServeError::Server(io::Error::other("serve returned on its own")));
            }
            (Ok(Err(e)), _) => return Err(ServeError::Server(e)),
            (Err(_), _) => return Err(ServeError::ServerPanicked),
        }
    };

    match reason {
        Reason::Signal(_) => Ok(()),
        Reason::Fatal(message) => Err(ServeError::LoadFailed(message)),
    }
}

/// Waits for in-flight requests up to `timeout` (or until a second signal),
/// then abandons whatever is left. Timing out is not an error: the operator
/// chose the budget, and the exit code reflects why we stopped, not how.
async fn drain(
    server: &mut JoinHandle<io::Result<()>>,
    shutdown: &Shutdown,
    timeout: Duration,
    scheduler: &crate::scheduler::Scheduler,
) {
    info!("draining in-flight requests (up to {}s)", timeout.as_secs());
    let deadline = tokio::time::Instant::now() + timeout;
    // Connections first, then the workers' bookkeeping (metrics, the request's log line),
    // which ends just after the client got its last byte.
    let drained = async {
        let closed = (&mut *server).await;
        while !scheduler.is_idle() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        closed
    };
    tokio::select! {
        finished = tokio::time::timeout_at(deadline, drained) => match finished {
            Ok(Ok(Ok(()))) => info!("all connections closed; exiting"),
            Ok(Ok(Err(e))) => warn!("HTTP server error while draining: {e}"),
            Ok(Err(_)) => warn!("HTTP server task panicked while draining"),
            Err(_) => warn!(
                "shutdown timeout of {}s elapsed; abandoning in-flight requests",
                timeout.as_secs()
            ),
        },
        () = shutdown.forced() => {}
    }
    server.abort();
}

/// Background loading: inventory the weights (logged for operators), load
/// the engine onto the device, run a one-token warm-up generation, publish
/// the engine to the handlers, and only then report `Ready`. Any failure
/// marks `/ready` failed and stops the process with exit code 1.
async fn load(
    model: ModelDir,
    options: LoadOptions,
    pool: PoolOptions,
    state: Arc<AppState>,
    ready: ReadinessTx,
    shutdown: Shutdown,
) {
    let dir = model.path.clone();
    let loaded = {
        let state = Arc::clone(&state);
        tokio::task::spawn_blocking(move || {
            let engine = Arc::new(load_blocking(&model, options)?);
            start_engine(&engine, &pool, &state)?;
            Ok::<_, String>(engine)
        })
        .await
    };
    let failure = match loaded {
        Ok(Ok(engine)) => {
            // Only the loader sets it, once; a second set cannot happen.
            let _ = state.engine.set(engine);
            ready.set(Readiness::Ready);
            info!("ready");
            // After `Ready`: the files are in the page cache and the digest delays nothing.
            crate::weights_digest::spawn(dir, Arc::clone(&state.weights_digest));
            return;
        }
        Ok(Err(e)) => e,
        Err(e) => format!("loader task failed: {e}"),
    };
    error!("loading failed: {failure}");
    ready.set(Readiness::Failed(failure.clone()));
    shutdown.trigger(Reason::Fatal(failure));
}

/// The blocking part of [`load`]; errors come back as their full cause
/// chain, which names the file at fault.
fn load_blocking(model: &ModelDir, options: LoadOptions) -> Result<Engine, String> {
    let dir = model.path.as_path();
    let inv = weights::inventory(dir).map_err(|e| chain(&e))?;
    for file in &inv.files {
        info!("weights: {} ({:.2})", file.name, HumanBytes(file.bytes));
    }
    info!(
        "weights: {} file(s), {:.2} in total ({} bytes)",
        inv.files.len(),
        HumanBytes(inv.total_bytes),
        inv.total_bytes
    );
    let started = Instant::now();
    let engine = Engine::load_resolved(dir, model.spec.clone(), &model.config_tokens, options)
        .map_err(|e| chain(&e))?;
    let spec = engine.spec();
    info!(
        "loaded {:?} ({} layers, hidden {}, vocab {}) on {} as {:?} in {:.2}s; max_model_len={}, stop ids {:?}{}",
        spec.architecture,
        spec.num_layers,
        spec.hidden_size,
        spec.vocab_size,
        engine::device::describe(engine.device()),
        engine.dtype(),
        started.elapsed().as_secs_f64(),
        engine.max_model_len(),
        engine.tokenizer().eos_ids(),
        if engine.has_chat_template() {
            ""
        } else {
            "; no chat template"
        },
    );
    let started = Instant::now();
    engine.warm_up().map_err(|e| chain(&e))?;
    info!(
        "warm-up generation took {:.3}s",
        started.elapsed().as_secs_f64()
    );
    Ok(engine)
}

/// The KV pool and batching settings from the command line.
#[derive(Debug, Clone, Copy)]
struct PoolOptions {
    kv_cache_memory: Option<u64>,
    block_size: usize,
    max_num_seqs: usize,
    max_num_batched_tokens: Option<usize>,
    prefix_caching: bool,
}

/// Default token budget of a step: on the CPU, 512 keeps a prompt chunk's
/// activations (a few MiB) in bounds while still filling the FMA units;
/// a GPU wants far larger steps (vLLM uses 8192 on large GPUs).
fn default_batched_tokens(device: &candle_core::Device) -> usize {
    if device.is_cpu() { 512 } else { 8192 }
}

/// Sizes and allocates the KV pool, then starts the engine loop on it.
fn start_engine(engine: &Arc<Engine>, pool: &PoolOptions, state: &AppState) -> Result<(), String> {
    let weights = engine.weight_bytes() as u64;
    let per_token = engine.kv_bytes_per_token();
    let sizing = crate::kv::Sizing {
        requested: pool.kv_cache_memory,
        memory_limit: if engine.device().is_cpu() {
            crate::kv::memory_limit()
        } else {
            None
        },
        weight_bytes: weights,
        bytes_per_token: per_token,
        block_size: pool.block_size,
        max_num_seqs: pool.max_num_seqs,
        max_model_len: engine.max_model_len(),
    };
    let (num_blocks, source) = crate::kv::num_blocks(&sizing);
    let started = Instant::now();
    let kv = engine
        .new_kv_cache(num_blocks, pool.block_size)
        .map_err(|e| chain(&e))?;
    let tokens = num_blocks * pool.block_size;
    let batched = pool
        .max_num_batched_tokens
        .unwrap_or_else(|| default_batched_tokens(engine.device()));
    let dtype = match engine.kernels() {
        crate::models::Kernels::Cpu { weights, .. } => format!("{weights:?}").to_lowercase(),
        crate::models::Kernels::Candle => format!("{:?}", engine.dtype()).to_lowercase(),
    };
    info!(
        "KV cache: {num_blocks} blocks of {} tokens = {tokens} tokens, {} ({dtype}, {} per token), allocated in {:.2}s; size from {}",
        pool.block_size,
        crate::kv::ByteSize(kv.bytes()),
        crate::kv::ByteSize(per_token),
        started.elapsed().as_secs_f64(),
        match source {
            crate::kv::SizeSource::Flag => "--kv-cache-memory",
            crate::kv::SizeSource::DefaultCap => "the 4 GiB default cap",
            crate::kv::SizeSource::MemoryLimit => "half the memory limit left after the weights",
            crate::kv::SizeSource::MaxSequences => "--max-num-seqs x --max-model-len",
        }
    );
    info!(
        "Maximum concurrency for {} tokens per request: {:.2}x",
        engine.max_model_len(),
        tokens as f64 / engine.max_model_len() as f64
    );
    if tokens < engine.max_model_len() {
        warn!(
            "the KV cache ({tokens} tokens) is smaller than max_model_len ({}): longer sequences end with finish_reason=length",
            engine.max_model_len()
        );
    }
    info!(
        "engine: {} inference threads, {} kernels, weights {} in memory, max_num_batched_tokens={batched}",
        engine.threads(),
        match engine.kernels() {
            crate::models::Kernels::Cpu { isa, .. } => isa.name(),
            crate::models::Kernels::Candle => "candle",
        },
        crate::kv::ByteSize(weights),
    );
    state
        .metrics
        .set_cache_config(pool.block_size, num_blocks, pool.prefix_caching, &dtype);
    let core = crate::scheduler::CoreConfig {
        planner: crate::scheduler::planner::PlannerConfig {
            max_num_seqs: pool.max_num_seqs,
            max_num_batched_tokens: batched,
            block_size: pool.block_size,
        },
        num_blocks,
        prefix_caching: pool.prefix_caching,
    };
    state
        .scheduler
        .start(Arc::clone(engine), kv, core)
        .map_err(|e| format!("cannot start the engine loop: {e}"))
}

fn display_addr(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}
