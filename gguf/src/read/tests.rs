//! Tests of the header reader: a file gguf-py wrote (tests/data/tiny.gguf, checked against
//! gguf-py's own reading of it) and hand-assembled files for each way a header can be wrong.

use std::path::Path;

use super::*;

const TINY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/tiny.gguf");
const TINY_JSON: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/tiny.json");

/// Assembles a GGUF file byte by byte, the way the format describes it.
struct Builder {
    version: u32,
    kv: Vec<u8>,
    n_kv: u64,
    tensors: Vec<u8>,
    n_tensors: u64,
    alignment: u64,
}

fn gstring(s: &str) -> Vec<u8> {
    let mut b = (s.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(s.as_bytes());
    b
}

impl Builder {
    fn new() -> Self {
        Self {
            version: 3,
            kv: Vec::new(),
            n_kv: 0,
            tensors: Vec::new(),
            n_tensors: 0,
            alignment: DEFAULT_ALIGNMENT,
        }
    }

    /// A metadata entry: the key, the type id, then `payload` as encoded.
    fn kv(mut self, key: &str, type_id: u32, payload: &[u8]) -> Self {
        self.kv.extend(gstring(key));
        self.kv.extend(type_id.to_le_bytes());
        self.kv.extend_from_slice(payload);
        self.n_kv += 1;
        self
    }

    fn str_kv(self, key: &str, value: &str) -> Self {
        self.kv(key, 8, &gstring(value))
    }

    fn u32_kv(self, key: &str, value: u32) -> Self {
        self.kv(key, 4, &value.to_le_bytes())
    }

    fn tensor(mut self, name: &str, dims: &[u64], type_id: u32, offset: u64) -> Self {
        self.tensors.extend(gstring(name));
        self.tensors.extend((dims.len() as u32).to_le_bytes());
        for d in dims {
            self.tensors.extend(d.to_le_bytes());
        }
        self.tensors.extend(type_id.to_le_bytes());
        self.tensors.extend(offset.to_le_bytes());
        self.n_tensors += 1;
        self
    }

    /// The file with `data` bytes of tensor data after the padded header.
    fn bytes(&self, data: u64) -> Vec<u8> {
        let mut b = MAGIC.to_vec();
        b.extend(self.version.to_le_bytes());
        b.extend(self.n_tensors.to_le_bytes());
        b.extend(self.n_kv.to_le_bytes());
        b.extend(&self.kv);
        b.extend(&self.tensors);
        let padded = (b.len() as u64).next_multiple_of(self.alignment);
        b.resize((padded + data) as usize, 0);
        b
    }
}

fn parse(bytes: &[u8]) -> Result<Header, ReadError> {
    Header::from_reader(bytes, bytes.len() as u64, Path::new("model.gguf"))
}

fn err(bytes: &[u8]) -> String {
    parse(bytes).unwrap_err().to_string()
}

#[test]
fn reads_what_gguf_py_wrote_as_gguf_py_reads_it() {
    let header = Header::read(Path::new(TINY)).unwrap();
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(TINY_JSON).unwrap()).unwrap();
    assert_eq!(header.file_size, expected["size"].as_u64().unwrap());
    assert_eq!(header.version, 3);

    let fields = expected["fields"].as_array().unwrap();
    let keys: Vec<&str> = header.metadata.iter().map(|(k, _)| k.as_str()).collect();
    let expected_keys: Vec<&str> = fields.iter().map(|f| f["key"].as_str().unwrap()).collect();
    assert_eq!(keys, expected_keys, "same keys, in file order");
    for ((key, value), want) in header.metadata.iter().zip(fields) {
        let (ty, len) = match value {
            Value::Array(a) => (
                format!("ARRAY[{}]", gguf_py_type(a.element_type_name())),
                a.len(),
            ),
            v => (gguf_py_type(&v.type_name()).to_string(), 1),
        };
        assert_eq!(ty, want["type"].as_str().unwrap(), "{key}");
        assert_eq!(len as u64, want["len"].as_u64().unwrap(), "{key}");
    }

    let tensors = expected["tensors"].as_array().unwrap();
    assert_eq!(header.tensors.len(), tensors.len());
    for (t, want) in header.tensors.iter().zip(tensors) {
        assert_eq!(t.name, want["name"].as_str().unwrap());
        let dims: Vec<u64> = want["dims"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap())
            .collect();
        assert_eq!(t.dims, dims, "{}", t.name);
        assert_eq!(t.ggml_type.name(), want["type"].as_str().unwrap());
        assert_eq!(
            header.data_offset + t.offset,
            want["data_offset"].as_u64().unwrap(),
            "{}",
            t.name
        );
        assert_eq!(t.bytes(), want["n_bytes"].as_u64().unwrap(), "{}", t.name);
    }

    assert_eq!(header.architecture(), Some("llama"));
    assert_eq!(header.file_type().and_then(FileType::name), Some("Q4_K_M"));
    assert_eq!(header.string("general.name"), Some("Tiny"));
    assert_eq!(header.uint("llama.context_length"), Some(128));
    assert_eq!(
        header.get("t.i64").and_then(Value::as_i64),
        Some(-(1 << 40))
    );
    assert_eq!(header.get("t.i8").and_then(Value::as_u64), None);
    assert_eq!(header.get("t.f64").and_then(Value::as_f64), Some(0.25));
    assert_eq!(header.get("t.bool").and_then(Value::as_bool), Some(true));
    assert_eq!(header.array("t.u8s"), Some(&Array::U8(vec![1, 2, 255])));
    assert_eq!(
        header.array("t.bools"),
        Some(&Array::Bool(vec![true, false, true]))
    );
    assert_eq!(
        header.strings("tokenizer.ggml.tokens").unwrap(),
        ["<s>", "</s>", "héllo", "▁world"]
    );
    assert_eq!(
        header.array("tokenizer.ggml.scores"),
        Some(&Array::F32(vec![0.0, 0.0, -1.0, -2.5]))
    );
    assert_eq!(header.split(), None);
    let counts: Vec<(&str, usize)> = header
        .type_counts()
        .into_iter()
        .map(|(t, n)| (t.name(), n))
        .collect();
    assert_eq!(
        counts,
        [
            ("F32", 1),
            ("F16", 1),
            ("Q8_0", 1),
            ("Q4_K", 1),
            ("Q6_K", 1),
            ("IQ4_XS", 1)
        ]
    );
}

