//! Kubernetes objects derived from an image tarball: a Deployment (by digest, hardened, probes
//! and resources from the image's own facts), a Service, a PodDisruptionBudget and, on request,
//! a KEDA ScaledObject on `vllm:num_requests_waiting`.
//!
//! [`facts::ImageFacts`] reads what the image says; [`objects`] turns it into objects;
//! [`yaml`] writes them. Nothing here reads the environment or prints.

pub mod facts;
pub mod objects;
pub mod yaml;

#[cfg(test)]
mod tests;

use serde_json::Value;

pub use facts::ImageFacts;

#[derive(Debug, thiserror::Error)]
pub enum K8sError {
    /// The image lacks a fact the objects need; the caller names the tarball.
    #[error("{0}")]
    Image(String),
    /// A flag that cannot apply to this image.
    #[error("`{flag}`: {message}")]
    Flag { flag: &'static str, message: String },
}

/// What the operator chose; everything else comes from the image.
#[derive(Debug, Clone, PartialEq)]
pub struct K8sSettings {
    /// `registry/repo` the image was pushed to; `None` uses the tarball's reference name.
    pub image: Option<String>,
    pub name: Option<String>,
    pub namespace: Option<String>,
    pub replicas: u32,
    pub gpus: Option<u32>,
    pub cpus: Option<u32>,
    pub kv_cache_memory: Option<u64>,
    pub api_key_secret: Option<String>,
    pub keda: Option<KedaSettings>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct KedaSettings {
    pub prometheus: String,
    pub max_replicas: u32,
    pub threshold: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One YAML document per object.
    Yaml,
    /// One `v1` `List` holding every object.
    Json,
}

/// The objects as text in `format`; the same objects always give the same bytes.
pub fn render(objects: &[Value], format: Format) -> String {
    match format {
        Format::Yaml => yaml::documents(objects),
        Format::Json => {
            let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": objects});
            // Keys sorted explicitly (see `yaml`): the same bytes whatever serde_json's features.
            let list = crate::json::sort_keys(list);
            let mut text = serde_json::to_string_pretty(&list).unwrap_or_default();
            text.push('\n');
            text
        }
    }
}
