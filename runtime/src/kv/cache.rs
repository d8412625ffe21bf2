//! The KV pool's memory: one K and one V buffer per layer, allocated once,
//! addressed by slot (`block · block_size + offset`).
//!
//! Two forms, one per attention implementation:
//! - [`KvCache::Cpu`]: aligned buffers in the model dtype, laid out for the
//!   CPU kernels (see `kernels::attention`). Every page is touched at
//!   allocation, so the pool is resident from the start: a machine or
//!   container without the memory fails at startup, not under load.
//! - [`KvCache::Tensors`]: candle tensors `(slots, kv_heads · head_dim)` on
//!   any device (CUDA), for the candle-ops attention.

use candle_core::{DType, Device, Tensor};
use half::{bf16, f16};

use crate::kernels::{
    aligned::{AlignedVec, Pod},
    attention::KvShape,
    gemm::WeightDType,
};

/// One layer's K and V for the CPU kernels.
#[derive(Debug)]
pub struct CpuLayer<E: Pod> {
    pub k: AlignedVec<E>,
    pub v: AlignedVec<E>,
}

impl<E: Pod> CpuLayer<E> {
    fn new(shape: &KvShape) -> Self {
        let mut layer = Self {
            k: AlignedVec::zeroed(shape.elems()),
            v: AlignedVec::zeroed(shape.elems()),
        };
        touch(&mut layer.k);
        touch(&mut layer.v);
        layer
    }
}

/// Writes one element per page so the kernel backs the whole buffer now.
/// Volatile: the compiler knows the memory is already zero and would drop
/// plain zero stores. Large buffers are mapped with transparent huge pages
/// offered (`AlignedVec`): a 4 GiB pool is then 2048 page faults instead of
/// a million (measured here: 10.7 s with 4 KiB pages).
fn touch<E: Pod>(buf: &mut [E]) {
    let step = (4096 / size_of::<E>().max(1)).max(1);
    let base = buf.as_mut_ptr();
    for i in (0..buf.len()).step_by(step) {
        // SAFETY: `i < len`; the value written is the zero already there.
        unsafe { std::ptr::write_volatile(base.add(i), std::ptr::read(base.add(i))) };
    }
}

/// The CPU pool, in the dtype of the model's weights.
#[derive(Debug)]
pub enum CpuLayers {
    F32(Vec<CpuLayer<f32>>),
    F16(Vec<CpuLayer<f16>>),
    Bf16(Vec<CpuLayer<bf16>>),
}

#[derive(Debug)]
pub enum KvCache {
    Cpu {
        shape: KvShape,
        layers: CpuLayers,
    },
    Tensors {
        shape: KvShape,
        layers: Vec<(Tensor, Tensor)>,
    },
}

impl KvCache {
    /// A CPU pool of `shape` for `num_layers` layers.
    pub fn cpu(shape: KvShape, num_layers: usize, dtype: WeightDType) -> Self {
        let layers = match dtype {
            WeightDType::F32 => {
                CpuLayers::F32((0..num_layers).map(|_| CpuLayer::new(&shape)).collect())
            }
            WeightDType::F16 => {
                CpuLayers::F16((0..num_layers).map(|_| CpuLayer::new(&shape)).collect())
            }
            WeightDType::Bf16 => {
                CpuLayers::Bf16((0..num_layers).map(|_| CpuLayer::new(&shape)).collect())
            }
        };
        Self::Cpu { shape, layers }
    }

    /// A pool of candle tensors on `device`.
    pub fn tensors(
        shape: KvShape,
        num_layers: usize,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Self> {
        let slots = shape.num_blocks * shape.block_size;
        let layers = (0..num_layers)
            .map(|_| {
                let row = shape.kv_heads * shape.head_dim;
                let k = Tensor::zeros((slots, row), dtype, device)?;
                let v = Tensor::zeros((slots, row), dtype, device)?;
                Ok((k, v))
            })
            .collect::<candle_core::Result<_>>()?;
        Ok(Self::Tensors { shape, layers })
    }

    pub fn shape(&self) -> &KvShape {
        match self {
            Self::Cpu { shape, .. } | Self::Tensors { shape, .. } => shape,
        }
    }

    /// Bytes of K and V across all layers.
    pub fn bytes(&self) -> u64 {
        match self {
            Self::Cpu { layers, .. } => match layers {
                CpuLayers::F32(l) => l.iter().map(|l| (l.k.bytes() + l.v.bytes()) as u64).sum(),
                CpuLayers::F16(l) => l.iter().map(|l| (l.k.bytes() + l.v.bytes()) as u64).sum(),
                CpuLayers::Bf16(l) => l.iter().map(|l| (l.k.bytes() + l.v.bytes()) as u64).sum(),
            },
            Self::Tensors { layers, .. } => layers
                .iter()
                .map(|(k, v)| {
                    (k.elem_count() * k.dtype().size_in_bytes()
                        + v.elem_count() * v.dtype().size_in_bytes()) as u64
                })
                .sum(),
        }
    }
}
