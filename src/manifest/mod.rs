//! Defines `manifest.toml`: what the user asks for, parsed strictly and validated before any work.
//!
//! Parsing is split from resolution: [`RawManifest`] is exactly what the TOML says (serde with
//! `deny_unknown_fields`, so a typo is an error rather than a silently ignored setting), and
//! [`Manifest`] is the validated, path-resolved form every later stage consumes. Relative paths
//! resolve against the manifest's own directory so a build does not depend on the working dir.

pub mod eval;
mod reference;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::digest::Sha256Digest;
use crate::synthetic::SyntheticSpec;
pub use reference::ImageRef;

/// Everything that can be wrong with a manifest; the binary maps all of these to exit code 2.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("Failed to read manifest `{path}`")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Invalid manifest `{path}`: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("Invalid manifest `{path}`: field `{field}`: {message}")]
    Field {
        path: PathBuf,
        field: String,
        message: String,
    },
}

/// The manifest as written. Field names are a contract with users and other tools.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawManifest {
    pub image: RawImage,
    pub model: RawModel,
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub runtime: RawRuntime,
    pub signing: Option<RawSigning>,
    /// `[[eval]]`: the release gate's cases.
    #[serde(default)]
    pub eval: Vec<eval::RawEvalCase>,
    pub evals: Option<eval::RawEvals>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawImage {
    pub name: String,
    pub tag: String,
    pub created: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub output: Option<PathBuf>,
    #[serde(default)]
    pub compression: Compression,
}

pub use crate::layers::Compression;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModel {
    pub path: Option<PathBuf>,
    pub hf: Option<String>,
    pub revision: Option<String>,
    pub files: Option<Vec<String>>,
    pub synthetic: Option<SyntheticSpec>,
    #[serde(default)]
    pub sha256: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "tokenizer_table")]
    pub tokenizer: Option<RawTokenizer>,
    /// `"q4_k_m"`, `"q6_k"` or `"q8_0"`: turn safetensors weights into one GGUF file at build.
    pub quantize: Option<String>,
    /// Every packaged model file must have a `[model.sha256]` pin (tokenizer files: theirs).
    pub require_pins: Option<bool>,
}

/// `[model] tokenizer = { hf = "org/repo" }` or `{ path = "dir" }`: where the tokenizer and chat
/// template come from when the model's own files lack them (GGUF repositories often do).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTokenizer {
    pub hf: Option<String>,
    pub path: Option<PathBuf>,
    pub revision: Option<String>,
    pub files: Option<Vec<String>>,
    #[serde(default)]
    pub sha256: BTreeMap<String, String>,
}

