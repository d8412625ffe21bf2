//! Defines canonical JSON: object keys sorted at every level, compact, no trailing newline.
//!
//! Image documents are hashed, so their bytes must not depend on HashMap iteration order (which
//! `oci-spec` uses for labels and ports) or on whether some dependency turned on serde_json's
//! `preserve_order` feature.

use serde::Serialize;
use serde_json::{Map, Value};

/// Serializes `value` with sorted keys.
pub fn canonical<T: Serialize>(value: &T) -> serde_json::Result<Vec<u8>> {
    let value = sort_keys(serde_json::to_value(value)?);
    serde_json::to_vec(&value)
}

/// Returns `value` with every object's keys in byte order.
pub fn sort_keys(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            let mut sorted = Map::new();
            for (k, v) in entries {
                sorted.insert(k, sort_keys(v));
            }
            Value::Object(sorted)
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sort_keys).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_keys_come_out_sorted() {
        let mut inner = std::collections::HashMap::new();
        for k in ["zeta", "alpha", "mid"] {
            inner.insert(k, 1);
        }
        let doc = serde_json::json!({"b": inner, "a": [{"y": 1, "x": 2}]});
        let bytes = canonical(&doc).unwrap();
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            r#"{"a":[{"x":2,"y":1}],"b":{"alpha":1,"mid":1,"zeta":1}}"#
        );
    }
}
