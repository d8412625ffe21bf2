//! Defines the lock file (`<manifest>.lock`): the exact model bytes a manifest resolved to.
//!
//! The lock is what auditors and the signing stage read: for each Hub source (the model, and a
//! companion tokenizer source), which repository, which commit a branch or tag resolved to, and
//! the size and sha256 of every packaged file; for each `path` source (a local model or
//! tokenizer directory), its file globs and the size and sha256 of every file they select, so a
//! file added to, changed in or removed from the directory is drift like a moved Hub commit. It is TOML in a
//! stable order (files sorted by path), so a re-lock that changes nothing changes no byte and a
//! diff in review shows exactly what moved. It never holds a token, a host path or a time stamp.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::digest::Sha256Digest;

/// Format version written in every lock; a newer one is refused rather than misread.
pub const LOCK_VERSION: u32 = 1;

/// The whole lock file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockFile {
    pub version: u32,
    /// `appliance <version>` that wrote it (informative; not compared by `--locked`).
    pub tool: String,
    /// Absent when the model is local and only its tokenizer comes from the Hub.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<LockedModel>,
    /// `model.tokenizer` from the Hub. Optional, so locks written before companion tokenizer
    /// sources existed still read, and a lock without one renders byte for byte as they did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<LockedModel>,
    /// `[model] path`: a local directory. Written by `appliance lock` only (a build never
    /// creates it: development directories change all the time), then held by `--locked`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<LockedDir>,
    /// `model.tokenizer = { path = ... }`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer_path: Option<LockedDir>,
}

/// A local directory source: what its globs selected, byte for byte. No host path: the lock
/// must read the same on every build host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedDir {
    /// The manifest's file globs at lock time, kept to notice a manifest edit.
    pub globs: Vec<String>,
    /// Every selected file, sorted by path.
    pub files: Vec<LockedFile>,
}

/// Which `path` source a lock section records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockedDirSource {
    /// `[model] path`, the `[path]` section.
    Model,
    /// `model.tokenizer = { path = ... }`, the `[tokenizer_path]` section.
    Tokenizer,
}

impl LockedDirSource {
    pub const ALL: [LockedDirSource; 2] = [Self::Model, Self::Tokenizer];

    /// The manifest field, as messages name the source.
    pub fn field(self) -> &'static str {
        match self {
            Self::Model => "model.path",
            Self::Tokenizer => "model.tokenizer.path",
        }
    }

    fn section(self) -> &'static str {
        match self {
            Self::Model => "path",
            Self::Tokenizer => "tokenizer_path",
        }
    }
}

/// Which source of the manifest a lock section records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockedSource {
    /// `[model] hf`, the `[model]` section.
    Model,
    /// `model.tokenizer = { hf = ... }`, the `[tokenizer]` section.
    Tokenizer,
}

impl LockedSource {
    pub const ALL: [LockedSource; 2] = [Self::Model, Self::Tokenizer];

    /// The manifest field, as messages name the source.
    pub fn field(self) -> &'static str {
        match self {
            Self::Model => "model",
            Self::Tokenizer => "model.tokenizer",
        }
    }

    /// The lock file's table.
    fn section(self) -> &'static str {
        match self {
            Self::Model => "model",
            Self::Tokenizer => "tokenizer",
        }
    }
}

/// A Hub source (the model or its companion tokenizer) pinned to a commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedModel {
    /// `org/name` on the Hub.
    pub repo: String,
    /// The revision the manifest asked for (branch, tag or commit), kept to notice a manifest edit.
    pub revision: String,
    /// The 40-hex commit `revision` resolved to: what was downloaded and packaged.
    pub commit: String,
    /// The manifest's `model.files` globs at lock time, kept to notice a manifest edit.
    pub globs: Vec<String>,
    /// Every packaged file, sorted by path.
    pub files: Vec<LockedFile>,
}

