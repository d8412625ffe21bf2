//! Structured outputs (`engine::grammar`) on every fixture tokenizer: the
//! byte-level BPE ones of `shared/fixtures/models` and `tests/fixtures`, and
//! the SentencePiece byte-fallback one a GGUF describes
//! (`tests/data/gguf/spm-tiny.gguf`).
//!
//! The "model" is a seeded random one: fresh random logits every step,
//! argmax after the mask. It knows nothing of JSON, so whatever valid text
//! comes out is the mask's doing; [`unmasked_random_logits_are_not_json`]
//! shows the same logits without the mask are garbage. Its only nudge is a
//! small bonus for closing tokens (`"`, `}`, `]`) and EOS: unconstrained
//! strings and arrays would otherwise run for thousands of steps before a
//! uniform pick happens to close them.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use appliance_server::{
    checkpoint::gguf::Gguf,
    engine::{
        Tokenizer, TokenizerConfig,
        grammar::{Constraint, ConstraintSpec, GrammarCompiler},
    },
};
use rand_chacha::{
    ChaCha8Rng,
    rand_core::{RngCore, SeedableRng},
};
use serde_json::{Value, json};

const MAX_STEPS: usize = 200;

fn runtime() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every fixture tokenizer, by name. Panics when the shared fixtures are
/// missing: these tests are never silently skipped.
fn tokenizers() -> Vec<(String, Tokenizer)> {
    let shared = runtime().join("../../shared/fixtures/models");
    let own = runtime().join("tests/fixtures");
    let mut dirs: Vec<PathBuf> = [&shared, &own]
        .iter()
        .flat_map(|d| {
            std::fs::read_dir(d)
                .unwrap_or_else(|e| panic!("fixtures missing at {} ({e})", d.display()))
        })
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.join("tokenizer.json").is_file())
        .collect();
    dirs.sort();
    assert!(dirs.len() >= 3, "fixture tokenizers: {dirs:?}");
    let mut out: Vec<(String, Tokenizer)> = dirs
        .iter()
        .map(|dir| {
            let config = TokenizerConfig::load(dir).expect("tokenizer config");
            let tok = Tokenizer::load(dir, &config, &[]).expect("tokenizer.json");
            (name(dir), tok)
        })
        .collect();
    out.push(("spm-tiny (GGUF, byte fallback)".to_owned(), spm_tiny()));
    out
}

fn name(dir: &Path) -> String {
    dir.file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned()
}

/// The SentencePiece vocabulary of `tests/data/gguf/spm-tiny.gguf`, rebuilt
/// from its metadata (a `▁`-for-space, `<0xNN>` byte-fallback vocabulary).
fn spm_tiny() -> Tokenizer {
    let dir = runtime().join("tests/data/gguf");
    let gguf = Gguf::open(vec![dir.join("spm-tiny.gguf")]).expect("spm-tiny.gguf");
    let mut config = TokenizerConfig::default();
    let tok = Tokenizer::load_dir(&dir, Some(&gguf), &mut config, &[]).expect("spm-tiny");
    assert!(
        tok.hf().token_to_id("<0x0A>").is_some(),
        "spm-tiny has byte-fallback pieces"
    );
    tok
}

/// Seeded random logits; see the module doc for the bonus.
struct RandomModel {
    rng: ChaCha8Rng,
    bonus: Vec<f32>,
}

impl RandomModel {
    fn new(tok: &Tokenizer, vocab: usize, seed: u64) -> Self {
        let bonus = (0..vocab as u32)
            .map(|id| {
                let closes = tok
                    .decode(&[id], false)
                    .is_ok_and(|t| t.contains(['"', '}', ']']));
                if closes || tok.eos_ids().contains(&id) {
                    0.5
                } else {
                    0.0
                }
            })
            .collect();
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed),
            bonus,
        }
    }

    fn logits(&mut self) -> Vec<f32> {
        self.bonus
            .iter()
            .map(|b| b + (self.rng.next_u32() >> 8) as f32 / (1 << 24) as f32)
            .collect()
    }
}

fn argmax(logits: &[f32]) -> u32 {
    let (id, best) = logits
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .expect("non-empty");
    assert!(best.is_finite(), "the mask left no token allowed");
    id as u32
}

/// One constrained generation.
struct Run {
    tokens: Vec<u32>,
    text: String,
    /// Ended on an EOS id (not on the step limit).
    stopped: bool,
    /// Mask computations and their total time.
    masks: usize,
    mask_time: Duration,
}

