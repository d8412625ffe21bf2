//! `appliance build`: runs the pipeline `manifest → fetch → layers → image → export`.
//!
//! This file only orchestrates: each stage lives in its own module and knows nothing of the
//! others. What it adds is the wiring: which facts flow into labels, and the order of passes.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};

use crate::digest::Sha256Digest;
use crate::export::{self, ImageWriter};
use crate::fetch::{self, Fetcher, ModelOrigin};
use crate::image::{self, Healthcheck, RunConfig};
use crate::layers::plan::{self, Account, PlanInput, PlannedFile};
use crate::layers::{FileSum, Layer, LayerRole};
use crate::manifest::{Base, Device, Manifest};
use crate::progress::Progress;
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
}

/// What a build produced.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BuildOutcome {
    pub output: PathBuf,
    pub tarball_size: u64,
    pub image: ImageSummary,
}

/// Log lines for the user; the build never prints itself.
pub trait BuildLog {
    fn step(&self, message: &str);
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
    if manifest.signing.is_some() {
        bail!(
            "Signing (`[signing]` in `{}`) is not supported by this version of appliance; remove the section to build unsigned",
            settings.manifest.display()
        );
    }

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

    let model = Fetcher::new(&settings.cache_dir).fetch(&manifest.model)?;
    fetch::check_pinned_files_present(&manifest.model.pins, &model.files)?;
    let model_bytes: u64 = model.files.iter().map(|f| f.size).sum();
    log.step(&format!(
        "Model: {} ({} files, {})",
        model.origin.label(),
        model.files.len(),
        human_bytes(model_bytes)
    ));

    let userland = userland::resolve(&manifest.runtime.base, std::slice::from_ref(&server.path))?;
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
        userland: userland.entries,
        server: PlannedFile {
            rel_path: "appliance-server".into(),
            host_path: server.path.clone(),
            size: server.size,
        },
        compression: manifest.image.compression,
        mtime,
    });

    // One pass: each layer streams into the tarball, hashed as it goes. Pins are checked once
    // the model layers are in; a mismatch drops the writer, which deletes the partial file.
    log.step(&format!("Writing {}", output.display()));
    let mut writer = ImageWriter::create(&output, mtime)?;
    let total: u64 = specs.iter().map(|s| s.content_bytes()).sum();
    let task = progress.task("Writing", total);
    let layers: Vec<Layer> = specs
        .into_iter()
        .map(|spec| writer.add_layer(spec, task.as_ref()))
        .collect::<Result<_, _>>()?;
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
    fetch::check_pins(&manifest.model.pins, &digests)?;
    if !manifest.model.pins.is_empty() {
        log.step(&format!(
            "Verified {} pinned sha256 digests",
            manifest.model.pins.len()
        ));
    }

    let model_summary = ModelSummary {
        name: served.clone(),
        path: format!("/{model_dir}"),
        source: model.origin.label(),
        revision: match &model.origin {
            ModelOrigin::Hf { revision, .. } => revision.clone(),
            _ => summary::files_digest(&model_files).prefixed(),
        },
        files: model_files,
    };
    let run = run_config(
        &manifest,
        &server,
        &model_summary,
        &model.origin,
        model_bytes,
        &userland.library_path,
    )?;
    let docs = image::assemble(reference, &run, &layers)?;

    writer
        .finish(&docs)
        .with_context(|| format!("Failed to export the image to `{}`", output.display()))?;
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
    };
    Ok(BuildOutcome {
        output,
        tarball_size,
        image,
    })
}

/// The image config: how the server is started, checked and described.
fn run_config(
    manifest: &Manifest,
    server: &server_binary::ServerBinary,
    model: &ModelSummary,
    origin: &ModelOrigin,
    model_bytes: u64,
    library_path: &[String],
) -> Result<RunConfig> {
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
    label(
        labels::USERLAND,
        match &manifest.runtime.base {
            Base::Host => "host".to_string(),
            Base::Scratch => "scratch".to_string(),
            // The digest, never the host path: labels must not depend on where the build ran.
            Base::Image { digest, .. } => format!("image@{digest}"),
        },
    );
    // Users may add or override descriptive labels, never the ones auditors rely on.
    // (The manifest already refused the reserved `appliance.` prefix.)
    for (k, v) in &manifest.image.labels {
        labels.insert(k.clone(), v.clone());
    }

    let hc = &s.healthcheck;
    Ok(RunConfig {
        architecture: server.info.oci_architecture().to_string(),
        created,
        user: format!("{}:{}", account.uid, account.gid),
        entrypoint: vec![server_path.clone()],
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

/// Twice a pessimistic load time (100 MB/s from disk), never under 2 minutes, never over an
/// hour: health checks that fail during the start period don't count (seed 003's advice).
pub fn start_period_for(model_bytes: u64) -> u64 {
    let load_secs = model_bytes / 100_000_000;
    (120 + 2 * load_secs).min(3600)
}

pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
