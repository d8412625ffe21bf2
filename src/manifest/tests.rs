//! Unit tests for manifest parsing and validation.

use super::*;

fn load_str(toml: &str) -> Result<Manifest, ManifestError> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("model")).unwrap();
    let path = dir.path().join("m.toml");
    std::fs::write(&path, toml).unwrap();
    Manifest::load(&path, None)
}

const MINIMAL: &str = r#"
[image]
name = "registry.local/llm/demo"
tag = "0.1.0"
[model]
path = "model"
"#;

fn field_of(err: ManifestError) -> String {
    match err {
        ManifestError::Field { field, .. } => field,
        other => panic!("expected a field error, got {other}"),
    }
}

#[test]
fn minimal_manifest_gets_documented_defaults() {
    let m = load_str(MINIMAL).unwrap();
    assert_eq!(m.server.port, 8000);
    assert_eq!(m.server.served_model_name, "model");
    assert_eq!((m.runtime.uid, m.runtime.gid), (65532, 65532));
    assert_eq!(m.runtime.user, "appliance");
    assert_eq!(m.runtime.base, Base::Host);
    assert_eq!(m.image.created, 0);
    assert_eq!(m.image.compression, Compression::None);
    assert!(
        matches!(&m.model.source, ModelSource::Path(p) if p.is_absolute() && p.ends_with("model"))
    );
}

#[test]
fn relative_paths_resolve_against_the_manifest_dir() {
    let m = load_str(&format!("{MINIMAL}\n[signing]\nkey = \"keys/a.key\"\n")).unwrap();
    let manifest_dir = m.path.parent().unwrap();
    assert_eq!(m.signing.unwrap().key, manifest_dir.join("keys/a.key"));
}

#[test]
fn created_prefers_manifest_then_source_date_epoch() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("model")).unwrap();
    let path = dir.path().join("m.toml");
    std::fs::write(&path, MINIMAL).unwrap();
    assert_eq!(
        Manifest::load(&path, Some("1700000000"))
            .unwrap()
            .image
            .created,
        1_700_000_000
    );
    let with_created = MINIMAL.replace(
        "tag = \"0.1.0\"",
        "tag = \"0.1.0\"\ncreated = \"2025-01-31T12:00:00Z\"",
    );
    std::fs::write(&path, with_created).unwrap();
    assert_eq!(
        Manifest::load(&path, Some("1700000000"))
            .unwrap()
            .image
            .created,
        1_738_324_800
    );
    std::fs::write(&path, MINIMAL).unwrap();
    assert!(Manifest::load(&path, Some("yesterday")).is_err());
}

#[test]
fn invalid_toml_reports_line_and_column() {
    let err = load_str("[image]\nname = \"x\"\ntag = 1.0.0\n").unwrap_err();
    let text = err.to_string();
    assert!(text.contains("line 3, column"), "{text}");
}

#[test]
fn unknown_field_is_an_error_naming_it() {
    let err =
        load_str(&MINIMAL.replace("tag = \"0.1.0\"", "tag = \"0.1.0\"\ntga = 1")).unwrap_err();
    assert!(err.to_string().contains("unknown field `tga`"), "{err}");
}

#[test]
fn missing_required_field_is_named() {
    let err = load_str("[image]\nname = \"x\"\n[model]\npath = \"model\"\n").unwrap_err();
    assert!(err.to_string().contains("missing field `tag`"), "{err}");
}

#[test]
fn exactly_one_model_source() {
    let two = MINIMAL.replace("path = \"model\"", "path = \"model\"\nhf = \"org/x\"");
    let err = load_str(&two).unwrap_err();
    assert!(err.to_string().contains("`path` and `hf`"), "{err}");
    let none = MINIMAL.replace("path = \"model\"", "");
    assert_eq!(field_of(load_str(&none).unwrap_err()), "model");
}

#[test]
fn missing_model_dir_is_named() {
    let err = load_str(&MINIMAL.replace("path = \"model\"", "path = \"nope\"")).unwrap_err();
    assert!(err.to_string().contains("nope"), "{err}");
    assert!(err.to_string().contains("model.path"), "{err}");
}

