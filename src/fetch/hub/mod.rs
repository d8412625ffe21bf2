//! Fetches a model from the Hugging Face Hub into the standard Hugging Face cache, verifying
//! every byte, or finds it there when offline.
//!
//! Why not the `hf-hub` crate: neither 0.5 nor 1.0 can do what this stage must. Both write the
//! response straight to the cache file and verify nothing (a flipped byte of the same length
//! was stored under the expected name by every version), so integrity would need a second full
//! read of every shard; 1.0 also drops resume (it truncates the temp file) and pulls ~284 crates
//! (hf-xet). The Hub's API is three plain HTTP calls (revision metadata, `resolve`, `Range`),
//! so we make them with `ureq` 3 (blocking, rustls, no async runtime) and own the parts that
//! matter: sha256 computed while the bytes stream to disk (never a second read), resume from
//! `blobs/<etag>.incomplete`, retries with `Retry-After`, parallel downloads, the token sent to
//! the Hub's host only and never printed. The cache layout stays huggingface_hub's.
//!
//! Order of trust for a file's digest: the lock file, then the manifest's pins, then the Hub's
//! metadata (`lfs.sha256`, or the git blob sha1 for small non-LFS files).

pub mod cache;
pub mod client;
pub mod error;
pub mod transfer;
pub mod verify;

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::mpsc;
use std::time::Duration;

use super::SHARD_INDEX;
use crate::digest::Sha256Digest;
use crate::lock::{LockedFile, LockedModel};
use crate::progress::Progress;
pub use appliance_common::Secret;
use cache::{HubCache, Stamp, Stamps};
use client::{HubClient, RemoteFile, RetryPolicy, is_commit};
pub use error::{ExpectationSource, HubError};
use verify::{Expectation, ExpectedDigest, Measured};

pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";
pub const DEFAULT_JOBS: usize = 4;

/// Everything the Hub stage needs, resolved from the environment by the binary (stages never
/// read env vars themselves).
#[derive(Debug, Clone)]
pub struct HubSettings {
    pub endpoint: String,
    /// The Hugging Face hub cache (`HF_HUB_CACHE`, else `$HF_HOME/hub`).
    pub cache_dir: PathBuf,
    /// appliance's records (stamps, quarantine).
    pub state_dir: PathBuf,
    pub token: Option<Secret>,
    pub offline: bool,
    pub jobs: usize,
    pub retry: RetryPolicy,
    /// Rehash every cached file instead of trusting size+mtime stamps.
    pub verify_cache: bool,
}

impl HubSettings {
    /// Reads the standard Hugging Face variables through `var` (`HF_ENDPOINT`, `HF_HOME`,
    /// `HF_HUB_CACHE`, `HF_TOKEN`, the `$HF_HOME/token` file, `HF_HUB_OFFLINE`) and
    /// `APPLIANCE_HUB_RETRY_BASE_MS` (tests make backoff short with it).
    pub fn from_env(var: &dyn Fn(&str) -> Option<String>, home: &Path, state_dir: PathBuf) -> Self {
        let var = |k: &str| var(k).filter(|v| !v.is_empty());
        let hf_home = var("HF_HOME").map_or_else(
            || {
                var("XDG_CACHE_HOME")
                    .map_or_else(|| home.join(".cache"), PathBuf::from)
                    .join("huggingface")
            },
            PathBuf::from,
        );
        let cache_dir = var("HF_HUB_CACHE").map_or_else(|| hf_home.join("hub"), PathBuf::from);
        let token = var("HF_TOKEN")
            .or_else(|| {
                let path =
                    var("HF_TOKEN_PATH").map_or_else(|| hf_home.join("token"), PathBuf::from);
                std::fs::read_to_string(path).ok()
            })
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .map(Secret::new);
        let offline = var("HF_HUB_OFFLINE").is_some_and(|v| {
            matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on")
        });
        let mut retry = RetryPolicy::default();
        if let Some(ms) = var("APPLIANCE_HUB_RETRY_BASE_MS").and_then(|v| v.parse().ok()) {
            retry.base = Duration::from_millis(ms);
        }
        Self {
            endpoint: var("HF_ENDPOINT").unwrap_or_else(|| DEFAULT_ENDPOINT.to_string()),
            cache_dir,
            state_dir: state_dir.join("hub"),
            token,
            offline,
            jobs: DEFAULT_JOBS,
            retry,
            verify_cache: false,
        }
    }
}