/// gguf-py's names for value types (`UINT32`), from ours (`u32`).
fn gguf_py_type(ours: &str) -> &'static str {
    match ours {
        "u8" => "UINT8",
        "i8" => "INT8",
        "u16" => "UINT16",
        "i16" => "INT16",
        "u32" => "UINT32",
        "i32" => "INT32",
        "f32" => "FLOAT32",
        "bool" => "BOOL",
        "string" => "STRING",
        "u64" => "UINT64",
        "i64" => "INT64",
        "f64" => "FLOAT64",
        other => panic!("{other}"),
    }
}

/// The block table is llama.cpp's (ggml.c `type_traits`, ggml-common.h block structs). gguf-py
/// 0.19 agrees on every type but Q8_1, which it still sizes with two f32 (40 bytes) where ggml
/// now has two f16 (36); Q8_1 is an activation type no file holds.
#[test]
fn the_block_table_agrees_with_gguf_py() {
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(TINY_JSON).unwrap()).unwrap();
    let sizes = expected["quant_sizes"].as_object().unwrap();
    for t in GgmlType::ALL {
        let Some(want) = sizes.get(t.name()) else {
            // Newer than gguf-py 0.19.
            assert!(matches!(t, GgmlType::Q2_0), "gguf-py lacks {t}");
            continue;
        };
        let want = (want[0].as_u64().unwrap(), want[1].as_u64().unwrap());
        if *t == GgmlType::Q8_1 {
            assert_eq!(want, (32, 40));
            assert_eq!((t.block_size(), t.block_bytes()), (32, 36));
        } else {
            assert_eq!((t.block_size(), t.block_bytes()), want, "{t}");
        }
        assert_eq!(GgmlType::from_id(t.id()), Some(*t));
    }
    for removed in [4, 5, 31, 32, 33, 36, 37, 38, 43, 99] {
        assert_eq!(GgmlType::from_id(removed), None, "{removed}");
    }
}

