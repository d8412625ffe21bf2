//! Provides the files the server needs to start (loader, libc, ...), per `[runtime] base`.

pub mod base;
pub mod host;

use std::path::{Path, PathBuf};

use crate::layers::Entry;
use crate::manifest::Base;

/// A packaged userland file, as recorded for audits.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct UserlandFile {
    pub path: String,
    pub size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub package: Option<String>,
}

/// Layer entries plus what they are, for labels and SBOMs.
#[derive(Debug, Default)]
pub struct Userland {
    pub entries: Vec<Entry>,
    pub files: Vec<UserlandFile>,
    /// Libraries left for the container runtime to inject (the NVIDIA driver's).
    pub skipped: Vec<String>,
    /// Directories the loader must search that only the host's ld.so.conf named.
    pub library_path: Vec<String>,
    /// With `runtime.base = { image = ... }`: the verified base image, whose layers go below
    /// ours and whose rootfs already satisfied the executables' ELF closure.
    pub base: Option<base::BaseImage>,
}

#[derive(Debug, thiserror::Error)]
pub enum UserlandError {
    #[error(transparent)]
    Host(#[from] host::UserlandError),
    #[error(
        "`runtime.base = \"scratch\"` needs a statically linked server, but `{path}` is dynamically \
         linked (it needs the loader `{interpreter}`); use `base = \"host\"` or a static (musl) build"
    )]
    NotStatic { path: PathBuf, interpreter: String },
    #[error("Failed to read `{path}`")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{path}` is not an ELF executable: {message}")]
    NotElf { path: PathBuf, message: String },
    #[error(transparent)]
    Base(#[from] base::BaseError),
}

/// Resolves the userland `executables` need under `base`. With a base image the first
/// executable is checked at the server's image path, any others beside it in `/usr/local/bin`.
pub fn resolve(base: &Base, executables: &[PathBuf]) -> Result<Userland, UserlandError> {
    match base {
        Base::Scratch => {
            for exe in executables {
                if let Some(interpreter) = interpreter_of(exe)? {
                    return Err(UserlandError::NotStatic {
                        path: exe.clone(),
                        interpreter,
                    });
                }
            }
            Ok(Userland::default())
        }
        Base::Host => {
            let closure = host::HostResolver::new("/").resolve(executables)?;
            Ok(from_closure(closure))
        }
        Base::Image { path, digest } => {
            let image = base::BaseImage::open(path, digest)?;
            let placed: Vec<(PathBuf, String)> = executables
                .iter()
                .enumerate()
                .map(|(i, exe)| {
                    let at = match (i, exe.file_name()) {
                        (0, _) | (_, None) => crate::layers::plan::SERVER_PATH.to_string(),
                        (_, Some(name)) => format!("usr/local/bin/{}", name.to_string_lossy()),
                    };
                    (exe.clone(), at)
                })
                .collect();
            let library_path = image.check_closure(&placed)?;
            Ok(Userland {
                library_path,
                base: Some(image),
                ..Userland::default()
            })
        }
    }
}

fn from_closure(closure: host::Closure) -> Userland {
    let mut userland = Userland::default();
    for entry in closure.entries {
        match entry {
            host::ClosureEntry::File {
                path,
                host_path,
                size,
                mode,
                package,
            } => {
                let rel = path.trim_start_matches('/').to_string();
                userland.files.push(UserlandFile {
                    path: path.clone(),
                    size,
                    package: package.map(|p| format!("{}={}", p.name, p.version)),
                });
                // Libraries keep their execute bits but lose any write bit: nothing in the
                // image should be writable by anyone.
                userland
                    .entries
                    .push(Entry::host_file(rel, host_path, size, mode & 0o555));
            }
            host::ClosureEntry::Symlink { path, target } => {
                userland
                    .entries
                    .push(Entry::symlink(path.trim_start_matches('/'), target));
            }
            host::ClosureEntry::Dir { path } => {
                userland
                    .entries
                    .push(Entry::dir(path.trim_start_matches('/'), 0o755, 0, 0));
            }
        }
    }
    userland.skipped = closure.skipped.into_iter().map(|s| s.soname).collect();
    userland.library_path = closure.library_path;
    userland
}

/// The ELF interpreter (`PT_INTERP`) of `path`, or `None` for a static executable.
fn interpreter_of(path: &Path) -> Result<Option<String>, UserlandError> {
    let bytes = std::fs::read(path).map_err(|source| UserlandError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let elf = goblin::elf::Elf::parse(&bytes).map_err(|e| UserlandError::NotElf {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    Ok(elf.interpreter.map(str::to_string))
}