/// What to fetch.
pub struct HubRequest<'a> {
    pub repo: &'a str,
    /// Branch, tag or commit, as the manifest says.
    pub revision: &'a str,
    pub globs: &'a [String],
    pub pins: &'a BTreeMap<String, Sha256Digest>,
    /// A lock that matches the manifest: its commit is fetched and its digests are expected.
    pub lock: Option<&'a LockedModel>,
    /// The manifest path, quoted in the offline hint.
    pub manifest: &'a Path,
    pub contents: Contents<'a>,
}

/// What a request's selected files must make up, checked before anything is downloaded.
#[derive(Debug, Clone, Copy)]
pub enum Contents<'a> {
    /// A model the server can load; `companion` names the files its tokenizer source puts
    /// beside it (a GGUF repository's missing `tokenizer.json`).
    Model { companion: &'a [String] },
    /// A companion tokenizer source (`model.tokenizer`): its default globs are "whichever
    /// exist", so nothing but `tokenizer.json` is required, and only then.
    Tokenizer { require_tokenizer_json: bool },
}

impl Contents<'_> {
    /// The manifest table whose `files` and `sha256` the request comes from.
    pub fn field(&self) -> &'static str {
        match self {
            Self::Model { .. } => "model",
            Self::Tokenizer { .. } => "model.tokenizer",
        }
    }
}

/// A verified snapshot in the cache.
#[derive(Debug, Clone)]
pub struct HubSnapshot {
    pub commit: String,
    pub files: Vec<SnapshotFile>,
}

#[derive(Debug, Clone)]
pub struct SnapshotFile {
    pub path: String,
    /// `snapshots/<commit>/<path>` (a symlink into `blobs/`).
    pub host_path: PathBuf,
    pub size: u64,
    pub sha256: Sha256Digest,
}

impl HubSnapshot {
    pub fn to_locked(&self, repo: &str, revision: &str, globs: &[String]) -> LockedModel {
        LockedModel {
            repo: repo.to_string(),
            revision: revision.to_string(),
            commit: self.commit.clone(),
            globs: globs.to_vec(),
            files: self
                .files
                .iter()
                .map(|f| LockedFile {
                    path: f.path.clone(),
                    size: f.size,
                    sha256: f.sha256,
                })
                .collect(),
        }
    }
}

pub struct HubFetcher {
    settings: HubSettings,
    cache: HubCache,
    client: HubClient,
}

/// One file to make present and verified.
struct Wanted {
    path: String,
    expectations: Vec<Expectation>,
    remote: Option<RemoteFile>,
}

impl HubFetcher {
    pub fn new(settings: HubSettings) -> Self {
        let cache = HubCache {
            root: settings.cache_dir.clone(),
            state: settings.state_dir.clone(),
        };
        let client = HubClient::new(&settings.endpoint, settings.token.clone(), settings.retry);
        Self {
            settings,
            cache,
            client,
        }
    }

    pub fn settings(&self) -> &HubSettings {
        &self.settings
    }

    /// The commit `revision` resolves to on the Hub now (online only).
    pub fn resolve(&self, repo: &str, revision: &str) -> Result<String, HubError> {
        Ok(self.client.revision_info(repo, revision)?.commit)
    }

