//! Decides which files go in which layer, and in what order the layers stack.
//!
//! Order runs from least to most often changing, and weights sit as low as possible: a layer is
//! shared between two images only if every layer below it is the same, so weights at the bottom
//! mean a server or userland upgrade re-ships only the small top layers and `docker load` at the
//! site skips the weights it already has. Each weight file gets its own uncompressed layer: layer
//! size stays at shard size (registries cap layers) and a changed shard re-ships alone.

use std::collections::BTreeSet;
use std::path::PathBuf;

use super::Compression;
use super::{Entry, EntryKind, LayerRole, LayerSpec};

/// Where the server binary lives in the image.
pub const SERVER_PATH: &str = "usr/local/bin/appliance-server";
/// Where a CUDA image's entrypoint, the driver-checking launcher, lives.
pub const LAUNCHER_PATH: &str = "usr/local/bin/appliance-launcher";
/// Parent of every model directory in the image.
pub const MODELS_ROOT: &str = "models";
/// More weight files than this are grouped, keeping far below Docker's 125-layer limit.
pub const MAX_WEIGHT_LAYERS: usize = 100;
/// mtime of every entry in every layer appliance writes. Not the image's `created`: a layer must
/// be byte-identical in every release that packs the same files, or Docker and containerd, which
/// store layers by chain ID (a layer's digest with every digest below it), would store the
/// weights again for each release, and a new `created` alone would re-ship the userland and
/// server. 0 is the Unix epoch, what ko and rules_oci write without `SOURCE_DATE_EPOCH`.
pub const STABLE_MTIME: u64 = 0;
/// Files at least this big get their own layer even if their extension is unknown.
const BIG_FILE: u64 = 64 << 20;

/// A model file to package: its path inside the model dir and where it is on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedFile {
    pub rel_path: String,
    pub host_path: PathBuf,
    pub size: u64,
}

/// The unprivileged account the server runs as.
#[derive(Debug, Clone, PartialEq)]
pub struct Account {
    pub user: String,
    pub uid: u32,
    pub gid: u32,
}

impl Account {
    pub fn home(&self) -> String {
        format!("home/{}", self.user)
    }
}

pub struct PlanInput<'a> {
    pub account: &'a Account,
    /// `models/<served name>`.
    pub model_dir: &'a str,
    pub model_files: &'a [PlannedFile],
    /// A companion tokenizer source's files, packaged into the model dir too.
    pub tokenizer: Option<TokenizerFiles<'a>>,
    /// Loader, libc and friends; empty for a static server on `scratch`.
    pub userland: Vec<Entry>,
    pub server: PlannedFile,
    /// `appliance-launcher`, in CUDA images only; shares the server's layer.
    pub launcher: Option<PlannedFile>,
    pub compression: Compression,
}

/// The files of `model.tokenizer` and where they came from (`hf:org/repo`, `path:dir`).
pub struct TokenizerFiles<'a> {
    pub source: String,
    pub files: &'a [PlannedFile],
}

