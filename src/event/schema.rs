//! JSON Schemas of event bodies, generated from the Rust types, and the
//! additive-evolution check that keeps `schemas/` honest.
//!
//! `schemas/{Type}.json` is committed. A test regenerates every schema and
//! fails when a file drifts from the types; when it drifted, it also says
//! whether the change is additive (new optional fields only) or breaking.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{EventData, Principal};

/// An event body as it lies on the wire: the principal beside the payload.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct Body<T> {
    /// Who acted (stamped by the ingest edge).
    pub principal: Principal,
    /// The payload's fields.
    #[serde(flatten)]
    pub data: T,
}

/// Every event type's body schema, keyed by `ce_type`, as pretty JSON values.
pub fn generate() -> BTreeMap<String, Value> {
    EventData::payload_schemas()
        .into_iter()
        .map(|(name, schema)| {
            let mut v = schema.to_value();
            if let Value::Object(m) = &mut v {
                m.insert("title".into(), Value::String(name.into()));
                m.insert(
                    "$id".into(),
                    Value::String(format!("https://atelier.dev/schemas/{name}.json")),
                );
                if let Some(topic) = EventData::topic_of(name) {
                    m.insert("x-topic".into(), Value::String(topic.name().into()));
                }
            }
            (name.to_string(), v)
        })
        .collect()
}

/// Renders a schema the way it is stored in `schemas/`.
pub fn render(v: &Value) -> String {
    let mut s = serde_json::to_string_pretty(v).expect("json renders");
    s.push('\n');
    s
}

/// Lists why `new` is not an additive evolution of `old` (empty: it is).
///
/// Additive means: every property of every object keeps its schema, the set
/// of required properties is unchanged, and new properties are optional.
/// Documentation (`description`, `title`) may change freely.
pub fn breaking_changes(old: &Value, new: &Value) -> Vec<String> {
    let mut out = Vec::new();
    compare(&strip_docs(old), &strip_docs(new), "$", &mut out);
    out
}

fn strip_docs(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !matches!(k.as_str(), "description" | "title" | "$id"))
                .map(|(k, v)| (k.clone(), strip_docs(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(strip_docs).collect()),
        other => other.clone(),
    }
}

fn compare(old: &Value, new: &Value, path: &str, out: &mut Vec<String>) {
    let (Value::Object(o), Value::Object(n)) = (old, new) else {
        if old != new {
            out.push(format!("{path}: changed"));
        }
        return;
    };
    let required = |m: &serde_json::Map<String, Value>| -> Vec<String> {
        let mut r: Vec<String> = m
            .get("required")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        r.sort();
        r
    };
    let (ro, rn) = (required(o), required(n));
    for r in &rn {
        if !ro.contains(r) {
            out.push(format!("{path}.{r}: became required"));
        }
    }
    for r in &ro {
        if !rn.contains(r) {
            out.push(format!(
                "{path}.{r}: no longer required (consumers rely on it)"
            ));
        }
    }
    let keys: std::collections::BTreeSet<&String> = o.keys().chain(n.keys()).collect();
    for key in keys {
        if key == "required" {
            continue;
        }
        let here = format!("{path}.{key}");
        match (o.get(key), n.get(key)) {
            (Some(a), Some(b)) if key == "properties" || key == "$defs" => {
                let (Value::Object(a), Value::Object(b)) = (a, b) else {
                    compare(a, b, &here, out);
                    continue;
                };
                for (name, sa) in a {
                    match b.get(name) {
                        Some(sb) => compare(sa, sb, &format!("{here}.{name}"), out),
                        None => out.push(format!("{here}.{name}: removed")),
                    }
                }
            }
            (Some(a), Some(b)) => compare(a, b, &here, out),
            (Some(_), None) => out.push(format!("{here}: removed")),
            (None, Some(_)) => {
                if key != "properties" && key != "$defs" {
                    out.push(format!("{here}: added constraint"));
                }
            }
            (None, None) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(props: Value, required: Value) -> Value {
        json!({"type": "object", "properties": props, "required": required})
    }

    #[test]
    fn optional_additions_are_additive() {
        let old = obj(json!({"a": {"type": "string"}}), json!(["a"]));
        let new = obj(
            json!({"a": {"type": "string", "description": "doc"}, "b": {"type": "integer"}}),
            json!(["a"]),
        );
        assert_eq!(breaking_changes(&old, &new), Vec::<String>::new());
    }

    #[test]
    fn removals_retypes_and_new_required_fields_break() {
        let old = obj(
            json!({"a": {"type": "string"}, "b": {"type": "integer"}}),
            json!(["a"]),
        );
        let removed = obj(json!({"a": {"type": "string"}}), json!(["a"]));
        assert_eq!(
            breaking_changes(&old, &removed),
            vec!["$.properties.b: removed"]
        );
        let retyped = obj(
            json!({"a": {"type": "integer"}, "b": {"type": "integer"}}),
            json!(["a"]),
        );
        assert!(!breaking_changes(&old, &retyped).is_empty());
        let required = obj(
            json!({"a": {"type": "string"}, "b": {"type": "integer"}}),
            json!(["a", "b"]),
        );
        assert_eq!(
            breaking_changes(&old, &required),
            vec!["$.b: became required"]
        );
    }

    #[test]
    fn every_schema_requires_a_principal() {
        for (name, schema) in generate() {
            let req = schema["required"].as_array().unwrap();
            assert!(req.iter().any(|r| r == "principal"), "{name}");
        }
    }
}
