//! `appliance lock`, and the lock policy every command that fetches Hub sources (the model,
//! and a companion tokenizer source) shares: use the lock when it answers the manifest, write it
//! when absent or stale, and with `--locked` refuse any drift from it.
//!
//! `path` sources (a local model or tokenizer directory) are locked by `appliance lock` too:
//! every file their globs select, with size and sha256. A build checks them against the lock
//! with the digests it measures while packaging (no second read); `--locked` refuses any drift.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};

use crate::digest::Sha256Digest;
use crate::fetch::hub::{Contents, HubFetcher, HubRequest, HubSnapshot};
use crate::fetch::tokenizer::{self, FetchedTokenizer};
use crate::fetch::{FetchedModel, ModelOrigin};
use crate::layers::plan::PlannedFile;
use crate::lock::{
    self, LockFile, LockedDir, LockedDirSource, LockedFile, LockedModel, LockedSource,
    render_differences,
};
use crate::manifest::{Manifest, ModelSource, TokenizerSource};
use crate::progress::{BuildLog, Progress};

/// How the lock file is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockPolicy {
    /// Use a matching lock's commit; (re)write the lock when it is absent or stale.
    Update,
    /// `--locked`: the lock must exist, match the manifest and the Hub; nothing is rewritten.
    Locked,
    /// `appliance lock`: ignore the old lock, resolve the revision afresh, write the result.
    Relock,
}

/// A manifest's Hub sources fetched and verified, and where its lock file is.
pub struct HubFetch {
    /// Every Hub source, in the order fetched (the tokenizer's first).
    pub sources: Vec<HubFetched>,
    /// The model's files, when `[model]` is a Hub source.
    pub model: Option<FetchedModel>,
    /// `model.tokenizer`, from the Hub or listed from its directory, when the manifest has one.
    pub tokenizer: Option<FetchedTokenizer>,
    pub lock_path: PathBuf,
}

/// One Hub source, verified in the cache.
pub struct HubFetched {
    pub source: LockedSource,
    pub repo: String,
    pub snapshot: HubSnapshot,
}

impl HubFetch {
    /// Every fetched file's verified digest, by its path in the model directory: what the
    /// packaged bytes must still be.
    pub fn verified_digests(&self) -> BTreeMap<String, Sha256Digest> {
        self.sources
            .iter()
            .flat_map(|s| &s.snapshot.files)
            .map(|f| (f.path.clone(), f.sha256))
            .collect()
    }
}

/// A Hub source as the manifest asks for it.
struct HubSource<'a> {
    source: LockedSource,
    repo: &'a str,
    revision: &'a str,
    globs: &'a [String],
}

/// The manifest's Hub sources, the tokenizer's first: its files count towards the model's
/// layout check, which runs before the model's (large) files are downloaded.
fn hub_sources(manifest: &Manifest) -> Vec<HubSource<'_>> {
    let mut out = Vec::new();
    if let Some(t) = &manifest.model.tokenizer
        && let TokenizerSource::Hub { repo, revision } = &t.source
    {
        out.push(HubSource {
            source: LockedSource::Tokenizer,
            repo,
            revision,
            globs: &t.files,
        });
    }
    if let ModelSource::Hub { repo, revision } = &manifest.model.source {
        out.push(HubSource {
            source: LockedSource::Model,
            repo,
            revision,
            globs: &manifest.model.files,
        });
    }
    out
}

/// Whether the manifest has anything a lock file records.
pub fn has_hub_source(manifest: &Manifest) -> bool {
    !hub_sources(manifest).is_empty()
}

/// A `path` source as the manifest asks for it, with the files its globs select now.
pub struct DirSource {
    pub source: LockedDirSource,
    pub globs: Vec<String>,
    pub files: Vec<PlannedFile>,
}