/// Generates up to `steps` tokens with `model` under `constraint`, checking
/// on the way that once [`Constraint::is_finished`], exactly the EOS ids
/// stay allowed.
fn generate(
    tok: &Tokenizer,
    constraint: &mut Constraint,
    model: &mut RandomModel,
    steps: usize,
) -> Run {
    let eos = tok.eos_ids();
    let mut run = Run {
        tokens: Vec::new(),
        text: String::new(),
        stopped: false,
        masks: 0,
        mask_time: Duration::ZERO,
    };
    for _ in 0..steps {
        let finished = constraint.is_finished();
        let mut logits = model.logits();
        let t0 = Instant::now();
        constraint.mask_logits(&mut logits).expect("mask");
        run.mask_time += t0.elapsed();
        run.masks += 1;
        if finished {
            let allowed: Vec<u32> = (0..logits.len() as u32)
                .filter(|&i| logits[i as usize].is_finite())
                .collect();
            assert_eq!(allowed, eos, "a finished grammar allows only EOS");
        }
        let next = argmax(&logits);
        constraint.accept(next).expect("accept the masked argmax");
        if eos.contains(&next) {
            run.stopped = true;
            assert!(constraint.is_finished(), "EOS accepted: finished");
            break;
        }
        run.tokens.push(next);
    }
    run.text = tok.decode(&run.tokens, false).expect("decode");
    run
}

fn compiler(tok: &Tokenizer) -> GrammarCompiler {
    GrammarCompiler::new(tok, tok.vocab_size()).expect("grammar compiler")
}

fn person_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 12},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "status": {"enum": ["active", "inactive", "banned"]},
            "tags": {
                "type": "array",
                "items": {"enum": ["x", "y", "z"]},
                "minItems": 1,
                "maxItems": 3
            },
            "address": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "maxLength": 10},
                    "zip": {"type": "string", "pattern": "^[0-9]{5}$"}
                },
                "required": ["city", "zip"],
                "additionalProperties": false
            },
            "score": {"type": "number"}
        },
        "required": ["name", "age", "status", "tags", "address"],
        "additionalProperties": false
    })
}

/// The schema's invariants, checked by hand.
fn check_person(v: &Value, what: &str) {
    let obj = v
        .as_object()
        .unwrap_or_else(|| panic!("{what}: not an object"));
    for key in obj.keys() {
        assert!(
            ["name", "age", "status", "tags", "address", "score"].contains(&key.as_str()),
            "{what}: extra key {key}"
        );
    }
    let name = obj["name"].as_str().expect("name is a string");
    let chars = name.chars().count();
    assert!((1..=12).contains(&chars), "{what}: name length {chars}");
    let age = obj["age"].as_u64().expect("age is a non-negative integer");
    assert!(age <= 120, "{what}: age {age}");
    let status = obj["status"].as_str().expect("status is a string");
    assert!(["active", "inactive", "banned"].contains(&status), "{what}");
    let tags = obj["tags"].as_array().expect("tags is an array");
    assert!((1..=3).contains(&tags.len()), "{what}: {} tags", tags.len());
    for t in tags {
        assert!(
            ["x", "y", "z"].contains(&t.as_str().expect("tag")),
            "{what}"
        );
    }
    let addr = obj["address"].as_object().expect("address is an object");
    assert_eq!(addr.len(), 2, "{what}: address keys");
    let city = addr["city"].as_str().expect("city is a string");
    assert!(city.chars().count() <= 10, "{what}: city {city:?}");
    let zip = addr["zip"].as_str().expect("zip is a string");
    assert!(
        zip.len() == 5 && zip.bytes().all(|b| b.is_ascii_digit()),
        "{what}: zip {zip:?}"
    );
    if let Some(score) = obj.get("score") {
        assert!(score.is_number(), "{what}: score {score}");
    }
}

#[test]
fn json_schema_output_is_valid() {
    for (name, tok) in tokenizers() {
        let compiler = compiler(&tok);
        for seed in 0..4 {
            let what = format!("{name} seed {seed}");
            let spec = ConstraintSpec::JsonSchema(person_schema());
            let mut constraint = compiler.compile(&spec).expect("compile");
            let mut model = RandomModel::new(&tok, compiler.vocab_size(), seed);
            let run = generate(&tok, &mut constraint, &mut model, MAX_STEPS);
            assert!(
                run.stopped,
                "{what}: no EOS in {MAX_STEPS} steps: {:?}",
                run.text
            );
            let v: Value = serde_json::from_str(&run.text)
                .unwrap_or_else(|e| panic!("{what}: {e}: {:?}", run.text));
            check_person(&v, &what);
            eprintln!("{what}: {} tokens: {}", run.tokens.len(), run.text);
        }
    }
}

