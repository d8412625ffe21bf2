//! The `quantize` stage (`[model] quantize = "q4_k_m"`), between fetch and layers: safetensors
//! weights become one GGUF file, and the image carries that file instead of them.
//!
//! The conversion itself is `appliance_gguf::convert` (llama.cpp's names, layout and reference
//! quantizers: the bytes `convert_hf_to_gguf.py` + `llama-quantize` would write). This stage
//! adds what a build needs around it:
//!
//! - every source file is hashed while it is read here (and, for Hub sources, compared with the
//!   digest verified on download), because the provenance must name the inputs of a file that
//!   is not in the image;
//! - the result is cached under `<cache>/quantized/<key>/model.gguf`, the key being the source
//!   digests, the preset and the converter version, so a rebuild does not quantize again; it is
//!   written to a temporary file and renamed, so an interrupted build never leaves a partial
//!   GGUF where a later one would take it;
//! - the files that are not weights (tokenizer, chat template, generation config, licence)
//!   stay beside the GGUF; `config.json` and the safetensors index go with the weights, so the
//!   server has exactly one checkpoint to load.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read};
use std::path::{Path, PathBuf};

use appliance_gguf::convert::{FileType, Options, Plan};
use sha2::{Digest, Sha256};

use crate::digest::Sha256Digest;
use crate::fetch::FetchedModel;
use crate::layers::plan::PlannedFile;

/// The GGUF file's name in the image's model directory.
pub const GGUF_NAME: &str = "model.gguf";

/// Bumped when the converter's output for unchanged inputs changes, so caches keyed on the
/// inputs never serve a file the current code would not write.
const CONVERTER_VERSION: &str = "appliance-gguf 2";

