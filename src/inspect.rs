//! Reads an image tarball (ours, or any `docker save` / OCI archive) and summarises it.
//!
//! The archive is read by [`scan::documents`], the lenient reading of the scan `verify` uses:
//! only small entries that parse as JSON are kept in memory and layers are skipped unread, so
//! inspecting a 100 GB tarball costs a walk over its headers, not memory. The documents are read
//! as the same types `verify` reads them as ([`crate::oci`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::digest::Sha256Digest;
use crate::image::blob_path;
use crate::oci;
use crate::summary::{EvaluationSummary, ImageSummary, LayerSummary, ModelSummary};

use crate::verify::scan;

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
    let scan::Documents {
        documents: docs,
        delta_bundle,
    } = scan::documents(path).map_err(read_err)?;
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
    let doc_err = |e: oci::DocumentError| invalid(e.to_string());

    // Prefer the OCI index; fall back to Docker's manifest.json for plain `docker save` output.
    let docker = docs
        .get("manifest.json")
        .and_then(|b| oci::docker_manifest("manifest.json", b).ok())
        .and_then(|images| images.into_iter().next());
    let docker_reference = docker.as_ref().and_then(|d| d.repo_tags.first().cloned());
    let (manifest_digest, reference, manifest) = if let Some(bytes) = docs.get("index.json") {
        let index = oci::index("index.json", bytes).map_err(doc_err)?;
        let [entry] = &index.manifests()[..] else {
            return Err(invalid(format!(
                "`index.json` lists {} manifests; expected exactly one",
                index.manifests().len()
            )));
        };
        let digest = oci::sha256(entry).map_err(invalid)?;
        let blob = blob_path(&digest);
        let manifest = oci::manifest(&blob, doc(&blob)?).map_err(doc_err)?;
        let reference = docker_reference
            .or_else(|| oci::annotation(entry, "org.opencontainers.image.ref.name").map(Into::into))
            .unwrap_or_default();
        (digest.prefixed(), reference, Some(manifest))
    } else {
        (String::new(), docker_reference.unwrap_or_default(), None)
    };

    let config_path = match &manifest {
        Some(m) => blob_path(&oci::sha256(m.config()).map_err(invalid)?),
        None => docker
            .map(|d| d.config)
            .ok_or_else(|| invalid("neither `index.json` nor `manifest.json` found".into()))?,
    };
    let config_bytes = doc(&config_path)?;
    let config_digest = Sha256Digest::of(config_bytes).prefixed();
    let config = oci::config(&config_path, config_bytes).map_err(doc_err)?;

    let history: Vec<&oci_spec::image::History> = config
        .oci
        .history()
        .iter()
        .flatten()
        .filter(|h| !h.empty_layer().unwrap_or(false))
        .collect();
    let layers = config
        .oci
        .rootfs()
        .diff_ids()
        .iter()
        .enumerate()
        .map(|(i, diff_id)| {
            let descriptor = manifest.as_ref().and_then(|m| m.layers().get(i));
            LayerSummary {
                digest: descriptor.map_or_else(|| diff_id.clone(), |d| d.digest().to_string()),
                diff_id: diff_id.clone(),
                size: descriptor.map_or(0, |d| d.size()),
                media_type: descriptor.map_or_else(String::new, |d| d.media_type().to_string()),
                created_by: history
                    .get(i)
                    .and_then(|h| h.created_by().clone())
                    .unwrap_or_default(),
            }
        })
        .collect();
    let labels = config.labels();
    let run = config.oci.config().clone().unwrap_or_default();
    Ok(ImageSummary {
        reference,
        manifest_digest,
        config_digest,
        architecture: config.oci.architecture().to_string(),
        created: config.oci.created().clone().unwrap_or_default(),
        user: run.user().clone().unwrap_or_default(),
        entrypoint: run.entrypoint().clone().unwrap_or_default(),
        cmd: run.cmd().clone().unwrap_or_default(),
        env: run.env().clone().unwrap_or_default(),
        exposed_ports: config.exposed_ports(),
        healthcheck: config.healthcheck,
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
    let blob = |desc: &oci::Descriptor| docs.get(&blob_path(&oci::sha256(desc).ok()?));
    let index = oci::index("", docs.get(cosign::SIGNATURES_INDEX)?).ok()?;
    let atts = index
        .manifests()
        .iter()
        .find(|m| oci::annotation(m, cosign::KIND_ANNOTATION) == Some(cosign::KIND_ATTS))?;
    let manifest = oci::manifest("", blob(atts)?).ok()?;
    let layer = manifest
        .layers()
        .iter()
        .find(|l| oci::annotation(l, "predicateType") == Some(crate::eval::PREDICATE_TYPE))?;
    let envelope: crate::sign::dsse::Envelope = serde_json::from_slice(blob(layer)?).ok()?;
    let statement: serde_json::Value = serde_json::from_slice(&envelope.statement()?).ok()?;
    EvaluationSummary::from_predicate(&statement["predicate"])
}
