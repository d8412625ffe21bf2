//! The build's sixth step: the image config (how the server is started, checked and described)
//! and the OCI documents naming the written layers.

use std::collections::BTreeMap;

use anyhow::{Context, Result};

use super::{Fetched, Planned, Resolved, Written, start_period_for};
use crate::fetch::ModelOrigin;
use crate::image::{self, Healthcheck, ImageDocuments, RunConfig};
use crate::layers::plan;
use crate::manifest::{Base, Device, Manifest};
use crate::server_binary::ServerBinary;
use crate::summary::{self, ModelFileSummary, ModelSummary, labels};
use crate::userland::Userland;

/// The image's documents, with what went into them: the summary reports the same facts.
pub struct Assembled {
    pub model: ModelSummary,
    pub run: RunConfig,
    pub docs: ImageDocuments,
}

pub fn assemble(
    resolved: &Resolved,
    fetched: &Fetched,
    planned: &Planned,
    written: &Written,
) -> Result<Assembled> {
    let manifest = &resolved.manifest;
    let origin = &fetched.model.origin;
    let files: Vec<ModelFileSummary> = written
        .measured
        .iter()
        .map(|(path, f)| ModelFileSummary {
            path: path.clone(),
            sha256: f.sha256.hex(),
            size: f.size,
        })
        .collect();
    let model = ModelSummary {
        name: manifest.server.served_model_name.clone(),
        path: format!("/{}", planned.model_dir),
        source: origin.label(),
        revision: match origin {
            ModelOrigin::Hf { revision, .. } => revision.clone(),
            _ => summary::files_digest(&files).prefixed(),
        },
        files,
        format: fetched.model.format.clone(),
    };
    let run = run_config(
        manifest,
        &resolved.server,
        &model,
        origin,
        fetched.model_bytes,
        &planned.userland,
    )?;
    let docs = image::assemble(&manifest.image.reference, &run, &written.layers)?;
    Ok(Assembled { model, run, docs })
}

fn run_config(
    manifest: &Manifest,
    server: &ServerBinary,
    model: &ModelSummary,
    origin: &ModelOrigin,
    model_bytes: u64,
    userland: &Userland,
) -> Result<RunConfig> {
    let s = &manifest.server;
    let account = &manifest.runtime;
    let created = jiff::Timestamp::from_second(manifest.image.created)
        .context("`image.created` is out of range")?
        .to_string();
    let server_path = format!("/{}", plan::SERVER_PATH);
    let labels = labels(manifest, server, model, origin, userland, &created)?;
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
        env: environment(manifest, model, userland),
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

/// Settings travel as environment, not arguments: `docker run IMAGE --flag` replaces Cmd
/// wholesale, and the model path must survive that.
fn environment(manifest: &Manifest, model: &ModelSummary, userland: &Userland) -> Vec<String> {
    let s = &manifest.server;
    let library_path = &userland.library_path;
    let mut env = vec![
        "PATH=/usr/local/bin:/usr/bin:/bin".to_string(),
        format!("HOME=/home/{}", manifest.runtime.user),
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
    // With a base image: its Env below ours.
    match &userland.base {
        Some(base) => base.merge_env(env),
        None => env,
    }
}

/// The labels `appliance inspect` and auditors read, plus the manifest's own.
fn labels(
    manifest: &Manifest,
    server: &ServerBinary,
    model: &ModelSummary,
    origin: &ModelOrigin,
    userland: &Userland,
    created: &str,
) -> Result<BTreeMap<String, String>> {
    let s = &manifest.server;
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
    label("org.opencontainers.image.created", created.to_string());
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
    Ok(labels)
}
