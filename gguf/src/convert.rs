//! A Hugging Face safetensors checkpoint to one quantized GGUF file, the way
//! `convert_hf_to_gguf.py --outtype f32` followed by `llama-quantize` (no importance matrix)
//! would produce it: llama.cpp's tensor names, the q/k row permutation of its "llama" rope,
//! `llama-quantize`'s per-tensor type choices (the Q4_K_M mixture, the fallbacks for rows that
//! are not whole blocks), its tensor and metadata order, and the reference quantizers in
//! [`crate::quant`].
//!
//! Memory stays bounded by the largest tensor: [`Plan::new`] reads only headers and JSON, and
//! [`Plan::write`] reads, converts, quantizes and writes one tensor at a time. The output is a
//! pure function of the input files and [`Options`]: same checkpoint, same bytes.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use safetensors::Dtype;
use safetensors::tensor::Metadata;
use serde_json::Value as Json;

use crate::quant::{self, TensorType};
use crate::write::{TensorInfo, Value, Writer};

/// `general.quantization_version` llama.cpp writes (`GGML_QNT_VERSION`).
const QUANTIZATION_VERSION: u32 = 2;

/// The `llama-quantize` presets the builder offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FileType {
    Q8_0,
    Q6K,
    Q4KM,
}

impl FileType {
    pub const ALL: [FileType; 3] = [FileType::Q4KM, FileType::Q6K, FileType::Q8_0];

    /// The manifest spelling, also llama-quantize's argument in lower case.
    pub fn name(self) -> &'static str {
        match self {
            FileType::Q8_0 => "q8_0",
            FileType::Q6K => "q6_k",
            FileType::Q4KM => "q4_k_m",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == s)
    }

    /// `general.file_type` (`enum llama_ftype`).
    pub fn llama_ftype(self) -> u32 {
        match self {
            FileType::Q8_0 => 7,
            FileType::Q4KM => 15,
            FileType::Q6K => 18,
        }
    }

    fn default_type(self) -> TensorType {
        match self {
            FileType::Q8_0 => TensorType::Q8_0,
            FileType::Q6K => TensorType::Q6K,
            FileType::Q4KM => TensorType::Q4K,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    pub file_type: FileType,
    /// `general.name`.
    pub name: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: `{field}`: {message}", path.display())]
    Invalid {
        path: PathBuf,
        field: String,
        message: String,
    },
}

pub(crate) fn read_json(path: &Path) -> Result<Json, ConvertError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConvertError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| ConvertError::Invalid {
        path: path.to_path_buf(),
        field: "(file)".into(),
        message: format!("not valid JSON: {e}"),
    })
}

/// Where one source tensor's bytes are.
#[derive(Debug, Clone)]
struct Source {
    file: PathBuf,
    offset: u64,
    dtype: Dtype,
    /// Shape as safetensors stores it (row-major, rows first).
    shape: Vec<usize>,
    hf_name: String,
}

/// One output tensor.
#[derive(Debug, Clone)]
pub struct PlannedTensor {
    pub info: TensorInfo,
    source: Source,
    /// Heads whose rows llama.cpp's "llama" graph wants interleaved (q: heads, k: kv heads).
    permute_heads: Option<usize>,
}

/// What will be written: metadata and tensors in file order.
#[derive(Debug, Clone)]
pub struct Plan {
    pub architecture: String,
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<PlannedTensor>,
}

/// What was written.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub architecture: String,
    /// Tensors per written type.
    pub types: BTreeMap<TensorType, usize>,
    pub bytes: u64,
}

struct Arch {
    gguf: &'static str,
    /// llama.cpp's LlamaModel permutes q/k rows; Qwen's models keep HF's order.
    permute: bool,
}

fn architecture(hf: &str) -> Option<Arch> {
    Some(match hf {
        "LlamaForCausalLM" | "MistralForCausalLM" => Arch {
            gguf: "llama",
            permute: true,
        },
        "Qwen2ForCausalLM" => Arch {
            gguf: "qwen2",
            permute: false,
        },
        "Qwen3ForCausalLM" => Arch {
            gguf: "qwen3",
            permute: false,
        },
        _ => return None,
    })
}

