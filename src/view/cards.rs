//! The cards view: a session's three cards (one partition) and each
//! upload's job status, merged by per-cell timestamps from two topics (see
//! `fold::cards`). Fed by `atelier.uploads.v1` and `atelier.completions.v1`.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{Generations, View, ViewError};
use crate::event::{SessionKey, Style, Topic, UploadId, UserId};
use crate::fold::cards::{Card, Patch};

/// The view.
pub const VIEW: View = View::new("cards", &[Topic::Uploads, Topic::Completions]);

/// One row of "sessions by owner", newest minted first: a session and its
/// latest upload. Written by every received upload (the uploader is the
/// owner) with the upload's merge timestamp, so the latest upload wins
/// whatever the order of arrival.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SessionRow {
    /// The session.
    pub session_key: SessionKey,
    /// Its latest upload.
    pub last_upload_id: UploadId,
    /// That upload's style.
    pub last_style: Style,
    /// When that upload was accepted.
    pub last_received_at: DateTime<Utc>,
}

impl SessionRow {
    /// The owner and row a received patch writes (`None` for other
    /// patches).
    pub fn of(p: &Patch) -> Option<(&UserId, SessionRow)> {
        let (Some(owner), Some(style), Some(at)) = (&p.owner, &p.set.style, p.set.received_at)
        else {
            return None;
        };
        Some((
            owner,
            SessionRow {
                session_key: p.session_key.clone(),
                last_upload_id: p.upload_id,
                last_style: style.clone(),
                last_received_at: at,
            },
        ))
    }
}

/// The clustering key of a session row: when the key was minted
/// ([`SessionKey::minted_ms`]), then the key; rows list in descending order.
pub fn session_order(key: &SessionKey) -> (i64, SessionKey) {
    (key.minted_ms(), key.clone())
}

/// The cards view's store.
#[async_trait]
pub trait CardsStore: Send + Sync + 'static {
    /// Projector: merge patches into session cards and upload status rows,
    /// each `USING TIMESTAMP` its merge order (see `fold::cards`).
    /// Received patches also write their owner's session row.
    async fn apply_patches(
        &self,
        cards: &[&Patch],
        uploads: &[&Patch],
        sessions: &[&Patch],
    ) -> Result<(), ViewError>;
    /// Read: a session's cards by slot, one query.
    async fn cards(&self, session: &SessionKey) -> Result<Vec<Card>, ViewError>;
    /// Read: one upload's job status, one query.
    async fn upload(&self, id: UploadId) -> Result<Option<Card>, ViewError>;
    /// Read: an owner's sessions that have an upload, newest minted first,
    /// after `before` (the previous page's last key), one query.
    async fn sessions_of(
        &self,
        owner: &UserId,
        before: Option<&SessionKey>,
        limit: usize,
    ) -> Result<Vec<SessionRow>, ViewError>;
}

impl Generations {
    /// The cards store readers see now (the active generation's).
    pub async fn cards(&self) -> Result<Arc<dyn CardsStore>, ViewError> {
        Ok(self.active(VIEW).await?)
    }
}
