//! The builder's quantization against llama.cpp's, without llama.cpp.
//!
//! Why: the builder promises GGUF files tensor for tensor identical to what
//! `convert_hf_to_gguf.py --outtype f32` + `llama-quantize` (no importance matrix) would write, and
//! a port of floating-point C can drift by one rounding without any other test noticing.
//! `scripts/record-llamacpp-quantize.py` ran llama.cpp on these checkpoints once and recorded, in
//! `tests/data/llama-quantize/<case>.json`, every tensor's name, type, dims and sha256 and every
//! metadata value and the keys' order; this test converts the same checkpoints with
//! [`Plan`] for Q4_K_M, Q6_K and Q8_0 and compares.
//!
//! - `llama-gqa`, `mistral`, `qwen2-tied`, `qwen3`: the reference fixtures. Their 64-element rows
//!   are shorter than a K-quant block, so they exercise `llama-quantize`'s fallbacks (Q4_K → Q5_0,
//!   Q6_K → Q8_0, F16 for llama-gqa's 176-element rows).
//! - `wide-llama`: generated here (and bit for bit by the script), with rows that are multiples
//!   of 256, so Q4_K and Q6_K blocks and the Q4_K_M layer mixture are exercised, including an
//!   all-zero row and a constant row (the quantizers' degenerate branches).
//!
//! The recordings also hold digests of the inputs (the tokenizer and config files and the weights'
//! values); when an input changed, the test says to regenerate rather than report a difference.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use appliance_gguf::convert::{FileType, Options, Plan};
use appliance_gguf::quant::{self, TensorType};
use appliance_gguf::read::{Array, Header, Value};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde::Deserialize;
use sha2::{Digest, Sha256};

const REGENERATE: &str = "regenerate with scripts/record-llamacpp-quantize.py";

/// Keys that name the checkpoint: the converter derives them from the directory name and the
/// parameter count, the builder writes its own name and no size label. Not recorded.
const SKIPPED_KEYS: [&str; 2] = ["general.name", "general.size_label"];

/// Input files the converters read besides the weights (the script's `INPUT_FILES`).
const INPUT_FILES: [&str; 7] = [
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "tokenizer.model",
];

#[derive(Debug, Deserialize)]
struct Recording {
    case: String,
    llama_cpp: BTreeMap<String, String>,
    source: SourceRecord,
    types: BTreeMap<String, TypeRecord>,
}

#[derive(Debug, Deserialize)]
struct SourceRecord {
    files: BTreeMap<String, String>,
    safetensors_sha256: String,
}

#[derive(Debug, Deserialize)]
struct TypeRecord {
    metadata: BTreeMap<String, MetaRecord>,
    metadata_order: Vec<String>,
    /// name, ggml type name, dims (ggml order), sha256 of the data.
    tensors: Vec<(String, String, Vec<u64>, String)>,
}

/// A scalar or string by value, an array by length and digest.
#[derive(Debug, Deserialize)]
struct MetaRecord {
    #[serde(rename = "type")]
    ty: String,
    value: Option<serde_json::Value>,
    len: Option<usize>,
    sha256: Option<String>,
}

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixture(path: &str) -> PathBuf {
    let dir = manifest_dir().join(path);
    assert!(
        dir.join("config.json").is_file(),
        "fixture checkpoint not found at {}: the tests need `shared/fixtures` checked out beside \
         the repository",
        dir.display()
    );
    dir
}

fn hex(digest: impl AsRef<[u8]>) -> String {
    digest.as_ref().iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn sha256(data: &[u8]) -> String {
    hex(Sha256::digest(data))
}

fn load_recording(case: &str) -> Recording {
    let path = manifest_dir()
        .join("tests/data/llama-quantize")
        .join(format!("{case}.json"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} ({REGENERATE})", path.display()));
    let rec: Recording = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{}: {e} ({REGENERATE})", path.display()));
    assert_eq!(rec.case, case, "{}", path.display());
    rec
}

/// The script's `safetensors_digest`: the weights' names, dtypes, shapes and bytes, whatever the
/// safetensors header's layout (Python and the `safetensors` crate order data differently).
fn safetensors_digest(dir: &Path) -> String {
    let mut parts: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.starts_with("model") && name.ends_with(".safetensors")
        })
        .collect();
    parts.sort();
    let mut h = Sha256::new();
    for part in parts {
        let bytes = std::fs::read(&part).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let mut tensors = st.tensors();
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, view) in tensors {
            h.update(format!("{name} {:?} {:?}\n", view.dtype(), view.shape()).as_bytes());
            h.update(view.data());
        }
    }
    hex(h.finalize())
}