/// serde's own message (``unknown field `x` ``) does not say which table it is about; an inline
/// table has no header line to point at, so the field name goes into the message.
fn tokenizer_table<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<RawTokenizer>, D::Error> {
    RawTokenizer::deserialize(d)
        .map(Some)
        .map_err(|e| serde::de::Error::custom(format!("field `model.tokenizer`: {e}")))
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub port: Option<u16>,
    pub served_model_name: Option<String>,
    pub max_model_len: Option<u32>,
    pub device: Option<Device>,
    #[serde(default)]
    pub args: Vec<String>,
    pub binary: Option<PathBuf>,
    pub launcher: Option<PathBuf>,
    #[serde(default)]
    pub healthcheck: RawHealthcheck,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealthcheck {
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub start_period: Option<String>,
    pub retries: Option<u32>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    #[default]
    Cpu,
    Cuda,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRuntime {
    pub user: Option<String>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub base: Option<RawBase>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawBase {
    Named(String),
    Image { image: PathBuf, digest: String },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSigning {
    pub key: PathBuf,
}

/// A validated manifest with every path made absolute.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// The manifest file itself, for error messages and provenance.
    pub path: PathBuf,
    pub image: ImageSettings,
    pub model: ModelSettings,
    pub server: ServerSettings,
    pub runtime: RuntimeSettings,
    pub signing: Option<SigningSettings>,
    /// The evaluation gate: `[[eval]]` cases, then those of `[evals] file`.
    pub eval: eval::EvalSettings,
}

#[derive(Debug, Clone)]
pub struct ImageSettings {
    pub reference: ImageRef,
    /// Seconds since the Unix epoch; every timestamp in the image derives from it.
    pub created: i64,
    pub labels: BTreeMap<String, String>,
    pub output: Option<PathBuf>,
    pub compression: Compression,
}

#[derive(Debug, Clone)]
pub struct ModelSettings {
    pub source: ModelSource,
    /// Globs selecting the files to package (Hub and path sources).
    pub files: Vec<String>,
    /// Expected sha256 per file path (relative to the model dir).
    pub pins: BTreeMap<String, Sha256Digest>,
    /// A companion source whose files land beside the model's.
    pub tokenizer: Option<TokenizerSettings>,
    /// Build-time quantization of safetensors weights into one GGUF file.
    pub quantize: Option<appliance_gguf::convert::FileType>,
    /// `require_pins = true`: a packaged file without a pin is an error, not a silent pass.
    pub require_pins: bool,
}

/// `model.tokenizer`, validated.
#[derive(Debug, Clone)]
pub struct TokenizerSettings {
    pub source: TokenizerSource,
    /// Globs selecting the files to package.
    pub files: Vec<String>,
    /// Whether `files` was written out: the defaults are "whichever exist", yet must include
    /// `tokenizer.json`, while explicit globs are taken at their word.
    pub explicit_files: bool,
    /// Expected sha256 per file path.
    pub pins: BTreeMap<String, Sha256Digest>,
}

/// Where a companion tokenizer comes from; never synthetic (a generated model has its own).
#[derive(Debug, Clone, PartialEq)]
pub enum TokenizerSource {
    Path(PathBuf),
    Hub { repo: String, revision: String },
}

#[derive(Debug, Clone, PartialEq)]
pub enum ModelSource {
    /// A local directory in Hugging Face layout.
    Path(PathBuf),
    /// A Hub repository at a revision (a branch, tag or commit).
    Hub {
        repo: String,
        revision: String,
    },
    Synthetic(SyntheticSpec),
}

#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub port: u16,
    pub served_model_name: String,
    pub max_model_len: Option<u32>,
    pub device: Device,
    pub args: Vec<String>,
    pub binary: Option<PathBuf>,
    /// `appliance-launcher` for a `cuda` image; default: beside the server binary.
    pub launcher: Option<PathBuf>,
    pub healthcheck: HealthcheckSettings,
}

/// Docker HEALTHCHECK timing; `start_period` is `None` when it should be sized from the weights.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthcheckSettings {
    pub interval_secs: u64,
    pub timeout_secs: u64,
    pub start_period_secs: Option<u64>,
    pub retries: u32,
}

#[derive(Debug, Clone)]
pub struct RuntimeSettings {
    pub user: String,
    pub uid: u32,
    pub gid: u32,
    pub base: Base,
}

/// Where the server's userland (loader, libc, ...) comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Base {
    /// The ELF dependency closure of the packaged executables, taken from the build host.
    Host,
    /// Nothing: the server must be fully static.
    Scratch,
    /// A pre-pulled base image tarball or OCI layout, pinned by digest.
    Image { path: PathBuf, digest: Sha256Digest },
}

#[derive(Debug, Clone)]
pub struct SigningSettings {
    pub key: PathBuf,
}

/// The model files packaged when the manifest lists none: what a server needs, and never
/// pickled weights (`*.bin`, `*.pt`), which can execute code when loaded.
/// The tokenizer files taken from a companion source when the manifest lists none: what the
/// server reads to tokenize and to render chats, and nothing that could shadow the model.
pub const DEFAULT_TOKENIZER_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
    "chat_template.jinja",
    "special_tokens_map.json",
];

pub const DEFAULT_MODEL_FILES: &[&str] = &[
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "*.safetensors",
    "model.safetensors.index.json",
];

const DEFAULT_USER: &str = "appliance";
const DEFAULT_ID: u32 = 65532;

impl Manifest {
    /// Reads and validates `path`. `source_date_epoch` is `SOURCE_DATE_EPOCH` as the caller read
    /// it: stages never read the environment themselves.
    pub fn load(path: &Path, source_date_epoch: Option<&str>) -> Result<Self, ManifestError> {
        Self::load_with(path, source_date_epoch, true)
    }

    /// Reads and validates `path` as an auditor holds it, away from the build host: local model
    /// and tokenizer directories and the eval cases file need not exist (a missing eval file
    /// contributes no cases).
    pub fn load_for_review(path: &Path) -> Result<Self, ManifestError> {
        Self::load_with(path, None, false)
    }

