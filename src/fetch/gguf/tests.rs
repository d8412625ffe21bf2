//! Tests of the build-time GGUF checks, on hand-assembled GGUF files.

use super::*;

/// A GGUF v3 file: string, integer and string-array metadata, then `tensors` as (name, row length, ggml type id),
/// each one row, data zero-filled after the 32-byte-aligned header up to the last tensor's end.
pub(crate) fn gguf_bytes(meta: &[(&str, Meta)], tensors: &[(&str, u64, u32)]) -> Vec<u8> {
    let s = |b: &mut Vec<u8>, v: &str| {
        b.extend((v.len() as u64).to_le_bytes());
        b.extend(v.as_bytes());
    };
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend((tensors.len() as u64).to_le_bytes());
    b.extend((meta.len() as u64).to_le_bytes());
    for (key, value) in meta {
        s(&mut b, key);
        match value {
            Meta::Str(v) => {
                b.extend(8u32.to_le_bytes());
                s(&mut b, v);
            }
            Meta::U16(v) => {
                b.extend(2u32.to_le_bytes());
                b.extend(v.to_le_bytes());
            }
            Meta::U32(v) => {
                b.extend(4u32.to_le_bytes());
                b.extend(v.to_le_bytes());
            }
            Meta::Strs(items) => {
                b.extend(9u32.to_le_bytes());
                b.extend(8u32.to_le_bytes());
                b.extend((items.len() as u64).to_le_bytes());
                for item in *items {
                    s(&mut b, item);
                }
            }
        }
    }
    let (mut offset, mut end) = (0u64, 0u64);
    for (name, row, ty) in tensors {
        s(&mut b, name);
        b.extend(1u32.to_le_bytes());
        b.extend(row.to_le_bytes());
        b.extend(ty.to_le_bytes());
        b.extend(offset.to_le_bytes());
        let bytes = GgmlType::from_id(*ty).map_or(0, |t| t.bytes_for(*row).unwrap());
        end = offset + bytes;
        offset = end.next_multiple_of(32);
    }
    // The file ends where the last tensor does, as writers leave it.
    b.resize(b.len().next_multiple_of(32) + end as usize, 0);
    b
}

#[derive(Clone, Copy)]
pub(crate) enum Meta {
    Str(&'static str),
    U16(u16),
    U32(u32),
    Strs(&'static [&'static str]),
}