/// Differences between the checkpoint in `dir` and the one the recording was made from.
fn source_differences(dir: &Path, rec: &SourceRecord) -> Vec<String> {
    let mut out = Vec::new();
    for name in INPUT_FILES {
        let path = dir.join(name);
        let actual = path
            .is_file()
            .then(|| sha256(&std::fs::read(&path).unwrap()));
        if actual.as_ref() != rec.files.get(name) {
            out.push(format!(
                "input {name}: sha256 {} here, {} recorded",
                actual.as_deref().unwrap_or("(absent)"),
                rec.files.get(name).map_or("(absent)", |s| s.as_str())
            ));
        }
    }
    let weights = safetensors_digest(dir);
    if weights != rec.safetensors_sha256 {
        out.push(format!(
            "weights: sha256 {weights} here, {} recorded",
            rec.safetensors_sha256
        ));
    }
    out
}

/// The script's canonical array encoding, `json.dumps(list, ensure_ascii=False,
/// separators=(",", ":"))`: serde_json's compact output is the same for strings, integers and
/// booleans. Float arrays have none (the two float printers differ) and are never recorded.
fn canonical_array(a: &Array) -> Option<String> {
    let json = match a {
        Array::U8(v) => serde_json::to_string(v),
        Array::I8(v) => serde_json::to_string(v),
        Array::U16(v) => serde_json::to_string(v),
        Array::I16(v) => serde_json::to_string(v),
        Array::U32(v) => serde_json::to_string(v),
        Array::I32(v) => serde_json::to_string(v),
        Array::U64(v) => serde_json::to_string(v),
        Array::I64(v) => serde_json::to_string(v),
        Array::Bool(v) => serde_json::to_string(v),
        Array::String(v) => serde_json::to_string(v),
        Array::F32(_) | Array::F64(_) => return None,
    };
    Some(json.unwrap())
}

fn short(v: &Value) -> String {
    let s = format!("{v:?}");
    if s.len() > 120 {
        format!("{}…", s.chars().take(120).collect::<String>())
    } else {
        s
    }
}

/// Why `value` is not what `rec` recorded, if it is not.
fn metadata_difference(value: &Value, rec: &MetaRecord) -> Option<String> {
    if value.type_name() != rec.ty {
        return Some(format!(
            "type {} here, {} recorded ({})",
            value.type_name(),
            rec.ty,
            short(value)
        ));
    }
    if let Value::Array(a) = value {
        let digest = canonical_array(a).map(|j| sha256(j.as_bytes()));
        return (Some(a.len()) != rec.len || digest != rec.sha256).then(|| {
            format!(
                "{} elements with sha256 {} here, {:?} with {:?} recorded",
                a.len(),
                digest.as_deref().unwrap_or("(float array)"),
                rec.len,
                rec.sha256
            )
        });
    }
    let Some(want) = &rec.value else {
        return Some("no value recorded".into());
    };
    let same = match *value {
        Value::String(ref s) => want.as_str() == Some(s.as_str()),
        Value::Bool(b) => want.as_bool() == Some(b),
        // The recorded number is the f32's exact value; compare bits, not decimal renderings.
        Value::F32(f) => want.as_f64().map(|w| (w as f32).to_bits()) == Some(f.to_bits()),
        Value::F64(f) => want.as_f64().map(f64::to_bits) == Some(f.to_bits()),
        _ => value.as_i64().is_some() && want.as_i64() == value.as_i64(),
    };
    (!same).then(|| format!("{} here, {want} recorded", short(value)))
}