/// What the quantization step consumed and produced, for provenance and the SBOM.
#[derive(Debug, Clone)]
pub struct Quantization {
    pub file_type: FileType,
    /// The source files the GGUF was made from (weights, config, tokenizer), with digests.
    pub sources: Vec<(String, Sha256Digest, u64)>,
    /// Tensors per ggml type in the result, e.g. `q4_K: 97`.
    pub tensor_types: BTreeMap<String, usize>,
    /// Whether the GGUF came from the cache rather than being quantized by this build.
    pub cached: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum QuantizeError {
    #[error(
        "`model.quantize` turns safetensors weights into GGUF, but the model's weights are already GGUF (`{file}`); drop `quantize` or select safetensors files"
    )]
    AlreadyGguf { file: String },
    #[error(
        "`model.quantize` needs safetensors weights (`model*.safetensors`) among the selected model files; found none"
    )]
    NoSafetensors,
    #[error(
        "`{file}` changed in the cache while it was quantized: verified as {expected}, read as {actual}; nothing was written"
    )]
    Changed {
        file: String,
        expected: String,
        actual: String,
    },
    #[error("Failed to quantize the model: {0}")]
    Convert(#[from] appliance_gguf::convert::ConvertError),
    #[error("Quantization cache `{}`", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Fetch(#[from] crate::fetch::FetchError),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> QuantizeError + '_ {
    move |source| QuantizeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Whether a model file travels with the weights (and is dropped when they become GGUF).
fn is_weights_file(rel_path: &str) -> bool {
    rel_path.ends_with(".safetensors")
        || rel_path.ends_with(".safetensors.index.json")
        || rel_path == "config.json"
}

/// Quantizes `model` into one GGUF file and returns the model as it will be packaged.
///
/// `verified`: digests already verified for these files (Hub downloads), checked again against
/// what is read here. `name` becomes `general.name`.
pub fn quantize(
    model: &FetchedModel,
    file_type: FileType,
    name: &str,
    cache_dir: &Path,
    verified: Option<&BTreeMap<String, Sha256Digest>>,
) -> Result<(FetchedModel, Quantization), QuantizeError> {
    if let Some(f) = model.files.iter().find(|f| f.rel_path.ends_with(".gguf")) {
        return Err(QuantizeError::AlreadyGguf {
            file: f.rel_path.clone(),
        });
    }
    if !model
        .files
        .iter()
        .any(|f| f.rel_path.ends_with(".safetensors"))
    {
        return Err(QuantizeError::NoSafetensors);
    }

    // Hash every file the converter may read: the key of the cache and the provenance's inputs.
    let mut sources = Vec::new();
    for f in &model.files {
        let (digest, size) = hash_file(&f.host_path)?;
        if let Some(expected) = verified.and_then(|v| v.get(&f.rel_path))
            && *expected != digest
        {
            return Err(QuantizeError::Changed {
                file: f.rel_path.clone(),
                expected: expected.hex(),
                actual: digest.hex(),
            });
        }
        sources.push((f.rel_path.clone(), digest, size));
    }
    let mut key = Sha256::new();
    key.update(format!(
        "{CONVERTER_VERSION}\n{}\n{name}\n",
        file_type.name()
    ));
    for (path, digest, _) in &sources {
        key.update(format!("{path} {}\n", digest.hex()));
    }
    let key = Sha256Digest::from_hasher(key).hex();
    let root = cache_dir.join("quantized");
    let dir = root.join(&key);
    let gguf = dir.join(GGUF_NAME);

    let cached = gguf.is_file();
    if !cached {
        // The converter reads a directory: give it exactly the selected files, by their names.
        fs::create_dir_all(&root).map_err(io_err(&root))?;
        let staging = tempfile::Builder::new()
            .prefix(".staging-")
            .tempdir_in(&root)
            .map_err(io_err(&root))?;
        for f in &model.files {
            let link = staging.path().join(&f.rel_path);
            if let Some(parent) = link.parent() {
                fs::create_dir_all(parent).map_err(io_err(parent))?;
            }
            let target = std::path::absolute(&f.host_path).map_err(io_err(&f.host_path))?;
            std::os::unix::fs::symlink(&target, &link).map_err(io_err(&link))?;
        }
        let plan = Plan::new(
            staging.path(),
            &Options {
                file_type,
                name: name.to_string(),
            },
        )
        .map_err(|e| rename_staging(e, staging.path(), &model.files))?;
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let tmp = tempfile::Builder::new()
            .prefix(".model.gguf.")
            .tempfile_in(&dir)
            .map_err(io_err(&dir))?;
        let out = BufWriter::with_capacity(1 << 20, tmp.as_file());
        plan.write(out)
            .map_err(|e| rename_staging(e, staging.path(), &model.files))?;
        tmp.persist(&gguf).map_err(|e| QuantizeError::Io {
            path: gguf.clone(),
            source: e.error,
        })?;
    }

    let size = fs::metadata(&gguf).map_err(io_err(&gguf))?.len();
    let mut files: Vec<PlannedFile> = model
        .files
        .iter()
        .filter(|f| !is_weights_file(&f.rel_path))
        .cloned()
        .collect();
    files.push(PlannedFile {
        rel_path: GGUF_NAME.to_string(),
        host_path: gguf,
        size,
    });
    files.sort_by(|a, b| a.rel_path.cmp(&b.rel_path));
    let tensor_types = appliance_gguf::read::Header::read(&files_gguf(&files))
        .map_err(|e| QuantizeError::Io {
            path: files_gguf(&files),
            source: io::Error::other(e.to_string()),
        })?
        .type_counts()
        .into_iter()
        .map(|(ty, n)| (ty.name().to_string(), n))
        .collect();
    let packaged = FetchedModel::new(files, model.origin.clone())?;
    Ok((
        packaged,
        Quantization {
            file_type,
            sources,
            tensor_types,
            cached,
        },
    ))
}

fn files_gguf(files: &[PlannedFile]) -> PathBuf {
    files
        .iter()
        .find(|f| f.rel_path == GGUF_NAME)
        .map(|f| f.host_path.clone())
        .unwrap_or_default()
}

/// Errors name the staging symlink; the user knows the file by its model-relative name.
fn rename_staging(
    e: appliance_gguf::convert::ConvertError,
    staging: &Path,
    files: &[PlannedFile],
) -> QuantizeError {
    use appliance_gguf::convert::ConvertError;
    let fix = |path: PathBuf| match path.strip_prefix(staging) {
        Ok(rel) => files
            .iter()
            .find(|f| Path::new(&f.rel_path) == rel)
            .map_or(path.clone(), |f| f.host_path.clone()),
        Err(_) => path,
    };
    QuantizeError::Convert(match e {
        ConvertError::Io { path, source } => ConvertError::Io {
            path: fix(path),
            source,
        },
        ConvertError::Invalid {
            path,
            field,
            message,
        } => ConvertError::Invalid {
            path: fix(path),
            field,
            message,
        },
    })
}

fn hash_file(path: &Path) -> Result<(Sha256Digest, u64), QuantizeError> {
    let mut file = File::open(path).map_err(io_err(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((Sha256Digest::from_hasher(hasher), size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_and_their_config_are_replaced_the_rest_stays() {
        for f in [
            "model.safetensors",
            "model-00001-of-00002.safetensors",
            "model.safetensors.index.json",
            "config.json",
        ] {
            assert!(is_weights_file(f), "{f}");
        }
        for f in [
            "tokenizer.json",
            "tokenizer_config.json",
            "generation_config.json",
            "chat_template.jinja",
            "LICENSE",
        ] {
            assert!(!is_weights_file(f), "{f}");
        }
    }
}
