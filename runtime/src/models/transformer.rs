//! The decoder shared by Llama, Mistral and Qwen2: pre-norm RMSNorm blocks
//! with rotary grouped-query attention and a SwiGLU MLP.
//!
//! Written on candle-nn rather than taken from candle-transformers because
//! those models keep the KV cache *inside* the model (`&mut self` forward,
//! one sequence per weight copy), and Llama's cache shares one position for
//! the whole batch. Here the weights are immutable and shareable (`&self`),
//! and each sequence owns a [`KvCache`]: the scheduler can interleave many
//! sequences over one loaded model. Continuous batching of sequences with
//! different lengths (per-row positions + padding masks) is the next step.

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::kv_cache::ConcatKvCache;
use candle_nn::{Embedding, Linear, RmsNorm, VarBuilder, linear_b};

use super::{config::ModelSpec, rope::RopeTables};

/// Per-sequence attention state: one `(k, v)` pair per layer, each of shape
/// `(1, kv_heads, positions, head_dim)`, in candle's `ConcatKvCache`.
///
/// TODO(perf): grows by `Tensor::cat` (a copy per step, quadratic in length);
/// a preallocated or paged cache belongs with the scheduler.
#[derive(Debug, Clone)]
pub struct KvCache {
    layers: Vec<ConcatKvCache>,
}

impl KvCache {
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: vec![ConcatKvCache::new(2); num_layers],
        }
    }

    /// Positions already cached: where the next token goes.
    pub fn len(&self) -> usize {
        self.layers
            .first()
            .map_or(0, ConcatKvCache::current_seq_len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn append(&mut self, layer: usize, k: Tensor, v: Tensor) -> Result<(Tensor, Tensor)> {
        let slot = self
            .layers
            .get_mut(layer)
            .ok_or_else(|| candle_core::Error::Msg(format!("no cache slot for layer {layer}")))?;
        slot.append(&k, &v)
    }
}

#[derive(Debug)]
struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
    sliding_window: Option<usize>,
}

