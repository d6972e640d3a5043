//! The feed view: an item's aggregate with its memberships (likes and
//! joins, one partition) and its copies in the timelines (one per kind, and
//! one of all kinds). Fed by `atelier.feed.v1`.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{AggregateStore, Generations, View, ViewError};
use crate::event::{FeedContent, FeedItemId, Principal, Topic};
use crate::fold::Position;
use crate::fold::feed::{FeedKind, ItemAggregate, ItemCommit, ItemState, Member, MemberKey};

/// The view.
pub const VIEW: View = View::new("feed", &[Topic::Feed]);

/// Cursor into a timeline: the last row of the previous page.
pub type FeedCursor = (DateTime<Utc>, FeedItemId);

/// The name of the timeline holding every kind.
pub const ALL_KINDS: &str = "all";

/// A timeline partition holds one bucket of time: a day of items, so no
/// partition grows without bound.
pub const BUCKET_SECS: i64 = 86_400;

/// The all-kinds timeline is spread over this many shards per bucket, so
/// no single partition takes every like in the system. An item's shard is
/// its log partition's (modulo this): every event of an item is in one log
/// partition (keyed topics never grow, see `topics apply`), so the shard
/// is stable, and a projector's batch, which is one log partition's, writes
/// one shard of it, however many items it touches.
pub const ALL_SHARDS: i16 = 4;

/// Older buckets one continuation query reads at most.
const WINDOW: usize = 4;

/// How long a process trusts the buckets it knows a timeline has before it
/// reads them again (the first page always reads today's bucket; one that
/// another process starts is seen at most this late otherwise).
pub const BUCKETS_TTL: std::time::Duration = std::time::Duration::from_secs(5);

/// The bucket of an item created at `t`.
pub fn bucket_of(t: DateTime<Utc>) -> i64 {
    t.timestamp().div_euclid(BUCKET_SECS)
}

/// The shards of a timeline's bucket: `0..shards(timeline)`.
pub fn shards(timeline: &str) -> i16 {
    if timeline == ALL_KINDS { ALL_SHARDS } else { 1 }
}

/// The shard of `timeline` the rows of an item from log partition
/// `partition` live in.
pub fn shard_of(timeline: &str, partition: i32) -> i16 {
    partition.rem_euclid(i32::from(shards(timeline))) as i16
}

/// One timeline partition: a timeline's bucket's shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TimelinePart {
    /// A kind's name, or [`ALL_KINDS`].
    pub timeline: &'static str,
    /// [`bucket_of`] the items' creation.
    pub bucket: i64,
    /// [`shard_of`] the items' log partition.
    pub shard: i16,
}

impl TimelinePart {
    /// Where an item's row lives in `timeline`.
    pub fn of(timeline: &'static str, s: &ItemState) -> Self {
        Self {
            timeline,
            bucket: bucket_of(s.created_at),
            shard: shard_of(timeline, s.position.partition),
        }
    }
}

/// The buckets each timeline has rows in, as far as this process knows:
/// what its own writes noted, and what it last read from the store's bucket
/// index (a control read, at most every [`BUCKETS_TTL`] and only when a page
/// needs older buckets than it reads anyway).
#[derive(Debug, Default)]
pub struct KnownBuckets {
    known: parking_lot::Mutex<std::collections::HashMap<&'static str, Known>>,
}

#[derive(Debug, Default)]
struct Known {
    buckets: std::collections::BTreeSet<i64>,
    read_at: Option<std::time::Instant>,
}

