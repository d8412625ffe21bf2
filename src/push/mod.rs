//! `appliance push`: the tarball's image, then its cosign signature and attestations, into a
//! site's registry, by the OCI distribution API.
//!
//! The tarball is read in place ([`crate::archive`]): each blob streams from its offset in the
//! file to the registry, so memory stays flat for any weight size. Every blob is checked with
//! `HEAD` first and skipped when the repository has it, which is also how an interrupted push
//! resumes. The manifest goes up by tag and by digest, byte for byte the tarball's, so the
//! digest an auditor verified is the digest the cluster pulls; the signature and attestation
//! manifests go up under cosign's tags (`sha256-<hex>.sig`, `.att`) where `cosign verify` and
//! admission controllers look for them.

pub mod auth;
pub mod reference;
pub mod registry;

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::archive::{ArchiveError, Entries, invalid};
use crate::digest::Sha256Digest;
use crate::progress::{BuildLog, Progress};
use crate::sign::cosign;
pub use auth::Credentials;
pub use reference::Target;
use registry::{Connection, Mount, Registry};

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error("{registry}: failed while {action}")]
    Http {
        registry: String,
        action: String,
        #[source]
        source: Box<ureq::Error>,
    },
    #[error("{registry}: {action} failed: {message}")]
    Registry {
        registry: String,
        action: String,
        message: String,
    },
    #[error(
        "{registry} asks for credentials: give `--creds USER[:PASS]`, or sign in with \
         `docker login` / `podman login` (or set `REGISTRY_AUTH_FILE`)"
    )]
    NeedsCredentials { registry: String },
    #[error("{registry} refused {from} (wrong user name or password, or no push access)")]
    Unauthorized { registry: String, from: String },
    #[error("{0}")]
    Credentials(String),
    #[error("TLS setup: `{path}` {message}")]
    Tls { path: PathBuf, message: String },
}

/// How to push.
#[derive(Debug, Clone, Default)]
pub struct PushSettings {
    pub connection: Connection,
    pub credentials: Option<Credentials>,
    /// Repositories of the same registry to mount blobs from before uploading them.
    pub mount_from: Vec<String>,
    /// Upload in chunks of this many bytes instead of one request per blob.
    pub chunk_size: Option<u64>,
}

/// What a push did, for the summary and `--json`.
#[derive(Debug, Serialize)]
pub struct PushReport {
    /// `registry/repository:tag`.
    pub reference: String,
    /// The image manifest digest (the tarball's).
    pub digest: String,
    /// `registry/repository@digest`: what a Deployment should name.
    pub pinned: String,
    pub blobs: Vec<BlobOutcome>,
    /// Bytes sent as blob data (0 when the registry had everything).
    pub uploaded_bytes: u64,
    /// cosign's signature tag, when the tarball is signed.
    pub signature_tag: Option<String>,
    /// cosign's attestation tag, when the tarball carries attestations.
    pub attestation_tag: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct BlobOutcome {
    pub digest: String,
    pub size: u64,
    /// `uploaded`, `present` (the repository had it) or `mounted` (linked from `from`).
    pub outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
}

/// A manifest to put and the blobs it needs.
struct Upload {
    digest: Sha256Digest,
    media_type: String,
    bytes: Vec<u8>,
    /// Tags to put it under besides its digest.
    tags: Vec<String>,
    blobs: Vec<Sha256Digest>,
}

/// Pushes `tarball` to `target`. The image tag is `target`'s, else the tarball's own.
pub fn push(
    tarball: &Path,
    target: &Target,
    settings: &PushSettings,
    log: &dyn BuildLog,
    progress: &dyn Progress,
) -> Result<PushReport, PushError> {
    let entries = Entries::read(tarball)?;
    if entries.find(crate::delta::PLAN_NAME).is_some() {
        return Err(invalid(
            tarball,
            "is a delta bundle: rebuild the full tarball with `appliance assemble OLD DELTA -o FULL` and push that",
        )
        .into());
    }
    let (image, tag) = image_manifest(&entries, target)?;
    let mut uploads = vec![Upload {
        tags: vec![tag.clone()],
        ..image
    }];
    uploads.extend(signature_manifests(&entries, &uploads[0].digest)?);

    let registry = Registry::connect(
        &target.registry,
        &target.repository,
        settings.credentials.clone(),
        settings.mount_from.clone(),
        &settings.connection,
    )?;
    log.step(&format!(
        "Pushing {} to {}",
        tarball.display(),
        target.repository_reference()
    ));

    let mut seen = BTreeSet::new();
    let mut blobs = Vec::new();
    let mut missing = Vec::new();
    for digest in uploads.iter().flat_map(|u| &u.blobs) {
        if !seen.insert(*digest) {
            continue;
        }
        let span = entries.blob(digest).ok_or_else(|| {
            invalid(
                tarball,
                format!("names blob {} but does not hold it", digest.prefixed()),
            )
        })?;
        if registry.has_blob(digest)? {
            blobs.push(outcome(digest, span.size, "present", None));
        } else {
            missing.push((*digest, span.clone()));
        }
    }
    let total: u64 = missing.iter().map(|(_, span)| span.size).sum();
    let task = progress.task("Uploading", total);
    let mut uploaded_bytes = 0;
    'blobs: for (digest, span) in missing {
        for from in &settings.mount_from {
            if registry.mount(&digest, from)? == Mount::Mounted {
                task.advance(span.size);
                blobs.push(outcome(&digest, span.size, "mounted", Some(from.clone())));
                continue 'blobs;
            }
        }
        let reader = Counted {
            inner: entries.open(&span)?,
            task: task.as_ref(),
        };
        registry.upload(&digest, span.size, reader, settings.chunk_size)?;
        uploaded_bytes += span.size;
        blobs.push(outcome(&digest, span.size, "uploaded", None));
    }
    task.finish();

