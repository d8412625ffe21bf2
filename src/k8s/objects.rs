//! Builds the Service, Deployment, PodDisruptionBudget and (optionally) KEDA ScaledObject for
//! an image from its [`ImageFacts`] and the operator's [`K8sSettings`].

use serde_json::{Map, Value, json};

use super::facts::{ImageFacts, split_tag};
use super::{K8sError, K8sSettings};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
/// The server's KV pool default on the CPU (4 GiB, vLLM's): set explicitly in the pod so the
/// pool is the one the memory request pays for, not half of whatever the limit leaves.
const DEFAULT_KV_CACHE: u64 = 4 * GIB;
/// Host memory of a CUDA server besides its weights: the CUDA libraries (cuBLASLt alone is
/// ~500 MiB mapped), the driver's context and the staging copies made while loading.
const CUDA_HOST_OVERHEAD: u64 = 2 * GIB;
/// Fewest bytes left over on the CPU: code, tokenizer, one step's activations (README, Sizing).
const MIN_MARGIN: u64 = 512 * MIB;
/// CPUs of a CUDA pod: HTTP, tokenizer and scheduler; the GPU does the arithmetic.
const CUDA_CPUS: u32 = 2;
/// How often the startup probe asks `/ready` while the model loads.
const STARTUP_PERIOD: u64 = 10;
/// Where the API key Secret is mounted, and the file the server reads.
const KEY_DIR: &str = "/run/secrets/appliance";
const KEY_FILE: &str = "api-key";
const GPU_RESOURCE: &str = "nvidia.com/gpu";

/// Every object, in apply order: Service, Deployment, PodDisruptionBudget, ScaledObject.
pub fn objects(facts: &ImageFacts, settings: &K8sSettings) -> Result<Vec<Value>, K8sError> {
    let name = name(facts, settings.name.as_deref())?;
    let meta = Meta {
        name: name.clone(),
        namespace: settings.namespace.clone(),
        labels: labels(&name, &facts.version),
        selector: selector(&name),
    };
    let mut out = vec![
        service(facts, &meta),
        deployment(facts, settings, &meta)?,
        disruption_budget(&meta),
    ];
    if let Some(keda) = &settings.keda {
        if keda.max_replicas < settings.replicas {
            return Err(K8sError::Flag {
                flag: "--max-replicas",
                message: format!(
                    "{} is below `--replicas {}`, the fewest KEDA keeps running",
                    keda.max_replicas, settings.replicas
                ),
            });
        }
        let namespace = settings
            .namespace
            .as_ref()
            .map(|ns| format!(",namespace=\"{ns}\""))
            .unwrap_or_default();
        out.push(json!({
            "apiVersion": "keda.sh/v1alpha1",
            "kind": "ScaledObject",
            "metadata": meta.metadata(),
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
                "minReplicaCount": settings.replicas,
                "maxReplicaCount": keda.max_replicas,
                "triggers": [{
                    "type": "prometheus",
                    "metadata": {
                        "serverAddress": keda.prometheus,
                        "query": format!(
                            "sum(vllm:num_requests_waiting{{model_name=\"{}\"{namespace}}})",
                            facts.served_model_name
                        ),
                        "threshold": keda.threshold.to_string(),
                    },
                }],
            },
        }));
    }
    Ok(out)
}

struct Meta {
    name: String,
    namespace: Option<String>,
    labels: Value,
    selector: Value,
}

impl Meta {
    fn metadata(&self) -> Value {
        let mut m = Map::new();
        m.insert("name".into(), json!(self.name));
        if let Some(ns) = &self.namespace {
            m.insert("namespace".into(), json!(ns));
        }
        m.insert("labels".into(), self.labels.clone());
        Value::Object(m)
    }
}

fn service(facts: &ImageFacts, meta: &Meta) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta.metadata(),
        "spec": {
            "type": "ClusterIP",
            "selector": meta.selector,
            "ports": [{"name": "http", "port": facts.port, "targetPort": "http", "protocol": "TCP"}],
        },
    })
}

fn disruption_budget(meta: &Meta) -> Value {
    // maxUnavailable 1 never blocks a node drain (minAvailable 1 with one replica would), and
    // with more replicas it keeps all but one serving.
    json!({
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": meta.metadata(),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": meta.selector}},
    })
}