fn llama_q8() -> Vec<u8> {
    gguf_bytes(
        &[
            ("general.architecture", Meta::Str("llama")),
            ("general.file_type", Meta::U32(7)),
        ],
        &[
            ("token_embd.weight", 64, 8),
            ("blk.0.attn_q.weight", 64, 8),
            ("blk.0.attn_norm.weight", 64, 0),
        ],
    )
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// The set as packaged with a `tokenizer.json`: the header's tokenizer keys do not matter.
fn read_dir_set(dir: &Path, names: &[&str]) -> Result<Option<GgufFacts>, GgufError> {
    read_dir_set_with(dir, names, true)
}

fn read_dir_set_with(
    dir: &Path,
    names: &[&str],
    tokenizer_json: bool,
) -> Result<Option<GgufFacts>, GgufError> {
    let hosts: Vec<PathBuf> = names.iter().map(|n| dir.join(n)).collect();
    let files: Vec<(&str, &Path)> = names
        .iter()
        .copied()
        .zip(hosts.iter().map(PathBuf::as_path))
        .collect();
    read_set(&files, tokenizer_json)
}

#[test]
fn a_shard_set_is_complete_one_set_and_ordered() {
    let set = |p: &[&'static str]| shard_set(p.iter().copied());
    assert_eq!(set(&["m.gguf", "tokenizer.json"]), Ok(vec!["m.gguf"]));
    assert_eq!(set(&["config.json"]), Ok(vec![]));
    assert_eq!(
        set(&["sub/a.gguf", "sub/b.gguf", "m.gguf"]),
        Ok(vec!["m.gguf"])
    );
    assert_eq!(
        set(&["m-00002-of-00002.gguf", "m-00001-of-00002.gguf"]),
        Ok(vec!["m-00001-of-00002.gguf", "m-00002-of-00002.gguf"])
    );
    assert_eq!(
        set(&["m-00001-of-00001.gguf"]),
        Ok(vec!["m-00001-of-00001.gguf"])
    );

    let err = set(&["m-00001-of-00003.gguf", "m-00003-of-00003.gguf"]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "the GGUF shards `m-*-of-00003.gguf` are incomplete: m-00002-of-00003.gguf is missing"
    );
    let err = set(&["Q4-00001-of-00003.gguf"]).unwrap_err();
    assert!(
        err.to_string()
            .contains("Q4-00002-of-00003.gguf, Q4-00003-of-00003.gguf are missing"),
        "{err}"
    );

    for mixed in [
        &["a-Q4_K_M.gguf", "a-Q8_0.gguf"][..],
        &[
            "a-00001-of-00002.gguf",
            "a-00002-of-00002.gguf",
            "mmproj.gguf",
        ],
        &["a-00001-of-00002.gguf", "b-00002-of-00002.gguf"],
        &["a-00001-of-00002.gguf", "a-00002-of-00003.gguf"],
        &["a-00001-of-00001.gguf", "a-00002-of-00001.gguf"],
    ] {
        match set(mixed).unwrap_err() {
            ShardSetError::Conflicting { files } => {
                let mut want: Vec<String> = mixed.iter().map(|s| s.to_string()).collect();
                want.sort();
                assert_eq!(files, want);
            }
            other => panic!("{other}"),
        }
    }
}

#[test]
fn a_gguf_set_tells_its_architecture_quantization_and_tensor_types() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "m.gguf", &llama_q8());
    let facts = read_dir_set(dir.path(), &["m.gguf"]).unwrap().unwrap();
    assert_eq!(facts.architecture, "llama");
    assert_eq!(facts.quantization, "Q8_0");
    assert_eq!(
        facts.tensor_types,
        BTreeMap::from([(GgmlType::F32, 1), (GgmlType::Q8_0, 2)])
    );
    assert_eq!(read_dir_set(dir.path(), &[]).unwrap(), None);
}

/// Without `general.file_type` (old converters), the type most tensors have names the
/// quantization, as llama.cpp guesses it.
#[test]
fn without_a_file_type_the_commonest_tensor_type_names_the_quantization() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = gguf_bytes(
        &[("general.architecture", Meta::Str("qwen2"))],
        &[("a", 256, 12), ("b", 256, 12), ("c", 64, 0), ("d", 256, 14)],
    );
    write(dir.path(), "m.gguf", &bytes);
    let facts = read_dir_set(dir.path(), &["m.gguf"]).unwrap().unwrap();
    assert_eq!(facts.quantization, "Q4_K");
}

#[test]
fn shards_agree_with_their_split_keys_and_count_tensors_over_the_set() {
    let dir = tempfile::tempdir().unwrap();
    let shard = |no: u16, count: u16, meta: bool| {
        let mut kv = vec![
            ("split.no", Meta::U16(no)),
            ("split.count", Meta::U16(count)),
        ];
        if meta {
            kv.insert(0, ("general.architecture", Meta::Str("mistral")));
            kv.insert(1, ("general.file_type", Meta::U32(15)));
        }
        let name: &'static str = if meta {
            "first.weight"
        } else {
            "second.weight"
        };
        gguf_bytes(&kv, &[(name, 256, 12)])
    };
    let names = ["m-00001-of-00002.gguf", "m-00002-of-00002.gguf"];
    write(dir.path(), names[0], &shard(0, 2, true));
    write(dir.path(), names[1], &shard(1, 2, false));
    let facts = read_dir_set(dir.path(), &names).unwrap().unwrap();
    assert_eq!(facts.architecture, "mistral");
    assert_eq!(facts.quantization, "Q4_K_M");
    assert_eq!(facts.tensor_types, BTreeMap::from([(GgmlType::Q4_K, 2)]));

    write(dir.path(), names[1], &shard(1, 3, false));
    let err = read_dir_set(dir.path(), &names).unwrap_err().to_string();
    assert!(
        err.ends_with(
            "m-00002-of-00002.gguf: `split.count` is 3, but the file name says the set has 2 shards"
        ),
        "{err}"
    );
    write(dir.path(), names[1], &shard(0, 2, false));
    let err = read_dir_set(dir.path(), &names).unwrap_err().to_string();
    assert!(
        err.contains("`split.no` is 0 (counting from 0), but the file name says it is shard 2"),
        "{err}"
    );

    // A shard renamed to look whole is still one of several.
    write(dir.path(), "whole.gguf", &shard(0, 2, true));
    let err = read_dir_set(dir.path(), &["whole.gguf"])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("whole.gguf: `split.count` is 2, but the file name says the set has 1"),
        "{err}"
    );
}

