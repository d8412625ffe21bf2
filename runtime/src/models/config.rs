//! `config.json` → [`ModelSpec`]: the resolved shape of a decoder-only
//! checkpoint, whichever of the layouts real checkpoints use it came in.
//!
//! Hugging Face configs drifted over the years: RoPE settings live either in
//! `rope_theta` + `rope_scaling` (transformers < 5) or in `rope_parameters`
//! (transformers 5); the checkpoint dtype is `torch_dtype` or `dtype`;
//! `rope_scaling` names its kind in `rope_type` or the older `type`. All of
//! that is normalised here, once, so the model code sees a single shape and
//! an unsupported setting fails at startup with the config's path instead of
//! silently producing wrong logits.

use std::{fs, io, path::Path, path::PathBuf};

use candle_core::DType;
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is not a valid model config", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{}: unsupported architecture {found:?} (supported: Llama, Mistral, Qwen2, Qwen3)", path.display())]
    UnsupportedArchitecture { path: PathBuf, found: String },
    #[error("{}: unsupported setting: {what}", path.display())]
    Unsupported { path: PathBuf, what: String },
}

/// The architectures this engine implements; all are the same pre-norm
/// RMSNorm/RoPE/GQA/SwiGLU decoder with different bias and tying choices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    Llama,
    Mistral,
    Qwen2,
    /// Qwen2 without biases, with an RMSNorm over each head of q and k.
    Qwen3,
}

/// How RoPE frequencies are adjusted for long contexts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RopeScaling {
    None,
    /// Position interpolation: every frequency divided by `factor`.
    Linear {
        factor: f64,
    },
    /// Llama 3.1's piecewise scaling of low frequencies.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: usize,
    },
}

/// Everything the model code needs, with defaults and aliases resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    pub architecture: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    pub tie_word_embeddings: bool,
    /// Biases on the q/k/v projections (Qwen2 always; Llama if `attention_bias`).
    pub qkv_bias: bool,
    /// Bias on the output projection (Llama's `attention_bias` only).
    pub o_bias: bool,
    pub mlp_bias: bool,
    /// RMSNorm over each head of q and k before RoPE (Qwen3).
    pub qk_norm: bool,
    /// Mistral-style sliding-window attention span, if any.
    pub sliding_window: Option<usize>,
    /// The dtype the checkpoint was saved in, if the config says.
    pub checkpoint_dtype: Option<DType>,
}

/// A token id or a list of them (`eos_token_id` comes in both forms).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum TokenIds {
    One(u32),
    Many(Vec<u32>),
}

impl TokenIds {
    pub fn to_vec(&self) -> Vec<u32> {
        match self {
            Self::One(id) => vec![*id],
            Self::Many(ids) => ids.clone(),
        }
    }
}

#[derive(Debug, Deserialize)]
struct RopeParams {
    #[serde(alias = "type")]
    rope_type: Option<String>,
    rope_theta: Option<f64>,
    factor: Option<f64>,
    low_freq_factor: Option<f64>,
    high_freq_factor: Option<f64>,
    original_max_position_embeddings: Option<usize>,
}

#[derive(Debug, Deserialize)]
struct RawConfig {
    #[serde(default)]
    architectures: Vec<String>,
    model_type: Option<String>,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    max_position_embeddings: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_scaling: Option<RopeParams>,
    rope_parameters: Option<RopeParams>,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    hidden_act: Option<String>,
    sliding_window: Option<usize>,
    use_sliding_window: Option<bool>,
    torch_dtype: Option<String>,
    dtype: Option<String>,
    eos_token_id: Option<TokenIds>,
    bos_token_id: Option<TokenIds>,
}

/// Token ids `config.json` declares; a fallback when `generation_config.json`
/// is absent.
#[derive(Debug, Clone, Default)]
pub struct ConfigTokens {
    pub bos: Vec<u32>,
    pub eos: Vec<u32>,
}

impl ModelSpec {
    /// Reads and resolves `<dir>/config.json`.
    pub fn from_dir(dir: &Path) -> Result<(Self, ConfigTokens), ConfigError> {
        let path = dir.join("config.json");
        let raw = fs::read(&path).map_err(|source| ConfigError::Io {
            path: path.clone(),
            source,
        })?;
        Self::parse(&raw, &path)
    }

