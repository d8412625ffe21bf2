//! GGUF, the file format of llama.cpp and Ollama, as the builder needs it.
//!
//! A separate crate so that the quantizers are compiled optimised even in the dev profile (the
//! workspace gives every non-root package opt-level 3): the integration tests quantize whole
//! checkpoints through a debug `appliance`.
//!
//! - [`read`]: the header (metadata and tensor infos) of a GGUF file, checked against the file's
//!   size, for labels, the SBOM and build-time errors that name the file and the field;
//! - [`quant`]: ports of llama.cpp's reference quantizers, so that our files hold the bytes
//!   `llama-quantize` (without an importance matrix) would write;
//! - [`write`]: a streaming writer, one tensor in memory at a time;
//! - [`convert`]: a Hugging Face safetensors checkpoint to one quantized GGUF file.

pub mod convert;
pub mod quant;
pub mod read;
mod vocab;
pub mod write;
