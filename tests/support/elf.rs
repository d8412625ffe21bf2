//! Proves an unpacked image rootfs can load its own programs: every ELF's interpreter and every
//! `DT_NEEDED` library resolves inside the rootfs, as the image's glibc loader would find it.
//!
//! Deliberately independent of the builder's resolver (`src/userland/host`): a test that checks
//! the builder with the builder's own code could not fail. This one reimplements the loader's
//! search from the glibc manual in ~150 lines: `$ORIGIN`-expanded `DT_RPATH` (only when there is
//! no `DT_RUNPATH`), `LD_LIBRARY_PATH` (from the image's Env), `DT_RUNPATH`, the rootfs's
//! `/etc/ld.so.conf` (with `include` globs), then the default directories (Debian multiarch,
//! `lib64`, `lib`). Paths are resolved under the rootfs with chroot semantics, so absolute
//! symlinks (`/lib64/ld-linux-x86-64.so.2 -> /lib/...`) are followed inside it.
//!
//! The NVIDIA driver libraries (`libcuda.so*`, `libnvidia-*`) are never required: the NVIDIA
//! Container Toolkit injects them at run time.
//!
//! Use: `let checked = assert_rootfs_loads(&unpacked.rootfs, &image_env);` — panics listing every
//! unresolved library; returns the ELF files it checked (so callers can assert it saw the
//! server). Offered to every test that unpacks an image (host, base-image and CUDA userlands).

use std::collections::BTreeSet;
use std::fs;
use std::path::{Component, Path, PathBuf};

/// Driver libraries the container runtime injects; never expected inside the image.
pub fn is_injected_driver_library(name: &str) -> bool {
    name.starts_with("libcuda.so")
        || name.starts_with("libcudadebugger.so")
        || name.starts_with("libnvcuvid.so")
        || (name.starts_with("libnvidia-") && name.contains(".so"))
}

/// One library (or interpreter) an ELF in the rootfs needs and the rootfs lacks.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Unresolved {
    /// The ELF's path in the image (`/usr/local/bin/appliance-server`).
    pub elf: String,
    pub needed: String,
}

/// Checks every ELF under `rootfs`; `env` is the image's Env (`KEY=value`), for
/// `LD_LIBRARY_PATH`. Returns the image paths of the dynamic ELFs checked, and what failed.
pub fn check_rootfs(rootfs: &Path, env: &[String]) -> (Vec<String>, Vec<Unresolved>) {
    let ld_library_path: Vec<String> = env
        .iter()
        .filter_map(|v| v.strip_prefix("LD_LIBRARY_PATH="))
        .flat_map(|v| v.split(':').filter(|d| !d.is_empty()).map(str::to_string))
        .collect();
    let mut conf = Vec::new();
    ld_so_conf(rootfs, "/etc/ld.so.conf", 0, &mut conf);
    let default_dirs = [
        "/lib/x86_64-linux-gnu",
        "/usr/lib/x86_64-linux-gnu",
        "/lib/aarch64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
        "/lib64",
        "/usr/lib64",
        "/lib",
        "/usr/lib",
    ];
    let mut checked = Vec::new();
    let mut unresolved = BTreeSet::new();
    for file in walk(rootfs) {
        if elf_class(&file).is_none() {
            continue;
        }
        let Ok(bytes) = fs::read(&file) else { continue };
        let Ok(elf) = goblin::elf::Elf::parse(&bytes) else {
            continue;
        };
        let image_path = format!("/{}", file.strip_prefix(rootfs).unwrap().display());
        if elf.interpreter.is_none() && elf.libraries.is_empty() {
            continue; // static
        }
        checked.push(image_path.clone());
        let origin = Path::new(&image_path)
            .parent()
            .unwrap_or(Path::new("/"))
            .to_string_lossy()
            .into_owned();
        let expand = |list: &[&str]| -> Vec<String> {
            list.iter()
                .flat_map(|l| l.split(':'))
                .filter(|d| !d.is_empty())
                .map(|d| d.replace("${ORIGIN}", &origin).replace("$ORIGIN", &origin))
                .collect()
        };
        let mut dirs = Vec::new();
        if elf.runpaths.is_empty() {
            dirs.extend(expand(&elf.rpaths));
        }
        dirs.extend(ld_library_path.iter().cloned());
        dirs.extend(expand(&elf.runpaths));
        dirs.extend(conf.iter().cloned());
        dirs.extend(default_dirs.iter().map(|d| d.to_string()));

        if let Some(interp) = elf.interpreter
            && !resolve(rootfs, interp).is_some_and(|p| is_elf(&p, elf.is_64))
        {
            unresolved.insert(Unresolved {
                elf: image_path.clone(),
                needed: interp.to_string(),
            });
        }
        for needed in &elf.libraries {
            if is_injected_driver_library(needed) {
                continue;
            }
            let found = if needed.contains('/') {
                resolve(rootfs, needed).is_some_and(|p| is_elf(&p, elf.is_64))
            } else {
                dirs.iter().any(|d| {
                    resolve(rootfs, &format!("{d}/{needed}")).is_some_and(|p| is_elf(&p, elf.is_64))
                })
            };
            if !found {
                unresolved.insert(Unresolved {
                    elf: image_path.clone(),
                    needed: needed.to_string(),
                });
            }
        }
    }
    checked.sort();
    (checked, unresolved.into_iter().collect())
}