    pub fn fetch(
        &self,
        req: &HubRequest,
        progress: &dyn Progress,
    ) -> Result<HubSnapshot, HubError> {
        if self.settings.offline {
            self.fetch_offline(req)
        } else {
            self.fetch_online(req, progress)
        }
    }

    fn fetch_online(
        &self,
        req: &HubRequest,
        progress: &dyn Progress,
    ) -> Result<HubSnapshot, HubError> {
        let target = req.lock.map_or(req.revision, |l| l.commit.as_str());
        let info = self.client.revision_info(req.repo, target)?;
        if is_commit(target) && !info.commit.eq_ignore_ascii_case(target) {
            return Err(HubError::ResolvedMismatch {
                requested: target.to_string(),
                actual: info.commit,
            });
        }
        let commit = info.commit.clone();
        let selected: Vec<RemoteFile> = select(&info.files, req.globs, |f| &f.path);
        check_selection(req, &commit, selected.iter().map(|f| f.path.as_str()))?;
        let mut wanted: Vec<Wanted> = selected
            .into_iter()
            .map(|remote| {
                let mut expectations = prior_expectations(req, &remote.path);
                expectations.push(Expectation {
                    origin: ExpectationSource::Hub,
                    size: Some(remote.size),
                    digest: match &remote.lfs_sha256 {
                        Some(d) => ExpectedDigest::Sha256(*d),
                        None => ExpectedDigest::GitSha1(remote.blob_id.clone()),
                    },
                });
                Wanted {
                    path: remote.path.clone(),
                    expectations,
                    remote: Some(remote),
                }
            })
            .collect();

        let mut stamps = self.cache.read_stamps(req.repo, &commit);
        // A sharded checkpoint's index says which `*.safetensors` files are the weights: fetch
        // it first, and not the copies it does not name (`fetch::keep_indexed_shards`).
        if let Some(index) = wanted.iter().find(|w| w.path == SHARD_INDEX) {
            match self.verify_cached(req.repo, &commit, index, &stamps) {
                Ok(Some(_)) => {}
                Ok(None) | Err(HubError::DigestMismatch { .. } | HubError::SizeMismatch { .. }) => {
                    self.check_space(req.repo, &[index])?;
                    self.download_all(req.repo, &commit, &[index], progress)?;
                }
                Err(e) => return Err(e),
            }
            wanted = self.keep_indexed_shards(req.repo, &commit, wanted)?;
        }
        let mut done: BTreeMap<String, Measured> = BTreeMap::new();
        let mut missing = Vec::new();
        for w in &wanted {
            match self.verify_cached(req.repo, &commit, w, &stamps) {
                Ok(Some(m)) => {
                    done.insert(w.path.clone(), m);
                }
                // Absent, or quarantined just now: the Hub has the good bytes.
                Ok(None) | Err(HubError::DigestMismatch { .. } | HubError::SizeMismatch { .. }) => {
                    missing.push(w)
                }
                Err(e) => return Err(e),
            }
        }
        self.check_space(req.repo, &missing)?;
        for (path, m) in self.download_all(req.repo, &commit, &missing, progress)? {
            done.insert(path, m);
        }
        if !is_commit(req.revision) && req.lock.is_none() {
            self.cache.write_ref(req.repo, req.revision, &commit)?;
        }
        self.finish(req.repo, &commit, &wanted, done, &mut stamps)
    }

