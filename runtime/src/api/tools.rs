//! Tool calling: OpenAI's `tools` / `tool_choice` on chat completions, and
//! the model's output turned back into `tool_calls`.
//!
//! The request side follows vLLM. The definitions go to the chat template
//! as its `tools` variable, unchanged. `tool_choice: "required"` and a named
//! function are enforced by the grammar engine, not hoped for: a named
//! function constrains the whole output to that function's `parameters`
//! schema (the output *is* the arguments), `required` to a JSON array of
//! `{"name", "parameters"}` objects, one schema branch per function — so
//! their arguments always parse and validate, whatever the model. `auto`
//! lets the model write free text in its own tool-call format, which a
//! [`ToolCallParser`] reads back: the family's format is known from the
//! chat template, or named with `--tool-call-parser` (vLLM's flag) where the
//! template cannot tell.
//!
//! The output side is one incremental state machine, [`ToolStream`], fed
//! the text deltas of one choice: streaming sends what it yields as
//! OpenAI's `delta.tool_calls` chunks, the whole response gathers the same
//! pieces, so the two always agree. Text that may still turn into a tool
//! call is held back, as stop strings are.

use std::{
    fmt,
    hash::{BuildHasher, RandomState},
    sync::atomic::{AtomicU64, Ordering},
};

use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{error::ApiError, openai::ToolCall};
use crate::engine::grammar::ConstraintSpec;

/// How a model family writes tool calls in free text (`tool_choice:
/// "auto"`), under vLLM's `--tool-call-parser` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ToolCallParser {
    /// Hermes 2 Pro, Qwen2.5, Qwen3: `<tool_call>{"name": …, "arguments":
    /// …}</tool_call>`, any number of them, after optional text.
    Hermes,
    /// Llama 3.1 / 3.2 JSON tool calling: the whole answer is
    /// `{"name": …, "parameters": …}` (several joined by `; `), possibly
    /// after `<|python_tag|>`.
    #[value(name = "llama3_json")]
    Llama3Json,
    /// Mistral: `[TOOL_CALLS]` then a JSON array of `{"name", "arguments"}`
    /// (or, from tokenizer v11, `name[ARGS]{…}` per call).
    Mistral,
}

impl fmt::Display for ToolCallParser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Hermes => "hermes",
            Self::Llama3Json => "llama3_json",
            Self::Mistral => "mistral",
        })
    }
}

const HERMES_OPEN: &str = "<tool_call>";
const HERMES_CLOSE: &str = "</tool_call>";
const MISTRAL_MARK: &str = "[TOOL_CALLS]";
const PYTHON_TAG: &str = "<|python_tag|>";

impl ToolCallParser {
    /// The format a chat template teaches its model, recognised by the
    /// markers only that family's templates write. `None`: the template
    /// does not say (then `--tool-call-parser` must).
    pub fn detect(template: &str) -> Option<Self> {
        if template.contains(HERMES_OPEN) {
            Some(Self::Hermes)
        } else if template.contains(MISTRAL_MARK) {
            Some(Self::Mistral)
        } else if template.contains(PYTHON_TAG)
            || (template.contains("<|start_header_id|>") && template.contains("\"parameters\""))
        {
            Some(Self::Llama3Json)
        } else {
            None
        }
    }

    /// Mistral's marker is a special token, which detokenization would
    /// drop.
    pub fn needs_special_tokens(self) -> bool {
        self == Self::Mistral
    }
}

/// `tool_choice`, checked.
#[derive(Debug, Clone, PartialEq)]
pub enum ToolChoice {
    None,
    Auto,
    Required,
    Named(String),
}