impl KnownBuckets {
    /// Whether `timeline` is known to have `bucket` in the index.
    pub fn has(&self, timeline: &'static str, bucket: i64) -> bool {
        self.known
            .lock()
            .get(timeline)
            .is_some_and(|k| k.buckets.contains(&bucket))
    }
    /// `bucket` of `timeline` is in the index.
    pub fn note(&self, timeline: &'static str, bucket: i64) {
        self.known
            .lock()
            .entry(timeline)
            .or_default()
            .buckets
            .insert(bucket);
    }
    /// Whether the index should be read again before trusting what is known
    /// (`ttl` `None`: once read, always trusted, as by a store no other
    /// process writes).
    pub fn stale(&self, timeline: &'static str, ttl: Option<std::time::Duration>) -> bool {
        match self.known.lock().get(timeline).and_then(|k| k.read_at) {
            None => true,
            Some(at) => ttl.is_some_and(|ttl| at.elapsed() >= ttl),
        }
    }
    /// What the index holds for `timeline`, read now.
    pub fn read(&self, timeline: &'static str, buckets: impl IntoIterator<Item = i64>) {
        let mut known = self.known.lock();
        let k = known.entry(timeline).or_default();
        k.buckets.extend(buckets);
        k.read_at = Some(std::time::Instant::now());
    }
    /// Known buckets of `timeline` in `range`, newest first.
    pub fn within(
        &self,
        timeline: &'static str,
        range: impl std::ops::RangeBounds<i64>,
    ) -> Vec<i64> {
        self.known
            .lock()
            .get(timeline)
            .map(|k| k.buckets.range(range).rev().copied().collect())
            .unwrap_or_default()
    }
    /// Forgets every timeline (their rows were cleared).
    pub fn clear(&self) {
        self.known.lock().clear();
    }
}

/// How a store reads its timeline partitions, for [`timeline_page`].
#[async_trait]
pub trait TimelineParts: Send + Sync {
    /// One query: the newest `limit` live rows of each partition of
    /// `timeline` in these buckets (every shard of each), before `before`
    /// when given, in any order.
    async fn read_buckets(
        &self,
        timeline: &'static str,
        buckets: &[i64],
        before: Option<FeedCursor>,
        limit: usize,
    ) -> Result<Vec<TimelineRow>, ViewError>;
    /// What this process knows of the buckets, with the index read first
    /// when it is stale.
    async fn known_buckets(&self, timeline: &'static str) -> Result<&KnownBuckets, ViewError>;
}

/// A timeline page, newest first: one query over the cursor's bucket (the
/// first page: today's, and yesterday's and any later bucket known to have
/// rows), then, only when the page is not full, the next older buckets
/// with rows, [`WINDOW`] per query, until it is.
pub async fn timeline_page<S: TimelineParts + ?Sized>(
    s: &S,
    kind: Option<FeedKind>,
    before: Option<FeedCursor>,
    limit: usize,
) -> Result<Vec<TimelineRow>, ViewError> {
    let timeline = kind.map_or(ALL_KINDS, FeedKind::as_str);
    let limit = limit.max(1);
    let (first, mut floor) = match before {
        Some((t, _)) => (vec![bucket_of(t)], bucket_of(t)),
        None => {
            // Today's bucket always (a day's first item may be another
            // process's, just now), and the later and yesterday's ones
            // known to have rows.
            let today = bucket_of(crate::edge::now());
            let known = s.known_buckets(timeline).await?;
            let mut first = known.within(timeline, today + 1..);
            first.push(today);
            first.extend(known.within(timeline, today - 1..today));
            (first, today - 1)
        }
    };
    // Each partition's newest, merged: the newest of them all.
    let newest = |mut rows: Vec<TimelineRow>, n: usize| {
        rows.sort_by_key(|r| std::cmp::Reverse((r.created_at, r.item_id)));
        rows.truncate(n);
        rows
    };
    let mut rows = newest(
        s.read_buckets(timeline, &first, before, limit).await?,
        limit,
    );
    while rows.len() < limit {
        let older = s.known_buckets(timeline).await?.within(timeline, ..floor);
        let window: Vec<i64> = older.into_iter().take(WINDOW).collect();
        let Some(&last) = window.last() else { break };
        floor = last;
        let n = limit - rows.len();
        rows.extend(newest(s.read_buckets(timeline, &window, None, n).await?, n));
    }
    Ok(rows)
}

/// One row of a timeline (per kind, and one for all kinds), newest first: a
/// copy of the item with its counts, so a page is one query.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TimelineRow {
    /// The item.
    pub item_id: FeedItemId,
    /// Post, game or team.
    pub kind: FeedKind,
    /// The kind's fields.
    pub content: FeedContent,
    /// Who created it.
    pub author: Principal,
    /// Created at.
    pub created_at: DateTime<Utc>,
    /// Users who like it.
    pub likes: u64,
    /// Users who joined it.
    pub joined: u64,
    /// Version of the item this row reflects.
    pub position: Position,
}

