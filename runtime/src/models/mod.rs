//! Model implementations and checkpoint loading: the bottom layer of the
//! `api → scheduler → engine → model` stack.
//!
//! [`CausalLm::load`] turns a Hugging Face directory (`config.json` plus a
//! single `model.safetensors` or shards listed in
//! `model.safetensors.index.json`), or a directory holding a GGUF file (or
//! its shards), into immutable weights on a device. Every
//! failure names the file it came from, because "cannot load the model" is
//! useless to an operator staring at a crash-looping container.

pub mod attention;
pub mod batch;
pub mod config;
pub mod linear;
pub mod rope;
pub mod transformer;

use std::{
    collections::BTreeSet,
    fs, io,
    path::{Path, PathBuf},
};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;

pub use batch::{Batch, SeqSlice};
pub use config::{Architecture, ConfigError, ConfigTokens, ModelSpec};
pub use linear::Kernels;
pub use transformer::Transformer;

use crate::{
    checkpoint::{
        Safetensors,
        gguf::{self, Gguf, GgufWeights},
    },
    kernels::attention::KvShape,
    kv::KvCache,
};

pub const SINGLE_FILE: &str = "model.safetensors";
pub const INDEX_FILE: &str = "model.safetensors.index.json";

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{} has neither {SINGLE_FILE} nor {INDEX_FILE}", dir.display())]
    NoWeights { dir: PathBuf },
    #[error("cannot read {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is not a valid safetensors index", path.display())]
    Index {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("shard {} listed in {} is missing", shard.display(), index.display())]
    MissingShard { index: PathBuf, shard: PathBuf },
    #[error(transparent)]
    Gguf(#[from] gguf::GgufError),
    #[error("cannot load weights from {files}")]
    Weights {
        files: String,
        #[source]
        source: candle_core::Error,
    },
}

#[derive(Debug, Deserialize)]
struct ShardIndex {
    weight_map: std::collections::BTreeMap<String, String>,
}

/// The safetensors files of a checkpoint, in a stable order: the single
/// file, or every shard the index names (each checked to exist, so a
/// half-copied model fails naming the missing shard).
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let index = dir.join(INDEX_FILE);
    if index.is_file() {
        let raw = fs::read(&index).map_err(|source| LoadError::Io {
            path: index.clone(),
            source,
        })?;
        let parsed: ShardIndex =
            serde_json::from_slice(&raw).map_err(|source| LoadError::Index {
                path: index.clone(),
                source,
            })?;
        let shards: BTreeSet<&String> = parsed.weight_map.values().collect();
        let mut files = Vec::with_capacity(shards.len());
        for shard in shards {
            let path = dir.join(shard);
            if !path.is_file() {
                return Err(LoadError::MissingShard { index, shard: path });
            }
            files.push(path);
        }
        return Ok(files);
    }
    let single = dir.join(SINGLE_FILE);
    if single.is_file() {
        return Ok(vec![single]);
    }
    Err(LoadError::NoWeights {
        dir: dir.to_owned(),
    })
}

/// A loaded causal language model: resolved spec plus weights on a device.
#[derive(Debug)]
pub struct CausalLm {
    pub spec: ModelSpec,
    pub dtype: DType,
    model: Transformer,
}

impl CausalLm {
    /// Loads `dir` onto `device`: weights in `dtype` (the kernels keep
    /// them packed in it on the CPU), RoPE tables for `max_positions`.
    /// `gguf`: the headers of the directory's GGUF file(s), when it holds
    /// GGUF instead of safetensors.
    #[allow(clippy::too_many_arguments)]
    pub fn load(
        dir: &Path,
        gguf: Option<&Gguf>,
        spec: ModelSpec,
        device: &Device,
        dtype: DType,
        kernels: Kernels,
        max_positions: usize,
    ) -> Result<Self, LoadError> {
        if let Some(gguf) = gguf {
            let names = gguf
                .files()
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join(", ");
            let cpu = match kernels {
                Kernels::Cpu { isa, .. } => Some(isa),
                Kernels::Candle => None,
            };
            let weights = GgufWeights::new(gguf, &spec, device, dtype, cpu);
            let model =
                Transformer::load(&spec, &weights, max_positions, kernels).map_err(|source| {
                    LoadError::Weights {
                        files: names,
                        source,
                    }
                })?;
            return Ok(Self { spec, dtype, model });
        }
        let files = weight_files(dir)?;
        let wrap = |source| LoadError::Weights {
            files: files
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            source,
        };
        // SAFETY: the files are memory-mapped read-only. Mutating them while
        // mapped would be undefined behaviour; model directories are
        // immutable inside an appliance image (read-only layers), which is
        // the deployment this server is built for. The mapping ends with
        // `vb` at the end of this function: packed weights are copies.
        let vb =
            unsafe { VarBuilder::from_mmaped_safetensors(&files, dtype, device) }.map_err(wrap)?;
        let model =
            Transformer::load(&spec, &Safetensors(vb), max_positions, kernels).map_err(wrap)?;
        Ok(Self { spec, dtype, model })
    }

    /// A KV pool of `num_blocks` blocks of `block_size` tokens, in the
    /// form this model's kernels read, allocated (and resident) now.
    pub fn new_kv_cache(
        &self,
        num_blocks: usize,
        block_size: usize,
    ) -> candle_core::Result<KvCache> {
        let shape = KvShape {
            num_blocks,
            block_size,
            kv_heads: self.spec.num_kv_heads,
            head_dim: self.spec.head_dim,
        };
        let layers = self.model.num_layers();
        match self.model.kernels() {
            Kernels::Cpu { weights, .. } => Ok(KvCache::cpu(shape, layers, weights)),
            Kernels::Candle => KvCache::tensors(shape, layers, self.dtype, self.model.device()),
        }
    }

    pub fn num_layers(&self) -> usize {
        self.model.num_layers()
    }

    pub fn kernels(&self) -> Kernels {
        self.model.kernels()
    }

    /// Bytes of weights the model holds in memory.
    pub fn weight_bytes(&self) -> usize {
        self.model.weight_bytes()
    }

    /// One step over a packed batch: f32 logits `(sample_rows, vocab)`.
    pub fn forward(&self, batch: &Batch, cache: &mut KvCache) -> candle_core::Result<Tensor> {
        self.model.forward(batch, cache)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sharded_index_lists_each_shard_once_and_checks_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let index = r#"{"metadata":{},"weight_map":{"a":"m-2.safetensors","b":"m-1.safetensors","c":"m-2.safetensors"}}"#;
        fs::write(dir.path().join(INDEX_FILE), index).expect("write");
        fs::write(dir.path().join("m-1.safetensors"), b"x").expect("write");
        let err = weight_files(dir.path()).expect_err("missing shard");
        assert!(err.to_string().contains("m-2.safetensors"), "{err}");
        fs::write(dir.path().join("m-2.safetensors"), b"x").expect("write");
        let files = weight_files(dir.path()).expect("both shards");
        assert_eq!(files.len(), 2);
        assert!(files[0].ends_with("m-1.safetensors"));
    }

    #[test]
    fn no_weights_names_the_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = weight_files(dir.path()).expect_err("empty dir");
        assert!(err.to_string().contains(&dir.path().display().to_string()));
    }
}