#[test]
fn json_object_output_is_an_object() {
    for (name, tok) in tokenizers() {
        let compiler = compiler(&tok);
        for seed in 0..4 {
            let what = format!("{name} seed {seed}");
            let mut constraint = compiler
                .compile(&ConstraintSpec::JsonObject)
                .expect("compile");
            let mut model = RandomModel::new(&tok, compiler.vocab_size(), seed);
            let run = generate(&tok, &mut constraint, &mut model, MAX_STEPS);
            assert!(
                run.stopped,
                "{what}: no EOS in {MAX_STEPS} steps: {:?}",
                run.text
            );
            let v: Value = serde_json::from_str(&run.text)
                .unwrap_or_else(|e| panic!("{what}: {e}: {:?}", run.text));
            assert!(v.is_object(), "{what}: {v}");
            assert!(
                !run.text.starts_with(char::is_whitespace),
                "{what}: no free whitespace"
            );
            eprintln!("{what}: {}", run.text);
        }
    }
}

/// `[0-9]{3}-[a-z]+`, checked by hand.
fn matches_regex(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 5
        && b[..3].iter().all(u8::is_ascii_digit)
        && b[3] == b'-'
        && b[4..].iter().all(u8::is_ascii_lowercase)
}

#[test]
fn regex_output_matches() {
    assert!(matches_regex("123-ab") && !matches_regex("12-ab") && !matches_regex("123-"));
    for (name, tok) in tokenizers() {
        let compiler = compiler(&tok);
        for (seed, rx) in [r"[0-9]{3}-[a-z]+", r"^\d{3}-[a-z]+$"].iter().enumerate() {
            let what = format!("{name} {rx}");
            let spec = ConstraintSpec::Regex((*rx).to_owned());
            let mut constraint = compiler.compile(&spec).expect("compile");
            let mut model = RandomModel::new(&tok, compiler.vocab_size(), seed as u64);
            let run = generate(&tok, &mut constraint, &mut model, MAX_STEPS);
            assert!(
                run.stopped,
                "{what}: no EOS in {MAX_STEPS} steps: {:?}",
                run.text
            );
            assert!(matches_regex(&run.text), "{what}: {:?}", run.text);
        }
    }
}

#[test]
fn choice_output_is_one_choice() {
    let choices = ["yes", "no", "maybe so", "yes please", "\"quoted\"\n"].map(String::from);
    for (name, tok) in tokenizers() {
        let compiler = compiler(&tok);
        let mut seen = Vec::new();
        for seed in 0..12 {
            let spec = ConstraintSpec::Choice(choices.to_vec());
            let mut constraint = compiler.compile(&spec).expect("compile");
            let mut model = RandomModel::new(&tok, compiler.vocab_size(), seed);
            let run = generate(&tok, &mut constraint, &mut model, MAX_STEPS);
            assert!(run.stopped, "{name}: no EOS: {:?}", run.text);
            assert!(
                choices.contains(&run.text),
                "{name} seed {seed}: {:?}",
                run.text
            );
            seen.push(run.text);
        }
        seen.sort();
        seen.dedup();
        assert!(
            seen.len() >= 2,
            "{name}: the random model only ever got {seen:?}"
        );
    }
}

#[test]
fn lark_output_matches() {
    let lark = r#"
        start: "sum(" num ("," num)* ")"
        num: /[1-9][0-9]?/
    "#;
    for (name, tok) in tokenizers() {
        let compiler = compiler(&tok);
        let spec = ConstraintSpec::Lark(lark.to_owned());
        let mut constraint = compiler.compile(&spec).expect("compile");
        let mut model = RandomModel::new(&tok, compiler.vocab_size(), 7);
        let run = generate(&tok, &mut constraint, &mut model, MAX_STEPS);
        assert!(run.stopped, "{name}: no EOS: {:?}", run.text);
        let inner = run
            .text
            .strip_prefix("sum(")
            .and_then(|t| t.strip_suffix(')'))
            .unwrap_or_else(|| panic!("{name}: {:?}", run.text));
        for n in inner.split(',') {
            assert!(
                (1..=2).contains(&n.len())
                    && !n.starts_with('0')
                    && n.bytes().all(|b| b.is_ascii_digit()),
                "{name}: {:?}",
                run.text
            );
        }
    }
}

