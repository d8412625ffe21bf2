//! The tokenizer half of a GGUF file: a Hugging Face `tokenizer.json` (+ `tokenizer_config.json`,
//! `config.json`, `chat_template.jinja`) as llama.cpp's `tokenizer.ggml.*` keys.
//!
//! Mirrors llama.cpp's converter for GPT-2 style byte-level BPE vocabularies
//! (`TextModel.get_vocab_base` and gguf-py's `SpecialVocab`), which covers Qwen2/2.5/3 and
//! Llama 3. llama.cpp names the pre-tokenizer by hashing a probe tokenization; without Python
//! and transformers we recognise the pre-tokenizer's regex instead, and refuse the rest with a
//! message rather than write a file that llama.cpp would tokenize differently.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value as Json;

use crate::convert::{ConvertError, read_json};
use crate::write::Value;

/// Token types (`llama_token_type`).
const NORMAL: i32 = 1;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;

/// The split regexes of the pre-tokenizers llama.cpp knows by name (`llama-vocab.cpp`).
const PRE_TOKENIZERS: [(&str, &str); 2] = [
    (
        "qwen2",
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    ),
    (
        "llama-bpe",
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    ),
];

const SPECIAL_TYPES: [(&str, &str); 7] = [
    ("bos", "bos"),
    ("eos", "eos"),
    ("unk", "unknown"),
    ("sep", "seperator"),
    ("pad", "padding"),
    ("cls", "cls"),
    ("mask", "mask"),
];

