//! The inference engine: one loaded model with its tokenizer and chat
//! template, and single-sequence generation on top of it.
//!
//! This is the `engine` layer of `api → scheduler → engine → model`. It owns
//! everything that turns requests into token ids, logits into token ids,
//! and token ids back into text ([`text::TextStream`]); it does not queue
//! or batch — that is the scheduler's job (`crate::scheduler`), whose
//! workers call [`Engine::generate`].
//! All methods take `&self`: the weights are immutable, so an
//! `Arc<Engine>` is shared by the HTTP handlers (tokenizer, template) and
//! the generation thread.
//!
//! Everything here is blocking CPU/GPU work: call it from
//! `spawn_blocking` or a dedicated thread, never from an async task.

pub mod chat_template;
pub mod device;
pub mod generation_config;
pub mod sampling;
pub mod text;
pub mod tokenizer;

use std::{ops::ControlFlow, path::Path};

use candle_core::{DType, Device};
use serde_json::Value as Json;

pub use chat_template::{ChatTemplate, TemplateError};
pub use generation_config::{GenerationConfigError, GenerationDefaults, RequestedSampling};
pub use sampling::{Sampler, SamplingParams};
pub use tokenizer::{Tokenizer, TokenizerConfig, TokenizerError};

use crate::{
    cli,
    models::{self, CausalLm, KvCache, ModelSpec},
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
    pub device: cli::Device,
    pub dtype: cli::DType,
    /// `--max-model-len`; `None` uses `max_position_embeddings`.
    pub max_model_len: Option<usize>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            device: cli::Device::Cpu,
            dtype: cli::DType::F32,
            max_model_len: None,
        }
    }
}

/// One generation request, already tokenized and validated.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    pub prompt: Vec<u32>,
    /// Upper bound on new tokens; also capped by the context length.
    pub max_new_tokens: usize,
    pub sampling: SamplingParams,
    /// Keep going past end-of-sequence ids (benchmarks use this).
    pub ignore_eos: bool,
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

/// The state of one sequence in flight: its KV cache.
#[derive(Debug)]
pub struct Sequence {
    cache: KvCache,
}

impl Sequence {
    /// Tokens processed so far (prompt plus fed-back outputs).
    pub fn len(&self) -> usize {
        self.cache.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }
}

#[derive(Debug)]
pub struct Engine {
    model: CausalLm,
    tokenizer: Tokenizer,
    chat_template: Option<ChatTemplate>,
    generation_defaults: GenerationDefaults,
    device: Device,
    max_model_len: usize,
}

impl Engine {
    /// Loads the model directory `dir`: config, tokenizer, chat template,
    /// then the weights onto the device. Does not warm up; see
    /// [`Engine::warm_up`].
    pub fn load(dir: &Path, options: LoadOptions) -> Result<Self, LoadError> {
        let (spec, config_tokens) = ModelSpec::from_dir(dir).map_err(models::LoadError::from)?;
        Self::load_resolved(dir, spec, &config_tokens, options)
    }

    /// [`Engine::load`] with `config.json` already resolved (the server
    /// reads it once, at its startup check: `crate::model::ModelDir`).
    pub fn load_resolved(
        dir: &Path,
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
        let tok_config = TokenizerConfig::load(dir)?;
        let tokenizer = Tokenizer::load(dir, &tok_config, &config_tokens.eos)?;
        let chat_template = ChatTemplate::load(dir, &tok_config)?;
        let generation_defaults = GenerationDefaults::load(dir)?;
        let device = device::select_device(options.device)?;
        let dtype = device::select_dtype(options.dtype, spec.checkpoint_dtype, &device);
        let model = CausalLm::load(dir, spec, &device, dtype, max_model_len)?;
        Ok(Self {
            model,
            tokenizer,
            chat_template,
            generation_defaults,
            device,
            max_model_len,
        })
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

    /// A fresh, empty sequence.
    pub fn new_sequence(&self) -> Sequence {
        Sequence {
            cache: self.model.new_cache(),
        }
    }

    /// Feeds `tokens` to `seq` and returns the logits (f32, one per
    /// vocabulary id) predicting the token after the last of them.
    pub fn step(&self, seq: &mut Sequence, tokens: &[u32]) -> Result<Vec<f32>, EngineError> {
        let vocab_size = self.model.spec.vocab_size;
        if let Some(&id) = tokens.iter().find(|&&id| id as usize >= vocab_size) {
            return Err(EngineError::BadTokenId { id, vocab_size });
        }
        if seq.len() + tokens.len() > self.max_model_len {
            return Err(EngineError::PromptTooLong {
                tokens: seq.len() + tokens.len(),
                max_model_len: self.max_model_len,
            });
        }
        let logits = self.model.forward(tokens, &mut seq.cache)?;
        Ok(logits.to_vec1()?)
    }

    /// Runs one request to completion. `on_token` sees each new token as it
    /// is produced and may break to cancel (client disconnects).
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
        let mut sampler = Sampler::new(request.sampling.clone(), prompt);
        let mut seq = self.new_sequence();
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
        let mut logits = self.step(&mut seq, prompt)?;
        loop {
            let next = sampler.sample(&logits);
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
            logits = self.step(&mut seq, &[next])?;
        }
    }
}
