//! GGUF checkpoints (llama.cpp's format): one file or `-NNNNN-of-MMMMM`
//! shards in the model directory, read with candle's `gguf_file` parser.
//!
//! What the file says is checked once, at startup, with errors that name the
//! file and the key or tensor: a truncated download, an architecture this
//! decoder does not implement or a block type without a kernel fail before
//! the port is bound, not on the first request.
//!
//! Conventions are llama.cpp's (`convert_hf_to_gguf.py`): tensor names
//! `blk.N.attn_q.weight` ..., and for the `llama` architecture the rows of
//! q and k reordered so that rope rotates adjacent pairs. The decoder here
//! rotates halves (Hugging Face order), so those rows are put back on load
//! — whole rows, which moves quantized blocks without touching them.

use std::{
    collections::HashMap,
    fs::File,
    io::{self, Read, Seek, SeekFrom},
    path::{Path, PathBuf},
    sync::Arc,
};

use appliance_common::weights::WeightFormat;
use candle_core::{
    DType, Device, Result, Tensor,
    quantized::{
        GgmlDType, QTensor,
        ggml_file::qtensor_from_ggml,
        gguf_file::{Content, TensorInfo, Value},
    },
};

use super::{LinearWeight, Weights};
use crate::{
    kernels::{
        isa::Isa,
        quant::{QuantMatrix, QuantType},
    },
    models::{Architecture, ConfigTokens, ModelSpec, config::RopeScaling},
};

#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("cannot read {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is not a valid GGUF file: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("{} is truncated: tensor {tensor} ends at byte {needed}, the file has {size}", path.display())]
    Truncated {
        path: PathBuf,
        tensor: String,
        needed: u64,
        size: u64,
    },
    #[error("{}: metadata key {key}: {what}", path.display())]
    Key {
        path: PathBuf,
        key: String,
        what: String,
    },
    #[error("{}: general.architecture {found:?} is not supported (supported: llama, mistral, qwen2, qwen3)", path.display())]
    Architecture { path: PathBuf, found: String },
    #[error("{}: several GGUF files that are not the shards of one model: {names}", dir.display())]
    Ambiguous { dir: PathBuf, names: String },
    #[error("{}: shard {} of {count} is missing", dir.display(), missing.display())]
    MissingShard {
        dir: PathBuf,
        missing: PathBuf,
        count: usize,
    },
}

/// The GGUF files of a model directory, in shard order, if it has any.
pub fn find(dir: &Path) -> std::result::Result<Option<Vec<PathBuf>>, GgufError> {
    let entries = std::fs::read_dir(dir).map_err(|source| GgufError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            WeightFormat::of(name) == Some(WeightFormat::Gguf) && p.is_file()
        })
        .collect();
    files.sort();
    match files.len() {
        0 => Ok(None),
        1 => Ok(Some(files)),
        _ => {
            // `name-00001-of-00003.gguf`: all shards of one model, all there.
            let shard = |p: &Path| -> Option<(String, usize, usize)> {
                let stem = p.file_stem()?.to_str()?;
                let (head, count) = stem.rsplit_once("-of-")?;
                let (base, index) = head.rsplit_once('-')?;
                Some((base.to_owned(), index.parse().ok()?, count.parse().ok()?))
            };
            let parsed: Option<Vec<_>> = files.iter().map(|p| shard(p)).collect();
            let names = || {
                files
                    .iter()
                    .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let Some(parsed) = parsed else {
                return Err(GgufError::Ambiguous {
                    dir: dir.to_owned(),
                    names: names(),
                });
            };
            let (base, _, count) = parsed[0].clone();
            if parsed.iter().any(|(b, _, c)| *b != base || *c != count) {
                return Err(GgufError::Ambiguous {
                    dir: dir.to_owned(),
                    names: names(),
                });
            }
            for i in 1..=count {
                if !parsed.iter().any(|(_, idx, _)| *idx == i) {
                    let width = files[0]
                        .file_stem()
                        .and_then(|s| s.to_str())
                        .and_then(|s| s.rsplit_once("-of-"))
                        .map_or(5, |(_, c)| c.len());
                    return Err(GgufError::MissingShard {
                        dir: dir.to_owned(),
                        missing: dir.join(format!("{base}-{i:0width$}-of-{count:0width$}.gguf")),
                        count,
                    });
                }
            }
            Ok(Some(files))
        }
    }
}