/// HF → llama.cpp tensor name (`gguf.TensorNameMap` for these architectures); `Ok(None)` for
/// buffers the converter skips.
fn gguf_name(hf: &str) -> Option<Option<String>> {
    if hf.ends_with(".rotary_emb.inv_freq")
        || hf.ends_with(".attention.masked_bias")
        || hf.ends_with(".attention.bias")
    {
        return Some(None);
    }
    let fixed = match hf {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(Some(f.to_string()));
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, suffix) = rest.rsplit_once('.')?;
    if suffix != "weight" && suffix != "bias" {
        return None;
    }
    let short = match module {
        "input_layernorm" => "attn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "self_attn.q_norm" => "attn_q_norm",
        "self_attn.k_norm" => "attn_k_norm",
        "post_attention_layernorm" => "ffn_norm",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        _ => return None,
    };
    Some(Some(format!("blk.{layer}.{short}.{suffix}")))
}

/// llama.cpp's `weight_name_comparer`: block tensors by layer, then by name; others first.
fn order_key(name: &str) -> (i64, &str) {
    let layer = name
        .strip_prefix("blk.")
        .and_then(|r| r.split('.').next())
        .and_then(|l| l.parse::<i64>().ok())
        .unwrap_or(-1);
    (layer, name)
}

fn use_more_bits(i_layer: usize, n_layers: usize) -> bool {
    i_layer < n_layers / 8
        || i_layer >= 7 * n_layers / 8
        || (i_layer as i64 - (n_layers / 8) as i64).rem_euclid(3) == 2
}

