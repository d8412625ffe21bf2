//! `appliance-server` as a library: the layers of the inference server,
//! `api → scheduler → engine → models`, plus the process plumbing around
//! them (CLI, auth, readiness, shutdown).
//!
//! The binary (`main.rs`) is a thin dispatcher over this crate. The split
//! exists so that integration tests can drive the engine directly, token
//! for token, without an HTTP round trip per assertion.

pub mod api;
pub mod auth;
pub mod build_info;
pub mod checkpoint;
pub mod cli;
pub mod engine;
pub mod errors;
pub mod healthcheck;
pub mod kernels;
pub mod kv;
pub mod metrics;
pub mod models;
pub mod readiness;
pub mod scheduler;
pub mod serve;
pub mod shutdown;
pub mod weights_digest;
