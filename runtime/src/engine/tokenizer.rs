//! Text ⇄ token ids, with the special-token facts spread over a checkpoint's
//! `tokenizer.json`, `tokenizer_config.json`, `generation_config.json` and
//! `config.json` gathered in one place.
//!
//! Why the extra files: `tokenizer.json` alone does not say which token ends
//! a turn. Instruct models routinely stop on several ids (Llama 3:
//! `<|end_of_text|>` and `<|eot_id|>`), and only `generation_config.json`
//! lists all of them; stopping on just one makes the model ramble on past
//! its answer.
//!
//! A GGUF directory without `tokenizer.json` (what Ollama-style downloads
//! are) gets the tokenizer its file describes
//! ([`crate::checkpoint::gguf_tokenizer`]), and the special-token facts the
//! file states fill in what `tokenizer_config.json` does not say.

use std::{fmt, fs, io, path::Path, path::PathBuf};

use serde::Deserialize;
use serde_json::Value;

use crate::checkpoint::{
    gguf::{Gguf, GgufError},
    gguf_tokenizer::{self, GgufTokenizer},
};

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("{} is missing (the model directory needs a Hugging Face fast tokenizer)", path.display())]
    Missing { path: PathBuf },
    #[error("cannot load {}: {message}", path.display())]
    Load { path: PathBuf, message: String },
    #[error("no tokenizer.json in {}, and its GGUF's tokenizer metadata is unusable", dir.display())]
    Gguf {
        dir: PathBuf,
        /// Boxed: the error travels in every engine error's `Result`.
        #[source]
        source: Box<GgufError>,
    },
    #[error("cannot read {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is not valid JSON", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("tokenization failed: {0}")]
    Encode(String),
    #[error("token id {id} is outside the vocabulary (size {vocab_size})")]
    UnknownId { id: u32, vocab_size: usize },
    #[error("detokenization failed: {0}")]
    Decode(String),
}

/// `tokenizer_config.json`, parsed once and shared with the chat template.
#[derive(Debug, Clone, Default)]
pub struct TokenizerConfig {
    pub raw: Value,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    /// `add_bos_token`: `Some(true)` forces a leading BOS on prompts encoded
    /// with special tokens, `Some(false)` removes one the post-processor
    /// added; `None` trusts `tokenizer.json`'s post-processor.
    pub add_bos_token: Option<bool>,
}

impl TokenizerConfig {
    /// Reads `<dir>/tokenizer_config.json`; absent means all defaults.
    pub fn load(dir: &Path) -> Result<Self, TokenizerError> {
        let path = dir.join("tokenizer_config.json");
        let Some(raw) = read_json_if_present(&path)? else {
            return Ok(Self::default());
        };
        Ok(Self {
            bos_token: special_token(raw.get("bos_token")),
            eos_token: special_token(raw.get("eos_token")),
            add_bos_token: raw.get("add_bos_token").and_then(Value::as_bool),
            raw,
        })
    }
}

/// Special tokens are a string or an `AddedToken` object with `content`.
fn special_token(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content")?.as_str().map(str::to_owned),
        _ => None,
    }
}

pub(crate) fn read_json_if_present(path: &Path) -> Result<Option<Value>, TokenizerError> {
    let raw = match fs::read(path) {
        Ok(raw) => raw,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(TokenizerError::Io {
                path: path.to_owned(),
                source,
            });
        }
    };
    serde_json::from_slice(&raw)
        .map(Some)
        .map_err(|source| TokenizerError::Json {
            path: path.to_owned(),
            source,
        })
}

#[derive(Debug, Deserialize)]
struct GenerationConfigIds {
    eos_token_id: Option<crate::models::config::TokenIds>,
}

/// Where a model's tokenizer came from, for the startup log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenizerSource {
    Json(PathBuf),
    Gguf {
        path: PathBuf,
        /// `tokenizer.ggml.model` and, for byte-level BPE, `.pre`.
        model: String,
        pre: Option<String>,
    },
}

impl fmt::Display for TokenizerSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Json(path) => write!(f, "{}", path.display()),
            Self::Gguf { path, model, pre } => {
                write!(
                    f,
                    "GGUF metadata of {} (no tokenizer.json): {} {model:?}",
                    path.display(),
                    gguf_tokenizer::MODEL
                )?;
                match pre {
                    Some(pre) => write!(f, ", {} {pre:?}", gguf_tokenizer::PRE),
                    None => Ok(()),
                }
            }
        }
    }
}

