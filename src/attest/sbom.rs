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