#[test]
fn hub_source_gets_default_globs_and_main() {
    let m = load_str(&MINIMAL.replace("path = \"model\"", "hf = \"Qwen/Qwen2.5-0.5B-Instruct\""))
        .unwrap();
    assert_eq!(
        m.model.source,
        ModelSource::Hub {
            repo: "Qwen/Qwen2.5-0.5B-Instruct".into(),
            revision: "main".into()
        }
    );
    assert!(m.model.files.iter().any(|f| f == "*.safetensors"));
    assert!(!m.model.files.iter().any(|f| f.contains(".bin")));
    assert_eq!(m.server.served_model_name, "Qwen/Qwen2.5-0.5B-Instruct");
}

#[test]
fn bad_values_name_their_field() {
    let cases = [
        (
            MINIMAL.replace("registry.local/llm/demo", "Bad Name"),
            "image.name",
        ),
        (MINIMAL.replace("0.1.0", ".bad"), "image.tag"),
        (format!("{MINIMAL}[runtime]\nuid = 0\n"), "runtime.uid"),
        (
            format!("{MINIMAL}[runtime]\nuser = \"Root User\"\n"),
            "runtime.user",
        ),
        (
            format!("{MINIMAL}[runtime]\nbase = \"ubuntu\"\n"),
            "runtime.base",
        ),
        (
            format!("{MINIMAL}[server]\nserved_model_name = \"../etc\"\n"),
            "server.served_model_name",
        ),
        (
            format!("{MINIMAL}[server.healthcheck]\ninterval = \"soon\"\n"),
            "server.healthcheck.interval",
        ),
        (
            format!("{MINIMAL}[model.sha256]\n\"config.json\" = \"xyz\"\n"),
            "model.sha256",
        ),
        (
            MINIMAL.replace("path = \"model\"", "hf = \"not-a-repo\""),
            "model.hf",
        ),
        (
            MINIMAL.replace(
                "tag = \"0.1.0\"",
                "tag = \"0.1.0\"\ncreated = \"last week\"",
            ),
            "image.created",
        ),
    ];
    for (toml, field) in cases {
        assert_eq!(field_of(load_str(&toml).unwrap_err()), field, "{toml}");
    }
}

#[test]
fn healthcheck_durations_parse() {
    let m = load_str(&format!(
        "{MINIMAL}[server.healthcheck]\ninterval = \"1m30s\"\ntimeout = \"5\"\nstart_period = \"10m\"\nretries = 5\n"
    ))
    .unwrap();
    assert_eq!(
        m.server.healthcheck,
        HealthcheckSettings {
            interval_secs: 90,
            timeout_secs: 5,
            start_period_secs: Some(600),
            retries: 5
        }
    );
}

/// The shipped examples stay valid: each parses, and those that need nothing on disk load.
#[test]
fn example_manifests_are_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        seen += 1;
        let text = std::fs::read_to_string(&path).unwrap();
        let raw: RawManifest =
            toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if raw.model.path.is_none() {
            Manifest::load(&path, None).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        }
    }
    assert!(
        seen >= 3,
        "expected the example manifests in {}",
        dir.display()
    );
    let demo = Manifest::load(&dir.join("demo.toml"), None).unwrap();
    assert!(matches!(demo.model.source, ModelSource::Synthetic(_)));
    assert_eq!(demo.image.reference.short_name(), "appliance-demo");
}

#[test]
fn reserved_label_prefix_is_refused_up_front() {
    let toml = MINIMAL.replace(
        "tag = \"0.1.0\"",
        "tag = \"0.1.0\"\n[image.labels]\n\"appliance.model.name\" = \"forged\"",
    );
    let err = load_str(&toml).unwrap_err();
    assert!(err.to_string().contains("reserved"), "{err}");
    assert_eq!(field_of(err), "image.labels");
}

/// A GGUF repository plus the repository its tokenizer comes from, each at its own revision.
#[test]
fn hub_tokenizer_source_gets_default_files_and_main() {
    let toml = MINIMAL.replace(
        "path = \"model\"",
        "hf = \"Qwen/Qwen2.5-7B-Instruct-GGUF\"\nfiles = [\"qwen2.5-7b-instruct-q4_k_m.gguf\"]\n\
         tokenizer = { hf = \"Qwen/Qwen2.5-7B-Instruct\", sha256 = { \"tokenizer.json\" = \"\
         aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\" } }",
    );
    let m = load_str(&toml).unwrap();
    let t = m.model.tokenizer.unwrap();
    assert_eq!(
        t.source,
        TokenizerSource::Hub {
            repo: "Qwen/Qwen2.5-7B-Instruct".into(),
            revision: "main".into()
        }
    );
    assert_eq!(t.files, DEFAULT_TOKENIZER_FILES);
    assert!(!t.explicit_files);
    assert_eq!(t.pins.len(), 1);
    assert_eq!(m.server.served_model_name, "Qwen/Qwen2.5-7B-Instruct-GGUF");
}

