//! `--device` / `--dtype` → a candle device and dtype.
//!
//! Kept apart from loading because the choice has operator-visible policy:
//! `auto` falls back to CPU (a GPU image on a CPU host still serves) but says
//! why in a warning, while an explicit `cuda` that cannot be honoured is an
//! error naming the cause: no GPU visible, the toolkit's link stub instead of
//! the driver, or a driver older than the CUDA this binary was built with
//! (the PTX it embeds would not load: candle #1846).

use candle_core::{DType, Device};

use crate::build_info::CudaBuild;

/// `--device`: where the server runs. Defined here, beside the selection it drives, so the
/// engine does not depend on the command line (`cli` re-exports it as `Device`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceChoice {
    /// CUDA when this build supports it and a GPU is present, else CPU
    Auto,
    Cuda,
    Cpu,
}

/// `--dtype`: the weights' dtype in memory (`cli` re-exports it as `DType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DTypeChoice {
    /// The dtype from config.json (`torch_dtype`), adjusted to the device; float16 runs
    /// as bfloat16 on CPUs with AVX512_BF16, whose bf16 products are twice as fast
    Auto,
    F32,
    F16,
    Bf16,
}

const GPU_HINT: &str = "start the container with `--gpus all` (NVIDIA Container Toolkit) \
     and check `NVIDIA_VISIBLE_DEVICES`";

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("--device cuda: this build has no CUDA support (built without the `cuda` feature)")]
    NotBuilt,
    #[error("--device cuda: {0}")]
    Cuda(#[from] CudaUnusable),
}

/// Why CUDA device 0 cannot be used. No `--device` prefix: `auto` logs it
/// as the reason for serving on the CPU.
#[derive(Debug, thiserror::Error)]
pub enum CudaUnusable {
    #[error(
        "the NVIDIA driver is too old: it supports CUDA {driver}, but this server was built with \
         CUDA {built} and needs driver >= {min_driver}"
    )]
    DriverTooOld {
        driver: String,
        built: String,
        min_driver: String,
    },
    #[error("no GPU is visible ({cause}); {GPU_HINT}")]
    NoGpu { cause: String },
    #[error(
        "libcuda.so.1 is the CUDA toolkit's link stub, not the NVIDIA driver ({cause}); {GPU_HINT}"
    )]
    StubDriver { cause: String },
    #[error("cannot open CUDA device 0: {0}")]
    Other(String),
}

/// The compute device for `want`. `Auto` picks CUDA device 0 when this
/// build has CUDA support and a GPU is usable, else the CPU with a warning.
pub fn select_device(want: DeviceChoice) -> Result<Device, DeviceError> {
    match want {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Cuda if !cfg!(feature = "cuda") => Err(DeviceError::NotBuilt),
        DeviceChoice::Cuda => Ok(open_cuda()?),
        DeviceChoice::Auto if !cfg!(feature = "cuda") => Ok(Device::Cpu),
        DeviceChoice::Auto => match open_cuda() {
            Ok(device) => Ok(device),
            Err(e) => {
                tracing::warn!("--device auto: CUDA is not usable, serving on the CPU: {e}");
                Ok(Device::Cpu)
            }
        },
    }
}

/// Never called: both callers check the feature first.
#[cfg(not(feature = "cuda"))]
fn open_cuda() -> Result<Device, CudaUnusable> {
    Err(CudaUnusable::Other("this build has no CUDA support".into()))
}

/// Asks the driver for its CUDA version before candle creates a context:
/// on an old driver, context creation may succeed and the failure would
/// come later, from the first kernel load, as `CUDA_ERROR_UNSUPPORTED_PTX_VERSION`.
#[cfg(feature = "cuda")]
fn open_cuda() -> Result<Device, CudaUnusable> {
    use candle_core::cuda_backend::cudarc::driver::sys;

    let mut version = 0;
    // SAFETY: cuDriverGetVersion writes one int and needs no cuInit.
    let rc = unsafe { sys::cuDriverGetVersion(&mut version) };
    if rc != sys::CUresult::CUDA_SUCCESS {
        return Err(classify(format!("cuDriverGetVersion: {rc:?}")));
    }
    if let Some(built) = crate::build_info::current().ok().and_then(|i| i.cuda) {
        check_driver(version, &built)?;
    }
    Device::new_cuda(0).map_err(|e| classify(e.to_string()))
}

/// Fails when the driver's CUDA version (`cuDriverGetVersion`'s encoding,
/// `1000 * major + 10 * minor`) is older than the one the kernels were built with.
pub fn check_driver(driver: i32, built: &CudaBuild) -> Result<(), CudaUnusable> {
    match cuda_version_code(&built.version) {
        Some(needed) if driver < needed => Err(CudaUnusable::DriverTooOld {
            driver: format!("{}.{}", driver / 1000, (driver % 1000) / 10),
            built: built.version.clone(),
            min_driver: built.min_driver.clone(),
        }),
        _ => Ok(()),
    }
}

/// `"13.0"` → `13000`.
fn cuda_version_code(version: &str) -> Option<i32> {
    let (major, minor) = version.split_once('.')?;
    Some(major.parse::<i32>().ok()? * 1000 + minor.parse::<i32>().ok()? * 10)
}

