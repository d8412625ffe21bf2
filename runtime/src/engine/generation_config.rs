//! The checkpoint's `generation_config.json` sampling defaults, and how a
//! request's own settings combine with them.
//!
//! Why: model authors tune `temperature`, `top_p`, `top_k` and
//! `repetition_penalty` for their model and ship them there; vLLM applies
//! them by default whenever a request leaves a field unset, so users moving
//! from vLLM get the same outputs for the same requests. (Stop ids from the
//! same file are gathered by `tokenizer.rs`.)

use std::path::{Path, PathBuf};

use super::{SamplingParams, tokenizer::read_json_if_present};

pub const FILE: &str = "generation_config.json";

#[derive(Debug, thiserror::Error)]
pub enum GenerationConfigError {
    #[error(transparent)]
    Read(#[from] super::TokenizerError),
    #[error("{}: `{field}` is invalid: {reason}", path.display())]
    Field {
        path: PathBuf,
        field: &'static str,
        reason: String,
    },
}

/// Sampling defaults from `generation_config.json` (absent fields: none).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenerationDefaults {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    /// `Some(None)`: the file disables top-k explicitly (0).
    pub top_k: Option<Option<usize>>,
    pub repetition_penalty: Option<f32>,
    /// `max_new_tokens`: the default `max_tokens` of chat requests (vLLM's behaviour; legacy
    /// completions keep OpenAI's default of 16).
    pub max_new_tokens: Option<usize>,
}

/// The fields read, each on its own through `typed` so that a wrong type names its field.
struct Raw {
    temperature: Option<f64>,
    top_p: Option<f64>,
    top_k: Option<i64>,
    repetition_penalty: Option<f64>,
    max_new_tokens: Option<i64>,
}

impl GenerationDefaults {
    /// Reads `<dir>/generation_config.json`; a missing file means no
    /// defaults. Values a request could not send are load errors naming
    /// the file and field.
    pub fn load(dir: &Path) -> Result<Self, GenerationConfigError> {
        let path = dir.join(FILE);
        let Some(value) = read_json_if_present(&path)? else {
            return Ok(Self::default());
        };
        let field = |field, reason: String| GenerationConfigError::Field {
            path: path.clone(),
            field,
            reason,
        };
        // Each field alone, so that a wrong type names its field.
        let raw: Raw = Raw {
            temperature: typed(&value, "temperature").map_err(|r| field("temperature", r))?,
            top_p: typed(&value, "top_p").map_err(|r| field("top_p", r))?,
            top_k: typed(&value, "top_k").map_err(|r| field("top_k", r))?,
            repetition_penalty: typed(&value, "repetition_penalty")
                .map_err(|r| field("repetition_penalty", r))?,
            max_new_tokens: typed(&value, "max_new_tokens")
                .map_err(|r| field("max_new_tokens", r))?,
        };
        if let Some(n) = raw.max_new_tokens.filter(|n| *n < 1) {
            return Err(field("max_new_tokens", format!("must be >= 1, got {n}")));
        }
        if let Some(t) = raw.temperature.filter(|t| !(*t >= 0.0 && t.is_finite())) {
            return Err(field("temperature", format!("must be >= 0, got {t}")));
        }
        if let Some(p) = raw.top_p.filter(|p| !(*p > 0.0 && *p <= 1.0)) {
            return Err(field("top_p", format!("must be in (0, 1], got {p}")));
        }
        if let Some(k) = raw.top_k.filter(|k| *k < -1) {
            return Err(field(
                "top_k",
                format!("must be -1, 0 or positive, got {k}"),
            ));
        }
        if let Some(r) = raw
            .repetition_penalty
            .filter(|r| !(*r > 0.0 && r.is_finite()))
        {
            return Err(field("repetition_penalty", format!("must be > 0, got {r}")));
        }
        Ok(Self {
            temperature: raw.temperature.map(|t| t as f32),
            top_p: raw.top_p.map(|p| p as f32),
            // transformers' `to_diff_dict`, which vLLM reads the file
            // through, drops values equal to the library defaults (top_k
            // 50 included): only a different top_k is a default here.
            top_k: raw
                .top_k
                .filter(|&k| k != 50)
                .map(|k| usize::try_from(k).ok().filter(|&k| k > 0)),
            repetition_penalty: raw.repetition_penalty.map(|r| r as f32),
            max_new_tokens: raw.max_new_tokens.and_then(|n| usize::try_from(n).ok()),
        })
    }

