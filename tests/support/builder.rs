//! Builds the `llama-gqa` reference fixture with the `appliance` binary under test, as the image
//! tests (OCI consumers, base images) need it: the real CLI, a manifest on disk, `--json`.

use std::path::Path;
use std::process::{Command, Output};

use super::paths::{appliance_bin, shared_fixtures};

/// The image name every `llama-gqa` build gets (tag `0.1.0`).
pub const LLAMA_GQA: &str = "registry.local/llm/llama-gqa";

/// Writes a manifest for the `llama-gqa` fixture to `manifest` and runs
/// `appliance build MANIFEST -o TARBALL --json`; the caller checks the status. `image` goes into
/// `[image]`; `rest` follows `[server]` (more server keys, then any further table).
pub fn build_llama_gqa(manifest: &Path, image: &str, rest: &str, tarball: &Path) -> Output {
    let model = shared_fixtures().join("models/llama-gqa");
    std::fs::write(
        manifest,
        format!(
            "[image]\nname = \"{LLAMA_GQA}\"\ntag = \"0.1.0\"\ncreated = \"2025-06-01T00:00:00Z\"\n{image}\n\
             [model]\npath = \"{}\"\n[server]\nserved_model_name = \"llama-gqa\"\n{rest}\n",
            model.display()
        ),
    )
    .unwrap();
    Command::new(appliance_bin())
        .args([
            "build",
            manifest.to_str().unwrap(),
            "-o",
            tarball.to_str().unwrap(),
            "--json",
        ])
        .output()
        .unwrap()
}