/// The tool part of a checked chat request.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolRequest {
    /// The definitions as sent, for the chat template's `tools`.
    pub definitions: Value,
    pub choice: ToolChoice,
    /// `parallel_tool_calls: false`: at most one call.
    pub parallel: bool,
    /// Each function's name and `parameters` schema.
    functions: Vec<(String, Value)>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ToolDef {
    #[serde(rename = "type")]
    kind: String,
    function: FunctionDef,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FunctionDef {
    name: String,
    #[serde(default)]
    #[allow(dead_code)] // Read by the chat template, from `definitions`.
    description: Option<String>,
    #[serde(default)]
    parameters: Option<Value>,
    /// OpenAI's strict mode: the arguments follow the schema exactly. Forced
    /// calls always do here; free-text (`auto`) ones are parsed as written.
    #[serde(default)]
    #[allow(dead_code)]
    strict: Option<bool>,
}

fn invalid(message: impl Into<String>, param: &'static str) -> ApiError {
    ApiError::invalid(message, Some(param))
}

impl ToolRequest {
    /// Checks `tools`, `tool_choice` and `parallel_tool_calls`. `Ok(None)`:
    /// no tools (then `tool_choice` may only be `none`).
    pub fn parse(
        tools: Option<Value>,
        tool_choice: Option<Value>,
        parallel: Option<bool>,
    ) -> Result<Option<Self>, ApiError> {
        let tools = tools.filter(|t| !t.is_null());
        let choice = match tool_choice.filter(|c| !c.is_null()) {
            None => None,
            Some(Value::String(s)) => Some(match s.as_str() {
                "none" => ToolChoice::None,
                "auto" => ToolChoice::Auto,
                "required" => ToolChoice::Required,
                other => {
                    return Err(invalid(
                        format!(
                            "`tool_choice` must be `none`, `auto`, `required` or {{\"type\": \"function\", \"function\": {{\"name\": …}}}}, got `{other}`."
                        ),
                        "tool_choice",
                    ));
                }
            }),
            Some(named) => {
                let name = (named.get("type").and_then(Value::as_str) == Some("function"))
                    .then(|| named.pointer("/function/name").and_then(Value::as_str))
                    .flatten();
                match name {
                    Some(name) => Some(ToolChoice::Named(name.to_owned())),
                    None => {
                        return Err(invalid(
                            "`tool_choice` as an object must be {\"type\": \"function\", \"function\": {\"name\": …}}.",
                            "tool_choice",
                        ));
                    }
                }
            }
        };
        let Some(definitions) = tools else {
            return match choice {
                None | Some(ToolChoice::None) => Ok(None),
                Some(_) => Err(invalid(
                    "`tool_choice` needs `tools` to choose from.",
                    "tool_choice",
                )),
            };
        };
        let defs: Vec<ToolDef> = serde_json::from_value(definitions.clone()).map_err(|e| {
            invalid(
                format!(
                    "`tools` must be a list of {{\"type\": \"function\", \"function\": {{\"name\", \"description\", \"parameters\", \"strict\"}}}}: {e}"
                ),
                "tools",
            )
        })?;
        if defs.is_empty() {
            return Err(invalid("`tools` must not be empty.", "tools"));
        }
        let mut functions: Vec<(String, Value)> = Vec::with_capacity(defs.len());
        for (i, def) in defs.into_iter().enumerate() {
            if def.kind != "function" {
                return Err(invalid(
                    format!(
                        "tools[{i}].type must be `function`, got `{}` (the only kind of tool).",
                        def.kind
                    ),
                    "tools",
                ));
            }
            let name = def.function.name;
            if name.is_empty() || functions.iter().any(|(n, _)| *n == name) {
                return Err(invalid(
                    format!("tools[{i}].function.name `{name}` is empty or not unique."),
                    "tools",
                ));
            }
            let parameters = match def.function.parameters {
                None | Some(Value::Null) => json!({"type": "object", "properties": {}}),
                Some(p @ Value::Object(_)) => p,
                Some(_) => {
                    return Err(invalid(
                        format!("tools[{i}].function.parameters must be a JSON schema object."),
                        "tools",
                    ));
                }
            };
            functions.push((name, parameters));
        }
        let choice = choice.unwrap_or(ToolChoice::Auto);
        if let ToolChoice::Named(name) = &choice
            && !functions.iter().any(|(n, _)| n == name)
        {
            return Err(invalid(
                format!("`tool_choice` names function `{name}`, which is not in `tools`."),
                "tool_choice",
            ));
        }
        Ok(Some(Self {
            definitions,
            choice,
            parallel: parallel.unwrap_or(true),
            functions,
        }))
    }

    /// What the grammar must enforce: the named function's parameters, or
    /// for `required` an array of calls (vLLM's schema, so a model trained
    /// on vLLM's outputs sees the same shape).
    pub fn constraint(&self) -> Option<ConstraintSpec> {
        match &self.choice {
            ToolChoice::None | ToolChoice::Auto => None,
            ToolChoice::Named(name) => self
                .functions
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, p)| ConstraintSpec::JsonSchema(p.clone())),
            ToolChoice::Required => {
                let branches: Vec<Value> = self
                    .functions
                    .iter()
                    .map(|(name, parameters)| {
                        json!({
                            "type": "object",
                            "properties": {
                                "name": {"type": "string", "enum": [name]},
                                "parameters": parameters,
                            },
                            "required": ["name", "parameters"],
                            "additionalProperties": false,
                        })
                    })
                    .collect();
                let mut schema = Map::new();
                schema.insert("type".into(), "array".into());
                schema.insert("minItems".into(), 1.into());
                if !self.parallel {
                    schema.insert("maxItems".into(), 1.into());
                }
                schema.insert("items".into(), json!({"anyOf": branches}));
                // Definitions the parameter schemas refer to (`#/$defs/…`) move to the top,
                // where the references now point.
                let defs: Map<String, Value> = self
                    .functions
                    .iter()
                    .filter_map(|(_, p)| p.get("$defs").and_then(Value::as_object))
                    .flat_map(|d| d.clone())
                    .collect();
                if !defs.is_empty() {
                    schema.insert("$defs".into(), Value::Object(defs));
                }
                Some(ConstraintSpec::JsonSchema(Value::Object(schema)))
            }
        }
    }

    /// How the output is read back; `parser` is the server's (flag or
    /// template). `Err`: `auto` with no known format.
    pub fn output(&self, parser: Option<ToolCallParser>) -> Result<Option<ToolOutput>, ApiError> {
        let mode = match &self.choice {
            ToolChoice::None => return Ok(None),
            ToolChoice::Named(name) => OutputMode::Named(name.clone()),
            ToolChoice::Required => OutputMode::Required,
            ToolChoice::Auto => match parser {
                Some(p) => OutputMode::Auto(p),
                None => {
                    return Err(invalid(
                        "`tool_choice: auto` (the default when `tools` is set) needs to know how this model writes tool calls, and its chat template does not say: start the server with `--tool-call-parser hermes|llama3_json|mistral`, or send `tool_choice` `required`, a named function, or `none`.",
                        "tool_choice",
                    ));
                }
            },
        };
        Ok(Some(ToolOutput {
            mode,
            parallel: self.parallel,
        }))
    }
}

