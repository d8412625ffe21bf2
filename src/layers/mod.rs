//! Defines image layers: what goes in each (`LayerSpec`) and how its tar bytes are produced.
//!
//! A layer's bytes are a pure function of its spec and the files it names. [`LayerSpec::write_to`]
//! streams them into any writer in one pass, hashing as they go: the layer digest (and diff_id
//! for compressed layers) and the sha256 of every file inside, from a single read of each file.
//! Nothing is buffered beyond a read buffer, so memory is flat whatever the model size.

pub mod cache;
mod compress;
pub mod plan;

use std::io::{self, Read, Write};

use sha2::Digest as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::digest::{HashingWriter, Sha256Digest};
use crate::progress::ProgressTask;
use compress::Compressor;
pub use compress::{Compression, decoder};

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
    /// A pre-pulled base image's layer, copied byte for byte.
    Base,
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
    /// mtime of every entry: never the build host's ([`plan::STABLE_MTIME`] for appliance's own
    /// layers, so they survive a new release).
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

/// What writing a layer learned, before the stored bytes' digest is known.
#[derive(Debug, Clone, PartialEq)]
pub struct Written {
    /// The uncompressed tar's digest, for compressed layers; for uncompressed layers it is the
    /// stored digest.
    pub diff_id: Option<Sha256Digest>,
    pub files: Vec<FileSum>,
}

impl Written {
    /// Completes the sums with the digest and size of the bytes as stored.
    pub fn into_sums(self, digest: Sha256Digest, size: u64) -> LayerSums {
        LayerSums {
            diff_id: self.diff_id.unwrap_or(digest),
            digest,
            size,
            files: self.files,
        }
    }
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
        let (hashing, written) = self.write_unhashed(HashingWriter::new(out), progress)?;
        let (out, digest, size) = hashing.finish();
        let sums = written.into_sums(digest, size);
        Ok((out, sums))
    }

    /// Like [`LayerSpec::write_to`], but leaves hashing the stored bytes to the caller, who
    /// sees them all anyway: the export hashes them on its writer thread, so the layer digest
    /// and the files' digests are computed on different cores.
    pub fn write_unhashed<W: Write>(
        &self,
        out: W,
        progress: &dyn ProgressTask,
    ) -> Result<(W, Written), LayerError> {
        let write_err = |source| LayerError::Write {
            role: self.role,
            source,
        };
        match self.compression {
            Compression::None => {
                let (out, files) = self.write_tar(out, progress)?;
                Ok((
                    out,
                    Written {
                        diff_id: None,
                        files,
                    },
                ))
            }
            compression => {
                let compressor = Compressor::new(out, compression).map_err(write_err)?;
                let (raw, files) = self.write_tar(HashingWriter::new(compressor), progress)?;
                let (compressor, diff_id, _) = raw.finish();
                let out = compressor.finish().map_err(write_err)?;
                Ok((
                    out,
                    Written {
                        diff_id: Some(diff_id),
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
        let role = self.role;
        let mut copy = |out: &mut W, path: &Path, size: u64| {
            copy_host_file(path, size, out, progress, role).map(Some)
        };
        for entry in &self.entries {
            if let Some(sum) = self.append(&mut tar, entry, &mut copy)? {
                files.push(sum);
            }
        }
        let out = tar.into_inner().map_err(|source| LayerError::Write {
            role: self.role,
            source,
        })?;
        Ok((out, files))
    }

    /// The layer's bytes as a recipe of literal bytes and host files' contents, produced by the
    /// same code that writes layers (only the content copy differs), so the two cannot disagree.
    /// The export streams uncompressed weight layers from it, and [`cache`] keys on it.
    pub fn segments(&self) -> Result<Vec<Segment>, LayerError> {
        let mut tar = tar::Builder::new(Recorder::default());
        let mut record = |out: &mut Recorder, path: &Path, size: u64| {
            out.file(path, size);
            Ok(None)
        };
        for entry in &self.entries {
            self.append(&mut tar, entry, &mut record)?;
        }
        let mut recorder = tar.into_inner().map_err(|source| LayerError::Write {
            role: self.role,
            source,
        })?;
        recorder.cut();
        Ok(recorder.segments)
    }

    /// Whether any content comes from a file on the build host (what [`cache`] can skip).
    pub fn has_host_files(&self) -> bool {
        self.entries.iter().any(|e| {
            matches!(
                e.kind,
                EntryKind::File {
                    source: FileSource::Host(_),
                    ..
                }
            )
        })
    }

    /// Appends one entry; `copy` moves a host file's contents into the output and may return
    /// their digest (entries without one are left out of the returned sums).
    fn append<W: Write>(
        &self,
        tar: &mut tar::Builder<W>,
        entry: &Entry,
        copy: &mut ContentCopy<'_, W>,
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
                        (Some(Sha256Digest::of(bytes)), bytes.len() as u64)
                    }
                    FileSource::Host(path) => {
                        // The header goes through the tar builder (it handles long names); the
                        // content is then copied in big chunks straight to the output, with no
                        // 8 KiB intermediate copies: this loop is the hot path for weights.
                        tar.append_data(&mut header, &entry.path, io::empty())
                            .map_err(write_err)?;
                        let digest = copy(tar.get_mut(), path, *size)?;
                        pad(tar.get_mut(), *size).map_err(write_err)?;
                        (digest, *size)
                    }
                };
                Ok(sha256.map(|sha256| FileSum {
                    path: entry.path.clone(),
                    sha256,
                    size: read,
                }))
            }
        }
    }
}

