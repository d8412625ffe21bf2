//! The signing part of `appliance build`: loads the key before any expensive work, gathers
//! what the build measured into the attestations' facts, signs the finished manifest and its
//! attestations, and writes the detached sidecar files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::{Assembled, BuildSettings, Evaluated, Evaluation, Fetched, Planned, Resolved};
use super::{Session, Written};
use crate::attest::{self, BuildFacts, FileFact};
use crate::fetch::ModelOrigin;
use crate::layers::plan;
use crate::layers::{Layer, LayerRole};
use crate::sign::cosign::{self, Attestation, SignedArtifacts, SignedImage};
use crate::sign::{Secret, Signer, keys};
use crate::userland::UserlandFile;

/// How the key password reaches the build: resolved by the CLI, never read from env here.
#[derive(Debug, Clone, Default)]
pub struct KeyPassword {
    /// From `APPLIANCE_KEY_PASSWORD` or `COSIGN_PASSWORD`.
    pub value: Option<Secret>,
    /// Whether a terminal prompt may ask for it.
    pub can_prompt: bool,
}

/// Loads and decrypts the signing key; a wrong password fails here, before anything is written.
pub fn load_signer(key: &Path, password: &KeyPassword) -> Result<Signer> {
    let text = std::fs::read_to_string(key)
        .with_context(|| format!("Failed to read signing key `{}`", key.display()))?;
    let secret = match (&password.value, password.can_prompt) {
        (Some(secret), _) => secret.clone(),
        (None, true) => Secret::new(
            rpassword::prompt_password(format!("Password for `{}`: ", key.display()))
                .context("Failed to read the key password from the terminal")?,
        ),
        (None, false) => bail!(
            "Signing key `{}` needs a password: set `APPLIANCE_KEY_PASSWORD` (or `COSIGN_PASSWORD`), or run in a terminal",
            key.display()
        ),
    };
    let key = keys::decrypt(&key.display().to_string(), &text, &secret)?;
    Ok(Signer::new(key))
}

/// The build's signing step, for manifests with `[signing]`: the signature entries go into the
/// tarball before it is finished; the sidecars come back staged, to be committed with it.
pub(super) fn sign(
    session: &Session,
    resolved: &Resolved,
    fetched: &Fetched,
    planned: &Planned,
    written: &mut Written,
    evaluated: &Evaluated,
    assembled: &Assembled,
) -> Result<Option<StagedSidecars>> {
    let Some(signer) = &resolved.signer else {
        return Ok(None);
    };
    let docs = &assembled.docs;
    let facts = build_facts(
        session.settings,
        resolved,
        fetched,
        planned,
        written,
        evaluated,
        assembled,
    )?;
    let reference = &resolved.manifest.image.reference;
    let artifacts = sign_image(signer, &facts, reference.name(), docs.manifest.size())?;
    written.writer.add_dir("signatures")?;
    for (path, bytes) in &artifacts.entries {
        written.writer.add_file(path, bytes)?;
    }
    let sidecars = stage_sidecars(sidecar_files(&resolved.output, &artifacts))?;
    session.log.step(&format!(
        "Signed {} with key sha256:{}",
        docs.manifest.digest,
        artifacts.fingerprint.hex()
    ));
    Ok(Some(sidecars))
}