/// A loaded tokenizer plus the ids generation must stop on.
#[derive(Debug)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    source: TokenizerSource,
    bos_id: Option<u32>,
    bos_text: Option<String>,
    add_bos_token: Option<bool>,
    eos_ids: Vec<u32>,
    vocab_size: usize,
    /// The vocabulary spells bytes as GPT-2's printable characters (`Ġ`
    /// for a space): [`Tokenizer::token_bytes`] maps them back.
    byte_level: bool,
}

impl Tokenizer {
    /// Loads `<dir>/tokenizer.json`. Stop ids are the union of
    /// `generation_config.json`'s `eos_token_id` (int or list), the
    /// tokenizer's `eos_token`, and, only if neither exists, `config.json`'s
    /// `eos_token_id` (`config_eos`), as vLLM does.
    pub fn load(
        dir: &Path,
        config: &TokenizerConfig,
        config_eos: &[u32],
    ) -> Result<Self, TokenizerError> {
        let path = dir.join("tokenizer.json");
        if !path.is_file() {
            return Err(TokenizerError::Missing { path });
        }
        let inner = tokenizers::Tokenizer::from_file(&path).map_err(|e| TokenizerError::Load {
            path: path.clone(),
            message: e.to_string(),
        })?;
        Self::assemble(
            inner,
            TokenizerSource::Json(path),
            dir,
            config,
            config_eos,
            &[],
        )
    }

    /// `<dir>/tokenizer.json` when there is one, else the tokenizer `gguf`
    /// describes. In the second case the BOS and EOS tokens and
    /// `add_bos_token` that `config` leaves unset come from the GGUF (the
    /// chat template sees them there too, as transformers' GGUF loader
    /// does), and the GGUF's end-of-turn ids stop generation as well.
    pub fn load_dir(
        dir: &Path,
        gguf: Option<&Gguf>,
        config: &mut TokenizerConfig,
        config_eos: &[u32],
    ) -> Result<Self, TokenizerError> {
        let Some(gguf) = gguf.filter(|_| !dir.join("tokenizer.json").is_file()) else {
            return Self::load(dir, config, config_eos);
        };
        let built = gguf_tokenizer::from_gguf(gguf).map_err(|source| TokenizerError::Gguf {
            dir: dir.to_owned(),
            source: Box::new(source),
        })?;
        let GgufTokenizer {
            tokenizer,
            bos,
            eos,
            end_of_turn,
            add_bos,
            model,
            pre,
        } = built;
        let text = |id: Option<u32>| id.and_then(|id| tokenizer.id_to_token(id));
        if config.bos_token.is_none() {
            config.bos_token = text(bos);
        }
        if config.eos_token.is_none() {
            config.eos_token = text(eos);
        }
        config.add_bos_token = config.add_bos_token.or(Some(add_bos));
        let stop: Vec<u32> = eos.into_iter().chain(end_of_turn).collect();
        let source = TokenizerSource::Gguf {
            path: gguf.path().to_owned(),
            model,
            pre,
        };
        Self::assemble(tokenizer, source, dir, config, config_eos, &stop)
    }

    /// The special-token facts around `inner`; `stop` are stop ids the
    /// tokenizer's source states beside `config.eos_token`.
    fn assemble(
        inner: tokenizers::Tokenizer,
        source: TokenizerSource,
        dir: &Path,
        config: &TokenizerConfig,
        config_eos: &[u32],
        stop: &[u32],
    ) -> Result<Self, TokenizerError> {
        let gen_path = dir.join("generation_config.json");
        let mut eos_ids = match read_json_if_present(&gen_path)? {
            Some(v) => serde_json::from_value::<GenerationConfigIds>(v)
                .map_err(|source| TokenizerError::Json {
                    path: gen_path,
                    source,
                })?
                .eos_token_id
                .map(|t| t.to_vec())
                .unwrap_or_default(),
            None => Vec::new(),
        };
        if let Some(id) = config
            .eos_token
            .as_deref()
            .and_then(|t| inner.token_to_id(t))
        {
            eos_ids.push(id);
        }
        eos_ids.extend_from_slice(stop);
        if eos_ids.is_empty() {
            eos_ids.extend_from_slice(config_eos);
        }
        eos_ids.sort_unstable();
        eos_ids.dedup();
        let bos_id = config
            .bos_token
            .as_deref()
            .and_then(|t| inner.token_to_id(t));
        let vocab_size = inner.get_vocab_size(true);
        // The decoder's JSON is the one stable way to look inside a
        // `Sequence` of decoders.
        let byte_level = inner
            .get_decoder()
            .and_then(|d| serde_json::to_string(d).ok())
            .is_some_and(|json| json.contains("\"ByteLevel\""));
        Ok(Self {
            inner,
            source,
            bos_id,
            bos_text: config.bos_token.clone(),
            add_bos_token: config.add_bos_token,
            eos_ids,
            vocab_size,
            byte_level,
        })
    }

