//! Resolves, on the build host, the complete runtime file closure of ELF executables
//! (dynamic loader, every `DT_NEEDED` library, every symlink on the way) so that a
//! scratch-based image can run them without a distro base image ("host" userland).
//!
//! Why static analysis instead of `ldd`: `ldd` runs the binary's loader, which executes
//! code from the binary, fails outright for CUDA builds the build host cannot load, and
//! lets the build host's `LD_LIBRARY_PATH` leak into the result. Instead the ELF
//! headers are read with `goblin` (only the headers, dynamic segment and string table,
//! never whole multi-hundred-MB CUDA libraries) and the glibc loader's search order is
//! replayed: `DT_RPATH` chain (only for objects without `DT_RUNPATH`), `DT_RUNPATH`,
//! the directories of `/etc/ld.so.conf` (standing in for `ld.so.cache`), then the
//! default directories. `LD_LIBRARY_PATH` is deliberately ignored.
//!
//! Paths are resolved hop by hop so the image reproduces every symlink the loader will
//! traverse (`/lib64 -> usr/lib64`, `libstdc++.so.6 -> libstdc++.so.6.0.30`), whether
//! the host is merged-usr or not. All paths are interpreted under a root prefix (`/`
//! normally) with chroot semantics, so the resolver can also audit an assembled rootfs.
//! `$ORIGIN` of an executable is taken from its location under that root; callers that
//! place an executable elsewhere in the image must keep `$ORIGIN`-relative libs aligned.
//!
//! The pieces: `elf` reads the headers the loader consults, `root` walks paths under
//! the root, `session` replays the loader for each executable, `search` holds the
//! loader's search order (RPATH/RUNPATH, `$ORIGIN`, `ld.so.conf`, default dirs), and
//! `dpkg` attributes the resulting files to packages.

mod dpkg;
mod elf;
mod root;
mod search;
mod session;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use serde::Serialize;

use root::io_err;
use session::Session;

const DRIVER_REASON: &str =
    "NVIDIA driver library, injected at run time by the NVIDIA Container Toolkit";

/// Finds the runtime closure of executables under a filesystem root.
#[derive(Debug, Clone)]
pub struct HostResolver {
    root: PathBuf,
}

/// What the image needs so the executables can be loaded: sorted by path, unique.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Closure {
    pub entries: Vec<ClosureEntry>,
    pub skipped: Vec<SkippedLibrary>,
    /// Directories some library was found in only through `/etc/ld.so.conf` (the host's
    /// `ld.so.cache`). The image has no cache, so its loader finds those libraries only
    /// if the image sets `LD_LIBRARY_PATH` to these, in this order. Usually empty.
    pub library_path: Vec<String>,
}

/// One image path. `Dir` is emitted for every ancestor of a `File`/`Symlink` so the
/// layer creates real directories (e.g. `/usr/lib64` before `/lib64 -> usr/lib64` is
/// followed) instead of relying on the tar reader to invent them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ClosureEntry {
    File {
        path: String,
        host_path: PathBuf,
        size: u64,
        mode: u32,
        package: Option<PackageRef>,
    },
    Symlink {
        path: String,
        target: String,
    },
    Dir {
        path: String,
    },
}

impl ClosureEntry {
    pub fn path(&self) -> &str {
        match self {
            Self::File { path, .. } | Self::Symlink { path, .. } | Self::Dir { path } => path,
        }
    }
}

/// The Debian package owning a file, for the image's software bill of materials.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct PackageRef {
    pub name: String,
    pub version: String,
    pub arch: String,
}

/// A `DT_NEEDED` entry deliberately left out of the image.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct SkippedLibrary {
    pub soname: String,
    pub needed_by: String,
    pub reason: &'static str,
}

#[derive(Debug, thiserror::Error)]
pub enum UserlandError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("executable path {path} is not absolute")]
    RelativeExecutable { path: PathBuf },
    #[error("path {path} is not valid UTF-8, which image paths must be")]
    NonUtf8 { path: PathBuf },
    #[error("{path} does not exist")]
    Missing { path: String },
    #[error("{path} is not an ELF file")]
    NotElf { path: String },
    #[error("{path} is a malformed ELF file: {reason}")]
    Malformed { path: String, reason: String },
    #[error("too many levels of symbolic links resolving {path}")]
    SymlinkLoop { path: String },
    #[error("interpreter {interpreter} of {executable} does not exist")]
    MissingInterpreter {
        interpreter: String,
        executable: String,
    },
    #[error("library {library} needed by {needed_by} not found; searched: {}", .searched.join(":"))]
    LibraryNotFound {
        library: String,
        needed_by: String,
        searched: Vec<String>,
    },
    #[error(
        "library {library} needed by {needed_by} is a relative path the loader would resolve against its working directory"
    )]
    RelativeNeeded { library: String, needed_by: String },
}

/// True for driver libraries the NVIDIA Container Toolkit bind-mounts from the node:
/// a packed copy would shadow the node's driver and break on any version mismatch.
pub fn is_injected_driver_library(soname: &str) -> bool {
    let base = soname.rsplit('/').next().unwrap_or(soname);
    ["libcuda.so", "libcudadebugger.so", "libnvcuvid.so"]
        .iter()
        .any(|prefix| base.starts_with(prefix))
        || (base.starts_with("libnvidia-") && base.contains(".so"))
}

impl HostResolver {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// `executables` are absolute paths under the root (host paths when the root is
    /// `/`); returns the closure including the interpreter, excluding the executables.
    pub fn resolve(&self, executables: &[PathBuf]) -> Result<Closure, UserlandError> {
        let mut conf_dirs = Vec::new();
        self.parse_ld_so_conf("/etc/ld.so.conf", 0, &mut conf_dirs)?;
        let mut session = Session {
            resolver: self,
            conf_dirs,
            elves: HashMap::new(),
            cache_hits: BTreeSet::new(),
            files: BTreeSet::new(),
            links: BTreeMap::new(),
            skipped: BTreeSet::new(),
        };
        let mut exe_reals = Vec::new();
        for exe in executables {
            exe_reals.push(session.load_executable(exe)?);
        }
        for real in &exe_reals {
            session.files.remove(real);
        }
        let packages = self.dpkg_owners(&session.files)?;
        let mut entries = BTreeMap::new();
        for path in session.files {
            let host_path = self.host(&path);
            let meta = fs::metadata(&host_path).map_err(io_err(&host_path))?;
            let package = packages.get(&path).cloned();
            let (size, mode) = (meta.len(), meta.permissions().mode() & 0o7777);
            entries.insert(
                path.clone(),
                ClosureEntry::File {
                    path,
                    host_path,
                    size,
                    mode,
                    package,
                },
            );
        }
        for (path, target) in session.links {
            entries.insert(path.clone(), ClosureEntry::Symlink { path, target });
        }
        let dirs: BTreeSet<String> = entries
            .keys()
            .flat_map(|p| p.match_indices('/').skip(1).map(|(i, _)| p[..i].to_owned()))
            .collect();
        for path in dirs {
            entries
                .entry(path.clone())
                .or_insert(ClosureEntry::Dir { path });
        }
        let conf_dirs = &session.conf_dirs;
        Ok(Closure {
            entries: entries.into_values().collect(),
            skipped: session.skipped.into_iter().collect(),
            library_path: session
                .cache_hits
                .iter()
                .map(|&i| conf_dirs[i].clone())
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests;
