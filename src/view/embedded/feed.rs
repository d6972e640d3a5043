//! The feed view on the embedded tables: `feed_items` (the aggregate in
//! static cells, a membership per row), the timelines (a partition per
//! timeline, day bucket and shard) and the index of each timeline's
//! buckets.

use std::borrow::Cow;
use std::sync::Arc;

use async_trait::async_trait;

use super::EmbeddedStore;
use super::table::{Cells, Footprint, Mutation, Row, Table, Whole, page, to_cells};
use crate::event::{FeedContent, FeedItemId};
use crate::fold::feed::{FeedKind, ItemCommit, ItemState, Member, MemberKey};
use crate::view::feed::shards;
use crate::view::{
    Counters, FeedCursor, FeedStore, KnownBuckets, TimelinePart, TimelineParts, TimelineRow,
    ViewError, timeline_page, write_timestamp,
};

/// Newest first: clustering order `created_at DESC, item_id DESC`.
type TimelineKey = std::cmp::Reverse<(i64, FeedItemId)>;

/// A timeline partition: the timeline, its bucket and shard.
type TimelinePk = (Cow<'static, str>, i64, i16);

/// The bucket index: per timeline, its buckets newest first.
type BucketKey = std::cmp::Reverse<i64>;

/// Items and timelines hold typed rows, written whole (as the CQL store
/// writes every column); the bucket index stays cells.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct Tables {
    items: Table<FeedItemId, MemberKey, Whole<ItemState>, Whole<Member>>,
    timelines: Table<TimelinePk, TimelineKey, Cells, Whole<TimelineRow>>,
    buckets: Table<Cow<'static, str>, BucketKey>,
    /// What this store's own writes and index reads know; no other process
    /// writes an embedded store, so the index is read once.
    #[serde(skip)]
    known: KnownBuckets,
}

impl Footprint for FeedContent {
    fn heap(&self) -> u64 {
        (match self {
            FeedContent::Post { title, body } => title.len() + body.len(),
            FeedContent::Game { name, location } => name.len() + location.len(),
            FeedContent::Team { room } => room.len(),
        }) as u64
    }
}

impl Footprint for ItemState {
    fn heap(&self) -> u64 {
        self.content.heap()
            + self.author.heap()
            + self
                .recent_members
                .iter()
                .map(|m| (std::mem::size_of_val(m) + m.id.as_str().len() + m.name.len()) as u64)
                .sum::<u64>()
            + 64 * self.rejected.len() as u64
    }
}

impl Footprint for Member {
    fn heap(&self) -> u64 {
        self.name.len() as u64
    }
}

impl Footprint for TimelineRow {
    fn heap(&self) -> u64 {
        self.content.heap() + self.author.heap()
    }
}

fn pk(p: TimelinePart) -> TimelinePk {
    (Cow::Borrowed(p.timeline), p.bucket, p.shard)
}

impl Tables {
    pub(super) fn new(c: &Arc<Counters>) -> Self {
        Self {
            items: Table::new(c),
            timelines: Table::new(c),
            buckets: Table::new(c),
            known: KnownBuckets::default(),
        }
    }

    pub(super) fn rebind(&mut self, c: &Arc<Counters>) {
        self.items.rebind(c);
        self.timelines.rebind(c);
        self.buckets.rebind(c);
    }

    pub(super) fn attach(&self, spill: &Arc<super::spill::Spill>, tag: &str) {
        self.items.attach(spill, format!("{tag}/feed.items"));
        self.timelines
            .attach(spill, format!("{tag}/feed.timelines"));
        self.buckets.attach(spill, format!("{tag}/feed.buckets"));
    }

    pub(super) fn clear(&self) {
        self.items.clear();
        self.timelines.clear();
        self.buckets.clear();
        self.known.clear();
    }
}

#[async_trait]
impl TimelineParts for EmbeddedStore {
    async fn read_buckets(
        &self,
        timeline: &'static str,
        buckets: &[i64],
        before: Option<FeedCursor>,
        limit: usize,
    ) -> Result<Vec<TimelineRow>, ViewError> {
        let after = before.map(|(t, id)| std::cmp::Reverse((t.timestamp_micros(), id)));
        let pks: Vec<TimelinePk> = buckets
            .iter()
            .flat_map(|&b| (0..shards(timeline)).map(move |s| (Cow::Borrowed(timeline), b, s)))
            .collect();
        let mut out: Vec<TimelineRow> = Vec::new();
        self.feed.timelines.rows_of(&pks, |rows| {
            out.extend(page::<_, _, TimelineRow>(rows, after, limit)?);
            Ok(())
        })?;
        Ok(out)
    }

