//! Hub models end to end: `appliance lock`, `fetch` and `build` against a fake Hugging Face Hub
//! on 127.0.0.1 serving the `qwen2-tied` reference checkpoint, with injected faults. Every fault
//! test asserts the outcome and that nothing corrupt reached the cache (as a verified file) or
//! the output tarball.

use crate::support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use support::fake_hub::{FakeHub, Fault};
use support::layers::layer_entries;
use support::paths::{appliance_bin, shared_fixtures};

const REPO: &str = "org/tiny";
const WEIGHTS: &str = "model.safetensors";
/// The files the default `model.files` globs select from the fixture (not `reference.json`).
const PACKAGED: [&str; 6] = [
    "chat_template.jinja",
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
];

/// A temp dir holding a manifest for `org/tiny`, an empty Hugging Face cache and appliance cache.
struct Site {
    dir: tempfile::TempDir,
    hub_url: String,
    hf_home: PathBuf,
}

impl Site {
    fn new(hub: &FakeHub) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let manifest = format!(
            "[image]\nname = \"registry.local/llm/tiny\"\ntag = \"0.1.0\"\ncreated = \"2025-06-01T00:00:00Z\"\n\
             [model]\nhf = \"{REPO}\"\nrevision = \"main\"\n[server]\nserved_model_name = \"tiny\"\n"
        );
        std::fs::write(dir.path().join("manifest.toml"), manifest).unwrap();
        let hf_home = dir.path().join("hf");
        Self {
            hub_url: hub.url.clone(),
            hf_home,
            dir,
        }
    }

    fn manifest(&self) -> PathBuf {
        self.dir.path().join("manifest.toml")
    }

    fn lock(&self) -> PathBuf {
        self.dir.path().join("manifest.lock")
    }

    fn output(&self) -> PathBuf {
        self.dir.path().join("out.tar")
    }

    fn cache_repo(&self) -> PathBuf {
        self.hf_home.join("hub/models--org--tiny")
    }

    fn quarantine(&self) -> PathBuf {
        self.dir
            .path()
            .join("appliance/hub/quarantine/models--org--tiny")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(appliance_bin());
        cmd.args(args)
            .current_dir(self.dir.path())
            .env_remove("HF_TOKEN")
            .env_remove("HF_HUB_OFFLINE")
            .env_remove("HF_HUB_CACHE")
            .env_remove("HF_TOKEN_PATH")
            .env_remove("XDG_CACHE_HOME")
            .env("HF_ENDPOINT", &self.hub_url)
            .env("HF_HOME", &self.hf_home)
            .env("APPLIANCE_CACHE", self.dir.path().join("appliance"))
            .env("HOME", self.dir.path().join("home"))
            // Backoff of a millisecond: fault tests stay fast; only `Retry-After` can cause a
            // wait of a second.
            .env("APPLIANCE_HUB_RETRY_BASE_MS", "1");
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        self.run_with(args, &[])
    }

    fn run_with(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = self.command(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        support::run_with_timeout(&mut cmd, Duration::from_secs(300))
    }

    fn build(&self, extra: &[&str]) -> Output {
        self.build_with(extra, &[])
    }

    /// `appliance build` of the manifest into [`Site::output`], with `extra` arguments and `env`.
    fn build_with(&self, extra: &[&str], env: &[(&str, &str)]) -> Output {
        let m = self.manifest();
        let o = self.output();
        let mut args = vec![
            "build",
            m.to_str().unwrap(),
            "--output",
            o.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        self.run_with(&args, env)
    }
}

fn fixture() -> PathBuf {
    shared_fixtures().join("models/qwen2-tied")
}

fn hub_with_fixture() -> (FakeHub, String) {
    let hub = FakeHub::start();
    let commit = hub.commit_dir(REPO, "main", &fixture());
    (hub, commit)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[track_caller]
fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        stderr(out)
    );
}

#[track_caller]
fn assert_fails_with(out: &Output, needles: &[&str]) -> String {
    assert!(
        !out.status.success(),
        "expected failure, got success: {}",
        stderr(out)
    );
    let err = stderr(out);
    for n in needles {
        assert!(err.contains(n), "stderr lacks `{n}`:\n{err}");
    }
    err
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The tarball's model files are exactly the fixture's bytes.
#[track_caller]
fn assert_image_has_fixture_bytes(tarball: &Path) {
    let files = layer_entries(tarball);
    for name in PACKAGED {
        let expected = std::fs::read(fixture().join(name)).unwrap();
        let got = files
            .get(&format!("models/tiny/{name}"))
            .filter(|e| e.is_file())
            .unwrap_or_else(|| panic!("`models/tiny/{name}` not in the image"));
        assert!(
            got.bytes == expected,
            "`{name}` in the image differs from the fixture"
        );
    }
    assert!(!files.contains_key("models/tiny/reference.json"));
}

/// Nothing for `file` is in the cache as a verified file: no snapshot entry, no blob of it.
#[track_caller]
fn assert_not_cached(site: &Site, commit: &str, file: &str) {
    let link = site.cache_repo().join("snapshots").join(commit).join(file);
    assert!(!link.exists(), "`{}` is in the cache", link.display());
    let good = sha256_hex(&std::fs::read(fixture().join(file)).unwrap());
    let blobs = site.cache_repo().join("blobs");
    for e in std::fs::read_dir(&blobs).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        assert!(name != good, "blob `{name}` is in the cache");
    }
}

fn requests_for(hub: &FakeHub, file: &str) -> Vec<support::fake_hub::LoggedRequest> {
    hub.requests()
        .into_iter()
        .filter(|r| r.path.ends_with(&format!("/{file}")))
        .collect()
}

