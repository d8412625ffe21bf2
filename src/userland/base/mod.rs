//! A pre-pulled base image (`runtime.base = { image = "...", digest = "sha256:..." }`) whose
//! layers go into the appliance image byte for byte, below ours, and whose rootfs must hold
//! every library the server needs.
//!
//! Accepted forms, told apart by content, not by name:
//! - an OCI image layout directory (`skopeo copy … oci:dir`),
//! - an OCI archive (`skopeo copy … oci-archive:base.tar`; also `docker save` from Docker ≥ 25,
//!   which writes an OCI layout beside its `manifest.json`),
//! - a classic `docker save` tarball (`manifest.json`, `<id>/layer.tar`, Docker ≤ 24).
//!
//! The pinned digest is the image **manifest** digest, the one `skopeo inspect` and registries
//! show (`Digest`), or the image **config** digest, which is Docker's image ID (`docker inspect
//! -f '{{.Id}}'`) and the only identity a classic `docker save` tarball carries. Either pins
//! every layer: the config lists each layer's diff_id, the manifest the config's digest.
//! Opening checks the whole chain — manifest bytes, config bytes, every layer's stored digest
//! and diff_id — while unpacking the layers once into a scratch rootfs; the export then copies
//! each blob again and checks its digest a second time as it streams.

mod archive;
mod rootfs;
mod symver;

use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::digest::Sha256Digest;
use crate::layers::{LayerRole, LayerSpec};
use crate::manifest::Compression;
use crate::userland::host;
use archive::Source;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

#[derive(Debug, thiserror::Error)]
pub enum BaseError {
    #[error("Failed to read `{path}`")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{path}` is not a base image: {reason}")]
    NotAnImage { path: PathBuf, reason: String },
    #[error("Base image `{image}` has no `{name}` (missing blob)")]
    MissingFile { image: PathBuf, name: String },
    #[error("`{name}` in base image `{image}` is not valid JSON")]
    Json {
        image: PathBuf,
        name: String,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "Base image `{image}` does not match `runtime.base.digest`: expected {expected}, which is \
         neither the manifest digest nor the config digest of any image in it (found: {found}); \
         hint: copy `Digest` from `skopeo inspect`, or the image ID from `docker inspect -f '{{{{.Id}}}}'`"
    )]
    DigestMismatch {
        image: PathBuf,
        expected: String,
        found: String,
    },
    #[error(
        "Blob `{blob}` in base image `{image}` is corrupt: {what} expected {expected}, got {actual}"
    )]
    BlobMismatch {
        image: PathBuf,
        blob: String,
        what: &'static str,
        expected: String,
        actual: String,
    },
    #[error("Blob `{blob}` in base image `{image}` has the unsupported media type `{media_type}`")]
    UnsupportedMediaType {
        image: PathBuf,
        blob: String,
        media_type: String,
    },
    #[error("Layer `{blob}` of the base image is unreadable: {reason}")]
    Layer { blob: String, reason: String },
    #[error(
        "The base image `{image}` lacks `{library}`, which `{needed_by}` needs; use a base image \
         that ships it (the server is linked against the build host's libraries), or `base = \"host\"`"
    )]
    MissingLibrary {
        image: String,
        library: String,
        needed_by: String,
    },
    #[error("The base image `{image}` lacks the ELF interpreter `{interpreter}` of `{executable}`")]
    MissingInterpreter {
        image: String,
        interpreter: String,
        executable: String,
    },
    #[error(
        "`{elf}` needs version `{version}` of `{library}`, which the base image `{image}` does not \
         define (its newest is `{newest}`): the server was linked against newer libraries than \
         the base has; use a newer base or build the server on an older system"
    )]
    MissingSymbolVersion {
        image: String,
        elf: String,
        library: String,
        version: String,
        newest: String,
    },
    #[error("Failed to check the server's libraries against the base image `{image}`")]
    Resolve {
        image: String,
        #[source]
        source: host::UserlandError,
    },
}

