//! The release gate's cases: `[[eval]]` tables in the manifest and `[evals] file`, a JSONL file
//! of the same objects beside it. Parsed strictly and checked whole before any work (a regex
//! that does not compile or a schema that is not one fails the manifest, not the gate).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// One case as written (TOML table or JSONL line).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEvalCase {
    pub name: Option<String>,
    pub prompt: Option<RawPrompt>,
    pub messages: Option<Vec<EvalMessage>>,
    pub max_tokens: Option<u32>,
    pub temperature: Option<f64>,
    pub seed: Option<u64>,
    pub equals: Option<String>,
    pub contains: Option<String>,
    pub regex: Option<String>,
    pub json_schema: Option<Value>,
    pub token_ids: Option<Vec<u32>>,
}

/// A completion prompt: text, or token ids sent as they are.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum RawPrompt {
    Text(String),
    TokenIds(Vec<u32>),
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EvalMessage {
    pub role: String,
    pub content: String,
}

/// `[evals]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEvals {
    /// A JSONL file of cases, relative to the manifest.
    pub file: Option<PathBuf>,
    /// The share of cases that must pass, 0 < x ≤ 1; default 1 (every case).
    pub min_pass_rate: Option<f64>,
}

/// The validated gate.
#[derive(Debug, Clone, Default)]
pub struct EvalSettings {
    pub cases: Vec<EvalCase>,
    pub min_pass_rate: f64,
}

#[derive(Debug, Clone)]
pub struct EvalCase {
    pub name: String,
    pub input: EvalInput,
    pub max_tokens: u32,
    /// 0 (greedy) unless the case says otherwise.
    pub temperature: f64,
    pub seed: Option<u64>,
    pub expect: Expectation,
}

#[derive(Debug, Clone)]
pub enum EvalInput {
    Prompt(RawPrompt),
    Messages(Vec<EvalMessage>),
}

#[derive(Debug, Clone)]
pub enum Expectation {
    Equals(String),
    Contains(String),
    /// Matches anywhere in the output (Python's `re.search`), Rust `regex` syntax.
    Regex(regex::Regex),
    /// The output parses as JSON and validates against the schema.
    JsonSchema(Value),
    /// The generated token ids, exactly.
    TokenIds(Vec<u32>),
}

/// A case's problem: which field of which case, and why.
pub struct CaseError {
    pub field: String,
    pub message: String,
}

/// `max_tokens` when a case gives none.
pub const DEFAULT_MAX_TOKENS: u32 = 16;

impl RawEvalCase {
    /// Validates one case; `at` names it in errors (`eval[2]`, `evals.jsonl:5`).
    pub fn check(self, at: &str) -> Result<EvalCase, CaseError> {
        let err = |field: &str, message: String| CaseError {
            field: format!("{at}.{field}"),
            message,
        };
        let name = match self.name {
            Some(n) if !n.trim().is_empty() => n,
            _ => return Err(err("name", "every case needs a non-empty name".into())),
        };
        let input = match (self.prompt, self.messages) {
            (Some(p), None) => EvalInput::Prompt(p),
            (None, Some(m)) if !m.is_empty() => EvalInput::Messages(m),
            (None, Some(_)) => return Err(err("messages", "is empty".into())),
            _ => {
                return Err(err(
                    "prompt",
                    "give exactly one of `prompt` (text or token ids) and `messages`".into(),
                ));
            }
        };
        let mut expectations = Vec::new();
        if let Some(v) = self.equals {
            expectations.push(("equals", Expectation::Equals(v)));
        }
        if let Some(v) = self.contains {
            expectations.push(("contains", Expectation::Contains(v)));
        }
        if let Some(v) = self.regex {
            let re = regex::Regex::new(&v)
                .map_err(|e| err("regex", format!("does not compile: {e}")))?;
            expectations.push(("regex", Expectation::Regex(re)));
        }
        if let Some(v) = self.json_schema {
            jsonschema::validator_for(&v)
                .map_err(|e| err("json_schema", format!("is not a valid JSON Schema: {e}")))?;
            expectations.push(("json_schema", Expectation::JsonSchema(v)));
        }
        if let Some(v) = self.token_ids {
            expectations.push(("token_ids", Expectation::TokenIds(v)));
        }
        if expectations.len() != 1 {
            let found: Vec<&str> = expectations.iter().map(|e| e.0).collect();
            return Err(err(
                "equals",
                format!(
                    "give exactly one expectation of `equals`, `contains`, `regex`, `json_schema`, \
                     `token_ids` (found {})",
                    if found.is_empty() {
                        "none".to_string()
                    } else {
                        found.join(", ")
                    }
                ),
            ));
        }
        let expect = expectations.pop().expect("one").1;
        let max_tokens = self.max_tokens.unwrap_or(match &expect {
            Expectation::TokenIds(ids) => ids.len().max(1) as u32,
            _ => DEFAULT_MAX_TOKENS,
        });
        if max_tokens == 0 {
            return Err(err("max_tokens", "must be at least 1".into()));
        }
        let temperature = self.temperature.unwrap_or(0.0);
        if !(0.0..=2.0).contains(&temperature) {
            return Err(err("temperature", "must be between 0 and 2".into()));
        }
        Ok(EvalCase {
            name,
            input,
            max_tokens,
            temperature,
            seed: self.seed,
            expect,
        })
    }
}

impl Expectation {
    /// `(kind, value)` as the attestation and messages show it.
    pub fn describe(&self) -> (&'static str, Value) {
        match self {
            Self::Equals(s) => ("equals", json!(s)),
            Self::Contains(s) => ("contains", json!(s)),
            Self::Regex(r) => ("regex", json!(r.as_str())),
            Self::JsonSchema(v) => ("json_schema", v.clone()),
            Self::TokenIds(ids) => ("token_ids", json!(ids)),
        }
    }
}

impl EvalCase {
    /// The case as the attestation records it (the same field names as the manifest).
    pub fn to_json(&self) -> Value {
        let mut case = json!({
            "name": self.name,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
        });
        match &self.input {
            EvalInput::Prompt(p) => case["prompt"] = json!(p),
            EvalInput::Messages(m) => case["messages"] = json!(m),
        }
        if let Some(seed) = self.seed {
            case["seed"] = json!(seed);
        }
        let (kind, value) = self.expect.describe();
        case[kind] = value;
        case
    }
}

/// Reads `[evals] file`: one JSON object per non-empty line.
pub fn read_jsonl(path: &Path, shown: &str) -> Result<Vec<EvalCase>, CaseError> {
    let text = std::fs::read_to_string(path).map_err(|e| CaseError {
        field: "evals.file".into(),
        message: format!("cannot read `{}`: {e}", path.display()),
    })?;
    let mut cases = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = format!("{shown}:{}", i + 1);
        let raw: RawEvalCase = serde_json::from_str(line).map_err(|e| CaseError {
            field: at.clone(),
            message: e.to_string(),
        })?;
        cases.push(raw.check(&at)?);
    }
    Ok(cases)
}