#[test]
fn lock_then_locked_build_packages_the_exact_hub_bytes() {
    let (hub, commit) = hub_with_fixture();
    let site = Site::new(&hub);
    let out = site.run(&["lock", site.manifest().to_str().unwrap()]);
    assert_ok(&out);

    let lock: toml::Value = toml::from_str(&std::fs::read_to_string(site.lock()).unwrap()).unwrap();
    assert_eq!(lock["model"]["repo"].as_str(), Some(REPO));
    assert_eq!(lock["model"]["revision"].as_str(), Some("main"));
    assert_eq!(lock["model"]["commit"].as_str(), Some(commit.as_str()));
    let files = lock["model"]["files"].as_array().unwrap();
    let locked: Vec<(&str, i64, &str)> = files
        .iter()
        .map(|f| {
            (
                f["path"].as_str().unwrap(),
                f["size"].as_integer().unwrap(),
                f["sha256"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(locked.iter().map(|f| f.0).collect::<Vec<_>>(), PACKAGED);
    for (path, size, sha) in &locked {
        let bytes = std::fs::read(fixture().join(path)).unwrap();
        assert_eq!(*size as usize, bytes.len(), "{path}");
        assert_eq!(*sha, sha256_hex(&bytes), "{path}");
    }

    // The standard Hugging Face layout: refs, snapshot symlinks into blobs named by ETag.
    let repo = site.cache_repo();
    assert_eq!(
        std::fs::read_to_string(repo.join("refs/main")).unwrap(),
        commit
    );
    let weights = repo.join("snapshots").join(&commit).join(WEIGHTS);
    let weights_sha = sha256_hex(&std::fs::read(fixture().join(WEIGHTS)).unwrap());
    assert_eq!(
        std::fs::read_link(&weights).unwrap(),
        PathBuf::from(format!("../../blobs/{weights_sha}"))
    );

    let before = std::fs::read(site.lock()).unwrap();
    let out = site.build(&["--locked"]);
    assert_ok(&out);
    assert_image_has_fixture_bytes(&site.output());
    assert_eq!(
        std::fs::read(site.lock()).unwrap(),
        before,
        "--locked rewrote the lock"
    );

    // The image records the resolved commit, not the branch name.
    let out = site.run(&["inspect", "--json", site.output().to_str().unwrap()]);
    assert_ok(&out);
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["model"]["revision"].as_str(), Some(commit.as_str()));
}

#[test]
fn build_without_lock_writes_one() {
    let (hub, commit) = hub_with_fixture();
    let site = Site::new(&hub);
    assert!(!site.lock().exists());
    assert_ok(&site.build(&[]));
    let text = std::fs::read_to_string(site.lock()).unwrap();
    assert!(text.contains(&commit), "{text}");
    assert_image_has_fixture_bytes(&site.output());
    // `--locked` without a lock is refused.
    std::fs::remove_file(site.lock()).unwrap();
    assert_fails_with(
        &site.build(&["--locked"]),
        &["--locked", "no lock file", "appliance lock"],
    );
}

#[test]
fn flipped_byte_is_rejected_quarantined_and_not_packaged() {
    let (hub, commit) = hub_with_fixture();
    let site = Site::new(&hub);
    hub.fault(WEIGHTS, Fault::FlipByte, 1);
    let good = sha256_hex(&std::fs::read(fixture().join(WEIGHTS)).unwrap());
    let err = assert_fails_with(
        &site.build(&[]),
        &[
            "sha256 mismatch for `model.safetensors`",
            &good,
            "Hub metadata",
            "quarantined",
        ],
    );
    assert!(!site.output().exists(), "a tarball was written: {err}");
    assert_not_cached(&site, &commit, WEIGHTS);
    let quarantined = site.quarantine().join(&commit).join(WEIGHTS);
    let bad = std::fs::read(&quarantined).unwrap();
    assert_eq!(
        bad.len(),
        std::fs::metadata(fixture().join(WEIGHTS)).unwrap().len() as usize
    );
    assert_ne!(sha256_hex(&bad), good);
    assert!(
        !site.lock().exists(),
        "a lock was written for corrupt bytes"
    );

    // The fault is spent: the next build downloads good bytes.
    assert_ok(&site.build(&[]));
    assert_image_has_fixture_bytes(&site.output());
}

#[test]
fn truncated_body_is_never_cached_and_later_resumes() {
    let (hub, commit) = hub_with_fixture();
    let site = Site::new(&hub);
    let size = std::fs::metadata(fixture().join(WEIGHTS)).unwrap().len();
    hub.fault(WEIGHTS, Fault::Truncate, 1000);
    assert_fails_with(
        &site.build(&[]),
        &[
            "Download of `model.safetensors` failed after 6 attempts",
            &format!("of {size} bytes"),
        ],
    );
    assert!(!site.output().exists());
    assert_not_cached(&site, &commit, WEIGHTS);
    let partials: Vec<_> = std::fs::read_dir(site.cache_repo().join("blobs"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".incomplete"))
        .collect();
    assert_eq!(partials.len(), 1, "the partial download is kept to resume");
    let partial_len = partials[0].metadata().unwrap().len();
    assert!(partial_len > 0 && partial_len < size);

    hub.clear_faults();
    assert_ok(&site.build(&[]));
    assert_image_has_fixture_bytes(&site.output());
    let ranged = requests_for(&hub, WEIGHTS)
        .into_iter()
        .filter(|r| r.range.as_deref() == Some(&format!("bytes={partial_len}-")))
        .count();
    assert!(
        ranged >= 1,
        "the second build did not resume from the partial file"
    );
}

#[test]
fn dropped_connection_resumes_from_bytes_on_disk() {
    let (hub, _) = hub_with_fixture();
    let site = Site::new(&hub);
    hub.fault(WEIGHTS, Fault::DropAfter(200_000), 1);
    assert_ok(&site.build(&[]));
    assert_image_has_fixture_bytes(&site.output());
    let reqs = requests_for(&hub, WEIGHTS);
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    assert_eq!(reqs[0].range, None);
    assert_eq!(reqs[1].range.as_deref(), Some("bytes=200000-"));
    assert_eq!(reqs[1].status, 206);
}

#[test]
fn rate_limit_429_then_success_honours_retry_after() {
    let (hub, _) = hub_with_fixture();
    let site = Site::new(&hub);
    hub.fault(
        WEIGHTS,
        Fault::Status {
            code: 429,
            retry_after: Some(1),
        },
        1,
    );
    assert_ok(&site.build(&[]));
    assert_image_has_fixture_bytes(&site.output());
    let reqs = requests_for(&hub, WEIGHTS);
    assert_eq!(
        reqs.iter().map(|r| r.status).collect::<Vec<_>>(),
        [429, 200]
    );
    // With a 1 ms backoff base, only `Retry-After: 1` explains a wait of a second.
    let waited = reqs[1].at.duration_since(reqs[0].at);
    assert!(
        waited >= Duration::from_millis(950),
        "retried after {waited:?}"
    );
}

#[test]
fn server_error_500_twice_then_success() {
    let (hub, _) = hub_with_fixture();
    let site = Site::new(&hub);
    hub.fault("config.json", Fault::status(500), 2);
    hub.fault("@api", Fault::status(503), 1);
    assert_ok(&site.build(&[]));
    assert_image_has_fixture_bytes(&site.output());
    let statuses: Vec<u16> = requests_for(&hub, "config.json")
        .iter()
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, [500, 500, 200]);
}

#[test]
fn unauthorized_401_says_to_set_hf_token_without_printing_it() {
    let (hub, _) = hub_with_fixture();
    let site = Site::new(&hub);
    hub.require_token("hf_right_token_123");
    let out = site.run_with(
        &["build", site.manifest().to_str().unwrap()],
        &[("HF_TOKEN", "hf_wrong_token_456")],
    );
    let err = assert_fails_with(
        &out,
        &[
            "refused access to `org/tiny` (HTTP 401)",
            "HF_TOKEN",
            "license",
        ],
    );
    assert!(!err.contains("hf_wrong_token_456"), "{err}");
    assert!(!site.lock().exists());
}

#[test]
fn token_never_reaches_the_tarball_the_lock_or_the_output() {
    let (hub, _) = hub_with_fixture();
    let site = Site::new(&hub);
    let token = "hf_SeCrEt_tOkEn_0123456789abcdef";
    hub.require_token(token);
    let out = site.build_with(&[], &[("HF_TOKEN", token)]);
    assert_ok(&out);
    assert_image_has_fixture_bytes(&site.output());
    assert!(
        hub.requests()
            .iter()
            .all(|r| r.authorization.as_deref() == Some(&format!("Bearer {token}"))),
        "a request went without the token"
    );
    let needle = token.as_bytes();
    let contains = |hay: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
    assert!(
        !contains(&std::fs::read(site.output()).unwrap()),
        "token in the tarball"
    );
    assert!(
        !contains(&std::fs::read(site.lock()).unwrap()),
        "token in the lock"
    );
    assert!(
        !contains(&out.stdout) && !contains(&out.stderr),
        "token in the output"
    );
    // Layers are stored uncompressed or gzip/zstd; the default manifest has none compressed,
    // so the byte scan above covers every file in the image.

    // The token file (`$HF_HOME/token`) works the same way.
    std::fs::create_dir_all(&site.hf_home).unwrap();
    std::fs::write(site.hf_home.join("token"), format!("{token}\n")).unwrap();
    std::fs::remove_dir_all(site.cache_repo()).unwrap();
    let out = site.run(&["lock", site.manifest().to_str().unwrap()]);
    assert_ok(&out);
    assert!(!contains(&std::fs::read(site.lock()).unwrap()));
    assert!(!contains(&out.stdout) && !contains(&out.stderr));
}

#[test]
fn not_found_404_names_the_file_and_commit() {
    let (hub, commit) = hub_with_fixture();
    let site = Site::new(&hub);
    hub.fault("tokenizer.json", Fault::status(404), 1);
    assert_fails_with(
        &site.build(&[]),
        &[
            "`tokenizer.json` was not found in `org/tiny` at commit",
            &commit,
            "404",
        ],
    );
    assert!(!site.output().exists());
    assert_not_cached(&site, &commit, "tokenizer.json");

    let text = std::fs::read_to_string(site.manifest())
        .unwrap()
        .replace("revision = \"main\"", "revision = \"no-such-branch\"");
    std::fs::write(site.manifest(), text).unwrap();
    assert_fails_with(
        &site.build(&[]),
        &["Revision `no-such-branch` of `org/tiny` was not found"],
    );
}

#[test]
fn wrong_repo_commit_header_is_refused() {
    let (hub, commit) = hub_with_fixture();
    let site = Site::new(&hub);
    hub.fault("config.json", Fault::WrongCommit, 1);
    assert_fails_with(
        &site.build(&[]),
        &["X-Repo-Commit", &"f".repeat(40), &commit, "`config.json`"],
    );
    assert!(!site.output().exists());
    assert_not_cached(&site, &commit, "config.json");
}

#[test]
fn branch_moved_between_lock_and_build() {
    let (hub, old) = hub_with_fixture();
    let site = Site::new(&hub);
    assert_ok(&site.run(&["lock", site.manifest().to_str().unwrap()]));
    let locked = std::fs::read(site.lock()).unwrap();

    // `main` moves to a commit with another config.json.
    let mut files: Vec<(String, Vec<u8>)> = PACKAGED
        .iter()
        .map(|n| (n.to_string(), std::fs::read(fixture().join(n)).unwrap()))
        .collect();
    files[1].1.extend_from_slice(b"\n");
    let new = hub.commit(REPO, "main", &files);

    assert_fails_with(
        &site.build(&["--locked"]),
        &["now resolves to commit", &new, &old, "appliance lock"],
    );
    assert!(!site.output().exists());

    // Without `--locked` the lock still decides: the locked commit's bytes are packaged.
    assert_ok(&site.build(&[]));
    assert_image_has_fixture_bytes(&site.output());
    assert_eq!(std::fs::read(site.lock()).unwrap(), locked);

    // `appliance lock` moves to the new commit.
    assert_ok(&site.run(&["lock", site.manifest().to_str().unwrap()]));
    let text = std::fs::read_to_string(site.lock()).unwrap();
    assert!(text.contains(&new) && !text.contains(&old), "{text}");
}

#[test]
fn corrupted_cache_file_is_caught_and_quarantined() {
    let (hub, commit) = hub_with_fixture();
    let site = Site::new(&hub);
    assert_ok(&site.run(&["fetch", site.manifest().to_str().unwrap()]));
    let blob_of = |file: &str| {
        std::fs::canonicalize(site.cache_repo().join("snapshots").join(&commit).join(file)).unwrap()
    };
    let flip = |path: &Path, keep_mtime: bool| {
        let mtime = std::fs::metadata(path).unwrap().modified().unwrap();
        let mut bytes = std::fs::read(path).unwrap();
        bytes[10] ^= 0x01;
        std::fs::write(path, &bytes).unwrap();
        if keep_mtime {
            std::fs::File::options()
                .write(true)
                .open(path)
                .unwrap()
                .set_modified(mtime)
                .unwrap();
        }
    };

    // Changed size or mtime: the stamp no longer matches, the file is rehashed and refused.
    let blob = blob_of("config.json");
    flip(&blob, false);
    assert_fails_with(
        &site.build(&["--offline"]),
        &[
            "sha256 mismatch for `config.json`",
            "manifest.lock",
            "quarantined",
        ],
    );
    assert!(!site.output().exists());
    assert!(!blob.exists(), "the corrupt blob is still in the cache");
    assert!(
        site.quarantine()
            .join(&commit)
            .join("config.json")
            .is_file()
    );

    // Online, the quarantined file is downloaded again.
    assert_ok(&site.build(&[]));
    assert_image_has_fixture_bytes(&site.output());
    std::fs::remove_file(site.output()).unwrap();

    // Same size and mtime: the stamp still matches, yet the packaged bytes are checked against
    // the verified digest, so the corruption never reaches an image...
    let blob = blob_of("tokenizer.json");
    flip(&blob, true);
    assert_fails_with(
        &site.build(&["--offline"]),
        &["`tokenizer.json` changed in the cache"],
    );
    assert!(!site.output().exists());
    // ...and `--verify-cache` finds it before packaging, and quarantines it.
    assert_fails_with(
        &site.build(&["--offline", "--verify-cache"]),
        &["sha256 mismatch for `tokenizer.json`", "quarantined"],
    );
    assert!(!blob.exists());
}

#[test]
fn offline_with_a_cold_cache_lists_every_missing_file_and_makes_no_request() {
    let (hub, commit) = hub_with_fixture();
    let site = Site::new(&hub);
    assert_ok(&site.run(&["lock", site.manifest().to_str().unwrap()]));
    std::fs::remove_dir_all(&site.hf_home).unwrap();
    let before = hub.requests().len();

    let err = assert_fails_with(
        &site.build(&["--offline"]),
        &[
            "Offline",
            "lacks 6 file(s) of `org/tiny` at commit",
            &commit,
            "appliance fetch",
        ],
    );
    for name in PACKAGED {
        assert!(
            err.contains(&format!("  - {name}")),
            "`{name}` not listed:\n{err}"
        );
    }
    // `HF_HUB_OFFLINE=1` without a lock: the revision cannot even be resolved.
    std::fs::remove_file(site.lock()).unwrap();
    let m = site.manifest();
    let out = site.run_with(&["build", m.to_str().unwrap()], &[("HF_HUB_OFFLINE", "1")]);
    assert_fails_with(
        &out,
        &[
            "Offline",
            "revision `main` (not resolved in the cache)",
            "appliance fetch",
        ],
    );
    assert_eq!(
        hub.requests().len(),
        before,
        "an offline build touched the network"
    );
}

#[test]
fn offline_build_after_fetch_makes_no_request() {
    let (hub, _) = hub_with_fixture();
    let site = Site::new(&hub);
    assert_ok(&site.run(&["fetch", site.manifest().to_str().unwrap(), "--jobs", "2"]));
    let before = hub.requests().len();
    assert_ok(&site.build(&["--offline", "--locked"]));
    assert_image_has_fixture_bytes(&site.output());
    // Without the lock, the cache's `refs/main` resolves the branch.
    std::fs::remove_file(site.lock()).unwrap();
    let out = site.build_with(&[], &[("HF_HUB_OFFLINE", "1")]);
    assert_ok(&out);
    assert_eq!(
        hub.requests().len(),
        before,
        "an offline build touched the network"
    );
}

/// Two fetches into one cache at once (two CI jobs on one runner): the per-blob lock makes the
/// second wait for the first's download and verify the finished blob instead of writing into
/// the same `.incomplete` file; each file's body is downloaded once and both succeed.
#[test]
fn concurrent_fetches_share_the_cache_through_the_blob_lock() {
    let (hub, _) = hub_with_fixture();
    let site = Site::new(&hub);
    // The first download of the weights is slow, so the second fetch arrives while it runs.
    hub.fault("model.safetensors", Fault::Delay(1500), 1);
    let manifest = site.manifest();
    let args = ["fetch", manifest.to_str().unwrap()];
    let mut first = site.command(&args);
    first
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let first = first.spawn().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let second = site.run(&args);
    let first = first.wait_with_output().unwrap();
    assert_ok(&first);
    assert_ok(&second);
    let bodies: Vec<_> = requests_for(&hub, "model.safetensors")
        .into_iter()
        .filter(|r| r.method == "GET" && (r.status == 200 || r.status == 206))
        .collect();
    assert_eq!(bodies.len(), 1, "downloaded more than once: {bodies:?}");
    // The lock is huggingface_hub's, at its path.
    assert!(site.hf_home.join("hub/.locks/models--org--tiny").is_dir());
    assert_ok(&site.build(&["--offline", "--locked"]));
    assert_image_has_fixture_bytes(&site.output());
}

/// Runs huggingface_hub (installed by `scripts/install-test-deps`) against the fake Hub.
fn python_hf(site: &Site, script: &str, env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new("python3");
    cmd.arg("-c")
        .arg(script)
        .env("HF_ENDPOINT", &site.hub_url)
        .env("HF_HUB_DISABLE_TELEMETRY", "1")
        .env_remove("HF_TOKEN");
    for (k, v) in env {
        cmd.env(k, v);
    }
    support::run_with_timeout(&mut cmd, Duration::from_secs(120))
}

#[test]
fn huggingface_hub_and_appliance_share_one_cache_both_ways() {
    let (hub, commit) = hub_with_fixture();
    let site = Site::new(&hub);
    let cache = site.hf_home.join("hub");

    // huggingface_hub fills the cache; appliance builds from it offline, with no lock.
    let script = format!(
        "from huggingface_hub import snapshot_download\n\
         print(snapshot_download('{REPO}', cache_dir='{}', allow_patterns=['*.json', '*.safetensors', '*.jinja']))",
        cache.display()
    );
    assert_ok(&python_hf(&site, &script, &[]));
    let before = hub.requests().len();
    assert_ok(&site.build(&["--offline"]));
    assert_image_has_fixture_bytes(&site.output());
    assert_eq!(
        hub.requests().len(),
        before,
        "an offline build touched the network"
    );

    // appliance fills a fresh cache; huggingface_hub reads it with the network off.
    std::fs::remove_dir_all(&site.hf_home).unwrap();
    std::fs::remove_file(site.lock()).unwrap();
    assert_ok(&site.run(&["fetch", site.manifest().to_str().unwrap()]));
    let script = format!(
        "from huggingface_hub import hf_hub_download\n\
         for f in {PACKAGED:?}: print(hf_hub_download('{REPO}', f, cache_dir='{}', local_files_only=True))",
        cache.display()
    );
    let out = python_hf(&site, &script, &[("HF_HUB_OFFLINE", "1")]);
    assert_ok(&out);
    let paths: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(paths.len(), PACKAGED.len());
    for (name, path) in PACKAGED.iter().zip(&paths) {
        assert!(path.contains(&commit), "{path}");
        assert_eq!(
            std::fs::read(path).unwrap(),
            std::fs::read(fixture().join(name)).unwrap(),
            "{name}"
        );
    }
}

#[test]
fn disk_full_is_refused_before_downloading_anything() {
    let (hub, commit) = hub_with_fixture();
    let site = Site::new(&hub);
    let huge: u64 = 1 << 60;
    hub.declare_size(REPO, &commit, WEIGHTS, huge);
    assert_fails_with(
        &site.build(&[]),
        &[
            "Not enough disk space in `",
            "blobs`: the download needs",
            "bytes are available",
        ],
    );
    assert!(
        hub.requests().iter().all(|r| !r.path.contains("/resolve/")),
        "a download started"
    );
    assert!(!site.output().exists());
}

/// A repository that ships its weights twice (Mistral's `consolidated.safetensors` beside the
/// shards `model.safetensors.index.json` names): only the indexed shards are downloaded,
/// packaged and locked, and an offline rebuild from the cache without the lock chooses the same.
#[test]
fn only_the_shards_the_index_names_are_fetched_and_packaged() {
    let hub = FakeHub::start();
    let mut files: Vec<(String, Vec<u8>)> =
        ["config.json", "tokenizer.json", "tokenizer_config.json"]
            .iter()
            .map(|f| (f.to_string(), std::fs::read(fixture().join(f)).unwrap()))
            .collect();
    let shards = [
        ("model-00001-of-00002.safetensors", vec![1u8; 3000]),
        ("model-00002-of-00002.safetensors", vec![2u8; 5000]),
    ];
    for (name, bytes) in &shards {
        files.push((name.to_string(), bytes.clone()));
    }
    files.push(("consolidated.safetensors".into(), vec![3u8; 8000]));
    let index = format!(
        r#"{{"metadata":{{"total_size":8000}},"weight_map":{{"a.weight":"{}","b.weight":"{}"}}}}"#,
        shards[0].0, shards[1].0
    );
    files.push(("model.safetensors.index.json".into(), index.into_bytes()));
    hub.commit(REPO, "main", &files);
    let site = Site::new(&hub);

    assert_ok(&site.build(&[]));
    assert!(
        requests_for(&hub, "consolidated.safetensors").is_empty(),
        "the unindexed copy was downloaded"
    );
    let entries = layer_entries(&site.output());
    for (name, bytes) in &shards {
        assert!(
            entries[&format!("models/tiny/{name}")].bytes == *bytes,
            "{name}"
        );
    }
    assert!(entries.contains_key("models/tiny/model.safetensors.index.json"));
    assert!(!entries.contains_key("models/tiny/consolidated.safetensors"));
    let lock = std::fs::read_to_string(site.lock()).unwrap();
    assert!(
        lock.contains(shards[1].0) && !lock.contains("consolidated"),
        "{lock}"
    );

    let first = sha256_hex(&std::fs::read(site.output()).unwrap());
    std::fs::remove_file(site.lock()).unwrap();
    assert_ok(&site.build(&["--offline"]));
    assert_eq!(sha256_hex(&std::fs::read(site.output()).unwrap()), first);
}

// A GGUF repository (weights only, as many are) and the repository its tokenizer comes from.

const GGUF_REPO: &str = "org/tiny-gguf";
const GGUF_FILE: &str = "llama-gqa-q8_0.gguf";
const TOK_REPO: &str = "org/tiny-tok";
/// What the default `model.tokenizer` globs select from the llama-gqa fixture.
const TOK_FILES: [&str; 3] = [
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
];

fn tok_fixture() -> PathBuf {
    shared_fixtures().join("models/llama-gqa")
}

/// The llama-gqa fixture as Q8_0 GGUF bytes, converted once per test binary.
fn gguf_bytes() -> Vec<u8> {
    static BYTES: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    BYTES
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let out = dir.path().join(GGUF_FILE);
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/fixture-to-gguf.py");
            let status = Command::new("python3")
                .arg(&script)
                .arg(tok_fixture())
                .arg(&out)
                .args(["--type", "q8_0"])
                .status()
                .expect("python3 (gguf-py: scripts/install-test-deps)");
            assert!(status.success());
            std::fs::read(&out).unwrap()
        })
        .clone()
}

