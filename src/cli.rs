//! Defines the command line. clap lives here and nowhere else.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Package a language model and its inference server into one signed, self-contained OCI image
/// tarball that `docker load` accepts at a site with no network.
#[derive(Debug, Parser)]
#[command(name = "appliance", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build the image tarball described by a manifest.
    ///
    /// Writes `dist/<name>-<tag>.tar` (or `--output`, or `image.output` in the manifest) and
    /// prints its path. The same inputs always give the same bytes.
    Build {
        /// The manifest (`manifest.toml`); relative paths inside it resolve against its directory.
        manifest: PathBuf,
        /// Where to write the tarball (relative to the working directory).
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// Print nothing but errors (and the summary with `--json`).
        #[arg(short, long)]
        quiet: bool,
        /// Print a JSON summary of the image on stdout instead of the path.
        #[arg(long)]
        json: bool,
        /// Rehash every cached input (downloaded files, earlier builds' layer digests) instead
        /// of trusting the size/time stamps recorded when they were last hashed.
        #[arg(long)]
        verify_cache: bool,
        /// Fail if the model would differ from `<manifest>.lock` in any way (commit, file,
        /// digest, size), or if there is no lock; never rewrite the lock.
        #[arg(long)]
        locked: bool,
        /// Package without running the manifest's `[[eval]]` cases; the provenance says so.
        #[arg(long)]
        skip_eval: bool,
        /// Also write the delta from this earlier release's tarball (see `appliance delta`).
        #[arg(long, value_name = "OLD.tar")]
        delta_from: Option<PathBuf>,
        /// Where to write that delta (default: the tarball's name with `.delta.tar`).
        #[arg(long, value_name = "FILE", requires = "delta_from")]
        delta_output: Option<PathBuf>,
        #[command(flatten)]
        hub: HubArgs,
    },
    /// Resolve the manifest's Hub revision to a commit and record every model file's size and
    /// sha256 in `<manifest>.lock` (downloading and verifying the files into the cache).
    Lock {
        /// The manifest whose `[model] hf` source to lock.
        manifest: PathBuf,
        /// Print nothing but errors.
        #[arg(short, long)]
        quiet: bool,
        #[command(flatten)]
        hub: HubArgs,
    },
    /// Download and verify a manifest's Hub model into the Hugging Face cache, so that
    /// `build --offline` can run on a host with no network. Writes the lock when absent.
    Fetch {
        /// The manifest whose `[model] hf` source to fetch.
        manifest: PathBuf,
        /// Fail if the model would differ from `<manifest>.lock`.
        #[arg(long)]
        locked: bool,
        /// Print nothing but errors.
        #[arg(short, long)]
        quiet: bool,
        /// Rehash every cached file instead of trusting its size/time stamp.
        #[arg(long)]
        verify_cache: bool,
        #[command(flatten)]
        hub: HubArgs,
    },
    /// Generate a signing key pair: `<prefix>.key` (encrypted, cosign format) and `<prefix>.pub`.
    ///
    /// The password comes from `APPLIANCE_KEY_PASSWORD` or `COSIGN_PASSWORD`, else a prompt.
    Keygen {
        /// Path prefix of the two files, e.g. `keys/site-a`.
        #[arg(short, long, value_name = "PREFIX")]
        output: PathBuf,
    },
    /// Verify an image tarball offline: every blob, the signature and the attestations.
    ///
    /// Exits 0 only if every check passes with `--key`; 3 if the tarball is intact but its
    /// signature was not checked (no `--key`, or the image is unsigned); 1 on any failure,
    /// which names the blob, file or field at fault.
    Verify {
        /// The image tarball.
        tarball: PathBuf,
        /// The signer's public key (`.pub`, PEM). Without it every integrity check runs, the
        /// signer stays unknown and the exit status is 3.
        #[arg(long, value_name = "PUB")]
        key: Option<PathBuf>,
        /// The reviewed manifest: the image's name, labels, served model and pinned files must
        /// be what it says (and the files what its lock records).
        #[arg(long, value_name = "M.toml")]
        manifest: Option<PathBuf>,
        /// The reviewed lock (default: the manifest's `.lock`, when present): every model file
        /// in the image has the locked path, size and sha256, and no other file is there.
        #[arg(long, value_name = "M.lock", requires = "manifest")]
        lock: Option<PathBuf>,
        /// TARBALL is a delta bundle made against this tarball: blobs the delta leaves out are
        /// checked in it.
        #[arg(long, value_name = "OLD.tar")]
        base: Option<PathBuf>,
        /// Print the audit report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write a delta bundle: NEW's tarball without the blobs OLD already has.
    ///
    /// Carry it to a site that has OLD: `docker load -i DELTA` works as it is on a host that
    /// loaded OLD; `appliance assemble` rebuilds NEW bit for bit for every other tool.
    Delta {
        /// The release the site already has.
        old: PathBuf,
        /// The new release's full tarball.
        new: PathBuf,
        /// Where to write the delta.
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
        /// Print a JSON summary.
        #[arg(long)]
        json: bool,
    },
    /// Rebuild a release's full tarball from the one before it and a delta bundle; the result
    /// is checked against the size and sha256 the delta records.
    Assemble {
        /// The release the delta was made against.
        old: PathBuf,
        /// The delta bundle.
        delta: PathBuf,
        /// Where to write the full tarball.
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
        /// Print a JSON summary.
        #[arg(long)]
        json: bool,
    },
    /// Upload the image, its cosign signature and its attestations to a registry.
    ///
    /// Blobs the repository already has are skipped (so a second push, or one resumed after an
    /// interruption, sends only what is missing); the manifest goes up by tag and by digest,
    /// the signature and attestations under cosign's `sha256-<hex>.sig` / `.att` tags, where
    /// `cosign verify` and admission controllers find them. Prints `REGISTRY/REPO@DIGEST`.
    Push {
        /// The image tarball (not a delta bundle: assemble it first).
        tarball: PathBuf,
        /// Where to: `REGISTRY[:PORT]/REPO[:TAG]`; without a tag, the image's own.
        #[arg(value_name = "REGISTRY/REPO[:TAG]")]
        target: String,
        /// Sign in with this user and password; without `:PASS`, `APPLIANCE_REGISTRY_PASSWORD`
        /// or a prompt. Otherwise credentials come from `REGISTRY_AUTH_FILE`, podman's
        /// `auth.json` or Docker's `config.json` (credential helpers included).
        #[arg(long, value_name = "USER[:PASS]")]
        creds: Option<String>,
        /// Trust the CA certificates (`*.crt`) and use the client certificate (`*.cert` +
        /// `*.key`) in this directory, besides the system's CA bundle (default:
        /// `/etc/containers/certs.d/REGISTRY` and `/etc/docker/certs.d/REGISTRY`).
        #[arg(long, value_name = "DIR")]
        cert_dir: Option<PathBuf>,
        /// `--tls-verify=false` accepts any certificate: only for a registry you reach over a
        /// link you trust.
        #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
        tls_verify: bool,
        /// Talk HTTP, not HTTPS (a registry on localhost without TLS).
        #[arg(long)]
        plain_http: bool,
        /// Before uploading a blob, ask the registry to link it from this repository (a
        /// previous release's); repeatable.
        #[arg(long, value_name = "REPO")]
        mount_from: Vec<String>,
        /// Upload blobs in chunks of this size (e.g. `64MiB`) instead of one request each,
        /// for proxies that cap request bodies.
        #[arg(long, value_name = "SIZE", value_parser = parse_size)]
        chunk_size: Option<u64>,
        /// Print nothing but errors (and the summary with `--json`).
        #[arg(short, long)]
        quiet: bool,
        /// Print a JSON summary (reference, digest, each blob's outcome) instead of the
        /// pinned reference.
        #[arg(long)]
        json: bool,
    },
    /// Show what is inside an image tarball: reference, digests, user, ports, model, layers.
    Inspect {
        /// The image tarball (from `appliance build`, `docker save` or an OCI archive).
        tarball: PathBuf,
        /// Print JSON (the same shape as `build --json`'s `image`).
        #[arg(long)]
        json: bool,
    },
    /// Print Kubernetes objects that run the image in a tarball: a hardened Deployment (the
    /// image by digest, non-root with the image's uid/gid, read-only root, no capabilities,
    /// probes from its HEALTHCHECK, the API key from a Secret file), a Service, a
    /// PodDisruptionBudget and, with `--keda`, a KEDA ScaledObject.
    ///
    /// Every value comes from the image itself, so the same tarball and flags always print the
    /// same bytes: `appliance k8s llm.tar --image REGISTRY/REPO | kubectl apply -f -`.
    /// The Secret is not printed (a key does not belong in a manifest); create it with
    /// `kubectl create secret generic NAME-api-key --from-file=api-key=FILE`.
    K8s(K8sArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Yaml,
    Json,
}

#[derive(Debug, clap::Args)]
pub struct K8sArgs {
    /// The image tarball (a full one; assemble a delta bundle first).
    pub tarball: PathBuf,
    /// The repository the image was pushed to (`appliance push`). Default: the tarball's own
    /// reference name. The tag is dropped: pods run the image by digest, so every node runs
    /// the bytes that were verified, whatever the tag points at later.
    #[arg(long, value_name = "REGISTRY/REPO")]
    pub image: Option<String>,
    /// Name of every object. Default: the last part of the image's repository.
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Namespace of every object. Default: none written, so `kubectl -n` or the current
    /// context decides.
    #[arg(long, value_name = "NS")]
    pub namespace: Option<String>,
    /// Pods to run (with `--keda`, the fewest it keeps: a model takes minutes to load, so
    /// scaling to zero would make the first request wait for that).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub replicas: u32,
    /// GPUs per pod (CUDA images only; default 1 for them). The server drives one GPU, so
    /// more is refused: add replicas instead.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub gpus: Option<u32>,
    /// CPUs per pod, requested and limited alike (the server runs one inference thread per
    /// CPU of its quota). Default: on the CPU two per GiB of weights, 2 to 16; 2 with a GPU.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub cpus: Option<u32>,
    /// KV cache size the pod gets and pays for (e.g. `8GiB`). Default: the image's
    /// `--kv-cache-memory`, else 4 GiB on the CPU (the server's own cap); on a GPU the pool
    /// is in GPU memory and the server sizes it.
    #[arg(long, value_name = "BYTES", value_parser = parse_byte_size)]
    pub kv_cache_memory: Option<u64>,
    /// The Secret holding the API key under the key `api-key`. Default: `NAME-api-key`.
    #[arg(long, value_name = "SECRET")]
    pub api_key_secret: Option<String>,
    /// Also print a KEDA ScaledObject that scales on `vllm:num_requests_waiting` (requests
    /// queued for a batch slot or KV blocks: the sign that replicas are saturated).
    #[arg(long)]
    pub keda: bool,
    /// Prometheus that scrapes the server's `/metrics`, for KEDA. Default: the
    /// kube-prometheus-stack's service.
    #[arg(
        long,
        value_name = "URL",
        requires = "keda",
        default_value = "http://prometheus-operated.monitoring.svc:9090"
    )]
    pub prometheus: String,
    /// Most pods KEDA may run. Default: 4 × `--replicas`.
    #[arg(long, value_name = "N", requires = "keda", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_replicas: Option<u32>,
    /// Waiting requests per pod before KEDA adds one (vLLM production-stack's value).
    #[arg(long, value_name = "N", requires = "keda", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub keda_threshold: u32,
    /// `yaml`: one document per object, as `kubectl apply -f -` and reviewers take them;
    /// `json`: one `v1` `List`, for tools that hold no YAML parser.
    #[arg(long, value_enum, default_value_t = OutputFormat::Yaml)]
    pub output: OutputFormat,
}

