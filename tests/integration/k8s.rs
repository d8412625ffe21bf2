//! `appliance k8s` on real tarballs: every object validates against the OpenAPI schemas of a
//! current Kubernetes release (kubernetes-validate) and KEDA's ScaledObject CRD (vendored in
//! `tests/fixtures`, KEDA v2.20.2), both strict; the values are the image's own, read back here
//! from the tarball's documents without appliance's reader; the output is byte-for-byte
//! deterministic; a CUDA image gets its GPU; bad input fails naming the file or the flag.

use crate::support;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;
use sha2::Digest as _;
use support::builder::{LLAMA_GQA, build_demo_cuda, build_llama_gqa};
use support::process::streams;
use support::{appliance_bin, cuda_built, run_with_timeout, workspace_root};

const TIMEOUT: Duration = Duration::from_secs(300);
const KEDA_CRD: &str = "tests/fixtures/keda.sh_scaledobjects-v2.20.2.yaml";

fn text(out: &Output) -> String {
    format!("{}\n{}", out.status, streams(&out.stdout, &out.stderr))
}

fn k8s(tarball: &Path, args: &[&str]) -> Output {
    run_with_timeout(
        Command::new(appliance_bin())
            .arg("k8s")
            .arg(tarball)
            .args(args),
        TIMEOUT,
    )
}

fn k8s_ok(tarball: &Path, args: &[&str]) -> String {
    let out = k8s(tarball, args);
    assert!(out.status.success(), "appliance k8s failed: {}", text(&out));
    String::from_utf8(out.stdout).unwrap()
}

/// The `llama-gqa` CPU image with a port, uid and gid no default has, built once per run.
fn cpu_tarball() -> &'static Path {
    static TARBALL: OnceLock<PathBuf> = OnceLock::new();
    TARBALL.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("k8s");
        std::fs::create_dir_all(&dir).unwrap();
        let tarball = dir.join("llama-gqa.tar");
        let out = build_llama_gqa(
            &dir.join("llama-gqa.toml"),
            "",
            "port = 8123\n[runtime]\nuser = \"llm\"\nuid = 65000\ngid = 65001\n",
            &tarball,
        );
        assert!(out.status.success(), "build failed: {}", text(&out));
        tarball
    })
}

/// The image's manifest digest and config, read straight from the tarball: `index.json` →
/// manifest blob (its sha256 checked against the index) → config blob.
fn image_documents(tarball: &Path) -> (String, Value) {
    let mut files = std::collections::HashMap::new();
    let mut archive = tar::Archive::new(std::fs::File::open(tarball).unwrap());
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry.size() > 1 << 20 {
            continue;
        }
        let name = entry.path().unwrap().to_string_lossy().into_owned();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).unwrap();
        files.insert(name, bytes);
    }
    let blob = |digest: &str| &files[&format!("blobs/sha256/{}", &digest["sha256:".len()..])];
    let index: Value = serde_json::from_slice(&files["index.json"]).unwrap();
    let digest = index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let manifest_bytes = blob(&digest);
    assert_eq!(
        format!("sha256:{:x}", sha2::Sha256::digest(manifest_bytes)),
        digest
    );
    let manifest: Value = serde_json::from_slice(manifest_bytes).unwrap();
    let config =
        serde_json::from_slice(blob(manifest["config"]["digest"].as_str().unwrap())).unwrap();
    (digest, config)
}

/// Runs `tests/k8s_validate.py` on the YAML and JSON forms of the same objects; returns the
/// `Kind/name` of every object it validated.
fn validate(yaml: &str, json: &str) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let (yaml_path, json_path) = (
        dir.path().join("objects.yaml"),
        dir.path().join("objects.json"),
    );
    std::fs::write(&yaml_path, yaml).unwrap();
    std::fs::write(&json_path, json).unwrap();
    let root = workspace_root();
    let out = run_with_timeout(
        Command::new("python3")
            .arg(root.join("tests/k8s_validate.py"))
            .arg(&yaml_path)
            .arg(&json_path)
            .arg(root.join(KEDA_CRD)),
        TIMEOUT,
    );
    assert!(
        out.status.success(),
        "validation failed (needs python3 with kubernetes-validate: scripts/install-test-deps): {}",
        text(&out)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    report["validated"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

fn list_items(json: &str) -> Vec<Value> {
    let list: Value = serde_json::from_str(json).unwrap();
    list["items"].as_array().unwrap().clone()
}

fn of_kind<'a>(items: &'a [Value], kind: &str) -> &'a Value {
    items
        .iter()
        .find(|o| o["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} among {items:?}"))
}

fn container(items: &[Value]) -> &Value {
    &of_kind(items, "Deployment")["spec"]["template"]["spec"]["containers"][0]
}

