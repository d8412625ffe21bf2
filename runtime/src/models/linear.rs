//! Linear layers in the two forms the engine runs: weights packed for the
//! CPU kernels ([`crate::kernels::gemm`]), or a candle tensor multiplied by
//! candle's matmul (cuBLAS on CUDA).
//!
//! Projections that read the same input are fused at load time (q/k/v into
//! one, gate/up into one), so a step streams each input once and makes one
//! parallel region instead of three.

use std::sync::Arc;

use candle_core::{CpuStorage, DType, Device, Module, Result, Storage, Tensor, quantized::QMatMul};
use half::{bf16, f16};

use crate::{
    checkpoint::LinearWeight,
    kernels::{
        gemm::{PackedMatrix, WeightDType, matmul},
        isa::Isa,
        quant::{QuantMatrix, qmatmul},
    },
};

/// How a loaded model computes: the CPU kernels, or candle ops on the
/// model's device (the CUDA path, and a CPU reference for tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernels {
    Cpu {
        isa: Isa,
        weights: WeightDType,
        /// bf16 weights multiplied by AVX512_BF16's dot product
        /// ([`crate::kernels::gemm::bf16_dot`]: activations rounded to
        /// bf16, twice the f32 FMA kernels' arithmetic rate) instead of
        /// widened to f32 and multiplied by FMA.
        bf16_dot: bool,
    },
    Candle,
}

/// One projection as loaded: its weight and optional bias.
pub type Part = (LinearWeight, Option<Tensor>);

#[derive(Debug)]
pub enum Linear {
    Packed {
        w: PackedMatrix,
        bias: Option<Tensor>,
        isa: Isa,
    },
    Dense(candle_nn::Linear),
    /// GGML blocks multiplied by the CPU kernels.
    Quant {
        w: Arc<QuantMatrix>,
        bias: Option<Tensor>,
        isa: Isa,
    },
    /// GGML blocks multiplied by candle (CUDA's MMQ/MMVQ kernels).
    QMatMul {
        w: QMatMul,
        bias: Option<Tensor>,
    },
    /// Projections that cannot share one matrix (a Q4_K_M file keeps
    /// `attn_v` in Q6_K next to Q4_K `attn_q`): outputs side by side.
    Split(Vec<Linear>),
}

impl Linear {
    /// Builds the layer from `(out, in)` weights stacked along `out` (a
    /// fused projection when there are several) and their optional
    /// biases, in the form `kernels` asks for.
    pub fn fused(parts: Vec<Part>, kernels: Kernels) -> Result<Self> {
        let all_dense = parts
            .iter()
            .all(|(w, _)| matches!(w, LinearWeight::Dense(_)));
        let bias = |parts: &[Part]| -> Result<Option<Tensor>> {
            if parts.iter().all(|(_, b)| b.is_none()) {
                return Ok(None);
            }
            let biases = parts
                .iter()
                .map(|(w, b)| match b {
                    Some(b) => Ok(b.clone()),
                    None => Tensor::zeros(w.rows()?, DType::F32, &Device::Cpu),
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(Some(Tensor::cat(&biases, 0)?))
        };
        if all_dense {
            let weights: Vec<Tensor> = parts
                .iter()
                .map(|(w, _)| match w {
                    LinearWeight::Dense(t) => t.clone(),
                    _ => unreachable!("all dense"),
                })
                .collect();
            let w = if weights.len() == 1 {
                weights[0].clone()
            } else {
                Tensor::cat(&weights, 0)?
            };
            let b = match bias(&parts)? {
                Some(b) => Some(b.to_dtype(w.dtype())?.to_device(w.device())?),
                None => None,
            };
            return match kernels {
                Kernels::Candle => Ok(Self::Dense(candle_nn::Linear::new(w, b))),
                Kernels::Cpu {
                    isa,
                    weights,
                    bf16_dot,
                } => Ok(Self::Packed {
                    w: pack(&w, weights, bf16_dot)?,
                    bias: b.map(|b| b.to_dtype(DType::F32)).transpose()?,
                    isa,
                }),
            };
        }
        let quants: Option<Vec<&QuantMatrix>> = parts
            .iter()
            .map(|(w, _)| match w {
                LinearWeight::Quant(q) => Some(&**q),
                _ => None,
            })
            .collect();
        if let (Some(quants), Kernels::Cpu { isa, .. }) = (quants, kernels) {
            let b = bias(&parts)?.map(|b| b.to_dtype(DType::F32)).transpose()?;
            let w = if let [(LinearWeight::Quant(one), _)] = parts.as_slice() {
                Some(one.clone())
            } else {
                QuantMatrix::concat(&quants).map(Arc::new)
            };
            if let Some(w) = w {
                return Ok(Self::Quant { w, bias: b, isa });
            }
        }
        if parts.len() == 1 {
            let Some((LinearWeight::QTensor(q), b)) = parts.into_iter().next() else {
                candle_core::bail!(
                    "linear: a quantized weight for the CPU kernels needs Kernels::Cpu"
                );
            };
            return Ok(Self::QMatMul {
                w: QMatMul::from_arc(q)?,
                bias: b,
            });
        }
        Ok(Self::Split(
            parts
                .into_iter()
                .map(|p| Self::fused(vec![p], kernels))
                .collect::<Result<_>>()?,
        ))
    }

    pub fn out_features(&self) -> Result<usize> {
        match self {
            Self::Packed { w, .. } => Ok(w.rows()),
            Self::Dense(l) => l.weight().dim(0),
            Self::Quant { w, .. } => Ok(w.rows()),
            Self::QMatMul { w, .. } => match w {
                QMatMul::QTensor(q) => q.shape().dim(0),
                QMatMul::Tensor(t) | QMatMul::TensorF16(t) => t.dim(0),
            },
            Self::Split(parts) => parts.iter().map(|p| p.out_features()).sum(),
        }
    }

    /// Bytes of weight held.
    pub fn bytes(&self) -> usize {
        match self {
            Self::Packed { w, .. } => w.bytes(),
            Self::Dense(l) => l.weight().elem_count() * l.weight().dtype().size_in_bytes(),
            Self::Quant { w, .. } => w.bytes(),
            Self::QMatMul { w, .. } => match w {
                QMatMul::QTensor(q) => q.storage_size_in_bytes(),
                QMatMul::Tensor(t) | QMatMul::TensorF16(t) => {
                    t.elem_count() * t.dtype().size_in_bytes()
                }
            },
            Self::Split(parts) => parts.iter().map(Self::bytes).sum(),
        }
    }

    /// `x` is `(tokens, in)`; returns `(tokens, out)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Dense(l) => l.forward(x),
            Self::Packed { w, bias, isa } => {
                cpu_product(x, w.rows(), w.cols(), bias.as_ref(), |xs, m, y| {
                    matmul(*isa, xs, m, w, y)
                })
            }
            Self::Quant { w, bias, isa } => {
                cpu_product(x, w.rows(), w.cols(), bias.as_ref(), |xs, m, y| {
                    qmatmul(*isa, xs, m, w, y)
                })
            }
            Self::QMatMul { w, bias } => {
                let y = w.forward(&x.to_dtype(DType::F32)?)?.to_dtype(x.dtype())?;
                match bias {
                    Some(b) => y.broadcast_add(&b.to_dtype(y.dtype())?),
                    None => Ok(y),
                }
            }
            Self::Split(parts) => {
                let ys = parts
                    .iter()
                    .map(|p| p.forward(x))
                    .collect::<Result<Vec<_>>>()?;
                Tensor::cat(&ys, 1)
            }
        }
    }
}