impl Plan {
    /// Reads `config.json`, the tokenizer files and the safetensors headers of `dir`.
    pub fn new(dir: &Path, options: &Options) -> Result<Plan, ConvertError> {
        let config_path = dir.join("config.json");
        let config = read_json(&config_path)?;
        let invalid = |field: &str, message: String| ConvertError::Invalid {
            path: config_path.clone(),
            field: field.to_string(),
            message,
        };
        let hf_arch = config["architectures"][0].as_str().unwrap_or_default();
        let arch = architecture(hf_arch).ok_or_else(|| {
            invalid(
                "architectures",
                format!(
                    "{:?} cannot be quantized to GGUF here (supported: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM)",
                    config["architectures"]
                ),
            )
        })?;
        let int = |key: &str| -> Result<usize, ConvertError> {
            config[key]
                .as_u64()
                .map(|v| v as usize)
                .ok_or_else(|| invalid(key, "missing or not an integer".into()))
        };
        let n_layer = int("num_hidden_layers")?;
        let n_head = int("num_attention_heads")?;
        let n_kv_head = config["num_key_value_heads"]
            .as_u64()
            .map_or(n_head, |v| v as usize);
        let hidden = int("hidden_size")?;
        let vocab_size = int("vocab_size")?;
        let tied = config["tie_word_embeddings"] == true;
        let rope = if config["rope_parameters"].is_object() {
            &config["rope_parameters"]
        } else {
            &config["rope_scaling"]
        };
        let rope_type = rope["rope_type"].as_str().or(rope["type"].as_str());
        if !matches!(rope_type, None | Some("default")) {
            return Err(invalid(
                "rope_scaling",
                format!("RoPE scaling {rope_type:?} is not supported by build-time quantization"),
            ));
        }
        for key in ["num_local_experts", "num_experts", "n_routed_experts"] {
            if !config[key].is_null() {
                return Err(invalid(
                    key,
                    "mixture-of-experts models are not supported".into(),
                ));
            }
        }

        let a = arch.gguf;
        let mut meta: Vec<(String, Value)> = vec![
            ("general.architecture".into(), Value::String(a.into())),
            ("general.type".into(), Value::String("model".into())),
            ("general.name".into(), Value::String(options.name.clone())),
            (format!("{a}.block_count"), Value::U32(n_layer as u32)),
        ];
        if let Some(n) = config["max_position_embeddings"].as_u64() {
            meta.push((format!("{a}.context_length"), Value::U32(n as u32)));
        }
        meta.push((format!("{a}.embedding_length"), Value::U32(hidden as u32)));
        if let Some(n) = config["intermediate_size"].as_u64() {
            meta.push((format!("{a}.feed_forward_length"), Value::U32(n as u32)));
        }
        meta.push((
            format!("{a}.attention.head_count"),
            Value::U32(n_head as u32),
        ));
        meta.push((
            format!("{a}.attention.head_count_kv"),
            Value::U32(n_kv_head as u32),
        ));
        let theta = rope["rope_theta"]
            .as_f64()
            .or(config["rope_theta"].as_f64());
        if let Some(theta) = theta {
            meta.push((format!("{a}.rope.freq_base"), Value::F32(theta as f32)));
        }
        if let Some(eps) = config["rms_norm_eps"].as_f64() {
            meta.push((
                format!("{a}.attention.layer_norm_rms_epsilon"),
                Value::F32(eps as f32),
            ));
        }
        let head_dim = config["head_dim"].as_u64().map(|v| v as usize);
        if let Some(d) = head_dim {
            meta.push((format!("{a}.attention.key_length"), Value::U32(d as u32)));
            meta.push((format!("{a}.attention.value_length"), Value::U32(d as u32)));
        }
        if a == "llama" {
            meta.push((format!("{a}.vocab_size"), Value::U32(vocab_size as u32)));
            meta.push((
                format!("{a}.rope.dimension_count"),
                Value::U32(head_dim.unwrap_or(hidden / n_head) as u32),
            ));
        }
        meta.extend(crate::vocab::metadata(dir, &config, vocab_size)?);
        // The converter writes these two among the model's keys, but llama-quantize copies the
        // converter's keys and then sets them, and `gguf_set_val_*` removes a key before
        // appending it: in a quantized file they come last, in this order.
        meta.push((
            "general.quantization_version".into(),
            Value::U32(QUANTIZATION_VERSION),
        ));
        meta.push((
            "general.file_type".into(),
            Value::U32(options.file_type.llama_ftype()),
        ));

        // Tensors
        let mut sources = Vec::new();
        for file in safetensors_files(dir)? {
            sources.extend(read_header(&file)?);
        }
        let mut tensors: Vec<PlannedTensor> = Vec::new();
        for source in sources {
            if tied && source.hf_name == "lm_head.weight" {
                continue;
            }
            let Some(name) = gguf_name(&source.hf_name) else {
                return Err(ConvertError::Invalid {
                    path: source.file.clone(),
                    field: source.hf_name.clone(),
                    message: format!("tensor has no llama.cpp name for architecture `{a}`"),
                });
            };
            let Some(name) = name else { continue };
            let permute_heads = match () {
                _ if !arch.permute => None,
                _ if name.ends_with("attn_q.weight") || name.ends_with("attn_q.bias") => {
                    Some(n_head)
                }
                _ if name.ends_with("attn_k.weight") || name.ends_with("attn_k.bias") => {
                    Some(n_kv_head)
                }
                _ => None,
            };
            if let Some(h) = permute_heads
                && !source.shape[0].is_multiple_of(2 * h)
            {
                return Err(ConvertError::Invalid {
                    path: source.file.clone(),
                    field: source.hf_name.clone(),
                    message: format!(
                        "{} rows cannot be split into {h} rotary heads",
                        source.shape[0]
                    ),
                });
            }
            let dims: Vec<u64> = source.shape.iter().rev().map(|&d| d as u64).collect();
            tensors.push(PlannedTensor {
                info: TensorInfo {
                    name,
                    dims,
                    ty: TensorType::F32,
                },
                source,
                permute_heads,
            });
        }
        if tensors.is_empty() {
            return Err(ConvertError::Invalid {
                path: dir.to_path_buf(),
                field: "model*.safetensors".into(),
                message: "no tensors".into(),
            });
        }
        tensors.sort_by(|x, y| order_key(&x.info.name).cmp(&order_key(&y.info.name)));
        if let Some(w) = tensors
            .windows(2)
            .find(|w| w[0].info.name == w[1].info.name)
        {
            return Err(ConvertError::Invalid {
                path: w[1].source.file.clone(),
                field: w[1].source.hf_name.clone(),
                message: format!("a second tensor named `{}`", w[1].info.name),
            });
        }
        choose_types(&mut tensors, options.file_type, n_layer);
        Ok(Plan {
            architecture: a.to_string(),
            metadata: meta,
            tensors,
        })
    }

