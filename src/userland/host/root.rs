//! Filesystem access under the resolver's root with chroot semantics: the hop-by-hop
//! path walk that records every symlink the loader traverses, and the I/O helpers that
//! treat a missing path as an answer rather than an error.

use std::collections::VecDeque;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::{HostResolver, UserlandError};

/// Linux's own limit; a deeper chain is a loop or a hostile tree.
const MAX_SYMLINK_HOPS: usize = 40;

/// A path resolved inside the root: its symlink-free form and the links traversed.
pub(super) struct Walk {
    pub(super) real: String,
    pub(super) links: Vec<(String, String)>,
}

impl HostResolver {
    pub(super) fn host(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }

    /// Resolves `path` component by component with chroot semantics, like the kernel
    /// does for the loader's `open`; `None` when it does not exist.
    pub(super) fn walk(&self, path: &str) -> Result<Option<Walk>, UserlandError> {
        let mut real = String::new();
        let mut pending: VecDeque<String> = path.split('/').map(str::to_owned).collect();
        let mut links = Vec::new();
        while let Some(part) = pending.pop_front() {
            if part.is_empty() || part == "." {
                continue;
            } else if part == ".." {
                real.truncate(real.rfind('/').unwrap_or(0));
                continue;
            }
            let here = format!("{real}/{part}");
            let host = self.host(&here);
            let Some(meta) = absent_ok(&host, fs::symlink_metadata(&host))? else {
                return Ok(None);
            };
            if meta.file_type().is_symlink() {
                if links.len() >= MAX_SYMLINK_HOPS {
                    let path = path.to_owned();
                    return Err(UserlandError::SymlinkLoop { path });
                }
                let target = fs::read_link(&host).map_err(io_err(&host))?;
                let target = target.into_os_string().into_string();
                let target = target.map_err(|_| UserlandError::NonUtf8 { path: host })?;
                if target.starts_with('/') {
                    real.clear();
                }
                target
                    .split('/')
                    .rev()
                    .for_each(|c| pending.push_front(c.to_owned()));
                links.push((here, target));
            } else if pending.iter().any(|p| !p.is_empty() && p != ".") && !meta.is_dir() {
                return Ok(None);
            } else {
                real = here;
            }
        }
        let real = if real.is_empty() {
            "/".to_owned()
        } else {
            real
        };
        Ok(Some(Walk { real, links }))
    }
}

pub(super) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> UserlandError + '_ {
    move |source| UserlandError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Absence is an answer (`None`), any other I/O failure an error naming the path.
pub(super) fn absent_ok<T>(path: &Path, result: io::Result<T>) -> Result<Option<T>, UserlandError> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            ) =>
        {
            Ok(None)
        }
        Err(source) => Err(UserlandError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// dpkg and ldconfig files may hold non-UTF-8 bytes in places we never look at.
pub(super) fn read_text(path: &Path) -> Result<Option<String>, UserlandError> {
    let bytes = absent_ok(path, fs::read(path))?;
    Ok(bytes.map(|b| String::from_utf8_lossy(&b).into_owned()))
}

pub(super) fn parent(path: &str) -> String {
    path.rsplit_once('/').map_or("", |(dir, _)| dir).to_owned()
}
