//! The tokenizer a GGUF file describes in its `tokenizer.ggml.*` metadata,
//! rebuilt as a Hugging Face `tokenizers::Tokenizer` for model directories
//! that carry no `tokenizer.json`.
//!
//! llama.cpp is the reference: a GGUF's vocabulary means what llama.cpp
//! makes of it (`src/llama-vocab.cpp`). The building blocks are the ones
//! transformers' GGUF loader uses (`integrations/gguf`), and where the two
//! differ the choice is the one that gives llama.cpp's ids:
//! - `gpt2` (byte-level BPE): the file's merges, the split regexes
//!   llama.cpp applies for `tokenizer.ggml.pre` (one after the other, as it
//!   does), then the byte-to-unicode mapping.
//! - `llama` (SentencePiece): BPE with byte fallback whose merges are every
//!   split of every token into two tokens, ranked by the merged token's
//!   score. llama.cpp merges the adjacent pair whose concatenation scores
//!   highest, which is the same thing as long as scores are distinct (they
//!   are in SentencePiece models: minus the merge rank). The file's merges,
//!   if any, are ignored, as llama.cpp ignores them. A "▁" goes in front of
//!   every stretch of text between special tokens, as llama.cpp does
//!   (transformers' `Metaspace` only prefixes the start of the text).
//! - Control, unknown and user-defined tokens become added tokens, matched
//!   whole in text before anything else, as llama.cpp's `parse_special`
//!   tokenization matches them.
//!
//! Anything else is refused at startup, naming the file and the key: an
//! approximate tokenizer would serve plausible-looking garbage.

use std::collections::HashMap;

use candle_core::quantized::gguf_file::Value;
use tokenizers::{
    AddedToken, DecoderWrapper, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper,
    decoders::{byte_fallback::ByteFallback, fuse::Fuse, strip::Strip},
    models::bpe::{BPE, Vocab},
    normalizers::{Prepend, Replace},
    pre_tokenizers::{
        byte_level::ByteLevel,
        split::{Split, SplitPattern},
    },
    processors::template::{SpecialToken, TemplateProcessing},
};

use super::gguf::{Gguf, GgufError};

pub const MODEL: &str = "tokenizer.ggml.model";
pub const PRE: &str = "tokenizer.ggml.pre";
const TOKENS: &str = "tokenizer.ggml.tokens";
const TOKEN_TYPE: &str = "tokenizer.ggml.token_type";
const SCORES: &str = "tokenizer.ggml.scores";
const MERGES: &str = "tokenizer.ggml.merges";
const BOS: &str = "tokenizer.ggml.bos_token_id";
const EOS: &str = "tokenizer.ggml.eos_token_id";
const EOT: &str = "tokenizer.ggml.eot_token_id";
const EOM: &str = "tokenizer.ggml.eom_token_id";
const UNK: &str = "tokenizer.ggml.unknown_token_id";
const ADD_BOS: &str = "tokenizer.ggml.add_bos_token";
const ADD_EOS: &str = "tokenizer.ggml.add_eos_token";
const ADD_SPACE_PREFIX: &str = "tokenizer.ggml.add_space_prefix";

/// `tokenizer.ggml.token_type` values (gguf-py's `TokenType`).
const UNKNOWN: i32 = 2;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;

/// GPT-2's split regex, as in Hugging Face's `ByteLevel` pre-tokenizer.
/// llama.cpp's copy lacks the final `|\s+`, but whatever that alternative
/// would match is left between matches and split off all the same.
const GPT2_SPLIT: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

/// llama.cpp's rewrite of Llama 3's regex: ASCII-only case folding of the
/// contractions where the original's `(?i:...)` folds Unicode (`ſ` is `s`).
const LLAMA3_SPLIT: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen2's: Llama 3's with single digits.
const QWEN2_SPLIT: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// llama.cpp's `LLAMA_VOCAB_PRE_TYPE_DEFAULT`: four regexes, each splitting
/// the pieces the previous one left.
const DEFAULT_SPLITS: &[&str] = &[
    r"[\p{P}\$\+<=>\^~\|]+",
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)",
    r"\p{N}+",
    r"[0-9][0-9][0-9]",
];

/// StarCoder's (and Command-R's, SmolLM's, ...): digits one by one, then
/// GPT-2's regex.
const STARCODER_SPLITS: &[&str] = &[
    r"\p{N}",
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)",
];