/// How a choice's output becomes tool calls; one [`ToolStream`] per choice.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolOutput {
    mode: OutputMode,
    parallel: bool,
}

#[derive(Debug, Clone, PartialEq)]
enum OutputMode {
    /// The output is the arguments of this function.
    Named(String),
    /// The output is `[{"name", "parameters"}, …]`.
    Required,
    Auto(ToolCallParser),
}

impl ToolOutput {
    /// Whether detokenization must keep special tokens (a marker is one).
    pub fn keep_special_tokens(&self) -> bool {
        matches!(self.mode, OutputMode::Auto(p) if p.needs_special_tokens())
    }

    pub fn stream(&self) -> ToolStream {
        ToolStream {
            mode: self.mode.clone(),
            parallel: self.parallel,
            held: String::new(),
            state: Phase::Start,
            calls: 0,
            mistral_ids: matches!(self.mode, OutputMode::Auto(ToolCallParser::Mistral)),
        }
    }
}

/// A piece of one choice's output.
#[derive(Debug, Clone, PartialEq)]
pub enum ToolDelta {
    Content(String),
    /// Call `index` begins (OpenAI's first delta of a call carries its id
    /// and name).
    Call {
        index: usize,
        id: String,
        name: String,
        arguments: String,
    },
    /// More argument text for call `index`.
    Arguments {
        index: usize,
        text: String,
    },
}

/// One choice's text → content and tool calls, incrementally.
#[derive(Debug)]
pub struct ToolStream {
    mode: OutputMode,
    parallel: bool,
    /// Text not yet given out.
    held: String,
    state: Phase,
    calls: usize,
    /// Mistral's templates check that a call id is 9 alphanumerics.
    mistral_ids: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Nothing decided yet.
    Start,
    /// Free text, streamed as content.
    Content,
    /// Inside a tool call (or a JSON array of them): held until it parses.
    Call,
}

