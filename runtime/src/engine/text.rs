//! Generated ids → text, one token at a time: incremental detokenization
//! that never releases half a UTF-8 character, and `stop` strings that are
//! never released either (text that could still become one is held back).
//!
//! Why incremental: decoding a token alone loses context (SentencePiece
//! drops the leading space of the first piece; byte-level BPE splits a
//! character over several ids), and re-decoding everything per token is
//! quadratic. As TGI and vLLM do, each step decodes a short window twice —
//! the already-released ids (`prefix_offset..read_offset`) and the same
//! plus the new ones — and releases the difference once it does not end in
//! U+FFFD, the replacement character of an incomplete sequence.
//!
//! Both the streaming and the non-streaming responses are built from these
//! deltas, so the two always agree on the text.

use super::{Tokenizer, TokenizerError};

/// Text released by one step.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delta {
    pub text: String,
    /// A stop string matched: generation must end; `text` is everything
    /// before the match.
    pub stopped: bool,
}

#[derive(Debug)]
pub struct TextStream {
    ids: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
    /// Decoded text so far; `text[..released]` has been handed out.
    text: String,
    released: usize,
    stop: Vec<String>,
    stopped: bool,
    skip_special_tokens: bool,
}

impl TextStream {
    pub fn new(stop: Vec<String>) -> Self {
        Self {
            ids: Vec::new(),
            prefix_offset: 0,
            read_offset: 0,
            text: String::new(),
            released: 0,
            stop: stop.into_iter().filter(|s| !s.is_empty()).collect(),
            stopped: false,
            skip_special_tokens: true,
        }
    }

    /// Special tokens are left out of the text unless `keep` (vLLM's
    /// `skip_special_tokens: false`).
    pub fn keep_special_tokens(mut self, keep: bool) -> Self {
        self.skip_special_tokens = !keep;
        self
    }

    /// Whether a stop string matched (everything after it is withheld).
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// Adds one generated id and returns the text it releases (possibly
    /// none).
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> Result<Delta, TokenizerError> {
        if self.stopped {
            return Ok(Delta {
                text: String::new(),
                stopped: true,
            });
        }
        self.ids.push(id);
        self.decode_window(tokenizer, false)?;
        Ok(self.release(false))
    }

    /// Generation ended: releases what was held back (an incomplete
    /// character at the very end is released as U+FFFD, as a full decode
    /// would show it; a partial stop string is plain text after all).
    pub fn finish(&mut self, tokenizer: &Tokenizer) -> Result<Delta, TokenizerError> {
        if self.stopped {
            return Ok(Delta {
                text: String::new(),
                stopped: true,
            });
        }
        self.decode_window(tokenizer, true)?;
        Ok(self.release(true))
    }

    fn decode_window(&mut self, tokenizer: &Tokenizer, flush: bool) -> Result<(), TokenizerError> {
        let window = &self.ids[self.prefix_offset..];
        let skip = self.skip_special_tokens;
        let prefix = tokenizer.decode(&window[..self.read_offset - self.prefix_offset], skip)?;
        let full = tokenizer.decode(window, skip)?;
        if full.len() <= prefix.len() || (!flush && full.ends_with('\u{fffd}')) {
            return Ok(());
        }
        // The prefix's bytes normally start `full`; if a tokenizer rewrote
        // them, release from the next character boundary rather than panic.
        let mut at = prefix.len();
        while !full.is_char_boundary(at) {
            at += 1;
        }
        self.text.push_str(&full[at..]);
        self.prefix_offset = self.read_offset;
        self.read_offset = self.ids.len();
        Ok(())
    }

    fn release(&mut self, all: bool) -> Delta {
        let pending = &self.text[self.released..];
        // A stop can only start in unreleased text: released text never
        // ends with a stop's prefix.
        let matched = self
            .stop
            .iter()
            .filter_map(|s| pending.find(s.as_str()))
            .min();
        if let Some(at) = matched {
            let text = pending[..at].to_owned();
            self.released = self.text.len();
            self.stopped = true;
            return Delta {
                text,
                stopped: true,
            };
        }
        let hold = if all {
            0
        } else {
            self.stop
                .iter()
                .map(|s| stop_prefix_overlap(pending, s))
                .max()
                .unwrap_or(0)
        };
        let end = pending.len() - hold;
        let text = pending[..end].to_owned();
        self.released += end;
        Delta {
            text,
            stopped: false,
        }
    }
}

