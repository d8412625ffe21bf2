//! Checks a model's GGUF files at build time, so that a file the server would refuse at startup
//! fails the build instead, naming the file and the field: an incomplete or mixed shard set, a
//! truncated download, an unknown tensor type, an architecture the server does not serve.
//!
//! The set is checked on names alone ([`shard_set`]), so a Hub source is refused before
//! anything is downloaded; the headers ([`read_set`]) once the files are local. A GGUF packaged
//! without `tokenizer.json` must describe a tokenizer the server can rebuild from its metadata.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use appliance_common::weights::WeightFormat;
use appliance_gguf::read::{GgmlType, Header, ReadError};

/// The `general.architecture` values appliance-server serves: its `Gguf::architecture` in
/// runtime/src/checkpoint/gguf.rs (a test below keeps the two lists equal).
pub const SERVED_ARCHITECTURES: &[&str] = &["llama", "mistral", "qwen2", "qwen3"];

/// The `tokenizer.ggml.model` values appliance-server rebuilds a tokenizer from when the model
/// directory has no `tokenizer.json`: `gguf_tokenizer::from_gguf` in
/// runtime/src/checkpoint/gguf_tokenizer.rs (a test below keeps the two lists equal).
pub const SERVED_TOKENIZER_MODELS: &[&str] = &["gpt2", "llama"];

/// The GGUF metadata keys of the vocabulary (llama.cpp's names).
pub const TOKENIZER_MODEL: &str = "tokenizer.ggml.model";
pub const TOKENIZER_TOKENS: &str = "tokenizer.ggml.tokens";

/// Whether the server loads `path` as GGUF: it looks at the model directory's top level only.
pub(crate) fn is_gguf(path: &str) -> bool {
    WeightFormat::of(path) == Some(WeightFormat::Gguf)
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShardSetError {
    #[error(
        "several GGUF files that are not the shards of one model: {}\n  hint: select one model's file(s) with `model.files`",
        files.join(", ")
    )]
    Conflicting { files: Vec<String> },
    #[error(
        "the GGUF shards `{stem}-*-of-{count}.gguf` are incomplete: {} {} missing",
        missing.join(", "),
        if missing.len() == 1 { "is" } else { "are" }
    )]
    MissingShards {
        stem: String,
        count: String,
        missing: Vec<String>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// Names the file and the key or tensor.
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error(transparent)]
    Shards(#[from] ShardSetError),
    #[error("{}: `general.architecture` is missing (or not a string)", file.display())]
    NoArchitecture { file: PathBuf },
    #[error(
        "{}: `general.architecture` is `{found}`, which appliance-server does not serve (it serves {})",
        file.display(),
        SERVED_ARCHITECTURES.join(", ")
    )]
    Architecture { file: PathBuf, found: String },
    /// No `tokenizer.json` is packaged, and the metadata does not describe a tokenizer the
    /// server rebuilds: it would refuse to start.
    #[error(
        "{}: no `tokenizer.json` is packaged beside this GGUF, and the server cannot build the tokenizer from its metadata: `{key}` {problem}\n  hint: add the model's tokenizer.json to `model.files`, or take it from the original model: `tokenizer = {{ hf = \"org/repo\" }}`",
        file.display()
    )]
    Tokenizer {
        file: PathBuf,
        key: &'static str,
        problem: String,
    },
    #[error(
        "{}: `split.count` is {header}, but the file name says the set has {named} shards",
        file.display()
    )]
    SplitCount {
        file: PathBuf,
        header: u64,
        named: u64,
    },
    #[error(
        "{}: `split.no` is {header} (counting from 0), but the file name says it is shard {named}",
        file.display()
    )]
    SplitNo {
        file: PathBuf,
        header: u64,
        named: u64,
    },
}

/// `<stem>-NNNNN-of-MMMMM.gguf`, parsed as the server parses it.
struct ShardName<'a> {
    stem: &'a str,
    no: u64,
    count: u64,
    /// `MMMMM` as written, to name a missing shard the way its siblings are named.
    count_text: &'a str,
}

fn shard_name(path: &str) -> Option<ShardName<'_>> {
    let name = path.strip_suffix(".gguf")?;
    let (head, count_text) = name.rsplit_once("-of-")?;
    let (stem, no) = head.rsplit_once('-')?;
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(no) || !all_digits(count_text) {
        return None;
    }
    Some(ShardName {
        stem,
        no: no.parse().ok()?,
        count: count_text.parse().ok()?,
        count_text,
    })
}

/// The GGUF files among `paths` in the order the server loads them: one file, or every shard of
/// one `llama-gguf-split` set. A lone file named as one shard of several is incomplete too.
pub(crate) fn shard_set<'a>(
    paths: impl Iterator<Item = &'a str>,
) -> Result<Vec<&'a str>, ShardSetError> {
    let mut files: Vec<&str> = paths.filter(|p| is_gguf(p)).collect();
    files.sort_unstable();
    files.dedup();
    let names: Option<Vec<ShardName>> = files.iter().map(|p| shard_name(p)).collect();
    let names = match (files.len(), names) {
        (0, _) => return Ok(files),
        (1, None) => return Ok(files),
        (_, Some(names)) => names,
        (_, None) => {
            return Err(ShardSetError::Conflicting {
                files: files.iter().map(|f| f.to_string()).collect(),
            });
        }
    };
    let first = &names[0];
    let one_set = names.iter().all(|n| {
        n.stem == first.stem && n.count == first.count && (1..=first.count).contains(&n.no)
    });
    if !one_set {
        return Err(ShardSetError::Conflicting {
            files: files.iter().map(|f| f.to_string()).collect(),
        });
    }
    let width = first.count_text.len();
    let missing: Vec<String> = (1..=first.count)
        .filter(|i| !names.iter().any(|n| n.no == *i))
        .map(|i| format!("{}-{i:0width$}-of-{}.gguf", first.stem, first.count_text))
        .collect();
    if !missing.is_empty() {
        return Err(ShardSetError::MissingShards {
            stem: first.stem.to_string(),
            count: first.count_text.to_string(),
            missing,
        });
    }
    let mut ordered: Vec<(u64, &str)> = names.iter().map(|n| n.no).zip(files).collect();
    ordered.sort_unstable();
    Ok(ordered.into_iter().map(|(_, f)| f).collect())
}