#[test]
fn an_architecture_the_server_does_not_serve_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = gguf_bytes(
        &[("general.architecture", Meta::Str("gemma3"))],
        &[("a", 32, 0)],
    );
    let path = write(dir.path(), "g.gguf", &bytes);
    let err = read_dir_set(dir.path(), &["g.gguf"])
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        format!(
            "{}: `general.architecture` is `gemma3`, which appliance-server does not serve (it serves llama, mistral, qwen2, qwen3)",
            path.display()
        )
    );
    write(dir.path(), "n.gguf", &gguf_bytes(&[], &[("a", 32, 0)]));
    let err = read_dir_set(dir.path(), &["n.gguf"])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("n.gguf: `general.architecture` is missing"),
        "{err}"
    );
}

#[test]
fn a_truncated_file_or_an_unknown_tensor_type_is_refused_naming_file_and_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let full = llama_q8();
    let path = write(dir.path(), "m.gguf", &full[..full.len() - 1]);
    let err = read_dir_set(dir.path(), &["m.gguf"])
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with(&format!(
            "{} is truncated: tensor `blk.0.attn_norm.weight` ends at byte {}, the file has {}",
            path.display(),
            full.len(),
            full.len() - 1
        )),
        "{err}"
    );
    let bytes = gguf_bytes(
        &[("general.architecture", Meta::Str("llama"))],
        &[("blk.0.attn_q.weight", 32, 99)],
    );
    write(dir.path(), "m.gguf", &bytes);
    let err = read_dir_set(dir.path(), &["m.gguf"])
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        format!(
            "{}: tensor `blk.0.attn_q.weight`: unknown ggml type 99",
            path.display()
        )
    );
}

/// Without `tokenizer.json` beside it, a GGUF must carry a tokenizer the server rebuilds: a
/// `tokenizer.ggml.model` it knows and a vocabulary. Anything else is refused naming the file and
/// the key; with `tokenizer.json` the keys do not matter.
#[test]
fn without_tokenizer_json_the_metadata_must_describe_a_tokenizer_the_server_builds() {
    let dir = tempfile::tempdir().unwrap();
    let with = |tokenizer: &[(&'static str, Meta)]| {
        let mut meta = vec![("general.architecture", Meta::Str("llama"))];
        meta.extend_from_slice(tokenizer);
        gguf_bytes(&meta, &[("a", 32, 0)])
    };
    let model = |v| (TOKENIZER_MODEL, Meta::Str(v));
    let tokens = |v| (TOKENIZER_TOKENS, Meta::Strs(v));
    for ok in [
        with(&[model("gpt2"), tokens(&["a", "b"])]),
        with(&[model("llama"), tokens(&["<unk>"])]),
    ] {
        write(dir.path(), "m.gguf", &ok);
        let facts = read_dir_set_with(dir.path(), &["m.gguf"], false).unwrap();
        assert_eq!(facts.unwrap().architecture, "llama");
    }
    for (bytes, want) in [
        (with(&[]), "`tokenizer.ggml.model` is missing"),
        (
            with(&[model("bert"), tokens(&["a"])]),
            "`tokenizer.ggml.model` is `bert`, a vocabulary the server does not rebuild (it rebuilds gpt2, llama)",
        ),
        (
            with(&[(TOKENIZER_MODEL, Meta::U32(1)), tokens(&["a"])]),
            "`tokenizer.ggml.model` is a u32, not a string",
        ),
        (with(&[model("gpt2")]), "`tokenizer.ggml.tokens` is missing"),
        (
            with(&[model("gpt2"), tokens(&[])]),
            "`tokenizer.ggml.tokens` is empty",
        ),
        (
            with(&[model("gpt2"), (TOKENIZER_TOKENS, Meta::Str("a"))]),
            "`tokenizer.ggml.tokens` is a string, not an array of strings",
        ),
    ] {
        let path = write(dir.path(), "m.gguf", &bytes);
        let err = read_dir_set_with(dir.path(), &["m.gguf"], false)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!(
                "{}: no `tokenizer.json` is packaged beside this GGUF, and the server cannot build the tokenizer from its metadata: {want}\n",
                path.display()
            )),
            "{err}"
        );
        assert!(
            err.contains("tokenizer.json to `model.files`")
                && err.contains("`tokenizer = { hf = \"org/repo\" }`"),
            "{err}"
        );
        // Beside a tokenizer.json the server never reads them.
        read_dir_set_with(dir.path(), &["m.gguf"], true).unwrap();
    }

    // A split set: the first shard holds the metadata, the others need none.
    let names = ["m-00001-of-00002.gguf", "m-00002-of-00002.gguf"];
    let shard = |no: u16, tokenizer: bool| {
        let mut kv = vec![("split.no", Meta::U16(no)), ("split.count", Meta::U16(2))];
        if no == 0 {
            kv.insert(0, ("general.architecture", Meta::Str("qwen2")));
        }
        if tokenizer {
            kv.push(model("gpt2"));
            kv.push(tokens(&["a"]));
        }
        gguf_bytes(&kv, &[(if no == 0 { "a" } else { "b" }, 32, 0)])
    };
    write(dir.path(), names[0], &shard(0, true));
    write(dir.path(), names[1], &shard(1, false));
    read_dir_set_with(dir.path(), &names, false).unwrap();
    write(dir.path(), names[0], &shard(0, false));
    write(dir.path(), names[1], &shard(1, true));
    let err = read_dir_set_with(dir.path(), &names, false)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("m-00001-of-00002.gguf: no `tokenizer.json`")
            && err.contains("`tokenizer.ggml.model` is missing"),
        "{err}"
    );
}

