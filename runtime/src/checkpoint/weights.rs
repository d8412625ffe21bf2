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
        if !matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("safetensors" | "gguf")
        ) {
            continue;
        }
        let meta = fs::metadata(&path).map_err(io_err(path.clone()))?;
        if !meta.is_file() {
            continue;
        }
        files.push(WeightFile {
            name: entry.file_name().to_string_lossy().into_owned(),
            bytes: meta.len(),
        });
    }
    files.sort_by(|a, b| a.name.cmp(&b.name));
    let total_bytes = files.iter().map(|f| f.bytes).sum();
    Ok(WeightInventory { files, total_bytes })
}

/// `1234567890` → `"1.15 GiB"`; for logs, where exact byte counts are noise.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.2} {}", UNITS[unit])
    }
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

    #[test]
    fn human_sizes() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.50 KiB");
        assert_eq!(human_bytes(3 * 1024 * 1024 * 1024), "3.00 GiB");
    }
}