    /// Streams the GGUF file into `out`, one tensor in memory at a time.
    pub fn write<W: Write>(&self, out: W) -> Result<(W, Report), ConvertError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ConvertError::Io { path, source }
        };
        let infos = self.tensors.iter().map(|t| t.info.clone()).collect();
        let mut writer =
            Writer::new(out, &self.metadata, infos).map_err(io(Path::new("(output)")))?;
        let mut types = BTreeMap::new();
        let mut bytes = 0u64;
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        for t in &self.tensors {
            let mut values = read_f32(&t.source)?;
            if let Some(heads) = t.permute_heads {
                values = permute(&values, &t.source.shape, heads);
            }
            let data = quantize_rows(t.info.ty, &values, t.info.dims[0] as usize, threads);
            writer
                .tensor(&t.info.name, &data)
                .map_err(io(Path::new("(output)")))?;
            *types.entry(t.info.ty).or_insert(0) += 1;
            bytes += data.len() as u64;
        }
        let out = writer.finish().map_err(io(Path::new("(output)")))?;
        Ok((
            out,
            Report {
                architecture: self.architecture.clone(),
                types,
                bytes,
            },
        ))
    }
}

/// `llama_tensor_get_type` for the presets offered, on tensors already in llama-quantize's order.
fn choose_types(tensors: &mut [PlannedTensor], ftype: FileType, n_layer: usize) {
    let has_output = tensors.iter().any(|t| t.info.name == "output.weight");
    let n_attention_wv = tensors
        .iter()
        .filter(|t| t.info.name.contains("attn_v.weight"))
        .count();
    let (mut i_attention_wv, mut i_ffn_down) = (0usize, 0usize);
    for t in tensors {
        let name = t.info.name.as_str();
        // Converter (--outtype f32): everything F32; then llama-quantize's `tensor_allows_quantization`.
        let quantize =
            t.info.dims.len() >= 2 && name.ends_with("weight") && !name.contains("_norm.weight");
        if !quantize {
            t.info.ty = TensorType::F32;
            continue;
        }
        let ncols = t.info.dims[0] as usize;
        let mut ty = ftype.default_type();
        let is_output = name == "output.weight" || (!has_output && name == "token_embd.weight");
        if is_output {
            if !ncols.is_multiple_of(ty.block_size()) {
                ty = TensorType::Q8_0;
            } else if ty != TensorType::Q8_0 {
                ty = TensorType::Q6K;
            }
        } else if name.contains("attn_v.weight") {
            if ftype == FileType::Q4KM && use_more_bits(i_attention_wv, n_attention_wv) {
                ty = TensorType::Q6K;
            }
            i_attention_wv += 1;
        } else if name.contains("ffn_down") {
            if ftype == FileType::Q4KM && use_more_bits(i_ffn_down, n_layer) {
                ty = TensorType::Q6K;
            }
            i_ffn_down += 1;
        }
        // `tensor_type_fallback`: rows that are not whole blocks of the chosen type.
        if !ncols.is_multiple_of(ty.block_size()) {
            ty = match ty {
                TensorType::Q4K => TensorType::Q5_0,
                TensorType::Q6K => TensorType::Q8_0,
                other => other,
            };
            if !ncols.is_multiple_of(ty.block_size()) {
                ty = TensorType::F16;
            }
        }
        t.info.ty = ty;
    }
}

fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>, ConvertError> {
    let entries = std::fs::read_dir(dir).map_err(|source| ConvertError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| ConvertError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("model") && name.ends_with(".safetensors") {
            files.push(entry.path());
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(ConvertError::Invalid {
            path: dir.to_path_buf(),
            field: "model*.safetensors".into(),
            message: "no safetensors weights to quantize".into(),
        });
    }
    Ok(files)
}

/// Reads `file`'s safetensors header as the converter does and returns how many tensors it
/// lists: the entry point of the `safetensors_header` fuzz target.
#[doc(hidden)]
pub fn read_safetensors_header(file: &Path) -> Result<usize, ConvertError> {
    read_header(file).map(|sources| sources.len())
}

fn read_header(file: &Path) -> Result<Vec<Source>, ConvertError> {
    let io = |source| ConvertError::Io {
        path: file.to_path_buf(),
        source,
    };
    let invalid = |field: &str, message: String| ConvertError::Invalid {
        path: file.to_path_buf(),
        field: field.to_string(),
        message,
    };
    let mut f = File::open(file).map_err(io)?;
    let size = f.metadata().map_err(io)?.len();
    let mut len = [0u8; 8];
    f.read_exact(&mut len).map_err(io)?;
    let n = u64::from_le_bytes(len);
    if n > 100 << 20 || 8 + n > size {
        return Err(invalid(
            "header",
            format!("length {n} does not fit a {size}-byte file"),
        ));
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header).map_err(io)?;
    let metadata: Metadata = serde_json::from_slice(&header)
        .map_err(|e| invalid("header", format!("not a safetensors header: {e}")))?;
    let data_start = 8 + n;
    let mut out = Vec::new();
    let mut names: Vec<_> = metadata.tensors().into_iter().collect();
    // safetensors' safe_open order: by name.
    names.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, info) in names {
        let elem = match info.dtype {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::BF16 => 2,
            other => {
                return Err(invalid(
                    &name,
                    format!("dtype {other:?} cannot be quantized (F32, F16 and BF16 can)"),
                ));
            }
        };
        let (begin, end) = info.data_offsets;
        let want = info.shape.iter().product::<usize>() * elem;
        if end - begin != want {
            return Err(invalid(
                &name,
                format!(
                    "{} bytes for shape {:?} {:?} ({want} expected)",
                    end - begin,
                    info.shape,
                    info.dtype
                ),
            ));
        }
        // Saturating: the offsets are the file's, up to u64::MAX.
        let data_end = data_start.saturating_add(end as u64);
        if data_end > size {
            return Err(invalid(
                &name,
                format!("data ends at byte {data_end} of a {size}-byte file (truncated?)"),
            ));
        }
        if info.shape.is_empty() || info.shape.len() > 2 {
            return Err(invalid(
                &name,
                format!(
                    "shape {:?}: only 1-D and 2-D tensors are converted",
                    info.shape
                ),
            ));
        }
        out.push(Source {
            file: file.to_path_buf(),
            offset: data_start + begin as u64,
            dtype: info.dtype,
            shape: info.shape.clone(),
            hf_name: name.clone(),
        });
    }
    Ok(out)
}

fn read_f32(source: &Source) -> Result<Vec<f32>, ConvertError> {
    let io = |e| ConvertError::Io {
        path: source.file.clone(),
        source: e,
    };
    let n: usize = source.shape.iter().product();
    let elem = if source.dtype == Dtype::F32 { 4 } else { 2 };
    let mut raw = vec![0u8; n * elem];
    let mut f = File::open(&source.file).map_err(io)?;
    f.seek(SeekFrom::Start(source.offset)).map_err(io)?;
    f.read_exact(&mut raw).map_err(io)?;
    Ok(match source.dtype {
        Dtype::F32 => raw
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F16 => raw
            .chunks_exact(2)
            .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        _ => raw
            .chunks_exact(2)
            .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
    })
}

/// `LlamaModel.permute`: each head's rows from (two halves) to (interleaved pairs), i.e. rows
/// reshaped to `[heads, 2, rows/heads/2]` and the last two axes swapped.
fn permute(values: &[f32], shape: &[usize], heads: usize) -> Vec<f32> {
    let rows = shape[0];
    let cols = shape.get(1).copied().unwrap_or(1);
    let half = rows / heads / 2;
    let mut out = vec![0.0f32; values.len()];
    for h in 0..heads {
        for i in 0..half {
            for s in 0..2 {
                let from = h * 2 * half + s * half + i;
                let to = h * 2 * half + i * 2 + s;
                out[to * cols..(to + 1) * cols]
                    .copy_from_slice(&values[from * cols..(from + 1) * cols]);
            }
        }
    }
    out
}