impl ToolStream {
    /// Whether any call was produced: `finish_reason` is then `tool_calls`.
    pub fn called(&self) -> bool {
        self.calls > 0
    }

    /// Feeds newly released text.
    pub fn push(&mut self, text: &str) -> Vec<ToolDelta> {
        self.held.push_str(text);
        self.advance(false)
    }

    /// Generation ended: whatever was held back is settled.
    pub fn finish(&mut self) -> Vec<ToolDelta> {
        self.advance(true)
    }

    fn advance(&mut self, finished: bool) -> Vec<ToolDelta> {
        let mut out = Vec::new();
        match self.mode.clone() {
            OutputMode::Named(name) => {
                if self.state == Phase::Start {
                    self.state = Phase::Call;
                    out.push(self.call(name, String::new()));
                }
                if !self.held.is_empty() {
                    out.push(ToolDelta::Arguments {
                        index: 0,
                        text: std::mem::take(&mut self.held),
                    });
                }
            }
            OutputMode::Required => {
                self.required(&mut out);
                if finished && self.calls == 0 {
                    // Cut off before a whole call: its text, rather than nothing.
                    self.flush_content(&mut out);
                }
            }
            OutputMode::Auto(ToolCallParser::Hermes) => self.hermes(&mut out, finished),
            OutputMode::Auto(ToolCallParser::Llama3Json) => self.llama3(&mut out, finished),
            OutputMode::Auto(ToolCallParser::Mistral) => self.mistral(&mut out, finished),
        }
        out
    }

    fn call(&mut self, name: String, arguments: String) -> ToolDelta {
        let index = self.calls;
        self.calls += 1;
        ToolDelta::Call {
            index,
            id: call_id(self.mistral_ids),
            name,
            arguments,
        }
    }

    /// A parsed call, unless `parallel_tool_calls: false` already had one.
    fn emit(&mut self, out: &mut Vec<ToolDelta>, name: String, arguments: &Value) {
        if self.parallel || self.calls == 0 {
            let delta = self.call(name, arguments.to_string());
            out.push(delta);
        }
    }

    fn flush_content(&mut self, out: &mut Vec<ToolDelta>) {
        if !self.held.is_empty() {
            out.push(ToolDelta::Content(std::mem::take(&mut self.held)));
        }
    }

    /// `[{"name": …, "parameters": …}, …]`: each element is a call once
    /// its closing brace arrives.
    fn required(&mut self, out: &mut Vec<ToolDelta>) {
        loop {
            let Some((start, end)) = next_array_element(&self.held) else {
                return;
            };
            let element: Option<(String, Value)> =
                serde_json::from_str::<Value>(&self.held[start..end])
                    .ok()
                    .and_then(|v| {
                        let name = v.get("name")?.as_str()?.to_owned();
                        Some((name, v.get("parameters")?.clone()))
                    });
            let rest = self.held[end..].to_owned();
            match element {
                Some((name, args)) => {
                    self.emit(out, name, &args);
                    // Keep the `[` so that the next element is found the same way.
                    self.held = format!("[{rest}");
                }
                None => {
                    // Not a call after all (the grammar rules this out): settle as text.
                    return;
                }
            }
        }
    }

    /// Hermes: text, `<tool_call>` JSON `</tool_call>`, repeated.
    fn hermes(&mut self, out: &mut Vec<ToolDelta>, finished: bool) {
        loop {
            match self.state {
                Phase::Start | Phase::Content => {
                    if let Some(at) = self.held.find(HERMES_OPEN) {
                        let before: String = self.held.drain(..at).collect();
                        // Whitespace between calls is the format's, not content.
                        let between_calls = self.calls > 0 && before.trim().is_empty();
                        if !before.is_empty() && !between_calls {
                            out.push(ToolDelta::Content(before));
                        }
                        self.held.drain(..HERMES_OPEN.len());
                        self.state = Phase::Call;
                        continue;
                    }
                    let keep = if finished {
                        0
                    } else {
                        partial_suffix(&self.held, HERMES_OPEN)
                    };
                    let release = self.held.len() - keep;
                    if self.calls > 0 && self.held[..release].trim().is_empty() {
                        // Held: another call may follow; at the end it is dropped.
                        if finished {
                            self.held.clear();
                        }
                        return;
                    }
                    let text: String = self.held.drain(..release).collect();
                    if !text.is_empty() {
                        self.state = Phase::Content;
                        out.push(ToolDelta::Content(text));
                    }
                    return;
                }
                Phase::Call => {
                    let (body, consumed) = match self.held.find(HERMES_CLOSE) {
                        Some(at) => (self.held[..at].to_owned(), at + HERMES_CLOSE.len()),
                        // vLLM reads an unclosed last call too.
                        None if finished => (self.held.clone(), self.held.len()),
                        None => return,
                    };
                    match parse_named_call(&body, &["arguments", "parameters"]) {
                        Some((name, args)) => {
                            self.held.drain(..consumed);
                            self.emit(out, name, &args);
                            self.state = Phase::Content;
                        }
                        None => {
                            // Not a call after all: the tags and their text are content.
                            let text: String = self.held.drain(..consumed).collect();
                            out.push(ToolDelta::Content(format!("{HERMES_OPEN}{text}")));
                            self.state = Phase::Content;
                        }
                    }
                }
            }
        }
    }

