//! Tokenizers rebuilt from GGUF metadata, for model directories that hold
//! a GGUF and no `tokenizer.json`, against three references:
//! - the fixtures' own `tokenizer.json` (byte-level BPE), on GGUFs written by
//!   `scripts/fixture-to-gguf.py`: the same ids and the same text back, and
//!   the reference greedy ids from prompts tokenized by the GGUF alone;
//! - llama.cpp's `llama-server` `/tokenize`, recorded by
//!   `scripts/record-llamacpp-tokenize.py` into
//!   `tests/data/gguf/tokenize.llamacpp.json`: a SentencePiece vocabulary
//!   (`tests/data/gguf/spm-tiny.gguf`, `scripts/make-spm-gguf-testdata.py`)
//!   and the llama-gqa vocabulary under several `tokenizer.ggml.pre` names,
//!   each checked by sha256 to be the file llama.cpp ran on;
//! - vocabularies the server cannot rebuild fail at startup, naming the
//!   file and the key.

use crate::common;

use std::{
    ops::ControlFlow,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use appliance_server::{
    checkpoint::gguf,
    cli,
    engine::{
        Engine, FinishReason, GenerateRequest, LoadOptions, SamplingParams, Tokenizer,
        TokenizerConfig, TokenizerSource,
    },
};
use common::{Server, fixture_checkpoints, fixture_reference};
use serde_json::Value;
use sha2::{Digest, Sha256};

fn runtime() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A model directory `<out>/<name>` holding only `fixture` as a GGUF
/// written by `scripts/fixture-to-gguf.py` with `args`: no tokenizer.json,
/// tokenizer_config.json, generation_config.json or chat template.
fn gguf_only(fixture: &Path, args: &[&str], out: &Path, name: &str) -> PathBuf {
    let dir = out.join(name);
    std::fs::create_dir_all(&dir).expect("mkdir");
    let status = Command::new("python3")
        .arg(runtime().join("../scripts/fixture-to-gguf.py"))
        .arg(fixture)
        .arg(dir.join("model.gguf"))
        .args(args)
        .status()
        .expect("run scripts/fixture-to-gguf.py (needs python3 with gguf-py)");
    assert!(
        status.success(),
        "fixture-to-gguf.py {fixture:?} {args:?}: {status}"
    );
    dir
}

/// The tokenizer of a GGUF-only directory, and the config it filled in.
fn from_gguf(dir: &Path) -> (Tokenizer, TokenizerConfig) {
    let g = gguf::open_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .expect("a GGUF");
    let mut config = TokenizerConfig::load(dir).expect("tokenizer config");
    let tok = Tokenizer::load_dir(dir, Some(&g), &mut config, &[])
        .unwrap_or_else(|e| panic!("{}: {e:?}", dir.display()));
    assert!(
        matches!(tok.source(), TokenizerSource::Gguf { .. }),
        "{:?}",
        tok.source()
    );
    (tok, config)
}

fn from_json(dir: &Path) -> Tokenizer {
    let config = TokenizerConfig::load(dir).expect("tokenizer config");
    Tokenizer::load(dir, &config, &[]).expect("tokenizer.json")
}

/// `tests/data/gguf/tokenize.llamacpp.json`.
fn recorded() -> Value {
    let path = runtime().join("tests/data/gguf/tokenize.llamacpp.json");
    let raw = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (record it with scripts/record-llamacpp-tokenize.py)",
            path.display()
        )
    });
    serde_json::from_slice(&raw).expect("recorded JSON")
}

fn texts(recorded: &Value) -> Vec<String> {
    recorded["texts"]
        .as_array()
        .expect("texts")
        .iter()
        .map(|t| t.as_str().expect("text").to_owned())
        .collect()
}

fn id_lists(v: &Value) -> Vec<Vec<u32>> {
    v.as_array()
        .expect("id lists")
        .iter()
        .map(|ids| {
            ids.as_array()
                .expect("ids")
                .iter()
                .map(|i| u32::try_from(i.as_u64().expect("id")).expect("u32 id"))
                .collect()
        })
        .collect()
}

