//! The inference engine: one loaded model with its tokenizer and chat
//! template, and one step over a packed batch ([`Engine::step`]).
//!
//! This is the `engine` layer of `api → scheduler → engine → kv → models`.
//! It owns everything that turns requests into token ids, a batch of
//! tokens into logits, logits into token ids, and token ids back into text
//! ([`text::TextStream`]); what goes into each batch is the scheduler's
//! business (`crate::scheduler`), which also owns the KV pool. Single-
//! sequence generation ([`Engine::generate`]) is a thin wrapper over the
//! same step, with a private pool, for warm-up and tests.
//!
//! All methods take `&self`: the weights are immutable, so an
//! `Arc<Engine>` is shared by the HTTP handlers (tokenizer, template) and
//! the engine loop.
//!
//! Everything here is blocking CPU/GPU work: call it from
//! `spawn_blocking` or a dedicated thread, never from an async task.

pub mod chat_template;
pub mod device;
pub mod generation_config;
pub mod grammar;
pub mod sampling;
pub mod text;
pub mod tokenizer;

use std::{ops::ControlFlow, path::Path};

use candle_core::{DType, Device};
use serde_json::Value as Json;

pub use chat_template::{ChatTemplate, TemplateError};
pub use generation_config::{GenerationConfigError, GenerationDefaults, RequestedSampling};
pub use sampling::{Sampler, SamplingParams, TokenLogprobs};
pub use tokenizer::{Tokenizer, TokenizerConfig, TokenizerError, TokenizerSource};

use crate::{
    checkpoint::gguf::{self, Gguf},
    kernels::{
        gemm::{WeightDType, bf16_dot},
        isa::Isa,
    },
    kv::{DEFAULT_BLOCK_SIZE, KvCache},
    models::{self, Batch, CausalLm, Kernels, ModelSpec},
};

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Model(#[from] models::LoadError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error(transparent)]
    Device(#[from] device::DeviceError),
    #[error(transparent)]
    GenerationConfig(#[from] GenerationConfigError),
    #[error(
        "--max-model-len {requested} exceeds the model's max_position_embeddings ({supported}) in {}/config.json",
        dir.display()
    )]
    MaxModelLen {
        requested: usize,
        supported: usize,
        dir: std::path::PathBuf,
    },
    #[error("cannot allocate the KV cache")]
    KvCache(#[source] candle_core::Error),
    #[error("cannot start {0} inference threads")]
    Threads(usize, #[source] rayon::ThreadPoolBuildError),
    #[error("the warm-up generation failed")]
    WarmUp(#[source] Box<EngineError>),
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error("the prompt is empty (no tokens)")]
    EmptyPrompt,
    #[error(
        "the prompt has {tokens} tokens; this server's context length (max_model_len) is {max_model_len}"
    )]
    PromptTooLong { tokens: usize, max_model_len: usize },
    #[error("token id {id} is outside the model's vocabulary (size {vocab_size})")]
    BadTokenId { id: u32, vocab_size: usize },
    #[error("inference failed")]
    Inference(#[from] candle_core::Error),
}

/// How to load: the CLI's device/dtype choices and context-length cap.
#[derive(Debug, Clone, Copy)]
pub struct LoadOptions {
    pub device: device::DeviceChoice,
    pub dtype: device::DTypeChoice,
    /// `--max-model-len`; `None` uses `max_position_embeddings`.
    pub max_model_len: Option<usize>,
    /// Run the CUDA code path (candle ops, tensor KV pool) even on the CPU:
    /// the reference the CPU kernels are tested against.
    pub candle_ops: bool,
    /// Inference threads; `None`: the CPUs this process may use.
    pub threads: Option<usize>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            device: device::DeviceChoice::Cpu,
            dtype: device::DTypeChoice::Auto,
            max_model_len: None,
            candle_ops: false,
            threads: None,
        }
    }
}

/// One generation request, already tokenized and validated.
#[derive(Debug, Default)]
pub struct GenerateRequest {
    pub prompt: Vec<u32>,
    /// Upper bound on new tokens; also capped by the context length.
    pub max_new_tokens: usize,
    pub sampling: SamplingParams,
    /// Keep going past end-of-sequence ids (benchmarks use this).
    pub ignore_eos: bool,
    /// Report each sampled token's log-probability and this many of the
    /// most likely alternatives (`Some(0)`: the sampled token only).
    pub logprobs: Option<usize>,
    /// Structured output: the grammar's mask is applied to the logits
    /// before sampling, and each sampled token advances it.
    pub constraint: Option<Box<grammar::Constraint>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-sequence id was sampled (it is not part of the output).
    Stop,
    /// `max_new_tokens` or the context length was reached.
    Length,
    /// The caller's callback broke the loop (the client went away, or a
    /// stop string matched).
    Cancelled,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generation {
    pub tokens: Vec<u32>,
    pub finish_reason: FinishReason,
}

/// Logits of one step: one row of `vocab` f32 per sampled sequence.
#[derive(Debug, Clone)]
pub struct Logits {
    data: Vec<f32>,
    vocab: usize,
}

impl Logits {
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.vocab..(i + 1) * self.vocab]
    }

    pub fn rows(&self) -> usize {
        self.data.len() / self.vocab.max(1)
    }
}

