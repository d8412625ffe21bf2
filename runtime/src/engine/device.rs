//! `--device` / `--dtype` → a candle device and dtype.
//!
//! Kept apart from loading because the choice has operator-visible policy:
//! `auto` silently falls back to CPU (a GPU image on a CPU host still
//! serves), while an explicit `cuda` that cannot be honoured is an error.

use candle_core::{DType, Device};

use crate::cli;

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("--device cuda: cannot open CUDA device 0: {0}")]
    Cuda(String),
}

/// The compute device for `want`. `Auto` picks CUDA device 0 when this
/// build has CUDA support and a GPU answers, else the CPU.
pub fn select_device(want: cli::Device) -> Result<Device, DeviceError> {
    match want {
        cli::Device::Cpu => Ok(Device::Cpu),
        cli::Device::Cuda => Device::new_cuda(0).map_err(|e| DeviceError::Cuda(e.to_string())),
        cli::Device::Auto => Ok(Device::cuda_if_available(0).unwrap_or(Device::Cpu)),
    }
}

/// The dtype weights and activations use. `Auto` keeps the checkpoint's
/// dtype on a GPU (bf16 if the config does not say) and uses f32 on the CPU,
/// where candle's half-precision matmuls are slow and less accurate.
pub fn select_dtype(want: cli::DType, checkpoint: Option<DType>, device: &Device) -> DType {
    match want {
        cli::DType::F32 => DType::F32,
        cli::DType::F16 => DType::F16,
        cli::DType::Bf16 => DType::BF16,
        cli::DType::Auto if device.is_cpu() => DType::F32,
        cli::DType::Auto => checkpoint.unwrap_or(DType::BF16),
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
    fn auto_dtype_is_f32_on_cpu_and_explicit_wins() {
        let cpu = Device::Cpu;
        assert_eq!(
            select_dtype(cli::DType::Auto, Some(DType::BF16), &cpu),
            DType::F32
        );
        assert_eq!(select_dtype(cli::DType::F16, None, &cpu), DType::F16);
        assert!(select_device(cli::Device::Cpu).is_ok_and(|d| d.is_cpu()));
        if !cfg!(feature = "cuda") {
            assert!(select_device(cli::Device::Auto).is_ok_and(|d| d.is_cpu()));
        }
    }
}
