//! Fetches the model: turns a manifest's model source into local files ready to package, and
//! checks their digests against the manifest's pins.
//!
//! Digests are not computed here but while the layers are measured (the same single read that
//! feeds the layer digest), and handed back to [`check_pins`] before anything is written.

pub mod format;
pub mod gguf;
pub mod hub;
pub use crate::synthetic;
pub mod tokenizer;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use globset::{Glob, GlobSet, GlobSetBuilder};

use crate::digest::Sha256Digest;
use crate::layers::plan::PlannedFile;
use crate::manifest::{ModelSettings, ModelSource};
pub use format::{ModelFormat, WeightFormat};
use synthetic::SyntheticSpec;

/// The model as local files, with where it came from.
#[derive(Debug, Clone)]
pub struct FetchedModel {
    /// Sorted by relative path.
    pub files: Vec<PlannedFile>,
    pub origin: ModelOrigin,
    /// `None` when the weights are neither GGUF nor safetensors.
    pub format: Option<ModelFormat>,
}

impl FetchedModel {
    /// Reads what the weights are once, here, so that a GGUF file the server would refuse fails
    /// before any layer is written, and labels, SBOM and summary share one reading. For a model
    /// without a companion tokenizer source: see [`FetchedModel::with_companion`].
    pub fn new(files: Vec<PlannedFile>, origin: ModelOrigin) -> Result<Self, FetchError> {
        Self::with_companion(files, origin, &[])
    }

    /// [`FetchedModel::new`] for a model packaged beside a companion tokenizer source's files
    /// (`companion`, their names). A GGUF with no `tokenizer.json` among either must carry a
    /// tokenizer the server can build from its metadata.
    pub fn with_companion(
        files: Vec<PlannedFile>,
        origin: ModelOrigin,
        companion: &[String],
    ) -> Result<Self, FetchError> {
        let tokenizer_json = files
            .iter()
            .map(|f| f.rel_path.as_str())
            .chain(companion.iter().map(String::as_str))
            .any(|p| p == tokenizer::TOKENIZER_JSON);
        let format = ModelFormat::read(&files, tokenizer_json)?;
        Ok(Self {
            files,
            origin,
            format,
        })
    }
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
    #[error(
        "`model.require_pins` is on, but {} files have no pin; add them under `[model.sha256]` (or \
         `model.tokenizer.sha256`) if these digests, as read now, are the reviewed ones:{}",
        .0.len(),
        .0.iter().map(|(f, d)| format!("\n  \"{f}\" = \"{d}\"")).collect::<String>()
    )]
    Unpinned(Vec<(String, String)>),
    #[error("Model directory `{dir}`: {error}")]
    GgufShards {
        dir: PathBuf,
        error: gguf::ShardSetError,
    },
    /// Names the file and the key or tensor.
    #[error(transparent)]
    Gguf(#[from] gguf::GgufError),
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

    /// `companion`: the files a companion tokenizer source puts beside the model's, which count
    /// towards a loadable layout (a GGUF file without a `tokenizer.json` from either must carry
    /// its tokenizer in its metadata).
    pub fn fetch(
        &self,
        model: &ModelSettings,
        companion: &[String],
    ) -> Result<FetchedModel, FetchError> {
        match &model.source {
            ModelSource::Path(dir) => {
                let name = dir
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                FetchedModel::with_companion(
                    list_model_files(dir, &model.files, companion)?,
                    ModelOrigin::Path { name },
                    companion,
                )
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
                FetchedModel::new(
                    list_model_files(&dir, &["*".to_string()], &[])?,
                    ModelOrigin::Synthetic {
                        spec: spec.clone(),
                        digest,
                    },
                )
            }
        }
    }
}

