//! Fetches the model: turns a manifest's model source into local files ready to package, and
//! checks their digests against the manifest's pins.
//!
//! Digests are not computed here but while the layers are measured (the same single read that
//! feeds the layer digest), and handed back to [`check_pins`] before anything is written.

pub mod hub;
pub mod synthetic;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use globset::{Glob, GlobSet, GlobSetBuilder};

use crate::digest::Sha256Digest;
use crate::layers::plan::PlannedFile;
use crate::manifest::{ModelSettings, ModelSource};
use synthetic::SyntheticSpec;

/// The model as local files, with where it came from.
#[derive(Debug, Clone)]
pub struct FetchedModel {
    /// Sorted by relative path.
    pub files: Vec<PlannedFile>,
    pub origin: ModelOrigin,
}

/// Where the model came from, as recorded in labels and provenance. Never a host path: the
/// image must not depend on where the build ran.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ModelOrigin {
    Path { name: String },
    Hf { repo: String, revision: String },
    Synthetic { spec: SyntheticSpec, digest: String },
}

impl ModelOrigin {
    /// `hf:org/repo`, `path:dir-name`, `synthetic:llama`.
    pub fn label(&self) -> String {
        match self {
            Self::Path { name } => format!("path:{name}"),
            Self::Hf { repo, .. } => format!("hf:{repo}"),
            Self::Synthetic { spec, .. } => format!("synthetic:{}", spec.arch.as_str()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("Failed to read model directory `{path}`")]
    ReadDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Model file `{path}` is not a regular file (a directory or a broken symlink)")]
    NotAFile { path: PathBuf },
    #[error("No file in `{dir}` matches `model.files` ({globs})")]
    NoFiles { dir: PathBuf, globs: String },
    #[error(
        "Model directory `{dir}` has neither `config.json` nor a `.gguf` file among the selected files; is it a Hugging Face or GGUF model directory?"
    )]
    NoConfig { dir: PathBuf },
    #[error(
        "Model directory `{dir}`: a GGUF model needs `tokenizer.json` beside it (the server does not read tokenizers from GGUF metadata yet); add it to `model.files`"
    )]
    GgufWithoutTokenizer { dir: PathBuf },
    #[error("`{}`: {message}", dir.join(SHARD_INDEX).display())]
    ShardIndex { dir: PathBuf, message: String },
    #[error("Failed to generate the synthetic model in `{dir}`")]
    Synthetic {
        dir: PathBuf,
        #[source]
        source: synthetic::SyntheticError,
    },
    /// Hub sources need the lock policy and Hub settings: `commands::lock::fetch_hub`.
    #[error("`{repo}` is a Hub source; fetch it with `commands::lock::fetch_hub`")]
    HubUnsupported { repo: String },
    #[error(
        "sha256 mismatch for model file `{file}`: expected {expected} (manifest pin), got {actual}"
    )]
    PinMismatch {
        file: String,
        expected: String,
        actual: String,
    },
    #[error("`model.sha256` pins `{file}`, which is not among the packaged model files")]
    PinnedFileMissing { file: String },
}

/// Resolves model sources to files; owns the cache where generated models are kept.
pub struct Fetcher {
    cache_dir: PathBuf,
}

impl Fetcher {
    pub fn new(cache_dir: impl Into<PathBuf>) -> Self {
        Self {
            cache_dir: cache_dir.into(),
        }
    }

    pub fn fetch(&self, model: &ModelSettings) -> Result<FetchedModel, FetchError> {
        match &model.source {
            ModelSource::Path(dir) => {
                let name = dir
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                Ok(FetchedModel {
                    files: list_model_files(dir, &model.files)?,
                    origin: ModelOrigin::Path { name },
                })
            }
            ModelSource::Hub { repo, .. } => Err(FetchError::HubUnsupported { repo: repo.clone() }),
            ModelSource::Synthetic(spec) => {
                let root = self.cache_dir.join("synthetic");
                let digest = spec.digest();
                let dir = synthetic::generate_cached(spec, &root).map_err(|source| {
                    FetchError::Synthetic {
                        dir: root.join(&digest),
                        source,
                    }
                })?;
                Ok(FetchedModel {
                    files: list_model_files(&dir, &["*".to_string()])?,
                    origin: ModelOrigin::Synthetic {
                        spec: spec.clone(),
                        digest,
                    },
                })
            }
        }
    }
}