impl TimelineRow {
    /// The timeline copy of an item.
    pub fn of(s: &ItemState) -> Self {
        Self {
            item_id: s.item_id,
            kind: s.kind,
            content: s.content.clone(),
            author: s.author.clone(),
            created_at: s.created_at,
            likes: s.likes,
            joined: s.joined,
            position: s.position,
        }
    }

    /// The timelines an item appears in: its kind's and the one of all.
    pub fn timelines(kind: FeedKind) -> [&'static str; 2] {
        [kind.as_str(), ALL_KINDS]
    }

    /// The partitions an item's rows live in: its kind's timeline's and the
    /// all-kinds timeline's.
    pub fn parts(s: &ItemState) -> [TimelinePart; 2] {
        Self::timelines(s.kind).map(|t| TimelinePart::of(t, s))
    }
}

/// The feed view's store.
#[async_trait]
pub trait FeedStore: Send + Sync + 'static {
    /// Projector: current states of these feed items (absent ones omitted).
    async fn load_items(&self, ids: &[FeedItemId]) -> Result<Vec<ItemState>, ViewError>;
    /// Projector: these memberships of one item (absent ones omitted).
    async fn load_members(
        &self,
        item: FeedItemId,
        keys: &[MemberKey],
    ) -> Result<Vec<(MemberKey, Member)>, ViewError>;
    /// Projector: the timeline rows of these items (derived rows, written
    /// before their items': [`Self::commit_members`]), one batch per
    /// timeline partition, with the bucket index's entry of each bucket
    /// this process has not seen written.
    async fn commit_timelines(&self, states: &[&ItemState]) -> Result<(), ViewError>;
    /// Projector: one atomic, versioned write of the item and its changed
    /// memberships, once its timeline rows are written.
    async fn commit_members(&self, commit: &ItemCommit) -> Result<(), ViewError>;
    /// Projector: the timeline rows (derived, first), then one atomic,
    /// versioned write of the item and its changed memberships.
    async fn commit_item(&self, commit: &ItemCommit) -> Result<(), ViewError> {
        self.commit_timelines(&[&commit.state]).await?;
        self.commit_members(commit).await
    }
    /// Read: one feed item, one query.
    async fn item(&self, id: FeedItemId) -> Result<Option<ItemState>, ViewError>;
    /// Read: a timeline page, newest first, one query (`kind` `None`: all).
    async fn timeline(
        &self,
        kind: Option<FeedKind>,
        before: Option<FeedCursor>,
        limit: usize,
    ) -> Result<Vec<TimelineRow>, ViewError>;
}

#[async_trait]
impl AggregateStore<ItemAggregate> for dyn FeedStore {
    async fn load(&self, ids: &[FeedItemId]) -> Result<Vec<ItemState>, ViewError> {
        self.load_items(ids).await
    }
    async fn load_rows(
        &self,
        id: FeedItemId,
        keys: &[MemberKey],
    ) -> Result<Vec<(MemberKey, Member)>, ViewError> {
        self.load_members(id, keys).await
    }
    async fn commit(&self, c: &ItemCommit) -> Result<(), ViewError> {
        self.commit_item(c).await
    }
    async fn commit_derived(&self, commits: &[&ItemCommit]) -> Result<(), ViewError> {
        let states: Vec<&ItemState> = commits.iter().map(|c| &c.state).collect();
        self.commit_timelines(&states).await
    }
    async fn commit_own(&self, c: &ItemCommit) -> Result<(), ViewError> {
        self.commit_members(c).await
    }
}

impl Generations {
    /// The feed store readers see now (the active generation's).
    pub async fn feed(&self) -> Result<Arc<dyn FeedStore>, ViewError> {
        Ok(self.active(VIEW).await?)
    }
}