impl DirSource {
    /// The lock section for these files, given each one's digest.
    pub fn locked(&self, digest: impl Fn(&str) -> Option<Sha256Digest>) -> Result<LockedDir> {
        let mut files = Vec::new();
        for f in &self.files {
            let Some(sha256) = digest(&f.rel_path) else {
                bail!(
                    "`{}` of `{}` was not measured",
                    f.rel_path,
                    self.source.field()
                );
            };
            files.push(LockedFile {
                path: f.rel_path.clone(),
                size: f.size,
                sha256,
            });
        }
        files.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(LockedDir {
            globs: self.globs.clone(),
            files,
        })
    }
}

/// The manifest's `path` sources (the tokenizer directory's first, as for Hub sources).
pub fn dir_sources(manifest: &Manifest) -> Result<Vec<DirSource>> {
    let mut out = Vec::new();
    let mut companion = Vec::new();
    if let Some(t) = &manifest.model.tokenizer
        && let Some(fetched) = tokenizer::fetch_local(t)?
    {
        companion = fetched.names();
        out.push(DirSource {
            source: LockedDirSource::Tokenizer,
            globs: t.files.clone(),
            files: fetched.files,
        });
    }
    if let ModelSource::Path(dir) = &manifest.model.source {
        out.push(DirSource {
            source: LockedDirSource::Model,
            globs: manifest.model.files.clone(),
            files: crate::fetch::list_model_files(dir, &manifest.model.files, &companion)?,
        });
    }
    Ok(out)
}

/// What `appliance lock` recorded.
pub struct Locked {
    pub lock_path: PathBuf,
    /// The Hub sources, fetched and verified.
    pub hub: Option<HubFetch>,
    /// The `path` sources, hashed.
    pub dirs: Vec<(LockedDirSource, LockedDir)>,
}

/// `appliance lock`: resolves the manifest's Hub revisions and records every file's digest,
/// and hashes every file its `path` sources select.
pub fn lock(
    manifest_path: &Path,
    hub: &HubFetcher,
    progress: &dyn Progress,
    log: &dyn BuildLog,
) -> Result<Locked> {
    let manifest = Manifest::load(manifest_path, None)?;
    let sources = dir_sources(&manifest)?;
    if !has_hub_source(&manifest) && sources.is_empty() {
        bail!(
            "`{}` has no source a lock file records (`model.hf`, `model.path`, `model.tokenizer`): a synthetic model is generated from its spec",
            manifest_path.display()
        );
    }
    let lock_path = lock::lock_path(manifest_path);
    let total = sources.iter().flat_map(|s| &s.files).map(|f| f.size).sum();
    let task = progress.task("Hashing", total);
    let mut dirs = Vec::new();
    for s in &sources {
        let mut measured = BTreeMap::new();
        for f in &s.files {
            let m =
                crate::fetch::hub::verify::hash_file(&f.host_path, false).with_context(|| {
                    format!(
                        "Failed to read `{}` of `{}`",
                        f.host_path.display(),
                        s.source.field()
                    )
                })?;
            task.advance(m.size);
            measured.insert(f.rel_path.clone(), m);
        }
        let mut locked = s.locked(|path| measured.get(path).map(|m| m.sha256))?;
        // The size read, not the size listed: a file growing between the two is what was hashed.
        for f in &mut locked.files {
            f.size = measured[&f.path].size;
        }
        dirs.push((s.source, locked));
    }
    task.finish();
    let hub_fetch = if has_hub_source(&manifest) {
        Some(fetch_hub(
            &manifest,
            manifest_path,
            hub,
            LockPolicy::Relock,
            progress,
            log,
        )?)
    } else {
        None
    };
    let mut file = match &hub_fetch {
        // Just written by `fetch_hub`, with the Hub sections.
        Some(_) => LockFile::read_optional(&lock_path)?
            .with_context(|| format!("`{}` vanished while locking", lock_path.display()))?,
        None => LockFile::new(None, None),
    };
    for source in LockedDirSource::ALL {
        *file.dir_mut(source) = dirs
            .iter()
            .find(|(s, _)| *s == source)
            .map(|(_, d)| d.clone());
    }
    file.write(&lock_path)?;
    for (source, dir) in &dirs {
        log.step(&format!(
            "Locked `{}` ({} files, {} bytes) in {}",
            source.field(),
            dir.files.len(),
            dir.files.iter().map(|f| f.size).sum::<u64>(),
            lock_path.display()
        ));
    }
    Ok(Locked {
        lock_path,
        hub: hub_fetch,
        dirs,
    })
}

