//! Engine log-probabilities in OpenAI's two shapes: chat's list of
//! `{token, logprob, bytes, top_logprobs}` and legacy completions' parallel
//! lists (`tokens`, `token_logprobs`, `top_logprobs` maps, `text_offset`).
//!
//! A token's `token` text is its bytes decoded lossily: a token that holds
//! part of a UTF-8 character shows U+FFFD there, and `bytes` (chat) keeps
//! the exact bytes, which is why OpenAI sends both.

use serde_json::{Map, Value};

use super::openai::{ChatLogprobs, ChatTokenLogprob, CompletionLogprobs, TopLogprob};
use crate::engine::{TokenLogprobs, Tokenizer, TokenizerError};

/// A logprob as JSON: `-inf` (a token the model gives no mass) has no JSON
/// number, so it becomes OpenAI's and vLLM's floor of -9999.
/// Widened to f64 so that every field prints the same digits (a map's
/// `Value` holds an f64; an f32 field would print its shortest f32 form).
fn finite(logprob: f32) -> f64 {
    if logprob.is_finite() {
        f64::from(logprob)
    } else {
        -9999.0
    }
}

fn piece(tokenizer: &Tokenizer, id: u32) -> Result<(String, Vec<u8>), TokenizerError> {
    let bytes = tokenizer.token_bytes(id)?;
    Ok((String::from_utf8_lossy(&bytes).into_owned(), bytes))
}

/// Chat `logprobs.content` entries for `tokens`.
pub fn chat(
    tokenizer: &Tokenizer,
    tokens: &[TokenLogprobs],
) -> Result<ChatLogprobs, TokenizerError> {
    let content = tokens
        .iter()
        .map(|t| {
            let (token, bytes) = piece(tokenizer, t.token)?;
            let top_logprobs = t
                .top
                .iter()
                .map(|&(id, logprob)| {
                    let (token, bytes) = piece(tokenizer, id)?;
                    Ok(TopLogprob {
                        token,
                        logprob: finite(logprob),
                        bytes,
                    })
                })
                .collect::<Result<_, TokenizerError>>()?;
            Ok(ChatTokenLogprob {
                token,
                logprob: finite(t.logprob),
                bytes,
                top_logprobs,
            })
        })
        .collect::<Result<_, TokenizerError>>()?;
    Ok(ChatLogprobs { content })
}

/// Completions `logprobs` for `tokens`, whose text starts `offset`
/// characters into the choice's text; returns the offset after them.
pub fn completion(
    tokenizer: &Tokenizer,
    tokens: &[TokenLogprobs],
    mut offset: usize,
) -> Result<(CompletionLogprobs, usize), TokenizerError> {
    let mut out = CompletionLogprobs::default();
    for t in tokens {
        let (token, _) = piece(tokenizer, t.token)?;
        let mut top = Map::new();
        for &(id, logprob) in &t.top {
            let (text, _) = piece(tokenizer, id)?;
            top.entry(text).or_insert(Value::from(finite(logprob)));
        }
        // OpenAI: "the API will always return the logprob of the sampled token".
        top.entry(token.clone())
            .or_insert(Value::from(finite(t.logprob)));
        out.text_offset.push(offset);
        offset += token.chars().count();
        out.tokens.push(token);
        out.token_logprobs.push(finite(t.logprob));
        out.top_logprobs.push(top);
    }
    Ok((out, offset))
}
