//! The cards projection: `atelier.uploads.v1` and `atelier.completions.v1`
//! into session cards and upload job status.
//!
//! No reads: every event is a patch merged by per-cell timestamps from the
//! merge order (see `fold::cards`), so the writes are blind, idempotent and
//! order-insensitive, and the two topics' tasks never coordinate. A batch
//! writes each card and status row at most once per status.

use std::collections::BTreeSet;
use std::sync::Arc;

use async_trait::async_trait;

use super::Change;
use super::runtime::{Announce, BatchStats, Positioned, Projection};
use crate::fold::Position;
use crate::fold::cards::{Patch, card_key, coalesce, patch, session_of_owner, upload_key};
use crate::view::{CardsStore, Checkpoint, ViewError};

/// The cards view's projection.
pub struct Cards {
    store: Arc<dyn CardsStore>,
}

impl std::fmt::Debug for Cards {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cards").finish_non_exhaustive()
    }
}

impl Cards {
    /// Into `store`.
    pub fn new(store: Arc<dyn CardsStore>) -> Self {
        Self { store }
    }
}

/// A batch's patches, coalesced: at most one per card row and status, and
/// one per upload and status.
#[derive(Debug)]
pub struct Plan {
    cards: Vec<Patch>,
    uploads: Vec<Patch>,
    sessions: Vec<Patch>,
}

#[async_trait]
impl Projection for Cards {
    type Plan = Plan;

    /// A session's cards (what `GET /v1/sessions/{key}/cards` names).
    fn key_of(&self, data: &crate::event::EventData) -> Option<String> {
        crate::fold::cards::target(data).map(|(session, _)| session.to_string())
    }

    async fn plan(
        &self,
        _partition: i32,
        events: Vec<Positioned>,
        stats: &mut BatchStats,
        _cp: &mut Checkpoint,
    ) -> Result<Plan, ViewError> {
        let patches: Vec<Patch> = events.iter().filter_map(|(_, e)| patch(e)).collect();
        stats.applied = patches.len() as u64;
        let plan = Plan {
            cards: coalesce(&patches, card_key).into_iter().cloned().collect(),
            uploads: coalesce(&patches, upload_key)
                .into_iter()
                .cloned()
                .collect(),
            sessions: coalesce(&patches, session_of_owner)
                .into_iter()
                .filter(|p| p.owner.is_some())
                .cloned()
                .collect(),
        };
        stats.commits = (plan.cards.len() + plan.uploads.len() + plan.sessions.len()) as u64;
        Ok(plan)
    }

    async fn write(&self, plan: &Plan) -> Result<(), ViewError> {
        let cards: Vec<&Patch> = plan.cards.iter().collect();
        let uploads: Vec<&Patch> = plan.uploads.iter().collect();
        let sessions: Vec<&Patch> = plan.sessions.iter().collect();
        self.store.apply_patches(&cards, &uploads, &sessions).await
    }

    fn applied(&self, at: Position, plan: Plan, announce: Option<Announce<'_>>) {
        let Some(announce) = announce else {
            return;
        };
        let sessions: BTreeSet<_> = plan.cards.iter().map(|p| &p.session_key).collect();
        for s in sessions {
            announce(Change::Session(s.clone()), at);
        }
        let uploads: BTreeSet<_> = plan.uploads.iter().map(|p| p.upload_id).collect();
        for u in uploads {
            announce(Change::Upload(u), at);
        }
    }
}
