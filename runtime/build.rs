//! Build script that records what this binary *is* (version, cargo features,
//! target, profile) so the appliance builder can read it from the file bytes.
//!
//! The builder cannot run the server to ask: a CUDA build links against the
//! driver and will not even start on a build host without a GPU. So the facts
//! are serialised here, at compile time, and `src/build_info.rs` embeds them
//! as a NUL-delimited marker (`\0APPLIANCE_BUILD_INFO:<json>\0`).
//!
//! Outputs: `$OUT_DIR/build_info.marker` (the exact marker bytes embedded in
//! the binary) and the `APPLIANCE_VERSION_LINE` compile-time env var that
//! `--version` prints.

use std::{env, fs, path::PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=build.rs");

    let version = required_env("CARGO_PKG_VERSION");
    let target = required_env("TARGET");
    // Cargo reports the *base* profile here ("release" or "debug"), which is
    // what the builder needs: custom profiles inherit from one of the two.
    let profile = required_env("PROFILE");
    let features = enabled_features();

    let cuda = if features.iter().any(|f| f == "cuda") {
        cuda_build_facts()
    } else {
        String::new()
    };

    // For the SBOM: every crate compiled in, and the commit the source came from.
    let crates = compiled_crates(&target, &features);
    if crates.is_empty() {
        // Not fatal (the server works), but an SBOM without the crates must not go unnoticed.
        println!(
            "cargo:warning=`cargo tree` gave no dependency list: images built with this server \
             will have an SBOM without its crates"
        );
    }
    let sbom = format!(
        ",\"crates\":[{}]{}",
        crates
            .iter()
            .map(|c| json_string(c))
            .collect::<Vec<_>>()
            .join(","),
        source_revision()
            .map(|r| format!(",\"source_revision\":{}", json_string(&r)))
            .unwrap_or_default()
    );

    let json = format!(
        "{{\"name\":{},\"version\":{},\"features\":[{}],\"target\":{},\"profile\":{}{cuda}{sbom}}}",
        json_string(&required_env("CARGO_PKG_NAME")),
        json_string(&version),
        features
            .iter()
            .map(|f| json_string(f))
            .collect::<Vec<_>>()
            .join(","),
        json_string(&target),
        json_string(&profile),
    );
    assert!(
        !json.contains('\0'),
        "build info JSON must not contain NUL: it terminates the marker"
    );

    let mut marker = Vec::with_capacity(json.len() + 24);
    marker.extend_from_slice(appliance_common::build_info::PREFIX);
    marker.extend_from_slice(json.as_bytes());
    marker.push(0);

    let out_dir = PathBuf::from(required_env("OUT_DIR"));
    fs::write(out_dir.join("build_info.marker"), &marker)
        .expect("failed to write build_info.marker into OUT_DIR");

    let shown_features = if features.is_empty() {
        "none".to_owned()
    } else {
        features.join(",")
    };
    println!(
        "cargo:rustc-env=APPLIANCE_VERSION_LINE={version} (features: {shown_features}; target: {target}; profile: {profile})"
    );
}

/// Sorted enabled features, excluding the synthetic `default` feature, which
/// says nothing about what the binary can do.
///
/// `CARGO_CFG_FEATURE` (cargo >= 1.85) carries the exact feature names;
/// the `CARGO_FEATURE_*` fallback can only recover them up to case and
/// `-`/`_`, which is exact for this crate's feature names.
fn enabled_features() -> Vec<String> {
    let mut features: Vec<String> = match env::var("CARGO_CFG_FEATURE") {
        Ok(list) => list
            .split(',')
            .filter(|f| !f.is_empty())
            .map(str::to_owned)
            .collect(),
        Err(_) => env::vars()
            .filter_map(|(key, _)| {
                key.strip_prefix("CARGO_FEATURE_")
                    .map(|f| f.to_lowercase().replace('_', "-"))
            })
            .collect(),
    };
    features.retain(|f| f != "default");
    features.sort();
    features.dedup();
    features
}

