//! Writes the one tarball a site receives: an OCI image layout that is also a docker-archive.
//!
//! Layers are streamed straight from their sources into the tarball, once: each goes in behind a
//! placeholder header that is patched in place when the layer's digest and size are known (the
//! entry's name is its digest). One read of the weights, one write, no temporary copy. Writes
//! happen on a background thread ([`pipeline`]) so disk writes overlap with hashing.
//!
//! The documents (config, manifest, `index.json`, `manifest.json`, `oci-layout`) follow the
//! layers, since they name them. The file is written as `<output>.tmp` beside the target,
//! fsynced and renamed only when complete: a failed build never leaves anything at the output
//! path, and the temporary file is removed.

mod pipeline;

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest as _, Sha256};

use crate::digest::Sha256Digest;
use crate::image::{ImageDocuments, blob_path};
use crate::layers::cache::{DigestCache, Stamp};
use crate::layers::{
    EntryKind, FileSource, FileSum, Layer, LayerError, LayerRole, LayerSpec, LayerSums, Segment,
    pad,
};
use crate::manifest::Compression;
use crate::progress::ProgressTask;
use pipeline::Pipeline;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("Output path `{0}` is a directory; give a file name such as `{0}/image.tar`")]
    OutputIsDirectory(PathBuf),
    #[error("Failed to create the output directory `{path}`")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Failed to write `{path}`")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Layer(#[from] LayerError),
    #[error("Failed to read the base layer `{blob}`")]
    ReadBlob {
        blob: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "The base layer `{blob}` changed while the image was being built: expected {expected}, got {actual}"
    )]
    BlobChanged {
        blob: String,
        expected: String,
        actual: String,
    },
}

/// Checks what can be checked about `output` before any expensive work starts.
pub fn check_output(output: &Path) -> Result<(), ExportError> {
    if output.is_dir() {
        return Err(ExportError::OutputIsDirectory(output.to_path_buf()));
    }
    Ok(())
}

/// `<output>.tmp` in the same directory, so the final rename never crosses filesystems.
pub fn tmp_path(output: &Path) -> PathBuf {
    let mut name = output.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    output.with_file_name(name)
}

/// An image tarball being written. Dropping it without [`ImageWriter::finish`] removes the
/// temporary file.
pub struct ImageWriter {
    output: PathBuf,
    tmp: PathBuf,
    out: Option<Pipeline>,
    /// mtime of every outer entry.
    mtime: u64,
    /// Directories `create` made, deepest first; removed again if the export fails.
    created_dirs: Vec<PathBuf>,
    /// Digests of weight layers from earlier builds (see [`crate::layers::cache`]).
    cache: DigestCache,
}