    fn fetch_offline(&self, req: &HubRequest) -> Result<HubSnapshot, HubError> {
        let offline_missing = |commit: Option<String>, missing: Vec<String>| {
            HubError::OfflineMissing(Box::new(error::OfflineMissing {
                cache: self.cache.root.clone(),
                repo: req.repo.to_string(),
                revision: req.revision.to_string(),
                commit,
                missing,
                manifest: req.manifest.display().to_string(),
            }))
        };
        let commit = match req.lock {
            Some(lock) => lock.commit.clone(),
            None if is_commit(req.revision) => req.revision.to_string(),
            None => self
                .cache
                .read_ref(req.repo, req.revision)
                .ok_or_else(|| offline_missing(None, vec![]))?,
        };
        let paths: Vec<String> = match req.lock {
            Some(lock) => lock.files.iter().map(|f| f.path.clone()).collect(),
            None => {
                let dir = self.cache.snapshot_dir(req.repo, &commit);
                let mut found = Vec::new();
                list_snapshot(&dir, "", &mut found);
                if found.is_empty() {
                    return Err(offline_missing(Some(commit), vec![]));
                }
                select(&found, req.globs, |p| p)
            }
        };
        check_selection(req, &commit, paths.iter().map(String::as_str))?;
        let missing: Vec<String> = paths
            .iter()
            .filter(|p| !self.cache.snapshot_file(req.repo, &commit, p).is_file())
            .cloned()
            .collect();
        if !missing.is_empty() {
            return Err(offline_missing(Some(commit), missing));
        }
        let mut wanted: Vec<Wanted> = paths
            .into_iter()
            .map(|path| Wanted {
                expectations: prior_expectations(req, &path),
                path,
                remote: None,
            })
            .collect();
        if wanted.iter().any(|w| w.path == SHARD_INDEX) {
            wanted = self.keep_indexed_shards(req.repo, &commit, wanted)?;
        }
        let mut stamps = self.cache.read_stamps(req.repo, &commit);
        let mut done = BTreeMap::new();
        for w in &wanted {
            match self.verify_cached(req.repo, &commit, w, &stamps)? {
                Some(m) => {
                    done.insert(w.path.clone(), m);
                }
                None => return Err(offline_missing(Some(commit), vec![w.path.clone()])),
            }
        }
        self.finish(req.repo, &commit, &wanted, done, &mut stamps)
    }

    /// Re-verifies a cached file: trusts a size+mtime stamp unless `verify_cache`, else
    /// rehashes. `Ok(None)`: not cached. A mismatch quarantines the blob.
    fn verify_cached(
        &self,
        repo: &str,
        commit: &str,
        w: &Wanted,
        stamps: &Stamps,
    ) -> Result<Option<Measured>, HubError> {
        let link = self.cache.snapshot_file(repo, commit, &w.path);
        if !link.is_file() {
            return Ok(None);
        }
        let blob = std::fs::canonicalize(&link).map_err(HubError::io(&link))?;
        let mut expectations = w.expectations.clone();
        let blob_name = blob
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // A cache filled by another tool still names each blob by the Hub's ETag.
        if let Ok(d) = Sha256Digest::parse(&blob_name) {
            expectations.push(Expectation {
                origin: ExpectationSource::CacheBlobName,
                size: None,
                digest: ExpectedDigest::Sha256(d),
            });
        } else if blob_name.len() == 40 && is_commit(&blob_name) {
            expectations.push(Expectation {
                origin: ExpectationSource::CacheBlobName,
                size: None,
                digest: ExpectedDigest::GitSha1(blob_name.clone()),
            });
        }
        let stamped = stamps
            .get(&w.path)
            .filter(|s| !self.settings.verify_cache && s.still_matches(&blob))
            .and_then(|s| Some((s.size, Sha256Digest::parse(&s.sha256).ok()?)));
        let measured = match stamped {
            // The git sha1 was checked when the stamp was written.
            Some((size, sha256)) => Measured {
                size,
                sha256,
                git_sha1: None,
            },
            None => verify::hash_file(&blob, verify::needs_git_sha1(&expectations))
                .map_err(HubError::io(&blob))?,
        };
        match verify::check(&measured, &expectations) {
            Ok(()) => Ok(Some(measured)),
            Err(mismatch) => {
                let dest = self.cache.quarantine(repo, commit, &w.path, &blob)?;
                Err(mismatch.into_error(&w.path, &dest))
            }
        }
    }

