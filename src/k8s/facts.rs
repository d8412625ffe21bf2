//! Defines `ImageFacts`: what the Kubernetes objects take from the image (reference, digest,
//! account, port, health check, server settings, CUDA labels), read from its `ImageSummary`.

use crate::labels;
use crate::summary::ImageSummary;

use super::K8sError;

/// The `APPLIANCE_*` variable and the server flag that set the same thing (the flag wins, as
/// in clap: `Cmd` arguments override the image's `Env`).
struct ServerSetting {
    flag: &'static str,
    env: &'static str,
}

impl ServerSetting {
    const fn new(flag: &'static str, env: &'static str) -> Self {
        Self { flag, env }
    }
}

const PORT: ServerSetting = ServerSetting::new("--port", "APPLIANCE_PORT");
const KV_CACHE_MEMORY: ServerSetting =
    ServerSetting::new("--kv-cache-memory", "APPLIANCE_KV_CACHE_MEMORY");
const SHUTDOWN_TIMEOUT: ServerSetting =
    ServerSetting::new("--shutdown-timeout", "APPLIANCE_SHUTDOWN_TIMEOUT");
const SERVED_MODEL_NAME: ServerSetting =
    ServerSetting::new("--served-model-name", "APPLIANCE_SERVED_MODEL_NAME");

/// The server's own default for `--shutdown-timeout` (runtime/src/cli.rs).
const DEFAULT_SHUTDOWN_SECS: u64 = 30;
const NS_PER_SEC: u64 = 1_000_000_000;

/// The CUDA build the server was made with (`appliance.cuda.*` labels).
#[derive(Debug, Clone, PartialEq)]
pub struct CudaFacts {
    pub version: String,
    pub compute_capabilities: String,
    pub min_driver: String,
}

/// The image's health check in whole seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Health {
    pub interval: u64,
    pub timeout: u64,
    pub start_period: u64,
    pub retries: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ImageFacts {
    /// `registry/repo` without tag, from the tarball's reference name.
    pub repository: String,
    pub tag: String,
    /// `sha256:<hex>` of the image manifest: what a registry serves the pushed image under.
    pub manifest_digest: String,
    pub version: String,
    pub uid: u32,
    pub gid: u32,
    pub port: u16,
    pub health: Health,
    pub served_model_name: String,
    /// Sum of the model files' sizes: what the server holds in memory once loaded.
    pub weight_bytes: u64,
    /// `--kv-cache-memory` as the image sets it, when it does.
    pub kv_cache_memory: Option<u64>,
    pub shutdown_timeout: u64,
    /// Whether the image's `Cmd` (not only its `Env`) sets the KV budget: then an `Env` in
    /// the pod cannot change it.
    pub kv_cache_memory_in_cmd: bool,
    pub cuda: Option<CudaFacts>,
}

