//! The build's second step: the model and its tokenizer as local files (from the Hub through
//! the lock policy, from `path` directories, or generated), quantized when the manifest asks,
//! with every pin that can be checked before packaging checked.

use std::collections::BTreeMap;

use anyhow::{Result, bail};
use appliance_gguf::convert::FileType;

use super::{BuildSettings, Session, human_bytes};
use crate::commands::lock::{self, DirLock, DirSource, LockPolicy, fetch_hub, has_hub_source};
use crate::digest::Sha256Digest;
use crate::fetch::hub::HubFetcher;
use crate::fetch::tokenizer::FetchedTokenizer;
use crate::fetch::{self, FetchedModel, Fetcher, ModelOrigin};
use crate::manifest::Manifest;
use crate::progress::BuildLog;
use crate::quantize::{self, Quantization};

/// The model files to package, as the image will carry them.
pub struct Fetched {
    /// After `model.quantize`: the GGUF file in place of the safetensors weights.
    pub model: FetchedModel,
    pub tokenizer: Option<FetchedTokenizer>,
    pub quantization: Option<Quantization>,
    pub model_bytes: u64,
    /// The Hub files' digests as verified on download: the packaged bytes must still match.
    pub hub_digests: Option<BTreeMap<String, Sha256Digest>>,
}

/// The `path` sources and the lock that records them: their digests are only known once the
/// files are packaged, so the check finishes in the write step.
pub struct PathLock {
    pub sources: Vec<DirSource>,
    pub lock: DirLock,
}

pub fn fetch(session: &Session, manifest: &Manifest) -> Result<(Fetched, PathLock)> {
    let Session {
        settings,
        progress,
        log,
    } = *session;
    // Hub sources (the model, its tokenizer) go through the lock policy; their digests,
    // verified on download (or when re-checked in the cache), are checked again against what
    // gets packaged.
    let hub_fetch = if has_hub_source(manifest) {
        let policy = if settings.locked {
            LockPolicy::Locked
        } else {
            LockPolicy::Update
        };
        let hub = HubFetcher::new(settings.hub.clone());
        Some(fetch_hub(
            manifest,
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
    let dir_sources = lock::dir_sources(manifest)?;
    if settings.locked && hub_fetch.is_none() && dir_sources.is_empty() {
        bail!(
            "`--locked` applies to `hf` and `path` sources, which have a lock file; a synthetic model is generated from its spec"
        );
    }
    let dir_lock = lock::check_dirs_before(&settings.manifest, &dir_sources, settings.locked)?;
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
    let (model, quantization) = match manifest.model.quantize {
        Some(file_type) => {
            let (packaged, q) = quantize_model(
                settings,
                manifest,
                &model,
                file_type,
                hub_digests.as_ref(),
                log,
            )?;
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
    let fetched = Fetched {
        model,
        tokenizer,
        quantization,
        model_bytes,
        hub_digests,
    };
    let path_lock = PathLock {
        sources: dir_sources,
        lock: dir_lock,
    };
    Ok((fetched, path_lock))
}

/// `model.quantize`: the safetensors weights become one GGUF file. Pins and Hub digests are
/// checked here, on the files the converter reads, since the GGUF it writes has none to meet.
fn quantize_model(
    settings: &BuildSettings,
    manifest: &Manifest,
    model: &FetchedModel,
    file_type: FileType,
    hub_digests: Option<&BTreeMap<String, Sha256Digest>>,
    log: &dyn BuildLog,
) -> Result<(FetchedModel, Quantization)> {
    log.step(&format!(
        "Quantizing {} to {} (llama.cpp's reference quantizers, tensor by tensor)",
        model.origin.label(),
        file_type.name()
    ));
    let (packaged, q) = quantize::quantize(
        model,
        file_type,
        &manifest.server.served_model_name,
        &settings.cache_dir,
        hub_digests,
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
        quantize::GGUF_NAME,
        q.tensor_types
            .iter()
            .map(|(ty, n)| format!("{n} {ty}"))
            .collect::<Vec<_>>()
            .join(", "),
        if q.cached { ", from the cache" } else { "" }
    ));
    Ok((packaged, q))
}
