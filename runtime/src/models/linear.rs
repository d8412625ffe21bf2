//! Linear layers in the two forms the engine runs: weights packed for the
//! CPU kernels ([`crate::kernels::gemm`]), or a candle tensor multiplied by
//! candle's matmul (cuBLAS on CUDA).
//!
//! Projections that read the same input are fused at load time (q/k/v into
//! one, gate/up into one), so a step streams each input once and makes one
//! parallel region instead of three.

use candle_core::{CpuStorage, DType, Device, Module, Result, Storage, Tensor};
use half::{bf16, f16};

use crate::kernels::{
    gemm::{PackedMatrix, WeightDType, matmul},
    isa::Isa,
};

/// How a loaded model computes: the CPU kernels, or candle ops on the
/// model's device (the CUDA path, and a CPU reference for tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernels {
    Cpu { isa: Isa, weights: WeightDType },
    Candle,
}

#[derive(Debug)]
pub enum Linear {
    Packed {
        w: PackedMatrix,
        bias: Option<Tensor>,
        isa: Isa,
    },
    Dense(candle_nn::Linear),
}

impl Linear {
    /// Builds the layer from `(out, in)` weight tensors stacked along `out`
    /// (a fused projection when there are several) and their optional
    /// biases, in the form `kernels` asks for.
    pub fn fused(parts: &[(Tensor, Option<Tensor>)], kernels: Kernels) -> Result<Self> {
        let weights: Vec<&Tensor> = parts.iter().map(|(w, _)| w).collect();
        let w = if weights.len() == 1 {
            weights[0].clone()
        } else {
            Tensor::cat(&weights, 0)?
        };
        let bias = if parts.iter().any(|(_, b)| b.is_some()) {
            let biases = parts
                .iter()
                .map(|(w, b)| match b {
                    Some(b) => Ok(b.clone()),
                    None => Tensor::zeros(w.dim(0)?, w.dtype(), w.device()),
                })
                .collect::<Result<Vec<_>>>()?;
            Some(Tensor::cat(&biases, 0)?)
        } else {
            None
        };
        match kernels {
            Kernels::Candle => Ok(Self::Dense(candle_nn::Linear::new(w, bias))),
            Kernels::Cpu { isa, weights } => Ok(Self::Packed {
                w: pack(&w, weights)?,
                bias: bias.map(|b| b.to_dtype(DType::F32)).transpose()?,
                isa,
            }),
        }
    }

    pub fn out_features(&self) -> Result<usize> {
        match self {
            Self::Packed { w, .. } => Ok(w.rows()),
            Self::Dense(l) => l.weight().dim(0),
        }
    }

    /// Bytes of weight held.
    pub fn bytes(&self) -> usize {
        match self {
            Self::Packed { w, .. } => w.bytes(),
            Self::Dense(l) => l.weight().elem_count() * l.weight().dtype().size_in_bytes(),
        }
    }

    /// `x` is `(tokens, in)`; returns `(tokens, out)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Dense(l) => l.forward(x),
            Self::Packed { w, bias, isa } => {
                let (m, k) = x.dims2()?;
                if k != w.cols() {
                    candle_core::bail!("linear: input has {k} features, weight {}", w.cols());
                }
                let mut y = vec![0f32; m * w.rows()];
                with_cpu_f32(x, |xs| matmul(*isa, xs, m, w, &mut y))?;
                let y = Tensor::from_vec(y, (m, w.rows()), &Device::Cpu)?;
                match bias {
                    Some(b) => y.broadcast_add(b),
                    None => Ok(y),
                }
            }
        }
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
/// the checkpoint stores (same-dtype packing copies bits exactly).
pub fn pack(w: &Tensor, dtype: WeightDType) -> Result<PackedMatrix> {
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
                WeightDType::Bf16 => {
                    PackedMatrix::pack(src, rows, cols, |v| bf16::from_f32($to_f32(v)))
                }
            }
        }};
    }
    Ok(match (cpu, dtype) {
        // Same dtype: bits copied as they are.
        (CpuStorage::F16(s), WeightDType::F16) => PackedMatrix::pack(&s[a..b], rows, cols, |v| v),
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