/// Quantizes whole rows on `threads` threads; rows are independent, so the bytes do not depend
/// on the thread count.
fn quantize_rows(ty: TensorType, values: &[f32], row_len: usize, threads: usize) -> Vec<u8> {
    let rows = values.len() / row_len;
    let per = rows.div_ceil(threads.max(1)).max(1);
    let parts: Vec<Vec<u8>> = std::thread::scope(|s| {
        let handles: Vec<_> = values
            .chunks(per * row_len)
            .map(|chunk| {
                s.spawn(move || {
                    let mut out = Vec::new();
                    quant::quantize(ty, chunk, &mut out);
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("quantizer thread"))
            .collect()
    });
    parts.concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_llama_cpp() {
        assert_eq!(
            gguf_name("model.layers.3.self_attn.q_proj.bias"),
            Some(Some("blk.3.attn_q.bias".into()))
        );
        assert_eq!(
            gguf_name("model.layers.0.self_attn.rotary_emb.inv_freq"),
            Some(None)
        );
        assert_eq!(gguf_name("model.layers.0.mlp.experts.0.w1.weight"), None);
    }

    #[test]
    fn order_is_by_layer_then_name() {
        let mut names = vec![
            "blk.10.attn_q.weight",
            "blk.2.attn_v.weight",
            "token_embd.weight",
            "blk.2.attn_k.weight",
            "output.weight",
        ];
        names.sort_by(|a, b| order_key(a).cmp(&order_key(b)));
        assert_eq!(
            names,
            [
                "output.weight",
                "token_embd.weight",
                "blk.2.attn_k.weight",
                "blk.2.attn_v.weight",
                "blk.10.attn_q.weight"
            ]
        );
    }

    #[test]
    fn permute_interleaves_each_heads_halves() {
        // 2 heads of 4 rows, 1 column: [a0 a1 b0 b1] per head -> [a0 b0 a1 b1]
        let v: Vec<f32> = (0..8).map(|i| i as f32).collect();
        assert_eq!(
            permute(&v, &[8, 1], 2),
            [0.0, 2.0, 1.0, 3.0, 4.0, 6.0, 5.0, 7.0]
        );
    }

    #[test]
    fn q4_k_m_gives_more_bits_to_llama_cpps_layers() {
        // llama.cpp: first and last eighth, and every third layer in between
        let more: Vec<usize> = (0..16).filter(|&i| use_more_bits(i, 16)).collect();
        assert_eq!(more, [0, 1, 4, 7, 10, 13, 14, 15]);
    }

    /// Data offsets are the file's own numbers: ending just short of 2^64, they once overflowed
    /// `data_start + end` (a panic, or in release a wrapped check and a 2^60-byte allocation).
    #[test]
    fn offsets_near_u64_max_are_refused_not_overflowed() {
        let step = 1u64 << 60;
        let end = u64::MAX - 15;
        let mut tensors = serde_json::Map::new();
        for i in 0..15 {
            let entry = serde_json::json!({
                "dtype": "F32", "shape": [step / 4], "data_offsets": [i * step, (i + 1) * step]
            });
            tensors.insert(format!("t{i:02}"), entry);
        }
        // Named to be checked first (by name), though it ends last.
        let last = serde_json::json!({
            "dtype": "F32", "shape": [(end - 15 * step) / 4], "data_offsets": [15 * step, end]
        });
        tensors.insert("a".into(), last);
        let header = serde_json::to_vec(&tensors).unwrap();
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(&header);
        bytes.extend_from_slice(&[0; 64]);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("model.safetensors");
        std::fs::write(&file, bytes).unwrap();
        match read_safetensors_header(&file) {
            Err(ConvertError::Invalid { field, message, .. }) => {
                assert_eq!(field, "a");
                assert!(message.contains("truncated"), "{message}");
            }
            other => panic!("expected the truncation error, got {other:?}"),
        }
    }
}
