//! Tests of `appliance-server healthcheck`, the probe Docker's HEALTHCHECK
//! runs inside the image: exit 0 iff `GET <url>/ready` answers 200.

use crate::common;

use std::{
    io::{Read, Write},
    net::TcpListener,
    process::Output,
    thread,
    time::{Duration, Instant},
};

use common::{Server, closed_port, command, model_dir, run_with_timeout};

fn healthcheck(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = command();
    cmd.arg("healthcheck").args(args).envs(env.iter().copied());
    // 5 s probe timeouts plus generous slack for a loaded CI machine.
    run_with_timeout(cmd, Duration::from_secs(20))
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn healthy_server_exits_zero() {
    let model = model_dir("tiny");
    let server = Server::start(&["--model", model.path.to_str().expect("utf-8")], &[]);
    server.wait_ready();
    let url = format!("http://127.0.0.1:{}", server.port);
    let out = healthcheck(&["--url", &url], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("200"));
    // A trailing slash on the base URL still probes /ready.
    let out = healthcheck(&["--url", &format!("{url}/")], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn default_url_follows_appliance_port() {
    let model = model_dir("tiny");
    let port = closed_port().to_string();
    let mut cmd = command();
    cmd.args([
        "--model",
        model.path.to_str().expect("utf-8"),
        "--host",
        "127.0.0.1",
    ])
    .env("APPLIANCE_PORT", &port)
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped());
    let server = Server::spawn(cmd);
    assert_eq!(server.port.to_string(), port);
    server.wait_ready();
    let out = healthcheck(&[], &[("APPLIANCE_PORT", &port)]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn closed_port_exits_one_with_a_reason() {
    let url = format!("http://127.0.0.1:{}", closed_port());
    let out = healthcheck(&["--url", &url], &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("cannot connect"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one-line reason: {err}");
}

/// A fake server answering every connection with `response`; returns its
/// port and a handle yielding the first request it received.
fn fake_server(response: &'static str) -> (u16, thread::JoinHandle<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let handle = thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("accept");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut request = Vec::new();
        let mut buf = [0u8; 1024];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => request.extend_from_slice(&buf[..n]),
            }
        }
        if !response.is_empty() {
            let _ = stream.write_all(response.as_bytes());
        } else {
            // Hold the connection open without answering.
            thread::sleep(Duration::from_secs(8));
        }
        String::from_utf8_lossy(&request).into_owned()
    });
    (port, handle)
}

#[test]
fn not_ready_exits_one_with_the_status() {
    let (port, request) = fake_server(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: 20\r\nConnection: close\r\n\r\n{\"status\":\"loading\"}",
    );
    let out = healthcheck(&["--url", &format!("http://127.0.0.1:{port}")], &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("503") && err.contains("loading"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one-line reason: {err}");
    let request = request.join().expect("fake server");
    assert!(request.starts_with("GET /ready HTTP/1.1\r\n"), "{request}");
}

#[test]
fn silent_server_times_out_and_exits_one() {
    let (port, _request) = fake_server("");
    let started = Instant::now();
    let out = healthcheck(&["--url", &format!("http://127.0.0.1:{port}")], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(started.elapsed() < Duration::from_secs(15));
    assert!(
        stderr(&out).contains("reading response"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn https_is_rejected_clearly() {
    let out = healthcheck(&["--url", "https://127.0.0.1:8000"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("https is not supported"),
        "{}",
        stderr(&out)
    );
}