/// Names the cause from the driver's error code, which candle and cudarc
/// carry only inside their message text (on one line: cudarc's can hold
/// newlines, and this ends up in a one-line log).
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
fn classify(cause: String) -> CudaUnusable {
    let cause = cause.split_whitespace().collect::<Vec<_>>().join(" ");
    if cause.contains("CUDA_ERROR_NO_DEVICE") {
        CudaUnusable::NoGpu { cause }
    } else if cause.contains("CUDA_ERROR_STUB_LIBRARY") {
        CudaUnusable::StubDriver { cause }
    } else {
        CudaUnusable::Other(cause)
    }
}

/// The dtype the weights (and the KV cache) are kept in. `Auto` keeps the
/// checkpoint's dtype: no f32 copy of an f16 checkpoint, so memory is the
/// weight bytes. A config that names no dtype means f32 on the CPU, where
/// it is what transformers loads by default, and bf16 on a GPU.
///
/// One exception, where the CPU kernels have `bf16_dot` (AVX512_BF16): an
/// f16 checkpoint is served as bf16, the same bytes, because there bf16
/// products run at twice the f32 FMA rate that f16 weights are limited to
/// (no x86 CPU short of AVX512-FP16 multiplies f16 natively). vLLM's CPU
/// backend makes the same cast. Models trained in bf16 and exported as f16
/// come back to their own values; `--dtype f16` keeps the f16 weights.
pub fn select_dtype(
    want: DTypeChoice,
    checkpoint: Option<DType>,
    device: &Device,
    bf16_dot: bool,
) -> DType {
    match want {
        DTypeChoice::F32 => DType::F32,
        DTypeChoice::F16 => DType::F16,
        DTypeChoice::Bf16 => DType::BF16,
        DTypeChoice::Auto if device.is_cpu() => match checkpoint {
            Some(DType::F16) if bf16_dot => DType::BF16,
            other => other.unwrap_or(DType::F32),
        },
        DTypeChoice::Auto => checkpoint.unwrap_or(DType::BF16),
    }
}

/// `"cpu"` / `"cuda:0"`, for logs.
pub fn describe(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".to_owned(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_dtype_keeps_the_checkpoint_dtype_but_f16_on_bf16_cpus_and_explicit_wins() {
        let cpu = Device::Cpu;
        for bf16_dot in [false, true] {
            assert_eq!(
                select_dtype(DTypeChoice::Auto, Some(DType::BF16), &cpu, bf16_dot),
                DType::BF16
            );
            assert_eq!(
                select_dtype(DTypeChoice::Auto, None, &cpu, bf16_dot),
                DType::F32
            );
            assert_eq!(
                select_dtype(DTypeChoice::F16, None, &cpu, bf16_dot),
                DType::F16
            );
            assert_eq!(
                select_dtype(DTypeChoice::F16, Some(DType::F16), &cpu, bf16_dot),
                DType::F16
            );
        }
        // f16 checkpoints: kept, unless the CPU multiplies bf16 natively.
        assert_eq!(
            select_dtype(DTypeChoice::Auto, Some(DType::F16), &cpu, false),
            DType::F16
        );
        assert_eq!(
            select_dtype(DTypeChoice::Auto, Some(DType::F16), &cpu, true),
            DType::BF16
        );
        assert!(select_device(DeviceChoice::Cpu).is_ok_and(|d| d.is_cpu()));
        if !cfg!(feature = "cuda") {
            assert!(select_device(DeviceChoice::Auto).is_ok_and(|d| d.is_cpu()));
            assert!(matches!(
                select_device(DeviceChoice::Cuda),
                Err(DeviceError::NotBuilt)
            ));
        }
    }

    #[test]
    fn a_driver_older_than_the_build_is_refused_with_both_versions() {
        let built = CudaBuild {
            version: "13.0".into(),
            compute_cap: "80".into(),
            min_driver: "580.65.06".into(),
        };
        let err = check_driver(12040, &built).unwrap_err().to_string();
        assert!(err.contains("CUDA 12.4"), "{err}");
        assert!(err.contains("CUDA 13.0"), "{err}");
        assert!(err.contains(">= 580.65.06"), "{err}");
        assert!(check_driver(13000, &built).is_ok());
        assert!(check_driver(13020, &built).is_ok());
    }

    #[test]
    fn driver_error_codes_name_the_cause() {
        let no_gpu =
            classify("DriverError(CUDA_ERROR_NO_DEVICE, \"no CUDA-capable device\")".into());
        assert!(matches!(no_gpu, CudaUnusable::NoGpu { .. }));
        assert!(no_gpu.to_string().contains("--gpus all"));
        let stub = classify("cuDriverGetVersion: CUDA_ERROR_STUB_LIBRARY".into());
        assert!(stub.to_string().contains("link stub"), "{stub}");
        assert!(matches!(classify("other".into()), CudaUnusable::Other(_)));
        // What `--device cuda` prints: the flag, then the cause.
        let err = DeviceError::from(classify("CUDA_ERROR_NO_DEVICE\n)".into())).to_string();
        assert!(err.starts_with("--device cuda: no GPU is visible"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }
}
