//! Decides which files of a model directory are its weights, for the builder (fetch, format,
//! layers) and the server (its inventory) alike.
//!
//! If the two disagreed, the builder could label, pin or layer one set of files while the server
//! loaded another. Both rules read one extension table.

use serde::{Deserialize, Serialize};

/// The weight formats the server loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightFormat {
    Gguf,
    Safetensors,
}

/// Tensor files the server does not load (PyTorch, ONNX, Flax, Keras, NumPy) but that are still
/// weights-sized blobs when a model directory carries them.
const OTHER_TENSOR_EXTENSIONS: &[&str] = &["bin", "pt", "pth", "onnx", "msgpack", "h5", "npz"];

impl WeightFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Gguf => "gguf",
            Self::Safetensors => "safetensors",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "gguf" => Some(Self::Gguf),
            "safetensors" => Some(Self::Safetensors),
            _ => None,
        }
    }

    /// The format of a file the server loads as weights, by its path in the model directory:
    /// only top-level files count, because the server reads the weights next to `config.json`
    /// and never descends (sharded checkpoints keep their shards there too).
    pub fn of(rel_path: &str) -> Option<Self> {
        if rel_path.contains('/') {
            return None;
        }
        extension(rel_path).and_then(Self::parse)
    }
}

/// Whether a file anywhere in a model directory holds tensors, in a format the server loads or
/// not; what the image layering keeps apart from the small files.
pub fn is_tensor_file(rel_path: &str) -> bool {
    extension(rel_path)
        .is_some_and(|e| WeightFormat::parse(e).is_some() || OTHER_TENSOR_EXTENSIONS.contains(&e))
}

fn extension(rel_path: &str) -> Option<&str> {
    rel_path.rsplit_once('.').map(|(_, e)| e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_top_level_gguf_and_safetensors_are_loaded_weights() {
        assert_eq!(
            WeightFormat::of("model-00001-of-00002.safetensors"),
            Some(WeightFormat::Safetensors)
        );
        assert_eq!(WeightFormat::of("m-q4_k_m.gguf"), Some(WeightFormat::Gguf));
        assert_eq!(WeightFormat::of("sub/m.gguf"), None);
        assert_eq!(WeightFormat::of("model.safetensors.index.json"), None);
        assert_eq!(WeightFormat::of("pytorch_model.bin"), None);
        assert_eq!(WeightFormat::of("config.json"), None);
    }

    #[test]
    fn tensor_files_include_formats_the_server_does_not_load_and_nested_ones() {
        for path in [
            "a.safetensors",
            "sub/m.gguf",
            "pytorch_model.bin",
            "onnx/model.onnx",
        ] {
            assert!(is_tensor_file(path), "{path}");
        }
        for path in [
            "config.json",
            "tokenizer.model",
            "README",
            "model.safetensors.index.json",
        ] {
            assert!(!is_tensor_file(path), "{path}");
        }
    }

    #[test]
    fn format_names_round_trip() {
        for format in [WeightFormat::Gguf, WeightFormat::Safetensors] {
            assert_eq!(WeightFormat::parse(format.as_str()), Some(format));
        }
    }
}
