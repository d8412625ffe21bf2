//! Deterministic tiny random-weight Hugging Face checkpoints.
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

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use safetensors::Dtype;
use safetensors::tensor::{Metadata, TensorInfo};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

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

/// ChatML, because both the special tokens and the server's chat endpoint
/// speak it; minijinja and Python's jinja2 both accept it.
pub const CHAT_TEMPLATE: &str = "{% for message in messages %}\
{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}\
{% endfor %}\
{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// Byte-level BPE merges, in rank order, taken from the head of GPT-2's merge
/// list plus a few that make "Hello world" exercise multi-level merges. A
/// fixed table (rather than training) keeps the tokenizer independent of any
/// corpus; every merge only uses bytes or earlier merge results.
const MERGE_TABLE: [(&str, &str); 64] = [
    ("Ġ", "t"),
    ("Ġ", "a"),
    ("h", "e"),
    ("i", "n"),
    ("r", "e"),
    ("o", "n"),
    ("Ġt", "he"),
    ("e", "r"),
    ("Ġ", "s"),
    ("a", "t"),
    ("Ġ", "w"),
    ("Ġ", "o"),
    ("e", "n"),
    ("Ġ", "c"),
    ("i", "t"),
    ("i", "s"),
    ("a", "n"),
    ("o", "r"),
    ("e", "s"),
    ("Ġ", "b"),
    ("e", "d"),
    ("Ġ", "f"),
    ("in", "g"),
    ("Ġ", "p"),
    ("o", "u"),
    ("Ġa", "n"),
    ("a", "l"),
    ("a", "r"),
    ("Ġt", "o"),
    ("Ġ", "m"),
    ("Ġo", "f"),
    ("Ġ", "in"),
    ("Ġ", "d"),
    ("Ġ", "h"),
    ("Ġan", "d"),
    ("i", "c"),
    ("a", "s"),
    ("l", "e"),
    ("Ġt", "h"),
    ("i", "on"),
    ("o", "m"),
    ("l", "l"),
    ("en", "t"),
    ("Ġ", "n"),
    ("Ġ", "l"),
    ("s", "t"),
    ("Ġ", "re"),
    ("v", "e"),
    ("Ġ", "e"),
    ("r", "o"),
    ("l", "y"),
    ("Ġb", "e"),
    ("Ġ", "g"),
    ("Ġ", "T"),
    ("c", "t"),
    ("Ġ", "S"),
    ("i", "d"),
    ("o", "t"),
    ("Ġ", "I"),
    ("u", "t"),
    ("l", "d"),
    ("Ġw", "or"),
    ("Ġwor", "ld"),
    ("H", "e"),
];

/// Upper bound for [`SyntheticSpec::merges`]: the size of the fixed table.
pub const MAX_MERGES: usize = MERGE_TABLE.len();

/// Elements generated per write; bounds memory independently of tensor size.
const CHUNK_ELEMENTS: usize = 16 * 1024;

/// `2^-29`: scales odd integers below `2^24` into `(-2^-5, 2^-5)` exactly.
const UNIFORM_SCALE: f32 = 1.0 / 536_870_912.0;

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

/// How a tensor is initialised; see the module docs for the exact values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Init {
    Ones,
    Uniform,
}

/// One tensor of the checkpoint, exposed so tests elsewhere (e.g. the
/// server's loader) can check names and shapes without parsing the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorPlan {
    pub name: String,
    pub shape: Vec<usize>,
    pub init: Init,
}