#[test]
fn file_types_have_llama_cpp_names() {
    let name = |id| FileType(id).name();
    assert_eq!(name(0), Some("F32"));
    assert_eq!(name(1), Some("F16"));
    assert_eq!(name(2), Some("Q4_0"));
    assert_eq!(name(7), Some("Q8_0"));
    assert_eq!(name(8), Some("Q5_0"));
    assert_eq!(name(12), Some("Q3_K_M"));
    assert_eq!(name(15), Some("Q4_K_M"));
    assert_eq!(name(18), Some("Q6_K"));
    assert_eq!(name(32), Some("BF16"));
    assert_eq!(name(4), None);
    assert_eq!(FileType(4).to_string(), "file type 4");
    assert_eq!(FileType(17).to_string(), "Q5_K_M");
}

#[test]
fn every_value_type_reads_in_versions_2_and_3() {
    for version in [2, 3] {
        let mut b = Builder::new()
            .str_kv("general.architecture", "qwen2")
            .u32_kv("general.file_type", 7)
            .kv("a.u8", 0, &[200])
            .kv("a.i8", 1, &(-3i8).to_le_bytes())
            .kv("a.u16", 2, &60000u16.to_le_bytes())
            .kv("a.i16", 3, &(-3i16).to_le_bytes())
            .kv("a.i32", 5, &(-3i32).to_le_bytes())
            .kv("a.f32", 6, &1.5f32.to_le_bytes())
            .kv("a.bool", 7, &[0])
            .kv("a.u64", 10, &u64::MAX.to_le_bytes())
            .kv("a.i64", 11, &(-3i64).to_le_bytes())
            .kv("a.f64", 12, &2.5f64.to_le_bytes())
            .kv("split.no", 2, &1u16.to_le_bytes())
            .kv("split.count", 2, &3u16.to_le_bytes());
        let mut strings = 8u32.to_le_bytes().to_vec();
        strings.extend(2u64.to_le_bytes());
        strings.extend(gstring("a"));
        strings.extend(gstring(""));
        b = b.kv("a.strings", 9, &strings);
        let mut ints = 5u32.to_le_bytes().to_vec();
        ints.extend(2u64.to_le_bytes());
        ints.extend(7i32.to_le_bytes());
        ints.extend((-7i32).to_le_bytes());
        b = b.kv("a.i32s", 9, &ints);
        b.version = version;
        let h = parse(&b.bytes(0)).unwrap();
        assert_eq!(h.version, version);
        assert_eq!(h.architecture(), Some("qwen2"));
        assert_eq!(h.file_type(), Some(FileType(7)));
        assert_eq!(h.get("a.u8"), Some(&Value::U8(200)));
        assert_eq!(h.get("a.i8"), Some(&Value::I8(-3)));
        assert_eq!(h.get("a.u16"), Some(&Value::U16(60000)));
        assert_eq!(h.get("a.i16"), Some(&Value::I16(-3)));
        assert_eq!(h.get("a.i32"), Some(&Value::I32(-3)));
        assert_eq!(h.get("a.f32"), Some(&Value::F32(1.5)));
        assert_eq!(h.get("a.bool"), Some(&Value::Bool(false)));
        assert_eq!(h.uint("a.u64"), Some(u64::MAX));
        assert_eq!(h.get("a.i64"), Some(&Value::I64(-3)));
        assert_eq!(h.get("a.f64").and_then(Value::as_f64), Some(2.5));
        assert_eq!(h.strings("a.strings").unwrap(), ["a", ""]);
        assert_eq!(h.array("a.i32s"), Some(&Array::I32(vec![7, -7])));
        assert_eq!(h.get("a.i32s").unwrap().type_name(), "array[i32]");
        assert_eq!(h.split(), Some(Split { no: 1, count: 3 }));
        assert!(h.tensors.is_empty());
    }
}

