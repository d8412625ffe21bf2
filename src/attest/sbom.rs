//! The CycloneDX 1.6 SBOM: the model as a `machine-learning-model` with every file nested, the
//! server with every crate compiled into it, and every other file of the userland.

use serde_json::{Value, json};

use super::{BuildFacts, FileFact};

pub const PREDICATE_TYPE: &str = "https://cyclonedx.org/bom";

/// The BOM document itself (the attestation's predicate).
pub fn bom(facts: &BuildFacts) -> Value {
    let model = &facts.model;
    let model_files: Vec<Value> = model
        .files
        .iter()
        .map(|f| file(&format!("{}/{}", model.dir, f.path), f))
        .collect();
    let mut model_component = json!({
        "type": "machine-learning-model",
        "bom-ref": "model",
        "name": model.name,
        "version": model.revision,
        "properties": [
            {"name": "appliance:source", "value": model.source},
            {"name": "appliance:path", "value": format!("/{}", model.dir)},
        ],
        "modelCard": {"modelParameters": {"task": "text-generation"}},
        "components": model_files,
    });
    if let Some(purl) = model.purl() {
        model_component["purl"] = json!(purl);
    }
    if let Some(format) = &model.format {
        let mut properties =
            vec![json!({"name": "appliance:format", "value": format.weights.as_str()})];
        if let Some(architecture) = &format.architecture {
            properties.push(json!({"name": "appliance:architecture", "value": architecture}));
            model_component["modelCard"]["modelParameters"]["architectureFamily"] =
                json!(architecture);
        }
        if let Some(quantization) = &format.quantization {
            properties.push(json!({"name": "appliance:quantization", "value": quantization}));
        }
        if let Some(list) = model_component["properties"].as_array_mut() {
            list.extend(properties);
        }
    }

    let server = &facts.server;
    let crates: Vec<Value> = server
        .crates
        .iter()
        .filter_map(|c| c.split_once('@'))
        .map(|(name, version)| {
            json!({
                "type": "library",
                "bom-ref": format!("pkg:cargo/{name}@{version}"),
                "name": name,
                "version": version,
                "purl": format!("pkg:cargo/{name}@{version}"),
            })
        })
        .collect();
    let server_component = json!({
        "type": "application",
        "bom-ref": "server",
        "name": "appliance-server",
        "version": server.version,
        "purl": format!("pkg:cargo/appliance-server@{}", server.version),
        "hashes": [{"alg": "SHA-256", "content": server.sha256.hex()}],
        "properties": [
            {"name": "appliance:path", "value": format!("/{}", server.path)},
            {"name": "appliance:features", "value": server.features.join(",")},
            {"name": "appliance:target", "value": server.target},
            {"name": "appliance:size", "value": server.size.to_string()},
        ],
        "components": crates,
    });

    let mut components = vec![model_component, server_component];
    if let Some(q) = &facts.quantization {
        components.push(quantization_source(q, model));
    }
    if let Some(tokenizer) = &facts.tokenizer {
        components.push(tokenizer_component(tokenizer, &model.dir));
    }
    if let Some(base) = &facts.base {
        let layers: Vec<Value> = base
            .layers
            .iter()
            .map(|(digest, diff_id, size)| {
                json!({
                    "type": "data",
                    "name": digest.prefixed(),
                    "hashes": [{"alg": "SHA-256", "content": digest.hex()}],
                    "properties": [
                        {"name": "appliance:diff_id", "value": diff_id.prefixed()},
                        {"name": "appliance:size", "value": size.to_string()},
                    ],
                })
            })
            .collect();
        components.push(json!({
            "type": "container",
            "bom-ref": "base-image",
            "name": base.name,
            "version": base.pinned.prefixed(),
            "hashes": [{"alg": "SHA-256", "content": base.pinned.hex()}],
            "properties": [{"name": "appliance:role", "value": "base image (layers reused byte for byte)"}],
            "components": layers,
        }));
    }
    components.extend(facts.userland.iter().map(|f| file(&f.path, f)));
    json!({
        "bomFormat": "CycloneDX",
        "specVersion": "1.6",
        "serialNumber": serial_number(facts),
        "version": 1,
        "metadata": {
            "timestamp": facts.created,
            "tools": {"components": [{
                "type": "application",
                "name": "appliance",
                "version": facts.builder_version,
            }]},
            "component": {
                "type": "container",
                "bom-ref": "image",
                "name": facts.reference,
                "version": facts.manifest_digest.prefixed(),
            },
        },
        "components": components,
    })
}

/// The companion tokenizer source, beside the model rather than inside it: the model component
/// lists every file of the model directory (what `verify` checks), this one says which of them
/// came from another repository and commit.
fn tokenizer_component(tokenizer: &super::TokenizerFacts, dir: &str) -> Value {
    let files: Vec<Value> = tokenizer
        .files
        .iter()
        .map(|f| file(&format!("{dir}/{}", f.path), f))
        .collect();
    let mut component = json!({
        "type": "data",
        "bom-ref": "tokenizer",
        "name": tokenizer.hub.as_ref().map_or(tokenizer.source.as_str(), |(repo, _)| repo),
        "properties": [
            {"name": "appliance:source", "value": tokenizer.source},
            {"name": "appliance:role", "value": "tokenizer and chat template of the model (model.tokenizer)"},
            {"name": "appliance:path", "value": format!("/{dir}")},
        ],
        "components": files,
    });
    if let Some((_, commit)) = &tokenizer.hub {
        component["version"] = json!(commit);
    }
    if let Some(purl) = tokenizer.purl() {
        component["purl"] = json!(purl);
    }
    component
}

/// The safetensors checkpoint a `model.quantize` build made its GGUF from: not in the image,
/// listed so that an auditor can tie the quantized weights to a published checkpoint.
fn quantization_source(q: &super::QuantizationFacts, model: &super::ModelFacts) -> Value {
    let files: Vec<Value> = q
        .sources
        .iter()
        .map(|f| file(&format!("quantization-input/{}", f.path), f))
        .collect();
    let mut component = json!({
        "type": "data",
        "bom-ref": "model-source",
        "name": model.hub.as_ref().map_or(model.source.as_str(), |(repo, _)| repo),
        "description": format!(
            "source checkpoint of {}/{} (model.quantize = \"{}\", {}); not in the image",
            model.dir, q.output, q.file_type, q.converter
        ),
        "properties": [
            {"name": "appliance:source", "value": model.source},
            {"name": "appliance:role", "value": "quantization input"},
            {"name": "appliance:quantize", "value": q.file_type},
        ],
        "components": files,
    });
    if let Some(purl) = model.purl() {
        component["purl"] = json!(purl);
    }
    if let Some((_, commit)) = &model.hub {
        component["version"] = json!(commit);
    }
    component
}

/// A `file` component named by its path in the image (no leading `/`).
fn file(path: &str, f: &FileFact) -> Value {
    let mut properties = vec![json!({"name": "appliance:size", "value": f.size.to_string()})];
    if let Some(package) = &f.package {
        properties.push(json!({"name": "appliance:package", "value": package}));
    }
    json!({
        "type": "file",
        "name": path.trim_start_matches('/'),
        "hashes": [{"alg": "SHA-256", "content": f.sha256.hex()}],
        "properties": properties,
    })
}

/// A UUID derived from the manifest digest: unique per image, yet reproducible.
fn serial_number(facts: &BuildFacts) -> String {
    let h = facts.manifest_digest.hex();
    format!(
        "urn:uuid:{}-{}-5{}-a{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}
