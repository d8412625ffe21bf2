//! Reads the header of a GGUF file (metadata and tensor infos) and checks it against the file.
//!
//! Why our own reader: the builder must not link candle, a multi-GB file must cost a header's
//! worth of reads (the tensor data is never touched), and a bad file must fail the build with a
//! message naming the file and the key or tensor — a truncated download, a type from a newer
//! llama.cpp, a corrupt count — where generic parsers say "unknown dtype 99" or try to allocate
//! what a corrupt count asks for. The checks mirror what llama.cpp's `gguf_init_from_file`
//! refuses, so a file read here loads there.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

/// The first four bytes of every GGUF file.
pub const MAGIC: [u8; 4] = *b"GGUF";
/// Alignment of the data section and of each tensor when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's `GGML_MAX_DIMS`: llama.cpp refuses tensors with more dimensions.
pub const MAX_DIMS: u32 = 4;
/// Why a limit: a corrupt length must not allocate gigabytes. Chat templates, the longest
/// strings real files hold, are kilobytes.
const MAX_STRING: u64 = 64 << 20;
/// Why a limit: as for strings. The largest real arrays are vocabularies (262,144 tokens) and
/// their merges.
const MAX_ARRAY: u64 = 16 << 20;
/// Elements read (and allocated) at a time, so memory grows with bytes actually present.
const CHUNK: u64 = 1 << 16;

macro_rules! ggml_types {
    ($($variant:ident = $id:literal, $name:literal, $block:literal, $bytes:literal;)*) => {
        /// A ggml tensor type: how many elements a block holds and how many bytes it takes,
        /// from llama.cpp's `type_traits` table (ggml/src/ggml.c) and `ggml-common.h`.
        ///
        /// Variants are spelled as llama.cpp spells the types (`Q4_K`, `IQ2_XXS`), so that
        /// code reads against its sources and the names people search for.
        #[allow(non_camel_case_types)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u32)]
        pub enum GgmlType {
            $($variant = $id,)*
        }

        impl GgmlType {
            /// Every type a GGUF file may hold, by id.
            pub const ALL: &[GgmlType] = &[$(GgmlType::$variant,)*];

            /// `None` for ids llama.cpp removed (4, 5, 31–33, 36–38) or does not know yet.
            pub fn from_id(id: u32) -> Option<Self> {
                match id {
                    $($id => Some(Self::$variant),)*
                    _ => None,
                }
            }

            /// The name gguf-py and llama.cpp's tools print (`Q4_K`, `BF16`).
            pub fn name(self) -> &'static str {
                match self {
                    $(Self::$variant => $name,)*
                }
            }

            /// Elements per block.
            pub fn block_size(self) -> u64 {
                match self {
                    $(Self::$variant => $block,)*
                }
            }

            /// Bytes per block.
            pub fn block_bytes(self) -> u64 {
                match self {
                    $(Self::$variant => $bytes,)*
                }
            }
        }
    };
}

ggml_types! {
    F32 = 0, "F32", 1, 4;
    F16 = 1, "F16", 1, 2;
    Q4_0 = 2, "Q4_0", 32, 18;
    Q4_1 = 3, "Q4_1", 32, 20;
    Q5_0 = 6, "Q5_0", 32, 22;
    Q5_1 = 7, "Q5_1", 32, 24;
    Q8_0 = 8, "Q8_0", 32, 34;
    Q8_1 = 9, "Q8_1", 32, 36;
    Q2_K = 10, "Q2_K", 256, 84;
    Q3_K = 11, "Q3_K", 256, 110;
    Q4_K = 12, "Q4_K", 256, 144;
    Q5_K = 13, "Q5_K", 256, 176;
    Q6_K = 14, "Q6_K", 256, 210;
    Q8_K = 15, "Q8_K", 256, 292;
    IQ2_XXS = 16, "IQ2_XXS", 256, 66;
    IQ2_XS = 17, "IQ2_XS", 256, 74;
    IQ3_XXS = 18, "IQ3_XXS", 256, 98;
    IQ1_S = 19, "IQ1_S", 256, 50;
    IQ4_NL = 20, "IQ4_NL", 32, 18;
    IQ3_S = 21, "IQ3_S", 256, 110;
    IQ2_S = 22, "IQ2_S", 256, 82;
    IQ4_XS = 23, "IQ4_XS", 256, 136;
    I8 = 24, "I8", 1, 1;
    I16 = 25, "I16", 1, 2;
    I32 = 26, "I32", 1, 4;
    I64 = 27, "I64", 1, 8;
    F64 = 28, "F64", 1, 8;
    IQ1_M = 29, "IQ1_M", 256, 56;
    BF16 = 30, "BF16", 1, 2;
    TQ1_0 = 34, "TQ1_0", 256, 54;
    TQ2_0 = 35, "TQ2_0", 256, 66;
    MXFP4 = 39, "MXFP4", 32, 17;
    NVFP4 = 40, "NVFP4", 64, 36;
    Q1_0 = 41, "Q1_0", 128, 18;
    Q2_0 = 42, "Q2_0", 64, 18;
}

