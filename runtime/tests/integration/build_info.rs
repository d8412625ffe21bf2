//! Tests of the build-info marker the builder reads from the binary's bytes
//! (`\0APPLIANCE_BUILD_INFO:<json>\0`) without executing it, and of
//! `--version`, which reports the same facts.

use crate::common;

use std::fs;

use common::{EXIT_TIMEOUT, command, run_with_timeout};

const PREFIX: &[u8] = b"\0APPLIANCE_BUILD_INFO:";

fn marker_json() -> serde_json::Value {
    let bytes = fs::read(common::BIN).expect("read the server binary");
    let hits: Vec<usize> = bytes
        .windows(PREFIX.len())
        .enumerate()
        .filter(|(_, w)| *w == PREFIX)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(hits.len(), 1, "exactly one marker expected, found {hits:?}");
    let start = hits[0] + PREFIX.len();
    let len = bytes[start..]
        .iter()
        .position(|&b| b == 0)
        .expect("marker is NUL-terminated");
    serde_json::from_slice(&bytes[start..start + len]).expect("marker payload is JSON")
}

#[test]
fn marker_is_embedded_and_describes_this_build() {
    let info = marker_json();
    assert_eq!(info["name"], "appliance-server");
    assert_eq!(info["version"], env!("CARGO_PKG_VERSION"));
    let features: Vec<&str> = info["features"]
        .as_array()
        .expect("features array")
        .iter()
        .map(|f| f.as_str().expect("feature name"))
        .collect();
    let mut sorted = features.clone();
    sorted.sort_unstable();
    assert_eq!(features, sorted, "features are sorted");
    assert!(!features.contains(&"default"));
    assert_eq!(features.contains(&"cuda"), cfg!(feature = "cuda"));
    assert!(info["target"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(matches!(
        info["profile"].as_str(),
        Some("debug" | "release")
    ));
}

#[test]
fn version_flag_reports_version_and_features() {
    let mut cmd = command();
    cmd.arg("--version");
    let out = run_with_timeout(cmd, EXIT_TIMEOUT);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with(&format!("appliance-server {}", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
    let expected = if cfg!(feature = "cuda") {
        "features: cuda"
    } else {
        "features: none"
    };
    assert!(text.contains(expected), "{text}");
}
