//! The contracts: every event type, its envelope, validation, wire encoding
//! and schema generation. Pure: no I/O, no clock, no randomness (ids and
//! times are stamped by the ingest edge and arrive with the event).

mod ids;
mod payload;
pub mod schema;
pub mod wire;

pub use ids::*;
pub use payload::*;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A field that failed validation, with a reason a person can act on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize)]
#[error("{field}: {reason}")]
pub struct ValidationError {
    /// The offending field (dotted path).
    pub field: String,
    /// Why it was rejected.
    pub reason: String,
}

impl ValidationError {
    /// A new error for `field`.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Checks an event's own invariants (lengths, counts, ranges), independent of
/// any state. State-dependent rules (unknown poll, poll closed) live in folds.
pub trait Validate {
    /// `Ok` when the value may be appended to the log.
    fn validate(&self) -> Result<(), ValidationError>;
}

/// What every free-text field admits: no control characters but tab and
/// newline (what [`check_len`] enforces). Request schemas carry it as their
/// `pattern`.
pub const TEXT: &str = r"^[^\u0000-\u0008\u000B-\u001F\u007F-\u009F]*$";

/// Longest one-line text (a poll's head, a question, a title, a name).
pub const LINE_MAX: usize = 200;
/// Longest poll description.
pub const MESSAGE_MAX: usize = 2_000;
/// Longest post body.
pub const BODY_MAX: usize = 10_000;

/// Checks that `value` has between `min` and `max` characters.
pub(crate) fn check_len(
    field: &str,
    value: &str,
    min: usize,
    max: usize,
) -> Result<(), ValidationError> {
    let n = value.chars().count();
    if n < min || n > max {
        return Err(ValidationError::new(
            field,
            format!("must have {min} to {max} characters (has {n})"),
        ));
    }
    if value
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(ValidationError::new(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod text_tests {
    use super::*;

    /// The documented pattern admits exactly the characters `check_len`
    /// does.
    #[test]
    fn the_text_pattern_is_the_rule() {
        let re = regex::Regex::new(TEXT).unwrap();
        for c in (0u32..0x3000).filter_map(char::from_u32) {
            let s = c.to_string();
            assert_eq!(
                re.is_match(&s),
                check_len("f", &s, 1, 1).is_ok(),
                "U+{:04X}",
                c as u32
            );
        }
    }
}

/// The acting principal, stamped by the ingest edge from the authenticated
/// caller, never taken from a request body. The display fields are a snapshot
/// so that views never need a join to show who acted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Principal {
    /// Stable user id.
    pub id: UserId,
    /// Display name at the time of the event.
    pub name: String,
    /// Avatar URL at the time of the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avatar_url: Option<String>,
}

impl Validate for Principal {
    fn validate(&self) -> Result<(), ValidationError> {
        check_len("principal.name", &self.name, 1, 100)?;
        if let Some(url) = &self.avatar_url {
            check_len("principal.avatar_url", url, 1, 500)?;
        }
        Ok(())
    }
}

/// One event: the envelope (id, time, principal) and its typed data.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// Unique id (`ce_id`); also the idempotency key of the ingest edge.
    pub id: EventId,
    /// When the ingest edge accepted it (`ce_time`); folds decide by this.
    pub time: DateTime<Utc>,
    /// Who acted.
    pub principal: Principal,
    /// What happened.
    pub data: EventData,
}

impl Event {
    /// The topic (without namespace) this event belongs on.
    pub fn topic(&self) -> Topic {
        self.data.topic()
    }

    /// The partitioning key: the aggregate's id, so one aggregate lives in
    /// one partition and has one writer.
    pub fn key(&self) -> String {
        self.data.key()
    }
}

impl Validate for Event {
    fn validate(&self) -> Result<(), ValidationError> {
        self.principal.validate()?;
        self.data.validate()
    }
}

/// The topics of the log. Names carry a version: a breaking change is a new
/// topic, never an edit of an old one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Topic {
    /// Posts, games and teams; likes and joins.
    Feed,
    /// Polls and votes.
    Polls,
    /// Image uploads.
    Uploads,
    /// Style transfer progress and results.
    Completions,
    /// Model versions (compacted).
    Models,
    /// Dead letters: records that could not be processed, with the reason.
    Dlq,
}

impl Topic {
    /// Every topic.
    pub const ALL: [Topic; 6] = [
        Topic::Feed,
        Topic::Polls,
        Topic::Uploads,
        Topic::Completions,
        Topic::Models,
        Topic::Dlq,
    ];

    /// The base name (a deployment may prefix a namespace).
    pub fn name(self) -> &'static str {
        match self {
            Topic::Feed => "atelier.feed.v1",
            Topic::Polls => "atelier.polls.v1",
            Topic::Uploads => "atelier.uploads.v1",
            Topic::Completions => "atelier.completions.v1",
            Topic::Models => "atelier.models.v1",
            Topic::Dlq => "atelier.dlq.v1",
        }
    }

    /// The topic with this base name.
    pub fn from_name(name: &str) -> Option<Topic> {
        Topic::ALL.into_iter().find(|t| t.name() == name)
    }
}

impl std::fmt::Display for Topic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
