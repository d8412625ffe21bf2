//! Deterministic tiny random-weight Hugging Face checkpoints: the public API
//! ([`SyntheticSpec`], [`generate`], [`generate_cached`], the token-id
//! constants) and the atomic write of the checkpoint directory; the file
//! formats live in the submodules.
//!
//! The offline demo manifest has to build a complete image without network
//! access, and sites want to burn in their GPU stack before any real weights
//! cross the air gap. Both need a checkpoint that the inference server loads
//! exactly like a downloaded one, so this module writes the real formats
//! (`config.json`, `model.safetensors`, `tokenizer.json`,
//! `tokenizer_config.json`, `generation_config.json`) rather than a stub.
//!
//! Every byte is a pure function of [`SyntheticSpec`] (and [`FORMAT_VERSION`]):
//! two hosts generating the same spec produce the same image layer digest, so
//! the demo image is reproducible and [`SyntheticSpec::digest`] is a safe
//! cache key.
//!
//! # Weight values
//!
//! Tensors are generated in ascending tensor-name order (the order in which
//! they are laid out in the safetensors file) from a single
//! `ChaCha8Rng::seed_from_u64(seed)` stream. Norm weights are exactly `1.0`
//! and consume no randomness. Every other element consumes one `next_u32()`
//! `r` and becomes `(2 * (r >> 8) + 1 - 2^24) * 2^-29`: an odd integer below
//! 2^24 scaled by a power of two, which is exact in `f32` on every platform
//! (no transcendental functions, no rounding). The values are uniform in
//! `(-2^-5, 2^-5)`, a standard deviation of about 0.018, close to the usual
//! 0.02 initialiser range. `f16`/`bf16` checkpoints hold the
//! round-to-nearest-even conversion of the very same `f32` values, so one
//! seed describes one model whatever the dtype.

mod config;
mod tokenizer;
mod weights;

#[cfg(test)]
mod tests;

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use safetensors::Dtype;
use serde_json::Value;

use config::{config_json, generation_config_json};
pub use tokenizer::CHAT_TEMPLATE;
use tokenizer::{tokenizer_config_json, tokenizer_json};
use weights::write_safetensors;
pub use weights::{Init, TensorPlan};

/// Bumped whenever the bytes produced for an unchanged spec change, so that
/// caches keyed by [`SyntheticSpec::digest`] never serve stale checkpoints.
pub const FORMAT_VERSION: u32 = 1;

/// The files written by [`generate`]; callers that cache or copy the
/// checkpoint can check for completeness without knowing the internals.
pub const FILES: [&str; 5] = [
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
];

/// Special tokens, in id order, placed right after the 256 byte tokens so
/// their ids do not move when the number of merges changes.
pub const SPECIAL_TOKENS: [&str; 4] = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|im_start|>",
    "<|im_end|>",
];

/// Number of byte-level base tokens; byte `b` has token id `b`.
pub const BYTE_TOKENS: u32 = 256;
/// Id of `<|begin_of_text|>`.
pub const BOS_TOKEN_ID: u32 = BYTE_TOKENS;
/// Id of `<|end_of_text|>`.
pub const END_OF_TEXT_TOKEN_ID: u32 = BYTE_TOKENS + 1;
/// Id of `<|im_start|>`.
pub const IM_START_TOKEN_ID: u32 = BYTE_TOKENS + 2;
/// Id of `<|im_end|>`.
pub const IM_END_TOKEN_ID: u32 = BYTE_TOKENS + 3;
/// Generation stops on either end-of-text or the end of a ChatML turn.
pub const EOS_TOKEN_IDS: [u32; 2] = [END_OF_TEXT_TOKEN_ID, IM_END_TOKEN_ID];

/// Upper bound for [`SyntheticSpec::merges`]: the size of the fixed table.
pub const MAX_MERGES: usize = tokenizer::MERGE_TABLE.len();

/// Model families whose Hugging Face layout the server's candle models load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// `LlamaForCausalLM`, untied `lm_head`, no biases.
    Llama,
    /// `Qwen2ForCausalLM`, q/k/v biases, tied embeddings.
    Qwen2,
    /// `MistralForCausalLM`, same tensors as Llama, untied `lm_head`.
    Mistral,
}