/// Converts `dir` to `ty` in memory; the file's bytes.
fn convert(dir: &Path, ty: FileType) -> Vec<u8> {
    let options = Options {
        file_type: ty,
        name: "test".into(),
    };
    let plan = Plan::new(dir, &options)
        .unwrap_or_else(|e| panic!("Plan::new({}, {}): {e}", dir.display(), ty.name()));
    let (bytes, _) = plan
        .write(Vec::new())
        .unwrap_or_else(|e| panic!("Plan::write({}, {}): {e}", dir.display(), ty.name()));
    bytes
}

/// Every difference between our `ty` file of `dir` and llama-quantize's recording of it.
fn differences(bytes: &[u8], rec: &TypeRecord) -> Vec<String> {
    let header = Header::from_reader(bytes, bytes.len() as u64, Path::new("(converted)"))
        .unwrap_or_else(|e| panic!("the converted file does not read back: {e}"));
    let mut out = Vec::new();

    // Metadata: values, keys we write that llama-quantize does not, and the keys' order.
    let ours: Vec<&(String, Value)> = header
        .metadata
        .iter()
        .filter(|(k, _)| !SKIPPED_KEYS.contains(&k.as_str()))
        .collect();
    for (key, want) in &rec.metadata {
        match ours.iter().find(|(k, _)| k == key) {
            None => out.push(format!(
                "metadata {key}: missing (llama-quantize writes {want:?})"
            )),
            Some((_, v)) => {
                if let Some(d) = metadata_difference(v, want) {
                    out.push(format!("metadata {key}: {d}"));
                }
            }
        }
    }
    for (key, v) in &ours {
        if !rec.metadata.contains_key(key) {
            out.push(format!(
                "metadata {key}: {} here, llama-quantize does not write it",
                short(v)
            ));
        }
    }
    let order: Vec<&str> = ours.iter().map(|(k, _)| k.as_str()).collect();
    if order != rec.metadata_order {
        out.push(format!(
            "metadata order:\n      here:     {order:?}\n      recorded: {:?}",
            rec.metadata_order
        ));
    }

    // Tensors, in file order.
    let tensors: Vec<(String, String, Vec<u64>, String)> = header
        .tensors
        .iter()
        .map(|t| {
            let start = (header.data_offset + t.offset) as usize;
            let data = &bytes[start..start + t.bytes() as usize];
            (
                t.name.clone(),
                t.ggml_type.name().to_string(),
                t.dims.clone(),
                sha256(data),
            )
        })
        .collect();
    let names = |ts: &[(String, String, Vec<u64>, String)]| -> Vec<String> {
        ts.iter().map(|t| t.0.clone()).collect()
    };
    if names(&tensors) != names(&rec.tensors) {
        out.push(format!(
            "tensor order:\n      here:     {:?}\n      recorded: {:?}",
            names(&tensors),
            names(&rec.tensors)
        ));
    }
    for want in &rec.tensors {
        let Some(got) = tensors.iter().find(|t| t.0 == want.0) else {
            out.push(format!("tensor {}: missing", want.0));
            continue;
        };
        if got.1 != want.1 || got.2 != want.2 {
            out.push(format!(
                "tensor {}: {} {:?} here, {} {:?} recorded",
                want.0, got.1, got.2, want.1, want.2
            ));
        } else if got.3 != want.3 {
            out.push(format!(
                "tensor {}: {} {:?}: data differ (sha256 {} here, {} recorded)",
                want.0, got.1, got.2, got.3, want.3
            ));
        }
    }
    let recorded: BTreeSet<&str> = rec.tensors.iter().map(|t| t.0.as_str()).collect();
    for got in &tensors {
        if !recorded.contains(got.0.as_str()) {
            out.push(format!(
                "tensor {}: {} {:?} here, llama-quantize does not write it",
                got.0, got.1, got.2
            ));
        }
    }
    out
}

