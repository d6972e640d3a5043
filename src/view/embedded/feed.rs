//! The feed view on the embedded tables: `feed_items` (the aggregate in
//! static cells, a membership per row) and the timelines.

use std::borrow::Cow;
use std::sync::Arc;

use async_trait::async_trait;

use super::EmbeddedStore;
use super::table::{Mutation, Row, Table, from_cells, page, to_cells};
use crate::event::FeedItemId;
use crate::fold::feed::{FeedKind, ItemCommit, ItemState, Member, MemberKey};
use crate::view::{
    ALL_KINDS, Counters, FeedCursor, FeedStore, TimelineRow, ViewError, write_timestamp,
};

/// Newest first: clustering order `created_at DESC, item_id DESC`.
type TimelineKey = std::cmp::Reverse<(i64, FeedItemId)>;

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct Tables {
    items: Table<FeedItemId, MemberKey>,
    timelines: Table<Cow<'static, str>, TimelineKey>,
}

impl Tables {
    pub(super) fn new(c: &Arc<Counters>) -> Self {
        Self {
            items: Table::new(c),
            timelines: Table::new(c),
        }
    }

    pub(super) fn rebind(&mut self, c: &Arc<Counters>) {
        self.items.rebind(c);
        self.timelines.rebind(c);
    }

    pub(super) fn attach(&self, spill: &Arc<super::spill::Spill>, tag: &str) {
        self.items.attach(spill, format!("{tag}/feed.items"));
        self.timelines
            .attach(spill, format!("{tag}/feed.timelines"));
    }

    pub(super) fn clear(&self) {
        self.items.clear();
        self.timelines.clear();
    }
}

#[async_trait]
impl FeedStore for EmbeddedStore {
    async fn load_items(&self, ids: &[FeedItemId]) -> Result<Vec<ItemState>, ViewError> {
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(m) = self.feed.items.statics(id)? {
                out.push(from_cells(m)?);
            }
        }
        Ok(out)
    }

    async fn load_members(
        &self,
        item: FeedItemId,
        keys: &[MemberKey],
    ) -> Result<Vec<(MemberKey, Member)>, ViewError> {
        self.feed.items.rows(&item, |rows| {
            let Some(rows) = rows else {
                return Ok(Vec::new());
            };
            let mut out = Vec::new();
            for k in keys {
                if let Some(m) = rows.get(k).and_then(Row::live) {
                    out.push((k.clone(), from_cells(m)?));
                }
            }
            Ok(out)
        })?
    }

    async fn commit_item(&self, c: &ItemCommit) -> Result<(), ViewError> {
        let s = &c.state;
        let ts = write_timestamp(s.position.offset);
        // Derived rows first (rule 3): the timelines' copies, or their removal.
        let key = std::cmp::Reverse((s.created_at.timestamp_micros(), s.item_id));
        let row = TimelineRow::of(s);
        for t in TimelineRow::timelines(s.kind) {
            let m = match s.deleted_at {
                Some(_) => Mutation::Delete(key),
                None => Mutation::Upsert(key, to_cells(&row)),
            };
            self.feed.timelines.batch(&Cow::Borrowed(t), ts, vec![m])?;
        }
        let mut muts = Vec::with_capacity(c.members.len() + 1);
        muts.push(Mutation::Static(to_cells(s)));
        for (k, m) in &c.members {
            muts.push(match m {
                Some(m) => Mutation::Upsert(k.clone(), to_cells(m)),
                None => Mutation::Delete(k.clone()),
            });
        }
        self.feed.items.batch(&s.item_id, ts, muts)
    }

    async fn item(&self, id: FeedItemId) -> Result<Option<ItemState>, ViewError> {
        self.feed.items.statics(&id)?.map(from_cells).transpose()
    }

    async fn timeline(
        &self,
        kind: Option<FeedKind>,
        before: Option<FeedCursor>,
        limit: usize,
    ) -> Result<Vec<TimelineRow>, ViewError> {
        let name = kind.map_or(ALL_KINDS, FeedKind::as_str);
        let after = before.map(|(t, id)| std::cmp::Reverse((t.timestamp_micros(), id)));
        self.feed
            .timelines
            .rows(&Cow::Borrowed(name), |rows| page(rows, after, limit))?
    }
}
