//! The wire format: a JSON body and CloudEvents Kafka binary-mode headers.
//!
//! The body holds the acting principal and the payload's fields; the headers
//! carry the envelope (`ce_id`, `ce_type`, `ce_source`, `ce_time`,
//! `ce_specversion`, `content-type`). Pure: bytes in, typed events out.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value};

use super::{Event, EventData, EventId, Principal, Topic, Validate, ValidationError};

/// `ce_specversion` we write and accept.
pub const SPEC_VERSION: &str = "1.0";
/// The body's media type.
pub const CONTENT_TYPE: &str = "application/json";

/// Header names.
pub mod header {
    /// Event id.
    pub const ID: &str = "ce_id";
    /// Event type.
    pub const TYPE: &str = "ce_type";
    /// Producing component.
    pub const SOURCE: &str = "ce_source";
    /// Event time, RFC 3339.
    pub const TIME: &str = "ce_time";
    /// CloudEvents spec version.
    pub const SPEC_VERSION: &str = "ce_specversion";
    /// Body media type.
    pub const CONTENT_TYPE: &str = "content-type";
}

/// One record as it goes onto Kafka.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WireRecord {
    /// Topic base name.
    pub topic: Topic,
    /// Partitioning key.
    pub key: String,
    /// Headers, in order.
    pub headers: Vec<(String, Vec<u8>)>,
    /// JSON body.
    pub body: Vec<u8>,
}

/// Why a record could not be turned into an event. Such a record is a poison
/// event: it goes to the DLQ with this reason; it never stalls a partition.
#[derive(Debug, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum DecodeError {
    /// A required header is absent.
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    /// A header is not what it should be.
    #[error("bad header {name}: {reason}")]
    BadHeader {
        /// The header.
        name: &'static str,
        /// Why.
        reason: String,
    },
    /// The event type is not known to this version.
    #[error("unknown event type {0:?}")]
    UnknownType(String),
    /// The event type does not belong on this topic.
    #[error("event type {ty} does not belong on {topic}")]
    WrongTopic {
        /// The type.
        ty: String,
        /// The topic it arrived on.
        topic: String,
    },
    /// The body is not the type's JSON.
    #[error("body: {0}")]
    Body(String),
    /// The event violates its contract.
    #[error("invalid: {0}")]
    Invalid(#[from] ValidationError),
}

/// Encodes an event for Kafka. `source` names the producing component.
pub fn encode(event: &Event, source: &str) -> WireRecord {
    let mut body = match event.data.to_json() {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    body.insert(
        "principal".into(),
        serde_json::to_value(&event.principal).expect("principal serializes"),
    );
    let headers = vec![
        (header::ID.into(), event.id.to_string().into_bytes()),
        (
            header::TYPE.into(),
            event.data.type_name().as_bytes().to_vec(),
        ),
        (header::SOURCE.into(), source.as_bytes().to_vec()),
        (
            header::TIME.into(),
            event
                .time
                .to_rfc3339_opts(SecondsFormat::Micros, true)
                .into_bytes(),
        ),
        (
            header::SPEC_VERSION.into(),
            SPEC_VERSION.as_bytes().to_vec(),
        ),
        (
            header::CONTENT_TYPE.into(),
            CONTENT_TYPE.as_bytes().to_vec(),
        ),
    ];
    WireRecord {
        topic: event.topic(),
        key: event.key(),
        headers,
        body: serde_json::to_vec(&Value::Object(body)).expect("json serializes"),
    }
}

/// Decodes and validates a record. `topic` is the base name it arrived on
/// (checked against the type), when known.
pub fn decode<'a, H>(headers: H, body: &[u8], topic: Option<Topic>) -> Result<Event, DecodeError>
where
    H: IntoIterator<Item = (&'a str, &'a [u8])>,
{
    let (mut id, mut ty, mut time, mut spec) = (None, None, None, None);
    for (k, v) in headers {
        match k {
            header::ID => id = Some(v),
            header::TYPE => ty = Some(v),
            header::TIME => time = Some(v),
            header::SPEC_VERSION => spec = Some(v),
            _ => {}
        }
    }
    let text = |name: &'static str, v: Option<&'a [u8]>| -> Result<&'a str, DecodeError> {
        let v = v.ok_or(DecodeError::MissingHeader(name))?;
        std::str::from_utf8(v).map_err(|_| DecodeError::BadHeader {
            name,
            reason: "not UTF-8".into(),
        })
    };
    let spec = text(header::SPEC_VERSION, spec)?;
    if spec != SPEC_VERSION {
        return Err(DecodeError::BadHeader {
            name: header::SPEC_VERSION,
            reason: format!("unsupported {spec:?}"),
        });
    }
    let id = EventId::parse(text(header::ID, id)?).map_err(|e| DecodeError::BadHeader {
        name: header::ID,
        reason: e.reason,
    })?;
    let ty = text(header::TYPE, ty)?;
    let time: DateTime<Utc> = DateTime::parse_from_rfc3339(text(header::TIME, time)?)
        .map_err(|e| DecodeError::BadHeader {
            name: header::TIME,
            reason: e.to_string(),
        })?
        .with_timezone(&Utc);
    let ty_topic =
        EventData::topic_of(ty).ok_or_else(|| DecodeError::UnknownType(ty.to_owned()))?;
    if let Some(topic) = topic
        && topic != ty_topic
    {
        return Err(DecodeError::WrongTopic {
            ty: ty.to_owned(),
            topic: topic.name().into(),
        });
    }
    // One pass into the typed body; a body it refuses is parsed again the
    // slower way, through a JSON tree, which decides (and names what is
    // wrong).
    let (principal, data) = match EventData::body_from_slice(ty, body) {
        Ok(Some(parsed)) => parsed,
        Ok(None) => return Err(DecodeError::UnknownType(ty.to_owned())),
        Err(_) => body_of_tree(ty, body)?,
    };
    let event = Event {
        id,
        time,
        principal,
        data,
    };
    event.validate()?;
    Ok(event)
}

