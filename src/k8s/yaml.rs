//! Writes JSON values as block-style YAML, the shape `kubectl` users read and diff.
//!
//! Hand-written rather than a YAML crate (serde_yaml is unmaintained): the objects are plain
//! JSON trees, so all that is needed is indentation and quoting. A string is written bare only
//! when no YAML 1.1 or 1.2 reader could take it for anything else (PyYAML, which kubectl-era
//! tools use, still reads `on`/`yes` as booleans); every other string is written as a JSON
//! string, which is a valid YAML double-quoted scalar.

use serde_json::Value;

/// `values` as one multi-document YAML stream, each document opened by `---`.
pub fn documents(values: &[Value]) -> String {
    let mut out = String::new();
    for value in values {
        out.push_str("---\n");
        match value {
            Value::Object(m) if !m.is_empty() => block(&mut out, value, 0, false),
            Value::Array(a) if !a.is_empty() => block(&mut out, value, 0, false),
            scalar => {
                out.push_str(&inline(scalar));
                out.push('\n');
            }
        }
    }
    out
}

/// A non-empty mapping or sequence at `indent`; with `continued`, its first line goes where the
/// cursor is (after a `- `).
fn block(out: &mut String, value: &Value, indent: usize, mut continued: bool) {
    let mut pad = |out: &mut String| {
        if !continued {
            out.push_str(&" ".repeat(indent));
        }
        continued = false;
    };
    match value {
        Value::Object(map) => {
            // Sorted here, not by serde_json: whether its maps keep insertion order depends
            // on a feature any crate in the build may turn on, and the bytes must not.
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            for (key, child) in entries {
                pad(out);
                out.push_str(&string(key));
                out.push(':');
                if is_block(child) {
                    out.push('\n');
                    block(out, child, indent + 2, false);
                } else {
                    out.push(' ');
                    out.push_str(&inline(child));
                    out.push('\n');
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                pad(out);
                out.push_str("- ");
                if is_block(item) {
                    block(out, item, indent + 2, true);
                } else {
                    out.push_str(&inline(item));
                    out.push('\n');
                }
            }
        }
        scalar => {
            pad(out);
            out.push_str(&inline(scalar));
            out.push('\n');
        }
    }
}

fn is_block(value: &Value) -> bool {
    match value {
        Value::Object(m) => !m.is_empty(),
        Value::Array(a) => !a.is_empty(),
        _ => false,
    }
}

/// A scalar, or an empty collection, on one line.
fn inline(value: &Value) -> String {
    match value {
        Value::String(s) => string(s),
        Value::Object(_) => "{}".into(),
        Value::Array(_) => "[]".into(),
        other => other.to_string(),
    }
}

/// Words YAML 1.1 reads as booleans or null (case as the 1.1 types list them).
const RESERVED: [&str; 11] = [
    "y", "n", "yes", "no", "on", "off", "true", "false", "null", "nan", "inf",
];

fn string(s: &str) -> String {
    let mut chars = s.chars();
    let bare = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '/')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '/' | '-'))
        && !RESERVED.contains(&s.to_ascii_lowercase().as_str());
    if bare {
        s.to_string()
    } else {
        serde_json::Value::String(s.to_string()).to_string()
    }
}
