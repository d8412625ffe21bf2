//! Defines `HubError`: every way getting a model from the Hub (or its cache) can fail, each
//! naming the file, repository and commit concerned and saying what to do next.
//!
//! No variant carries a token, a request header or a URL with credentials: errors are printed
//! and logged, and the token must never reach either.

use std::path::PathBuf;

/// Where an expected digest or size came from, quoted in mismatch errors so the user knows
/// which record disagrees with the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectationSource {
    Lock,
    Pin,
    /// `model.tokenizer.sha256`.
    TokenizerPin,
    /// The Hub's metadata: `lfs.sha256` for LFS files, the git blob sha1 otherwise.
    Hub,
    /// The cache's blob name (the Hub's ETag when it was downloaded).
    CacheBlobName,
}

impl std::fmt::Display for ExpectationSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Lock => "manifest.lock",
            Self::Pin => "manifest pin `model.sha256`",
            Self::TokenizerPin => "manifest pin `model.tokenizer.sha256`",
            Self::Hub => "Hub metadata",
            Self::CacheBlobName => "Hub ETag recorded as the cache blob name",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("Failed to reach the Hub at `{url}`")]
    Connect {
        url: String,
        #[source]
        source: Box<ureq::Error>,
    },
    #[error(
        "The Hub refused access to `{repo}` (HTTP {status})\n  hint: set `HF_TOKEN` to a token with read access, and accept the model's license on its Hub page if it is gated"
    )]
    Unauthorized { repo: String, status: u16 },
    #[error("Revision `{revision}` of `{repo}` was not found on the Hub (HTTP 404)")]
    RevisionNotFound { repo: String, revision: String },
    #[error("`{file}` was not found in `{repo}` at commit {commit} (HTTP 404)")]
    FileNotFound {
        repo: String,
        commit: String,
        file: String,
    },
    #[error("The Hub answered HTTP {status} for `{what}` after {attempts} attempts")]
    Status {
        what: String,
        status: u16,
        attempts: u32,
    },
    #[error("The Hub's answer for `{what}` is not what a Hub sends: {message}")]
    BadResponse { what: String, message: String },
    #[error(
        "The Hub served `{file}` from commit {actual} (`X-Repo-Commit`), but {expected} was requested; refusing bytes from another commit"
    )]
    CommitMismatch {
        file: String,
        expected: String,
        actual: String,
    },
    #[error(
        "`{requested}` is a commit, but the Hub resolved it to {actual}; refusing a different commit"
    )]
    ResolvedMismatch { requested: String, actual: String },
    #[error(
        "Download of `{file}` failed after {attempts} attempts ({received} of {size} bytes on disk, kept to resume)"
    )]
    Interrupted {
        file: String,
        attempts: u32,
        received: u64,
        size: u64,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{algorithm} mismatch for `{file}`: expected {expected} ({origin}), got {actual}\n  hint: the file was quarantined in `{quarantine}`; run `appliance fetch` again, or update the expectation if the new bytes are intended"
    )]
    DigestMismatch {
        file: String,
        algorithm: &'static str,
        expected: String,
        actual: String,
        origin: ExpectationSource,
        quarantine: PathBuf,
    },
    #[error(
        "Size mismatch for `{file}`: expected {expected} bytes ({origin}), got {actual}\n  hint: the file was quarantined in `{quarantine}`; run `appliance fetch` again"
    )]
    SizeMismatch {
        file: String,
        expected: u64,
        actual: u64,
        origin: ExpectationSource,
        quarantine: PathBuf,
    },
    #[error(
        "Not enough disk space in `{dir}`: the download needs {needed} more bytes, {available} bytes are available\n  hint: free space there, or point `HF_HUB_CACHE` at a larger disk"
    )]
    DiskFull {
        dir: PathBuf,
        needed: u64,
        available: u64,
    },
    #[error("Failed to access `{path}`")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("No file of `{repo}` at commit {commit} matches `{field}.files` ({globs})")]
    NoFiles {
        repo: String,
        commit: String,
        /// `model` or `model.tokenizer`.
        field: &'static str,
        globs: String,
    },
    #[error(
        "`{repo}` at commit {commit} has neither `config.json` nor a top-level `.gguf` file among the selected files"
    )]
    NoConfig { repo: String, commit: String },
    #[error(
        "`{repo}` at commit {commit}, the `model.tokenizer` source, has no `tokenizer.json`\n  hint: name a repository that has one, or list the files to take from it in `model.tokenizer.files`"
    )]
    TokenizerSourceWithoutTokenizer { repo: String, commit: String },
    /// Checked on the Hub's file list, before anything is downloaded.
    #[error("`{repo}` at commit {commit}: {error}")]
    GgufShards {
        repo: String,
        commit: String,
        error: Box<crate::fetch::gguf::ShardSetError>,
    },
    #[error("`{file}` of `{repo}` at commit {commit} {message}")]
    ShardIndex {
        repo: String,
        commit: String,
        file: &'static str,
        message: String,
    },
    /// Boxed: the largest variant, and the rarest.
    #[error("{0}")]
    OfflineMissing(Box<OfflineMissing>),
}

impl HubError {
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> HubError {
        let path = path.into();
        move |source| HubError::Io { path, source }
    }
}

/// Offline, and the cache lacks files (or the whole revision).
#[derive(Debug)]
pub struct OfflineMissing {
    pub cache: PathBuf,
    pub repo: String,
    pub revision: String,
    /// `None` when not even the revision could be resolved from the cache.
    pub commit: Option<String>,
    /// Empty when the file list itself is unknown (no lock, no snapshot).
    pub missing: Vec<String>,
    pub manifest: String,
}

impl std::fmt::Display for OfflineMissing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = if self.missing.is_empty() {
            "the revision".to_string()
        } else {
            format!("{} file(s)", self.missing.len())
        };
        let at = match &self.commit {
            Some(c) => format!(" at commit {c}"),
            None => format!(
                " at revision `{}` (not resolved in the cache)",
                self.revision
            ),
        };
        write!(
            f,
            "Offline (`--offline` or `HF_HUB_OFFLINE=1`), and the Hugging Face cache `{}` lacks {what} of `{}`{at}:",
            self.cache.display(),
            self.repo
        )?;
        for m in &self.missing {
            write!(f, "\n  - {m}")?;
        }
        write!(
            f,
            "\n  hint: on a connected host run `appliance fetch {}` (with the same `HF_HUB_CACHE`/`HF_HOME`), then copy the cache directory here",
            self.manifest
        )
    }
}
