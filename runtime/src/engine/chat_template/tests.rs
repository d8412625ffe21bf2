//! Chat template tests: where the template comes from, and that the
//! environment behaves like transformers' (block trimming, Python methods,
//! `raise_exception`, Python-style `tojson`).

use serde_json::json;

use super::*;

fn config(v: Json) -> TokenizerConfig {
    TokenizerConfig {
        bos_token: v.get("bos_token").and_then(Json::as_str).map(str::to_owned),
        eos_token: v.get("eos_token").and_then(Json::as_str).map(str::to_owned),
        add_bos_token: None,
        raw: v,
    }
}

fn template(source: &str) -> ChatTemplate {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(json!({"chat_template": source, "bos_token": "<s>", "eos_token": "</s>"}));
    ChatTemplate::load(dir.path(), &cfg, None)
        .expect("compiles")
        .expect("has a template")
}

#[test]
fn named_templates_use_default_and_files_take_precedence() {
    let dir = tempfile::tempdir().expect("tempdir");
    let named = json!({"chat_template": [
        {"name": "tool_use", "template": "T"},
        {"name": "default", "template": "D{{ bos_token }}"},
    ], "bos_token": "<s>"});
    let t = ChatTemplate::load(dir.path(), &config(named.clone()), None)
        .expect("ok")
        .expect("some");
    assert_eq!(t.render(&json!([]), None, false).expect("render"), "D<s>");

    fs::write(dir.path().join("chat_template.jinja"), "F\n").expect("write");
    let t = ChatTemplate::load(dir.path(), &config(named), None)
        .expect("ok")
        .expect("some");
    // Jinja drops a single trailing newline, as transformers' does.
    assert_eq!(t.render(&json!([]), None, false).expect("render"), "F");

    let no_default = json!({"chat_template": [{"name": "tool_use", "template": "T"}]});
    let empty = tempfile::tempdir().expect("tempdir");
    let err = ChatTemplate::load(empty.path(), &config(no_default), None).expect_err("no default");
    assert!(err.to_string().contains("default"), "{err}");
    assert!(
        ChatTemplate::load(empty.path(), &config(json!({})), None)
            .expect("ok")
            .is_none()
    );
}

#[test]
fn blocks_are_trimmed_and_python_methods_work() {
    let t = template(
        "{% for m in messages %}\n  {% if m.role == 'user' %}\n[{{ m.content.strip() | upper }}]\n  {% endif %}\n{% endfor %}\n{% if add_generation_prompt %}>{% endif %}",
    );
    let messages =
        json!([{"role": "user", "content": "  hi  "}, {"role": "system", "content": "x"}]);
    assert_eq!(t.render(&messages, None, true).expect("render"), "[HI]\n>");
}

#[test]
fn raise_exception_reaches_the_client_message() {
    let t = template("{{ raise_exception('Conversation roles must alternate') }}");
    let err = t.render(&json!([]), None, false).expect_err("raises");
    assert!(
        err.to_string()
            .contains("Conversation roles must alternate"),
        "{err}"
    );
}

#[test]
fn tojson_formats_like_python_json_dumps() {
    let t = template("{{ tools | tojson }}|{{ tools[0] | tojson(indent=2) }}");
    let tools = json!([{"name": "f", "n": 1.0, "ok": true, "list": [], "s": "é<"}]);
    let out = t.render(&json!([]), Some(&tools), false).expect("render");
    let (flat, pretty) = out.split_once('|').expect("separator");
    // Keys in the request's order, as Python's `json.dumps` without `sort_keys` (transformers'
    // `tojson`) writes a dict.
    assert_eq!(
        flat,
        r#"[{"name": "f", "n": 1.0, "ok": true, "list": [], "s": "é<"}]"#
    );
    assert!(pretty.starts_with("{\n  \"name\": \"f\",\n"), "{pretty}");
    assert!(pretty.ends_with("\n}"), "{pretty}");
}

#[test]
fn strftime_now_formats_the_current_date() {
    let t = template("{{ strftime_now('%Y') }}");
    let year = t.render(&json!([]), None, false).expect("render");
    assert_eq!(year.len(), 4, "{year}");
    assert!(year.starts_with("20"), "{year}");
}

/// Tool-calling templates in the three families' styles render a
/// conversation with tools, a call and its result exactly as transformers
/// does (`testdata/expected.json`, recorded by
/// `scripts/record-chat-templates.py`): tools as JSON (`tojson`, indented
/// too), `tools is not none` false without tools, a call's arguments as an
/// object, `selectattr`, slicing, `is iterable` on a string.
#[test]
fn tool_templates_render_as_transformers_does() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/engine/chat_template/testdata");
    let read = |name: &str| -> Json {
        serde_json::from_str(&fs::read_to_string(dir.join(name)).expect(name)).expect(name)
    };
    let (spec, expected) = (read("cases.json"), read("expected.json"));
    let expected = expected.as_object().expect("an object");
    assert_eq!(expected.len(), 3);
    for (name, cases) in expected {
        let t = template(&fs::read_to_string(dir.join(format!("{name}.jinja"))).expect(name));
        for (case, want) in cases.as_object().expect("an object") {
            let c = &spec["cases"][case];
            let tools = c["tools"].as_bool().unwrap().then_some(&spec["tools"]);
            let got = t.render(&c["messages"], tools, true).expect(case);
            assert_eq!(got, want.as_str().unwrap(), "{name}/{case}");
        }
    }
}
