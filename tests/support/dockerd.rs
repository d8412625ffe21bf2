//! A private, throwaway Docker Engine for one test: `Dockerd::start()`, use it, drop it.
//!
//! Why one daemon per test rather than one shared per binary: `scripts/test` runs the suite with
//! cargo-nextest, which runs every test in its own process, so a `OnceLock` daemon would be
//! per-test there anyway; per-test also means no test sees another's images, and cleanup is
//! deterministic (it happens in `Drop`, inside the test). A daemon costs ~0.5 s to start and
//! ~1.5 s to stop and wipe here (2 cores, vfs, small images): cheap next to the docker tests.
//!
//! Why a supervisor: `Drop` does not run when the test process is killed (nextest timeout, Ctrl-C,
//! abort on double panic) and never runs for statics. So dockerd is started by a small bash
//! supervisor in its own process group whose stdin is a pipe from the test process. The test
//! process never writes to it; when it closes (on `Drop`, or because the kernel closed it when the
//! test process died, however it died) the supervisor SIGKILLs the containers (a throwaway
//! daemon's containers need no 10 s grace), stops dockerd (SIGTERM, up to 20 s, then SIGKILL)
//! and tears everything down (see `cleanup.rs`): container processes (in a cgroup named
//! after the daemon's directory), containerd and its shims, mounts, cgroups, the directory.
//! dockerd 20.10 starts its own `containerd` child (with `Pdeathsig`), but shims and containers
//! outlive a killed dockerd, hence the explicit teardown.
//!
//! Paths are short on purpose (`/tmp/ad-XXXXXX/s`): unix socket paths are limited to 108 bytes
//! and containerd puts its sockets under the exec-root.

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use std::{io::Read, io::Write, thread};

use super::cleanup::{TEARDOWN_SH, teardown};
use super::process::{
    describe, pids_mentioning, process_alive, run_with_timeout, streams, wait_timeout,
};
use super::tools::require_tool;

/// How long dockerd may take to answer `/_ping` and `docker version`.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the supervisor may take to stop dockerd and tear down (it SIGKILLs after 20 s).
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// Default limit for one docker CLI command (`docker load` of a multi-GB image included).
pub const DOCKER_TIMEOUT: Duration = Duration::from_secs(600);

/// The supervisor: starts dockerd, prints its PID, waits for stdin to close, stops and tears down.
const SUPERVISOR_SH: &str = r#"
set -u
"$AD_DOCKERD" \
  --config-file "$TD_DIR/daemon.json" \
  --storage-driver=vfs --iptables=false --ip-masq=false --bridge=none \
  --data-root "$TD_DIR/d" --exec-root "$TD_DIR/e" --pidfile "$TD_DIR/p" \
  -H "unix://$TD_DIR/s" --cgroup-parent="/$TD_CGROUP" --shutdown-timeout=2 \
  </dev/null >"$TD_DIR/log" 2>&1 &
pid=$!
echo "$pid"
exec >/dev/null
# Blocks until the test process closes the pipe: Drop, or its death, however it died.
while IFS= read -r _; do :; done
# Containers first: dockerd would give each one its stop timeout (10 s) before killing it.
kill_cgroup >/dev/null
kill -TERM "$pid" 2>/dev/null
i=0
while kill -0 "$pid" 2>/dev/null && [ "$i" -lt 200 ]; do sleep 0.1; i=$((i + 1)); done
if kill -0 "$pid" 2>/dev/null; then
  echo "dockerd $pid ignored SIGTERM for 20 s: sending SIGKILL" >&2
  kill -KILL "$pid" 2>/dev/null
fi
wait "$pid" 2>/dev/null
teardown
"#;

/// A running private Docker Engine; stopped and wiped on drop.
pub struct Dockerd {
    dir: PathBuf,
    name: String,
    pid: u32,
    supervisor: Child,
    /// Closing this tells the supervisor to stop dockerd; `None` once closed.
    lifeline: Option<ChildStdin>,
    server_version: String,
}