    /// Token ids for `text`. `add_special_tokens` applies the tokenizer's
    /// post-processor (BOS etc.), adjusted by `add_bos_token`; chat prompts
    /// pass `false` because the template already wrote the special tokens.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, TokenizerError> {
        let mut ids = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| TokenizerError::Encode(e.to_string()))?
            .get_ids()
            .to_vec();
        if let (true, Some(bos)) = (add_special_tokens, self.bos_id) {
            let has_bos = ids.first() == Some(&bos);
            match self.add_bos_token {
                Some(true) if !has_bos => ids.insert(0, bos),
                // Only the BOS the post-processor added: a prompt that spells
                // out the BOS token itself keeps it.
                Some(false)
                    if has_bos
                        && !self
                            .bos_text
                            .as_deref()
                            .is_some_and(|b| text.starts_with(b)) =>
                {
                    ids.remove(0);
                }
                _ => {}
            }
        }
        Ok(ids)
    }

    /// Text for `ids`; unknown ids are an error, not a silent gap.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, TokenizerError> {
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= self.vocab_size) {
            return Err(TokenizerError::UnknownId {
                id,
                vocab_size: self.vocab_size,
            });
        }
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| TokenizerError::Decode(e.to_string()))
    }

    /// The bytes one token stands for, as OpenAI's logprobs `bytes`: a token
    /// can be part of a UTF-8 character, which `decode` of that token alone
    /// would turn into U+FFFD. Byte-level BPE pieces map back through GPT-2's
    /// byte table; SentencePiece pieces turn `▁` into a space and `<0xNN>`
    /// into that byte; added tokens are their text.
    pub fn token_bytes(&self, id: u32) -> Result<Vec<u8>, TokenizerError> {
        let unknown = || TokenizerError::UnknownId {
            id,
            vocab_size: self.vocab_size,
        };
        let piece = self.inner.id_to_token(id).ok_or_else(unknown)?;
        let added = self
            .inner
            .get_added_tokens_decoder()
            .get(&id)
            .is_some_and(|t| t.special || !self.byte_level);
        if added {
            return Ok(piece.into_bytes());
        }
        if self.byte_level {
            let table = gpt2_unicode_to_bytes();
            return Ok(piece
                .chars()
                .map(|c| table.get(&c).copied().unwrap_or(b'?'))
                .collect());
        }
        if let Some(hex) = piece
            .strip_prefix("<0x")
            .and_then(|h| h.strip_suffix('>'))
            .filter(|h| h.len() == 2)
            && let Ok(byte) = u8::from_str_radix(hex, 16)
        {
            return Ok(vec![byte]);
        }
        Ok(piece.replace('\u{2581}', " ").into_bytes())
    }

    /// The underlying Hugging Face tokenizer, for code that needs its
    /// vocabulary and decoder directly (the grammar engine's token trie).
    pub fn hf(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Which file the tokenizer was built from.
    pub fn source(&self) -> &TokenizerSource {
        &self.source
    }

    /// Every id that ends generation (sorted, deduplicated).
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }
}