    async fn known_buckets(&self, timeline: &'static str) -> Result<&KnownBuckets, ViewError> {
        let known = &self.feed.known;
        if known.stale(timeline, None) {
            let found = self
                .feed
                .buckets
                .control_rows(&Cow::Borrowed(timeline), |rows| {
                    rows.map(|r| {
                        r.iter()
                            .filter(|(_, row)| row.live().is_some())
                            .map(|(k, _)| k.0)
                            .collect::<Vec<_>>()
                    })
                    .unwrap_or_default()
                })?;
            known.read(timeline, found);
        }
        Ok(known)
    }
}

#[async_trait]
impl FeedStore for EmbeddedStore {
    async fn load_items(&self, ids: &[FeedItemId]) -> Result<Vec<ItemState>, ViewError> {
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            out.extend(self.feed.items.statics(id)?);
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
                return Vec::new();
            };
            keys.iter()
                .filter_map(|k| Some((k.clone(), rows.get(k).and_then(Row::live)?)))
                .collect()
        })
    }

    async fn commit_timelines(&self, states: &[&ItemState]) -> Result<(), ViewError> {
        // One batch per partition (rule 3: derived rows, written before
        // their items'), then the index entries of buckets not known yet.
        type Muts = Vec<(
            i64,
            Mutation<TimelineKey, serde_json::Map<String, serde_json::Value>, TimelineRow>,
        )>;
        let mut parts: std::collections::BTreeMap<TimelinePart, Muts> = Default::default();
        for s in states {
            let ts = write_timestamp(s.position.offset);
            let key = std::cmp::Reverse((s.created_at.timestamp_micros(), s.item_id));
            // The item's two timelines (its kind's, all kinds'): the row is
            // cloned for the first and moved into the second.
            let [own, all] = TimelineRow::parts(s);
            let (a, b) = match s.deleted_at {
                Some(_) => (Mutation::Delete(key), Mutation::Delete(key)),
                None => {
                    let row = TimelineRow::of(s);
                    (
                        Mutation::Upsert(key, row.clone()),
                        Mutation::Upsert(key, row),
                    )
                }
            };
            parts.entry(own).or_default().push((ts, a));
            parts.entry(all).or_default().push((ts, b));
        }
        let mut new_buckets = std::collections::BTreeSet::new();
        for (p, muts) in parts {
            // A batch carries one timestamp: rows of different versions go
            // as consecutive batches of the same partition, one request.
            self.feed.timelines.batch_each(&pk(p), muts)?;
            if !self.feed.known.has(p.timeline, p.bucket) {
                new_buckets.insert((p.timeline, p.bucket));
            }
        }
        for (timeline, bucket) in new_buckets {
            let cells = to_cells(&serde_json::json!({ "bucket": bucket }));
            self.feed.buckets.batch(
                &Cow::Borrowed(timeline),
                0,
                vec![Mutation::Upsert(std::cmp::Reverse(bucket), cells)],
            )?;
            self.feed.known.note(timeline, bucket);
        }
        Ok(())
    }

    async fn commit_members(&self, c: &ItemCommit) -> Result<(), ViewError> {
        let s = &c.state;
        let ts = write_timestamp(s.position.offset);
        let mut muts = Vec::with_capacity(c.members.len() + 1);
        muts.push(Mutation::Static(s.clone()));
        for (k, m) in &c.members {
            muts.push(match m {
                Some(m) => Mutation::Upsert(k.clone(), m.clone()),
                None => Mutation::Delete(k.clone()),
            });
        }
        self.feed.items.batch(&s.item_id, ts, muts)
    }

    async fn item(&self, id: FeedItemId) -> Result<Option<ItemState>, ViewError> {
        self.feed.items.statics(&id)
    }

    async fn timeline(
        &self,
        kind: Option<FeedKind>,
        before: Option<FeedCursor>,
        limit: usize,
    ) -> Result<Vec<TimelineRow>, ViewError> {
        timeline_page(self, kind, before, limit).await
    }
}
