//! SLSA provenance v1: which inputs (model files at their commit, the server binary and its
//! source revision, the userland files) and which parameters (the manifest, the lock) produced
//! the image, and which builder ran.

use serde_json::{Value, json};

use super::BuildFacts;
use crate::digest::Sha256Digest;

pub const PREDICATE_TYPE: &str = "https://slsa.dev/provenance/v1";
pub const BUILD_TYPE: &str = "https://example.invalid/appliance/build/v1";
pub const BUILDER_ID: &str = "https://example.invalid/appliance/builder";

pub fn predicate(facts: &BuildFacts) -> Value {
    let model = &facts.model;
    let mut deps: Vec<Value> = model
        .files
        .iter()
        .map(|f| {
            // A file from the companion tokenizer source resolves to that source.
            let tokenizer = facts
                .tokenizer
                .as_ref()
                .filter(|t| t.files.iter().any(|t| t.path == f.path));
            let (hub, source) = match tokenizer {
                Some(t) => (&t.hub, &t.source),
                None => (&model.hub, &model.source),
            };
            let uri = match hub {
                Some((repo, commit)) => {
                    format!("https://huggingface.co/{repo}/resolve/{commit}/{}", f.path)
                }
                None => format!("appliance-model:{source}/{}", f.path),
            };
            let mut annotations = json!({"size": f.size});
            if tokenizer.is_some() {
                annotations["role"] = json!("tokenizer (model.tokenizer)");
            }
            json!({
                "uri": uri,
                "name": format!("{}/{}", model.dir, f.path),
                "digest": {"sha256": f.sha256.hex()},
                "annotations": annotations,
            })
        })
        .collect();
    if let Some(q) = &facts.quantization {
        // Inputs of the quantization step: named outside the model dir, since they are not in
        // the image (`verify` matches model-dir names against the layers).
        deps.extend(q.sources.iter().map(|f| {
            let uri = match &model.hub {
                Some((repo, commit)) => {
                    format!("https://huggingface.co/{repo}/resolve/{commit}/{}", f.path)
                }
                None => format!("appliance-model:{}/{}", model.source, f.path),
            };
            json!({
                "uri": uri,
                "name": format!("quantization-input/{}", f.path),
                "digest": {"sha256": f.sha256.hex()},
                "annotations": {"size": f.size, "role": format!("input of model.quantize = \"{}\"", q.file_type)},
            })
        }));
    }
    let server = &facts.server;
    let mut server_dep = json!({
        "uri": format!("pkg:cargo/appliance-server@{}", server.version),
        "name": server.path,
        "digest": {"sha256": server.sha256.hex()},
        "annotations": {"features": server.features, "target": server.target},
    });
    if let Some(rev) = &server.source_revision {
        server_dep["annotations"]["sourceRevision"] = json!(rev);
    }
    deps.push(server_dep);
    if let Some(base) = &facts.base {
        let layers: Vec<String> = base.layers.iter().map(|(d, _, _)| d.prefixed()).collect();
        deps.push(json!({
            "uri": format!("oci:{}@{}", base.name, base.pinned.prefixed()),
            "name": base.name,
            "digest": {"sha256": base.pinned.hex()},
            "annotations": {"role": "base image", "layers": layers},
        }));
    }
    deps.extend(facts.userland.iter().map(|f| {
        let mut dep = json!({
            "uri": format!("file:///{}", f.path.trim_start_matches('/')),
            "name": f.path.trim_start_matches('/'),
            "digest": {"sha256": f.sha256.hex()},
        });
        if let Some(package) = &f.package {
            dep["annotations"] = json!({"package": package});
        }
        dep
    }));

    let mut external = json!({"manifest": document(&facts.manifest)});
    if let Some(lock) = &facts.lock {
        external["lock"] = document(lock);
    }
    let mut internal = json!({"created": facts.created});
    match &facts.evaluation {
        Some(super::EvaluationFacts::Skipped { cases }) => {
            internal["evaluation"] = json!({"skipped": true, "cases": cases});
        }
        Some(super::EvaluationFacts::Ran { summary, .. }) => {
            internal["evaluation"] = summary.clone();
            internal["evaluation"]["skipped"] = json!(false);
        }
        None => {}
    }
    if let Some(q) = &facts.quantization {
        internal["steps"] = json!([{
            "step": "quantize",
            "fileType": q.file_type,
            "converter": q.converter,
            "inputs": q.sources.iter().map(|f| format!("quantization-input/{}", f.path)).collect::<Vec<_>>(),
            "output": format!("{}/{}", model.dir, q.output),
            "tensorTypes": q.tensor_types,
        }]);
    }
    json!({
        "buildDefinition": {
            "buildType": BUILD_TYPE,
            "externalParameters": external,
            "internalParameters": internal,
            "resolvedDependencies": deps,
        },
        "runDetails": {
            "builder": {
                "id": BUILDER_ID,
                "version": {"appliance": facts.builder_version},
            },
            "metadata": {"invocationId": facts.manifest_digest.prefixed()},
        },
    })
}

fn document(doc: &super::NamedDocument) -> Value {
    json!({
        "name": doc.name,
        "sha256": Sha256Digest::of(doc.text.as_bytes()).hex(),
        "content": doc.text,
    })
}