impl ImageFacts {
    pub fn read(image: &ImageSummary) -> Result<Self, K8sError> {
        let not_ours =
            |what: &str| K8sError::Image(format!("{what}; is it an `appliance build` image?"));
        if image.delta_bundle {
            return Err(K8sError::Image(
                "it is a delta bundle: `appliance assemble` it with its base release first".into(),
            ));
        }
        if image.manifest_digest.is_empty() {
            return Err(not_ours(
                "it has no OCI `index.json`, so no manifest digest",
            ));
        }
        let model = image
            .model
            .as_ref()
            .ok_or_else(|| not_ours("it has no `appliance.model.*` labels"))?;
        let (repository, tag) = split_tag(&image.reference);
        let (uid, gid) = numeric_user(&image.user)?;
        let hc = image
            .healthcheck
            .as_ref()
            .ok_or_else(|| not_ours("it has no HEALTHCHECK"))?;
        let secs = |ns: u64| ns.div_ceil(NS_PER_SEC);
        let health = Health {
            interval: secs(hc.interval).max(1),
            timeout: secs(hc.timeout).max(1),
            start_period: secs(hc.start_period),
            retries: hc.retries.max(1),
        };
        let setting = |s: &ServerSetting| setting(&image.cmd, &image.env, s);
        let port = match image.exposed_ports.as_slice() {
            [one] => one.trim_end_matches("/tcp").parse::<u16>().ok(),
            _ => None,
        }
        .or_else(|| setting(&PORT).and_then(|p| p.parse().ok()))
        .ok_or_else(|| not_ours("it exposes no single TCP port"))?;
        let kv_cache_memory = setting(&KV_CACHE_MEMORY)
            .map(|v| {
                parse_bytes(&v).ok_or_else(|| {
                    K8sError::Image(format!("its `--kv-cache-memory` `{v}` is not a byte size"))
                })
            })
            .transpose()?;
        let shutdown_timeout = setting(&SHUTDOWN_TIMEOUT)
            .and_then(|v| v.parse().ok())
            .unwrap_or(DEFAULT_SHUTDOWN_SECS);
        let cuda = match (
            image.labels.get(labels::CUDA_VERSION),
            image.labels.get(labels::CUDA_COMPUTE_CAPS),
            image.labels.get(labels::CUDA_MIN_DRIVER),
        ) {
            (Some(v), Some(c), Some(d)) => Some(CudaFacts {
                version: v.clone(),
                compute_capabilities: c.clone(),
                min_driver: d.clone(),
            }),
            _ => None,
        };
        Ok(Self {
            version: image
                .labels
                .get("org.opencontainers.image.version")
                .cloned()
                .unwrap_or_else(|| tag.clone()),
            repository,
            tag,
            manifest_digest: image.manifest_digest.clone(),
            uid,
            gid,
            port,
            health,
            served_model_name: setting(&SERVED_MODEL_NAME).unwrap_or_else(|| model.name.clone()),
            weight_bytes: model.files.iter().map(|f| f.size).sum(),
            kv_cache_memory,
            kv_cache_memory_in_cmd: flag_value(&image.cmd, KV_CACHE_MEMORY.flag).is_some(),
            shutdown_timeout,
            cuda,
        })
    }
}

/// `name:tag` → (`name`, `tag`); the tag is what follows the last `:` after the last `/`, so a
/// registry port (`host:5000/repo`) stays in the name.
pub fn split_tag(reference: &str) -> (String, String) {
    let reference = reference.split('@').next().unwrap_or_default();
    let slash = reference.rfind('/').map_or(0, |i| i + 1);
    match reference[slash..].rfind(':') {
        Some(i) => (
            reference[..slash + i].to_string(),
            reference[slash + i + 1..].to_string(),
        ),
        None => (reference.to_string(), String::new()),
    }
}

/// `uid:gid` as numbers: `runAsNonRoot` can only be checked by the kubelet against a numeric
/// user, and a name would need the image's `/etc/passwd`.
fn numeric_user(user: &str) -> Result<(u32, u32), K8sError> {
    let bad = || {
        K8sError::Image(format!(
            "its user `{user}` is not a non-root numeric `uid:gid`, which `runAsNonRoot` needs"
        ))
    };
    let (uid, gid) = user.split_once(':').ok_or_else(bad)?;
    let (uid, gid): (u32, u32) = (
        uid.parse().map_err(|_| bad())?,
        gid.parse().map_err(|_| bad())?,
    );
    if uid == 0 {
        return Err(bad());
    }
    Ok((uid, gid))
}

/// The value of `flag` in `args` (`--flag V` or `--flag=V`), the last one winning as in clap.
fn flag_value(args: &[String], flag: &str) -> Option<String> {
    let mut found = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        if arg == flag {
            found = it.next().cloned();
        } else if let Some(v) = arg.strip_prefix(flag).and_then(|r| r.strip_prefix('=')) {
            found = Some(v.to_string());
        }
    }
    found
}

fn setting(cmd: &[String], env: &[String], s: &ServerSetting) -> Option<String> {
    flag_value(cmd, s.flag).or_else(|| {
        env.iter()
            .filter_map(|e| e.split_once('='))
            .rfind(|(k, _)| *k == s.env)
            .map(|(_, v)| v.to_string())
    })
}

/// A byte count as the server's `--kv-cache-memory` reads it: a number with an optional unit,
/// binary (`KiB`…`TiB`, Docker's `k`…`t`) or decimal (`KB`…`TB`), case-insensitive.
pub fn parse_bytes(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let number: f64 = text[..split].parse().ok()?;
    let scale: f64 = match text[split..].trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kib" => 1024.0,
        "m" | "mib" => 1024.0 * 1024.0,
        "g" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        _ => return None,
    };
    let bytes = number * scale;
    (bytes.is_finite() && bytes < u64::MAX as f64).then_some(bytes as u64)
}