    /// The request's settings, completed with these defaults, then
    /// OpenAI's (temperature 1, no top-p/top-k, no penalties).
    pub fn resolve(&self, request: &RequestedSampling) -> SamplingParams {
        SamplingParams {
            temperature: request.temperature.or(self.temperature).unwrap_or(1.0),
            top_k: request.top_k.or(self.top_k).flatten(),
            top_p: request.top_p.or(self.top_p).unwrap_or(1.0),
            seed: request.seed,
            presence_penalty: request.presence_penalty,
            frequency_penalty: request.frequency_penalty,
            repetition_penalty: request
                .repetition_penalty
                .or(self.repetition_penalty)
                .unwrap_or(1.0),
        }
    }
}

fn typed<T: serde::de::DeserializeOwned>(
    value: &serde_json::Value,
    key: &str,
) -> Result<Option<T>, String> {
    match value.get(key) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(v) => serde_json::from_value(v.clone())
            .map(Some)
            .map_err(|e| e.to_string()),
    }
}

/// What a request asked for; `None` fields fall back to
/// [`GenerationDefaults`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestedSampling {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    /// `Some(None)`: the request disabled top-k (`-1` or `0`).
    pub top_k: Option<Option<usize>>,
    pub seed: Option<u64>,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    pub repetition_penalty: Option<f32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(json: &str) -> Result<GenerationDefaults, GenerationConfigError> {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(FILE), json).expect("write");
        GenerationDefaults::load(dir.path())
    }

    #[test]
    fn unset_request_fields_take_the_checkpoint_defaults() {
        let d = load(
            r#"{"do_sample": true, "temperature": 0.6, "top_p": 0.9, "top_k": 20,
            "repetition_penalty": 1.1, "eos_token_id": [1, 2]}"#,
        )
        .expect("valid");
        let p = d.resolve(&RequestedSampling::default());
        assert_eq!((p.temperature, p.top_p, p.top_k), (0.6, 0.9, Some(20)));
        assert_eq!(p.repetition_penalty, 1.1);
        assert_eq!(
            load(r#"{"max_new_tokens": 7}"#).unwrap().max_new_tokens,
            Some(7)
        );
        let explicit = RequestedSampling {
            temperature: Some(0.0),
            top_k: Some(None),
            repetition_penalty: Some(1.0),
            ..Default::default()
        };
        let p = d.resolve(&explicit);
        assert_eq!((p.temperature, p.top_p, p.top_k), (0.0, 0.9, None));
        assert_eq!(p.repetition_penalty, 1.0);
    }

    #[test]
    fn no_file_or_no_fields_means_openai_defaults() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = GenerationDefaults::load(dir.path()).expect("no file");
        assert_eq!(d, GenerationDefaults::default());
        let p = d.resolve(&RequestedSampling::default());
        assert_eq!((p.temperature, p.top_p, p.top_k), (1.0, 1.0, None));
        let d = load(r#"{"bos_token_id": 0, "eos_token_id": 3, "top_k": 50}"#).expect("valid");
        assert_eq!(d, GenerationDefaults::default());
    }

    #[test]
    fn bad_values_name_the_file_and_field() {
        let err = load(r#"{"top_p": 1.5}"#).expect_err("top_p > 1");
        let msg = err.to_string();
        assert!(msg.contains(FILE) && msg.contains("`top_p`"), "{msg}");
        let err = load(r#"{"max_new_tokens": 0}"#).expect_err("zero tokens");
        assert!(err.to_string().contains("`max_new_tokens`"), "{err}");
        let err = load(r#"{"temperature": "hot"}"#).expect_err("a string");
        assert!(err.to_string().contains("`temperature`"), "{err}");
        assert!(load("{").is_err());
    }
}
