//! Builds images with the `appliance` binary under test, as the image tests need them: the
//! `llama-gqa` reference fixture (OCI consumers, base images) and the shipped CUDA demo (CUDA,
//! Kubernetes). The real CLI, a manifest on disk.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use super::paths::{appliance_bin, shared_fixtures, workspace_root};
use super::process::run_with_timeout;

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

/// Builds the shipped `manifests/demo-cuda.toml`, pointed at the CUDA server `server`, into
/// `dir/demo-cuda.tar` with `appliance build MANIFEST -o TARBALL ARGS` (a cache of its own in
/// `dir`); returns the tarball's path and the build's output, for the caller to check.
pub fn build_demo_cuda(dir: &Path, server: &Path, args: &[&str]) -> (PathBuf, Output) {
    let shipped =
        std::fs::read_to_string(workspace_root().join("manifests/demo-cuda.toml")).unwrap();
    let binary_line = shipped
        .lines()
        .find(|l| l.starts_with("binary = "))
        .expect("demo-cuda.toml sets server.binary");
    let manifest = dir.join("demo-cuda.toml");
    let pointed = shipped.replace(
        binary_line,
        &format!("binary = {:?}", server.display().to_string()),
    );
    std::fs::write(&manifest, pointed).unwrap();
    let tarball = dir.join("demo-cuda.tar");
    let out = run_with_timeout(
        Command::new(appliance_bin())
            .arg("build")
            .arg(&manifest)
            .arg("-o")
            .arg(&tarball)
            .args(args)
            .env("APPLIANCE_CACHE", dir.join("cache")),
        Duration::from_secs(300),
    );
    (tarball, out)
}
