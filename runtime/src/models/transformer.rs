//! The decoder shared by Llama, Mistral, Qwen2 and Qwen3: pre-norm RMSNorm blocks
//! with rotary grouped-query attention and a SwiGLU MLP, run one packed
//! batch at a time.
//!
//! Written on candle rather than taken from candle-transformers because
//! those models keep one contiguous KV cache *inside* the model, one
//! position for the whole batch. Here the weights are immutable (`&self`),
//! a step is one forward pass over the tokens of many sequences at
//! different positions ([`Batch`]), and keys and values live in the paged
//! pool ([`KvCache`]) the engine owns.
//!
//! Activations are f32 on the CPU (the kernels convert f16/bf16 weights in
//! registers; the bf16 dot-product kernel rounds a product's input to bf16
//! inside the product) and the model dtype on a GPU.

use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Result, Shape, Tensor};

use super::{
    attention::{TensorPlan, attend},
    batch::Batch,
    config::ModelSpec,
    linear::{Kernels, Linear, Part},
    rope::RopeTables,
};
use crate::{
    checkpoint::{LinearWeight, Weights},
    kernels::{activation, attention::AttentionParams, isa::Isa, quant::QuantMatrix},
    kv::KvCache,
};

/// The token embedding. A GGUF file's quantized table stays in its blocks on the CPU and rows
/// are dequantized as tokens are looked up, as llama.cpp's `get_rows` does: a 152k x 3584
/// Q4_K table is 0.3 GB instead of 1.1 GB in f16 (and the values are the exact f32 block
/// values, not rounded to f16).
#[derive(Debug)]
enum Embedding {
    Dense(Tensor),
    Quant(std::sync::Arc<QuantMatrix>),
}

impl Embedding {
    fn lookup(&self, ids: &[u32], device: &Device) -> Result<Tensor> {
        match self {
            Self::Dense(t) => t.index_select(&Tensor::new(ids, device)?, 0),
            Self::Quant(q) => {
                let h = q.cols();
                let mut out = vec![0f32; ids.len() * h];
                for (row, &id) in out.chunks_exact_mut(h).zip(ids) {
                    let id = id as usize;
                    if id >= q.rows() {
                        candle_core::bail!(
                            "token id {id} is outside the {}-row embedding",
                            q.rows()
                        );
                    }
                    q.dequantize_row(id, row);
                }
                Tensor::from_vec(out, (ids.len(), h), device)
            }
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Self::Dense(t) => t.elem_count() * t.dtype().size_in_bytes(),
            Self::Quant(q) => q.bytes(),
        }
    }
}

#[derive(Debug)]
struct Block {
    attn_norm: Tensor,
    /// q, k and v fused: `heads + 2 · kv_heads` head-sized outputs.
    qkv: Linear,
    /// Qwen3's RMSNorm weights over each head of q and of k.
    qk_norm: Option<(Tensor, Tensor)>,
    o: Linear,
    mlp_norm: Tensor,
    /// gate and up fused: `2 · intermediate` outputs.
    gate_up: Linear,
    down: Linear,
}

/// The decoder weights. Immutable after loading.
#[derive(Debug)]
pub struct Transformer {
    embed: Embedding,
    blocks: Vec<Block>,
    norm: Tensor,
    lm_head: Linear,
    rope: RopeTables,
    kernels: Kernels,
    act: DType,
    eps: f64,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    intermediate: usize,
    window: Option<usize>,
}