impl GgmlType {
    pub fn id(self) -> u32 {
        self as u32
    }

    /// Bytes `elements` take, or `None` when they do not fill whole blocks (llama.cpp
    /// refuses such tensors) or the size overflows.
    pub fn bytes_for(self, elements: u64) -> Option<u64> {
        if !elements.is_multiple_of(self.block_size()) {
            return None;
        }
        (elements / self.block_size()).checked_mul(self.block_bytes())
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `general.file_type`: the quantization a file was made with, as llama.cpp's `llama_ftype`.
/// Kept as the raw id so that a file from a newer llama.cpp still reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileType(pub u32);

impl FileType {
    /// The `LLAMA_FTYPE_MOSTLY_*` suffix (`Q4_K_M`; `F32` for `LLAMA_FTYPE_ALL_F32`), as
    /// `llama-quantize` takes it on its command line.
    pub fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            0 => "F32",
            1 => "F16",
            2 => "Q4_0",
            3 => "Q4_1",
            7 => "Q8_0",
            8 => "Q5_0",
            9 => "Q5_1",
            10 => "Q2_K",
            11 => "Q3_K_S",
            12 => "Q3_K_M",
            13 => "Q3_K_L",
            14 => "Q4_K_S",
            15 => "Q4_K_M",
            16 => "Q5_K_S",
            17 => "Q5_K_M",
            18 => "Q6_K",
            19 => "IQ2_XXS",
            20 => "IQ2_XS",
            21 => "Q2_K_S",
            22 => "IQ3_XS",
            23 => "IQ3_XXS",
            24 => "IQ1_S",
            25 => "IQ4_NL",
            26 => "IQ3_S",
            27 => "IQ3_M",
            28 => "IQ2_S",
            29 => "IQ2_M",
            30 => "IQ4_XS",
            31 => "IQ1_M",
            32 => "BF16",
            36 => "TQ1_0",
            37 => "TQ2_0",
            38 => "MXFP4_MOE",
            39 => "NVFP4",
            40 => "Q1_0",
            41 => "Q2_0",
            _ => return None,
        })
    }
}

impl fmt::Display for FileType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "file type {}", self.0),
        }
    }
}

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Array),
    U64(u64),
    I64(i64),
    F64(f64),
}

