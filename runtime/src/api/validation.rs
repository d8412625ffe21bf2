//! Request validation for the generation endpoints: a loosely typed
//! [`openai`](super::openai) request becomes a [`Validated`] one, or a 400
//! in OpenAI's error shape naming the offending `param`. Nothing here
//! touches the engine; the checks that need it (prompt length, vocabulary)
//! take plain numbers.

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::{
    error::ApiError,
    openai::{
        CHAT_FIELDS, COMMON_FIELDS, COMPLETION_FIELDS, ChatRequest, CommonParams,
        CompletionRequest, Prompt, Stop,
    },
};
use crate::engine::RequestedSampling;

/// OpenAI's default for the legacy completions endpoint.
pub const DEFAULT_COMPLETION_MAX_TOKENS: usize = 16;

/// What to feed the engine.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    Text(String),
    Tokens(Vec<u32>),
    /// Chat messages, rendered by the model's chat template.
    Chat(Value),
}

impl Input {
    /// The request field the prompt came from, for error `param`s.
    pub fn param(&self) -> &'static str {
        match self {
            Self::Chat(_) => "messages",
            _ => "prompt",
        }
    }
}

/// A checked request, ready for the engine.
#[derive(Debug, Clone, PartialEq)]
pub struct Validated {
    pub input: Input,
    /// `None`: the endpoint's default.
    pub max_tokens: Option<usize>,
    /// Unset fields take the checkpoint's `generation_config.json` values.
    pub sampling: RequestedSampling,
    /// Non-empty stop strings; the text is cut before the first match.
    pub stop: Vec<String>,
    pub ignore_eos: bool,
    pub return_token_ids: bool,
    /// Answer with server-sent events.
    pub stream: bool,
    /// `stream_options.include_usage`: a final chunk with `usage`.
    pub include_usage: bool,
}

fn invalid(message: impl Into<String>, param: &'static str) -> ApiError {
    ApiError::invalid(message, Some(param))
}

/// Deserializes a JSON body into a request type. On a type error, finds the
/// top-level field at fault (by deserializing each field alone) so that the
/// error can name it.
pub fn parse_body<T: DeserializeOwned>(
    body: Value,
    fields: &[&'static str],
) -> Result<T, ApiError> {
    let Value::Object(object) = body else {
        return Err(ApiError::invalid(
            "The request body must be a JSON object.",
            None,
        ));
    };
    let err = match serde_json::from_value::<T>(Value::Object(object.clone())) {
        Ok(request) => return Ok(request),
        Err(e) => e,
    };
    for (key, value) in &object {
        let alone = Map::from_iter([(key.clone(), value.clone())]);
        if let Err(e) = serde_json::from_value::<T>(Value::Object(alone)) {
            let param = fields
                .iter()
                .chain(COMMON_FIELDS.iter())
                .find(|f| **f == key.as_str())
                .copied();
            return Err(ApiError::invalid(
                format!("Invalid value for `{key}`: {e}"),
                param,
            ));
        }
    }
    Err(ApiError::invalid(
        format!("Invalid request body: {err}"),
        None,
    ))
}

pub fn completion_fields() -> &'static [&'static str] {
    &COMPLETION_FIELDS
}

pub fn chat_fields() -> &'static [&'static str] {
    &CHAT_FIELDS
}

fn check_model(model: Option<&str>, served: &str) -> Result<(), ApiError> {
    match model {
        None => Err(invalid("`model` is required.", "model")),
        Some(m) if m == served => Ok(()),
        Some(m) => Err(ApiError::ModelNotFound(m.to_owned())),
    }
}

fn max_tokens(value: Option<i64>, param: &'static str) -> Result<Option<usize>, ApiError> {
    match value {
        None => Ok(None),
        Some(n) if n >= 1 => Ok(Some(usize::try_from(n).unwrap_or(usize::MAX))),
        Some(n) => Err(invalid(
            format!("`{param}` must be at least 1, got {n}."),
            param,
        )),
    }
}

pub fn completion(req: CompletionRequest, served: &str) -> Result<Validated, ApiError> {
    check_model(req.model.as_deref(), served)?;
    let input = match req.prompt {
        None => return Err(invalid("`prompt` is required.", "prompt")),
        Some(Prompt::Text(text)) => Input::Text(text),
        Some(Prompt::Tokens(ids)) if ids.is_empty() => {
            return Err(invalid("`prompt` must not be an empty list.", "prompt"));
        }
        Some(Prompt::Tokens(ids)) => Input::Tokens(ids),
        Some(Prompt::Other(_)) => {
            return Err(invalid(
                "`prompt` must be a string or a list of token ids; batched prompts are not supported.",
                "prompt",
            ));
        }
    };
    let max_tokens = max_tokens(req.max_tokens, "max_tokens")?;
    common(req.common, input, max_tokens)
}

