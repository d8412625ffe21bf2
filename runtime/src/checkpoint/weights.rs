//! Inventory of a model directory's weight files (`*.safetensors`, `*.gguf`).
//!
//! Runs before the engine loads: it proves the weights are present and
//! readable (a dangling shard symlink fails here, naming the link) and logs
//! what the image ships, which is what an operator checks first when a model
//! misbehaves. Loading itself is `crate::models`.

use std::{
    fs,
    path::{Path, PathBuf},
};

use appliance_common::weights::WeightFormat;

use super::model_dir::ModelError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightFile {
    pub name: String,
    pub bytes: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WeightInventory {
    /// Sorted by name, so logs are stable across runs.
    pub files: Vec<WeightFile>,
    pub total_bytes: u64,
}

/// Lists `dir/*.safetensors` and `dir/*.gguf` (not recursive: sharded checkpoints keep their
/// shards next to `config.json`). Symlinks are followed, because Hugging
/// Face cache layouts link shards to content-addressed blobs.
pub fn inventory(dir: &Path) -> Result<WeightInventory, ModelError> {
    let io_err = |path: PathBuf| move |source| ModelError::Io { path, source };
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir.to_owned()))? {
        let entry = entry.map_err(io_err(dir.to_owned()))?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if WeightFormat::of(&name).is_none() {
            continue;
        }
        let meta = fs::metadata(&path).map_err(io_err(path.clone()))?;
        if !meta.is_file() {
            continue;
        }
        files.push(WeightFile {
            name,
            bytes: meta.len(),
        });
    }
    files.sort_by(|a, b| a.name.cmp(&b.name));
    let total_bytes = files.iter().map(|f| f.bytes).sum();
    Ok(WeightInventory { files, total_bytes })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_only_safetensors_sorted() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("b.safetensors"), [0u8; 10]).expect("write");
        fs::write(dir.path().join("a.safetensors"), [0u8; 5]).expect("write");
        fs::write(dir.path().join("config.json"), "{}").expect("write");
        fs::create_dir(dir.path().join("dir.safetensors")).expect("mkdir");
        let inv = inventory(dir.path()).expect("inventory");
        let names: Vec<_> = inv.files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["a.safetensors", "b.safetensors"]);
        assert_eq!(inv.total_bytes, 15);
    }
}
