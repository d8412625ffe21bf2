use super::*;
use crate::manifest::eval::{RawEvalCase, RawPrompt};

fn case(name: &str, expect: &str) -> EvalCase {
    let raw: RawEvalCase = serde_json::from_str(&format!(
        "{{\"name\": \"{name}\", \"prompt\": \"p\", {expect}}}"
    ))
    .unwrap();
    raw.check("eval[0]").ok().unwrap()
}

#[test]
fn each_expectation_judges_the_output() {
    let judged = |expect: &str, output: &str, ids: &[u32]| {
        judge(&case("c", expect).expect, output, ids).is_none()
    };
    assert!(judged("\"equals\": \"a b\"", "a b", &[]));
    assert!(!judged("\"equals\": \"a b\"", "a b ", &[]));
    assert!(judged("\"contains\": \"hello\"", "well, hello there", &[]));
    assert!(!judged("\"contains\": \"hello\"", "Hello", &[]));
    // Anywhere in the output, as Python's re.search.
    assert!(judged("\"regex\": \"[0-9]{3}\"", "call 555 now", &[]));
    assert!(!judged("\"regex\": \"^[0-9]\"", "call 555", &[]));
    assert!(judged("\"token_ids\": [1, 2]", "", &[1, 2]));
    assert!(!judged("\"token_ids\": [1, 2]", "", &[1, 2, 3]));
    let schema = "\"json_schema\": {\"type\": \"object\", \"required\": [\"n\"], \
                  \"properties\": {\"n\": {\"type\": \"integer\"}}}";
    assert!(judged(schema, "{\"n\": 3}", &[]));
    let wrong = judge(&case("c", schema).expect, "{\"n\": \"3\"}", &[]).unwrap();
    assert!(wrong.contains("does not match the schema"), "{wrong}");
    let prose = judge(&case("c", schema).expect, "n is 3", &[]).unwrap();
    assert!(prose.contains("not JSON"), "{prose}");
}

#[test]
fn the_threshold_decides_and_the_predicate_lists_failures_as_warned() {
    let cases = vec![
        case("a", "\"equals\": \"x\""),
        case("b", "\"equals\": \"y\""),
    ];
    let result = |name: &str, passed: bool| CaseResult {
        name: name.into(),
        passed,
        output: "x".into(),
        token_ids: vec![1],
        finish_reason: "stop".into(),
        failure: None,
    };
    let mut outcome = EvalOutcome {
        results: vec![result("a", true), result("b", false)],
        min_pass_rate: 1.0,
        device: "cpu".into(),
    };
    assert!(!outcome.gate_passes());
    let failures = outcome.failures(&cases);
    assert!(
        failures.contains("`b`: expected equals \"y\"; got \"x\""),
        "{failures}"
    );
    assert!(!failures.contains("`a`"), "{failures}");
    outcome.min_pass_rate = 0.5;
    assert!(outcome.gate_passes());
    let subject = Subject {
        server_path: "usr/local/bin/appliance-server",
        server_sha256: Sha256Digest::of(b"server"),
        model_files: vec![("models/m/w.safetensors".into(), Sha256Digest::of(b"w"))],
    };
    let p = predicate(&outcome, &cases, &subject);
    assert_eq!(p["result"], "WARNED");
    assert_eq!(p["passedTests"], json!(["a"]));
    assert_eq!(p["warnedTests"], json!(["b"]));
    let config = p["configuration"].as_array().unwrap();
    assert_eq!(config[0]["name"], RESULTS_NAME);
    let doc = base64::engine::general_purpose::STANDARD
        .decode(config[0]["content"].as_str().unwrap())
        .unwrap();
    assert_eq!(config[0]["digest"]["sha256"], Sha256Digest::of(&doc).hex());
    let doc: Value = serde_json::from_slice(&doc).unwrap();
    assert_eq!(doc["cases"][1]["case"]["equals"], "y");
    assert_eq!(doc["cases"][1]["result"]["passed"], false);
    assert_eq!(config[2]["digest"]["sha256"], Sha256Digest::of(b"w").hex());
    assert!(matches!(
        cases[0].input,
        EvalInput::Prompt(RawPrompt::Text(_))
    ));
}
