//! Unpacks a base image's layers, bottom first, into a scratch directory while checking each
//! layer's stored digest and diff_id in the same read.
//!
//! Why unpack at all: the server's ELF closure must be proven against the files the base really
//! ships (symlink chains of sonames, `ld.so.conf`), and the host resolver already replays the
//! loader under any root with chroot semantics. Only what the check needs is written: regular
//! files, directories, symlinks and hard links; device nodes and FIFOs are skipped, and
//! whiteouts (`.wh.name`, `.wh..wh..opq`) are applied as the OCI layer spec says.

use std::collections::HashSet;
use std::fs;
use std::io::{self, Read};
use std::path::Path;

use super::archive::normalize;
use super::{BaseError, BaseLayer};
use crate::digest::{HashingReader, Sha256Digest};

/// What reading a layer measured.
pub struct Measured {
    pub digest: Sha256Digest,
    pub size: u64,
    pub diff_id: Sha256Digest,
}

/// Reads one layer blob from `blob`, unpacking it onto `root`; returns its measured digests.
/// The caller compares them with what the manifest and config promise. A layer that fails to
/// unpack is still read to the end and its error returned beside the digests: a corrupt blob
/// is better reported as a digest mismatch than as the tar error it happens to cause.
pub fn unpack_layer(
    layer: &BaseLayer,
    blob: impl Read,
    root: &Path,
) -> Result<(Measured, Option<BaseError>), BaseError> {
    let read_err = |source: io::Error| BaseError::Layer {
        blob: layer.digest_label(),
        reason: source.to_string(),
    };
    // The stored digest covers the blob as read; the diff_id the decompressed tar stream. The
    // decoder borrows the outer reader, so both hashes survive it.
    let mut stored = HashingReader::new(blob);
    let (unpack_error, diff_id) = {
        let decoded = crate::layers::decoder(layer.compression, &mut stored).map_err(read_err)?;
        let mut tar_stream = HashingReader::new(decoded);
        let unpack_error =
            extract(&mut tar_stream, root)
                .err()
                .map(|(path, source)| BaseError::Layer {
                    blob: layer.digest_label(),
                    reason: match path {
                        Some(path) => format!("cannot unpack `{path}`: {source}"),
                        None => source.to_string(),
                    },
                });
        // The diff_id covers the whole uncompressed stream, trailing zero blocks included.
        if unpack_error.is_none() {
            io::copy(&mut tar_stream, &mut io::sink()).map_err(read_err)?;
        }
        (unpack_error, tar_stream.finish().1)
    };
    // And the stored digest every byte of the blob, even past the end of the compressed stream.
    io::copy(&mut stored, &mut io::sink()).map_err(read_err)?;
    let (_, digest, size) = stored.finish();
    let measured = Measured {
        digest,
        size,
        diff_id,
    };
    Ok((measured, unpack_error))
}

type ExtractError = (Option<String>, io::Error);

fn extract(stream: &mut impl Read, root: &Path) -> Result<(), ExtractError> {
    let mut archive = tar::Archive::new(stream);
    archive.set_preserve_permissions(false);
    archive.set_preserve_mtime(false);
    archive.set_unpack_xattrs(false);
    archive.set_overwrite(true);
    // Paths this layer wrote: an opaque whiteout hides only what lower layers put there.
    let mut written: HashSet<String> = HashSet::new();
    for entry in archive.entries().map_err(|e| (None, e))? {
        let mut entry = entry.map_err(|e| (None, e))?;
        let raw_path = entry.path().map_err(|e| (None, e))?.into_owned();
        let Some(path) = normalize(&raw_path) else {
            continue;
        };
        let ctx = |e: io::Error| (Some(path.clone()), e);
        let (dir, name) = match path.rsplit_once('/') {
            Some((dir, name)) => (dir, name),
            None => ("", path.as_str()),
        };
        if name == ".wh..wh..opq" {
            clear_dir(root, dir, &written).map_err(ctx)?;
            continue;
        }
        if let Some(hidden) = name.strip_prefix(".wh.") {
            let target = if dir.is_empty() {
                hidden.to_string()
            } else {
                format!("{dir}/{hidden}")
            };
            remove(&root.join(&target)).map_err(ctx)?;
            continue;
        }
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind.is_dir() || kind.is_symlink() || kind.is_hard_link()) {
            continue;
        }
        // A later layer may turn a directory into a file or link: replace it like Docker does.
        let dest = root.join(&path);
        if !kind.is_dir() && fs::symlink_metadata(&dest).is_ok_and(|m| m.is_dir()) {
            fs::remove_dir_all(&dest).map_err(ctx)?;
        }
        if let Err(e) = entry.unpack_in(root) {
            // Under a symlink that points out of the rootfs when followed on the build host
            // (`var/run -> /run`): the tar crate refuses to write there, and the loader never
            // looks there for libraries. Anything else is a real failure.
            if escapes(root, &path) {
                continue;
            }
            return Err(ctx(e));
        }
        written.insert(path);
    }
    Ok(())
}

/// Whether `root/path`'s parent, with symlinks followed on the host, lies outside `root`.
fn escapes(root: &Path, path: &str) -> bool {
    let parent = root.join(path);
    let Some(parent) = parent.parent() else {
        return false;
    };
    match (fs::canonicalize(root), fs::canonicalize(parent)) {
        (Ok(root), Ok(parent)) => !parent.starts_with(root),
        _ => false,
    }
}

/// Removes everything under `root/dir` that this layer did not itself write.
fn clear_dir(root: &Path, dir: &str, written: &HashSet<String>) -> io::Result<()> {
    let Ok(entries) = fs::read_dir(root.join(dir)) else {
        return Ok(());
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let rel = if dir.is_empty() {
            name
        } else {
            format!("{dir}/{name}")
        };
        if !written.contains(&rel) {
            remove(&entry.path())?;
        }
    }
    Ok(())
}

fn remove(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}