/// [`check_rootfs`], panicking with every unresolved library; returns the ELFs checked.
pub fn assert_rootfs_loads(rootfs: &Path, env: &[String]) -> Vec<String> {
    let (checked, unresolved) = check_rootfs(rootfs, env);
    assert!(
        unresolved.is_empty(),
        "{} of the image's libraries are missing from {}:\n{}",
        unresolved.len(),
        rootfs.display(),
        unresolved
            .iter()
            .map(|u| format!("  {} needs {}", u.elf, u.needed))
            .collect::<Vec<_>>()
            .join("\n")
    );
    checked
}

/// Regular files under `root`, not following symlinks, sorted.
fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_file() {
                out.push(entry.path());
            }
        }
    }
    out.sort();
    out
}

fn is_elf(path: &Path, is_64: bool) -> bool {
    // EI_CLASS: 1 = 32-bit, 2 = 64-bit; the loader skips a library of the wrong class.
    elf_class(path) == Some(if is_64 { 2 } else { 1 })
}

/// EI_CLASS of an ELF file, from its first five bytes (never the whole file: CUDA libraries
/// are hundreds of MB); `None` for anything else.
fn elf_class(path: &Path) -> Option<u8> {
    let mut head = [0u8; 5];
    let mut file = fs::File::open(path).ok()?;
    std::io::Read::read_exact(&mut file, &mut head).ok()?;
    head.starts_with(b"\x7fELF").then_some(head[4])
}

/// `path` (absolute, in the image) resolved under `root` as if `root` were `/`: every symlink
/// on the way is followed, absolute targets re-rooted, `..` never leaving the root. `None`
/// when something on the way is missing or the links loop.
pub fn resolve(root: &Path, path: &str) -> Option<PathBuf> {
    let mut pending: Vec<String> = components(path).into_iter().rev().collect();
    let mut current: Vec<String> = Vec::new();
    let mut hops = 0;
    while let Some(part) = pending.pop() {
        if part == ".." {
            current.pop();
            continue;
        }
        let candidate = root.join(current.iter().chain([&part]).collect::<PathBuf>());
        let meta = fs::symlink_metadata(&candidate).ok()?;
        if meta.file_type().is_symlink() {
            hops += 1;
            if hops > 40 {
                return None;
            }
            let target = fs::read_link(&candidate).ok()?;
            let target = target.to_string_lossy();
            if target.starts_with('/') {
                current.clear();
            }
            pending.extend(components(&target).into_iter().rev());
        } else {
            current.push(part);
        }
    }
    let full = root.join(current.iter().collect::<PathBuf>());
    full.exists().then_some(full)
}

fn components(path: &str) -> Vec<String> {
    Path::new(path)
        .components()
        .filter_map(|c| match c {
            Component::Normal(p) => Some(p.to_string_lossy().into_owned()),
            Component::ParentDir => Some("..".to_string()),
            _ => None,
        })
        .collect()
}

/// Directories named by `/etc/ld.so.conf` in the rootfs, `include` globs (`dir/*.conf`) expanded.
fn ld_so_conf(root: &Path, file: &str, depth: usize, out: &mut Vec<String>) {
    if depth > 8 {
        return;
    }
    let Some(path) = resolve(root, file) else {
        return;
    };
    let Ok(text) = fs::read_to_string(path) else {
        return;
    };
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if let Some(pattern) = line.strip_prefix("include").map(str::trim) {
            let (dir, glob) = pattern.rsplit_once('/').unwrap_or(("/etc", pattern));
            let (prefix, suffix) = glob.split_once('*').unwrap_or((glob, ""));
            let Some(real_dir) = resolve(root, dir) else {
                continue;
            };
            let mut names: Vec<String> = fs::read_dir(real_dir)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(prefix) && n.ends_with(suffix))
                .collect();
            names.sort();
            for name in names {
                ld_so_conf(root, &format!("{dir}/{name}"), depth + 1, out);
            }
        } else if line.starts_with('/') {
            out.push(line.to_string());
        }
    }
}
