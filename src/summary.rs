//! Defines `ImageSummary`: what an image is, in the shape both `build --json` and
//! `inspect --json` print, so one can be checked against the other.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::fetch::{ModelFormat, WeightFormat};
use crate::image::Healthcheck;

pub use crate::labels;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageSummary {
    /// `name:tag` as written in the manifest.
    pub reference: String,
    pub manifest_digest: String,
    pub config_digest: String,
    pub architecture: String,
    pub created: String,
    pub user: String,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub exposed_ports: Vec<String>,
    pub healthcheck: Option<Healthcheck>,
    pub labels: BTreeMap<String, String>,
    pub layers: Vec<LayerSummary>,
    pub model: Option<ModelSummary>,
    /// The release gate's results, when the image carries them signed (test-result
    /// attestation). `inspect` shows them without checking the signature: `verify` does that.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evaluation: Option<EvaluationSummary>,
    /// The tarball is a delta bundle (`appliance delta`): its documents describe the image, but
    /// blobs the base release holds are missing, so it cannot be pushed or run as it is.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub delta_bundle: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvaluationSummary {
    /// `PASSED` or `WARNED` (some cases failed within `min_pass_rate`).
    pub result: String,
    pub passed: usize,
    pub cases: usize,
    /// Names of the cases that failed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<String>,
}

impl EvaluationSummary {
    /// Reads a test-result predicate as [`crate::eval::predicate`] writes it.
    pub fn from_predicate(predicate: &serde_json::Value) -> Option<Self> {
        let names = |key: &str| -> Vec<String> {
            predicate[key]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|n| n.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default()
        };
        let (passed, failed) = (names("passedTests"), names("warnedTests"));
        Some(Self {
            result: predicate["result"].as_str()?.to_string(),
            passed: passed.len(),
            cases: passed.len() + failed.len(),
            failed,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerSummary {
    pub digest: String,
    pub diff_id: String,
    pub size: u64,
    pub media_type: String,
    pub created_by: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSummary {
    pub name: String,
    pub path: String,
    pub source: String,
    pub revision: String,
    pub files: Vec<ModelFileSummary>,
    /// Absent for images built before the builder read it, and for weights that are neither
    /// GGUF nor safetensors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<ModelFormat>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ModelFileSummary {
    pub path: String,
    pub sha256: String,
    pub size: u64,
}

/// The digest auditors can recompute with `sha256sum`: in the model directory,
/// `find . -type f | sed 's|^\./||' | LC_ALL=C sort | xargs sha256sum | sha256sum` hashes the lines
/// `<hex>  <path>\n` in path order, which is what this hashes.
pub fn files_digest(files: &[ModelFileSummary]) -> crate::digest::Sha256Digest {
    let mut sorted: Vec<&ModelFileSummary> = files.iter().collect();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    let listing: String = sorted
        .iter()
        .map(|f| format!("{}  {}\n", f.sha256, f.path))
        .collect();
    crate::digest::Sha256Digest::of(listing.as_bytes())
}

impl ModelSummary {
    /// Rebuilds the model summary from the labels the builder wrote.
    pub fn from_labels(labels: &BTreeMap<String, String>) -> Option<Self> {
        Some(Self {
            name: labels.get(labels::MODEL_NAME)?.clone(),
            path: labels.get(labels::MODEL_PATH)?.clone(),
            source: labels.get(labels::MODEL_SOURCE)?.clone(),
            revision: labels.get(labels::MODEL_REVISION)?.clone(),
            files: serde_json::from_str(labels.get(labels::MODEL_FILES)?).ok()?,
            format: labels
                .get(labels::MODEL_FORMAT)
                .and_then(|f| WeightFormat::parse(f))
                .map(|weights| ModelFormat {
                    weights,
                    architecture: labels.get(labels::MODEL_ARCHITECTURE).cloned(),
                    quantization: labels.get(labels::MODEL_QUANTIZATION).cloned(),
                }),
        })
    }
}

impl ModelFormat {
    /// The labels that record it; [`ModelSummary::from_labels`] reads them back.
    pub fn labels(&self) -> Vec<(&'static str, String)> {
        let mut out = vec![(labels::MODEL_FORMAT, self.weights.as_str().to_string())];
        if let Some(architecture) = &self.architecture {
            out.push((labels::MODEL_ARCHITECTURE, architecture.clone()));
        }
        if let Some(quantization) = &self.quantization {
            out.push((labels::MODEL_QUANTIZATION, quantization.clone()));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_format_round_trips_through_labels() {
        let format = ModelFormat {
            weights: WeightFormat::Gguf,
            architecture: Some("qwen2".into()),
            quantization: Some("Q4_K_M".into()),
        };
        let mut map: BTreeMap<String, String> = [
            (labels::MODEL_NAME, "m"),
            (labels::MODEL_PATH, "/models/m"),
            (labels::MODEL_SOURCE, "path:m"),
            (labels::MODEL_REVISION, "r"),
            (labels::MODEL_FILES, "[]"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(ModelSummary::from_labels(&map).unwrap().format, None);
        map.extend(format.labels().into_iter().map(|(k, v)| (k.to_string(), v)));
        assert_eq!(map[labels::MODEL_QUANTIZATION], "Q4_K_M");
        assert_eq!(
            ModelSummary::from_labels(&map).unwrap().format,
            Some(format)
        );
    }
}
