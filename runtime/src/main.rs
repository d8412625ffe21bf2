//! `appliance-server`: the inference server shipped inside appliance images.
//!
//! `main` only dispatches: `healthcheck` is a blocking one-shot probe that
//! must not pay for a tokio runtime or a log subscriber; serving sets up
//! logging and hands over to [`serve::run`]. Everything else lives in the
//! library crate (`lib.rs`).

use std::process::ExitCode;

use appliance_server::{
    cli::{Cli, Command},
    healthcheck, serve,
};
use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Healthcheck(args)) => match healthcheck::run(&args) {
            Ok(status_line) => {
                println!("healthy: {status_line}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("unhealthy: {:#}", anyhow::Error::from(e));
                ExitCode::FAILURE
            }
        },
        None => {
            init_logging();
            match serve::run(cli.serve) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("appliance-server: error: {:#}", anyhow::Error::from(e));
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Logs go to stderr (the container log), filtered by `RUST_LOG`, default
/// `info`. No ANSI colours: `docker logs` output is read in files and SIEMs.
fn init_logging() {
    let (filter, invalid) = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => match EnvFilter::try_new(&spec) {
            Ok(filter) => (filter, None),
            Err(e) => (EnvFilter::new("info"), Some((spec, e))),
        },
        _ => (EnvFilter::new("info"), None),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    if let Some((spec, e)) = invalid {
        tracing::warn!("ignoring invalid RUST_LOG={spec:?} ({e}); using info");
    }
}