/// One layer of the base image, bottom first, as verified.
#[derive(Debug, Clone)]
pub struct BaseLayer {
    /// Where the blob is inside the base image (`blobs/sha256/<hex>` or `<id>/layer.tar`).
    pub blob: String,
    pub digest: Sha256Digest,
    pub size: u64,
    pub diff_id: Sha256Digest,
    pub compression: Compression,
    /// The base's history entry for this layer, if any.
    pub created_by: String,
}

impl BaseLayer {
    fn digest_label(&self) -> String {
        self.blob.clone()
    }
}

/// A verified base image and its unpacked rootfs (removed on drop).
#[derive(Debug)]
pub struct BaseImage {
    /// The name recorded inside the archive (`RepoTags`, `org.opencontainers.image.ref.name`),
    /// or `base` when it has none: never the host path, so labels do not depend on it.
    pub name: String,
    /// The digest the manifest pinned.
    pub pinned: Sha256Digest,
    pub architecture: String,
    pub env: Vec<String>,
    pub layers: Vec<BaseLayer>,
    source: Source,
    rootfs: tempfile::TempDir,
}

/// The form-specific part of reading: which config and layers the pinned digest selects.
struct Selected {
    name: Option<String>,
    manifest_digest: Option<Sha256Digest>,
    config_blob: String,
    config_digest: Option<Sha256Digest>,
    layers: Vec<LayerRef>,
}

/// A layer as the manifest describes it, before it is read.
struct LayerRef {
    blob: String,
    /// Digest and size from the manifest; a classic `docker save` has neither.
    described: Option<(Sha256Digest, u64)>,
    /// From the media type; `None` means sniff the blob's magic bytes.
    compression: Option<Compression>,
}

