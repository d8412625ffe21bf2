//! Locates the `appliance-server` binary to package and reads what it was built with.
//!
//! The build info (version, cargo features, target) is read from a marker the server embeds in
//! its own bytes, not by running it: a CUDA build cannot even start on a build host without a
//! GPU driver, and the builder should never execute what it packages.

use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use crate::digest::{HashingReader, Sha256Digest};

/// The bytes that precede the build-info JSON inside the server binary.
pub const MARKER: &[u8] = b"\0APPLIANCE_BUILD_INFO:";
/// The crate list makes the marker a few KiB; this bounds a scan of a hostile binary.
const MAX_INFO_LEN: usize = 256 << 10;

/// What the server binary says about itself.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BuildInfo {
    pub name: String,
    pub version: String,
    #[serde(default)]
    pub features: Vec<String>,
    pub target: String,
    #[serde(default)]
    pub profile: String,
    /// `name@version` of every crate compiled into the server (from `cargo tree` at its build),
    /// for the SBOM; empty for servers built before the list was recorded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub crates: Vec<String>,
    /// The git commit the server was built from, when its build saw a git checkout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_revision: Option<String>,
    /// Only in a `cuda` build: what its kernels were compiled with (see runtime/build.rs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cuda: Option<CudaBuild>,
}

/// The CUDA toolkit, compute capability and minimum driver a `cuda` server was built for.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CudaBuild {
    pub version: String,
    pub compute_cap: String,
    pub min_driver: String,
}

impl BuildInfo {
    /// The OCI architecture name for the binary's target triple.
    pub fn oci_architecture(&self) -> &str {
        match self.target.split('-').next().unwrap_or_default() {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "riscv64" => "riscv64",
            "powerpc64le" => "ppc64le",
            "s390x" => "s390x",
            other => other,
        }
    }

    pub fn has_feature(&self, feature: &str) -> bool {
        self.features.iter().any(|f| f == feature)
    }
}

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
    let json = finder.found.ok_or_else(|| ServerBinaryError::NoMarker {
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

/// Finds `MARKER` followed by up to `MAX_INFO_LEN` bytes ending in NUL, across chunk borders.
#[derive(Default)]
struct MarkerFinder {
    /// Tail of the previous chunk, long enough to hold a marker cut at the border.
    carry: Vec<u8>,
    /// Bytes after the marker while we wait for the terminating NUL.
    pending: Option<Vec<u8>>,
    found: Option<Vec<u8>>,
}

impl MarkerFinder {
    fn feed(&mut self, chunk: &[u8]) {
        if self.found.is_some() {
            return;
        }
        let mut data = std::mem::take(&mut self.carry);
        data.extend_from_slice(chunk);
        let mut start = 0;
        if let Some(mut pending) = self.pending.take() {
            if let Some(end) = data.iter().position(|&b| b == 0) {
                pending.extend_from_slice(&data[..end]);
                self.found = Some(pending);
                return;
            }
            pending.extend_from_slice(&data);
            if pending.len() <= MAX_INFO_LEN {
                self.pending = Some(pending);
            }
            return;
        }
        while let Some(pos) = find(&data[start..], MARKER) {
            let body = start + pos + MARKER.len();
            match data[body..].iter().position(|&b| b == 0) {
                Some(end) if end <= MAX_INFO_LEN => {
                    self.found = Some(data[body..body + end].to_vec());
                    return;
                }
                Some(_) => start = body,
                None => {
                    self.pending = Some(data[body..].to_vec());
                    return;
                }
            }
        }
        let keep = MARKER.len().saturating_sub(1).min(data.len());
        self.carry = data[data.len() - keep..].to_vec();
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info_json() -> Vec<u8> {
        br#"{"name":"appliance-server","version":"1.2.3","features":["cuda"],"target":"x86_64-unknown-linux-gnu","profile":"release"}"#.to_vec()
    }

    #[test]
    fn finds_marker_split_across_chunks() {
        let mut blob = vec![7u8; 5000];
        blob.extend_from_slice(MARKER);
        blob.extend_from_slice(&info_json());
        blob.push(0);
        blob.extend_from_slice(&[9u8; 3000]);
        for chunk in [1, 7, 13, 4096, 100_000] {
            let mut finder = MarkerFinder::default();
            for part in blob.chunks(chunk) {
                finder.feed(part);
            }
            assert_eq!(
                finder.found.as_deref(),
                Some(&info_json()[..]),
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn reads_build_info_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("appliance-server");
        let mut bytes = b"\x7fELF....".to_vec();
        bytes.extend_from_slice(MARKER);
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