#[test]
fn tensors_get_their_extent_from_the_aligned_data_section() {
    let mut b = Builder::new()
        .u32_kv("general.alignment", 64)
        .tensor("a", &[64, 2], 8, 0) // Q8_0: 4 blocks of 34 bytes
        .tensor("b", &[256], 12, 192); // Q4_K: 1 block of 144 bytes
    b.alignment = 64;
    let bytes = b.bytes(192 + 144);
    let h = parse(&bytes).unwrap();
    assert_eq!(h.alignment, 64);
    assert!(h.data_offset.is_multiple_of(64));
    assert_eq!(h.data_offset + 192 + 144, bytes.len() as u64);
    assert_eq!(h.tensors[0].bytes(), 136);
    assert_eq!(h.tensors[0].elements(), 128);
    assert_eq!(h.tensor("b").unwrap().ggml_type, GgmlType::Q4_K);
}

#[test]
fn an_unknown_tensor_type_names_the_file_and_the_tensor() {
    let b = Builder::new()
        .str_kv("general.architecture", "llama")
        .tensor("blk.0.attn_q.weight", &[32, 32], 99, 0);
    assert_eq!(
        err(&b.bytes(4096)),
        "model.gguf: tensor `blk.0.attn_q.weight`: unknown ggml type 99"
    );
}

#[test]
fn a_truncated_file_names_the_tensor_it_cuts_and_both_sizes() {
    let full = std::fs::read(TINY).unwrap();
    let h = parse(&full).unwrap();
    let last = h.tensors.last().unwrap();
    let cut = &full[..full.len() - 10];
    match parse(cut).unwrap_err() {
        ReadError::Truncated {
            tensor, end, size, ..
        } => {
            assert_eq!(tensor, last.name);
            assert_eq!(end, h.data_offset + last.offset + last.bytes());
            assert_eq!(size, cut.len() as u64);
        }
        other => panic!("{other}"),
    }
    assert!(
        err(cut)
            .starts_with("model.gguf is truncated: tensor `blk.0.attn_norm.weight` ends at byte")
    );

    // Cut inside the metadata: the key being read is named.
    let at = find(&full, b"tokenizer.ggml.tokens") + 30;
    let e = err(&full[..at]);
    assert!(
        e.contains("is truncated: metadata `tokenizer.ggml.tokens` needs bytes up to"),
        "{e}"
    );
}

fn find(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap()
}

