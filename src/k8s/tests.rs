//! Objects from hand-made image summaries: what each image fact turns into, and what is refused.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::facts::{parse_bytes, split_tag};
use super::{Format, ImageFacts, K8sError, K8sSettings, KedaSettings, objects::objects, render};
use crate::image::Healthcheck;
use crate::summary::{ImageSummary, ModelFileSummary, ModelSummary};

const DIGEST: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

fn summary(cuda: bool) -> ImageSummary {
    let mut labels = BTreeMap::new();
    labels.insert("org.opencontainers.image.version".into(), "1.2.0".into());
    if cuda {
        labels.insert("appliance.cuda.version".into(), "13.0".into());
        labels.insert("appliance.cuda.compute_capabilities".into(), "80".into());
        labels.insert("appliance.cuda.min_driver".into(), "580.65.06".into());
    }
    ImageSummary {
        reference: "registry.local:5000/llm/qwen_chat:1.2".into(),
        manifest_digest: DIGEST.into(),
        config_digest: String::new(),
        architecture: "amd64".into(),
        created: String::new(),
        user: "65000:65001".into(),
        entrypoint: vec!["/usr/local/bin/appliance-server".into()],
        cmd: vec!["--max-num-seqs".into(), "8".into()],
        env: vec![
            "APPLIANCE_PORT=8123".into(),
            "APPLIANCE_SERVED_MODEL_NAME=qwen".into(),
        ],
        exposed_ports: vec!["8123/tcp".into()],
        healthcheck: Some(Healthcheck::from_secs(
            vec![
                "CMD".into(),
                "appliance-server".into(),
                "healthcheck".into(),
            ],
            30,
            10,
            125,
            3,
        )),
        labels,
        layers: Vec::new(),
        model: Some(ModelSummary {
            name: "qwen".into(),
            path: "/models/qwen".into(),
            source: "path".into(),
            revision: String::new(),
            files: vec![
                ModelFileSummary {
                    path: "model.safetensors".into(),
                    sha256: String::new(),
                    size: 3 * GIB,
                },
                ModelFileSummary {
                    path: "config.json".into(),
                    sha256: String::new(),
                    size: 2 * MIB,
                },
            ],
            format: None,
        }),
        evaluation: None,
        delta_bundle: false,
    }
}

fn settings() -> K8sSettings {
    K8sSettings {
        image: None,
        name: None,
        namespace: None,
        replicas: 1,
        gpus: None,
        cpus: None,
        kv_cache_memory: None,
        api_key_secret: None,
        keda: None,
    }
}

fn build(image: &ImageSummary, s: &K8sSettings) -> Result<Vec<Value>, K8sError> {
    objects(&ImageFacts::read(image)?, s)
}

fn kind<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    objects.iter().find(|o| o["kind"] == kind).unwrap()
}

