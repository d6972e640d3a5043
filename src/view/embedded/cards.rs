//! The cards view on the embedded tables: `cards` (a session's slots) and
//! `uploads` (one job status per upload), patched per cell by merge order.

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{Map, Value};

use super::EmbeddedStore;
use super::table::{Mutation, Table, from_cells, page, to_cells};
use crate::event::{SessionKey, UploadId, UserId};
use crate::fold::cards::{Card, Patch};
use crate::view::cards::session_order;
use crate::view::{CardsStore, Counters, SessionRow, ViewError};

/// Newest minted first: clustering order `minted_ms DESC, session_key DESC`.
type SessionOrder = std::cmp::Reverse<(i64, SessionKey)>;

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct Tables {
    cards: Table<SessionKey, u8>,
    uploads: Table<UploadId, ()>,
    sessions: Table<UserId, SessionOrder>,
}

impl Tables {
    pub(super) fn new(c: &Arc<Counters>) -> Self {
        Self {
            cards: Table::new(c),
            uploads: Table::new(c),
            sessions: Table::new(c),
        }
    }

    pub(super) fn rebind(&mut self, c: &Arc<Counters>) {
        self.cards.rebind(c);
        self.uploads.rebind(c);
        self.sessions.rebind(c);
    }

    pub(super) fn attach(&self, spill: &Arc<super::spill::Spill>, tag: &str) {
        self.cards.attach(spill, format!("{tag}/cards.cards"));
        self.uploads.attach(spill, format!("{tag}/cards.uploads"));
        self.sessions.attach(spill, format!("{tag}/cards.sessions"));
    }

    pub(super) fn clear(&self) {
        self.cards.clear();
        self.uploads.clear();
        self.sessions.clear();
    }
}

/// The cells of a patch: what it sets, and the columns it clears.
fn patch_cells(p: &Patch) -> Map<String, Value> {
    let mut m = to_cells(&p.set);
    for c in p.clears() {
        m.insert((*c).to_owned(), Value::Null);
    }
    m
}

#[async_trait]
impl CardsStore for EmbeddedStore {
    async fn apply_patches(
        &self,
        cards: &[&Patch],
        uploads: &[&Patch],
        sessions: &[&Patch],
    ) -> Result<(), ViewError> {
        for p in cards {
            self.cards.cards.batch(
                &p.session_key,
                p.ts,
                vec![Mutation::Upsert(p.slot, patch_cells(p))],
            )?;
        }
        for p in uploads {
            self.cards
                .uploads
                .batch(&p.upload_id, p.ts, vec![Mutation::Static(patch_cells(p))])?;
        }
        for p in sessions {
            let Some((owner, row)) = SessionRow::of(p) else {
                continue;
            };
            self.cards.sessions.batch(
                owner,
                p.ts,
                vec![Mutation::Upsert(
                    std::cmp::Reverse(session_order(&p.session_key)),
                    to_cells(&row),
                )],
            )?;
        }
        Ok(())
    }

    async fn cards(&self, session: &SessionKey) -> Result<Vec<Card>, ViewError> {
        self.cards.cards.rows(session, |rows| page(rows, None, 3))?
    }

    async fn upload(&self, id: UploadId) -> Result<Option<Card>, ViewError> {
        self.cards.uploads.statics(&id)?.map(from_cells).transpose()
    }

    async fn sessions_of(
        &self,
        owner: &UserId,
        before: Option<&SessionKey>,
        limit: usize,
    ) -> Result<Vec<SessionRow>, ViewError> {
        let after = before.map(|k| std::cmp::Reverse(session_order(k)));
        self.cards
            .sessions
            .rows(owner, |rows| page(rows, after, limit))?
    }
}
