//! The tarball against the real consumers: skopeo (both archive formats), umoci (unpack and
//! check the rootfs, then run the server from it in a chroot), the Docker Engine (load, inspect,
//! run) and podman (load). No mocks: if one of them rejects the tarball, these tests fail.

use crate::support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use support::builder::{LLAMA_GQA as NAME, build_llama_gqa};
use support::{
    Dockerd, hardened_run, podman_load, shared_fixtures, skopeo_inspect, skopeo_inspect_config,
    umoci_unpack,
};

/// Builds the `llama-gqa` fixture into `dir/image.tar` and returns it with the build summary.
/// `extra` goes into `[image]`, `server` into `[server]`.
fn build(dir: &Path, extra: &str) -> (PathBuf, serde_json::Value) {
    build_with(dir, extra, "")
}

fn build_with(dir: &Path, extra: &str, server: &str) -> (PathBuf, serde_json::Value) {
    let tarball = dir.join("image.tar");
    let out = build_llama_gqa(&dir.join("manifest.toml"), extra, server, &tarball);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (tarball, serde_json::from_slice(&out.stdout).unwrap())
}

#[test]
fn skopeo_reads_docker_and_oci_archives() {
    let dir = tempfile::tempdir().unwrap();
    let (tar, built) = build(dir.path(), "");
    let image = &built["image"];
    for transport in ["docker-archive", "oci-archive"] {
        let reference = format!("{transport}:{}", tar.display());
        let config = skopeo_inspect_config(&reference);
        assert_eq!(config["config"]["User"], "65532:65532", "{transport}");
        assert_eq!(
            config["config"]["Entrypoint"][0],
            "/usr/local/bin/appliance-server"
        );
        assert!(
            config["config"]["ExposedPorts"]["8000/tcp"].is_object(),
            "{transport}"
        );
        assert_eq!(
            config["config"]["Labels"]["appliance.model.name"], "llama-gqa",
            "{transport}"
        );
        let inspect = skopeo_inspect(&reference);
        assert_eq!(
            inspect["Layers"].as_array().unwrap().len(),
            image["layers"].as_array().unwrap().len()
        );
        assert_eq!(inspect["Architecture"], "amd64");
    }
    // The OCI archive's manifest is exactly the one we built.
    let oci = skopeo_inspect(&format!("oci-archive:{}", tar.display()));
    assert_eq!(oci["Digest"], image["manifest_digest"]);
}

