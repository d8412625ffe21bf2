//! The `appliance` binary: parses the command line, runs a command, maps errors to exit codes
//! (2 for manifest and usage errors, 1 for everything else).

mod cli;
mod reporter;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;

use appliance::commands::build::{self, BuildSettings, human_bytes};
use appliance::commands::{fetch, lock};
use appliance::delta;
use appliance::fetch::hub::{HubFetcher, HubSettings};
use appliance::inspect;
use appliance::k8s;
use appliance::manifest::ManifestError;
use appliance::push;
use appliance::summary::ImageSummary;
use cli::{Cli, Command};
use reporter::Reporter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  Caused by: {cause}");
            }
            let usage = err.downcast_ref::<ManifestError>().is_some()
                || matches!(
                    err.downcast_ref::<k8s::K8sError>(),
                    Some(k8s::K8sError::Flag { .. })
                );
            if usage {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// `verify`'s exit status for an intact tarball whose signer was not checked.
const UNVERIFIED: u8 = 3;

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Build {
            manifest,
            output,
            quiet,
            json,
            verify_cache,
            locked,
            skip_eval,
            delta_from,
            delta_output,
            hub,
        } => {
            // A base that cannot be read fails now, not after the build.
            if let Some(old) = &delta_from {
                delta::check_base(old)?;
            }
            let settings = BuildSettings {
                manifest,
                output: output.map(std::path::absolute).transpose()?,
                cache_dir: cache_dir(),
                exe_dir: exe_dir()?,
                source_date_epoch: std::env::var("SOURCE_DATE_EPOCH").ok(),
                key_password: appliance::commands::build::sign::KeyPassword {
                    value: password_from_env(),
                    can_prompt: std::io::stdin().is_terminal(),
                },
                verify_cache,
                hub: hub_settings(&hub, verify_cache),
                locked,
                skip_eval,
            };
            let reporter = Reporter {
                bars: std::io::stderr().is_terminal(),
                quiet: quiet || json,
            };
            let mut outcome = build::build(&settings, &reporter, &reporter)?;
            if let Some(old) = &delta_from {
                let path = delta_output.unwrap_or_else(|| delta::default_output(&outcome.output));
                outcome.delta = Some(delta::delta(old, &outcome.output, &path)?);
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&outcome)?);
            } else {
                if !quiet {
                    eprintln!(
                        "Built {} ({}, {} layers, {})",
                        outcome.image.reference,
                        outcome.image.manifest_digest,
                        outcome.image.layers.len(),
                        human_bytes(outcome.tarball_size)
                    );
                }
                println!("{}", outcome.output.display());
                if let Some(d) = &outcome.delta {
                    if !quiet {
                        eprintln!("{}", describe_delta(d));
                    }
                    println!("{}", d.output.display());
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Lock {
            manifest,
            quiet,
            hub,
        } => {
            let reporter = Reporter {
                bars: std::io::stderr().is_terminal(),
                quiet,
            };
            let fetcher = HubFetcher::new(hub_settings(&hub, false));
            let done = lock::lock(&manifest, &fetcher, &reporter, &reporter)?;
            println!("{}", done.lock_path.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Fetch {
            manifest,
            locked,
            quiet,
            verify_cache,
            hub,
        } => {
            let reporter = Reporter {
                bars: std::io::stderr().is_terminal(),
                quiet,
            };
            let fetcher = HubFetcher::new(hub_settings(&hub, verify_cache));
            let done = fetch::fetch(&manifest, &fetcher, locked, &reporter, &reporter)?;
            if !quiet {
                for source in &done.sources {
                    eprintln!(
                        "Fetched {} files ({}) of {} at commit {} into {}",
                        source.snapshot.files.len(),
                        human_bytes(source.snapshot.files.iter().map(|f| f.size).sum()),
                        source.repo,
                        source.snapshot.commit,
                        fetcher.settings().cache_dir.display()
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Keygen { output } => {
            let password = match password_from_env() {
                Some(p) => p,
                None if std::io::stdin().is_terminal() => {
                    let first = rpassword::prompt_password("Password for the new key: ")?;
                    let again = rpassword::prompt_password("Repeat the password: ")?;
                    if first != again {
                        anyhow::bail!("The passwords differ");
                    }
                    appliance::sign::Secret::new(first)
                }
                None => anyhow::bail!(
                    "Set `APPLIANCE_KEY_PASSWORD` (or `COSIGN_PASSWORD`), or run in a terminal to be asked"
                ),
            };
            let out = appliance::commands::keygen::keygen(&output, &password)?;
            eprintln!("Key fingerprint sha256:{}", out.fingerprint.hex());
            println!("{}", out.private_key.display());
            println!("{}", out.public_key.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify {
            tarball,
            key,
            manifest,
            lock,
            base,
            json,
        } => {
            let report = appliance::commands::verify::verify(
                &tarball,
                key.as_deref(),
                base.as_deref(),
                manifest.as_deref(),
                lock.as_deref(),
            )?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", appliance::verify::render(&report));
            }
            // Scripts must tell "intact and signed by this key" from "intact, signer unknown".
            if report.signature != appliance::verify::SignatureStatus::Verified {
                return Ok(ExitCode::from(UNVERIFIED));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Delta {
            old,
            new,
            output,
            json,
        } => {
            let summary = delta::delta(&old, &new, &output)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                eprintln!("{}", describe_delta(&summary));
                println!("{}", summary.output.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Assemble {
            old,
            delta,
            output,
            json,
        } => {
            let summary = delta::assemble(&old, &delta, &output)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                eprintln!(
                    "Assembled {} ({}, {}): image {}",
                    summary.output.display(),
                    human_bytes(summary.size),
                    summary.sha256,
                    summary.manifest
                );
                println!("{}", summary.output.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Push {
            tarball,
            target,
            creds,
            cert_dir,
            tls_verify,
            plain_http,
            mount_from,
            chunk_size,
            quiet,
            json,
        } => {
            let target = push::Target::parse(&target).map_err(anyhow::Error::msg)?;
            let credentials = match creds {
                Some(flag) => Some(
                    push::Credentials::from_flag(&flag, registry_password)
                        .map_err(anyhow::Error::msg)?,
                ),
                None => push::auth::lookup(&target.registry, &push::auth::auth_files())
                    .map_err(anyhow::Error::msg)?,
            };
            let settings = push::PushSettings {
                connection: push::registry::Connection {
                    tls_verify,
                    cert_dir,
                    plain_http,
                },
                credentials,
                mount_from,
                chunk_size,
            };
            let reporter = Reporter {
                bars: std::io::stderr().is_terminal() && !json,
                quiet: quiet || json,
            };
            let report = push::push(&tarball, &target, &settings, &reporter, &reporter)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                if !quiet {
                    eprintln!("{}", describe_push(&report));
                }
                println!("{}", report.pinned);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::K8s(args) => {
            let tarball = &args.tarball;
            let cannot = || format!("Cannot run `{}` on Kubernetes", tarball.display());
            let summary = inspect::inspect(tarball)?;
            let facts = k8s::ImageFacts::read(&summary).with_context(cannot)?;
            let objects = k8s::objects::objects(&facts, &args.settings()).with_context(cannot)?;
            let format = match args.output {
                cli::OutputFormat::Yaml => k8s::Format::Yaml,
                cli::OutputFormat::Json => k8s::Format::Json,
            };
            print!("{}", k8s::render(&objects, format));
            Ok(ExitCode::SUCCESS)
        }
        Command::Inspect { tarball, json } => {
            let summary = inspect::inspect(&tarball)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                print!("{}", render(&summary));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn describe_delta(d: &delta::DeltaSummary) -> String {
    format!(
        "Delta {}: {} ({} blobs) of a {} release; {} ({} blobs) left to the base",
        d.output.display(),
        human_bytes(d.size),
        d.blobs_carried,
        human_bytes(d.target_size),
        human_bytes(d.bytes_from_base),
        d.blobs_from_base
    )
}

/// The signing key password: `APPLIANCE_KEY_PASSWORD`, else cosign's `COSIGN_PASSWORD`.
fn password_from_env() -> Option<appliance::sign::Secret> {
    ["APPLIANCE_KEY_PASSWORD", "COSIGN_PASSWORD"]
        .iter()
        .find_map(|name| std::env::var(name).ok())
        .map(appliance::sign::Secret::new)
}

/// `APPLIANCE_CACHE`, else `$XDG_CACHE_HOME/appliance`, else `~/.cache/appliance`.
fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("APPLIANCE_CACHE").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("appliance");
    }
    let home = std::env::var_os("HOME").map_or_else(std::env::temp_dir, PathBuf::from);
    home.join(".cache").join("appliance")
}

/// The Hub settings from the standard Hugging Face variables and the command's flags.
fn hub_settings(args: &cli::HubArgs, verify_cache: bool) -> HubSettings {
    let home = std::env::var_os("HOME").map_or_else(std::env::temp_dir, PathBuf::from);
    let mut settings = HubSettings::from_env(&|k| std::env::var(k).ok(), &home, cache_dir());
    settings.offline |= args.offline;
    settings.jobs = usize::from(args.jobs);
    settings.verify_cache = verify_cache;
    settings
}

fn exe_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("Failed to locate the running `appliance`")?;
    Ok(exe.parent().map(PathBuf::from).unwrap_or_default())
}

/// The human table for `inspect`.
fn render(s: &ImageSummary) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "Image:        {}", s.reference);
    let _ = writeln!(out, "Digest:       {}", s.manifest_digest);
    let _ = writeln!(out, "Config:       {}", s.config_digest);
    let _ = writeln!(out, "Created:      {}", s.created);
    let _ = writeln!(out, "Platform:     linux/{}", s.architecture);
    let _ = writeln!(out, "User:         {}", s.user);
    let _ = writeln!(out, "Entrypoint:   {}", s.entrypoint.join(" "));
    if !s.cmd.is_empty() {
        let _ = writeln!(out, "Cmd:          {}", s.cmd.join(" "));
    }
    let _ = writeln!(out, "Ports:        {}", s.exposed_ports.join(", "));
    if let Some(hc) = &s.healthcheck {
        let _ = writeln!(
            out,
            "Healthcheck:  {} (every {}s, timeout {}s, start period {}s, {} retries)",
            hc.test
                .iter()
                .skip(1)
                .cloned()
                .collect::<Vec<_>>()
                .join(" "),
            hc.interval / 1_000_000_000,
            hc.timeout / 1_000_000_000,
            hc.start_period / 1_000_000_000,
            hc.retries
        );
    }
    if let Some(e) = &s.evaluation {
        let _ = writeln!(
            out,
            "Evaluation:   {} of {} cases passed ({}; signed, check with `appliance verify`){}",
            e.passed,
            e.cases,
            e.result,
            if e.failed.is_empty() {
                String::new()
            } else {
                format!("; failed: {}", e.failed.join(", "))
            }
        );
    }
    if let Some(m) = &s.model {
        let _ = writeln!(out, "Model:        {} at {} ({})", m.name, m.path, m.source);
        let _ = writeln!(out, "Revision:     {}", m.revision);
        if let Some(f) = &m.format {
            let _ = writeln!(
                out,
                "Weights:      {}, architecture {}, quantization {}",
                f.weights.as_str(),
                f.architecture.as_deref().unwrap_or("unknown"),
                f.quantization.as_deref().unwrap_or("unknown")
            );
        }
        let _ = writeln!(out, "\n{:<64}  {:>12}  FILE", "SHA256", "SIZE");
        for f in &m.files {
            let _ = writeln!(out, "{:<64}  {:>12}  {}", f.sha256, f.size, f.path);
        }
    }
    let _ = writeln!(
        out,
        "\n{:<3} {:<19} {:>12}  {:<6} CONTENT",
        "#", "DIGEST", "SIZE", "TYPE"
    );
    for (i, l) in s.layers.iter().enumerate() {
        let kind = match l.media_type.rsplit_once('+') {
            Some((_, c)) => c,
            None => "tar",
        };
        let short = l.digest.get(..19).unwrap_or(&l.digest);
        let _ = writeln!(
            out,
            "{:<3} {:<19} {:>12}  {:<6} {}",
            i + 1,
            short,
            human_bytes(l.size),
            kind,
            l.created_by.trim_start_matches("appliance: ")
        );
    }
    out
}

/// `--creds USER` without a password: the environment, else a prompt on a terminal.
fn registry_password() -> Result<appliance_common::Secret, String> {
    if let Some(p) = std::env::var("APPLIANCE_REGISTRY_PASSWORD")
        .ok()
        .filter(|p| !p.is_empty())
    {
        return Ok(appliance_common::Secret::new(p));
    }
    if !std::io::stdin().is_terminal() {
        return Err(
            "`--creds USER` has no password: give `USER:PASS`, set `APPLIANCE_REGISTRY_PASSWORD`, or run in a terminal to be asked"
                .to_string(),
        );
    }
    rpassword::prompt_password("Registry password: ")
        .map(appliance_common::Secret::new)
        .map_err(|e| format!("Failed to read the password: {e}"))
}

fn describe_push(report: &push::PushReport) -> String {
    let count = |what: &str| report.blobs.iter().filter(|b| b.outcome == what).count();
    let mut text = format!(
        "Pushed {} ({}): {} blobs uploaded ({}), {} already there, {} mounted",
        report.reference,
        report.digest,
        count("uploaded"),
        human_bytes(report.uploaded_bytes),
        count("present"),
        count("mounted"),
    );
    for tag in [&report.signature_tag, &report.attestation_tag]
        .into_iter()
        .flatten()
    {
        text.push_str(&format!("\n  cosign: {tag}"));
    }
    text
}
