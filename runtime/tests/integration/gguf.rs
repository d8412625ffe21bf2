//! GGUF checkpoints through the batching engine, against the reference
//! fixtures and against llama.cpp.
//!
//! The GGUF files are written at test time by `scripts/fixture-to-gguf.py`
//! (gguf-py, llama.cpp's own writer library, with llama.cpp's tensor names,
//! q/k row order and metadata), so the repository carries no binary copies:
//! - F32 and F16 versions of every fixture must give transformers' greedy ids
//!   (F16 under `--dtype f16`; `auto` serves it as bf16 on AVX512_BF16 CPUs,
//!   checked against the F32 file's logits);
//! - Q8_0 versions must give the ids llama.cpp's `llama-server` gave on the
//!   very same bytes (recorded by `scripts/record-llamacpp-ids.py` into
//!   `tests/data/gguf/`; the file's sha256 is checked first, so the
//!   comparison is with llama.cpp on this file and not on a look-alike);
//! - broken files fail at startup naming the file and the key or tensor.

use crate::common;

use std::{
    ops::ControlFlow,
    path::{Path, PathBuf},
    process::Command,
};

use appliance_server::{
    cli,
    engine::{Engine, GenerateRequest, LoadOptions, SamplingParams},
    kernels::gemm::{WeightDType, bf16_dot},
    models::Kernels,
};
use common::{fixture_checkpoints, fixture_reference};
use serde_json::Value;
use sha2::{Digest, Sha256};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A model directory holding `fixture` as a GGUF of `ty`, with the
/// fixture's tokenizer files beside it (what an Ollama-style directory has).
fn gguf_dir(fixture: &Path, ty: &str, out: &Path) -> PathBuf {
    let name = fixture.file_name().and_then(|n| n.to_str()).expect("name");
    let dir = out.join(format!("{name}-{ty}"));
    std::fs::create_dir_all(&dir).expect("mkdir");
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        "generation_config.json",
    ] {
        if fixture.join(f).is_file() {
            std::fs::copy(fixture.join(f), dir.join(f)).expect("copy tokenizer file");
        }
    }
    let status = Command::new("python3")
        .arg(repo().join("scripts/fixture-to-gguf.py"))
        .arg(fixture)
        .arg(dir.join("model.gguf"))
        .args(["--type", ty])
        .status()
        .expect("run scripts/fixture-to-gguf.py (needs python3 with gguf-py)");
    assert!(status.success(), "fixture-to-gguf.py {name} {ty}: {status}");
    dir
}

fn load(dir: &Path, dtype: cli::DType) -> Engine {
    let options = LoadOptions {
        device: cli::Device::Cpu,
        dtype,
        max_model_len: None,
        candle_ops: false,
        threads: None,
    };
    Engine::load(dir, options).unwrap_or_else(|e| panic!("load {}: {e:?}", dir.display()))
}

fn greedy(engine: &Engine, prompt: &[u32], max_new_tokens: usize) -> Vec<u32> {
    let request = GenerateRequest {
        prompt: prompt.to_vec(),
        max_new_tokens,
        sampling: SamplingParams::greedy(),
        ignore_eos: false,
        ..Default::default()
    };
    engine
        .generate(&request, |_| ControlFlow::Continue(()))
        .expect("generate")
        .tokens
}

#[test]
fn f32_and_f16_gguf_versions_of_every_fixture_give_the_reference_ids() {
    let tmp = tempfile::tempdir().expect("tempdir");
    for fixture in fixture_checkpoints() {
        let reference = fixture_reference(&fixture);
        // `--dtype f16`: under `auto` a CPU with AVX512_BF16 serves an f16
        // file as bf16 (the next test).
        for (ty, dtype) in [("f32", cli::DType::F32), ("f16", cli::DType::F16)] {
            let dir = gguf_dir(&fixture, ty, tmp.path());
            let engine = load(&dir, dtype);
            for (i, case) in reference.cases.iter().enumerate() {
                let got = greedy(&engine, &case.input_ids, reference.max_new_tokens);
                assert_eq!(got, case.output_ids, "{} {ty} case {i}", fixture.display());
            }
        }
    }
}