impl BaseImage {
    /// Reads and verifies the base image at `path`, unpacking its rootfs to a scratch dir.
    pub fn open(path: &Path, pinned: &Sha256Digest) -> Result<Self, BaseError> {
        let source = Source::open(path)?;
        let selected = if source.contains("index.json") {
            select_oci(&source, pinned)?
        } else if source.contains("manifest.json") {
            select_docker(&source, pinned)?
        } else {
            return Err(BaseError::NotAnImage {
                path: path.to_path_buf(),
                reason: "it has neither `index.json` (OCI layout) nor `manifest.json` \
                         (`docker save`)"
                    .into(),
            });
        };

        let config_bytes = source.read_document(&selected.config_blob)?;
        let config_digest = Sha256Digest::of(&config_bytes);
        if let Some(expected) = selected.config_digest
            && expected != config_digest
        {
            return Err(mismatch(
                &source,
                &selected.config_blob,
                "sha256",
                &expected,
                &config_digest,
            ));
        }
        if selected.manifest_digest.as_ref() != Some(pinned) && &config_digest != pinned {
            return Err(BaseError::DigestMismatch {
                image: path.to_path_buf(),
                expected: pinned.prefixed(),
                found: describe_found(selected.manifest_digest.as_ref(), &config_digest),
            });
        }
        let config: Value = parse(&source, &selected.config_blob, &config_bytes)?;
        let diff_ids: Vec<Sha256Digest> = config["rootfs"]["diff_ids"]
            .as_array()
            .map(|ids| {
                ids.iter()
                    .filter_map(|d| d.as_str())
                    .filter_map(|d| Sha256Digest::parse_prefixed(d).ok())
                    .collect()
            })
            .unwrap_or_default();
        if diff_ids.len() != selected.layers.len() {
            return Err(BaseError::NotAnImage {
                path: path.to_path_buf(),
                reason: format!(
                    "its config `{}` lists {} sha256 diff_ids for {} layers",
                    selected.config_blob,
                    diff_ids.len(),
                    selected.layers.len()
                ),
            });
        }
        let history: Vec<String> = config["history"]
            .as_array()
            .map(|h| {
                h.iter()
                    .filter(|e| !e["empty_layer"].as_bool().unwrap_or(false))
                    .map(|e| e["created_by"].as_str().unwrap_or("").to_string())
                    .collect()
            })
            .unwrap_or_default();
        let env = config["config"]["Env"]
            .as_array()
            .map(|e| {
                e.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();

        let rootfs = tempfile::Builder::new()
            .prefix("appliance-base-")
            .tempdir()
            .map_err(|source| BaseError::Io {
                path: std::env::temp_dir(),
                source,
            })?;
        let mut layers = Vec::new();
        for (i, (layer_ref, diff_id)) in selected.layers.into_iter().zip(diff_ids).enumerate() {
            let LayerRef {
                blob,
                described,
                compression,
            } = layer_ref;
            let (mut reader, size) = source.open_member(&blob)?;
            let compression = match compression {
                Some(c) => c,
                None => {
                    let (sniffed, rest) = sniff(reader, &blob, &source)?;
                    reader = rest;
                    sniffed
                }
            };
            let mut layer = BaseLayer {
                blob: blob.clone(),
                digest: diff_id,
                size,
                diff_id,
                compression,
                created_by: history.get(i).cloned().unwrap_or_default(),
            };
            let (measured, unpack_error) = rootfs::unpack_layer(&layer, reader, rootfs.path())?;
            if let Some((digest, described_size)) = described {
                if measured.digest != digest {
                    return Err(mismatch(
                        &source,
                        &blob,
                        "sha256",
                        &digest,
                        &measured.digest,
                    ));
                }
                if measured.size != described_size {
                    return Err(BaseError::BlobMismatch {
                        image: source.path().to_path_buf(),
                        blob,
                        what: "size",
                        expected: described_size.to_string(),
                        actual: measured.size.to_string(),
                    });
                }
            }
            if let Some(error) = unpack_error {
                return Err(error);
            }
            if measured.diff_id != diff_id {
                return Err(mismatch(
                    &source,
                    &blob,
                    "diff_id",
                    &diff_id,
                    &measured.diff_id,
                ));
            }
            layer.digest = measured.digest;
            layer.size = measured.size;
            layers.push(layer);
        }
        Ok(BaseImage {
            name: selected.name.unwrap_or_else(|| "base".to_string()),
            pinned: *pinned,
            architecture: config["architecture"].as_str().unwrap_or("").to_string(),
            env,
            layers,
            source,
            rootfs,
        })
    }

    /// `name@sha256:…`, for the `appliance.runtime.base` label.
    pub fn label(&self) -> String {
        format!("{}@{}", self.name, self.pinned.prefixed())
    }

    /// Proves that the base rootfs satisfies the ELF closure of `executables` placed at their
    /// image paths (`(host file, image path)`), as the image's loader will see it: every
    /// library found, every symbol version (`GLIBC_2.34`) defined. Returns the
    /// directories found only through the base's `ld.so.conf` (see `host::Closure`).
    pub fn check_closure(
        &self,
        executables: &[(PathBuf, String)],
    ) -> Result<Vec<String>, BaseError> {
        let root = self.rootfs.path();
        let mut image_paths = Vec::new();
        for (host_path, image_path) in executables {
            let rel = image_path.trim_start_matches('/');
            let dest = root.join(rel);
            let io_err = |source| BaseError::Io {
                path: dest.clone(),
                source,
            };
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent).map_err(io_err)?;
            }
            let _ = std::fs::remove_file(&dest);
            std::fs::copy(host_path, &dest).map_err(|source| BaseError::Io {
                path: host_path.clone(),
                source,
            })?;
            image_paths.push(PathBuf::from(format!("/{rel}")));
        }
        let image = self.label();
        match host::HostResolver::new(root).resolve(&image_paths) {
            Ok(closure) => {
                let mut objects: Vec<(String, &Path)> = executables
                    .iter()
                    .zip(&image_paths)
                    .map(|((host_path, _), at)| (at.display().to_string(), host_path.as_path()))
                    .collect();
                for entry in &closure.entries {
                    if let host::ClosureEntry::File {
                        path, host_path, ..
                    } = entry
                    {
                        objects.push((path.clone(), host_path.as_path()));
                    }
                }
                symver::check(&image, &objects)?;
                Ok(closure.library_path)
            }
            Err(host::UserlandError::LibraryNotFound {
                library, needed_by, ..
            }) => Err(BaseError::MissingLibrary {
                image,
                library,
                needed_by,
            }),
            Err(host::UserlandError::MissingInterpreter {
                interpreter,
                executable,
            }) => Err(BaseError::MissingInterpreter {
                image,
                interpreter,
                executable,
            }),
            Err(source) => Err(BaseError::Resolve { image, source }),
        }
    }

