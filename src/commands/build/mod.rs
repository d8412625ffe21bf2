//! `appliance build`: runs the pipeline `manifest → fetch → layers → image → export`.
//!
//! This file only orchestrates, as a row of steps (`resolve → fetch → plan → write → evaluate
//! → assemble → sign → commit`), each in its own module and handing the next a small struct of
//! what it found. The stages themselves live outside `commands` and know nothing of each other.

mod assemble;
mod commit;
mod evaluate;
mod fetch;
mod plan;
mod resolve;
pub mod sign;
mod write;

use std::path::PathBuf;

use anyhow::Result;

use self::assemble::Assembled;
use self::evaluate::{Evaluated, Evaluation};
use self::fetch::{Fetched, PathLock};
use self::plan::Planned;
use self::resolve::Resolved;
use self::write::Written;
use crate::progress::{BuildLog, Progress};
use crate::summary::ImageSummary;

/// Everything the build needs besides the manifest, resolved by the CLI from args and env.
#[derive(Debug, Clone)]
pub struct BuildSettings {
    pub manifest: PathBuf,
    /// `--output`, already resolved against the working directory.
    pub output: Option<PathBuf>,
    /// Where generated (synthetic) models are cached.
    pub cache_dir: PathBuf,
    /// Directory of the running `appliance`, where `appliance-server` is looked for by default.
    pub exe_dir: PathBuf,
    pub source_date_epoch: Option<String>,
    /// `--verify-cache`: rehash cached inputs instead of trusting their recorded stamps.
    pub verify_cache: bool,
    /// The signing key's password, for manifests with `[signing]`.
    pub key_password: sign::KeyPassword,
    /// Hub endpoint, cache, token and `--offline`, for `[model] hf` sources.
    pub hub: crate::fetch::hub::HubSettings,
    /// `--locked`: refuse any drift from `<manifest>.lock`.
    pub locked: bool,
    /// `--skip-eval`: package without running the `[[eval]]` gate (recorded in the provenance).
    pub skip_eval: bool,
}

/// What a build produced.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BuildOutcome {
    pub output: PathBuf,
    pub tarball_size: u64,
    pub image: ImageSummary,
    /// With `--delta-from`: the delta written beside the tarball.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delta: Option<crate::delta::DeltaSummary>,
}

pub fn build(
    settings: &BuildSettings,
    progress: &dyn Progress,
    log: &dyn BuildLog,
) -> Result<BuildOutcome> {
    let session = Session {
        settings,
        progress,
        log,
    };
    let resolved = resolve::resolve(&session)?;
    let (fetched, path_lock) = fetch::fetch(&session, &resolved.manifest)?;
    let (planned, specs) = plan::plan(&session, &resolved, &fetched)?;
    // From here on the tarball is open: a failing step drops the writer, which deletes the
    // partial file, so every check must come before `commit`.
    let mut written = write::write(&session, &resolved, &fetched, &planned, specs, path_lock)?;
    let evaluated = evaluate::evaluate(&session, &resolved, &fetched, &planned, &written)?;
    let assembled = assemble::assemble(&resolved, &fetched, &planned, &written)?;
    let sidecars = sign::sign(
        &session,
        &resolved,
        &fetched,
        &planned,
        &mut written,
        &evaluated,
        &assembled,
    )?;
    commit::commit(resolved, written, evaluated, assembled, sidecars)
}

/// The settings and the reporters together, so a step's signature lists the earlier steps'
/// results it builds on and little else.
struct Session<'a> {
    settings: &'a BuildSettings,
    progress: &'a dyn Progress,
    log: &'a dyn BuildLog,
}

/// Twice a pessimistic load time (100 MB/s from disk), never under 2 minutes, never over an
/// hour: Docker ignores failed health checks during the start period, so a generous one costs
/// nothing while a short one has a slow disk's container marked unhealthy mid-load.
pub fn start_period_for(model_bytes: u64) -> u64 {
    let load_secs = model_bytes / 100_000_000;
    (120 + 2 * load_secs).min(3600)
}

pub use appliance_common::human_bytes;