impl Dockerd {
    /// Starts a daemon in a fresh `/tmp/ad-XXXXXX` and waits until `docker version` answers.
    ///
    /// Panics (with the tail of dockerd's log) if it is not ready within 60 s or exits early.
    pub fn start() -> Dockerd {
        let dockerd = require_tool("dockerd");
        let dir = tempfile::Builder::new()
            .prefix("ad-")
            .rand_bytes(6)
            .tempdir_in("/tmp")
            .expect("cannot create a temp dir under /tmp for dockerd")
            .keep();
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        fs::write(dir.join("daemon.json"), "{}\n").expect("cannot write daemon.json");
        fs::create_dir(dir.join("cfg")).expect("cannot create docker client config dir");

        let mut supervisor = Command::new("bash")
            .arg("-c")
            .arg(format!("{TEARDOWN_SH}\n{SUPERVISOR_SH}"))
            .env("AD_DOCKERD", &dockerd)
            .env("TD_DIR", &dir)
            .env("TD_CGROUP", &name)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(
                fs::File::create(dir.join("supervisor.log")).expect("cannot create log"),
            ))
            // Its own process group: nextest kills a timed-out test's whole group, and the
            // supervisor must survive that to clean up.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the dockerd supervisor (bash): {e}"));
        let lifeline = supervisor.stdin.take();
        let mut line = String::new();
        let _ = BufReader::new(supervisor.stdout.take().unwrap()).read_line(&mut line);
        let pid = match line.trim().parse() {
            Ok(pid) => pid,
            Err(_) => {
                drop(lifeline);
                let _ = wait_timeout(&mut supervisor, STOP_TIMEOUT);
                let log = fs::read_to_string(dir.join("supervisor.log")).unwrap_or_default();
                let _ = teardown(&dir, Some(&name));
                panic!("the dockerd supervisor did not report a PID (got {line:?})\n{log}");
            }
        };
        let mut daemon = Dockerd {
            dir,
            name,
            pid,
            supervisor,
            lifeline,
            server_version: String::new(),
        };
        // From here on a panic drops `daemon`, which tears everything down.
        daemon.wait_until_ready();
        daemon
    }

    fn wait_until_ready(&mut self) {
        let started = Instant::now();
        let deadline = started + START_TIMEOUT;
        while !self.pings() {
            if !process_alive(self.pid) {
                panic!(
                    "dockerd (pid {}) exited during startup\n{}",
                    self.pid,
                    self.log_tail(40)
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "dockerd (pid {}) did not answer on {} within {START_TIMEOUT:?}\n{}",
                    self.pid,
                    self.host(),
                    self.log_tail(40)
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
        let out = self.docker(&["version", "--format", "{{.Server.Version}}"]);
        if !out.status.success() {
            panic!(
                "dockerd answers /_ping but `docker version` fails ({}): client {} vs this daemon\n{}\n{}",
                out.status,
                docker_cli().display(),
                streams(&out.stdout, &out.stderr),
                self.log_tail(20)
            );
        }
        self.server_version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        eprintln!(
            "harness: dockerd {} ready on {} in {:.2?}",
            self.server_version,
            self.host(),
            started.elapsed()
        );
    }

    /// Whether the API socket answers `GET /_ping` with `OK` (cheaper than spawning the CLI).
    fn pings(&self) -> bool {
        let Ok(mut sock) = UnixStream::connect(self.socket()) else {
            return false;
        };
        let _ = sock.set_read_timeout(Some(Duration::from_secs(2)));
        if sock
            .write_all(b"GET /_ping HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n")
            .is_err()
        {
            return false;
        }
        let mut reply = String::new();
        let _ = sock.read_to_string(&mut reply);
        reply.starts_with("HTTP/1.1 200")
    }

    /// `unix:///tmp/ad-XXXXXX/s`, for `DOCKER_HOST` or `docker -H`.
    pub fn host(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    /// The API socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("s")
    }

    /// The daemon's scratch directory (data root `d`, exec root `e`, socket `s`, `log`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// dockerd's PID.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The cgroup (under each hierarchy's root) that holds this daemon's containers.
    pub fn cgroup(&self) -> &str {
        &self.name
    }

    /// The engine version the daemon reported, e.g. `20.10.24+dfsg1`.
    pub fn server_version(&self) -> &str {
        &self.server_version
    }

    /// The last `lines` lines of dockerd's log, labelled, for panic messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = fs::read_to_string(self.dir.join("log")).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        let tail = all[all.len().saturating_sub(lines)..].join("\n");
        format!(
            "--- last {lines} lines of {} ---\n{tail}",
            self.dir.join("log").display()
        )
    }

    /// A `docker -H <this daemon>` command with the environment scrubbed of anything that could
    /// point it elsewhere (`DOCKER_HOST`, `DOCKER_CONTEXT`, `DOCKER_API_VERSION`, TLS, user config).
    pub fn docker_cmd(&self) -> Command {
        let mut cmd = Command::new(docker_cli());
        for var in [
            "DOCKER_HOST",
            "DOCKER_CONTEXT",
            "DOCKER_API_VERSION",
            "DOCKER_TLS_VERIFY",
            "DOCKER_CERT_PATH",
        ] {
            cmd.env_remove(var);
        }
        cmd.env("DOCKER_CONFIG", self.dir.join("cfg"))
            .arg("-H")
            .arg(self.host());
        cmd
    }

    /// Runs `docker ARGS` against this daemon (600 s limit); the caller checks the status.
    pub fn docker(&self, args: &[&str]) -> Output {
        run_with_timeout(self.docker_cmd().args(args), DOCKER_TIMEOUT)
    }

    /// Runs `docker ARGS` and returns stdout; panics with stdout, stderr and the daemon log tail
    /// on a non-zero exit.
    pub fn docker_ok(&self, args: &[&str]) -> String {
        let mut cmd = self.docker_cmd();
        cmd.args(args);
        let line = describe(&cmd);
        let out = run_with_timeout(&mut cmd, DOCKER_TIMEOUT);
        if !out.status.success() {
            panic!(
                "`{line}` failed ({})\n{}\n{}",
                out.status,
                streams(&out.stdout, &out.stderr),
                self.log_tail(15)
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `docker load -i TARBALL`, checked to have loaded `reference`; returns what docker printed.
    pub fn load(&self, tarball: &Path, reference: &str) -> String {
        let loaded = self.docker_ok(&["load", "-i", tarball.to_str().unwrap()]);
        assert!(
            loaded.contains(reference),
            "`docker load` of {} did not load {reference}: {loaded}",
            tarball.display()
        );
        loaded
    }

    /// `docker image inspect REF` as JSON (the first element of the array).
    pub fn image_inspect(&self, reference: &str) -> serde_json::Value {
        let out = self.docker_ok(&["image", "inspect", reference]);
        let mut all: Vec<serde_json::Value> = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("`docker image inspect` printed invalid JSON ({e}): {out}"));
        assert_eq!(all.len(), 1, "expected one image for {reference}: {out}");
        all.remove(0)
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        // Closing the pipe is the stop signal; the supervisor does the rest.
        drop(self.lifeline.take());
        let problem = match wait_timeout(&mut self.supervisor, STOP_TIMEOUT) {
            Some(status) if status.success() => None,
            Some(status) => Some(format!("the dockerd supervisor exited with {status}")),
            None => {
                // It hung: kill dockerd ourselves and tear down from here.
                let _ = Command::new("kill")
                    .args(["-KILL", &self.pid.to_string()])
                    .status();
                Some(format!("the dockerd supervisor hung for {STOP_TIMEOUT:?}"))
            }
        };
        if let Some(problem) = problem {
            let log = fs::read_to_string(self.dir.join("supervisor.log")).unwrap_or_default();
            eprintln!("harness: {problem}\n{log}");
            if let Err(e) = teardown(&self.dir, Some(&self.name)) {
                eprintln!("harness: {e}");
            }
        }
        let left = pids_mentioning(&format!("{}/", self.dir.display()));
        if !left.is_empty() || self.dir.exists() {
            eprintln!(
                "harness: dockerd {} not fully cleaned up: processes {left:?}, dir exists: {}",
                self.dir.display(),
                self.dir.exists()
            );
        }
    }
}

/// The hardening the runbook gives the container: read-only rootfs, no capabilities, no new
/// privileges. `docker run` and `podman run` take the same flags.
pub const HARDENED: [&str; 5] = [
    "--read-only",
    "--cap-drop",
    "ALL",
    "--security-opt",
    "no-new-privileges",
];

/// The arguments of a hardened `docker run` or `podman run`: `run`, `lead` (how it runs, e.g.
/// `--rm --network none`), [`HARDENED`], then `rest` (more options, the image, its arguments).
pub fn hardened_run<'a>(lead: &[&'a str], rest: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["run"];
    args.extend_from_slice(lead);
    args.extend_from_slice(&HARDENED);
    args.extend_from_slice(rest);
    args
}

/// The docker CLI to drive the daemon with: Debian's `/usr/bin/docker` (20.10, same as the
/// daemon) when present, else `docker` on PATH. A newer CLI also works: it negotiates the API
/// version down to the daemon's 1.41 by itself, so `DOCKER_API_VERSION` is never needed.
pub fn docker_cli() -> PathBuf {
    static CLI: OnceLock<PathBuf> = OnceLock::new();
    CLI.get_or_init(|| {
        let debian = Path::new("/usr/bin/docker");
        if debian.is_file() {
            debian.to_path_buf()
        } else {
            require_tool("docker")
        }
    })
    .clone()
}
