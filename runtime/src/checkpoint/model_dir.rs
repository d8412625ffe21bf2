//! The model directory: the startup check that `--model` is a usable
//! Hugging Face-style directory, and its `config.json`, read once and
//! resolved into a [`ModelSpec`] (which the engine then loads from).
//!
//! This runs before the server binds its port, so a wrong path or a broken
//! config fails the container immediately with a message naming the path,
//! instead of leaving a process that serves `/health` but never gets ready.
//! Loading the weights is the engine's job; [`super::weights`] only inventories them.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use serde::Deserialize;

use crate::{
    checkpoint::gguf::{self, GgufError},
    models::{ConfigError, ConfigTokens, ModelSpec},
};

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model directory {} does not exist", path.display())]
    NotFound { path: PathBuf },
    #[error("model path {} is not a directory", path.display())]
    NotADirectory { path: PathBuf },
    #[error("model directory {} has no config.json (expected {}) and no .gguf file", dir.display(), config.display())]
    MissingConfig { dir: PathBuf, config: PathBuf },
    #[error("cannot read {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is not a valid model config", path.display())]
    InvalidConfig {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{} names neither `model_type` nor `architectures`", path.display())]
    UnknownArchitecture { path: PathBuf },
    #[error(
        "cannot derive a model name from {}; pass --served-model-name",
        path.display()
    )]
    NoName { path: PathBuf },
    /// Readable, but not a checkpoint this server can run (architecture,
    /// activation, head layout): refused before the port is bound.
    #[error(transparent)]
    Spec(#[from] ConfigError),
    #[error(transparent)]
    Gguf(#[from] GgufError),
}

/// The subset of `config.json` this server relies on. Unknown fields are
/// ignored: configs carry dozens of architecture-specific keys.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ModelConfig {
    pub model_type: Option<String>,
    #[serde(default)]
    pub architectures: Vec<String>,
}

/// A model directory that passed the startup check.
#[derive(Debug, Clone)]
pub struct ModelDir {
    pub path: PathBuf,
    /// The name clients use in `"model": ...` and see in `/v1/models`.
    pub served_name: String,
    pub config: ModelConfig,
    pub spec: ModelSpec,
    /// `config.json`'s token ids (the tokenizer's fallback stop ids).
    pub config_tokens: ConfigTokens,
}

impl ModelDir {
    /// Checks that `path` is a directory with a readable, plausible
    /// `config.json`. `served_name` overrides the default name, which is the
    /// directory's own name (the builder lays models out as `/models/<name>`).
    pub fn open(path: &Path, served_name: Option<&str>) -> Result<Self, ModelError> {
        let meta = fs::metadata(path).map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => ModelError::NotFound {
                path: path.to_owned(),
            },
            _ => ModelError::Io {
                path: path.to_owned(),
                source,
            },
        })?;
        if !meta.is_dir() {
            return Err(ModelError::NotADirectory {
                path: path.to_owned(),
            });
        }

        let (config, spec, config_tokens) = match gguf::open_dir(path)? {
            // A GGUF file carries its own shape; config.json, if any, is
            // not what the weights were made from.
            Some(gguf) => {
                let (name, _) = gguf.architecture()?;
                let (spec, tokens) = gguf.spec()?;
                let config = ModelConfig {
                    model_type: Some(name),
                    architectures: Vec::new(),
                };
                (config, spec, tokens)
            }
            None => Self::read_config(path)?,
        };
        let served_name = match served_name {
            Some(name) => name.to_owned(),
            None => default_name(path)?,
        };
        Ok(Self {
            path: path.to_owned(),
            served_name,
            config,
            spec,
            config_tokens,
        })
    }

    fn read_config(path: &Path) -> Result<(ModelConfig, ModelSpec, ConfigTokens), ModelError> {
        let config_path = path.join("config.json");
        let raw = fs::read(&config_path).map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => ModelError::MissingConfig {
                dir: path.to_owned(),
                config: config_path.clone(),
            },
            _ => ModelError::Io {
                path: config_path.clone(),
                source,
            },
        })?;
        let config: ModelConfig =
            serde_json::from_slice(&raw).map_err(|source| ModelError::InvalidConfig {
                path: config_path.clone(),
                source,
            })?;
        if config.model_type.is_none() && config.architectures.is_empty() {
            return Err(ModelError::UnknownArchitecture { path: config_path });
        }
        let (spec, config_tokens) = ModelSpec::parse(&raw, &config_path)?;
        Ok((config, spec, config_tokens))
    }
}

