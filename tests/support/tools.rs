//! skopeo, umoci and podman, driven the way an air-gapped site would, each in isolated temp state.
//!
//! These are the independent loaders our tarballs must satisfy besides `docker load`: skopeo reads
//! `docker-archive:` and `oci-archive:` references, umoci unpacks an OCI layout to a runtime bundle
//! (verifying every digest), podman loads into a private vfs store. A missing tool panics with the
//! install hint; nothing is skipped.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;

use super::cleanup::teardown;
use super::process::{describe, run_ok, run_with_timeout, streams};

/// Limit for one skopeo/umoci/podman/tar command; multi-GB images take tens of seconds.
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(600);

/// The absolute path of `name` from PATH (then /usr/local/sbin, /usr/sbin, /sbin, which a
/// non-login PATH may lack); panics with the install hint when it is missing.
pub fn require_tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let sbin = ["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from);
    std::env::split_paths(&path)
        .chain(sbin)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
        .unwrap_or_else(|| panic!("{name} not found: run scripts/install-test-deps"))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn json(what: &str, text: &str) -> Value {
    serde_json::from_str(text)
        .unwrap_or_else(|e| panic!("{what} printed invalid JSON ({e}):\n{text}"))
}

fn skopeo(args: &[&str], reference: &str) -> Value {
    let mut cmd = Command::new(require_tool("skopeo"));
    cmd.arg("inspect").args(args).arg(reference);
    let line = describe(&cmd);
    json(&line, &run_ok(&mut cmd, TOOL_TIMEOUT))
}

/// `skopeo inspect REF`: digest, layers, architecture, os, labels... of e.g.
/// `docker-archive:/x.tar` or `oci-archive:/x.tar`.
pub fn skopeo_inspect(reference: &str) -> Value {
    skopeo(&[], reference)
}

/// `skopeo inspect --config REF`: the image configuration (OCI form) as skopeo reads it.
pub fn skopeo_inspect_config(reference: &str) -> Value {
    skopeo(&["--config"], reference)
}

/// `skopeo inspect --raw REF`: the manifest exactly as stored in the archive.
pub fn skopeo_inspect_raw(reference: &str) -> Value {
    skopeo(&["--raw"], reference)
}

/// An unpacked OCI runtime bundle; the temp dir holding it is removed on drop.
pub struct Unpacked {
    /// The bundle directory (`config.json`, `rootfs/`, umoci's mtree).
    pub bundle: PathBuf,
    /// `bundle/rootfs`: the image's filesystem.
    pub rootfs: PathBuf,
    /// The `org.opencontainers.image.ref.name` that was unpacked.
    pub reference: String,
    _scratch: TempDir,
}

impl Unpacked {
    /// The runtime spec umoci generated from the image config (process args, env, user, cwd).
    pub fn runtime_config(&self) -> Value {
        let path = self.bundle.join("config.json");
        let text = fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        json(&path.display().to_string(), &text)
    }
}

/// Unpacks an OCI image layout (a directory, or a tarball of one, as `appliance` writes it) with
/// `umoci unpack`, which verifies every blob's digest and size on the way.
///
/// The layout's `index.json` must list exactly one manifest carrying an
/// `org.opencontainers.image.ref.name` annotation; that reference is what gets unpacked.
/// `rootless` adds `--rootless` (ownership mapped to the caller instead of kept).
pub fn umoci_unpack(layout: &Path, rootless: bool) -> Unpacked {
    let umoci = require_tool("umoci");
    let scratch = tempfile::Builder::new()
        .prefix("umoci-")
        .tempdir()
        .expect("cannot create a temp dir for umoci");
    let layout_dir = if layout.is_dir() {
        layout.to_path_buf()
    } else {
        let dir = scratch.path().join("layout");
        fs::create_dir(&dir).expect("cannot create layout dir");
        run_ok(
            Command::new(require_tool("tar"))
                .arg("-xf")
                .arg(layout)
                .arg("-C")
                .arg(&dir),
            TOOL_TIMEOUT,
        );
        dir
    };
    let reference = single_ref_name(&layout_dir);
    let layout_str = layout_dir.to_string_lossy();
    assert!(
        !layout_str.contains(':'),
        "umoci cannot address a layout whose path contains ':': {layout_str}"
    );
    let bundle = scratch.path().join("bundle");
    let mut cmd = Command::new(umoci);
    cmd.arg("unpack");
    if rootless {
        cmd.arg("--rootless");
    }
    cmd.arg("--image")
        .arg(format!("{layout_str}:{reference}"))
        .arg(&bundle);
    run_ok(&mut cmd, TOOL_TIMEOUT);
    Unpacked {
        rootfs: bundle.join("rootfs"),
        bundle,
        reference,
        _scratch: scratch,
    }
}

/// The one `org.opencontainers.image.ref.name` in `dir/index.json`; panics otherwise.
fn single_ref_name(dir: &Path) -> String {
    let path = dir.join("index.json");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{} is not an OCI image layout: cannot read index.json: {e}",
            dir.display()
        )
    });
    let index = json(&path.display().to_string(), &text);
    let manifests = index["manifests"]
        .as_array()
        .unwrap_or_else(|| panic!("{} has no `manifests` array:\n{text}", path.display()));
    let refs: Vec<&str> = manifests
        .iter()
        .filter_map(|m| m["annotations"]["org.opencontainers.image.ref.name"].as_str())
        .collect();
    match (manifests.len(), refs.as_slice()) {
        (1, [one]) => one.to_string(),
        _ => panic!(
            "{} must list exactly one manifest with an `org.opencontainers.image.ref.name` \
             annotation (found {} manifests, refs {refs:?}):\n{text}",
            path.display(),
            manifests.len()
        ),
    }
}