/// How a build holds its `path` sources to the lock.
pub enum DirLock {
    /// No lock records them: nothing to check or update.
    None,
    /// The lock's `path` sections, to check (`--locked`: refuse drift) or update.
    Held {
        lock: Box<LockFile>,
        path: PathBuf,
        locked: bool,
    },
}

/// Before packaging: with `--locked`, the lock must record every `path` source as the
/// manifest asks for it, and the directories must still hold the locked file names and sizes
/// (the digests are compared as the files are packaged).
pub fn check_dirs_before(
    manifest_path: &Path,
    sources: &[DirSource],
    locked: bool,
) -> Result<DirLock> {
    let lock_path = lock::lock_path(manifest_path);
    if sources.is_empty() {
        return Ok(DirLock::None);
    }
    let existing = LockFile::read_optional(&lock_path)?;
    let Some(existing) = existing else {
        if locked {
            bail!(
                "`--locked`, but there is no lock file `{}`\n  hint: run `appliance lock {}` and commit the lock",
                lock_path.display(),
                manifest_path.display()
            );
        }
        return Ok(DirLock::None);
    };
    if locked {
        for s in sources {
            let field = s.source.field();
            let Some(dir) = existing.dir(s.source) else {
                bail!(
                    "`--locked`, but `{}` does not record the `{field}` source\n  hint: run `appliance lock {}`",
                    lock_path.display(),
                    manifest_path.display()
                );
            };
            // Globs, names and sizes now; digests as the files are packaged.
            let mut diffs = Vec::new();
            if dir.globs != s.globs {
                diffs.push(format!(
                    "`{field}` files globs: locked `{}`, now `{}`",
                    dir.globs.join(", "),
                    s.globs.join(", ")
                ));
            }
            for l in &dir.files {
                match s.files.iter().find(|f| f.rel_path == l.path) {
                    None => diffs.push(format!("`{field}` `{}`: locked, no longer there", l.path)),
                    Some(f) if f.size != l.size => diffs.push(format!(
                        "`{field}` `{}`: locked at {} bytes (sha256 {}), now {} bytes",
                        l.path,
                        l.size,
                        l.sha256.hex(),
                        f.size
                    )),
                    Some(_) => {}
                }
            }
            for f in &s.files {
                if !dir.files.iter().any(|l| l.path == f.rel_path) {
                    diffs.push(format!("`{field}` `{}`: new, not in the lock", f.rel_path));
                }
            }
            if !diffs.is_empty() {
                bail!(
                    "`--locked`, but the `{field}` directory differs from `{}`:{}\n  hint: run `appliance lock {}` if the change is intended; nothing was written",
                    lock_path.display(),
                    render_differences(&diffs),
                    manifest_path.display()
                );
            }
        }
    } else if sources.iter().all(|s| existing.dir(s.source).is_none()) {
        return Ok(DirLock::None);
    }
    Ok(DirLock::Held {
        lock: Box::new(existing),
        path: lock_path,
        locked,
    })
}