/// Lists regular files under `dir` matching `globs`, sorted, skipping hidden entries (`.git`,
/// `.cache/huggingface` left by `huggingface-cli download --local-dir`). Symlinks are followed,
/// so a Hub cache snapshot directory works as a `path` source.
pub fn list_model_files(dir: &Path, globs: &[String]) -> Result<Vec<PlannedFile>, FetchError> {
    let set = glob_set(globs);
    let mut files = Vec::new();
    walk(dir, "", &set, &mut files)?;
    files.sort_by(|a, b| a.rel_path.cmp(&b.rel_path));
    if files.is_empty() {
        return Err(FetchError::NoFiles {
            dir: dir.to_path_buf(),
            globs: globs.join(", "),
        });
    }
    match model_layout(files.iter().map(|f| f.rel_path.as_str())) {
        Layout::Ok => {}
        Layout::NoConfig => {
            return Err(FetchError::NoConfig {
                dir: dir.to_path_buf(),
            });
        }
        Layout::GgufWithoutTokenizer => {
            return Err(FetchError::GgufWithoutTokenizer {
                dir: dir.to_path_buf(),
            });
        }
    }
    if files.iter().any(|f| f.rel_path == SHARD_INDEX) {
        let index_err = |message| FetchError::ShardIndex {
            dir: dir.to_path_buf(),
            message,
        };
        let index = std::fs::read(dir.join(SHARD_INDEX))
            .map_err(|e| index_err(format!("cannot be read: {e}")))?;
        files = keep_indexed_shards(files, |f| &f.rel_path, &index).map_err(index_err)?;
    }
    Ok(files)
}

/// Whether the selected files make a model the server can load.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Layout {
    Ok,
    NoConfig,
    GgufWithoutTokenizer,
}

/// A Hugging Face layout (`config.json`), or a GGUF file at the top level
/// with the `tokenizer.json` the server reads beside it (what GGUF
/// repositories and Ollama-style directories hold: no `config.json`).
pub(crate) fn model_layout<'a>(paths: impl Iterator<Item = &'a str> + Clone) -> Layout {
    let has = |name: &str| paths.clone().any(|p| p == name);
    if has("config.json") {
        return Layout::Ok;
    }
    if !paths
        .clone()
        .any(|p| !p.contains('/') && p.ends_with(".gguf"))
    {
        return Layout::NoConfig;
    }
    if has("tokenizer.json") {
        Layout::Ok
    } else {
        Layout::GgufWithoutTokenizer
    }
}

/// The index of a sharded safetensors checkpoint: which shard holds each tensor.
pub const SHARD_INDEX: &str = "model.safetensors.index.json";

/// Keeps, of the top-level `*.safetensors` files, those the shard index names, and drops the
/// others. Why: some repositories carry the same weights twice (Mistral's
/// `consolidated.safetensors` beside the Hugging Face shards); loaders read only the indexed
/// shards (the server, like vLLM), so the other copy would double the image for nothing. An
/// index that names a shard not among `items` is an error: the image would not load.
pub(crate) fn keep_indexed_shards<T>(
    items: Vec<T>,
    path: impl Fn(&T) -> &str,
    index: &[u8],
) -> Result<Vec<T>, String> {
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: BTreeMap<String, String>,
    }
    let index: Index = serde_json::from_slice(index)
        .map_err(|e| format!("is not a safetensors index (a `weight_map` object): {e}"))?;
    let shards: BTreeSet<&str> = index.weight_map.values().map(String::as_str).collect();
    let is_weights = |p: &str| !p.contains('/') && p.ends_with(".safetensors");
    let missing: Vec<&str> = shards
        .iter()
        .filter(|s| !items.iter().any(|i| path(i) == **s))
        .copied()
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "names {} which {} not among the model files (check `model.files`)",
            missing.join(", "),
            if missing.len() == 1 { "is" } else { "are" }
        ));
    }
    Ok(items
        .into_iter()
        .filter(|i| !is_weights(path(i)) || shards.contains(path(i)))
        .collect())
}

pub(crate) fn glob_set(globs: &[String]) -> GlobSet {
    let mut builder = GlobSetBuilder::new();
    for glob in globs {
        // The manifest already validated every glob.
        if let Ok(glob) = Glob::new(glob) {
            builder.add(glob);
        }
    }
    builder.build().unwrap_or_else(|_| GlobSet::empty())
}

