//! `appliance-launcher`: the entrypoint of CUDA images. Checks that the NVIDIA driver is there,
//! new enough and sees a GPU, then `exec`s `appliance-server` with the same arguments.
//!
//! Why a separate binary: the CUDA server links `libcuda.so.1` dynamically (candle's choice), so
//! in a container started without `--gpus` the loader kills it before `main` with exit 127 and
//! "error while loading shared libraries". This binary has no CUDA linkage, so it can always
//! start and say what is wrong: no driver library, the toolkit's stub instead of the driver, a
//! driver older than the CUDA the server was built with (a host whose driver lagged the image's
//! CUDA by one release otherwise dies in the loader), or no GPU visible.
//!
//! `healthcheck`, `--version` and `--help` skip the GPU checks (they must answer on a busy or
//! GPU-less host) but still need `libcuda.so.1`, without which the server cannot be loaded.

mod driver;
mod marker;

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, ExitCode};

use driver::{Driver, DriverError};

/// Where the server lives in the image, next to the launcher.
const SERVER_NAME: &str = "appliance-server";
const DEFAULT_SERVER: &str = "/usr/local/bin/appliance-server";
const GPU_HINT: &str = "start the container with GPU access: `docker run --gpus all …` (Docker \
     with the NVIDIA Container Toolkit, `nvidia-ctk runtime configure --runtime=docker`), \
     `podman run --device nvidia.com/gpu=all …` (CDI), or on Kubernetes a `nvidia.com/gpu` \
     resource limit";

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let server = server_path();
    let mode = Mode::of(&args);
    if let Err(message) = check(&server, mode) {
        eprintln!("appliance-launcher: error: {message}");
        return ExitCode::from(1);
    }
    let err = Command::new(&server).arg0(&server).args(&args).exec();
    eprintln!(
        "appliance-launcher: error: cannot execute `{}`: {err}",
        server.display()
    );
    ExitCode::from(126)
}

/// `$APPLIANCE_LAUNCHER_SERVER`, else `appliance-server` beside this binary, else the image
/// path (when `/proc` is not mounted, e.g. under a bare chroot).
fn server_path() -> PathBuf {
    if let Some(p) = std::env::var_os("APPLIANCE_LAUNCHER_SERVER") {
        return PathBuf::from(p);
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join(SERVER_NAME)))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SERVER))
}

/// How much the launcher must verify before handing over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// `healthcheck`, `--version`, `--help`: the driver library must load, nothing more.
    PassThrough,
    /// Serving on the CPU: same as pass-through (the loader still needs libcuda).
    Cpu,
    /// `--device cuda`: every check is fatal.
    Cuda,
    /// `--device auto`: problems are reported and the server falls back to the CPU.
    Auto,
}

impl Mode {
    fn of(args: &[OsString]) -> Self {
        let args: Vec<&str> = args.iter().map(|a| a.to_str().unwrap_or("")).collect();
        if matches!(
            args.first(),
            Some(&("healthcheck" | "help" | "--version" | "-V" | "--help" | "-h"))
        ) {
            return Self::PassThrough;
        }
        // The server's own precedence: the last `--device` flag, else APPLIANCE_DEVICE, else auto.
        let mut device = None;
        let mut it = args.iter();
        while let Some(a) = it.next() {
            if *a == "--device" {
                device = it.next().map(|d| d.to_string());
            } else if let Some(d) = a.strip_prefix("--device=") {
                device = Some(d.to_string());
            }
        }
        let device = device
            .or_else(|| std::env::var("APPLIANCE_DEVICE").ok())
            .unwrap_or_else(|| "auto".to_string());
        match device.as_str() {
            "cpu" => Self::Cpu,
            "cuda" => Self::Cuda,
            _ => Self::Auto,
        }
    }
}