impl DirLock {
    /// After packaging, with the sha256 of every file as packaged: `--locked` fails on any
    /// difference (naming the file and both digests); otherwise returns the lock to write
    /// (after the image is committed) when a recorded `path` section moved.
    pub fn check_after(
        self,
        sources: &[DirSource],
        measured: impl Fn(&str) -> Option<Sha256Digest>,
        log: &dyn BuildLog,
    ) -> Result<Option<(LockFile, PathBuf)>> {
        let DirLock::Held {
            mut lock,
            path,
            locked,
        } = self
        else {
            return Ok(None);
        };
        let mut diffs = Vec::new();
        for s in sources {
            let now = s.locked(&measured)?;
            if let Some(before) = lock.dir(s.source) {
                diffs.extend(
                    lock::dir_differences(before, &now)
                        .into_iter()
                        .map(|d| format!("`{}` {d}", s.source.field())),
                );
                *lock.dir_mut(s.source) = Some(now);
            }
        }
        if diffs.is_empty() {
            return Ok(None);
        }
        if locked {
            bail!(
                "`--locked`, but what was packaged differs from `{}`:{}\n  hint: run `appliance lock` if the change is intended; nothing was written",
                path.display(),
                render_differences(&diffs)
            );
        }
        log.step(&format!(
            "Updating `{}`: the `path` sources changed since it was written:{}",
            path.display(),
            render_differences(&diffs)
        ));
        Ok(Some((*lock, path)))
    }
}

pub fn fetch_hub(
    manifest: &Manifest,
    manifest_path: &Path,
    hub: &HubFetcher,
    policy: LockPolicy,
    progress: &dyn Progress,
    log: &dyn BuildLog,
) -> Result<HubFetch> {
    let sources = hub_sources(manifest);
    if sources.is_empty() {
        bail!(
            "`{}` has no Hub source (`model.hf` or `model.tokenizer.hf`); lock files record Hub sources",
            manifest_path.display()
        );
    }
    let lock_path = lock::lock_path(manifest_path);
    let existing = match policy {
        LockPolicy::Relock => None,
        _ => LockFile::read_optional(&lock_path)?,
    };
    let usable = |s: &HubSource| -> Option<&LockedModel> {
        existing
            .as_ref()?
            .get(s.source)
            .filter(|l| l.matches(s.repo, s.revision, s.globs))
    };
    if policy == LockPolicy::Locked {
        let Some(existing) = &existing else {
            bail!(
                "`--locked`, but there is no lock file `{}`\n  hint: run `appliance lock {}` and commit the lock",
                lock_path.display(),
                manifest_path.display()
            );
        };
        for s in &sources {
            check_locked(s, existing, usable(s), hub, &lock_path, manifest_path)?;
        }
    }

    let mut fetched = Vec::new();
    let mut tokenizer = None;
    if let Some(t) = &manifest.model.tokenizer {
        tokenizer = tokenizer::fetch_local(t)?;
    }
    let mut model = None;
    for s in &sources {
        let companion = tokenizer.as_ref().map(|t| t.names()).unwrap_or_default();
        let (pins, contents) = match s.source {
            LockedSource::Tokenizer => {
                let Some(t) = &manifest.model.tokenizer else {
                    continue;
                };
                (
                    &t.pins,
                    Contents::Tokenizer {
                        require_tokenizer_json: !t.explicit_files,
                    },
                )
            }
            LockedSource::Model => (
                &manifest.model.pins,
                Contents::Model {
                    companion: &companion,
                },
            ),
        };
        let snapshot = hub.fetch(
            &HubRequest {
                repo: s.repo,
                revision: s.revision,
                globs: s.globs,
                pins,
                lock: usable(s),
                manifest: manifest_path,
                contents,
            },
            progress,
        )?;
        match s.source {
            LockedSource::Tokenizer => {
                tokenizer = Some(FetchedTokenizer::from_snapshot(s.repo, &snapshot));
            }
            LockedSource::Model => {
                // Reads the GGUF headers (if any): a bad file fails here, before packaging, and
                // so does a GGUF with no tokenizer.json (here or from the companion) whose
                // metadata describes no tokenizer the server builds.
                let fetched_model = FetchedModel::with_companion(
                    snapshot
                        .files
                        .iter()
                        .map(|f| PlannedFile {
                            rel_path: f.path.clone(),
                            host_path: f.host_path.clone(),
                            size: f.size,
                        })
                        .collect(),
                    ModelOrigin::Hf {
                        repo: s.repo.to_string(),
                        revision: snapshot.commit.clone(),
                    },
                    &companion,
                )?;
                if let Some(t) = &tokenizer {
                    t.check_no_overlap(&fetched_model.origin.label(), &fetched_model.files)?;
                }
                model = Some(fetched_model);
            }
        }
        fetched.push(HubFetched {
            source: s.source,
            repo: s.repo.to_string(),
            snapshot,
        });
    }

    let section = |source: LockedSource| {
        sources.iter().zip(&fetched).find_map(|(s, f)| {
            (s.source == source).then(|| f.snapshot.to_locked(s.repo, s.revision, s.globs))
        })
    };
    let mut new = LockFile::new(
        section(LockedSource::Model),
        section(LockedSource::Tokenizer),
    );
    // The `path` sections are the build's to check; a Hub re-lock carries them over.
    if let Some(e) = &existing {
        new.path = e.path.clone();
        new.tokenizer_path = e.tokenizer_path.clone();
    }
    let diffs = existing
        .as_ref()
        .map(|e| e.differences(&new))
        .unwrap_or_default();
    if policy == LockPolicy::Locked && !diffs.is_empty() {
        bail!(
            "`--locked`, but what was fetched differs from `{}`:{}\n  hint: run `appliance lock {}` if the change is intended",
            lock_path.display(),
            render_differences(&diffs),
            manifest_path.display()
        );
    }
    let lock_written = policy != LockPolicy::Locked && (existing.is_none() || !diffs.is_empty());
    if lock_written {
        new.write(&lock_path)?;
        for (s, f) in sources.iter().zip(&fetched) {
            log.step(&format!(
                "Locked {}@{} (`{}`) to commit {} ({} files) in {}",
                s.repo,
                s.revision,
                s.source.field(),
                f.snapshot.commit,
                f.snapshot.files.len(),
                lock_path.display()
            ));
        }
    }
    Ok(HubFetch {
        sources: fetched,
        model,
        tokenizer,
        lock_path,
    })
}

