//! Consistency tokens: where an accepted write landed (topic, partition,
//! offset), opaque to clients. A read given `?after=<token>` answers only
//! once the view reflects that offset.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::ApiError;
use crate::bus::producer::Appended;

/// A decoded token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Token {
    /// Full topic name.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
}

impl Token {
    /// Encodes as URL-safe text.
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!("{}:{}:{}", self.topic, self.partition, self.offset))
    }

    /// Decodes; a malformed token is a 400.
    pub fn decode(s: &str) -> Result<Self, ApiError> {
        let bad = || ApiError::bad_request("invalid_token", "the consistency token is malformed");
        let raw = URL_SAFE_NO_PAD.decode(s).map_err(|_| bad())?;
        let text = String::from_utf8(raw).map_err(|_| bad())?;
        let mut it = text.rsplitn(3, ':');
        let offset = it.next().and_then(|o| o.parse().ok()).ok_or_else(bad)?;
        let partition = it.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let topic = it.next().filter(|t| !t.is_empty()).ok_or_else(bad)?;
        Ok(Self {
            topic: topic.to_owned(),
            partition,
            offset,
        })
    }
}

impl From<&Appended> for Token {
    fn from(a: &Appended) -> Self {
        Self {
            topic: a.topic.clone(),
            partition: a.partition,
            offset: a.offset,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_garbage() {
        let t = Token {
            topic: "ns.atelier.polls.v1".into(),
            partition: 3,
            offset: 42,
        };
        assert_eq!(Token::decode(&t.encode()).unwrap(), t);
        assert!(Token::decode("!!").is_err());
        assert!(Token::decode(&URL_SAFE_NO_PAD.encode("x:y")).is_err());
    }
}