#[test]
fn objects_validate_and_carry_the_images_own_facts() {
    let tarball = cpu_tarball();
    let args = [
        "--image",
        "site.example:5000/ai/llama:0.1.0",
        "--namespace",
        "llm",
        "--replicas",
        "2",
        "--keda",
    ];
    let yaml = k8s_ok(tarball, &args);
    assert_eq!(
        k8s_ok(tarball, &args),
        yaml,
        "same tarball and flags, other bytes"
    );
    let json = k8s_ok(tarball, &[&args[..], &["--output", "json"]].concat());
    assert_eq!(
        validate(&yaml, &json),
        [
            "Service/llama-gqa",
            "Deployment/llama-gqa",
            "PodDisruptionBudget/llama-gqa",
            "ScaledObject/llama-gqa"
        ]
    );

    let (digest, config) = image_documents(tarball);
    let c = &config["config"];
    let items = list_items(&json);
    let container = container(&items);
    assert_eq!(
        container["image"],
        format!("site.example:5000/ai/llama@{digest}")
    );

    let (uid, gid) = c["User"].as_str().unwrap().split_once(':').unwrap();
    assert_eq!((uid, gid), ("65000", "65001"));
    let pod = &of_kind(&items, "Deployment")["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsUser"].to_string(), uid);
    assert_eq!(pod["securityContext"]["runAsGroup"].to_string(), gid);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);

    let ports: Vec<&String> = c["ExposedPorts"].as_object().unwrap().keys().collect();
    assert_eq!(ports, ["8123/tcp"]);
    assert_eq!(container["ports"][0]["containerPort"], 8123);
    assert_eq!(of_kind(&items, "Service")["spec"]["ports"][0]["port"], 8123);

    // The startup probe gives the model as long to load as the image's HEALTHCHECK does.
    let start_period = c["Healthcheck"]["StartPeriod"].as_u64().unwrap() / 1_000_000_000;
    let startup = &container["startupProbe"];
    let period = startup["periodSeconds"].as_u64().unwrap();
    let window = period * startup["failureThreshold"].as_u64().unwrap();
    assert!(
        window >= start_period && window < start_period + period,
        "startup window {window}s for a {start_period}s start period"
    );
    assert_eq!(
        container["livenessProbe"]["periodSeconds"]
            .as_u64()
            .unwrap(),
        c["Healthcheck"]["Interval"].as_u64().unwrap() / 1_000_000_000
    );
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/health");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/ready");

    // A CPU image: no GPU, and the KV pool the memory request pays for.
    assert!(
        container["resources"]["limits"]
            .get("nvidia.com/gpu")
            .is_none()
    );
    assert!(pod.get("tolerations").is_none());
    let served = c["Env"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|e| {
            e.as_str()
                .unwrap()
                .strip_prefix("APPLIANCE_SERVED_MODEL_NAME=")
        })
        .unwrap();
    let query = &of_kind(&items, "ScaledObject")["spec"]["triggers"][0]["metadata"]["query"];
    assert_eq!(
        query.as_str().unwrap(),
        format!("sum(vllm:num_requests_waiting{{model_name=\"{served}\",namespace=\"llm\"}})")
    );

    // Without --image: the tarball's own reference name, still by digest.
    let plain = list_items(&k8s_ok(tarball, &["--output", "json"]));
    assert_eq!(container_image(&plain), format!("{LLAMA_GQA}@{digest}"));
    assert_eq!(of_kind(&plain, "Deployment")["spec"]["replicas"], 1);
    assert!(plain.iter().all(|o| o["kind"] != "ScaledObject"));
}

fn container_image(items: &[Value]) -> String {
    container(items)["image"].as_str().unwrap().to_string()
}

#[test]
fn bad_input_fails_naming_the_file_or_the_flag() {
    let tarball = cpu_tarball();
    let dir = tempfile::tempdir().unwrap();

    let fails = |path: &Path, args: &[&str], code: i32, needle: &str| {
        let out = k8s(path, args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(code), "{}", text(&out));
        assert!(stderr.contains(needle), "`{needle}` not in: {}", text(&out));
        assert!(
            out.stdout.is_empty(),
            "objects printed on failure: {}",
            text(&out)
        );
    };

    let not_tar = dir.path().join("notes.tar");
    std::fs::write(&not_tar, "not a tarball\n").unwrap();
    fails(&not_tar, &[], 1, &format!("`{}`", not_tar.display()));

    let delta = dir.path().join("same.delta.tar");
    let out = run_with_timeout(
        Command::new(appliance_bin())
            .arg("delta")
            .arg(tarball)
            .arg(tarball)
            .arg("-o")
            .arg(&delta),
        TIMEOUT,
    );
    assert!(out.status.success(), "delta failed: {}", text(&out));
    fails(&delta, &[], 1, "delta bundle");

    fails(
        tarball,
        &["--gpus", "1"],
        2,
        "`--gpus`: the image is CPU-only",
    );
    fails(tarball, &["--name", "Llama"], 2, "`--name`");
    let other = format!("site.example/ai/llama@sha256:{}", "0".repeat(64));
    fails(tarball, &["--image", &other], 2, "`--image`");
}

#[test]
fn cuda_image_gets_a_gpu_limit_and_a_toleration() {
    let tmp = tempfile::tempdir().unwrap();
    let (tarball, out) = build_demo_cuda(tmp.path(), &cuda_built("appliance-server"), &["--quiet"]);
    assert!(out.status.success(), "build failed: {}", text(&out));

    let yaml = k8s_ok(&tarball, &["--keda"]);
    let json = k8s_ok(&tarball, &["--keda", "--output", "json"]);
    assert_eq!(validate(&yaml, &json).len(), 4);
    let items = list_items(&json);
    let container = container(&items);
    assert_eq!(container["resources"]["limits"]["nvidia.com/gpu"], "1");
    let pod = &of_kind(&items, "Deployment")["spec"]["template"]["spec"];
    assert_eq!(
        pod["tolerations"],
        serde_json::json!([{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}])
    );
    let (digest, _) = image_documents(&tarball);
    assert_eq!(
        container_image(&items),
        format!("registry.local/appliance/appliance-demo-cuda@{digest}")
    );
    let out = k8s(&tarball, &["--gpus", "2"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("drives one GPU"));
}
