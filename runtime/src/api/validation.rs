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
        CHAT_FIELDS, COMMON_FIELDS, COMPLETION_FIELDS, ChatMessage, ChatRequest, CommonParams,
        CompletionRequest, MessageContent, Prompt, Stop,
    },
    tools::ToolRequest,
};
use crate::engine::{RequestedSampling, grammar::ConstraintSpec};

/// OpenAI's default for the legacy completions endpoint.
pub const DEFAULT_COMPLETION_MAX_TOKENS: usize = 16;

/// What to feed the engine.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    Text(String),
    Tokens(Vec<u32>),
    /// Chat messages and tool definitions, rendered by the model's chat
    /// template.
    Chat {
        messages: Value,
        tools: Option<Value>,
    },
}

impl Input {
    /// The request field the prompt came from, for error `param`s.
    pub fn param(&self) -> &'static str {
        match self {
            Self::Chat { .. } => "messages",
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
    /// Choices to generate from the one prompt.
    pub n: usize,
    /// `Some(k)`: report each token's logprob and its `k` most likely
    /// alternatives.
    pub logprobs: Option<usize>,
    /// Structured output, and the request field it came from (for the 400
    /// when it does not compile).
    pub constraint: Option<(ConstraintSpec, &'static str)>,
    /// Chat `tools` and `tool_choice`.
    pub tools: Option<ToolRequest>,
}

/// The most alternatives per token `logprobs` may ask for (OpenAI's chat
/// limit, and vLLM's default `max_logprobs`).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// The most choices one request may ask for: each is a sequence in the
/// engine, so this bounds what one request can take from the others.
pub const MAX_N: usize = 16;

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
    if let Some(key) = object
        .keys()
        .find(|k| !fields.contains(&k.as_str()) && !COMMON_FIELDS.contains(&k.as_str()))
    {
        // As OpenAI answers a field it does not know: a request that asks for something this
        // server would not do must not get a plausible answer without it.
        return Err(ApiError::InvalidRequest {
            message: format!(
                "Unrecognized request argument supplied: `{key}` (this server does not implement it)."
            ),
            param: Some(key.clone().into()),
        });
    }
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
    common(req.common, input, max_tokens, Logprobs::Completion)
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
    let messages = chat_messages(messages)?;
    let tools = ToolRequest::parse(req.tools, req.tool_choice, req.parallel_tool_calls)?;
    let max_tokens = match req.max_completion_tokens {
        Some(_) => max_tokens(req.max_completion_tokens, "max_completion_tokens")?,
        None => max_tokens(req.max_tokens, "max_tokens")?,
    };
    let format = response_format(req.response_format)?;
    let mut v = common(
        req.common,
        Input::Chat {
            messages,
            tools: tools.as_ref().map(|t| t.definitions.clone()),
        },
        max_tokens,
        Logprobs::Chat {
            top: req.top_logprobs,
        },
    )?;
    if let Some(format) = format {
        if let Some((_, other)) = &v.constraint {
            return Err(invalid(
                format!("`response_format` and `{other}` cannot both be set."),
                "response_format",
            ));
        }
        v.constraint = Some((format, "response_format"));
    }
    if let Some(spec) = tools.as_ref().and_then(ToolRequest::constraint) {
        if let Some((_, other)) = &v.constraint {
            return Err(invalid(
                format!(
                    "`tool_choice` `required` or a named function constrains the output itself; `{other}` cannot be set with it."
                ),
                "tool_choice",
            ));
        }
        v.constraint = Some((spec, "tool_choice"));
    }
    v.tools = tools;
    Ok(v)
}

/// Chat messages as the template sees them: content as text (`""` where an
/// assistant turn only called tools), calls' arguments as JSON objects.
pub fn chat_messages(mut messages: Vec<ChatMessage>) -> Result<Value, ApiError> {
    for (i, m) in messages.iter_mut().enumerate() {
        if m.role.is_empty() {
            return Err(invalid(
                format!("messages[{i}].role must not be empty."),
                "messages",
            ));
        }
        let is_assistant = m.role == "assistant";
        let text = match m.content.take() {
            Some(content) => content
                .into_text()
                .map_err(|e| invalid(format!("messages[{i}].content: {e}."), "messages"))?,
            None if is_assistant => String::new(),
            None => {
                return Err(invalid(
                    format!(
                        "messages[{i}].content is required (only an assistant message may leave it out)."
                    ),
                    "messages",
                ));
            }
        };
        m.content = Some(MessageContent::Text(text));
        if m.tool_calls.is_some() && !is_assistant {
            return Err(invalid(
                format!("messages[{i}].tool_calls: only assistant messages carry tool calls."),
                "messages",
            ));
        }
        for (j, call) in m.tool_calls.iter_mut().flatten().enumerate() {
            let at = format!("messages[{i}].tool_calls[{j}]");
            if call.kind != "function" {
                return Err(invalid(
                    format!("{at}.type must be `function`, got `{}`.", call.kind),
                    "messages",
                ));
            }
            let args = match &call.function.arguments {
                Value::String(text) => serde_json::from_str(text).map_err(|e| {
                    invalid(
                        format!("{at}.function.arguments is not JSON: {e}."),
                        "messages",
                    )
                })?,
                other => other.clone(),
            };
            if !args.is_object() {
                return Err(invalid(
                    format!("{at}.function.arguments must be a JSON object."),
                    "messages",
                ));
            }
            call.function.arguments = args;
        }
    }
    serde_json::to_value(messages)
        .map_err(|e| ApiError::Internal(format!("re-encoding messages: {e}")))
}

/// OpenAI's `response_format`.
fn response_format(value: Option<Value>) -> Result<Option<ConstraintSpec>, ApiError> {
    const P: &str = "response_format";
    let Some(value) = value.filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    match value.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(ConstraintSpec::JsonObject)),
        Some("json_schema") => match value.get("json_schema").and_then(|j| j.get("schema")) {
            Some(schema) => Ok(Some(ConstraintSpec::JsonSchema(schema.clone()))),
            None => Err(invalid(
                "`response_format.json_schema.schema` is required for type `json_schema`.",
                P,
            )),
        },
        Some(other) => Err(invalid(
            format!(
                "`response_format.type` must be `text`, `json_object` or `json_schema`, got `{other}`."
            ),
            P,
        )),
        None => Err(invalid("`response_format.type` is required.", P)),
    }
}

