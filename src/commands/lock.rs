//! `appliance lock`, and the lock policy every command that fetches a Hub model shares:
//! use the lock when it answers the manifest, write it when absent or stale, and with
//! `--locked` refuse any drift from it.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

use crate::fetch::hub::{HubFetcher, HubRequest, HubSnapshot};
use crate::fetch::{FetchedModel, ModelOrigin};
use crate::layers::plan::PlannedFile;
use crate::lock::{self, LockFile, render_differences};
use crate::manifest::{Manifest, ModelSource};
use crate::progress::Progress;

use super::build::BuildLog;

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

/// A Hub model fetched and verified, and where its lock file is.
pub struct HubFetch {
    pub model: FetchedModel,
    pub snapshot: HubSnapshot,
    pub lock_path: PathBuf,
}

/// `appliance lock`: resolves the manifest's revision and records every file's digest.
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
    let ModelSource::Hub { repo, revision } = &manifest.model.source else {
        bail!(
            "`{}` has no `model.hf` source; lock files record Hub models",
            manifest_path.display()
        );
    };
    let globs = &manifest.model.files;
    let lock_path = lock::lock_path(manifest_path);
    let existing = match policy {
        LockPolicy::Relock => None,
        _ => LockFile::read_optional(&lock_path)?,
    };
    let usable = existing
        .as_ref()
        .filter(|l| l.model.matches(repo, revision, globs));
    let offline = hub.settings().offline;
    if policy == LockPolicy::Locked {
        let Some(existing) = &existing else {
            bail!(
                "`--locked`, but there is no lock file `{}`\n  hint: run `appliance lock {}` and commit the lock",
                lock_path.display(),
                manifest_path.display()
            );
        };
        if usable.is_none() {
            bail!(
                "`--locked`, but `{}` was written for another `[model]` (repo `{}`, revision `{}`, files [{}]) than the manifest's (repo `{repo}`, revision `{revision}`, files [{}])\n  hint: run `appliance lock {}`",
                lock_path.display(),
                existing.model.repo,
                existing.model.revision,
                existing.model.globs.join(", "),
                globs.join(", "),
                manifest_path.display()
            );
        }
        if !offline {
            let now = hub.resolve(repo, revision)?;
            if now != existing.model.commit {
                bail!(
                    "`--locked`, but revision `{revision}` of `{repo}` now resolves to commit {now}, while `{}` pins {}\n  hint: build without `--locked` to package the locked commit, or run `appliance lock {}` to move to the new one",
                    lock_path.display(),
                    existing.model.commit,
                    manifest_path.display()
                );
            }
        }
    }

    let snapshot = hub.fetch(
        &HubRequest {
            repo,
            revision,
            globs,
            pins: &manifest.model.pins,
            lock: usable.map(|l| &l.model),
            manifest: manifest_path,
        },
        progress,
    )?;
    let new = LockFile::new(snapshot.to_locked(repo, revision, globs));
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
        log.step(&format!(
            "Locked {repo}@{revision} to commit {} ({} files) in {}",
            new.model.commit,
            new.model.files.len(),
            lock_path.display()
        ));
    }
    let model = FetchedModel {
        files: snapshot
            .files
            .iter()
            .map(|f| PlannedFile {
                rel_path: f.path.clone(),
                host_path: f.host_path.clone(),
                size: f.size,
            })
            .collect(),
        origin: ModelOrigin::Hf {
            repo: repo.clone(),
            revision: snapshot.commit.clone(),
        },
    };
    Ok(HubFetch {
        model,
        snapshot,
        lock_path,
    })
}