/// Moves a host file's `size` bytes at `path` into a layer's output; may return their digest.
type ContentCopy<'a, W> =
    dyn FnMut(&mut W, &Path, u64) -> Result<Option<Sha256Digest>, LayerError> + 'a;

/// One piece of a layer's bytes (see [`LayerSpec::segments`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Segment {
    /// Headers, padding, small files' contents, the trailer.
    Bytes(Vec<u8>),
    /// The contents of a file on the build host, `size` bytes.
    File { path: PathBuf, size: u64 },
}

/// A writer that records what a tar builder writes, cut at host files.
#[derive(Default)]
struct Recorder {
    segments: Vec<Segment>,
    pending: Vec<u8>,
}

impl Recorder {
    fn file(&mut self, path: &Path, size: u64) {
        self.cut();
        self.segments.push(Segment::File {
            path: path.to_path_buf(),
            size,
        });
    }

    fn cut(&mut self) {
        if !self.pending.is_empty() {
            self.segments
                .push(Segment::Bytes(std::mem::take(&mut self.pending)));
        }
    }
}

impl Write for Recorder {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.pending.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Copies `size` bytes of a host file into `out` and returns their sha256; errors name the file.
fn copy_host_file(
    path: &Path,
    size: u64,
    out: &mut impl Write,
    progress: &dyn ProgressTask,
    role: LayerRole,
) -> Result<Sha256Digest, LayerError> {
    copy_file(path, size, out, progress).map_err(|e| match e {
        CopyError::Short => LayerError::Changed {
            path: path.to_path_buf(),
            what: format!("it is shorter than the {size} bytes it had"),
        },
        CopyError::Read(source) => LayerError::Read {
            path: path.to_path_buf(),
            role,
            source,
        },
        CopyError::Write(source) => LayerError::Write { role, source },
    })
}

enum CopyError {
    /// The file ended before the size the header promised.
    Short,
    Read(io::Error),
    Write(io::Error),
}

/// Copies exactly `len` bytes of the file at `path` into `out`, returning their sha256.
fn copy_file(
    path: &std::path::Path,
    len: u64,
    out: &mut impl Write,
    progress: &dyn ProgressTask,
) -> Result<Sha256Digest, CopyError> {
    let mut file = std::fs::File::open(path).map_err(CopyError::Read)?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; READ_BUFFER];
    let mut remaining = len;
    while remaining > 0 {
        let want = buf
            .len()
            .min(usize::try_from(remaining).unwrap_or(usize::MAX));
        let n = match file.read(&mut buf[..want]) {
            Ok(0) => return Err(CopyError::Short),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(CopyError::Write)?;
        remaining -= n as u64;
        progress.advance(n as u64);
    }
    Ok(Sha256Digest::from_hasher(hasher))
}

/// Zero padding to the next 512-byte tar block (layer entries and the export's outer entries).
pub(crate) fn pad(out: &mut impl Write, size: u64) -> io::Result<()> {
    let rem = (size % 512) as usize;
    if rem != 0 {
        out.write_all(&[0u8; 512][..512 - rem])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
