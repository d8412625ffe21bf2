//! Asks the NVIDIA driver, through a dlopen'ed `libcuda.so.1`, what it supports and what it sees.
//!
//! Only the driver API's version/init/count/attribute calls are used: each is stable since
//! CUDA 2.x with the same ABI, so one launcher works with every driver the toolkit injects.

use std::ffi::{CStr, c_char, c_int, c_uint};

use libloading::{Library, Symbol};

/// `CUresult` values the launcher explains; names from `cuda.h`.
pub const CUDA_ERROR_STUB_LIBRARY: c_int = 34;
pub const CUDA_ERROR_NO_DEVICE: c_int = 100;
const ATTR_CC_MAJOR: c_int = 75;
const ATTR_CC_MINOR: c_int = 76;

/// Why the driver could not be used.
#[derive(Debug)]
pub enum DriverError {
    /// `libcuda.so.1` could not be loaded at all.
    NotLoadable(String),
    /// A driver call failed: (function, CUresult).
    Call(&'static str, c_int, String),
}

pub struct Driver {
    lib: Library,
}

type FnInt = unsafe extern "C" fn(*mut c_int) -> c_int;
type FnInit = unsafe extern "C" fn(c_uint) -> c_int;
type FnAttr = unsafe extern "C" fn(*mut c_int, c_int, c_int) -> c_int;
type FnErrName = unsafe extern "C" fn(c_int, *mut *const c_char) -> c_int;

impl Driver {
    /// Loads the driver the way the CUDA server's loader will: by soname, through the normal
    /// search (LD_LIBRARY_PATH, the binary's RUNPATH is not involved, then ld.so.cache / default
    /// dirs), which is where the NVIDIA Container Toolkit places it.
    pub fn open() -> Result<Self, DriverError> {
        // SAFETY: libcuda's initialisers are the driver's own; loading it is what the server
        // would do anyway.
        let lib = unsafe { Library::new("libcuda.so.1") }.map_err(|e| {
            // libloading's Display is just "dlopen failed"; dlerror's text is the source.
            let why =
                std::error::Error::source(&e).map_or_else(|| e.to_string(), |s| s.to_string());
            DriverError::NotLoadable(why)
        })?;
        Ok(Self { lib })
    }

    fn sym<T>(&self, name: &'static str) -> Result<Symbol<'_, T>, DriverError> {
        // SAFETY: the signatures above match cuda.h for these symbols.
        unsafe { self.lib.get::<T>(name.as_bytes()) }
            .map_err(|e| DriverError::Call(name, -1, format!("symbol missing: {e}")))
    }

    fn check(&self, name: &'static str, rc: c_int) -> Result<(), DriverError> {
        if rc == 0 {
            Ok(())
        } else {
            Err(DriverError::Call(name, rc, self.error_name(rc)))
        }
    }

    /// The CUDA version the driver supports, as `1000 * major + 10 * minor`. Valid before
    /// `cuInit`, and even when no GPU is visible.
    pub fn version(&self) -> Result<c_int, DriverError> {
        let f = self.sym::<FnInt>("cuDriverGetVersion")?;
        let mut v = 0;
        // SAFETY: writes one int.
        self.check("cuDriverGetVersion", unsafe { f(&mut v) })?;
        Ok(v)
    }

    pub fn init(&self) -> Result<(), DriverError> {
        let f = self.sym::<FnInit>("cuInit")?;
        // SAFETY: flags must be 0.
        self.check("cuInit", unsafe { f(0) })
    }

    pub fn device_count(&self) -> Result<c_int, DriverError> {
        let f = self.sym::<FnInt>("cuDeviceGetCount")?;
        let mut n = 0;
        // SAFETY: writes one int.
        self.check("cuDeviceGetCount", unsafe { f(&mut n) })?;
        Ok(n)
    }

    /// Compute capability of `device` as `10 * major + minor` (`80`, `90`).
    pub fn compute_capability(&self, device: c_int) -> Result<c_int, DriverError> {
        let f = self.sym::<FnAttr>("cuDeviceGetAttribute")?;
        let (mut major, mut minor) = (0, 0);
        // SAFETY: writes one int each.
        self.check("cuDeviceGetAttribute", unsafe {
            f(&mut major, ATTR_CC_MAJOR, device)
        })?;
        self.check("cuDeviceGetAttribute", unsafe {
            f(&mut minor, ATTR_CC_MINOR, device)
        })?;
        Ok(10 * major + minor)
    }

    /// `cuGetErrorName`, falling back to a table for drivers (and stubs) that cannot say.
    fn error_name(&self, rc: c_int) -> String {
        if let Ok(f) = self.sym::<FnErrName>("cuGetErrorName") {
            let mut p: *const c_char = std::ptr::null();
            // SAFETY: on success the driver returns a static NUL-terminated string.
            if unsafe { f(rc, &mut p) } == 0 && !p.is_null() {
                return unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned();
            }
        }
        known_error_name(rc).to_owned()
    }
}

fn known_error_name(rc: c_int) -> &'static str {
    match rc {
        3 => "CUDA_ERROR_NOT_INITIALIZED",
        34 => "CUDA_ERROR_STUB_LIBRARY",
        35 => "CUDA_ERROR_INSUFFICIENT_DRIVER",
        46 => "CUDA_ERROR_DEVICES_UNAVAILABLE",
        100 => "CUDA_ERROR_NO_DEVICE",
        101 => "CUDA_ERROR_INVALID_DEVICE",
        222 => "CUDA_ERROR_UNSUPPORTED_PTX_VERSION",
        803 => "CUDA_ERROR_SYSTEM_DRIVER_MISMATCH",
        804 => "CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE",
        999 => "CUDA_ERROR_UNKNOWN",
        _ => "unknown CUresult",
    }
}

/// `13000` → `"13.0"`.
pub fn format_version(v: c_int) -> String {
    format!("{}.{}", v / 1000, (v % 1000) / 10)
}

/// `"13.0"` → `13000`, the encoding `cuDriverGetVersion` uses.
pub fn parse_version(s: &str) -> Option<c_int> {
    let (major, minor) = s.split_once('.')?;
    let minor = minor.split('.').next()?;
    Some(major.parse::<c_int>().ok()? * 1000 + minor.parse::<c_int>().ok()? * 10)
}

/// The kernel module's version line, e.g. `550.54.14`, when the host exposes it: only for the
/// message, since the driver API reports the CUDA version, not the driver's own number.
pub fn kernel_module_version() -> Option<String> {
    let text = std::fs::read_to_string("/proc/driver/nvidia/version").ok()?;
    let line = text.lines().find(|l| l.starts_with("NVRM version"))?;
    line.split_whitespace()
        .find(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()) && w.contains('.'))
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_round_trip_in_the_driver_encoding() {
        assert_eq!(parse_version("13.0"), Some(13000));
        assert_eq!(parse_version("12.4"), Some(12040));
        assert_eq!(parse_version("12.10"), Some(12100));
        assert_eq!(parse_version("13"), None);
        assert_eq!(format_version(12040), "12.4");
        assert_eq!(format_version(13000), "13.0");
    }
}