    /// Resolves a config's bytes; `path` is only for error messages.
    pub fn parse(raw: &[u8], path: &Path) -> Result<(Self, ConfigTokens), ConfigError> {
        let cfg: RawConfig = serde_json::from_slice(raw).map_err(|source| ConfigError::Json {
            path: path.to_owned(),
            source,
        })?;
        let unsupported = |what: String| ConfigError::Unsupported {
            path: path.to_owned(),
            what,
        };
        let architecture = architecture(&cfg).ok_or_else(|| {
            let found = cfg
                .architectures
                .first()
                .cloned()
                .or_else(|| cfg.model_type.clone())
                .unwrap_or_default();
            ConfigError::UnsupportedArchitecture {
                path: path.to_owned(),
                found,
            }
        })?;
        if let Some(act) = cfg.hidden_act.as_deref().filter(|a| *a != "silu") {
            return Err(unsupported(format!("hidden_act {act:?} (only silu)")));
        }
        if cfg.num_attention_heads == 0 {
            return Err(unsupported("num_attention_heads = 0".into()));
        }
        let num_kv_heads = cfg.num_key_value_heads.unwrap_or(cfg.num_attention_heads);
        if num_kv_heads == 0 || !cfg.num_attention_heads.is_multiple_of(num_kv_heads) {
            return Err(unsupported(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {num_kv_heads}",
                cfg.num_attention_heads
            )));
        }
        let head_dim = cfg
            .head_dim
            .unwrap_or(cfg.hidden_size / cfg.num_attention_heads);
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            return Err(unsupported(format!("head_dim {head_dim} (must be even)")));
        }

        // transformers 5 folds rope_theta into rope_parameters; older configs
        // keep it top-level next to rope_scaling.
        let rope = cfg.rope_parameters.as_ref().or(cfg.rope_scaling.as_ref());
        let rope_theta = rope
            .and_then(|r| r.rope_theta)
            .or(cfg.rope_theta)
            .unwrap_or(10_000.0);
        let rope_scaling = match rope {
            None => RopeScaling::None,
            Some(r) => rope_scaling(r).map_err(unsupported)?,
        };

        let sliding_window = match architecture {
            Architecture::Mistral => cfg.sliding_window,
            Architecture::Qwen2 | Architecture::Qwen3 if cfg.use_sliding_window == Some(true) => {
                return Err(unsupported(
                    "use_sliding_window = true for Qwen2 (per-layer windows are not implemented)"
                        .into(),
                ));
            }
            _ => None,
        };
        let attention_bias = cfg.attention_bias.unwrap_or(false);
        let dtype_name = cfg.dtype.as_deref().or(cfg.torch_dtype.as_deref());
        let spec = Self {
            architecture,
            vocab_size: cfg.vocab_size,
            hidden_size: cfg.hidden_size,
            intermediate_size: cfg.intermediate_size,
            num_layers: cfg.num_hidden_layers,
            num_heads: cfg.num_attention_heads,
            num_kv_heads,
            head_dim,
            max_position_embeddings: cfg.max_position_embeddings.unwrap_or(2048),
            rms_norm_eps: cfg.rms_norm_eps.unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            tie_word_embeddings: cfg.tie_word_embeddings.unwrap_or(false),
            qkv_bias: architecture == Architecture::Qwen2 || attention_bias,
            o_bias: architecture == Architecture::Llama && attention_bias,
            mlp_bias: architecture == Architecture::Llama && cfg.mlp_bias.unwrap_or(false),
            qk_norm: architecture == Architecture::Qwen3,
            sliding_window,
            checkpoint_dtype: dtype_name.and_then(parse_dtype),
        };
        let tokens = ConfigTokens {
            bos: cfg.bos_token_id.map(|t| t.to_vec()).unwrap_or_default(),
            eos: cfg.eos_token_id.map(|t| t.to_vec()).unwrap_or_default(),
        };
        Ok((spec, tokens))
    }
}

fn architecture(cfg: &RawConfig) -> Option<Architecture> {
    let from_class = |name: &str| match name {
        "LlamaForCausalLM" => Some(Architecture::Llama),
        "MistralForCausalLM" => Some(Architecture::Mistral),
        "Qwen2ForCausalLM" => Some(Architecture::Qwen2),
        "Qwen3ForCausalLM" => Some(Architecture::Qwen3),
        _ => None,
    };
    let from_type = |name: &str| match name {
        "llama" => Some(Architecture::Llama),
        "mistral" => Some(Architecture::Mistral),
        "qwen2" => Some(Architecture::Qwen2),
        "qwen3" => Some(Architecture::Qwen3),
        _ => None,
    };
    match cfg.architectures.first() {
        Some(class) => from_class(class),
        None => cfg.model_type.as_deref().and_then(from_type),
    }
}

