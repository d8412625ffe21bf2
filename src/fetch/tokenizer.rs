//! Defines the companion tokenizer source (`model.tokenizer`): the tokenizer and chat template
//! that a model's own files lack (GGUF repositories often ship weights only), packaged beside
//! them in the model directory.
//!
//! A Hub source is fetched by [`super::hub`] like the model (same cache, verification and lock);
//! this module lists a local one and holds the rules both share.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::hub::HubSnapshot;
use super::{FetchError, ModelOrigin, glob_set, walk};
use crate::digest::Sha256Digest;
use crate::layers::plan::PlannedFile;
use crate::manifest::{TokenizerSettings, TokenizerSource};

/// What the server tokenizes with; the one file a tokenizer source must have unless its
/// `files` were written out.
pub const TOKENIZER_JSON: &str = "tokenizer.json";

/// A companion source's files, ready to package.
#[derive(Debug, Clone)]
pub struct FetchedTokenizer {
    /// Sorted; each path is relative to both the source and the model directory.
    pub files: Vec<PlannedFile>,
    /// `Hf { repo, revision: <commit> }` or `Path { name }`: never a host path.
    pub origin: ModelOrigin,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error("No file in `{dir}` matches `model.tokenizer.files` ({globs})")]
    NoFiles { dir: PathBuf, globs: String },
    #[error(
        "Tokenizer directory `{dir}` (`model.tokenizer`) has no `tokenizer.json`\n  hint: name a directory that has one, or list the files to take from it in `model.tokenizer.files`"
    )]
    NoTokenizerJson { dir: PathBuf },
    #[error(
        "`{file}` is selected from both the model `{model}` and its tokenizer source `{tokenizer}`; each file in the model directory must come from one source\n  hint: leave it out of `model.files` or out of `model.tokenizer.files`"
    )]
    Overlap {
        file: String,
        model: String,
        tokenizer: String,
    },
    #[error("`model.tokenizer.sha256` pins `{file}`, which is not among the tokenizer files")]
    PinnedFileMissing { file: String },
}

impl FetchedTokenizer {
    /// The files of a verified Hub snapshot of `repo`.
    pub fn from_snapshot(repo: &str, snapshot: &HubSnapshot) -> Self {
        Self {
            files: snapshot
                .files
                .iter()
                .map(|f| PlannedFile {
                    rel_path: f.path.clone(),
                    host_path: f.host_path.clone(),
                    size: f.size,
                })
                .collect(),
            origin: ModelOrigin::Hf {
                repo: repo.to_string(),
                revision: snapshot.commit.clone(),
            },
        }
    }

    /// The paths it adds to the model directory.
    pub fn names(&self) -> Vec<String> {
        self.files.iter().map(|f| f.rel_path.clone()).collect()
    }

    /// Refuses a file that both sources provide: which of the two the user meant cannot be
    /// guessed, and packaging either silently would hide a mistake in the globs.
    pub fn check_no_overlap(
        &self,
        model_label: &str,
        model_files: &[PlannedFile],
    ) -> Result<(), TokenizerError> {
        match self
            .files
            .iter()
            .find(|t| model_files.iter().any(|m| m.rel_path == t.rel_path))
        {
            Some(file) => Err(TokenizerError::Overlap {
                file: file.rel_path.clone(),
                model: model_label.to_string(),
                tokenizer: self.origin.label(),
            }),
            None => Ok(()),
        }
    }

    /// Fails early if a pin names a file this source does not provide.
    pub fn check_pinned_files_present(
        &self,
        pins: &BTreeMap<String, Sha256Digest>,
    ) -> Result<(), TokenizerError> {
        match pins
            .keys()
            .find(|p| !self.files.iter().any(|f| &f.rel_path == *p))
        {
            Some(file) => Err(TokenizerError::PinnedFileMissing { file: file.clone() }),
            None => Ok(()),
        }
    }
}

/// Lists a local (`path`) tokenizer source; `None` for a Hub source, which goes through the
/// lock policy with the model.
pub fn fetch_local(
    settings: &TokenizerSettings,
) -> Result<Option<FetchedTokenizer>, TokenizerError> {
    let TokenizerSource::Path(dir) = &settings.source else {
        return Ok(None);
    };
    let mut files = Vec::new();
    walk(dir, "", &glob_set(&settings.files), &mut files)?;
    files.sort_by(|a, b| a.rel_path.cmp(&b.rel_path));
    if files.is_empty() {
        return Err(TokenizerError::NoFiles {
            dir: dir.clone(),
            globs: settings.files.join(", "),
        });
    }
    if !settings.explicit_files && !files.iter().any(|f| f.rel_path == TOKENIZER_JSON) {
        return Err(TokenizerError::NoTokenizerJson { dir: dir.clone() });
    }
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(Some(FetchedTokenizer {
        files,
        origin: ModelOrigin::Path { name },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(dir: &std::path::Path, files: Option<&[&str]>) -> TokenizerSettings {
        TokenizerSettings {
            source: TokenizerSource::Path(dir.to_path_buf()),
            files: files
                .unwrap_or(crate::manifest::DEFAULT_TOKENIZER_FILES)
                .iter()
                .map(|s| s.to_string())
                .collect(),
            explicit_files: files.is_some(),
            pins: BTreeMap::new(),
        }
    }

    #[test]
    fn default_files_are_whichever_exist_but_tokenizer_json_is_required() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["tokenizer_config.json", "config.json", "model.safetensors"] {
            std::fs::write(dir.path().join(f), b"{}").unwrap();
        }
        let err = fetch_local(&settings(dir.path(), None)).unwrap_err();
        assert!(err.to_string().contains("has no `tokenizer.json`"), "{err}");
        // Explicit globs are taken at their word.
        let only = ["tokenizer_config.json"];
        let t = fetch_local(&settings(dir.path(), Some(&only)))
            .unwrap()
            .unwrap();
        assert_eq!(t.names(), ["tokenizer_config.json"]);

        std::fs::write(dir.path().join("tokenizer.json"), b"{}").unwrap();
        let t = fetch_local(&settings(dir.path(), None)).unwrap().unwrap();
        assert_eq!(t.names(), ["tokenizer.json", "tokenizer_config.json"]);
        let name = dir.path().file_name().unwrap().to_string_lossy();
        assert_eq!(t.origin.label(), format!("path:{name}"));
        let err = fetch_local(&settings(dir.path(), Some(&["*.model"]))).unwrap_err();
        assert!(err.to_string().contains("model.tokenizer.files"), "{err}");
    }

    #[test]
    fn a_file_from_both_sources_names_both() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tokenizer.json"), b"{}").unwrap();
        let t = fetch_local(&settings(dir.path(), None)).unwrap().unwrap();
        let model = |name: &str| PlannedFile {
            rel_path: name.into(),
            host_path: PathBuf::from("/x").join(name),
            size: 2,
        };
        t.check_no_overlap("hf:org/m", &[model("m.gguf")]).unwrap();
        let err = t
            .check_no_overlap("hf:org/m", &[model("m.gguf"), model("tokenizer.json")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`tokenizer.json`")
                && err.contains("`hf:org/m`")
                && err.contains("`path:"),
            "{err}"
        );
        let pins = BTreeMap::from([("vocab.txt".to_string(), Sha256Digest::of(b""))]);
        let err = t.check_pinned_files_present(&pins).unwrap_err().to_string();
        assert!(
            err.contains("model.tokenizer.sha256") && err.contains("vocab.txt"),
            "{err}"
        );
    }
}