impl ImageWriter {
    /// Creates `<output>.tmp` (and the output directory if needed). Uncompressed layers of host
    /// files reuse and record their digests in `cache`.
    pub fn create(output: &Path, mtime: u64, cache: DigestCache) -> Result<Self, ExportError> {
        check_output(output)?;
        let mut created_dirs = Vec::new();
        if let Some(dir) = output.parent().filter(|d| !d.as_os_str().is_empty()) {
            created_dirs = dir
                .ancestors()
                .take_while(|d| !d.as_os_str().is_empty() && !d.exists())
                .map(Path::to_path_buf)
                .collect();
            fs::create_dir_all(dir).map_err(|source| ExportError::CreateDir {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let tmp = tmp_path(output);
        let file = match File::create(&tmp) {
            Ok(file) => file,
            Err(source) => {
                remove_empty(&created_dirs);
                return Err(ExportError::Write { path: tmp, source });
            }
        };
        let mut writer = Self {
            output: output.to_path_buf(),
            tmp,
            out: Some(Pipeline::new(file)),
            mtime,
            created_dirs,
            cache,
        };
        writer.entry(|w| {
            w.dir("blobs")?;
            w.dir("blobs/sha256")
        })?;
        Ok(writer)
    }

    /// Streams one layer into the tarball and returns it with its digests.
    pub fn add_layer(
        &mut self,
        spec: LayerSpec,
        progress: &dyn ProgressTask,
    ) -> Result<Layer, ExportError> {
        if spec.compression == Compression::None && spec.has_host_files() {
            return self.add_host_layer(spec, progress);
        }
        let header_at = self.open_blob(true)?;
        let out = self.pipeline()?;
        let (out, written) = spec.write_unhashed(out, progress)?;
        let ended = out.end_digest();
        let (digest, size) = ended.map_err(|e| self.write_err(e))?;
        let sums = written.into_sums(digest, size);
        self.close_blob(header_at, &sums.digest, sums.size)?;
        Ok(Layer { spec, sums })
    }

    /// Starts a blob entry whose name (its digest) and size are known only at its end: writes
    /// a placeholder header, optionally starts the digest, and returns where the header is.
    fn open_blob(&mut self, digest: bool) -> Result<u64, ExportError> {
        let out = self.pipeline()?;
        let header_at = out.position();
        let result = out
            .write_all(&[0u8; 512])
            .and_then(|()| if digest { out.start_digest() } else { Ok(()) });
        result.map_err(|e| self.write_err(e))?;
        Ok(header_at)
    }

    /// Ends the blob entry [`ImageWriter::open_blob`] began: pads it and patches its header.
    fn close_blob(
        &mut self,
        header_at: u64,
        digest: &Sha256Digest,
        size: u64,
    ) -> Result<(), ExportError> {
        let mtime = self.mtime;
        let out = self.pipeline()?;
        let result = header(
            &blob_path(digest),
            size,
            tar::EntryType::Regular,
            0o644,
            mtime,
        )
        .and_then(|header| {
            pad(out, size)?;
            out.patch(header_at, &header)
        });
        result.map_err(|e| self.write_err(e))
    }

    /// Adds a small whole file (signature and attestation documents) before the image documents.
    pub fn add_file(&mut self, path: &str, bytes: &[u8]) -> Result<(), ExportError> {
        self.entry(|w| w.file(path, bytes))
    }

    /// Adds a directory entry (e.g. `signatures`).
    pub fn add_dir(&mut self, path: &str) -> Result<(), ExportError> {
        self.entry(|w| w.dir(path))
    }

    /// Copies an existing layer blob (a base image's) into the tarball byte for byte, checking
    /// as it streams that it is still the blob `expected` names; `spec` only describes it.
    pub fn add_blob(
        &mut self,
        spec: LayerSpec,
        blob_name: &str,
        blob: &mut dyn Read,
        expected: Sha256Digest,
        diff_id: Sha256Digest,
        progress: &dyn ProgressTask,
    ) -> Result<Layer, ExportError> {
        let tmp = self.tmp.clone();
        let write_err = |source| ExportError::Write {
            path: tmp.clone(),
            source,
        };
        let header_at = self.open_blob(true)?;
        let out = self.pipeline()?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = match blob.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(ExportError::ReadBlob {
                        blob: blob_name.to_string(),
                        source,
                    });
                }
            };
            out.write_all(&buf[..n]).map_err(write_err)?;
            progress.advance(n as u64);
        }
        let (digest, size) = out.end_digest().map_err(write_err)?;
        if digest != expected {
            return Err(ExportError::BlobChanged {
                blob: blob_name.to_string(),
                expected: expected.prefixed(),
                actual: digest.prefixed(),
            });
        }
        self.close_blob(header_at, &digest, size)?;
        let sums = crate::layers::LayerSums {
            diff_id,
            digest,
            size,
            files: Vec::new(),
        };
        Ok(Layer { spec, sums })
    }

