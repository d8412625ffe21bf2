//! The builder's integration tests: one binary (one link in CI) with a module per topic, as
//! ripgrep and uv lay theirs out. nextest still runs every test in its own process, so a test's
//! private dockerd, registry or temp dirs cannot leak into another's.

#[path = "../support/mod.rs"]
mod support;
#[path = "../support/tamper.rs"]
mod tamper;

mod base_image;
mod build;
mod cuda;
mod harness;
mod hub;
mod k8s;
mod oci;
mod release;
mod sign;