#[test]
fn umoci_unpacks_a_rootfs_the_server_runs_from() {
    let dir = tempfile::tempdir().unwrap();
    let (tar, built) = build(dir.path(), "");
    let unpacked = umoci_unpack(&tar, false);
    let rootfs = &unpacked.rootfs;

    let server = std::fs::metadata(rootfs.join("usr/local/bin/appliance-server")).unwrap();
    assert_eq!(
        (server.permissions().mode() & 0o7777, server.uid()),
        (0o555, 0)
    );
    let fixture = shared_fixtures().join("models/llama-gqa");
    for file in ["model.safetensors", "config.json", "tokenizer.json"] {
        let packed = rootfs.join("models/llama-gqa").join(file);
        let meta = std::fs::metadata(&packed).unwrap();
        assert_eq!(
            (meta.permissions().mode() & 0o7777, meta.uid(), meta.gid()),
            (0o444, 0, 0),
            "{file}"
        );
        assert_eq!(
            std::fs::read(&packed).unwrap(),
            std::fs::read(fixture.join(file)).unwrap(),
            "{file}"
        );
    }
    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap();
    assert!(
        passwd.contains("appliance:x:65532:65532:appliance:/home/appliance:"),
        "{passwd}"
    );
    let home = std::fs::metadata(rootfs.join("home/appliance")).unwrap();
    assert_eq!((home.uid(), home.gid()), (65532, 65532));
    assert_eq!(
        std::fs::metadata(rootfs.join("tmp"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o1777
    );

    // The auditor's recipe from the README recomputes the files digest label.
    let listing = Command::new("sh")
        .arg("-c")
        .arg("find . -type f | sed 's|^\\./||' | LC_ALL=C sort | xargs sha256sum | sha256sum")
        .current_dir(rootfs.join("models/llama-gqa"))
        .output()
        .unwrap();
    let digest = String::from_utf8(listing.stdout).unwrap();
    let label = built["image"]["labels"]["appliance.model.files.sha256"]
        .as_str()
        .unwrap();
    assert_eq!(format!("sha256:{}", &digest[..64]), label);

    // The userland is complete: the server starts from the rootfs alone.
    let out = Command::new("chroot")
        .arg(rootfs)
        .args(["/usr/local/bin/appliance-server", "--version"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "server did not run in its rootfs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("appliance-server"));

    let runtime = unpacked.runtime_config();
    assert_eq!(runtime["process"]["user"]["uid"], 65532);
    let env: Vec<&str> = runtime["process"]["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(
        env.contains(&"APPLIANCE_MODEL=/models/llama-gqa"),
        "{env:?}"
    );

    // The host userland is complete for every ELF packed, by an independent loader replay.
    let env: Vec<String> = env.iter().map(|s| s.to_string()).collect();
    let checked = support::elf::assert_rootfs_loads(rootfs, &env);
    assert!(
        checked.contains(&"/usr/local/bin/appliance-server".to_string()),
        "{checked:?}"
    );
    assert!(checked.iter().any(|p| p.contains("libc.so")), "{checked:?}");
}

/// A GGUF-only model (the llama-gqa fixture as Q8_0, written by `scripts/fixture-to-gguf.py`: no
/// tokenizer.json, config.json or tokenizer_config.json) builds, and the server run from the
/// unpacked rootfs builds its tokenizer and chat template from the GGUF's metadata: `/tokenize`
/// answers every reference prompt with the ids the fixture's tokenizer.json gives
/// (reference.json's `input_ids`, from transformers).
#[test]
fn a_gguf_only_image_serves_the_tokenizer_from_its_metadata() {
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let fixture = shared_fixtures().join("models/llama-gqa");
    let model = d.join("llama-gqa");
    std::fs::create_dir(&model).unwrap();
    support::run_ok(
        Command::new(support::require_tool("python3"))
            .arg(support::workspace_root().join("scripts/fixture-to-gguf.py"))
            .arg(&fixture)
            .arg(model.join("llama-gqa-q8_0.gguf"))
            .args(["--type", "q8_0"]),
        Duration::from_secs(120),
    );
    let manifest = d.join("manifest.toml");
    std::fs::write(
        &manifest,
        format!(
            "[image]\nname = \"registry.local/llm/gguf-only\"\ntag = \"0.1.0\"\ncreated = \"2025-06-01T00:00:00Z\"\n\
             [model]\npath = \"{}\"\nfiles = [\"*.gguf\"]\n[server]\nserved_model_name = \"llama-gqa\"\n",
            model.display()
        ),
    )
    .unwrap();
    let tar = d.join("image.tar");
    let out = Command::new(support::appliance_bin())
        .arg("build")
        .arg(&manifest)
        .arg("-o")
        .arg(&tar)
        .arg("--json")
        .env("APPLIANCE_CACHE", d.join("cache"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let built: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let files: Vec<&str> = built["image"]["model"]["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert_eq!(files, ["llama-gqa-q8_0.gguf"]);

    // The server in the rootfs, as a container starts it: the image's args and Env alone.
    let unpacked = umoci_unpack(&tar, false);
    let runtime = unpacked.runtime_config();
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect()
    };
    let port = support::free_port();
    let log_path = d.join("server.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut cmd = Command::new(support::require_tool("chroot"));
    cmd.arg(&unpacked.rootfs)
        .args(strings(&runtime["process"]["args"]))
        .env_clear();
    for kv in strings(&runtime["process"]["env"]) {
        let (k, v) = kv.split_once('=').unwrap();
        cmd.env(k, v);
    }
    cmd.env("APPLIANCE_HOST", "127.0.0.1")
        .env("APPLIANCE_PORT", port.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    /// Stops the server however the test ends.
    struct Server(std::process::Child);
    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _server = Server(cmd.spawn().unwrap());
    let base = format!("http://127.0.0.1:{port}");
    let ready = support::wait_for_http(&format!("{base}/ready"), Duration::from_secs(90));
    let logs = || std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(ready, "never ready; logs:\n{}", logs());
    assert!(
        logs().contains(
            "tokenizer: GGUF metadata of /models/llama-gqa/llama-gqa-q8_0.gguf (no tokenizer.json)"
        ),
        "{}",
        logs()
    );

    let reference: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture.join("reference.json")).unwrap()).unwrap();
    let cases = reference["cases"].as_array().unwrap();
    assert!(cases.iter().any(|c| c["kind"] == "chat"), "no chat case");
    for case in cases {
        let body = match case["kind"].as_str() {
            Some("completion") => serde_json::json!({"prompt": case["prompt"]}),
            _ => serde_json::json!({"messages": case["prompt"]}),
        };
        let (status, text) =
            support::http_post_json(&format!("{base}/tokenize"), &body.to_string(), None);
        assert_eq!(status, 200, "{text}");
        let got: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(got["tokens"], case["input_ids"], "{}", case["prompt"]);
    }
}

#[test]
fn docker_loads_inspects_and_runs_the_image() {
    let dir = tempfile::tempdir().unwrap();
    let (tar, built) = build(dir.path(), "compression = \"gzip\"");
    let docker = Dockerd::start();
    let reference = format!("{NAME}:0.1.0");
    docker.load(&tar, &reference);
    let inspect = docker.image_inspect(&reference);
    let config = &inspect["Config"];
    assert_eq!(config["User"], "65532:65532");
    assert!(config["ExposedPorts"]["8000/tcp"].is_object());
    assert_eq!(
        config["Healthcheck"]["Test"],
        serde_json::json!(["CMD", "/usr/local/bin/appliance-server", "healthcheck"])
    );
    assert!(config["Healthcheck"]["StartPeriod"].as_u64().unwrap() >= 120_000_000_000);
    assert_eq!(config["StopSignal"], "SIGTERM");
    assert_eq!(
        config["Labels"]["org.opencontainers.image.version"],
        "0.1.0"
    );
    assert_eq!(
        config["Labels"]["appliance.model.files"],
        built["image"]["labels"]["appliance.model.files"]
    );
    assert_eq!(inspect["Id"], built["image"]["config_digest"]);

    // The server starts inside Docker as the image's non-root user, on a read-only rootfs.
    let version = docker.docker_ok(&hardened_run(
        &["--rm", "--network", "none"],
        &[&reference, "--version"],
    ));
    assert!(version.contains("appliance-server"), "{version}");
    let id = docker.docker_ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--entrypoint",
        "/usr/local/bin/appliance-server",
        &reference,
        "--version",
    ]);
    assert!(id.contains("0.1.0"), "{id}");
}

/// `podman load` of the same tarball, then rootful `podman run` hardened like the Docker run
/// (host network, read-only rootfs, no capabilities, key file): ready, answers with the key,
/// refuses without it, stops with exit code 0.
///
/// Why the explicit `--ulimit`s: podman 4.3 running as root asks runc for RLIMIT_NOFILE
/// 1048576 by default (and RLIMIT_NPROC 1048576 once `nofile` is given); raising a hard limit
/// needs CAP_SYS_RESOURCE, which a build machine that is itself a container (this one: hard
/// limits nofile 20000 and nproc 96343, no CAP_SYS_RESOURCE) lacks, and runc fails with "error
/// setting rlimit type 7 (or 6): operation not permitted". 4096 of each is well below such
/// limits and ample for the server.
#[test]
fn podman_loads_and_runs_the_same_tarball() {
    let dir = tempfile::tempdir().unwrap();
    let port = support::free_port();
    let (tar, _) = build_with(dir.path(), "", &format!("port = {port}"));
    let (podman, names) = podman_load(&tar);
    assert!(
        names
            .iter()
            .any(|n| n.contains("registry.local/llm/llama-gqa:0.1.0")),
        "{names:?}"
    );
    let inspect = podman.image_inspect("registry.local/llm/llama-gqa:0.1.0");
    assert_eq!(inspect["Config"]["User"], "65532:65532");

    let key = "sk-podman-51c0";
    let key_file = write_key_file(dir.path(), key);
    let (id, base) = podman_run_hardened(
        &podman,
        &key_file,
        port,
        "registry.local/llm/llama-gqa:0.1.0",
    );
    let logs = || podman.podman_ok(&["logs", &id]);
    let user = podman.podman_ok(&["inspect", "-f", "{{.Config.User}}", &id]);
    assert_eq!(user.trim(), "65532:65532");
    let body = r#"{"model": "llama-gqa", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}"#;
    let url = format!("{base}/v1/chat/completions");
    let (status, text) = support::http_post_json(&url, body, Some(key));
    assert_eq!(status, 200, "{text}");
    let (status, text) = support::http_post_json(&url, body, None);
    assert_eq!(status, 401, "{text}");
    podman.podman_ok(&["stop", "-t", "30", &id]);
    let code = podman.podman_ok(&["inspect", "-f", "{{.State.ExitCode}}", &id]);
    assert_eq!(code.trim(), "0", "logs:\n{}", logs());
    podman.podman_ok(&["rm", &id]);
}

/// Runs `image` detached under podman as a site would (hardened, host network, the API key as a
/// read-only secret file) and waits until `/ready`; returns the container id and base URL.
fn podman_run_hardened(
    podman: &support::tools::Podman,
    key_file: &Path,
    port: u16,
    image: &str,
) -> (String, String) {
    use std::time::Duration;
    let mount = format!("{}:/run/secrets/key:ro", key_file.display());
    let id = podman.podman_ok(&hardened_run(
        &["-d", "--network", "host"],
        &[
            "--ulimit",
            "nofile=4096:4096",
            "--ulimit",
            "nproc=4096:4096",
            "-v",
            &mount,
            "-e",
            "APPLIANCE_API_KEY_FILE=/run/secrets/key",
            image,
        ],
    ));
    let id = id.trim().to_string();
    let base = format!("http://127.0.0.1:{port}");
    let ready = support::wait_for_http(&format!("{base}/ready"), Duration::from_secs(90));
    assert!(
        ready,
        "never ready under podman; logs:\n{}",
        podman.podman_ok(&["logs", &id])
    );
    (id, base)
}

/// umoci 0.4.7 and Docker 20.10 cannot read zstd layers (the README says so); podman can, and
/// it checks every layer's diff_id while storing it.
#[test]
fn zstd_layers_load_with_podman() {
    let dir = tempfile::tempdir().unwrap();
    let (tar, built) = build(dir.path(), "compression = \"zstd\"");
    let media: Vec<&str> = built["image"]["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["media_type"].as_str().unwrap())
        .collect();
    assert!(media.iter().any(|m| m.ends_with("+zstd")), "{media:?}");
    assert!(
        media.iter().any(|m| m.ends_with(".tar")),
        "weights stay uncompressed: {media:?}"
    );
    let (podman, names) = podman_load(&tar);
    assert!(
        names.iter().any(|n| n.contains("llama-gqa:0.1.0")),
        "{names:?}"
    );
    let inspect = podman.image_inspect("registry.local/llm/llama-gqa:0.1.0");
    let diff_ids: Vec<&str> = inspect["RootFS"]["Layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    let built_ids: Vec<&str> = built["image"]["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["diff_id"].as_str().unwrap())
        .collect();
    assert_eq!(diff_ids, built_ids);
}

/// The whole site workflow on the real Docker Engine: load, run hardened (the image's non-root
/// user, read-only rootfs, no capabilities, no new privileges) with the API key in a secret file
/// mounted read-only (`APPLIANCE_API_KEY_FILE`), the model loads, the API answers the reference
/// chat case through plain HTTP and through the official OpenAI Python client (and refuses a
/// request without the key), the image's own HEALTHCHECK (`appliance-server healthcheck`, no
/// curl) turns the container healthy, and `docker stop` (SIGTERM) drains and exits 0.
#[test]
fn docker_runs_the_image_hardened_until_healthy_and_stops_cleanly() {
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let port = support::free_port();
    let (tar, _) = build_with(dir.path(), "", &format!("port = {port}"));
    let key = "sk-site-7f3a9c2e5b1d";
    let key_file = write_key_file(dir.path(), key);
    let docker = Dockerd::start();
    let reference = format!("{NAME}:0.1.0");
    docker.load(&tar, &reference);
    let id = docker.docker_ok(&hardened_run(
        &["-d", "--network", "host"],
        &[
            "--health-interval",
            "1s",
            "-v",
            &format!("{}:/run/secrets/key:ro", key_file.display()),
            "-e",
            "APPLIANCE_API_KEY_FILE=/run/secrets/key",
            &reference,
        ],
    ));
    let id = id.trim().to_string();
    let state = |field: &str| {
        docker
            .docker_ok(&["inspect", "-f", field, &id])
            .trim()
            .to_string()
    };

    let base = format!("http://127.0.0.1:{port}");
    let ready = support::wait_for_http(&format!("{base}/ready"), Duration::from_secs(90));
    assert!(
        ready,
        "server never became ready; logs:\n{}",
        docker.docker_ok(&["logs", &id])
    );
    assert_eq!(state("{{.Config.User}}"), "65532:65532");

    // The reference chat case, greedy: the image reproduces transformers' ids inside Docker.
    let case = reference_chat_case();
    let body = serde_json::json!({
        "model": "llama-gqa", "messages": case["prompt"], "temperature": 0,
        "max_tokens": case["output_ids"].as_array().unwrap().len(), "return_token_ids": true,
    })
    .to_string();
    let url = format!("{base}/v1/chat/completions");
    let (status, text) = support::http_post_json(&url, &body, Some(key));
    assert_eq!(status, 200, "{text}");
    let answer: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        answer["choices"][0]["token_ids"], case["output_ids"],
        "{text}"
    );
    let content = answer["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    for bearer in [None, Some("sk-wrong")] {
        let (status, text) = support::http_post_json(&url, &body, bearer);
        assert_eq!(status, 401, "{bearer:?}: {text}");
    }

    // The official client, as users will call it: same answer with the key, 401 without.
    let client = openai_chat(
        port,
        key,
        &case["prompt"],
        case["output_ids"].as_array().unwrap().len(),
    );
    assert_eq!(client["status"], "ok", "{client}");
    assert_eq!(client["content"], content, "{client}");
    assert_eq!(client["model"], "llama-gqa", "{client}");
    let refused = openai_chat(port, "sk-wrong", &case["prompt"], 4);
    assert_eq!(refused["status"], "AuthenticationError", "{refused}");
    assert_eq!(refused["code"], 401, "{refused}");

    let deadline = Instant::now() + Duration::from_secs(60);
    while state("{{.State.Health.Status}}") != "healthy" {
        assert!(
            Instant::now() < deadline,
            "never healthy: {}",
            state("{{json .State.Health}}")
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let (status, body) = support::http_post_json(
        &format!("{base}/tokenize"),
        r#"{"prompt": "hello"}"#,
        Some(key),
    );
    assert_eq!(status, 200, "{body}");

    // The server's own digest of the weights it loaded equals the audited image label.
    let label = state("{{index .Config.Labels \"appliance.model.files.sha256\"}}");
    assert!(label.starts_with("sha256:"), "{label}");
    let bearer = format!("Bearer {key}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let loaded = loop {
        let version = support::http_request(
            "GET",
            &format!("{base}/version"),
            &[("Authorization", bearer.as_str())],
            None,
        )
        .json();
        if let Some(digest) = version["weights_digest"].as_str() {
            break digest.to_string();
        }
        assert!(Instant::now() < deadline, "no weights_digest: {version}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(loaded, label);

    docker.docker_ok(&["stop", "-t", "30", &id]);
    let logs = docker.docker_ok(&["logs", &id]);
    assert_eq!(state("{{.State.ExitCode}}"), "0", "logs:\n{logs}");
    let inspect = docker.docker_ok(&["inspect", &id]);
    assert!(
        !logs.contains(key) && !inspect.contains(key),
        "the API key leaked into logs or the container config"
    );
}

/// The key as a site stores it: a file readable only by the image's user (uid 65532).
fn write_key_file(dir: &Path, key: &str) -> PathBuf {
    let path = dir.join("api-key");
    std::fs::write(&path, format!("{key}\n")).unwrap();
    std::os::unix::fs::chown(&path, Some(65532), Some(65532)).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
    path
}

/// The chat case of the `llama-gqa` reference outputs (transformers, greedy).
fn reference_chat_case() -> serde_json::Value {
    let path = shared_fixtures().join("models/llama-gqa/reference.json");
    let reference: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    reference["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["kind"] == "chat")
        .unwrap_or_else(|| panic!("no chat case in {}", path.display()))
        .clone()
}

/// One non-streaming chat completion through the `openai` Python package (installed by
/// scripts/install-test-deps); returns what the client saw, as JSON.
fn openai_chat(
    port: u16,
    key: &str,
    messages: &serde_json::Value,
    max_tokens: usize,
) -> serde_json::Value {
    openai_chat_named(port, key, "llama-gqa", messages, max_tokens)
}

/// [`openai_chat`] for a model served under another name.
fn openai_chat_named(
    port: u16,
    key: &str,
    model: &str,
    messages: &serde_json::Value,
    max_tokens: usize,
) -> serde_json::Value {
    const SCRIPT: &str = r#"
import json, os, sys
import openai
client = openai.OpenAI(base_url=os.environ["BASE_URL"], api_key=os.environ["KEY"], max_retries=0)
try:
    r = client.chat.completions.create(model=os.environ["MODEL"], messages=json.loads(os.environ["MESSAGES"]),
                                       max_tokens=int(os.environ["MAX_TOKENS"]), temperature=0)
    print(json.dumps({"status": "ok", "content": r.choices[0].message.content, "model": r.model,
                      "finish_reason": r.choices[0].finish_reason}))
except openai.APIStatusError as e:
    print(json.dumps({"status": type(e).__name__, "code": e.status_code}))
"#;
    let out = support::run_ok(
        Command::new(support::require_tool("python3"))
            .arg("-c")
            .arg(SCRIPT)
            .env("BASE_URL", format!("http://127.0.0.1:{port}/v1"))
            .env("KEY", key)
            .env("MODEL", model)
            .env("MESSAGES", messages.to_string())
            .env("MAX_TOKENS", max_tokens.to_string()),
        std::time::Duration::from_secs(120),
    );
    serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("openai client printed {out:?}: {e}"))
}

/// `[model] quantize = "q4_k_m"` end to end: two builds (each quantizing afresh, in its own cache)
/// give the same tarball; `appliance verify` and the openssl/sha256sum script accept the signed
/// image; its model directory holds the GGUF and no safetensors, and the labels name the
/// quantization; podman runs it and the official OpenAI client gets a completion; and the
/// model's share of the tarball is at most 0.35x that of the f16 build of the same checkpoint
/// (the layers both images share byte for byte, server and userland, are left out: in a debug
/// build the unstripped server would dominate both; `scripts/bench-quantize` measures whole
/// tarballs with the release server).
#[test]
fn a_q4_k_m_image_is_reproducible_verifies_serves_and_is_a_third_of_f16() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let port = support::free_port();
    let password = "quantize-test-pw";
    let appliance = |args: &[&str], cache: &str| {
        let out = Command::new(support::appliance_bin())
            .args(args)
            .current_dir(d)
            .env("APPLIANCE_CACHE", d.join(cache))
            .env("APPLIANCE_KEY_PASSWORD", password)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "appliance {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    };
    appliance(&["keygen", "--output", "site"], "cache-a");
    let write_manifest = |name: &str, quantize: &str| {
        let path = d.join(name);
        std::fs::write(
            &path,
            format!(
                "[image]\nname = \"registry.local/llm/quantized\"\ntag = \"0.1.0\"\ncreated = \"2025-06-01T00:00:00Z\"\n\
                 [model]\nsynthetic = {{ arch = \"llama\", seed = 7, dtype = \"f16\", hidden_size = 256, intermediate_size = 512, num_hidden_layers = 4 }}\n\
                 {quantize}\n[server]\nserved_model_name = \"tiny\"\nport = {port}\n[signing]\nkey = \"site.key\"\n"
            ),
        )
        .unwrap();
        path
    };
    let q = write_manifest("q.toml", "quantize = \"q4_k_m\"");
    let f16 = write_manifest("f16.toml", "");
    let build = |manifest: &Path, out: &str, cache: &str| -> serde_json::Value {
        let o = appliance(
            &["build", manifest.to_str().unwrap(), "-o", out, "--json"],
            cache,
        );
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let first = build(&q, "q1.tar", "cache-a");
    let second = build(&q, "q2.tar", "cache-b");
    let (q1, q2) = (d.join("q1.tar"), d.join("q2.tar"));
    assert_eq!(
        std::fs::read(&q1).unwrap(),
        std::fs::read(&q2).unwrap(),
        "two builds with separate caches differ"
    );
    assert_eq!(
        first["image"]["manifest_digest"],
        second["image"]["manifest_digest"]
    );
    let labels = &first["image"]["labels"];
    assert_eq!(labels["appliance.model.format"], "gguf", "{labels}");
    assert_eq!(labels["appliance.model.quantization"], "Q4_K_M", "{labels}");
    assert_eq!(labels["appliance.model.architecture"], "llama", "{labels}");
    let files: Vec<&str> = first["image"]["model"]["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert!(files.contains(&"model.gguf"), "{files:?}");
    assert!(
        !files
            .iter()
            .any(|f| f.ends_with(".safetensors") || *f == "config.json"),
        "the image keeps the source weights: {files:?}"
    );

    // Both verifiers accept the signed quantized image; the provenance names the source weights.
    appliance(&["verify", "q1.tar", "--key", "site.pub"], "cache-a");
    let offline = Command::new("sh")
        .arg(support::workspace_root().join("scripts/verify-offline.sh"))
        .arg(&q1)
        .arg(d.join("site.pub"))
        .output()
        .unwrap();
    assert!(
        offline.status.success(),
        "verify-offline.sh: {}{}",
        String::from_utf8_lossy(&offline.stdout),
        String::from_utf8_lossy(&offline.stderr)
    );

    // Size: the model's layers against the f16 build's.
    let f16_built = build(&f16, "f16.tar", "cache-a");
    let layers = |v: &serde_json::Value| -> Vec<(String, u64)> {
        v["image"]["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                (
                    l["digest"].as_str().unwrap().to_string(),
                    l["size"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    let (ql, fl) = (layers(&first), layers(&f16_built));
    let shared: u64 = ql
        .iter()
        .filter(|(digest, _)| fl.iter().any(|(d, _)| d == digest))
        .map(|(_, size)| size)
        .sum();
    let size = |p: &Path| std::fs::metadata(p).unwrap().len();
    let (q_own, f_own) = (size(&q1) - shared, size(&d.join("f16.tar")) - shared);
    let ratio = q_own as f64 / f_own as f64;
    eprintln!("q4_k_m {q_own} B vs f16 {f_own} B beyond {shared} shared bytes: {ratio:.3}x");
    assert!(shared > 0, "the two images share no layer");
    assert!(ratio <= 0.35, "q4_k_m is {ratio:.3}x the f16 build");

    // podman runs it; the OpenAI client gets a completion from the quantized weights.
    let (podman, _) = podman_load(&q1);
    let key = "sk-quantized-2b7e";
    let key_file = write_key_file(d, key);
    let (id, _) = podman_run_hardened(
        &podman,
        &key_file,
        port,
        "registry.local/llm/quantized:0.1.0",
    );
    let messages = serde_json::json!([{"role": "user", "content": "hello"}]);
    let client = openai_chat_named(port, key, "tiny", &messages, 6);
    assert_eq!(client["status"], "ok", "{client}");
    assert_eq!(client["model"], "tiny", "{client}");
    assert_eq!(client["finish_reason"], "length", "{client}");
    assert!(!client["content"].as_str().unwrap().is_empty(), "{client}");
    podman.podman_ok(&["stop", "-t", "30", &id]);
    podman.podman_ok(&["rm", &id]);
}
