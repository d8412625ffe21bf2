//! Tests of the test harness itself (`tests/support`), against the real tools.
//!
//! If these fail, every docker/skopeo/umoci/podman/HTTP test built on the harness would fail for
//! the wrong reason; they pin down that a private dockerd starts, loads an image, and leaves
//! nothing behind (not even when the test process is SIGKILLed), and that the other helpers work.
//! The image they use is a hand-made docker-archive (one layer, one file), not one of ours.

use crate::support;

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;
use support::process::{pids_mentioning, process_alive, run_ok};
use support::{Dockerd, require_tool};
use tempfile::TempDir;

const TAG: &str = "harness/tiny:1";
const HELLO: &str = "hello from the harness\n";
const CMD_TIMEOUT: Duration = Duration::from_secs(120);

/// A minimal docker-archive written by hand: `manifest.json`, a config whose `rootfs.diff_ids`
/// names the one layer, and the layer (`hello.txt`) as an uncompressed tar.
struct TinyImage {
    _dir: TempDir,
    archive: PathBuf,
    diff_id: String,
}

fn sha256_file(path: &Path) -> String {
    let out = run_ok(
        Command::new(require_tool("sha256sum")).arg(path),
        CMD_TIMEOUT,
    );
    let hex = out.split_whitespace().next().unwrap_or_default().to_owned();
    assert_eq!(hex.len(), 64, "unexpected sha256sum output: {out}");
    hex
}

fn tiny_docker_archive() -> TinyImage {
    let dir = tempfile::tempdir().unwrap();
    let (root, out) = (dir.path().join("root"), dir.path().join("out"));
    fs::create_dir_all(&root).unwrap();
    fs::create_dir_all(&out).unwrap();
    fs::write(root.join("hello.txt"), HELLO).unwrap();

    let layer = dir.path().join("layer.tar");
    let tar = require_tool("tar");
    run_ok(
        Command::new(&tar)
            .args([
                "--sort=name",
                "--mtime=@0",
                "--owner=0",
                "--group=0",
                "--numeric-owner",
            ])
            .arg("-C")
            .arg(&root)
            .arg("-cf")
            .arg(&layer)
            .arg("hello.txt"),
        CMD_TIMEOUT,
    );
    let layer_hex = sha256_file(&layer);
    fs::create_dir(out.join(&layer_hex)).unwrap();
    fs::copy(&layer, out.join(&layer_hex).join("layer.tar")).unwrap();

    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": { "Cmd": ["/hello.txt"], "Labels": { "harness": "tiny" } },
        "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{layer_hex}")] },
        "history": [{ "created": "1970-01-01T00:00:00Z", "created_by": "harness" }],
    });
    let config_path = dir.path().join("config.json");
    fs::write(&config_path, serde_json::to_vec(&config).unwrap()).unwrap();
    let config_name = format!("{}.json", sha256_file(&config_path));
    fs::copy(&config_path, out.join(&config_name)).unwrap();

    let manifest = json!([{
        "Config": config_name,
        "RepoTags": [TAG],
        "Layers": [format!("{layer_hex}/layer.tar")],
    }]);
    fs::write(
        out.join("manifest.json"),
        serde_json::to_vec(&manifest).unwrap(),
    )
    .unwrap();

    let archive = dir.path().join("image.tar");
    run_ok(
        Command::new(&tar)
            .arg("-C")
            .arg(&out)
            .arg("-cf")
            .arg(&archive)
            .args(["manifest.json", config_name.as_str(), layer_hex.as_str()]),
        CMD_TIMEOUT,
    );
    TinyImage {
        _dir: dir,
        archive,
        diff_id: format!("sha256:{layer_hex}"),
    }
}

/// The same image as an OCI archive (`skopeo copy`), referenced as `registry.local/harness/tiny:1`.
fn tiny_oci_archive(image: &TinyImage) -> PathBuf {
    let oci = image.archive.with_file_name("oci.tar");
    run_ok(
        Command::new(require_tool("skopeo"))
            .args(["--insecure-policy", "copy", "-q"])
            .arg(format!("docker-archive:{}", image.archive.display()))
            .arg(format!(
                "oci-archive:{}:registry.local/{TAG}",
                oci.display()
            )),
        CMD_TIMEOUT,
    );
    oci
}