/// A hub with the GGUF repo and the tokenizer repo (the llama-gqa fixture), and a site whose
/// manifest takes the weights from one and the tokenizer from the other. Returns both commits.
fn gguf_site(tokenizer_extra: &str) -> (FakeHub, Site, String, String) {
    let hub = FakeHub::start();
    let model_commit = hub.commit(
        GGUF_REPO,
        "main",
        &[
            (GGUF_FILE.to_string(), gguf_bytes()),
            ("README.md".to_string(), b"# weights only\n".to_vec()),
        ],
    );
    let tok_commit = hub.commit_dir(TOK_REPO, "main", &tok_fixture());
    let site = Site::new(&hub);
    let manifest = format!(
        "[image]\nname = \"registry.local/llm/tiny\"\ntag = \"0.1.0\"\ncreated = \"2025-06-01T00:00:00Z\"\n\
         [model]\nhf = \"{GGUF_REPO}\"\nfiles = [\"*.gguf\"]\ntokenizer = {{ hf = \"{TOK_REPO}\"{tokenizer_extra} }}\n\
         [server]\nserved_model_name = \"tiny\"\n"
    );
    std::fs::write(site.manifest(), manifest).unwrap();
    (hub, site, model_commit, tok_commit)
}

/// The image's model directory holds the GGUF and the tokenizer files, byte for byte.
#[track_caller]
fn assert_image_has_gguf_and_tokenizer(tarball: &Path) {
    let files = layer_entries(tarball);
    assert!(
        files[&format!("models/tiny/{GGUF_FILE}")].bytes == gguf_bytes(),
        "the GGUF in the image differs"
    );
    for name in TOK_FILES {
        let got = files
            .get(&format!("models/tiny/{name}"))
            .unwrap_or_else(|| panic!("`models/tiny/{name}` not in the image"));
        assert!(
            got.bytes == std::fs::read(tok_fixture().join(name)).unwrap(),
            "`{name}` in the image differs from the tokenizer repo's"
        );
    }
    for absent in ["config.json", "model.safetensors", "README.md"] {
        assert!(
            !files.contains_key(&format!("models/tiny/{absent}")),
            "{absent}"
        );
    }
}