pub fn chat(req: ChatRequest, served: &str) -> Result<Validated, ApiError> {
    check_model(req.model.as_deref(), served)?;
    let messages = match req.messages {
        None => return Err(invalid("`messages` is required.", "messages")),
        Some(m) if m.is_empty() => {
            return Err(invalid("`messages` must not be empty.", "messages"));
        }
        Some(m) => m,
    };
    if let Some(i) = messages.iter().position(|m| m.role.is_empty()) {
        return Err(invalid(
            format!("messages[{i}].role must not be empty."),
            "messages",
        ));
    }
    let messages = serde_json::to_value(messages)
        .map_err(|e| ApiError::Internal(format!("re-encoding messages: {e}")))?;
    let max_tokens = match req.max_completion_tokens {
        Some(_) => max_tokens(req.max_completion_tokens, "max_completion_tokens")?,
        None => max_tokens(req.max_tokens, "max_tokens")?,
    };
    common(req.common, Input::Chat(messages), max_tokens)
}

fn unsupported(param: &'static str) -> ApiError {
    invalid(format!("`{param}` is not supported yet."), param)
}

fn common(p: CommonParams, input: Input, max_tokens: Option<usize>) -> Result<Validated, ApiError> {
    let stream = p.stream == Some(true);
    let include_usage = match &p.stream_options {
        Some(_) if !stream => {
            return Err(invalid(
                "`stream_options` can only be set when `stream` is true.",
                "stream_options",
            ));
        }
        Some(options) => options.include_usage == Some(true),
        None => false,
    };
    if p.n.is_some_and(|n| n != 1) {
        return Err(invalid("Only `n` = 1 is supported.", "n"));
    }
    if p.best_of.is_some_and(|n| n != 1) {
        return Err(invalid("Only `best_of` = 1 is supported.", "best_of"));
    }
    if p.echo == Some(true) {
        return Err(unsupported("echo"));
    }
    if p.min_p.is_some_and(|v| v != 0.0) {
        return Err(unsupported("min_p"));
    }
    let is_off = |v: &Option<Value>| match v {
        None | Some(Value::Null) | Some(Value::Bool(false)) => true,
        Some(Value::Object(m)) => m.is_empty(),
        Some(Value::Number(n)) => n.as_u64() == Some(0),
        _ => false,
    };
    if !is_off(&p.logit_bias) {
        return Err(unsupported("logit_bias"));
    }
    // Completions' `logprobs: 0` still asks for the sampled token's logprob.
    if !is_off(&p.logprobs) || p.logprobs.as_ref().is_some_and(Value::is_number) {
        return Err(unsupported("logprobs"));
    }
    if !is_off(&p.top_logprobs) {
        return Err(unsupported("top_logprobs"));
    }

    if let Some(t) = p.temperature.filter(|t| !(0.0..=2.0).contains(t)) {
        return Err(invalid(
            format!("`temperature` must be between 0 and 2, got {t}."),
            "temperature",
        ));
    }
    if let Some(top_p) = p.top_p.filter(|p| !(*p > 0.0 && *p <= 1.0)) {
        return Err(invalid(
            format!("`top_p` must be in (0, 1], got {top_p}."),
            "top_p",
        ));
    }
    // vLLM's ranges.
    for (value, param) in [
        (p.presence_penalty, "presence_penalty"),
        (p.frequency_penalty, "frequency_penalty"),
    ] {
        if let Some(v) = value.filter(|v| !(-2.0..=2.0).contains(v)) {
            return Err(invalid(
                format!("`{param}` must be between -2 and 2, got {v}."),
                param,
            ));
        }
    }
    if let Some(r) = p.repetition_penalty.filter(|r| !(*r > 0.0 && *r <= 2.0)) {
        return Err(invalid(
            format!("`repetition_penalty` must be in (0, 2], got {r}."),
            "repetition_penalty",
        ));
    }
    let top_k = match p.top_k {
        None => None,
        Some(-1) | Some(0) => Some(None),
        Some(k) if k > 0 => Some(Some(usize::try_from(k).unwrap_or(usize::MAX))),
        Some(k) => {
            return Err(invalid(
                format!("`top_k` must be -1 (disabled) or at least 1, got {k}."),
                "top_k",
            ));
        }
    };
    let stop = match p.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s],
        Some(Stop::Many(list)) => list,
    };
    if stop.iter().any(String::is_empty) {
        return Err(invalid("`stop` strings must not be empty.", "stop"));
    }
    Ok(Validated {
        input,
        max_tokens,
        sampling: RequestedSampling {
            temperature: p.temperature.map(|t| t as f32),
            top_k,
            top_p: p.top_p.map(|p| p as f32),
            // Negative seeds are accepted (as vLLM does) and reinterpreted.
            seed: p.seed.map(|s| s as u64),
            presence_penalty: p.presence_penalty.unwrap_or(0.0) as f32,
            frequency_penalty: p.frequency_penalty.unwrap_or(0.0) as f32,
            repetition_penalty: p.repetition_penalty.map(|r| r as f32),
        },
        stop,
        ignore_eos: p.ignore_eos.unwrap_or(false),
        return_token_ids: p.return_token_ids.unwrap_or(false),
        stream,
        include_usage,
    })
}