impl Transformer {
    /// Loads Hugging Face tensor names (`model.layers.N.self_attn.q_proj`,
    /// ...) from `w` (in the weight dtype); RoPE tables cover
    /// `max_positions`.
    pub fn load(
        spec: &ModelSpec,
        w: &dyn Weights,
        max_positions: usize,
        kernels: Kernels,
    ) -> Result<Self> {
        let act = match kernels {
            Kernels::Cpu { .. } => DType::F32,
            Kernels::Candle => w.dtype(),
        };
        let (h, hd) = (spec.hidden_size, spec.head_dim);
        let embed_name = "model.embed_tokens.weight";
        // Quantized blocks stay quantized only for the CPU kernels (candle's CUDA path wants
        // a dense table for `index_select`).
        let embed_linear = match kernels {
            Kernels::Cpu { .. } => Some(w.linear(embed_name, spec.vocab_size, h)?),
            Kernels::Candle => None,
        };
        let embed = match &embed_linear {
            Some(LinearWeight::Quant(q)) => Embedding::Quant(q.clone()),
            // `linear` and `tensor` both give the dense table in the model dtype.
            Some(LinearWeight::Dense(t)) => Embedding::Dense(t.clone()),
            _ => Embedding::Dense(w.tensor(embed_name, &[spec.vocab_size, h])?),
        };
        let norm_w = |name: String, n: usize| w.tensor(&name, &[n])?.to_dtype(act);
        let proj = |prefix: &str, out: usize, inp: usize, bias: bool| -> Result<Part> {
            let weight = w.linear(&format!("{prefix}.weight"), out, inp)?;
            let b = if bias {
                Some(w.tensor(&format!("{prefix}.bias"), &[out])?)
            } else {
                None
            };
            Ok((weight, b))
        };
        let mut blocks = Vec::with_capacity(spec.num_layers);
        for i in 0..spec.num_layers {
            let l = format!("model.layers.{i}");
            let a = format!("{l}.self_attn");
            let (q, kv) = (spec.num_heads * hd, spec.num_kv_heads * hd);
            let qkv = Linear::fused(
                vec![
                    proj(&format!("{a}.q_proj"), q, h, spec.qkv_bias)?,
                    proj(&format!("{a}.k_proj"), kv, h, spec.qkv_bias)?,
                    proj(&format!("{a}.v_proj"), kv, h, spec.qkv_bias)?,
                ],
                kernels,
            )?;
            let o = Linear::fused(
                vec![proj(&format!("{a}.o_proj"), h, q, spec.o_bias)?],
                kernels,
            )?;
            let mlp = format!("{l}.mlp");
            let i_size = spec.intermediate_size;
            let gate_up = Linear::fused(
                vec![
                    proj(&format!("{mlp}.gate_proj"), i_size, h, spec.mlp_bias)?,
                    proj(&format!("{mlp}.up_proj"), i_size, h, spec.mlp_bias)?,
                ],
                kernels,
            )?;
            let down = Linear::fused(
                vec![proj(&format!("{mlp}.down_proj"), h, i_size, spec.mlp_bias)?],
                kernels,
            )?;
            let qk_norm = if spec.qk_norm {
                Some((
                    norm_w(format!("{a}.q_norm.weight"), hd)?,
                    norm_w(format!("{a}.k_norm.weight"), hd)?,
                ))
            } else {
                None
            };
            blocks.push(Block {
                attn_norm: norm_w(format!("{l}.input_layernorm.weight"), h)?,
                qkv,
                qk_norm,
                o,
                mlp_norm: norm_w(format!("{l}.post_attention_layernorm.weight"), h)?,
                gate_up,
                down,
            });
        }
        let norm = norm_w("model.norm.weight".to_owned(), h)?;
        let lm_head = if spec.tie_word_embeddings {
            let tied = match embed_linear {
                // The same blocks (or tensor) as the embedding: one copy in memory.
                Some(l @ (LinearWeight::Quant(_) | LinearWeight::Dense(_))) => l,
                _ => w.linear(embed_name, spec.vocab_size, h)?,
            };
            Linear::fused(vec![(tied, None)], kernels)?
        } else {
            Linear::fused(vec![proj("lm_head", spec.vocab_size, h, false)?], kernels)?
        };
        let rope = RopeTables::new(
            hd,
            spec.rope_theta,
            spec.rope_scaling,
            max_positions,
            act,
            w.device(),
        )?;
        Ok(Self {
            embed,
            blocks,
            norm,
            lm_head,
            rope,
            kernels,
            act,
            eps: spec.rms_norm_eps,
            heads: spec.num_heads,
            kv_heads: spec.num_kv_heads,
            head_dim: hd,
            intermediate: spec.intermediate_size,
            window: spec.sliding_window,
        })
    }

    pub fn num_layers(&self) -> usize {
        self.blocks.len()
    }

    pub fn max_positions(&self) -> usize {
        self.rope.max_positions()
    }

    /// Bytes of weights held (embedding and LM head included).
    pub fn weight_bytes(&self) -> usize {
        let linears: usize = self
            .blocks
            .iter()
            .map(|b| b.qkv.bytes() + b.o.bytes() + b.gate_up.bytes() + b.down.bytes())
            .sum();
        linears + self.lm_head.bytes() + self.embed.bytes()
    }

