//! Reads an image tarball (ours, or any `docker save` / OCI archive) and summarises it.
//!
//! The archive is streamed once; only small entries (JSON documents) are kept in memory, and
//! layer blobs are skipped, so inspecting a 100 GB tarball costs a read, not memory.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::digest::Sha256Digest;
use crate::image::Healthcheck;
use crate::summary::{EvaluationSummary, ImageSummary, LayerSummary, ModelSummary};

/// Entries larger than this are never buffered (JSON documents are far smaller).
use crate::verify::scan::MAX_DOCUMENT;

#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("Failed to read image tarball `{path}`")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{path}` is not an image tarball: {message}")]
    Invalid { path: PathBuf, message: String },
}

#[derive(Deserialize)]
struct Index {
    manifests: Vec<IndexEntry>,
}

#[derive(Deserialize)]
struct IndexEntry {
    digest: String,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifestEntry {
    config: String,
    #[serde(default)]
    repo_tags: Vec<String>,
}

#[derive(Deserialize)]
struct Manifest {
    config: Descriptor,
    layers: Vec<Descriptor>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    media_type: String,
    digest: String,
    size: u64,
}

#[derive(Deserialize)]
struct ConfigFile {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    created: Option<String>,
    #[serde(default)]
    config: RunConfigFile,
    rootfs: RootFs,
    #[serde(default)]
    history: Vec<History>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct RunConfigFile {
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    healthcheck: Option<Healthcheck>,
}

#[derive(Deserialize)]
struct RootFs {
    diff_ids: Vec<String>,
}

#[derive(Deserialize)]
struct History {
    #[serde(default)]
    created_by: Option<String>,
    #[serde(default)]
    empty_layer: Option<bool>,
}

/// Summarises the image in the tarball at `path`.
pub fn inspect(path: &Path) -> Result<ImageSummary, InspectError> {
    let read_err = |source| InspectError::Read {
        path: path.to_path_buf(),
        source,
    };
    let invalid = |message: String| InspectError::Invalid {
        path: path.to_path_buf(),
        message,
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let mut archive = tar::Archive::new(std::io::BufReader::with_capacity(1 << 20, file));
    let mut docs: HashMap<String, Vec<u8>> = HashMap::new();
    let mut delta_bundle = false;
    for entry in archive.entries().map_err(read_err)? {
        let mut entry = entry.map_err(read_err)?;
        let name = entry
            .path()
            .map_err(read_err)?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_string();
        delta_bundle |= name == crate::delta::PLAN_NAME;
        if entry.header().entry_type().is_file() && entry.size() <= MAX_DOCUMENT {
            let mut bytes = Vec::with_capacity(entry.size() as usize);
            entry.read_to_end(&mut bytes).map_err(read_err)?;
            // Keep only what parses as JSON: small layers are not documents.
            if serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).is_ok() {
                docs.insert(name, bytes);
            }
        }
    }
    let doc = |name: &str| {
        docs.get(name).ok_or_else(|| {
            invalid(if delta_bundle {
                format!(
                    "`{name}` is missing: this is a delta bundle and its base release holds it; \
                     `appliance assemble` the full tarball first"
                )
            } else {
                format!("`{name}` is missing")
            })
        })
    };
    let parse = |name: &str, bytes: &[u8]| -> Result<serde_json::Value, InspectError> {
        serde_json::from_slice(bytes).map_err(|e| invalid(format!("`{name}`: {e}")))
    };

    // Prefer the OCI index; fall back to Docker's manifest.json for plain `docker save` output.
    let (manifest_digest, reference, manifest) = if let Some(bytes) = docs.get("index.json") {
        let index: Index = serde_json::from_value(parse("index.json", bytes)?)
            .map_err(|e| invalid(format!("`index.json`: {e}")))?;
        let [entry] = &index.manifests[..] else {
            return Err(invalid(format!(
                "`index.json` lists {} manifests; expected exactly one",
                index.manifests.len()
            )));
        };
        let digest = Sha256Digest::parse_prefixed(&entry.digest).map_err(invalid)?;
        let blob = format!("blobs/sha256/{}", digest.hex());
        let bytes = doc(&blob)?;
        let manifest: Manifest = serde_json::from_value(parse(&blob, bytes)?)
            .map_err(|e| invalid(format!("`{blob}`: {e}")))?;
        let reference = docker_reference(&docs)
            .or_else(|| {
                entry
                    .annotations
                    .get("org.opencontainers.image.ref.name")
                    .cloned()
            })
            .unwrap_or_default();
        (entry.digest.clone(), reference, Some(manifest))
    } else {
        (
            String::new(),
            docker_reference(&docs).unwrap_or_default(),
            None,
        )
    };

    let config_path = match &manifest {
        Some(m) => {
            let digest = Sha256Digest::parse_prefixed(&m.config.digest).map_err(invalid)?;
            format!("blobs/sha256/{}", digest.hex())
        }
        None => docker_manifest(&docs)
            .map(|m| m.config)
            .ok_or_else(|| invalid("neither `index.json` nor `manifest.json` found".into()))?,
    };
    let config_bytes = doc(&config_path)?;
    let config_digest = Sha256Digest::of(config_bytes).prefixed();
    let config: ConfigFile = serde_json::from_value(parse(&config_path, config_bytes)?)
        .map_err(|e| invalid(format!("`{config_path}`: {e}")))?;

    let history: Vec<&History> = config
        .history
        .iter()
        .filter(|h| !h.empty_layer.unwrap_or(false))
        .collect();
    let layers = config
        .rootfs
        .diff_ids
        .iter()
        .enumerate()
        .map(|(i, diff_id)| {
            let descriptor = manifest.as_ref().and_then(|m| m.layers.get(i));
            LayerSummary {
                digest: descriptor.map_or_else(|| diff_id.clone(), |d| d.digest.clone()),
                diff_id: diff_id.clone(),
                size: descriptor.map_or(0, |d| d.size),
                media_type: descriptor.map_or_else(String::new, |d| d.media_type.clone()),
                created_by: history
                    .get(i)
                    .and_then(|h| h.created_by.clone())
                    .unwrap_or_default(),
            }
        })
        .collect();
    let run = config.config;
    let labels = run.labels.unwrap_or_default();
    Ok(ImageSummary {
        reference,
        manifest_digest,
        config_digest,
        architecture: config.architecture,
        created: config.created.unwrap_or_default(),
        user: run.user.unwrap_or_default(),
        entrypoint: run.entrypoint.unwrap_or_default(),
        cmd: run.cmd.unwrap_or_default(),
        env: run.env.unwrap_or_default(),
        exposed_ports: run.exposed_ports.unwrap_or_default().into_keys().collect(),
        healthcheck: run.healthcheck,
        model: ModelSummary::from_labels(&labels),
        labels,
        layers,
        evaluation: evaluation(&docs),
        delta_bundle,
    })
}

/// The test-result statement in the cosign attestation manifest, read as it is (unverified).
fn evaluation(docs: &HashMap<String, Vec<u8>>) -> Option<EvaluationSummary> {
    use crate::sign::cosign;
    use base64::Engine as _;
    let json = |name: &str| serde_json::from_slice::<serde_json::Value>(docs.get(name)?).ok();
    let blob = |desc: &serde_json::Value| {
        let digest = Sha256Digest::parse_prefixed(desc["digest"].as_str()?).ok()?;
        json(&format!("blobs/sha256/{}", digest.hex()))
    };
    let index = json(cosign::SIGNATURES_INDEX)?;
    let atts = index["manifests"]
        .as_array()?
        .iter()
        .find(|m| m["annotations"][cosign::KIND_ANNOTATION] == cosign::KIND_ATTS)?;
    let manifest = blob(atts)?;
    let layer = manifest["layers"]
        .as_array()?
        .iter()
        .find(|l| l["annotations"]["predicateType"] == crate::eval::PREDICATE_TYPE)?;
    let envelope = blob(layer)?;
    let payload = base64::engine::general_purpose::STANDARD
        .decode(envelope["payload"].as_str()?)
        .ok()?;
    let statement: serde_json::Value = serde_json::from_slice(&payload).ok()?;
    EvaluationSummary::from_predicate(&statement["predicate"])
}

fn docker_manifest(docs: &HashMap<String, Vec<u8>>) -> Option<DockerManifestEntry> {
    let entries: Vec<DockerManifestEntry> =
        serde_json::from_slice(docs.get("manifest.json")?).ok()?;
    entries.into_iter().next()
}

fn docker_reference(docs: &HashMap<String, Vec<u8>>) -> Option<String> {
    docker_manifest(docs)?.repo_tags.into_iter().next()
}