/// Converts `dir` to every recorded type and fails with every difference from llama-quantize.
fn check(case: &str, dir: &Path) {
    let rec = load_recording(case);
    let changed = source_differences(dir, &rec.source);
    assert!(
        changed.is_empty(),
        "{case}: the checkpoint is not the one llama-quantize was run on; {REGENERATE}\n  {}",
        changed.join("\n  ")
    );
    let recorded: BTreeSet<&str> = rec.types.keys().map(String::as_str).collect();
    let offered: BTreeSet<&str> = FileType::ALL.iter().map(|t| t.name()).collect();
    assert_eq!(
        recorded, offered,
        "{case}: recorded types are not the ones the builder offers; {REGENERATE}"
    );
    let mut report = String::new();
    for ty in FileType::ALL {
        let diffs = differences(&convert(dir, ty), &rec.types[ty.name()]);
        if !diffs.is_empty() {
            let _ = writeln!(
                report,
                "{case} {}: {} difference(s) from llama-quantize {:?}:",
                ty.name(),
                diffs.len(),
                rec.llama_cpp
            );
            for d in diffs {
                let _ = writeln!(report, "  {d}");
            }
        }
    }
    assert!(report.is_empty(), "{report}");
}

#[test]
fn llama_gqa_matches_llama_quantize() {
    check(
        "llama-gqa",
        &fixture("../../shared/fixtures/models/llama-gqa"),
    );
}

#[test]
fn mistral_matches_llama_quantize() {
    check("mistral", &fixture("../../shared/fixtures/models/mistral"));
}

#[test]
fn qwen2_tied_matches_llama_quantize() {
    check(
        "qwen2-tied",
        &fixture("../../shared/fixtures/models/qwen2-tied"),
    );
}

#[test]
fn qwen3_matches_llama_quantize() {
    check("qwen3", &fixture("../runtime/tests/fixtures/qwen3"));
}

#[test]
fn wide_llama_matches_llama_quantize() {
    let dir = tempfile::tempdir().unwrap();
    let model = wide_llama(dir.path());
    check("wide-llama", &model);
}

/// Same input, same bytes: the builder's content addressing relies on it. Q4_K_M, whose files
/// hold the most types (F32, Q4_K, Q6_K); two fresh plans, so nothing is reused between them.
#[test]
fn conversion_is_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let model = wide_llama(dir.path());
    let (a, b) = (
        convert(&model, FileType::Q4KM),
        convert(&model, FileType::Q4KM),
    );
    assert!(a == b, "two conversions of the same checkpoint differ");
}