/// The parsed headers of the GGUF file(s) in `dir`, if it has any.
pub fn open_dir(dir: &Path) -> std::result::Result<Option<Gguf>, GgufError> {
    find(dir)?.map(Gguf::open).transpose()
}

/// Bytes a tensor's data takes in the file.
fn tensor_bytes(info: &TensorInfo) -> usize {
    info.shape.elem_count() / info.ggml_dtype.block_size() * info.ggml_dtype.type_size()
}

/// Parsed GGUF headers: metadata of the first file, tensors of all.
pub struct Gguf {
    files: Vec<PathBuf>,
    contents: Vec<Content>,
    /// Tensor name → index into `files`.
    index: HashMap<String, usize>,
}

impl std::fmt::Debug for Gguf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gguf").field("files", &self.files).finish()
    }
}

impl Gguf {
    /// Reads the headers of `files` and checks each tensor's bytes are in
    /// its file (a truncated copy fails here, naming the tensor).
    pub fn open(files: Vec<PathBuf>) -> std::result::Result<Self, GgufError> {
        let mut contents = Vec::with_capacity(files.len());
        let mut index = HashMap::new();
        for (i, path) in files.iter().enumerate() {
            let io_err = |source| GgufError::Io {
                path: path.clone(),
                source,
            };
            let mut f = File::open(path).map_err(io_err)?;
            let size = f.metadata().map_err(io_err)?.len();
            let content = Content::read(&mut f).map_err(|e| GgufError::Parse {
                path: path.clone(),
                message: match unknown_tensor_type(path) {
                    Some((tensor, ty)) => format!(
                        "tensor {tensor} has GGML type {ty}, which this server does not know"
                    ),
                    None => e.to_string(),
                },
            })?;
            for (name, info) in &content.tensor_infos {
                let needed = content.tensor_data_offset + info.offset + tensor_bytes(info) as u64;
                if needed > size {
                    return Err(GgufError::Truncated {
                        path: path.clone(),
                        tensor: name.clone(),
                        needed,
                        size,
                    });
                }
                index.insert(name.clone(), i);
            }
            contents.push(content);
        }
        Ok(Self {
            files,
            contents,
            index,
        })
    }

    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// The file holding the metadata, which errors about it name.
    pub fn path(&self) -> &Path {
        &self.files[0]
    }

    /// A metadata value as parsed, for readers of whole arrays (the
    /// tokenizer vocabulary in [`super::gguf_tokenizer`]).
    pub fn meta(&self, key: &str) -> Option<&Value> {
        self.contents[0].metadata.get(key)
    }

    fn key_err(&self, key: &str, what: impl Into<String>) -> GgufError {
        GgufError::Key {
            path: self.path().to_owned(),
            key: key.to_owned(),
            what: what.into(),
        }
    }

    fn opt_usize(&self, key: &str) -> std::result::Result<Option<usize>, GgufError> {
        self.meta(key)
            .map(|v| {
                as_u64(v)
                    .map(|n| n as usize)
                    .ok_or_else(|| self.key_err(key, "not an integer"))
            })
            .transpose()
    }

    fn usize(&self, key: &str) -> std::result::Result<usize, GgufError> {
        self.opt_usize(key)?
            .ok_or_else(|| self.key_err(key, "missing"))
    }

    fn opt_f64(&self, key: &str) -> std::result::Result<Option<f64>, GgufError> {
        self.meta(key)
            .map(|v| as_f64(v).ok_or_else(|| self.key_err(key, "not a number")))
            .transpose()
    }