    /// The layer's blob, to be copied into the image; the caller checks its digest as it goes.
    pub fn open_layer(&self, layer: &BaseLayer) -> Result<Box<dyn Read + Send>, BaseError> {
        Ok(self.source.open_member(&layer.blob)?.0)
    }

    /// How a base layer is described in the appliance image (history `created_by`).
    pub fn layer_spec(&self, layer: &BaseLayer, mtime: u64) -> LayerSpec {
        let what = if layer.created_by.is_empty() {
            layer.diff_id.prefixed()
        } else {
            layer.created_by.clone()
        };
        LayerSpec {
            role: LayerRole::Base,
            description: format!("base {}: {what}", self.name),
            entries: Vec::new(),
            compression: layer.compression,
            mtime,
        }
    }

    /// The base's Env with ours on top, by key. `PATH` stays the base's (its tools may live
    /// anywhere), with `/usr/local/bin`, where the server is, put first if missing.
    pub fn merge_env(&self, ours: Vec<String>) -> Vec<String> {
        merge_env(&self.env, ours)
    }
}

fn merge_env(base: &[String], ours: Vec<String>) -> Vec<String> {
    let key = |v: &str| v.split_once('=').map_or(v, |(k, _)| k).to_string();
    let mut merged: Vec<String> = base.to_vec();
    for var in ours {
        let k = key(&var);
        match merged.iter_mut().find(|v| key(v) == k) {
            Some(existing) if k == "PATH" => {
                let path = existing["PATH=".len()..].to_string();
                if !path.split(':').any(|d| d == "/usr/local/bin") {
                    *existing = format!("PATH=/usr/local/bin:{path}");
                }
            }
            Some(existing) => *existing = var,
            None => merged.push(var),
        }
    }
    merged
}

fn parse(source: &Source, name: &str, bytes: &[u8]) -> Result<Value, BaseError> {
    serde_json::from_slice(bytes).map_err(|e| BaseError::Json {
        image: source.path().to_path_buf(),
        name: name.to_string(),
        source: e,
    })
}

fn mismatch(
    source: &Source,
    blob: &str,
    what: &'static str,
    expected: &Sha256Digest,
    actual: &Sha256Digest,
) -> BaseError {
    BaseError::BlobMismatch {
        image: source.path().to_path_buf(),
        blob: blob.to_string(),
        what,
        expected: expected.prefixed(),
        actual: actual.prefixed(),
    }
}

fn describe_found(manifest: Option<&Sha256Digest>, config: &Sha256Digest) -> String {
    match manifest {
        Some(m) => format!("manifest {}, config {}", m.prefixed(), config.prefixed()),
        None => format!(
            "config {} (a classic `docker save` has no manifest digest)",
            config.prefixed()
        ),
    }
}

fn blob_name(
    source: &Source,
    digest: &str,
    what: &str,
) -> Result<(String, Sha256Digest), BaseError> {
    let parsed = Sha256Digest::parse_prefixed(digest).map_err(|m| BaseError::NotAnImage {
        path: source.path().to_path_buf(),
        reason: format!(
            "{what} has an unsupported digest `{digest}` (only sha256 is supported): {m}"
        ),
    })?;
    Ok((format!("blobs/sha256/{}", parsed.hex()), parsed))
}

