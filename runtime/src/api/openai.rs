//! OpenAI wire types for `POST /v1/completions` and
//! `POST /v1/chat/completions`, whole responses and SSE stream chunks
//! (plus vLLM's `return_token_ids`, `ignore_eos` and `repetition_penalty`
//! extensions).
//!
//! Every field is optional here; `validation.rs` refuses a field that is
//! not listed in this file (OpenAI's own API does the same with
//! "Unrecognized request argument"), so nothing a client asks for is
//! silently ignored, and turns a request into a checked
//! [`super::validation::Validated`] before the engine sees it. Fields we
//! parse only to refuse unless they are off (`best_of`, `echo`, ...) are here
//! so that their error can say so. Sampling fields left unset fall back to the
//! checkpoint's `generation_config.json` (see
//! `crate::engine::generation_config`).

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Fields shared by both endpoints (flattened into each request).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct CommonParams {
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    /// vLLM's extension; `-1` or `0` means no limit.
    pub top_k: Option<i64>,
    pub seed: Option<i64>,
    pub stop: Option<Stop>,
    pub n: Option<i64>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    /// vLLM: add `prompt_token_ids` / `token_ids` to the response.
    pub return_token_ids: Option<bool>,
    /// vLLM: keep generating past end-of-sequence ids.
    pub ignore_eos: Option<bool>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    /// Hugging Face's (vLLM accepts it too).
    pub repetition_penalty: Option<f64>,
    /// Chat: `true`/`false`; completions: the number of top logprobs.
    pub logprobs: Option<Value>,
    /// vLLM's structured-output fields (both endpoints).
    pub guided_json: Option<Value>,
    pub guided_regex: Option<String>,
    pub guided_choice: Option<Vec<String>>,
    /// Lark, in llguidance's dialect.
    pub guided_grammar: Option<String>,
    /// vLLM's newer spelling: `{"json" | "regex" | "choice" | "grammar" | "json_object": …}`.
    pub structured_outputs: Option<Value>,
    /// OpenAI's accepted-and-ignored field (an end-user id for abuse
    /// monitoring, which an offline server has no use for).
    pub user: Option<String>,
    // Parsed only to be refused unless off.
    pub min_p: Option<f64>,
    pub logit_bias: Option<Value>,
    pub best_of: Option<i64>,
    pub echo: Option<bool>,
}

/// Top-level names of [`CommonParams`], for naming `param` in errors.
pub const COMMON_FIELDS: [&str; 25] = [
    "guided_json",
    "guided_regex",
    "guided_choice",
    "guided_grammar",
    "structured_outputs",
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "stop",
    "n",
    "stream",
    "stream_options",
    "return_token_ids",
    "ignore_eos",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "logprobs",
    "user",
    "min_p",
    "logit_bias",
    "best_of",
    "echo",
    "model",
];

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct StreamOptions {
    /// Send a last chunk with `usage` and no choices (and `"usage": null`
    /// on the others), as OpenAI does.
    pub include_usage: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct CompletionRequest {
    pub model: Option<String>,
    pub prompt: Option<Prompt>,
    pub max_tokens: Option<i64>,
    #[serde(flatten)]
    pub common: CommonParams,
}

pub const COMPLETION_FIELDS: [&str; 2] = ["prompt", "max_tokens"];

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ChatRequest {
    pub model: Option<String>,
    pub messages: Option<Vec<ChatMessage>>,
    pub max_tokens: Option<i64>,
    /// OpenAI's newer name for `max_tokens`; wins when both are set.
    pub max_completion_tokens: Option<i64>,
    /// 0–20 alternatives per token; needs `logprobs: true`.
    pub top_logprobs: Option<i64>,
    /// `{"type": "text" | "json_object" | "json_schema", "json_schema": {…}}`.
    pub response_format: Option<Value>,
    /// Function definitions, checked in `tools.rs` and handed to the chat
    /// template as they are.
    pub tools: Option<Value>,
    /// `none`, `auto`, `required` or `{"type": "function", "function": {"name"}}`.
    pub tool_choice: Option<Value>,
    pub parallel_tool_calls: Option<bool>,
    #[serde(flatten)]
    pub common: CommonParams,
}

pub const CHAT_FIELDS: [&str; 8] = [
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "response_format",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "top_logprobs",
];

/// `prompt`: one string or one list of token ids. Anything else (batches)
/// lands in `Other` so that validation can name it.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    Tokens(Vec<u32>),
    Other(Value),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

/// A message of the conversation. Unknown fields are refused (a field the
/// template never sees would be a silent ignore).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ChatMessage {
    pub role: String,
    /// Absent or `null` only on an assistant message (one that called
    /// tools); rendered as `""`, which every template can concatenate.
    #[serde(default)]
    pub content: Option<MessageContent>,
    /// OpenAI's participant name; templates that know it render it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// An assistant turn's calls. Templates get each call's `arguments` as
    /// the JSON object the string spells (they write `arguments | tojson`),
    /// as vLLM hands them over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<MessageToolCall>>,
    /// A `tool` message: the call it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

/// A call in the history, as OpenAI's response gave it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MessageToolCall {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub function: MessageFunction,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MessageFunction {
    pub name: String,
    /// A JSON string from the client; a JSON object for the template.
    pub arguments: Value,
}