    /// A string metadata value (`tokenizer.chat_template`, ...).
    pub fn string(&self, key: &str) -> Option<&str> {
        self.meta(key)
            .and_then(|v| v.to_string().ok())
            .map(String::as_str)
    }

    /// `general.architecture` as this decoder knows it.
    pub fn architecture(&self) -> std::result::Result<(String, Architecture), GgufError> {
        let key = "general.architecture";
        let name = self
            .string(key)
            .ok_or_else(|| self.key_err(key, "missing"))?
            .to_owned();
        let arch = match name.as_str() {
            "llama" => Architecture::Llama,
            "mistral" => Architecture::Mistral,
            "qwen2" => Architecture::Qwen2,
            "qwen3" => Architecture::Qwen3,
            _ => {
                return Err(GgufError::Architecture {
                    path: self.path().to_owned(),
                    found: name,
                });
            }
        };
        Ok((name, arch))
    }

    /// The model's shape from `{arch}.*` metadata and its tensor list.
    pub fn spec(&self) -> std::result::Result<(ModelSpec, ConfigTokens), GgufError> {
        let (name, architecture) = self.architecture()?;
        let k = |s: &str| format!("{name}.{s}");
        let hidden = self.usize(&k("embedding_length"))?;
        let heads = self.usize(&k("attention.head_count"))?;
        if heads == 0 {
            return Err(self.key_err(&k("attention.head_count"), "is 0"));
        }
        let kv_heads = self
            .opt_usize(&k("attention.head_count_kv"))?
            .unwrap_or(heads);
        if kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
            return Err(self.key_err(
                &k("attention.head_count_kv"),
                format!("{kv_heads} does not divide head_count {heads}"),
            ));
        }
        let head_dim = self
            .opt_usize(&k("attention.key_length"))?
            .unwrap_or(hidden / heads);
        let embd = self.info("token_embd.weight").ok_or_else(|| {
            self.key_err("token_embd.weight", "the token embedding tensor is missing")
        })?;
        let vocab = match self.opt_usize(&k("vocab_size"))? {
            Some(v) => v,
            None => embd.0.dim(0).unwrap_or(0),
        };
        if self.info("rope_freqs.weight").is_some() {
            return Err(self.key_err(
                "rope_freqs.weight",
                "per-frequency rope factors (Llama 3.1 style) are not implemented for GGUF",
            ));
        }
        let rope_scaling = match self.string(&k("rope.scaling.type")) {
            None | Some("none") => RopeScaling::None,
            Some("linear") => RopeScaling::Linear {
                factor: self
                    .opt_f64(&k("rope.scaling.factor"))?
                    .filter(|f| *f > 0.0)
                    .ok_or_else(|| self.key_err(&k("rope.scaling.factor"), "missing"))?,
            },
            Some(other) => {
                return Err(self.key_err(
                    &k("rope.scaling.type"),
                    format!("{other:?} is not supported (none, linear)"),
                ));
            }
        };
        let sliding = self.opt_usize(&k("attention.sliding_window"))?;
        let bias = |t: &str| self.info(&format!("blk.0.{t}.bias")).is_some();
        let spec = ModelSpec {
            architecture,
            vocab_size: vocab,
            hidden_size: hidden,
            intermediate_size: self.usize(&k("feed_forward_length"))?,
            num_layers: self.usize(&k("block_count"))?,
            num_heads: heads,
            num_kv_heads: kv_heads,
            head_dim,
            max_position_embeddings: self.opt_usize(&k("context_length"))?.unwrap_or(2048),
            rms_norm_eps: self
                .opt_f64(&k("attention.layer_norm_rms_epsilon"))?
                .unwrap_or(1e-6),
            rope_theta: self.opt_f64(&k("rope.freq_base"))?.unwrap_or(10_000.0),
            rope_scaling,
            tie_word_embeddings: self.info("output.weight").is_none(),
            qkv_bias: bias("attn_q"),
            o_bias: bias("attn_output"),
            mlp_bias: bias("ffn_down"),
            qk_norm: self.info("blk.0.attn_q_norm.weight").is_some(),
            sliding_window: match architecture {
                Architecture::Mistral | Architecture::Llama => sliding,
                _ => None,
            },
            checkpoint_dtype: Some(match embd.1 {
                GgmlDType::F32 => DType::F32,
                GgmlDType::BF16 => DType::BF16,
                _ => DType::F16,
            }),
        };
        let id = |key: &str| -> std::result::Result<Vec<u32>, GgufError> {
            Ok(self
                .opt_usize(key)?
                .map(|v| vec![v as u32])
                .unwrap_or_default())
        };
        let tokens = ConfigTokens {
            bos: id("tokenizer.ggml.bos_token_id")?,
            eos: id("tokenizer.ggml.eos_token_id")?,
        };
        Ok((spec, tokens))
    }

    /// Whether any tensor is in GGML blocks (Q4_K, Q8_0, ...) rather than
    /// plain floats.
    pub fn is_quantized(&self) -> bool {
        self.contents.iter().any(|c| {
            c.tensor_infos.values().any(|i| {
                !matches!(
                    i.ggml_dtype,
                    GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16
                )
            })
        })
    }

    fn info(&self, name: &str) -> Option<(&candle_core::Shape, GgmlDType)> {
        let file = *self.index.get(name)?;
        let info = self.contents[file].tensor_infos.get(name)?;
        Some((&info.shape, info.ggml_dtype))
    }

    /// The index into `files` of the file holding tensor `name`.
    fn file_of(&self, name: &str) -> Result<usize> {
        self.index
            .get(name)
            .copied()
            .ok_or_else(|| candle_core::Error::Msg(format!("tensor {name} is not in the GGUF")))
    }

    /// The raw bytes of tensor `name`.
    fn bytes(&self, name: &str) -> Result<Vec<u8>> {
        let file = self.file_of(name)?;
        let content = &self.contents[file];
        let info = &content.tensor_infos[name];
        let mut f = File::open(&self.files[file])?;
        f.seek(SeekFrom::Start(content.tensor_data_offset + info.offset))?;
        let mut buf = vec![0u8; tensor_bytes(info)];
        f.read_exact(&mut buf)?;
        Ok(buf)
    }

    fn qtensor(&self, name: &str, device: &Device) -> Result<QTensor> {
        let file = self.file_of(name)?;
        let mut f = File::open(&self.files[file])?;
        self.contents[file].tensor(&mut f, name, device)
    }
}