/// `Plan::write` splits each tensor's rows among `available_parallelism` threads; that is only
/// invisible in the output if quantizing rows in any grouping gives the bytes of quantizing them
/// all at once. Checked here with the groupings 1 to 7 threads would make, on wide-llama's values.
#[test]
fn quantized_bytes_do_not_depend_on_how_rows_are_split() {
    let (cols, rows) = (512, 37);
    let values: Vec<f32> = wide_values(3, &[rows, cols]);
    for ty in [
        TensorType::F16,
        TensorType::Q8_0,
        TensorType::Q5_0,
        TensorType::Q5_1,
        TensorType::Q4K,
        TensorType::Q6K,
    ] {
        let mut whole = Vec::new();
        quant::quantize(ty, &values, &mut whole);
        for threads in 1..=7 {
            let per = rows.div_ceil(threads);
            let mut split = Vec::new();
            for chunk in values.chunks(per * cols) {
                quant::quantize(ty, chunk, &mut split);
            }
            assert!(
                split == whole,
                "{}: {threads} groups of rows differ",
                ty.name()
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// wide-llama: keep in step with the script's WIDE_CONFIG, wide_shapes, wide_values and
// write_wide_llama.

/// `config.json`, byte for byte as the script writes it (the recording holds its sha256).
const WIDE_CONFIG: &str = r#"{
  "architectures": ["LlamaForCausalLM"],
  "hidden_size": 256,
  "intermediate_size": 512,
  "max_position_embeddings": 512,
  "model_type": "llama",
  "num_attention_heads": 4,
  "num_hidden_layers": 8,
  "num_key_value_heads": 2,
  "rms_norm_eps": 1e-05,
  "rope_theta": 10000.0,
  "tie_word_embeddings": false,
  "torch_dtype": "float32",
  "vocab_size": 512
}
"#;

/// Copied from the llama-gqa fixture, whose vocabulary has wide-llama's 512 tokens.
const WIDE_COPIED: [&str; 3] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
];

/// HF tensor names and shapes (rows first), from [`WIDE_CONFIG`]'s sizes.
fn wide_shapes() -> BTreeMap<String, Vec<usize>> {
    let (hidden, ff, vocab, layers, heads, kv_heads) = (256, 512, 512, 8, 4, 2);
    let kv = hidden / heads * kv_heads;
    let mut shapes = BTreeMap::new();
    shapes.insert("model.embed_tokens.weight".into(), vec![vocab, hidden]);
    shapes.insert("model.norm.weight".into(), vec![hidden]);
    shapes.insert("lm_head.weight".into(), vec![vocab, hidden]);
    for n in 0..layers {
        let p = format!("model.layers.{n}.");
        for (name, shape) in [
            ("input_layernorm.weight", vec![hidden]),
            ("post_attention_layernorm.weight", vec![hidden]),
            ("self_attn.q_proj.weight", vec![hidden, hidden]),
            ("self_attn.k_proj.weight", vec![kv, hidden]),
            ("self_attn.v_proj.weight", vec![kv, hidden]),
            ("self_attn.o_proj.weight", vec![hidden, hidden]),
            ("mlp.gate_proj.weight", vec![ff, hidden]),
            ("mlp.up_proj.weight", vec![ff, hidden]),
            ("mlp.down_proj.weight", vec![hidden, ff]),
        ] {
            shapes.insert(format!("{p}{name}"), shape);
        }
    }
    shapes
}

/// The values of tensor number `t` (in name order). Integer hashing, then only conversions that
/// are exact or round to nearest even in numpy and Rust alike (i64 → f32, then a power-of-two
/// scale; for norms one f32 addition), so the script's weights and these are the same bits
/// without committing 20 MB of them.
fn wide_values(t: u64, shape: &[usize]) -> Vec<f32> {
    let scale_2d = f32::from_bits((127 - 31) << 23); // 2^-31
    let scale_1d = f32::from_bits((127 - 30) << 23); // 2^-30
    let n: usize = shape.iter().product();
    (0..n as u64)
        .map(|i| {
            let h = (i * 2_654_435_761 + t * 40_503 + 12_345) & 0xFFFF_FFFF;
            let k = (h >> 8) as i64 - (1 << 23);
            match shape {
                [_] => 1.0f32 + k as f32 * scale_1d,
                _ => {
                    let row = (i / shape[1] as u64) as i64;
                    (k * (1 + row % 7)) as f32 * scale_2d
                }
            }
        })
        .collect()
}

/// Writes the wide-llama checkpoint into `parent/wide-llama` and returns that directory.
fn wide_llama(parent: &Path) -> PathBuf {
    let dir = parent.join("wide-llama");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("config.json"), WIDE_CONFIG).unwrap();
    let from = fixture("../../shared/fixtures/models/llama-gqa");
    for name in WIDE_COPIED {
        std::fs::copy(from.join(name), dir.join(name)).unwrap();
    }
    let shapes = wide_shapes();
    let mut data: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (t, (name, shape)) in shapes.iter().enumerate() {
        let mut values = wide_values(t as u64, shape);
        let cols = shape.last().copied().unwrap();
        match name.as_str() {
            // All-zero blocks (a zero scale must not divide by zero).
            "model.layers.0.self_attn.o_proj.weight" => values[..cols].fill(0.0),
            // Blocks whose max equals their min.
            "model.layers.1.mlp.up_proj.weight" => values[cols..2 * cols].fill(0.25),
            _ => {}
        }
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        data.push((name.clone(), shape.clone(), bytes));
    }
    let views = data.iter().map(|(name, shape, bytes)| {
        (
            name.as_str(),
            TensorView::new(Dtype::F32, shape.clone(), bytes).unwrap(),
        )
    });
    let file = safetensors::serialize(views, None).unwrap();
    std::fs::write(dir.join("model.safetensors"), file).unwrap();
    dir
}