/// `--dtype auto` on an f16 file: bf16 weights and the bf16 dot-product
/// kernel where this CPU has AVX512_BF16 (f16 kept elsewhere), with logits
/// within bf16's error of the f32 file's; a quantized file keeps its f16
/// KV cache either way.
#[test]
fn auto_serves_f16_files_as_bf16_on_cpus_with_bf16_dot_products() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dot = bf16_dot::supported();
    for fixture in fixture_checkpoints() {
        let name = fixture.file_name().and_then(|n| n.to_str()).expect("name");
        let reference = fixture_reference(&fixture);
        let f32_engine = load(&gguf_dir(&fixture, "f32", tmp.path()), cli::DType::F32);
        let auto = load(&gguf_dir(&fixture, "f16", tmp.path()), cli::DType::Auto);
        let want = if dot {
            (WeightDType::Bf16, true)
        } else {
            (WeightDType::F16, false)
        };
        let Kernels::Cpu {
            weights, bf16_dot, ..
        } = auto.kernels()
        else {
            panic!("{name}: not the CPU kernels");
        };
        assert_eq!((weights, bf16_dot), want, "{name}");
        for (i, case) in reference.cases.iter().enumerate() {
            let a = f32_engine
                .prompt_logits(&case.input_ids)
                .expect("f32 logits");
            let b = auto.prompt_logits(&case.input_ids).expect("auto logits");
            let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
            let diff = a
                .iter()
                .zip(&b)
                .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            // Measured on the 2-core EPYC: bf16 0.040-0.119 on logits of
            // magnitude 4.2-6.6 (f16 weights: 0.004-0.015).
            assert!(
                diff <= 0.05 * scale,
                "{name} case {i}: logits differ by {diff} (largest {scale})"
            );
        }
        if name == "llama-gqa" {
            let q8 = load(&gguf_dir(&fixture, "q8_0", tmp.path()), cli::DType::Auto);
            assert!(
                matches!(
                    q8.kernels(),
                    Kernels::Cpu {
                        weights: WeightDType::F16,
                        bf16_dot: false,
                        ..
                    }
                ),
                "{:?}",
                q8.kernels()
            );
        }
    }
}

#[test]
fn q8_0_gguf_versions_give_the_ids_llama_cpp_gives_on_the_same_file() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/gguf");
    let mut checked = 0;
    for fixture in fixture_checkpoints() {
        let name = fixture.file_name().and_then(|n| n.to_str()).expect("name");
        let recorded = data.join(format!("{name}-q8_0.llamacpp.json"));
        let raw = std::fs::read(&recorded).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (record it with scripts/record-llamacpp-ids.py)",
                recorded.display()
            )
        });
        let recorded: Value = serde_json::from_slice(&raw).expect("recorded JSON");
        let dir = gguf_dir(&fixture, "q8_0", tmp.path());
        let bytes = std::fs::read(dir.join("model.gguf")).expect("read gguf");
        assert_eq!(
            Sha256::digest(&bytes)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>(),
            recorded["gguf_sha256"].as_str().expect("gguf_sha256"),
            "{name}: the Q8_0 file is not the one llama.cpp was run on"
        );
        // llama.cpp ran with an f32 KV cache and no flash attention
        // (`llama_server_args`): f32 here too, so only the weights differ
        // from float math.
        let engine = load(&dir, cli::DType::F32);
        for (i, case) in recorded["cases"]
            .as_array()
            .expect("cases")
            .iter()
            .enumerate()
        {
            let ids = |k: &str| -> Vec<u32> {
                case[k]
                    .as_array()
                    .expect("ids")
                    .iter()
                    .map(|v| v.as_u64().expect("id") as u32)
                    .collect()
            };
            let want = ids("output_ids");
            let got = greedy(&engine, &ids("input_ids"), want.len().max(1));
            assert_eq!(
                &got[..want.len().min(got.len())],
                &want[..],
                "{name} q8_0 case {i}"
            );
            checked += 1;
        }
    }
    assert!(checked > 0, "no recorded cases");
}