fn read_lock(site: &Site) -> toml::Value {
    toml::from_str(&std::fs::read_to_string(site.lock()).unwrap()).unwrap()
}

#[test]
fn gguf_repo_with_a_companion_tokenizer_repo_builds_and_locks_both() {
    let (_hub, site, model_commit, tok_commit) = gguf_site("");
    let out = site.build(&[]);
    assert_ok(&out);
    assert!(
        stderr(&out).contains(&format!("hf:{TOK_REPO}@{tok_commit}")),
        "{}",
        stderr(&out)
    );
    assert_image_has_gguf_and_tokenizer(&site.output());

    let lock = read_lock(&site);
    assert_eq!(lock["model"]["repo"].as_str(), Some(GGUF_REPO));
    assert_eq!(
        lock["model"]["commit"].as_str(),
        Some(model_commit.as_str())
    );
    let model_files = lock["model"]["files"].as_array().unwrap();
    assert_eq!(model_files.len(), 1);
    assert_eq!(
        model_files[0]["sha256"].as_str().unwrap(),
        sha256_hex(&gguf_bytes())
    );
    assert_eq!(lock["tokenizer"]["repo"].as_str(), Some(TOK_REPO));
    assert_eq!(lock["tokenizer"]["revision"].as_str(), Some("main"));
    assert_eq!(
        lock["tokenizer"]["commit"].as_str(),
        Some(tok_commit.as_str())
    );
    let tok_files = lock["tokenizer"]["files"].as_array().unwrap();
    let paths: Vec<&str> = tok_files
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, TOK_FILES);
    for f in tok_files {
        let bytes = std::fs::read(tok_fixture().join(f["path"].as_str().unwrap())).unwrap();
        assert_eq!(f["sha256"].as_str().unwrap(), sha256_hex(&bytes));
        assert_eq!(f["size"].as_integer().unwrap() as usize, bytes.len());
    }
    // The tokenizer is in the shared Hugging Face cache like any repository.
    assert!(
        site.hf_home
            .join("hub/models--org--tiny-tok/snapshots")
            .join(&tok_commit)
            .join("tokenizer.json")
            .is_file()
    );

    // Its own layer, above the weights; the image records the model's commit.
    let out = site.run(&["inspect", "--json", site.output().to_str().unwrap()]);
    assert_ok(&out);
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let layers: Vec<&str> = summary["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["created_by"].as_str().unwrap())
        .collect();
    let weights = layers.iter().position(|l| l.contains(GGUF_FILE)).unwrap();
    let tok = layers
        .iter()
        .position(|l| l.starts_with(&format!("appliance: tokenizer files from hf:{TOK_REPO}")))
        .unwrap_or_else(|| panic!("no tokenizer layer in {layers:?}"));
    assert!(weights < tok, "{layers:?}");
    assert_eq!(
        summary["model"]["revision"].as_str(),
        Some(model_commit.as_str())
    );

    // A rebuild with `--locked` packages the same bytes.
    let first = sha256_hex(&std::fs::read(site.output()).unwrap());
    assert_ok(&site.build(&["--locked"]));
    assert_eq!(sha256_hex(&std::fs::read(site.output()).unwrap()), first);
}

