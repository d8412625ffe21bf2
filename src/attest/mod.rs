//! Builds the two attestations a signed image carries: a CycloneDX 1.6 SBOM (what is inside)
//! and SLSA provenance v1 (how it was built), each as an in-toto Statement v1 about the image
//! manifest digest.
//!
//! Everything here derives from facts the build measured (file digests while layers were
//! written, the server's embedded build info), never from the clock or the host, so the
//! statements are as reproducible as the image.

pub mod provenance;
pub mod sbom;

use serde_json::json;

use crate::digest::Sha256Digest;

pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";

/// What the build knows that auditors need, gathered by `commands::build`.
pub struct BuildFacts {
    /// Full reference, e.g. `registry.local/llm/demo:1.0`.
    pub reference: String,
    pub manifest_digest: Sha256Digest,
    /// RFC 3339, the image's `created`.
    pub created: String,
    pub builder_version: String,
    pub model: ModelFacts,
    /// `model.tokenizer`, when the manifest names a companion source.
    pub tokenizer: Option<TokenizerFacts>,
    /// `model.quantize`: the build step that made the image's GGUF from safetensors.
    pub quantization: Option<QuantizationFacts>,
    pub server: ServerFacts,
    pub userland: Vec<FileFact>,
    /// The pre-pulled base image whose layers sit at the bottom of the image, if any.
    pub base: Option<BaseFacts>,
    /// The manifest as written by the user: file name and bytes (it holds no secrets: tokens
    /// and passwords come from the environment).
    pub manifest: NamedDocument,
    pub lock: Option<NamedDocument>,
    /// The `[[eval]]` gate, when the manifest has cases.
    pub evaluation: Option<EvaluationFacts>,
}

/// What the provenance says of the gate, and the test-result predicate when it ran.
pub enum EvaluationFacts {
    /// `--skip-eval`: the cases exist but were not run.
    Skipped { cases: usize },
    Ran {
        /// Counts for the provenance's internal parameters.
        summary: serde_json::Value,
        /// The test-result predicate ([`crate::eval::predicate`]), signed as an attestation.
        predicate: serde_json::Value,
    },
}

/// A base image (`[runtime] base = { image, digest }`): reused byte for byte, so auditors
/// need its pinned digest and the layers taken from it.
pub struct BaseFacts {
    /// The name recorded inside the base archive.
    pub name: String,
    /// The digest the manifest pinned (manifest or config digest).
    pub pinned: Sha256Digest,
    /// `(stored digest, diff_id, size)` of each layer, bottom first.
    pub layers: Vec<(Sha256Digest, Sha256Digest, u64)>,
}

pub struct NamedDocument {
    pub name: String,
    pub text: String,
}

pub struct ModelFacts {
    pub name: String,
    /// Directory in the image, without leading `/`, e.g. `models/demo`.
    pub dir: String,
    /// `hf:org/repo`, `path:dir` or `synthetic:arch` as the labels say.
    pub source: String,
    pub revision: String,
    /// `(repo, commit)` for a Hub model.
    pub hub: Option<(String, String)>,
    /// Paths relative to `dir`.
    pub files: Vec<FileFact>,
    /// What the weights are (GGUF or safetensors, architecture, quantization).
    pub format: Option<crate::fetch::ModelFormat>,
}

/// A companion tokenizer source: a dependency of its own, since its files come from another
/// repository (and commit) than the weights they sit beside.
pub struct TokenizerFacts {
    /// `hf:org/repo` or `path:dir`.
    pub source: String,
    /// `(repo, commit)` for a Hub source.
    pub hub: Option<(String, String)>,
    /// Paths relative to the model dir (they are also among [`ModelFacts::files`]).
    pub files: Vec<FileFact>,
}

impl TokenizerFacts {
    /// `pkg:huggingface/org/repo@commit` for a Hub source.
    pub fn purl(&self) -> Option<String> {
        self.hub
            .as_ref()
            .map(|(repo, commit)| format!("pkg:huggingface/{repo}@{commit}"))
    }
}

/// Build-time quantization: its inputs are not in the image, so the attestations are the only
/// record of what the GGUF was made from.
pub struct QuantizationFacts {
    /// `q4_k_m`, `q6_k`, `q8_0`.
    pub file_type: String,
    /// The converter and method, e.g. `appliance-gguf 1 (llama.cpp reference quantizers)`.
    pub converter: String,
    /// The GGUF's path relative to the model dir.
    pub output: String,
    /// Tensors per ggml type in the output.
    pub tensor_types: std::collections::BTreeMap<String, usize>,
    /// The source files (paths relative to the source model), as read by the converter.
    pub sources: Vec<FileFact>,
}

pub struct ServerFacts {
    /// Path in the image, without leading `/`.
    pub path: String,
    pub version: String,
    pub sha256: Sha256Digest,
    pub size: u64,
    pub features: Vec<String>,
    pub target: String,
    /// `name@version` of every crate compiled into the server.
    pub crates: Vec<String>,
    pub source_revision: Option<String>,
}

#[derive(Clone)]
pub struct FileFact {
    pub path: String,
    pub sha256: Sha256Digest,
    pub size: u64,
    /// `name=version` of the Debian package that shipped it, if known.
    pub package: Option<String>,
}

impl ModelFacts {
    /// `pkg:huggingface/org/repo@commit` for Hub models.
    pub fn purl(&self) -> Option<String> {
        self.hub
            .as_ref()
            .map(|(repo, commit)| format!("pkg:huggingface/{repo}@{commit}"))
    }
}

