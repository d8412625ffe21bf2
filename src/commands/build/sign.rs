//! The signing part of `appliance build`: loads the key before any expensive work, signs the
//! finished manifest and its attestations, and writes the detached sidecar files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::attest::{self, BuildFacts, FileFact};
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
