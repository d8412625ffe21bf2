//! Builds the image's JSON documents: config, OCI manifest, `index.json` and Docker's
//! `manifest.json`, each as canonical bytes ready to hash and export.
//!
//! Documents are built through `oci-spec` types; Docker's `Healthcheck`, which the OCI config
//! schema lacks, is added as a typed extension ([`Healthcheck`]).

use std::collections::{BTreeMap, HashMap};

use oci_spec::image::{
    Arch, ConfigBuilder, Descriptor, DescriptorBuilder, Digest, HistoryBuilder,
    ImageConfigurationBuilder, ImageIndexBuilder, ImageManifestBuilder, MediaType, Os,
    PlatformBuilder, RootFsBuilder,
};
use serde::Serialize;

use crate::digest::Sha256Digest;
use crate::json;
use crate::layers::Layer;
use crate::manifest::ImageRef;

/// One JSON document and its digest.
#[derive(Debug, Clone)]
pub struct Blob {
    pub bytes: Vec<u8>,
    pub digest: Sha256Digest,
}

impl Blob {
    fn new(bytes: Vec<u8>) -> Self {
        let digest = Sha256Digest::of(&bytes);
        Self { bytes, digest }
    }

    pub fn size(&self) -> u64 {
        self.bytes.len() as u64
    }
}

/// Docker's `config.Healthcheck`; durations are integer nanoseconds in the JSON.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Healthcheck {
    pub test: Vec<String>,
    pub interval: u64,
    pub timeout: u64,
    pub start_period: u64,
    pub retries: u32,
}

impl Healthcheck {
    pub fn from_secs(
        test: Vec<String>,
        interval: u64,
        timeout: u64,
        start: u64,
        retries: u32,
    ) -> Self {
        const NS: u64 = 1_000_000_000;
        Self {
            test,
            interval: interval * NS,
            timeout: timeout * NS,
            start_period: start * NS,
            retries,
        }
    }
}

/// What the image runs and how; everything in the config besides the layers.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub architecture: String,
    /// RFC 3339.
    pub created: String,
    pub user: String,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub exposed_port: u16,
    pub working_dir: String,
    pub labels: BTreeMap<String, String>,
    pub healthcheck: Healthcheck,
}