/// One packaged model file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedFile {
    /// Relative to the model directory, `/`-separated.
    pub path: String,
    pub size: u64,
    /// Bare lowercase hex, as `sha256sum` prints it.
    #[serde(with = "hex_digest")]
    pub sha256: Sha256Digest,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("Failed to read lock file `{path}`")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Lock file `{path}` is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("Failed to write lock file `{path}`")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl LockFile {
    pub fn new(model: Option<LockedModel>, tokenizer: Option<LockedModel>) -> Self {
        Self {
            version: LOCK_VERSION,
            tool: format!("appliance {}", env!("CARGO_PKG_VERSION")),
            model,
            tokenizer,
            path: None,
            tokenizer_path: None,
        }
    }

    /// The section recording the `path` source `source`, if the lock has one.
    pub fn dir(&self, source: LockedDirSource) -> Option<&LockedDir> {
        match source {
            LockedDirSource::Model => self.path.as_ref(),
            LockedDirSource::Tokenizer => self.tokenizer_path.as_ref(),
        }
    }

    pub fn dir_mut(&mut self, source: LockedDirSource) -> &mut Option<LockedDir> {
        match source {
            LockedDirSource::Model => &mut self.path,
            LockedDirSource::Tokenizer => &mut self.tokenizer_path,
        }
    }

    /// Every section's file list, with the section's name.
    fn file_lists(&self) -> Vec<(&'static str, &[LockedFile])> {
        let hub = LockedSource::ALL
            .into_iter()
            .filter_map(|s| Some((s.section(), self.get(s)?.files.as_slice())));
        let dirs = LockedDirSource::ALL
            .into_iter()
            .filter_map(|s| Some((s.section(), self.dir(s)?.files.as_slice())));
        hub.chain(dirs).collect()
    }

    /// Every file the lock records, across its sections.
    pub fn all_files(&self) -> impl Iterator<Item = &LockedFile> {
        self.file_lists().into_iter().flat_map(|(_, files)| files)
    }

    /// The section recording `source`, if the lock has one.
    pub fn get(&self, source: LockedSource) -> Option<&LockedModel> {
        match source {
            LockedSource::Model => self.model.as_ref(),
            LockedSource::Tokenizer => self.tokenizer.as_ref(),
        }
    }

    /// Reads `path`; `Ok(None)` when there is no lock yet.
    pub fn read_optional(path: &Path) -> Result<Option<Self>, LockError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(LockError::Read {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        let parse_err = |message: String| LockError::Parse {
            path: path.to_path_buf(),
            message,
        };
        let lock: LockFile = toml::from_str(&text).map_err(|e| parse_err(e.message().into()))?;
        if lock.version != LOCK_VERSION {
            return Err(parse_err(format!(
                "version {} is not supported (this appliance writes version {LOCK_VERSION})",
                lock.version
            )));
        }
        if lock.file_lists().is_empty() {
            return Err(parse_err(
                "it records no source (none of `[model]`, `[tokenizer]`, `[path]`, `[tokenizer_path]`)"
                    .into(),
            ));
        }
        for (section, files) in lock.file_lists() {
            if let Some(bad) = files.iter().find(|f| {
                f.path
                    .split('/')
                    .any(|c| c.is_empty() || c == "." || c == "..")
            }) {
                return Err(parse_err(format!(
                    "`{}` is not a relative path inside the model directory",
                    bad.path
                )));
            }
            if !files.is_sorted_by(|a, b| a.path < b.path) {
                return Err(parse_err(format!(
                    "`{section}.files` is not sorted by path (or lists a path twice)"
                )));
            }
        }
        Ok(Some(lock))
    }

    /// Writes atomically ([`crate::atomic_file`]): two builds of one manifest at once (same
    /// content) cannot rename each other's temporary file away.
    pub fn write(&self, path: &Path) -> Result<(), LockError> {
        crate::atomic_file::write(path, self.render().as_bytes(), 0o644, false).map_err(|source| {
            LockError::Write {
                path: path.to_path_buf(),
                source,
            }
        })
    }

    /// The file's bytes: a header comment, then the TOML.
    pub fn render(&self) -> String {
        let body = toml::to_string(self).unwrap_or_default();
        format!(
            "# Written by `appliance lock`. Commit it: `appliance build --locked` refuses any drift\n\
             # from it, and it records exactly which model bytes were packaged.\n{body}"
        )
    }

    /// What differs between `self` (on disk) and `other` (what the build resolved), one line
    /// per difference, each naming its source (`model` or `model.tokenizer`); empty when they
    /// agree. The `tool` line is not compared.
    pub fn differences(&self, other: &LockFile) -> Vec<String> {
        let mut out = Vec::new();
        for source in LockedSource::ALL {
            let name = source.field();
            match (self.get(source), other.get(source)) {
                (None, None) => {}
                (Some(a), None) => out.push(format!(
                    "`{name}`: `{}` is locked, but the manifest no longer has it as a Hub source",
                    a.repo
                )),
                (None, Some(b)) => out.push(format!("`{name}`: `{}` is not in the lock", b.repo)),
                (Some(a), Some(b)) => out.extend(
                    section_differences(a, b)
                        .into_iter()
                        .map(|d| format!("`{name}` {d}")),
                ),
            }
        }
        for source in LockedDirSource::ALL {
            if let (Some(a), Some(b)) = (self.dir(source), other.dir(source)) {
                out.extend(
                    dir_differences(a, b)
                        .into_iter()
                        .map(|d| format!("`{}` {d}", source.field())),
                );
            }
        }
        out
    }
}

/// What differs between a locked directory and what it holds now.
pub fn dir_differences(a: &LockedDir, b: &LockedDir) -> Vec<String> {
    let mut out = Vec::new();
    if a.globs != b.globs {
        out.push(format!(
            "files globs: locked `{}`, now `{}`",
            a.globs.join(", "),
            b.globs.join(", ")
        ));
    }
    out.extend(file_differences(&a.files, &b.files));
    out
}

fn section_differences(a: &LockedModel, b: &LockedModel) -> Vec<String> {
    let mut out = Vec::new();
    let mut field = |name: &str, x: String, y: String| {
        if x != y {
            out.push(format!("{name}: locked `{x}`, now `{y}`"));
        }
    };
    field("repo", a.repo.clone(), b.repo.clone());
    field("revision", a.revision.clone(), b.revision.clone());
    field("commit", a.commit.clone(), b.commit.clone());
    field("files globs", a.globs.join(", "), b.globs.join(", "));
    out.extend(file_differences(&a.files, &b.files));
    out
}

/// Each file locked in `a` and missing or different in `b`, then each file new in `b`.
fn file_differences(a: &[LockedFile], b: &[LockedFile]) -> Vec<String> {
    let mut out = Vec::new();
    for f in a {
        match b.iter().find(|g| g.path == f.path) {
            None => out.push(format!("`{}`: locked, no longer selected", f.path)),
            Some(g) if g != f => out.push(format!(
                "`{}`: locked {} ({} bytes), now {} ({} bytes)",
                f.path,
                f.sha256.hex(),
                f.size,
                g.sha256.hex(),
                g.size
            )),
            Some(_) => {}
        }
    }
    for g in b {
        if !a.iter().any(|f| f.path == g.path) {
            out.push(format!("`{}`: new, not in the lock", g.path));
        }
    }
    out
}

impl LockedModel {
    /// Whether this lock still answers the manifest's question (same repo, revision, globs).
    pub fn matches(&self, repo: &str, revision: &str, globs: &[String]) -> bool {
        self.repo == repo && self.revision == revision && self.globs == globs
    }
}

/// `manifest.toml` → `manifest.lock`, beside it (as `Cargo.toml` → `Cargo.lock`).
pub fn lock_path(manifest: &Path) -> PathBuf {
    manifest.with_extension("lock")
}

/// A multi-line rendering of differences for error messages.
pub fn render_differences(diffs: &[String]) -> String {
    let mut out = String::new();
    for d in diffs {
        let _ = write!(out, "\n  - {d}");
    }
    out
}

mod hex_digest {
    use super::Sha256Digest;

    pub fn serialize<S: serde::Serializer>(d: &Sha256Digest, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&d.hex())
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Sha256Digest, D::Error> {
        let text = <String as serde::Deserialize>::deserialize(d)?;
        Sha256Digest::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> LockFile {
        LockFile::new(Some(section("org/m")), None)
    }

    fn section(repo: &str) -> LockedModel {
        LockedModel {
            repo: repo.into(),
            revision: "main".into(),
            commit: "a".repeat(40),
            globs: vec!["*.json".into()],
            files: vec![
                LockedFile {
                    path: "a.json".into(),
                    size: 3,
                    sha256: Sha256Digest::of(b"abc"),
                },
                LockedFile {
                    path: "b.json".into(),
                    size: 0,
                    sha256: Sha256Digest::of(b""),
                },
            ],
        }
    }

    #[test]
    fn lock_round_trips_and_renders_stably() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.lock");
        let lock = sample();
        lock.write(&path).unwrap();
        let first = std::fs::read(&path).unwrap();
        let back = LockFile::read_optional(&path).unwrap().unwrap();
        assert_eq!(back, lock);
        back.write(&path).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), first);
        let text = String::from_utf8(first).unwrap();
        assert!(text.contains(&format!("sha256 = \"{}\"", Sha256Digest::of(b"abc").hex())));
    }

    #[test]
    fn lock_differences_name_each_changed_file() {
        let a = sample();
        let mut b = sample();
        let m = b.model.as_mut().unwrap();
        m.commit = "b".repeat(40);
        m.files[0].sha256 = Sha256Digest::of(b"xyz");
        m.files.pop();
        let diffs = a.differences(&b);
        assert_eq!(diffs.len(), 3, "{diffs:?}");
        assert!(diffs[0].starts_with("`model` commit"), "{diffs:?}");
        assert!(diffs[1].contains("`a.json`"));
        assert!(diffs[2].contains("`b.json`: locked, no longer selected"));
        assert!(a.differences(&sample()).is_empty());
    }

    /// Drift in the tokenizer section is reported as the tokenizer's, never the model's.
    #[test]
    fn lock_differences_name_the_tokenizer_source() {
        let a = LockFile::new(Some(section("org/m")), Some(section("org/t")));
        let mut b = a.clone();
        b.tokenizer.as_mut().unwrap().commit = "c".repeat(40);
        let diffs = a.differences(&b);
        assert_eq!(diffs.len(), 1, "{diffs:?}");
        assert!(
            diffs[0].starts_with("`model.tokenizer` commit"),
            "{diffs:?}"
        );
        let diffs = a.differences(&sample());
        assert_eq!(diffs.len(), 1, "{diffs:?}");
        assert!(
            diffs[0].contains("`model.tokenizer`: `org/t` is locked"),
            "{diffs:?}"
        );
        assert!(sample().differences(&a)[0].contains("`org/t` is not in the lock"));
    }

    /// A lock written before companion tokenizer sources reads, and renders byte for byte.
    #[test]
    fn a_lock_without_a_tokenizer_section_reads_and_renders_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.lock");
        let sha = Sha256Digest::of(b"abc").hex();
        let old = format!(
            "version = 1\ntool = \"appliance 0.1.0\"\n\n[model]\nrepo = \"org/m\"\nrevision = \"main\"\n\
             commit = \"{}\"\nglobs = [\"*.json\"]\n\n[[model.files]]\npath = \"a.json\"\nsize = 3\n\
             sha256 = \"{sha}\"\n",
            "a".repeat(40)
        );
        std::fs::write(&path, &old).unwrap();
        let lock = LockFile::read_optional(&path).unwrap().unwrap();
        assert!(lock.tokenizer.is_none());
        assert!(!lock.render().contains("tokenizer"));
        assert!(lock.render().ends_with(&old), "{}", lock.render());

        let both = LockFile::new(Some(section("org/m")), Some(section("org/t")));
        both.write(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("[tokenizer]\nrepo = \"org/t\""), "{text}");
        assert!(text.contains("[[tokenizer.files]]"), "{text}");
        assert_eq!(LockFile::read_optional(&path).unwrap().unwrap(), both);
        let only = LockFile::new(None, Some(section("org/t")));
        only.write(&path).unwrap();
        assert_eq!(LockFile::read_optional(&path).unwrap().unwrap(), only);
    }

    /// `[path]` sections round-trip, are validated like Hub ones, and their drift is named.
    #[test]
    fn path_sections_round_trip_and_name_their_drift() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.lock");
        let mut lock = LockFile::new(None, None);
        let files = section("x").files;
        lock.path = Some(LockedDir {
            globs: vec!["*".into()],
            files: files.clone(),
        });
        lock.write(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("[path]\nglobs = [\"*\"]") && text.contains("[[path.files]]"),
            "{text}"
        );
        assert_eq!(LockFile::read_optional(&path).unwrap().unwrap(), lock);

        let mut other = lock.clone();
        other.path.as_mut().unwrap().files[1].sha256 = Sha256Digest::of(b"new");
        let diffs = lock.differences(&other);
        assert_eq!(diffs.len(), 1, "{diffs:?}");
        assert!(
            diffs[0].starts_with("`model.path` `b.json`: locked"),
            "{diffs:?}"
        );

        other.path.as_mut().unwrap().files.reverse();
        std::fs::write(&path, other.render()).unwrap();
        let err = LockFile::read_optional(&path).unwrap_err().to_string();
        assert!(err.contains("`path.files` is not sorted"), "{err}");
        std::fs::write(&path, "version = 1\ntool = \"t\"\n").unwrap();
        let err = LockFile::read_optional(&path).unwrap_err().to_string();
        assert!(err.contains("records no source"), "{err}");
    }

    #[test]
    fn missing_lock_is_none_and_unsorted_lock_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            LockFile::read_optional(&dir.path().join("x.lock"))
                .unwrap()
                .is_none()
        );
        let mut lock = sample();
        lock.model.as_mut().unwrap().files.reverse();
        let path = dir.path().join("y.lock");
        std::fs::write(&path, lock.render()).unwrap();
        let err = LockFile::read_optional(&path).unwrap_err().to_string();
        assert!(err.contains("not sorted"), "{err}");
    }
}