fn sha256(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn a_gguf_without_tokenizer_json_tokenizes_like_the_fixtures_tokenizer_json() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let texts = texts(&recorded());
    for fixture in fixture_checkpoints() {
        let name = fixture.file_name().and_then(|n| n.to_str()).expect("name");
        let dir = gguf_only(&fixture, &["--type", "f32"], tmp.path(), name);
        let (gguf_tok, _) = from_gguf(&dir);
        let json_tok = from_json(&fixture);
        assert_eq!(gguf_tok.vocab_size(), json_tok.vocab_size(), "{name}");
        let added: Vec<u32> = serde_json::from_slice::<Value>(
            &std::fs::read(fixture.join("tokenizer.json")).expect("read tokenizer.json"),
        )
        .expect("tokenizer.json")["added_tokens"]
            .as_array()
            .expect("added_tokens")
            .iter()
            .map(|t| u32::try_from(t["id"].as_u64().expect("id")).expect("u32"))
            .collect();
        let mut special_tokens_seen = 0;
        for text in &texts {
            for add_special in [false, true] {
                let want = json_tok.encode(text, add_special).expect("encode json");
                let got = gguf_tok.encode(text, add_special).expect("encode gguf");
                assert_eq!(got, want, "{name} {text:?} add_special={add_special}");
                for skip in [false, true] {
                    assert_eq!(
                        gguf_tok.decode(&got, skip).expect("decode gguf"),
                        json_tok.decode(&want, skip).expect("decode json"),
                        "{name} {text:?} skip_special={skip}"
                    );
                }
            }
            // Byte-level BPE loses nothing.
            let ids = gguf_tok.encode(text, false).expect("encode");
            assert_eq!(&gguf_tok.decode(&ids, false).expect("decode"), text);
            special_tokens_seen += usize::from(ids.iter().any(|i| added.contains(i)));
        }
        assert!(
            special_tokens_seen >= 3,
            "{name}: the texts must exercise special tokens written in text"
        );
    }
}

#[test]
fn tokenizer_json_beside_the_gguf_wins_over_its_metadata() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let fixture = &fixture_checkpoints()[0];
    let dir = gguf_only(fixture, &["--type", "f32"], tmp.path(), "both");
    std::fs::copy(fixture.join("tokenizer.json"), dir.join("tokenizer.json")).expect("copy");
    let g = gguf::open_dir(&dir).expect("open").expect("a GGUF");
    let mut config = TokenizerConfig::load(&dir).expect("config");
    let tok = Tokenizer::load_dir(&dir, Some(&g), &mut config, &[]).expect("tokenizer");
    assert_eq!(
        tok.source(),
        &TokenizerSource::Json(dir.join("tokenizer.json"))
    );
    assert_eq!(config.bos_token, None, "nothing filled in from the GGUF");
}

fn load(dir: &Path) -> Engine {
    let options = LoadOptions {
        device: cli::Device::Cpu,
        dtype: cli::DType::F32,
        max_model_len: None,
        candle_ops: false,
        threads: None,
    };
    Engine::load(dir, options).unwrap_or_else(|e| panic!("load {}: {e:?}", dir.display()))
}

