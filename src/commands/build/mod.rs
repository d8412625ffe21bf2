//! `appliance build`: runs the pipeline `manifest → fetch → layers → image → export`.
//!
//! This file only orchestrates: each stage lives in its own module and knows nothing of the
//! others. What it adds is the wiring: which facts flow into labels, and the order of passes.

pub mod sign;

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};

use super::lock::{LockPolicy, fetch_hub, has_hub_source};
use crate::attest;
use crate::digest::Sha256Digest;
use crate::eval;
use crate::export::{self, ImageWriter};
use crate::fetch::hub::HubFetcher;
use crate::fetch::{self, Fetcher, ModelOrigin};
use crate::image::{self, Healthcheck, RunConfig};
use crate::layers::cache::DigestCache;
use crate::layers::plan::{self, Account, PlanInput, PlannedFile};
use crate::layers::{FileSum, Layer, LayerRole};
use crate::manifest::{Base, Device, Manifest};
use crate::progress::{BuildLog, Progress};
use crate::server_binary;
use crate::summary::{self, ImageSummary, LayerSummary, ModelFileSummary, ModelSummary, labels};
use crate::userland;

/// Everything the build needs besides the manifest, resolved by the CLI from args and env.
#[derive(Debug, Clone)]
pub struct BuildSettings {
    pub manifest: PathBuf,
    /// `--output`, already resolved against the working directory.
    pub output: Option<PathBuf>,
    /// Where generated (synthetic) models are cached.
    pub cache_dir: PathBuf,
    /// Directory of the running `appliance`, where `appliance-server` is looked for by default.
    pub exe_dir: PathBuf,
    pub source_date_epoch: Option<String>,
    /// `--verify-cache`: rehash cached inputs instead of trusting their recorded stamps.
    pub verify_cache: bool,
    /// The signing key's password, for manifests with `[signing]`.
    pub key_password: sign::KeyPassword,
    /// Hub endpoint, cache, token and `--offline`, for `[model] hf` sources.
    pub hub: crate::fetch::hub::HubSettings,
    /// `--locked`: refuse any drift from `<manifest>.lock`.
    pub locked: bool,
    /// `--skip-eval`: package without running the `[[eval]]` gate (recorded in the provenance).
    pub skip_eval: bool,
}

/// What a build produced.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BuildOutcome {
    pub output: PathBuf,
    pub tarball_size: u64,
    pub image: ImageSummary,
    /// With `--delta-from`: the delta written beside the tarball.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delta: Option<crate::delta::DeltaSummary>,
}