#[test]
fn locked_build_names_the_tokenizer_source_when_its_branch_moved() {
    let (hub, site, model_commit, old) = gguf_site("");
    assert_ok(&site.run(&["lock", site.manifest().to_str().unwrap()]));
    let locked = std::fs::read(site.lock()).unwrap();

    // The tokenizer repo's `main` moves to a commit with another tokenizer_config.json.
    let mut files: Vec<(String, Vec<u8>)> = TOK_FILES
        .iter()
        .map(|n| (n.to_string(), std::fs::read(tok_fixture().join(n)).unwrap()))
        .collect();
    files[2].1.extend_from_slice(b"\n");
    let new = hub.commit(TOK_REPO, "main", &files);

    let err = assert_fails_with(
        &site.build(&["--locked"]),
        &[
            TOK_REPO,
            "the `model.tokenizer` source",
            "now resolves to commit",
            &new,
            &old,
            "appliance lock",
        ],
    );
    assert!(!err.contains(GGUF_REPO), "blames the model: {err}");
    assert!(!site.output().exists());

    // Without `--locked` the lock decides: the locked tokenizer bytes are packaged.
    assert_ok(&site.build(&[]));
    assert_image_has_gguf_and_tokenizer(&site.output());
    assert_eq!(std::fs::read(site.lock()).unwrap(), locked);

    // `appliance lock` moves the tokenizer to the new commit and keeps the model's.
    assert_ok(&site.run(&["lock", site.manifest().to_str().unwrap()]));
    let lock = read_lock(&site);
    assert_eq!(lock["tokenizer"]["commit"].as_str(), Some(new.as_str()));
    assert_eq!(
        lock["model"]["commit"].as_str(),
        Some(model_commit.as_str())
    );
    assert_ok(&site.build(&["--locked"]));
    let entries = layer_entries(&site.output());
    assert!(entries["models/tiny/tokenizer_config.json"].bytes == files[2].1);

    // A lock for another tokenizer revision is drift too, named as the tokenizer's.
    let text = std::fs::read_to_string(site.manifest()).unwrap().replace(
        &format!("hf = \"{TOK_REPO}\""),
        &format!("hf = \"{TOK_REPO}\", revision = \"{old}\""),
    );
    std::fs::write(site.manifest(), text).unwrap();
    assert_fails_with(
        &site.build(&["--locked"]),
        &["was written for another `model.tokenizer`", TOK_REPO],
    );
}