/// What a checked GGUF set says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GgufFacts {
    /// `general.architecture`, one the server serves.
    pub architecture: String,
    /// `general.file_type` by llama.cpp's name (`Q4_K_M`); without one, the type most tensors
    /// have, as llama.cpp guesses it.
    pub quantization: String,
    /// Tensors per ggml type over every shard.
    pub tensor_types: BTreeMap<GgmlType, usize>,
}

/// Reads and checks the header of each file of a set, `(relative path, host path)` in shard
/// order ([`shard_set`]). Metadata comes from the first shard: `llama-gguf-split` writes it there
/// only. `tokenizer_json`: whether a `tokenizer.json` is packaged beside the set; without one the
/// server builds the tokenizer from the metadata, which must describe one it can build.
///
/// Public for the `gguf_header` fuzz target.
#[doc(hidden)]
pub fn read_set(
    files: &[(&str, &Path)],
    tokenizer_json: bool,
) -> Result<Option<GgufFacts>, GgufError> {
    let mut headers = Vec::with_capacity(files.len());
    for (rel, host) in files {
        let header = Header::read(host)?;
        check_split(rel, &header, files.len() as u64)?;
        headers.push(header);
    }
    let Some(first) = headers.first() else {
        return Ok(None);
    };
    let architecture = first
        .architecture()
        .ok_or_else(|| GgufError::NoArchitecture {
            file: first.file.clone(),
        })?;
    if !SERVED_ARCHITECTURES.contains(&architecture) {
        return Err(GgufError::Architecture {
            file: first.file.clone(),
            found: architecture.to_string(),
        });
    }
    if !tokenizer_json {
        check_tokenizer(first)?;
    }
    let mut tensor_types = BTreeMap::new();
    for header in &headers {
        for (ty, n) in header.type_counts() {
            *tensor_types.entry(ty).or_insert(0) += n;
        }
    }
    let quantization = match first.file_type() {
        Some(file_type) => file_type.to_string(),
        None => tensor_types
            .iter()
            .max_by_key(|(ty, n)| (**n, std::cmp::Reverse(**ty)))
            .map_or_else(String::new, |(ty, _)| ty.to_string()),
    };
    Ok(Some(GgufFacts {
        architecture: architecture.to_string(),
        quantization,
        tensor_types,
    }))
}

/// What the server needs to build a tokenizer from the metadata: a vocabulary type it rebuilds
/// and the vocabulary itself. The rest (merges, scores, the pre-tokenizer) it checks at startup,
/// naming the file and the key.
fn check_tokenizer(header: &Header) -> Result<(), GgufError> {
    let refuse = |key, problem: String| {
        Err(GgufError::Tokenizer {
            file: header.file.clone(),
            key,
            problem,
        })
    };
    match header.get(TOKENIZER_MODEL) {
        None => return refuse(TOKENIZER_MODEL, "is missing".into()),
        Some(value) => match value.as_str() {
            None => {
                return refuse(
                    TOKENIZER_MODEL,
                    format!("is a {}, not a string", value.type_name()),
                );
            }
            Some(model) if !SERVED_TOKENIZER_MODELS.contains(&model) => {
                return refuse(
                    TOKENIZER_MODEL,
                    format!(
                        "is `{model}`, a vocabulary the server does not rebuild (it rebuilds {})",
                        SERVED_TOKENIZER_MODELS.join(", ")
                    ),
                );
            }
            Some(_) => {}
        },
    }
    match header.get(TOKENIZER_TOKENS) {
        None => refuse(TOKENIZER_TOKENS, "is missing".into()),
        Some(value) => match value.as_array().and_then(|a| a.as_strings()) {
            None => refuse(
                TOKENIZER_TOKENS,
                format!("is a {}, not an array of strings", value.type_name()),
            ),
            Some([]) => refuse(TOKENIZER_TOKENS, "is empty".into()),
            Some(_) => Ok(()),
        },
    }
}

/// The header's `split.*` keys must agree with the file's name and the set around it.
fn check_split(rel: &str, header: &Header, files: u64) -> Result<(), GgufError> {
    let Some(split) = header.split() else {
        return Ok(());
    };
    let (named_no, named_count) = match shard_name(rel) {
        Some(n) => (n.no, n.count),
        // A lone unsplit name: the header must say so too.
        None => (1, files),
    };
    if split.count != named_count {
        return Err(GgufError::SplitCount {
            file: header.file.clone(),
            header: split.count,
            named: named_count,
        });
    }
    if split.no + 1 != named_no {
        return Err(GgufError::SplitNo {
            file: header.file.clone(),
            header: split.no,
            named: named_no,
        });
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests;