    for upload in &uploads {
        for tag in &upload.tags {
            registry.put_manifest(tag, &upload.media_type, &upload.bytes)?;
        }
        registry.put_manifest(&upload.digest.prefixed(), &upload.media_type, &upload.bytes)?;
    }
    let digest = uploads[0].digest.prefixed();
    let tag_with = |suffix: &str| {
        uploads
            .iter()
            .flat_map(|u| &u.tags)
            .find(|t| t.ends_with(suffix))
            .cloned()
    };
    Ok(PushReport {
        reference: format!("{}:{tag}", target.repository_reference()),
        pinned: format!("{}@{digest}", target.repository_reference()),
        digest,
        blobs,
        uploaded_bytes,
        signature_tag: tag_with(".sig"),
        attestation_tag: tag_with(".att"),
    })
}

fn outcome(
    digest: &Sha256Digest,
    size: u64,
    outcome: &'static str,
    from: Option<String>,
) -> BlobOutcome {
    BlobOutcome {
        digest: digest.prefixed(),
        size,
        outcome,
        from,
    }
}

/// Counts bytes into the progress bar as the upload reads them.
struct Counted<'a, R> {
    inner: R,
    task: &'a dyn crate::progress::ProgressTask,
}

impl<R: Read> Read for Counted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.task.advance(n as u64);
        Ok(n)
    }
}

fn json(entries: &Entries, bytes: &[u8], what: &str) -> Result<serde_json::Value, PushError> {
    serde_json::from_slice(bytes)
        .map_err(|e| invalid(&entries.path, format!("{what} is not JSON: {e}")).into())
}

/// Reads the manifest blob `digest` and lists the blobs it needs (config first).
fn manifest_upload(entries: &Entries, digest: &Sha256Digest) -> Result<Upload, PushError> {
    let name = crate::image::blob_path(digest);
    let bytes = entries.document(
        &name,
        &format!("names manifest {} but does not hold it", digest.prefixed()),
    )?;
    if Sha256Digest::of(&bytes) != *digest {
        return Err(invalid(&entries.path, format!("`{name}` does not match its digest")).into());
    }
    let manifest = json(entries, &bytes, &format!("`{name}`"))?;
    let descriptors = std::iter::once(&manifest["config"])
        .chain(manifest["layers"].as_array().into_iter().flatten());
    let mut blobs = Vec::new();
    for descriptor in descriptors {
        let digest = descriptor["digest"]
            .as_str()
            .and_then(|d| Sha256Digest::parse_prefixed(d).ok())
            .ok_or_else(|| {
                invalid(
                    &entries.path,
                    format!("`{name}` has a descriptor without a sha256 digest"),
                )
            })?;
        blobs.push(digest);
    }
    let media_type = manifest["mediaType"]
        .as_str()
        .unwrap_or(cosign::MANIFEST_MEDIA_TYPE)
        .to_string();
    Ok(Upload {
        digest: *digest,
        media_type,
        bytes,
        tags: Vec::new(),
        blobs,
    })
}

/// The image manifest `index.json` names, and the tag to push it as.
fn image_manifest(entries: &Entries, target: &Target) -> Result<(Upload, String), PushError> {
    let bytes = entries.document(
        "index.json",
        "has no `index.json`: not an OCI image tarball",
    )?;
    let index = json(entries, &bytes, "`index.json`")?;
    let entry = &index["manifests"][0];
    let digest = entry["digest"]
        .as_str()
        .and_then(|d| Sha256Digest::parse_prefixed(d).ok())
        .ok_or_else(|| invalid(&entries.path, "`index.json` names no image manifest"))?;
    let own = entry["annotations"]["org.opencontainers.image.ref.name"]
        .as_str()
        .and_then(reference::tag_of);
    let tag = target
        .tag
        .clone()
        .or(own.map(str::to_string))
        .ok_or_else(|| {
            invalid(
                &entries.path,
                "records no tag for its image; give one: REGISTRY/REPO:TAG",
            )
        })?;
    Ok((manifest_upload(entries, &digest)?, tag))
}

/// cosign's signature and attestation manifests from `signatures/index.json`, when signed.
fn signature_manifests(entries: &Entries, image: &Sha256Digest) -> Result<Vec<Upload>, PushError> {
    if entries.find(cosign::SIGNATURES_INDEX).is_none() {
        return Ok(Vec::new());
    }
    let bytes = entries.document(cosign::SIGNATURES_INDEX, "")?;
    let index = json(entries, &bytes, &format!("`{}`", cosign::SIGNATURES_INDEX))?;
    let expected = format!("sha256-{}", image.hex());
    let mut uploads = Vec::new();
    for entry in index["manifests"].as_array().into_iter().flatten() {
        let kind = entry["annotations"][cosign::KIND_ANNOTATION].as_str();
        let suffix = match kind {
            Some(cosign::KIND_SIGS) => "sig",
            Some(cosign::KIND_ATTS) => "att",
            _ => continue,
        };
        let digest = entry["digest"]
            .as_str()
            .and_then(|d| Sha256Digest::parse_prefixed(d).ok())
            .ok_or_else(|| {
                invalid(
                    &entries.path,
                    format!(
                        "`{}` has an entry without a sha256 digest",
                        cosign::SIGNATURES_INDEX
                    ),
                )
            })?;
        let mut upload = manifest_upload(entries, &digest)?;
        // The tag is derived, not read: it must name the image being pushed.
        upload.tags = vec![format!("{expected}.{suffix}")];
        uploads.push(upload);
    }
    Ok(uploads)
}
