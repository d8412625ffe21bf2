//! Writes the one tarball a site receives: an OCI image layout that is also a docker-archive.
//!
//! Layers are streamed straight from their sources into the tarball, once: each goes in behind a
//! placeholder header that is patched in place when the layer's digest and size are known (the
//! entry's name is its digest). One read of the weights, one write, no temporary copy. Hashing
//! and writing happen on background threads ([`pipeline`]), writing with direct I/O where the
//! filesystem has it.
//!
//! The documents (config, manifest, `index.json`, `manifest.json`, `oci-layout`) follow the
//! layers, since they name them. The file is written as `<output>.tmp` beside the target,
//! fsynced and renamed only when complete: a failed build never leaves anything at the output
//! path, and the temporary file is removed.

mod pipeline;

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::archive::outer_header;
use crate::digest::Sha256Digest;
use crate::image::{ImageDocuments, blob_path};
use crate::layers::cache::{DigestCache, Stamp};
use crate::layers::{
    EntryKind, FileSource, FileSum, Layer, LayerError, LayerRole, LayerSpec, LayerSums, Segment,
    pad,
};
use crate::manifest::Compression;
use crate::progress::ProgressTask;
use pipeline::{Pipeline, Pool, Span};

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
    /// The tarball's descriptors again, for the pipelines of [`ImageWriter::add_layers`]'
    /// workers: the ordinary one and, where the filesystem has it, the direct-I/O one.
    file: File,
    direct: Option<File>,
    /// Buffers for every pipeline writing the tarball.
    pool: Arc<Pool>,
    /// mtime of every outer entry.
    mtime: u64,
    /// Directories `create` made, deepest first; removed again if the export fails.
    created_dirs: Vec<PathBuf>,
    /// Digests of weight layers from earlier builds (see [`crate::layers::cache`]).
    cache: DigestCache,
    /// Base-image blobs already in the tarball, with their sizes: an image may list the same
    /// layer twice (the empty layer `sha256:5f70bf18…` often is), but a tarball holds one entry
    /// per name (verifiers refuse a second copy, which could shadow the first).
    blobs_written: std::collections::BTreeMap<Sha256Digest, u64>,
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
        let direct = open_direct(&tmp);
        let pool = Arc::new(Pool::default());
        let (file_clone, direct_clone) = match clone_files(&file, direct.as_ref()) {
            Ok(clones) => clones,
            Err(source) => {
                let _ = fs::remove_file(&tmp);
                remove_empty(&created_dirs);
                return Err(ExportError::Write { path: tmp, source });
            }
        };
        let mut writer = Self {
            output: output.to_path_buf(),
            tmp,
            out: Some(Pipeline::new(file_clone, direct_clone, Arc::clone(&pool))),
            file,
            direct,
            pool,
            mtime,
            created_dirs,
            cache,
            blobs_written: Default::default(),
        };
        writer.entry(|w| {
            w.dir("blobs")?;
            w.dir("blobs/sha256")
        })?;
        Ok(writer)
    }

    /// Streams layers into the tarball, in order, and returns them with their digests.
    ///
    /// Runs of uncompressed layers of host files (the weights, one file per layer) are written
    /// [`LAYER_WORKERS`] at a time, each by a thread with a pipeline of its own, at the offset
    /// its entry will have: their sizes are known before a byte is read. Why: hashing is what
    /// bounds a first build, and one layer's two digests fill one core ([`crate::digest::dual`]).
    pub fn add_layers(
        &mut self,
        specs: Vec<LayerSpec>,
        progress: &dyn ProgressTask,
    ) -> Result<Vec<Layer>, ExportError> {
        let mut layers = Vec::with_capacity(specs.len());
        let mut specs = specs.into_iter().peekable();
        while let Some(spec) = specs.next() {
            if !is_host_layer(&spec) {
                layers.push(self.add_layer(spec, progress)?);
                continue;
            }
            let mut run = vec![spec];
            while let Some(spec) = specs.next_if(is_host_layer) {
                run.push(spec);
            }
            layers.extend(self.add_host_layers(run, progress)?);
        }
        Ok(layers)
    }

    /// Streams one layer that is not a host layer ([`is_host_layer`]) into the tarball, hashed
    /// on the main pipeline, and returns it with its digests.
    fn add_layer(
        &mut self,
        spec: LayerSpec,
        progress: &dyn ProgressTask,
    ) -> Result<Layer, ExportError> {
        let out = self.pipeline()?;
        let header_at = open_blob(out, true).map_err(|e| self.write_err(e))?;
        let out = self.pipeline()?;
        let (out, written) = spec.write_unhashed(out, progress)?;
        let ended = out.end_digest(Span::Blob);
        let (digest, size) = ended.map_err(|e| self.write_err(e))?;
        let sums = written.into_sums(digest, size);
        let (mtime, out) = (self.mtime, self.pipeline()?);
        let closed = close_blob(out, header_at, &sums.digest, sums.size, mtime);
        closed.map_err(|e| self.write_err(e))?;
        Ok(Layer { spec, sums })
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
        if let Some(&size) = self.blobs_written.get(&expected) {
            let sums = crate::layers::LayerSums {
                diff_id,
                digest: expected,
                size,
                files: Vec::new(),
            };
            return Ok(Layer { spec, sums });
        }
        let (tmp, mtime) = (self.tmp.clone(), self.mtime);
        let write_err = |source| write_error(&tmp, source);
        let out = self.pipeline()?;
        let header_at = open_blob(out, true).map_err(write_err)?;
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
        let (digest, size) = out.end_digest(Span::Blob).map_err(write_err)?;
        if digest != expected {
            return Err(ExportError::BlobChanged {
                blob: blob_name.to_string(),
                expected: expected.prefixed(),
                actual: digest.prefixed(),
            });
        }
        close_blob(out, header_at, &digest, size, mtime).map_err(write_err)?;
        self.blobs_written.insert(digest, size);
        let sums = crate::layers::LayerSums {
            diff_id,
            digest,
            size,
            files: Vec::new(),
        };
        Ok(Layer { spec, sums })
    }

    /// Writes a run of uncompressed host-file layers: one on the main pipeline, several with
    /// [`LAYER_WORKERS`] workers, each layer at its planned offset, the main pipeline skipping
    /// over them.
    fn add_host_layers(
        &mut self,
        specs: Vec<LayerSpec>,
        progress: &dyn ProgressTask,
    ) -> Result<Vec<Layer>, ExportError> {
        let mut planned = Vec::with_capacity(specs.len());
        for spec in specs {
            let segments = spec.segments()?;
            planned.push((spec, segments));
        }
        let (mtime, cache, tmp) = (self.mtime, &self.cache, &self.tmp);
        let Some(out) = self.out.as_mut() else {
            return Err(write_error(tmp, closed()));
        };
        if planned.len() == 1 {
            let (spec, segments) = planned.pop().expect("one");
            return Ok(vec![write_host_layer(
                out, spec, &segments, cache, mtime, tmp, progress,
            )?]);
        }
        // Each entry: its 512-byte header, the blob, padding to 512.
        let mut at = out.position();
        let mut offsets = Vec::with_capacity(planned.len());
        for (_, segments) in &planned {
            offsets.push(at);
            at += 512 + segment_bytes(segments).next_multiple_of(512);
        }
        out.skip_to(at).map_err(|e| write_error(tmp, e))?;

        let (file, direct, pool) = (&self.file, self.direct.as_ref(), &self.pool);
        let next = AtomicUsize::new(0);
        let failed = AtomicBool::new(false);
        type Job = Option<(LayerSpec, Vec<Segment>)>;
        let jobs: Vec<Mutex<Job>> = planned.into_iter().map(|p| Mutex::new(Some(p))).collect();
        let results: Vec<Mutex<Option<Result<Layer, ExportError>>>> =
            jobs.iter().map(|_| Mutex::new(None)).collect();
        let worker = || {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= jobs.len() || failed.load(Ordering::Relaxed) {
                    return;
                }
                let job = jobs[i].lock().map(|mut job| job.take());
                let Ok(Some((spec, segments))) = job else {
                    return;
                };
                let result = (|| {
                    let (f, d) = clone_files(file, direct).map_err(|e| write_error(tmp, e))?;
                    let mut out = Pipeline::starting_at(f, d, Arc::clone(pool), offsets[i]);
                    let layer =
                        write_host_layer(&mut out, spec, &segments, cache, mtime, tmp, progress)?;
                    out.finish().map_err(|e| write_error(tmp, e))?;
                    Ok(layer)
                })();
                failed.fetch_or(result.is_err(), Ordering::Relaxed);
                if let Ok(mut slot) = results[i].lock() {
                    *slot = Some(result);
                }
            }
        };
        std::thread::scope(|scope| {
            for _ in 0..LAYER_WORKERS.min(jobs.len()) {
                scope.spawn(worker);
            }
        });
        let mut layers = Vec::with_capacity(results.len());
        for result in results {
            match result.into_inner().ok().flatten() {
                Some(result) => layers.push(result?),
                // Layers are taken in order, so a failed one comes before any not started.
                None => return Err(write_error(tmp, io::Error::other("a layer worker stopped"))),
            }
        }
        Ok(layers)
    }

    /// Writes the documents, fsyncs and renames the tarball into place.
    pub fn finish(mut self, docs: &ImageDocuments) -> Result<(), ExportError> {
        self.entry(|w| {
            w.file(&blob_path(&docs.config.digest), &docs.config.bytes)?;
            w.file(&blob_path(&docs.manifest.digest), &docs.manifest.bytes)?;
            w.file("index.json", &docs.index_json)?;
            w.file("manifest.json", &docs.docker_manifest_json)?;
            w.file("oci-layout", crate::image::OCI_LAYOUT)?;
            w.out.write_all(&[0u8; 1024])
        })?;
        let pipeline = self.out.take().ok_or_else(|| self.write_err(closed()))?;
        let file = pipeline.finish().map_err(|e| self.write_err(e))?.file;
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
            None => Err(write_error(&self.tmp, closed())),
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
        write_error(&self.tmp, source)
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

/// Reads a host file straight into the tarball's buffers (no intermediate copy) and, if `hash`,
/// has the pipeline digest it beside the layer ([`Span::Part`]); errors name the file.
fn stream_host_file(
    out: &mut Pipeline,
    path: &Path,
    size: u64,
    progress: &dyn ProgressTask,
    role: LayerRole,
    hash: bool,
) -> Result<Option<Sha256Digest>, ExportError> {
    let read_err = |source| LayerError::Read {
        path: path.to_path_buf(),
        role,
        source,
    };
    let write_err = |source| LayerError::Write { role, source };
    let mut file = File::open(path).map_err(read_err)?;
    if hash {
        out.start_digest(Span::Part).map_err(write_err)?;
    }
    let mut left = size;
    while left > 0 {
        out.reserve().map_err(write_err)?;
        let max = usize::try_from(left).unwrap_or(usize::MAX);
        let n = out.read_from(&mut file, max).map_err(read_err)?;
        if n == 0 {
            return Err(LayerError::Changed {
                path: path.to_path_buf(),
                what: format!("it is shorter than the {size} bytes it had"),
            }
            .into());
        }
        left -= n as u64;
        progress.advance(n as u64);
    }
    if !hash {
        return Ok(None);
    }
    let (digest, _) = out.end_digest(Span::Part).map_err(write_err)?;
    Ok(Some(digest))
}

/// How many weight layers are written at once ([`ImageWriter::add_layers`]). Each has a
/// pipeline of three threads and up to 9 MiB of buffers; two keep two cores hashing and the
/// peak RSS far below 64 MiB.
const LAYER_WORKERS: usize = 2;

/// The tarball's descriptors again, for another pipeline (a `dup` shares the open file
/// description, so the clone of the direct-I/O one is direct too).
fn clone_files(file: &File, direct: Option<&File>) -> io::Result<(File, Option<File>)> {
    Ok((file.try_clone()?, direct.map(File::try_clone).transpose()?))
}

/// Whether a layer is written from [`Segment`]s: uncompressed, with files of the build host.
fn is_host_layer(spec: &LayerSpec) -> bool {
    spec.compression == Compression::None && spec.has_host_files()
}

/// The size of the blob `segments` make up.
fn segment_bytes(segments: &[Segment]) -> u64 {
    segments
        .iter()
        .map(|s| match s {
            Segment::Bytes(bytes) => bytes.len() as u64,
            Segment::File { size, .. } => *size,
        })
        .sum()
}

fn write_error(tmp: &Path, source: io::Error) -> ExportError {
    ExportError::Write {
        path: tmp.to_path_buf(),
        source,
    }
}

/// Starts a blob entry whose name (its digest) and size are known only at its end: writes
/// a placeholder header, optionally starts the digest, and returns where the header is.
fn open_blob(out: &mut Pipeline, digest: bool) -> io::Result<u64> {
    let header_at = out.position();
    out.write_all(&[0u8; 512])?;
    if digest {
        out.start_digest(Span::Blob)?;
    }
    Ok(header_at)
}

/// Ends the blob entry [`open_blob`] began: pads it and patches its header.
fn close_blob(
    out: &mut Pipeline,
    header_at: u64,
    digest: &Sha256Digest,
    size: u64,
    mtime: u64,
) -> io::Result<()> {
    let header = outer_header(&blob_path(digest), size, tar::EntryType::Regular, mtime)?;
    pad(out, size)?;
    out.patch(header_at, &header)
}

/// Writes an uncompressed layer from its [`Segment`]s into `out`. On a cache hit, host files
/// are copied and nothing is hashed; on a miss, they are hashed as usual and the sums recorded.
/// Either way the files' stamps must be unchanged after the copy.
fn write_host_layer(
    out: &mut Pipeline,
    spec: LayerSpec,
    segments: &[Segment],
    cache: &DigestCache,
    mtime: u64,
    tmp: &Path,
    progress: &dyn ProgressTask,
) -> Result<Layer, ExportError> {
    let role = spec.role;
    let write_err = |source| write_error(tmp, source);
    let key = DigestCache::key(segments).map_err(|(path, source)| LayerError::Read {
        path,
        role,
        source,
    })?;
    let hit = cache.get(&key);
    let header_at = open_blob(out, hit.is_none()).map_err(write_err)?;
    let start = out.position();
    let mut digests = Vec::new();
    for segment in segments {
        match segment {
            Segment::Bytes(bytes) => out.write_all(bytes).map_err(write_err)?,
            Segment::File { path, size } => {
                let digest = stream_host_file(out, path, *size, progress, role, hit.is_none())?;
                digests.extend(digest);
            }
        }
    }
    let sums = match hit {
        Some(sums) => sums,
        None => {
            let (digest, size) = out.end_digest(Span::Blob).map_err(write_err)?;
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
    cache.put(&key, &sums);
    close_blob(out, header_at, &sums.digest, sums.size, mtime).map_err(write_err)?;
    Ok(Layer { spec, sums })
}

/// Opens `path` a second time for direct I/O (see [`pipeline`]), unless the filesystem refuses
/// or `APPLIANCE_DIRECT_IO=0` asks for the page cache only (for filesystems where direct I/O is
/// slow, such as some network mounts, and for comparing the two).
fn open_direct(path: &Path) -> Option<File> {
    use std::os::unix::fs::OpenOptionsExt;
    if std::env::var_os("APPLIANCE_DIRECT_IO").is_some_and(|v| v == "0") {
        return None;
    }
    fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .ok()
}

/// Small whole entries (directories, JSON documents).
struct Entries<'a> {
    out: &'a mut Pipeline,
    mtime: u64,
}

impl Entries<'_> {
    fn file(&mut self, path: &str, bytes: &[u8]) -> io::Result<()> {
        let size = bytes.len() as u64;
        self.out.write_all(&outer_header(
            path,
            size,
            tar::EntryType::Regular,
            self.mtime,
        )?)?;
        self.out.write_all(bytes)?;
        pad(self.out, size)
    }

    fn dir(&mut self, path: &str) -> io::Result<()> {
        self.out.write_all(&outer_header(
            path,
            0,
            tar::EntryType::Directory,
            self.mtime,
        )?)
    }
}