    /// Fails before downloading anything if the cache's disk cannot hold what is missing.
    fn check_space(&self, repo: &str, missing: &[&Wanted]) -> Result<(), HubError> {
        let blobs = self.cache.repo_dir(repo).join("blobs");
        std::fs::create_dir_all(&blobs).map_err(HubError::io(&blobs))?;
        let needed: u64 = missing
            .iter()
            .filter_map(|w| w.remote.as_ref())
            .map(|r| {
                let have = std::fs::metadata(self.cache.incomplete(repo, &r.etag()))
                    .map_or(0, |m| m.len());
                r.size.saturating_sub(have)
            })
            .sum();
        if let Ok(stat) = rustix::fs::statvfs(&blobs) {
            let available = stat.f_bavail.saturating_mul(stat.f_frsize);
            if needed > available {
                return Err(HubError::DiskFull {
                    dir: blobs,
                    needed,
                    available,
                });
            }
        }
        Ok(())
    }

    /// Downloads `missing` with `jobs` workers; verified files are committed into the cache,
    /// bad ones quarantined. Returns the first error in file order.
    fn download_all(
        &self,
        repo: &str,
        commit: &str,
        missing: &[&Wanted],
        progress: &dyn Progress,
    ) -> Result<Vec<(String, Measured)>, HubError> {
        if missing.is_empty() {
            return Ok(vec![]);
        }
        let total_bytes: u64 = missing
            .iter()
            .filter_map(|w| w.remote.as_ref())
            .map(|r| r.size)
            .sum();
        let queue: Mutex<VecDeque<(usize, &Wanted)>> =
            Mutex::new(missing.iter().copied().enumerate().collect());
        let results: Mutex<Vec<(usize, Result<Measured, HubError>)>> = Mutex::new(Vec::new());
        let (tx, rx) = mpsc::channel::<u64>();
        let total = progress.task("Downloading", total_bytes);
        std::thread::scope(|scope| {
            for _ in 0..self.settings.jobs.clamp(1, missing.len()) {
                let tx = tx.clone();
                let (queue, results) = (&queue, &results);
                scope.spawn(move || {
                    loop {
                        let next = queue.lock().map(|mut q| q.pop_front()).ok().flatten();
                        let Some((i, w)) = next else { break };
                        let r = self.download_one(repo, commit, w, progress, &|n| {
                            let _ = tx.send(n);
                        });
                        if r.is_err()
                            && let Ok(mut q) = queue.lock()
                        {
                            q.clear();
                        }
                        if let Ok(mut res) = results.lock() {
                            res.push((i, r));
                        }
                    }
                });
            }
            drop(tx);
            for n in rx {
                total.advance(n);
            }
        });
        total.finish();
        let mut results = results.into_inner().unwrap_or_default();
        results.sort_by_key(|(i, _)| *i);
        results
            .into_iter()
            .map(|(i, r)| r.map(|m| (missing[i].path.clone(), m)))
            .collect()
    }

    fn download_one(
        &self,
        repo: &str,
        commit: &str,
        w: &Wanted,
        progress: &dyn Progress,
        on_bytes: &dyn Fn(u64),
    ) -> Result<Measured, HubError> {
        let Some(remote) = &w.remote else {
            unreachable!("online fetches always have Hub metadata");
        };
        let etag = remote.etag();
        let _lock = self.cache.lock_blob(repo, &etag)?;
        let blob = self.cache.blob(repo, &etag);
        if blob.is_file() {
            // Another process finished this blob while we waited for the lock: verify its
            // bytes instead of downloading them again.
            let git = verify::needs_git_sha1(&w.expectations);
            let measured = verify::hash_file(&blob, git).map_err(HubError::io(&blob))?;
            if let Err(mismatch) = verify::check(&measured, &w.expectations) {
                let dest = self.cache.quarantine(repo, commit, &w.path, &blob)?;
                return Err(mismatch.into_error(&w.path, &dest));
            }
            self.cache.link(repo, commit, &w.path, &etag)?;
            on_bytes(remote.size);
            return Ok(measured);
        }
        let partial = self.cache.incomplete(repo, &etag);
        let task = progress.task(&w.path, remote.size);
        let measured = transfer::download(&self.client, repo, commit, remote, &partial, &|n| {
            task.advance(n);
            on_bytes(n);
        })?;
        task.finish();
        if let Err(mismatch) = verify::check(&measured, &w.expectations) {
            let dest = self.cache.quarantine(repo, commit, &w.path, &partial)?;
            return Err(mismatch.into_error(&w.path, &dest));
        }
        self.cache
            .commit_blob(repo, commit, &w.path, &etag, &partial)?;
        Ok(measured)
    }

