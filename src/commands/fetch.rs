//! `appliance fetch`: fills the Hugging Face cache with a manifest's model, verified, on a
//! connected host, so that `appliance build --offline` can run where there is no network.

use std::path::Path;

use anyhow::Result;

use super::lock::{HubFetch, LockPolicy, fetch_hub};
use crate::fetch::hub::HubFetcher;
use crate::manifest::Manifest;
use crate::progress::{BuildLog, Progress};

pub fn fetch(
    manifest_path: &Path,
    hub: &HubFetcher,
    locked: bool,
    progress: &dyn Progress,
    log: &dyn BuildLog,
) -> Result<HubFetch> {
    let manifest = Manifest::load(manifest_path, None)?;
    let policy = if locked {
        LockPolicy::Locked
    } else {
        LockPolicy::Update
    };
    fetch_hub(&manifest, manifest_path, hub, policy, progress, log)
}
