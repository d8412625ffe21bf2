//! Reads an image tarball once, front to back, never extracting it. Two readings: [`scan`],
//! `verify`'s, strict and hashing everything, and [`documents`], `inspect`'s, lenient and
//! hashing nothing. In [`scan`]: every blob is hashed as it
//! streams past, layer blobs are additionally unpacked on the fly (decompressed if needed) to
//! hash the uncompressed tar (the diff_id) and every regular file inside. Only JSON documents
//! (bounded in size) are kept in memory; memory does not grow with layer size.
//!
//! Hostile archives are refused here: absolute or `..` paths, links, devices, FIFOs, duplicate
//! entries, unknown names, oversized documents and truncation each fail naming the entry. So is
//! any header that is not byte for byte what the exporter writes ([`crate::archive::outer_header`]):
//! no digest covers the headers, and tar readers parse parts of them leniently.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Cursor, Read};
use std::path::Path;

use crate::digest::{HashingReader, Sha256Digest};
use crate::manifest::Compression;

/// JSON documents and blobs that parse as JSON are kept only up to this size.
pub use crate::archive::MAX_DOCUMENT;

/// Whole-file names a tarball may hold besides blobs.
const DOCUMENTS: &[&str] = &[
    "oci-layout",
    "index.json",
    "manifest.json",
    crate::sign::cosign::SIGNATURES_INDEX,
    crate::delta::PLAN_NAME,
];
const DIRECTORIES: &[&str] = &["blobs", "blobs/sha256", "signatures"];

#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("Failed to read `{path}`")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("`{entry}`: {message}")]
    Entry { entry: String, message: String },
}

fn bad(entry: impl Into<String>, message: impl Into<String>) -> ScanError {
    ScanError::Entry {
        entry: entry.into(),
        message: message.into(),
    }
}

/// One regular file inside a layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerFile {
    pub sha256: Sha256Digest,
    pub size: u64,
}

/// What the scan learned about one blob.
#[derive(Debug, Default)]
pub struct BlobInfo {
    pub size: u64,
    /// sha256 of the stored bytes (compared to the blob's name by the checks).
    pub actual: Option<Sha256Digest>,
    /// For tar layers: sha256 of the uncompressed tar.
    pub diff_id: Option<Sha256Digest>,
    /// For tar layers: regular files by path (no leading `/` or `./`).
    pub files: BTreeMap<String, LayerFile>,
    /// Why the blob could not be read as a layer, if it looked like one.
    pub layer_error: Option<String>,
    /// The bytes, for blobs that look like JSON and are small.
    pub json: Option<Vec<u8>>,
}

#[derive(Debug, Default)]
pub struct Scan {
    /// Keyed by the digest in the blob's name.
    pub blobs: BTreeMap<Sha256Digest, BlobInfo>,
    pub documents: BTreeMap<String, Vec<u8>>,
    pub bytes: u64,
    /// The one mtime every outer header carries (the image's `created`, in seconds).
    pub mtime: Option<u64>,
}

/// Counts bytes read, so truncation and the end-of-archive marker can be checked.
struct Counting<R> {
    inner: R,
    count: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        Ok(n)
    }
}