    /// Runs one step over `batch`, writing its keys and values into `kv`,
    /// and returns f32 logits `(batch.sample_rows.len(), vocab)`.
    pub fn forward(&self, batch: &Batch, kv: &mut KvCache) -> Result<Tensor> {
        let t = batch.tokens.len();
        if t == 0 {
            candle_core::bail!("forward needs at least one token");
        }
        batch
            .check(kv.shape(), self.rope.max_positions())
            .map_err(candle_core::Error::Msg)?;
        let device = self.norm.device();
        let positions = Tensor::new(batch.positions.as_slice(), device)?;
        let (cos, sin) = self.rope.at(&positions)?;
        let plan = match kv {
            KvCache::Tensors { .. } => Some(TensorPlan::new(
                batch,
                self.kv_heads * self.head_dim,
                self.window,
                device,
            )?),
            KvCache::Cpu { .. } => None,
        };
        let params = AttentionParams {
            num_heads: self.heads,
            scale: 1.0 / (self.head_dim as f32).sqrt(),
            window: self.window,
        };
        let isa = match self.kernels {
            Kernels::Cpu { isa, .. } => isa,
            Kernels::Candle => Isa::Generic,
        };
        let (hd, nh, nkv) = (self.head_dim, self.heads, self.kv_heads);
        let mut x = self
            .embed
            .lookup(&batch.tokens, device)?
            .to_dtype(self.act)?;
        for (layer, b) in self.blocks.iter().enumerate() {
            let h = candle_nn::ops::rms_norm(&x, &b.attn_norm, self.eps as f32)?;
            let qkv = b.qkv.forward(&h)?;
            let split = |from: usize, heads: usize| -> Result<Tensor> {
                qkv.narrow(1, from * hd, heads * hd)?
                    .reshape((1, t, heads, hd))
            };
            let (mut q, mut k) = (split(0, nh)?.contiguous()?, split(nh, nkv)?.contiguous()?);
            if let Some((qn, kn)) = &b.qk_norm {
                q = candle_nn::ops::rms_norm(&q, qn, self.eps as f32)?;
                k = candle_nn::ops::rms_norm(&k, kn, self.eps as f32)?;
            }
            let q = candle_nn::rotary_emb::rope_thd(&q, &cos, &sin)?;
            let k = candle_nn::rotary_emb::rope_thd(&k, &cos, &sin)?;
            let v = split(nh + nkv, nkv)?.contiguous()?;
            let a = attend(
                kv,
                layer,
                &q.reshape((t, nh, hd))?,
                &k.reshape((t, nkv, hd))?,
                &v.reshape((t, nkv, hd))?,
                batch,
                plan.as_ref(),
                &params,
                isa,
            )?;
            x = (x + b.o.forward(&a)?)?;
            let h = candle_nn::ops::rms_norm(&x, &b.mlp_norm, self.eps as f32)?;
            let gu = b.gate_up.forward(&h)?;
            let act = self.swiglu(&gu)?;
            x = (x + b.down.forward(&act)?)?;
        }
        let rows = Tensor::new(batch.sample_rows.as_slice(), device)?;
        let last = x.index_select(&rows, 0)?;
        let h = candle_nn::ops::rms_norm(&last, &self.norm, self.eps as f32)?;
        self.lm_head.forward(&h)?.to_dtype(DType::F32)
    }

    /// `silu(gate) · up` over the fused `(tokens, 2 · intermediate)` output.
    fn swiglu(&self, gu: &Tensor) -> Result<Tensor> {
        let i = self.intermediate;
        if gu.device().is_cpu() && gu.dtype() == DType::F32 {
            let isa = match self.kernels {
                Kernels::Cpu { isa, .. } => isa,
                Kernels::Candle => Isa::best(),
            };
            return gu.contiguous()?.apply_op1_no_bwd(&SwiGlu {
                intermediate: i,
                isa,
            });
        }
        let gate = gu.narrow(1, 0, i)?;
        let up = gu.narrow(1, i, i)?;
        candle_nn::ops::silu(&gate)? * up
    }

    pub fn kernels(&self) -> Kernels {
        self.kernels
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        self.norm.device()
    }
}

/// Fused SwiGLU for f32 CPU activations: one pass, no `gate`/`up` copies.
struct SwiGlu {
    intermediate: usize,
    isa: Isa,
}

impl CustomOp1 for SwiGlu {
    fn name(&self) -> &'static str {
        "swiglu"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("swiglu: f32 only");
        };
        let Some((a, b)) = layout.contiguous_offsets() else {
            candle_core::bail!("swiglu: contiguous input only");
        };
        let (t, two_i) = layout.shape().dims2()?;
        let i = self.intermediate;
        if two_i != 2 * i {
            candle_core::bail!("swiglu: {two_i} columns, expected {}", 2 * i);
        }
        let mut out = vec![0f32; t * i];
        activation::swiglu(self.isa, &data[a..b], i, &mut out);
        Ok((CpuStorage::F32(out), Shape::from((t, i))))
    }
}