fn container(objects: &[Value]) -> &Value {
    &kind(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
}

fn env(objects: &[Value], name: &str) -> Option<String> {
    container(objects)["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .map(|e| e["value"].as_str().unwrap().to_string())
}

fn flag_of(err: K8sError) -> &'static str {
    match err {
        K8sError::Flag { flag, .. } => flag,
        other => panic!("expected a flag error, got {other}"),
    }
}

#[test]
fn cpu_image_runs_hardened_as_its_own_user_by_digest() {
    let out = build(&summary(false), &settings()).unwrap();
    let kinds: Vec<&str> = out.iter().map(|o| o["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["Service", "Deployment", "PodDisruptionBudget"]);
    let deployment = kind(&out, "Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(deployment["metadata"]["name"], "qwen-chat");
    assert_eq!(pod["securityContext"]["runAsUser"], 65000);
    assert_eq!(pod["securityContext"]["runAsGroup"], 65001);
    assert_eq!(pod["securityContext"]["fsGroup"], 65001);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    assert_eq!(pod["enableServiceLinks"], false);
    assert!(pod.get("tolerations").is_none());
    let c = container(&out);
    assert_eq!(
        c["image"],
        format!("registry.local:5000/llm/qwen_chat@{DIGEST}")
    );
    assert_eq!(c["ports"][0]["containerPort"], 8123);
    assert_eq!(kind(&out, "Service")["spec"]["ports"][0]["port"], 8123);
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(c["securityContext"]["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/health");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/ready");
    assert!(c["resources"]["limits"].get("nvidia.com/gpu").is_none());
    assert_eq!(
        env(&out, "APPLIANCE_API_KEY_FILE").as_deref(),
        Some("/run/secrets/appliance/api-key")
    );
    assert_eq!(
        pod["volumes"][1]["secret"]["secretName"],
        "qwen-chat-api-key"
    );
    assert_eq!(deployment["spec"]["replicas"], 1);
}

#[test]
fn startup_probe_outlasts_the_images_start_period() {
    let out = build(&summary(false), &settings()).unwrap();
    let probe = &container(&out)["startupProbe"];
    assert_eq!(probe["httpGet"]["path"], "/ready");
    // 125 s start period at 10 s a probe: 13 probes (130 s), not 12 (120 s).
    assert_eq!(probe["periodSeconds"], 10);
    assert_eq!(probe["failureThreshold"], 13);
    assert_eq!(probe["timeoutSeconds"], 10);
    assert_eq!(container(&out)["livenessProbe"]["periodSeconds"], 30);
}

#[test]
fn cpu_memory_pays_for_weights_and_the_kv_pool_the_pod_sets() {
    let out = build(&summary(false), &settings()).unwrap();
    // 7 GiB 2 MiB held (weights, 4 GiB pool) and a tenth of that on top.
    let want = format!("{}Mi", 7170 + 717);
    let resources = &container(&out)["resources"];
    assert_eq!(resources["requests"]["memory"], want);
    assert_eq!(resources["limits"]["memory"], want);
    // 3 GiB of weights (rounded up to 4) → 8 CPUs, requested and limited alike.
    assert_eq!(resources["requests"]["cpu"], "8");
    assert_eq!(resources["limits"]["cpu"], "8");
    assert_eq!(
        env(&out, "APPLIANCE_KV_CACHE_MEMORY").as_deref(),
        Some("4GiB")
    );
    let with_flag = build(
        &summary(false),
        &K8sSettings {
            kv_cache_memory: Some(GIB),
            ..settings()
        },
    )
    .unwrap();
    assert_eq!(
        env(&with_flag, "APPLIANCE_KV_CACHE_MEMORY").as_deref(),
        Some("1GiB")
    );
}

#[test]
fn kv_budget_in_the_images_cmd_is_used_and_not_overridden() {
    let mut image = summary(false);
    image.cmd.push("--kv-cache-memory=1.5GiB".into());
    let out = build(&image, &settings()).unwrap();
    assert_eq!(env(&out, "APPLIANCE_KV_CACHE_MEMORY"), None);
    // 4.5 GiB 2 MiB held; a tenth of that is under the 512 MiB floor.
    assert_eq!(
        container(&out)["resources"]["limits"]["memory"],
        format!("{}Mi", 4610 + 512)
    );
    let err = build(
        &image,
        &K8sSettings {
            kv_cache_memory: Some(GIB),
            ..settings()
        },
    )
    .unwrap_err();
    assert_eq!(flag_of(err), "--kv-cache-memory");
}

#[test]
fn cuda_image_gets_one_gpu_a_toleration_and_no_surge() {
    let out = build(&summary(true), &settings()).unwrap();
    let c = container(&out);
    assert_eq!(c["resources"]["limits"]["nvidia.com/gpu"], "1");
    assert!(c["resources"]["requests"].get("nvidia.com/gpu").is_none());
    assert_eq!(c["resources"]["limits"]["cpu"], "2");
    assert_eq!(
        c["resources"]["limits"]["memory"],
        format!("{}Mi", (3 * GIB + 2 * MIB + 2 * GIB).div_ceil(MIB))
    );
    // The KV pool is in GPU memory: the pod leaves its size to the server.
    assert_eq!(env(&out, "APPLIANCE_KV_CACHE_MEMORY"), None);
    let deployment = kind(&out, "Deployment");
    assert_eq!(
        deployment["spec"]["template"]["spec"]["tolerations"],
        json!([{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}])
    );
    assert_eq!(
        deployment["spec"]["strategy"]["rollingUpdate"],
        json!({"maxSurge": 0, "maxUnavailable": 1})
    );
}

#[test]
fn gpus_are_refused_for_a_cpu_image_and_beyond_one() {
    let gpus = |image, n| {
        build(
            &summary(image),
            &K8sSettings {
                gpus: Some(n),
                ..settings()
            },
        )
    };
    assert_eq!(flag_of(gpus(false, 1).unwrap_err()), "--gpus");
    assert_eq!(flag_of(gpus(true, 2).unwrap_err()), "--gpus");
    assert!(gpus(true, 1).is_ok());
}

#[test]
fn image_flag_keeps_the_repository_and_pins_the_tarballs_digest() {
    let with = |image: &str| {
        build(
            &summary(false),
            &K8sSettings {
                image: Some(image.into()),
                ..settings()
            },
        )
    };
    let out = with("site.example:5000/ai/qwen:1.2").unwrap();
    assert_eq!(
        container(&out)["image"],
        format!("site.example:5000/ai/qwen@{DIGEST}")
    );
    assert!(with(&format!("site.example/ai/qwen@{DIGEST}")).is_ok());
    let other = format!("site.example/ai/qwen@sha256:{}", "2".repeat(64));
    assert_eq!(flag_of(with(&other).unwrap_err()), "--image");
}

#[test]
fn keda_scales_on_waiting_requests_of_the_served_model() {
    let out = build(
        &summary(false),
        &K8sSettings {
            namespace: Some("llm".into()),
            replicas: 2,
            keda: Some(KedaSettings {
                prometheus: "http://prom:9090".into(),
                max_replicas: 6,
                threshold: 5,
            }),
            ..settings()
        },
    )
    .unwrap();
    let scaled = kind(&out, "ScaledObject");
    assert_eq!(scaled["spec"]["minReplicaCount"], 2);
    assert_eq!(scaled["spec"]["maxReplicaCount"], 6);
    assert_eq!(scaled["spec"]["scaleTargetRef"]["name"], "qwen-chat");
    let trigger = &scaled["spec"]["triggers"][0];
    assert_eq!(trigger["type"], "prometheus");
    assert_eq!(
        trigger["metadata"]["query"],
        "sum(vllm:num_requests_waiting{model_name=\"qwen\",namespace=\"llm\"})"
    );
    assert_eq!(trigger["metadata"]["threshold"], "5");
    // KEDA owns the replica count; every object is in the namespace.
    assert!(kind(&out, "Deployment")["spec"].get("replicas").is_none());
    assert!(out.iter().all(|o| o["metadata"]["namespace"] == "llm"));
}

#[test]
fn keda_max_below_replicas_is_refused() {
    let err = build(
        &summary(false),
        &K8sSettings {
            replicas: 3,
            keda: Some(KedaSettings {
                prometheus: "http://prom:9090".into(),
                max_replicas: 2,
                threshold: 5,
            }),
            ..settings()
        },
    )
    .unwrap_err();
    assert_eq!(flag_of(err), "--max-replicas");
}

#[test]
fn images_that_cannot_run_as_pods_are_refused() {
    let refused = |edit: &dyn Fn(&mut ImageSummary)| {
        let mut image = summary(false);
        edit(&mut image);
        match ImageFacts::read(&image) {
            Err(K8sError::Image(message)) => message,
            other => panic!("expected an image error, got {other:?}"),
        }
    };
    assert!(refused(&|i| i.delta_bundle = true).contains("delta bundle"));
    assert!(refused(&|i| i.user = "0:0".into()).contains("non-root"));
    assert!(refused(&|i| i.user = "appliance".into()).contains("numeric"));
    assert!(refused(&|i| i.manifest_digest.clear()).contains("index.json"));
    assert!(refused(&|i| i.model = None).contains("appliance.model"));
    assert!(refused(&|i| i.healthcheck = None).contains("HEALTHCHECK"));
}

#[test]
fn names_that_are_not_dns_labels_are_refused() {
    let err = build(
        &summary(false),
        &K8sSettings {
            name: Some("Qwen".into()),
            ..settings()
        },
    )
    .unwrap_err();
    assert_eq!(flag_of(err), "--name");
    let mut image = summary(false);
    image.reference = "registry.local/llm/7b:1".into();
    assert_eq!(flag_of(build(&image, &settings()).unwrap_err()), "--name");
}

#[test]
fn references_split_at_the_tag_not_the_registry_port() {
    let split = |r: &str| split_tag(r);
    assert_eq!(
        split("reg:5000/a/b:1.2"),
        ("reg:5000/a/b".into(), "1.2".into())
    );
    assert_eq!(
        split("reg:5000/a/b"),
        ("reg:5000/a/b".into(), String::new())
    );
    assert_eq!(split("b:latest"), ("b".into(), "latest".into()));
}

#[test]
fn byte_sizes_read_as_the_server_reads_them() {
    assert_eq!(parse_bytes("4GiB"), Some(4 * GIB));
    assert_eq!(parse_bytes("512m"), Some(512 * MIB));
    assert_eq!(parse_bytes("1.5GiB"), Some(3 * GIB / 2));
    assert_eq!(parse_bytes("2GB"), Some(2_000_000_000));
    assert_eq!(parse_bytes("100000"), Some(100_000));
    assert_eq!(parse_bytes("4 parsecs"), None);
    assert_eq!(parse_bytes(""), None);
}

#[test]
fn yaml_quotes_every_string_yaml_could_read_as_something_else() {
    let doc = json!({
        "bare": "/ready",
        "words": ["on", "No", "null", "true", "y"],
        "numbers": ["0.1.0", "8000", "1e3", ".5"],
        "odd": ["", "a: b", "#x", "x y", "tab\there"],
        // A key too: YAML 1.1 reads a bare `n` as false.
        "n": 3,
        "empty": {},
        "nested": [[1, 2], {"k": "v", "l": []}],
    });
    let text = render(&[doc], Format::Yaml);
    assert_eq!(
        text,
        "---\n\
         bare: /ready\n\
         empty: {}\n\
         \"n\": 3\n\
         nested:\n  - - 1\n    - 2\n  - k: v\n    l: []\n\
         numbers:\n  - \"0.1.0\"\n  - \"8000\"\n  - \"1e3\"\n  - \".5\"\n\
         odd:\n  - \"\"\n  - \"a: b\"\n  - \"#x\"\n  - \"x y\"\n  - \"tab\\there\"\n\
         words:\n  - \"on\"\n  - \"No\"\n  - \"null\"\n  - \"true\"\n  - \"y\"\n"
    );
}

#[test]
fn json_output_is_one_list() {
    let out = build(&summary(false), &settings()).unwrap();
    let list: Value = serde_json::from_str(&render(&out, Format::Json)).unwrap();
    assert_eq!(list["kind"], "List");
    assert_eq!(list["items"].as_array().unwrap().len(), 3);
}
