//! Attention over the paged KV pool for one layer of a packed batch: write
//! the batch's new keys and values into their slots, then attend each
//! query to its sequence's cached positions.
//!
//! The interface ([`attend`]) is the same whatever computes it:
//! - [`KvCache::Cpu`]: the blocked online-softmax kernel of
//!   [`crate::kernels::attention`], multi-threaded, no score matrix;
//! - [`KvCache::Tensors`]: candle ops on the pool's device (CUDA), gathering
//!   each sequence's slots and masking: every decoding sequence of the step
//!   in one padded batch, each prefill chunk on its own. A fused CUDA
//!   paged-attention kernel would replace this path behind the same call.

use candle_core::{DType, Device, Result, Tensor};

use super::{batch::Batch, linear::with_cpu_f32};
use crate::{
    kernels::{
        attention::{AttentionParams, SeqSpan, paged_attention, write_kv},
        isa::Isa,
    },
    kv::{
        KvCache,
        cache::{CpuLayer, CpuLayers},
    },
};

/// Per-step index tensors of the candle path, built once and used by every
/// layer.
#[derive(Debug)]
pub struct TensorPlan {
    /// `(tokens, kv_heads · head_dim)`: each row is the token's slot.
    write_index: Tensor,
    decode: Option<DecodePlan>,
    prefills: Vec<PrefillPlan>,
}

#[derive(Debug)]
struct DecodePlan {
    /// Rows of the batch that are single-token decodes, `(n,)`.
    rows: Tensor,
    /// `(n · max_ctx,)` slots, padded with slot 0.
    gather: Tensor,
    n: usize,
    max_ctx: usize,
    /// `(n, 1, 1, max_ctx)`: 0 where visible, -inf elsewhere.
    mask: Tensor,
}

#[derive(Debug)]
struct PrefillPlan {
    rows: Tensor,
    gather: Tensor,
    q_len: usize,
    ctx_len: usize,
    /// `(q_len, ctx_len)`, or none when nothing is masked.
    mask: Option<Tensor>,
}