/// Length of the longest suffix of `text` that is a proper prefix of
/// `stop`.
fn stop_prefix_overlap(text: &str, stop: &str) -> usize {
    (1..stop.len().min(text.len() + 1))
        .rev()
        .find(|&k| stop.is_char_boundary(k) && text.ends_with(&stop[..k]))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::TokenizerConfig;

    /// A byte-level tokenizer: ids 0-255 are the bytes themselves, so a
    /// multi-byte character takes several ids.
    fn byte_tokenizer() -> (tempfile::TempDir, Tokenizer) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut vocab = serde_json::Map::new();
        for b in 0..=255u8 {
            vocab.insert(format!("<0x{b:02X}>"), u32::from(b).into());
        }
        vocab.insert("<unk>".into(), 256.into());
        let json = serde_json::json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
            "normalizer": null, "pre_tokenizer": null, "post_processor": null,
            "decoder": {"type": "ByteFallback"},
            "model": {"type": "BPE", "vocab": vocab, "merges": [], "unk_token": "<unk>",
                "byte_fallback": true, "dropout": null, "continuing_subword_prefix": null,
                "end_of_word_suffix": null, "fuse_unk": false},
        });
        std::fs::write(dir.path().join("tokenizer.json"), json.to_string()).expect("write");
        let tok = Tokenizer::load(dir.path(), &TokenizerConfig::default(), &[]).expect("load");
        (dir, tok)
    }

    fn run(stop: &[&str], text: &str) -> (Vec<String>, bool) {
        let (_dir, tok) = byte_tokenizer();
        let mut stream = TextStream::new(stop.iter().map(|s| (*s).to_owned()).collect());
        let mut out = Vec::new();
        for b in text.bytes() {
            let d = stream.push(&tok, u32::from(b)).expect("push");
            out.push(d.text);
            if d.stopped {
                return (out, true);
            }
        }
        let d = stream.finish(&tok).expect("finish");
        out.push(d.text);
        (out, d.stopped)
    }

    #[test]
    fn never_releases_half_a_character() {
        let (deltas, stopped) = run(&[], "aé€!");
        assert!(!stopped);
        // 'é' is 2 bytes, '€' 3: nothing is released mid-character.
        assert_eq!(deltas, ["a", "", "é", "", "", "€", "!", ""]);
        assert!(deltas.iter().all(|d| !d.contains('\u{fffd}')));
    }

    #[test]
    fn stop_strings_are_held_back_and_never_released() {
        let (deltas, stopped) = run(&["END"], "abENxEND tail");
        assert!(stopped);
        assert_eq!(deltas.concat(), "abENx");
        // "E" and "EN" were held until "x" showed they were no stop.
        assert_eq!(deltas, ["a", "b", "", "", "ENx", "", "", ""]);
    }

    #[test]
    fn earliest_of_several_stops_wins_and_partial_stop_is_released_at_the_end() {
        let (deltas, stopped) = run(&["cd", "bcz"], "abcd");
        assert!(stopped);
        assert_eq!(deltas.concat(), "ab");
        let (deltas, stopped) = run(&["xyz"], "abxy");
        assert!(!stopped);
        assert_eq!(deltas.concat(), "abxy");
        assert_eq!(deltas.last().map(String::as_str), Some("xy"));
    }

    #[test]
    fn multibyte_stop_strings() {
        let (deltas, stopped) = run(&["€!"], "a€b€!c");
        assert!(stopped);
        assert_eq!(deltas.concat(), "a€b");
    }

    #[test]
    fn overlap_is_the_longest_proper_prefix() {
        assert_eq!(stop_prefix_overlap("xxab", "abc"), 2);
        assert_eq!(stop_prefix_overlap("xxa", "abc"), 1);
        assert_eq!(
            stop_prefix_overlap("abc", "abc"),
            0,
            "a full match is not held"
        );
        assert_eq!(stop_prefix_overlap("", "abc"), 0);
        assert_eq!(stop_prefix_overlap("x\u{20ac}", "\u{20ac}!"), 3);
    }
}