/// A metadata array: one element type, never nested (llama.cpp refuses arrays of arrays).
#[derive(Debug, Clone, PartialEq)]
pub enum Array {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    F32(Vec<f32>),
    Bool(Vec<bool>),
    String(Vec<String>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F64(Vec<f64>),
}

impl Value {
    /// Any integer that is not negative: writers differ on the width of counts and ids.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Self::U8(v) => Some(v.into()),
            Self::U16(v) => Some(v.into()),
            Self::U32(v) => Some(v.into()),
            Self::U64(v) => Some(v),
            Self::I8(v) => u64::try_from(v).ok(),
            Self::I16(v) => u64::try_from(v).ok(),
            Self::I32(v) => u64::try_from(v).ok(),
            Self::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Self::I8(v) => Some(v.into()),
            Self::I16(v) => Some(v.into()),
            Self::I32(v) => Some(v.into()),
            Self::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    /// Floats, and integers too (`rope.freq_base` is written either way).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Self::F32(v) => Some(v.into()),
            Self::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Self::Bool(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&Array> {
        match self {
            Self::Array(a) => Some(a),
            _ => None,
        }
    }

    /// The GGUF type name (`u32`, `string`, `array[string]`), for error messages.
    pub fn type_name(&self) -> String {
        match self {
            Self::Array(a) => format!("array[{}]", a.element_type_name()),
            other => VALUE_TYPE_NAMES[other.type_id() as usize].to_string(),
        }
    }

    fn type_id(&self) -> u32 {
        match self {
            Self::U8(_) => 0,
            Self::I8(_) => 1,
            Self::U16(_) => 2,
            Self::I16(_) => 3,
            Self::U32(_) => 4,
            Self::I32(_) => 5,
            Self::F32(_) => 6,
            Self::Bool(_) => 7,
            Self::String(_) => 8,
            Self::Array(_) => 9,
            Self::U64(_) => 10,
            Self::I64(_) => 11,
            Self::F64(_) => 12,
        }
    }
}

const VALUE_TYPE_NAMES: [&str; 13] = [
    "u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array", "u64", "i64", "f64",
];

impl Array {
    pub fn len(&self) -> usize {
        match self {
            Self::U8(v) => v.len(),
            Self::I8(v) => v.len(),
            Self::U16(v) => v.len(),
            Self::I16(v) => v.len(),
            Self::U32(v) => v.len(),
            Self::I32(v) => v.len(),
            Self::F32(v) => v.len(),
            Self::Bool(v) => v.len(),
            Self::String(v) => v.len(),
            Self::U64(v) => v.len(),
            Self::I64(v) => v.len(),
            Self::F64(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn as_strings(&self) -> Option<&[String]> {
        match self {
            Self::String(v) => Some(v),
            _ => None,
        }
    }

    pub fn element_type_name(&self) -> &'static str {
        let id = match self {
            Self::U8(_) => 0,
            Self::I8(_) => 1,
            Self::U16(_) => 2,
            Self::I16(_) => 3,
            Self::U32(_) => 4,
            Self::I32(_) => 5,
            Self::F32(_) => 6,
            Self::Bool(_) => 7,
            Self::String(_) => 8,
            Self::U64(_) => 10,
            Self::I64(_) => 11,
            Self::F64(_) => 12,
        };
        VALUE_TYPE_NAMES[id]
    }
}

/// One tensor as the header describes it; its data is not read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` is the row length (the fastest-varying dimension).
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// From the start of the data section ([`Header::data_offset`]).
    pub offset: u64,
}

impl TensorInfo {
    pub fn elements(&self) -> u64 {
        // Checked while reading: the product fits.
        self.dims.iter().product()
    }

    /// Bytes of data (checked while reading: whole blocks, no overflow).
    pub fn bytes(&self) -> u64 {
        self.ggml_type.bytes_for(self.elements()).unwrap_or(0)
    }
}

/// `split.no` / `split.count` of a file written by `llama-gguf-split`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Split {
    /// 0-based (the file name counts from 1).
    pub no: u64,
    pub count: u64,
}

/// The header of one GGUF file, checked: every tensor has a known type, whole blocks, an
/// aligned offset, and its bytes inside the file.
#[derive(Debug, Clone)]
pub struct Header {
    pub file: PathBuf,
    /// 2 or 3.
    pub version: u32,
    /// In file order (which is meaningful: converters write `general.*` first).
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    /// Where the data section starts in the file.
    pub data_offset: u64,
    pub file_size: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{}: cannot be read", file.display())]
    Io {
        file: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: not a GGUF file (it starts with {found:?}, not `GGUF`)", file.display())]
    NotGguf { file: PathBuf, found: String },
    #[error("{}: a big-endian GGUF file; only little-endian files are supported", file.display())]
    BigEndian { file: PathBuf },
    #[error("{}: GGUF version {version} is not supported (2 and 3 are)", file.display())]
    Version { file: PathBuf, version: u32 },
    #[error(
        "{} is truncated: {field} needs bytes up to {needed}, the file has {size}",
        file.display()
    )]
    TruncatedHeader {
        file: PathBuf,
        field: String,
        needed: u64,
        size: u64,
    },
    #[error(
        "{}: {field}: {count} {what} cannot fit in the {remaining} bytes left in the file (a corrupt count)",
        file.display()
    )]
    Count {
        file: PathBuf,
        field: String,
        count: u64,
        what: &'static str,
        remaining: u64,
    },
    #[error("{}: {field}: {message}", file.display())]
    Invalid {
        file: PathBuf,
        field: String,
        message: String,
    },
    #[error("{}: tensor `{tensor}`: unknown ggml type {id}", file.display())]
    UnknownType {
        file: PathBuf,
        tensor: String,
        id: u32,
    },
    #[error(
        "{}: tensor `{tensor}`: offset {offset} is not a multiple of the alignment {alignment}",
        file.display()
    )]
    Misaligned {
        file: PathBuf,
        tensor: String,
        offset: u64,
        alignment: u64,
    },
    #[error(
        "{} is truncated: tensor `{tensor}` ends at byte {end}, the file has {size}",
        file.display()
    )]
    Truncated {
        file: PathBuf,
        tensor: String,
        end: u64,
        size: u64,
    },
}