    /// Records stamps for the verified files and returns the snapshot.
    /// Drops the `*.safetensors` files the cached shard index does not name.
    fn keep_indexed_shards(
        &self,
        repo: &str,
        commit: &str,
        wanted: Vec<Wanted>,
    ) -> Result<Vec<Wanted>, HubError> {
        let index_err = |message| HubError::ShardIndex {
            repo: repo.to_string(),
            commit: commit.to_string(),
            file: SHARD_INDEX,
            message,
        };
        let path = self.cache.snapshot_file(repo, commit, SHARD_INDEX);
        let index = std::fs::read(&path).map_err(HubError::io(&path))?;
        super::keep_indexed_shards(wanted, |w| &w.path, &index).map_err(index_err)
    }

    fn finish(
        &self,
        repo: &str,
        commit: &str,
        wanted: &[Wanted],
        done: BTreeMap<String, Measured>,
        stamps: &mut Stamps,
    ) -> Result<HubSnapshot, HubError> {
        let mut files = Vec::new();
        for w in wanted {
            let Some(m) = done.get(&w.path) else { continue };
            let host_path = self.cache.snapshot_file(repo, commit, &w.path);
            if let Ok(stamp) = Stamp::of(&host_path, m.sha256.hex()) {
                stamps.insert(w.path.clone(), stamp);
            }
            files.push(SnapshotFile {
                path: w.path.clone(),
                host_path,
                size: m.size,
                sha256: m.sha256,
            });
        }
        self.cache.write_stamps(repo, commit, stamps)?;
        Ok(HubSnapshot {
            commit: commit.to_string(),
            files,
        })
    }
}

/// Expectations known before asking the Hub: the lock's, then the manifest pin.
fn prior_expectations(req: &HubRequest, path: &str) -> Vec<Expectation> {
    let mut out = Vec::new();
    if let Some(f) = req
        .lock
        .and_then(|l| l.files.iter().find(|f| f.path == path))
    {
        out.push(Expectation {
            origin: ExpectationSource::Lock,
            size: Some(f.size),
            digest: ExpectedDigest::Sha256(f.sha256),
        });
    }
    if let Some(pin) = req.pins.get(path) {
        out.push(Expectation {
            origin: match req.contents {
                Contents::Model { .. } => ExpectationSource::Pin,
                Contents::Tokenizer { .. } => ExpectationSource::TokenizerPin,
            },
            size: None,
            digest: ExpectedDigest::Sha256(*pin),
        });
    }
    out
}

/// The files matching `globs`, sorted, skipping hidden paths (`.gitattributes`) and any path
/// that could leave the snapshot directory (`..`, absolute, empty components): file names come
/// from the server and become cache and image paths.
fn select<T: Clone>(items: &[T], globs: &[String], path: impl Fn(&T) -> &str) -> Vec<T> {
    let set = super::glob_set(globs);
    let mut out: Vec<T> = items
        .iter()
        .filter(|i| {
            let p = path(i);
            !p.split('/')
                .any(|c| c.is_empty() || c.starts_with('.') || c.contains('\\'))
                && set.is_match(p)
        })
        .cloned()
        .collect();
    out.sort_by(|a, b| path(a).cmp(path(b)));
    out
}

