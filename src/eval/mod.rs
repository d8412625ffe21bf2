//! The release gate: runs the exact server binary being packaged on the exact weight files
//! being packaged, asks it every `[[eval]]` case over its own OpenAI API, and judges the answers.
//!
//! Nothing is mocked: the server is started as the image would start it (its settings as
//! environment, `[server] args` as arguments), bound to 127.0.0.1 on a free port, over a model
//! directory of symlinks to the files the layers were written from. Passed results become an
//! in-toto test-result attestation ([`predicate`]) signed with the image.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde::Serialize;
use serde_json::{Value, json};

use crate::digest::Sha256Digest;
use crate::manifest::eval::{EvalCase, EvalInput, EvalSettings, Expectation};

/// The test-result predicate (in-toto attestation framework, v0.1).
pub const PREDICATE_TYPE: &str = "https://in-toto.io/attestation/test-result/v0.1";
/// The configuration entry that carries the cases and their outputs.
pub const RESULTS_NAME: &str = "appliance-eval.json";

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("Evaluation gate: failed to prepare `{path}`")]
    Prepare {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Evaluation gate: the server `{binary}` did not become ready: {why}\n{log}")]
    NotReady {
        binary: PathBuf,
        why: String,
        log: String,
    },
    #[error("Evaluation gate: case `{case}`: the server answered {status}: {body}")]
    Request {
        case: String,
        status: String,
        body: String,
    },
}

/// How to run the server under test.
pub struct ServerUnderTest<'a> {
    pub binary: &'a Path,
    /// `(path in the model dir, file on the host)` for every model file.
    pub model_files: Vec<(String, PathBuf)>,
    pub served_model_name: &'a str,
    pub max_model_len: Option<u32>,
    /// `cpu` or `cuda`.
    pub device: &'a str,
    pub args: &'a [String],
    /// How long loading may take: the image's HEALTHCHECK start period.
    pub ready_timeout: Duration,
}

/// One case's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    pub name: String,
    pub passed: bool,
    pub output: String,
    pub token_ids: Vec<u32>,
    pub finish_reason: String,
    /// Why it failed, in words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct EvalOutcome {
    pub results: Vec<CaseResult>,
    pub min_pass_rate: f64,
    pub device: String,
}

impl EvalOutcome {
    pub fn passed(&self) -> usize {
        self.results.iter().filter(|r| r.passed).count()
    }

    /// Whether the gate lets the release through.
    pub fn gate_passes(&self) -> bool {
        let total = self.results.len().max(1) as f64;
        self.passed() as f64 / total >= self.min_pass_rate - 1e-12
    }

    /// The failed cases with what was expected and what came, for the build's error.
    pub fn failures(&self, cases: &[EvalCase]) -> String {
        let mut out = String::new();
        for (case, result) in cases.iter().zip(&self.results) {
            if result.passed {
                continue;
            }
            let (kind, value) = case.expect.describe();
            out.push_str(&format!(
                "\n  `{}`: expected {kind} {value}; got {:?} (token ids {:?}, finish {}){}",
                case.name,
                result.output,
                result.token_ids,
                result.finish_reason,
                result
                    .failure
                    .as_deref()
                    .map(|f| format!(": {f}"))
                    .unwrap_or_default()
            ));
        }
        out
    }
}

/// Kills the server however the gate ends.
struct Running {
    child: Child,
    log: PathBuf,
}