fn deployment(facts: &ImageFacts, s: &K8sSettings, meta: &Meta) -> Result<Value, K8sError> {
    let gpus = gpus(facts, s.gpus)?;
    let kv = kv_budget(facts, s.kv_cache_memory)?;
    let memory = match (&facts.cuda, kv) {
        (Some(_), _) => facts.weight_bytes + CUDA_HOST_OVERHEAD,
        (None, kv) => {
            let held = facts.weight_bytes + kv.unwrap_or(DEFAULT_KV_CACHE);
            held + (held / 10).max(MIN_MARGIN)
        }
    };
    let cpus = s.cpus.unwrap_or_else(|| default_cpus(facts));
    let quantity =
        json!({"cpu": cpus.to_string(), "memory": format!("{}Mi", memory.div_ceil(MIB))});
    let mut limits = quantity.clone();
    if gpus > 0 {
        limits[GPU_RESOURCE] = json!(gpus.to_string());
    }
    let mut env =
        vec![json!({"name": "APPLIANCE_API_KEY_FILE", "value": format!("{KEY_DIR}/{KEY_FILE}")})];
    // On the CPU the pod always names the pool it pays for; on a GPU the pool lives in GPU
    // memory, so only an explicit `--kv-cache-memory` is passed on.
    let kv_env = match (&facts.cuda, s.kv_cache_memory) {
        (_, Some(flag)) => Some(flag),
        (None, None) if !facts.kv_cache_memory_in_cmd => Some(kv.unwrap_or(DEFAULT_KV_CACHE)),
        _ => None,
    };
    if let Some(bytes) = kv_env {
        env.push(json!({"name": "APPLIANCE_KV_CACHE_MEMORY", "value": byte_size(bytes)}));
    }
    let http_get = |path: &str| json!({"path": path, "port": "http"});
    let h = &facts.health;
    let container = json!({
        "name": "server",
        "image": image_reference(facts, s.image.as_deref())?,
        "imagePullPolicy": "IfNotPresent",
        "ports": [{"name": "http", "containerPort": facts.port, "protocol": "TCP"}],
        "env": env,
        "resources": {"requests": quantity, "limits": limits},
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "runAsNonRoot": true,
            "capabilities": {"drop": ["ALL"]},
        },
        // Loading is what the image's start period covers: liveness and readiness wait for it.
        "startupProbe": {
            "httpGet": http_get("/ready"),
            "periodSeconds": STARTUP_PERIOD,
            "timeoutSeconds": h.timeout,
            "failureThreshold": h.start_period.div_ceil(STARTUP_PERIOD).max(1),
        },
        "readinessProbe": {
            "httpGet": http_get("/ready"),
            "periodSeconds": STARTUP_PERIOD,
            "timeoutSeconds": h.timeout,
            "failureThreshold": 3,
        },
        "livenessProbe": {
            "httpGet": http_get("/health"),
            "periodSeconds": h.interval,
            "timeoutSeconds": h.timeout,
            "failureThreshold": h.retries,
        },
        "volumeMounts": [
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "api-key", "mountPath": KEY_DIR, "readOnly": true},
        ],
    });
    let secret = s
        .api_key_secret
        .clone()
        .unwrap_or_else(|| format!("{}-api-key", meta.name));
    let mut pod = json!({
        // The server never calls the Kubernetes API.
        "automountServiceAccountToken": false,
        // Service links inject `<SERVICE>_PORT=tcp://…`: a Service named `appliance` would set
        // `APPLIANCE_PORT`, which the server reads as its port.
        "enableServiceLinks": false,
        "securityContext": {
            "runAsNonRoot": true,
            "runAsUser": facts.uid,
            "runAsGroup": facts.gid,
            // The key file's group, so the mode 0440 lets the server read it.
            "fsGroup": facts.gid,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        // SIGTERM drains in-flight requests for the server's shutdown timeout; then some slack.
        "terminationGracePeriodSeconds": facts.shutdown_timeout + 10,
        "containers": [container],
        "volumes": [
            {"name": "tmp", "emptyDir": {}},
            {"name": "api-key", "secret": {
                "secretName": secret,
                "defaultMode": 0o440,
                "items": [{"key": KEY_FILE, "path": KEY_FILE}],
            }},
        ],
    });
    if gpus > 0 {
        pod["tolerations"] =
            json!([{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]);
    }
    // A surge pod needs a free GPU that a fully used GPU pool does not have: the rollout would
    // stall. On the CPU the new pod is ready before an old one goes.
    let (surge, unavailable) = if gpus > 0 { (0, 1) } else { (1, 0) };
    let mut spec = json!({
        "selector": {"matchLabels": meta.selector},
        "strategy": {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable},
        },
        "template": {"metadata": {"labels": meta.labels}, "spec": pod},
    });
    // Under KEDA the replica count is the autoscaler's: a `replicas` here would reset it on
    // every `kubectl apply`.
    if s.keda.is_none() {
        spec["replicas"] = json!(s.replicas);
    }
    Ok(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta.metadata(),
        "spec": spec,
    }))
}