pub fn scan(path: &Path) -> Result<Scan, ScanError> {
    let shown = path.display().to_string();
    let io_err = |source| ScanError::Io {
        path: shown.clone(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io_err)?;
    let reader = Counting {
        inner: io::BufReader::with_capacity(1 << 20, file),
        count: 0,
    };
    let mut archive = tar::Archive::new(reader);
    let mut scan = Scan::default();
    let mut seen = BTreeSet::new();
    let mut end_of_last = 0u64;
    // Where each entry's zero padding is: tar readers skip it unread, so a changed byte there
    // would pass every digest; checked once the stream is done.
    let mut padding: Vec<(String, u64, u64)> = Vec::new();
    for entry in archive.entries().map_err(io_err)? {
        let mut entry = entry.map_err(|e| bad(&shown, format!("unreadable tar header: {e}")))?;
        let raw = entry.path_bytes().into_owned();
        let raw_name =
            String::from_utf8(raw).map_err(|_| bad(&shown, "an entry name is not UTF-8"))?;
        let name = safe_name(&raw_name)?;
        if !seen.insert(name.clone()) {
            return Err(bad(
                &name,
                "duplicate entry (a second copy could shadow the first)",
            ));
        }
        let header = entry.header();
        let kind = header.entry_type();
        let size = entry.size();
        end_of_last = entry.raw_file_position() + size.div_ceil(512) * 512;
        if size % 512 != 0 {
            padding.push((
                name.clone(),
                entry.raw_file_position() + size,
                512 - size % 512,
            ));
        }
        let is_dir = match kind {
            tar::EntryType::Directory if DIRECTORIES.contains(&name.as_str()) => true,
            tar::EntryType::Regular => false,
            tar::EntryType::Symlink | tar::EntryType::Link => {
                return Err(bad(
                    &name,
                    "is a link; image tarballs hold regular files only",
                ));
            }
            other => {
                return Err(bad(
                    &name,
                    format!("is not a regular file (tar entry type {:?})", other),
                ));
            }
        };
        let entry_mtime = header
            .mtime()
            .map_err(|e| bad(&name, format!("unreadable mtime in its tar header: {e}")))?;
        let mtime = *scan.mtime.get_or_insert(entry_mtime);
        let canonical = crate::archive::outer_header(&raw_name, size, kind, mtime).ok();
        if canonical.as_ref() != Some(header.as_bytes()) {
            return Err(bad(
                &name,
                format!(
                    "its tar header is not the one appliance writes (GNU, mode {}, uid and gid 0, \
                     the archive's one mtime {mtime}, canonical checksum field): the archive \
                     was altered",
                    if is_dir { "0755" } else { "0644" }
                ),
            ));
        }
        if is_dir {
            continue;
        }
        if DOCUMENTS.contains(&name.as_str()) {
            if size > MAX_DOCUMENT {
                return Err(bad(
                    &name,
                    format!("is {size} bytes; documents are limited to {MAX_DOCUMENT}"),
                ));
            }
            let mut bytes = Vec::with_capacity(size as usize);
            entry
                .read_to_end(&mut bytes)
                .map_err(|e| bad(&name, e.to_string()))?;
            if bytes.len() as u64 != size {
                return Err(truncated(&name, bytes.len() as u64, size));
            }
            scan.documents.insert(name, bytes);
            continue;
        }
        let Some(hex) = name.strip_prefix("blobs/sha256/") else {
            return Err(bad(&name, "unexpected entry in an image tarball"));
        };
        let digest =
            Sha256Digest::parse(hex).map_err(|_| bad(&name, "blob name is not a sha256 digest"))?;
        let info = read_blob(&mut entry, size, &name)?;
        scan.bytes += size;
        scan.blobs.insert(digest, info);
    }
    let mut reader = archive.into_inner();
    let mut rest = Vec::new();
    (&mut reader)
        .take(1 << 20)
        .read_to_end(&mut rest)
        .map_err(io_err)?;
    let total = reader.count;
    if rest.iter().any(|&b| b != 0) {
        return Err(bad(&shown, "data after the end-of-archive marker"));
    }
    if total < end_of_last + 1024 {
        return Err(bad(
            &shown,
            "truncated archive: the end-of-archive marker is missing",
        ));
    }
    check_padding(path, &padding)?;
    Ok(scan)
}

/// What [`documents`] keeps of any image tarball.
#[derive(Debug, Default)]
pub struct Documents {
    /// Every regular entry of at most [`MAX_DOCUMENT`] bytes that parses as JSON, by name (`./`
    /// trimmed): OCI documents and blobs, `docker save`'s `manifest.json` and `<id>.json`.
    pub documents: std::collections::HashMap<String, Vec<u8>>,
    /// It holds `appliance-delta.json`.
    pub delta_bundle: bool,
}

/// The lenient reading, for `inspect`: any `docker save` or OCI archive (links, other names and
/// layouts allowed), nothing hashed, large entries skipped without being read (the file is
/// seekable), so its cost is a walk over the headers.
pub fn documents(path: &Path) -> io::Result<Documents> {
    let file = std::fs::File::open(path)?;
    let mut archive = tar::Archive::new(io::BufReader::with_capacity(1 << 20, file));
    let mut found = Documents::default();
    for entry in archive.entries_with_seek()? {
        let mut entry = entry?;
        let name = entry
            .path()?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_string();
        found.delta_bundle |= name == crate::delta::PLAN_NAME;
        if entry.header().entry_type().is_file() && entry.size() <= MAX_DOCUMENT {
            let mut bytes = Vec::with_capacity(entry.size() as usize);
            entry.read_to_end(&mut bytes)?;
            // Keep only what parses as JSON: small layers are not documents.
            if serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).is_ok() {
                found.documents.insert(name, bytes);
            }
        }
    }
    Ok(found)
}