impl Running {
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // SIGTERM first: the server drains and exits; then make sure.
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_child(&self.child),
            rustix::process::Signal::TERM,
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs every case against the server; an error means the gate could not run at all.
pub fn run(settings: &EvalSettings, server: &ServerUnderTest) -> Result<EvalOutcome, EvalError> {
    let work = tempfile::Builder::new()
        .prefix("appliance-eval")
        .tempdir()
        .map_err(|source| EvalError::Prepare {
            path: std::env::temp_dir(),
            source,
        })?;
    let model_dir = work.path().join("model");
    for (rel, host) in &server.model_files {
        let link = model_dir.join(rel);
        let made = std::fs::create_dir_all(link.parent().unwrap_or(&model_dir))
            .and_then(|_| std::os::unix::fs::symlink(host, &link));
        made.map_err(|source| EvalError::Prepare { path: link, source })?;
    }
    let port = free_port().map_err(|source| EvalError::Prepare {
        path: "127.0.0.1".into(),
        source,
    })?;
    let log = work.path().join("server.log");
    let log_file = std::fs::File::create(&log).map_err(|source| EvalError::Prepare {
        path: log.clone(),
        source,
    })?;
    let mut command = Command::new(server.binary);
    command
        .args(server.args)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", work.path())
        .env("APPLIANCE_MODEL", &model_dir)
        .env("APPLIANCE_SERVED_MODEL_NAME", server.served_model_name)
        .env("APPLIANCE_HOST", "127.0.0.1")
        .env("APPLIANCE_PORT", port.to_string())
        .env("APPLIANCE_DEVICE", server.device)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().map_err(|source| EvalError::Prepare {
            path: log.clone(),
            source,
        })?)
        .stderr(log_file);
    if let Some(len) = server.max_model_len {
        command.env("APPLIANCE_MAX_MODEL_LEN", len.to_string());
    }
    let child = command.spawn().map_err(|source| EvalError::Prepare {
        path: server.binary.to_path_buf(),
        source,
    })?;
    let mut running = Running { child, log };

    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(600)))
        .build()
        .into();
    let base = format!("http://127.0.0.1:{port}");
    let not_ready = |running: &Running, why: String| EvalError::NotReady {
        binary: server.binary.to_path_buf(),
        why,
        log: running.log_tail(),
    };
    let deadline = Instant::now() + server.ready_timeout;
    loop {
        if let Ok(Some(status)) = running.child.try_wait() {
            return Err(not_ready(&running, format!("it exited ({status})")));
        }
        let ready = agent
            .get(format!("{base}/ready"))
            .call()
            .is_ok_and(|r| r.status() == 200);
        if ready {
            break;
        }
        if Instant::now() > deadline {
            return Err(not_ready(
                &running,
                format!("not ready within {} s", server.ready_timeout.as_secs()),
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    let mut results = Vec::with_capacity(settings.cases.len());
    for case in &settings.cases {
        results.push(ask(&agent, &base, server.served_model_name, case)?);
    }
    drop(running);
    Ok(EvalOutcome {
        results,
        min_pass_rate: settings.min_pass_rate,
        device: server.device.to_string(),
    })
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn ask(
    agent: &ureq::Agent,
    base: &str,
    model: &str,
    case: &EvalCase,
) -> Result<CaseResult, EvalError> {
    let mut body = json!({
        "model": model,
        "max_tokens": case.max_tokens,
        "temperature": case.temperature,
        "return_token_ids": true,
    });
    if let Some(seed) = case.seed {
        body["seed"] = json!(seed);
    }
    let (path, chat) = match &case.input {
        EvalInput::Prompt(p) => {
            body["prompt"] = json!(p);
            ("/v1/completions", false)
        }
        EvalInput::Messages(m) => {
            body["messages"] = json!(m);
            ("/v1/chat/completions", true)
        }
    };
    let request_err = |status: String, body: String| EvalError::Request {
        case: case.name.clone(),
        status,
        body,
    };
    let mut response = agent
        .post(format!("{base}{path}"))
        .header("content-type", "application/json")
        .send(body.to_string())
        .map_err(|e| request_err("nothing".into(), e.to_string()))?;
    let status = response.status();
    let text = response
        .body_mut()
        .with_config()
        .limit(16 << 20)
        .read_to_string()
        .map_err(|e| request_err(status.to_string(), e.to_string()))?;
    if status != 200 {
        return Err(request_err(status.to_string(), text));
    }
    let answer: Value =
        serde_json::from_str(&text).map_err(|e| request_err(status.to_string(), e.to_string()))?;
    let choice = &answer["choices"][0];
    let output = if chat {
        choice["message"]["content"].as_str()
    } else {
        choice["text"].as_str()
    }
    .unwrap_or_default()
    .to_string();
    let token_ids: Vec<u32> =
        serde_json::from_value(choice["token_ids"].clone()).unwrap_or_default();
    let failure = judge(&case.expect, &output, &token_ids);
    Ok(CaseResult {
        name: case.name.clone(),
        passed: failure.is_none(),
        output,
        token_ids,
        finish_reason: choice["finish_reason"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        failure: failure.filter(|f| !f.is_empty()),
    })
}

/// `None` when the output meets the expectation; else why not (possibly empty: a plain miss).
fn judge(expect: &Expectation, output: &str, token_ids: &[u32]) -> Option<String> {
    let miss = |ok: bool| (!ok).then(String::new);
    match expect {
        Expectation::Equals(want) => miss(output == want),
        Expectation::Contains(want) => miss(output.contains(want.as_str())),
        Expectation::Regex(re) => miss(re.is_match(output)),
        Expectation::TokenIds(want) => miss(token_ids == want.as_slice()),
        Expectation::JsonSchema(schema) => {
            let value: Value = match serde_json::from_str(output) {
                Ok(v) => v,
                Err(e) => return Some(format!("the output is not JSON ({e})")),
            };
            let validator = jsonschema::validator_for(schema).expect("checked at manifest load");
            validator
                .validate(&value)
                .err()
                .map(|e| format!("the output does not match the schema: {e}"))
        }
    }
}

/// What the cases ran against: the server and each model file, by path in the image.
pub struct Subject<'a> {
    pub server_path: &'a str,
    pub server_sha256: Sha256Digest,
    /// `(path in the image, sha256)` of every model file.
    pub model_files: Vec<(String, Sha256Digest)>,
}

/// The test-result predicate: `result`, the case names by outcome, and as `configuration` the
/// cases with their outputs (one JSON document, base64, with its digest) and the server and
/// weight files they ran against.
pub fn predicate(outcome: &EvalOutcome, cases: &[EvalCase], subject: &Subject) -> Value {
    let names = |passed: bool| -> Vec<&str> {
        outcome
            .results
            .iter()
            .filter(|r| r.passed == passed)
            .map(|r| r.name.as_str())
            .collect()
    };
    let document = crate::json::canonical(&json!({
        "minPassRate": outcome.min_pass_rate,
        "device": outcome.device,
        "cases": cases.iter().zip(&outcome.results).map(|(c, r)| {
            json!({"case": c.to_json(), "result": r})
        }).collect::<Vec<_>>(),
    }))
    .expect("serializable");
    let mut configuration = vec![json!({
        "name": RESULTS_NAME,
        "mediaType": "application/json",
        "digest": {"sha256": Sha256Digest::of(&document).hex()},
        "content": base64::engine::general_purpose::STANDARD.encode(&document),
    })];
    configuration.push(json!({
        "name": subject.server_path,
        "digest": {"sha256": subject.server_sha256.hex()},
    }));
    for (path, sha256) in &subject.model_files {
        configuration.push(json!({"name": path, "digest": {"sha256": sha256.hex()}}));
    }
    let failed = names(false);
    json!({
        "result": if failed.is_empty() { "PASSED" } else { "WARNED" },
        "passedTests": names(true),
        "warnedTests": failed,
        "failedTests": [],
        "configuration": configuration,
    })
}

#[cfg(test)]
mod tests;