/// Lays out the whole image, bottom layer first.
pub fn plan(input: PlanInput<'_>) -> Vec<LayerSpec> {
    let small = |role, description: String, entries: Vec<Entry>| LayerSpec {
        role,
        description,
        entries: with_parent_dirs(entries),
        compression: input.compression,
        mtime: STABLE_MTIME,
    };
    let mut layers = vec![small(
        LayerRole::Filesystem,
        format!(
            "appliance: filesystem and user {}:{}:{}",
            input.account.user, input.account.uid, input.account.gid
        ),
        filesystem_entries(input.account),
    )];

    let model_entry = |f: &PlannedFile| {
        Entry::host_file(
            format!("{}/{}", input.model_dir, f.rel_path),
            f.host_path.clone(),
            f.size,
            0o444,
        )
    };
    let (weights, others): (Vec<&PlannedFile>, Vec<&PlannedFile>) =
        input.model_files.iter().partition(|f| is_weight_file(f));
    let per_layer = weights.len().div_ceil(MAX_WEIGHT_LAYERS).max(1);
    for group in weights.chunks(per_layer) {
        let names: Vec<&str> = group.iter().map(|f| f.rel_path.as_str()).collect();
        layers.push(LayerSpec {
            role: LayerRole::Weights,
            description: format!("appliance: weights {}", names.join(", ")),
            entries: with_parent_dirs(group.iter().map(|f| model_entry(f)).collect()),
            // Weights are never compressed: they barely shrink and would cost minutes of CPU.
            compression: Compression::None,
            mtime: STABLE_MTIME,
        });
    }
    if !others.is_empty() {
        let names: Vec<&str> = others.iter().map(|f| f.rel_path.as_str()).collect();
        layers.push(small(
            LayerRole::ModelFiles,
            format!("appliance: model files {}", names.join(", ")),
            others.iter().map(|f| model_entry(f)).collect(),
        ));
    }
    // Its own layer, above the model's: a tokenizer moved to another revision re-ships only
    // this, and the model's layers stay shared with images built before the change.
    if let Some(tokenizer) = input.tokenizer.as_ref().filter(|t| !t.files.is_empty()) {
        let names: Vec<&str> = tokenizer
            .files
            .iter()
            .map(|f| f.rel_path.as_str())
            .collect();
        layers.push(small(
            LayerRole::ModelFiles,
            format!(
                "appliance: tokenizer files from {} {}",
                tokenizer.source,
                names.join(", ")
            ),
            tokenizer.files.iter().map(model_entry).collect(),
        ));
    }
    if !input.userland.is_empty() {
        let count = input
            .userland
            .iter()
            .filter(|e| matches!(e.kind, EntryKind::File { .. }))
            .count();
        layers.push(small(
            LayerRole::Userland,
            format!("appliance: userland ({count} files from the build host)"),
            input.userland,
        ));
    }
    let mut server = vec![Entry::host_file(
        SERVER_PATH,
        input.server.host_path,
        input.server.size,
        0o555,
    )];
    let mut description = "appliance: appliance-server".to_string();
    if let Some(launcher) = input.launcher {
        server.push(Entry::host_file(
            LAUNCHER_PATH,
            launcher.host_path,
            launcher.size,
            0o555,
        ));
        description.push_str(" and appliance-launcher");
    }
    layers.push(small(LayerRole::Server, description, server));
    layers
}

/// Tensor files of any format, or anything big; config and tokenizer files share one small layer.
pub fn is_weight_file(file: &PlannedFile) -> bool {
    file.size >= BIG_FILE || appliance_common::weights::is_tensor_file(&file.rel_path)
}

/// The skeleton every image has: accounts, a writable /tmp, the user's home, mount points.
fn filesystem_entries(account: &Account) -> Vec<Entry> {
    let Account { user, uid, gid } = account;
    let home = account.home();
    let passwd = format!(
        "root:x:0:0:root:/root:/usr/sbin/nologin\n{user}:x:{uid}:{gid}:{user}:/{home}:/usr/sbin/nologin\n"
    );
    let group = format!("root:x:0:\n{user}:x:{gid}:\n");
    vec![
        Entry::dir("etc", 0o755, 0, 0),
        Entry::bytes("etc/group", group.into_bytes(), 0o644),
        // The NVIDIA Container Toolkit's ldcache hook writes a file here; it must exist.
        Entry::dir("etc/ld.so.conf.d", 0o755, 0, 0),
        Entry::bytes("etc/passwd", passwd.into_bytes(), 0o644),
        Entry::dir("home", 0o755, 0, 0),
        Entry::dir(home, 0o750, *uid, *gid),
        Entry::dir(MODELS_ROOT, 0o755, 0, 0),
        Entry::dir("tmp", 0o1777, 0, 0),
    ]
}

/// Adds a root-owned 0755 entry for every missing ancestor and sorts parents before children,
/// so each layer unpacks on its own with the same directory metadata everywhere.
pub fn with_parent_dirs(mut entries: Vec<Entry>) -> Vec<Entry> {
    let present: BTreeSet<String> = entries.iter().map(|e| e.path.clone()).collect();
    let mut missing = BTreeSet::new();
    for entry in &entries {
        let mut path = entry.path.as_str();
        while let Some((parent, _)) = path.rsplit_once('/') {
            if !present.contains(parent) {
                missing.insert(parent.to_string());
            }
            path = parent;
        }
    }
    entries.extend(missing.into_iter().map(|p| Entry::dir(p, 0o755, 0, 0)));
    // Byte order puts `a` before `a/b` and keeps the result independent of input order.
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    entries.dedup_by(|a, b| a.path == b.path);
    entries
}