/// A body of the event type `ty` read through a JSON tree.
fn body_of_tree(ty: &str, body: &[u8]) -> Result<(Principal, EventData), DecodeError> {
    let mut body: Map<String, Value> =
        serde_json::from_slice(body).map_err(|e| DecodeError::Body(e.to_string()))?;
    let principal: Principal = serde_json::from_value(
        body.remove("principal")
            .ok_or_else(|| DecodeError::Body("missing field `principal`".into()))?,
    )
    .map_err(|e| DecodeError::Body(format!("principal: {e}")))?;
    let data = EventData::from_json(ty, Value::Object(body))
        .map_err(|e| DecodeError::Body(e.to_string()))?
        .ok_or_else(|| DecodeError::UnknownType(ty.to_owned()))?;
    Ok((principal, data))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{PollId, UserId, VoteCast};

    fn vote() -> Event {
        Event {
            id: EventId(uuid::Uuid::now_v7()),
            time: DateTime::parse_from_rfc3339("2026-01-02T03:04:05.123456Z")
                .unwrap()
                .with_timezone(&Utc),
            principal: Principal {
                id: UserId::parse("alice").unwrap(),
                name: "Alice".into(),
                avatar_url: None,
            },
            data: EventData::VoteCast(VoteCast {
                poll_id: PollId(uuid::Uuid::now_v7()),
                question_ids: vec![1],
            }),
        }
    }

    fn hdrs(r: &WireRecord) -> Vec<(&str, &[u8])> {
        r.headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect()
    }

    #[test]
    fn round_trips() {
        let e = vote();
        let r = encode(&e, "test");
        assert_eq!(r.topic, Topic::Polls);
        assert_eq!(r.key, e.key());
        assert_eq!(decode(hdrs(&r), &r.body, Some(Topic::Polls)).unwrap(), e);
    }

    #[test]
    fn poison_records_are_explained() {
        let e = vote();
        let r = encode(&e, "test");
        assert!(matches!(
            decode(hdrs(&r), b"{not json", None),
            Err(DecodeError::Body(_))
        ));
        assert!(matches!(
            decode(hdrs(&r), &r.body, Some(Topic::Feed)),
            Err(DecodeError::WrongTopic { .. })
        ));
        let no_type: Vec<_> = hdrs(&r)
            .into_iter()
            .filter(|(k, _)| *k != "ce_type")
            .collect();
        assert_eq!(
            decode(no_type, &r.body, None),
            Err(DecodeError::MissingHeader("ce_type"))
        );
        let body = br#"{"poll_id":"0190a0a0-0000-7000-8000-000000000000","question_ids":[],"principal":{"id":"a","name":"A"}}"#;
        assert!(matches!(
            decode(hdrs(&r), body, None),
            Err(DecodeError::Invalid(_))
        ));
        // Forward compatibility: a field added by a newer producer is ignored.
        let body = br#"{"poll_id":"0190a0a0-0000-7000-8000-000000000000","question_ids":[1],"extra":1,"principal":{"id":"a","name":"A"}}"#;
        assert!(decode(hdrs(&r), body, None).is_ok());
        // The reasons name the principal's faults, as the JSON tree did.
        let body = br#"{"poll_id":"0190a0a0-0000-7000-8000-000000000000","question_ids":[1]}"#;
        assert_eq!(
            decode(hdrs(&r), body, None),
            Err(DecodeError::Body("missing field `principal`".into()))
        );
        let body = br#"{"poll_id":"0190a0a0-0000-7000-8000-000000000000","question_ids":[1],"principal":7}"#;
        assert!(matches!(
            decode(hdrs(&r), body, None),
            Err(DecodeError::Body(m)) if m.starts_with("principal: ")
        ));
        let body = br#"{"poll_id":"0190a0a0-0000-7000-8000-000000000000","question_ids":"x","principal":{"id":"a","name":"A"}}"#;
        assert!(matches!(
            decode(hdrs(&r), body, None),
            Err(DecodeError::Body(m)) if m.contains("invalid type")
        ));
    }

    /// The typed one-pass body decodes what `encode` wrote to the same
    /// principal and payload as the JSON tree does.
    #[test]
    fn the_typed_pass_and_the_tree_agree() {
        let e = vote();
        let r = encode(&e, "test");
        let ty = e.data.type_name();
        let (p1, d1) = EventData::body_from_slice(ty, &r.body).unwrap().unwrap();
        let (p2, d2) = body_of_tree(ty, &r.body).unwrap();
        assert_eq!((p1, d1), (p2, d2));
    }
}
