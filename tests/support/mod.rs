//! Shared harness for the integration tests: real tools, real daemons, no mocks.
//!
//! `tests/integration/main.rs` includes it as `mod support;`; each topic uses the part it needs:
//!
//! - [`builder`]: the `llama-gqa` fixture built by the `appliance` binary under test (`--json`).
//! - [`dockerd`]: a private Docker Engine per test (`Dockerd::start()`), torn down on drop and, if the
//!   test process dies first, by a supervisor process that outlives it.
//! - [`tools`]: skopeo, umoci and podman wrappers that panic with an install hint when a tool is
//!   missing, and isolate every piece of state they write in temp dirs.
//! - [`http`]: a tiny std-only HTTP/1.1 client for driving `appliance-server` (no client crate).
//! - [`paths`]: the binaries under test and the shared fixtures (`../shared/fixtures`).
//! - [`process`]: running a command with a timeout and a panic that shows its output.
//! - [`layers`]: the files of a built image's layers, read straight from the tarball.
//! - [`registry`]: a distribution registry on 127.0.0.1 with TLS and htpasswd or token auth.
//! - [`elf`]: proves an unpacked rootfs loads its own ELFs (every NEEDED resolves inside it),
//!   independently of the builder's resolver.
//!
//! Nothing here skips: a missing tool, fixture or binary is a test failure with a message that says
//! what to run (`scripts/install-test-deps`, `cargo build --workspace`).
#![allow(dead_code)]

pub mod builder;
pub mod cleanup;
pub mod dockerd;
pub mod elf;
pub mod fake_hub;
pub mod http;
pub mod layers;
pub mod paths;
pub mod process;
pub mod registry;
pub mod tools;

#[allow(unused_imports)]
pub use dockerd::{Dockerd, hardened_run};
#[allow(unused_imports)]
pub use http::{
    HttpResponse, free_port, http_get, http_post_json, http_request, try_http_request,
    wait_for_http,
};
#[allow(unused_imports)]
pub use paths::{
    appliance_bin, cuda_built, server_bin, shared_dir, shared_fixtures, workspace_root,
};
#[allow(unused_imports)]
pub use process::{run_ok, run_with_timeout};
#[allow(unused_imports)]
pub use tools::{
    Podman, Unpacked, podman_load, require_tool, skopeo_inspect, skopeo_inspect_config,
    skopeo_inspect_raw, umoci_unpack,
};
