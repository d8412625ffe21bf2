//! Defines the build-info marker: `\0APPLIANCE_BUILD_INFO:<compact JSON>\0` in the server's bytes.
//!
//! The server's build script writes it and the server embeds it; the builder and the launcher
//! read it from the file instead of running the server, which a CUDA build cannot do on a host
//! without a GPU driver. One definition, so the writer and the readers cannot drift apart.

use serde::{Deserialize, Serialize};

#[cfg(feature = "scan")]
pub mod scan;

/// The bytes that precede the JSON. A binary that embeds the marker may use this only in `const`
/// context: a copy of it emitted as data would be a second match for a scan.
pub const PREFIX: &[u8] = b"\0APPLIANCE_BUILD_INFO:";

/// What the server binary says about itself. Field names are a contract between binaries built
/// at different times: add fields (with a serde default), never rename them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildInfo {
    pub name: String,
    pub version: String,
    /// Enabled cargo features, sorted; `default` is omitted.
    #[serde(default)]
    pub features: Vec<String>,
    pub target: String,
    /// `"release"` or `"debug"`.
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

/// What a CUDA build was compiled for; the launcher refuses older drivers by it and the builder
/// turns it into image labels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CudaBuild {
    /// Toolkit release, `"13.0"`.
    pub version: String,
    /// `CUDA_COMPUTE_CAP` the kernels were compiled for (`"80"`), or `"unknown"`.
    pub compute_cap: String,
    /// Oldest Linux driver that runs this toolkit's PTX, `"580.65.06"`.
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