/// GPUs per pod: one for a CUDA image, none for a CPU one.
fn gpus(facts: &ImageFacts, flag: Option<u32>) -> Result<u32, K8sError> {
    let err = |message: String| K8sError::Flag {
        flag: "--gpus",
        message,
    };
    match (&facts.cuda, flag) {
        (None, Some(_)) => Err(err(
            "the image is CPU-only: its server has no CUDA build (no `appliance.cuda.*` labels)"
                .into(),
        )),
        (None, None) => Ok(0),
        (Some(_), None | Some(1)) => Ok(1),
        (Some(_), Some(n)) => Err(err(format!(
            "{n} GPUs, but appliance-server drives one GPU (device 0), the others would sit idle; use `--replicas` to add GPUs"
        ))),
    }
}

/// The KV budget the memory request accounts for: the flag, else the image's setting.
fn kv_budget(facts: &ImageFacts, flag: Option<u64>) -> Result<Option<u64>, K8sError> {
    match (flag, facts.kv_cache_memory) {
        (Some(f), Some(image)) if facts.kv_cache_memory_in_cmd && f != image => {
            Err(K8sError::Flag {
                flag: "--kv-cache-memory",
                message: format!(
                    "the image's Cmd sets `--kv-cache-memory {}`, which a pod's Env cannot override",
                    byte_size(image)
                ),
            })
        }
        (flag, image) => Ok(flag.or(image)),
    }
}

/// On the CPU the server runs one inference thread per CPU of its quota; prefill is
/// compute-bound (about 2 FLOPs per weight per token), so CPUs grow with the weights: two per
/// GiB, from 2 to 16 (past that, decode is limited by memory bandwidth, not cores).
fn default_cpus(facts: &ImageFacts) -> u32 {
    if facts.cuda.is_some() {
        return CUDA_CPUS;
    }
    let gib = facts.weight_bytes.div_ceil(GIB);
    u32::try_from(gib.saturating_mul(2))
        .unwrap_or(u32::MAX)
        .clamp(2, 16)
}

/// `REPO@sha256:…`: by digest, so every node runs the bytes that were verified.
fn image_reference(facts: &ImageFacts, flag: Option<&str>) -> Result<String, K8sError> {
    let digest = &facts.manifest_digest;
    let repository = match flag {
        Some(given) => {
            let (repo, pinned) = match given.split_once('@') {
                Some((repo, d)) => (repo, Some(d)),
                None => (given, None),
            };
            if let Some(pinned) = pinned.filter(|d| d != digest) {
                return Err(K8sError::Flag {
                    flag: "--image",
                    message: format!(
                        "`{given}` names {pinned}, but the tarball's image is {digest}"
                    ),
                });
            }
            split_tag(repo).0
        }
        None => facts.repository.clone(),
    };
    if repository.is_empty() {
        return Err(K8sError::Flag {
            flag: "--image",
            message: "the tarball names no image reference; pass the repository it was pushed to"
                .into(),
        });
    }
    Ok(format!("{repository}@{digest}"))
}

/// The objects' name: `--name`, else the last path part of the image's repository, which must
/// be a DNS label (Service names are).
fn name(facts: &ImageFacts, flag: Option<&str>) -> Result<String, K8sError> {
    let dns_label = |s: &str| {
        s.len() <= 63
            && s.starts_with(|c: char| c.is_ascii_lowercase())
            && s.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    };
    let candidate = match flag {
        Some(n) => n.to_string(),
        None => facts
            .repository
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase()
            .replace(['_', '.'], "-"),
    };
    if dns_label(&candidate) {
        return Ok(candidate);
    }
    Err(K8sError::Flag {
        flag: "--name",
        message: format!(
            "`{candidate}` is not a DNS label (lowercase letters, digits and `-`, at most 63, starting with a letter){}",
            if flag.is_none() {
                "; pass `--name`"
            } else {
                ""
            }
        ),
    })
}

fn labels(name: &str, version: &str) -> Value {
    let mut labels = selector(name);
    let version = label_value(version);
    if !version.is_empty() {
        labels["app.kubernetes.io/version"] = json!(version);
    }
    labels["app.kubernetes.io/component"] = json!("inference-server");
    labels["app.kubernetes.io/managed-by"] = json!("appliance");
    labels
}

/// The labels a Deployment's selector holds: never the version, since a selector is immutable.
fn selector(name: &str) -> Value {
    json!({"app.kubernetes.io/name": name, "app.kubernetes.io/instance": name})
}

/// `value` cut to a valid label value: alphanumerics, `-`, `_`, `.`, at most 63, alphanumeric
/// at both ends.
fn label_value(value: &str) -> String {
    let mapped: String = value
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    mapped
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string()
}

/// Bytes as the server's byte sizes read them, in the largest whole binary unit.
fn byte_size(bytes: u64) -> String {
    match bytes {
        b if b >= GIB && b % GIB == 0 => format!("{}GiB", b / GIB),
        b if b >= MIB && b % MIB == 0 => format!("{}MiB", b / MIB),
        b => b.to_string(),
    }
}