    /// Writes an uncompressed layer from its [`Segment`]s. On a cache hit, host files are
    /// copied by the kernel and nothing is hashed; on a miss, they are hashed as usual and the
    /// sums recorded. Either way the files' stamps must be unchanged after the copy.
    fn add_host_layer(
        &mut self,
        spec: LayerSpec,
        progress: &dyn ProgressTask,
    ) -> Result<Layer, ExportError> {
        let (role, tmp) = (spec.role, self.tmp.clone());
        let write_err = |source| ExportError::Write {
            path: tmp.clone(),
            source,
        };
        let segments = spec.segments()?;
        let key = DigestCache::key(&segments).map_err(|(path, source)| LayerError::Read {
            path,
            role,
            source,
        })?;
        let hit = self.cache.get(&key);
        let header_at = self.open_blob(hit.is_none())?;
        let out = self.pipeline()?;
        let start = out.position();
        let mut digests = Vec::new();
        for segment in &segments {
            match segment {
                Segment::Bytes(bytes) => out.write_all(bytes).map_err(write_err)?,
                Segment::File { path, size } if hit.is_some() => {
                    let file = File::open(path)
                        .map_err(|source| LayerError::Read {
                            path: path.clone(),
                            role,
                            source,
                        })
                        .map(Arc::new)?;
                    let name: Arc<Path> = Arc::from(path.as_path());
                    let mut left = *size;
                    while left > 0 {
                        let piece = left.min(KERNEL_COPY_PIECE);
                        out.copy_from(&file, piece, &name).map_err(write_err)?;
                        progress.advance(piece);
                        left -= piece;
                    }
                }
                Segment::File { path, size } => {
                    digests.push(stream_host_file(out, path, *size, progress, role)?);
                }
            }
        }
        let sums = match hit {
            Some(sums) => {
                out.sync().map_err(write_err)?;
                sums
            }
            None => {
                let (digest, size) = out.end_digest().map_err(write_err)?;
                // The same file list `LayerSpec::write_unhashed` reports, in entry order.
                let mut host_digests = digests.into_iter();
                let files = spec
                    .entries
                    .iter()
                    .filter_map(|e| match &e.kind {
                        EntryKind::File { source, size } => Some(FileSum {
                            path: e.path.clone(),
                            sha256: match source {
                                FileSource::Host(_) => host_digests.next()?,
                                FileSource::Bytes(bytes) => Sha256Digest::of(bytes),
                            },
                            size: *size,
                        }),
                        _ => None,
                    })
                    .collect();
                LayerSums {
                    diff_id: digest,
                    digest,
                    size,
                    files,
                }
            }
        };
        for (path, before) in &key.stamps {
            if Stamp::of(path).ok().as_ref() != Some(before) {
                return Err(LayerError::Changed {
                    path: path.clone(),
                    what: "it was modified while it was being copied".into(),
                }
                .into());
            }
        }
        let written = out.position() - start;
        if written != sums.size {
            return Err(write_err(io::Error::other(format!(
                "the {role:?} layer has {written} bytes where its digest covers {}",
                sums.size
            ))));
        }
        self.cache.put(&key, &sums);
        self.close_blob(header_at, &sums.digest, sums.size)?;
        Ok(Layer { spec, sums })
    }

    /// Writes the documents, fsyncs and renames the tarball into place.
    pub fn finish(mut self, docs: &ImageDocuments) -> Result<(), ExportError> {
        self.entry(|w| {
            w.file(&blob_path(&docs.config.digest), &docs.config.bytes)?;
            w.file(&blob_path(&docs.manifest.digest), &docs.manifest.bytes)?;
            w.file("index.json", &docs.index_json)?;
            w.file("manifest.json", &docs.docker_manifest_json)?;
            w.file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
            w.out.write_all(&[0u8; 1024])
        })?;
        let pipeline = self.out.take().ok_or_else(|| self.write_err(closed()))?;
        let file = pipeline.finish().map_err(|e| self.write_err(e))?;
        file.sync_all().map_err(|e| self.write_err(e))?;
        drop(file);
        fs::rename(&self.tmp, &self.output).map_err(|source| ExportError::Write {
            path: self.output.clone(),
            source,
        })?;
        // Make the rename itself durable; failing here is not worth failing the build over.
        if let Some(dir) = self.output.parent().filter(|d| !d.as_os_str().is_empty()) {
            let _ = File::open(dir).and_then(|d| d.sync_all());
        }
        Ok(())
    }

    fn pipeline(&mut self) -> Result<&mut Pipeline, ExportError> {
        match self.out.as_mut() {
            Some(out) => Ok(out),
            None => Err(ExportError::Write {
                path: self.tmp.clone(),
                source: closed(),
            }),
        }
    }