#[test]
fn tampered_tokenizer_file_fails_its_sha256_check() {
    let (hub, site, _, tok_commit) = gguf_site("");
    assert_ok(&site.run(&["lock", site.manifest().to_str().unwrap()]));
    std::fs::remove_dir_all(&site.hf_home).unwrap();

    // The Hub now serves a flipped byte: the lock's sha256 catches it.
    hub.fault("tokenizer.json", Fault::FlipByte, 1);
    let good = sha256_hex(&std::fs::read(tok_fixture().join("tokenizer.json")).unwrap());
    assert_fails_with(
        &site.build(&[]),
        &[
            "sha256 mismatch for `tokenizer.json`",
            &good,
            "manifest.lock",
            "quarantined",
        ],
    );
    assert!(!site.output().exists());
    let link = site
        .hf_home
        .join("hub/models--org--tiny-tok/snapshots")
        .join(&tok_commit)
        .join("tokenizer.json");
    assert!(!link.exists(), "the corrupt file is in the cache");
    assert!(
        site.dir
            .path()
            .join("appliance/hub/quarantine/models--org--tiny-tok")
            .join(&tok_commit)
            .join("tokenizer.json")
            .is_file()
    );

    // A pin in `model.tokenizer.sha256` that the bytes do not match fails the same way.
    let (_hub, site, _, _) = gguf_site(&format!(
        ", sha256 = {{ \"tokenizer.json\" = \"{}\" }}",
        "0".repeat(64)
    ));
    assert_fails_with(
        &site.build(&[]),
        &[
            "sha256 mismatch for `tokenizer.json`",
            &"0".repeat(64),
            &good,
            "manifest pin `model.tokenizer.sha256`",
        ],
    );
    assert!(!site.output().exists() && !site.lock().exists());
}

