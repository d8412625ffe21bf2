//! A second release at the site, against the real Docker Engine: weight layers that survive a
//! new `created`, tag, server build and server args; a delta bundle that `docker load` takes as
//! it is on a host with the first release; `assemble` rebuilding the full tarball bit for bit;
//! `verify --base` checking the delta's signature and blobs across the two files.

use crate::support;
use crate::tamper;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use base64::Engine as _;
use support::paths::{appliance_bin, server_bin, shared_fixtures};
use support::{Dockerd, hardened_run};

const PASSWORD: &str = "release-pw-3b7e";
const NAME: &str = "registry.local/llm/llama-gqa";

fn appliance(args: &[&str]) -> Output {
    Command::new(appliance_bin())
        .args(args)
        .env("APPLIANCE_KEY_PASSWORD", PASSWORD)
        .env_remove("COSIGN_PASSWORD")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run appliance")
}

fn ok(out: Output) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    String::from_utf8(out.stdout).unwrap()
}

/// `appliance verify TAR --key KEY [--base BASE]`.
fn verify(tar: &Path, key: &Path, base: Option<&Path>) -> Output {
    let mut args = vec![
        "verify",
        tar.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ];
    if let Some(base) = base {
        args.extend(["--base", base.to_str().unwrap()]);
    }
    appliance(&args)
}

fn failed(out: Output) -> String {
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{text}");
    text
}

/// A signed build of the `llama-gqa` fixture; `image` and `server` go into those tables.
fn release(dir: &Path, name: &str, image: &str, server: &str, extra: &[&str]) -> serde_json::Value {
    let key = dir.join("site.key");
    if !key.exists() {
        ok(appliance(&[
            "keygen",
            "--output",
            dir.join("site").to_str().unwrap(),
        ]));
    }
    let manifest = dir.join(format!("{name}.toml"));
    std::fs::write(
        &manifest,
        format!(
            "[image]\nname = \"{NAME}\"\n{image}\n[model]\npath = \"{}\"\n\
             [server]\nserved_model_name = \"llama-gqa\"\n{server}\n[signing]\nkey = \"{}\"\n",
            shared_fixtures().join("models/llama-gqa").display(),
            key.display()
        ),
    )
    .unwrap();
    let output = dir.join(format!("{name}.tar"));
    let mut args = vec![
        "build",
        manifest.to_str().unwrap(),
        "-o",
        output.to_str().unwrap(),
        "--json",
    ];
    args.extend(extra);
    serde_json::from_str(&ok(appliance(&args))).unwrap()
}

/// The first release, and a second with a new `created`, tag, server build (the same binary
/// with bytes appended: another sha256, still runnable) and server args.
fn two_releases(dir: &Path, extra: &[&str]) -> (serde_json::Value, serde_json::Value) {
    let one = release(
        dir,
        "r1",
        "tag = \"0.1.0\"\ncreated = \"2026-01-01T00:00:00Z\"",
        "",
        &[],
    );
    let server = dir.join("appliance-server-r2");
    let mut bytes = std::fs::read(server_bin()).unwrap();
    bytes.extend_from_slice(b"release 2");
    std::fs::write(&server, bytes).unwrap();
    let two = release(
        dir,
        "r2",
        "tag = \"0.2.0\"\ncreated = \"2026-06-01T00:00:00Z\"",
        &format!(
            "binary = \"{}\"\nargs = [\"--max-num-seqs\", \"8\"]",
            server.display()
        ),
        extra,
    );
    (one, two)
}