/// A GGUF directory with no `tokenizer_config.json` or `chat_template.jinja`
/// renders chats with the template stored in the file's metadata
/// (`tokenizer.chat_template`): the reference chat cases' prompt ids.
#[test]
fn the_chat_template_comes_from_gguf_metadata_when_no_file_has_one() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut checked = 0;
    for fixture in fixture_checkpoints() {
        let dir = gguf_dir(&fixture, "f32", tmp.path());
        for f in ["tokenizer_config.json", "chat_template.jinja"] {
            let _ = std::fs::remove_file(dir.join(f));
        }
        let engine = load(&dir, cli::DType::F32);
        for case in fixture_reference(&fixture)
            .cases
            .iter()
            .filter(|c| c.kind == "chat")
        {
            let ids = engine
                .encode_chat(&case.prompt, None, true)
                .unwrap_or_else(|e| panic!("{}: {e:?}", dir.display()));
            assert_eq!(ids, case.input_ids, "{}", dir.display());
            checked += 1;
        }
    }
    assert!(checked > 0, "no chat cases");
}

/// Runs the server binary on `dir` and returns its exit status and stderr.
fn start_server(dir: &Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_appliance-server"))
        .arg("--model")
        .arg(dir)
        .args(["--host", "127.0.0.1", "--port", "0", "--device", "cpu"])
        .output()
        .expect("run appliance-server");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_truncated_gguf_fails_at_startup_naming_the_file_and_tensor() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let fixture = &fixture_checkpoints()[0];
    let dir = gguf_dir(fixture, "f16", tmp.path());
    let path = dir.join("model.gguf");
    let len = std::fs::metadata(&path).expect("stat").len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open");
    f.set_len(len - 1000).expect("truncate");
    let (ok, stderr) = start_server(&dir);
    assert!(!ok, "a truncated file must not serve");
    assert!(stderr.contains(&path.display().to_string()), "{stderr}");
    assert!(
        stderr.contains("truncated") && stderr.contains("tensor"),
        "{stderr}"
    );
}

/// Rewrites one metadata string or tensor type of a GGUF with gguf-py.
fn patch_gguf(path: &Path, code: &str) {
    let script = format!(
        "import sys, gguf\nr = gguf.GGUFReader(sys.argv[1], 'r+')\n{code}\nr.data.flush()\n"
    );
    let status = Command::new("python3")
        .args(["-c", &script])
        .arg(path)
        .status()
        .expect("python3");
    assert!(status.success(), "patch {}", path.display());
}

/// An f16 GGUF of the first fixture, patched by `code`; the server must
/// refuse it at startup with the file's path and every one of `needles`.
fn assert_refused(code: &str, needles: &[&str]) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let fixture = &fixture_checkpoints()[0];
    let dir = gguf_dir(fixture, "f16", tmp.path());
    let path = dir.join("model.gguf");
    patch_gguf(&path, code);
    let (ok, stderr) = start_server(&dir);
    assert!(!ok, "a broken file must not serve");
    assert!(stderr.contains(&path.display().to_string()), "{stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "{needle:?} in {stderr}");
    }
}

#[test]
fn an_unsupported_architecture_fails_at_startup_naming_the_key() {
    // Same length as "llama"/"qwen2" so the header stays valid: "gpt2x".
    assert_refused(
        "f = r.fields['general.architecture']\nv = f.parts[f.data[0]]\nv[:] = list(b'gpt2x'[:len(v)].ljust(len(v), b'x'))",
        &["general.architecture", "gpt2x"],
    );
}

#[test]
fn an_unknown_block_type_fails_at_startup_naming_the_file_and_tensor() {
    assert_refused(
        "t = [t for t in r.tensors if t.name == 'blk.0.attn_q.weight'][0]\nt.field.parts[-2][:] = 99",
        &["blk.0.attn_q.weight", "GGML type 99"],
    );
}