/// The first tensor whose GGML type id candle does not know, found by a
/// walk over the header (candle's parser says only "unknown dtype 99").
fn unknown_tensor_type(path: &Path) -> Option<(String, u32)> {
    use std::io::BufReader;
    let mut r = BufReader::new(File::open(path).ok()?);
    fn u32_(r: &mut BufReader<File>) -> Option<u32> {
        let mut b = [0u8; 4];
        r.read_exact(&mut b).ok()?;
        Some(u32::from_le_bytes(b))
    }
    fn u64_(r: &mut BufReader<File>) -> Option<u64> {
        let mut b = [0u8; 8];
        r.read_exact(&mut b).ok()?;
        Some(u64::from_le_bytes(b))
    }
    fn skip(r: &mut BufReader<File>, n: u64) -> Option<()> {
        r.seek_relative(i64::try_from(n).ok()?).ok()
    }
    fn string(r: &mut BufReader<File>) -> Option<String> {
        let n = u64_(r)?;
        let mut b = vec![0u8; usize::try_from(n).ok().filter(|n| *n < 1 << 20)?];
        r.read_exact(&mut b).ok()?;
        String::from_utf8(b).ok()
    }
    fn value(r: &mut BufReader<File>, ty: u32) -> Option<()> {
        let size = match ty {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            10..=12 => 8,
            8 => {
                let n = u64_(r)?;
                return skip(r, n);
            }
            9 => {
                let elem = u32_(r)?;
                let n = u64_(r)?;
                for _ in 0..n {
                    value(r, elem)?;
                }
                return Some(());
            }
            _ => return None,
        };
        skip(r, size)
    }
    if u32_(&mut r)? != 0x4655_4747 || u32_(&mut r)? < 2 {
        return None;
    }
    let (tensors, kvs) = (u64_(&mut r)?, u64_(&mut r)?);
    for _ in 0..kvs {
        string(&mut r)?;
        let ty = u32_(&mut r)?;
        value(&mut r, ty)?;
    }
    for _ in 0..tensors {
        let name = string(&mut r)?;
        let dims = u32_(&mut r)?;
        skip(&mut r, 8 * u64::from(dims))?;
        let ty = u32_(&mut r)?;
        u64_(&mut r)?;
        // The ids candle 0.11's GGUF reader accepts.
        if !matches!(ty, 0..=3 | 6..=15 | 30) {
            return Some((name, ty));
        }
    }
    None
}