/// Tokens per step of [`Engine::generate`]'s prompt processing.
const GENERATE_CHUNK: usize = 512;

#[derive(Debug)]
pub struct Engine {
    /// The threads every step's kernels (and candle's CPU ops) run on. A
    /// step runs *inside* the pool, so its parallel regions are forked from
    /// a worker (a push to its own deque) instead of injected from outside
    /// (a wake-up per region: some 80 per decode step).
    pool: rayon::ThreadPool,
    model: CausalLm,
    tokenizer: Tokenizer,
    chat_template: Option<ChatTemplate>,
    generation_defaults: GenerationDefaults,
    device: Device,
    max_model_len: usize,
    /// Built on the first constrained request: the token trie takes some
    /// 0.15 s for a 50k vocabulary, which unconstrained serving never needs.
    grammar: std::sync::OnceLock<Result<grammar::GrammarCompiler, String>>,
}

impl Engine {
    /// Loads the model directory `dir`: config, tokenizer, chat template,
    /// then the weights onto the device. Does not warm up; see
    /// [`Engine::warm_up`].
    pub fn load(dir: &Path, options: LoadOptions) -> Result<Self, LoadError> {
        let gguf = gguf::open_dir(dir).map_err(models::LoadError::from)?;
        let (spec, config_tokens) = match &gguf {
            Some(g) => g.spec().map_err(models::LoadError::from)?,
            None => ModelSpec::from_dir(dir).map_err(models::LoadError::from)?,
        };
        Self::load_with(dir, gguf.as_ref(), spec, &config_tokens, options)
    }

    /// [`Engine::load`] with `config.json` already resolved (the server
    /// reads it once, at its startup check: `crate::checkpoint::model_dir::ModelDir`).
    pub fn load_resolved(
        dir: &Path,
        spec: ModelSpec,
        config_tokens: &models::ConfigTokens,
        options: LoadOptions,
    ) -> Result<Self, LoadError> {
        let gguf = gguf::open_dir(dir).map_err(models::LoadError::from)?;
        Self::load_with(dir, gguf.as_ref(), spec, config_tokens, options)
    }