impl TensorPlan {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
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
        if self.hidden_size % self.num_attention_heads != 0 {
            return invalid(
                "num_attention_heads",
                format!(
                    "({}) must divide hidden_size ({})",
                    self.num_attention_heads, self.hidden_size
                ),
            );
        }
        if self.num_attention_heads % self.num_key_value_heads != 0 {
            return invalid(
                "num_key_value_heads",
                format!(
                    "({}) must divide num_attention_heads ({})",
                    self.num_key_value_heads, self.num_attention_heads
                ),
            );
        }
        if self.head_dim() % 2 != 0 {
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
        let hash = Sha256::digest(canonical.as_bytes());
        let mut hex = String::with_capacity(64);
        for byte in hash {
            // Writing to a String cannot fail.
            let _ = write!(hex, "{byte:02x}");
        }
        hex
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

    fn tensors_unchecked(&self) -> Vec<TensorPlan> {
        let h = self.hidden_size;
        let kv = self.num_key_value_heads.saturating_mul(self.head_dim());
        let i = self.intermediate_size;
        let v = self.vocab_size();
        let mut out = Vec::new();
        let mut push = |name: String, shape: Vec<usize>, init| {
            out.push(TensorPlan { name, shape, init });
        };
        push(
            "model.embed_tokens.weight".into(),
            vec![v, h],
            Init::Uniform,
        );
        push("model.norm.weight".into(), vec![h], Init::Ones);
        if !self.arch.tie_word_embeddings() {
            push("lm_head.weight".into(), vec![v, h], Init::Uniform);
        }
        for layer in 0..self.num_hidden_layers {
            let p = format!("model.layers.{layer}");
            push(format!("{p}.input_layernorm.weight"), vec![h], Init::Ones);
            push(
                format!("{p}.post_attention_layernorm.weight"),
                vec![h],
                Init::Ones,
            );
            push(
                format!("{p}.self_attn.q_proj.weight"),
                vec![h, h],
                Init::Uniform,
            );
            push(
                format!("{p}.self_attn.k_proj.weight"),
                vec![kv, h],
                Init::Uniform,
            );
            push(
                format!("{p}.self_attn.v_proj.weight"),
                vec![kv, h],
                Init::Uniform,
            );
            push(
                format!("{p}.self_attn.o_proj.weight"),
                vec![h, h],
                Init::Uniform,
            );
            if self.arch.qkv_bias() {
                push(format!("{p}.self_attn.q_proj.bias"), vec![h], Init::Uniform);
                push(
                    format!("{p}.self_attn.k_proj.bias"),
                    vec![kv],
                    Init::Uniform,
                );
                push(
                    format!("{p}.self_attn.v_proj.bias"),
                    vec![kv],
                    Init::Uniform,
                );
            }
            push(
                format!("{p}.mlp.gate_proj.weight"),
                vec![i, h],
                Init::Uniform,
            );
            push(format!("{p}.mlp.up_proj.weight"), vec![i, h], Init::Uniform);
            push(
                format!("{p}.mlp.down_proj.weight"),
                vec![h, i],
                Init::Uniform,
            );
        }
        // Same order as `safetensors::serialize` (single dtype: by name).
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
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

fn config_json(spec: &SyntheticSpec) -> Value {
    let mut config = json!({
        "architectures": [spec.arch.architecture()],
        "model_type": spec.arch.as_str(),
        "attention_dropout": 0.0,
        "bos_token_id": BOS_TOKEN_ID,
        "eos_token_id": EOS_TOKEN_IDS,
        "head_dim": spec.head_dim(),
        "hidden_act": "silu",
        "hidden_size": spec.hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": spec.intermediate_size,
        "max_position_embeddings": spec.max_position_embeddings,
        "num_attention_heads": spec.num_attention_heads,
        "num_hidden_layers": spec.num_hidden_layers,
        "num_key_value_heads": spec.num_key_value_heads,
        "rope_theta": 10000.0,
        "tie_word_embeddings": spec.arch.tie_word_embeddings(),
        "torch_dtype": spec.dtype.torch_dtype(),
        "use_cache": true,
        "vocab_size": spec.vocab_size(),
    });
    let extra = match spec.arch {
        Arch::Llama => json!({
            "attention_bias": false,
            "mlp_bias": false,
            "pretraining_tp": 1,
            "rms_norm_eps": 1e-5,
            "rope_scaling": null,
        }),
        // candle's Qwen2 config requires these keys (as numbers); a window as
        // long as the context disables sliding attention in practice too.
        Arch::Qwen2 => json!({
            "max_window_layers": spec.num_hidden_layers,
            "rms_norm_eps": 1e-6,
            "sliding_window": spec.max_position_embeddings,
            "use_sliding_window": false,
        }),
        Arch::Mistral => json!({
            "rms_norm_eps": 1e-5,
            "sliding_window": spec.max_position_embeddings,
        }),
    };
    if let (Value::Object(config), Value::Object(extra)) = (&mut config, extra) {
        config.extend(extra);
    }
    config
}

fn generation_config_json() -> Value {
    json!({
        "bos_token_id": BOS_TOKEN_ID,
        "do_sample": false,
        "eos_token_id": EOS_TOKEN_IDS,
    })
}

/// GPT-2's byte-to-unicode table: printable Latin-1 bytes map to themselves,
/// the rest to U+0100 onwards, so every byte is a visible, non-space char.
fn byte_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut shifted = 0u32;
    for (byte, slot) in (0u8..=255).zip(table.iter_mut()) {
        *slot = match byte {
            b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF => char::from(byte),
            _ => {
                let c = char::from_u32(256 + shifted).unwrap_or(char::REPLACEMENT_CHARACTER);
                shifted += 1;
                c
            }
        };
    }
    table
}

fn tokenizer_json(spec: &SyntheticSpec) -> Value {
    let mut vocab = serde_json::Map::new();
    for (id, c) in byte_to_unicode().iter().enumerate() {
        vocab.insert(c.to_string(), json!(id));
    }
    // Specials are in the model vocab too: `tokenizers` takes an added
    // token's id from the model vocab, and otherwise appends it after it.
    let mut next_id = BYTE_TOKENS;
    let mut added_tokens = Vec::new();
    for token in SPECIAL_TOKENS {
        vocab.insert(token.to_string(), json!(next_id));
        added_tokens.push(json!({
            "id": next_id,
            "content": token,
            "single_word": false,
            "lstrip": false,
            "rstrip": false,
            "normalized": false,
            "special": true,
        }));
        next_id += 1;
    }
    let mut merges = Vec::with_capacity(spec.merges);
    for (left, right) in MERGE_TABLE.iter().take(spec.merges) {
        vocab.insert(format!("{left}{right}"), json!(next_id));
        // The "left right" string form loads in every tokenizers release.
        merges.push(Value::String(format!("{left} {right}")));
        next_id += 1;
    }
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_tokens,
        "normalizer": null,
        "pre_tokenizer": {
            "type": "ByteLevel",
            "add_prefix_space": false,
            "trim_offsets": true,
            "use_regex": true,
        },
        "post_processor": {
            "type": "ByteLevel",
            "add_prefix_space": false,
            "trim_offsets": false,
            "use_regex": true,
        },
        "decoder": {
            "type": "ByteLevel",
            "add_prefix_space": true,
            "trim_offsets": true,
            "use_regex": true,
        },
        "model": {
            "type": "BPE",
            "dropout": null,
            "unk_token": null,
            "continuing_subword_prefix": null,
            "end_of_word_suffix": null,
            "fuse_unk": false,
            "byte_fallback": false,
            "ignore_merges": false,
            "vocab": vocab,
            "merges": merges,
        },
    })
}