fn as_u64(v: &Value) -> Option<u64> {
    match *v {
        Value::U8(x) => Some(x.into()),
        Value::U16(x) => Some(x.into()),
        Value::U32(x) => Some(x.into()),
        Value::U64(x) => Some(x),
        Value::I8(x) => u64::try_from(x).ok(),
        Value::I16(x) => u64::try_from(x).ok(),
        Value::I32(x) => u64::try_from(x).ok(),
        Value::I64(x) => u64::try_from(x).ok(),
        _ => None,
    }
}

fn as_f64(v: &Value) -> Option<f64> {
    match *v {
        Value::F32(x) => Some(x.into()),
        Value::F64(x) => Some(x),
        _ => as_u64(v).map(|x| x as f64),
    }
}

/// The GGML block types with CPU kernels in [`crate::kernels::quant`].
fn kernel_type(t: GgmlDType) -> Option<QuantType> {
    match t {
        GgmlDType::Q4_0 => Some(QuantType::Q4_0),
        GgmlDType::Q8_0 => Some(QuantType::Q8_0),
        GgmlDType::Q4K => Some(QuantType::Q4K),
        GgmlDType::Q5K => Some(QuantType::Q5K),
        GgmlDType::Q6K => Some(QuantType::Q6K),
        _ => None,
    }
}

/// A GGUF checkpoint seen through Hugging Face tensor names.
pub struct GgufWeights<'a> {
    gguf: &'a Gguf,
    device: Device,
    dtype: DType,
    /// The CPU kernels' instruction set (quantized blocks stay in
    /// [`QuantMatrix`], in the layout its kernels read), or `None` for
    /// candle (quantized blocks in a [`QTensor`] on `device`).
    cpu_kernels: Option<Isa>,
    /// Undo llama.cpp's q/k row order (`llama` architecture files).
    unpermute: bool,
    heads: usize,
    kv_heads: usize,
}

impl<'a> GgufWeights<'a> {
    pub fn new(
        gguf: &'a Gguf,
        spec: &ModelSpec,
        device: &Device,
        dtype: DType,
        cpu_kernels: Option<Isa>,
    ) -> Self {
        Self {
            gguf,
            device: device.clone(),
            dtype,
            cpu_kernels,
            unpermute: matches!(
                spec.architecture,
                Architecture::Llama | Architecture::Mistral
            ),
            heads: spec.num_heads,
            kv_heads: spec.num_kv_heads,
        }
    }

