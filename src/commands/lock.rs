//! `appliance lock`, and the lock policy every command that fetches Hub sources (the model,
//! and a companion tokenizer source) shares: use the lock when it answers the manifest, write it
//! when absent or stale, and with `--locked` refuse any drift from it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

use crate::digest::Sha256Digest;
use crate::fetch::hub::{Contents, HubFetcher, HubRequest, HubSnapshot};
use crate::fetch::tokenizer::{self, FetchedTokenizer};
use crate::fetch::{FetchedModel, ModelOrigin};
use crate::layers::plan::PlannedFile;
use crate::lock::{self, LockFile, LockedModel, LockedSource, render_differences};
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

/// `appliance lock`: resolves the manifest's revisions and records every file's digest.
pub fn lock(
    manifest_path: &Path,
    hub: &HubFetcher,
    progress: &dyn Progress,
    log: &dyn BuildLog,
) -> Result<HubFetch> {
    let manifest = Manifest::load(manifest_path, None)?;
    fetch_hub(
        &manifest,
        manifest_path,
        hub,
        LockPolicy::Relock,
        progress,
        log,
    )
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
    let new = LockFile::new(
        section(LockedSource::Model),
        section(LockedSource::Tokenizer),
    );
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