/// The directory's file name; for paths like `.` that have none, the
/// canonical path's file name.
fn default_name(path: &Path) -> Result<String, ModelError> {
    let from = |p: &Path| {
        p.file_name()
            .and_then(|n| n.to_str())
            .filter(|n| !n.is_empty())
            .map(str::to_owned)
    };
    if let Some(name) = from(path) {
        return Ok(name);
    }
    fs::canonicalize(path)
        .ok()
        .and_then(|p| from(&p))
        .ok_or_else(|| ModelError::NoName {
            path: path.to_owned(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LLAMA: &str = r#"{"model_type":"llama","architectures":["LlamaForCausalLM"],"vocab_size":16,"hidden_size":8,"intermediate_size":16,"num_hidden_layers":1,"num_attention_heads":2}"#;

    fn dir_with_config(config: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("config.json"), config).expect("write config");
        dir
    }

    #[test]
    fn reads_config_and_defaults_the_name() {
        let dir = dir_with_config(LLAMA);
        let model = ModelDir::open(dir.path(), None).expect("valid model dir");
        assert_eq!(model.config.model_type.as_deref(), Some("llama"));
        assert_eq!((model.spec.hidden_size, model.spec.num_layers), (8, 1));
        assert_eq!(model.config.architectures, ["LlamaForCausalLM"]);
        let expected = dir.path().file_name().and_then(|n| n.to_str());
        assert_eq!(Some(model.served_name.as_str()), expected);

        let model = ModelDir::open(dir.path(), Some("custom")).expect("valid model dir");
        assert_eq!(model.served_name, "custom");
    }

    #[test]
    fn trailing_slash_keeps_the_directory_name() {
        let dir = dir_with_config(LLAMA);
        let with_slash = PathBuf::from(format!("{}/", dir.path().display()));
        let model = ModelDir::open(&with_slash, None).expect("valid model dir");
        assert_eq!(
            Some(model.served_name.as_str()),
            dir.path().file_name().and_then(|n| n.to_str())
        );
    }

    #[test]
    fn errors_name_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("absent");
        let err = ModelDir::open(&missing, None).expect_err("missing dir");
        assert!(matches!(err, ModelError::NotFound { .. }));
        assert!(err.to_string().contains(&missing.display().to_string()));

        let err = ModelDir::open(dir.path(), None).expect_err("no config");
        assert!(matches!(err, ModelError::MissingConfig { .. }));
        assert!(err.to_string().contains("config.json"));

        let file = dir.path().join("file");
        fs::write(&file, "x").expect("write");
        let err = ModelDir::open(&file, None).expect_err("not a dir");
        assert!(matches!(err, ModelError::NotADirectory { .. }));

        let bad = dir_with_config("{not json");
        let err = ModelDir::open(bad.path(), None).expect_err("bad json");
        assert!(matches!(err, ModelError::InvalidConfig { .. }));

        let vague = dir_with_config(r#"{"hidden_size":8}"#);
        let err = ModelDir::open(vague.path(), None).expect_err("no architecture");
        assert!(matches!(err, ModelError::UnknownArchitecture { .. }));

        let gpt2 = LLAMA
            .replace("LlamaForCausalLM", "GPT2LMHeadModel")
            .replace("\"llama\"", "\"gpt2\"");
        let other = dir_with_config(&gpt2);
        let err = ModelDir::open(other.path(), None).expect_err("unsupported");
        assert!(matches!(err, ModelError::Spec(_)), "{err:?}");
        assert!(err.to_string().contains("config.json"), "{err}");
    }
}