/// Checks prompt ids against the context length and the vocabulary. At
/// least one token of room must remain for the completion.
pub fn check_prompt(
    ids: &[u32],
    param: &'static str,
    max_model_len: usize,
    vocab_size: usize,
) -> Result<(), ApiError> {
    if ids.is_empty() {
        return Err(invalid("The prompt is empty (no tokens).", param));
    }
    if ids.len() >= max_model_len {
        let over = ids.len() + 1 - max_model_len;
        return Err(invalid(
            format!(
                "This model's maximum context length is {max_model_len} tokens, but the prompt has {} tokens: {over} too many (at least one token must be left for the completion).",
                ids.len()
            ),
            param,
        ));
    }
    if let Some(id) = ids.iter().find(|&&id| id as usize >= vocab_size) {
        return Err(invalid(
            format!("Token id {id} is outside the model's vocabulary (size {vocab_size})."),
            param,
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn completion_of(body: Value) -> Result<Validated, ApiError> {
        let req: CompletionRequest = parse_body(body, completion_fields())?;
        completion(req, "m")
    }

    fn param_of(r: Result<Validated, ApiError>) -> Option<&'static str> {
        match r {
            Err(ApiError::InvalidRequest { param, .. }) => param,
            other => panic!("expected a 400, got {other:?}"),
        }
    }

    #[test]
    fn defaults_and_token_prompts() {
        let v = completion_of(json!({"model": "m", "prompt": [1, 2], "extra": true})).unwrap();
        assert_eq!(v.input, Input::Tokens(vec![1, 2]));
        assert_eq!(v.max_tokens, None);
        assert_eq!(
            v.sampling,
            RequestedSampling::default(),
            "unset: checkpoint defaults"
        );
        assert!(v.stop.is_empty() && !v.return_token_ids && !v.stream);
    }

    #[test]
    fn bad_values_name_their_param() {
        let base = |extra: Value| {
            let mut body = json!({"model": "m", "prompt": "hi"});
            body.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            completion_of(body)
        };
        assert_eq!(param_of(base(json!({"n": 2}))), Some("n"));
        assert_eq!(
            param_of(base(json!({"stream_options": {"include_usage": true}}))),
            Some("stream_options")
        );
        assert_eq!(param_of(base(json!({"stream": "yes"}))), Some("stream"));
        assert_eq!(
            param_of(base(json!({"temperature": "hot"}))),
            Some("temperature")
        );
        assert_eq!(
            param_of(base(json!({"temperature": 3}))),
            Some("temperature")
        );
        assert_eq!(param_of(base(json!({"top_p": 0}))), Some("top_p"));
        assert_eq!(param_of(base(json!({"top_k": -2}))), Some("top_k"));
        assert_eq!(param_of(base(json!({"max_tokens": 0}))), Some("max_tokens"));
        assert_eq!(param_of(base(json!({"stop": [""]}))), Some("stop"));
        assert_eq!(param_of(base(json!({"logprobs": 2}))), Some("logprobs"));
        assert_eq!(param_of(base(json!({"prompt": [[1]]}))), Some("prompt"));
        for (param, bad) in [
            ("presence_penalty", 2.5),
            ("frequency_penalty", -2.1),
            ("repetition_penalty", 0.0),
            ("repetition_penalty", 2.5),
            ("min_p", 0.1),
        ] {
            assert_eq!(param_of(base(json!({param: bad}))), Some(param), "{param}");
        }
        assert!(matches!(
            completion_of(json!({"model": "x", "prompt": "hi"})),
            Err(ApiError::ModelNotFound(_))
        ));
    }

    #[test]
    fn chat_prefers_max_completion_tokens() {
        let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 5, "max_completion_tokens": 7, "stop": "x", "top_k": -1});
        let req: ChatRequest = parse_body(body, chat_fields()).unwrap();
        let v = chat(req, "m").unwrap();
        assert_eq!(v.max_tokens, Some(7));
        assert_eq!(v.stop, vec!["x".to_owned()]);
        assert_eq!(v.sampling.top_k, Some(None), "-1 disables top-k explicitly");
    }

    #[test]
    fn streaming_and_penalties_are_accepted() {
        let v = completion_of(json!({"model": "m", "prompt": "hi", "stream": true,
            "stream_options": {"include_usage": true}, "presence_penalty": -2,
            "frequency_penalty": 2, "repetition_penalty": 1.3, "temperature": 0}))
        .unwrap();
        assert!(v.stream && v.include_usage);
        let s = &v.sampling;
        assert_eq!((s.presence_penalty, s.frequency_penalty), (-2.0, 2.0));
        assert_eq!(
            (s.repetition_penalty, s.temperature),
            (Some(1.3), Some(0.0))
        );
        let v = completion_of(json!({"model": "m", "prompt": "hi", "stream": true})).unwrap();
        assert!(v.stream && !v.include_usage);
    }

    #[test]
    fn prompt_length_reports_the_excess() {
        let err = check_prompt(&[1; 10], "prompt", 8, 100).unwrap_err();
        assert!(err.to_string().contains("3 too many"), "{err}");
        assert!(check_prompt(&[1; 7], "prompt", 8, 100).is_ok());
        assert!(check_prompt(&[100], "prompt", 8, 100).is_err());
    }
}
