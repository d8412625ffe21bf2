//! Reads the CUDA facts the server was built with from the build-info marker in its bytes.
//!
//! The server cannot be asked (it does not load without a driver), and an environment variable
//! set by the image could drift from the binary it describes; the marker is written by the
//! server's own build script (runtime/build.rs), so it is true of exactly this binary.

use std::io::Read;
use std::path::Path;

use serde::Deserialize;

const MARKER: &[u8] = b"\0APPLIANCE_BUILD_INFO:";
const MAX_JSON: usize = 1 << 20;

#[derive(Debug, Deserialize)]
pub struct BuildInfo {
    pub version: String,
    #[serde(default)]
    pub cuda: Option<CudaBuild>,
}

#[derive(Debug, Deserialize)]
pub struct CudaBuild {
    pub version: String,
    pub compute_cap: String,
    pub min_driver: String,
}

/// Streams the file (tens of MB for a CUDA build) looking for the marker.
pub fn read(path: &Path) -> Result<BuildInfo, String> {
    let mut file =
        std::fs::File::open(path).map_err(|e| format!("cannot open `{}`: {e}", path.display()))?;
    let finder = memchr::memmem::Finder::new(MARKER);
    let mut window: Vec<u8> = Vec::with_capacity(2 << 20);
    let mut chunk = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut chunk)
            .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
        window.extend_from_slice(&chunk[..n]);
        if let Some(at) = finder.find(&window) {
            let rest = &window[at + MARKER.len()..];
            if let Some(end) = memchr::memchr(0, rest) {
                return serde_json::from_slice(&rest[..end]).map_err(|e| {
                    format!(
                        "`{}` has a malformed build-info marker: {e}",
                        path.display()
                    )
                });
            }
            if n == 0 || rest.len() > MAX_JSON {
                break;
            }
            continue;
        }
        if n == 0 {
            break;
        }
        // Keep a tail long enough to hold a marker cut at the chunk border.
        let keep = window.len().min(MARKER.len() - 1);
        window.drain(..window.len() - keep);
    }
    Err(format!(
        "`{}` is not an appliance-server binary (no build-info marker)",
        path.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_marker_cut_across_chunks() {
        let dir = std::env::temp_dir().join(format!("launcher-marker-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bin");
        let mut bytes = vec![7u8; (1 << 20) - 5];
        bytes.extend_from_slice(MARKER);
        bytes.extend_from_slice(
            br#"{"version":"0.1.0","cuda":{"version":"13.0","compute_cap":"80","min_driver":"580.65.06"}}"#,
        );
        bytes.push(0);
        bytes.extend_from_slice(&[1u8; 100]);
        std::fs::write(&path, &bytes).unwrap();
        let info = read(&path).unwrap();
        let cuda = info.cuda.unwrap();
        assert_eq!(
            (cuda.version.as_str(), cuda.min_driver.as_str()),
            ("13.0", "580.65.06")
        );

        std::fs::write(&path, b"no marker here").unwrap();
        assert!(read(&path).unwrap_err().contains("no build-info marker"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
