//! Typed identifiers: every id that crosses a boundary is parsed once into a
//! newtype, never passed around as a bare string. New ids are minted at the
//! edge (`api`), never here: this module has no clock and no randomness.

use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::ValidationError;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident, $field:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// Parses the canonical hyphenated form.
            pub fn parse(s: &str) -> Result<Self, ValidationError> {
                Uuid::parse_str(s)
                    .map(Self)
                    .map_err(|_| ValidationError::new($field, "must be a UUID"))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.hyphenated().fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = ValidationError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }
    };
}

uuid_id!(
    /// The id of one event, unique across topics (`ce_id`).
    EventId,
    "id"
);
uuid_id!(
    /// A poll; the key of `atelier.polls.v1`.
    PollId,
    "poll_id"
);
uuid_id!(
    /// A feed item (post, game or team); the key of `atelier.feed.v1`.
    FeedItemId,
    "item_id"
);
uuid_id!(
    /// One uploaded image.
    UploadId,
    "upload_id"
);

/// The characters of a text id (user ids, session keys, styles, model
/// versions), for the request schemas: 1 to the id's maximum of these.
pub const TEXT_ID: &str = "^[A-Za-z0-9_.:@-]+$";
/// Longest user id or session key.
pub const ID_MAX: usize = 64;
/// Longest style or model version.
pub const NAME_MAX: usize = 40;

macro_rules! text_id {
    ($(#[$doc:meta])* $name:ident, $field:literal, $max:expr) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Accepts 1 to its maximum length of characters of
            /// `[A-Za-z0-9_.:@-]` ([`TEXT_ID`]).
            pub fn parse(s: &str) -> Result<Self, ValidationError> {
                let ok = !s.is_empty()
                    && s.len() <= $max
                    && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.:@-".contains(&b));
                if ok {
                    Ok(Self(s.to_owned()))
                } else {
                    Err(ValidationError::new(
                        $field,
                        format!("must be 1 to {} characters of A-Z a-z 0-9 _ . : @ -", $max),
                    ))
                }
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = ValidationError;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                Self::parse(&s)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = ValidationError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }
    };
}

text_id!(
    /// An authenticated user (the `sub` of a token, or an API key's principal).
    UserId,
    "user_id",
    ID_MAX
);
text_id!(
    /// A browser or app session that groups up to three uploads; the key of
    /// the uploads and completions topics.
    SessionKey,
    "session_key",
    ID_MAX
);
text_id!(
    /// A style model's name, such as `mosaic`.
    Style,
    "style",
    NAME_MAX
);
text_id!(
    /// A model version, such as `v3` or a date stamp.
    ModelVersion,
    "version",
    NAME_MAX
);

impl SessionKey {
    /// When `POST /v1/sessions` minted this key, in milliseconds since the
    /// epoch: a minted key is `s.<nonce>.<tag>` and its nonce a UUID v7 in
    /// base64url, whose first 48 bits are the time. 0 for a key without
    /// one (chosen by a client, or minted before nonces carried the time),
    /// so such keys list after every minted one.
    pub fn minted_ms(&self) -> i64 {
        use base64::Engine as _;
        let nonce = self
            .0
            .strip_prefix("s.")
            .and_then(|r| r.split_once('.'))
            .map(|(n, _)| n);
        let Some(Ok(bytes)) =
            nonce.map(|n| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(n))
        else {
            return 0;
        };
        let Ok(id) = uuid::Uuid::from_slice(&bytes) else {
            return 0;
        };
        if id.get_version_num() != 7 {
            return 0;
        }
        let b = id.as_bytes();
        i64::from_be_bytes([0, 0, b[0], b[1], b[2], b[3], b[4], b[5]])
    }
}

/// A question (answer option) of a poll: its position at creation time.
pub type QuestionId = u16;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_ids_reject_empty_long_and_odd_characters() {
        assert!(UserId::parse("alice").is_ok());
        assert!(UserId::parse("auth0|123").is_err());
        assert!(UserId::parse("").is_err());
        assert!(UserId::parse(&"x".repeat(65)).is_err());
        assert!(Style::parse("mosaic").is_ok());
        let err = serde_json::from_str::<UserId>("\"a b\"").unwrap_err();
        assert!(err.to_string().contains("must be"), "{err}");
    }

    #[test]
    fn uuid_ids_round_trip() {
        let id = PollId(uuid::Uuid::now_v7());
        assert_eq!(PollId::parse(&id.to_string()).unwrap(), id);
        assert!(PollId::parse("nope").is_err());
    }
}