/// Falcon's: punctuation runs, GPT-2's regex, then digit triples.
const FALCON_SPLITS: &[&str] = &[
    r"[\p{P}\$\+<=>\^~\|`]+",
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)",
    r"[0-9][0-9][0-9]",
];

/// What llama.cpp does for a `tokenizer.ggml.pre` name: its split regexes,
/// `ignore_merges` (a whole piece that is a token is taken as is) and
/// whether BOS is added when `add_bos_token` is absent.
struct PreTokenizer {
    splits: &'static [&'static str],
    ignore_merges: bool,
    add_bos: bool,
}

/// The names llama.cpp maps to the regexes above, and nothing that also
/// changes other settings this module does not reproduce.
fn pre_tokenizer(name: &str) -> Option<PreTokenizer> {
    let (splits, ignore_merges, add_bos): (&'static [&'static str], _, _) = match name {
        "default" => (DEFAULT_SPLITS, false, false),
        "gpt-2" | "phi-2" | "mpt" | "olmo" => (&[GPT2_SPLIT], false, false),
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "pixtral" => {
            (&[LLAMA3_SPLIT], true, true)
        }
        "dbrx" | "smaug-bpe" => (&[LLAMA3_SPLIT], false, false),
        "qwen2" | "deepseek-r1-qwen" | "megrez" => (&[QWEN2_SPLIT], false, false),
        "starcoder" | "refact" | "command-r" | "smollm" | "codeshell" => {
            (STARCODER_SPLITS, false, false)
        }
        "falcon" => (FALCON_SPLITS, false, false),
        _ => return None,
    };
    Some(PreTokenizer {
        splits,
        ignore_merges,
        add_bos,
    })
}

const SUPPORTED_PRE: &str = "default, gpt-2, phi-2, mpt, olmo, llama3, llama-v3, llama-bpe, \
                             falcon3, pixtral, dbrx, smaug-bpe, qwen2, deepseek-r1-qwen, megrez, \
                             starcoder, refact, command-r, smollm, codeshell, falcon";

/// A tokenizer rebuilt from GGUF metadata, with the special-token facts
/// llama.cpp reads beside the vocabulary.
#[derive(Debug)]
pub struct GgufTokenizer {
    pub tokenizer: tokenizers::Tokenizer,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    /// `eot_token_id` and `eom_token_id`: llama.cpp ends generation on them
    /// too (Llama 3's `<|eot_id|>` ends a chat turn, not the text).
    pub end_of_turn: Vec<u32>,
    /// Whether encoding with special tokens puts BOS first (the post-
    /// processor does), from `add_bos_token` or llama.cpp's default.
    pub add_bos: bool,
    /// `tokenizer.ggml.model`, and `.pre` for byte-level vocabularies.
    pub model: String,
    pub pre: Option<String>,
}