/// Wraps a predicate into an in-toto Statement v1 about the image.
pub fn statement(
    facts: &BuildFacts,
    predicate_type: &str,
    predicate: serde_json::Value,
) -> serde_json::Result<Vec<u8>> {
    crate::json::canonical(&json!({
        "_type": STATEMENT_TYPE,
        "subject": [{
            "name": facts.reference,
            "digest": {"sha256": facts.manifest_digest.hex()},
        }],
        "predicateType": predicate_type,
        "predicate": predicate,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(base: Option<BaseFacts>) -> BuildFacts {
        let d = |s: &str| Sha256Digest::of(s.as_bytes());
        BuildFacts {
            reference: "registry.local/llm/x:1".into(),
            manifest_digest: d("manifest"),
            created: "2025-06-01T00:00:00Z".into(),
            builder_version: "0.1.0".into(),
            model: ModelFacts {
                name: "x".into(),
                dir: "models/x".into(),
                source: "path:x".into(),
                revision: "".into(),
                hub: None,
                files: vec![],
                format: None,
            },
            tokenizer: None,
            quantization: None,
            server: ServerFacts {
                path: "usr/local/bin/appliance-server".into(),
                version: "0.1.0".into(),
                sha256: d("server"),
                size: 1,
                features: vec![],
                target: "x86_64-unknown-linux-gnu".into(),
                crates: vec![],
                source_revision: None,
            },
            userland: vec![],
            base,
            manifest: NamedDocument {
                name: "m.toml".into(),
                text: "".into(),
            },
            lock: None,
            evaluation: None,
        }
    }

    /// A base image's layers are part of what auditors sign off: both documents name the
    /// pinned digest and every reused layer.
    #[test]
    fn base_image_is_in_the_sbom_and_the_provenance() {
        let d = |s: &str| Sha256Digest::of(s.as_bytes());
        let base = BaseFacts {
            name: "debian:12-slim".into(),
            pinned: d("base"),
            layers: vec![(d("blob"), d("diff"), 42)],
        };
        let with = facts(Some(base));
        let bom = sbom::bom(&with).to_string();
        let prov = provenance::predicate(&with).to_string();
        for text in [&bom, &prov] {
            assert!(text.contains(&d("base").hex()), "{text}");
            assert!(text.contains(&d("blob").prefixed()), "{text}");
        }
        assert!(bom.contains(&d("diff").prefixed()));
        let without = facts(None);
        assert!(!sbom::bom(&without).to_string().contains("base-image"));
    }

    /// The tokenizer's files resolve to its own repository and commit, the weights' to theirs.
    #[test]
    fn tokenizer_source_is_its_own_dependency() {
        let d = |s: &str| Sha256Digest::of(s.as_bytes());
        let fact = |path: &str| FileFact {
            path: path.into(),
            sha256: d(path),
            size: 1,
            package: None,
        };
        let mut with = facts(None);
        with.model.hub = Some(("org/m-gguf".into(), "1".repeat(40)));
        with.model.files = vec![fact("m.gguf"), fact("tokenizer.json")];
        with.tokenizer = Some(TokenizerFacts {
            source: "hf:org/m".into(),
            hub: Some(("org/m".into(), "2".repeat(40))),
            files: vec![fact("tokenizer.json")],
        });
        let prov = provenance::predicate(&with);
        let deps = prov["buildDefinition"]["resolvedDependencies"]
            .as_array()
            .unwrap();
        let uri = |name: &str| {
            deps.iter()
                .find(|dep| dep["name"] == format!("models/x/{name}"))
                .map(|dep| dep["uri"].as_str().unwrap().to_string())
                .unwrap()
        };
        assert_eq!(
            uri("m.gguf"),
            format!(
                "https://huggingface.co/org/m-gguf/resolve/{}/m.gguf",
                "1".repeat(40)
            )
        );
        assert_eq!(
            uri("tokenizer.json"),
            format!(
                "https://huggingface.co/org/m/resolve/{}/tokenizer.json",
                "2".repeat(40)
            )
        );
        let bom = sbom::bom(&with);
        let tok = bom["components"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["bom-ref"] == "tokenizer")
            .unwrap();
        assert_eq!(
            tok["purl"],
            format!("pkg:huggingface/org/m@{}", "2".repeat(40))
        );
        assert_eq!(tok["components"][0]["name"], "models/x/tokenizer.json");
        assert_eq!(
            tok["components"][0]["hashes"][0]["content"],
            d("tokenizer.json").hex()
        );
    }

    /// Auditors see which weights they sign off: format, architecture and quantization are
    /// properties of the model component, the architecture its model card's family too.
    #[test]
    fn the_model_format_is_in_the_sbom() {
        let mut with = facts(None);
        with.model.format = Some(crate::fetch::ModelFormat {
            weights: crate::fetch::WeightFormat::Gguf,
            architecture: Some("qwen2".into()),
            quantization: Some("Q4_K_M".into()),
        });
        let bom = sbom::bom(&with);
        let model = &bom["components"][0];
        assert_eq!(model["bom-ref"], "model");
        let property = |name: &str| {
            model["properties"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["name"] == name)
                .map(|p| p["value"].as_str().unwrap().to_string())
        };
        assert_eq!(property("appliance:format").as_deref(), Some("gguf"));
        assert_eq!(property("appliance:architecture").as_deref(), Some("qwen2"));
        assert_eq!(
            property("appliance:quantization").as_deref(),
            Some("Q4_K_M")
        );
        assert_eq!(
            model["modelCard"]["modelParameters"]["architectureFamily"],
            "qwen2"
        );
        let without = sbom::bom(&facts(None));
        assert!(!without.to_string().contains("appliance:quantization"));
    }
}
