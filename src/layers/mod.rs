//! Defines image layers: what goes in each (`LayerSpec`) and how its tar bytes are produced.
//!
//! A layer's bytes are a pure function of its spec and the files it names. [`LayerSpec::write_to`]
//! streams them into any writer in one pass, hashing as they go: the layer digest (and diff_id
//! for compressed layers) and the sha256 of every file inside, from a single read of each file.
//! Nothing is buffered beyond a read buffer, so memory is flat whatever the model size.

mod compress;
pub mod plan;

use std::io::{self, BufReader, Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

use crate::digest::{HashingReader, HashingWriter, Sha256Digest};
use crate::manifest::Compression;
use crate::progress::ProgressTask;
use compress::Compressor;

/// Read buffer for file contents; large enough that syscalls don't dominate hashing.
const READ_BUFFER: usize = 1 << 20;

/// One entry of a layer. Paths are relative (`usr/local/bin/x`), as in layer tarballs.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub path: String,
    pub kind: EntryKind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub enum EntryKind {
    Dir,
    File { source: FileSource, size: u64 },
    Symlink { target: String },
}

/// Where a file's bytes come from.
#[derive(Debug, Clone, PartialEq)]
pub enum FileSource {
    /// Streamed from the build host each time the layer is produced.
    Host(PathBuf),
    /// Small generated content (passwd, group).
    Bytes(Arc<[u8]>),
}

impl Entry {
    pub fn dir(path: impl Into<String>, mode: u32, uid: u32, gid: u32) -> Self {
        Self {
            path: path.into(),
            kind: EntryKind::Dir,
            mode,
            uid,
            gid,
        }
    }

    /// A root-owned file from the host.
    pub fn host_file(path: impl Into<String>, host: PathBuf, size: u64, mode: u32) -> Self {
        Self {
            path: path.into(),
            kind: EntryKind::File {
                source: FileSource::Host(host),
                size,
            },
            mode,
            uid: 0,
            gid: 0,
        }
    }

    /// A root-owned file with generated content.
    pub fn bytes(path: impl Into<String>, content: impl Into<Arc<[u8]>>, mode: u32) -> Self {
        let content: Arc<[u8]> = content.into();
        Self {
            path: path.into(),
            kind: EntryKind::File {
                size: content.len() as u64,
                source: FileSource::Bytes(content),
            },
            mode,
            uid: 0,
            gid: 0,
        }
    }

    pub fn symlink(path: impl Into<String>, target: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            kind: EntryKind::Symlink {
                target: target.into(),
            },
            mode: 0o777,
            uid: 0,
            gid: 0,
        }
    }
}

/// What a layer is for; decides its place in the image and how it is described.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LayerRole {
    Filesystem,
    Weights,
    ModelFiles,
    Userland,
    Server,
}

/// Everything needed to produce one layer's bytes.
#[derive(Debug, Clone)]
pub struct LayerSpec {
    pub role: LayerRole,
    /// The history entry's `created_by`; also what `appliance inspect` shows.
    pub description: String,
    /// Sorted by path, parents before children.
    pub entries: Vec<Entry>,
    pub compression: Compression,
    /// mtime of every entry: the image's `created`, so no timestamp depends on the build host.
    pub mtime: u64,
}

/// Digests and size of a produced layer, plus the digest of every regular file in it.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerSums {
    /// sha256 of the uncompressed tar (`rootfs.diff_ids`).
    pub diff_id: Sha256Digest,
    /// sha256 of the blob as stored (equal to `diff_id` when uncompressed).
    pub digest: Sha256Digest,
    /// Size of the blob as stored.
    pub size: u64,
    pub files: Vec<FileSum>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FileSum {
    pub path: String,
    pub sha256: Sha256Digest,
    pub size: u64,
}

/// A layer that has been written: ready to be described in the image config.
#[derive(Debug, Clone)]
pub struct Layer {
    pub spec: LayerSpec,
    pub sums: LayerSums,
}

#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("Failed to read `{path}` while writing the {role:?} layer")]
    Read {
        path: PathBuf,
        role: LayerRole,
        #[source]
        source: io::Error,
    },
    #[error("`{path}` changed while the image was being built: {what}")]
    Changed { path: PathBuf, what: String },
    #[error("Failed to write the {role:?} layer")]
    Write {
        role: LayerRole,
        #[source]
        source: io::Error,
    },
}

impl LayerSpec {
    /// Sum of the regular files' sizes: what progress is measured against.
    pub fn content_bytes(&self) -> u64 {
        self.entries
            .iter()
            .map(|e| match &e.kind {
                EntryKind::File { size, .. } => *size,
                _ => 0,
            })
            .sum()
    }

    pub fn media_type(&self) -> &'static str {
        match self.compression {
            Compression::None => "application/vnd.oci.image.layer.v1.tar",
            Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }

    /// Streams the layer's bytes into `out` and returns it with the layer's digests.
    pub fn write_to<W: Write>(
        &self,
        out: W,
        progress: &dyn ProgressTask,
    ) -> Result<(W, LayerSums), LayerError> {
        let write_err = |source| LayerError::Write {
            role: self.role,
            source,
        };
        match self.compression {
            // Stored bytes are the tar itself: one hash serves as digest and diff_id.
            Compression::None => {
                let (hashing, files) = self.write_tar(HashingWriter::new(out), progress)?;
                let (out, digest, size) = hashing.finish();
                Ok((
                    out,
                    LayerSums {
                        diff_id: digest,
                        digest,
                        size,
                        files,
                    },
                ))
            }
            compression => {
                let stored = HashingWriter::new(out);
                let compressor = Compressor::new(stored, compression).map_err(write_err)?;
                let (raw, files) = self.write_tar(HashingWriter::new(compressor), progress)?;
                let (compressor, diff_id, _) = raw.finish();
                let stored = compressor.finish().map_err(write_err)?;
                let (out, digest, size) = stored.finish();
                Ok((
                    out,
                    LayerSums {
                        diff_id,
                        digest,
                        size,
                        files,
                    },
                ))
            }
        }
    }

    fn write_tar<W: Write>(
        &self,
        out: W,
        progress: &dyn ProgressTask,
    ) -> Result<(W, Vec<FileSum>), LayerError> {
        let mut tar = tar::Builder::new(out);
        let mut files = Vec::new();
        for entry in &self.entries {
            if let Some(sum) = self.append(&mut tar, entry, progress)? {
                files.push(sum);
            }
        }
        let out = tar.into_inner().map_err(|source| LayerError::Write {
            role: self.role,
            source,
        })?;
        Ok((out, files))
    }

    fn append<W: Write>(
        &self,
        tar: &mut tar::Builder<W>,
        entry: &Entry,
        progress: &dyn ProgressTask,
    ) -> Result<Option<FileSum>, LayerError> {
        let role = self.role;
        let write_err = |source| LayerError::Write { role, source };
        let mut header = tar::Header::new_gnu();
        header.set_mtime(self.mtime);
        header.set_uid(entry.uid as u64);
        header.set_gid(entry.gid as u64);
        header.set_mode(entry.mode);
        match &entry.kind {
            EntryKind::Dir => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_size(0);
                tar.append_data(&mut header, &entry.path, io::empty())
                    .map_err(write_err)?;
                Ok(None)
            }
            EntryKind::Symlink { target } => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_size(0);
                tar.append_link(&mut header, &entry.path, target)
                    .map_err(write_err)?;
                Ok(None)
            }
            EntryKind::File { source, size } => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(*size);
                let (sha256, read) = match source {
                    FileSource::Bytes(bytes) => {
                        tar.append_data(&mut header, &entry.path, &bytes[..])
                            .map_err(write_err)?;
                        (Sha256Digest::of(bytes), bytes.len() as u64)
                    }
                    FileSource::Host(path) => {
                        let read_err = |source| LayerError::Read {
                            path: path.clone(),
                            role,
                            source,
                        };
                        let file = std::fs::File::open(path).map_err(read_err)?;
                        let reader = ExactReader::new(
                            BufReader::with_capacity(READ_BUFFER, file),
                            *size,
                            progress,
                        );
                        let mut hashing = HashingReader::new(reader);
                        if let Err(e) = tar.append_data(&mut header, &entry.path, &mut hashing) {
                            return Err(if e.kind() == io::ErrorKind::UnexpectedEof {
                                LayerError::Changed {
                                    path: path.clone(),
                                    what: format!("it is shorter than the {size} bytes it had"),
                                }
                            } else {
                                read_err(e)
                            });
                        }
                        let (_, digest, read) = hashing.finish();
                        (digest, read)
                    }
                };
                Ok(Some(FileSum {
                    path: entry.path.clone(),
                    sha256,
                    size: read,
                }))
            }
        }
    }
}

/// Yields exactly `len` bytes of `inner`, failing with `UnexpectedEof` if it ends early: the tar
/// header already promised `len` bytes, so a short file must not produce a short entry.
struct ExactReader<'a, R> {
    inner: R,
    remaining: u64,
    progress: &'a dyn ProgressTask,
}

impl<'a, R: Read> ExactReader<'a, R> {
    fn new(inner: R, len: u64, progress: &'a dyn ProgressTask) -> Self {
        Self {
            inner,
            remaining: len,
            progress,
        }
    }
}

impl<R: Read> Read for ExactReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let max = buf
            .len()
            .min(self.remaining.min(usize::MAX as u64) as usize);
        let n = self.inner.read(&mut buf[..max])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file ended early",
            ));
        }
        self.remaining -= n as u64;
        self.progress.advance(n as u64);
        Ok(n)
    }
}

#[cfg(test)]
mod tests;
