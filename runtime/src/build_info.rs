//! The build-info marker embedded in the binary, and its parsed form.
//!
//! The appliance builder learns this server's version and cargo features by
//! scanning the binary for `\0APPLIANCE_BUILD_INFO:<compact JSON>\0` instead
//! of executing it: a CUDA build cannot start on a build host without a GPU
//! driver, and executing untrusted-by-default artefacts at build time is a
//! poor habit anyway. `build.rs` produces the bytes; this module pins them
//! into the binary and reads them back for `/version` and the startup log.

use serde::{Deserialize, Serialize};

/// Marker bytes exactly as `build.rs` wrote them.
const MARKER_BYTES: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/build_info.marker"));
const MARKER_LEN: usize = MARKER_BYTES.len();

/// Marker prefix. Only ever used in `const` context, so the literal itself is
/// not emitted into the binary: the embedded marker must be the *only*
/// occurrence of the prefix, or the builder's scan would be ambiguous.
const PREFIX: &[u8] = b"\0APPLIANCE_BUILD_INFO:";
const PREFIX_LEN: usize = PREFIX.len();

const _: () = assert!(
    starts_with(MARKER_BYTES, PREFIX),
    "build.rs wrote a marker without the expected prefix"
);
const _: () = assert!(
    MARKER_LEN > PREFIX_LEN && MARKER_BYTES[MARKER_LEN - 1] == 0,
    "build.rs wrote a marker without its NUL terminator"
);

/// The marker as a static array, so it lands in the binary's read-only data.
///
/// `#[used]` stops the compiler from discarding it, `no_mangle` gives it a
/// stable symbol for debugging (`nm | grep APPLIANCE_SERVER_BUILD_MARKER`), and
/// [`json`] reads through it at run time, so linker garbage collection cannot
/// drop it in release builds either. The symbol name deliberately does not
/// contain `APPLIANCE_BUILD_INFO`, so `grep -c APPLIANCE_BUILD_INFO` on an
/// unstripped binary counts the marker alone.
#[used]
#[unsafe(no_mangle)]
pub static APPLIANCE_SERVER_BUILD_MARKER: [u8; MARKER_LEN] =
    *include_bytes!(concat!(env!("OUT_DIR"), "/build_info.marker"));

/// What the marker describes. Field order and names are a contract with the
/// builder; add fields, never rename them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildInfo {
    pub name: String,
    pub version: String,
    /// Enabled cargo features, sorted; `default` is omitted.
    pub features: Vec<String>,
    pub target: String,
    /// `"release"` or `"debug"`.
    pub profile: String,
    /// The git commit the server was built from, when built from a git checkout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_revision: Option<String>,
    /// Present in a `cuda` build only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cuda: Option<CudaBuild>,
}

/// What a CUDA build was compiled for; the launcher and the image labels rely on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CudaBuild {
    /// Toolkit release, `"13.0"`.
    pub version: String,
    /// `CUDA_COMPUTE_CAP` the kernels were compiled for (`"80"`), or `"unknown"`.
    pub compute_cap: String,
    /// Oldest Linux driver that runs this toolkit's PTX, `"580.65.06"`.
    pub min_driver: String,
}

/// The marker's JSON payload, read from the embedded static itself.
pub fn json() -> &'static [u8] {
    &APPLIANCE_SERVER_BUILD_MARKER[PREFIX_LEN..MARKER_LEN - 1]
}

/// Parses the embedded marker. Only fails if `build.rs` and this module
/// disagree about the format, which the unit tests below catch.
pub fn current() -> Result<BuildInfo, serde_json::Error> {
    serde_json::from_slice(json())
}

const fn starts_with(haystack: &[u8], prefix: &[u8]) -> bool {
    if haystack.len() < prefix.len() {
        return false;
    }
    let mut i = 0;
    while i < prefix.len() {
        if haystack[i] != prefix[i] {
            return false;
        }
        i += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_parses_and_matches_the_package() {
        let info = current().expect("embedded build info must parse");
        assert_eq!(info.name, env!("CARGO_PKG_NAME"));
        assert_eq!(info.version, env!("CARGO_PKG_VERSION"));
        assert!(info.profile == "debug" || info.profile == "release");
        assert!(!info.target.is_empty());
        let mut sorted = info.features.clone();
        sorted.sort();
        assert_eq!(sorted, info.features);
        assert_eq!(
            info.features.contains(&"cuda".to_owned()),
            cfg!(feature = "cuda")
        );
        assert_eq!(info.cuda.is_some(), cfg!(feature = "cuda"));
    }

    #[test]
    fn marker_is_compact_json_without_nul() {
        let payload = json();
        assert!(!payload.contains(&0));
        assert!(!payload.contains(&b'\n') && !payload.contains(&b' '));
    }
}