/// `,"cuda":{...}` for a CUDA build: the toolkit the kernels were compiled with, the compute
/// capability they target and the oldest driver that runs them. The launcher refuses to start on
/// an older driver and the builder turns these into image labels, so they must describe what was
/// compiled, which only the build knows.
///
/// Also makes the binary find the toolkit's user-space libraries (cuBLAS, cuRAND, cudart) through
/// an absolute `RUNPATH` to `$CUDA_HOME/lib`: the appliance builder resolves the binary's library
/// closure the way the loader does and packs those libraries at the same path, so the image needs
/// no `LD_LIBRARY_PATH` and no copy of the build host's `ld.so.conf`.
fn cuda_build_facts() -> String {
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    let cuda_home = env::var("CUDA_HOME").ok().filter(|h| !h.is_empty());
    let nvcc = match &cuda_home {
        Some(home) => PathBuf::from(home).join("bin/nvcc"),
        None => PathBuf::from("nvcc"),
    };
    // A toolkit upgraded in place keeps CUDA_HOME but replaces nvcc.
    if nvcc.is_absolute() {
        println!("cargo:rerun-if-changed={}", nvcc.display());
    }
    let out = std::process::Command::new(&nvcc)
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("--features cuda needs nvcc: running {nvcc:?} failed: {e}"));
    let text = String::from_utf8_lossy(&out.stdout);
    // "Cuda compilation tools, release 13.0, V13.0.88"
    let version = text
        .split("release ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .map(str::trim)
        .unwrap_or_else(|| panic!("cannot find the CUDA release in `{nvcc:?} --version`: {text}"))
        .to_owned();
    let min_driver = min_driver_for(&version).unwrap_or_else(|| {
        panic!("no known minimum NVIDIA driver for CUDA {version}: add it to min_driver_for")
    });
    // candle-kernels reads the same variable (else nvidia-smi, which a build host lacks).
    let compute_cap = env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "unknown".to_owned());
    if let Some(home) = &cuda_home {
        let lib = PathBuf::from(home).join("lib");
        let lib = if lib.is_dir() {
            lib
        } else {
            PathBuf::from(home).join("lib64")
        };
        println!("cargo:rustc-link-arg-bins=-Wl,-rpath,{}", lib.display());
    }
    format!(
        ",\"cuda\":{{\"version\":{},\"compute_cap\":{},\"min_driver\":{}}}",
        json_string(&version),
        json_string(&compute_cap),
        json_string(min_driver)
    )
}

/// The Linux driver each CUDA toolkit release shipped with (NVIDIA's CUDA toolkit release
/// notes, table 3): kernels compiled to PTX by that toolkit need at least this driver to JIT
/// (candle #1846), whatever the runtime's minor-version compatibility promises.
fn min_driver_for(cuda: &str) -> Option<&'static str> {
    Some(match cuda {
        "11.8" => "520.61.05",
        "12.0" => "525.60.13",
        "12.1" => "530.30.02",
        "12.2" => "535.54.03",
        "12.3" => "545.23.06",
        "12.4" => "550.54.14",
        "12.5" => "555.42.02",
        "12.6" => "560.28.03",
        "12.8" => "570.26",
        "12.9" => "575.51.03",
        "13.0" => "580.65.06",
        _ => return None,
    })
}

/// `name@version` of every crate in the server's normal dependency graph for this target and
/// feature set, from `cargo tree` over the workspace's Cargo.lock (what cargo-auditable embeds,
/// as a list the builder turns into `pkg:cargo/...` SBOM components). Empty if cargo cannot
/// answer within a minute (e.g. a locked package cache): the SBOM then lists the server alone.
fn compiled_crates(target: &str, features: &[String]) -> Vec<String> {
    let manifest_dir = PathBuf::from(required_env("CARGO_MANIFEST_DIR"));
    println!(
        "cargo:rerun-if-changed={}",
        manifest_dir.join("Cargo.toml").display()
    );
    println!(
        "cargo:rerun-if-changed={}",
        manifest_dir.join("../Cargo.lock").display()
    );
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut cmd = std::process::Command::new(cargo);
    cmd.args([
        "tree",
        "--offline",
        "-e",
        "normal,no-proc-macro",
        "--prefix",
        "none",
        "-f",
        "{p}",
    ])
    .args(["--target", target, "--manifest-path"])
    .arg(manifest_dir.join("Cargo.toml"))
    .args(["-p", &required_env("CARGO_PKG_NAME")])
    .stdin(std::process::Stdio::null())
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::null());
    if !features.is_empty() {
        cmd.args(["--features", &features.join(",")]);
    }
    let Ok(mut child) = cmd.spawn() else {
        return Vec::new();
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(50))
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Vec::new();
            }
        }
    }
    let mut text = String::new();
    if let Some(mut out) = child.stdout.take() {
        let _ = std::io::Read::read_to_string(&mut out, &mut text);
    }
    let own = required_env("CARGO_PKG_NAME");
    let mut crates: Vec<String> = text
        .lines()
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            let name = parts.next()?;
            let version = parts.next()?.strip_prefix('v')?;
            (name != own).then(|| format!("{name}@{version}"))
        })
        .collect();
    crates.sort();
    crates.dedup();
    crates
}

/// The git commit of the checkout the server is built from, if it is one.
fn source_revision() -> Option<String> {
    let root = PathBuf::from(required_env("CARGO_MANIFEST_DIR")).join("..");
    let git = root.join(".git");
    for watched in ["HEAD", "refs/heads", "packed-refs"] {
        if git.join(watched).exists() {
            println!("cargo:rerun-if-changed={}", git.join(watched).display());
        }
    }
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(&root)
        .args(["rev-parse", "HEAD"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let rev = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (out.status.success() && rev.len() == 40).then_some(rev)
}

fn required_env(name: &str) -> String {
    env::var(name).unwrap_or_else(|_| panic!("cargo did not set {name} for the build script"))
}

/// Minimal JSON string encoder: a serde_json build-dependency would be
/// compiled a second time for the host just to quote five short strings.
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