/// `x · Wᵀ (+ bias)` for a `rows × cols` weight by a CPU kernel `f(x, m, y)`.
fn cpu_product(
    x: &Tensor,
    rows: usize,
    cols: usize,
    bias: Option<&Tensor>,
    f: impl FnOnce(&[f32], usize, &mut [f32]),
) -> Result<Tensor> {
    let (m, k) = x.dims2()?;
    if k != cols {
        candle_core::bail!("linear: input has {k} features, weight {cols}");
    }
    let mut y = vec![0f32; m * rows];
    with_cpu_f32(x, |xs| f(xs, m, &mut y))?;
    let y = Tensor::from_vec(y, (m, rows), &Device::Cpu)?;
    match bias {
        Some(b) => y.broadcast_add(b),
        None => Ok(y),
    }
}

/// Runs `f` on the contiguous f32 data of a CPU tensor, without a copy.
pub fn with_cpu_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(CpuStorage::F32(data)) = &*storage else {
        candle_core::bail!(
            "expected a CPU f32 tensor, got {:?} on {:?}",
            t.dtype(),
            t.device().location()
        );
    };
    let Some((a, b)) = layout.contiguous_offsets() else {
        candle_core::bail!("expected a contiguous tensor");
    };
    Ok(f(&data[a..b]))
}

/// Packs a 2-D CPU weight tensor into `dtype`, converting from whatever
/// the checkpoint stores (same-dtype packing copies bits exactly); bf16
/// for the dot-product kernel with `bf16_dot`.
pub fn pack(w: &Tensor, dtype: WeightDType, bf16_dot: bool) -> Result<PackedMatrix> {
    let (rows, cols) = w.dims2()?;
    let w = w.contiguous()?;
    let (storage, layout) = w.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        candle_core::bail!("packing needs CPU weights");
    };
    let Some((a, b)) = layout.contiguous_offsets() else {
        candle_core::bail!("packing needs contiguous weights");
    };
    macro_rules! from {
        ($src:expr, $to_f32:expr) => {{
            let src = &$src[a..b];
            match dtype {
                WeightDType::F32 => PackedMatrix::pack(src, rows, cols, |v| $to_f32(v)),
                WeightDType::F16 => {
                    PackedMatrix::pack(src, rows, cols, |v| f16::from_f32($to_f32(v)))
                }
                WeightDType::Bf16 if bf16_dot => {
                    PackedMatrix::pack_bf16_pairs(src, rows, cols, |v| bf16::from_f32($to_f32(v)))
                }
                WeightDType::Bf16 => {
                    PackedMatrix::pack(src, rows, cols, |v| bf16::from_f32($to_f32(v)))
                }
            }
        }};
    }
    Ok(match (cpu, dtype) {
        // Same dtype: bits copied as they are.
        (CpuStorage::F16(s), WeightDType::F16) => PackedMatrix::pack(&s[a..b], rows, cols, |v| v),
        (CpuStorage::BF16(s), WeightDType::Bf16) if bf16_dot => {
            PackedMatrix::pack_bf16_pairs(&s[a..b], rows, cols, |v| v)
        }
        (CpuStorage::BF16(s), WeightDType::Bf16) => PackedMatrix::pack(&s[a..b], rows, cols, |v| v),
        (CpuStorage::F32(s), _) => from!(s, |v: f32| v),
        (CpuStorage::F16(s), _) => from!(s, |v: f16| v.to_f32()),
        (CpuStorage::BF16(s), _) => from!(s, |v: bf16| v.to_f32()),
        (other, _) => candle_core::bail!("cannot pack {:?} weights", other_dtype(other)),
    })
}

fn other_dtype(s: &CpuStorage) -> DType {
    use candle_core::backend::BackendStorage;
    s.dtype()
}