fn walk(
    dir: &Path,
    prefix: &str,
    set: &GlobSet,
    out: &mut Vec<PlannedFile>,
) -> Result<(), FetchError> {
    let read_err = |source| FetchError::ReadDir {
        path: dir.to_path_buf(),
        source,
    };
    for entry in std::fs::read_dir(dir).map_err(read_err)? {
        let entry = entry.map_err(read_err)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let rel = format!("{prefix}{name}");
        let path = entry.path();
        match std::fs::metadata(&path) {
            Ok(meta) if meta.is_dir() => walk(&path, &format!("{rel}/"), set, out)?,
            Ok(meta) if meta.is_file() && set.is_match(&rel) => out.push(PlannedFile {
                rel_path: rel,
                host_path: path,
                size: meta.len(),
            }),
            Ok(meta) if meta.is_file() => {}
            _ if set.is_match(&rel) => return Err(FetchError::NotAFile { path }),
            _ => {}
        }
    }
    Ok(())
}

/// Fails early if a pin names a file that will not be packaged.
pub fn check_pinned_files_present(
    pins: &BTreeMap<String, Sha256Digest>,
    files: &[PlannedFile],
) -> Result<(), FetchError> {
    match pins
        .keys()
        .find(|p| !files.iter().any(|f| &f.rel_path == *p))
    {
        Some(file) => Err(FetchError::PinnedFileMissing { file: file.clone() }),
        None => Ok(()),
    }
}

/// Compares the digests measured while packaging with the manifest's pins.
pub fn check_pins(
    pins: &BTreeMap<String, Sha256Digest>,
    measured: &BTreeMap<String, Sha256Digest>,
) -> Result<(), FetchError> {
    for (file, expected) in pins {
        match measured.get(file) {
            None => {
                return Err(FetchError::PinnedFileMissing { file: file.clone() });
            }
            Some(actual) if actual != expected => {
                return Err(FetchError::PinMismatch {
                    file: file.clone(),
                    expected: expected.hex(),
                    actual: actual.hex(),
                });
            }
            Some(_) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const INDEX: &str = r#"{"metadata":{},"weight_map":{"a":"m-2.safetensors","b":"m-1.safetensors","c":"m-2.safetensors"}}"#;

    #[test]
    fn a_gguf_file_with_a_tokenizer_is_a_model_without_config_json() {
        let layout = |files: &[&str]| model_layout(files.iter().copied());
        assert_eq!(layout(&["config.json", "model.safetensors"]), Layout::Ok);
        assert_eq!(layout(&["m-q4_k_m.gguf", "tokenizer.json"]), Layout::Ok);
        assert_eq!(layout(&["m-q4_k_m.gguf"]), Layout::GgufWithoutTokenizer);
        assert_eq!(layout(&["sub/m.gguf", "tokenizer.json"]), Layout::NoConfig);
        assert_eq!(layout(&["tokenizer.json", "README.md"]), Layout::NoConfig);
    }

    #[test]
    fn a_gguf_directory_lists_and_one_without_tokenizer_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("model-q8_0.gguf"), b"GGUF").unwrap();
        let all = ["*".to_string()];
        let err = list_model_files(dir.path(), &all).unwrap_err();
        assert!(err.to_string().contains("tokenizer.json"), "{err}");
        std::fs::write(dir.path().join("tokenizer.json"), b"{}").unwrap();
        let files = list_model_files(dir.path(), &all).unwrap();
        let names: Vec<&str> = files.iter().map(|f| f.rel_path.as_str()).collect();
        assert_eq!(names, ["model-q8_0.gguf", "tokenizer.json"]);
    }

    #[test]
    fn keeps_the_indexed_shards_and_everything_but_other_weights() {
        let files = [
            "config.json",
            "consolidated.safetensors",
            "m-1.safetensors",
            "m-2.safetensors",
            "model.safetensors.index.json",
            "sub/extra.safetensors",
        ];
        let kept = keep_indexed_shards(files.to_vec(), |f| f, INDEX.as_bytes()).unwrap();
        assert_eq!(
            kept,
            [
                "config.json",
                "m-1.safetensors",
                "m-2.safetensors",
                "model.safetensors.index.json",
                "sub/extra.safetensors",
            ]
        );
    }

    #[test]
    fn an_index_naming_a_missing_shard_or_no_weight_map_is_refused() {
        let err =
            keep_indexed_shards(vec!["m-1.safetensors"], |f| f, INDEX.as_bytes()).unwrap_err();
        assert!(
            err.contains("names m-2.safetensors which is not among"),
            "{err}"
        );
        let err = keep_indexed_shards(vec!["m-1.safetensors"], |f| f, b"{}").unwrap_err();
        assert!(err.contains("weight_map"), "{err}");
    }
}