    /// Llama 3 JSON: an answer that starts with `{` (or `<|python_tag|>`)
    /// is held whole and parsed at the end; any other is content.
    fn llama3(&mut self, out: &mut Vec<ToolDelta>, finished: bool) {
        if self.state == Phase::Start {
            let head = self.held.trim_start();
            if head.starts_with('{') || head.starts_with(PYTHON_TAG) {
                self.state = Phase::Call;
            } else if !head.is_empty() && !PYTHON_TAG.starts_with(head) {
                self.state = Phase::Content;
            } else if !finished {
                return;
            }
        }
        if self.state == Phase::Call {
            if !finished {
                return;
            }
            let body = self.held.trim_start();
            let body = body.strip_prefix(PYTHON_TAG).unwrap_or(body);
            match parse_call_sequence(body) {
                Some(calls) => {
                    self.held.clear();
                    for (name, args) in calls {
                        self.emit(out, name, &args);
                    }
                }
                None => self.flush_content(out),
            }
            return;
        }
        self.flush_content(out);
    }

    /// Mistral: content, then `[TOOL_CALLS]` and the calls to the end.
    fn mistral(&mut self, out: &mut Vec<ToolDelta>, finished: bool) {
        if self.state != Phase::Call {
            if let Some(at) = self.held.find(MISTRAL_MARK) {
                let before: String = self.held.drain(..at).collect();
                if !before.is_empty() {
                    out.push(ToolDelta::Content(before));
                }
                self.state = Phase::Call;
            } else {
                let keep = if finished {
                    0
                } else {
                    partial_suffix(&self.held, MISTRAL_MARK)
                };
                let text: String = self.held.drain(..self.held.len() - keep).collect();
                if !text.is_empty() {
                    self.state = Phase::Content;
                    out.push(ToolDelta::Content(text));
                }
                return;
            }
        }
        if !finished {
            return;
        }
        match parse_mistral(&self.held) {
            Some(calls) => {
                self.held.clear();
                for (name, args) in calls {
                    self.emit(out, name, &args);
                }
            }
            None => self.flush_content(out),
        }
    }
}

/// The length of the longest end of `text` that begins `marker` (text to
/// hold back: the next delta may complete the marker).
fn partial_suffix(text: &str, marker: &str) -> usize {
    (1..marker.len().min(text.len() + 1))
        .rev()
        .find(|&n| {
            text.is_char_boundary(text.len() - n) && marker.starts_with(&text[text.len() - n..])
        })
        .unwrap_or(0)
}

/// The byte range of the first complete element of the JSON array that
/// `text` starts (after whitespace and `[`, and a `,` before the element).
fn next_array_element(text: &str) -> Option<(usize, usize)> {
    let bytes = text.as_bytes();
    let mut i = 0;
    let skip_ws = |i: &mut usize| {
        while *i < bytes.len() && bytes[*i].is_ascii_whitespace() {
            *i += 1;
        }
    };
    skip_ws(&mut i);
    if bytes.get(i) != Some(&b'[') {
        return None;
    }
    i += 1;
    skip_ws(&mut i);
    if bytes.get(i) == Some(&b',') {
        i += 1;
        skip_ws(&mut i);
    }
    if bytes.get(i) != Some(&b'{') {
        return None;
    }
    let start = i;
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    while i < bytes.len() {
        let b = bytes[i];
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
        } else {
            match b {
                b'"' => in_string = true,
                b'{' | b'[' => depth += 1,
                b'}' | b']' => {
                    depth -= 1;
                    if depth == 0 {
                        return Some((start, i + 1));
                    }
                }
                _ => {}
            }
        }
        i += 1;
    }
    None
}