/// One list: the vocabularies the builder lets through without tokenizer.json are the ones the
/// server's GGUF tokenizer rebuilds (`if model != "gpt2" && model != "llama"`).
#[test]
fn the_served_tokenizer_models_are_the_servers() {
    let source = include_str!("../../../runtime/src/checkpoint/gguf_tokenizer.rs");
    let line = source
        .lines()
        .find(|l| l.trim_start().starts_with("if model != "))
        .expect("from_gguf's check of `tokenizer.ggml.model`");
    let mut server: Vec<&str> = line.split('"').skip(1).step_by(2).collect();
    server.sort_unstable();
    let mut ours = SERVED_TOKENIZER_MODELS.to_vec();
    ours.sort_unstable();
    assert_eq!(ours, server);
}

/// One list: the architectures the builder lets through are the ones the server's GGUF loader
/// maps (`"llama" => Architecture::Llama`, ...).
#[test]
fn the_served_architectures_are_the_servers() {
    let source = include_str!("../../../runtime/src/checkpoint/gguf.rs");
    let mut server: Vec<&str> = source
        .lines()
        .filter(|l| l.contains("=> Architecture::"))
        .filter_map(|l| l.trim().strip_prefix('"')?.split_once('"').map(|(n, _)| n))
        .collect();
    server.sort_unstable();
    let mut ours = SERVED_ARCHITECTURES.to_vec();
    ours.sort_unstable();
    assert_eq!(ours, server);
}

/// The set is checked on names in the layout check that path and Hub sources share, beside a
/// `config.json` too (the server prefers GGUF to it).
#[test]
fn the_layout_check_refuses_an_incomplete_or_mixed_gguf_set() {
    use crate::fetch::{Layout, model_layout};
    let layout = |files: &[&str]| model_layout(files.iter().copied());
    assert_eq!(
        layout(&[
            "m-00001-of-00002.gguf",
            "m-00002-of-00002.gguf",
            "tokenizer.json"
        ]),
        Layout::Ok
    );
    match layout(&["m-00002-of-00002.gguf", "tokenizer.json"]) {
        Layout::GgufShards(ShardSetError::MissingShards { missing, .. }) => {
            assert_eq!(missing, ["m-00001-of-00002.gguf"]);
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        layout(&["config.json", "a.gguf", "b.gguf"]),
        Layout::GgufShards(ShardSetError::Conflicting { .. })
    ));
}