    /// Loads with the directory's GGUF headers (if any) parsed once, for
    /// the tokenizer (when there is no tokenizer.json), the chat template
    /// and the weights.
    fn load_with(
        dir: &Path,
        gguf: Option<&Gguf>,
        spec: ModelSpec,
        config_tokens: &models::ConfigTokens,
        options: LoadOptions,
    ) -> Result<Self, LoadError> {
        let max_model_len = match options.max_model_len {
            Some(n) if n > spec.max_position_embeddings => {
                return Err(LoadError::MaxModelLen {
                    requested: n,
                    supported: spec.max_position_embeddings,
                    dir: dir.to_owned(),
                });
            }
            Some(n) => n,
            None => spec.max_position_embeddings,
        };
        let mut tok_config = TokenizerConfig::load(dir)?;
        let tokenizer = Tokenizer::load_dir(dir, gguf, &mut tok_config, &config_tokens.eos)?;
        tracing::info!("tokenizer: {}", tokenizer.source());
        let chat_template = ChatTemplate::load(dir, &tok_config, gguf)?;
        let generation_defaults = GenerationDefaults::load(dir)?;
        let device = device::select_device(options.device)?;
        let cpu_kernels = device.is_cpu() && !options.candle_ops;
        let dot = cpu_kernels && bf16_dot::supported();
        // A quantized file's matrices are not f16: its "f16" is the KV
        // cache's, which stays f16 (as llama.cpp keeps it).
        let cast_f16 = dot && !gguf.is_some_and(Gguf::is_quantized);
        let dtype = device::select_dtype(options.dtype, spec.checkpoint_dtype, &device, cast_f16);
        if options.dtype == device::DTypeChoice::Auto
            && spec.checkpoint_dtype == Some(DType::F16)
            && dtype == DType::BF16
        {
            tracing::info!(
                "--dtype auto: the float16 checkpoint is served as bfloat16 on this CPU: its \
                 AVX512_BF16 dot products run twice as many multiply-adds as float32 FMA \
                 (vLLM's CPU backend makes the same cast); --dtype f16 keeps float16 weights"
            );
        }
        let kernels = if cpu_kernels {
            let weights = match dtype {
                DType::F16 => WeightDType::F16,
                DType::BF16 => WeightDType::Bf16,
                _ => WeightDType::F32,
            };
            Kernels::Cpu {
                isa: Isa::best(),
                weights,
                bf16_dot: dot && weights == WeightDType::Bf16,
            }
        } else {
            Kernels::Candle
        };
        let threads = options
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("infer-{i}"))
            .build()
            .map_err(|e| LoadError::Threads(threads, e))?;
        let model = pool
            .install(|| CausalLm::load(dir, gguf, spec, &device, dtype, kernels, max_model_len))?;
        Ok(Self {
            pool,
            model,
            tokenizer,
            chat_template,
            generation_defaults,
            device,
            max_model_len,
            grammar: std::sync::OnceLock::new(),
        })
    }

    /// Compiles a structured-output constraint for one sequence. Blocking
    /// (a millisecond for a schema, more for the first call); the error is
    /// for the client.
    pub fn compile_constraint(
        &self,
        spec: &grammar::ConstraintSpec,
    ) -> Result<grammar::Constraint, String> {
        let compiler = self
            .grammar
            .get_or_init(|| {
                grammar::GrammarCompiler::new(&self.tokenizer, self.model.spec.vocab_size)
            })
            .as_ref()
            .map_err(|e| {
                format!("structured output is not available for this model's tokenizer: {e}")
            })?;
        compiler.compile(spec)
    }

    /// Generates one token from a one-token prompt, so that the first real
    /// request does not pay for first-touch page faults of the mmapped
    /// weights, allocator growth, or (on CUDA) kernel loading.
    pub fn warm_up(&self) -> Result<(), LoadError> {
        let first = self.tokenizer.bos_id().unwrap_or(0);
        let request = GenerateRequest {
            prompt: vec![first],
            max_new_tokens: 1,
            sampling: SamplingParams::greedy(),
            ignore_eos: true,
            ..Default::default()
        };
        self.generate(&request, |_| ControlFlow::Continue(()))
            .map(drop)
            .map_err(|e| LoadError::WarmUp(Box::new(e)))
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    pub fn spec(&self) -> &ModelSpec {
        &self.model.spec
    }

    pub fn dtype(&self) -> DType {
        self.model.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The kernels the model runs on (CPU ISA and weight dtype, or candle).
    pub fn kernels(&self) -> Kernels {
        self.model.kernels()
    }

    /// Inference threads.
    pub fn threads(&self) -> usize {
        self.pool.current_num_threads()
    }

    /// Bytes of weights in memory.
    pub fn weight_bytes(&self) -> usize {
        self.model.weight_bytes()
    }

    /// Bytes of K and V per token across all layers (KV pool sizing).
    pub fn kv_bytes_per_token(&self) -> u64 {
        let spec = self.spec();
        let size = match self.kernels() {
            Kernels::Cpu { weights, .. } => weights.size(),
            Kernels::Candle => self.dtype().size_in_bytes(),
        };
        crate::kv::bytes_per_token(spec.num_layers, spec.num_kv_heads, spec.head_dim, size)
    }

    /// Context length: prompt plus generated tokens never exceed it.
    pub fn max_model_len(&self) -> usize {
        self.max_model_len
    }

    /// Sampling defaults from `generation_config.json`, for requests that
    /// leave a field unset.
    pub fn generation_defaults(&self) -> &GenerationDefaults {
        &self.generation_defaults
    }

    pub fn has_chat_template(&self) -> bool {
        self.chat_template.is_some()
    }

    /// The chat template's text, if the model has one.
    pub fn chat_template_source(&self) -> Option<&str> {
        self.chat_template.as_ref().map(ChatTemplate::source)
    }

    /// Prompt text as the model's chat template renders `messages`.
    pub fn render_chat(
        &self,
        messages: &Json,
        tools: Option<&Json>,
        add_generation_prompt: bool,
    ) -> Result<String, EngineError> {
        let template = self.chat_template.as_ref().ok_or(TemplateError::Missing)?;
        Ok(template.render(messages, tools, add_generation_prompt)?)
    }

    /// Prompt ids for a chat: rendered, then tokenized *without* adding
    /// special tokens (the template already wrote BOS and headers), as
    /// transformers' `apply_chat_template(tokenize=True)` does.
    pub fn encode_chat(
        &self,
        messages: &Json,
        tools: Option<&Json>,
        add_generation_prompt: bool,
    ) -> Result<Vec<u32>, EngineError> {
        let text = self.render_chat(messages, tools, add_generation_prompt)?;
        Ok(self.tokenizer.encode(&text, false)?)
    }

    /// A KV pool of `num_blocks` blocks of `block_size` tokens for this
    /// model, allocated now.
    pub fn new_kv_cache(&self, num_blocks: usize, block_size: usize) -> Result<KvCache, LoadError> {
        self.model
            .new_kv_cache(num_blocks, block_size)
            .map_err(LoadError::KvCache)
    }

    /// One step: runs the packed `batch` (its keys and values go into
    /// `kv`) and returns the logits of its sampled rows.
    pub fn step(&self, batch: &Batch, kv: &mut KvCache) -> Result<Logits, EngineError> {
        let vocab_size = self.model.spec.vocab_size;
        if let Some(&id) = batch.tokens.iter().find(|&&id| id as usize >= vocab_size) {
            return Err(EngineError::BadTokenId { id, vocab_size });
        }
        let data = self.pool.install(|| -> candle_core::Result<Vec<f32>> {
            self.model.forward(batch, kv)?.flatten_all()?.to_vec1()
        })?;
        Ok(Logits {
            data,
            vocab: vocab_size,
        })
    }

    /// f32 logits predicting the token after `prompt` (a fresh sequence).
    pub fn prompt_logits(&self, prompt: &[u32]) -> Result<Vec<f32>, EngineError> {
        let request = GenerateRequest {
            prompt: prompt.to_vec(),
            max_new_tokens: 1,
            sampling: SamplingParams::greedy(),
            ignore_eos: true,
            ..Default::default()
        };
        let mut run = SingleSequence::new(self, &request)?;
        Ok(run.advance(prompt)?.row(0).to_vec())
    }

    /// Runs one request to completion, alone, on a private KV pool sized
    /// for it. `on_token` sees each new token as it is produced and may
    /// break to cancel (client disconnects).
    pub fn generate(
        &self,
        request: &GenerateRequest,
        mut on_token: impl FnMut(u32) -> ControlFlow<()>,
    ) -> Result<Generation, EngineError> {
        let prompt = &request.prompt;
        if prompt.is_empty() {
            return Err(EngineError::EmptyPrompt);
        }
        if prompt.len() >= self.max_model_len {
            return Err(EngineError::PromptTooLong {
                tokens: prompt.len(),
                max_model_len: self.max_model_len,
            });
        }
        let budget = request
            .max_new_tokens
            .min(self.max_model_len - prompt.len());
        let mut tokens = Vec::with_capacity(budget);
        let finish = |tokens, finish_reason| {
            Ok(Generation {
                tokens,
                finish_reason,
            })
        };
        if budget == 0 {
            return finish(tokens, FinishReason::Length);
        }
        let mut sampler = Sampler::new(request.sampling.clone(), prompt);
        let mut run = SingleSequence::new(self, request)?;
        let mut logits = run.advance(prompt)?;
        loop {
            let next = sampler.sample(logits.row(0));
            if !request.ignore_eos && self.tokenizer.eos_ids().contains(&next) {
                return finish(tokens, FinishReason::Stop);
            }
            tokens.push(next);
            sampler.accept(next);
            if on_token(next).is_break() {
                return finish(tokens, FinishReason::Cancelled);
            }
            if tokens.len() >= budget {
                return finish(tokens, FinishReason::Length);
            }
            logits = run.advance(&[next])?;
        }
    }
}

/// One sequence on a private pool holding all its positions: blocks
/// `0..n` in order, so no allocation happens while it runs.
struct SingleSequence<'e> {
    engine: &'e Engine,
    kv: KvCache,
    table: Vec<u32>,
    len: usize,
}