#[test]
fn local_tokenizer_source_resolves_against_the_manifest_dir() {
    let toml = MINIMAL.replace(
        "path = \"model\"",
        "path = \"model\"\ntokenizer = { path = \"model\", files = [\"tokenizer.json\"] }",
    );
    let m = load_str(&toml).unwrap();
    let t = m.model.tokenizer.unwrap();
    let manifest_dir = m.path.parent().unwrap();
    assert_eq!(t.source, TokenizerSource::Path(manifest_dir.join("model")));
    assert!(t.explicit_files);
}

#[test]
fn bad_tokenizer_sources_name_model_tokenizer() {
    let with = |tokenizer: &str| {
        MINIMAL.replace(
            "path = \"model\"",
            &format!("path = \"model\"\ntokenizer = {tokenizer}"),
        )
    };
    let cases = [
        (
            with("{ hf = \"org/t\", path = \"model\" }"),
            "model.tokenizer",
        ),
        (with("{ files = [\"tokenizer.json\"] }"), "model.tokenizer"),
        (with("{ hf = \"not-a-repo\" }"), "model.tokenizer.hf"),
        (
            with("{ path = \"model\", revision = \"main\" }"),
            "model.tokenizer.revision",
        ),
        (with("{ path = \"nope\" }"), "model.tokenizer.path"),
        (
            with("{ hf = \"org/t\", files = [] }"),
            "model.tokenizer.files",
        ),
        (
            with("{ hf = \"org/t\", sha256 = { \"tokenizer.json\" = \"xyz\" } }"),
            "model.tokenizer.sha256",
        ),
    ];
    for (toml, field) in cases {
        let err = load_str(&toml).unwrap_err();
        assert!(err.to_string().contains(field), "{toml}: {err}");
        assert_eq!(field_of(err), field, "{toml}");
    }
}

/// serde reports an unknown key without its table; the message must still say which.
#[test]
fn unknown_tokenizer_key_names_model_tokenizer() {
    let toml = MINIMAL.replace(
        "path = \"model\"",
        "path = \"model\"\ntokenizer = { hf = \"org/t\", revison = \"v1\" }",
    );
    let err = load_str(&toml).unwrap_err().to_string();
    assert!(
        err.contains("`model.tokenizer`") && err.contains("unknown field `revison`"),
        "{err}"
    );
}

#[test]
fn a_synthetic_model_takes_no_tokenizer_source() {
    let toml = MINIMAL.replace(
        "path = \"model\"",
        "synthetic = { arch = \"llama\" }\ntokenizer = { hf = \"org/t\" }",
    );
    let err = load_str(&toml).unwrap_err();
    assert!(err.to_string().contains("synthetic"), "{err}");
    assert_eq!(field_of(err), "model.tokenizer");
}

#[test]
fn quantize_takes_llama_quantize_preset_names() {
    for (name, want) in [
        ("q4_k_m", appliance_gguf::convert::FileType::Q4KM),
        ("q6_k", appliance_gguf::convert::FileType::Q6K),
        ("q8_0", appliance_gguf::convert::FileType::Q8_0),
    ] {
        let m = load_str(&MINIMAL.replace(
            "path = \"model\"",
            &format!("path = \"model\"\nquantize = \"{name}\""),
        ))
        .unwrap();
        assert_eq!(m.model.quantize, Some(want), "{name}");
    }
    assert_eq!(load_str(MINIMAL).unwrap().model.quantize, None);
    let err = load_str(&MINIMAL.replace(
        "path = \"model\"",
        "path = \"model\"\nquantize = \"Q4_K_M\"",
    ))
    .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("q4_k_m, q6_k, q8_0"), "{text}");
    assert_eq!(field_of(err), "model.quantize");
}

