//! Structured outputs: a request's output constrained to a JSON schema, a
//! regex, one of a few strings, or a Lark grammar, with
//! [llguidance](https://github.com/guidance-ai/llguidance) (the grammar
//! engine behind vLLM's, SGLang's and llama.cpp's structured outputs).
//!
//! The flow: the API layer turns `response_format` / vLLM's `guided_*`
//! fields into a [`ConstraintSpec`] and compiles it once per request with
//! [`GrammarCompiler::compile`] (its error is the client's 400). The engine
//! loop then masks each step's logits of that sequence with
//! [`Constraint::mask_logits`] before sampling, and feeds the sampled token
//! back with [`Constraint::accept`].
//!
//! Why the token trie is built here: llguidance matches bytes, so it needs
//! the bytes every token id stands for. Its companion crate for Hugging Face
//! tokenizers (`toktrie_hf_tokenizers`) pins an older `tokenizers`, so this
//! module reads them off our own [`Tokenizer`] instead, the way that crate
//! does: GPT-2 byte-level pieces (`Ġ` is a space) through the inverted
//! byte table, SentencePiece pieces with `▁` as a space and `<0x0A>` as the
//! byte, special added tokens behind llguidance's special-token marker (so
//! no text ever matches them; a Lark grammar can still name them).

use std::{collections::HashMap, fmt, sync::Arc};

use llguidance::{
    Matcher, ParserFactory,
    api::{StopReason, TopLevelGrammar},
    regex_to_lark,
    toktrie::{SimpleVob, TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv},
};
use serde_json::{Value, json};
use tokenizers::{NormalizerWrapper, PreTokenizerWrapper, normalizers, pre_tokenizers};

use crate::engine::Tokenizer;

/// What a request constrains its output to.
#[derive(Debug, Clone, PartialEq)]
pub enum ConstraintSpec {
    /// OpenAI's `response_format: {"type": "json_object"}`: any JSON object.
    JsonObject,
    /// OpenAI's `response_format: {"type": "json_schema"}`, vLLM's
    /// `guided_json`: a value valid against this schema.
    JsonSchema(Value),
    /// vLLM's `guided_regex`: text the whole regex matches.
    Regex(String),
    /// vLLM's `guided_choice`: exactly one of these strings.
    Choice(Vec<String>),
    /// vLLM's `guided_grammar`, in llguidance's Lark dialect.
    Lark(String),
}

/// Built once per engine from the tokenizer (the token trie and the
/// lexer slices cost a vocabulary walk, far too much per request); cheap to
/// clone and share across threads.
#[derive(Clone)]
pub struct GrammarCompiler {
    shared: Arc<Shared>,
}

struct Shared {
    factory: ParserFactory,
    /// Ids any grammar may allow: the tokenizer's own ids below the logits
    /// width, plus the EOS ids. Padding rows of the logits (a model's
    /// vocabulary is often rounded up past the tokenizer's) are never in it,
    /// even where a Lark grammar names a token by number.
    valid: SimpleVob,
    /// The logits width.
    vocab_size: usize,
    eos_ids: Vec<u32>,
}

impl fmt::Debug for GrammarCompiler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrammarCompiler")
            .field("vocab_size", &self.shared.vocab_size)
            .field("eos_ids", &self.shared.eos_ids)
            .finish_non_exhaustive()
    }
}