/// The finished set of documents for one image.
#[derive(Debug, Clone)]
pub struct ImageDocuments {
    pub config: Blob,
    pub manifest: Blob,
    pub index_json: Vec<u8>,
    pub docker_manifest_json: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("Failed to build the image {what}")]
    Build {
        what: &'static str,
        #[source]
        source: oci_spec::OciSpecError,
    },
    #[error("Failed to serialize the image {what}")]
    Json {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

fn build_err(what: &'static str) -> impl FnOnce(oci_spec::OciSpecError) -> ImageError {
    move |source| ImageError::Build { what, source }
}

fn json_err(what: &'static str) -> impl FnOnce(serde_json::Error) -> ImageError {
    move |source| ImageError::Json { what, source }
}

fn oci_digest(d: &Sha256Digest) -> Digest {
    // A Sha256Digest always renders as valid `sha256:<64 hex>`.
    d.prefixed()
        .parse()
        .unwrap_or_else(|e| unreachable!("sha256 digest rejected by oci-spec: {e}"))
}

fn descriptor(media_type: MediaType, blob: &Blob) -> Result<Descriptor, ImageError> {
    DescriptorBuilder::default()
        .media_type(media_type)
        .digest(oci_digest(&blob.digest))
        .size(blob.size())
        .build()
        .map_err(build_err("descriptor"))
}

/// Builds config, manifest and both indexes for `layers` (bottom first).
pub fn assemble(
    reference: &ImageRef,
    run: &RunConfig,
    layers: &[Layer],
) -> Result<ImageDocuments, ImageError> {
    let config = Blob::new(config_json(run, layers)?);

    let layer_descriptors = layers
        .iter()
        .map(|layer| {
            DescriptorBuilder::default()
                .media_type(MediaType::Other(layer.spec.media_type().to_string()))
                .digest(oci_digest(&layer.sums.digest))
                .size(layer.sums.size)
                .build()
                .map_err(build_err("layer descriptor"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(descriptor(MediaType::ImageConfig, &config)?)
        .layers(layer_descriptors)
        .annotations(HashMap::from([(
            "org.opencontainers.image.created".to_string(),
            run.created.clone(),
        )]))
        .build()
        .map_err(build_err("manifest"))?;
    let manifest = Blob::new(json::canonical(&manifest).map_err(json_err("manifest"))?);

    let index_json = index_json(
        reference.full(),
        &manifest.digest,
        manifest.size(),
        &run.architecture,
    )?;
    let layer_digests: Vec<_> = layers.iter().map(|l| l.sums.digest).collect();
    let docker_manifest_json =
        docker_manifest_json(&config.digest, &reference.name_tag(), &layer_digests)?;

    Ok(ImageDocuments {
        config,
        manifest,
        index_json,
        docker_manifest_json,
    })
}

/// `oci-layout`, the same in every image.
pub const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

/// `index.json` for the one image manifest. `verify` rebuilds it from the entry it reads and
/// requires the same bytes, so no field or annotation in it can change unnoticed.
pub fn index_json(
    reference: &str,
    manifest: &Sha256Digest,
    manifest_size: u64,
    architecture: &str,
) -> Result<Vec<u8>, ImageError> {
    let mut manifest_descriptor = DescriptorBuilder::default()
        .media_type(MediaType::ImageManifest)
        .digest(oci_digest(manifest))
        .size(manifest_size)
        .build()
        .map_err(build_err("descriptor"))?;
    manifest_descriptor.set_platform(Some(
        PlatformBuilder::default()
            .architecture(Arch::from(architecture))
            .os(Os::Linux)
            .build()
            .map_err(build_err("platform"))?,
    ));
    // Both names carry the full reference: containerd reads the first, skopeo/podman the second,
    // and a short name would turn into `localhost/...` in podman.
    manifest_descriptor.set_annotations(Some(HashMap::from([
        (
            "io.containerd.image.name".to_string(),
            reference.to_string(),
        ),
        (
            "org.opencontainers.image.ref.name".to_string(),
            reference.to_string(),
        ),
    ])));
    let index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(vec![manifest_descriptor])
        .build()
        .map_err(build_err("index"))?;
    json::canonical(&index).map_err(json_err("index"))
}

/// The docker-archive view, `manifest.json`; like [`index_json`], rebuilt byte for byte by
/// `verify`.
pub fn docker_manifest_json(
    config: &Sha256Digest,
    name_tag: &str,
    layers: &[Sha256Digest],
) -> Result<Vec<u8>, ImageError> {
    json::canonical(&serde_json::json!([{
        "Config": blob_path(config),
        "RepoTags": [name_tag],
        "Layers": layers.iter().map(blob_path).collect::<Vec<_>>(),
    }]))
    .map_err(json_err("manifest.json"))
}

/// Where a blob lives inside the exported tarball.
pub fn blob_path(digest: &Sha256Digest) -> String {
    format!("blobs/sha256/{}", digest.hex())
}

fn config_json(run: &RunConfig, layers: &[Layer]) -> Result<Vec<u8>, ImageError> {
    let labels: HashMap<String, String> = run.labels.clone().into_iter().collect();
    let config = ConfigBuilder::default()
        .user(run.user.clone())
        .exposed_ports(vec![format!("{}/tcp", run.exposed_port)])
        .env(run.env.clone())
        .entrypoint(run.entrypoint.clone())
        .cmd(run.cmd.clone())
        .working_dir(run.working_dir.clone())
        .labels(labels)
        .stop_signal("SIGTERM".to_string())
        .build()
        .map_err(build_err("config"))?;
    let rootfs = RootFsBuilder::default()
        .typ("layers".to_string())
        .diff_ids(
            layers
                .iter()
                .map(|l| l.sums.diff_id.prefixed())
                .collect::<Vec<_>>(),
        )
        .build()
        .map_err(build_err("rootfs"))?;
    let history = layers
        .iter()
        .map(|l| {
            HistoryBuilder::default()
                .created(run.created.clone())
                .created_by(l.spec.description.clone())
                .comment(format!("{:?}", l.spec.role).to_lowercase())
                .build()
                .map_err(build_err("history"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let image = ImageConfigurationBuilder::default()
        .created(run.created.clone())
        .architecture(Arch::from(run.architecture.as_str()))
        .os(Os::Linux)
        .config(config)
        .rootfs(rootfs)
        .history(history)
        .build()
        .map_err(build_err("config"))?;

    let mut value = serde_json::to_value(&image).map_err(json_err("config"))?;
    let healthcheck = serde_json::to_value(&run.healthcheck).map_err(json_err("healthcheck"))?;
    if let Some(config) = value.get_mut("config").and_then(|c| c.as_object_mut()) {
        config.insert("Healthcheck".to_string(), healthcheck);
    }
    json::canonical(&value).map_err(json_err("config"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::{LayerRole, LayerSpec, LayerSums};
    use crate::manifest::Compression;

    fn layer(byte: u8, compression: Compression) -> Layer {
        let digest = Sha256Digest::of(&[byte]);
        Layer {
            spec: LayerSpec {
                role: LayerRole::Weights,
                description: format!("layer {byte}"),
                entries: vec![],
                compression,
                mtime: 0,
            },
            sums: LayerSums {
                diff_id: Sha256Digest::of(&[byte, 0]),
                digest,
                size: 1000 + byte as u64,
                files: vec![],
            },
        }
    }

    fn run() -> RunConfig {
        RunConfig {
            architecture: "amd64".into(),
            created: "2026-01-01T00:00:00Z".into(),
            user: "65532:65532".into(),
            entrypoint: vec!["/usr/local/bin/appliance-server".into()],
            cmd: vec![],
            env: vec!["A=1".into()],
            exposed_port: 8000,
            working_dir: "/home/appliance".into(),
            labels: BTreeMap::from([("z".into(), "1".into()), ("a".into(), "2".into())]),
            healthcheck: Healthcheck::from_secs(vec!["CMD".into(), "x".into()], 30, 10, 120, 3),
        }
    }

    #[test]
    fn documents_link_up_and_are_canonical() {
        let reference = ImageRef::new("registry.local/llm/demo", "1.0").unwrap();
        let layers = [layer(1, Compression::None), layer(2, Compression::Gzip)];
        let docs = assemble(&reference, &run(), &layers).unwrap();

        let config: serde_json::Value = serde_json::from_slice(&docs.config.bytes).unwrap();
        assert_eq!(
            config["config"]["Healthcheck"]["Interval"],
            30_000_000_000u64
        );
        assert_eq!(
            config["config"]["Healthcheck"]["StartPeriod"],
            120_000_000_000u64
        );
        assert_eq!(
            config["config"]["ExposedPorts"]["8000/tcp"],
            serde_json::json!({})
        );
        assert_eq!(config["config"]["StopSignal"], "SIGTERM");
        assert_eq!(
            config["rootfs"]["diff_ids"],
            serde_json::json!([
                layers[0].sums.diff_id.prefixed(),
                layers[1].sums.diff_id.prefixed()
            ])
        );
        assert_eq!(config["history"][1]["created_by"], "layer 2");
        assert_eq!(config["history"][1]["created"], "2026-01-01T00:00:00Z");
        // Canonical: re-serializing with sorted keys changes nothing.
        assert_eq!(crate::json::canonical(&config).unwrap(), docs.config.bytes);

        let manifest: serde_json::Value = serde_json::from_slice(&docs.manifest.bytes).unwrap();
        assert_eq!(manifest["config"]["digest"], docs.config.digest.prefixed());
        assert_eq!(manifest["config"]["size"], docs.config.size());
        assert_eq!(
            manifest["layers"][1]["mediaType"],
            "application/vnd.oci.image.layer.v1.tar+gzip"
        );
        assert_eq!(manifest["layers"][1]["size"], 1002);

        let index: serde_json::Value = serde_json::from_slice(&docs.index_json).unwrap();
        let entry = &index["manifests"][0];
        assert_eq!(index["manifests"].as_array().unwrap().len(), 1);
        assert_eq!(entry["digest"], docs.manifest.digest.prefixed());
        assert_eq!(entry["platform"]["architecture"], "amd64");
        assert_eq!(
            entry["annotations"]["org.opencontainers.image.ref.name"],
            "registry.local/llm/demo:1.0"
        );

        let docker: serde_json::Value = serde_json::from_slice(&docs.docker_manifest_json).unwrap();
        assert_eq!(
            docker[0]["RepoTags"],
            serde_json::json!(["registry.local/llm/demo:1.0"])
        );
        assert_eq!(docker[0]["Config"], blob_path(&docs.config.digest));
        assert_eq!(docker[0]["Layers"][0], blob_path(&layers[0].sums.digest));

        // Same input, same bytes.
        let again = assemble(&reference, &run(), &layers).unwrap();
        assert_eq!(again.manifest.digest, docs.manifest.digest);
        assert_eq!(again.index_json, docs.index_json);
    }
}