impl Arch {
    /// The lowercase name used in manifests, `model_type` and the digest.
    pub fn as_str(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Mistral => "mistral",
        }
    }

    fn architecture(self) -> &'static str {
        match self {
            Arch::Llama => "LlamaForCausalLM",
            Arch::Qwen2 => "Qwen2ForCausalLM",
            Arch::Mistral => "MistralForCausalLM",
        }
    }

    /// Qwen2 ties `lm_head` to the embeddings, like its small real variants.
    pub fn tie_word_embeddings(self) -> bool {
        matches!(self, Arch::Qwen2)
    }

    fn qkv_bias(self) -> bool {
        matches!(self, Arch::Qwen2)
    }
}

/// Storage dtype of the weights; half precision lets burn-in runs exercise
/// the same kernels as production checkpoints.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum SynthDtype {
    #[default]
    F32,
    F16,
    Bf16,
}

impl SynthDtype {
    /// The name used in manifests and the digest.
    pub fn as_str(self) -> &'static str {
        match self {
            SynthDtype::F32 => "f32",
            SynthDtype::F16 => "f16",
            SynthDtype::Bf16 => "bf16",
        }
    }

    fn torch_dtype(self) -> &'static str {
        match self {
            SynthDtype::F32 => "float32",
            SynthDtype::F16 => "float16",
            SynthDtype::Bf16 => "bfloat16",
        }
    }

    fn safetensors_dtype(self) -> Dtype {
        match self {
            SynthDtype::F32 => Dtype::F32,
            SynthDtype::F16 => Dtype::F16,
            SynthDtype::Bf16 => Dtype::BF16,
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            SynthDtype::F32 => 4,
            SynthDtype::F16 | SynthDtype::Bf16 => 2,
        }
    }
}

fn default_hidden_size() -> usize {
    64
}
fn default_intermediate_size() -> usize {
    128
}
fn default_num_hidden_layers() -> usize {
    2
}
fn default_num_attention_heads() -> usize {
    4
}
fn default_num_key_value_heads() -> usize {
    2
}
fn default_max_position_embeddings() -> usize {
    2048
}
/// 60 merges make the default vocabulary 320 = 5 * 64 entries.
fn default_merges() -> usize {
    60
}

/// Everything that determines a synthetic checkpoint; manifests embed it
/// verbatim, so unknown fields are rejected rather than silently ignored.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct SyntheticSpec {
    pub arch: Arch,
    #[serde(default)]
    pub seed: u64,
    #[serde(default = "default_hidden_size")]
    pub hidden_size: usize,
    #[serde(default = "default_intermediate_size")]
    pub intermediate_size: usize,
    #[serde(default = "default_num_hidden_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "default_num_attention_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "default_num_key_value_heads")]
    pub num_key_value_heads: usize,
    #[serde(default = "default_max_position_embeddings")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub dtype: SynthDtype,
    /// Number of BPE merges taken from the fixed table (at most [`MAX_MERGES`]).
    #[serde(default = "default_merges")]
    pub merges: usize,
}