impl Attention {
    fn load(spec: &ModelSpec, vb: VarBuilder) -> Result<Self> {
        let (h, nh, nkv, hd) = (
            spec.hidden_size,
            spec.num_heads,
            spec.num_kv_heads,
            spec.head_dim,
        );
        Ok(Self {
            q: linear_b(h, nh * hd, spec.qkv_bias, vb.pp("q_proj"))?,
            k: linear_b(h, nkv * hd, spec.qkv_bias, vb.pp("k_proj"))?,
            v: linear_b(h, nkv * hd, spec.qkv_bias, vb.pp("v_proj"))?,
            o: linear_b(nh * hd, h, spec.o_bias, vb.pp("o_proj"))?,
            num_heads: nh,
            num_kv_heads: nkv,
            head_dim: hd,
            sliding_window: spec.sliding_window,
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        rope: &RopeTables,
        cache: &mut KvCache,
        layer: usize,
        offset: usize,
    ) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let heads = |proj: &Linear, n: usize| -> Result<Tensor> {
            proj.forward(x)?
                .reshape((b, t, n, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = rope.apply(&heads(&self.q, self.num_heads)?, offset)?;
        let k = rope.apply(&heads(&self.k, self.num_kv_heads)?, offset)?;
        let v = heads(&self.v, self.num_kv_heads)?;
        let (k, v) = cache.append(layer, k, v)?;
        let kv_len = k.dim(2)?;

        let groups = self.num_heads / self.num_kv_heads;
        let k = repeat_kv(&k, groups)?;
        let v = repeat_kv(&v, groups)?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        // Scores and softmax in f32, as transformers' eager attention does.
        let scores = (q
            .to_dtype(DType::F32)?
            .matmul(&k.to_dtype(DType::F32)?.t()?)?
            * scale)?;
        let scores = match causal_mask(t, kv_len, offset, self.sliding_window, x.device())? {
            Some(mask) => scores.broadcast_add(&mask)?,
            None => scores,
        };
        let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(v.dtype())?;
        let out =
            probs
                .matmul(&v)?
                .transpose(1, 2)?
                .reshape((b, t, self.num_heads * self.head_dim))?;
        self.o.forward(&out)
    }
}

/// `(b, kv_heads, s, d)` → `(b, kv_heads * groups, s, d)`, each KV head
/// repeated for the query heads of its group (GQA).
fn repeat_kv(x: &Tensor, groups: usize) -> Result<Tensor> {
    if groups == 1 {
        return Ok(x.clone());
    }
    let (b, n, s, d) = x.dims4()?;
    x.unsqueeze(2)?
        .expand((b, n, groups, s, d))?
        .reshape((b, n * groups, s, d))
}

/// Additive mask `(t, kv_len)` for queries at positions `offset..offset+t`:
/// `-inf` on future keys and on keys outside the sliding window. `None` when
/// nothing would be masked (a single decode step inside the window).
fn causal_mask(
    t: usize,
    kv_len: usize,
    offset: usize,
    window: Option<usize>,
    device: &Device,
) -> Result<Option<Tensor>> {
    let beyond_window = window.is_some_and(|w| kv_len > w);
    if t == 1 && !beyond_window {
        return Ok(None);
    }
    let mask: Vec<f32> = (0..t)
        .flat_map(|i| {
            let pos = offset + i;
            (0..kv_len).map(move |j| {
                let future = j > pos;
                let outside = window.is_some_and(|w| pos - j.min(pos) >= w);
                if future || outside {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
        })
        .collect();
    Tensor::from_vec(mask, (t, kv_len), device).map(Some)
}

#[derive(Debug)]
struct Mlp {
    gate: Linear,
    up: Linear,
    down: Linear,
}

impl Mlp {
    fn load(spec: &ModelSpec, vb: VarBuilder) -> Result<Self> {
        let (h, i, bias) = (spec.hidden_size, spec.intermediate_size, spec.mlp_bias);
        Ok(Self {
            gate: linear_b(h, i, bias, vb.pp("gate_proj"))?,
            up: linear_b(h, i, bias, vb.pp("up_proj"))?,
            down: linear_b(i, h, bias, vb.pp("down_proj"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let gated = (self.gate.forward(x)?.silu()? * self.up.forward(x)?)?;
        self.down.forward(&gated)
    }
}

#[derive(Debug)]
struct Block {
    attn_norm: RmsNorm,
    attn: Attention,
    mlp_norm: RmsNorm,
    mlp: Mlp,
}

/// The decoder weights. Immutable after loading; `forward` takes the
/// sequence's [`KvCache`] so one model serves any number of sequences.
#[derive(Debug)]
pub struct Transformer {
    embed: Embedding,
    blocks: Vec<Block>,
    norm: RmsNorm,
    lm_head: Linear,
    rope: RopeTables,
}

impl Transformer {
    /// Loads Hugging Face tensor names (`model.layers.N.self_attn.q_proj`,
    /// ...) from `vb`; RoPE tables cover `max_positions`.
    pub fn load(spec: &ModelSpec, vb: VarBuilder, max_positions: usize) -> Result<Self> {
        let m = vb.pp("model");
        let embed = candle_nn::embedding(spec.vocab_size, spec.hidden_size, m.pp("embed_tokens"))?;
        let eps = spec.rms_norm_eps;
        let mut blocks = Vec::with_capacity(spec.num_layers);
        for i in 0..spec.num_layers {
            let l = m.pp(format!("layers.{i}"));
            blocks.push(Block {
                attn_norm: candle_nn::rms_norm(spec.hidden_size, eps, l.pp("input_layernorm"))?,
                attn: Attention::load(spec, l.pp("self_attn"))?,
                mlp_norm: candle_nn::rms_norm(
                    spec.hidden_size,
                    eps,
                    l.pp("post_attention_layernorm"),
                )?,
                mlp: Mlp::load(spec, l.pp("mlp"))?,
            });
        }
        let norm = candle_nn::rms_norm(spec.hidden_size, eps, m.pp("norm"))?;
        let lm_head = if spec.tie_word_embeddings {
            Linear::new(embed.embeddings().clone(), None)
        } else {
            candle_nn::linear_no_bias(spec.hidden_size, spec.vocab_size, vb.pp("lm_head"))?
        };
        let rope = RopeTables::new(
            spec.head_dim,
            spec.rope_theta,
            spec.rope_scaling,
            max_positions,
            vb.dtype(),
            vb.device(),
        )?;
        Ok(Self {
            embed,
            blocks,
            norm,
            lm_head,
            rope,
        })
    }

    /// Runs `tokens` (the next positions of the sequence behind `cache`) and
    /// returns the f32 logits `(vocab,)` of the last one.
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Tensor> {
        let offset = cache.len();
        let t = tokens.len();
        if t == 0 {
            candle_core::bail!("forward needs at least one token");
        }
        if offset + t > self.rope.max_positions() {
            candle_core::bail!(
                "position {} is beyond the {} positions this model was loaded for",
                offset + t,
                self.rope.max_positions()
            );
        }
        let device = self.embed.embeddings().device();
        let ids = Tensor::new(tokens, device)?.unsqueeze(0)?;
        let mut x = self.embed.forward(&ids)?;
        for (i, block) in self.blocks.iter().enumerate() {
            let h = block.attn_norm.forward(&x)?;
            x = (x + block.attn.forward(&h, &self.rope, cache, i, offset)?)?;
            let h = block.mlp_norm.forward(&x)?;
            x = (&x + block.mlp.forward(&h)?)?;
        }
        let last = x.narrow(1, t - 1, 1)?;
        let logits = self.lm_head.forward(&self.norm.forward(&last)?)?;
        logits.squeeze(0)?.squeeze(0)?.to_dtype(DType::F32)
    }

    pub fn num_layers(&self) -> usize {
        self.blocks.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_is_causal_with_offset_and_window() -> Result<()> {
        let dev = Device::Cpu;
        assert!(causal_mask(1, 5, 4, None, &dev)?.is_none());
        let m: Vec<Vec<f32>> = causal_mask(2, 4, 2, None, &dev)?.expect("mask").to_vec2()?;
        assert_eq!(m[0][2], 0.0);
        assert_eq!(m[0][3], f32::NEG_INFINITY);
        assert!(m[1].iter().all(|v| *v == 0.0));
        let w: Vec<Vec<f32>> = causal_mask(1, 4, 3, Some(2), &dev)?
            .expect("window mask")
            .to_vec2()?;
        assert_eq!(w[0], [f32::NEG_INFINITY, f32::NEG_INFINITY, 0.0, 0.0]);
        Ok(())
    }
}
