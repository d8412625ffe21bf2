use serde_json::{Value, json};

use super::*;

fn tools() -> Value {
    json!([
        {"type": "function", "function": {"name": "get_weather", "description": "Weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                "required": ["city"]}}},
        {"type": "function", "function": {"name": "now"}},
    ])
}

fn request(choice: Value) -> ToolRequest {
    ToolRequest::parse(Some(tools()), Some(choice), None)
        .unwrap()
        .unwrap()
}

fn auto(parser: ToolCallParser) -> ToolOutput {
    request(json!("auto"))
        .output(Some(parser))
        .unwrap()
        .unwrap()
}

/// Feeds `text` in pieces of `step` characters, then ends it: what the
/// client would reassemble, and whether a tool was called.
fn run(output: &ToolOutput, text: &str, step: usize) -> (Option<String>, Vec<ToolCall>, bool) {
    let mut s = output.stream();
    let chars: Vec<char> = text.chars().collect();
    let mut pieces = Vec::new();
    for chunk in chars.chunks(step) {
        pieces.extend(s.push(&chunk.iter().collect::<String>()));
    }
    pieces.extend(s.finish());
    let (content, calls) = gather(pieces);
    (content, calls, s.called())
}

/// Every piece size reads the same as the whole text at once.
fn read(output: &ToolOutput, text: &str) -> (Option<String>, Vec<(String, Value)>) {
    let (content, calls, called) = run(output, text, text.len().max(1));
    assert_eq!(called, !calls.is_empty());
    for step in [1, 2, 3, 7] {
        let (c, k, _) = run(output, text, step);
        assert_eq!(c, content, "step {step}");
        let names = |calls: &[ToolCall]| -> Vec<(String, String)> {
            calls
                .iter()
                .map(|c| (c.function.name.clone(), c.function.arguments.clone()))
                .collect()
        };
        assert_eq!(names(&k), names(&calls), "step {step}");
    }
    let calls = calls
        .into_iter()
        .map(|c| {
            assert_eq!(c.kind, "function");
            (
                c.function.name,
                serde_json::from_str(&c.function.arguments).expect("arguments are JSON"),
            )
        })
        .collect();
    (content, calls)
}

#[test]
fn tool_choice_is_checked() {
    let err = |tools: Option<Value>, choice: Option<Value>| -> String {
        match ToolRequest::parse(tools, choice, None) {
            Err(ApiError::InvalidRequest { message, param }) => {
                format!("{}: {message}", param.unwrap_or_default())
            }
            other => panic!("{other:?}"),
        }
    };
    assert!(err(Some(tools()), Some(json!("sometimes"))).starts_with("tool_choice: "));
    let missing = err(
        Some(tools()),
        Some(json!({"type": "function", "function": {"name": "nope"}})),
    );
    assert!(missing.contains("`nope`"), "{missing}");
    assert!(err(None, Some(json!("required"))).starts_with("tool_choice: "));
    let kind = err(
        Some(json!([{"type": "code_interpreter", "function": {"name": "x"}}])),
        None,
    );
    assert!(
        kind.starts_with("tools: ") && kind.contains("code_interpreter"),
        "{kind}"
    );
    let dup = json!([{"type": "function", "function": {"name": "a"}},
        {"type": "function", "function": {"name": "a"}}]);
    assert!(err(Some(dup), None).contains("not unique"));
    let unknown = json!([{"type": "function", "function": {"name": "a", "returns": {}}}]);
    assert!(err(Some(unknown), None).contains("returns"));
    let params = json!([{"type": "function", "function": {"name": "a", "parameters": [1]}}]);
    assert!(err(Some(params), None).contains("parameters"));
    // `none` without tools is no tools; tools without a choice default to auto.
    assert_eq!(
        ToolRequest::parse(None, Some(json!("none")), None).unwrap(),
        None
    );
    let default = ToolRequest::parse(Some(tools()), None, None)
        .unwrap()
        .unwrap();
    assert_eq!(default.choice, ToolChoice::Auto);
    assert_eq!(
        default.definitions,
        tools(),
        "the template gets them as sent"
    );
}

#[test]
fn auto_without_a_known_format_is_refused_and_none_reads_nothing() {
    match request(json!("auto")).output(None) {
        Err(ApiError::InvalidRequest { message, param }) => {
            assert_eq!(param.as_deref(), Some("tool_choice"));
            assert!(message.contains("--tool-call-parser"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(request(json!("none")).output(None).unwrap(), None);
    assert_eq!(request(json!("none")).constraint(), None);
    assert_eq!(request(json!("auto")).constraint(), None);
}

#[test]
fn forced_choices_are_grammar_constraints() {
    let named = request(json!({"type": "function", "function": {"name": "get_weather"}}));
    assert_eq!(
        named.constraint(),
        Some(ConstraintSpec::JsonSchema(
            tools()[0]["function"]["parameters"].clone()
        ))
    );
    let Some(ConstraintSpec::JsonSchema(required)) = request(json!("required")).constraint() else {
        panic!()
    };
    assert_eq!(required["type"], "array");
    assert_eq!(required["minItems"], 1);
    assert_eq!(required.get("maxItems"), None);
    let branches = required["items"]["anyOf"].as_array().unwrap();
    assert_eq!(branches.len(), 2);
    assert_eq!(
        branches[0]["properties"]["name"]["enum"],
        json!(["get_weather"])
    );
    // A function without parameters takes an empty object.
    assert_eq!(
        branches[1]["properties"]["parameters"],
        json!({"type": "object", "properties": {}})
    );
    let single = ToolRequest::parse(Some(tools()), Some(json!("required")), Some(false))
        .unwrap()
        .unwrap();
    let Some(ConstraintSpec::JsonSchema(single)) = single.constraint() else {
        panic!()
    };
    assert_eq!(single["maxItems"], 1);
    // `$defs` of the parameter schemas move to the top, where `#/$defs/…` now resolves.
    let with_defs = json!([{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"p": {"$ref": "#/$defs/P"}},
        "$defs": {"P": {"type": "integer"}}}}}]);
    let r = ToolRequest::parse(Some(with_defs), Some(json!("required")), None)
        .unwrap()
        .unwrap();
    let Some(ConstraintSpec::JsonSchema(s)) = r.constraint() else {
        panic!()
    };
    assert_eq!(s["$defs"], json!({"P": {"type": "integer"}}));
}

#[test]
fn named_output_is_the_arguments_streamed_as_they_come() {
    let out = request(json!({"type": "function", "function": {"name": "get_weather"}}))
        .output(None)
        .unwrap()
        .unwrap();
    let mut s = out.stream();
    let first = s.push("{\"city\"");
    match &first[..] {
        [
            ToolDelta::Call {
                index: 0,
                id,
                name,
                arguments,
            },
            ToolDelta::Arguments { index: 0, text },
        ] => {
            assert!(id.starts_with("call_") && id.len() == 29, "{id}");
            assert_eq!((name.as_str(), arguments.as_str()), ("get_weather", ""));
            assert_eq!(text, "{\"city\"");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        s.push(": \"Oslo\"}"),
        vec![ToolDelta::Arguments {
            index: 0,
            text: ": \"Oslo\"}".into()
        }]
    );
    assert!(s.finish().is_empty() && s.called());
    let (content, calls) = read(&out, "{\"city\": \"Oslo\"}");
    assert_eq!(content, None, "a call alone has null content");
    assert_eq!(calls, vec![("get_weather".into(), json!({"city": "Oslo"}))]);
}

#[test]
fn required_output_yields_each_call_once_its_object_closes() {
    let out = request(json!("required")).output(None).unwrap().unwrap();
    let text = r#"[{"name": "get_weather", "parameters": {"city": "a}\"b{"}}, {"name": "now", "parameters": {}}]"#;
    let (content, calls) = read(&out, text);
    assert_eq!(content, None);
    assert_eq!(
        calls,
        vec![
            ("get_weather".into(), json!({"city": "a}\"b{"})),
            ("now".into(), json!({})),
        ]
    );
    // The first call goes out before the array ends.
    let mut s = out.stream();
    let cut = text.find(", {\"name\": \"now\"").unwrap();
    assert!(matches!(
        &s.push(&text[..cut])[..],
        [ToolDelta::Call { index: 0, .. }]
    ));
    assert!(matches!(
        &s.push(&text[cut..])[..],
        [ToolDelta::Call { index: 1, .. }]
    ));
    // Cut off by max_tokens before any call closed: the text, not nothing.
    let (content, calls, called) = run(&out, "[{\"name\": \"now\", \"param", 4);
    assert_eq!(content.as_deref(), Some("[{\"name\": \"now\", \"param"));
    assert!(calls.is_empty() && !called);
    // parallel_tool_calls: false keeps the first.
    let single = ToolRequest::parse(Some(tools()), Some(json!("required")), Some(false))
        .unwrap()
        .unwrap()
        .output(None)
        .unwrap()
        .unwrap();
    assert_eq!(read(&single, text).1.len(), 1);
}

#[test]
fn hermes_calls_after_text_and_between_whitespace() {
    let out = auto(ToolCallParser::Hermes);
    let text = "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"now\", \"arguments\": {}}\n</tool_call>\n";
    let (content, calls) = read(&out, text);
    assert_eq!(content.as_deref(), Some("Let me check.\n"));
    assert_eq!(
        calls,
        vec![
            ("get_weather".into(), json!({"city": "Paris"})),
            ("now".into(), json!({})),
        ]
    );
    // Plain text passes through; a `<` that never becomes the tag is released at the end.
    assert_eq!(read(&out, "a < b <tool").0.as_deref(), Some("a < b <tool"));
    assert!(read(&out, "a < b").1.is_empty());
    // An unclosed last call is read (as vLLM does); a broken one is text.
    let (_, calls) = read(&out, "<tool_call>{\"name\": \"now\", \"arguments\": {}}");
    assert_eq!(calls, vec![("now".into(), json!({}))]);
    let broken = "<tool_call>{\"name\": \"now\", \"argu</tool_call>";
    let (content, calls) = read(&out, broken);
    assert_eq!((content.as_deref(), calls.len()), (Some(broken), 0));
    // Arguments written as a JSON string are the object they spell.
    let (_, calls) = read(
        &out,
        "<tool_call>{\"name\": \"now\", \"arguments\": \"{\\\"a\\\": 1}\"}</tool_call>",
    );
    assert_eq!(calls, vec![("now".into(), json!({"a": 1}))]);
}

#[test]
fn llama3_json_calls_are_the_whole_answer() {
    let out = auto(ToolCallParser::Llama3Json);
    let text = "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Rome\"}}; {\"name\": \"now\", \"parameters\": {}}";
    let (content, calls) = read(&out, text);
    assert_eq!(content, None);
    assert_eq!(
        calls,
        vec![
            ("get_weather".into(), json!({"city": "Rome"})),
            ("now".into(), json!({})),
        ]
    );
    let tagged = read(
        &out,
        "<|python_tag|>{\"name\": \"now\", \"arguments\": {\"x\": [1, 2]}}",
    );
    assert_eq!(tagged.1, vec![("now".into(), json!({"x": [1, 2]}))]);
    assert_eq!(
        read(&out, "It is sunny {really}.").0.as_deref(),
        Some("It is sunny {really}.")
    );
    let not_a_call = "{\"answer\": 42}";
    assert_eq!(read(&out, not_a_call), (Some(not_a_call.into()), vec![]));
}

#[test]
fn mistral_calls_follow_the_marker() {
    let out = auto(ToolCallParser::Mistral);
    assert!(out.keep_special_tokens(), "the marker is a special token");
    let text = "Sure. [TOOL_CALLS] [{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Lyon\"}}, {\"name\": \"now\", \"arguments\": {}}]";
    let (content, calls) = read(&out, text);
    assert_eq!(content.as_deref(), Some("Sure. "));
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0], ("get_weather".into(), json!({"city": "Lyon"})));
    // Tokenizer v11's spelling, one marker per call.
    let v11 = "[TOOL_CALLS]get_weather[ARGS]{\"city\": \"Nice\"}[TOOL_CALLS]now{}";
    assert_eq!(
        read(&out, v11).1,
        vec![
            ("get_weather".into(), json!({"city": "Nice"})),
            ("now".into(), json!({})),
        ]
    );
    let mut s = out.stream();
    let pieces = [s.push("[TOOL_CALLS]now{}"), s.finish()].concat();
    match &pieces[..] {
        [ToolDelta::Call { id, .. }] => {
            assert_eq!(id.len(), 9, "{id}");
            assert!(id.chars().all(|c| c.is_ascii_alphanumeric()), "{id}");
        }
        other => panic!("{other:?}"),
    }
    assert!(!auto(ToolCallParser::Hermes).keep_special_tokens());
}

#[test]
fn formats_are_recognised_from_templates() {
    let hermes = "{%- for tool in tools %}{{ tool | tojson }}{% endfor %}<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>";
    assert_eq!(ToolCallParser::detect(hermes), Some(ToolCallParser::Hermes));
    let mistral = "{%- if message.tool_calls %}[TOOL_CALLS][{% endif %}";
    assert_eq!(
        ToolCallParser::detect(mistral),
        Some(ToolCallParser::Mistral)
    );
    let llama = "<|start_header_id|>assistant<|end_header_id|>\n\n{\"name\": \"' + tool_call.name + '\", \"parameters\": ' + tool_call.arguments | tojson";
    assert_eq!(
        ToolCallParser::detect(llama),
        Some(ToolCallParser::Llama3Json)
    );
    let chatml = "{% for m in messages %}{{ '<|im_start|>' + m['role'] }}{% endfor %}";
    assert_eq!(ToolCallParser::detect(chatml), None);
    // The tool templates the renderer is checked against transformers with.
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/engine/chat_template/testdata");
    for (file, parser) in [
        ("hermes.jinja", ToolCallParser::Hermes),
        ("llama3_json.jinja", ToolCallParser::Llama3Json),
        ("mistral.jinja", ToolCallParser::Mistral),
    ] {
        let source = std::fs::read_to_string(dir.join(file)).expect(file);
        assert_eq!(ToolCallParser::detect(&source), Some(parser), "{file}");
        assert_eq!(parser.to_string(), file.trim_end_matches(".jinja"));
    }
}

#[test]
fn call_ids_are_unique() {
    let ids: std::collections::HashSet<String> = (0..1000).map(|_| call_id(false)).collect();
    assert_eq!(ids.len(), 1000);
}