fn tokenizer_config_json(spec: &SyntheticSpec) -> Value {
    let mut decoder = serde_json::Map::new();
    for (id, token) in (BYTE_TOKENS..).zip(SPECIAL_TOKENS) {
        decoder.insert(
            id.to_string(),
            json!({
                "content": token,
                "lstrip": false,
                "normalized": false,
                "rstrip": false,
                "single_word": false,
                "special": true,
            }),
        );
    }
    json!({
        "add_bos_token": false,
        "add_eos_token": false,
        "added_tokens_decoder": decoder,
        "bos_token": SPECIAL_TOKENS[0],
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": false,
        "eos_token": SPECIAL_TOKENS[3],
        "model_max_length": spec.max_position_embeddings,
        "pad_token": null,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": null,
    })
}

/// Maps one `ChaCha8Rng` output to an exactly representable weight; see the
/// module docs.
fn uniform_weight(r: u32) -> f32 {
    // |odd| <= 2^24 - 1, so the conversion and the power-of-two scale are exact.
    let odd = 2 * (r >> 8) as i32 + 1 - (1 << 24);
    odd as f32 * UNIFORM_SCALE
}

fn push_value(buf: &mut Vec<u8>, dtype: SynthDtype, value: f32) {
    match dtype {
        SynthDtype::F32 => buf.extend_from_slice(&value.to_le_bytes()),
        SynthDtype::F16 => buf.extend_from_slice(&half::f16::from_f32(value).to_le_bytes()),
        SynthDtype::Bf16 => buf.extend_from_slice(&half::bf16::from_f32(value).to_le_bytes()),
    }
}

