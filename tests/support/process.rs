//! Runs external commands with a deadline, so a hung tool fails the test instead of hanging CI.
//!
//! Output is captured on reader threads (a full pipe can never stall the child) and every failure
//! panics with the command line, the exit status and both streams.

use std::io::Read;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// How often a child's exit is polled while waiting for it.
const POLL: Duration = Duration::from_millis(10);

/// The command line as a shell would show it, for messages.
pub fn describe(cmd: &Command) -> String {
    let mut line = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        line.push(' ');
        line.push_str(&arg.to_string_lossy());
    }
    line
}

/// Runs `cmd` to completion with stdin closed and stdout/stderr captured.
///
/// Panics if it cannot be started or is still running after `timeout` (it is killed first, and
/// what it printed so far is in the message). A non-zero exit is returned, not a panic.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Output {
    let line = describe(cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start `{line}`: {e}"));
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let status = wait_timeout(&mut child, timeout);
    let (stdout, stderr) = (join(stdout), join(stderr));
    match status {
        Some(status) => Output {
            status,
            stdout,
            stderr,
        },
        None => panic!(
            "`{line}` still running after {timeout:?}; killed it\n{}",
            streams(&stdout, &stderr)
        ),
    }
}

/// Runs `cmd` like [`run_with_timeout`] and returns its stdout; panics on a non-zero exit with
/// the command line and both streams.
pub fn run_ok(cmd: &mut Command, timeout: Duration) -> String {
    let line = describe(cmd);
    let out = run_with_timeout(cmd, timeout);
    if !out.status.success() {
        panic!(
            "`{line}` failed ({})\n{}",
            out.status,
            streams(&out.stdout, &out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Both captured streams, labelled, for a panic message.
pub fn streams(stdout: &[u8], stderr: &[u8]) -> String {
    format!(
        "--- stdout ---\n{}\n--- stderr ---\n{}",
        String::from_utf8_lossy(stdout).trim_end(),
        String::from_utf8_lossy(stderr).trim_end()
    )
}

/// Waits for `child` to exit; after `timeout` kills it, reaps it and returns `None`.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(POLL),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            Err(e) => panic!("cannot wait for child {}: {e}", child.id()),
        }
    }
}

/// Whether process `pid` exists and is not a zombie (`/proc/PID/stat` state `Z`).
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name, which may itself contain ") ".
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X')),
        Err(_) => false,
    }
}

/// PIDs of processes whose command line contains `needle` (via `pgrep -f`), excluding this one.
pub fn pids_mentioning(needle: &str) -> Vec<u32> {
    let out = Command::new("pgrep")
        .arg("-f")
        .arg("--")
        .arg(needle)
        .output()
        .unwrap_or_else(|e| panic!("cannot run `pgrep` (package procps): {e}"));
    let me = std::process::id();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .filter(|&pid| pid != me && process_alive(pid))
        .collect()
}

fn drain(pipe: Option<impl Read + Send + 'static>) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut buf);
        }
        buf
    })
}

fn join(handle: thread::JoinHandle<Vec<u8>>) -> Vec<u8> {
    handle.join().unwrap_or_default()
}