/// `--locked`: the lock must record this source as the manifest asks for it, at the commit
/// its revision still resolves to (checked online only).
fn check_locked(
    s: &HubSource,
    existing: &LockFile,
    usable: Option<&LockedModel>,
    hub: &HubFetcher,
    lock_path: &Path,
    manifest_path: &Path,
) -> Result<()> {
    let (field, repo, revision) = (s.source.field(), s.repo, s.revision);
    let Some(locked) = usable else {
        match existing.get(s.source) {
            Some(other) => bail!(
                "`--locked`, but `{}` was written for another `{field}` (repo `{}`, revision `{}`, files [{}]) than the manifest's (repo `{repo}`, revision `{revision}`, files [{}])\n  hint: run `appliance lock {}`",
                lock_path.display(),
                other.repo,
                other.revision,
                other.globs.join(", "),
                s.globs.join(", "),
                manifest_path.display()
            ),
            None => bail!(
                "`--locked`, but `{}` does not record the `{field}` source `{repo}`\n  hint: run `appliance lock {}`",
                lock_path.display(),
                manifest_path.display()
            ),
        }
    };
    if !hub.settings().offline {
        let now = hub.resolve(repo, revision)?;
        if now != locked.commit {
            bail!(
                "`--locked`, but revision `{revision}` of `{repo}` (the `{field}` source) now resolves to commit {now}, while `{}` pins {}\n  hint: build without `--locked` to package the locked commit, or run `appliance lock {}` to move to the new one",
                lock_path.display(),
                locked.commit,
                manifest_path.display()
            );
        }
    }
    Ok(())
}