/// A corrupt count is refused against the bytes left in the file before anything is allocated
/// for it.
#[test]
fn corrupt_counts_are_refused_without_allocating() {
    let mut bytes = Builder::new()
        .str_kv("general.architecture", "llama")
        .bytes(0);
    bytes[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    let e = err(&bytes);
    assert!(
        e.contains("the tensor count: 18446744073709551615 tensor infos cannot fit"),
        "{e}"
    );

    let mut bytes = Builder::new().bytes(0);
    bytes[16..24].copy_from_slice(&(1u64 << 40).to_le_bytes());
    assert!(err(&bytes).contains("the metadata count: 1099511627776 metadata entries"));

    let mut huge = 8u32.to_le_bytes().to_vec();
    huge.extend((1u64 << 50).to_le_bytes());
    let e = err(&Builder::new()
        .kv("tokenizer.ggml.tokens", 9, &huge)
        .bytes(0));
    assert!(
        e.contains("metadata `tokenizer.ggml.tokens`: 1125899906842624 array elements cannot fit"),
        "{e}"
    );

    let mut long = (1u64 << 60).to_le_bytes().to_vec();
    long.extend(b"abc");
    let e = err(&Builder::new().kv("general.name", 8, &long).bytes(0));
    assert!(
        e.contains("metadata `general.name`: 1152921504606846976 string bytes"),
        "{e}"
    );
}

#[test]
fn malformed_headers_name_the_field() {
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"GGML\x03\0\0\0".to_vec(), "model.gguf: not a GGUF file"),
        (
            {
                let mut b = Builder::new().bytes(0);
                b[4..8].copy_from_slice(&3u32.to_be_bytes());
                b
            },
            "model.gguf: a big-endian GGUF file",
        ),
        (
            {
                let mut b = Builder::new();
                b.version = 1;
                b.bytes(0)
            },
            "model.gguf: GGUF version 1 is not supported",
        ),
        (
            Builder::new().u32_kv("general.alignment", 48).bytes(0),
            "model.gguf: metadata `general.alignment`: U32(48) is not a power of two",
        ),
        (
            Builder::new()
                .tensor("t", &[32], 0, 0)
                .tensor("t", &[32], 0, 128)
                .bytes(256),
            "model.gguf: tensor `t`: the name appears twice",
        ),
        (
            Builder::new().u32_kv("k", 1).u32_kv("k", 2).bytes(0),
            "model.gguf: metadata `k`: the key appears twice",
        ),
        (
            Builder::new().tensor("t", &[1, 1, 1, 1, 1], 0, 0).bytes(64),
            "model.gguf: tensor `t`: 5 dimensions (ggml has at most 4)",
        ),
        (
            Builder::new().tensor("blk.0.w", &[48, 2], 8, 0).bytes(4096),
            "model.gguf: tensor `blk.0.w`: row length 48 is not a multiple of 32, the block size of Q8_0",
        ),
        (
            Builder::new().tensor("t", &[8], 0, 4).bytes(4096),
            "model.gguf: tensor `t`: offset 4 is not a multiple of the alignment 32",
        ),
        (
            Builder::new().tensor("t", &[u64::MAX, 2], 0, 0).bytes(64),
            "model.gguf: tensor `t`: dimensions [18446744073709551615, 2] overflow",
        ),
        (
            Builder::new().kv("k", 13, &[0; 8]).bytes(0),
            "model.gguf: metadata `k`: unknown value type 13",
        ),
        (
            {
                let mut nested = 9u32.to_le_bytes().to_vec();
                nested.extend(1u64.to_le_bytes());
                nested.extend(0u32.to_le_bytes());
                Builder::new().kv("k", 9, &nested).bytes(0)
            },
            "model.gguf: metadata `k`: nested arrays are not supported",
        ),
    ];
    for (bytes, want) in cases {
        let e = err(&bytes);
        assert!(e.starts_with(want), "{e}\n  expected: {want}");
    }
}

/// A tensor whose extent runs past the file by an overflowing offset is truncation, not a
/// panic.
#[test]
fn an_offset_past_u64_is_a_truncation() {
    let b = Builder::new().tensor("t", &[32], 0, u64::MAX - 31);
    match parse(&b.bytes(128)).unwrap_err() {
        ReadError::Truncated { tensor, end, .. } => {
            assert_eq!((tensor.as_str(), end), ("t", u64::MAX));
        }
        other => panic!("{other}"),
    }
}

/// A reader that fails any read past the header: the tensor data of a multi-GB file must
/// never be read.
struct HeaderOnly<'a>(&'a [u8]);

impl Read for HeaderOnly<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.0.is_empty() && !buf.is_empty() {
            panic!("read past the header");
        }
        self.0.read(buf)
    }
}

#[test]
fn the_tensor_data_is_never_read() {
    let b = Builder::new()
        .str_kv("general.architecture", "llama")
        .tensor("big", &[4096, 1 << 20], 8, 0);
    let header = b.bytes(0);
    let size = 1u64 << 33;
    let h = Header::from_reader(HeaderOnly(&header), size, Path::new("big.gguf")).unwrap();
    assert_eq!(h.tensors[0].bytes(), 4096 / 32 * 34 * (1 << 20));
    assert!(h.data_offset <= header.len() as u64);
}