#[test]
fn finished_grammar_allows_only_eos() {
    let (_, tok) = tokenizers().remove(0);
    let compiler = compiler(&tok);
    let spec = ConstraintSpec::Choice(vec!["ok".to_owned()]);
    let mut constraint = compiler.compile(&spec).expect("compile");
    assert!(!constraint.is_finished());
    for id in tok.encode("ok", false).expect("encode") {
        assert!(!constraint.is_finished());
        constraint.accept(id).expect("accept");
    }
    assert!(constraint.is_finished(), "\"ok\" completes the grammar");
    let mut logits = vec![1.0; compiler.vocab_size()];
    constraint.mask_logits(&mut logits).expect("mask");
    let allowed: Vec<u32> = (0..logits.len() as u32)
        .filter(|&i| logits[i as usize].is_finite())
        .collect();
    assert_eq!(allowed, tok.eos_ids());
    let not_eos = tok.encode("o", false).expect("encode")[0];
    let err = constraint.accept(not_eos).expect_err("text after the end");
    assert!(err.contains("only end-of-sequence"), "{err}");
    constraint.accept(tok.eos_ids()[0]).expect("EOS ends it");
    assert!(constraint.is_finished());
}

#[test]
fn forbidden_token_is_rejected() {
    let (_, tok) = tokenizers().remove(0);
    let compiler = compiler(&tok);
    let spec = ConstraintSpec::Regex("[0-9]+".to_owned());
    let mut constraint = compiler.compile(&spec).expect("compile");
    let letter = tok.encode("x", false).expect("encode")[0];
    let err = constraint
        .accept(letter)
        .expect_err("a letter is not a digit");
    assert!(err.contains(&letter.to_string()), "{err}");
    let eos = tok.eos_ids()[0];
    let mut constraint = compiler.compile(&spec).expect("compile");
    assert!(constraint.accept(eos).is_err(), "EOS before any digit");
}

#[test]
fn padding_rows_are_always_masked() {
    let (_, tok) = tokenizers().remove(0);
    let vocab = tok.vocab_size();
    let compiler = GrammarCompiler::new(&tok, vocab + 64).expect("padded");
    // A Lark grammar may name a token id; a padding id still never passes.
    let specs = [
        ConstraintSpec::JsonObject,
        ConstraintSpec::Lark(format!("start: <[{}]> | \"a\"", vocab + 3)),
    ];
    for spec in specs {
        let mut constraint = compiler.compile(&spec).expect("compile");
        let mut model = RandomModel::new(&tok, vocab + 64, 3);
        for _ in 0..20 {
            let mut logits = model.logits();
            constraint.mask_logits(&mut logits).expect("mask");
            assert!(
                logits[vocab..].iter().all(|l| *l == f32::NEG_INFINITY),
                "{spec:?}: padding rows masked"
            );
            let next = argmax(&logits);
            constraint.accept(next).expect("accept");
            if tok.eos_ids().contains(&next) {
                break;
            }
        }
    }
    let mut constraint = compiler
        .compile(&ConstraintSpec::JsonObject)
        .expect("compile");
    let err = constraint
        .mask_logits(&mut vec![0.0; vocab])
        .expect_err("wrong width");
    assert!(err.contains(&(vocab + 64).to_string()), "{err}");
}

