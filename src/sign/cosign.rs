//! Lays out signatures and attestations as cosign stores them in an OCI layout: a signature
//! manifest (tag `sha256-<hex>.sig`) whose one layer is the simple-signing payload, and an
//! attestation manifest (`.att`) whose layers are DSSE envelopes.
//!
//! Both sit in the tarball under [`SIGNATURES_INDEX`], an OCI index with cosign's `kind`
//! annotations, and NOT in the top-level `index.json`: podman loads every entry of that index
//! as an image and skopeo wants exactly one. Copying `signatures/index.json` to `index.json`
//! (with `oci-layout` and the non-layer blobs) gives the layout `cosign verify --local-image`
//! reads.

use serde_json::json;

use super::{Signer, dsse};
use crate::digest::Sha256Digest;
use crate::json;

/// Where the index of signatures and attestations lives inside the tarball.
pub const SIGNATURES_INDEX: &str = "signatures/index.json";
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
pub const SIMPLE_SIGNING_MEDIA_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
pub const DSSE_MEDIA_TYPE: &str = "application/vnd.dsse.envelope.v1+json";
pub const KIND_ANNOTATION: &str = "kind";
pub const KIND_IMAGE: &str = "dev.cosignproject.cosign/image";
pub const KIND_SIGS: &str = "dev.cosignproject.cosign/sigs";
pub const KIND_ATTS: &str = "dev.cosignproject.cosign/atts";
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
pub const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";

/// One attestation to sign: an in-toto statement and its predicate type.
pub struct Attestation {
    pub predicate_type: String,
    pub statement: Vec<u8>,
}

/// What signing adds to the tarball, plus the detached pieces for sidecar files.
pub struct SignedArtifacts {
    /// `(path in the tarball, bytes)`, blobs first, then [`SIGNATURES_INDEX`].
    pub entries: Vec<(String, Vec<u8>)>,
    pub payload: Vec<u8>,
    /// DER signature over `payload`.
    pub signature: Vec<u8>,
    pub fingerprint: Sha256Digest,
}

/// The image manifest being signed.
pub struct SignedImage<'a> {
    pub manifest_digest: Sha256Digest,
    pub manifest_size: u64,
    /// The reference without tag (cosign's `docker-reference`).
    pub repository: &'a str,
    /// The full reference, for the index annotation.
    pub full_reference: &'a str,
}

/// Signs the image and its attestations and returns the documents to store.
pub fn sign(
    signer: &Signer,
    image: &SignedImage<'_>,
    attestations: &[Attestation],
) -> serde_json::Result<SignedArtifacts> {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut entries = Vec::new();
    let mut blob = |bytes: Vec<u8>| -> serde_json::Value {
        let digest = Sha256Digest::of(&bytes);
        let size = bytes.len();
        entries.push((crate::image::blob_path(&digest), bytes));
        json!({"digest": digest.prefixed(), "size": size})
    };

    let payload = super::simple_signing_payload(image.repository, &image.manifest_digest);
    let signature = signer.sign(&payload);
    let payload_desc = blob(payload.clone());
    let sig_manifest = manifest(
        &mut blob,
        vec![layer(
            payload_desc,
            SIMPLE_SIGNING_MEDIA_TYPE,
            json!({SIGNATURE_ANNOTATION: b64.encode(&signature)}),
        )],
    )?;

    let mut att_layers = Vec::new();
    for att in attestations {
        let envelope = dsse::sign(signer, &att.statement);
        let desc = blob(serde_json::to_vec(&envelope)?);
        att_layers.push(layer(
            desc,
            DSSE_MEDIA_TYPE,
            json!({SIGNATURE_ANNOTATION: "", "predicateType": att.predicate_type}),
        ));
    }
    let att_manifest = manifest(&mut blob, att_layers)?;

    let index = signatures_index(image, sig_manifest, att_manifest);
    entries.push((SIGNATURES_INDEX.to_string(), json::canonical(&index)?));
    Ok(SignedArtifacts {
        entries,
        payload,
        signature,
        fingerprint: signer.fingerprint(),
    })
}

/// [`SIGNATURES_INDEX`]'s content, from the image and the descriptors (`digest`, `size`,
/// `mediaType`) of the signature and attestation manifests. `verify` rebuilds it from the same
/// facts and requires the stored bytes to be exactly its canonical form, so no byte of it
/// (a tag name, an annotation) can change unnoticed.
pub fn signatures_index(
    image: &SignedImage<'_>,
    sig_manifest: serde_json::Value,
    att_manifest: serde_json::Value,
) -> serde_json::Value {
    let tag = format!("sha256-{}", image.manifest_digest.hex());
    json!({
        "schemaVersion": 2,
        "mediaType": INDEX_MEDIA_TYPE,
        "manifests": [
            {
                "mediaType": MANIFEST_MEDIA_TYPE,
                "digest": image.manifest_digest.prefixed(),
                "size": image.manifest_size,
                "annotations": {
                    KIND_ANNOTATION: KIND_IMAGE,
                    "org.opencontainers.image.ref.name": image.full_reference,
                },
            },
            with_annotations(sig_manifest, KIND_SIGS, &format!("{tag}.sig")),
            with_annotations(att_manifest, KIND_ATTS, &format!("{tag}.att")),
        ],
    })
}

fn layer(
    desc: serde_json::Value,
    media_type: &str,
    annotations: serde_json::Value,
) -> serde_json::Value {
    let mut desc = desc;
    desc["mediaType"] = json!(media_type);
    desc["annotations"] = annotations;
    desc
}

/// A cosign-style manifest over `layers`, with the empty-ish config cosign writes.
fn manifest(
    blob: &mut impl FnMut(Vec<u8>) -> serde_json::Value,
    layers: Vec<serde_json::Value>,
) -> serde_json::Result<serde_json::Value> {
    let diff_ids: Vec<&serde_json::Value> = layers.iter().map(|l| &l["digest"]).collect();
    let config = json!({
        "architecture": "",
        "config": {},
        "created": "0001-01-01T00:00:00Z",
        "history": [{"created": "0001-01-01T00:00:00Z"}],
        "os": "",
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let mut config_desc = blob(json::canonical(&config)?);
    config_desc["mediaType"] = json!(CONFIG_MEDIA_TYPE);
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": config_desc,
        "layers": layers,
    });
    let mut desc = blob(json::canonical(&manifest)?);
    desc["mediaType"] = json!(MANIFEST_MEDIA_TYPE);
    Ok(desc)
}

fn with_annotations(mut desc: serde_json::Value, kind: &str, tag: &str) -> serde_json::Value {
    desc["annotations"] = json!({
        KIND_ANNOTATION: kind,
        "org.opencontainers.image.ref.name": tag,
    });
    desc
}