impl K8sArgs {
    /// The settings the objects are built from; the tarball and format stay with the command.
    pub fn settings(&self) -> appliance::k8s::K8sSettings {
        appliance::k8s::K8sSettings {
            image: self.image.clone(),
            name: self.name.clone(),
            namespace: self.namespace.clone(),
            replicas: self.replicas,
            gpus: self.gpus,
            cpus: self.cpus,
            kv_cache_memory: self.kv_cache_memory,
            api_key_secret: self.api_key_secret.clone(),
            keda: self.keda.then(|| appliance::k8s::KedaSettings {
                prometheus: self.prometheus.clone(),
                max_replicas: self.max_replicas.unwrap_or(self.replicas.saturating_mul(4)),
                threshold: self.keda_threshold,
            }),
        }
    }
}

fn parse_byte_size(text: &str) -> Result<u64, String> {
    appliance::k8s::facts::parse_bytes(text)
        .ok_or_else(|| format!("`{text}` is not a byte size (e.g. 8GiB, 512MiB)"))
}

/// Options for commands that get a model from the Hugging Face Hub. The endpoint, cache and
/// token come from `HF_ENDPOINT`, `HF_HUB_CACHE`/`HF_HOME` and `HF_TOKEN` (or `$HF_HOME/token`).
#[derive(Debug, Clone, clap::Args)]
pub struct HubArgs {
    /// Never touch the network: use the Hugging Face cache (also `HF_HUB_OFFLINE=1`).
    #[arg(long)]
    pub offline: bool,
    /// Files downloaded in parallel.
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub jobs: u16,
}

/// `1048576`, `512KiB`, `64MiB`, `1GiB`.
fn parse_size(text: &str) -> Result<u64, String> {
    let (digits, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map_or((text, ""), |at| text.split_at(at));
    let scale: u64 = match unit {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => {
            return Err(format!(
                "`{text}`: give bytes, or a number with KiB, MiB or GiB"
            ));
        }
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("`{text}`: give a size above zero, e.g. `64MiB`"))
}