#[test]
fn offline_build_with_a_warm_cache_takes_the_tokenizer_from_it() {
    let (hub, site, _, tok_commit) = gguf_site("");
    let out = site.run(&["fetch", site.manifest().to_str().unwrap()]);
    assert_ok(&out);
    assert!(
        stderr(&out).contains(&format!("of {TOK_REPO} at commit {tok_commit}")),
        "{}",
        stderr(&out)
    );
    let before = hub.requests().len();
    assert_ok(&site.build(&["--offline", "--locked"]));
    assert_image_has_gguf_and_tokenizer(&site.output());
    // Without the lock, the cache's `refs/main` resolves both branches.
    std::fs::remove_file(site.lock()).unwrap();
    assert_ok(&site.build_with(&[], &[("HF_HUB_OFFLINE", "1")]));
    assert_image_has_gguf_and_tokenizer(&site.output());
    assert_eq!(
        hub.requests().len(),
        before,
        "an offline build touched the network"
    );

    // A cold cache names the tokenizer repository among what is missing.
    std::fs::remove_dir_all(site.hf_home.join("hub/models--org--tiny-tok")).unwrap();
    assert_fails_with(
        &site.build(&["--offline", "--locked"]),
        &["Offline", TOK_REPO, "  - tokenizer.json", "appliance fetch"],
    );
    assert_eq!(hub.requests().len(), before);
}