/// Asserts that nothing of the daemon in `dir` (PID `pid`, cgroup `cgroup`) is left, polling up
/// to `within` because after a SIGKILL the supervisor cleans up asynchronously.
fn assert_daemon_gone(pid: u32, dir: &Path, cgroup: &str, extra_pids: &[u32], within: Duration) {
    let deadline = Instant::now() + within;
    let needle = format!("{}/", dir.display());
    loop {
        let alive: Vec<u32> = std::iter::once(pid)
            .chain(extra_pids.iter().copied())
            .filter(|&p| process_alive(p))
            .collect();
        let mentioning = pids_mentioning(&needle);
        let mounts: Vec<String> = fs::read_to_string("/proc/self/mounts")
            .unwrap()
            .lines()
            .filter(|l| l.split(' ').nth(1).is_some_and(|m| m.starts_with(&needle)))
            .map(str::to_owned)
            .collect();
        let cgroups: Vec<PathBuf> = fs::read_dir("/sys/fs/cgroup")
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.path().join(cgroup))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
            .into_iter()
            .chain([Path::new("/sys/fs/cgroup").join(cgroup)])
            .filter(|p| p.exists())
            .collect();
        if alive.is_empty()
            && mentioning.is_empty()
            && mounts.is_empty()
            && cgroups.is_empty()
            && !dir.exists()
        {
            return;
        }
        if Instant::now() > deadline {
            panic!(
                "daemon in {} not cleaned up after {within:?}: alive {alive:?}, processes naming \
                 the dir {mentioning:?}, mounts {mounts:?}, cgroups {cgroups:?}, dir exists: {}",
                dir.display(),
                dir.exists()
            );
        }
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn dockerd_loads_a_hand_made_docker_archive_and_cleans_up_on_drop() {
    let image = tiny_docker_archive();
    let started = Instant::now();
    let docker = Dockerd::start();
    let ready = started.elapsed();
    assert!(
        docker.host().starts_with("unix:///tmp/ad-"),
        "{}",
        docker.host()
    );
    assert!(
        docker.socket().as_os_str().len() < 100,
        "socket path too long"
    );
    assert!(!docker.server_version().is_empty(), "no server version");
    let version = docker.docker_ok(&[
        "version",
        "--format",
        "{{.Client.Version}}/{{.Server.APIVersion}}",
    ]);
    eprintln!("docker client/API: {}", version.trim());

    let loaded = docker.docker_ok(&["load", "-i", image.archive.to_str().unwrap()]);
    assert!(
        loaded.contains(&format!("Loaded image: {TAG}")),
        "docker load said: {loaded}"
    );
    let inspect = docker.image_inspect(TAG);
    assert_eq!(inspect["RepoTags"], json!([TAG]), "{inspect:#}");
    assert_eq!(
        inspect["RootFS"]["Layers"],
        json!([image.diff_id]),
        "{inspect:#}"
    );
    assert_eq!(
        inspect["Config"]["Cmd"],
        json!(["/hello.txt"]),
        "{inspect:#}"
    );
    assert_eq!(
        inspect["Config"]["Labels"]["harness"], "tiny",
        "{inspect:#}"
    );

    // A daemon of its own: another one does not see this image.
    let failed = docker.docker(&["image", "inspect", "harness/absent:1"]);
    assert!(!failed.status.success());

    let (pid, dir, cgroup) = (
        docker.pid(),
        docker.dir().to_path_buf(),
        docker.cgroup().to_owned(),
    );
    assert!(process_alive(pid));
    let stopping = Instant::now();
    drop(docker);
    let stop = stopping.elapsed();
    eprintln!("dockerd start {ready:.2?}, stop + teardown {stop:.2?}");
    // Drop waits for the teardown: everything must be gone right away.
    assert_daemon_gone(pid, &dir, &cgroup, &[], Duration::ZERO);
}

/// Re-run of this test binary by `dockerd_is_cleaned_up_when_the_test_process_is_killed`: starts a
/// daemon with a container running in it, reports, then hangs until killed. A no-op otherwise.
#[test]
#[ignore = "helper process, run by dockerd_is_cleaned_up_when_the_test_process_is_killed"]
fn helper_start_dockerd_with_a_container_and_hang() {
    let Some(report) = std::env::var_os("HARNESS_HELPER_REPORT") else {
        return;
    };
    let docker = Dockerd::start();
    // A one-binary image (dash and the libraries it links) so a real container runs.
    let dash = PathBuf::from("/bin/dash");
    let ldd = run_ok(Command::new("ldd").arg(&dash), CMD_TIMEOUT);
    let mut files: Vec<String> = vec!["bin/dash".into()];
    files.extend(
        ldd.split_whitespace()
            .filter(|w| w.starts_with('/'))
            .map(|w| w.trim_start_matches('/').to_owned()),
    );
    let scratch = tempfile::tempdir().unwrap();
    let rootfs = scratch.path().join("rootfs.tar");
    run_ok(
        Command::new(require_tool("tar"))
            .args(["-C", "/", "-chf"])
            .arg(&rootfs)
            .args(&files),
        CMD_TIMEOUT,
    );
    docker.docker_ok(&["import", rootfs.to_str().unwrap(), "harness/dash:1"]);
    // `-i` keeps stdin open, so `read` blocks forever without burning CPU.
    let id = docker.docker_ok(&[
        "run",
        "-d",
        "-i",
        "--network",
        "none",
        "harness/dash:1",
        "/bin/dash",
        "-c",
        "read x",
    ]);
    let container_pid = docker.docker_ok(&["inspect", "-f", "{{.State.Pid}}", id.trim()]);
    let tmp = PathBuf::from(&report).with_extension("tmp");
    fs::write(
        &tmp,
        format!(
            "{} {} {} {}",
            docker.pid(),
            container_pid.trim(),
            docker.cgroup(),
            docker.dir().display()
        ),
    )
    .unwrap();
    fs::rename(&tmp, &report).unwrap();
    loop {
        thread::park();
    }
}

#[test]
fn dockerd_is_cleaned_up_when_the_test_process_is_killed() {
    let scratch = tempfile::tempdir().unwrap();
    let report = scratch.path().join("report");
    let stderr = scratch.path().join("helper.stderr");
    let mut helper = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "harness::helper_start_dockerd_with_a_container_and_hang",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("HARNESS_HELPER_REPORT", &report)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !report.exists() {
        if let Some(status) = helper.try_wait().unwrap() {
            panic!(
                "helper exited ({status}) before reporting:\n{}",
                fs::read_to_string(&stderr).unwrap_or_default()
            );
        }
        if Instant::now() > deadline {
            let _ = helper.kill();
            panic!(
                "helper did not report within 120 s:\n{}",
                fs::read_to_string(&stderr).unwrap_or_default()
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
    let text = fs::read_to_string(&report).unwrap();
    let fields: Vec<&str> = text.split(' ').collect();
    let [pid, container_pid, cgroup, dir] = fields[..] else {
        panic!("bad report {text:?}")
    };
    let (pid, container_pid): (u32, u32) = (pid.parse().unwrap(), container_pid.parse().unwrap());
    assert!(process_alive(pid) && process_alive(container_pid));
    assert!(
        !pids_mentioning(&format!("{dir}/")).is_empty(),
        "no containerd/shim seen"
    );

    // SIGKILL: no Drop, no unwinding. The supervisor must notice and clean up by itself.
    helper.kill().unwrap();
    helper.wait().unwrap();
    assert_daemon_gone(
        pid,
        Path::new(dir),
        cgroup,
        &[container_pid],
        Duration::from_secs(60),
    );
}

#[test]
fn skopeo_inspects_docker_and_oci_archives() {
    let image = tiny_docker_archive();
    let docker_ref = format!("docker-archive:{}", image.archive.display());
    let inspect = support::skopeo_inspect(&docker_ref);
    assert_eq!(inspect["Layers"], json!([image.diff_id]), "{inspect:#}");
    assert_eq!(inspect["Architecture"], "amd64");
    let config = support::skopeo_inspect_config(&docker_ref);
    assert_eq!(
        config["rootfs"]["diff_ids"],
        json!([image.diff_id]),
        "{config:#}"
    );
    assert_eq!(config["config"]["Cmd"], json!(["/hello.txt"]), "{config:#}");

    let oci = tiny_oci_archive(&image);
    let oci_ref = format!("oci-archive:{}", oci.display());
    let inspect = support::skopeo_inspect(&oci_ref);
    // `skopeo copy` gzipped the layer on the way: the digest changed, the diff_id did not.
    assert_eq!(
        inspect["Layers"].as_array().map(Vec::len),
        Some(1),
        "{inspect:#}"
    );
    let config = support::skopeo_inspect_config(&oci_ref);
    assert_eq!(
        config["rootfs"]["diff_ids"],
        json!([image.diff_id]),
        "{config:#}"
    );
    let raw = support::skopeo_inspect_raw(&oci_ref);
    assert_eq!(
        raw["mediaType"], "application/vnd.oci.image.manifest.v1+json",
        "{raw:#}"
    );
}

#[test]
fn umoci_unpacks_an_oci_archive_and_an_oci_layout_dir() {
    let image = tiny_docker_archive();
    let oci = tiny_oci_archive(&image);

    let unpacked = support::umoci_unpack(&oci, false);
    assert_eq!(unpacked.reference, format!("registry.local/{TAG}"));
    assert_eq!(
        fs::read_to_string(unpacked.rootfs.join("hello.txt")).unwrap(),
        HELLO
    );
    assert_eq!(
        unpacked.runtime_config()["process"]["args"],
        json!(["/hello.txt"])
    );
    let scratch = unpacked.bundle.parent().unwrap().to_path_buf();
    drop(unpacked);
    assert!(
        !scratch.exists(),
        "umoci scratch dir left behind: {}",
        scratch.display()
    );

    let layout = tempfile::tempdir().unwrap();
    run_ok(
        Command::new(require_tool("tar"))
            .arg("-xf")
            .arg(&oci)
            .arg("-C")
            .arg(layout.path()),
        CMD_TIMEOUT,
    );
    let rootless = support::umoci_unpack(layout.path(), true);
    assert_eq!(
        fs::read_to_string(rootless.rootfs.join("hello.txt")).unwrap(),
        HELLO
    );
}

#[test]
fn podman_loads_a_docker_archive_into_a_private_store() {
    let image = tiny_docker_archive();
    let (podman, names) = support::podman_load(&image.archive);
    assert_eq!(names, vec![format!("localhost/{TAG}")]);
    let inspect = podman.image_inspect(&names[0]);
    assert_eq!(
        inspect["RootFS"]["Layers"],
        json!([image.diff_id]),
        "{inspect:#}"
    );
    assert_eq!(
        inspect["Config"]["Cmd"],
        json!(["/hello.txt"]),
        "{inspect:#}"
    );
    let dir = podman.dir().to_path_buf();
    assert!(
        dir.join("root").is_dir(),
        "podman did not use its private --root"
    );
    drop(podman);
    assert!(!dir.exists(), "podman store left behind: {}", dir.display());
    assert!(pids_mentioning(&format!("{}/", dir.display())).is_empty());
}

/// Serves `responses` in order, one per connection, and returns the raw requests it received.
fn serve(responses: Vec<&'static str>) -> (String, thread::JoinHandle<Vec<String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let handle = thread::spawn(move || {
        let mut requests = Vec::new();
        for response in responses {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream);
            let mut head = String::new();
            let mut content_length = 0;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    content_length = v.trim().parse().unwrap();
                }
                head.push_str(&line);
                if line == "\r\n" || line.is_empty() {
                    break;
                }
            }
            let mut body = vec![0; content_length];
            reader.read_exact(&mut body).unwrap();
            head.push_str(&String::from_utf8(body).unwrap());
            requests.push(head);
            reader.into_inner().write_all(response.as_bytes()).unwrap();
        }
        requests
    });
    (base, handle)
}