    /// The GGUF name of a Hugging Face tensor name, and for q/k the head
    /// count whose rows llama.cpp permuted.
    fn map(&self, hf: &str) -> Option<(String, Option<usize>)> {
        let fixed = match hf {
            "model.embed_tokens.weight" => Some("token_embd.weight"),
            "model.norm.weight" => Some("output_norm.weight"),
            "lm_head.weight" => Some("output.weight"),
            _ => None,
        };
        if let Some(f) = fixed {
            return Some((f.to_owned(), None));
        }
        let rest = hf.strip_prefix("model.layers.")?;
        let (layer, rest) = rest.split_once('.')?;
        let (module, suffix) = rest.rsplit_once('.')?;
        let (gguf, heads) = match module {
            "input_layernorm" => ("attn_norm", None),
            "post_attention_layernorm" => ("ffn_norm", None),
            "self_attn.q_proj" => ("attn_q", Some(self.heads)),
            "self_attn.k_proj" => ("attn_k", Some(self.kv_heads)),
            "self_attn.v_proj" => ("attn_v", None),
            "self_attn.o_proj" => ("attn_output", None),
            "self_attn.q_norm" => ("attn_q_norm", None),
            "self_attn.k_norm" => ("attn_k_norm", None),
            "mlp.gate_proj" => ("ffn_gate", None),
            "mlp.up_proj" => ("ffn_up", None),
            "mlp.down_proj" => ("ffn_down", None),
            _ => return None,
        };
        let heads = heads.filter(|_| self.unpermute);
        Some((format!("blk.{layer}.{gguf}.{suffix}"), heads))
    }

    fn resolve(&self, hf: &str) -> Result<(String, Option<usize>)> {
        self.map(hf)
            .ok_or_else(|| candle_core::Error::Msg(format!("no GGUF name for tensor {hf}")))
    }

    fn check_shape(&self, name: &str, want: &[usize]) -> Result<GgmlDType> {
        let (shape, t) = self.gguf.info(name).ok_or_else(|| {
            candle_core::Error::Msg(format!(
                "{}: tensor {name} is missing",
                self.gguf.path().display()
            ))
        })?;
        if shape.dims() != want {
            candle_core::bail!(
                "{}: tensor {name} has shape {:?}, the metadata implies {want:?}",
                self.gguf.path().display(),
                shape.dims()
            );
        }
        Ok(t)
    }

    /// A dense tensor in f32 on the CPU, rows put back in Hugging Face order.
    fn dense_f32(&self, name: &str, heads: Option<usize>) -> Result<Tensor> {
        let t = self
            .gguf
            .qtensor(name, &Device::Cpu)?
            .dequantize(&Device::Cpu)?;
        match heads {
            Some(h) => unpermute_tensor(&t, h),
            None => Ok(t),
        }
    }
}

/// llama.cpp stores the rows of each q/k head as `(head_dim / 2, 2)`
/// interleaved pairs; Hugging Face as `(2, head_dim / 2)` halves.
fn unpermute_tensor(t: &Tensor, heads: usize) -> Result<Tensor> {
    let dims = t.dims().to_vec();
    let rows = dims[0];
    let rest: usize = dims[1..].iter().product();
    let hd = rows / heads;
    t.reshape((heads, hd / 2, 2, rest))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape(dims)
}

/// GGUF row index of Hugging Face row `r` for a tensor of `heads` heads of
/// `hd` rows each (the inverse of [`unpermute_tensor`]'s reordering).
fn gguf_row(r: usize, hd: usize) -> usize {
    let (head, within) = (r / hd, r % hd);
    let (half, i) = (within / (hd / 2), within % (hd / 2));
    head * hd + 2 * i + half
}