/// Streams the safetensors file: the header is computed from shapes alone
/// (with the crate's own `Metadata`, so it matches `safetensors::serialize`
/// byte for byte), then tensors are generated chunk by chunk.
fn write_safetensors(spec: &SyntheticSpec, path: &Path) -> Result<(), SyntheticError> {
    let tensors = spec.tensors()?;
    let dtype = spec.dtype;
    let mut infos = Vec::with_capacity(tensors.len());
    let mut offset = 0usize;
    for t in &tensors {
        // validate() checked that the total byte size fits in usize.
        let len = t.numel() * dtype.size();
        infos.push((
            t.name.clone(),
            TensorInfo {
                dtype: dtype.safetensors_dtype(),
                shape: t.shape.clone(),
                data_offsets: (offset, offset + len),
            },
        ));
        offset += len;
    }
    let format = HashMap::from([("format".to_string(), "pt".to_string())]);
    let metadata = Metadata::new(Some(format), infos).map_err(|source| SyntheticError::Header {
        path: path.to_path_buf(),
        source,
    })?;
    let mut header = serde_json::to_vec(&metadata).map_err(|source| SyntheticError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    header.resize(header.len().next_multiple_of(8), b' ');

    let mut file = File::create(path).map_err(io_err("creating file", path))?;
    let write_err = io_err("writing file", path);
    let mut buf = Vec::with_capacity(CHUNK_ELEMENTS * dtype.size());
    buf.extend_from_slice(&(header.len() as u64).to_le_bytes());
    buf.extend_from_slice(&header);
    file.write_all(&buf).map_err(&write_err)?;

    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
    for t in &tensors {
        let mut remaining = t.numel();
        while remaining > 0 {
            let n = remaining.min(CHUNK_ELEMENTS);
            buf.clear();
            match t.init {
                Init::Ones => (0..n).for_each(|_| push_value(&mut buf, dtype, 1.0)),
                Init::Uniform => {
                    (0..n).for_each(|_| push_value(&mut buf, dtype, uniform_weight(rng.next_u32())))
                }
            }
            file.write_all(&buf).map_err(&write_err)?;
            remaining -= n;
        }
    }
    file.sync_all().map_err(io_err("syncing file", path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::{SafeTensors, View};
    use std::borrow::Cow;

    /// Self-cleaning scratch directory (std only, no extra dev-dependency).
    struct TestDir(PathBuf);

    impl TestDir {
        fn new(tag: &str) -> Self {
            static N: AtomicU64 = AtomicU64::new(0);
            let dir = std::env::temp_dir().join(format!(
                "synthetic-test-{}-{}-{tag}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            TestDir(dir)
        }
    }

    impl Drop for TestDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn tiny(arch: Arch) -> SyntheticSpec {
        SyntheticSpec {
            hidden_size: 16,
            intermediate_size: 24,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            max_position_embeddings: 64,
            ..SyntheticSpec::new(arch)
        }
    }

    fn read_all(dir: &Path) -> Vec<(String, Vec<u8>)> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
            .into_iter()
            .map(|n| {
                let bytes = fs::read(dir.join(&n)).unwrap();
                (n, bytes)
            })
            .collect()
    }

    #[test]
    fn deterministic_and_seed_sensitive() {
        let tmp = TestDir::new("det");
        for arch in [Arch::Llama, Arch::Qwen2, Arch::Mistral] {
            let spec = SyntheticSpec::new(arch);
            let a = tmp.0.join(format!("{}-a", arch.as_str()));
            let b = tmp.0.join(format!("{}-b", arch.as_str()));
            let c = tmp.0.join(format!("{}-c", arch.as_str()));
            generate(&spec, &a).unwrap();
            generate(&spec, &b).unwrap();
            generate(
                &SyntheticSpec {
                    seed: 1,
                    ..spec.clone()
                },
                &c,
            )
            .unwrap();
            let (fa, fb, fc) = (read_all(&a), read_all(&b), read_all(&c));
            let names: Vec<&str> = fa.iter().map(|(n, _)| n.as_str()).collect();
            assert_eq!(names, FILES);
            assert_eq!(fa, fb, "{arch:?} not reproducible");
            for ((name, x), (_, y)) in fa.iter().zip(&fc) {
                assert_eq!(x == y, name != "model.safetensors", "{arch:?} {name}");
            }
        }
        // No temp siblings left behind.
        let leftovers: Vec<_> = fs::read_dir(&tmp.0)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().contains(".tmp-"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    /// Pins the exact bytes: if this fails, the output for an unchanged spec
    /// changed (code, or a dependency such as rand_chacha), so bump
    /// FORMAT_VERSION before updating the hashes or caches go stale.
    #[test]
    fn golden_output() {
        let full = ((1u32 << 24) - 1) as f32 / (1u64 << 29) as f32;
        assert_eq!(uniform_weight(0), -full);
        assert_eq!(uniform_weight(u32::MAX), full);
        assert_eq!(uniform_weight(0x8000_0000), 1.0 / (1u64 << 29) as f32);
        assert_eq!(uniform_weight(0x7fff_ffff), -1.0 / (1u64 << 29) as f32);

        let spec = SyntheticSpec::new(Arch::Llama);
        assert_eq!(
            spec.digest(),
            "2569172ed3142a6ae2fc94d5db3bf3899468ab51f3a8417331c5d59369cc1436"
        );
        let tmp = TestDir::new("golden");
        let out = tmp.0.join("m");
        generate(&spec, &out).unwrap();
        let hashes: Vec<(String, String)> = read_all(&out)
            .into_iter()
            .map(|(name, bytes)| {
                let hex = Sha256::digest(&bytes)
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                (name, hex)
            })
            .collect();
        let want = [
            (
                "config.json",
                "504125e35f4b928de5c04f7bb9532463c8bbad08f824c09b41fa5695371c2b9d",
            ),
            (
                "generation_config.json",
                "285858e50f77a22bf829c46c8a3bc90aae55dd2601d3ab2b471d8a0fe6610762",
            ),
            (
                "model.safetensors",
                "5e68f627a2a9aeb505fa5e05e576fe1cd5dc296c59e56f56a81344774212f68e",
            ),
            (
                "tokenizer.json",
                "3dce85bb6a7ad53083239379089a06eb334da66ac5ab88372f84107af94748ae",
            ),
            (
                "tokenizer_config.json",
                "b2c9aaa647afe6b7ca07bf7ae1ca2eba12785680d63be422b69e26857e7a4406",
            ),
        ];
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(n, h)| (n.to_string(), h.to_string()))
            .collect();
        assert_eq!(hashes, want);
    }

    #[test]
    fn digest_covers_every_field() {
        let base = SyntheticSpec::new(Arch::Llama);
        let d = base.digest();
        assert_eq!(d.len(), 64);
        assert!(
            d.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        let variants = [
            SyntheticSpec {
                arch: Arch::Qwen2,
                ..base.clone()
            },
            SyntheticSpec {
                seed: 7,
                ..base.clone()
            },
            SyntheticSpec {
                hidden_size: 128,
                ..base.clone()
            },
            SyntheticSpec {
                intermediate_size: 256,
                ..base.clone()
            },
            SyntheticSpec {
                num_hidden_layers: 3,
                ..base.clone()
            },
            SyntheticSpec {
                num_attention_heads: 8,
                ..base.clone()
            },
            SyntheticSpec {
                num_key_value_heads: 4,
                ..base.clone()
            },
            SyntheticSpec {
                max_position_embeddings: 4096,
                ..base.clone()
            },
            SyntheticSpec {
                dtype: SynthDtype::Bf16,
                ..base.clone()
            },
            SyntheticSpec {
                merges: 0,
                ..base.clone()
            },
        ];
        let mut all: Vec<String> = variants.iter().map(SyntheticSpec::digest).collect();
        all.push(d);
        all.sort();
        all.dedup();
        assert_eq!(all.len(), variants.len() + 1);
    }

    #[test]
    fn serde_defaults_and_unknown_fields() {
        let spec: SyntheticSpec = serde_json::from_str(r#"{"arch":"qwen2"}"#).unwrap();
        assert_eq!(spec, SyntheticSpec::new(Arch::Qwen2));
        let spec: SyntheticSpec =
            serde_json::from_str(r#"{"arch":"llama","dtype":"bf16","seed":3}"#).unwrap();
        assert_eq!(spec.dtype, SynthDtype::Bf16);
        assert!(serde_json::from_str::<SyntheticSpec>(r#"{"arch":"llama","hidden":8}"#).is_err());
        assert!(serde_json::from_str::<SyntheticSpec>(r#"{"arch":"gpt2"}"#).is_err());
    }

    fn field_of(spec: SyntheticSpec) -> &'static str {
        match spec.validate() {
            Err(SyntheticError::Invalid { field, reason }) => {
                let msg = SyntheticError::Invalid { field, reason }.to_string();
                assert!(msg.contains(field), "{msg}");
                field
            }
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn validation_names_the_field() {
        let base = SyntheticSpec::new(Arch::Llama);
        assert!(base.validate().is_ok());
        let cases = [
            (
                SyntheticSpec {
                    hidden_size: 0,
                    ..base.clone()
                },
                "hidden_size",
            ),
            (
                SyntheticSpec {
                    intermediate_size: 0,
                    ..base.clone()
                },
                "intermediate_size",
            ),
            (
                SyntheticSpec {
                    num_hidden_layers: 0,
                    ..base.clone()
                },
                "num_hidden_layers",
            ),
            (
                SyntheticSpec {
                    num_attention_heads: 0,
                    ..base.clone()
                },
                "num_attention_heads",
            ),
            (
                SyntheticSpec {
                    num_key_value_heads: 0,
                    ..base.clone()
                },
                "num_key_value_heads",
            ),
            (
                SyntheticSpec {
                    max_position_embeddings: 0,
                    ..base.clone()
                },
                "max_position_embeddings",
            ),
            (
                SyntheticSpec {
                    num_attention_heads: 5,
                    ..base.clone()
                },
                "num_attention_heads",
            ),
            (
                SyntheticSpec {
                    num_key_value_heads: 3,
                    ..base.clone()
                },
                "num_key_value_heads",
            ),
            (
                SyntheticSpec {
                    num_key_value_heads: 8,
                    ..base.clone()
                },
                "num_key_value_heads",
            ),
            // head_dim = 66 / 6 = 11 is odd, which rotary embeddings cannot use.
            (
                SyntheticSpec {
                    hidden_size: 66,
                    num_attention_heads: 6,
                    num_key_value_heads: 3,
                    ..base.clone()
                },
                "num_attention_heads",
            ),
            (
                SyntheticSpec {
                    merges: MAX_MERGES + 1,
                    ..base.clone()
                },
                "merges",
            ),
            (
                SyntheticSpec {
                    hidden_size: 1 << 40,
                    num_attention_heads: 1 << 20,
                    num_key_value_heads: 1 << 20,
                    intermediate_size: 1 << 40,
                    ..base.clone()
                },
                "hidden_size",
            ),
        ];
        for (spec, field) in cases {
            assert_eq!(field_of(spec.clone()), field, "{spec:?}");
            let tmp = TestDir::new("invalid");
            let out = tmp.0.join("out");
            assert!(matches!(
                generate(&spec, &out),
                Err(SyntheticError::Invalid { .. })
            ));
            assert!(!out.exists());
        }
    }

    #[test]
    fn refuses_existing_dir_and_caches() {
        let tmp = TestDir::new("exists");
        let spec = tiny(Arch::Llama);
        let out = tmp.0.join("ckpt");
        fs::create_dir(&out).unwrap();
        let err = generate(&spec, &out).unwrap_err();
        assert!(matches!(err, SyntheticError::AlreadyExists { ref path } if *path == out));
        assert!(err.to_string().contains("ckpt"));

        let cache = tmp.0.join("cache");
        let first = generate_cached(&spec, &cache).unwrap();
        assert_eq!(first, cache.join(spec.digest()));
        let before = read_all(&first);
        let second = generate_cached(&spec, &cache).unwrap();
        assert_eq!(first, second);
        assert_eq!(before, read_all(&second));
        assert_eq!(fs::read_dir(&cache).unwrap().count(), 1);
    }

    #[test]
    fn io_errors_carry_the_path() {
        let tmp = TestDir::new("ioerr");
        let blocker = tmp.0.join("file");
        fs::write(&blocker, b"x").unwrap();
        // Parent is a regular file: creating the temp sibling must fail.
        let out = blocker.join("ckpt");
        let err = generate(&tiny(Arch::Llama), &out).unwrap_err();
        match &err {
            SyntheticError::Io { path, .. } => assert!(path.starts_with(&blocker)),
            other => panic!("{other:?}"),
        }
        assert!(err.to_string().contains("file"), "{err}");
        assert!(matches!(
            generate(&tiny(Arch::Llama), Path::new("/")),
            Err(SyntheticError::AlreadyExists { .. } | SyntheticError::InvalidOutputPath { .. })
        ));
        assert!(matches!(
            temp_sibling(Path::new("..")),
            Err(SyntheticError::InvalidOutputPath { .. })
        ));
    }

    type Listing = Vec<(String, Dtype, Vec<usize>)>;

    fn load_shapes(path: &Path) -> (Vec<u8>, Listing) {
        let bytes = fs::read(path).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let mut out: Vec<_> = st
            .tensors()
            .into_iter()
            .map(|(n, v)| (n, v.dtype(), v.shape().to_vec()))
            .collect();
        out.sort();
        (bytes, out)
    }

    #[test]
    fn safetensors_layout_per_arch() {
        let tmp = TestDir::new("layout");
        for (arch, dtype) in [
            (Arch::Llama, SynthDtype::F32),
            (Arch::Qwen2, SynthDtype::Bf16),
            (Arch::Mistral, SynthDtype::F16),
        ] {
            let spec = SyntheticSpec {
                dtype,
                ..tiny(arch)
            };
            let out = tmp.0.join(arch.as_str());
            generate(&spec, &out).unwrap();
            let (bytes, tensors) = load_shapes(&out.join("model.safetensors"));
            let find = |name: &str| {
                tensors
                    .iter()
                    .find(|(n, _, _)| n == name)
                    .map(|(_, d, s)| (*d, s.clone()))
            };
            let (v, h, i, kv) = (spec.vocab_size(), 16, 24, 2 * 4);
            let want_dtype = dtype.safetensors_dtype();
            assert_eq!(
                find("model.embed_tokens.weight"),
                Some((want_dtype, vec![v, h]))
            );
            assert_eq!(find("model.norm.weight"), Some((want_dtype, vec![h])));
            let l1 = "model.layers.1";
            assert_eq!(
                find(&format!("{l1}.self_attn.q_proj.weight")),
                Some((want_dtype, vec![h, h]))
            );
            assert_eq!(
                find(&format!("{l1}.self_attn.k_proj.weight")),
                Some((want_dtype, vec![kv, h]))
            );
            assert_eq!(
                find(&format!("{l1}.self_attn.v_proj.weight")),
                Some((want_dtype, vec![kv, h]))
            );
            assert_eq!(
                find(&format!("{l1}.self_attn.o_proj.weight")),
                Some((want_dtype, vec![h, h]))
            );
            assert_eq!(
                find(&format!("{l1}.mlp.gate_proj.weight")),
                Some((want_dtype, vec![i, h]))
            );
            assert_eq!(
                find(&format!("{l1}.mlp.up_proj.weight")),
                Some((want_dtype, vec![i, h]))
            );
            assert_eq!(
                find(&format!("{l1}.mlp.down_proj.weight")),
                Some((want_dtype, vec![h, i]))
            );
            assert_eq!(
                find(&format!("{l1}.input_layernorm.weight")),
                Some((want_dtype, vec![h]))
            );
            assert_eq!(
                find(&format!("{l1}.post_attention_layernorm.weight")),
                Some((want_dtype, vec![h]))
            );
            let tied = arch == Arch::Qwen2;
            assert_eq!(find("lm_head.weight").is_some(), !tied, "{arch:?}");
            assert_eq!(find(&format!("{l1}.self_attn.q_proj.bias")).is_some(), tied);
            if tied {
                assert_eq!(
                    find(&format!("{l1}.self_attn.q_proj.bias")),
                    Some((want_dtype, vec![h]))
                );
                assert_eq!(
                    find(&format!("{l1}.self_attn.k_proj.bias")),
                    Some((want_dtype, vec![kv]))
                );
                assert_eq!(
                    find(&format!("{l1}.self_attn.v_proj.bias")),
                    Some((want_dtype, vec![kv]))
                );
            }
            let plan = spec.tensors().unwrap();
            assert_eq!(tensors.len(), plan.len());
            let numel: usize = plan.iter().map(TensorPlan::numel).sum();
            assert_eq!(numel as u64, spec.parameter_count());
            // Header is 8-aligned and metadata says "pt".
            let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
            assert_eq!(n % 8, 0);
            assert_eq!(bytes.len(), 8 + n + numel * dtype.size());
            let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
            assert_eq!(
                meta.metadata()
                    .as_ref()
                    .and_then(|m| m.get("format"))
                    .map(String::as_str),
                Some("pt")
            );
            // Norms are exactly one.
            let st = SafeTensors::deserialize(&bytes).unwrap();
            let norm = st.tensor("model.norm.weight").unwrap();
            let one: &[u8] = match dtype {
                SynthDtype::F32 => &[0, 0, 0x80, 0x3f],
                SynthDtype::F16 => &[0, 0x3c],
                SynthDtype::Bf16 => &[0x80, 0x3f],
            };
            assert!(norm.data().chunks(dtype.size()).all(|c| c == one));
        }
    }

    struct OwnedView {
        shape: Vec<usize>,
        data: Vec<u8>,
    }

    impl View for &OwnedView {
        fn dtype(&self) -> Dtype {
            Dtype::F32
        }
        fn shape(&self) -> &[usize] {
            &self.shape
        }
        fn data(&self) -> Cow<'_, [u8]> {
            Cow::Borrowed(&self.data)
        }
        fn data_len(&self) -> usize {
            self.data.len()
        }
    }

    /// Rebuilds the model in memory independently of the streaming writer
    /// (explicit name list, explicit RNG walk) and checks that the crate's
    /// own serializer produces the identical file.
    #[test]
    fn streaming_matches_crate_serialize() {
        let tmp = TestDir::new("serialize");
        for arch in [Arch::Llama, Arch::Qwen2] {
            let spec = SyntheticSpec {
                seed: 42,
                num_hidden_layers: 11,
                ..tiny(arch)
            };
            let out = tmp.0.join(arch.as_str());
            generate(&spec, &out).unwrap();
            let on_disk = fs::read(out.join("model.safetensors")).unwrap();

            let (v, h, i, kv) = (spec.vocab_size(), 16usize, 24usize, 8usize);
            let mut named: Vec<(String, Vec<usize>)> = vec![
                ("model.embed_tokens.weight".into(), vec![v, h]),
                ("model.norm.weight".into(), vec![h]),
            ];
            if arch == Arch::Llama {
                named.push(("lm_head.weight".into(), vec![v, h]));
            }
            for l in 0..spec.num_hidden_layers {
                for (suffix, shape) in [
                    ("input_layernorm.weight", vec![h]),
                    ("post_attention_layernorm.weight", vec![h]),
                    ("self_attn.q_proj.weight", vec![h, h]),
                    ("self_attn.k_proj.weight", vec![kv, h]),
                    ("self_attn.v_proj.weight", vec![kv, h]),
                    ("self_attn.o_proj.weight", vec![h, h]),
                    ("mlp.gate_proj.weight", vec![i, h]),
                    ("mlp.up_proj.weight", vec![i, h]),
                    ("mlp.down_proj.weight", vec![h, i]),
                ] {
                    named.push((format!("model.layers.{l}.{suffix}"), shape));
                }
                if arch == Arch::Qwen2 {
                    for (suffix, shape) in [
                        ("self_attn.q_proj.bias", vec![h]),
                        ("self_attn.k_proj.bias", vec![kv]),
                        ("self_attn.v_proj.bias", vec![kv]),
                    ] {
                        named.push((format!("model.layers.{l}.{suffix}"), shape));
                    }
                }
            }
            named.sort();
            let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
            let views: Vec<(String, OwnedView)> = named
                .into_iter()
                .map(|(name, shape)| {
                    let n: usize = shape.iter().product();
                    let norm = name.ends_with("norm.weight");
                    let data = (0..n)
                        .flat_map(|_| {
                            let x = if norm {
                                1.0f32
                            } else {
                                let r = rng.next_u32();
                                ((r >> 8) as f32 - 8_388_607.5) / (1u64 << 28) as f32
                            };
                            x.to_le_bytes()
                        })
                        .collect();
                    (name, OwnedView { shape, data })
                })
                .collect();
            let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
            let expected = safetensors::serialize(
                views.iter().map(|(n, v)| (n.as_str(), v)),
                Some(metadata.clone()),
            )
            .unwrap();
            assert_eq!(on_disk.len(), expected.len());
            assert!(
                on_disk == expected,
                "{arch:?}: streamed file differs from serialize()"
            );

            let via_file = tmp.0.join(format!("{}-crate.safetensors", arch.as_str()));
            safetensors::serialize_to_file(
                views.iter().map(|(n, v)| (n.as_str(), v)),
                Some(metadata),
                &via_file,
            )
            .unwrap();
            assert!(fs::read(&via_file).unwrap() == on_disk);
        }
    }

    #[test]
    fn half_precision_is_rounded_f32() {
        let tmp = TestDir::new("half");
        let base = SyntheticSpec {
            seed: 9,
            ..tiny(Arch::Mistral)
        };
        let dirs: Vec<(SynthDtype, PathBuf)> = [SynthDtype::F32, SynthDtype::F16, SynthDtype::Bf16]
            .into_iter()
            .map(|dtype| {
                let out = tmp.0.join(dtype.as_str());
                generate(
                    &SyntheticSpec {
                        dtype,
                        ..base.clone()
                    },
                    &out,
                )
                .unwrap();
                (dtype, out)
            })
            .collect();
        let read = |d: &Path| fs::read(d.join("model.safetensors")).unwrap();
        let f32_bytes = read(&dirs[0].1);
        let f32s = SafeTensors::deserialize(&f32_bytes).unwrap();
        for (dtype, dir) in &dirs[1..] {
            let bytes = read(dir);
            let st = SafeTensors::deserialize(&bytes).unwrap();
            for (name, full) in f32s.tensors() {
                let reduced = st.tensor(&name).unwrap();
                assert_eq!(reduced.shape(), full.shape());
                for (f, r) in full.data().chunks(4).zip(reduced.data().chunks(2)) {
                    let x = f32::from_le_bytes(f.try_into().unwrap());
                    let want = match dtype {
                        SynthDtype::F16 => half::f16::from_f32(x).to_le_bytes(),
                        _ => half::bf16::from_f32(x).to_le_bytes(),
                    };
                    assert_eq!(r, want);
                }
            }
        }
    }

    #[test]
    fn json_files_are_consistent() {
        let tmp = TestDir::new("json");
        let spec = SyntheticSpec::new(Arch::Llama);
        let out = tmp.0.join("m");
        generate(&spec, &out).unwrap();
        let load = |name: &str| -> Value {
            let text = fs::read_to_string(out.join(name)).unwrap();
            assert!(text.ends_with("}\n"), "{name}");
            serde_json::from_str(&text).unwrap()
        };
        let config = load("config.json");
        assert_eq!(config["vocab_size"], 320);
        assert_eq!(config["architectures"][0], "LlamaForCausalLM");
        assert_eq!(config["head_dim"], 16);
        assert_eq!(config["tie_word_embeddings"], false);
        assert_eq!(config["torch_dtype"], "float32");
        assert_eq!(config["bos_token_id"], 256);
        assert_eq!(config["eos_token_id"], json!([257, 259]));

        let tok = load("tokenizer.json");
        let vocab = tok["model"]["vocab"].as_object().unwrap();
        assert_eq!(vocab.len(), spec.vocab_size());
        let mut ids: Vec<u64> = vocab.values().map(|v| v.as_u64().unwrap()).collect();
        ids.sort();
        assert_eq!(ids, (0..spec.vocab_size() as u64).collect::<Vec<_>>());
        assert_eq!(vocab["Ġ"], 32);
        assert_eq!(vocab["A"], 65);
        for (k, token) in SPECIAL_TOKENS.iter().enumerate() {
            assert_eq!(vocab[*token], 256 + k as u64);
            assert_eq!(tok["added_tokens"][k]["id"], 256 + k as u64);
            assert_eq!(tok["added_tokens"][k]["content"], *token);
        }
        assert_eq!(
            tok["model"]["merges"].as_array().unwrap().len(),
            spec.merges
        );

        let tc = load("tokenizer_config.json");
        assert_eq!(tc["eos_token"], "<|im_end|>");
        assert_eq!(tc["bos_token"], "<|begin_of_text|>");
        assert_eq!(tc["chat_template"], CHAT_TEMPLATE);
        assert_eq!(tc["pad_token"], Value::Null);

        let gc = load("generation_config.json");
        assert_eq!(gc["eos_token_id"], json!([257, 259]));
        assert_eq!(gc["do_sample"], false);

        // Keys are written sorted (checked on the raw text of the config).
        let text = fs::read_to_string(out.join("config.json")).unwrap();
        let keys: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("  \"")?.split('"').next())
            .collect();
        let mut sorted_keys = keys.clone();
        sorted_keys.sort();
        assert_eq!(keys, sorted_keys);
    }

    #[test]
    fn merge_table_is_well_formed() {
        let table = byte_to_unicode();
        let mut known: Vec<String> = table.iter().map(|c| c.to_string()).collect();
        let mut distinct = table.to_vec();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), 256);
        assert_eq!(table[b' ' as usize], 'Ġ');
        assert_eq!(table[b'\n' as usize], 'Ċ');
        for (left, right) in MERGE_TABLE {
            assert!(known.iter().any(|k| k == left), "{left} before its merge");
            assert!(known.iter().any(|k| k == right), "{right} before its merge");
            let merged = format!("{left}{right}");
            assert!(!known.contains(&merged), "duplicate {merged}");
            known.push(merged);
        }
    }

    fn vm_hwm_kib() -> Option<u64> {
        let status = fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// ~100M parameters (400 MB f32): memory must stay at one chunk, not one
    /// model. Takes a few seconds in debug builds with optimised dependencies;
    /// `--nocapture` shows the timing and VmHWM (not asserted: the test
    /// binary's other tests share the process).
    #[test]
    fn hundred_million_parameters_bounded_memory() {
        let spec = SyntheticSpec {
            hidden_size: 768,
            intermediate_size: 2560,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            num_key_value_heads: 12,
            ..SyntheticSpec::new(Arch::Llama)
        };
        let params = spec.parameter_count();
        assert!((90_000_000..110_000_000).contains(&params), "{params}");
        let tmp = TestDir::new("big");
        let out = tmp.0.join("m");
        let before = vm_hwm_kib();
        let start = std::time::Instant::now();
        generate(&spec, &out).unwrap();
        let elapsed = start.elapsed();
        let after = vm_hwm_kib();
        let size = fs::metadata(out.join("model.safetensors")).unwrap().len();
        assert!(size > params * 4);
        println!(
            "parameters={params} file_bytes={size} elapsed={elapsed:?} VmHWM before={before:?} KiB after={after:?} KiB"
        );
        let (_, tensors) = load_shapes(&out.join("model.safetensors"));
        assert_eq!(tensors.len(), spec.tensors().unwrap().len());
    }
}
