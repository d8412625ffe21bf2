//! What more than one appliance binary must agree on, defined once.
//!
//! The builder reads what the server and the launcher write or expect (the build-info marker,
//! which files are the weights); a second definition in each binary would drift unnoticed until
//! an image failed at a site. Kept small and dependency-light: the server and the launcher link it.

pub mod build_info;
mod human_bytes;
mod secret;
pub mod weights;

pub use human_bytes::{HumanBytes, human_bytes};
pub use secret::Secret;
