//! Defines the Hugging Face cache layout (`models--org--name/{blobs,snapshots,refs}`) and
//! appliance's own records beside it: verification stamps and quarantined files.
//!
//! The layout is exactly huggingface_hub's, so a cache filled by `huggingface-cli download` is
//! used as is and one filled by appliance serves Python. appliance's additions (stamps,
//! quarantine) live in its own cache dir, never inside the Hugging Face one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};

use super::error::HubError;

pub struct HubCache {
    /// `HF_HUB_CACHE` (default `$HF_HOME/hub`).
    pub root: PathBuf,
    /// appliance's own records (`$APPLIANCE_CACHE/hub`).
    pub state: PathBuf,
}

impl HubCache {
    pub fn repo_folder(repo: &str) -> String {
        format!("models--{}", repo.replace('/', "--"))
    }

    pub fn repo_dir(&self, repo: &str) -> PathBuf {
        self.root.join(Self::repo_folder(repo))
    }

    pub fn blob(&self, repo: &str, etag: &str) -> PathBuf {
        self.repo_dir(repo).join("blobs").join(etag)
    }

    /// Takes huggingface_hub's per-blob lock (`.locks/models--org--name/<etag>.lock`, an
    /// exclusive `flock`), waiting while another process — appliance or Python — downloads the
    /// same blob: two writers would otherwise append to one `.incomplete` file. Held until the
    /// returned file is dropped; the kernel releases it if the process dies.
    pub fn lock_blob(&self, repo: &str, etag: &str) -> Result<std::fs::File, HubError> {
        let path = self
            .root
            .join(".locks")
            .join(Self::repo_folder(repo))
            .join(format!("{etag}.lock"));
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(HubError::io(parent))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(HubError::io(&path))?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| HubError::io(&path)(e.into()))?;
        Ok(file)
    }

    /// huggingface_hub's name for a partial download: resumable by either tool.
    pub fn incomplete(&self, repo: &str, etag: &str) -> PathBuf {
        self.repo_dir(repo)
            .join("blobs")
            .join(format!("{etag}.incomplete"))
    }

    pub fn snapshot_dir(&self, repo: &str, commit: &str) -> PathBuf {
        self.repo_dir(repo).join("snapshots").join(commit)
    }

    pub fn snapshot_file(&self, repo: &str, commit: &str, path: &str) -> PathBuf {
        self.snapshot_dir(repo, commit).join(path)
    }

    pub fn read_ref(&self, repo: &str, revision: &str) -> Option<String> {
        let text = std::fs::read_to_string(self.repo_dir(repo).join("refs").join(revision)).ok()?;
        Some(text.trim().to_string())
    }

    pub fn write_ref(&self, repo: &str, revision: &str, commit: &str) -> Result<(), HubError> {
        let path = self.repo_dir(repo).join("refs").join(revision);
        write_atomic(&path, commit.as_bytes())
    }

    /// Moves a verified download into `blobs/<etag>` and points the snapshot at it.
    pub fn commit_blob(
        &self,
        repo: &str,
        commit: &str,
        path: &str,
        etag: &str,
        partial: &Path,
    ) -> Result<PathBuf, HubError> {
        let blob = self.blob(repo, etag);
        std::fs::rename(partial, &blob).map_err(HubError::io(&blob))?;
        self.link(repo, commit, path, etag)
    }

    /// `snapshots/<commit>/<path>` → `../../blobs/<etag>` (relative, as huggingface_hub makes it).
    pub fn link(
        &self,
        repo: &str,
        commit: &str,
        path: &str,
        etag: &str,
    ) -> Result<PathBuf, HubError> {
        let link = self.snapshot_file(repo, commit, path);
        if let Some(parent) = link.parent() {
            std::fs::create_dir_all(parent).map_err(HubError::io(parent))?;
        }
        let depth = path.matches('/').count();
        let target = PathBuf::from(format!("{}../../blobs/{etag}", "../".repeat(depth)));
        // Made under a temporary name and renamed over the link: atomic, so another process
        // linking the same file at the same moment cannot make this fail with "exists".
        let mut tmp_name = link.file_name().unwrap_or_default().to_os_string();
        tmp_name.push(format!(".tmp{}", std::process::id()));
        let tmp = link.with_file_name(tmp_name);
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&target, &tmp).map_err(HubError::io(&tmp))?;
        std::fs::rename(&tmp, &link).map_err(HubError::io(&link))?;
        Ok(link)
    }

    /// Where a bad file of `commit` goes: out of the cache, kept for inspection.
    pub fn quarantine_path(&self, repo: &str, commit: &str, path: &str) -> PathBuf {
        self.state
            .join("quarantine")
            .join(Self::repo_folder(repo))
            .join(commit)
            .join(path)
    }

    /// Moves `bad` (a partial download or a cached blob) into quarantine and drops the
    /// snapshot link to it, so nothing later takes it for a verified file.
    pub fn quarantine(
        &self,
        repo: &str,
        commit: &str,
        path: &str,
        bad: &Path,
    ) -> Result<PathBuf, HubError> {
        let dest = self.quarantine_path(repo, commit, path);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(HubError::io(parent))?;
        }
        std::fs::rename(bad, &dest).map_err(HubError::io(&dest))?;
        let link = self.snapshot_file(repo, commit, path);
        if std::fs::symlink_metadata(&link).is_ok() && std::fs::metadata(&link).is_err() {
            let _ = std::fs::remove_file(&link);
        }
        Ok(dest)
    }

    fn stamps_path(&self, repo: &str, commit: &str) -> PathBuf {
        self.state
            .join("verified")
            .join(Self::repo_folder(repo))
            .join(format!("{commit}.json"))
    }

    pub fn read_stamps(&self, repo: &str, commit: &str) -> Stamps {
        std::fs::read(self.stamps_path(repo, commit))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    pub fn write_stamps(&self, repo: &str, commit: &str, stamps: &Stamps) -> Result<(), HubError> {
        let bytes = serde_json::to_vec_pretty(stamps).unwrap_or_default();
        write_atomic(&self.stamps_path(repo, commit), &bytes)
    }
}

