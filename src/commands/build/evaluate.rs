//! The build's fifth step: the `[[eval]]` gate, run on the server binary and model files just
//! packaged, before anything is committed (a gate that fails drops the writer, which deletes
//! the partial tarball).

use anyhow::{Result, bail};

use super::{Fetched, Planned, Resolved, Session, Written, start_period_for};
use crate::eval;
use crate::layers::plan;
use crate::manifest::Device;

/// What became of the `[[eval]]` gate.
pub enum Evaluation {
    NoCases,
    Skipped,
    Ran(eval::EvalOutcome),
}

pub struct Evaluated {
    pub evaluation: Evaluation,
    /// A signed image carries the gate's results: the test-result predicate, built once for
    /// the attestation and the summary.
    pub test_result: Option<serde_json::Value>,
}

pub fn evaluate(
    session: &Session,
    resolved: &Resolved,
    fetched: &Fetched,
    planned: &Planned,
    written: &Written,
) -> Result<Evaluated> {
    let evaluation = run_gate(session, resolved, fetched)?;
    let test_result = match (&evaluation, &resolved.signer) {
        (Evaluation::Ran(outcome), Some(_)) => Some(eval::predicate(
            outcome,
            &resolved.manifest.eval.cases,
            &eval::Subject {
                server_path: plan::SERVER_PATH,
                server_sha256: resolved.server.sha256,
                model_files: written
                    .measured
                    .iter()
                    .map(|(path, f)| (format!("{}/{path}", planned.model_dir), f.sha256))
                    .collect(),
            },
        )),
        _ => None,
    };
    Ok(Evaluated {
        evaluation,
        test_result,
    })
}

/// Runs the gate (unless there are no cases or `--skip-eval`); a gate that does not pass is an
/// error listing each failed case.
fn run_gate(session: &Session, resolved: &Resolved, fetched: &Fetched) -> Result<Evaluation> {
    let Resolved {
        manifest,
        server,
        signer,
        ..
    } = resolved;
    let log = session.log;
    let cases = &manifest.eval.cases;
    if cases.is_empty() {
        return Ok(Evaluation::NoCases);
    }
    if session.settings.skip_eval {
        log.step(&format!(
            "Evaluation gate skipped (--skip-eval): {} cases not run; the provenance records it",
            cases.len()
        ));
        return Ok(Evaluation::Skipped);
    }
    let s = &manifest.server;
    // CUDA only where the manifest asks for it and this host has an NVIDIA device.
    let gpu = std::path::Path::new("/dev/nvidiactl").exists();
    let device = if s.device == Device::Cuda && gpu {
        "cuda"
    } else {
        "cpu"
    };
    log.step(&format!(
        "Evaluating {} cases on {device} with `{}`",
        cases.len(),
        server.path.display()
    ));
    let files = fetched
        .model
        .files
        .iter()
        .chain(fetched.tokenizer.iter().flat_map(|t| &t.files));
    let outcome = eval::run(
        &manifest.eval,
        &eval::ServerUnderTest {
            binary: &server.path,
            model_files: files
                .map(|f| (f.rel_path.clone(), f.host_path.clone()))
                .collect(),
            served_model_name: &s.served_model_name,
            max_model_len: s.max_model_len,
            device,
            args: &s.args,
            ready_timeout: std::time::Duration::from_secs(
                s.healthcheck
                    .start_period_secs
                    .unwrap_or_else(|| start_period_for(fetched.model_bytes)),
            ),
        },
    )?;
    let (passed, total) = (outcome.passed(), outcome.results.len());
    if !outcome.gate_passes() {
        bail!(
            "Evaluation gate failed: {passed} of {total} cases passed, {} required; nothing was written:{}",
            (manifest.eval.min_pass_rate * total as f64).ceil() as usize,
            outcome.failures(cases)
        );
    }
    log.step(&format!(
        "Evaluation gate passed: {passed} of {total} cases{}",
        if signer.is_some() {
            " (results attested in the signature)"
        } else {
            " (not attested: the image is unsigned)"
        }
    ));
    Ok(Evaluation::Ran(outcome))
}