#[test]
fn bad_specs_name_the_problem() {
    let (_, tok) = tokenizers().remove(0);
    let compiler = compiler(&tok);
    let cases: [(ConstraintSpec, &[&str]); 8] = [
        (
            ConstraintSpec::JsonSchema(json!({"type": "strin"})),
            &["strin"],
        ),
        (
            ConstraintSpec::JsonSchema(
                json!({"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}),
            ),
            &["missing"],
        ),
        (
            ConstraintSpec::JsonSchema(json!({"type": "string", "format": "no-such-format"})),
            &["no-such-format"],
        ),
        (
            ConstraintSpec::JsonSchema(json!({"type": "array", "uniqueItems": true})),
            &["uniqueItems"],
        ),
        (ConstraintSpec::JsonSchema(json!(42)), &["schema"]),
        (
            ConstraintSpec::Regex("[0-9".to_owned()),
            &["regex", "class"],
        ),
        (ConstraintSpec::Choice(vec![]), &["choice", "empty"]),
        (ConstraintSpec::Lark("start: foo".to_owned()), &["foo"]),
    ];
    for (spec, words) in cases {
        let err = compiler
            .compile(&spec)
            .map(drop)
            .expect_err(&format!("{spec:?} must not compile"));
        eprintln!("{spec:?} -> {err}");
        for w in words {
            assert!(err.contains(w), "{spec:?}: {err:?} should name {w:?}");
        }
    }
}

/// The failure this module exists to prevent: the same random logits,
/// unmasked, are not JSON (so the tests above could fail).
#[test]
fn unmasked_random_logits_are_not_json() {
    for (name, tok) in tokenizers() {
        let compiler = compiler(&tok);
        for seed in 0..4 {
            let mut model = RandomModel::new(&tok, compiler.vocab_size(), seed);
            let mut ids = Vec::new();
            for _ in 0..MAX_STEPS {
                let next = argmax(&model.logits());
                if tok.eos_ids().contains(&next) {
                    break;
                }
                ids.push(next);
            }
            let text = tok.decode(&ids, false).expect("decode");
            assert!(
                serde_json::from_str::<Value>(&text).is_err(),
                "{name} seed {seed}: unmasked output happened to be JSON: {text:?}"
            );
            // The masked run from the same seed is JSON.
            let spec = ConstraintSpec::JsonSchema(person_schema());
            let mut constraint = compiler.compile(&spec).expect("compile");
            let mut model = RandomModel::new(&tok, compiler.vocab_size(), seed);
            let run = generate(&tok, &mut constraint, &mut model, MAX_STEPS);
            assert!(serde_json::from_str::<Value>(&run.text).is_ok(), "{name}");
        }
    }
}

/// Per-step cost of `mask_logits` for a JSON schema on every fixture
/// vocabulary, printed (run with `--release -- --nocapture`); never asserted.
/// The fixture vocabularies are tiny, so `GRAMMAR_BENCH_MODEL=<model dir
/// with tokenizer.json>` adds a real one (its output is checked like
/// [`json_schema_output_is_valid`]'s).
#[test]
fn mask_cost() {
    let mut cases = tokenizers();
    if let Some(dir) = std::env::var_os("GRAMMAR_BENCH_MODEL") {
        let dir = PathBuf::from(dir);
        let config = TokenizerConfig::load(&dir).expect("tokenizer config");
        let tok = Tokenizer::load(&dir, &config, &[]).expect("tokenizer");
        cases.push((name(&dir), tok));
    }
    for (name, tok) in &cases {
        let t0 = Instant::now();
        let compiler = compiler(tok);
        let setup = t0.elapsed();
        let spec = ConstraintSpec::JsonSchema(person_schema());
        let (mut masks, mut time, mut compile) = (0, Duration::ZERO, Duration::ZERO);
        let seeds = 8;
        for seed in 0..seeds {
            let t0 = Instant::now();
            let mut constraint = compiler.compile(&spec).expect("compile");
            compile += t0.elapsed();
            let mut model = RandomModel::new(tok, compiler.vocab_size(), seed);
            let run = generate(tok, &mut constraint, &mut model, MAX_STEPS);
            assert!(run.stopped, "{name}: no EOS: {:?}", run.text);
            let v: Value = serde_json::from_str(&run.text)
                .unwrap_or_else(|e| panic!("{name}: {e}: {:?}", run.text));
            check_person(&v, name);
            masks += run.masks;
            time += run.mask_time;
        }
        eprintln!(
            "mask cost {name}: vocab {}: {:.1} µs per mask_logits ({masks} steps); \
             compile {:.2} ms; GrammarCompiler::new {:.1} ms",
            tok.vocab_size(),
            time.as_secs_f64() * 1e6 / masks as f64,
            compile.as_secs_f64() * 1e3 / seeds as f64,
            setup.as_secs_f64() * 1e3,
        );
    }
}

/// A vocabulary that does not spell bytes (word-level, no decoder) cannot
/// be matched byte for byte: refused up front, naming the decoder.
#[test]
fn word_level_tokenizer_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("tokenizer.json"),
        r#"{"version":"1.0","truncation":null,"padding":null,
        "added_tokens":[{"id":0,"content":"</s>","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true}],
        "normalizer":null,"pre_tokenizer":{"type":"WhitespaceSplit"},"post_processor":null,"decoder":null,
        "model":{"type":"WordLevel","vocab":{"</s>":0,"<unk>":1,"hi":2},"unk_token":"<unk>"}}"#,
    )
    .expect("write");
    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        r#"{"eos_token":"</s>"}"#,
    )
    .expect("write");
    let config = TokenizerConfig::load(dir.path()).expect("config");
    let tok = Tokenizer::load(dir.path(), &config, &[]).expect("tokenizer");
    let err = GrammarCompiler::new(&tok, 3).expect_err("word-level");
    assert!(err.contains("decoder"), "{err}");
}