impl GrammarCompiler {
    /// `vocab_size` is the model's logits width, which can exceed the
    /// tokenizer's vocabulary (padding rows must always be masked out). The
    /// ids that end generation are the tokenizer's `eos_ids`: a finished
    /// grammar allows exactly those.
    pub fn new(tokenizer: &Tokenizer, vocab_size: usize) -> Result<Self, String> {
        let eos_ids = tokenizer.eos_ids().to_vec();
        let Some(&first_eos) = eos_ids.first() else {
            return Err(
                "structured output needs an end-of-sequence token, and this \
                        tokenizer has none (no eos_token_id in generation_config.json or \
                        config.json, no eos_token in tokenizer_config.json)"
                    .to_owned(),
            );
        };
        let mut words = vocab_bytes(tokenizer.hf())?;
        let tokenizer_vocab = words.len();
        let trie_vocab = tokenizer_vocab.max(vocab_size);
        // Placeholder special tokens for the padding rows, as
        // toktrie_hf_tokenizers pads: no text can produce them.
        for id in tokenizer_vocab..trie_vocab {
            let mut name = vec![TokTrie::SPECIAL_TOKEN_MARKER];
            name.extend_from_slice(format!("<[{id}]>").as_bytes());
            words.push(name);
        }
        if let Some(&bad) = eos_ids.iter().find(|&&id| id as usize >= trie_vocab) {
            return Err(format!(
                "end-of-sequence id {bad} is outside the vocabulary (size {trie_vocab})"
            ));
        }
        let mut info = TokRxInfo::new(trie_vocab as u32, first_eos);
        info.tok_bos = tokenizer.bos_id();
        let trie = TokTrie::from(&info, &words).with_eos_tokens(&eos_ids);

        let mut valid = trie.alloc_token_set();
        let own = tokenizer_vocab.min(vocab_size);
        if own > 0 {
            valid.allow_range(0..=(own as u32 - 1));
        }
        for &id in &eos_ids {
            if (id as usize) < vocab_size {
                valid.allow_token(id);
            }
        }

        let env: TokEnv = Arc::new(ByteTokenizerEnv {
            trie,
            hf: tokenizer_for_spans(tokenizer.hf())?,
        });
        let mut factory = ParserFactory::new_simple(&env)
            .map_err(|e| format!("cannot set up the grammar engine: {e}"))?;
        // Warnings go to the API error or nowhere, never to stderr.
        factory.quiet();
        Ok(Self {
            shared: Arc::new(Shared {
                factory,
                valid,
                vocab_size,
                eos_ids,
            }),
        })
    }

    /// The logits width every [`Constraint::mask_logits`] expects.
    pub fn vocab_size(&self) -> usize {
        self.shared.vocab_size
    }

    /// Compiles a spec. Err(message) is shown to the API client in a 400,
    /// so it names the problem (the unsupported JSON-schema keyword, the
    /// regex error). CPU work (milliseconds, more for large schemas): call
    /// it off the async runtime.
    pub fn compile(&self, spec: &ConstraintSpec) -> Result<Constraint, String> {
        let (what, grammar) = match spec {
            ConstraintSpec::JsonObject => ("JSON object", json_grammar(json!({"type": "object"}))?),
            ConstraintSpec::JsonSchema(schema) => ("JSON schema", json_grammar(schema.clone())?),
            ConstraintSpec::Regex(rx) => ("regex", regex_grammar(rx)),
            ConstraintSpec::Choice(choices) => {
                ("choice", TopLevelGrammar::from_lark(choice_lark(choices)?))
            }
            ConstraintSpec::Lark(lark) => ("grammar", TopLevelGrammar::from_lark(lark.clone())),
        };
        let parser = self
            .shared
            .factory
            .create_parser(grammar)
            .map_err(|e| format!("invalid {what}: {e}"))?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(format!("invalid {what}: {e}"));
        }
        Ok(Constraint {
            matcher,
            shared: Arc::clone(&self.shared),
            mask: SimpleVob::new(),
        })
    }
}

/// Per-sequence matcher state. Send: it moves to the engine thread.
pub struct Constraint {
    matcher: Matcher,
    shared: Arc<Shared>,
    /// The last mask, kept so that [`Constraint::compute_mask`] can lend it.
    mask: SimpleVob,
}

impl fmt::Debug for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Constraint")
            .field("stop_reason", &self.matcher.stop_reason())
            .finish_non_exhaustive()
    }
}

impl Constraint {
    /// The allowed ids at this point as a bitset: bit `i % 32` of word
    /// `i / 32` is set when id `i` is allowed, for at least
    /// [`GrammarCompiler::vocab_size`] bits (batched or on-device masking
    /// wants the bits, not a masked row). Same rules as
    /// [`Constraint::mask_logits`].
    pub fn compute_mask(&mut self) -> Result<&[u32], String> {
        let mut mask = self
            .matcher
            .compute_mask_or_eos()
            .map_err(|e| format!("grammar error: {e}"))?;
        mask.and(&self.shared.valid);
        if mask.is_zero() {
            return Err("the grammar allows no token of this model here".to_owned());
        }
        self.mask = mask;
        Ok(self.mask.as_slice())
    }