fn check(server: &std::path::Path, mode: Mode) -> Result<(), String> {
    let info = marker::read(server)?;
    let Some(cuda) = info.cuda else {
        // A CPU server needs no driver: nothing to check.
        return Ok(());
    };
    let built = format!(
        "appliance-server {} was built with CUDA {} (needs NVIDIA driver >= {})",
        info.version, cuda.version, cuda.min_driver
    );

    let drv = match Driver::open() {
        Ok(d) => d,
        Err(DriverError::NotLoadable(why)) => {
            return Err(format!(
                "the NVIDIA driver library libcuda.so.1 is not available in this container \
                 ({why}); {built}; {GPU_HINT}"
            ));
        }
        Err(e) => return Err(describe(&e, &built)),
    };
    // The loader is satisfied by any libcuda.so.1, even the stub: enough to answer
    // `--version`/`healthcheck` or to serve on the CPU.
    if mode == Mode::PassThrough || mode == Mode::Cpu {
        return Ok(());
    }
    let version = drv.version().map_err(|e| describe(&e, &built))?;

    let fail = |message: String| -> Result<(), String> {
        if mode == Mode::Cuda {
            Err(message)
        } else {
            eprintln!("appliance-launcher: warning: {message}; --device auto will use the CPU");
            Ok(())
        }
    };

    let needed = driver::parse_version(&cuda.version).ok_or_else(|| {
        format!(
            "malformed CUDA version `{}` in the build info",
            cuda.version
        )
    })?;
    if version < needed {
        let module = driver::kernel_module_version()
            .map(|v| format!(" (driver {v})"))
            .unwrap_or_default();
        return fail(format!(
            "the NVIDIA driver is too old: it supports CUDA {}{module}, but {built}. Upgrade the \
             host's driver to {} or newer, or use an image built with CUDA {} or older",
            driver::format_version(version),
            cuda.min_driver,
            driver::format_version(version),
        ));
    }

    if let Err(e) = drv.init() {
        return fail(describe(&e, &built));
    }
    let count = match drv.device_count() {
        Ok(n) => n,
        Err(e) => return fail(describe(&e, &built)),
    };
    if count == 0 {
        return fail(format!(
            "no GPU is visible to the NVIDIA driver (CUDA_ERROR_NO_DEVICE); {GPU_HINT}"
        ));
    }
    let want = cuda
        .compute_cap
        .trim_end_matches(char::is_alphabetic)
        .parse();
    let too_old = match (drv.compute_capability(0), want) {
        (Ok(have), Ok(want)) if have < want => Some((have, want)),
        _ => None,
    };
    if let Some((have, want)) = too_old {
        return fail(format!(
            "GPU 0 has compute capability {}.{}, but the server's kernels were compiled for \
             {}.{} and cannot run on an older GPU; rebuild with CUDA_COMPUTE_CAP={have}",
            have / 10,
            have % 10,
            want / 10,
            want % 10,
        ));
    }
    eprintln!(
        "appliance-launcher: NVIDIA driver supports CUDA {}, {count} GPU(s) visible; starting {}",
        driver::format_version(version),
        server.display()
    );
    Ok(())
}

fn describe(e: &DriverError, built: &str) -> String {
    match e {
        DriverError::NotLoadable(why) => format!("cannot load libcuda.so.1: {why}"),
        DriverError::Call(f, driver::CUDA_ERROR_STUB_LIBRARY, name) => format!(
            "{f} failed with {name}: the libcuda.so.1 found is the CUDA toolkit's link stub, not \
             the NVIDIA driver; remove the stub directory from LD_LIBRARY_PATH and {GPU_HINT}"
        ),
        DriverError::Call(f, driver::CUDA_ERROR_NO_DEVICE, name) => {
            format!("{f} failed with {name}: no GPU is visible; {GPU_HINT}")
        }
        DriverError::Call(f, rc, name) => {
            format!("{f} failed with {name} ({rc}); {built}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(args: &[&str]) -> Mode {
        Mode::of(&args.iter().map(OsString::from).collect::<Vec<_>>())
    }

    #[test]
    fn device_flag_decides_how_strict_the_checks_are() {
        assert_eq!(mode(&["healthcheck"]), Mode::PassThrough);
        assert_eq!(mode(&["--version"]), Mode::PassThrough);
        assert_eq!(mode(&["--device", "cpu"]), Mode::Cpu);
        assert_eq!(mode(&["--device", "cpu", "--device=cuda"]), Mode::Cuda);
        assert_eq!(mode(&["--model", "/m", "--device", "auto"]), Mode::Auto);
    }
}