    fn load_with(
        path: &Path,
        source_date_epoch: Option<&str>,
        check_sources: bool,
    ) -> Result<Self, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base_dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let base_dir = std::path::absolute(&base_dir).map_err(|source| ManifestError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path, &base_dir, source_date_epoch, check_sources)
    }

    /// Parses and validates manifest `text` as read from `path`, relative paths resolved against
    /// `base_dir`: what [`Manifest::load`] (`check_sources`: local sources must exist) and
    /// [`Manifest::load_for_review`] do once the file is read. The `manifest` fuzz target's
    /// entry point.
    pub fn parse(
        text: &str,
        path: &Path,
        base_dir: &Path,
        source_date_epoch: Option<&str>,
        check_sources: bool,
    ) -> Result<Self, ManifestError> {
        let raw: RawManifest = toml::from_str(text).map_err(|e| ManifestError::Parse {
            path: path.to_path_buf(),
            message: describe_toml_error(text, &e),
        })?;
        Self::from_raw(raw, path, base_dir, source_date_epoch, check_sources)
    }

    fn from_raw(
        raw: RawManifest,
        path: &Path,
        base_dir: &Path,
        source_date_epoch: Option<&str>,
        check_sources: bool,
    ) -> Result<Self, ManifestError> {
        let field = |field: &str, message: String| ManifestError::Field {
            path: path.to_path_buf(),
            field: field.to_string(),
            message,
        };
        let resolve = |p: &Path| base_dir.join(p);

        let reference =
            ImageRef::new(&raw.image.name, &raw.image.tag).map_err(|(f, m)| field(f, m))?;
        let created = resolve_created(raw.image.created.as_deref(), source_date_epoch)
            .map_err(|(f, m)| field(f, m))?;
        for key in raw.image.labels.keys() {
            if key.is_empty() || key.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(field("image.labels", format!("invalid label key `{key}`")));
            }
            // Auditors rely on these being what the builder measured.
            if key.starts_with(crate::labels::PREFIX) {
                return Err(field(
                    "image.labels",
                    format!("`{key}` uses the reserved `appliance.` prefix"),
                ));
            }
        }

        let model =
            resolve_model(&raw.model, &resolve, check_sources).map_err(|(f, m)| field(f, m))?;
        let served_model_name = match raw.server.served_model_name {
            Some(name) => name,
            None => default_served_name(&model.source),
        };
        validate_served_name(&served_model_name)
            .map_err(|m| field("server.served_model_name", m))?;

        let hc = &raw.server.healthcheck;
        let secs = |name: &str, v: &Option<String>| -> Result<Option<u64>, ManifestError> {
            v.as_deref()
                .map(|s| {
                    parse_duration_secs(s)
                        .map_err(|m| field(&format!("server.healthcheck.{name}"), m))
                })
                .transpose()
        };
        let healthcheck = HealthcheckSettings {
            interval_secs: secs("interval", &hc.interval)?.unwrap_or(30),
            timeout_secs: secs("timeout", &hc.timeout)?.unwrap_or(10),
            start_period_secs: secs("start_period", &hc.start_period)?,
            retries: hc.retries.unwrap_or(3),
        };
        if healthcheck.interval_secs == 0 || healthcheck.timeout_secs == 0 {
            return Err(field(
                "server.healthcheck",
                "interval and timeout must be at least 1s".into(),
            ));
        }
        let port = raw.server.port.unwrap_or(8000);
        if port == 0 {
            return Err(field("server.port", "must be between 1 and 65535".into()));
        }

        let user = raw.runtime.user.unwrap_or_else(|| DEFAULT_USER.to_string());
        validate_user_name(&user).map_err(|m| field("runtime.user", m))?;
        let uid = raw.runtime.uid.unwrap_or(DEFAULT_ID);
        let gid = raw.runtime.gid.unwrap_or(DEFAULT_ID);
        if uid == 0 {
            return Err(field(
                "runtime.uid",
                "the server must not run as root (uid 0); pick a non-zero uid such as 65532".into(),
            ));
        }
        let base = match raw.runtime.base {
            None => Base::Host,
            Some(RawBase::Named(name)) => match name.as_str() {
                "host" => Base::Host,
                "scratch" => Base::Scratch,
                other => {
                    return Err(field(
                        "runtime.base",
                        format!(
                            "unknown base `{other}`; expected `host`, `scratch` or {{ image = \"...\", digest = \"sha256:...\" }}"
                        ),
                    ));
                }
            },
            Some(RawBase::Image { image, digest }) => Base::Image {
                path: resolve(&image),
                digest: Sha256Digest::parse_prefixed(&digest)
                    .map_err(|m| field("runtime.base.digest", m))?,
            },
        };

        let eval = resolve_eval(
            raw.eval,
            raw.evals.unwrap_or_default(),
            &resolve,
            check_sources,
        )
        .map_err(|e| field(&e.field, e.message))?;

        Ok(Manifest {
            path: path.to_path_buf(),
            image: ImageSettings {
                reference,
                created,
                labels: raw.image.labels,
                output: raw.image.output.as_deref().map(resolve),
                compression: raw.image.compression,
            },
            model,
            server: ServerSettings {
                port,
                served_model_name,
                max_model_len: raw.server.max_model_len,
                device: raw.server.device.unwrap_or_default(),
                args: raw.server.args,
                binary: raw.server.binary.as_deref().map(resolve),
                launcher: raw.server.launcher.as_deref().map(resolve),
                healthcheck,
            },
            runtime: RuntimeSettings {
                user,
                uid,
                gid,
                base,
            },
            signing: raw.signing.map(|s| SigningSettings {
                key: resolve(&s.key),
            }),
            eval,
        })
    }
}