impl TensorPlan {
    pub fn new(
        batch: &Batch,
        kv_row: usize,
        window: Option<usize>,
        device: &Device,
    ) -> Result<Self> {
        let t = batch.tokens.len();
        let slots = Tensor::new(batch.slots.as_slice(), device)?;
        let write_index = slots
            .unsqueeze(1)?
            .broadcast_as((t, kv_row))?
            .contiguous()?;
        let visible = |pos: usize, key: usize| key <= pos && window.is_none_or(|w| pos - key < w);
        let decodes: Vec<_> = batch.seqs.iter().filter(|s| s.q_len == 1).collect();
        let decode = if decodes.is_empty() {
            None
        } else {
            let max_ctx = decodes.iter().map(|s| s.ctx_len).max().unwrap_or(1);
            let mut gather = Vec::with_capacity(decodes.len() * max_ctx);
            let mut mask = Vec::with_capacity(decodes.len() * max_ctx);
            for s in &decodes {
                for j in 0..max_ctx {
                    let ok = j < s.ctx_len && visible(s.ctx_len - 1, j);
                    gather.push(if j < s.ctx_len {
                        s.slot(j, batch.block_size)
                    } else {
                        0
                    });
                    mask.push(if ok { 0f32 } else { f32::NEG_INFINITY });
                }
            }
            let rows: Vec<u32> = decodes.iter().map(|s| s.q_start as u32).collect();
            Some(DecodePlan {
                rows: Tensor::new(rows.as_slice(), device)?,
                gather: Tensor::new(gather.as_slice(), device)?,
                n: decodes.len(),
                max_ctx,
                mask: Tensor::from_vec(mask, (decodes.len(), 1, 1, max_ctx), device)?,
            })
        };
        let prefills = batch
            .seqs
            .iter()
            .filter(|s| s.q_len > 1)
            .map(|s| {
                let gather: Vec<u32> = (0..s.ctx_len)
                    .map(|j| s.slot(j, batch.block_size))
                    .collect();
                let rows: Vec<u32> = (s.q_start..s.q_start + s.q_len).map(|r| r as u32).collect();
                let first = s.ctx_len - s.q_len;
                let mask: Vec<f32> = (0..s.q_len)
                    .flat_map(|i| {
                        (0..s.ctx_len).map(move |j| {
                            if visible(first + i, j) {
                                0.0
                            } else {
                                f32::NEG_INFINITY
                            }
                        })
                    })
                    .collect();
                let any_masked = mask.iter().any(|v| v.is_infinite());
                Ok(PrefillPlan {
                    rows: Tensor::new(rows.as_slice(), device)?,
                    gather: Tensor::new(gather.as_slice(), device)?,
                    q_len: s.q_len,
                    ctx_len: s.ctx_len,
                    mask: if any_masked {
                        Some(Tensor::from_vec(mask, (s.q_len, s.ctx_len), device)?)
                    } else {
                        None
                    },
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            write_index,
            decode,
            prefills,
        })
    }
}

/// `q` is `(tokens, heads, head_dim)`, `k` and `v` `(tokens, kv_heads,
/// head_dim)`, already rotated. Returns `(tokens, heads · head_dim)` in the
/// activation dtype.
#[allow(clippy::too_many_arguments)]
pub fn attend(
    kv: &mut KvCache,
    layer: usize,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    batch: &Batch,
    plan: Option<&TensorPlan>,
    params: &AttentionParams,
    isa: Isa,
) -> Result<Tensor> {
    let (t, nh, hd) = q.dims3()?;
    match kv {
        KvCache::Cpu { shape, layers } => {
            let spans: Vec<SeqSpan<'_>> = batch
                .seqs
                .iter()
                .map(|s| SeqSpan {
                    q_start: s.q_start,
                    q_len: s.q_len,
                    ctx_len: s.ctx_len,
                    block_table: &s.block_table,
                })
                .collect();
            let mut out = vec![0f32; t * nh * hd];
            fn run<E: crate::kernels::gemm::Elem>(
                l: &mut CpuLayer<E>,
                shape: &crate::kernels::attention::KvShape,
                params: &AttentionParams,
                isa: Isa,
                (q, k, v): (&[f32], &[f32], &[f32]),
                slots: &[u32],
                spans: &[SeqSpan<'_>],
                out: &mut [f32],
            ) {
                write_kv(shape, k, v, slots, &mut l.k, &mut l.v);
                paged_attention(isa, shape, params, q, &l.k, &l.v, spans, out);
            }
            with_cpu_f32(q, |qs| {
                with_cpu_f32(k, |ks| {
                    with_cpu_f32(v, |vs| {
                        let io = (qs, ks, vs);
                        let slots = &batch.slots;
                        match layers {
                            CpuLayers::F32(l) => run(
                                &mut l[layer],
                                shape,
                                params,
                                isa,
                                io,
                                slots,
                                &spans,
                                &mut out,
                            ),
                            CpuLayers::F16(l) => run(
                                &mut l[layer],
                                shape,
                                params,
                                isa,
                                io,
                                slots,
                                &spans,
                                &mut out,
                            ),
                            CpuLayers::Bf16(l) => run(
                                &mut l[layer],
                                shape,
                                params,
                                isa,
                                io,
                                slots,
                                &spans,
                                &mut out,
                            ),
                        }
                    })
                })
            })???;
            Tensor::from_vec(out, (t, nh * hd), &Device::Cpu)
        }
        KvCache::Tensors { shape, layers } => {
            let plan = plan.ok_or_else(|| candle_core::Error::Msg("no tensor plan".into()))?;
            let (k_pool, v_pool) = &layers[layer];
            let row = shape.kv_heads * hd;
            k_pool.scatter_set(
                &plan.write_index,
                &k.reshape((t, row))?.to_dtype(k_pool.dtype())?,
                0,
            )?;
            v_pool.scatter_set(
                &plan.write_index,
                &v.reshape((t, row))?.to_dtype(v_pool.dtype())?,
                0,
            )?;
            let groups = nh / shape.kv_heads;
            let mut out = Tensor::zeros((t, nh * hd), q.dtype(), q.device())?;
            let dense = |q: &Tensor,
                         gather: &Tensor,
                         n: usize,
                         len: usize|
             -> Result<(Tensor, Tensor, Tensor)> {
                // q: (n, heads, q_len, hd); keys/values: (n, heads, len, hd), f32.
                let take = |pool: &Tensor| -> Result<Tensor> {
                    let x = pool
                        .index_select(gather, 0)?
                        .reshape((n, len, shape.kv_heads, hd))?
                        .transpose(1, 2)?
                        .to_dtype(DType::F32)?;
                    repeat_kv(&x, groups)?.contiguous()
                };
                Ok((q.to_dtype(DType::F32)?, take(k_pool)?, take(v_pool)?))
            };
            if let Some(d) = &plan.decode {
                let qd = q.index_select(&d.rows, 0)?.reshape((d.n, nh, 1, hd))?;
                let (qd, kd, vd) = dense(&qd, &d.gather, d.n, d.max_ctx)?;
                let scores =
                    (qd.matmul(&kd.t()?)? * f64::from(params.scale))?.broadcast_add(&d.mask)?;
                let probs = candle_nn::ops::softmax_last_dim(&scores)?;
                let o = probs
                    .matmul(&vd)?
                    .reshape((d.n, nh * hd))?
                    .to_dtype(out.dtype())?;
                out = out.index_add(&d.rows, &o, 0)?;
            }
            for p in &plan.prefills {
                let qp = q
                    .index_select(&p.rows, 0)?
                    .transpose(0, 1)?
                    .unsqueeze(0)?
                    .contiguous()?;
                let (qp, kp, vp) = dense(&qp, &p.gather, 1, p.ctx_len)?;
                let mut scores = (qp.matmul(&kp.t()?)? * f64::from(params.scale))?;
                if let Some(mask) = &p.mask {
                    scores = scores.broadcast_add(mask)?;
                }
                let probs = candle_nn::ops::softmax_last_dim(&scores)?;
                let o = probs
                    .matmul(&vp)?
                    .squeeze(0)?
                    .transpose(0, 1)?
                    .reshape((p.q_len, nh * hd))?
                    .to_dtype(out.dtype())?;
                out = out.index_add(&p.rows, &o, 0)?;
            }
            Ok(out)
        }
    }
}

/// `(b, kv_heads, s, d)` → `(b, kv_heads · groups, s, d)`, each KV head
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