/// A message's `content`: a string, or OpenAI's list of content parts, of
/// which this text-only server takes `text` parts (joined with newlines,
/// as vLLM does) and refuses the others by name.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

impl MessageContent {
    /// The text the chat template sees; `Err` names what is not text.
    pub fn into_text(self) -> Result<String, String> {
        match self {
            Self::Text(text) => Ok(text),
            Self::Parts(parts) => {
                let mut texts = Vec::with_capacity(parts.len());
                for part in parts {
                    match (part.kind.as_str(), part.text) {
                        ("text", Some(text)) => texts.push(text),
                        ("text", None) => return Err("a `text` part has no `text`".into()),
                        (other, _) => {
                            return Err(format!(
                                "content parts of type `{other}` are not supported (text only)"
                            ));
                        }
                    }
                }
                Ok(texts.join("\n"))
            }
        }
    }
}

/// Chat `logprobs`: one entry per generated token.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ChatLogprobs {
    pub content: Vec<ChatTokenLogprob>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChatTokenLogprob {
    pub token: String,
    pub logprob: f64,
    pub bytes: Vec<u8>,
    pub top_logprobs: Vec<TopLogprob>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TopLogprob {
    pub token: String,
    pub logprob: f64,
    pub bytes: Vec<u8>,
}

/// Legacy completions `logprobs`: parallel lists, `top_logprobs` a map from
/// token text to logprob holding the top `logprobs` ids and the sampled
/// one (so up to `logprobs + 1` entries, as OpenAI documents).
#[derive(Debug, Clone, Default, Serialize)]
pub struct CompletionLogprobs {
    pub tokens: Vec<String>,
    pub token_logprobs: Vec<f64>,
    pub top_logprobs: Vec<serde_json::Map<String, Value>>,
    /// Character offset of each token's text in the choice's text.
    pub text_offset: Vec<usize>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
    /// OpenAI's shape; `cached_tokens` are prompt tokens whose keys and
    /// values came from the prefix cache.
    pub prompt_tokens_details: PromptTokensDetails,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct PromptTokensDetails {
    pub cached_tokens: usize,
}

impl Usage {
    pub fn new(prompt_tokens: usize, completion_tokens: usize, cached_tokens: usize) -> Self {
        Self {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
            prompt_tokens_details: PromptTokensDetails { cached_tokens },
        }
    }
}

#[derive(Debug, Serialize)]
pub struct CompletionResponse {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<CompletionChoice>,
    pub usage: Usage,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_token_ids: Option<Vec<u32>>,
}

#[derive(Debug, Serialize)]
pub struct CompletionChoice {
    pub index: u32,
    pub text: String,
    pub logprobs: Option<CompletionLogprobs>,
    pub finish_reason: &'static str,
    /// vLLM puts the prompt ids on the completion choice as well.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_token_ids: Option<Vec<u32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_ids: Option<Vec<u32>>,
}

#[derive(Debug, Serialize)]
pub struct ChatResponse {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChatChoice>,
    pub usage: Usage,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_token_ids: Option<Vec<u32>>,
}

#[derive(Debug, Serialize)]
pub struct ChatChoice {
    pub index: u32,
    pub message: AssistantMessage,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_ids: Option<Vec<u32>>,
}

#[derive(Debug, Serialize)]
pub struct AssistantMessage {
    pub role: &'static str,
    /// `null` when the model only called tools.
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
}

/// A call the model made, in OpenAI's shape.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolCall {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub function: FunctionCall,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FunctionCall {
    pub name: String,
    /// JSON text, as OpenAI sends it.
    pub arguments: String,
}

impl ToolCall {
    pub fn new(id: String, name: String, arguments: String) -> Self {
        Self {
            id,
            kind: "function",
            function: FunctionCall { name, arguments },
        }
    }
}

/// A streamed piece of a call: the first carries `id`, `type` and the
/// name; later ones only argument text, which clients concatenate.
#[derive(Debug, Serialize)]
pub struct ToolCallDelta {
    pub index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    pub function: FunctionDelta,
}

#[derive(Debug, Serialize)]
pub struct FunctionDelta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub arguments: String,
}

/// One `chat.completion.chunk` of a stream.
#[derive(Debug, Serialize)]
pub struct ChatChunk {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChatChunkChoice>,
    /// Absent without `include_usage`; `null` on every chunk but the last
    /// with it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Option<Usage>>,
    /// vLLM: on the first chunk only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_token_ids: Option<Vec<u32>>,
}

#[derive(Debug, Serialize)]
pub struct ChatChunkChoice {
    pub index: u32,
    pub delta: ChatDelta,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_ids: Option<Vec<u32>>,
}

/// The first delta carries the role; the last one is empty.
#[derive(Debug, Default, Serialize)]
pub struct ChatDelta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallDelta>>,
}

/// One `text_completion` chunk of a stream.
#[derive(Debug, Serialize)]
pub struct CompletionChunk {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<CompletionChunkChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Option<Usage>>,
}

#[derive(Debug, Serialize)]
pub struct CompletionChunkChoice {
    pub index: u32,
    pub text: String,
    pub logprobs: Option<CompletionLogprobs>,
    pub finish_reason: Option<&'static str>,
    /// vLLM: on the first chunk only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_token_ids: Option<Vec<u32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_ids: Option<Vec<u32>>,
}