#[test]
fn http_helpers_speak_http_1_1() {
    let (base, server) = serve(vec![
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello",
        "HTTP/1.1 401 Unauthorized\r\nTransfer-Encoding: chunked\r\n\r\n6\r\n{\"a\":1\r\n1;ext=1\r\n}\r\n0\r\n\r\n",
        "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n",
        "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil eof",
    ]);
    assert_eq!(
        support::http_get(&format!("{base}/health")),
        (200, "hello".to_owned())
    );
    let (status, body) = support::http_post_json(
        &format!("{base}/v1/chat/completions"),
        r#"{"x":true}"#,
        Some("sk-test"),
    );
    assert_eq!((status, body.as_str()), (401, r#"{"a":1}"#));
    // 503 is "not ready yet"; the 200 that follows is ready.
    assert!(support::wait_for_http(
        &format!("{base}/ready"),
        Duration::from_secs(10)
    ));

    let requests = server.join().unwrap();
    assert!(
        requests[0].starts_with("GET /health HTTP/1.1\r\n"),
        "{}",
        requests[0]
    );
    assert!(requests[0].contains(&format!("Host: {}\r\n", &base["http://".len()..])));
    assert!(
        requests[1].starts_with("POST /v1/chat/completions HTTP/1.1\r\n"),
        "{}",
        requests[1]
    );
    assert!(
        requests[1].contains("Authorization: Bearer sk-test\r\n"),
        "{}",
        requests[1]
    );
    assert!(
        requests[1].contains("Content-Type: application/json\r\n"),
        "{}",
        requests[1]
    );
    assert!(
        requests[1].ends_with("\r\n\r\n{\"x\":true}"),
        "{}",
        requests[1]
    );
}

#[test]
fn wait_for_http_gives_up_on_a_closed_port() {
    let port = support::free_port();
    let started = Instant::now();
    assert!(!support::wait_for_http(
        &format!("http://127.0.0.1:{port}/"),
        Duration::from_millis(500)
    ));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn paths_point_at_the_binaries_and_fixtures() {
    assert!(support::appliance_bin().is_file());
    assert!(support::shared_fixtures().join("models").is_dir());
    let server = support::server_bin();
    assert_eq!(server.parent(), support::appliance_bin().parent());
}

#[test]
#[should_panic(expected = "no-such-tool-xyz not found: run scripts/install-test-deps")]
fn a_missing_tool_fails_with_the_install_hint() {
    require_tool("no-such-tool-xyz");
}