    fn entry(
        &mut self,
        f: impl FnOnce(&mut Entries<'_>) -> io::Result<()>,
    ) -> Result<(), ExportError> {
        let mtime = self.mtime;
        let out = self.pipeline()?;
        let result = f(&mut Entries { out, mtime });
        result.map_err(|e| self.write_err(e))
    }

    fn write_err(&self, source: io::Error) -> ExportError {
        ExportError::Write {
            path: self.tmp.clone(),
            source,
        }
    }
}

impl Drop for ImageWriter {
    fn drop(&mut self) {
        if let Some(out) = self.out.take() {
            let _ = out.finish();
            let _ = fs::remove_file(&self.tmp);
            remove_empty(&self.created_dirs);
        }
    }
}

/// Removes directories (deepest first) that are empty; a failed build leaves no trace.
fn remove_empty(dirs: &[PathBuf]) {
    for dir in dirs {
        if fs::remove_dir(dir).is_err() {
            break;
        }
    }
}

fn closed() -> io::Error {
    io::Error::other("the image writer is closed")
}

/// Host files are read (and hashed) in pieces this big, small enough to still be in the L2 cache
/// when hashed right after the read. (On the 2-core CI machine a 2 GiB first build took the same
/// time with 1 MiB and 64 KiB pieces: the layer digest on the writer thread bounds it.)
const HASH_PIECE: usize = 256 << 10;

/// Reads a host file straight into the tarball's buffers (no intermediate copy), hashing each
/// piece as it lands; errors name the file. The layer digest is the writer thread's job.
fn stream_host_file(
    out: &mut Pipeline,
    path: &Path,
    size: u64,
    progress: &dyn ProgressTask,
    role: LayerRole,
) -> Result<Sha256Digest, ExportError> {
    let read_err = |source| LayerError::Read {
        path: path.to_path_buf(),
        role,
        source,
    };
    let mut file = File::open(path).map_err(read_err)?;
    let mut hasher = Sha256::new();
    let mut left = size;
    while left > 0 {
        out.reserve()
            .map_err(|source| LayerError::Write { role, source })?;
        let max = usize::try_from(left).unwrap_or(usize::MAX).min(HASH_PIECE);
        let piece = out.read_from(&mut file, max).map_err(read_err)?;
        if piece.is_empty() {
            return Err(LayerError::Changed {
                path: path.to_path_buf(),
                what: format!("it is shorter than the {size} bytes it had"),
            }
            .into());
        }
        hasher.update(piece);
        left -= piece.len() as u64;
        progress.advance(piece.len() as u64);
    }
    Ok(Sha256Digest::from_hasher(hasher))
}

/// Kernel copies are queued in pieces this big, so progress moves while a large file copies.
const KERNEL_COPY_PIECE: u64 = 64 << 20;

/// Small whole entries (directories, JSON documents).
struct Entries<'a> {
    out: &'a mut Pipeline,
    mtime: u64,
}

impl Entries<'_> {
    fn file(&mut self, path: &str, bytes: &[u8]) -> io::Result<()> {
        let size = bytes.len() as u64;
        self.out.write_all(&header(
            path,
            size,
            tar::EntryType::Regular,
            0o644,
            self.mtime,
        )?)?;
        self.out.write_all(bytes)?;
        pad(self.out, size)
    }

    fn dir(&mut self, path: &str) -> io::Result<()> {
        self.out.write_all(&header(
            path,
            0,
            tar::EntryType::Directory,
            0o755,
            self.mtime,
        )?)
    }
}

/// One outer header. Outer paths are all short (`blobs/sha256/<64 hex>` is 77 bytes), so no
/// long-name records are needed; sizes of 8 GiB and more use GNU base-256.
fn header(
    path: &str,
    size: u64,
    kind: tar::EntryType,
    mode: u32,
    mtime: u64,
) -> io::Result<[u8; 512]> {
    let mut header = tar::Header::new_gnu();
    header.set_path(path)?;
    header.set_size(size);
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(mtime);
    header.set_cksum();
    Ok(*header.as_bytes())
}
