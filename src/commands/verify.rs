//! `appliance verify`: loads the public key and runs the verifier.

use std::path::Path;

use anyhow::{Context, Result};

use crate::lock::LockFile;
use crate::manifest::Manifest;
use crate::sign::keys;
use crate::verify::{self, Report, Reviewed};

/// Verifies `tarball`; with `base`, `tarball` is a delta bundle made against it. Without a
/// key every integrity check runs and the report says the signer is unknown. With a manifest
/// (and its lock: `lock`, else `<manifest>.lock` when present) the image must also be what they
/// say.
pub fn verify(
    tarball: &Path,
    key: Option<&Path>,
    base: Option<&Path>,
    manifest: Option<&Path>,
    lock: Option<&Path>,
) -> Result<Report> {
    let key = key
        .map(|key| {
            let text = std::fs::read_to_string(key)
                .with_context(|| format!("Failed to read public key `{}`", key.display()))?;
            anyhow::Ok(keys::parse_public(&key.display().to_string(), &text)?)
        })
        .transpose()?;
    let reviewed = match manifest {
        Some(path) => {
            let manifest = Manifest::load_for_review(path)?;
            let lock_path = lock.map_or_else(|| crate::lock::lock_path(path), Path::to_path_buf);
            let lock = match LockFile::read_optional(&lock_path)? {
                Some(l) => Some((l, lock_path.display().to_string())),
                None if lock.is_some() => {
                    anyhow::bail!("Lock file `{}` does not exist", lock_path.display())
                }
                None => None,
            };
            Some(Reviewed { manifest, lock })
        }
        None if lock.is_some() => anyhow::bail!("`--lock` needs `--manifest`"),
        None => None,
    };
    let against = verify::Against {
        key: key.as_ref(),
        base,
        reviewed: reviewed.as_ref(),
    };
    let report = verify::verify(tarball, &against)
        .with_context(|| format!("Verification of `{}` failed", tarball.display()))?;
    Ok(report)
}