impl Header {
    /// Reads and checks the header of the file at `path`, through a buffer; the tensor data is
    /// never read.
    pub fn read(path: &Path) -> Result<Self, ReadError> {
        let io_err = |source| ReadError::Io {
            file: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io_err)?;
        let size = file.metadata().map_err(io_err)?.len();
        Self::from_reader(BufReader::with_capacity(1 << 16, file), size, path)
    }

    /// Reads a header from `reader`, positioned at the file's start, for a file of `file_size`
    /// bytes; `file` only names it in errors.
    pub fn from_reader(reader: impl Read, file_size: u64, file: &Path) -> Result<Self, ReadError> {
        Parser {
            r: reader,
            pos: 0,
            size: file_size,
            file: file.to_path_buf(),
            field: String::new(),
        }
        .header()
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata
            .iter()
            .find_map(|(k, v)| (k == key).then_some(v))
    }

    pub fn string(&self, key: &str) -> Option<&str> {
        self.get(key)?.as_str()
    }

    pub fn uint(&self, key: &str) -> Option<u64> {
        self.get(key)?.as_u64()
    }

    pub fn array(&self, key: &str) -> Option<&Array> {
        self.get(key)?.as_array()
    }

    pub fn strings(&self, key: &str) -> Option<&[String]> {
        self.array(key)?.as_strings()
    }

    /// `general.architecture` (`llama`, `qwen2`, ...).
    pub fn architecture(&self) -> Option<&str> {
        self.string("general.architecture")
    }

    /// `general.file_type`; absent from files of old converters.
    pub fn file_type(&self) -> Option<FileType> {
        self.uint("general.file_type")
            .and_then(|v| u32::try_from(v).ok())
            .map(FileType)
    }

    /// `split.no` and `split.count`, when the file is one of a `llama-gguf-split` set.
    pub fn split(&self) -> Option<Split> {
        Some(Split {
            no: self.uint("split.no").unwrap_or(0),
            count: self.uint("split.count")?,
        })
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// How many tensors of each type the file holds.
    pub fn type_counts(&self) -> BTreeMap<GgmlType, usize> {
        let mut counts = BTreeMap::new();
        for t in &self.tensors {
            *counts.entry(t.ggml_type).or_insert(0) += 1;
        }
        counts
    }
}

struct Parser<R> {
    r: R,
    pos: u64,
    size: u64,
    file: PathBuf,
    /// What is being read, for errors: `metadata \`key\``, `tensor \`name\``.
    field: String,
}

impl<R: Read> Parser<R> {
    fn header(mut self) -> Result<Header, ReadError> {
        self.field = "the magic".into();
        let magic: [u8; 4] = self.array()?;
        if magic != MAGIC {
            return Err(ReadError::NotGguf {
                file: self.file,
                found: String::from_utf8_lossy(&magic).into_owned(),
            });
        }
        self.field = "the version".into();
        let version = u32::from_le_bytes(self.array()?);
        if !matches!(version, 2 | 3) {
            if matches!(version.swap_bytes(), 2 | 3) {
                return Err(ReadError::BigEndian { file: self.file });
            }
            return Err(ReadError::Version {
                file: self.file,
                version,
            });
        }
        // The smallest possible entries: a tensor info is a name length, n_dims, a type and
        // an offset; a metadata entry a key length, a type and one byte.
        self.field = "the tensor count".into();
        let tensor_count = self.u64()?;
        self.fits(tensor_count, 24, "tensor infos")?;
        self.field = "the metadata count".into();
        let kv_count = self.u64()?;
        self.fits(kv_count, 13, "metadata entries")?;

        let mut metadata: Vec<(String, Value)> = Vec::with_capacity(kv_count.min(CHUNK) as usize);
        let mut keys = HashSet::new();
        for i in 0..kv_count {
            self.field = format!("metadata entry #{i}");
            let key = self.utf8_string()?;
            self.field = format!("metadata `{key}`");
            if key.is_empty() {
                return Err(self.invalid("the key is empty".into()));
            }
            if !keys.insert(key.clone()) {
                return Err(self.invalid("the key appears twice".into()));
            }
            let value = self.value()?;
            metadata.push((key, value));
        }
        let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some((_, value)) => {
                self.field = "metadata `general.alignment`".into();
                match value.as_u64() {
                    Some(a) if a.is_power_of_two() => a,
                    _ => {
                        return Err(self.invalid(format!(
                            "{value:?} is not a power of two (the data section's alignment)"
                        )));
                    }
                }
            }
        };

