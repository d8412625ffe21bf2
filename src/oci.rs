//! The documents an image tarball holds, read as types: oci-spec's index, manifest and config
//! (the same types [`crate::image`] builds them with), plus the two small things oci-spec lacks —
//! Docker's `Healthcheck` in the config and docker-archive's `manifest.json`.
//!
//! `inspect` and `verify` both read through here, so a document means the same to both; they
//! differ only in what they then require of it (verify: exactly what appliance wrote; inspect:
//! any `docker save` or OCI archive).

use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::digest::Sha256Digest;
use crate::image::Healthcheck;

pub use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest};

/// Why a document could not be read; `name` is its path in the tarball.
#[derive(Debug, thiserror::Error)]
#[error("`{name}` is not {what}: {message}")]
pub struct DocumentError {
    pub name: String,
    pub what: &'static str,
    pub message: String,
}

fn parse<T: DeserializeOwned>(
    name: &str,
    bytes: &[u8],
    what: &'static str,
) -> Result<T, DocumentError> {
    serde_json::from_slice(bytes).map_err(|e| DocumentError {
        name: name.to_string(),
        what,
        message: e.to_string(),
    })
}

/// An OCI image index (`index.json`, or cosign's `signatures/index.json`).
pub fn index(name: &str, bytes: &[u8]) -> Result<ImageIndex, DocumentError> {
    parse(name, bytes, "an OCI image index")
}

/// An OCI image manifest (the image's, or a cosign signature or attestation manifest).
pub fn manifest(name: &str, bytes: &[u8]) -> Result<ImageManifest, DocumentError> {
    parse(name, bytes, "an OCI image manifest")
}

/// An image config: oci-spec's fields, and Docker's healthcheck, which oci-spec leaves out.
#[derive(Debug, Clone)]
pub struct Config {
    pub oci: ImageConfiguration,
    pub healthcheck: Option<Healthcheck>,
}

impl Config {
    /// `config.Labels`, empty when absent.
    pub fn labels(&self) -> std::collections::BTreeMap<String, String> {
        self.oci
            .config()
            .as_ref()
            .and_then(|c| c.labels().clone())
            .unwrap_or_default()
            .into_iter()
            .collect()
    }

    /// `config.ExposedPorts`, sorted (oci-spec keeps the JSON object's order).
    pub fn exposed_ports(&self) -> Vec<String> {
        let mut ports = (self.oci.config().as_ref())
            .and_then(|c| c.exposed_ports().clone())
            .unwrap_or_default();
        ports.sort();
        ports
    }
}

pub fn config(name: &str, bytes: &[u8]) -> Result<Config, DocumentError> {
    #[derive(Deserialize)]
    struct Extension {
        #[serde(default)]
        config: Option<RunExtension>,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct RunExtension {
        #[serde(default)]
        healthcheck: Option<Healthcheck>,
    }
    const WHAT: &str = "an OCI image config";
    let oci = parse(name, bytes, WHAT)?;
    let extension: Extension = parse(name, bytes, WHAT)?;
    Ok(Config {
        oci,
        healthcheck: extension.config.and_then(|c| c.healthcheck),
    })
}

/// One image of docker-archive's `manifest.json` (what `docker load` reads).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DockerImage {
    pub config: String,
    #[serde(default)]
    pub repo_tags: Vec<String>,
    #[serde(default)]
    pub layers: Vec<String>,
}

pub fn docker_manifest(name: &str, bytes: &[u8]) -> Result<Vec<DockerImage>, DocumentError> {
    parse(name, bytes, "a docker-archive manifest")
}

/// The descriptor's digest, for the one algorithm images here use.
pub fn sha256(descriptor: &Descriptor) -> Result<Sha256Digest, String> {
    Sha256Digest::parse_prefixed(descriptor.digest().as_ref())
}

/// One annotation of a descriptor, if present.
pub fn annotation<'a>(descriptor: &'a Descriptor, key: &str) -> Option<&'a str> {
    descriptor
        .annotations()
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_reads_with_its_healthcheck_and_labels() {
        let bytes = br#"{"architecture":"amd64","os":"linux","created":"2026-01-01T00:00:00Z",
            "config":{"User":"65532","Labels":{"a":"1"},"ExposedPorts":{"8000/tcp":{}},
            "Healthcheck":{"Test":["CMD","x"],"Interval":1,"Timeout":2,"StartPeriod":3,"Retries":4}},
            "rootfs":{"type":"layers","diff_ids":["sha256:00"]}}"#;
        let c = config("blobs/sha256/c", bytes).unwrap();
        assert_eq!(c.labels()["a"], "1");
        assert_eq!(c.healthcheck.unwrap().retries, 4);
        assert_eq!(c.oci.rootfs().diff_ids().len(), 1);
        let ports = c.oci.config().as_ref().unwrap().exposed_ports().clone();
        assert_eq!(ports.unwrap(), vec!["8000/tcp".to_string()]);
    }

    #[test]
    fn errors_name_the_document_and_what_it_should_be() {
        let e = manifest("blobs/sha256/m", br#"{"schemaVersion":2}"#).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("`blobs/sha256/m` is not an OCI image manifest"),
            "{text}"
        );
        assert!(text.contains("config"), "{text}");
    }
}