impl<'e> SingleSequence<'e> {
    fn new(engine: &'e Engine, request: &GenerateRequest) -> Result<Self, EngineError> {
        let positions = (request.prompt.len() + request.max_new_tokens).min(engine.max_model_len);
        let blocks = positions.div_ceil(DEFAULT_BLOCK_SIZE).max(1);
        let kv = engine
            .model
            .new_kv_cache(blocks, DEFAULT_BLOCK_SIZE)
            .map_err(EngineError::Inference)?;
        Ok(Self {
            engine,
            kv,
            table: (0..blocks as u32).collect(),
            len: 0,
        })
    }

    /// Feeds `tokens` (in chunks) and returns the logits after the last.
    fn advance(&mut self, tokens: &[u32]) -> Result<Logits, EngineError> {
        if self.len + tokens.len() > self.table.len() * DEFAULT_BLOCK_SIZE {
            return Err(EngineError::PromptTooLong {
                tokens: self.len + tokens.len(),
                max_model_len: self.engine.max_model_len,
            });
        }
        let mut last = None;
        for (i, chunk) in tokens.chunks(GENERATE_CHUNK).enumerate() {
            let is_last = (i + 1) * GENERATE_CHUNK >= tokens.len();
            let mut batch = Batch::new(DEFAULT_BLOCK_SIZE);
            batch.push(chunk, self.len, &self.table, is_last);
            let logits = self.engine.step(&batch, &mut self.kv)?;
            self.len += chunk.len();
            if is_last {
                last = Some(logits);
            }
        }
        last.ok_or(EngineError::EmptyPrompt)
    }
}
