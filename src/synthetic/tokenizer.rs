//! `tokenizer.json` (byte-level BPE over a fixed merge table) and
//! `tokenizer_config.json` (special tokens and the ChatML chat template), so
//! the server can tokenize and chat without a corpus or a download.

use serde_json::{Value, json};

use super::{BYTE_TOKENS, SPECIAL_TOKENS, SyntheticSpec};

/// ChatML, because both the special tokens and the server's chat endpoint
/// speak it; minijinja and Python's jinja2 both accept it.
pub const CHAT_TEMPLATE: &str = "{% for message in messages %}\
{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}\
{% endfor %}\
{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// Byte-level BPE merges, in rank order, taken from the head of GPT-2's merge
/// list plus a few that make "Hello world" exercise multi-level merges. A
/// fixed table (rather than training) keeps the tokenizer independent of any
/// corpus; every merge only uses bytes or earlier merge results.
pub(super) const MERGE_TABLE: [(&str, &str); 64] = [
    ("Ġ", "t"),
    ("Ġ", "a"),
    ("h", "e"),
    ("i", "n"),
    ("r", "e"),
    ("o", "n"),
    ("Ġt", "he"),
    ("e", "r"),
    ("Ġ", "s"),
    ("a", "t"),
    ("Ġ", "w"),
    ("Ġ", "o"),
    ("e", "n"),
    ("Ġ", "c"),
    ("i", "t"),
    ("i", "s"),
    ("a", "n"),
    ("o", "r"),
    ("e", "s"),
    ("Ġ", "b"),
    ("e", "d"),
    ("Ġ", "f"),
    ("in", "g"),
    ("Ġ", "p"),
    ("o", "u"),
    ("Ġa", "n"),
    ("a", "l"),
    ("a", "r"),
    ("Ġt", "o"),
    ("Ġ", "m"),
    ("Ġo", "f"),
    ("Ġ", "in"),
    ("Ġ", "d"),
    ("Ġ", "h"),
    ("Ġan", "d"),
    ("i", "c"),
    ("a", "s"),
    ("l", "e"),
    ("Ġt", "h"),
    ("i", "on"),
    ("o", "m"),
    ("l", "l"),
    ("en", "t"),
    ("Ġ", "n"),
    ("Ġ", "l"),
    ("s", "t"),
    ("Ġ", "re"),
    ("v", "e"),
    ("Ġ", "e"),
    ("r", "o"),
    ("l", "y"),
    ("Ġb", "e"),
    ("Ġ", "g"),
    ("Ġ", "T"),
    ("c", "t"),
    ("Ġ", "S"),
    ("i", "d"),
    ("o", "t"),
    ("Ġ", "I"),
    ("u", "t"),
    ("l", "d"),
    ("Ġw", "or"),
    ("Ġwor", "ld"),
    ("H", "e"),
];

/// GPT-2's byte-to-unicode table: printable Latin-1 bytes map to themselves,
/// the rest to U+0100 onwards, so every byte is a visible, non-space char.
pub(super) fn byte_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut shifted = 0u32;
    for (byte, slot) in (0u8..=255).zip(table.iter_mut()) {
        *slot = match byte {
            b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF => char::from(byte),
            _ => {
                let c = char::from_u32(256 + shifted).unwrap_or(char::REPLACEMENT_CHARACTER);
                shifted += 1;
                c
            }
        };
    }
    table
}

pub(super) fn tokenizer_json(spec: &SyntheticSpec) -> Value {
    let mut vocab = serde_json::Map::new();
    for (id, c) in byte_to_unicode().iter().enumerate() {
        vocab.insert(c.to_string(), json!(id));
    }
    // Specials are in the model vocab too: `tokenizers` takes an added
    // token's id from the model vocab, and otherwise appends it after it.
    let mut next_id = BYTE_TOKENS;
    let mut added_tokens = Vec::new();
    for token in SPECIAL_TOKENS {
        vocab.insert(token.to_string(), json!(next_id));
        added_tokens.push(json!({
            "id": next_id,
            "content": token,
            "single_word": false,
            "lstrip": false,
            "rstrip": false,
            "normalized": false,
            "special": true,
        }));
        next_id += 1;
    }
    let mut merges = Vec::with_capacity(spec.merges);
    for (left, right) in MERGE_TABLE.iter().take(spec.merges) {
        vocab.insert(format!("{left}{right}"), json!(next_id));
        // The "left right" string form loads in every tokenizers release.
        merges.push(Value::String(format!("{left} {right}")));
        next_id += 1;
    }
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_tokens,
        "normalizer": null,
        "pre_tokenizer": {
            "type": "ByteLevel",
            "add_prefix_space": false,
            "trim_offsets": true,
            "use_regex": true,
        },
        "post_processor": {
            "type": "ByteLevel",
            "add_prefix_space": false,
            "trim_offsets": false,
            "use_regex": true,
        },
        "decoder": {
            "type": "ByteLevel",
            "add_prefix_space": true,
            "trim_offsets": true,
            "use_regex": true,
        },
        "model": {
            "type": "BPE",
            "dropout": null,
            "unk_token": null,
            "continuing_subword_prefix": null,
            "end_of_word_suffix": null,
            "fuse_unk": false,
            "byte_fallback": false,
            "ignore_merges": false,
            "vocab": vocab,
            "merges": merges,
        },
    })
}

pub(super) fn tokenizer_config_json(spec: &SyntheticSpec) -> Value {
    let mut decoder = serde_json::Map::new();
    for (id, token) in (BYTE_TOKENS..).zip(SPECIAL_TOKENS) {
        decoder.insert(
            id.to_string(),
            json!({
                "content": token,
                "lstrip": false,
                "normalized": false,
                "rstrip": false,
                "single_word": false,
                "special": true,
            }),
        );
    }
    json!({
        "add_bos_token": false,
        "add_eos_token": false,
        "added_tokens_decoder": decoder,
        "bos_token": SPECIAL_TOKENS[0],
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": false,
        "eos_token": SPECIAL_TOKENS[3],
        "model_max_length": spec.max_position_embeddings,
        "pad_token": null,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": null,
    })
}
