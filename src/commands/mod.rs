//! The subcommands: each orchestrates stages and returns data; printing is the CLI's job.

pub mod build;
pub mod fetch;
pub mod keygen;
pub mod lock;
pub mod verify;
