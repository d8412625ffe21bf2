//! Writes the one tarball a site receives: an OCI image layout that is also a docker-archive.
//!
//! Metadata comes first (`oci-layout`, `index.json`, `manifest.json`, then the manifest and
//! config blobs) so a reader streaming the archive knows what every later blob is before it
//! arrives; the layers follow, each streamed straight from its sources. The file is written as
//! `<output>.tmp` beside the target, fsynced and renamed only when complete, so a failed build
//! never leaves a partial tarball at the output path.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::image::{ImageDocuments, blob_path};
use crate::layers::{Layer, LayerError};
use crate::progress::Progress;

const WRITE_BUFFER: usize = 1 << 20;

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
}

/// Checks what can be checked about `output` before any expensive work starts.
pub fn check_output(output: &Path) -> Result<(), ExportError> {
    if output.is_dir() {
        return Err(ExportError::OutputIsDirectory(output.to_path_buf()));
    }
    Ok(())
}

/// Writes the image tarball to `output` atomically. `mtime` stamps every outer entry.
pub fn export(
    output: &Path,
    docs: &ImageDocuments,
    layers: &[Layer],
    mtime: u64,
    progress: &dyn Progress,
) -> Result<(), ExportError> {
    check_output(output)?;
    if let Some(dir) = output.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(|source| ExportError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    let tmp = tmp_path(output);
    let write_err = |source| ExportError::Write {
        path: tmp.clone(),
        source,
    };
    let file = File::create(&tmp).map_err(write_err)?;
    let guard = RemoveOnDrop(Some(tmp.clone()));
    let mut tar = OuterTar {
        out: BufWriter::with_capacity(WRITE_BUFFER, file),
        mtime,
    };
    write_all(&mut tar, docs, layers, progress).map_err(|e| match e {
        WriteAllError::Io(source) => write_err(source),
        WriteAllError::Layer(e) => ExportError::Layer(e),
    })?;
    let file = tar
        .out
        .into_inner()
        .map_err(|e| write_err(e.into_error()))?;
    file.sync_all().map_err(write_err)?;
    drop(file);
    fs::rename(&tmp, output).map_err(|source| ExportError::Write {
        path: output.to_path_buf(),
        source,
    })?;
    guard.disarm();
    // Make the rename itself durable; failure here is not worth failing the build over.
    if let Some(dir) = output.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(())
}

/// `<output>.tmp` in the same directory, so the final rename never crosses filesystems.
pub fn tmp_path(output: &Path) -> PathBuf {
    let mut name = output.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    output.with_file_name(name)
}

enum WriteAllError {
    Io(io::Error),
    Layer(LayerError),
}

impl From<io::Error> for WriteAllError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

fn write_all<W: Write>(
    tar: &mut OuterTar<W>,
    docs: &ImageDocuments,
    layers: &[Layer],
    progress: &dyn Progress,
) -> Result<(), WriteAllError> {
    tar.file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    tar.file("index.json", &docs.index_json)?;
    tar.file("manifest.json", &docs.docker_manifest_json)?;
    tar.dir("blobs")?;
    tar.dir("blobs/sha256")?;
    tar.file(&blob_path(&docs.manifest.digest), &docs.manifest.bytes)?;
    tar.file(&blob_path(&docs.config.digest), &docs.config.bytes)?;
    let total: u64 = layers.iter().map(|l| l.spec.content_bytes()).sum();
    let task = progress.task("Writing image", total);
    let mut written = std::collections::BTreeSet::new();
    for layer in layers {
        // Two layers with identical bytes (e.g. two identical shards) share one blob.
        if !written.insert(layer.sums.digest) {
            continue;
        }
        tar.header(
            &blob_path(&layer.sums.digest),
            layer.sums.size,
            tar::EntryType::Regular,
            0o644,
        )?;
        let out = layer
            .write_to(&mut tar.out, task.as_ref())
            .map_err(WriteAllError::Layer)?;
        let _ = out;
        tar.pad(layer.sums.size)?;
    }
    task.finish();
    tar.finish()?;
    Ok(())
}

/// The outer archive. Hand-driven on top of `tar::Header` because a layer's content is written
/// by the layer itself (a `Write` sink), which `tar::Builder::append` (a `Read` source) cannot
/// take without a pipe or a copy.
struct OuterTar<W: Write> {
    out: W,
    mtime: u64,
}

impl<W: Write> OuterTar<W> {
    fn header(&mut self, path: &str, size: u64, kind: tar::EntryType, mode: u32) -> io::Result<()> {
        let mut header = tar::Header::new_gnu();
        // Every outer path is short (`blobs/sha256/<64 hex>` is 77 bytes), so no long-name records.
        header.set_path(path)?;
        header.set_size(size);
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(self.mtime);
        header.set_cksum();
        self.out.write_all(header.as_bytes())
    }

    fn pad(&mut self, size: u64) -> io::Result<()> {
        let rem = (size % 512) as usize;
        if rem != 0 {
            self.out.write_all(&[0u8; 512][..512 - rem])?;
        }
        Ok(())
    }

    fn file(&mut self, path: &str, bytes: &[u8]) -> io::Result<()> {
        self.header(path, bytes.len() as u64, tar::EntryType::Regular, 0o644)?;
        self.out.write_all(bytes)?;
        self.pad(bytes.len() as u64)
    }

    fn dir(&mut self, path: &str) -> io::Result<()> {
        self.header(path, 0, tar::EntryType::Directory, 0o755)
    }

    fn finish(&mut self) -> io::Result<()> {
        self.out.write_all(&[0u8; 1024])?;
        self.out.flush()
    }
}

/// Deletes the temporary file unless the export completed.
struct RemoveOnDrop(Option<PathBuf>);

impl RemoveOnDrop {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = fs::remove_file(path);
        }
    }
}
