//! `verify --manifest M.toml [--lock M.lock]`: the image is what the reviewed manifest and lock
//! say, not only intact and signed. Auditors hold those two files from the review before the
//! build; this compares them with what the layers and the config actually hold.

use std::collections::BTreeMap;

use super::{VerifyError, fail, scan::LayerFile};
use crate::digest::Sha256Digest;
use crate::lock::LockFile;
use crate::manifest::Manifest;
use crate::summary::labels;

/// What the auditor reviewed.
pub struct Reviewed {
    pub manifest: Manifest,
    /// The lock, and where it was read from (for messages).
    pub lock: Option<(LockFile, String)>,
}

/// Compares the image (its `name:tag`, config labels and layer files) with the reviewed files;
/// returns the report lines for what was checked.
pub fn check(
    reviewed: &Reviewed,
    repo_tag: &str,
    labels_found: &BTreeMap<String, String>,
    files: &BTreeMap<String, LayerFile>,
) -> Result<Vec<String>, VerifyError> {
    let m = &reviewed.manifest;
    let shown = m.path.display().to_string();
    let mut checks = Vec::new();

    let want = m.image.reference.name_tag();
    if repo_tag != want {
        return fail(
            &shown,
            format!("names the image `{want}`, but the tarball holds `{repo_tag}`"),
        );
    }
    for (key, value) in &m.image.labels {
        match labels_found.get(key) {
            Some(v) if v == value => {}
            other => {
                return fail(
                    &shown,
                    format!(
                        "label `{key}` is `{value}` in the manifest, {} in the image",
                        other.map_or("absent".to_string(), |v| format!("`{v}`"))
                    ),
                );
            }
        }
    }
    let served = &m.server.served_model_name;
    if labels_found.get(labels::MODEL_NAME) != Some(served) {
        return fail(
            &shown,
            format!(
                "serves the model as `{served}`, the image's label `{}` says {:?}",
                labels::MODEL_NAME,
                labels_found.get(labels::MODEL_NAME)
            ),
        );
    }
    checks.push(format!(
        "the manifest `{shown}`: image `{want}`, its {} labels and the served model name match",
        m.image.labels.len()
    ));

    let dir = format!("{}/{served}", crate::layers::plan::MODELS_ROOT);
    let in_image = |path: &str| files.get(&format!("{dir}/{path}"));
    // Pins: every pinned file is in the image with the pinned sha256.
    let pins = m
        .model
        .pins
        .iter()
        .chain(m.model.tokenizer.iter().flat_map(|t| &t.pins));
    let mut pinned = 0;
    for (path, want) in pins {
        match in_image(path) {
            Some(f) if f.sha256 == *want => pinned += 1,
            Some(f) => {
                return fail(
                    format!("{dir}/{path}"),
                    format!(
                        "is pinned to sha256 {} in `{shown}`, the image holds {}",
                        want.hex(),
                        f.sha256.hex()
                    ),
                );
            }
            None => {
                return fail(
                    format!("{dir}/{path}"),
                    format!("is pinned in `{shown}` but is not in the image"),
                );
            }
        }
    }
    if pinned > 0 {
        checks.push(format!(
            "{pinned} files pinned in the manifest have their pinned sha256"
        ));
    }

    let Some((lock, lock_shown)) = &reviewed.lock else {
        return Ok(checks);
    };
    if m.model.quantize.is_some() {
        // The lock records the quantizer's inputs, which the image does not hold.
        checks.push(format!(
            "the lock `{lock_shown}` records the quantizer's inputs (not in the image): checked \
             against the provenance only when signed"
        ));
        return Ok(checks);
    }
    let locked: BTreeMap<String, (u64, Sha256Digest)> = lock
        .all_files()
        .map(|f| (f.path.clone(), (f.size, f.sha256)))
        .collect();
    for (path, (size, sha256)) in &locked {
        let Some(f) = in_image(path) else {
            return fail(
                format!("{dir}/{path}"),
                format!("is in the lock `{lock_shown}` but not in the image"),
            );
        };
        let want = sha256.hex();
        if f.sha256 != *sha256 || f.size != *size {
            return fail(
                format!("{dir}/{path}"),
                format!(
                    "the lock `{lock_shown}` records sha256 {want} ({size} bytes), the image holds \
                     {} ({} bytes)",
                    f.sha256.hex(),
                    f.size
                ),
            );
        }
    }
    if let Some(extra) = files
        .keys()
        .filter_map(|p| p.strip_prefix(&format!("{dir}/")))
        .find(|p| !locked.contains_key(*p))
    {
        return fail(
            format!("{dir}/{extra}"),
            format!("is in the image but not in the lock `{lock_shown}`"),
        );
    }
    checks.push(format!(
        "the lock `{lock_shown}`: the image's {} model files are exactly the locked paths, sizes \
         and sha256",
        locked.len()
    ));
    Ok(checks)
}
