//! Consistency tokens: where an accepted write landed, as
//! `<topic>.<partition>.<offset>` (`polls.3.1234`). A read given
//! `?after=<token>` answers only once the view reflects that offset.
//!
//! The text is exact enough for the OpenAPI document to give each read the
//! pattern of the tokens it takes (its view's topics), so a token that
//! matches the documented pattern is never refused as malformed.

use super::ApiError;
use crate::bus::producer::Appended;
use crate::event::Topic;

/// A decoded token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Token {
    /// The topic (without the deployment's namespace).
    pub topic: Topic,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
}

/// The topics a token can name, by the short name it carries.
const TOPICS: [(Topic, &str); 4] = [
    (Topic::Polls, "polls"),
    (Topic::Feed, "feed"),
    (Topic::Uploads, "uploads"),
    (Topic::Completions, "completions"),
];

/// A partition (at most 9 digits, so it fits an `i32`) and an offset (at
/// most 18 digits, so it fits an `i64`), without leading zeros.
const NUMBERS: &str = r"\.(0|[1-9][0-9]{0,8})\.(0|[1-9][0-9]{0,17})$";

impl Token {
    /// The short name of a token's topic.
    fn short(t: Topic) -> Option<&'static str> {
        TOPICS.iter().find(|(x, _)| *x == t).map(|(_, s)| *s)
    }

    /// The token of a record of `full_topic` (a topic name with the
    /// deployment's namespace in front); `None` for topics no view reads.
    pub fn at(full_topic: &str, partition: i32, offset: i64) -> Option<Self> {
        let topic = TOPICS
            .iter()
            .map(|(t, _)| *t)
            .find(|t| full_topic.ends_with(t.name()))?;
        Some(Self {
            topic,
            partition,
            offset,
        })
    }

    /// Encodes as text.
    pub fn encode(&self) -> String {
        let short = Self::short(self.topic).unwrap_or("unknown");
        format!("{short}.{}.{}", self.partition, self.offset)
    }

    /// Decodes; a malformed token is a 400.
    pub fn decode(s: &str) -> Result<Self, ApiError> {
        let bad = || ApiError::bad_request("invalid_token", "the consistency token is malformed");
        let (short, rest) = s.split_once('.').ok_or_else(bad)?;
        let topic = TOPICS
            .iter()
            .find(|(_, n)| *n == short)
            .map(|(t, _)| *t)
            .ok_or_else(bad)?;
        let (partition, offset) = rest.split_once('.').ok_or_else(bad)?;
        // Exactly what the documented pattern admits (see `NUMBERS`).
        let canonical = |d: &str, max: usize| {
            (1..=max).contains(&d.len())
                && d.bytes().all(|b| b.is_ascii_digit())
                && (d == "0" || !d.starts_with('0'))
        };
        if !canonical(partition, 9) || !canonical(offset, 18) {
            return Err(bad());
        }
        Ok(Self {
            topic,
            partition: partition.parse().map_err(|_| bad())?,
            offset: offset.parse().map_err(|_| bad())?,
        })
    }

    /// The pattern of the tokens of these topics, for the document.
    pub fn pattern(topics: &[Topic]) -> String {
        let names: Vec<&str> = topics.iter().filter_map(|t| Self::short(*t)).collect();
        format!("^({}){NUMBERS}", names.join("|"))
    }
}

impl From<&Appended> for Token {
    fn from(a: &Appended) -> Self {
        Self::at(&a.topic, a.partition, a.offset).unwrap_or(Self {
            topic: Topic::Dlq,
            partition: a.partition,
            offset: a.offset,
        })
    }
}

/// The description every `?after` parameter shares.
pub(super) const AFTER_DOC: &str = "A consistency token from a write's 202 answer (its \
    `token`): the answer waits, bounded by `http.max_after_wait_ms`, until the view has applied \
    that write (past the bound: 503 `not_yet_applied`); a token naming a partition or an offset \
    this log never had is 409 `unknown_position`, at once.";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_garbage() {
        let t = Token {
            topic: Topic::Polls,
            partition: 3,
            offset: 42,
        };
        assert_eq!(t.encode(), "polls.3.42");
        assert_eq!(Token::decode(&t.encode()).unwrap(), t);
        for bad in [
            "",
            "!!",
            "polls",
            "polls.3",
            "polls.x.1",
            "polls.01.2",
            "dlq.1.2",
            "polls.1.-2",
            "polls.+1.2",
            "polls.1.1234567890123456789",
        ] {
            assert!(Token::decode(bad).is_err(), "{bad:?}");
        }
        let a = Token::at("ns.atelier.feed.v1", 1, 7).unwrap();
        assert_eq!(a.encode(), "feed.1.7");
    }

    #[test]
    fn what_the_pattern_admits_decodes() {
        let schema =
            serde_json::json!({"type": "string", "pattern": Token::pattern(&[Topic::Polls])});
        let fits = |s: &str| jsonschema::is_valid(&schema, &serde_json::json!(s));
        for ok in [
            "polls.0.0",
            "polls.11.123456789012345678",
            "polls.999999999.5",
        ] {
            assert!(fits(ok), "{ok}");
            assert!(Token::decode(ok).is_ok(), "{ok}");
        }
        for no in [
            "polls.00.1",
            "feed.1.1",
            "polls.1.1234567890123456789",
            "polls.1.1x",
            "",
        ] {
            assert!(!fits(no), "{no}");
        }
    }
}
