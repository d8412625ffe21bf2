//! Defines `ModelFormat`: what the packaged weights are (GGUF or safetensors), of which
//! architecture, at which quantization — read once, when the model is fetched, and carried to
//! the labels, the SBOM and `inspect` from there.

use std::path::Path;

pub use appliance_common::weights::WeightFormat;
use serde::{Deserialize, Serialize};

use super::gguf::{self, GgufError};
use crate::layers::plan::PlannedFile;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelFormat {
    pub weights: WeightFormat,
    /// GGUF: `general.architecture`; safetensors: config.json's `model_type` (the same names:
    /// `llama`, `qwen2`), else its `architectures[0]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architecture: Option<String>,
    /// GGUF: the file type by llama.cpp's name (`Q4_K_M`); safetensors: config.json's
    /// `quantization_config.quant_method` (`fp8`, `gptq`), else its dtype named as safetensors
    /// and llama.cpp name it (`BF16`, `F16`, `F32`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantization: Option<String>,
}

impl ModelFormat {
    /// The format of the model files, as the server will load them: GGUF whenever a top-level
    /// `.gguf` is present (the server prefers it to config.json), whose headers are read and
    /// checked here; else safetensors described by config.json. `None` for anything else.
    ///
    /// A config.json that does not parse only leaves the facts out: it describes the model,
    /// the server checks it at startup, and the labels must not be what fails a build.
    ///
    /// `tokenizer_json`: whether a `tokenizer.json` is packaged with the model (among `files` or
    /// from a companion tokenizer source). Without one, the server builds the tokenizer from the
    /// GGUF's metadata, so the header must describe one it can build.
    pub fn read(files: &[PlannedFile], tokenizer_json: bool) -> Result<Option<Self>, GgufError> {
        let ggufs = gguf::shard_set(files.iter().map(|f| f.rel_path.as_str()))?;
        if !ggufs.is_empty() {
            let set: Vec<(&str, &Path)> = ggufs
                .iter()
                .filter_map(|rel| {
                    let file = files.iter().find(|f| f.rel_path == *rel)?;
                    Some((*rel, file.host_path.as_path()))
                })
                .collect();
            return Ok(gguf::read_set(&set, tokenizer_json)?.map(|facts| Self {
                weights: WeightFormat::Gguf,
                architecture: Some(facts.architecture),
                quantization: Some(facts.quantization),
            }));
        }
        if !files.iter().any(|f| f.rel_path.ends_with(".safetensors")) {
            return Ok(None);
        }
        let config = files
            .iter()
            .find(|f| f.rel_path == "config.json")
            .and_then(|f| std::fs::read(&f.host_path).ok())
            .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
            .unwrap_or_default();
        Ok(Some(Self::from_config(&config)))
    }

    /// `gguf, llama, Q8_0`: what is known of it, for log lines.
    pub fn describe(&self) -> String {
        [
            Some(self.weights.as_str()),
            self.architecture.as_deref(),
            self.quantization.as_deref(),
        ]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(", ")
    }

    fn from_config(config: &serde_json::Value) -> Self {
        let text = |v: &serde_json::Value| v.as_str().filter(|s| !s.is_empty()).map(str::to_string);
        let architecture =
            text(&config["model_type"]).or_else(|| text(&config["architectures"][0]));
        let dtype = text(&config["dtype"])
            .or_else(|| text(&config["torch_dtype"]))
            .map(|d| match d.trim_start_matches("torch.") {
                "bfloat16" => "BF16".to_string(),
                "float16" | "half" => "F16".to_string(),
                "float32" | "float" => "F32".to_string(),
                other => other.to_string(),
            });
        Self {
            weights: WeightFormat::Safetensors,
            architecture,
            quantization: text(&config["quantization_config"]["quant_method"]).or(dtype),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn planned(dir: &Path, name: &str, bytes: &[u8]) -> PlannedFile {
        let host_path = dir.join(name);
        std::fs::write(&host_path, bytes).unwrap();
        PlannedFile {
            rel_path: name.to_string(),
            host_path,
            size: bytes.len() as u64,
        }
    }

    #[test]
    fn safetensors_take_architecture_and_dtype_from_config_json() {
        let of = |config| ModelFormat::from_config(&config);
        let llama = of(
            json!({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "torch_dtype": "bfloat16"}),
        );
        assert_eq!(llama.architecture.as_deref(), Some("llama"));
        assert_eq!(llama.quantization.as_deref(), Some("BF16"));
        let newer = of(json!({"architectures": ["Qwen2ForCausalLM"], "dtype": "float16"}));
        assert_eq!(newer.architecture.as_deref(), Some("Qwen2ForCausalLM"));
        assert_eq!(newer.quantization.as_deref(), Some("F16"));
        let fp8 = of(
            json!({"model_type": "qwen3", "torch_dtype": "bfloat16", "quantization_config": {"quant_method": "fp8"}}),
        );
        assert_eq!(fp8.quantization.as_deref(), Some("fp8"));
        let bare = of(json!({}));
        assert_eq!((bare.architecture, bare.quantization), (None, None));
    }

    #[test]
    fn the_weights_decide_the_format() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let config = planned(
            d,
            "config.json",
            br#"{"model_type":"mistral","torch_dtype":"float32"}"#,
        );
        let weights = planned(d, "model.safetensors", b"");
        let format = ModelFormat::read(&[config.clone(), weights], false)
            .unwrap()
            .unwrap();
        assert_eq!(
            format,
            ModelFormat {
                weights: WeightFormat::Safetensors,
                architecture: Some("mistral".into()),
                quantization: Some("F32".into()),
            }
        );
        assert_eq!(
            ModelFormat::read(std::slice::from_ref(&config), false).unwrap(),
            None
        );

        // A GGUF file wins over config.json, as in the server; its header is what counts.
        use super::super::gguf::tests::{Meta, gguf_bytes};
        let bytes = gguf_bytes(
            &[
                ("general.architecture", Meta::Str("qwen3")),
                ("general.file_type", Meta::U32(18)),
            ],
            &[("a", 256, 14)],
        );
        let gguf = planned(d, "m.gguf", &bytes);
        let format = ModelFormat::read(&[config.clone(), gguf], true)
            .unwrap()
            .unwrap();
        assert_eq!(format.weights, WeightFormat::Gguf);
        assert_eq!(format.architecture.as_deref(), Some("qwen3"));
        assert_eq!(format.quantization.as_deref(), Some("Q6_K"));

        let broken = planned(d, "m.gguf", &bytes[..bytes.len() - 1]);
        let err = ModelFormat::read(&[config, broken], true)
            .unwrap_err()
            .to_string();
        assert!(err.contains("m.gguf is truncated: tensor `a`"), "{err}");
    }
}
