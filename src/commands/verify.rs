//! `appliance verify`: loads the public key and runs the verifier.

use std::path::Path;

use anyhow::{Context, Result};

use crate::sign::keys;
use crate::verify::{self, Report};

pub fn verify(tarball: &Path, key: &Path) -> Result<Report> {
    let text = std::fs::read_to_string(key)
        .with_context(|| format!("Failed to read public key `{}`", key.display()))?;
    let key = keys::parse_public(&key.display().to_string(), &text)?;
    let report = verify::verify(tarball, &key)
        .with_context(|| format!("Verification of `{}` failed", tarball.display()))?;
    Ok(report)
}
