//! Label keys the builder owns; a manifest may not set them. A leaf module: the manifest
//! (which refuses them), the image (which writes them) and `inspect`/`verify` (which read them)
//! all depend on it, and it on nothing.

pub const PREFIX: &str = "appliance.";
pub const BUILDER_VERSION: &str = "appliance.builder.version";
pub const MODEL_NAME: &str = "appliance.model.name";
pub const MODEL_PATH: &str = "appliance.model.path";
pub const MODEL_SOURCE: &str = "appliance.model.source";
pub const MODEL_REVISION: &str = "appliance.model.revision";
/// JSON array of `{path, sha256, size}`.
pub const MODEL_FILES: &str = "appliance.model.files";
/// sha256 of the `sha256sum`-style listing of the model files (see `files_digest`).
pub const MODEL_FILES_SHA256: &str = "appliance.model.files.sha256";
pub const MODEL_SYNTHETIC: &str = "appliance.model.synthetic";
/// `gguf` or `safetensors`: the weights the server loads.
pub const MODEL_FORMAT: &str = "appliance.model.format";
/// `general.architecture` of a GGUF file, `model_type` of config.json (`llama`, `qwen2`).
pub const MODEL_ARCHITECTURE: &str = "appliance.model.architecture";
/// llama.cpp's file type name (`Q4_K_M`), or the safetensors dtype (`BF16`).
pub const MODEL_QUANTIZATION: &str = "appliance.model.quantization";
pub const SERVER_VERSION: &str = "appliance.server.version";
pub const SERVER_FEATURES: &str = "appliance.server.features";
pub const SERVER_SHA256: &str = "appliance.server.sha256";
pub const SERVER_TARGET: &str = "appliance.server.target";
pub const SERVER_DEVICE: &str = "appliance.server.device";
pub const USERLAND: &str = "appliance.runtime.base";
/// CUDA images only: the toolkit the server was built with, the compute capability its
/// kernels target (`CUDA_COMPUTE_CAP`), and the oldest NVIDIA driver that runs them.
pub const CUDA_VERSION: &str = "appliance.cuda.version";
pub const CUDA_COMPUTE_CAPS: &str = "appliance.cuda.compute_capabilities";
pub const CUDA_MIN_DRIVER: &str = "appliance.cuda.min_driver";
