//! Defines the command line. clap lives here and nowhere else.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Package a language model and its inference server into one signed, self-contained OCI image
/// tarball that `docker load` accepts at a site with no network.
#[derive(Debug, Parser)]
#[command(name = "appliance", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build the image tarball described by a manifest.
    ///
    /// Writes `dist/<name>-<tag>.tar` (or `--output`, or `image.output` in the manifest) and
    /// prints its path. The same inputs always give the same bytes.
    Build {
        /// The manifest (`manifest.toml`); relative paths inside it resolve against its directory.
        manifest: PathBuf,
        /// Where to write the tarball (relative to the working directory).
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// Print nothing but errors (and the summary with `--json`).
        #[arg(short, long)]
        quiet: bool,
        /// Print a JSON summary of the image on stdout instead of the path.
        #[arg(long)]
        json: bool,
    },
    /// Show what is inside an image tarball: reference, digests, user, ports, model, layers.
    Inspect {
        /// The image tarball (from `appliance build`, `docker save` or an OCI archive).
        tarball: PathBuf,
        /// Print JSON (the same shape as `build --json`'s `image`).
        #[arg(long)]
        json: bool,
    },
}
