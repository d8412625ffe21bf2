//! Reads files out of a pre-pulled base image, whether it is a directory (OCI layout) or a
//! tarball (`docker save`, `skopeo copy … oci-archive:`), without unpacking the tarball.
//!
//! A tarball is indexed once (`entries_with_seek` skips over the data): each member's offset
//! and size are kept, so a blob is later read by seeking straight to it, as often as needed.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};

use super::BaseError;

/// JSON documents (index, manifests, configs) larger than this are refused, as containerd does.
pub const MAX_DOCUMENT: u64 = 20 << 20;

/// Where a base image's files are.
#[derive(Debug)]
pub enum Source {
    Dir(PathBuf),
    Tar {
        path: PathBuf,
        members: BTreeMap<String, Member>,
    },
}

#[derive(Debug, Clone)]
pub enum Member {
    /// Data at `offset` in the tarball, `size` bytes long.
    File { offset: u64, size: u64 },
    /// A symbolic or hard link to another member (`docker save` links repeated layers).
    Link { target: String },
}

impl Source {
    /// Opens `path`: a directory is taken as an OCI layout, anything else as a tarball.
    pub fn open(path: &Path) -> Result<Self, BaseError> {
        let meta = std::fs::metadata(path).map_err(|source| BaseError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        if meta.is_dir() {
            return Ok(Source::Dir(path.to_path_buf()));
        }
        let io_err = |source| BaseError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io_err)?;
        let mut archive = tar::Archive::new(file);
        let mut members = BTreeMap::new();
        for entry in archive.entries_with_seek().map_err(io_err)? {
            let entry = entry.map_err(|e| BaseError::NotAnImage {
                path: path.to_path_buf(),
                reason: format!("not a readable tar archive: {e}"),
            })?;
            let Some(name) = entry.path().ok().and_then(|p| normalize(&p)) else {
                continue;
            };
            let kind = entry.header().entry_type();
            let member = if kind.is_file() {
                Member::File {
                    offset: entry.raw_file_position(),
                    size: entry.size(),
                }
            } else if kind.is_symlink() || kind.is_hard_link() {
                let Some(target) = entry.link_name().ok().flatten() else {
                    continue;
                };
                let target = if kind.is_symlink() {
                    // Symlink targets are relative to the link's directory.
                    let dir = Path::new(&name).parent().unwrap_or(Path::new(""));
                    dir.join(target)
                } else {
                    target.into_owned()
                };
                match normalize(&target) {
                    Some(target) => Member::Link { target },
                    None => continue,
                }
            } else {
                continue;
            };
            members.insert(name, member);
        }
        Ok(Source::Tar {
            path: path.to_path_buf(),
            members,
        })
    }

    /// The file or tarball the user named, for messages.
    pub fn path(&self) -> &Path {
        match self {
            Source::Dir(path) | Source::Tar { path, .. } => path,
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        match self {
            Source::Dir(dir) => dir.join(name).is_file(),
            Source::Tar { members, .. } => self.resolve(members, name).is_some(),
        }
    }

    fn resolve(&self, members: &BTreeMap<String, Member>, name: &str) -> Option<(u64, u64)> {
        let mut name = normalize(Path::new(name))?;
        // A few hops at most; a loop is a malformed archive.
        for _ in 0..16 {
            match members.get(&name)? {
                Member::File { offset, size } => return Some((*offset, *size)),
                Member::Link { target } => name = target.clone(),
            }
        }
        None
    }

    /// Opens the member or file `name` (relative, e.g. `blobs/sha256/<hex>`) and its size.
    pub fn open_member(&self, name: &str) -> Result<(Box<dyn Read + Send>, u64), BaseError> {
        let missing = || BaseError::MissingFile {
            image: self.path().to_path_buf(),
            name: name.to_string(),
        };
        match self {
            Source::Dir(dir) => {
                let path = dir.join(name);
                let file = File::open(&path).map_err(|source| match source.kind() {
                    io::ErrorKind::NotFound => missing(),
                    _ => BaseError::Io {
                        path: path.clone(),
                        source,
                    },
                })?;
                let size = file
                    .metadata()
                    .map_err(|source| BaseError::Io { path, source })?
                    .len();
                Ok((Box::new(file), size))
            }
            Source::Tar { path, members } => {
                let (offset, size) = self.resolve(members, name).ok_or_else(missing)?;
                let io_err = |source| BaseError::Io {
                    path: path.clone(),
                    source,
                };
                let mut file = File::open(path).map_err(io_err)?;
                file.seek(SeekFrom::Start(offset)).map_err(io_err)?;
                Ok((Box::new(file.take(size)), size))
            }
        }
    }

    /// Reads a small member whole (JSON documents), refusing anything over [`MAX_DOCUMENT`].
    pub fn read_document(&self, name: &str) -> Result<Vec<u8>, BaseError> {
        let (reader, size) = self.open_member(name)?;
        if size > MAX_DOCUMENT {
            return Err(BaseError::NotAnImage {
                path: self.path().to_path_buf(),
                reason: format!("`{name}` is {size} bytes, more than a JSON document may be"),
            });
        }
        let mut bytes = Vec::with_capacity(size as usize);
        reader
            .take(MAX_DOCUMENT)
            .read_to_end(&mut bytes)
            .map_err(|source| BaseError::Io {
                path: self.path().join(name),
                source,
            })?;
        Ok(bytes)
    }
}

/// `./a/b/../c` → `a/c`; `None` for paths that leave the archive or name nothing.
pub fn normalize(path: &Path) -> Option<String> {
    let mut parts: Vec<String> = Vec::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => parts.push(part.to_str()?.to_string()),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::Prefix(_) => return None,
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_keeps_paths_inside_the_archive() {
        assert_eq!(
            normalize(Path::new("./blobs/sha256/ab")).unwrap(),
            "blobs/sha256/ab"
        );
        assert_eq!(normalize(Path::new("a/../b.tar")).unwrap(), "b.tar");
        assert_eq!(normalize(Path::new("../x")), None);
        assert_eq!(normalize(Path::new("./")), None);
    }
}