/// vLLM's `guided_*` fields and `structured_outputs`: at most one constraint.
fn guided(p: &CommonParams) -> Result<Option<(ConstraintSpec, &'static str)>, ApiError> {
    let mut found: Vec<(ConstraintSpec, &'static str)> = Vec::new();
    if let Some(schema) = p.guided_json.clone().filter(|v| !v.is_null()) {
        // vLLM takes the schema as an object or as its JSON text.
        let schema = match schema {
            Value::String(text) => serde_json::from_str(&text).map_err(|e| {
                invalid(
                    format!("`guided_json` is not a JSON schema: {e}"),
                    "guided_json",
                )
            })?,
            other => other,
        };
        found.push((ConstraintSpec::JsonSchema(schema), "guided_json"));
    }
    if let Some(regex) = &p.guided_regex {
        found.push((ConstraintSpec::Regex(regex.clone()), "guided_regex"));
    }
    if let Some(choice) = &p.guided_choice {
        found.push((ConstraintSpec::Choice(choice.clone()), "guided_choice"));
    }
    if let Some(grammar) = &p.guided_grammar {
        found.push((ConstraintSpec::Lark(grammar.clone()), "guided_grammar"));
    }
    const S: &str = "structured_outputs";
    if let Some(so) = p.structured_outputs.as_ref().filter(|v| !v.is_null()) {
        let Value::Object(fields) = so else {
            return Err(invalid("`structured_outputs` must be an object.", S));
        };
        for (key, value) in fields {
            let spec = match (key.as_str(), value) {
                (_, Value::Null) => continue,
                ("json", Value::String(text)) => {
                    ConstraintSpec::JsonSchema(serde_json::from_str(text).map_err(|e| {
                        invalid(
                            format!("`structured_outputs.json` is not a JSON schema: {e}"),
                            S,
                        )
                    })?)
                }
                ("json", schema) => ConstraintSpec::JsonSchema(schema.clone()),
                ("regex", Value::String(r)) => ConstraintSpec::Regex(r.clone()),
                ("grammar", Value::String(g)) => ConstraintSpec::Lark(g.clone()),
                ("choice", Value::Array(items)) => ConstraintSpec::Choice(
                    items
                        .iter()
                        .map(|i| i.as_str().map(str::to_owned))
                        .collect::<Option<_>>()
                        .ok_or_else(|| {
                            invalid("`structured_outputs.choice` must be a list of strings.", S)
                        })?,
                ),
                ("json_object", Value::Bool(true)) => ConstraintSpec::JsonObject,
                ("json_object", Value::Bool(false)) => continue,
                (key, _) => {
                    return Err(invalid(
                        format!(
                            "`structured_outputs.{key}` is not supported (or has the wrong type); this server implements json, regex, choice, grammar and json_object."
                        ),
                        S,
                    ));
                }
            };
            found.push((spec, S));
        }
    }
    match found.len() {
        0 | 1 => Ok(found.pop()),
        _ => Err(invalid(
            format!(
                "Only one structured-output constraint may be set, got `{}` and `{}`.",
                found[0].1, found[1].1
            ),
            found[1].1,
        )),
    }
}

fn unsupported(param: &'static str) -> ApiError {
    invalid(format!("`{param}` is not supported yet."), param)
}

fn common(
    p: CommonParams,
    input: Input,
    max_tokens: Option<usize>,
    logprobs: Logprobs,
) -> Result<Validated, ApiError> {
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
    let constraint = guided(&p)?;
    let n = match p.n {
        None => 1,
        Some(n) if (1..=MAX_N as i64).contains(&n) => n as usize,
        Some(n) => {
            return Err(invalid(
                format!("`n` must be between 1 and {MAX_N}, got {n}."),
                "n",
            ));
        }
    };
    if p.best_of.is_some_and(|b| b != n as i64) {
        return Err(invalid(
            "`best_of` is not supported (only `best_of` equal to `n`).",
            "best_of",
        ));
    }
    if p.echo == Some(true) {
        return Err(unsupported("echo"));
    }
    if p.min_p.is_some_and(|v| v != 0.0) {
        return Err(unsupported("min_p"));
    }
    let bias_off = match &p.logit_bias {
        None | Some(Value::Null) => true,
        Some(Value::Object(m)) => m.is_empty(),
        _ => false,
    };
    if !bias_off {
        return Err(unsupported("logit_bias"));
    }
    let logprobs = match logprobs {
        Logprobs::Chat { top } => {
            let on = match &p.logprobs {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(other) => {
                    return Err(invalid(
                        format!(
                            "`logprobs` must be true or false on chat completions, got {other}."
                        ),
                        "logprobs",
                    ));
                }
            };
            let top = match top {
                None => None,
                Some(k) if (0..=MAX_TOP_LOGPROBS as i64).contains(&k) => Some(k as usize),
                Some(k) => {
                    return Err(invalid(
                        format!(
                            "`top_logprobs` must be between 0 and {MAX_TOP_LOGPROBS}, got {k}."
                        ),
                        "top_logprobs",
                    ));
                }
            };
            match (on, top) {
                (false, Some(_)) => {
                    return Err(invalid(
                        "`top_logprobs` needs `logprobs` set to true.",
                        "top_logprobs",
                    ));
                }
                (false, None) => None,
                (true, top) => Some(top.unwrap_or(0)),
            }
        }
        Logprobs::Completion => match &p.logprobs {
            None | Some(Value::Null) => None,
            Some(Value::Number(k)) if k.as_u64().is_some_and(|k| k <= MAX_TOP_LOGPROBS as u64) => {
                k.as_u64().map(|k| k as usize)
            }
            Some(other) => {
                return Err(invalid(
                    format!(
                        "`logprobs` must be an integer between 0 and {MAX_TOP_LOGPROBS} on completions, got {other}."
                    ),
                    "logprobs",
                ));
            }
        },
    };

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
        n,
        logprobs,
        constraint,
        tools: None,
    })
}