/// Reads `tokenizer.ggml.*` from `gguf` and builds its tokenizer.
pub fn from_gguf(gguf: &Gguf) -> Result<GgufTokenizer, GgufError> {
    let meta = Meta(gguf);
    let model = meta
        .string(MODEL)?
        .ok_or_else(|| meta.err(MODEL, "missing: the file has no vocabulary"))?
        .to_owned();
    if model != "gpt2" && model != "llama" {
        return Err(meta.err(
            MODEL,
            format!(
                "{model:?} is not a vocabulary this server rebuilds (gpt2, llama); \
                 put the model's tokenizer.json beside the GGUF"
            ),
        ));
    }
    let tokens = meta.tokens()?;
    let n = tokens.len();
    let types = match meta.array(TOKEN_TYPE)? {
        Some(values) => {
            meta.same_length(TOKEN_TYPE, values.len(), n)?;
            values
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    v.to_i32()
                        .map_err(|_| meta.err(TOKEN_TYPE, format!("entry {i} is not an int32")))
                })
                .collect::<Result<Vec<_>, _>>()?
        }
        // llama.cpp: every token normal.
        None => vec![1; n],
    };
    let id = |key: &str| -> Result<Option<u32>, GgufError> {
        match meta.int(key)? {
            Some(id) if id >= n as u64 => Err(meta.err(
                key,
                format!("token id {id} is outside the vocabulary ({n} tokens)"),
            )),
            Some(id) => Ok(Some(id as u32)),
            None => Ok(None),
        }
    };
    let (mut tokenizer, pre, default_add_bos, defaults) = if model == "gpt2" {
        let (tokenizer, pre, add_bos) = byte_level(&meta, &tokens)?;
        (tokenizer, Some(pre), add_bos, (None, None))
    } else {
        let unk = id(UNK)?.or_else(|| types.iter().position(|&t| t == UNKNOWN).map(|i| i as u32));
        let tokenizer = sentencepiece(&meta, &tokens, unk)?;
        // llama.cpp's defaults for a SentencePiece vocabulary (Llama 2's ids).
        let default = |id: u32| (id < n as u32).then_some(id);
        (tokenizer, None, true, (default(1), default(2)))
    };
    let bos = id(BOS)?.or(defaults.0);
    let eos = id(EOS)?.or(defaults.1);
    let end_of_turn = [id(EOT)?, id(EOM)?].into_iter().flatten().collect();
    let add_bos = meta.bool(ADD_BOS)?.unwrap_or(default_add_bos);
    let add_eos = meta.bool(ADD_EOS)?.unwrap_or(false);

    let mut special = Vec::new();
    let mut user_defined = Vec::new();
    for (token, &ty) in tokens.iter().zip(&types) {
        match ty {
            CONTROL | UNKNOWN => special.push(AddedToken::from(token.clone(), true)),
            USER_DEFINED => {
                user_defined.push(AddedToken::from(token.clone(), false).normalized(false))
            }
            _ => {}
        }
    }
    tokenizer
        .add_special_tokens(special)
        .map_err(|e| meta.err(TOKEN_TYPE, e.to_string()))?;
    tokenizer
        .add_tokens(user_defined)
        .map_err(|e| meta.err(TOKEN_TYPE, e.to_string()))?;

    if add_bos || add_eos {
        let mut single = Vec::new();
        let mut specials = Vec::new();
        for (wanted, key, flag, which, id) in [
            (add_bos, BOS, ADD_BOS, "bos", bos),
            (add_eos, EOS, ADD_EOS, "eos", eos),
        ] {
            if !wanted {
                continue;
            }
            let id = id.ok_or_else(|| {
                meta.err(
                    key,
                    format!(
                        "missing, but prompts get one ({flag}, or llama.cpp's default for \
                         this vocabulary)"
                    ),
                )
            })?;
            specials.push(
                SpecialToken::new(
                    which.to_owned(),
                    vec![id],
                    vec![tokens[id as usize].clone()],
                )
                .map_err(|e| meta.err(key, e.to_string()))?,
            );
            single.push(which);
        }
        // BOS before the text, EOS after it.
        single.insert(usize::from(add_bos), "$A");
        let post = TemplateProcessing::builder()
            .try_single(single)
            .and_then(|b| {
                b.special_tokens(specials)
                    .build()
                    .map_err(|e| e.to_string())
            })
            .map_err(|e| meta.err(ADD_BOS, e))?;
        tokenizer.with_post_processor(Some(PostProcessorWrapper::Template(post)));
    }
    Ok(GgufTokenizer {
        tokenizer,
        bos,
        eos,
        end_of_turn,
        add_bos,
        model,
        pre,
    })
}

