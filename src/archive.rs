//! A tarball's entries as byte spans of its file, found by reading headers only.
//!
//! Commands that move blobs around without looking inside them (`delta`, `assemble`, `push`)
//! work on these spans: a blob is streamed straight from its offset in the tarball, never
//! extracted or buffered, so memory stays flat whatever the weights weigh.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::digest::Sha256Digest;

pub const BLOCK: u64 = 512;
/// JSON documents (indexes, manifests, plans) are kept in memory only up to this size
/// (containerd's limit is 20 MiB; ours are a few KiB).
pub const MAX_DOCUMENT: u64 = 16 << 20;

/// One outer header, as the exporter writes every entry of an image tarball: GNU format, uid and
/// gid 0, one mtime for the whole archive, mode 0644 for files and 0755 for directories. Outer
/// paths are all short (`blobs/sha256/<64 hex>` is 77 bytes), so no long-name records are
/// needed; sizes of 8 GiB and more use GNU base-256.
///
/// `verify` rebuilds each header with this and requires the bytes to match: the header checksum
/// covers every header byte except its own field, which tar readers parse leniently (a leading
/// `0` turned into a space, or the byte after the NUL, reads as the same number), so only an
/// exact rebuild makes every header byte count.
pub fn outer_header(
    path: &str,
    size: u64,
    kind: tar::EntryType,
    mtime: u64,
) -> io::Result<[u8; BLOCK as usize]> {
    let mut header = tar::Header::new_gnu();
    header.set_path(path)?;
    header.set_size(size);
    header.set_entry_type(kind);
    header.set_mode(if kind.is_dir() { 0o755 } else { 0o644 });
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(mtime);
    header.set_cksum();
    Ok(*header.as_bytes())
}

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("Failed to read `{path}`")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("`{path}`: {message}")]
    Invalid { path: PathBuf, message: String },
}

pub fn invalid(path: &Path, message: impl Into<String>) -> ArchiveError {
    ArchiveError::Invalid {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

fn read_error(path: &Path) -> impl Fn(io::Error) -> ArchiveError + '_ {
    move |source| ArchiveError::Read {
        path: path.to_path_buf(),
        source,
    }
}

/// One tar entry as bytes of its file: `header .. data + size` rounded up to a block.
#[derive(Debug, Clone)]
pub struct Span {
    pub name: String,
    pub header: u64,
    pub data: u64,
    pub size: u64,
}

impl Span {
    pub fn end(&self) -> u64 {
        self.data + self.size.div_ceil(BLOCK) * BLOCK
    }

    /// The blob digest, for `blobs/sha256/<hex>` regular files.
    pub fn blob(&self) -> Option<Sha256Digest> {
        Sha256Digest::parse(self.name.strip_prefix("blobs/sha256/")?).ok()
    }
}

/// A tarball's entries, in order, and the file's length.
pub struct Entries {
    pub path: PathBuf,
    pub spans: Vec<Span>,
    pub len: u64,
}

impl Entries {
    /// Reads every header of `path`. Extension headers (PAX, GNU long names) come back as
    /// entries of their own, so the spans tile the archive up to the end-of-archive marker.
    pub fn read(path: &Path) -> Result<Self, ArchiveError> {
        let file = File::open(path).map_err(read_error(path))?;
        let len = file.metadata().map_err(read_error(path))?.len();
        let mut archive = tar::Archive::new(BufReader::new(file));
        let mut spans: Vec<Span> = Vec::new();
        let entries = archive
            .entries_with_seek()
            .map_err(read_error(path))?
            .raw(true);
        for entry in entries {
            let entry = entry.map_err(|e| invalid(path, format!("unreadable tar header: {e}")))?;
            let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let span = Span {
                header: entry.raw_header_position(),
                data: entry.raw_file_position(),
                size: entry.size(),
                name,
            };
            let at = spans.last().map_or(0, Span::end);
            if span.header != at || span.end() > len {
                return Err(invalid(
                    path,
                    format!("`{}` is not where a tar entry can be", span.name),
                ));
            }
            spans.push(span);
        }
        if spans.is_empty() {
            return Err(invalid(path, "is not a tar archive (no entries)"));
        }
        Ok(Self {
            path: path.to_path_buf(),
            spans,
            len,
        })
    }

    pub fn find(&self, name: &str) -> Option<&Span> {
        self.spans.iter().find(|s| s.name == name)
    }

    /// The entry holding blob `digest`.
    pub fn blob(&self, digest: &Sha256Digest) -> Option<&Span> {
        self.find(&crate::image::blob_path(digest))
    }

    /// Reads a small entry's data whole (documents; anything over [`MAX_DOCUMENT`] is refused).
    pub fn read_small(&self, file: &mut File, span: &Span) -> Result<Vec<u8>, ArchiveError> {
        if span.size > MAX_DOCUMENT {
            return Err(invalid(
                &self.path,
                format!(
                    "`{}` is {} bytes, too big to be a document",
                    span.name, span.size
                ),
            ));
        }
        let mut bytes = vec![0; span.size as usize];
        file.seek(SeekFrom::Start(span.data))
            .and_then(|_| file.read_exact(&mut bytes))
            .map_err(read_error(&self.path))?;
        Ok(bytes)
    }

    /// Reads the entry called `name` (a document), failing with `missing` when there is none.
    pub fn document(&self, name: &str, missing: &str) -> Result<Vec<u8>, ArchiveError> {
        let span = self
            .find(name)
            .ok_or_else(|| invalid(&self.path, missing))?;
        let mut file = File::open(&self.path).map_err(read_error(&self.path))?;
        self.read_small(&mut file, span)
    }

    /// The image manifest digest that the tarball's `index.json` names.
    pub fn manifest_digest(&self) -> Result<String, ArchiveError> {
        let bytes = self.document(
            "index.json",
            "has no `index.json`: not an OCI image tarball",
        )?;
        let index: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| invalid(&self.path, format!("`index.json` is not JSON: {e}")))?;
        index["manifests"][0]["digest"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| invalid(&self.path, "`index.json` names no image manifest"))
    }

    /// A reader over one entry's data, streaming from the file.
    pub fn open(&self, span: &Span) -> Result<io::Take<File>, ArchiveError> {
        let mut file = File::open(&self.path).map_err(read_error(&self.path))?;
        file.seek(SeekFrom::Start(span.data))
            .map_err(read_error(&self.path))?;
        Ok(file.take(span.size))
    }
}
