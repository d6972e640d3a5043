//! The cards view: a session's three cards (one partition) and each
//! upload's job status, merged by per-cell timestamps from two topics (see
//! `fold::cards`). Fed by `atelier.uploads.v1` and `atelier.completions.v1`.

use std::sync::Arc;

use async_trait::async_trait;

use super::{Generations, View, ViewError};
use crate::event::{SessionKey, Topic, UploadId};
use crate::fold::cards::{Card, Patch};

/// The view.
pub const VIEW: View = View::new("cards", &[Topic::Uploads, Topic::Completions]);

/// The cards view's store.
#[async_trait]
pub trait CardsStore: Send + Sync + 'static {
    /// Projector: merge patches into session cards and upload status rows,
    /// each `USING TIMESTAMP` its merge order (see `fold::cards`).
    async fn apply_patches(&self, cards: &[&Patch], uploads: &[&Patch]) -> Result<(), ViewError>;
    /// Read: a session's cards by slot, one query.
    async fn cards(&self, session: &SessionKey) -> Result<Vec<Card>, ViewError>;
    /// Read: one upload's job status, one query.
    async fn upload(&self, id: UploadId) -> Result<Option<Card>, ViewError>;
}

impl Generations {
    /// The cards store readers see now (the active generation's).
    pub async fn cards(&self) -> Result<Arc<dyn CardsStore>, ViewError> {
        Ok(self.active(VIEW).await?)
    }
}
