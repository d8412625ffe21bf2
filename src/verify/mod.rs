//! `appliance verify`: proves offline that a tarball is exactly what was signed, and reports
//! what is inside. One streaming pass over the archive ([`scan`]), then checks on what it
//! learned; the first failure names the blob, file or field at fault.

mod reviewed;
pub mod scan;

pub use reviewed::Reviewed;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use base64::Engine as _;
use p256::ecdsa::VerifyingKey;
use serde::Serialize;
use serde_json::Value;

use crate::attest;
use crate::delta;
use crate::digest::Sha256Digest;
use crate::image::blob_path;
use crate::oci;
use crate::sign::{self, cosign, dsse, keys};
use scan::{BlobInfo, Scan, ScanError};

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Scan(#[from] ScanError),
    #[error("`{culprit}`: {message}")]
    Check { culprit: String, message: String },
}

fn fail<T>(culprit: impl Into<String>, message: impl Into<String>) -> Result<T, VerifyError> {
    Err(VerifyError::Check {
        culprit: culprit.into(),
        message: message.into(),
    })
}

/// The audit report: what was proven and what the image contains.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub image: String,
    pub manifest_digest: String,
    pub config_digest: String,
    /// Whether the signature was checked; only `verified` proves who built the image.
    pub signature: SignatureStatus,
    /// Empty unless `signature` is `verified`.
    pub signer_fingerprint: String,
    pub signed_reference: String,
    pub model: Option<ReportModel>,
    pub server_version: Option<String>,
    pub server_sha256: Option<String>,
    pub user: String,
    pub exposed_ports: Vec<String>,
    pub layers: usize,
    pub blobs: usize,
    pub bytes_hashed: u64,
    pub sbom_components: usize,
    /// The release gate's signed results, when the image has them.
    pub evaluation: Option<ReportEvaluation>,
    pub checks: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SignatureStatus {
    /// The signature and attestations verify with the given key.
    Verified,
    /// The image is signed, but no key was given: intact, signer unknown.
    NotChecked,
    /// The image carries no signature: intact, signer unknown.
    Unsigned,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReportEvaluation {
    /// `PASSED` (every case) or `WARNED` (enough cases for `min_pass_rate`).
    pub result: String,
    pub passed: usize,
    pub cases: usize,
    pub device: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReportModel {
    pub name: String,
    pub source: String,
    pub revision: String,
    pub purl: Option<String>,
    pub files: Vec<ReportFile>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReportFile {
    pub path: String,
    pub sha256: String,
    pub size: u64,
}

/// What to verify a tarball against, besides its own contents.
#[derive(Default)]
pub struct Against<'a> {
    /// The signer's public key; without it every integrity check runs and the report says the
    /// signer is unknown.
    pub key: Option<&'a VerifyingKey>,
    /// The tarball is a delta bundle made against this one (`--base`).
    pub base: Option<&'a Path>,
    /// The reviewed manifest and lock (`--manifest`, `--lock`).
    pub reviewed: Option<&'a reviewed::Reviewed>,
}

/// Verifies `tarball`; see [`Against`] for what else it is held to.
pub fn verify(tarball: &Path, against: &Against) -> Result<Report, VerifyError> {
    let scan = scan::scan(tarball)?;
    let is_delta = scan.documents.contains_key(delta::PLAN_NAME);
    let base_scan = match (against.base, is_delta) {
        (None, true) => {
            return fail(
                delta::PLAN_NAME,
                "this is a delta bundle: verify it with `--base` and the tarball it was made against",
            );
        }
        (Some(_), false) => {
            return fail(
                tarball.display().to_string(),
                format!(
                    "is not a delta bundle (no `{}`); verify it without `--base`",
                    delta::PLAN_NAME
                ),
            );
        }
        (Some(base), true) => Some(scan::scan(base)?),
        (None, false) => None,
    };
    let mut report = check_scan(&scan, base_scan.as_ref().zip(against.base), against)?;
    report.bytes_hashed += base_scan.map_or(0, |b| b.bytes);
    Ok(report)
}

/// Every check [`verify`] runs on what its scans learned: the image documents, the cosign
/// signature and the DSSE attestations are parsed here. `base`: a delta bundle's base tarball,
/// scanned. Public for the `verify_documents` fuzz target, which feeds it altered documents.
#[doc(hidden)]
pub fn check_scan(
    scan: &Scan,
    base: Option<(&Scan, &Path)>,
    against: &Against,
) -> Result<Report, VerifyError> {
    Checker {
        scan,
        base,
        key: against.key,
        reviewed: against.reviewed,
        referenced: BTreeSet::new(),
        checks: Vec::new(),
    }
    .run()
}

struct Checker<'a> {
    scan: &'a Scan,
    /// For a delta bundle: the tarball it was made against, where the blobs it left out are.
    base: Option<(&'a Scan, &'a Path)>,
    /// `None`: `verify` without `--key`: every check but the cryptographic ones.
    key: Option<&'a VerifyingKey>,
    reviewed: Option<&'a reviewed::Reviewed>,
    referenced: BTreeSet<Sha256Digest>,
    checks: Vec<String>,
}

impl<'a> Checker<'a> {
    /// A top-level document read with one of [`oci`]'s readers.
    fn oci_document<T>(
        &self,
        name: &str,
        read: fn(&str, &[u8]) -> Result<T, oci::DocumentError>,
    ) -> Result<T, VerifyError> {
        let Some(bytes) = self.scan.documents.get(name) else {
            return fail(name, "missing from the tarball");
        };
        read(name, bytes).map_err(|e| check(name, &e.message))
    }

    fn document(&self, name: &str) -> Result<Value, VerifyError> {
        let Some(bytes) = self.scan.documents.get(name) else {
            return fail(name, "missing from the tarball");
        };
        serde_json::from_slice(bytes).or_else(|e| fail(name, format!("is not valid JSON: {e}")))
    }

    /// A descriptor's blob: present, size as declared; marks it referenced.
    fn blob(
        &mut self,
        desc: &oci::Descriptor,
        from: &str,
    ) -> Result<(Sha256Digest, &'a BlobInfo), VerifyError> {
        let digest = oci::sha256(desc).or_else(|e| fail(from, format!("bad digest: {e}")))?;
        let info = match (self.scan.blobs.get(&digest), self.base) {
            (Some(info), _) => info,
            (None, Some((base, path))) => {
                let Some(info) = base.blobs.get(&digest) else {
                    return fail(
                        blob_path(&digest),
                        format!(
                            "is referenced by {from} but is neither in the delta nor in the base \
                             `{}`: the delta was made against another image",
                            path.display()
                        ),
                    );
                };
                if info.actual != Some(digest) {
                    let actual = info.actual.map(|d| d.prefixed()).unwrap_or_default();
                    return fail(
                        blob_path(&digest),
                        format!(
                            "in the base `{}` has sha256 {actual}: the blob was modified",
                            path.display()
                        ),
                    );
                }
                info
            }
            (None, None) => {
                return fail(
                    from,
                    format!("references {digest}, which is missing from the tarball"),
                );
            }
        };
        if desc.size() != info.size {
            return fail(
                blob_path(&digest),
                format!("is {} bytes but {from} says {}", info.size, desc.size()),
            );
        }
        self.referenced.insert(digest);
        Ok((digest, info))
    }

    /// A descriptor's blob that must be a JSON document (`what`), read with `read` (one of
    /// [`oci`]'s readers, or serde for the signing documents).
    fn json_blob<T>(
        &mut self,
        desc: &oci::Descriptor,
        from: &str,
        what: &str,
        read: impl FnOnce(&str, &[u8]) -> Result<T, String>,
    ) -> Result<(Sha256Digest, T), VerifyError> {
        let (digest, info) = self.blob(desc, from)?;
        let path = blob_path(&digest);
        let Some(bytes) = &info.json else {
            return fail(
                &path,
                format!("is referenced by {from} as {what} but is not a JSON document"),
            );
        };
        let value =
            read(&path, bytes).or_else(|e| fail(&path, format!("is not valid as {what}: {e}")))?;
        Ok((digest, value))
    }

    /// The checks, in the order an auditor would do them by hand; each step records what it
    /// proved in `checks` and the first failure names the culprit.
    fn run(mut self) -> Result<Report, VerifyError> {
        self.blobs_match_their_names()?;
        let image = self.image()?;
        let repository = self.docker_view(&image)?;
        self.documents_are_canonical(&image, &repository)?;
        let labelled = self.labels_match_layers(&image)?;
        if let Some(reviewed) = self.reviewed {
            let checks = reviewed::check(
                reviewed,
                &repository.repo_tag,
                &image.config.labels(),
                &image.files,
            )?;
            self.checks.extend(checks);
        }
        if self.key.is_none() && !self.scan.documents.contains_key(cosign::SIGNATURES_INDEX) {
            // Intact, and nothing to check a signature against: the report says so.
            self.nothing_unaccounted()?;
            let signature = Signature {
                fingerprint: None,
                present: false,
                signed_reference: String::new(),
                image: repository.repo_tag,
            };
            return Ok(self.report(image, signature, labelled, None));
        }
        let signature = self.signature(&image, &repository)?;
        let statements = self.attestations(&image, &signature)?;
        let contents = self.contents(&image, &statements)?;
        let evaluation = self.check_evaluation(
            statements.statements.get(crate::eval::PREDICATE_TYPE),
            &image.files,
        )?;
        self.nothing_unaccounted()?;
        Ok(self.report(image, signature, contents, evaluation))
    }

    /// Step 1: Every blob's content matches its name.
    fn blobs_match_their_names(&mut self) -> Result<(), VerifyError> {
        for (name, info) in &self.scan.blobs {
            if info.actual != Some(*name) {
                let actual = info.actual.map(|d| d.prefixed()).unwrap_or_default();
                return fail(
                    blob_path(name),
                    format!("content has sha256 {actual}: the blob was modified or swapped"),
                );
            }
        }
        self.checks.push(format!(
            "{} blobs: sha256 of content equals name ({} bytes hashed)",
            self.scan.blobs.len(),
            self.scan.bytes
        ));
        Ok(())
    }

    /// Step 2: The OCI layout and its one image: index → manifest → config → layers and diff_ids.
    fn image(&mut self) -> Result<Image, VerifyError> {
        let layout = self.document("oci-layout")?;
        if layout["imageLayoutVersion"] != "1.0.0" {
            return fail("oci-layout", "imageLayoutVersion is not 1.0.0");
        }
        let index = self.oci_document("index.json", oci::index)?;
        let entries = index.manifests();
        if entries.len() != 1 {
            return fail(
                "index.json",
                format!(
                    "lists {} manifests; an appliance image has exactly one",
                    entries.len()
                ),
            );
        }
        let entry = &entries[0];
        let ref_name = oci::annotation(entry, "org.opencontainers.image.ref.name")
            .unwrap_or_default()
            .to_string();
        let (manifest_digest, manifest) =
            self.json_blob(entry, "index.json", "the image manifest", |_, b| {
                Ok::<_, String>(oci::manifest("", b).ok())
            })?;
        let Some(manifest) = manifest else {
            return fail(
                "index.json",
                format!("points to {manifest_digest}, which is not an image manifest"),
            );
        };
        let m_name = format!("manifest {manifest_digest}");
        let (config_digest, config) = self.json_blob(
            manifest.config(),
            &m_name,
            "the image config",
            read(oci::config),
        )?;
        let layers = manifest.layers();
        let diff_ids = config.oci.rootfs().diff_ids();
        if diff_ids.len() != layers.len() {
            return fail(
                blob_path(&config_digest),
                format!(
                    "lists {} diff_ids for {} layers",
                    diff_ids.len(),
                    layers.len()
                ),
            );
        }
        let mut files: BTreeMap<String, scan::LayerFile> = BTreeMap::new();
        let mut layer_digests = Vec::new();
        for (i, (layer, diff_id)) in layers.iter().zip(diff_ids).enumerate() {
            let (digest, info) = self.blob(layer, &format!("{m_name} layer {}", i + 1))?;
            if let Some(err) = &info.layer_error {
                return fail(
                    blob_path(&digest),
                    format!("is not a readable layer: {err}"),
                );
            }
            let Some(actual) = info.diff_id else {
                return fail(
                    blob_path(&digest),
                    "is referenced as a layer but is not a tar archive",
                );
            };
            if *diff_id != actual.prefixed() {
                return fail(
                    blob_path(&config_digest),
                    format!(
                        "diff_id {} of layer {} is {diff_id}, but the layer's uncompressed sha256 is {actual}",
                        i + 1,
                        i + 1
                    ),
                );
            }
            files.extend(info.files.iter().map(|(k, v)| (k.clone(), v.clone())));
            layer_digests.push(digest);
        }
        self.checks.push(format!("index.json → manifest {manifest_digest} → config and {} layers: digests, sizes and diff_ids agree", layers.len()));
        Ok(Image {
            manifest_digest,
            manifest_size: entry.size(),
            config_digest,
            config,
            layers: layers.len(),
            layer_digests,
            files,
            ref_name,
        })
    }

    /// Step 3: The docker-archive view (`manifest.json`) agrees with the OCI view; returns the
    /// repository the signature must name.
    fn docker_view(&mut self, image: &Image) -> Result<Repository, VerifyError> {
        let Image {
            config_digest,
            layer_digests,
            ref_name,
            ..
        } = image;
        let ref_name = ref_name.as_str();
        let docker_entries = self.oci_document("manifest.json", oci::docker_manifest)?;
        if docker_entries.len() != 1 {
            return fail(
                "manifest.json",
                format!(
                    "lists {} images; expected exactly one",
                    docker_entries.len()
                ),
            );
        }
        let d = &docker_entries[0];
        if d.config != blob_path(config_digest) {
            return fail(
                "manifest.json",
                format!(
                    "Config is {}, but the signed manifest's config is {}",
                    d.config,
                    blob_path(config_digest)
                ),
            );
        }
        let want: Vec<String> = layer_digests.iter().map(blob_path).collect();
        if d.layers != want {
            return fail(
                "manifest.json",
                format!(
                    "Layers ({} entries) differ from the signed manifest's layers ({} entries)",
                    d.layers.len(),
                    want.len()
                ),
            );
        }
        let repo_tags = &d.repo_tags;
        let Some(repo_tag) = repo_tags.first().filter(|_| repo_tags.len() == 1) else {
            return fail("manifest.json", "RepoTags must hold exactly one name");
        };
        if ref_name != *repo_tag
            && ref_name != format!("docker.io/library/{repo_tag}")
            && ref_name != format!("docker.io/{repo_tag}")
        {
            return fail(
                "index.json",
                format!("reference `{ref_name}` differs from manifest.json's `{repo_tag}`"),
            );
        }
        let repository = match repo_tag.rsplit_once(':') {
            Some((name, tag)) if !tag.contains('/') => name.to_string(),
            _ => repo_tag.clone(),
        };
        self.checks
            .push("manifest.json agrees with index.json (config, layers, name)".into());
        Ok(Repository {
            repo_tag: repo_tag.clone(),
            name: repository,
        })
    }

    /// Step 3a: `oci-layout`, `index.json` and `manifest.json` are byte for byte what the
    /// exporter writes for this manifest, config, name and layers, and every tar header carries
    /// the config's `created` as its mtime. Steps 2 and 3 read only the fields that link the
    /// image up; without this, a changed media type, annotation or mtime (bytes no digest or
    /// signature covers) would pass.
    fn documents_are_canonical(
        &mut self,
        image: &Image,
        repository: &Repository,
    ) -> Result<(), VerifyError> {
        use crate::image;
        let architecture = image.config.oci.architecture().to_string();
        let rebuilt = |what: &str, e: image::ImageError| check(what, &format!("{e:#}"));
        let index = image::index_json(
            &image.ref_name,
            &image.manifest_digest,
            image.manifest_size,
            &architecture,
        )
        .map_err(|e| rebuilt("index.json", e))?;
        let docker = image::docker_manifest_json(
            &image.config_digest,
            &repository.repo_tag,
            &image.layer_digests,
        )
        .map_err(|e| rebuilt("manifest.json", e))?;
        for (name, want) in [
            ("oci-layout", image::OCI_LAYOUT),
            ("index.json", &index[..]),
            ("manifest.json", &docker[..]),
        ] {
            if self.scan.documents.get(name).map(Vec::as_slice) != Some(want) {
                return fail(
                    name,
                    "is not byte for byte what appliance writes for this image (a field, \
                     annotation or whitespace was changed or added)",
                );
            }
        }
        let created_text = image.config.oci.created().clone().unwrap_or_default();
        let created = created_text
            .parse::<jiff::Timestamp>()
            .ok()
            .map(|t| t.as_second());
        let mtime = self.scan.mtime.map(|m| m as i64);
        if created != mtime {
            return fail(
                blob_path(&image.config_digest),
                format!(
                    "created ({created_text}) is not the tar entries' mtime ({})",
                    mtime.unwrap_or_default()
                ),
            );
        }
        self.checks.push(
            "oci-layout, index.json, manifest.json and every tar header are as appliance writes them"
                .into(),
        );
        Ok(())
    }

    /// Step 3b: The model files and server the config's labels list are in the layers with those
    /// digests and sizes (the labels are covered by the manifest digest, signed or not).
    fn labels_match_layers(&mut self, image: &Image) -> Result<Contents, VerifyError> {
        use crate::summary::{ModelSummary, labels};
        let config = blob_path(&image.config_digest);
        let found = image.config.labels();
        let Some(model) = ModelSummary::from_labels(&found) else {
            return fail(
                config,
                format!(
                    "has no readable `{}` labels: not an appliance image",
                    labels::MODEL_FILES
                ),
            );
        };
        let dir = model.path.trim_start_matches('/');
        for f in &model.files {
            let path = format!("{dir}/{}", f.path);
            match image.files.get(&path) {
                Some(l) if l.sha256.hex() == f.sha256 && l.size == f.size => {}
                Some(l) => {
                    return fail(
                        &path,
                        format!(
                            "the layers hold sha256 {} ({} bytes), the label `{}` says {} ({} bytes)",
                            l.sha256.hex(),
                            l.size,
                            labels::MODEL_FILES,
                            f.sha256,
                            f.size
                        ),
                    );
                }
                None => {
                    return fail(
                        &path,
                        format!("is in the label `{}` but in no layer", labels::MODEL_FILES),
                    );
                }
            }
        }
        if let Some(extra) = image.files.keys().find(|p| {
            p.starts_with(&format!("{dir}/"))
                && !model
                    .files
                    .iter()
                    .any(|f| format!("{dir}/{}", f.path) == **p)
        }) {
            return fail(
                extra,
                format!(
                    "is in the model directory but not in the label `{}`",
                    labels::MODEL_FILES
                ),
            );
        }
        let server_sha256 = found.get(labels::SERVER_SHA256).cloned();
        if let Some(want) = &server_sha256 {
            let path = crate::layers::plan::SERVER_PATH;
            let have = image.files.get(path).map(|f| f.sha256.prefixed());
            if have.as_deref() != Some(want.as_str()) {
                return fail(
                    path,
                    format!(
                        "the label `{}` says {want}, the layers hold {}",
                        labels::SERVER_SHA256,
                        have.unwrap_or_else(|| "nothing".into())
                    ),
                );
            }
        }
        self.checks.push(format!(
            "{} model files and the server in the layers match the image's labels",
            model.files.len()
        ));
        Ok(Contents {
            model: Some(ReportModel {
                name: model.name,
                source: model.source,
                revision: model.revision,
                purl: None,
                files: model
                    .files
                    .into_iter()
                    .map(|f| ReportFile {
                        path: f.path,
                        sha256: f.sha256,
                        size: f.size,
                    })
                    .collect(),
            }),
            server_version: found.get(labels::SERVER_VERSION).cloned(),
            server_sha256,
            sbom_components: 0,
        })
    }

    /// `signatures/index.json`'s entries, looked up by their cosign `kind` annotation.
    fn signature_entries(
        &self,
    ) -> Result<impl Fn(&str) -> Option<oci::Descriptor> + use<>, VerifyError> {
        if !self.scan.documents.contains_key(cosign::SIGNATURES_INDEX) {
            return fail(cosign::SIGNATURES_INDEX, "missing: the image is not signed");
        }
        let sigs = self.oci_document(cosign::SIGNATURES_INDEX, oci::index)?;
        Ok(move |k: &str| {
            sigs.manifests()
                .iter()
                .find(|e| oci::annotation(e, cosign::KIND_ANNOTATION) == Some(k))
                .cloned()
        })
    }

    /// The signatures index is not itself signed: its bytes must be exactly what the signer
    /// writes for this image (from `index.json`'s entry and the two manifests' descriptors),
    /// so a changed tag name or annotation in it cannot pass unnoticed.
    fn signatures_index_is_canonical(
        &self,
        image: &Image,
        sig_entry: &oci::Descriptor,
        att_entry: &oci::Descriptor,
    ) -> Result<(), VerifyError> {
        // Digest and size come from the entry (the manifests they name are checked by digest);
        // the media type is the signer's constant, never read back from what is checked.
        let descriptor = |e: &oci::Descriptor| {
            serde_json::json!({
                "digest": e.digest().to_string(),
                "size": e.size(),
                "mediaType": cosign::MANIFEST_MEDIA_TYPE,
            })
        };
        let expected = cosign::signatures_index(
            &cosign::SignedImage {
                manifest_digest: image.manifest_digest,
                manifest_size: image.manifest_size,
                repository: "",
                full_reference: &image.ref_name,
            },
            descriptor(sig_entry),
            descriptor(att_entry),
        );
        let stored = self.scan.documents.get(cosign::SIGNATURES_INDEX);
        if crate::json::canonical(&expected).ok().as_ref() != stored {
            return fail(
                cosign::SIGNATURES_INDEX,
                "is not the index the signer writes for this image: an entry, tag or annotation \
                 was changed",
            );
        }
        Ok(())
    }

    /// Step 4: The cosign signature over the manifest digest.
    fn signature(
        &mut self,
        image: &Image,
        repository: &Repository,
    ) -> Result<Signature, VerifyError> {
        let manifest_digest = image.manifest_digest;
        let repo_tag = repository.repo_tag.clone();
        let repository = &repository.name;
        let fingerprint = self.key.map(keys::fingerprint);
        let kind = self.signature_entries()?;
        let image_entry = kind(cosign::KIND_IMAGE)
            .ok_or_else(|| check(cosign::SIGNATURES_INDEX, "has no image entry"))?;
        if image_entry.digest().to_string() != manifest_digest.prefixed() {
            return fail(
                cosign::SIGNATURES_INDEX,
                format!(
                    "is about {}, not the image in index.json ({manifest_digest})",
                    image_entry.digest()
                ),
            );
        }
        let sig_entry = kind(cosign::KIND_SIGS)
            .ok_or_else(|| check(cosign::SIGNATURES_INDEX, "has no signature manifest"))?;
        let att_entry = kind(cosign::KIND_ATTS)
            .ok_or_else(|| check(cosign::SIGNATURES_INDEX, "has no attestation manifest"))?;
        self.signatures_index_is_canonical(image, &sig_entry, &att_entry)?;
        let (sig_digest, sig_manifest) = self.json_blob(
            &sig_entry,
            cosign::SIGNATURES_INDEX,
            "the signature manifest",
            read(oci::manifest),
        )?;
        let sig_name = format!("signature manifest {sig_digest}");
        self.json_blob(sig_manifest.config(), &sig_name, "a config", read(json))?;
        let Some(sig_layer) = sig_manifest
            .layers()
            .first()
            .filter(|l| l.media_type().to_string() == cosign::SIMPLE_SIGNING_MEDIA_TYPE)
        else {
            return fail(&sig_name, "its layer is not a simple-signing payload");
        };
        let (payload_digest, payload_info) = self.blob(sig_layer, &sig_name)?;
        let payload_bytes = payload_info.json.clone().unwrap_or_default();
        let signature = base64::engine::general_purpose::STANDARD
            .decode(oci::annotation(sig_layer, cosign::SIGNATURE_ANNOTATION).unwrap_or_default())
            .or_else(|_| {
                fail(
                    &sig_name,
                    format!(
                        "annotation `{}` is not base64",
                        cosign::SIGNATURE_ANNOTATION
                    ),
                )
            })?;
        if let (Some(key), Some(fingerprint)) = (self.key, fingerprint)
            && !sign::verify(key, &payload_bytes, &signature)
        {
            return fail(
                &sig_name,
                format!(
                    "the signature over payload {payload_digest} does not verify with key sha256:{} (wrong key, or the signature was altered)",
                    fingerprint.hex()
                ),
            );
        }
        let payload: Value = serde_json::from_slice(&payload_bytes)
            .or_else(|e| fail(blob_path(&payload_digest), e.to_string()))?;
        let signed = payload["critical"]["image"]["docker-manifest-digest"]
            .as_str()
            .unwrap_or_default();
        if signed != manifest_digest.prefixed() {
            return fail(
                blob_path(&payload_digest),
                format!(
                    "the signed payload names manifest {signed}, but index.json points to {manifest_digest}"
                ),
            );
        }
        if payload["critical"]["type"] != "cosign container image signature" {
            return fail(
                blob_path(&payload_digest),
                "critical.type is not `cosign container image signature`",
            );
        }
        let signed_reference = payload["critical"]["identity"]["docker-reference"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if signed_reference != *repository {
            return fail(
                blob_path(&payload_digest),
                format!(
                    "docker-reference `{signed_reference}` is not the image name `{repository}`"
                ),
            );
        }
        self.checks.push(match fingerprint {
            Some(f) => format!(
                "cosign signature over {manifest_digest} verifies with key sha256:{}",
                f.hex()
            ),
            None => format!(
                "cosign signature over {manifest_digest} present and well-formed; NOT verified (no key given)"
            ),
        });
        Ok(Signature {
            fingerprint,
            present: true,
            signed_reference,
            image: repo_tag,
        })
    }

    /// Step 5: Attestations: DSSE-signed by the same key, about this image; SBOM and provenance
    /// required.
    fn attestations(
        &mut self,
        image: &Image,
        signature: &Signature,
    ) -> Result<Statements, VerifyError> {
        let manifest_digest = image.manifest_digest;
        let fingerprint = signature.fingerprint;
        let kind = self.signature_entries()?;
        let att_entry = kind(cosign::KIND_ATTS)
            .ok_or_else(|| check(cosign::SIGNATURES_INDEX, "has no attestation manifest"))?;
        let (att_digest, att_manifest) = self.json_blob(
            &att_entry,
            cosign::SIGNATURES_INDEX,
            "the attestation manifest",
            read(oci::manifest),
        )?;
        let att_name = format!("attestation manifest {att_digest}");
        self.json_blob(att_manifest.config(), &att_name, "a config", read(json))?;
        let mut statements: BTreeMap<String, Value> = BTreeMap::new();
        for layer in att_manifest.layers() {
            let predicate_type = oci::annotation(layer, "predicateType")
                .unwrap_or_default()
                .to_string();
            let (digest, envelope) =
                self.json_blob(layer, &att_name, "a DSSE envelope", |_, b| {
                    serde_json::from_slice::<dsse::Envelope>(b).map_err(|e| e.to_string())
                })?;
            let culprit = format!("{} ({predicate_type} attestation)", blob_path(&digest));
            if let (Some(key), Some(fingerprint)) = (self.key, fingerprint)
                && !envelope.verify(key)
            {
                return fail(
                    &culprit,
                    format!(
                        "the DSSE signature does not verify with key sha256:{}",
                        fingerprint.hex()
                    ),
                );
            }
            let statement: Value =
                serde_json::from_slice(&envelope.statement().unwrap_or_default())
                    .or_else(|e| fail(&culprit, format!("statement is not JSON: {e}")))?;
            if statement["_type"] != attest::STATEMENT_TYPE
                || statement["predicateType"] != predicate_type.as_str()
            {
                return fail(
                    &culprit,
                    "statement type or predicateType does not match its annotation",
                );
            }
            let subjects = statement["subject"].as_array().cloned().unwrap_or_default();
            if !subjects
                .iter()
                .any(|s| s["digest"]["sha256"].as_str() == Some(manifest_digest.hex().as_str()))
            {
                return fail(
                    &culprit,
                    format!("the statement's subject is not {manifest_digest}"),
                );
            }
            statements.insert(predicate_type, statement);
        }
        let sbom = statements
            .get(attest::sbom::PREDICATE_TYPE)
            .ok_or_else(|| check(&att_name, "has no CycloneDX SBOM attestation"))?;
        let provenance = statements
            .get(attest::provenance::PREDICATE_TYPE)
            .ok_or_else(|| check(&att_name, "has no SLSA provenance attestation"))?;
        self.checks.push(if self.key.is_some() {
            "SBOM (CycloneDX 1.6) and provenance (SLSA v1) attestations verify and name this manifest".into()
        } else {
            "SBOM (CycloneDX 1.6) and provenance (SLSA v1) attestations name this manifest; their signatures NOT verified (no key given)".into()
        });
        Ok(Statements {
            sbom: sbom.clone(),
            provenance: provenance.clone(),
            att_name,
            statements,
        })
    }

    /// Step 6: Model files (and, in 6b, the server) in the layers equal the attested digests.
    fn contents(
        &mut self,
        image: &Image,
        statements: &Statements,
    ) -> Result<Contents, VerifyError> {
        let files = &image.files;
        let (sbom, provenance) = (&statements.sbom, &statements.provenance);
        let att_name = statements.att_name.clone();
        let bom = &sbom["predicate"];
        let components = bom["components"].as_array().cloned().unwrap_or_default();
        let model = components
            .iter()
            .find(|c| c["type"] == "machine-learning-model")
            .cloned();
        let report_model;
        if let Some(model) = &model {
            let dir = model["properties"]
                .as_array()
                .and_then(|p| p.iter().find(|p| p["name"] == "appliance:path"))
                .and_then(|p| p["value"].as_str())
                .unwrap_or_default()
                .trim_start_matches('/')
                .to_string();
            let mut listed = BTreeSet::new();
            let mut report_files = Vec::new();
            for f in model["components"].as_array().cloned().unwrap_or_default() {
                let path = f["name"].as_str().unwrap_or_default().to_string();
                let want = f["hashes"][0]["content"].as_str().unwrap_or_default();
                let Some(found) = files.get(&path) else {
                    return fail(&path, "is listed in the SBOM but is not in any layer");
                };
                if found.sha256.hex() != want {
                    return fail(
                        &path,
                        format!(
                            "sha256 in the layers is {}, the SBOM says {want}",
                            found.sha256.hex()
                        ),
                    );
                }
                listed.insert(path.clone());
                report_files.push(ReportFile {
                    path: path
                        .strip_prefix(&format!("{dir}/"))
                        .unwrap_or(&path)
                        .to_string(),
                    sha256: want.to_string(),
                    size: found.size,
                });
            }
            if let Some(extra) = files
                .keys()
                .find(|p| p.starts_with(&format!("{dir}/")) && !listed.contains(*p))
            {
                return fail(extra, "is in the model directory but not in the SBOM");
            }
            for dep in provenance["predicate"]["buildDefinition"]["resolvedDependencies"]
                .as_array()
                .cloned()
                .unwrap_or_default()
            {
                let name = dep["name"].as_str().unwrap_or_default();
                if name.starts_with(&format!("{dir}/")) {
                    let want = dep["digest"]["sha256"].as_str().unwrap_or_default();
                    if files.get(name).map(|f| f.sha256.hex()).as_deref() != Some(want) {
                        return fail(
                            name,
                            format!("provenance says sha256 {want}, the layers disagree"),
                        );
                    }
                }
            }
            self.checks.push(format!(
                "{} model files in the layers match the SBOM and provenance digests",
                listed.len()
            ));
            report_model = Some(ReportModel {
                name: model["name"].as_str().unwrap_or_default().into(),
                source: model["properties"]
                    .as_array()
                    .and_then(|p| p.iter().find(|p| p["name"] == "appliance:source"))
                    .and_then(|p| p["value"].as_str())
                    .unwrap_or_default()
                    .into(),
                revision: model["version"].as_str().unwrap_or_default().into(),
                purl: model["purl"].as_str().map(str::to_string),
                files: report_files,
            });
        } else {
            return fail(
                &att_name,
                "the SBOM has no machine-learning-model component",
            );
        }
        let (server_version, server_sha256) =
            match components.iter().find(|c| c["bom-ref"] == "server") {
                Some(server) => self.server_binary(server, files)?,
                None => (None, None),
            };
        Ok(Contents {
            model: report_model,
            server_version,
            server_sha256,
            sbom_components: components.len(),
        })
    }

    /// Step 6b: The server binary in the layers is the SBOM's; returns its version and sha256.
    fn server_binary(
        &mut self,
        server: &Value,
        files: &BTreeMap<String, scan::LayerFile>,
    ) -> Result<(Option<String>, Option<String>), VerifyError> {
        let path = server["properties"]
            .as_array()
            .and_then(|p| p.iter().find(|p| p["name"] == "appliance:path"))
            .and_then(|p| p["value"].as_str())
            .unwrap_or_default()
            .trim_start_matches('/');
        let want = server["hashes"][0]["content"].as_str().unwrap_or_default();
        if files.get(path).map(|f| f.sha256.hex()).as_deref() != Some(want) {
            return fail(
                path,
                format!("the server binary in the layers does not have the SBOM's sha256 {want}"),
            );
        }
        self.checks
            .push(format!("server binary /{path} matches the SBOM"));
        Ok((
            server["version"].as_str().map(str::to_string),
            Some(want.to_string()),
        ))
    }

    /// Step 7: Nothing unaccounted for.
    fn nothing_unaccounted(&mut self) -> Result<(), VerifyError> {
        if let Some(stray) = self
            .scan
            .blobs
            .keys()
            .find(|d| !self.referenced.contains(*d))
        {
            return fail(
                blob_path(stray),
                "is not referenced by the image or its signatures",
            );
        }
        self.checks
            .push("every blob is referenced by the image or its signatures".into());
        if let Some((_, path)) = self.base {
            let from_base = self
                .referenced
                .iter()
                .filter(|d| !self.scan.blobs.contains_key(*d))
                .count();
            self.checks.push(format!(
                "delta bundle: {} blobs carried, {from_base} taken from the base `{}` (sha256 of \
                 content equals name)",
                self.scan.blobs.len(),
                path.display()
            ));
        }
        Ok(())
    }

    fn report(
        self,
        image: Image,
        signature: Signature,
        contents: Contents,
        evaluation: Option<ReportEvaluation>,
    ) -> Report {
        Report {
            image: signature.image,
            manifest_digest: image.manifest_digest.prefixed(),
            config_digest: image.config_digest.prefixed(),
            signature: match (signature.fingerprint, signature.present) {
                (Some(_), _) => SignatureStatus::Verified,
                (None, true) => SignatureStatus::NotChecked,
                (None, false) => SignatureStatus::Unsigned,
            },
            signer_fingerprint: signature
                .fingerprint
                .map(|f| format!("sha256:{}", f.hex()))
                .unwrap_or_default(),
            signed_reference: signature.signed_reference,
            model: contents.model,
            server_version: contents.server_version,
            server_sha256: contents.server_sha256,
            user: (image.config.oci.config().as_ref())
                .and_then(|c| c.user().clone())
                .unwrap_or_default(),
            exposed_ports: image.config.exposed_ports(),
            layers: image.layers,
            blobs: self.referenced.len(),
            bytes_hashed: self.scan.bytes,
            sbom_components: contents.sbom_components,
            evaluation,
            checks: self.checks,
        }
    }
}

/// What the documents say the image is (step 2); the later steps check against it.
struct Image {
    manifest_digest: Sha256Digest,
    manifest_size: u64,
    config_digest: Sha256Digest,
    config: oci::Config,
    layers: usize,
    layer_digests: Vec<Sha256Digest>,
    /// Every regular file of every layer, by path.
    files: BTreeMap<String, scan::LayerFile>,
    /// `index.json`'s `org.opencontainers.image.ref.name`.
    ref_name: String,
}

/// The name `manifest.json` gives the image (step 3).
struct Repository {
    /// `name:tag`.
    repo_tag: String,
    /// `name`, what the signature must name.
    name: String,
}

/// Who signed it and for which name (step 4).
struct Signature {
    /// `None` when no key was given.
    fingerprint: Option<Sha256Digest>,
    /// Whether the image carries a signature at all.
    present: bool,
    signed_reference: String,
    /// `name:tag`, for the report.
    image: String,
}

/// The verified attestation statements by predicate type (step 5).
struct Statements {
    sbom: Value,
    provenance: Value,
    att_name: String,
    statements: BTreeMap<String, Value>,
}

/// What the SBOM-checked layers hold (step 6).
struct Contents {
    model: Option<ReportModel>,
    server_version: Option<String>,
    server_sha256: Option<String>,
    sbom_components: usize,
}

impl Checker<'_> {
    /// The gate's test-result attestation, when present: a passing result, its cases document
    /// intact, and the server and model files it names are the ones in the layers.
    fn check_evaluation(
        &mut self,
        statement: Option<&Value>,
        files: &BTreeMap<String, scan::LayerFile>,
    ) -> Result<Option<ReportEvaluation>, VerifyError> {
        let Some(statement) = statement else {
            return Ok(None);
        };
        let culprit = "test-result attestation";
        let predicate = &statement["predicate"];
        let result = predicate["result"].as_str().unwrap_or_default();
        if result != "PASSED" && result != "WARNED" {
            return fail(
                culprit,
                format!("result is `{result}`, not PASSED or WARNED"),
            );
        }
        let mut document = None;
        let mut ran_against = 0usize;
        for desc in predicate["configuration"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            let name = desc["name"].as_str().unwrap_or_default();
            let want = desc["digest"]["sha256"].as_str().unwrap_or_default();
            if name == crate::eval::RESULTS_NAME {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(desc["content"].as_str().unwrap_or_default())
                    .or_else(|e| fail(culprit, format!("`{name}` content is not base64: {e}")))?;
                if Sha256Digest::of(&bytes).hex() != want {
                    return fail(culprit, format!("`{name}` does not match its digest"));
                }
                document = Some(
                    serde_json::from_slice::<Value>(&bytes)
                        .or_else(|e| fail(culprit, format!("`{name}` is not JSON: {e}")))?,
                );
                continue;
            }
            match files.get(name) {
                Some(f) if f.sha256.hex() == want => ran_against += 1,
                Some(f) => {
                    return fail(
                        name,
                        format!(
                            "the evaluation ran against sha256 {want}, the layers hold {}",
                            f.sha256.hex()
                        ),
                    );
                }
                None => return fail(name, "the evaluation names it, but it is in no layer"),
            }
        }
        let Some(document) = document else {
            return fail(culprit, format!("has no `{}`", crate::eval::RESULTS_NAME));
        };
        let cases = document["cases"].as_array().cloned().unwrap_or_default();
        let passed = cases
            .iter()
            .filter(|c| c["result"]["passed"] == true)
            .count();
        let listed = predicate["passedTests"].as_array().map_or(0, Vec::len);
        if listed != passed {
            return fail(
                culprit,
                format!("passedTests lists {listed} cases, the results show {passed}"),
            );
        }
        self.checks.push(format!(
            "evaluation gate: {passed} of {} cases passed ({result}), run against the server and \
             {} files in these layers",
            cases.len(),
            ran_against.saturating_sub(1)
        ));
        Ok(Some(ReportEvaluation {
            result: result.to_string(),
            passed,
            cases: cases.len(),
            device: document["device"].as_str().unwrap_or_default().to_string(),
        }))
    }
}

fn check(culprit: &str, message: &str) -> VerifyError {
    VerifyError::Check {
        culprit: culprit.into(),
        message: message.into(),
    }
}

/// The human audit report.
pub fn render(r: &Report) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let verdict = if r.signature == SignatureStatus::Verified {
        "Verified:"
    } else {
        "Intact:  "
    };
    let _ = writeln!(out, "{verdict}     {}", r.image);
    let _ = writeln!(out, "Digest:       {}", r.manifest_digest);
    let _ = writeln!(out, "Config:       {}", r.config_digest);
    match r.signature {
        SignatureStatus::Verified => {
            let _ = writeln!(out, "Signed by:    key {}", r.signer_fingerprint);
            let _ = writeln!(out, "Signed name:  {}", r.signed_reference);
        }
        SignatureStatus::NotChecked => {
            let _ = writeln!(
                out,
                "Signature:    NOT CHECKED: the image is signed, but no --key was given; the signer is unknown"
            );
        }
        SignatureStatus::Unsigned => {
            let _ = writeln!(
                out,
                "Signature:    NONE: the image is not signed; it is intact, but the signer is unknown"
            );
        }
    }
    if let Some(s) = &r.server_version {
        let _ = writeln!(
            out,
            "Server:       appliance-server {s} (sha256 {})",
            r.server_sha256.as_deref().unwrap_or("")
        );
    }
    let _ = writeln!(out, "User:         {}", r.user);
    let _ = writeln!(out, "Ports:        {}", r.exposed_ports.join(", "));
    if let Some(m) = &r.model {
        let _ = writeln!(
            out,
            "Model:        {} ({}) revision {}",
            m.name, m.source, m.revision
        );
        if let Some(purl) = &m.purl {
            let _ = writeln!(out, "Model purl:   {purl}");
        }
        for f in &m.files {
            let _ = writeln!(out, "  {}  {:>12}  {}", f.sha256, f.size, f.path);
        }
    }
    let _ = writeln!(
        out,
        "SBOM:         {} top-level components",
        r.sbom_components
    );
    if let Some(e) = &r.evaluation {
        let _ = writeln!(
            out,
            "Evaluation:   {} of {} cases passed ({}, on {})",
            e.passed, e.cases, e.result, e.device
        );
    }
    let _ = writeln!(out, "Checked:");
    for c in &r.checks {
        let _ = writeln!(out, "  ok  {c}");
    }
    out
}

/// Adapts one of [`oci`]'s readers to [`Checker::json_blob`], whose error names the blob.
fn read<T>(
    f: fn(&str, &[u8]) -> Result<T, oci::DocumentError>,
) -> impl FnOnce(&str, &[u8]) -> Result<T, String> {
    move |name, bytes| f(name, bytes).map_err(|e| e.message)
}

/// Any JSON value (cosign's config blobs, which nothing reads further).
fn json(name: &str, bytes: &[u8]) -> Result<Value, oci::DocumentError> {
    serde_json::from_slice(bytes).map_err(|e| oci::DocumentError {
        name: name.to_string(),
        what: "JSON",
        message: e.to_string(),
    })
}