/// Byte-level BPE: the tokenizer, the pre-tokenizer name, and llama.cpp's
/// default for adding BOS with it.
fn byte_level(
    meta: &Meta<'_>,
    tokens: &[String],
) -> Result<(tokenizers::Tokenizer, String, bool), GgufError> {
    // llama.cpp: no name is "default", with a warning that quality suffers.
    let name = meta.string(PRE)?.unwrap_or("default").to_owned();
    let pre = pre_tokenizer(&name).ok_or_else(|| {
        meta.err(
            PRE,
            format!(
                "{name:?} is not a pre-tokenizer this server reproduces ({SUPPORTED_PRE}); \
                 put the model's tokenizer.json beside the GGUF"
            ),
        )
    })?;
    let vocab = vocab(tokens);
    let merges = meta
        .strings(MERGES)?
        .ok_or_else(|| meta.err(MERGES, "missing: a gpt2 vocabulary needs its merges"))?;
    let mut pairs = Vec::with_capacity(merges.len());
    for (i, entry) in merges.iter().enumerate() {
        pairs.push(merge_pair(meta, &vocab, i, entry)?);
    }
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, pairs)
        .ignore_merges(pre.ignore_merges)
        .build()
        .map_err(|e| meta.err(MERGES, e.to_string()))?;
    let mut steps = Vec::with_capacity(pre.splits.len() + 1);
    for regex in pre.splits {
        let split = Split::new(
            SplitPattern::Regex((*regex).to_owned()),
            tokenizers::SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| meta.err(PRE, format!("split regex {regex:?}: {e}")))?;
        steps.push(PreTokenizerWrapper::Split(split));
    }
    steps.push(PreTokenizerWrapper::ByteLevel(ByteLevel::new(
        false, true, false,
    )));
    let mut tokenizer = tokenizers::Tokenizer::new(bpe);
    tokenizer
        .with_pre_tokenizer(Some(PreTokenizerWrapper::Sequence(
            tokenizers::pre_tokenizers::sequence::Sequence::new(steps),
        )))
        .with_decoder(Some(DecoderWrapper::ByteLevel(ByteLevel::default())));
    Ok((tokenizer, name, pre.add_bos))
}

/// One `"left right"` merges entry, split where llama.cpp splits it (the
/// first space after the first character), both halves and their
/// concatenation checked against the vocabulary.
fn merge_pair(
    meta: &Meta<'_>,
    vocab: &Vocab,
    i: usize,
    entry: &str,
) -> Result<(String, String), GgufError> {
    let first = entry.chars().next().map_or(0, char::len_utf8);
    let Some(at) = entry[first..].find(' ').map(|p| p + first) else {
        return Err(meta.err(
            MERGES,
            format!("entry {i} {entry:?} is not two tokens separated by a space"),
        ));
    };
    let (left, right) = (&entry[..at], &entry[at + 1..]);
    for half in [left, right] {
        if !vocab.contains_key(half) {
            return Err(meta.err(
                MERGES,
                format!("entry {i} {entry:?}: {half:?} is not in {TOKENS}"),
            ));
        }
    }
    if !vocab.contains_key(&format!("{left}{right}")) {
        return Err(meta.err(
            MERGES,
            format!(
                "entry {i} {entry:?} merges into {:?}, which is not in {TOKENS}",
                format!("{left}{right}")
            ),
        ));
    }
    Ok((left.to_owned(), right.to_owned()))
}

/// SentencePiece as llama.cpp tokenizes it (see the module comment).
fn sentencepiece(
    meta: &Meta<'_>,
    tokens: &[String],
    unk: Option<u32>,
) -> Result<tokenizers::Tokenizer, GgufError> {
    let scores = match meta.array(SCORES)? {
        Some(values) => {
            meta.same_length(SCORES, values.len(), tokens.len())?;
            values
                .iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Value::F32(x) => Ok(*x),
                    Value::I32(x) => Ok(*x as f32),
                    _ => Err(meta.err(SCORES, format!("entry {i} is not a float32"))),
                })
                .collect::<Result<Vec<_>, _>>()?
        }
        None => {
            return Err(meta.err(
                SCORES,
                "missing: a llama (SentencePiece) vocabulary merges by score",
            ));
        }
    };
    let vocab = vocab(tokens);
    let merges = merges_from_scores(tokens, &scores, &vocab);
    let mut builder = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .byte_fallback(true)
        .fuse_unk(true);
    if let Some(unk) = unk {
        builder = builder.unk_token(tokens[unk as usize].clone());
    }
    let bpe = builder
        .build()
        .map_err(|e| meta.err(SCORES, e.to_string()))?;
    let add_space_prefix = meta.bool(ADD_SPACE_PREFIX)?.unwrap_or(true);
    let replace = |from: &str, to: &str| {
        Replace::new(from, to).map_err(|e| meta.err(ADD_SPACE_PREFIX, e.to_string()))
    };
    let mut normalizers = Vec::new();
    if add_space_prefix {
        normalizers.push(NormalizerWrapper::Prepend(Prepend::new("▁".to_owned())));
    }
    normalizers.push(NormalizerWrapper::Replace(replace(" ", "▁")?));
    let mut decoders = vec![
        DecoderWrapper::Replace(replace("▁", " ")?),
        DecoderWrapper::ByteFallback(ByteFallback::new()),
        DecoderWrapper::Fuse(Fuse::new()),
    ];
    if add_space_prefix {
        decoders.push(DecoderWrapper::Strip(Strip::new(' ', 1, 0)));
    }
    let mut tokenizer = tokenizers::Tokenizer::new(bpe);
    tokenizer
        .with_normalizer(Some(NormalizerWrapper::Sequence(
            tokenizers::normalizers::Sequence::new(normalizers),
        )))
        .map_err(|e| meta.err(ADD_SPACE_PREFIX, e.to_string()))?;
    tokenizer.with_decoder(Some(DecoderWrapper::Sequence(
        tokenizers::decoders::sequence::Sequence::new(decoders),
    )));
    Ok(tokenizer)
}

