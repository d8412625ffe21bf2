//! `appliance verify`: loads the public key and runs the verifier.

use std::path::Path;

use anyhow::{Context, Result};

use crate::sign::keys;
use crate::verify::{self, Report};

/// Verifies `tarball`; with `base`, `tarball` is a delta bundle made against it.
pub fn verify(tarball: &Path, key: &Path, base: Option<&Path>) -> Result<Report> {
    let text = std::fs::read_to_string(key)
        .with_context(|| format!("Failed to read public key `{}`", key.display()))?;
    let key = keys::parse_public(&key.display().to_string(), &text)?;
    let report = match base {
        None => verify::verify(tarball, &key),
        Some(base) => verify::verify_delta(tarball, base, &key),
    }
    .with_context(|| format!("Verification of `{}` failed", tarball.display()))?;
    Ok(report)
}
