//! Event payloads, one struct per event type. Fields only ever get added
//! (as optional); a breaking change is a new type or a new topic version.
//! Decoding tolerates unknown fields on purpose: a consumer must keep working
//! when a newer producer adds an optional field (the ingest edge, which reads
//! request bodies rather than events, is the strict one).

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{
    BODY_MAX, FeedItemId, LINE_MAX, MESSAGE_MAX, ModelVersion, PollId, QuestionId, SessionKey,
    Style, Topic, UploadId, Validate, ValidationError, check_len,
};

/// Most questions (answer options) a poll may have.
pub const MAX_QUESTIONS: usize = 20;
/// Fewest questions a poll may have.
pub const MIN_QUESTIONS: usize = 2;

/// One answer option of a poll, in display order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Question {
    /// Stable id within the poll (its position at creation).
    pub id: QuestionId,
    /// The option's text.
    pub text: String,
}

/// A poll was created.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PollCreated {
    /// The new poll.
    pub poll_id: PollId,
    /// Headline.
    pub head: String,
    /// Longer description (may be empty).
    #[serde(default)]
    pub message: String,
    /// Votes at or after this time are rejected; `None` means open-ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ends_at: Option<DateTime<Utc>>,
    /// Voters are never stored readable.
    #[serde(default)]
    pub anonymous: bool,
    /// A ballot may choose several questions.
    #[serde(default)]
    pub multiple_choice: bool,
    /// The options, in display order; ids are `0..n`.
    pub questions: Vec<Question>,
}

impl Validate for PollCreated {
    fn validate(&self) -> Result<(), ValidationError> {
        check_len("head", &self.head, 1, LINE_MAX)?;
        check_len("message", &self.message, 0, MESSAGE_MAX)?;
        let n = self.questions.len();
        if !(MIN_QUESTIONS..=MAX_QUESTIONS).contains(&n) {
            return Err(ValidationError::new(
                "questions",
                format!("a poll needs {MIN_QUESTIONS} to {MAX_QUESTIONS} questions (has {n})"),
            ));
        }
        for (i, q) in self.questions.iter().enumerate() {
            if usize::from(q.id) != i {
                return Err(ValidationError::new(
                    format!("questions[{i}].id"),
                    format!("question ids are their positions: expected {i}"),
                ));
            }
            check_len(&format!("questions[{i}].text"), &q.text, 1, LINE_MAX)?;
        }
        Ok(())
    }
}

/// A voter cast (or replaced) their ballot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct VoteCast {
    /// The poll voted on.
    pub poll_id: PollId,
    /// The chosen questions: exactly one unless the poll is multiple choice.
    pub question_ids: Vec<QuestionId>,
}

impl Validate for VoteCast {
    fn validate(&self) -> Result<(), ValidationError> {
        if self.question_ids.is_empty() {
            return Err(ValidationError::new(
                "question_ids",
                "a ballot chooses at least one question",
            ));
        }
        if self.question_ids.len() > MAX_QUESTIONS {
            return Err(ValidationError::new(
                "question_ids",
                "more choices than a poll has questions",
            ));
        }
        let mut seen = self.question_ids.clone();
        seen.sort_unstable();
        seen.dedup();
        if seen.len() != self.question_ids.len() {
            return Err(ValidationError::new(
                "question_ids",
                "a question is chosen twice",
            ));
        }
        Ok(())
    }
}

/// A voter withdrew their ballot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct VoteRetracted {
    /// The poll.
    pub poll_id: PollId,
}

/// The poll's owner closed it: later votes are rejected.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PollClosed {
    /// The poll.
    pub poll_id: PollId,
}

/// What a feed item is, with the kind's own fields.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FeedContent {
    /// A post.
    Post {
        /// Title.
        title: String,
        /// Body text.
        body: String,
    },
    /// A game people can join.
    Game {
        /// Name.
        name: String,
        /// Where it takes place.
        location: String,
    },
    /// A team people can join.
    Team {
        /// Room name.
        room: String,
    },
}

/// A post, game or team was created.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct FeedItemCreated {
    /// The new item.
    pub item_id: FeedItemId,
    /// Its kind and content.
    pub content: FeedContent,
}

impl Validate for FeedItemCreated {
    fn validate(&self) -> Result<(), ValidationError> {
        match &self.content {
            FeedContent::Post { title, body } => {
                check_len("content.title", title, 1, LINE_MAX)?;
                check_len("content.body", body, 0, BODY_MAX)
            }
            FeedContent::Game { name, location } => {
                check_len("content.name", name, 1, LINE_MAX)?;
                check_len("content.location", location, 1, LINE_MAX)
            }
            FeedContent::Team { room } => check_len("content.room", room, 1, LINE_MAX),
        }
    }
}

/// An action on a feed item by the acting principal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct FeedItemRef {
    /// The item.
    pub item_id: FeedItemId,
}