impl Weights for GgufWeights<'_> {
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let (g, heads) = self.resolve(name)?;
        self.check_shape(&g, shape)?;
        self.dense_f32(&g, heads)?
            .to_dtype(self.dtype)?
            .to_device(&self.device)
    }

    fn linear(&self, name: &str, out: usize, inp: usize) -> Result<LinearWeight> {
        let (g, heads) = self.resolve(name)?;
        let t = self.check_shape(&g, &[out, inp])?;
        let float = matches!(t, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16);
        let kernel = kernel_type(t).filter(|_| self.cpu_kernels.is_some());
        if float || (self.cpu_kernels.is_some() && kernel.is_none()) {
            // Float tensors (and, on the CPU, block types without a kernel
            // here, which candle dequantizes): dense in the model dtype.
            let w = self.dense_f32(&g, heads)?;
            return Ok(LinearWeight::Dense(
                w.to_dtype(self.dtype)?.to_device(&self.device)?,
            ));
        }
        let mut bytes = self.gguf.bytes(&g)?;
        if let Some(h) = heads {
            let hd = out / h;
            let rb = bytes.len() / out;
            let src = bytes.clone();
            for r in 0..out {
                let from = gguf_row(r, hd);
                bytes[r * rb..(r + 1) * rb].copy_from_slice(&src[from * rb..(from + 1) * rb]);
            }
        }
        match kernel {
            Some(qt) => {
                let m = QuantMatrix::new(qt, out, inp, &bytes).map_err(|e| {
                    candle_core::Error::Msg(format!(
                        "{}: tensor {g}: {e}",
                        self.gguf.path().display()
                    ))
                })?;
                drop(bytes);
                let isa = self
                    .cpu_kernels
                    .expect("a kernel type only for the CPU kernels");
                Ok(LinearWeight::Quant(Arc::new(m.into_tiles(isa))))
            }
            None => Ok(LinearWeight::QTensor(Arc::new(qtensor_from_ggml(
                t,
                &bytes,
                vec![out, inp],
                &self.device,
            )?))),
        }
    }

    fn contains(&self, name: &str) -> bool {
        self.map(name)
            .is_some_and(|(g, _)| self.gguf.info(&g).is_some())
    }

    fn device(&self) -> &Device {
        &self.device
    }

    fn dtype(&self) -> DType {
        self.dtype
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gguf_row_inverts_the_llama_permutation() {
        // HF rows of one head of 8: halves [0 1 2 3 | 4 5 6 7]; llama.cpp
        // stores them as pairs (0 4) (1 5) (2 6) (3 7).
        let order: Vec<usize> = (0..8).map(|r| gguf_row(r, 8)).collect();
        assert_eq!(order, [0, 2, 4, 6, 1, 3, 5, 7]);
        let t = Tensor::new(&[0f32, 4., 1., 5., 2., 6., 3., 7.], &Device::Cpu)
            .and_then(|t| t.reshape((8, 1)))
            .expect("tensor");
        let back: Vec<f32> = unpermute_tensor(&t, 1)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1())
            .expect("unpermute");
        assert_eq!(back, [0., 1., 2., 3., 4., 5., 6., 7.]);
    }

    #[test]
    fn shards_must_be_complete_and_of_one_model() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(find(dir.path()).expect("empty dir").is_none());
        std::fs::write(dir.path().join("m-00001-of-00003.gguf"), b"x").expect("write");
        std::fs::write(dir.path().join("m-00003-of-00003.gguf"), b"x").expect("write");
        let err = find(dir.path()).expect_err("missing shard");
        assert!(err.to_string().contains("m-00002-of-00003.gguf"), "{err}");
        std::fs::write(dir.path().join("m-00002-of-00003.gguf"), b"x").expect("write");
        assert_eq!(
            find(dir.path()).expect("complete").map(|f| f.len()),
            Some(3)
        );
        std::fs::write(dir.path().join("other.gguf"), b"x").expect("write");
        let err = find(dir.path()).expect_err("ambiguous");
        assert!(err.to_string().contains("other.gguf"), "{err}");
    }

    #[test]
    fn a_file_that_is_not_gguf_names_itself() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("model.gguf");
        std::fs::write(&path, b"not a gguf file at all").expect("write");
        let err = Gguf::open(vec![path.clone()]).expect_err("garbage");
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
    }
}