/// Every split of every token into two tokens, best merged score first;
/// ties by merged token id, then longer left half, so the order does not
/// depend on hashing.
fn merges_from_scores(tokens: &[String], scores: &[f32], vocab: &Vocab) -> Vec<(String, String)> {
    let mut merges: Vec<(f32, usize, usize, &str, &str)> = Vec::new();
    for (id, token) in tokens.iter().enumerate() {
        for (at, _) in token.char_indices().skip(1) {
            let (left, right) = token.split_at(at);
            if vocab.contains_key(left) && vocab.contains_key(right) {
                merges.push((scores[id], id, at, left, right));
            }
        }
    }
    merges.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(b.2.cmp(&a.2)));
    merges
        .into_iter()
        .map(|(_, _, _, l, r)| (l.to_owned(), r.to_owned()))
        .collect()
}

fn vocab(tokens: &[String]) -> Vocab {
    tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect()
}

/// Typed reads of `tokenizer.ggml.*`, with errors naming file and key.
struct Meta<'a>(&'a Gguf);

impl Meta<'_> {
    fn err(&self, key: &str, what: impl Into<String>) -> GgufError {
        GgufError::Key {
            path: self.0.path().to_owned(),
            key: key.to_owned(),
            what: what.into(),
        }
    }

    fn string(&self, key: &str) -> Result<Option<&str>, GgufError> {
        self.0
            .meta(key)
            .map(|v| {
                v.to_string()
                    .map(String::as_str)
                    .map_err(|_| self.err(key, "not a string"))
            })
            .transpose()
    }

    fn bool(&self, key: &str) -> Result<Option<bool>, GgufError> {
        self.0
            .meta(key)
            .map(|v| v.to_bool().map_err(|_| self.err(key, "not a bool")))
            .transpose()
    }

    fn int(&self, key: &str) -> Result<Option<u64>, GgufError> {
        self.0
            .meta(key)
            .map(|v| {
                let n = match *v {
                    Value::U8(x) => Some(x.into()),
                    Value::U16(x) => Some(x.into()),
                    Value::U32(x) => Some(x.into()),
                    Value::U64(x) => Some(x),
                    Value::I8(x) => u64::try_from(x).ok(),
                    Value::I16(x) => u64::try_from(x).ok(),
                    Value::I32(x) => u64::try_from(x).ok(),
                    Value::I64(x) => u64::try_from(x).ok(),
                    _ => None,
                };
                n.ok_or_else(|| self.err(key, "not a non-negative integer"))
            })
            .transpose()
    }

    fn array(&self, key: &str) -> Result<Option<&[Value]>, GgufError> {
        self.0
            .meta(key)
            .map(|v| {
                v.to_vec()
                    .map(Vec::as_slice)
                    .map_err(|_| self.err(key, "not an array"))
            })
            .transpose()
    }

    fn strings(&self, key: &str) -> Result<Option<Vec<&str>>, GgufError> {
        let Some(values) = self.array(key)? else {
            return Ok(None);
        };
        values
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.to_string()
                    .map(String::as_str)
                    .map_err(|_| self.err(key, format!("entry {i} is not a string")))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    fn same_length(&self, key: &str, len: usize, tokens: usize) -> Result<(), GgufError> {
        if len == tokens {
            Ok(())
        } else {
            Err(self.err(key, format!("has {len} entries, {TOKENS} has {tokens}")))
        }
    }

    /// The token texts; an empty one gets llama.cpp's placeholder name, a
    /// repeated one is an error (llama.cpp aborts on it).
    fn tokens(&self) -> Result<Vec<String>, GgufError> {
        let texts = self
            .strings(TOKENS)?
            .ok_or_else(|| self.err(TOKENS, "missing: the file has no vocabulary"))?;
        if texts.is_empty() {
            return Err(self.err(TOKENS, "is empty"));
        }
        let mut seen: HashMap<&str, usize> = HashMap::with_capacity(texts.len());
        let mut tokens = Vec::with_capacity(texts.len());
        for (i, &text) in texts.iter().enumerate() {
            if let Some(first) = seen.insert(text, i) {
                return Err(self.err(TOKENS, format!("entries {first} and {i} are both {text:?}")));
            }
            tokens.push(if text.is_empty() {
                format!("[EMPTY_{i}]")
            } else {
                text.to_owned()
            });
        }
        Ok(tokens)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::gguf_file;

    /// A metadata-only GGUF holding `entries`, opened.
    fn gguf(entries: &[(&str, Value)]) -> (tempfile::TempDir, Gguf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("vocab.gguf");
        let mut f = std::fs::File::create(&path).expect("create");
        let meta: Vec<(&str, &Value)> = entries.iter().map(|(k, v)| (*k, v)).collect();
        gguf_file::write(&mut f, &meta, &[]).expect("write gguf");
        drop(f);
        let g = Gguf::open(vec![path]).expect("open");
        (dir, g)
    }

    fn strings(items: &[&str]) -> Value {
        Value::Array(
            items
                .iter()
                .map(|s| Value::String((*s).to_owned()))
                .collect(),
        )
    }

    fn ints(items: &[i32]) -> Value {
        Value::Array(items.iter().map(|&i| Value::I32(i)).collect())
    }

    fn floats(items: &[f32]) -> Value {
        Value::Array(items.iter().map(|&x| Value::F32(x)).collect())
    }

    /// A SentencePiece vocabulary where "▁ab" can be reached two ways and
    /// the scores decide: "ab" (-1) beats "▁a" (-2).
    fn spm(extra: &[(&str, Value)]) -> (tempfile::TempDir, Gguf) {
        let tokens = [
            "<unk>", "<s>", "</s>", "<0x21>", "▁", "a", "b", "ab", "▁a", "▁ab", "<|x|>",
        ];
        let mut entries = vec![
            ("tokenizer.ggml.model", Value::String("llama".into())),
            ("tokenizer.ggml.tokens", strings(&tokens)),
            (
                "tokenizer.ggml.scores",
                floats(&[0., 0., 0., 0., -5., -6., -7., -1., -2., -3., 0.]),
            ),
            (
                "tokenizer.ggml.token_type",
                ints(&[2, 3, 3, 6, 1, 1, 1, 1, 1, 1, 4]),
            ),
        ];
        entries.extend(extra.iter().cloned());
        gguf(&entries)
    }

    fn ids(t: &GgufTokenizer, text: &str, special: bool) -> Vec<u32> {
        t.tokenizer
            .encode(text, special)
            .expect("encode")
            .get_ids()
            .to_vec()
    }

    #[test]
    fn sentencepiece_merges_follow_the_merged_tokens_scores() {
        let (_d, g) = spm(&[]);
        let t = from_gguf(&g).expect("tokenizer");
        // "▁ab": "a"+"b" (score -1) merges before "▁"+"a" (-2), then "▁"+"ab".
        assert_eq!(ids(&t, "ab", false), [9]);
        // Every stretch between special tokens gets its "▁", as in llama.cpp.
        assert_eq!(ids(&t, "ab<|x|>ab", false), [9, 10, 9]);
        // "!" has no token: its byte.
        assert_eq!(ids(&t, "a!", false), [8, 3]);
        // BOS by default (llama.cpp's default for SentencePiece, id 1).
        assert_eq!(ids(&t, "a", true), [1, 8]);
        assert_eq!((t.bos, t.eos, t.add_bos), (Some(1), Some(2), true));
        let text = t.tokenizer.decode(&[9, 8], false).expect("decode");
        assert_eq!(text, "ab a");
    }

    #[test]
    fn add_space_prefix_false_leaves_the_text_as_is() {
        let (_d, g) = spm(&[
            ("tokenizer.ggml.add_space_prefix", Value::Bool(false)),
            ("tokenizer.ggml.add_bos_token", Value::Bool(false)),
        ]);
        let t = from_gguf(&g).expect("tokenizer");
        assert_eq!(ids(&t, "ab a", true), [7, 8]);
        assert_eq!(t.tokenizer.decode(&[7, 8], false).expect("decode"), "ab a");
    }

    fn gpt2(pre: &str, extra: &[(&str, Value)]) -> Result<GgufTokenizer, GgufError> {
        let mut entries = vec![
            ("tokenizer.ggml.model", Value::String("gpt2".into())),
            ("tokenizer.ggml.pre", Value::String(pre.into())),
            (
                "tokenizer.ggml.tokens",
                strings(&["<|end|>", "1", "2", "12", "Ġ", "a", "Ġa"]),
            ),
            ("tokenizer.ggml.token_type", ints(&[3, 1, 1, 1, 1, 1, 1])),
            ("tokenizer.ggml.merges", strings(&["1 2", "Ġ a"])),
            ("tokenizer.ggml.eos_token_id", Value::U32(0)),
        ];
        entries.extend(extra.iter().cloned());
        let (_d, g) = gguf(&entries);
        from_gguf(&g)
    }

    #[test]
    fn the_pre_tokenizer_name_picks_the_split_regexes() {
        // GPT-2 keeps digit runs together, Qwen2 splits single digits.
        let t = gpt2("gpt-2", &[]).expect("gpt-2");
        assert_eq!(ids(&t, "12 a<|end|>", true), [3, 6, 0]);
        assert_eq!((t.bos, t.eos, t.add_bos), (None, Some(0), false));
        assert_eq!(t.tokenizer.decode(&[3, 6], false).expect("decode"), "12 a");
        let t = gpt2("qwen2", &[]).expect("qwen2");
        assert_eq!(ids(&t, "12 a", true), [1, 2, 6]);
        // llama-bpe adds BOS unless the file says otherwise.
        let err = gpt2("llama-bpe", &[]).expect_err("BOS wanted, none given");
        assert!(
            err.to_string().contains("tokenizer.ggml.bos_token_id"),
            "{err}"
        );
        let t = gpt2(
            "llama-bpe",
            &[("tokenizer.ggml.bos_token_id", Value::U32(0))],
        )
        .expect("llama-bpe");
        assert_eq!(ids(&t, "a", true), [0, 5]);
    }

    #[test]
    fn unsupported_or_inconsistent_metadata_names_the_key() {
        let check = |result: Result<GgufTokenizer, GgufError>, needles: &[&str]| {
            let err = result.expect_err("refused").to_string();
            assert!(err.contains("vocab.gguf"), "{err}");
            for needle in needles {
                assert!(err.contains(needle), "{needle:?} in {err}");
            }
        };
        check(
            gpt2("deepseek-llm", &[]),
            &["tokenizer.ggml.pre", "deepseek-llm"],
        );
        check(
            gpt2("gpt-2", &[("tokenizer.ggml.merges", strings(&["1 x"]))]),
            &["tokenizer.ggml.merges", "\"x\""],
        );
        check(
            gpt2("gpt-2", &[("tokenizer.ggml.merges", strings(&["2 1"]))]),
            &["tokenizer.ggml.merges", "\"21\""],
        );
        check(
            gpt2("gpt-2", &[("tokenizer.ggml.token_type", ints(&[1, 1]))]),
            &["tokenizer.ggml.token_type", "2 entries"],
        );
        check(
            gpt2("gpt-2", &[("tokenizer.ggml.eos_token_id", Value::U32(99))]),
            &["tokenizer.ggml.eos_token_id", "99"],
        );
        check(
            gpt2(
                "gpt-2",
                &[("tokenizer.ggml.model", Value::String("bert".into()))],
            ),
            &["tokenizer.ggml.model", "bert"],
        );
        check(
            gpt2("gpt-2", &[("tokenizer.ggml.tokens", strings(&["a", "a"]))]),
            &["tokenizer.ggml.tokens", "entries 0 and 1"],
        );
        let (_d, g) = gguf(&[("tokenizer.ggml.model", Value::String("llama".into()))]);
        check(from_gguf(&g), &["tokenizer.ggml.tokens", "missing"]);
        let (_d, g) = spm(&[("tokenizer.ggml.scores", floats(&[0.0]))]);
        check(from_gguf(&g), &["tokenizer.ggml.scores", "1 entries"]);
    }
}