fn layers(summary: &serde_json::Value) -> Vec<(String, String, String, u64)> {
    summary["image"]["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["created_by"].as_str().unwrap().to_string(),
                l["digest"].as_str().unwrap().to_string(),
                l["diff_id"].as_str().unwrap().to_string(),
                l["size"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Docker's layer store: chain ID → the layer's own diff ID (`layerdb/sha256/<chain>/diff`).
fn layer_store(docker: &Dockerd) -> BTreeMap<String, String> {
    let root = docker.dir().join("d/image/vfs/layerdb/sha256");
    std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .map(|e| {
            let e = e.unwrap();
            let diff = std::fs::read_to_string(e.path().join("diff")).unwrap();
            (e.file_name().to_string_lossy().into_owned(), diff)
        })
        .collect()
}

fn sha256_file(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

#[test]
fn a_second_release_reuses_every_weight_layer_in_docker_from_the_full_tarball_or_a_delta() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (one, two) = two_releases(dir, &["--delta-from", dir.join("r1.tar").to_str().unwrap()]);
    let (l1, l2) = (layers(&one), layers(&two));
    assert_eq!(l1.len(), l2.len());
    // Every layer but the server's is byte-identical: filesystem, weights, model files and
    // userland depend on their files only, not on `created`, the tag or the server args.
    let stable = |d: &str| !d.contains("appliance-server");
    let kept: Vec<_> = l1.iter().filter(|l| stable(&l.0)).collect();
    assert!(kept.iter().any(|l| l.0.contains("weights")), "{l1:?}");
    for (a, b) in l1.iter().zip(&l2) {
        assert_eq!(a.0, b.0, "layer order");
        if stable(&a.0) {
            assert_eq!(a, b, "{} changed with created/tag/server", a.0);
        }
    }
    assert!(kept.iter().any(|l| l.0.contains("userland")), "{l1:?}");
    let changed: Vec<_> = l2.iter().filter(|l| !l1.contains(l)).collect();
    assert_eq!(changed.len(), 1, "{changed:?}");
    assert!(changed[0].0.contains("appliance-server"), "{changed:?}");
    assert!(kept.len() + changed.len() == l2.len(), "{l1:?}\n{l2:?}");

    // The delta carries the server layer and the documents, nothing else.
    let (r1, r2) = (dir.join("r1.tar"), dir.join("r2.tar"));
    let delta = PathBuf::from(two["delta"]["output"].as_str().unwrap());
    assert_eq!(delta, dir.join("r2.delta.tar"));
    let delta_size = std::fs::metadata(&delta).unwrap().len();
    let changed_bytes: u64 = changed.iter().map(|l| l.3).sum();
    let full = std::fs::metadata(&r2).unwrap().len();
    // Documents: config, manifest, index, signatures, SBOM and provenance, the plan: < 128 KiB.
    assert!(
        delta_size <= changed_bytes + (128 << 10) && delta_size < full,
        "delta {delta_size} vs changed layers {changed_bytes}, full {full}"
    );
    assert_eq!(
        two["delta"]["blobs_from_base"].as_u64().unwrap() as usize,
        kept.len()
    );

    let docker = Dockerd::start();
    docker.load(&r1, &format!("{NAME}:0.1.0"));
    let after_one = layer_store(&docker);
    assert_eq!(after_one.len(), l1.len(), "{after_one:?}");
    docker.load(&r2, &format!("{NAME}:0.2.0"));
    let after_two = layer_store(&docker);
    // Release 2 added one stored layer (the server's), and each kept layer is stored once.
    let added: BTreeSet<_> = after_two
        .keys()
        .filter(|c| !after_one.contains_key(*c))
        .collect();
    assert_eq!(added.len(), changed.len(), "{after_two:?}");
    for (what, _, diff_id, _) in &kept {
        let copies = after_two.values().filter(|d| *d == diff_id).count();
        assert_eq!(copies, 1, "{what} ({diff_id}) stored {copies} times");
    }

    // Now from the delta: drop release 2 (its own layers go; release 1 keeps the rest), load
    // the delta, which lacks every kept layer's file: Docker never opens them.
    docker.docker_ok(&["rmi", &format!("{NAME}:0.2.0")]);
    assert_eq!(layer_store(&docker), after_one);
    let loaded = docker.load(&delta, &format!("{NAME}:0.2.0"));
    assert!(!loaded.is_empty());
    assert_eq!(layer_store(&docker), after_two);
    let inspect = docker.image_inspect(&format!("{NAME}:0.2.0"));
    assert_eq!(inspect["Id"], two["image"]["config_digest"]);
    let version = docker.docker_ok(&hardened_run(
        &["--rm", "--network", "none"],
        &[&format!("{NAME}:0.2.0"), "--version"],
    ));
    assert!(version.contains("appliance-server"), "{version}");

    // assemble: the full tarball again, bit for bit.
    let rebuilt = dir.join("rebuilt.tar");
    let summary: serde_json::Value = serde_json::from_str(&ok(appliance(&[
        "assemble",
        r1.to_str().unwrap(),
        delta.to_str().unwrap(),
        "-o",
        rebuilt.to_str().unwrap(),
        "--json",
    ])))
    .unwrap();
    assert_eq!(sha256_file(&rebuilt), sha256_file(&r2));
    assert_eq!(summary["sha256"], format!("sha256:{}", sha256_file(&r2)));
    assert_eq!(summary["manifest"], two["image"]["manifest_digest"]);

    // `appliance delta` writes the same delta as `build --delta-from`.
    let again = dir.join("again.tar");
    ok(appliance(&[
        "delta",
        r1.to_str().unwrap(),
        r2.to_str().unwrap(),
        "-o",
        again.to_str().unwrap(),
    ]));
    assert_eq!(sha256_file(&again), sha256_file(&delta));
}

#[test]
fn a_delta_verifies_against_its_base_and_names_what_a_wrong_base_lacks() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (one, two) = two_releases(dir, &["--delta-from", dir.join("r1.tar").to_str().unwrap()]);
    let (r1, r2, delta) = (
        dir.join("r1.tar"),
        dir.join("r2.tar"),
        dir.join("r2.delta.tar"),
    );
    let key = dir.join("site.pub");
    let report = ok(verify(&delta, &key, Some(&r1)));
    assert!(
        report.contains("delta bundle:") && report.contains("taken from the base"),
        "{report}"
    );
    let full = ok(verify(&r2, &key, None));
    let digest_line = |r: &str| {
        r.lines()
            .find(|l| l.starts_with("Digest:"))
            .map(str::to_string)
    };
    assert_eq!(digest_line(&report), digest_line(&full));

    // podman 4.3 loads the delta as an OCI archive and skips the blobs its store has: fine on
    // a host with release 1, a clear failure on one without; skopeo copying it anywhere but
    // into such a store needs every blob and names the first it lacks.
    let podman = support::tools::Podman::new();
    podman.load(&r1);
    let names = podman.load(&delta);
    assert!(names.iter().any(|n| n.ends_with(":0.2.0")), "{names:?}");
    let id = podman.image_inspect(&format!("{NAME}:0.2.0"))["Id"].clone();
    assert_eq!(
        format!("sha256:{}", id.as_str().unwrap()),
        two["image"]["config_digest"].as_str().unwrap()
    );
    let bare = support::tools::Podman::new();
    let out = bare.podman(&["load", "-i", delta.to_str().unwrap()]);
    assert!(!out.status.success());
    let copy = Command::new("skopeo")
        .args(["copy", &format!("oci-archive:{}", delta.display())])
        .arg(format!("oci:{}:x", dir.join("copy").display()))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&copy.stderr);
    assert!(
        !copy.status.success() && err.contains("no such file"),
        "{err}"
    );

    // A delta alone, or a full tarball given as a delta, is refused with the reason.
    assert!(failed(verify(&delta, &key, None)).contains("delta bundle"));
    assert!(failed(verify(&r2, &key, Some(&r1))).contains("not a delta bundle"));

    // The wrong base: release 2's delta against itself carries only the plan and the
    // documents, so checked against release 1 what release 2 added is missing, and named.
    let docs_only = dir.join("docs-only.tar");
    ok(appliance(&[
        "delta",
        r2.to_str().unwrap(),
        r2.to_str().unwrap(),
        "-o",
        docs_only.to_str().unwrap(),
    ]));
    let added: Vec<String> = layers(&two)
        .into_iter()
        .filter(|l| !layers(&one).contains(l))
        .map(|l| l.1)
        .chain([two["image"]["manifest_digest"]
            .as_str()
            .unwrap()
            .to_string()])
        .map(|d| d.strip_prefix("sha256:").unwrap().to_string())
        .collect();
    let names_an_added_blob = |err: &str| added.iter().any(|hex| err.contains(hex.as_str()));
    let err = failed(verify(&docs_only, &key, Some(&r1)));
    assert!(
        names_an_added_blob(&err) && err.contains("neither in the delta nor in the base"),
        "{err}"
    );
    let rebuilt = dir.join("rebuilt.tar");
    let err = failed(appliance(&[
        "assemble",
        r1.to_str().unwrap(),
        docs_only.to_str().unwrap(),
        "-o",
        rebuilt.to_str().unwrap(),
    ]));
    assert!(names_an_added_blob(&err) && err.contains("lacks"), "{err}");
    assert!(!rebuilt.exists());
}

/// The `llama-gqa` reference cases as gate cases: token ids for all of them (JSONL beside the
/// manifest), the first one's text as `equals`, and a chat case with a `regex`.
fn gate_manifest(dir: &Path, break_case: bool) -> PathBuf {
    let fixture = shared_fixtures().join("models/llama-gqa");
    let reference: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture.join("reference.json")).unwrap()).unwrap();
    let cases = reference["cases"].as_array().unwrap();
    let mut jsonl = String::new();
    for (i, case) in cases.iter().enumerate() {
        let mut ids: Vec<u64> = serde_json::from_value(case["output_ids"].clone()).unwrap();
        if break_case && i == 2 {
            ids[3] += 1;
        }
        jsonl.push_str(&format!(
            "{}\n",
            serde_json::json!({"name": format!("reference-{i}"), "prompt": case["input_ids"], "token_ids": ids})
        ));
    }
    std::fs::write(dir.join("evals.jsonl"), jsonl).unwrap();
    let first = &cases[0];
    let manifest = dir.join("gate.toml");
    std::fs::write(
        &manifest,
        format!(
            "[image]\nname = \"{NAME}\"\ntag = \"0.3.0\"\ncreated = \"2026-01-01T00:00:00Z\"\n\
             [model]\npath = \"{}\"\n[server]\nserved_model_name = \"llama-gqa\"\n\
             [signing]\nkey = \"site.key\"\n\
             [[eval]]\nname = \"text\"\nprompt = {}\nmax_tokens = {}\nequals = {}\n\
             [[eval]]\nname = \"chat\"\nmessages = [{{ role = \"user\", content = \"Say hello\" }}]\n\
             max_tokens = 8\nregex = \".\"\n\
             [evals]\nfile = \"evals.jsonl\"\n",
            fixture.display(),
            first["input_ids"],
            first["output_ids"].as_array().unwrap().len(),
            first["output_text"]
        ),
    )
    .unwrap();
    manifest
}

