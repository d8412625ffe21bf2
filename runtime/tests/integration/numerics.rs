//! Numerical proof of the engine against the reference fixtures: for every
//! checkpoint in `shared/fixtures/models` and `runtime/tests/fixtures`, the transformers (float32) prompt
//! ids, greedy continuations, finish reasons and first-position top-5 logits
//! must be reproduced exactly (ids) or within 1e-3 (logits).
//!
//! The fixtures live outside this repository. If they are missing the tests
//! FAIL: a silently skipped numerics test is how a broken engine ships.

use crate::common;

use std::{fs, ops::ControlFlow, path::Path};

use appliance_server::{
    cli,
    engine::{Engine, FinishReason, GenerateRequest, LoadOptions, SamplingParams},
};
use common::{Case, Server, fixture_checkpoints, fixture_reference};
use serde_json::Value;

const LOGIT_TOLERANCE: f32 = 1e-3;

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

fn prompt_ids(engine: &Engine, case: &Case) -> Vec<u32> {
    match case.kind.as_str() {
        "completion" => {
            let text = case.prompt.as_str().expect("completion prompt is a string");
            engine.tokenizer().encode(text, false).expect("encode")
        }
        "chat" => engine.encode_chat(&case.prompt, None, true).expect("chat"),
        other => panic!("unknown case kind {other:?}"),
    }
}

/// Checks one checkpoint; returns the largest top-5 logit difference.
fn check_checkpoint(dir: &Path) -> f32 {
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("?");
    let reference = fixture_reference(dir);
    let engine = load(dir);
    assert!(!reference.cases.is_empty(), "{name}: no cases");
    let mut max_diff = 0f32;
    for (i, case) in reference.cases.iter().enumerate() {
        let label = format!("{name} case {i} ({})", case.kind);
        let ids = prompt_ids(&engine, case);
        assert_eq!(ids, case.input_ids, "{label}: prompt ids");

        let logits = engine.prompt_logits(&ids).expect("prefill");
        let mut order: Vec<u32> = (0..logits.len() as u32).collect();
        order.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
        assert_eq!(
            &order[..5],
            &case.first_logits_top5.ids[..],
            "{label}: top-5 ids"
        );
        for (id, want) in case
            .first_logits_top5
            .ids
            .iter()
            .zip(&case.first_logits_top5.values)
        {
            let diff = (logits[*id as usize] - want).abs();
            max_diff = max_diff.max(diff);
            assert!(
                diff <= LOGIT_TOLERANCE,
                "{label}: logit of {id} is {} (reference {want})",
                logits[*id as usize]
            );
        }

        let request = GenerateRequest {
            prompt: ids,
            max_new_tokens: reference.max_new_tokens,
            sampling: SamplingParams::greedy(),
            ignore_eos: false,
            ..Default::default()
        };
        let mut streamed = Vec::new();
        let generation = engine
            .generate(&request, |t| {
                streamed.push(t);
                ControlFlow::Continue(())
            })
            .expect("generate");
        assert_eq!(generation.tokens, case.output_ids, "{label}: output ids");
        assert_eq!(streamed, generation.tokens, "{label}: streamed tokens");
        let want = match case.finish_reason.as_str() {
            "stop" => FinishReason::Stop,
            "length" => FinishReason::Length,
            other => panic!("{label}: unknown finish_reason {other:?}"),
        };
        assert_eq!(generation.finish_reason, want, "{label}: finish reason");
    }
    eprintln!(
        "{name}: {} cases match; max top-5 logit diff {max_diff:.2e}",
        reference.cases.len()
    );
    max_diff
}

#[test]
fn every_fixture_matches_the_reference() {
    for dir in fixture_checkpoints() {
        check_checkpoint(&dir);
    }
}

#[test]
fn the_fixtures_cover_the_supported_architectures() {
    let names: Vec<String> = fixture_checkpoints()
        .iter()
        .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
        .collect();
    for expected in ["llama-gqa", "mistral", "qwen2-tied", "qwen3"] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} in {names:?}"
        );
    }
}

