//! Checkpoint file formats, the bottom of the `models → checkpoint` stack:
//! Hugging Face safetensors directories and GGUF files.
//!
//! The model code asks for tensors by their Hugging Face names
//! (`model.layers.3.self_attn.q_proj.weight`) whatever the file, so one
//! decoder serves both. A GGUF source translates names to llama.cpp's
//! (`blk.3.attn_q.weight`), undoes the q/k row order llama.cpp's converter
//! gives Llama-family rope, and hands projections over still quantized.

pub mod gguf;
pub mod gguf_tokenizer;
pub mod model_dir;
pub mod weights;

use std::sync::Arc;

use candle_core::{DType, Device, Result, Tensor, quantized::QTensor};
use candle_nn::VarBuilder;

use crate::kernels::quant::QuantMatrix;

/// A projection weight `(out, in)` as the checkpoint stores it.
#[derive(Debug, Clone)]
pub enum LinearWeight {
    /// A float tensor on the model device, in the model dtype.
    Dense(Tensor),
    /// GGML blocks for the CPU kernels.
    Quant(Arc<QuantMatrix>),
    /// GGML blocks for candle's quantized matmul (CUDA).
    QTensor(Arc<QTensor>),
}

impl LinearWeight {
    pub fn rows(&self) -> Result<usize> {
        match self {
            Self::Dense(t) => t.dim(0),
            Self::Quant(q) => Ok(q.rows()),
            Self::QTensor(q) => q.shape().dim(0),
        }
    }
}

/// Where the decoder's tensors come from.
pub trait Weights {
    /// A float tensor of `shape` (norms, biases): the model dtype, dense.
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor>;
    /// A projection weight of `(out, in)`.
    fn linear(&self, name: &str, out: usize, inp: usize) -> Result<LinearWeight>;
    /// Whether the checkpoint has `name` (optional tensors: `lm_head`).
    fn contains(&self, name: &str) -> bool;
    fn device(&self) -> &Device;
    fn dtype(&self) -> DType;
}

/// A Hugging Face safetensors checkpoint through candle's `VarBuilder`.
pub struct Safetensors<'a>(pub VarBuilder<'a>);

impl Weights for Safetensors<'_> {
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.0.get(shape, name)
    }
    fn linear(&self, name: &str, out: usize, inp: usize) -> Result<LinearWeight> {
        Ok(LinearWeight::Dense(self.0.get((out, inp), name)?))
    }
    fn contains(&self, name: &str) -> bool {
        self.0.contains_tensor(name)
    }
    fn device(&self) -> &Device {
        self.0.device()
    }
    fn dtype(&self) -> DType {
        self.0.dtype()
    }
}