fn test_result_statement(tar: &Path) -> serde_json::Value {
    let tarball = tamper::Tarball::read(tar);
    let index = tarball.json("signatures/index.json");
    let atts = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["kind"] == "dev.cosignproject.cosign/atts")
        .unwrap()["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_string();
    let manifest = tarball.json(&format!("blobs/sha256/{atts}"));
    let mut statements = manifest["layers"].as_array().unwrap().iter().map(|l| {
        let hex = l["digest"].as_str().unwrap().trim_start_matches("sha256:");
        let envelope = tarball.json(&format!("blobs/sha256/{hex}"));
        let payload = base64::engine::general_purpose::STANDARD
            .decode(envelope["payload"].as_str().unwrap())
            .unwrap();
        serde_json::from_slice::<serde_json::Value>(&payload).unwrap()
    });
    statements
        .find(|s| s["predicateType"] == "https://in-toto.io/attestation/test-result/v0.1")
        .unwrap_or(serde_json::Value::Null)
}

#[test]
fn the_eval_gate_signs_passing_results_and_refuses_a_wrong_expectation() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    ok(appliance(&[
        "keygen",
        "--output",
        dir.join("site").to_str().unwrap(),
    ]));
    let (tar, key) = (dir.join("gated.tar"), dir.join("site.pub"));
    let manifest = gate_manifest(dir, false);
    let built: serde_json::Value = serde_json::from_str(&ok(appliance(&[
        "build",
        manifest.to_str().unwrap(),
        "-o",
        tar.to_str().unwrap(),
        "--json",
    ])))
    .unwrap();
    let evaluation = &built["image"]["evaluation"];
    assert_eq!(evaluation["result"], "PASSED");
    assert_eq!(evaluation["passed"], 6, "{evaluation}");

    // The attestation: every case passed, run against the server and the model files the
    // SBOM lists, with each case's output.
    let statement = test_result_statement(&tar);
    assert_eq!(
        statement["subject"][0]["digest"]["sha256"],
        built["image"]["manifest_digest"].as_str().unwrap()[7..]
    );
    let predicate = &statement["predicate"];
    assert_eq!(predicate["passedTests"].as_array().unwrap().len(), 6);
    let configuration = predicate["configuration"].as_array().unwrap();
    let named = |name: &str| configuration.iter().find(|d| d["name"] == name).cloned();
    let server = named("usr/local/bin/appliance-server").unwrap();
    assert_eq!(
        format!("sha256:{}", server["digest"]["sha256"].as_str().unwrap()),
        built["image"]["labels"]["appliance.server.sha256"]
            .as_str()
            .unwrap()
    );
    for file in built["image"]["model"]["files"].as_array().unwrap() {
        let d = named(&format!(
            "models/llama-gqa/{}",
            file["path"].as_str().unwrap()
        ))
        .unwrap();
        assert_eq!(d["digest"]["sha256"], file["sha256"]);
    }
    let document = base64::engine::general_purpose::STANDARD
        .decode(
            named("appliance-eval.json").unwrap()["content"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
    let document: serde_json::Value = serde_json::from_slice(&document).unwrap();
    assert_eq!(document["cases"][0]["case"]["name"], "text");
    assert!(document["cases"][2]["case"]["token_ids"].is_array());

    let report = ok(verify(&tar, &key, None));
    assert!(
        report.contains("Evaluation:   6 of 6 cases passed (PASSED, on cpu)"),
        "{report}"
    );
    let offline = Command::new("sh")
        .arg(support::workspace_root().join("scripts/verify-offline.sh"))
        .args([&tar, &key])
        .output()
        .unwrap();
    let text = ok(offline);
    assert!(
        text.contains("evaluation 6 of 6 cases passed (PASSED)"),
        "{text}"
    );
    let shown = ok(appliance(&["inspect", tar.to_str().unwrap()]));
    assert!(
        shown.contains("Evaluation:   6 of 6 cases passed"),
        "{shown}"
    );

    // Forged results (a failed case written in as passed) break the DSSE signature.
    let mut forged = tamper::Tarball::read(&tar);
    // The envelope holds the statement base64-encoded: find it by decoding.
    let hex = forged
        .entries
        .iter()
        .find(|e| {
            serde_json::from_slice::<serde_json::Value>(&e.1)
                .ok()
                .and_then(|v| v["payload"].as_str().map(String::from))
                .and_then(|p| base64::engine::general_purpose::STANDARD.decode(p).ok())
                .is_some_and(|b| String::from_utf8_lossy(&b).contains("test-result/v0.1"))
        })
        .unwrap()
        .0
        .trim_start_matches("blobs/sha256/")
        .to_string();
    let mut envelope: serde_json::Value =
        serde_json::from_slice(forged.get(&format!("blobs/sha256/{hex}"))).unwrap();
    let mut st: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(envelope["payload"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    st["predicate"]["passedTests"]
        .as_array_mut()
        .unwrap()
        .push("an extra case".into());
    envelope["payload"] = base64::engine::general_purpose::STANDARD
        .encode(serde_json::to_vec(&st).unwrap())
        .into();
    forged.replace_and_rehash(&hex, serde_json::to_vec(&envelope).unwrap());
    let forged_tar = dir.join("forged.tar");
    forged.write(&forged_tar);
    let err = failed(verify(&forged_tar, &key, None));
    assert!(
        err.contains("test-result") && err.contains("does not verify"),
        "{err}"
    );

    // A wrong expectation: exit 1, the case named with expected and actual, nothing written.
    let broken = gate_manifest(dir, true);
    let out = dir.join("broken.tar");
    let err = failed(appliance(&[
        "build",
        broken.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]));
    assert!(
        err.contains("Evaluation gate failed: 5 of 6 cases passed, 6 required"),
        "{err}"
    );
    assert!(err.contains("`reference-2`: expected token_ids ["), "{err}");
    assert!(!out.exists());
    let left: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!left.iter().any(|n| n.starts_with("broken")), "{left:?}");

    // --skip-eval builds it anyway, says so in the provenance and carries no results.
    let skipped: serde_json::Value = serde_json::from_str(&ok(appliance(&[
        "build",
        broken.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--skip-eval",
        "--json",
    ])))
    .unwrap();
    assert!(skipped["image"]["evaluation"].is_null());
    assert!(test_result_statement(&out).is_null());
    let provenance = {
        let tarball = tamper::Tarball::read(&out);
        tarball
            .entries
            .iter()
            .filter_map(|e| serde_json::from_slice::<serde_json::Value>(&e.1).ok())
            .filter_map(|v| v["payload"].as_str().map(String::from))
            .filter_map(|p| base64::engine::general_purpose::STANDARD.decode(p).ok())
            .filter_map(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .find(|s| s["predicateType"] == "https://slsa.dev/provenance/v1")
            .unwrap()
    };
    assert_eq!(
        provenance["predicate"]["buildDefinition"]["internalParameters"]["evaluation"],
        serde_json::json!({"skipped": true, "cases": 6})
    );
    let report = ok(verify(&out, &key, None));
    assert!(!report.contains("Evaluation:"), "{report}");
}