    /// Sets logits of every token the grammar forbids at this point to
    /// -inf (including ids >= tokenizer vocab). When the grammar is
    /// complete, only EOS ids stay allowed (so the sequence ends with
    /// finish_reason stop).
    pub fn mask_logits(&mut self, logits: &mut [f32]) -> Result<(), String> {
        let width = self.shared.vocab_size;
        if logits.len() != width {
            return Err(format!(
                "logits row has {} entries, the grammar was built for {width}",
                logits.len()
            ));
        }
        let words = self.compute_mask()?;
        // Word at a time: most words of a mask are all-forbidden or
        // all-allowed, and a vocabulary is 150k wide.
        for (chunk, &word) in logits.chunks_mut(32).zip(words) {
            match word {
                u32::MAX => {}
                0 => chunk.fill(f32::NEG_INFINITY),
                _ => {
                    for (bit, logit) in chunk.iter_mut().enumerate() {
                        if word & (1 << bit) == 0 {
                            *logit = f32::NEG_INFINITY;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Advances the matcher by the sampled token (an EOS id when accepted
    /// ends it). A token the grammar forbids is an error, and the
    /// constraint is unusable after it.
    pub fn accept(&mut self, token: u32) -> Result<(), String> {
        if self.matcher.is_stopped() {
            return if self.is_finished() && self.shared.eos_ids.contains(&token) {
                Ok(())
            } else if self.is_finished() {
                Err(format!(
                    "token {token} after the grammar finished; only end-of-sequence may follow"
                ))
            } else {
                Err(format!(
                    "grammar stopped ({}): {}",
                    self.matcher.stop_reason(),
                    self.matcher.get_error().unwrap_or_default()
                ))
            };
        }
        self.matcher
            .consume_token(token)
            .map_err(|e| format!("token {token} rejected by the grammar: {e}"))
    }

    /// Undoes the last `tokens` accepted tokens (speculative decoding's
    /// rejected drafts).
    pub fn rollback(&mut self, tokens: usize) -> Result<(), String> {
        self.matcher
            .rollback(tokens)
            .map_err(|e| format!("grammar rollback failed: {e}"))
    }

    /// The grammar has produced a complete match and only EOS may follow.
    pub fn is_finished(&self) -> bool {
        matches!(
            self.matcher.stop_reason(),
            StopReason::NoExtension | StopReason::EndOfSentence
        )
    }
}

/// llguidance's JSON-schema grammar for `schema`, with free whitespace
/// off unless the schema's own `x-guidance` says otherwise: with it on, a
/// weak or random-weight model can emit spaces and newlines until
/// `max_tokens` runs out. Items and keys are separated by a bare `,`/`:`.
fn json_grammar(mut schema: Value) -> Result<TopLevelGrammar, String> {
    match &schema {
        Value::Bool(true) => schema = json!({}),
        Value::Bool(false) => {
            return Err("invalid JSON schema: `false` allows no value".to_owned());
        }
        Value::Object(_) => {}
        other => {
            return Err(format!(
                "invalid JSON schema: a schema is an object or a boolean, not {}",
                json_kind(other)
            ));
        }
    }
    if let Value::Object(map) = &mut schema
        && !map.contains_key("x-guidance")
    {
        map.insert(
            "x-guidance".to_owned(),
            json!({"whitespace_flexible": false}),
        );
    }
    Ok(TopLevelGrammar::from_json_schema(schema))
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The whole output matches `rx` (Rust `regex` syntax; `^`/`$` are
/// allowed and redundant). `\d` and `\w` are ASCII, as in JSON-schema
/// `pattern`s and the other engines' guided regexes: with Unicode classes a
/// model may answer `[0-9]`-style questions in Devanagari digits.
fn regex_grammar(rx: &str) -> TopLevelGrammar {
    TopLevelGrammar::from_lark(format!("start: /{}/", regex_to_lark(rx, "dw")))
}

/// A Lark grammar matching exactly one of `choices`. Lark string literals
/// are JSON strings to llguidance, so serde_json does the escaping.
fn choice_lark(choices: &[String]) -> Result<String, String> {
    if choices.is_empty() {
        return Err("invalid choice: the list of choices is empty".to_owned());
    }
    let mut alternatives = Vec::with_capacity(choices.len());
    for choice in choices {
        if choice.is_empty() {
            return Err("invalid choice: a choice is the empty string".to_owned());
        }
        alternatives.push(serde_json::to_string(choice).expect("a string serializes"));
    }
    Ok(format!("start: {}\n", alternatives.join(" | ")))
}

/// How a tokenizer spells bytes in its vocabulary, read off its decoder.
#[derive(Debug, Default)]
struct Spelling {
    /// GPT-2 byte-level BPE: every piece is bytes through a printable table.
    byte_level: bool,
    /// SentencePiece byte fallback: `<0x0A>` pieces are single bytes.
    byte_fallback: bool,
    /// The character that stands for a space (`▁`), if any.
    space: Option<char>,
}

impl Spelling {
    /// Walks the decoder's JSON (the one stable view into a `Sequence`).
    fn read(decoder: &Value, into: &mut Self) {
        match decoder["type"].as_str() {
            Some("ByteLevel") => into.byte_level = true,
            Some("ByteFallback") => into.byte_fallback = true,
            Some("Metaspace") => {
                into.space = decoder["replacement"]
                    .as_str()
                    .and_then(single_char)
                    .or(into.space);
            }
            Some("Replace") if decoder["content"] == " " => {
                into.space = decoder["pattern"]["String"]
                    .as_str()
                    .and_then(single_char)
                    .or(into.space);
            }
            Some("Sequence") => {
                for d in decoder["decoders"].as_array().into_iter().flatten() {
                    Self::read(d, into);
                }
            }
            _ => {}
        }
    }
}

fn single_char(s: &str) -> Option<char> {
    let mut chars = s.chars();
    chars.next().filter(|_| chars.next().is_none())
}

/// GPT-2's `bytes_to_unicode`, inverted: printable bytes stand for
/// themselves, the other 68 are U+0100 and up, in byte order.
fn byte_level_table() -> HashMap<char, u8> {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut next = 0x100u32;
    (0..=255u8)
        .map(|b| {
            if printable(b) {
                (char::from(b), b)
            } else {
                let c = char::from_u32(next).expect("U+0100..U+0143 are chars");
                next += 1;
                (c, b)
            }
        })
        .collect()
}

/// The bytes of every id of `hf`, indexed by id. Special added tokens (and
/// added tokens spelled `<...>`, as toktrie_hf_tokenizers treats them) get
/// llguidance's special-token marker in front; ids without a piece, or
/// whose piece cannot be spelled as bytes, get no bytes and so are never
/// allowed by text.
fn vocab_bytes(hf: &tokenizers::Tokenizer) -> Result<Vec<Vec<u8>>, String> {
    let mut spelling = Spelling::default();
    let decoder = match hf.get_decoder() {
        Some(d) => serde_json::to_value(d).map_err(|e| format!("cannot read the decoder: {e}"))?,
        None => Value::Null,
    };
    Spelling::read(&decoder, &mut spelling);
    if !spelling.byte_level && !spelling.byte_fallback && spelling.space.is_none() {
        return Err(format!(
            "structured output needs a byte-level BPE or SentencePiece tokenizer; this \
             tokenizer's decoder is {}",
            decoder["type"].as_str().unwrap_or("missing")
        ));
    }
    let space = spelling.space.unwrap_or(' ');
    let table = byte_level_table();
    let added = hf.get_added_tokens_decoder();
    let size = hf
        .get_vocab(true)
        .values()
        .map(|&id| id as usize + 1)
        .max()
        .unwrap_or(0)
        .max(hf.get_vocab_size(true));
    let mut words = Vec::with_capacity(size);
    let mut unspellable = 0usize;
    for id in 0..size as u32 {
        if let Some(token) = added.get(&id) {
            let content = &token.content;
            let special = token.special || (content.starts_with('<') && content.ends_with('>'));
            let mut bytes = Vec::with_capacity(content.len() + 1);
            if special {
                bytes.push(TokTrie::SPECIAL_TOKEN_MARKER);
            }
            bytes.extend_from_slice(content.as_bytes());
            words.push(bytes);
            continue;
        }
        let Some(piece) = hf.id_to_token(id) else {
            words.push(Vec::new());
            continue;
        };
        let bytes = if spelling.byte_level {
            let bytes = piece
                .chars()
                .map(|c| table.get(&c).copied())
                .collect::<Option<Vec<u8>>>();
            unspellable += usize::from(bytes.is_none());
            bytes.unwrap_or_default()
        } else if let Some(byte) = spelling
            .byte_fallback
            .then(|| byte_fallback_piece(&piece))
            .flatten()
        {
            vec![byte]
        } else {
            piece.replace(space, " ").into_bytes()
        };
        words.push(bytes);
    }
    if unspellable > 0 {
        tracing::warn!(
            "structured output: {unspellable} byte-level tokens have characters outside \
             GPT-2's byte table; grammars never allow them"
        );
    }
    Ok(words)
}

/// `<0x0A>` → 0x0A.
fn byte_fallback_piece(piece: &str) -> Option<u8> {
    let hex = piece.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// A copy of `hf` that tokenizes a span of text as itself, for the tokens
/// llguidance forces (a JSON key the schema fixes): SentencePiece
/// tokenizers otherwise prepend `▁` to every text they see (a `Prepend`
/// normalizer, or `Metaspace` with a prepend scheme), as
/// toktrie_hf_tokenizers also undoes.
fn tokenizer_for_spans(hf: &tokenizers::Tokenizer) -> Result<tokenizers::Tokenizer, String> {
    fn drop_prepend(n: NormalizerWrapper) -> Option<NormalizerWrapper> {
        match n {
            NormalizerWrapper::Prepend(_) => None,
            NormalizerWrapper::Sequence(seq) => {
                let kept: Vec<_> = seq
                    .as_ref()
                    .iter()
                    .filter_map(|n| drop_prepend(n.clone()))
                    .collect();
                (!kept.is_empty())
                    .then(|| NormalizerWrapper::Sequence(normalizers::Sequence::new(kept)))
            }
            other => Some(other),
        }
    }
    fn never_prepend(p: PreTokenizerWrapper) -> PreTokenizerWrapper {
        match p {
            PreTokenizerWrapper::Metaspace(mut m) => {
                m.prepend_scheme = pre_tokenizers::metaspace::PrependScheme::Never;
                PreTokenizerWrapper::Metaspace(m)
            }
            PreTokenizerWrapper::Sequence(seq) => {
                PreTokenizerWrapper::Sequence(pre_tokenizers::sequence::Sequence::new(
                    seq.as_ref().iter().cloned().map(never_prepend).collect(),
                ))
            }
            other => other,
        }
    }
    let mut hf = hf.clone();
    if let Some(n) = hf.get_normalizer().cloned() {
        hf.with_normalizer(drop_prepend(n))
            .map_err(|e| format!("cannot adjust the tokenizer's normalizer: {e}"))?;
    }
    if let Some(p) = hf.get_pre_tokenizer().cloned() {
        hf.with_pre_tokenizer(Some(never_prepend(p)));
    }
    Ok(hf)
}

/// llguidance's view of our tokenizer: the trie for masks, the Hugging
/// Face tokenizer for the canonical tokens of forced text.
struct ByteTokenizerEnv {
    trie: TokTrie,
    hf: tokenizers::Tokenizer,
}

impl TokenizerEnv for ByteTokenizerEnv {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    /// The tokenizer's own tokens for `s` when they spell exactly `s`, else
    /// the trie's greedy tokens: a forced token must never add or drop a
    /// byte (a prefix space, a special token parsed out of the text).
    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        let tokens = self.trie.tokenize_with_greedy_fallback(s, |text| {
            self.hf
                .encode(text, false)
                .map(|e| e.get_ids().to_vec())
                .unwrap_or_default()
        });
        if self.trie.decode_raw(&tokens) == s {
            tokens
        } else {
            self.trie.greedy_tokenize(s)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const _: () = {
        const fn send_sync<T: Send + Sync>() {}
        const fn send<T: Send>() {}
        send_sync::<GrammarCompiler>();
        send::<Constraint>();
    };

    #[test]
    fn byte_level_table_is_gpt2s() {
        let table = byte_level_table();
        assert_eq!(table.len(), 256);
        assert_eq!(table[&'Ġ'], b' ');
        assert_eq!(table[&'Ċ'], b'\n');
        assert_eq!(table[&'a'], b'a');
        assert_eq!(table[&'\u{0100}'], 0);
    }

    #[test]
    fn byte_fallback_pieces_parse() {
        assert_eq!(byte_fallback_piece("<0x0A>"), Some(b'\n'));
        assert_eq!(byte_fallback_piece("<0xff>"), Some(0xFF));
        assert_eq!(byte_fallback_piece("<0x0>"), None);
        assert_eq!(byte_fallback_piece("<unk>"), None);
    }

    #[test]
    fn choices_are_escaped_lark_literals() {
        assert_eq!(
            choice_lark(&["a\"b".into(), "c\\d\n".into()]).unwrap(),
            "start: \"a\\\"b\" | \"c\\\\d\\n\"\n"
        );
        assert!(choice_lark(&[]).unwrap_err().contains("empty"));
    }

    #[test]
    fn json_grammar_turns_free_whitespace_off() {
        let g = json_grammar(json!({"type": "object"})).unwrap();
        let schema = g.grammars[0].json_schema.as_ref().unwrap();
        assert_eq!(schema["x-guidance"]["whitespace_flexible"], false);
        let own = json!({"x-guidance": {"whitespace_flexible": true}});
        let g = json_grammar(own.clone()).unwrap();
        assert_eq!(g.grammars[0].json_schema.as_ref().unwrap(), &own);
        assert!(json_grammar(json!(3)).unwrap_err().contains("not a number"));
        assert!(
            json_grammar(json!(false))
                .unwrap_err()
                .contains("allows no value")
        );
    }
}
