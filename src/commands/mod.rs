//! The subcommands: each orchestrates stages and returns data; printing is the CLI's job.

pub mod build;