/// What a file looked like when it was verified: if size and mtime are unchanged, its digest
/// is taken from here instead of rehashing gigabytes on every build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    pub size: u64,
    pub mtime_ns: u128,
    pub sha256: String,
}

pub type Stamps = BTreeMap<String, Stamp>;

impl Stamp {
    /// The stamp a file has now (following the snapshot symlink to the blob).
    pub fn of(path: &Path, sha256: String) -> std::io::Result<Self> {
        let meta = std::fs::metadata(path)?;
        Ok(Self {
            size: meta.len(),
            mtime_ns: mtime_ns(&meta),
            sha256,
        })
    }

    pub fn still_matches(&self, path: &Path) -> bool {
        std::fs::metadata(path).is_ok_and(|m| m.len() == self.size && mtime_ns(&m) == self.mtime_ns)
    }
}

fn mtime_ns(meta: &std::fs::Metadata) -> u128 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos())
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), HubError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(HubError::io(parent))?;
    }
    crate::atomic_file::write(path, bytes, 0o644, false).map_err(HubError::io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_huggingface_hub() {
        let dir = tempfile::tempdir().unwrap();
        let cache = HubCache {
            root: dir.path().join("hub"),
            state: dir.path().join("state"),
        };
        let blob = cache.blob("org/m", "abc");
        std::fs::create_dir_all(blob.parent().unwrap()).unwrap();
        std::fs::write(&blob, b"x").unwrap();
        let link = cache
            .link("org/m", "c0ffee", "sub/dir/f.json", "abc")
            .unwrap();
        assert_eq!(
            link,
            dir.path()
                .join("hub/models--org--m/snapshots/c0ffee/sub/dir/f.json")
        );
        assert_eq!(
            std::fs::read_link(&link).unwrap(),
            PathBuf::from("../../../../blobs/abc")
        );
        assert_eq!(std::fs::read(&link).unwrap(), b"x");
        cache.write_ref("org/m", "main", "c0ffee").unwrap();
        assert_eq!(cache.read_ref("org/m", "main").as_deref(), Some("c0ffee"));
    }
}