/// `{"name": "…", "<args key>": {…}}`; the first of `keys` present is the
/// arguments (Hermes writes `arguments`, Llama 3 `parameters`).
fn parse_named_call(text: &str, keys: &[&str]) -> Option<(String, Value)> {
    let v: Value = serde_json::from_str(text.trim()).ok()?;
    call_of(&v, keys)
}

fn call_of(v: &Value, keys: &[&str]) -> Option<(String, Value)> {
    let name = v.get("name")?.as_str()?.to_owned();
    let args = keys.iter().find_map(|k| v.get(*k)).cloned()?;
    // Arguments written as a JSON string are taken as the object they spell.
    let args = match args {
        Value::String(s) => serde_json::from_str(&s).ok()?,
        other => other,
    };
    args.is_object().then_some((name, args))
}

/// Llama 3: objects separated by `;` (vLLM's reading).
fn parse_call_sequence(text: &str) -> Option<Vec<(String, Value)>> {
    let mut calls = Vec::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        let mut values = serde_json::Deserializer::from_str(rest).into_iter::<Value>();
        let value = values.next()?.ok()?;
        calls.push(call_of(&value, &["parameters", "arguments"])?);
        rest = rest[values.byte_offset()..].trim_start();
        rest = rest.strip_prefix(';').unwrap_or(rest).trim_start();
    }
    (!calls.is_empty()).then_some(calls)
}

/// After `[TOOL_CALLS]`: a JSON array of `{"name", "arguments"}`, or
/// `name[ARGS]{…}` / `name{…}` per call, each call after its own marker.
fn parse_mistral(text: &str) -> Option<Vec<(String, Value)>> {
    let mut calls = Vec::new();
    for part in text
        .split(MISTRAL_MARK)
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        if part.starts_with('[') {
            let items: Vec<Value> = serde_json::from_str(part).ok()?;
            for item in &items {
                calls.push(call_of(item, &["arguments", "parameters"])?);
            }
        } else {
            let brace = part.find('{')?;
            let name = part[..brace].trim().trim_end_matches("[ARGS]").trim();
            let args: Value = serde_json::from_str(&part[brace..]).ok()?;
            if name.is_empty() || !args.is_object() {
                return None;
            }
            calls.push((name.to_owned(), args));
        }
    }
    (!calls.is_empty()).then_some(calls)
}

/// `call_` and 24 alphanumerics as OpenAI's; 9 alphanumerics for Mistral,
/// whose templates check the length.
fn call_id(mistral: bool) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let len = if mistral { 9 } else { 24 };
    let mut out = String::with_capacity(len + 5);
    if !mistral {
        out.push_str("call_");
    }
    let mut state = RandomState::new().hash_one(n);
    for i in 0..len {
        if i % 10 == 0 {
            state = RandomState::new().hash_one((n, i, state));
        }
        out.push(ALPHABET[(state % ALPHABET.len() as u64) as usize] as char);
        state /= ALPHABET.len() as u64;
    }
    out
}

/// A whole choice's pieces, gathered: content (`None` when there is none
/// and tools were called, as OpenAI answers) and the calls.
pub fn gather(pieces: Vec<ToolDelta>) -> (Option<String>, Vec<ToolCall>) {
    let mut content = String::new();
    let mut calls: Vec<ToolCall> = Vec::new();
    for piece in pieces {
        match piece {
            ToolDelta::Content(text) => content.push_str(&text),
            ToolDelta::Call {
                id,
                name,
                arguments,
                ..
            } => calls.push(ToolCall::new(id, name, arguments)),
            ToolDelta::Arguments { index, text } => {
                if let Some(call) = calls.get_mut(index) {
                    call.function.arguments.push_str(&text);
                }
            }
        }
    }
    let content = (!content.is_empty() || calls.is_empty()).then_some(content);
    (content, calls)
}

#[cfg(test)]
mod tests;
