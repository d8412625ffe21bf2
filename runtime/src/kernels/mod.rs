//! Hand-written CPU kernels for what candle 0.11 does slowly on the CPU:
//! products with packed half-precision weights at the memory wall
//! ([`gemm`]) and attention over the paged KV pool ([`attention`]).
//! Everything else (norms, RoPE, elementwise) stays on candle's ops.
//!
//! The SIMD paths are chosen at run time ([`isa::Isa::best`]); each has a
//! portable twin that the tests compare it against.

pub mod activation;
pub mod aligned;
pub mod attention;
pub mod gemm;
pub mod isa;
pub mod quant;