        let mut tensors: Vec<TensorInfo> = Vec::with_capacity(tensor_count.min(CHUNK) as usize);
        let mut names = HashSet::new();
        for i in 0..tensor_count {
            self.field = format!("tensor info #{i}");
            let name = self.utf8_string()?;
            self.field = format!("tensor `{name}`");
            if !names.insert(name.clone()) {
                return Err(self.invalid("the name appears twice".into()));
            }
            let n_dims = self.u32()?;
            if n_dims > MAX_DIMS {
                return Err(
                    self.invalid(format!("{n_dims} dimensions (ggml has at most {MAX_DIMS})"))
                );
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(self.u64()?);
            }
            let type_id = self.u32()?;
            let offset = self.u64()?;
            let Some(ggml_type) = GgmlType::from_id(type_id) else {
                return Err(ReadError::UnknownType {
                    file: self.file,
                    tensor: name,
                    id: type_id,
                });
            };
            let elements = dims
                .iter()
                .try_fold(1u64, |n, d| n.checked_mul(*d))
                .filter(|n| i64::try_from(*n).is_ok());
            let Some(elements) = elements else {
                return Err(self.invalid(format!("dimensions {dims:?} overflow")));
            };
            let row = dims.first().copied().unwrap_or(1);
            if ggml_type.bytes_for(elements).is_none()
                || !row.is_multiple_of(ggml_type.block_size())
            {
                return Err(self.invalid(format!(
                    "row length {row} is not a multiple of {}, the block size of {ggml_type}",
                    ggml_type.block_size()
                )));
            }
            if !offset.is_multiple_of(alignment) {
                return Err(ReadError::Misaligned {
                    file: self.file,
                    tensor: name,
                    offset,
                    alignment,
                });
            }
            tensors.push(TensorInfo {
                name,
                dims,
                ggml_type,
                offset,
            });
        }

        let data_offset = self.pos.next_multiple_of(alignment);
        for t in &tensors {
            let end = data_offset
                .checked_add(t.offset)
                .and_then(|start| start.checked_add(t.bytes()));
            match end {
                Some(end) if end <= self.size => {}
                _ => {
                    return Err(ReadError::Truncated {
                        file: self.file,
                        tensor: t.name.clone(),
                        end: end.unwrap_or(u64::MAX),
                        size: self.size,
                    });
                }
            }
        }
        Ok(Header {
            file: self.file,
            version,
            metadata,
            tensors,
            alignment,
            data_offset,
            file_size: self.size,
        })
    }

    fn value(&mut self) -> Result<Value, ReadError> {
        let type_id = self.u32()?;
        Ok(match type_id {
            0 => Value::U8(self.array::<1>()?[0]),
            1 => Value::I8(i8::from_le_bytes(self.array()?)),
            2 => Value::U16(u16::from_le_bytes(self.array()?)),
            3 => Value::I16(i16::from_le_bytes(self.array()?)),
            4 => Value::U32(self.u32()?),
            5 => Value::I32(i32::from_le_bytes(self.array()?)),
            6 => Value::F32(f32::from_le_bytes(self.array()?)),
            7 => Value::Bool(self.array::<1>()?[0] != 0),
            8 => Value::String(self.string()?),
            9 => Value::Array(self.array_value()?),
            10 => Value::U64(self.u64()?),
            11 => Value::I64(i64::from_le_bytes(self.array()?)),
            12 => Value::F64(f64::from_le_bytes(self.array()?)),
            other => return Err(self.invalid(format!("unknown value type {other}"))),
        })
    }