/// Prompts tokenized by the GGUF's own vocabulary (and chat template), then
/// greedy generation, give reference.json's ids, finish reasons and text.
#[test]
fn the_reference_greedy_ids_come_back_from_a_directory_with_only_the_gguf() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut checked = 0;
    for fixture in fixture_checkpoints() {
        let name = fixture.file_name().and_then(|n| n.to_str()).expect("name");
        let dir = gguf_only(&fixture, &["--type", "f32"], tmp.path(), name);
        let engine = load(&dir);
        assert_eq!(
            engine.tokenizer().eos_ids(),
            from_json(&fixture).eos_ids(),
            "{name}: stop ids"
        );
        let reference = fixture_reference(&fixture);
        for (i, case) in reference.cases.iter().enumerate() {
            let prompt = match case.kind.as_str() {
                "completion" => engine
                    .tokenizer()
                    .encode(case.prompt.as_str().expect("prompt text"), true)
                    .expect("encode"),
                _ => engine
                    .encode_chat(&case.prompt, None, true)
                    .unwrap_or_else(|e| panic!("{name} case {i}: {e:?}")),
            };
            assert_eq!(prompt, case.input_ids, "{name} case {i} prompt ids");
            let request = GenerateRequest {
                prompt,
                max_new_tokens: reference.max_new_tokens,
                sampling: SamplingParams::greedy(),
                ignore_eos: false,
                ..Default::default()
            };
            let out = engine
                .generate(&request, |_| ControlFlow::Continue(()))
                .expect("generate");
            assert_eq!(out.tokens, case.output_ids, "{name} case {i} output ids");
            let finish = match out.finish_reason {
                FinishReason::Stop => "stop",
                FinishReason::Length => "length",
                FinishReason::Cancelled => "cancelled",
            };
            assert_eq!(finish, case.finish_reason, "{name} case {i}");
            assert_eq!(
                engine
                    .tokenizer()
                    .decode(&out.tokens, false)
                    .expect("decode"),
                case.output_text,
                "{name} case {i} text"
            );
            checked += 1;
        }
    }
    assert!(checked > 0, "no reference cases");
}

/// The model directory of one recorded file: spm-tiny copied alone into a
/// directory, or the fixture GGUF regenerated with the recorded arguments;
/// either way the bytes llama.cpp tokenized with.
fn recorded_dir(file: &Value, out: &Path) -> PathBuf {
    let name = file["name"].as_str().expect("name");
    let dir = match file.get("fixture").and_then(Value::as_str) {
        Some(fixture) => {
            let args: Vec<&str> = file["args"]
                .as_array()
                .expect("args")
                .iter()
                .map(|a| a.as_str().expect("arg"))
                .collect();
            gguf_only(&common::fixtures_dir().join(fixture), &args, out, name)
        }
        None => {
            let dir = out.join(name);
            std::fs::create_dir_all(&dir).expect("mkdir");
            let from = runtime().join(file["path"].as_str().expect("path"));
            std::fs::copy(&from, dir.join("model.gguf"))
                .unwrap_or_else(|e| panic!("{}: {e}", from.display()));
            dir
        }
    };
    assert_eq!(
        sha256(&dir.join("model.gguf")),
        file["gguf_sha256"].as_str().expect("gguf_sha256"),
        "{name}: not the file llama.cpp tokenized with (regenerate both with the scripts)"
    );
    dir
}

#[test]
fn sentencepiece_and_every_pre_tokenizer_give_llama_cpps_ids() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let recorded = recorded();
    let texts = texts(&recorded);
    let files = recorded["files"].as_array().expect("files");
    assert!(
        files.iter().any(|f| f["name"] == "spm-tiny") && files.len() >= 4,
        "the recording covers SentencePiece and several pre-tokenizers"
    );
    for file in files {
        let name = file["name"].as_str().expect("name");
        let dir = recorded_dir(file, tmp.path());
        let (tok, _) = from_gguf(&dir);
        for (add_special, key) in [(false, "ids"), (true, "ids_add_special")] {
            let want = id_lists(&file[key]);
            assert_eq!(want.len(), texts.len(), "{name} {key}");
            for (text, want) in texts.iter().zip(&want) {
                let got = tok.encode(text, add_special).expect("encode");
                assert_eq!(&got, want, "{name} {text:?} add_special={add_special}");
            }
        }
        for (text, ids) in texts.iter().zip(id_lists(&file["ids"])) {
            let decoded = tok.decode(&ids, false).expect("decode");
            if name == "spm-tiny" {
                // SentencePiece drops the "▁" it prepended, once: the text
                // comes back unless a special token was followed by text,
                // which llama.cpp prefixes with a space too.
                let has_special = ["<s>", "</s>", "<|im_start|>", "<|im_end|>", "<think>"]
                    .iter()
                    .any(|s| text.contains(s));
                if !has_special {
                    assert_eq!(&decoded, text, "{name}");
                }
                if let Some(hf) = file.get("transformers") {
                    let i = texts.iter().position(|t| t == text).expect("text");
                    assert_eq!(
                        decoded, hf["decoded"][i],
                        "{name} {text:?}: transformers decodes llama.cpp's ids so"
                    );
                }
            } else {
                assert_eq!(&decoded, text, "{name}");
            }
        }
    }
}