/// Lists regular files under `dir` matching `globs`, sorted, skipping hidden entries (`.git`,
/// `.cache/huggingface` left by `huggingface-cli download --local-dir`). Symlinks are followed,
/// so a Hub cache snapshot directory works as a `path` source. `companion`: see [`Fetcher::fetch`].
pub fn list_model_files(
    dir: &Path,
    globs: &[String],
    companion: &[String],
) -> Result<Vec<PlannedFile>, FetchError> {
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
    let paths = files.iter().map(|f| f.rel_path.as_str());
    match model_layout(paths.chain(companion.iter().map(String::as_str))) {
        Layout::Ok => {}
        Layout::NoConfig => {
            return Err(FetchError::NoConfig {
                dir: dir.to_path_buf(),
            });
        }
        Layout::GgufShards(error) => {
            return Err(FetchError::GgufShards {
                dir: dir.to_path_buf(),
                error,
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
    /// GGUF files that are not one complete set: the server would refuse them.
    GgufShards(gguf::ShardSetError),
}

/// A Hugging Face layout (`config.json`), or a GGUF file at the top level
/// (what GGUF repositories and Ollama-style directories hold: no
/// `config.json`). GGUF files must be one file or one complete shard set
/// even beside a `config.json`: the server loads them in preference to it.
/// Whether the server has a tokenizer for a GGUF is not decided by names:
/// without `tokenizer.json` it builds one from the GGUF's metadata, which
/// the header check ([`FetchedModel::with_companion`]) looks at.
pub(crate) fn model_layout<'a>(paths: impl Iterator<Item = &'a str> + Clone) -> Layout {
    if let Err(error) = gguf::shard_set(paths.clone()) {
        return Layout::GgufShards(error);
    }
    if paths.clone().any(|p| p == "config.json") || paths.clone().any(gguf::is_gguf) {
        Layout::Ok
    } else {
        Layout::NoConfig
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
    let is_weights = |p: &str| WeightFormat::of(p) == Some(WeightFormat::Safetensors);
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

pub(crate) fn walk(
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
/// `model.require_pins`: every file read has a pin (which [`check_pins`] has compared).
pub fn check_all_pinned<'a>(
    pinned: impl Fn(&str) -> bool,
    measured: impl IntoIterator<Item = (&'a String, &'a Sha256Digest)>,
) -> Result<(), FetchError> {
    let unpinned: Vec<(String, String)> = measured
        .into_iter()
        .filter(|(file, _)| !pinned(file))
        .map(|(file, digest)| (file.clone(), digest.hex()))
        .collect();
    if unpinned.is_empty() {
        Ok(())
    } else {
        Err(FetchError::Unpinned(unpinned))
    }
}

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

    /// The names decide only whether there is a model; whether a GGUF has a tokenizer (a
    /// `tokenizer.json` or its metadata) is the header check's.
    #[test]
    fn a_top_level_gguf_file_is_a_model_without_config_json() {
        let layout = |files: &[&str]| model_layout(files.iter().copied());
        assert_eq!(layout(&["config.json", "model.safetensors"]), Layout::Ok);
        assert_eq!(layout(&["m-q4_k_m.gguf", "tokenizer.json"]), Layout::Ok);
        assert_eq!(layout(&["m-q4_k_m.gguf"]), Layout::Ok);
        assert_eq!(layout(&["sub/m.gguf", "tokenizer.json"]), Layout::NoConfig);
        assert_eq!(layout(&["tokenizer.json", "README.md"]), Layout::NoConfig);
    }

    /// A GGUF directory without `tokenizer.json` lists; its header then decides: a GGUF with no
    /// tokenizer metadata is refused naming the file and the key, unless a `tokenizer.json` comes
    /// from the directory or a companion tokenizer source.
    #[test]
    fn a_gguf_without_tokenizer_json_needs_a_tokenizer_in_its_metadata() {
        use gguf::tests::{Meta, gguf_bytes};
        let dir = tempfile::tempdir().unwrap();
        let bare = [("general.architecture", Meta::Str("llama"))];
        let path = dir.path().join("model-q8_0.gguf");
        std::fs::write(&path, gguf_bytes(&bare, &[("a", 32, 0)])).unwrap();
        let all = ["*".to_string()];
        let origin = || ModelOrigin::Path { name: "m".into() };
        let files = list_model_files(dir.path(), &all, &[]).unwrap();
        assert_eq!(files.len(), 1);
        let err = FetchedModel::new(files.clone(), origin())
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!(
                "{}: no `tokenizer.json` is packaged beside this GGUF, and the server cannot build the tokenizer from its metadata: `tokenizer.ggml.model` is missing",
                path.display()
            )),
            "{err}"
        );
        // A companion tokenizer source supplies what the directory lacks.
        let companion = ["tokenizer.json".to_string()];
        FetchedModel::with_companion(files, origin(), &companion).unwrap();
        std::fs::write(dir.path().join("tokenizer.json"), b"{}").unwrap();
        let files = list_model_files(dir.path(), &all, &[]).unwrap();
        let names: Vec<&str> = files.iter().map(|f| f.rel_path.as_str()).collect();
        assert_eq!(names, ["model-q8_0.gguf", "tokenizer.json"]);
        FetchedModel::new(files, origin()).unwrap();

        // Its own vocabulary is enough.
        std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
        let tokenizer = [
            ("general.architecture", Meta::Str("llama")),
            ("tokenizer.ggml.model", Meta::Str("gpt2")),
            ("tokenizer.ggml.tokens", Meta::Strs(&["a", "b"])),
        ];
        std::fs::write(&path, gguf_bytes(&tokenizer, &[("a", 32, 0)])).unwrap();
        let files = list_model_files(dir.path(), &all, &[]).unwrap();
        let model = FetchedModel::new(files, origin()).unwrap();
        assert_eq!(model.format.unwrap().weights, WeightFormat::Gguf);
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