/// Why a synthetic checkpoint could not be produced.
#[derive(Debug, thiserror::Error)]
pub enum SyntheticError {
    /// A spec field is out of range; `field` is the manifest key to fix.
    #[error("invalid synthetic model spec: `{field}` {reason}")]
    Invalid { field: &'static str, reason: String },
    /// The output directory exists; a cache hit for the caller to handle.
    #[error("{}: already exists; synthetic checkpoints are only generated into a new directory", path.display())]
    AlreadyExists { path: PathBuf },
    /// The output path has no parent/name to build a sibling temp dir from.
    #[error("{}: not usable as a checkpoint directory (needs a final path component)", path.display())]
    InvalidOutputPath { path: PathBuf },
    #[error("{}: {action}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: encoding JSON", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{}: building safetensors header", path.display())]
    Header {
        path: PathBuf,
        #[source]
        source: safetensors::SafeTensorError,
    },
}

fn io_err(action: &'static str, path: &Path) -> impl Fn(io::Error) -> SyntheticError {
    move |source| SyntheticError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

impl SyntheticSpec {
    /// A spec with every optional field at its default.
    pub fn new(arch: Arch) -> Self {
        SyntheticSpec {
            arch,
            seed: 0,
            hidden_size: default_hidden_size(),
            intermediate_size: default_intermediate_size(),
            num_hidden_layers: default_num_hidden_layers(),
            num_attention_heads: default_num_attention_heads(),
            num_key_value_heads: default_num_key_value_heads(),
            max_position_embeddings: default_max_position_embeddings(),
            dtype: SynthDtype::default(),
            merges: default_merges(),
        }
    }

    /// Rejects specs the candle models could not load (or would load into
    /// nonsense), naming the manifest field so the user knows what to fix.
    pub fn validate(&self) -> Result<(), SyntheticError> {
        let invalid = |field, reason: String| Err(SyntheticError::Invalid { field, reason });
        for (field, value) in [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if value == 0 {
                return invalid(field, "must be greater than zero".into());
            }
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return invalid(
                "num_attention_heads",
                format!(
                    "({}) must divide hidden_size ({})",
                    self.num_attention_heads, self.hidden_size
                ),
            );
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return invalid(
                "num_key_value_heads",
                format!(
                    "({}) must divide num_attention_heads ({})",
                    self.num_key_value_heads, self.num_attention_heads
                ),
            );
        }
        if !self.head_dim().is_multiple_of(2) {
            return invalid(
                "num_attention_heads",
                format!(
                    "gives head_dim {} = hidden_size / num_attention_heads, which must be even for rotary embeddings",
                    self.head_dim()
                ),
            );
        }
        if self.merges > MAX_MERGES {
            return invalid(
                "merges",
                format!("({}) must be at most {MAX_MERGES}", self.merges),
            );
        }
        if self.checked_parameter_count().is_none() {
            return invalid(
                "hidden_size",
                "together with the other sizes overflows the parameter count".into(),
            );
        }
        Ok(())
    }

    /// Cache key: hex SHA-256 over an explicit, versioned rendering of every
    /// field, so it stays stable across serde or struct-layout changes.
    pub fn digest(&self) -> String {
        let mut canonical = format!("appliance synthetic checkpoint v{FORMAT_VERSION}\n");
        for (key, value) in [
            ("arch", self.arch.as_str().to_string()),
            ("seed", self.seed.to_string()),
            ("hidden_size", self.hidden_size.to_string()),
            ("intermediate_size", self.intermediate_size.to_string()),
            ("num_hidden_layers", self.num_hidden_layers.to_string()),
            ("num_attention_heads", self.num_attention_heads.to_string()),
            ("num_key_value_heads", self.num_key_value_heads.to_string()),
            (
                "max_position_embeddings",
                self.max_position_embeddings.to_string(),
            ),
            ("dtype", self.dtype.as_str().to_string()),
            ("merges", self.merges.to_string()),
        ] {
            canonical.push_str(key);
            canonical.push('=');
            canonical.push_str(&value);
            canonical.push('\n');
        }
        crate::digest::Sha256Digest::of(canonical.as_bytes()).hex()
    }

    /// Number of weights in the checkpoint (saturating at `u64::MAX` for
    /// specs that [`validate`](Self::validate) rejects as overflowing).
    pub fn parameter_count(&self) -> u64 {
        self.checked_parameter_count().unwrap_or(u64::MAX)
    }

    fn checked_parameter_count(&self) -> Option<u64> {
        self.tensors_unchecked()
            .iter()
            .try_fold(0u64, |total, t| {
                let numel = t
                    .shape
                    .iter()
                    .try_fold(1u64, |n, &d| n.checked_mul(u64::try_from(d).ok()?))?;
                total.checked_add(numel)
            })
            // The file must also fit in memory offsets and usize products.
            .filter(|&n| {
                n.checked_mul(self.dtype.size() as u64)
                    .is_some_and(|bytes| usize::try_from(bytes).is_ok())
            })
    }

    /// Byte tokens + special tokens + merges.
    pub fn vocab_size(&self) -> usize {
        BYTE_TOKENS as usize + SPECIAL_TOKENS.len() + self.merges
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size
            .checked_div(self.num_attention_heads)
            .unwrap_or(0)
    }

    /// Tensors in file (ascending name) order, with Hugging Face names and
    /// `[out_features, in_features]` shapes.
    pub fn tensors(&self) -> Result<Vec<TensorPlan>, SyntheticError> {
        self.validate()?;
        Ok(self.tensors_unchecked())
    }
}

/// Writes the checkpoint for `spec` to `out_dir`, which must not exist.
///
/// Files are generated in a sibling `<out_dir>.tmp-<pid>-<n>` directory and
/// renamed into place, so an existing `out_dir` is always complete: callers
/// caching by [`SyntheticSpec::digest`] treat [`SyntheticError::AlreadyExists`]
/// as a hit (see [`generate_cached`]). Memory use is bounded by one chunk of
/// elements, not by the model size.
pub fn generate(spec: &SyntheticSpec, out_dir: &Path) -> Result<(), SyntheticError> {
    spec.validate()?;
    if out_dir.symlink_metadata().is_ok() {
        return Err(SyntheticError::AlreadyExists {
            path: out_dir.to_path_buf(),
        });
    }
    let tmp = temp_sibling(out_dir)?;
    if let Some(parent) = out_dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(io_err("creating parent directory", parent))?;
    }
    if tmp.symlink_metadata().is_ok() {
        // Left over by a crashed run that had the same pid.
        fs::remove_dir_all(&tmp).map_err(io_err("removing stale temporary directory", &tmp))?;
    }
    fs::create_dir(&tmp).map_err(io_err("creating temporary directory", &tmp))?;
    let result = write_all_files(spec, &tmp).and_then(|()| {
        fs::rename(&tmp, out_dir).map_err(|source| {
            if out_dir.symlink_metadata().is_ok() {
                // Another process finished the same checkpoint first.
                SyntheticError::AlreadyExists {
                    path: out_dir.to_path_buf(),
                }
            } else {
                SyntheticError::Io {
                    action: "renaming temporary directory into place",
                    path: out_dir.to_path_buf(),
                    source,
                }
            }
        })
    });
    if result.is_err() {
        // Best effort: the primary error matters more than cleanup failure.
        let _ = fs::remove_dir_all(&tmp);
    } else if let Some(parent) = out_dir.parent() {
        // Persist the rename; not every filesystem supports syncing a
        // directory, and the data itself is already synced.
        let parent = if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        };
        if let Ok(dir) = File::open(parent) {
            let _ = dir.sync_all();
        }
    }
    result
}

