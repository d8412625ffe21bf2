//! The build's fourth step: every layer streamed into the tarball in one pass, hashed as it
//! goes, then the measured digests held to the pins, the Hub's verified digests and the lock.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Result, bail};

use super::{Fetched, PathLock, Planned, Resolved, Session};
use crate::digest::Sha256Digest;
use crate::export::ImageWriter;
use crate::fetch;
use crate::layers::cache::DigestCache;
use crate::layers::{FileSum, Layer, LayerRole, LayerSpec};
use crate::lock::LockFile;
use crate::manifest::Manifest;

/// The tarball so far: everything but the image documents and signatures.
pub struct Written {
    /// Held open until the commit step: dropped on any later failure, it deletes the partial
    /// tarball, so a failed check leaves nothing written.
    pub writer: ImageWriter,
    /// The base image's layers, then ours.
    pub layers: Vec<Layer>,
    /// Every model file's digest, as measured while its layer was written, by its path in the
    /// model directory: the provenance and the eval subject describe these bytes, not the
    /// host's files.
    pub measured: BTreeMap<String, FileSum>,
    /// The lock to rewrite once the tarball is complete, when its `path` sections moved.
    pub lock_update: Option<(LockFile, PathBuf)>,
}

pub fn write(
    session: &Session,
    resolved: &Resolved,
    fetched: &Fetched,
    planned: &Planned,
    specs: Vec<LayerSpec>,
    path_lock: PathLock,
) -> Result<Written> {
    let (writer, layers) = write_layers(session, resolved, planned, specs)?;
    let model_prefix = format!("{}/", planned.model_dir);
    let measured: BTreeMap<String, FileSum> = layers
        .iter()
        .filter(|l| matches!(l.spec.role, LayerRole::Weights | LayerRole::ModelFiles))
        .flat_map(|l| &l.sums.files)
        .filter_map(|f| Some((f.path.strip_prefix(&model_prefix)?.to_string(), f.clone())))
        .collect();
    let lock_update = check_packaged(session, &resolved.manifest, fetched, &measured, path_lock)?;
    Ok(Written {
        writer,
        layers,
        measured,
        lock_update,
    })
}

fn write_layers(
    session: &Session,
    resolved: &Resolved,
    planned: &Planned,
    specs: Vec<LayerSpec>,
) -> Result<(ImageWriter, Vec<Layer>)> {
    let settings = session.settings;
    let output = &resolved.output;
    let mtime = resolved.manifest.image.created as u64;
    session.log.step(&format!("Writing {}", output.display()));
    let cache = DigestCache::new(&settings.cache_dir, !settings.verify_cache);
    let mut writer = ImageWriter::create(output, mtime, cache)?;
    let base = planned.userland.base.as_ref();
    let base_bytes: u64 = base.iter().flat_map(|b| &b.layers).map(|l| l.size).sum();
    let total: u64 = base_bytes + specs.iter().map(|s| s.content_bytes()).sum::<u64>();
    let task = session.progress.task("Writing", total);
    // The base image's layers go first, byte for byte: ours sit on top of its rootfs.
    let mut layers: Vec<Layer> = Vec::new();
    if let Some(base) = base {
        for layer in &base.layers {
            let mut blob = base.open_layer(layer)?;
            layers.push(writer.add_blob(
                base.layer_spec(layer, mtime),
                &layer.blob,
                &mut blob,
                layer.digest,
                layer.diff_id,
                task.as_ref(),
            )?);
        }
    }
    layers.extend(writer.add_layers(specs, task.as_ref())?);
    task.finish();
    Ok((writer, layers))
}

/// The packaged bytes against the pins, the Hub's verified digests and the `path` lock. Run
/// after the layers are written because only then are the digests known; the lock to write
/// comes back rather than being written, as the tarball is not complete yet.
fn check_packaged(
    session: &Session,
    manifest: &Manifest,
    fetched: &Fetched,
    measured: &BTreeMap<String, FileSum>,
    path_lock: PathLock,
) -> Result<Option<(LockFile, PathBuf)>> {
    let quantization = &fetched.quantization;
    let digests: BTreeMap<String, Sha256Digest> = measured
        .iter()
        .map(|(path, f)| (path.clone(), f.sha256))
        .collect();
    if quantization.is_none() {
        fetch::check_pins(&manifest.model.pins, &digests)?;
    }
    if manifest.model.require_pins {
        // The quantizer's inputs were checked as it read them; the GGUF it wrote has no pin to
        // meet.
        let tokenizer_pins = manifest.model.tokenizer.as_ref().map(|t| &t.pins);
        let generated = |f: &str| quantization.is_some() && f == crate::quantize::GGUF_NAME;
        fetch::check_all_pinned(
            |f| {
                manifest.model.pins.contains_key(f)
                    || tokenizer_pins.is_some_and(|p| p.contains_key(f))
                    || generated(f)
            },
            &digests,
        )?;
    }
    if let Some(t) = &manifest.model.tokenizer {
        fetch::check_pins(&t.pins, &digests)?;
    }
    if let Some(verified) = &fetched.hub_digests {
        for (file, expected) in verified {
            // Files the quantizer consumed were checked as it read them.
            if quantization.is_some() && !digests.contains_key(file) {
                continue;
            }
            if digests.get(file) != Some(expected) {
                bail!(
                    "`{file}` changed in the cache while it was packaged: verified as {}, packaged as {}; nothing was written",
                    expected.hex(),
                    digests.get(file).map(|d| d.hex()).unwrap_or_default()
                );
            }
        }
    }
    // The quantizer's inputs are what a `path` lock records for the model directory.
    let quantizer_inputs: BTreeMap<&str, Sha256Digest> = quantization
        .iter()
        .flat_map(|q| &q.sources)
        .map(|(path, digest, _)| (path.as_str(), *digest))
        .collect();
    let lock_update = path_lock.lock.check_after(
        &path_lock.sources,
        |path| {
            digests
                .get(path)
                .or_else(|| quantizer_inputs.get(path))
                .copied()
        },
        session.log,
    )?;
    if !manifest.model.pins.is_empty() {
        session.log.step(&format!(
            "Verified {} pinned sha256 digests",
            manifest.model.pins.len()
        ));
    }
    Ok(lock_update)
}