/// A Hub GGUF repository without `tokenizer.json` is not refused from its file list: the
/// downloaded header decides. The fixture's GGUF carries its tokenizer in its metadata and builds
/// alone; the same file without `tokenizer.ggml.tokens` (removed with gguf-py's
/// `gguf_new_metadata`) is refused once fetched, naming the file and the key, and nothing is
/// written.
#[test]
fn a_hub_gguf_repo_without_tokenizer_json_is_decided_by_its_metadata() {
    let hub = FakeHub::start();
    let scratch = tempfile::tempdir().unwrap();
    let (full, stripped) = (
        scratch.path().join("full.gguf"),
        scratch.path().join("s.gguf"),
    );
    std::fs::write(&full, gguf_bytes()).unwrap();
    let strip = Command::new("python3")
        .args(["-m", "gguf.scripts.gguf_new_metadata"])
        .arg(&full)
        .arg(&stripped)
        .args(["--remove-metadata", "tokenizer.ggml.tokens", "--force"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("python3 (gguf-py: scripts/install-test-deps)");
    assert!(strip.status.success(), "{}", stderr(&strip));
    let file = |bytes| [(GGUF_FILE.to_string(), bytes)];
    hub.commit("org/gguf-alone", "main", &file(gguf_bytes()));
    let no_vocab = std::fs::read(&stripped).unwrap();
    hub.commit("org/gguf-no-vocab", "main", &file(no_vocab));
    let site = Site::new(&hub);
    let manifest = |repo: &str| {
        let text = format!(
            "[image]\nname = \"registry.local/llm/tiny\"\ntag = \"0.1.0\"\n\
             [model]\nhf = \"{repo}\"\nfiles = [\"*.gguf\"]\n\
             [server]\nserved_model_name = \"tiny\"\n"
        );
        std::fs::write(site.manifest(), text).unwrap();
    };

    manifest("org/gguf-alone");
    assert_ok(&site.build(&[]));
    let files = layer_entries(&site.output());
    assert!(files[&format!("models/tiny/{GGUF_FILE}")].bytes == gguf_bytes());
    assert!(!files.contains_key("models/tiny/tokenizer.json"));
    std::fs::remove_file(site.output()).unwrap();

    manifest("org/gguf-no-vocab");
    let out = site.build(&[]);
    assert_fails_with(
        &out,
        &[
            &format!("{GGUF_FILE}: no `tokenizer.json` is packaged beside this GGUF"),
            "`tokenizer.ggml.tokens` is missing",
            "`tokenizer = { hf = \"org/repo\" }`",
        ],
    );
    assert!(!site.output().exists());
}

/// The GGUF checks apply to Hub sources too: an incomplete shard set is refused from the Hub's
/// file list, before any file is downloaded; a GGUF whose upload was cut short (the Hub's own
/// digest agrees with the bytes) is refused once fetched, naming the file, and nothing is
/// written.
#[test]
fn a_hub_gguf_repo_with_a_missing_shard_or_a_truncated_file_fails_the_build() {
    let hub = FakeHub::start();
    let tokenizer = std::fs::read(tok_fixture().join("tokenizer.json")).unwrap();
    let gguf = gguf_bytes();
    hub.commit(
        "org/sharded-gguf",
        "main",
        &[
            ("m-00001-of-00002.gguf".to_string(), gguf.clone()),
            ("tokenizer.json".to_string(), tokenizer.clone()),
        ],
    );
    let cut = gguf[..gguf.len() - 100].to_vec();
    hub.commit(
        "org/cut-gguf",
        "main",
        &[
            (GGUF_FILE.to_string(), cut),
            ("tokenizer.json".to_string(), tokenizer),
        ],
    );
    let site = Site::new(&hub);
    let manifest = |repo: &str| {
        let text = format!(
            "[image]\nname = \"registry.local/llm/tiny\"\ntag = \"0.1.0\"\n\
             [model]\nhf = \"{repo}\"\nfiles = [\"*.gguf\", \"tokenizer.json\"]\n\
             [server]\nserved_model_name = \"tiny\"\n"
        );
        std::fs::write(site.manifest(), text).unwrap();
    };

    manifest("org/sharded-gguf");
    let out = site.build(&[]);
    assert_fails_with(
        &out,
        &[
            "`org/sharded-gguf` at commit",
            "m-00002-of-00002.gguf is missing",
        ],
    );
    assert!(
        requests_for(&hub, "m-00001-of-00002.gguf").is_empty(),
        "a shard was downloaded"
    );
    assert!(!site.output().exists());

    manifest("org/cut-gguf");
    let out = site.build(&[]);
    assert_fails_with(
        &out,
        &[
            &format!("{GGUF_FILE} is truncated: tensor `"),
            &format!("the file has {}", gguf.len() - 100),
        ],
    );
    assert!(!site.output().exists());
}

/// `verify --manifest --lock`: the image is what the reviewed manifest and lock say, checked
/// away from the build host (the auditor has neither the cache nor the model); a wrong lock
/// digest, a wrong image name or a wrong pin exits 1 naming the file and both values.
#[test]
fn verify_holds_the_image_to_the_reviewed_manifest_and_lock() {
    let (hub, _) = hub_with_fixture();
    let site = Site::new(&hub);
    assert_ok(&site.build(&[]));
    // The auditor's copies, in a directory of their own.
    let review = tempfile::tempdir().unwrap();
    let (m, l) = (review.path().join("m.toml"), review.path().join("m.lock"));
    std::fs::copy(site.manifest(), &m).unwrap();
    std::fs::copy(site.lock(), &l).unwrap();
    let tar = site.output();
    let verify = |m: &Path, lock: Option<&Path>| {
        let mut args = vec![
            "verify",
            tar.to_str().unwrap(),
            "--manifest",
            m.to_str().unwrap(),
        ];
        if let Some(l) = lock {
            args.extend(["--lock", l.to_str().unwrap()]);
        }
        site.run(&args)
    };
    let out = verify(&m, Some(&l));
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let report = String::from_utf8_lossy(&out.stdout);
    let files = PACKAGED.len();
    assert!(
        report.contains(&format!(
            "the image's {files} model files are exactly the locked paths, sizes and sha256"
        )),
        "{report}"
    );
    assert!(
        report.contains("image `registry.local/llm/tiny:0.1.0`"),
        "{report}"
    );

    // The lock beside the manifest (`m.lock` for `m.toml`) is found without `--lock`.
    let out = verify(&m, None);
    assert!(String::from_utf8_lossy(&out.stdout).contains("exactly the locked paths"));

    // A lock that records another digest for config.json.
    let text = std::fs::read_to_string(&l).unwrap();
    let real = sha256_hex(&std::fs::read(fixture().join("config.json")).unwrap());
    let wrong_lock = review.path().join("wrong.lock");
    std::fs::write(&wrong_lock, text.replace(&real, &"0".repeat(64))).unwrap();
    let out = verify(&m, Some(&wrong_lock));
    let err = assert_fails_with(&out, &["models/tiny/config.json", &"0".repeat(64), &real]);
    assert_eq!(out.status.code(), Some(1), "{err}");

    // A manifest naming another tag.
    let other = review.path().join("other.toml");
    let text = std::fs::read_to_string(&m).unwrap();
    std::fs::write(&other, text.replace("tag = \"0.1.0\"", "tag = \"0.2.0\"")).unwrap();
    assert_fails_with(
        &verify(&other, Some(&l)),
        &[
            "registry.local/llm/tiny:0.2.0",
            "registry.local/llm/tiny:0.1.0",
        ],
    );

    // A pin the image does not meet.
    let pinned = review.path().join("pinned.toml");
    std::fs::write(
        &pinned,
        format!(
            "{text}[model.sha256]\n\"config.json\" = \"{}\"\n",
            "1".repeat(64)
        ),
    )
    .unwrap();
    assert_fails_with(
        &verify(&pinned, None),
        &["models/tiny/config.json", &"1".repeat(64), &real],
    );
}