/// A private podman store (vfs, cgroupfs, file events) in a temp dir, removed on drop.
///
/// Flags verified with podman 4.3 as root: `--root`, `--runroot`, `--tmpdir`, `--volumepath`,
/// `--storage-driver vfs`, `--cgroup-manager cgroupfs`, `--events-backend file`.
pub struct Podman {
    dir: PathBuf,
}

impl Podman {
    /// A new empty store under `/tmp/ap-XXXXXX`.
    pub fn new() -> Podman {
        require_tool("podman");
        let dir = tempfile::Builder::new()
            .prefix("ap-")
            .rand_bytes(6)
            .tempdir_in("/tmp")
            .expect("cannot create a temp dir for podman")
            .keep();
        Podman { dir }
    }

    /// The store's directory (`root`, `run`, `tmp`, `volumes`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A `podman` command pointed at this store.
    pub fn podman_cmd(&self) -> Command {
        let mut cmd = Command::new(require_tool("podman"));
        let d = &self.dir;
        cmd.arg("--root")
            .arg(d.join("root"))
            .arg("--runroot")
            .arg(d.join("run"))
            .arg("--tmpdir")
            .arg(d.join("tmp"))
            .arg("--volumepath")
            .arg(d.join("volumes"))
            .args(["--storage-driver", "vfs"])
            .args(["--cgroup-manager", "cgroupfs"])
            .args(["--events-backend", "file"]);
        cmd
    }

    /// Runs `podman ARGS` against this store; the caller checks the status.
    pub fn podman(&self, args: &[&str]) -> Output {
        run_with_timeout(self.podman_cmd().args(args), TOOL_TIMEOUT)
    }

    /// Runs `podman ARGS` and returns stdout; panics with both streams on failure.
    pub fn podman_ok(&self, args: &[&str]) -> String {
        run_ok(self.podman_cmd().args(args), TOOL_TIMEOUT)
    }

    /// `podman load -i TAR`; returns the names it reported (`Loaded image: NAME` lines).
    pub fn load(&self, tar: &Path) -> Vec<String> {
        let mut cmd = self.podman_cmd();
        cmd.arg("load").arg("-i").arg(tar);
        let line = describe(&cmd);
        let out = run_with_timeout(&mut cmd, TOOL_TIMEOUT);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            panic!(
                "`{line}` failed ({})\n{}",
                out.status,
                streams(&out.stdout, &out.stderr)
            );
        }
        let names: Vec<String> = text
            .lines()
            .filter_map(|l| {
                l.strip_prefix("Loaded image: ")
                    .or(l.strip_prefix("Loaded image(s): "))
            })
            .flat_map(|names| names.split(','))
            .map(|n| n.trim().to_owned())
            .filter(|n| !n.is_empty())
            .collect();
        assert!(
            !names.is_empty(),
            "`{line}` reported no loaded image:\n{text}"
        );
        names
    }

    /// `podman image inspect REF` as JSON (the first element of the array).
    pub fn image_inspect(&self, reference: &str) -> Value {
        let text = self.podman_ok(&["image", "inspect", reference]);
        let all = json("podman image inspect", &text);
        all.get(0)
            .cloned()
            .unwrap_or_else(|| panic!("podman image inspect {reference}: empty result"))
    }
}

impl Default for Podman {
    fn default() -> Self {
        Podman::new()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        if let Err(e) = teardown(&self.dir, None) {
            eprintln!("harness: {e}");
        }
    }
}

/// Loads `tar` into a fresh private podman store; returns the store and the loaded names.
pub fn podman_load(tar: &Path) -> (Podman, Vec<String>) {
    let podman = Podman::new();
    let names = podman.load(tar);
    (podman, names)
}
