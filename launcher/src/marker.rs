//! Reads the CUDA facts the server was built with from the build-info marker in its bytes.
//!
//! The server cannot be asked (it does not load without a driver), and an environment variable
//! set by the image could drift from the binary it describes; the marker is written by the
//! server's own build script (runtime/build.rs), so it is true of exactly this binary.

use std::path::Path;

use appliance_common::build_info::{BuildInfo, scan};

/// Streams the file (tens of MB for a CUDA build) looking for the marker.
pub fn read(path: &Path) -> Result<BuildInfo, String> {
    let file =
        std::fs::File::open(path).map_err(|e| format!("cannot open `{}`: {e}", path.display()))?;
    let json = scan::read_json(file)
        .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?
        .ok_or_else(|| {
            format!(
                "`{}` is not an appliance-server binary (no build-info marker)",
                path.display()
            )
        })?;
    serde_json::from_slice(&json).map_err(|e| {
        format!(
            "`{}` has a malformed build-info marker: {e}",
            path.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use appliance_common::build_info::PREFIX;

    #[test]
    fn finds_a_marker_cut_across_chunks() {
        let dir = std::env::temp_dir().join(format!("launcher-marker-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bin");
        let mut bytes = vec![7u8; (1 << 20) - 5];
        bytes.extend_from_slice(PREFIX);
        bytes.extend_from_slice(
            br#"{"name":"appliance-server","version":"0.1.0","target":"x86_64-unknown-linux-gnu","cuda":{"version":"13.0","compute_cap":"80","min_driver":"580.65.06"}}"#,
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