fn check_selection<'a>(
    req: &HubRequest<'a>,
    commit: &str,
    paths: impl Iterator<Item = &'a str> + Clone,
) -> Result<(), HubError> {
    let repo = req.repo;
    if paths.clone().next().is_none() {
        return Err(HubError::NoFiles {
            repo: repo.into(),
            commit: commit.into(),
            field: req.contents.field(),
            globs: req.globs.join(", "),
        });
    }
    let companion = match req.contents {
        Contents::Model { companion } => companion,
        Contents::Tokenizer {
            require_tokenizer_json,
        } => {
            if require_tokenizer_json
                && !paths.clone().any(|p| p == super::tokenizer::TOKENIZER_JSON)
            {
                return Err(HubError::TokenizerSourceWithoutTokenizer {
                    repo: repo.into(),
                    commit: commit.into(),
                });
            }
            return Ok(());
        }
    };
    match super::model_layout(paths.chain(companion.iter().map(String::as_str))) {
        super::Layout::Ok => Ok(()),
        super::Layout::NoConfig => Err(HubError::NoConfig {
            repo: repo.into(),
            commit: commit.into(),
        }),
        super::Layout::GgufShards(error) => Err(HubError::GgufShards {
            repo: repo.into(),
            commit: commit.into(),
            error: Box::new(error),
        }),
    }
}

fn list_snapshot(dir: &Path, prefix: &str, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let rel = format!("{prefix}{name}");
        let path = entry.path();
        if path.is_dir() {
            list_snapshot(&path, &format!("{rel}/"), out);
        } else {
            out.push(rel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tokenizer source needs only `tokenizer.json` (and only with its default globs); a
    /// GGUF model is let through with or without one (its header decides, once downloaded).
    #[test]
    fn selection_checks_depend_on_what_is_fetched() {
        let pins = BTreeMap::new();
        let globs = ["*".to_string()];
        let companion = ["tokenizer.json".to_string()];
        let req = |contents| HubRequest {
            repo: "org/r",
            revision: "main",
            globs: &globs,
            pins: &pins,
            lock: None,
            manifest: Path::new("m.toml"),
            contents,
        };
        let check = |contents, paths: &[&str]| {
            check_selection(&req(contents), &"a".repeat(40), paths.iter().copied())
        };
        let strict = Contents::Tokenizer {
            require_tokenizer_json: true,
        };
        let err = check(strict, &["tokenizer_config.json"]).unwrap_err();
        assert!(
            matches!(err, HubError::TokenizerSourceWithoutTokenizer { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("model.tokenizer"), "{err}");
        check(strict, &["tokenizer.json"]).unwrap();
        let loose = Contents::Tokenizer {
            require_tokenizer_json: false,
        };
        check(loose, &["tokenizer_config.json"]).unwrap();
        let err = check(loose, &[]).unwrap_err().to_string();
        assert!(err.contains("`model.tokenizer.files`"), "{err}");

        let alone = Contents::Model { companion: &[] };
        check(alone, &["m.gguf"]).unwrap();
        let err = check(alone, &["README.md"]).unwrap_err();
        assert!(matches!(err, HubError::NoConfig { .. }), "{err}");
        check(
            Contents::Model {
                companion: &companion,
            },
            &["m.gguf"],
        )
        .unwrap();
    }

    #[test]
    fn server_paths_that_escape_the_snapshot_are_never_selected() {
        let names: Vec<String> = [
            "config.json",
            "/etc/x.json",
            "../x.json",
            "a//b.json",
            ".hidden.json",
            "sub/ok.json",
            "a\\..\\b.json",
        ]
        .map(String::from)
        .to_vec();
        let got = select(&names, &["*.json".to_string()], |s| s.as_str());
        assert_eq!(got, ["config.json", "sub/ok.json"]);
    }
}