/// Reads a manifest or index blob and checks it against its descriptor's digest.
fn read_verified(
    source: &Source,
    digest: &str,
    what: &str,
) -> Result<(String, Sha256Digest, Value), BaseError> {
    let (name, expected) = blob_name(source, digest, what)?;
    let bytes = source.read_document(&name)?;
    let actual = Sha256Digest::of(&bytes);
    if actual != expected {
        return Err(mismatch(source, &name, "sha256", &expected, &actual));
    }
    let value = parse(source, &name, &bytes)?;
    Ok((name, expected, value))
}

/// Chooses, in an OCI layout, the image manifest whose digest (or whose config's digest) is
/// `pinned`; manifests nested one level down in an image index are candidates too.
fn select_oci(source: &Source, pinned: &Sha256Digest) -> Result<Selected, BaseError> {
    let index_bytes = source.read_document("index.json")?;
    let index = parse(source, "index.json", &index_bytes)?;
    let mut candidates: Vec<(String, Option<String>)> = Vec::new();
    for entry in index["manifests"].as_array().into_iter().flatten() {
        let digest = entry["digest"].as_str().unwrap_or_default().to_string();
        let name = entry["annotations"]["io.containerd.image.name"]
            .as_str()
            .or(entry["annotations"]["org.opencontainers.image.ref.name"].as_str())
            .map(str::to_string);
        match entry["mediaType"].as_str().unwrap_or_default() {
            OCI_MANIFEST | DOCKER_MANIFEST => candidates.push((digest, name)),
            OCI_INDEX | DOCKER_LIST => {
                let (_, _, nested) = read_verified(source, &digest, "an index entry")?;
                for child in nested["manifests"].as_array().into_iter().flatten() {
                    if let Some(d) = child["digest"].as_str() {
                        candidates.push((d.to_string(), name.clone()));
                    }
                }
            }
            _ => {}
        }
    }
    let mut found = Vec::new();
    let chosen = match candidates.iter().find(|(d, _)| *d == pinned.prefixed()) {
        Some(c) => Some((c.clone(), read_verified(source, &c.0, "the manifest")?)),
        None => {
            let mut hit = None;
            for c in &candidates {
                let read = read_verified(source, &c.0, "the manifest")?;
                let config = read.2["config"]["digest"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                found.push(format!("manifest {}, config {config}", c.0));
                if config == pinned.prefixed() {
                    hit = Some((c.clone(), read));
                    break;
                }
            }
            hit
        }
    };
    let Some(((_, name), (manifest_blob, manifest_digest, manifest))) = chosen else {
        return Err(not_pinned(source, pinned, &found, "no image manifests", ""));
    };
    match manifest["mediaType"].as_str() {
        None | Some(OCI_MANIFEST) | Some(DOCKER_MANIFEST) => {}
        Some(other) => {
            return Err(BaseError::UnsupportedMediaType {
                image: source.path().to_path_buf(),
                blob: manifest_blob,
                media_type: other.to_string(),
            });
        }
    }
    let config_media = manifest["config"]["mediaType"].as_str().unwrap_or_default();
    let (config_blob, config_digest) = blob_name(
        source,
        manifest["config"]["digest"].as_str().unwrap_or_default(),
        "the config",
    )?;
    if !matches!(
        config_media,
        "application/vnd.oci.image.config.v1+json"
            | "application/vnd.docker.container.image.v1+json"
    ) {
        return Err(BaseError::UnsupportedMediaType {
            image: source.path().to_path_buf(),
            blob: config_blob,
            media_type: config_media.to_string(),
        });
    }
    let mut layers = Vec::new();
    for layer in manifest["layers"].as_array().into_iter().flatten() {
        let (blob, digest) = blob_name(
            source,
            layer["digest"].as_str().unwrap_or_default(),
            "a layer",
        )?;
        let media_type = layer["mediaType"].as_str().unwrap_or_default();
        let compression = match media_type {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.docker.image.rootfs.diff.tar" => Compression::None,
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip" => Compression::Gzip,
            "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.docker.image.rootfs.diff.tar.zstd" => Compression::Zstd,
            other => {
                return Err(BaseError::UnsupportedMediaType {
                    image: source.path().to_path_buf(),
                    blob,
                    media_type: other.to_string(),
                });
            }
        };
        let size = layer["size"].as_u64().unwrap_or(0);
        layers.push(LayerRef {
            blob: present(source, blob)?,
            described: Some((digest, size)),
            compression: Some(compression),
        });
    }
    Ok(Selected {
        name,
        manifest_digest: Some(manifest_digest),
        config_blob,
        config_digest: Some(config_digest),
        layers,
    })
}

/// Chooses, in a classic `docker save` tarball, the image whose config digest is `pinned`.
fn select_docker(source: &Source, pinned: &Sha256Digest) -> Result<Selected, BaseError> {
    let bytes = source.read_document("manifest.json")?;
    let entries = parse(source, "manifest.json", &bytes)?;
    let mut found = Vec::new();
    for entry in entries.as_array().into_iter().flatten() {
        let config_blob = entry["Config"].as_str().unwrap_or_default().to_string();
        let digest = Sha256Digest::of(&source.read_document(&config_blob)?);
        found.push(format!("config {}", digest.prefixed()));
        if &digest != pinned {
            continue;
        }
        let mut layers = Vec::new();
        for layer in entry["Layers"].as_array().into_iter().flatten() {
            let blob = layer.as_str().unwrap_or_default().to_string();
            layers.push(LayerRef {
                blob: present(source, blob)?,
                described: None,
                compression: None,
            });
        }
        return Ok(Selected {
            name: entry["RepoTags"][0].as_str().map(str::to_string),
            manifest_digest: None,
            config_blob,
            config_digest: Some(digest),
            layers,
        });
    }
    Err(not_pinned(
        source,
        pinned,
        &found,
        "no images",
        " (a classic `docker save` has no manifest digest: pin the image ID)",
    ))
}

/// `blob` back if the image holds it: a layer listed but absent is a broken image, named here
/// rather than halfway through unpacking.
fn present(source: &Source, blob: String) -> Result<String, BaseError> {
    if source.contains(&blob) {
        Ok(blob)
    } else {
        Err(BaseError::MissingFile {
            image: source.path().to_path_buf(),
            name: blob,
        })
    }
}

/// No image in `source` matches `pinned`: the error lists the digests `found` (`hint` after
/// them), or says `none` when there were none.
fn not_pinned(
    source: &Source,
    pinned: &Sha256Digest,
    found: &[String],
    none: &str,
    hint: &str,
) -> BaseError {
    BaseError::DigestMismatch {
        image: source.path().to_path_buf(),
        expected: pinned.prefixed(),
        found: if found.is_empty() {
            none.to_string()
        } else {
            format!("{}{hint}", found.join("; "))
        },
    }
}

/// Compression of a layer that has no media type, from its magic bytes (as `docker load` does).
fn sniff(
    mut reader: Box<dyn Read + Send>,
    blob: &str,
    source: &Source,
) -> Result<(Compression, Box<dyn Read + Send>), BaseError> {
    let mut magic = Vec::with_capacity(4);
    (&mut reader)
        .take(4)
        .read_to_end(&mut magic)
        .map_err(|e| BaseError::Io {
            path: source.path().join(blob),
            source: e,
        })?;
    let compression = Compression::from_magic(&magic);
    let rest: Box<dyn Read + Send> = Box::new(std::io::Cursor::new(magic).chain(reader));
    Ok((compression, rest))
}

#[cfg(test)]
mod tests;