/// An image was stored and awaits stylization.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct UploadReceived {
    /// The upload.
    pub upload_id: UploadId,
    /// The session whose cards show it.
    pub session_key: SessionKey,
    /// Card slot, 1 to 3.
    pub slot: u8,
    /// Requested style.
    pub style: Style,
    /// Where the original lies in the blob store.
    pub object_key: String,
    /// Sniffed media type (`image/jpeg`, `image/png`, `image/webp`).
    pub content_type: String,
    /// Size in bytes.
    pub bytes: u64,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Hex SHA-256 of the bytes.
    pub sha256: String,
}

impl Validate for UploadReceived {
    fn validate(&self) -> Result<(), ValidationError> {
        check_slot(self.slot)?;
        check_len("object_key", &self.object_key, 1, 500)?;
        if !["image/jpeg", "image/png", "image/webp"].contains(&self.content_type.as_str()) {
            return Err(ValidationError::new(
                "content_type",
                "must be image/jpeg, image/png or image/webp",
            ));
        }
        if self.width == 0 || self.height == 0 {
            return Err(ValidationError::new("width", "dimensions must be positive"));
        }
        if self.sha256.len() != 64 || !self.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ValidationError::new("sha256", "must be 64 hex digits"));
        }
        Ok(())
    }
}

fn check_slot(slot: u8) -> Result<(), ValidationError> {
    if (1..=3).contains(&slot) {
        Ok(())
    } else {
        Err(ValidationError::new("slot", "must be 1, 2 or 3"))
    }
}

/// Which upload a completion event is about.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TransferRef {
    /// The upload.
    pub upload_id: UploadId,
    /// Its session.
    pub session_key: SessionKey,
    /// Its slot.
    pub slot: u8,
    /// The style applied.
    pub style: Style,
}

/// A worker picked an upload up.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StyleTransferStarted {
    /// Which upload.
    #[serde(flatten)]
    pub upload: TransferRef,
    /// The model version that runs it.
    pub model_version: ModelVersion,
}

/// Time spent per stage, in milliseconds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Timings {
    /// Waiting for a batch.
    pub queue_ms: u64,
    /// Fetch and decode.
    pub decode_ms: u64,
    /// Model execution (the batch's share).
    pub infer_ms: u64,
    /// Encode and store.
    pub encode_ms: u64,
    /// Images in the model call that ran it (0: not recorded).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub batch: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The stylized image is stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StyleTransferCompleted {
    /// Which upload.
    #[serde(flatten)]
    pub upload: TransferRef,
    /// Where the output lies (deterministic: upload, style, version).
    pub output_key: String,
    /// The model version that produced it.
    pub model_version: ModelVersion,
    /// Stage timings.
    pub timings: Timings,
}

/// The upload could not be stylized.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StyleTransferFailed {
    /// Which upload.
    #[serde(flatten)]
    pub upload: TransferRef,
    /// Why, for a person.
    pub reason: String,
    /// Whether trying again may succeed.
    pub retriable: bool,
}

/// A model version is available in the blob store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ModelPublished {
    /// The style it implements.
    pub style: Style,
    /// Its version.
    pub version: ModelVersion,
    /// `models/{style}/{version}/model.pt`.
    pub object_key: String,
    /// Hex SHA-256 of the TorchScript file.
    pub sha256: String,
}

macro_rules! event_data {
    ($($variant:ident($ty:ty) => $topic:ident, |$d:ident| $key:expr;)*) => {
        /// Every event type, tagged by its `ce_type`.
        #[derive(Clone, Debug, PartialEq)]
        #[allow(missing_docs)]
        pub enum EventData {
            $($variant($ty),)*
        }

        impl EventData {
            /// Every `ce_type`, in declaration order.
            pub const TYPES: &'static [&'static str] = &[$(stringify!($variant)),*];

            /// The `ce_type` of this event.
            pub fn type_name(&self) -> &'static str {
                match self {
                    $(EventData::$variant(_) => stringify!($variant),)*
                }
            }

            /// The topic this event type lives on.
            pub fn topic(&self) -> Topic {
                match self {
                    $(EventData::$variant(_) => Topic::$topic,)*
                }
            }

            /// The partitioning key (the aggregate id).
            pub fn key(&self) -> String {
                match self {
                    $(EventData::$variant($d) => $key,)*
                }
            }

            /// Serializes the payload fields (without the envelope).
            pub fn to_json(&self) -> serde_json::Value {
                match self {
                    $(EventData::$variant(d) => serde_json::to_value(d).expect("payloads serialize"),)*
                }
            }

            /// Parses a body of the event type `type_name` (the principal
            /// beside the payload) in one pass, without a JSON tree.
            pub fn body_from_slice(
                type_name: &str,
                body: &[u8],
            ) -> Result<Option<(crate::event::Principal, Self)>, serde_json::Error> {
                Ok(Some(match type_name {
                    $(stringify!($variant) => {
                        let b: super::schema::Body<$ty> = serde_json::from_slice(body)?;
                        (b.principal, EventData::$variant(b.data))
                    })*
                    _ => return Ok(None),
                }))
            }

            /// Parses the payload of the event type `type_name`.
            pub fn from_json(type_name: &str, v: serde_json::Value) -> Result<Option<Self>, serde_json::Error> {
                Ok(Some(match type_name {
                    $(stringify!($variant) => EventData::$variant(serde_json::from_value(v)?),)*
                    _ => return Ok(None),
                }))
            }

            /// The JSON Schema of each event type's payload.
            pub fn payload_schemas() -> Vec<(&'static str, schemars::Schema)> {
                vec![$((stringify!($variant), schemars::schema_for!(super::schema::Body<$ty>)),)*]
            }

            /// The topic of the event type `type_name`.
            pub fn topic_of(type_name: &str) -> Option<Topic> {
                match type_name {
                    $(stringify!($variant) => Some(Topic::$topic),)*
                    _ => None,
                }
            }
        }
    };
}