/// `tokenizer.ggml.*` metadata for the checkpoint in `dir`, in gguf-py's order.
pub fn metadata(
    dir: &Path,
    config: &Json,
    vocab_size: usize,
) -> Result<Vec<(String, Value)>, ConvertError> {
    let path = dir.join("tokenizer.json");
    let tok = read_json(&path)?;
    let invalid = |field: &str, message: String| ConvertError::Invalid {
        path: path.clone(),
        field: field.to_string(),
        message,
    };
    let model = &tok["model"];
    if model["type"] != "BPE" {
        return Err(invalid(
            "model.type",
            format!(
                "{}: only byte-level BPE vocabularies (GPT-2 style: Qwen2, Qwen3, Llama 3) can be converted to GGUF here; use a GGUF file from the model's publisher",
                model["type"]
            ),
        ));
    }
    if model["byte_fallback"] == true {
        return Err(invalid(
            "model.byte_fallback",
            "a SentencePiece-style vocabulary (Llama 2, Mistral v0.1): llama.cpp writes it as a \"llama\" vocabulary from tokenizer.model, which build-time quantization does not do; use a GGUF file from the model's publisher".into(),
        ));
    }
    let pre = pre_tokenizer(&tok).map_err(|m| invalid("pre_tokenizer", m))?;
    let Some(vocab) = model["vocab"].as_object().filter(|v| !v.is_empty()) else {
        return Err(invalid("model.vocab", "missing or empty".into()));
    };
    let added: Vec<&Json> = tok["added_tokens"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    let mut by_id: BTreeMap<u64, (String, Option<bool>)> = BTreeMap::new();
    for (text, id) in vocab {
        let id = id
            .as_u64()
            .ok_or_else(|| invalid("model.vocab", format!("`{text}` has no integer id")))?;
        by_id.insert(id, (text.clone(), None));
    }
    for t in &added {
        let (Some(content), Some(id)) = (t["content"].as_str(), t["id"].as_u64()) else {
            return Err(invalid(
                "added_tokens",
                format!("entry without content/id: {t}"),
            ));
        };
        by_id.insert(id, (content.to_string(), Some(t["special"] == true)));
    }
    if let Some((&max, _)) = by_id.last_key_value()
        && max as usize >= vocab_size
    {
        return Err(invalid(
            "model.vocab",
            format!("token id {max} is not below config.json's vocab_size {vocab_size}"),
        ));
    }
    let mut tokens = Vec::with_capacity(vocab_size);
    let mut types = Vec::with_capacity(vocab_size);
    for i in 0..vocab_size as u64 {
        match by_id.get(&i) {
            None => {
                tokens.push(format!("[PAD{i}]"));
                types.push(UNUSED);
            }
            Some((text, None)) => {
                tokens.push(text.clone());
                types.push(NORMAL);
            }
            Some((text, Some(special))) => {
                if *special || looks_special(text) {
                    tokens.push(text.clone());
                    types.push(CONTROL);
                } else {
                    tokens.push(text.replace('\u{2581}', " "));
                    types.push(USER_DEFINED);
                }
            }
        }
    }
    let merges = merges(&tok).map_err(|m| invalid("model.merges", m))?;

    let mut meta = vec![
        (
            "tokenizer.ggml.model".to_string(),
            Value::String("gpt2".into()),
        ),
        ("tokenizer.ggml.pre".to_string(), Value::String(pre.into())),
        ("tokenizer.ggml.tokens".to_string(), Value::Strings(tokens)),
        ("tokenizer.ggml.token_type".to_string(), Value::I32s(types)),
        ("tokenizer.ggml.merges".to_string(), Value::Strings(merges)),
    ];
    meta.extend(special_tokens(dir, &tok, &added, config, vocab_size)?);
    Ok(meta)
}

/// `TextModel.does_token_look_special`.
fn looks_special(token: &str) -> bool {
    matches!(token, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
        || (token.starts_with("<|") && token.ends_with("|>"))
        || (token.starts_with("<\u{ff5c}") && token.ends_with("\u{ff5c}>"))
        || (token.starts_with("<unused") && token.ends_with('>'))
}

fn pre_tokenizer(tok: &Json) -> Result<&'static str, String> {
    if !tok["normalizer"].is_null() {
        return Err("tokenizer.json has a normalizer; llama.cpp's byte-level BPE pre-tokenizers do not normalize".into());
    }
    let pre = &tok["pre_tokenizer"];
    let byte_level = |p: &Json, regex: bool| {
        p["type"] == "ByteLevel"
            && p["add_prefix_space"] != true
            && (p["use_regex"] != false) == regex
    };
    if byte_level(pre, true) {
        // HF's ByteLevel regex is GPT-2's, which is llama.cpp's "gpt-2" pre-tokenizer.
        return Ok("gpt-2");
    }
    if pre["type"] == "Sequence"
        && let Some([split, last]) = pre["pretokenizers"].as_array().map(Vec::as_slice)
        && split["type"] == "Split"
        && split["behavior"] == "Isolated"
        && split["invert"] != true
        && byte_level(last, false)
        && let Some(regex) = split["pattern"]["Regex"].as_str()
        && let Some((name, _)) = PRE_TOKENIZERS.iter().find(|(_, r)| *r == regex)
    {
        return Ok(name);
    }
    let shown: String = pre.to_string().chars().take(200).collect();
    Err(format!(
        "{shown} is not a pre-tokenizer llama.cpp knows by name (recognised: a lone ByteLevel, or the Qwen2 / Llama 3 split regex + ByteLevel)"
    ))
}

/// Merges as "a b" strings; pair lists with spaces inside a part use gguf-py's U+0120 escape.
fn merges(tok: &Json) -> Result<Vec<String>, String> {
    let Some(list) = tok["model"]["merges"].as_array().filter(|m| !m.is_empty()) else {
        return Err("missing or empty".into());
    };
    list.iter()
        .map(|m| match m {
            Json::String(s) => Ok(s.clone()),
            Json::Array(pair) if pair.len() == 2 => {
                let part = |p: &Json| {
                    p.as_str()
                        .map(|s| s.replace(' ', "\u{0120}"))
                        .ok_or_else(|| format!("entry {m} is not a pair of strings"))
                };
                Ok(format!("{} {}", part(&pair[0])?, part(&pair[1])?))
            }
            other => Err(format!("entry {other} is neither \"a b\" nor [a, b]")),
        })
        .collect()
}

/// gguf-py's `SpecialVocab`: special token ids and add_bos/add_eos from the post-processor,
/// `tokenizer_config.json` and `config.json`, then the chat template.
fn special_tokens(
    dir: &Path,
    tok: &Json,
    added: &[&Json],
    config: &Json,
    vocab_size: usize,
) -> Result<Vec<(String, Value)>, ConvertError> {
    let tc_path = dir.join("tokenizer_config.json");
    let tc = if tc_path.is_file() {
        read_json(&tc_path)?
    } else {
        Json::Null
    };
    let token_text = |v: &Json| -> Option<String> {
        match v {
            Json::String(s) => Some(s.clone()),
            Json::Object(o) => o.get("content")?.as_str().map(str::to_string),
            _ => None,
        }
    };
    let bos = token_text(&tc["bos_token"]);
    let eos = token_text(&tc["eos_token"]);
    let mut add: Vec<(&str, bool)> = Vec::new();
    let set_add = |add: &mut Vec<(&str, bool)>, typ: &'static str, v: bool, force: bool| match add
        .iter_mut()
        .find(|(t, _)| *t == typ)
    {
        Some(entry) if force => entry.1 = v,
        Some(_) => {}
        None => add.push((typ, v)),
    };
    let post = &tok["post_processor"];
    let processors: Vec<&Json> = match post["processors"].as_array() {
        Some(list) => list.iter().collect(),
        None if !post.is_null() => vec![post],
        None => vec![],
    };
    for p in processors {
        match p["type"].as_str() {
            Some("ByteLevel") => {
                set_add(&mut add, "bos", false, false);
                set_add(&mut add, "eos", false, false);
            }
            Some("TemplateProcessing") => {
                let single = p["single"].as_array().cloned().unwrap_or_default();
                if single.len() > 1 {
                    if let Some(first) = single[0]["SpecialToken"]["id"].as_str() {
                        set_add(&mut add, "bos", Some(first) == bos.as_deref(), true);
                    }
                    if let Some(last) = single[single.len() - 1]["SpecialToken"]["id"].as_str() {
                        set_add(&mut add, "eos", Some(last) == eos.as_deref(), true);
                    }
                }
            }
            _ => {}
        }
    }
    let mut ids: Vec<(&str, u64)> = Vec::new();
    for (typ, _) in SPECIAL_TYPES {
        if let Some(v) = tc[format!("add_{typ}_token")].as_bool() {
            set_add(&mut add, typ, v, false);
        }
        let Some(content) = token_text(&tc[format!("{typ}_token")]) else {
            continue;
        };
        let id = added
            .iter()
            .find(|t| t["content"].as_str() == Some(content.as_str()))
            .and_then(|t| t["id"].as_u64());
        if let Some(id) = id.filter(|&id| (id as usize) < vocab_size) {
            ids.push((typ, id));
        }
    }
    for (typ, _) in SPECIAL_TYPES {
        if ids.iter().any(|(t, _)| *t == typ) {
            continue;
        }
        if let Some(id) = config[format!("{typ}_token_id")]
            .as_u64()
            .filter(|&id| (id as usize) < vocab_size)
        {
            ids.push((typ, id));
        }
    }
    fn key_of(typ: &'static str) -> &'static str {
        SPECIAL_TYPES
            .iter()
            .find(|(t, _)| *t == typ)
            .map_or(typ, |(_, k)| *k)
    }
    let mut meta: Vec<(String, Value)> = ids
        .into_iter()
        .map(|(typ, id)| {
            (
                format!("tokenizer.ggml.{}_token_id", key_of(typ)),
                Value::U32(id as u32),
            )
        })
        .collect();
    meta.extend(
        add.into_iter()
            .map(|(typ, v)| (format!("tokenizer.ggml.add_{typ}_token"), Value::Bool(v))),
    );
    let template = match &tc["chat_template"] {
        Json::String(s) => Some(s.clone()),
        _ => {
            let jinja = dir.join("chat_template.jinja");
            if jinja.is_file() {
                Some(
                    std::fs::read_to_string(&jinja).map_err(|source| ConvertError::Io {
                        path: jinja.clone(),
                        source,
                    })?,
                )
            } else {
                None
            }
        }
    };
    if let Some(t) = template {
        meta.push(("tokenizer.chat_template".into(), Value::String(t)));
    }
    Ok(meta)
}