/// A SentencePiece GGUF alone serves: the startup log says where the
/// tokenizer came from, BOS and EOS come from the file's metadata, and
/// `/tokenize` answers llama.cpp's ids.
#[test]
fn the_server_says_its_tokenizer_came_from_gguf_metadata_and_uses_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let recorded = recorded();
    let texts = texts(&recorded);
    let file = recorded["files"]
        .as_array()
        .expect("files")
        .iter()
        .find(|f| f["name"] == "spm-tiny")
        .expect("spm-tiny recorded");
    let dir = recorded_dir(file, tmp.path());
    let (tok, config) = from_gguf(&dir);
    assert_eq!(tok.bos_id(), Some(1));
    assert_eq!(tok.eos_ids(), [2]);
    assert_eq!(config.bos_token.as_deref(), Some("<s>"));
    assert_eq!(config.eos_token.as_deref(), Some("</s>"));

    let server = Server::start_fixture(&dir, &[]);
    let log = server.output();
    let gguf_path = dir.join("model.gguf");
    assert!(
        log.contains(&format!(
            "tokenizer: GGUF metadata of {}",
            gguf_path.display()
        )) && log.contains("tokenizer.ggml.model \"llama\""),
        "{log}"
    );
    let want = id_lists(&file["ids_add_special"]);
    for (text, want) in texts.iter().zip(&want).take(12) {
        let body = serde_json::json!({ "prompt": text }).to_string();
        let r = common::request(server.port, "POST", "/tokenize", &[], &body);
        assert_eq!(r.status, 200, "{r:?}");
        let got: Vec<u32> = serde_json::from_value(r.json()["tokens"].clone()).expect("tokens");
        assert_eq!(&got, want, "{text:?}");
    }
}

/// An f32 GGUF of the first fixture with nothing beside it, patched by
/// `code` (gguf-py, in place); the server must exit at startup naming the
/// file and every one of `needles`.
fn assert_refused(code: &str, needles: &[&str]) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let fixture = &fixture_checkpoints()[0];
    let dir = gguf_only(fixture, &["--type", "f32"], tmp.path(), "broken");
    let path = dir.join("model.gguf");
    let script = format!(
        "import sys, gguf\nr = gguf.GGUFReader(sys.argv[1], 'r+')\n{code}\nr.data.flush()\n"
    );
    let status = Command::new("python3")
        .args(["-c", &script])
        .arg(&path)
        .status()
        .expect("python3");
    assert!(status.success(), "patch {}", path.display());
    let mut cmd = common::command();
    cmd.arg("--model")
        .arg(&dir)
        .args(["--host", "127.0.0.1", "--port", "0", "--device", "cpu"]);
    let out = common::run_with_timeout(cmd, Duration::from_secs(60));
    let stderr =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "must not serve:\n{stderr}");
    assert!(stderr.contains(&path.display().to_string()), "{stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "{needle:?} in {stderr}");
    }
}

#[test]
fn an_unknown_tokenizer_model_fails_at_startup_naming_the_file_and_key() {
    // Same length as "gpt2", so the header stays valid.
    assert_refused(
        "f = r.fields['tokenizer.ggml.model']\nf.parts[f.data[0]][:] = list(b'bert')",
        &["tokenizer.ggml.model", "\"bert\"", "tokenizer.json"],
    );
}

#[test]
fn a_missing_token_list_fails_at_startup_naming_the_file_and_key() {
    // Renames the key (same length): the vocabulary is gone.
    assert_refused(
        "f = r.fields['tokenizer.ggml.tokens']\nf.parts[1][:] = list(b'tokenizer.ggml.tokenz')",
        &["tokenizer.ggml.tokens", "missing"],
    );
}

#[test]
fn an_unsupported_pre_tokenizer_fails_at_startup_naming_the_file_and_key() {
    assert_refused(
        "f = r.fields['tokenizer.ggml.pre']\nf.parts[f.data[0]][:] = list(b'gpt-9')",
        &["tokenizer.ggml.pre", "\"gpt-9\""],
    );
}
