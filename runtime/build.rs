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

    let json = format!(
        "{{\"name\":{},\"version\":{},\"features\":[{}],\"target\":{},\"profile\":{}}}",
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
    marker.extend_from_slice(b"\0APPLIANCE_BUILD_INFO:");
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