/// Returns `cache_root/<digest>`, generating it first unless a previous (or
/// concurrent) run already did; the atomic rename in [`generate`] makes an
/// existing entry trustworthy.
pub fn generate_cached(spec: &SyntheticSpec, cache_root: &Path) -> Result<PathBuf, SyntheticError> {
    spec.validate()?;
    fs::create_dir_all(cache_root).map_err(io_err("creating cache directory", cache_root))?;
    let dir = cache_root.join(spec.digest());
    match generate(spec, &dir) {
        Ok(()) | Err(SyntheticError::AlreadyExists { .. }) => Ok(dir),
        Err(e) => Err(e),
    }
}

fn temp_sibling(out_dir: &Path) -> Result<PathBuf, SyntheticError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let Some(name) = out_dir.file_name() else {
        return Err(SyntheticError::InvalidOutputPath {
            path: out_dir.to_path_buf(),
        });
    };
    let mut tmp_name = name.to_os_string();
    tmp_name.push(format!(
        ".tmp-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    Ok(out_dir.with_file_name(tmp_name))
}

fn write_all_files(spec: &SyntheticSpec, dir: &Path) -> Result<(), SyntheticError> {
    write_json(&dir.join("config.json"), &config_json(spec))?;
    write_json(
        &dir.join("generation_config.json"),
        &generation_config_json(),
    )?;
    write_json(&dir.join("tokenizer.json"), &tokenizer_json(spec))?;
    write_json(
        &dir.join("tokenizer_config.json"),
        &tokenizer_config_json(spec),
    )?;
    write_safetensors(spec, &dir.join("model.safetensors"))
}

/// Rebuilds objects with keys inserted in sorted order, so the output is
/// sorted even if some dependency enables serde_json's `preserve_order`.
fn sorted(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sorted).collect()),
        other => other,
    }
}

fn write_json(path: &Path, value: &Value) -> Result<(), SyntheticError> {
    let mut bytes = serde_json::to_vec_pretty(&sorted(value.clone())).map_err(|source| {
        SyntheticError::Json {
            path: path.to_path_buf(),
            source,
        }
    })?;
    bytes.push(b'\n');
    let mut file = File::create(path).map_err(io_err("creating file", path))?;
    file.write_all(&bytes)
        .map_err(io_err("writing file", path))?;
    file.sync_all().map_err(io_err("syncing file", path))
}