event_data! {
    PollCreated(PollCreated) => Polls, |d| d.poll_id.to_string();
    VoteCast(VoteCast) => Polls, |d| d.poll_id.to_string();
    VoteRetracted(VoteRetracted) => Polls, |d| d.poll_id.to_string();
    PollClosed(PollClosed) => Polls, |d| d.poll_id.to_string();
    FeedItemCreated(FeedItemCreated) => Feed, |d| d.item_id.to_string();
    FeedItemLiked(FeedItemRef) => Feed, |d| d.item_id.to_string();
    FeedItemUnliked(FeedItemRef) => Feed, |d| d.item_id.to_string();
    FeedItemJoined(FeedItemRef) => Feed, |d| d.item_id.to_string();
    FeedItemLeft(FeedItemRef) => Feed, |d| d.item_id.to_string();
    FeedItemDeleted(FeedItemRef) => Feed, |d| d.item_id.to_string();
    UploadReceived(UploadReceived) => Uploads, |d| d.session_key.to_string();
    StyleTransferStarted(StyleTransferStarted) => Completions, |d| d.upload.session_key.to_string();
    StyleTransferCompleted(StyleTransferCompleted) => Completions, |d| d.upload.session_key.to_string();
    StyleTransferFailed(StyleTransferFailed) => Completions, |d| d.upload.session_key.to_string();
    ModelPublished(ModelPublished) => Models, |d| d.style.to_string();
}

impl Validate for EventData {
    fn validate(&self) -> Result<(), ValidationError> {
        match self {
            EventData::PollCreated(d) => d.validate(),
            EventData::VoteCast(d) => d.validate(),
            EventData::FeedItemCreated(d) => d.validate(),
            EventData::UploadReceived(d) => d.validate(),
            EventData::StyleTransferStarted(d) => check_slot(d.upload.slot),
            EventData::StyleTransferCompleted(d) => {
                check_slot(d.upload.slot)?;
                check_len("output_key", &d.output_key, 1, 500)
            }
            EventData::StyleTransferFailed(d) => {
                check_slot(d.upload.slot)?;
                check_len("reason", &d.reason, 1, 2000)
            }
            EventData::ModelPublished(d) => check_len("object_key", &d.object_key, 1, 500),
            EventData::VoteRetracted(_)
            | EventData::PollClosed(_)
            | EventData::FeedItemLiked(_)
            | EventData::FeedItemUnliked(_)
            | EventData::FeedItemJoined(_)
            | EventData::FeedItemLeft(_)
            | EventData::FeedItemDeleted(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn poll(n: usize) -> PollCreated {
        PollCreated {
            poll_id: PollId(uuid::Uuid::now_v7()),
            head: "Lunch?".into(),
            message: String::new(),
            ends_at: None,
            anonymous: false,
            multiple_choice: false,
            questions: (0..n)
                .map(|i| Question {
                    id: i as u16,
                    text: format!("option {i}"),
                })
                .collect(),
        }
    }

    #[test]
    fn poll_question_counts_are_bounded() {
        assert!(poll(2).validate().is_ok());
        assert_eq!(poll(1).validate().unwrap_err().field, "questions");
        assert_eq!(poll(21).validate().unwrap_err().field, "questions");
        let mut p = poll(3);
        p.questions[2].id = 7;
        assert_eq!(p.validate().unwrap_err().field, "questions[2].id");
        let mut p = poll(3);
        p.head = String::new();
        assert_eq!(p.validate().unwrap_err().field, "head");
    }

    #[test]
    fn ballots_need_distinct_choices() {
        let pid = PollId(uuid::Uuid::now_v7());
        let v = |q: Vec<u16>| VoteCast {
            poll_id: pid,
            question_ids: q,
        };
        assert!(v(vec![0]).validate().is_ok());
        assert!(v(vec![]).validate().is_err());
        assert!(v(vec![1, 1]).validate().is_err());
    }

    #[test]
    fn slots_are_one_to_three() {
        assert!(check_slot(0).is_err());
        assert!(check_slot(1).is_ok());
        assert!(check_slot(3).is_ok());
        assert!(check_slot(4).is_err());
    }

    #[test]
    fn every_type_has_a_topic_and_a_schema() {
        for t in EventData::TYPES {
            assert!(EventData::topic_of(t).is_some(), "{t}");
        }
        assert_eq!(EventData::payload_schemas().len(), EventData::TYPES.len());
    }
}