fn rope_scaling(r: &RopeParams) -> Result<RopeScaling, String> {
    let kind = r.rope_type.as_deref().unwrap_or("default");
    let need = |v: Option<f64>, name: &str| {
        v.filter(|x| x.is_finite() && *x > 0.0)
            .ok_or_else(|| format!("rope_type {kind:?} needs a positive `{name}`"))
    };
    match kind {
        "default" => Ok(RopeScaling::None),
        "linear" => Ok(RopeScaling::Linear {
            factor: need(r.factor, "factor")?,
        }),
        "llama3" => Ok(RopeScaling::Llama3 {
            factor: need(r.factor, "factor")?,
            low_freq_factor: need(r.low_freq_factor, "low_freq_factor")?,
            high_freq_factor: need(r.high_freq_factor, "high_freq_factor")?,
            original_max_position_embeddings: r
                .original_max_position_embeddings
                .ok_or("rope_type \"llama3\" needs `original_max_position_embeddings`")?,
        }),
        other => Err(format!(
            "rope_type {other:?} (supported: default, linear, llama3)"
        )),
    }
}

/// `"bfloat16"` → `BF16`; names transformers writes in `torch_dtype`/`dtype`.
pub fn parse_dtype(name: &str) -> Option<DType> {
    match name.trim_start_matches("torch.") {
        "float32" | "float" => Some(DType::F32),
        "float16" | "half" => Some(DType::F16),
        "bfloat16" => Some(DType::BF16),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#""vocab_size":32,"hidden_size":16,"intermediate_size":24,
        "num_hidden_layers":1,"num_attention_heads":4,"num_key_value_heads":2"#;

    fn parse(extra: &str) -> Result<ModelSpec, ConfigError> {
        let json = format!("{{{BASE},{extra}}}");
        ModelSpec::parse(json.as_bytes(), Path::new("/m/config.json")).map(|(s, _)| s)
    }

    #[test]
    fn old_layout_with_llama3_scaling() {
        let spec = parse(
            r#""architectures":["LlamaForCausalLM"],"rope_theta":500000.0,"torch_dtype":"bfloat16",
            "rope_scaling":{"rope_type":"llama3","factor":8.0,"low_freq_factor":1.0,
            "high_freq_factor":4.0,"original_max_position_embeddings":8192}"#,
        )
        .expect("valid");
        assert_eq!(spec.architecture, Architecture::Llama);
        assert_eq!(spec.rope_theta, 500000.0);
        assert_eq!(spec.head_dim, 4);
        assert_eq!(spec.checkpoint_dtype, Some(DType::BF16));
        assert!(matches!(spec.rope_scaling, RopeScaling::Llama3 { factor, .. } if factor == 8.0));
    }

    #[test]
    fn new_layout_with_rope_parameters_and_dtype() {
        let spec = parse(
            r#""model_type":"qwen2","dtype":"float16",
            "rope_parameters":{"rope_type":"default","rope_theta":1000000.0}"#,
        )
        .expect("valid");
        assert_eq!(spec.architecture, Architecture::Qwen2);
        assert_eq!(spec.rope_theta, 1_000_000.0);
        assert_eq!(spec.rope_scaling, RopeScaling::None);
        assert!(spec.qkv_bias && !spec.o_bias);
        assert_eq!(spec.checkpoint_dtype, Some(DType::F16));
    }

    #[test]
    fn unsupported_settings_name_the_file() {
        let err = parse(r#""architectures":["GPT2LMHeadModel"]"#).expect_err("gpt2");
        assert!(err.to_string().contains("/m/config.json"), "{err}");
        let err = parse(r#""model_type":"llama","rope_scaling":{"type":"yarn","factor":4.0}"#)
            .expect_err("yarn");
        assert!(err.to_string().contains("yarn"), "{err}");
        let err = parse(r#""model_type":"llama","hidden_act":"gelu""#).expect_err("gelu");
        assert!(err.to_string().contains("gelu"), "{err}");
    }
}
