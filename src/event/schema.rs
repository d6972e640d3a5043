//! JSON Schemas of event bodies, generated from the Rust types, and the
//! additive-evolution check that keeps `schemas/` honest.
//!
//! `schemas/{Type}.json` is committed. A test regenerates every schema and
//! fails when a file drifts from the types; when it drifted, it also says
//! whether the change is additive (new optional fields only) or breaking.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::de::value::BorrowedStrDeserializer;
use serde::de::{self, DeserializeSeed, Deserializer, IntoDeserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{EventData, Principal};

/// An event body as it lies on the wire: the principal beside the payload.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Body<T> {
    /// Who acted (stamped by the ingest edge).
    pub principal: Principal,
    /// The payload's fields.
    #[serde(flatten)]
    pub data: T,
}

/// As `#[serde(flatten)]` would read it, in one pass and without buffering
/// the payload's fields: the payload reads the body's map itself, and the
/// `principal` entry is taken out of it on the way.
impl<'de, T: Deserialize<'de>> Deserialize<'de> for Body<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(BodyVisitor(std::marker::PhantomData))
    }
}

struct BodyVisitor<T>(std::marker::PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for BodyVisitor<T> {
    type Value = Body<T>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an event body (an object)")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Body<T>, A::Error> {
        let mut principal = None;
        let data = T::deserialize(Payload {
            map,
            principal: &mut principal,
        })?;
        let principal =
            principal.ok_or_else(|| <A::Error as de::Error>::missing_field("principal"))?;
        Ok(Body { principal, data })
    }
}

/// The body's map, seen by the payload without its `principal` entry.
struct Payload<'p, A> {
    map: A,
    principal: &'p mut Option<Principal>,
}

impl<'de, A: MapAccess<'de>> Deserializer<'de> for Payload<'_, A> {
    type Error = A::Error;

    fn deserialize_any<V: Visitor<'de>>(self, v: V) -> Result<V::Value, A::Error> {
        v.visit_map(self)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map struct enum identifier ignored_any
    }
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Payload<'_, A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        loop {
            let Some(key) = self.map.next_key::<Key<'de>>()? else {
                return Ok(None);
            };
            let key = match key {
                Key::Borrowed("principal") => None,
                Key::Owned(k) if k == "principal" => None,
                k => Some(k),
            };
            match key {
                None if self.principal.is_some() => {
                    return Err(<A::Error as de::Error>::duplicate_field("principal"));
                }
                None => *self.principal = Some(self.map.next_value()?),
                Some(Key::Borrowed(k)) => {
                    return seed.deserialize(BorrowedStrDeserializer::new(k)).map(Some);
                }
                Some(Key::Owned(k)) => return seed.deserialize(k.into_deserializer()).map(Some),
            }
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        self.map.next_value_seed(seed)
    }
}

/// A map key, borrowed from the input when it has no escapes.
enum Key<'de> {
    Borrowed(&'de str),
    Owned(String),
}

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a field name")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Key<'de>, E> {
                Ok(Key::Borrowed(s))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Key<'de>, E> {
                Ok(Key::Owned(s.to_owned()))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Key<'de>, E> {
                Ok(Key::Owned(s))
            }
        }
        d.deserialize_str(V)
    }
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

    /// A payload with what the event types use: a flattened part, an
    /// internally tagged enum, a list, an optional field.
    #[derive(Debug, PartialEq, Deserialize)]
    struct Sample {
        id: u32,
        #[serde(flatten)]
        inner: Inner,
        content: Kind,
        list: Vec<u16>,
    }

    #[derive(Debug, PartialEq, Deserialize)]
    struct Inner {
        slot: u8,
        #[serde(default)]
        note: Option<String>,
    }

    #[derive(Debug, PartialEq, Deserialize)]
    #[serde(tag = "kind", rename_all = "snake_case")]
    enum Kind {
        Post { title: String },
        Game { name: String },
    }

    /// What `#[serde(flatten)]` reads, the reference.
    #[derive(Debug, Deserialize)]
    struct Flattened<T> {
        principal: Principal,
        #[serde(flatten)]
        data: T,
    }

    #[test]
    fn the_one_pass_body_reads_what_flatten_reads() {
        let p = r#""principal":{"id":"alice","name":"Alice"}"#;
        let rest = r#""id":7,"slot":2,"content":{"kind":"post","title":"T"},"list":[1,2]"#;
        let bodies = [
            // Accepted: the principal anywhere, escaped names, unknown
            // fields (nested ones too), an optional field set.
            format!("{{{p},{rest}}}"),
            format!("{{{rest},{p}}}"),
            format!(r#"{{"id":7,{p},"slot":2,"content":{{"title":"T","kind":"post"}},"list":[]}}"#),
            r#"{"princip\u0061l":{"id":"bob","name":"B"},"i\u0064":8,"slot":3,"content":{"kind":"game","name":"G"},"list":[3]}"#
                .to_owned(),
            format!(r#"{{{p},{rest},"extra":{{"principal":1,"id":[]}},"note":"n"}}"#),
            // Refused: no principal, two, a bad one, a payload field
            // missing or of the wrong type, an unknown tag, not an object.
            format!("{{{rest}}}"),
            format!("{{{p},{rest},{p}}}"),
            format!(r#"{{"principal":{{"id":"alice"}},{rest}}}"#),
            format!(r#"{{{p},"id":7,"content":{{"kind":"post","title":"T"}},"list":[]}}"#),
            format!(
                r#"{{{p},"id":"7","slot":2,"content":{{"kind":"post","title":"T"}},"list":[]}}"#
            ),
            format!(r#"{{{p},"id":7,"slot":2,"content":{{"kind":"poll"}},"list":[]}}"#),
            "[]".to_owned(),
            format!("{{{p},{rest}"),
        ];
        let mut accepted = 0;
        for b in &bodies {
            let ours = serde_json::from_str::<Body<Sample>>(b).map(|b| (b.principal, b.data));
            let reference =
                serde_json::from_str::<Flattened<Sample>>(b).map(|b| (b.principal, b.data));
            match (ours, reference) {
                (Ok(a), Ok(r)) => {
                    assert_eq!(a, r, "{b}");
                    accepted += 1;
                }
                (Err(_), Err(_)) => {}
                (a, r) => panic!("{b}: one pass {a:?}, flatten {r:?}"),
            }
        }
        assert_eq!(accepted, 5, "the accepted bodies are accepted");
    }

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