#[test]
fn eval_cases_parse_with_defaults_and_a_jsonl_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("model")).unwrap();
    std::fs::write(
        dir.path().join("evals.jsonl"),
        "{\"name\": \"ids\", \"prompt\": [1, 2, 3], \"token_ids\": [4, 5]}\n\n\
         {\"name\": \"schema\", \"prompt\": \"Give JSON\", \"json_schema\": {\"type\": \"object\"}}\n",
    )
    .unwrap();
    let path = dir.path().join("m.toml");
    std::fs::write(
        &path,
        format!(
            "{MINIMAL}[[eval]]\nname = \"greeting\"\nmessages = [{{ role = \"user\", content = \"Say hello\" }}]\n\
             contains = \"hello\"\n[evals]\nfile = \"evals.jsonl\"\nmin_pass_rate = 0.5\n"
        ),
    )
    .unwrap();
    let m = Manifest::load(&path, None).unwrap();
    let cases = &m.eval.cases;
    assert_eq!(cases.len(), 3);
    assert_eq!(m.eval.min_pass_rate, 0.5);
    assert_eq!(cases[0].max_tokens, eval::DEFAULT_MAX_TOKENS);
    assert_eq!(cases[0].temperature, 0.0, "greedy by default");
    // A token-id expectation asks for exactly as many tokens as it lists.
    assert_eq!(cases[1].max_tokens, 2);
    assert!(matches!(cases[2].expect, eval::Expectation::JsonSchema(_)));
    assert_eq!(cases[1].to_json()["token_ids"], serde_json::json!([4, 5]));
    assert_eq!(load_str(MINIMAL).unwrap().eval.cases.len(), 0);
}

#[test]
fn bad_eval_cases_name_the_case_and_field() {
    let case = |body: &str| load_str(&format!("{MINIMAL}[[eval]]\n{body}\n")).map(|_| ());
    let cases = [
        (
            "name = \"a\"\nprompt = \"x\"\nregex = \"(\"",
            "eval[0].regex",
        ),
        (
            "name = \"a\"\nprompt = \"x\"\njson_schema = { type = 7 }",
            "eval[0].json_schema",
        ),
        ("name = \"a\"\nprompt = \"x\"", "eval[0].equals"),
        (
            "name = \"a\"\nprompt = \"x\"\nequals = \"y\"\ncontains = \"y\"",
            "eval[0].equals",
        ),
        ("name = \"a\"\nequals = \"y\"", "eval[0].prompt"),
        ("prompt = \"x\"\nequals = \"y\"", "eval[0].name"),
        (
            "name = \"a\"\nprompt = \"x\"\nequals = \"y\"\nmax_tokens = 0",
            "eval[0].max_tokens",
        ),
        (
            "name = \"a\"\nprompt = \"x\"\nequals = \"y\"\ntemperature = 3.0",
            "eval[0].temperature",
        ),
    ];
    for (body, field) in cases {
        assert_eq!(field_of(case(body).unwrap_err()), field, "{body}");
    }
    let twice = "name = \"a\"\nprompt = \"x\"\nequals = \"y\"\n[[eval]]\nname = \"a\"\nprompt = \"z\"\nequals = \"y\"";
    assert_eq!(field_of(case(twice).unwrap_err()), "eval");
    // An unknown key in a case is a parse error naming it.
    let err = case("name = \"a\"\nprompt = \"x\"\nequals = \"y\"\nexpect = \"y\"").unwrap_err();
    assert!(err.to_string().contains("expect"), "{err}");
    // A JSONL line is named by file and line number.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("model")).unwrap();
    std::fs::write(
        dir.path().join("e.jsonl"),
        "{\"name\": \"ok\", \"prompt\": \"x\", \"equals\": \"y\"}\n{\"name\": \"bad\"}\n",
    )
    .unwrap();
    let path = dir.path().join("m.toml");
    std::fs::write(&path, format!("{MINIMAL}[evals]\nfile = \"e.jsonl\"\n")).unwrap();
    assert_eq!(
        field_of(Manifest::load(&path, None).unwrap_err()),
        "e.jsonl:2.prompt"
    );
    std::fs::write(&path, format!("{MINIMAL}[evals]\nmin_pass_rate = 0.0\n")).unwrap();
    assert_eq!(
        field_of(Manifest::load(&path, None).unwrap_err()),
        "evals.min_pass_rate"
    );
}