/// GPT-2's `bytes_to_unicode` inverted: printable bytes stand for
/// themselves, the other 68 are shifted to U+0100 and up.
fn gpt2_unicode_to_bytes() -> &'static std::collections::HashMap<char, u8> {
    static TABLE: std::sync::OnceLock<std::collections::HashMap<char, u8>> =
        std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        let mut shifted = 0u32;
        (0..=255u8)
            .map(|b| {
                let c = if printable(b) {
                    char::from(b)
                } else {
                    shifted += 1;
                    char::from_u32(255 + shifted).expect("U+0100..U+0143 are chars")
                };
                (c, b)
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_tokens_come_as_strings_or_objects() {
        let v: Value = serde_json::json!({"content": "<s>", "lstrip": false});
        assert_eq!(special_token(Some(&v)).as_deref(), Some("<s>"));
        assert_eq!(
            special_token(Some(&Value::String("</s>".into()))).as_deref(),
            Some("</s>")
        );
        assert_eq!(special_token(Some(&Value::Null)), None);
    }

    /// A word-level tokenizer whose post-processor adds `<s>` when
    /// `bos_post_processor` is set.
    fn model_dir(bos_post_processor: bool, tokenizer_config: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        let post = if bos_post_processor {
            r#"{"type":"TemplateProcessing","single":[{"SpecialToken":{"id":"<s>","type_id":0}},{"Sequence":{"id":"A","type_id":0}}],"pair":[{"Sequence":{"id":"A","type_id":0}}],"special_tokens":{"<s>":{"id":"<s>","ids":[0],"tokens":["<s>"]}}}"#
        } else {
            "null"
        };
        let tokenizer = format!(
            r#"{{"version":"1.0","truncation":null,"padding":null,
            "added_tokens":[{{"id":0,"content":"<s>","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true}},
                            {{"id":1,"content":"</s>","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true}}],
            "normalizer":null,"pre_tokenizer":{{"type":"WhitespaceSplit"}},"post_processor":{post},"decoder":null,
            "model":{{"type":"WordLevel","vocab":{{"<s>":0,"</s>":1,"<unk>":2,"hi":3,"<eot>":4}},"unk_token":"<unk>"}}}}"#
        );
        fs::write(dir.path().join("tokenizer.json"), tokenizer).expect("write");
        fs::write(dir.path().join("tokenizer_config.json"), tokenizer_config).expect("write");
        dir
    }

    fn load(dir: &tempfile::TempDir) -> Tokenizer {
        let config = TokenizerConfig::load(dir.path()).expect("config");
        Tokenizer::load(dir.path(), &config, &[]).expect("tokenizer")
    }

    #[test]
    fn add_bos_token_adjusts_the_post_processor() {
        let dir = model_dir(true, r#"{"bos_token":"<s>"}"#);
        assert_eq!(load(&dir).encode("hi", true).expect("encode"), [0, 3]);
        assert_eq!(load(&dir).encode("hi", false).expect("encode"), [3]);

        let dir = model_dir(true, r#"{"bos_token":"<s>","add_bos_token":false}"#);
        assert_eq!(load(&dir).encode("hi", true).expect("encode"), [3]);

        let dir = model_dir(
            false,
            r#"{"bos_token":{"content":"<s>"},"add_bos_token":true}"#,
        );
        let tok = load(&dir);
        assert_eq!(tok.encode("hi", true).expect("encode"), [0, 3]);
        assert_eq!(tok.encode("<s> hi", true).expect("encode"), [0, 3]);
        assert_eq!(tok.bos_id(), Some(0));
        assert!(matches!(
            tok.decode(&[9], false),
            Err(TokenizerError::UnknownId { id: 9, .. })
        ));
    }

    #[test]
    fn every_eos_id_stops() {
        let dir = model_dir(false, r#"{"eos_token":"</s>"}"#);
        fs::write(
            dir.path().join("generation_config.json"),
            r#"{"eos_token_id":[4,1]}"#,
        )
        .expect("write");
        assert_eq!(load(&dir).eos_ids(), [1, 4]);
        let config = TokenizerConfig::load(dir.path()).expect("config");
        fs::remove_file(dir.path().join("generation_config.json")).expect("rm");
        let no_eos = TokenizerConfig {
            eos_token: None,
            ..config
        };
        let tok = Tokenizer::load(dir.path(), &no_eos, &[4]).expect("tokenizer");
        assert_eq!(tok.eos_ids(), [4], "config.json fallback");
    }

    #[test]
    fn missing_tokenizer_names_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = Tokenizer::load(dir.path(), &TokenizerConfig::default(), &[]).expect_err("none");
        assert!(err.to_string().contains("tokenizer.json"), "{err}");
    }
}
