//! Locates the `appliance-server` binary to package and reads what it was built with.
//!
//! The build info (version, cargo features, target) is read from a marker the server embeds in
//! its own bytes, not by running it: a CUDA build cannot even start on a build host without a
//! GPU driver, and the builder should never execute what it packages.

use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use appliance_common::build_info::scan::MarkerFinder;

use crate::digest::{HashingReader, Sha256Digest};

pub use appliance_common::build_info::{BuildInfo, CudaBuild};

/// The server binary as packaged.
#[derive(Debug, Clone)]
pub struct ServerBinary {
    pub path: PathBuf,
    pub size: u64,
    pub sha256: Sha256Digest,
    pub info: BuildInfo,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerBinaryError {
    #[error(
        "No `appliance-server` beside `{dir}`; build it with `cargo build --release --workspace` \
         or set `server.binary` in the manifest"
    )]
    NotFound { dir: PathBuf },
    #[error("Server binary `{path}` does not exist or is not a file")]
    Missing { path: PathBuf },
    #[error("Failed to read server binary `{path}`")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{path}` is not an appliance-server binary (it has no build-info marker)")]
    NoMarker { path: PathBuf },
    #[error("`{path}` has an unreadable build-info marker: {message}")]
    BadMarker { path: PathBuf, message: String },
}

/// The explicit path if given, else `appliance-server` in `beside` (the running builder's dir).
pub fn locate(explicit: Option<&Path>, beside: &Path) -> Result<PathBuf, ServerBinaryError> {
    match explicit {
        Some(path) if path.is_file() => Ok(path.to_path_buf()),
        Some(path) => Err(ServerBinaryError::Missing {
            path: path.to_path_buf(),
        }),
        None => {
            let path = beside.join("appliance-server");
            if path.is_file() {
                Ok(path)
            } else {
                Err(ServerBinaryError::NotFound {
                    dir: beside.to_path_buf(),
                })
            }
        }
    }
}

/// Hashes the binary and extracts its build info in one streaming pass.
pub fn inspect(path: &Path) -> Result<ServerBinary, ServerBinaryError> {
    let read_err = |source| ServerBinaryError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let mut reader = HashingReader::new(BufReader::with_capacity(1 << 20, file));
    let mut finder = MarkerFinder::default();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader.read(&mut buf).map_err(read_err)?;
        if n == 0 {
            break;
        }
        finder.feed(&buf[..n]);
    }
    let (_, sha256, size) = reader.finish();
    let json = finder.finish().ok_or_else(|| ServerBinaryError::NoMarker {
        path: path.to_path_buf(),
    })?;
    let info: BuildInfo =
        serde_json::from_slice(&json).map_err(|e| ServerBinaryError::BadMarker {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    Ok(ServerBinary {
        path: path.to_path_buf(),
        size,
        sha256,
        info,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info_json() -> Vec<u8> {
        br#"{"name":"appliance-server","version":"1.2.3","features":["cuda"],"target":"x86_64-unknown-linux-gnu","profile":"release"}"#.to_vec()
    }

    #[test]
    fn reads_build_info_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("appliance-server");
        let mut bytes = b"\x7fELF....".to_vec();
        bytes.extend_from_slice(appliance_common::build_info::PREFIX);
        bytes.extend_from_slice(&info_json());
        bytes.push(0);
        std::fs::write(&path, &bytes).unwrap();
        let bin = inspect(&path).unwrap();
        assert_eq!(bin.info.version, "1.2.3");
        assert!(bin.info.has_feature("cuda"));
        assert_eq!(bin.info.oci_architecture(), "amd64");
        assert_eq!(bin.sha256, Sha256Digest::of(&bytes));
        assert_eq!(bin.size, bytes.len() as u64);
    }

    #[test]
    fn rejects_binary_without_marker() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("other");
        std::fs::write(&path, b"\x7fELF not ours").unwrap();
        assert!(matches!(
            inspect(&path),
            Err(ServerBinaryError::NoMarker { .. })
        ));
    }
}
