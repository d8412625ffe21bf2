//! appliance: turns a language model into a self-contained OCI image tarball for sites with no
//! network.
//!
//! The build pipeline, one module per stage:
//! [`manifest`] (what the user asks for) → [`fetch`] (model files on local disk) →
//! [`layers`] (tar layers, measured then streamed) → [`image`] (config, manifest, indexes) →
//! [`export`] (one tarball, written atomically). [`commands::build`] runs them in order;
//! [`inspect`] reads a finished tarball back; [`k8s`] derives Kubernetes objects from it.

pub mod archive;
pub mod atomic_file;
pub mod attest;
pub mod commands;
pub mod delta;
pub mod digest;
pub mod eval;
pub mod export;
pub mod fetch;
pub mod image;
pub mod inspect;
pub mod json;
pub mod k8s;
pub mod labels;
pub mod layers;
pub mod lock;
pub mod manifest;
pub mod oci;
pub mod progress;
pub mod push;
pub mod quantize;
pub mod server_binary;
pub mod sign;
pub mod summary;
pub mod synthetic;
pub mod userland;
pub mod verify;
