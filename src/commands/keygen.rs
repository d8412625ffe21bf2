//! `appliance keygen`: writes `<prefix>.key` (cosign's encrypted format, mode 0600) and
//! `<prefix>.pub`, each through a temporary file renamed into place; never overwrites a key.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::digest::Sha256Digest;
use crate::sign::{Secret, keys};

pub struct KeygenOutcome {
    pub private_key: PathBuf,
    pub public_key: PathBuf,
    pub fingerprint: Sha256Digest,
}

pub fn keygen(prefix: &Path, password: &Secret) -> Result<KeygenOutcome> {
    let with = |ext: &str| {
        let mut name = prefix.file_name().unwrap_or_default().to_os_string();
        name.push(ext);
        prefix.with_file_name(name)
    };
    let (private_key, public_key) = (with(".key"), with(".pub"));
    for path in [&private_key, &public_key] {
        if path.exists() {
            bail!(
                "`{}` already exists; refusing to overwrite a key",
                path.display()
            );
        }
    }
    if let Some(dir) = prefix.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("Failed to create `{}`", dir.display()))?;
    }
    let generated = keys::generate(password)?;
    write_atomic(&public_key, generated.public_pem.as_bytes(), 0o644)?;
    write_atomic(&private_key, generated.private_pem.as_bytes(), 0o600)?;
    Ok(KeygenOutcome {
        private_key,
        public_key,
        fingerprint: generated.fingerprint,
    })
}

fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    crate::atomic_file::write(path, bytes, mode, true)
        .with_context(|| format!("Failed to write `{}`", path.display()))
}