pub fn build(
    settings: &BuildSettings,
    progress: &dyn Progress,
    log: &dyn BuildLog,
) -> Result<BuildOutcome> {
    let manifest = Manifest::load(&settings.manifest, settings.source_date_epoch.as_deref())?;
    let reference = &manifest.image.reference;
    let output = match (&settings.output, &manifest.image.output) {
        (Some(path), _) | (None, Some(path)) => path.clone(),
        (None, None) => PathBuf::from("dist").join(format!(
            "{}-{}.tar",
            reference.short_name(),
            reference.tag()
        )),
    };
    let output = std::path::absolute(&output)
        .with_context(|| format!("Invalid output path `{}`", output.display()))?;
    export::check_output(&output)?;
    // The key is decrypted first: a wrong password must fail before hours of hashing.
    let signer = match &manifest.signing {
        Some(signing) => Some(sign::load_signer(&signing.key, &settings.key_password)?),
        None => None,
    };

    let server_path = server_binary::locate(manifest.server.binary.as_deref(), &settings.exe_dir)?;
    let server = server_binary::inspect(&server_path)?;
    if manifest.server.device == Device::Cuda && !server.info.has_feature("cuda") {
        bail!(
            "`server.device = \"cuda\"` but `{}` was built without the `cuda` feature (features: [{}]); \
             build it with `cargo build --release -p appliance-server --features cuda` and set `server.binary`",
            server.path.display(),
            server.info.features.join(", ")
        );
    }
    if signer.is_some() && server.info.crates.is_empty() {
        log.step(&format!(
            "Warning: `{}` records no crate list (its build could not run `cargo tree`); the SBOM \
             will list the server without its dependencies",
            server.path.display()
        ));
    }
    let launcher = if manifest.server.device == Device::Cuda {
        Some(cuda_launcher(&manifest, &server)?)
    } else {
        None
    };
    log.step(&format!(
        "Server: {} {} ({})",
        server.path.display(),
        server.info.version,
        if server.info.features.is_empty() {
            "cpu".to_string()
        } else {
            server.info.features.join(", ")
        }
    ));

    // Hub sources (the model, its tokenizer) go through the lock policy; their digests,
    // verified on download (or when re-checked in the cache), are checked again against what
    // gets packaged below.
    let hub_fetch = if has_hub_source(&manifest) {
        let policy = if settings.locked {
            LockPolicy::Locked
        } else {
            LockPolicy::Update
        };
        let hub = HubFetcher::new(settings.hub.clone());
        Some(fetch_hub(
            &manifest,
            &settings.manifest,
            &hub,
            policy,
            progress,
            log,
        )?)
    } else {
        None
    };
    // `path` sources: held to the lock when it records them (`--locked`: it must).
    let dir_sources = super::lock::dir_sources(&manifest)?;
    if settings.locked && hub_fetch.is_none() && dir_sources.is_empty() {
        bail!(
            "`--locked` applies to `hf` and `path` sources, which have a lock file; a synthetic model is generated from its spec"
        );
    }
    let dir_lock =
        super::lock::check_dirs_before(&settings.manifest, &dir_sources, settings.locked)?;
    let hub_digests = hub_fetch.as_ref().map(|h| h.verified_digests());
    let (hub_model, tokenizer) = match hub_fetch {
        Some(h) => (h.model, h.tokenizer),
        None => (
            None,
            match &manifest.model.tokenizer {
                Some(t) => fetch::tokenizer::fetch_local(t)?,
                None => None,
            },
        ),
    };
    let model = match hub_model {
        Some(model) => model,
        None => {
            let companion = tokenizer.as_ref().map(|t| t.names()).unwrap_or_default();
            Fetcher::new(&settings.cache_dir).fetch(&manifest.model, &companion)?
        }
    };
    fetch::check_pinned_files_present(&manifest.model.pins, &model.files)?;
    if let (Some(t), Some(settings)) = (&tokenizer, &manifest.model.tokenizer) {
        t.check_no_overlap(&model.origin.label(), &model.files)?;
        t.check_pinned_files_present(&settings.pins)?;
        log.step(&format!(
            "Tokenizer: {} ({})",
            match &t.origin {
                ModelOrigin::Hf { repo, revision } => format!("hf:{repo}@{revision}"),
                other => other.label(),
            },
            t.names().join(", ")
        ));
    }
    // `model.quantize`: the safetensors weights become one GGUF file here; pins and Hub digests
    // are checked on the files the converter reads.
    let (model, quantization) = match manifest.model.quantize {
        Some(file_type) => {
            log.step(&format!(
                "Quantizing {} to {} (llama.cpp's reference quantizers, tensor by tensor)",
                model.origin.label(),
                file_type.name()
            ));
            let (packaged, q) = crate::quantize::quantize(
                &model,
                file_type,
                &manifest.server.served_model_name,
                &settings.cache_dir,
                hub_digests.as_ref(),
            )?;
            let read: BTreeMap<String, Sha256Digest> = q
                .sources
                .iter()
                .map(|(path, digest, _)| (path.clone(), *digest))
                .collect();
            fetch::check_pins(&manifest.model.pins, &read)?;
            if manifest.model.require_pins {
                fetch::check_all_pinned(|f| manifest.model.pins.contains_key(f), &read)?;
            }
            log.step(&format!(
                "Quantized: {} ({}){}",
                crate::quantize::GGUF_NAME,
                q.tensor_types
                    .iter()
                    .map(|(ty, n)| format!("{n} {ty}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                if q.cached { ", from the cache" } else { "" }
            ));
            (packaged, Some(q))
        }
        None => (model, None),
    };
    let model_bytes: u64 = model.files.iter().map(|f| f.size).sum();
    log.step(&format!(
        "Model: {} ({} files, {}{})",
        model.origin.label(),
        model.files.len(),
        human_bytes(model_bytes),
        model
            .format
            .as_ref()
            .map_or_else(String::new, |f| format!(", {}", f.describe()))
    ));

    let mut executables = vec![server.path.clone()];
    executables.extend(launcher.iter().map(|l| l.host_path.clone()));
    let mut userland = userland::resolve(&manifest.runtime.base, &executables)?;
    if !userland.library_path.is_empty() {
        log.step(&format!(
            "Userland: libraries found through ld.so.conf; the image sets LD_LIBRARY_PATH={}",
            userland.library_path.join(":")
        ));
    }
    if !userland.files.is_empty() {
        log.step(&format!(
            "Userland: {} files from the build host",
            userland.files.len()
        ));
    }
    if let Some(base) = &userland.base {
        let arch = server.info.oci_architecture();
        if base.architecture != arch {
            bail!(
                "The base image `{}` is for `{}`, but the server is built for `{arch}`",
                base.label(),
                base.architecture
            );
        }
        log.step(&format!(
            "Userland: base image {} ({} layers, verified; it has every library the server needs)",
            base.label(),
            base.layers.len()
        ));
    }

    let served = &manifest.server.served_model_name;
    let model_dir = format!("{}/{}", plan::MODELS_ROOT, served);
    let mtime = manifest.image.created as u64;
    let specs = plan::plan(PlanInput {
        account: &Account {
            user: manifest.runtime.user.clone(),
            uid: manifest.runtime.uid,
            gid: manifest.runtime.gid,
        },
        model_dir: &model_dir,
        model_files: &model.files,
        tokenizer: tokenizer.as_ref().map(|t| plan::TokenizerFiles {
            source: t.origin.label(),
            files: &t.files,
        }),
        userland: std::mem::take(&mut userland.entries),
        server: PlannedFile {
            rel_path: "appliance-server".into(),
            host_path: server.path.clone(),
            size: server.size,
        },
        launcher,
        compression: manifest.image.compression,
    });

    // One pass: each layer streams into the tarball, hashed as it goes. Pins are checked once
    // the model layers are in; a mismatch drops the writer, which deletes the partial file.
    log.step(&format!("Writing {}", output.display()));
    let cache = DigestCache::new(&settings.cache_dir, !settings.verify_cache);
    let mut writer = ImageWriter::create(&output, mtime, cache)?;
    let base_bytes: u64 = userland
        .base
        .iter()
        .flat_map(|b| &b.layers)
        .map(|l| l.size)
        .sum();
    let total: u64 = base_bytes + specs.iter().map(|s| s.content_bytes()).sum::<u64>();
    let task = progress.task("Writing", total);
    // The base image's layers go first, byte for byte: ours sit on top of its rootfs.
    let mut layers: Vec<Layer> = Vec::new();
    if let Some(base) = &userland.base {
        for layer in &base.layers {
            let mut blob = base.open_layer(layer)?;
            layers.push(writer.add_blob(
                base.layer_spec(layer, mtime),
                &layer.blob,
                &mut blob,
                layer.digest,
                layer.diff_id,
                task.as_ref(),
            )?);
        }
    }
    layers.extend(writer.add_layers(specs, task.as_ref())?);
    task.finish();

    // Every model file's digest, as measured while its layer was written.
    let model_prefix = format!("{model_dir}/");
    let measured: BTreeMap<String, &FileSum> = layers
        .iter()
        .filter(|l| matches!(l.spec.role, LayerRole::Weights | LayerRole::ModelFiles))
        .flat_map(|l| &l.sums.files)
        .filter_map(|f| Some((f.path.strip_prefix(&model_prefix)?.to_string(), f)))
        .collect();
    let model_files: Vec<ModelFileSummary> = measured
        .iter()
        .map(|(path, f)| ModelFileSummary {
            path: path.clone(),
            sha256: f.sha256.hex(),
            size: f.size,
        })
        .collect();
    let digests: BTreeMap<String, Sha256Digest> = measured
        .iter()
        .map(|(path, f)| (path.clone(), f.sha256))
        .collect();
    if quantization.is_none() {
        fetch::check_pins(&manifest.model.pins, &digests)?;
    }
    if manifest.model.require_pins {
        // The quantizer's inputs were checked above; the GGUF it wrote has no pin to meet.
        let tokenizer_pins = manifest.model.tokenizer.as_ref().map(|t| &t.pins);
        let generated = |f: &str| quantization.is_some() && f == crate::quantize::GGUF_NAME;
        fetch::check_all_pinned(
            |f| {
                manifest.model.pins.contains_key(f)
                    || tokenizer_pins.is_some_and(|p| p.contains_key(f))
                    || generated(f)
            },
            &digests,
        )?;
    }
    if let Some(t) = &manifest.model.tokenizer {
        fetch::check_pins(&t.pins, &digests)?;
    }
    if let Some(verified) = &hub_digests {
        for (file, expected) in verified {
            // Files the quantizer consumed were checked as it read them.
            if quantization.is_some() && !digests.contains_key(file) {
                continue;
            }
            if digests.get(file) != Some(expected) {
                bail!(
                    "`{file}` changed in the cache while it was packaged: verified as {}, packaged as {}; nothing was written",
                    expected.hex(),
                    digests.get(file).map(|d| d.hex()).unwrap_or_default()
                );
            }
        }
    }
    // The quantizer's inputs are what a `path` lock records for the model directory.
    let quantizer_inputs: BTreeMap<&str, Sha256Digest> = quantization
        .iter()
        .flat_map(|q| &q.sources)
        .map(|(path, digest, _)| (path.as_str(), *digest))
        .collect();
    let lock_update = dir_lock.check_after(
        &dir_sources,
        |path| {
            digests
                .get(path)
                .or_else(|| quantizer_inputs.get(path))
                .copied()
        },
        log,
    )?;
    if !manifest.model.pins.is_empty() {
        log.step(&format!(
            "Verified {} pinned sha256 digests",
            manifest.model.pins.len()
        ));
    }

    // The gate runs on the bytes just packaged, before anything is committed: a failure drops
    // the writer, which deletes the partial tarball.
    let evaluation = evaluate(
        &manifest,
        settings.skip_eval,
        &server.path,
        model
            .files
            .iter()
            .chain(tokenizer.iter().flat_map(|t| &t.files)),
        model_bytes,
        signer.is_some(),
        log,
    )?;
    // A signed image carries the gate's results: the test-result predicate, built once for the
    // attestation and the summary.
    let test_result = match (&evaluation, &signer) {
        (Evaluation::Ran(outcome), Some(_)) => Some(eval::predicate(
            outcome,
            &manifest.eval.cases,
            &eval::Subject {
                server_path: plan::SERVER_PATH,
                server_sha256: server.sha256,
                model_files: measured
                    .iter()
                    .map(|(path, f)| (format!("{model_dir}/{path}"), f.sha256))
                    .collect(),
            },
        )),
        _ => None,
    };

    let model_summary = ModelSummary {
        name: served.clone(),
        path: format!("/{model_dir}"),
        source: model.origin.label(),
        revision: match &model.origin {
            ModelOrigin::Hf { revision, .. } => revision.clone(),
            _ => summary::files_digest(&model_files).prefixed(),
        },
        files: model_files,
        format: model.format.clone(),
    };
    let run = run_config(
        &manifest,
        &server,
        &model_summary,
        &model.origin,
        model_bytes,
        &userland,
    )?;
    let docs = image::assemble(reference, &run, &layers)?;

    let mut sidecars = None;
    if let Some(signer) = &signer {
        let facts = attest::BuildFacts {
            reference: reference.full().to_string(),
            manifest_digest: docs.manifest.digest,
            created: run.created.clone(),
            builder_version: env!("CARGO_PKG_VERSION").to_string(),
            model: attest::ModelFacts {
                name: served.clone(),
                dir: model_dir.clone(),
                source: model_summary.source.clone(),
                revision: model_summary.revision.clone(),
                hub: match &model.origin {
                    ModelOrigin::Hf { repo, revision } => Some((repo.clone(), revision.clone())),
                    _ => None,
                },
                files: measured
                    .iter()
                    .map(|(path, f)| attest::FileFact {
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
                    .map(|(path, sha256, size)| attest::FileFact {
                        path: path.clone(),
                        sha256: *sha256,
                        size: *size,
                        package: None,
                    })
                    .collect(),
            }),
            tokenizer: tokenizer.as_ref().map(|t| attest::TokenizerFacts {
                source: t.origin.label(),
                hub: match &t.origin {
                    ModelOrigin::Hf { repo, revision } => Some((repo.clone(), revision.clone())),
                    _ => None,
                },
                files: t
                    .files
                    .iter()
                    .filter_map(|f| {
                        let m = measured.get(&f.rel_path)?;
                        Some(attest::FileFact {
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
            userland: sign::userland_facts(&layers, &userland.files),
            base: userland.base.as_ref().map(|base| attest::BaseFacts {
                name: base.name.clone(),
                pinned: base.pinned,
                layers: base
                    .layers
                    .iter()
                    .map(|l| (l.digest, l.diff_id, l.size))
                    .collect(),
            }),
            evaluation: match &evaluation {
                Evaluation::NoCases => None,
                Evaluation::Skipped => Some(attest::EvaluationFacts::Skipped {
                    cases: manifest.eval.cases.len(),
                }),
                Evaluation::Ran(outcome) => {
                    test_result
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
            },
            manifest: read_document(&settings.manifest)?,
            // The lock beside the manifest (`manifest.toml` → `manifest.lock`), when there is
            // one; as this build is about to rewrite it, when its `path` sections moved.
            lock: match &lock_update {
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
        };
        let artifacts = sign::sign_image(signer, &facts, reference.name(), docs.manifest.size())?;
        writer.add_dir("signatures")?;
        for (path, bytes) in &artifacts.entries {
            writer.add_file(path, bytes)?;
        }
        sidecars = Some(sign::stage_sidecars(sign::sidecar_files(
            &output, &artifacts,
        ))?);
        log.step(&format!(
            "Signed {} with key sha256:{}",
            docs.manifest.digest,
            artifacts.fingerprint.hex()
        ));
    }

    writer
        .finish(&docs)
        .with_context(|| format!("Failed to export the image to `{}`", output.display()))?;
    if let Some((lock, path)) = lock_update {
        lock.write(&path)?;
    }
    match sidecars {
        Some(sidecars) => sidecars.commit()?,
        None => sign::remove_stale_sidecars(&output)?,
    }
    let tarball_size = std::fs::metadata(&output)
        .with_context(|| format!("Failed to read `{}`", output.display()))?
        .len();

    let image = ImageSummary {
        reference: reference.name_tag(),
        manifest_digest: docs.manifest.digest.prefixed(),
        config_digest: docs.config.digest.prefixed(),
        architecture: run.architecture.clone(),
        created: run.created.clone(),
        user: run.user.clone(),
        entrypoint: run.entrypoint.clone(),
        cmd: run.cmd.clone(),
        env: run.env.clone(),
        exposed_ports: vec![format!("{}/tcp", manifest.server.port)],
        healthcheck: Some(run.healthcheck.clone()),
        labels: run.labels.clone(),
        layers: layers
            .iter()
            .map(|l| LayerSummary {
                digest: l.sums.digest.prefixed(),
                diff_id: l.sums.diff_id.prefixed(),
                size: l.sums.size,
                media_type: l.spec.media_type().to_string(),
                created_by: l.spec.description.clone(),
            })
            .collect(),
        model: Some(model_summary),
        // What the image carries: results are in it only when signed.
        evaluation: test_result
            .as_ref()
            .and_then(summary::EvaluationSummary::from_predicate),
        delta_bundle: false,
    };
    Ok(BuildOutcome {
        output,
        tarball_size,
        image,
        delta: None,
    })
}

/// A manifest or lock as an external parameter of the provenance: its file name and text.
fn read_document(path: &std::path::Path) -> Result<attest::NamedDocument> {
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

/// The image config: how the server is started, checked and described.
fn run_config(
    manifest: &Manifest,
    server: &server_binary::ServerBinary,
    model: &ModelSummary,
    origin: &ModelOrigin,
    model_bytes: u64,
    userland: &userland::Userland,
) -> Result<RunConfig> {
    let library_path = &userland.library_path;
    let s = &manifest.server;
    let account = &manifest.runtime;
    let created = jiff::Timestamp::from_second(manifest.image.created)
        .context("`image.created` is out of range")?
        .to_string();
    let server_path = format!("/{}", plan::SERVER_PATH);

    // Settings travel as environment, not arguments: `docker run IMAGE --flag` replaces Cmd
    // wholesale, and the model path must survive that.
    let mut env = vec![
        "PATH=/usr/local/bin:/usr/bin:/bin".to_string(),
        format!("HOME=/home/{}", account.user),
        format!("APPLIANCE_MODEL={}", model.path),
        format!("APPLIANCE_SERVED_MODEL_NAME={}", s.served_model_name),
        "APPLIANCE_HOST=0.0.0.0".to_string(),
        format!("APPLIANCE_PORT={}", s.port),
        format!(
            "APPLIANCE_DEVICE={}",
            match s.device {
                Device::Cpu => "cpu",
                Device::Cuda => "cuda",
            }
        ),
    ];
    // The image has no ld.so.cache: directories the host found only through ld.so.conf must
    // be named explicitly or the loader will not look there.
    if !library_path.is_empty() {
        env.push(format!("LD_LIBRARY_PATH={}", library_path.join(":")));
    }
    if let Some(len) = s.max_model_len {
        env.push(format!("APPLIANCE_MAX_MODEL_LEN={len}"));
    }
    if s.device == Device::Cuda {
        env.push("NVIDIA_VISIBLE_DEVICES=all".to_string());
        env.push("NVIDIA_DRIVER_CAPABILITIES=compute,utility".to_string());
    }

    let mut labels = BTreeMap::new();
    let mut label = |k: &str, v: String| {
        labels.insert(k.to_string(), v);
    };
    label(
        "org.opencontainers.image.title",
        s.served_model_name.clone(),
    );
    label(
        "org.opencontainers.image.version",
        manifest.image.reference.tag().to_string(),
    );
    label("org.opencontainers.image.created", created.clone());
    label("org.opencontainers.image.revision", model.revision.clone());
    label(
        "org.opencontainers.image.source",
        match origin {
            ModelOrigin::Hf { repo, .. } => format!("https://huggingface.co/{repo}"),
            other => other.label(),
        },
    );
    label(
        "org.opencontainers.image.description",
        format!(
            "{} served by appliance-server {}",
            s.served_model_name, server.info.version
        ),
    );
    label(
        labels::BUILDER_VERSION,
        env!("CARGO_PKG_VERSION").to_string(),
    );
    label(labels::MODEL_NAME, model.name.clone());
    label(labels::MODEL_PATH, model.path.clone());
    label(labels::MODEL_SOURCE, model.source.clone());
    label(labels::MODEL_REVISION, model.revision.clone());
    label(labels::MODEL_FILES, serde_json::to_string(&model.files)?);
    label(
        labels::MODEL_FILES_SHA256,
        summary::files_digest(&model.files).prefixed(),
    );
    for (key, value) in model.format.iter().flat_map(|f| f.labels()) {
        label(key, value);
    }
    if let ModelOrigin::Synthetic { spec, .. } = origin {
        label(
            labels::MODEL_SYNTHETIC,
            String::from_utf8(crate::json::canonical(spec)?)?,
        );
    }
    label(labels::SERVER_VERSION, server.info.version.clone());
    label(labels::SERVER_FEATURES, server.info.features.join(","));
    label(labels::SERVER_SHA256, server.sha256.prefixed());
    label(labels::SERVER_TARGET, server.info.target.clone());
    label(
        labels::SERVER_DEVICE,
        format!("{:?}", s.device).to_lowercase(),
    );
    if let Some(cuda) = &server.info.cuda {
        label(labels::CUDA_VERSION, cuda.version.clone());
        label(labels::CUDA_COMPUTE_CAPS, cuda.compute_cap.clone());
        label(labels::CUDA_MIN_DRIVER, cuda.min_driver.clone());
    }
    label(
        labels::USERLAND,
        match (&manifest.runtime.base, &userland.base) {
            // The name inside the archive and the digest, never the host path: labels must
            // not depend on where the build ran.
            (_, Some(base)) => base.label(),
            (Base::Scratch, None) => "scratch".to_string(),
            _ => "host".to_string(),
        },
    );
    // Users may add or override descriptive labels, never the ones auditors rely on.
    // (The manifest already refused the reserved `appliance.` prefix.)
    for (k, v) in &manifest.image.labels {
        labels.insert(k.clone(), v.clone());
    }

    // With a base image: its Env below ours.
    if let Some(base) = &userland.base {
        env = base.merge_env(env);
    }
    let hc = &s.healthcheck;
    Ok(RunConfig {
        architecture: server.info.oci_architecture().to_string(),
        created,
        user: format!("{}:{}", account.uid, account.gid),
        // A CUDA server cannot even be loaded without the driver: the launcher starts first,
        // explains a missing GPU or an old driver, then execs the server.
        entrypoint: vec![if s.device == Device::Cuda {
            format!("/{}", plan::LAUNCHER_PATH)
        } else {
            server_path.clone()
        }],
        cmd: s.args.clone(),
        env,
        exposed_port: s.port,
        working_dir: format!("/home/{}", account.user),
        labels,
        healthcheck: Healthcheck::from_secs(
            vec!["CMD".into(), server_path, "healthcheck".into()],
            hc.interval_secs,
            hc.timeout_secs,
            hc.start_period_secs
                .unwrap_or_else(|| start_period_for(model_bytes)),
            hc.retries,
        ),
    })
}

/// The launcher to pack as a CUDA image's entrypoint: `server.launcher`, else
/// `appliance-launcher` beside the server binary (scripts/build-cuda-server builds both into one
/// dir). The server must carry its CUDA build facts, which the launcher and the labels rely on.
fn cuda_launcher(
    manifest: &Manifest,
    server: &server_binary::ServerBinary,
) -> Result<plan::PlannedFile> {
    if server.info.cuda.is_none() {
        bail!(
            "`{}` has the `cuda` feature but no CUDA build facts in its build-info marker; rebuild \
             it with scripts/build-cuda-server",
            server.path.display()
        );
    }
    let path = match &manifest.server.launcher {
        Some(path) => path.clone(),
        None => server
            .path
            .parent()
            .map(|dir| dir.join("appliance-launcher"))
            .unwrap_or_default(),
    };
    let meta = std::fs::metadata(&path).ok().filter(|m| m.is_file());
    let Some(meta) = meta else {
        bail!(
            "A `cuda` image needs `appliance-launcher` as its entrypoint, but `{}` does not exist; \
             build it with scripts/build-cuda-server (`cargo build --release -p \
             appliance-launcher`) or set `server.launcher`",
            path.display()
        );
    };
    Ok(plan::PlannedFile {
        rel_path: "appliance-launcher".into(),
        host_path: path,
        size: meta.len(),
    })
}

/// What became of the `[[eval]]` gate.
enum Evaluation {
    NoCases,
    Skipped,
    Ran(eval::EvalOutcome),
}

/// Runs the gate (unless there are no cases or `--skip-eval`) on the server binary and model
/// files being packaged; a gate that does not pass is an error listing each failed case.
#[allow(clippy::too_many_arguments)]
fn evaluate<'a>(
    manifest: &Manifest,
    skip: bool,
    server: &std::path::Path,
    files: impl Iterator<Item = &'a PlannedFile>,
    model_bytes: u64,
    signed: bool,
    log: &dyn BuildLog,
) -> Result<Evaluation> {
    let cases = &manifest.eval.cases;
    if cases.is_empty() {
        return Ok(Evaluation::NoCases);
    }
    if skip {
        log.step(&format!(
            "Evaluation gate skipped (--skip-eval): {} cases not run; the provenance records it",
            cases.len()
        ));
        return Ok(Evaluation::Skipped);
    }
    let s = &manifest.server;
    // CUDA only where the manifest asks for it and this host has an NVIDIA device.
    let gpu = std::path::Path::new("/dev/nvidiactl").exists();
    let device = if s.device == Device::Cuda && gpu {
        "cuda"
    } else {
        "cpu"
    };
    log.step(&format!(
        "Evaluating {} cases on {device} with `{}`",
        cases.len(),
        server.display()
    ));
    let outcome = eval::run(
        &manifest.eval,
        &eval::ServerUnderTest {
            binary: server,
            model_files: files
                .map(|f| (f.rel_path.clone(), f.host_path.clone()))
                .collect(),
            served_model_name: &s.served_model_name,
            max_model_len: s.max_model_len,
            device,
            args: &s.args,
            ready_timeout: std::time::Duration::from_secs(
                s.healthcheck
                    .start_period_secs
                    .unwrap_or_else(|| start_period_for(model_bytes)),
            ),
        },
    )?;
    let (passed, total) = (outcome.passed(), outcome.results.len());
    if !outcome.gate_passes() {
        bail!(
            "Evaluation gate failed: {passed} of {total} cases passed, {} required; nothing was written:{}",
            (manifest.eval.min_pass_rate * total as f64).ceil() as usize,
            outcome.failures(cases)
        );
    }
    log.step(&format!(
        "Evaluation gate passed: {passed} of {total} cases{}",
        if signed {
            " (results attested in the signature)"
        } else {
            " (not attested: the image is unsigned)"
        }
    ));
    Ok(Evaluation::Ran(outcome))
}

/// Twice a pessimistic load time (100 MB/s from disk), never under 2 minutes, never over an
/// hour: Docker ignores failed health checks during the start period, so a generous one costs
/// nothing while a short one has a slow disk's container marked unhealthy mid-load.
pub fn start_period_for(model_bytes: u64) -> u64 {
    let load_secs = model_bytes / 100_000_000;
    (120 + 2 * load_secs).min(3600)
}

pub use appliance_common::human_bytes;