    fn array_value(&mut self) -> Result<Array, ReadError> {
        let type_id = self.u32()?;
        let count = self.u64()?;
        let element = match type_id {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            8 | 10..=12 => 8,
            9 => {
                return Err(
                    self.invalid("nested arrays are not supported (nor by llama.cpp)".into())
                );
            }
            other => return Err(self.invalid(format!("unknown array element type {other}"))),
        };
        self.fits(count, element, "array elements")?;
        if count > MAX_ARRAY {
            return Err(self.invalid(format!(
                "an array of {count} elements exceeds the limit of {MAX_ARRAY}"
            )));
        }
        Ok(match type_id {
            0 => Array::U8(self.vec(count, |b: [u8; 1]| b[0])?),
            1 => Array::I8(self.vec(count, i8::from_le_bytes)?),
            2 => Array::U16(self.vec(count, u16::from_le_bytes)?),
            3 => Array::I16(self.vec(count, i16::from_le_bytes)?),
            4 => Array::U32(self.vec(count, u32::from_le_bytes)?),
            5 => Array::I32(self.vec(count, i32::from_le_bytes)?),
            6 => Array::F32(self.vec(count, f32::from_le_bytes)?),
            7 => Array::Bool(self.vec(count, |b: [u8; 1]| b[0] != 0)?),
            10 => Array::U64(self.vec(count, u64::from_le_bytes)?),
            11 => Array::I64(self.vec(count, i64::from_le_bytes)?),
            12 => Array::F64(self.vec(count, f64::from_le_bytes)?),
            _ => {
                let mut strings = Vec::with_capacity(count.min(CHUNK) as usize);
                for _ in 0..count {
                    strings.push(self.string()?);
                }
                Array::String(strings)
            }
        })
    }

    /// `count` fixed-size elements, read a chunk at a time.
    fn vec<T, const N: usize>(
        &mut self,
        count: u64,
        convert: impl Fn([u8; N]) -> T,
    ) -> Result<Vec<T>, ReadError> {
        let mut out = Vec::with_capacity(count.min(CHUNK) as usize);
        let mut buf = Vec::new();
        let mut left = count;
        while left > 0 {
            let n = left.min(CHUNK);
            buf.resize(n as usize * N, 0);
            self.fill(&mut buf)?;
            out.extend(
                buf.chunks_exact(N)
                    .map(|c| convert(c.try_into().unwrap_or([0; N]))),
            );
            left -= n;
        }
        Ok(out)
    }

    /// Values may hold bytes that are not UTF-8 (byte-fallback vocabulary entries); they are
    /// kept lossily rather than failing a file llama.cpp loads.
    fn string(&mut self) -> Result<String, ReadError> {
        let bytes = self.string_bytes()?;
        Ok(match String::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        })
    }

    /// Keys and tensor names: they are looked up by name, so they must be exact.
    fn utf8_string(&mut self) -> Result<String, ReadError> {
        let bytes = self.string_bytes()?;
        String::from_utf8(bytes).map_err(|_| self.invalid("the name is not UTF-8".into()))
    }

    fn string_bytes(&mut self) -> Result<Vec<u8>, ReadError> {
        let len = self.u64()?;
        self.fits(len, 1, "string bytes")?;
        if len > MAX_STRING {
            return Err(self.invalid(format!(
                "a string of {len} bytes exceeds the limit of {MAX_STRING}"
            )));
        }
        let mut bytes = vec![0; len as usize];
        self.fill(&mut bytes)?;
        Ok(bytes)
    }

    fn u32(&mut self) -> Result<u32, ReadError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, ReadError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], ReadError> {
        let mut b = [0; N];
        self.fill(&mut b)?;
        Ok(b)
    }

    fn fill(&mut self, buf: &mut [u8]) -> Result<(), ReadError> {
        let n = buf.len() as u64;
        if self.size.saturating_sub(self.pos) < n {
            return Err(ReadError::TruncatedHeader {
                file: self.file.clone(),
                field: self.field.clone(),
                needed: self.pos + n,
                size: self.size,
            });
        }
        self.r.read_exact(buf).map_err(|source| ReadError::Io {
            file: self.file.clone(),
            source,
        })?;
        self.pos += n;
        Ok(())
    }

    /// Refuses a count whose smallest possible encoding would not fit in the rest of the file.
    fn fits(&self, count: u64, min_bytes: u64, what: &'static str) -> Result<(), ReadError> {
        let remaining = self.size.saturating_sub(self.pos);
        if count.checked_mul(min_bytes).is_none_or(|n| n > remaining) {
            return Err(ReadError::Count {
                file: self.file.clone(),
                field: self.field.clone(),
                count,
                what,
                remaining,
            });
        }
        Ok(())
    }

    fn invalid(&self, message: String) -> ReadError {
        ReadError::Invalid {
            file: self.file.clone(),
            field: self.field.clone(),
            message,
        }
    }
}

#[cfg(test)]
mod tests;