/// Every entry's padding (after its data, up to the next 512-byte block) is zero.
fn check_padding(path: &Path, padding: &[(String, u64, u64)]) -> Result<(), ScanError> {
    use std::os::unix::fs::FileExt;
    let io_err = |source| ScanError::Io {
        path: path.display().to_string(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io_err)?;
    let mut buf = [0u8; 512];
    for (name, at, len) in padding {
        let buf = &mut buf[..*len as usize];
        file.read_exact_at(buf, *at).map_err(io_err)?;
        if buf.iter().any(|&b| b != 0) {
            return Err(bad(
                name,
                "the padding after its data is not zero (the archive was altered)",
            ));
        }
    }
    Ok(())
}

fn truncated(name: &str, got: u64, want: u64) -> ScanError {
    bad(
        name,
        format!("truncated archive: {got} of {want} bytes present"),
    )
}

/// Normalises an entry name and refuses absolute paths and `..`.
fn safe_name(name: &str) -> Result<String, ScanError> {
    if name.starts_with('/') {
        return Err(bad(name, "absolute path in the archive"));
    }
    let trimmed = name.trim_start_matches("./").trim_end_matches('/');
    if trimmed.split('/').any(|c| c == "..") || trimmed.is_empty() || trimmed.contains('\\') {
        return Err(bad(name, "path escapes the archive (`..`) or is empty"));
    }
    Ok(trimmed.to_string())
}

/// Hashes one blob; unpacks it on the fly if it is a (possibly compressed) tar.
fn read_blob(entry: &mut impl Read, size: u64, name: &str) -> Result<BlobInfo, ScanError> {
    let read_err = |e: io::Error| bad(name, e.to_string());
    let mut outer = HashingReader::new(entry);
    let mut head = Vec::with_capacity(512);
    (&mut outer)
        .take(512)
        .read_to_end(&mut head)
        .map_err(read_err)?;
    let mut info = BlobInfo {
        size,
        ..BlobInfo::default()
    };
    let looks_json = matches!(
        head.iter().find(|b| !b.is_ascii_whitespace()),
        Some(b'{' | b'[')
    );
    // An empty layer is nothing but the end-of-archive marker: zero blocks, no `ustar` magic
    // (`sha256:5f70bf18…`, common in `docker save` output and base images).
    let is_tar = (head.len() >= 262 && &head[257..262] == b"ustar")
        || (head.len() == 512 && head.iter().all(|&b| b == 0));
    if looks_json && size <= MAX_DOCUMENT {
        let mut bytes = head;
        outer.read_to_end(&mut bytes).map_err(read_err)?;
        info.json = Some(bytes);
    } else if is_tar || Compression::from_magic(&head) != Compression::None {
        let (diff_id, files, error) = {
            let compression = Compression::from_magic(&head);
            let stream = Cursor::new(head).chain(&mut outer);
            read_layer(compression, stream)
        };
        info.diff_id = diff_id;
        info.files = files;
        info.layer_error = error;
    }
    io::copy(&mut outer, &mut io::sink()).map_err(read_err)?;
    let (_, digest, count) = outer.finish();
    if count != size {
        return Err(truncated(name, count, size));
    }
    info.actual = Some(digest);
    Ok(info)
}

type LayerScan = (
    Option<Sha256Digest>,
    BTreeMap<String, LayerFile>,
    Option<String>,
);

/// diff_id and per-file digests of a layer stream; errors are recorded, not raised, so the
/// blob's own digest (the more precise culprit) is still computed.
fn read_layer<R: Read>(compression: Compression, stream: R) -> LayerScan {
    let decoded = match crate::layers::decoder(compression, stream) {
        Ok(decoded) => decoded,
        Err(e) => return (None, BTreeMap::new(), Some(e.to_string())),
    };
    let mut hashed = HashingReader::new(decoded);
    let mut files = BTreeMap::new();
    let mut error = None;
    {
        let mut inner = tar::Archive::new(&mut hashed);
        let walk = (|| -> io::Result<()> {
            for entry in inner.entries()? {
                let mut entry = entry?;
                if entry.header().entry_type() != tar::EntryType::Regular {
                    continue;
                }
                let path = String::from_utf8_lossy(&entry.path_bytes())
                    .trim_start_matches("./")
                    .trim_start_matches('/')
                    .to_string();
                let mut hashing = HashingReader::new(&mut entry);
                io::copy(&mut hashing, &mut io::sink())?;
                let (_, sha256, size) = hashing.finish();
                files.insert(path, LayerFile { sha256, size });
            }
            Ok(())
        })();
        if let Err(e) = walk {
            error = Some(e.to_string());
        }
    }
    if let Err(e) = io::copy(&mut hashed, &mut io::sink()) {
        error.get_or_insert(e.to_string());
    }
    let (_, diff_id, _) = hashed.finish();
    (Some(diff_id), files, error)
}

#[cfg(test)]
mod tests;
