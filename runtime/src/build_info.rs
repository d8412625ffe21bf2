//! The build-info marker embedded in the binary, and its parsed form.
//!
//! The appliance builder learns this server's version and cargo features by
//! scanning the binary for `\0APPLIANCE_BUILD_INFO:<compact JSON>\0` instead
//! of executing it: a CUDA build cannot start on a build host without a GPU
//! driver, and executing untrusted-by-default artefacts at build time is a
//! poor habit anyway. `build.rs` produces the bytes; this module pins them
//! into the binary and reads them back for `/version` and the startup log.

pub use appliance_common::build_info::{BuildInfo, CudaBuild};

/// Marker bytes exactly as `build.rs` wrote them.
const MARKER_BYTES: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/build_info.marker"));
const MARKER_LEN: usize = MARKER_BYTES.len();

/// Only ever used in `const` context, so the prefix itself is not emitted into
/// the binary: the embedded marker must be the *only* occurrence of the
/// prefix, or the builder's scan would be ambiguous.
const PREFIX: &[u8] = appliance_common::build_info::PREFIX;
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