fn resolve_eval(
    inline: Vec<eval::RawEvalCase>,
    evals: eval::RawEvals,
    resolve: &dyn Fn(&Path) -> PathBuf,
    check_sources: bool,
) -> Result<eval::EvalSettings, eval::CaseError> {
    let mut cases = inline
        .into_iter()
        .enumerate()
        .map(|(i, c)| c.check(&format!("eval[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(file) = evals
        .file
        .as_ref()
        .filter(|f| check_sources || resolve(f).exists())
    {
        cases.extend(eval::read_jsonl(
            &resolve(file),
            &file.display().to_string(),
        )?);
    }
    let mut names = std::collections::BTreeSet::new();
    if let Some(dup) = cases.iter().find(|c| !names.insert(c.name.as_str())) {
        return Err(eval::CaseError {
            field: "eval".into(),
            message: format!("two cases are named `{}`; names identify results", dup.name),
        });
    }
    let min_pass_rate = evals.min_pass_rate.unwrap_or(1.0);
    if !(min_pass_rate > 0.0 && min_pass_rate <= 1.0) {
        return Err(eval::CaseError {
            field: "evals.min_pass_rate".into(),
            message: "must be above 0 and at most 1".into(),
        });
    }
    Ok(eval::EvalSettings {
        cases,
        min_pass_rate,
    })
}

type FieldError = (&'static str, String);

fn resolve_model(
    raw: &RawModel,
    resolve: &dyn Fn(&Path) -> PathBuf,
    check_sources: bool,
) -> Result<ModelSettings, FieldError> {
    let given: Vec<&str> = [
        raw.path.as_ref().map(|_| "path"),
        raw.hf.as_ref().map(|_| "hf"),
        raw.synthetic.as_ref().map(|_| "synthetic"),
    ]
    .into_iter()
    .flatten()
    .collect();
    if given.len() != 1 {
        let found = if given.is_empty() {
            "none".to_string()
        } else {
            given
                .iter()
                .map(|g| format!("`{g}`"))
                .collect::<Vec<_>>()
                .join(" and ")
        };
        return Err((
            "model",
            format!("exactly one source is required: `path`, `hf` or `synthetic` (found {found})"),
        ));
    }
    if raw.hf.is_none() && raw.revision.is_some() {
        return Err((
            "model.revision",
            "`revision` only applies to an `hf` source".into(),
        ));
    }
    if raw.synthetic.is_some() && raw.files.is_some() {
        return Err((
            "model.files",
            "`files` does not apply to a `synthetic` source".into(),
        ));
    }
    let files = match &raw.files {
        Some(files) if files.is_empty() => {
            return Err(("model.files", "must list at least one glob".into()));
        }
        Some(files) => files.clone(),
        None => DEFAULT_MODEL_FILES.iter().map(|s| s.to_string()).collect(),
    };
    for glob in &files {
        globset::Glob::new(glob)
            .map_err(|e| ("model.files", format!("invalid glob `{glob}`: {e}")))?;
    }
    let source = if let Some(path) = &raw.path {
        let dir = resolve(path);
        if check_sources && !dir.is_dir() {
            return Err((
                "model.path",
                format!(
                    "model directory `{}` does not exist or is not a directory",
                    dir.display()
                ),
            ));
        }
        ModelSource::Path(dir)
    } else if let Some(repo) = &raw.hf {
        validate_repo_id(repo).map_err(|m| ("model.hf", m))?;
        let revision = raw.revision.clone().unwrap_or_else(|| "main".to_string());
        if revision.is_empty() || revision.contains("..") || revision.starts_with('/') {
            return Err(("model.revision", format!("invalid revision `{revision}`")));
        }
        ModelSource::Hub {
            repo: repo.clone(),
            revision,
        }
    } else {
        let spec = raw
            .synthetic
            .clone()
            .ok_or(("model", "no source".to_string()))?;
        spec.validate()
            .map_err(|e| ("model.synthetic", e.to_string()))?;
        ModelSource::Synthetic(spec)
    };
    let pins = parse_pins(&raw.sha256, "model.sha256")?;
    let tokenizer = match &raw.tokenizer {
        None => None,
        Some(_) if matches!(source, ModelSource::Synthetic(_)) => {
            return Err((
                "model.tokenizer",
                "does not apply to a `synthetic` source, which generates its own tokenizer".into(),
            ));
        }
        Some(t) => Some(resolve_tokenizer(t, resolve, check_sources)?),
    };
    let quantize = match &raw.quantize {
        None => None,
        Some(name) => Some(
            appliance_gguf::convert::FileType::parse(name).ok_or_else(|| {
                let known: Vec<&str> = appliance_gguf::convert::FileType::ALL
                    .iter()
                    .map(|t| t.name())
                    .collect();
                (
                    "model.quantize",
                    format!(
                        "unknown quantization `{name}` (one of: {})",
                        known.join(", ")
                    ),
                )
            })?,
        ),
    };
    Ok(ModelSettings {
        source,
        files,
        pins,
        tokenizer,
        quantize,
        require_pins: raw.require_pins.unwrap_or(false),
    })
}

fn resolve_tokenizer(
    raw: &RawTokenizer,
    resolve: &dyn Fn(&Path) -> PathBuf,
    check_sources: bool,
) -> Result<TokenizerSettings, FieldError> {
    let source = match (&raw.hf, &raw.path) {
        (Some(repo), None) => {
            validate_repo_id(repo).map_err(|m| ("model.tokenizer.hf", m))?;
            let revision = raw.revision.clone().unwrap_or_else(|| "main".to_string());
            if revision.is_empty() || revision.contains("..") || revision.starts_with('/') {
                return Err((
                    "model.tokenizer.revision",
                    format!("invalid revision `{revision}`"),
                ));
            }
            TokenizerSource::Hub {
                repo: repo.clone(),
                revision,
            }
        }
        (None, Some(path)) => {
            if raw.revision.is_some() {
                return Err((
                    "model.tokenizer.revision",
                    "`revision` only applies to an `hf` source".into(),
                ));
            }
            let dir = resolve(path);
            if check_sources && !dir.is_dir() {
                return Err((
                    "model.tokenizer.path",
                    format!(
                        "tokenizer directory `{}` does not exist or is not a directory",
                        dir.display()
                    ),
                ));
            }
            TokenizerSource::Path(dir)
        }
        (hf, path) => {
            let found = if hf.is_some() && path.is_some() {
                "both"
            } else {
                "neither"
            };
            return Err((
                "model.tokenizer",
                format!("exactly one source is required: `hf` or `path` (found {found})"),
            ));
        }
    };
    let (files, explicit_files) = match &raw.files {
        Some(files) if files.is_empty() => {
            return Err((
                "model.tokenizer.files",
                "must list at least one glob".into(),
            ));
        }
        Some(files) => (files.clone(), true),
        None => (
            DEFAULT_TOKENIZER_FILES
                .iter()
                .map(|s| s.to_string())
                .collect(),
            false,
        ),
    };
    for glob in &files {
        globset::Glob::new(glob).map_err(|e| {
            (
                "model.tokenizer.files",
                format!("invalid glob `{glob}`: {e}"),
            )
        })?;
    }
    Ok(TokenizerSettings {
        source,
        files,
        explicit_files,
        pins: parse_pins(&raw.sha256, "model.tokenizer.sha256")?,
    })
}

fn parse_pins(
    raw: &BTreeMap<String, String>,
    field: &'static str,
) -> Result<BTreeMap<String, Sha256Digest>, FieldError> {
    let mut pins = BTreeMap::new();
    for (file, hex) in raw {
        let digest =
            Sha256Digest::parse(hex).map_err(|m| (field, format!("pin for `{file}`: {m}")))?;
        pins.insert(file.clone(), digest);
    }
    Ok(pins)
}

/// The name clients pass as `model`: the Hub id (as vLLM does), else the directory name.
fn default_served_name(source: &ModelSource) -> String {
    match source {
        ModelSource::Path(dir) => dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".to_string()),
        ModelSource::Hub { repo, .. } => repo.clone(),
        ModelSource::Synthetic(spec) => format!("synthetic-{}", spec.arch.as_str()),
    }
}

/// The served name becomes a directory under `/models/`, so it must be a safe relative path.
fn validate_served_name(name: &str) -> Result<(), String> {
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'));
    let ok_parts = name
        .split('/')
        .all(|part| !part.is_empty() && part != "." && part != "..");
    if name.is_empty() || name.len() > 128 || !ok_chars || !ok_parts {
        return Err(format!(
            "invalid served model name `{name}`: use letters, digits, `.`, `_`, `-` and `/` between non-empty parts (at most 128 characters)"
        ));
    }
    Ok(())
}

fn validate_repo_id(repo: &str) -> Result<(), String> {
    let parts: Vec<&str> = repo.split('/').collect();
    let part_ok = |p: &str| {
        !p.is_empty()
            && p != "."
            && p != ".."
            && p.len() <= 96
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    };
    if parts.len() != 2 || !parts.iter().all(|p| part_ok(p)) {
        return Err(format!(
            "invalid Hugging Face repository `{repo}`: expected `org/name`"
        ));
    }
    Ok(())
}

/// POSIX portable user names, as `useradd` accepts them by default.
fn validate_user_name(user: &str) -> Result<(), String> {
    let mut chars = user.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    let rest_ok =
        chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-'));
    if !first_ok || !rest_ok || user.len() > 32 || user == "root" {
        return Err(format!(
            "invalid user name `{user}`: lowercase letters, digits, `_` and `-`, starting with a letter (and not `root`)"
        ));
    }
    Ok(())
}

/// `created` wins, then `SOURCE_DATE_EPOCH`, then the epoch: never the wall clock, which would
/// make every build's bytes differ.
fn resolve_created(created: Option<&str>, sde: Option<&str>) -> Result<i64, FieldError> {
    if let Some(text) = created {
        let ts: jiff::Timestamp = text.parse().map_err(|e| {
            (
                "image.created",
                format!("`{text}` is not an RFC 3339 timestamp (e.g. 2025-01-31T12:00:00Z): {e}"),
            )
        })?;
        return non_negative(ts.as_second(), "image.created");
    }
    if let Some(text) = sde.filter(|s| !s.is_empty()) {
        let secs: i64 = text.trim().parse().map_err(|_| {
            (
                "SOURCE_DATE_EPOCH",
                format!("`{text}` is not an integer number of seconds"),
            )
        })?;
        return non_negative(secs, "SOURCE_DATE_EPOCH");
    }
    Ok(0)
}

fn non_negative(secs: i64, field: &'static str) -> Result<i64, FieldError> {
    if secs < 0 {
        return Err((field, "must not be before 1970-01-01T00:00:00Z".into()));
    }
    Ok(secs)
}

/// Accepts `90`, `90s`, `5m`, `1m30s` and ISO 8601 (`PT90S`), as whole seconds.
fn parse_duration_secs(text: &str) -> Result<u64, String> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(secs);
    }
    let d: jiff::SignedDuration = text
        .parse()
        .map_err(|_| format!("`{text}` is not a duration (e.g. `30s`, `5m`, `1m30s`)"))?;
    if d.is_negative() || d.subsec_nanos() != 0 {
        return Err(format!(
            "`{text}` must be a whole, non-negative number of seconds"
        ));
    }
    Ok(d.as_secs() as u64)
}

/// Turns toml's error into one line with the line/column first, which is what users scan for.
fn describe_toml_error(text: &str, err: &toml::de::Error) -> String {
    let message = err.message().trim().to_string();
    match err.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message,
    }
}

#[cfg(test)]
mod tests;