/// What the SBOM and the provenance state: the digests measured as the layers were written,
/// never the host files', so the attestations describe the bytes the image carries.
pub(super) fn build_facts(
    settings: &BuildSettings,
    resolved: &Resolved,
    fetched: &Fetched,
    planned: &Planned,
    written: &Written,
    evaluated: &Evaluated,
    assembled: &Assembled,
) -> Result<BuildFacts> {
    let Resolved {
        manifest, server, ..
    } = resolved;
    let Fetched {
        model,
        tokenizer,
        quantization,
        ..
    } = fetched;
    let measured = &written.measured;
    let hub = |origin: &ModelOrigin| match origin {
        ModelOrigin::Hf { repo, revision } => Some((repo.clone(), revision.clone())),
        _ => None,
    };
    Ok(BuildFacts {
        reference: manifest.image.reference.full().to_string(),
        manifest_digest: assembled.docs.manifest.digest,
        created: assembled.run.created.clone(),
        builder_version: env!("CARGO_PKG_VERSION").to_string(),
        model: attest::ModelFacts {
            name: manifest.server.served_model_name.clone(),
            dir: planned.model_dir.clone(),
            source: assembled.model.source.clone(),
            revision: assembled.model.revision.clone(),
            hub: hub(&model.origin),
            files: measured
                .iter()
                .map(|(path, f)| FileFact {
                    path: path.clone(),
                    sha256: f.sha256,
                    size: f.size,
                    package: None,
                })
                .collect(),
            format: model.format.clone(),
        },
        quantization: quantization.as_ref().map(|q| attest::QuantizationFacts {
            file_type: q.file_type.name().to_string(),
            converter: format!(
                "appliance {} (appliance-gguf: llama.cpp's convert_hf_to_gguf + llama-quantize reference quantizers, no importance matrix)",
                env!("CARGO_PKG_VERSION")
            ),
            output: crate::quantize::GGUF_NAME.to_string(),
            tensor_types: q.tensor_types.clone(),
            sources: q
                .sources
                .iter()
                .map(|(path, sha256, size)| FileFact {
                    path: path.clone(),
                    sha256: *sha256,
                    size: *size,
                    package: None,
                })
                .collect(),
        }),
        tokenizer: tokenizer.as_ref().map(|t| attest::TokenizerFacts {
            source: t.origin.label(),
            hub: hub(&t.origin),
            files: t
                .files
                .iter()
                .filter_map(|f| {
                    let m = measured.get(&f.rel_path)?;
                    Some(FileFact {
                        path: f.rel_path.clone(),
                        sha256: m.sha256,
                        size: m.size,
                        package: None,
                    })
                })
                .collect(),
        }),
        server: attest::ServerFacts {
            path: plan::SERVER_PATH.to_string(),
            version: server.info.version.clone(),
            sha256: server.sha256,
            size: server.size,
            features: server.info.features.clone(),
            target: server.info.target.clone(),
            crates: server.info.crates.clone(),
            source_revision: server.info.source_revision.clone(),
        },
        userland: userland_facts(&written.layers, &planned.userland.files),
        base: planned.userland.base.as_ref().map(|base| attest::BaseFacts {
            name: base.name.clone(),
            pinned: base.pinned,
            layers: base
                .layers
                .iter()
                .map(|l| (l.digest, l.diff_id, l.size))
                .collect(),
        }),
        evaluation: evaluation_facts(manifest.eval.cases.len(), evaluated),
        manifest: read_document(&settings.manifest)?,
        // The lock beside the manifest (`manifest.toml` → `manifest.lock`), when there is one;
        // as this build is about to rewrite it, when its `path` sections moved.
        lock: match &written.lock_update {
            Some((lock, path)) => Some(attest::NamedDocument {
                name: path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                text: lock.render(),
            }),
            None => Some(settings.manifest.with_extension("lock"))
                .filter(|p| p.is_file())
                .map(|p| read_document(&p))
                .transpose()?,
        },
    })
}

/// The gate as the provenance records it; its results only when the predicate was built (a
/// signed build whose gate ran).
fn evaluation_facts(cases: usize, evaluated: &Evaluated) -> Option<attest::EvaluationFacts> {
    match &evaluated.evaluation {
        Evaluation::NoCases => None,
        Evaluation::Skipped => Some(attest::EvaluationFacts::Skipped { cases }),
        Evaluation::Ran(outcome) => {
            evaluated
                .test_result
                .clone()
                .map(|predicate| attest::EvaluationFacts::Ran {
                    summary: serde_json::json!({
                        "cases": outcome.results.len(),
                        "passed": outcome.passed(),
                        "minPassRate": outcome.min_pass_rate,
                        "device": outcome.device,
                    }),
                    predicate,
                })
        }
    }
}

/// A manifest or lock as an external parameter of the provenance: its file name and text.
fn read_document(path: &Path) -> Result<attest::NamedDocument> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("Failed to read `{}`", path.display()))?;
    Ok(attest::NamedDocument {
        name: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        text,
    })
}

/// Digests of the userland files as measured while their layer was written, with packages.
pub fn userland_facts(layers: &[Layer], files: &[UserlandFile]) -> Vec<FileFact> {
    let packages: BTreeMap<&str, &Option<String>> = files
        .iter()
        .map(|f| (f.path.trim_start_matches('/'), &f.package))
        .collect();
    layers
        .iter()
        .filter(|l| l.spec.role == LayerRole::Userland)
        .flat_map(|l| &l.sums.files)
        .map(|f| FileFact {
            path: f.path.trim_start_matches('/').to_string(),
            sha256: f.sha256,
            size: f.size,
            package: packages
                .get(f.path.trim_start_matches('/'))
                .and_then(|p| (*p).clone()),
        })
        .collect()
}