#[test]
fn cancelling_stops_generation_after_the_current_token() {
    let dir = common::fixtures_dir().join("llama-gqa");
    let engine = load(&dir);
    let request = GenerateRequest {
        prompt: fixture_reference(&dir).cases[0].input_ids.clone(),
        max_new_tokens: 10,
        sampling: SamplingParams::greedy(),
        ignore_eos: false,
        ..Default::default()
    };
    let mut seen = 0;
    let generation = engine
        .generate(&request, |_| {
            seen += 1;
            if seen == 3 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .expect("generate");
    assert_eq!(generation.tokens.len(), 3);
    assert_eq!(generation.finish_reason, FinishReason::Cancelled);
}

/// The served binary's `/tokenize` renders and tokenizes a chat exactly as
/// the reference did, and `/detokenize` inverts a completion prompt.
#[test]
fn binary_tokenize_endpoint_matches_a_chat_case() {
    let dir = common::fixtures_dir().join("qwen2-tied");
    let reference = fixture_reference(&dir);
    let chat = reference.case("chat");
    let server = Server::start_fixture(&dir, &[]);
    let body = serde_json::json!({"messages": chat.prompt, "add_generation_prompt": true});
    let r = common::request(server.port, "POST", "/tokenize", &[], &body.to_string());
    assert_eq!(r.status, 200, "{r:?}");
    let v = r.json();
    let tokens: Vec<u32> = serde_json::from_value(v["tokens"].clone()).expect("token list");
    assert_eq!(tokens, chat.input_ids);
    assert_eq!(v["count"], chat.input_ids.len());
    assert_eq!(v["max_model_len"], 512);

    let completion = reference.case("completion");
    let body = serde_json::json!({"tokens": completion.input_ids});
    let r = common::request(server.port, "POST", "/detokenize", &[], &body.to_string());
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["prompt"], completion.prompt);
}

/// Splits a single-file safetensors checkpoint into two shards plus a
/// `model.safetensors.index.json` (parsing the format by hand: 8-byte header
/// length, JSON header with `data_offsets`, raw data).
fn shard_checkpoint(src: &Path, dst: &Path) {
    for entry in fs::read_dir(src).expect("read fixture") {
        let path = entry.expect("entry").path();
        let name = path.file_name().expect("file name");
        if name != "model.safetensors" {
            fs::copy(&path, dst.join(name)).expect("copy");
        }
    }
    let raw = fs::read(src.join("model.safetensors")).expect("read weights");
    let header_len = u64::from_le_bytes(raw[..8].try_into().expect("8 bytes")) as usize;
    let header: serde_json::Map<String, Value> =
        serde_json::from_slice(&raw[8..8 + header_len]).expect("header");
    let data = &raw[8 + header_len..];
    let mut names: Vec<&String> = header.keys().filter(|k| *k != "__metadata__").collect();
    names.sort();
    let half = names.len() / 2;
    let mut weight_map = serde_json::Map::new();
    for (shard, part) in [&names[..half], &names[half..]].iter().enumerate() {
        let file = format!("model-{:05}-of-00002.safetensors", shard + 1);
        let mut out_header = serde_json::Map::new();
        let mut out_data = Vec::new();
        for name in part.iter() {
            let mut info = header[*name].clone();
            let offsets = &info["data_offsets"];
            let (start, end) = (
                offsets[0].as_u64().expect("start") as usize,
                offsets[1].as_u64().expect("end") as usize,
            );
            let begin = out_data.len();
            out_data.extend_from_slice(&data[start..end]);
            info["data_offsets"] = serde_json::json!([begin, out_data.len()]);
            out_header.insert((*name).clone(), info);
            weight_map.insert((*name).clone(), Value::String(file.clone()));
        }
        let out_header = Value::Object(out_header).to_string();
        let mut bytes = (out_header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(out_header.as_bytes());
        bytes.extend_from_slice(&out_data);
        fs::write(dst.join(&file), bytes).expect("write shard");
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    fs::write(dst.join("model.safetensors.index.json"), index.to_string()).expect("write index");
}

#[test]
fn sharded_checkpoints_load_to_the_same_logits() {
    let src = common::fixtures_dir().join("llama-gqa");
    let tmp = tempfile::tempdir().expect("tempdir");
    shard_checkpoint(&src, tmp.path());
    let prompt = fixture_reference(&src).cases[0].input_ids.clone();
    let logits = |engine: &Engine| engine.prompt_logits(&prompt).expect("prefill");
    assert_eq!(logits(&load(tmp.path())), logits(&load(&src)));
}
