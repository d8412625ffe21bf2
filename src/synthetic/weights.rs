//! The tensor list (Hugging Face names and shapes per architecture), the
//! exact-in-`f32` random initialisation, and the streaming safetensors writer
//! that keeps memory at one chunk whatever the model size.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::Path;

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use safetensors::tensor::{Metadata, TensorInfo};

use super::{SynthDtype, SyntheticError, SyntheticSpec, io_err};

/// Elements generated per write; bounds memory independently of tensor size.
const CHUNK_ELEMENTS: usize = 16 * 1024;

/// `2^-29`: scales odd integers below `2^24` into `(-2^-5, 2^-5)` exactly.
const UNIFORM_SCALE: f32 = 1.0 / 536_870_912.0;

/// How a tensor is initialised; see "Weight values" in the [`synthetic`](super)
/// module docs for the exact values.
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
    pub(super) fn tensors_unchecked(&self) -> Vec<TensorPlan> {
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

/// Maps one `ChaCha8Rng` output to an exactly representable weight; see
/// "Weight values" in the [`synthetic`](super) module docs.
pub(super) fn uniform_weight(r: u32) -> f32 {
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
pub(super) fn write_safetensors(spec: &SyntheticSpec, path: &Path) -> Result<(), SyntheticError> {
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