/// Signs the manifest digest and the attestations: SBOM, provenance and, when the gate ran,
/// its test results.
pub fn sign_image(
    signer: &Signer,
    facts: &BuildFacts,
    repository: &str,
    manifest_size: u64,
) -> Result<SignedArtifacts> {
    let sbom = attest::statement(
        facts,
        attest::sbom::PREDICATE_TYPE,
        attest::sbom::bom(facts),
    )?;
    let provenance = attest::statement(
        facts,
        attest::provenance::PREDICATE_TYPE,
        attest::provenance::predicate(facts),
    )?;
    let image = SignedImage {
        manifest_digest: facts.manifest_digest,
        manifest_size,
        repository,
        full_reference: &facts.reference,
    };
    let mut attestations = vec![
        Attestation {
            predicate_type: attest::sbom::PREDICATE_TYPE.to_string(),
            statement: sbom,
        },
        Attestation {
            predicate_type: attest::provenance::PREDICATE_TYPE.to_string(),
            statement: provenance,
        },
    ];
    if let Some(attest::EvaluationFacts::Ran { predicate, .. }) = &facts.evaluation {
        attestations.push(Attestation {
            predicate_type: crate::eval::PREDICATE_TYPE.to_string(),
            statement: attest::statement(facts, crate::eval::PREDICATE_TYPE, predicate.clone())?,
        });
    }
    Ok(cosign::sign(signer, &image, &attestations)?)
}

/// The detached files written beside `<output>`: `.payload.json`, `.sig` (base64 DER, as
/// `cosign sign-blob` writes it), `.pub.sha256` (the signer's key fingerprint).
pub fn sidecar_files(output: &Path, artifacts: &SignedArtifacts) -> Vec<(PathBuf, Vec<u8>)> {
    use base64::Engine as _;
    let with = |suffix: &str| sidecar_path(output, suffix);
    vec![
        (with(".payload.json"), artifacts.payload.clone()),
        (
            with(".sig"),
            base64::engine::general_purpose::STANDARD
                .encode(&artifacts.signature)
                .into_bytes(),
        ),
        (
            with(".pub.sha256"),
            format!("{}\n", artifacts.fingerprint.hex()).into_bytes(),
        ),
    ]
}

const SIDECAR_SUFFIXES: [&str; 3] = [".payload.json", ".sig", ".pub.sha256"];

fn sidecar_path(output: &Path, suffix: &str) -> PathBuf {
    debug_assert!(SIDECAR_SUFFIXES.contains(&suffix));
    let mut name = output.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    output.with_file_name(name)
}

/// Removes the sidecars an earlier signed build left beside `output`: after an unsigned build
/// replaces the tarball they would describe another image, and an auditor could be misled.
pub fn remove_stale_sidecars(output: &Path) -> Result<()> {
    for suffix in SIDECAR_SUFFIXES {
        let path = sidecar_path(output, suffix);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "Failed to remove the stale signature file `{}`",
                        path.display()
                    )
                });
            }
        }
    }
    Ok(())
}

/// Sidecars written to temporary files beside their targets, renamed into place only once the
/// tarball is (dropping them removes the temporary files).
pub struct StagedSidecars(Vec<(tempfile::NamedTempFile, PathBuf)>);

pub fn stage_sidecars(files: Vec<(PathBuf, Vec<u8>)>) -> Result<StagedSidecars> {
    let mut staged = StagedSidecars(Vec::new());
    for (path, bytes) in files {
        let tmp = crate::atomic_file::stage(&path, &bytes, 0o644)
            .with_context(|| format!("Failed to write `{}`", path.display()))?;
        staged.0.push((tmp, path));
    }
    Ok(staged)
}

impl StagedSidecars {
    pub fn commit(self) -> Result<()> {
        for (tmp, path) in self.0 {
            tmp.persist(&path)
                .map_err(|e| e.error)
                .with_context(|| format!("Failed to write `{}`", path.display()))?;
        }
        Ok(())
    }
}
