//! Where the binaries under test and the shared fixtures are.
//!
//! The fixtures live outside the repository, in `../shared/fixtures` beside the clone (CI lays it
//! out that way). Their absence is a failure, not a skip: a green run that tested nothing is worse
//! than a red one.

use std::path::PathBuf;

/// The workspace root (the root package's manifest dir).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `../shared` beside the clone; panics when it is missing.
pub fn shared_dir() -> PathBuf {
    let dir = workspace_root().join("..").join("shared");
    dir.canonicalize().unwrap_or_else(|e| {
        panic!(
            "shared dir not found at {} ({e}): the tests need `shared/` checked out beside the clone",
            dir.display()
        )
    })
}

/// `../shared/fixtures`: the reference models (`models/llama-gqa`, `models/qwen2-tied`,
/// `models/mistral`) with their `reference.json`; panics when it is missing.
pub fn shared_fixtures() -> PathBuf {
    let dir = workspace_root().join("..").join("shared").join("fixtures");
    let dir = dir.canonicalize().unwrap_or_else(|e| {
        panic!(
            "shared fixtures not found at {} ({e}): the tests need `shared/fixtures` checked out \
             beside the clone; they fail rather than skip without it",
            dir.display()
        )
    });
    assert!(
        dir.join("models").is_dir(),
        "{} has no `models/` dir: incomplete shared fixtures",
        dir.display()
    );
    dir
}

/// The `appliance` binary cargo built for this test run.
pub fn appliance_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_appliance"))
}

/// `appliance-server` (package `runtime`), built beside `appliance` in the same target dir and
/// profile. Cargo only builds it for this package's tests if asked: `scripts/test` runs
/// `cargo build --workspace` first.
pub fn server_bin() -> PathBuf {
    let appliance = appliance_bin();
    let dir = appliance
        .parent()
        .unwrap_or_else(|| panic!("{} has no parent dir", appliance.display()));
    let server = dir.join(format!("appliance-server{}", std::env::consts::EXE_SUFFIX));
    assert!(
        server.is_file(),
        "{} not found: run `cargo build --workspace` first (scripts/test does)",
        server.display()
    );
    server
}

/// A binary of the CUDA build (`release/NAME`) where `scripts/build-cuda-server` put it
/// (`APPLIANCE_CUDA_TARGET_DIR`, default `/var/cache/appliance-ci/target-cuda`); a missing one
/// fails the test with what to run.
pub fn cuda_built(name: &str) -> PathBuf {
    let dir = std::env::var_os("APPLIANCE_CUDA_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/appliance-ci/target-cuda"));
    let path = dir.join("release").join(name);
    assert!(
        path.is_file(),
        "{} not found: run scripts/build-cuda-server (scripts/test does)",
        path.display()
    );
    path
}