/// Where `logprobs` comes from: chat's boolean plus `top_logprobs`, or
/// completions' integer.
enum Logprobs {
    Chat { top: Option<i64> },
    Completion,
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

    /// A chat request with `extra` fields over a minimal valid one.
    fn chat_with(extra: Value) -> Result<Validated, ApiError> {
        let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        let req = parse_body::<ChatRequest>(merged(body, extra), chat_fields())?;
        chat(req, "m")
    }

    fn completion_with(extra: Value) -> Result<Validated, ApiError> {
        completion_of(merged(json!({"model": "m", "prompt": "hi"}), extra))
    }

    fn merged(mut body: Value, extra: Value) -> Value {
        let extra = extra.as_object().expect("an object").clone();
        body.as_object_mut().expect("an object").extend(extra);
        body
    }

    fn param_of(r: Result<Validated, ApiError>) -> Option<&'static str> {
        match r {
            // Leaked: test-only, to compare with literals.
            Err(ApiError::InvalidRequest { param, .. }) => {
                param.map(|p| &*Box::leak(p.into_owned().into_boxed_str()))
            }
            other => panic!("expected a 400, got {other:?}"),
        }
    }

    #[test]
    fn defaults_and_token_prompts() {
        let v = completion_of(json!({"model": "m", "prompt": [1, 2], "user": "u"})).unwrap();
        assert_eq!(v.input, Input::Tokens(vec![1, 2]));
        assert_eq!(v.max_tokens, None);
        assert_eq!(
            v.sampling,
            RequestedSampling::default(),
            "unset: checkpoint defaults"
        );
        assert!(v.stop.is_empty() && !v.return_token_ids && !v.stream);
        assert_eq!((v.n, v.logprobs), (1, None));
    }

    #[test]
    fn fields_the_server_does_not_implement_are_named() {
        for field in [
            "extra",
            "suffix",
            "response_format",
            "tools",
            "logit_bias_x",
        ] {
            let body = json!({"model": "m", "prompt": "hi", field: 1});
            assert_eq!(param_of(completion_of(body)), Some(field), "{field}");
        }
        assert_eq!(
            param_of(chat_with(json!({"tool_choice": "auto"}))),
            Some("tool_choice")
        );
        // `top_logprobs` is a chat field only.
        let body = json!({"model": "m", "prompt": "hi", "top_logprobs": 2});
        assert_eq!(param_of(completion_of(body)), Some("top_logprobs"));
        // Message fields are checked too.
        let bad = json!({"messages": [{"role": "user", "content": "hi", "function_call": {}}]});
        assert_eq!(param_of(chat_with(bad)), Some("messages"));
        let named =
            chat_with(json!({"messages": [{"role": "user", "content": "hi", "name": "ann"}]}));
        assert!(named.is_ok(), "{named:?}");
        // Text content parts are joined; other parts are refused by name.
        let parts = chat_with(json!({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]}))
        .unwrap();
        assert_eq!(
            parts.input,
            Input::Chat {
                messages: json!([{"role": "user", "content": "a\nb"}]),
                tools: None
            }
        );
        let image = chat_with(json!({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "x"}}]}]}));
        match image {
            Err(ApiError::InvalidRequest { message, param }) => {
                assert_eq!(param.as_deref(), Some("messages"));
                assert!(message.contains("image_url"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn tool_calls_in_the_history_reach_the_template_as_objects() {
        let v = chat_with(json!({
            "messages": [
                {"role": "user", "content": "weather?"},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1",
                    "type": "function", "function": {"name": "w", "arguments": "{\"city\": \"Oslo\"}"}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
            ],
            "tools": [{"type": "function", "function": {"name": "w"}}],
        }))
        .unwrap();
        let Input::Chat { messages, tools } = v.input else {
            panic!()
        };
        assert_eq!(messages[1]["content"], "", "null content renders as empty");
        assert_eq!(
            messages[1]["tool_calls"][0]["function"]["arguments"],
            json!({"city": "Oslo"})
        );
        assert_eq!(messages[2]["tool_call_id"], "call_1");
        assert_eq!(
            tools,
            Some(json!([{"type": "function", "function": {"name": "w"}}]))
        );
        for bad in [
            json!([{"role": "user"}]),
            json!([{"role": "user", "content": "x", "tool_calls": []}]),
            json!([{"role": "assistant", "tool_calls": [{"id": "c", "type": "function",
                "function": {"name": "w", "arguments": "{oops"}}]}]),
            json!([{"role": "assistant", "tool_calls": [{"id": "c", "type": "function",
                "function": {"name": "w", "arguments": "[1]"}}]}]),
            json!([{"role": "assistant", "tool_calls": [{"id": "c", "type": "retrieval",
                "function": {"name": "w", "arguments": "{}"}}]}]),
        ] {
            assert_eq!(
                param_of(chat_with(json!({"messages": bad.clone()}))),
                Some("messages"),
                "{bad}"
            );
        }
    }

    #[test]
    fn forced_tool_choices_become_the_constraint() {
        let tools = json!([{"type": "function", "function": {"name": "w",
            "parameters": {"type": "object", "properties": {"c": {"type": "string"}}}}}]);
        let v = chat_with(json!({"tools": tools.clone(), "tool_choice": "required"})).unwrap();
        assert!(matches!(
            v.constraint,
            Some((ConstraintSpec::JsonSchema(_), "tool_choice"))
        ));
        let v = chat_with(json!({"tools": tools.clone()})).unwrap();
        assert_eq!(
            (v.constraint, v.tools.map(|t| t.choice)),
            (None, Some(super::super::tools::ToolChoice::Auto))
        );
        let both = json!({"tools": tools, "tool_choice": "required",
            "response_format": {"type": "json_object"}});
        assert_eq!(param_of(chat_with(both)), Some("tool_choice"));
    }

    #[test]
    fn structured_output_takes_one_source() {
        let schema = json!({"type": "object"});
        let v = chat_with(json!({"response_format": {"type": "json_schema",
            "json_schema": {"name": "x", "schema": schema}}}))
        .unwrap();
        assert_eq!(
            v.constraint,
            Some((
                ConstraintSpec::JsonSchema(schema.clone()),
                "response_format"
            ))
        );
        let v = chat_with(json!({"response_format": {"type": "text"}})).unwrap();
        assert_eq!(v.constraint, None);
        let v = chat_with(json!({"guided_json": schema.to_string()})).unwrap();
        assert_eq!(
            v.constraint,
            Some((ConstraintSpec::JsonSchema(schema), "guided_json"))
        );
        let v = chat_with(json!({"structured_outputs": {"regex": "a+"}})).unwrap();
        assert_eq!(
            v.constraint,
            Some((ConstraintSpec::Regex("a+".into()), "structured_outputs"))
        );
        for (bad, param) in [
            (
                json!({"response_format": {"type": "xml"}}),
                "response_format",
            ),
            (
                json!({"response_format": {"type": "json_schema"}}),
                "response_format",
            ),
            (
                json!({"response_format": {"type": "json_object"}, "guided_regex": "a"}),
                "response_format",
            ),
            (
                json!({"guided_regex": "a", "guided_choice": ["b"]}),
                "guided_choice",
            ),
            (
                json!({"structured_outputs": {"xml": "a"}}),
                "structured_outputs",
            ),
            (json!({"guided_json": "{not json"}), "guided_json"),
        ] {
            assert_eq!(param_of(chat_with(bad.clone())), Some(param), "{bad}");
        }
    }

    #[test]
    fn logprobs_and_n_follow_each_endpoint() {
        let v = chat_with(json!({"logprobs": true, "top_logprobs": 5, "n": 3})).unwrap();
        assert_eq!((v.logprobs, v.n), (Some(5), 3));
        assert_eq!(
            chat_with(json!({"logprobs": true})).unwrap().logprobs,
            Some(0)
        );
        assert_eq!(
            chat_with(json!({"logprobs": false})).unwrap().logprobs,
            None
        );
        assert_eq!(
            param_of(chat_with(json!({"logprobs": 2}))),
            Some("logprobs")
        );
        assert_eq!(
            param_of(chat_with(json!({"top_logprobs": 2}))),
            Some("top_logprobs")
        );
        assert_eq!(
            param_of(chat_with(json!({"logprobs": true, "top_logprobs": 21}))),
            Some("top_logprobs")
        );
        assert_eq!(
            completion_with(json!({"logprobs": 0})).unwrap().logprobs,
            Some(0)
        );
        assert_eq!(
            completion_with(json!({"logprobs": 20})).unwrap().logprobs,
            Some(20)
        );
        assert_eq!(
            param_of(completion_with(json!({"logprobs": 21}))),
            Some("logprobs")
        );
        assert_eq!(
            param_of(completion_with(json!({"logprobs": true}))),
            Some("logprobs")
        );
        assert_eq!(param_of(completion_with(json!({"n": 0}))), Some("n"));
        assert_eq!(param_of(completion_with(json!({"n": 17}))), Some("n"));
        assert_eq!(completion_with(json!({"n": 2, "best_of": 2})).unwrap().n, 2);
        assert_eq!(
            param_of(completion_with(json!({"n": 2, "best_of": 3}))),
            Some("best_of")
        );
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
        assert_eq!(param_of(base(json!({"n": 0}))), Some("n"));
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
        assert_eq!(param_of(base(json!({"logprobs": -1}))), Some("logprobs"));
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
