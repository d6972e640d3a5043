//! The embedded view store: an in-process wide-column store with the CQL
//! data model, so that the embedded default and ScyllaDB behave alike.
//!
//! Tables are maps of partitions; a partition has static cells and
//! clustering rows kept in clustering order; every cell carries its write
//! timestamp and the newer timestamp wins (a delete at the same timestamp
//! wins over a write, as in CQL). A batch to one partition is atomic and
//! isolated: it is applied under the table's lock.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

use async_trait::async_trait;
use parking_lot::RwLock;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::{
    ALL_KINDS, Checkpoint, Counters, FeedCursor, Generation, OwnerCursor, OwnerPollRow,
    TimelineRow, View, ViewError, ViewStore, VoterRow, voter_changes, write_timestamp,
};
use crate::event::{FeedItemId, PollId, QuestionId, SessionKey, UploadId, UserId};
use crate::fold::cards::{Card, Patch};
use crate::fold::feed::{FeedKind, ItemCommit, ItemState, Member, MemberKey};
use crate::fold::poll::{Ballot, PollCommit, PollState, VoterKey};

#[derive(Clone, Debug)]
struct Cell {
    ts: i64,
    value: Option<Value>,
}

#[derive(Clone, Debug, Default)]
struct Row {
    /// Row deletion timestamp: cells at or below it are dead.
    deleted_at: Option<i64>,
    cells: BTreeMap<String, Cell>,
}

impl Row {
    fn write(&mut self, ts: i64, values: Map<String, Value>) {
        for (col, v) in values {
            let newer = match self.cells.get(&col) {
                Some(c) => ts > c.ts || (ts == c.ts && c.value.is_some()),
                None => true,
            };
            if newer {
                self.cells.insert(
                    col,
                    Cell {
                        ts,
                        value: (!v.is_null()).then_some(v),
                    },
                );
            }
        }
    }

    fn delete(&mut self, ts: i64) {
        self.deleted_at = Some(self.deleted_at.map_or(ts, |d| d.max(ts)));
    }

    /// The live cells as a JSON object; `None` when the row is dead.
    fn live(&self) -> Option<Map<String, Value>> {
        let mut out = Map::new();
        for (col, c) in &self.cells {
            if self.deleted_at.is_some_and(|d| c.ts <= d) {
                continue;
            }
            if let Some(v) = &c.value {
                out.insert(col.clone(), v.clone());
            }
        }
        (!out.is_empty()).then_some(out)
    }
}

#[derive(Clone, Debug)]
struct Partition<C: Ord> {
    statics: Row,
    rows: BTreeMap<C, Row>,
}

impl<C: Ord> Default for Partition<C> {
    fn default() -> Self {
        Self {
            statics: Row::default(),
            rows: BTreeMap::new(),
        }
    }
}

/// One table: partitions by key, rows in clustering order.
#[derive(Debug)]
struct Table<P, C: Ord> {
    parts: RwLock<HashMap<P, Partition<C>>>,
}

impl<P, C: Ord> Default for Table<P, C> {
    fn default() -> Self {
        Self {
            parts: RwLock::new(HashMap::new()),
        }
    }
}

/// A mutation of one partition, applied atomically.
enum Mutation<C> {
    Static(Map<String, Value>),
    Upsert(C, Map<String, Value>),
    Delete(C),
}

impl<P: Hash + Eq + Clone, C: Ord + Clone> Table<P, C> {
    fn batch(&self, pk: &P, ts: i64, muts: Vec<Mutation<C>>) {
        let mut parts = self.parts.write();
        let part = parts.entry(pk.clone()).or_default();
        for m in muts {
            match m {
                Mutation::Static(v) => part.statics.write(ts, v),
                Mutation::Upsert(ck, v) => part.rows.entry(ck).or_default().write(ts, v),
                Mutation::Delete(ck) => part.rows.entry(ck).or_default().delete(ts),
            }
        }
    }

    fn statics(&self, pk: &P) -> Option<Map<String, Value>> {
        self.parts.read().get(pk).and_then(|p| p.statics.live())
    }

    fn rows<F, R>(&self, pk: &P, f: F) -> R
    where
        F: FnOnce(Option<&BTreeMap<C, Row>>) -> R,
    {
        let parts = self.parts.read();
        f(parts.get(pk).map(|p| &p.rows))
    }
}

fn to_cells<T: Serialize>(v: &T) -> Map<String, Value> {
    match serde_json::to_value(v) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    }
}

fn from_cells<T: DeserializeOwned>(m: Map<String, Value>) -> Result<T, ViewError> {
    serde_json::from_value(Value::Object(m)).map_err(|e| ViewError::Corrupt(e.to_string()))
}

/// Newest first: clustering order `created_at DESC, poll_id DESC`.
type OwnerKey = std::cmp::Reverse<(i64, PollId)>;
/// Newest first: clustering order `created_at DESC, item_id DESC`.
type TimelineKey = std::cmp::Reverse<(i64, FeedItemId)>;

/// The embedded store (the default of `atelier up`).
#[derive(Debug, Default)]
pub struct EmbeddedStore {
    polls: Table<PollId, VoterKey>,
    polls_by_owner: Table<UserId, OwnerKey>,
    poll_voters: Table<(PollId, QuestionId), String>,
    feed_items: Table<FeedItemId, MemberKey>,
    timelines: Table<&'static str, TimelineKey>,
    cards: Table<SessionKey, u8>,
    uploads: Table<UploadId, ()>,
    checkpoints: Table<String, (String, i32)>,
    /// The control rows of view generations.
    generations: parking_lot::Mutex<BTreeMap<View, Generation>>,
    counters: Counters,
}

impl<P, C: Ord> Table<P, C> {
    fn clear(&self) {
        self.parts.write().clear();
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

/// Rows after a cursor in a newest-first clustering.
fn page<K: Ord, T: DeserializeOwned>(
    rows: Option<&BTreeMap<K, Row>>,
    after: Option<K>,
    limit: usize,
) -> Result<Vec<T>, ViewError> {
    let Some(rows) = rows else {
        return Ok(Vec::new());
    };
    let iter: Box<dyn Iterator<Item = (&K, &Row)>> = match after {
        Some(start) => {
            Box::new(rows.range((std::ops::Bound::Excluded(start), std::ops::Bound::Unbounded)))
        }
        None => Box::new(rows.iter()),
    };
    iter.filter_map(|(_, r)| r.live())
        .take(limit)
        .map(from_cells)
        .collect()
}

#[async_trait]
impl ViewStore for EmbeddedStore {
    fn backend(&self) -> &'static str {
        "embedded"
    }

    fn counts(&self) -> (u64, u64) {
        self.counters.get()
    }

    async fn migrate(&self) -> Result<(), ViewError> {
        Ok(())
    }

    async fn generations(&self) -> Result<Vec<Generation>, ViewError> {
        Ok(self.generations.lock().values().cloned().collect())
    }

    async fn set_generation(&self, next: &Generation, expected: i64) -> Result<bool, ViewError> {
        let mut rows = self.generations.lock();
        let stored = rows.get(&next.view).map_or(0, |g| g.rev);
        if stored != expected {
            return Ok(false);
        }
        rows.insert(next.view, next.clone());
        Ok(true)
    }

    async fn drop_view(&self, view: View) -> Result<(), ViewError> {
        match view {
            View::Polls => {
                self.polls.clear();
                self.polls_by_owner.clear();
                self.poll_voters.clear();
            }
            View::Feed => {
                self.feed_items.clear();
                self.timelines.clear();
            }
            View::Cards => {
                self.cards.clear();
                self.uploads.clear();
            }
            View::Infer => {}
        }
        self.checkpoints
            .parts
            .write()
            .remove(&view.as_str().to_owned());
        Ok(())
    }

    async fn drop_store(&self) -> Result<(), ViewError> {
        for v in View::ALL {
            self.drop_view(v).await?;
        }
        Ok(())
    }

    async fn load_polls(&self, ids: &[PollId]) -> Result<Vec<PollState>, ViewError> {
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            self.counters.read();
            if let Some(m) = self.polls.statics(id) {
                out.push(from_cells(m)?);
            }
        }
        Ok(out)
    }

    async fn load_ballots(
        &self,
        poll: PollId,
        voters: &[VoterKey],
    ) -> Result<Vec<(VoterKey, Ballot)>, ViewError> {
        self.counters.read();
        self.polls.rows(&poll, |rows| {
            let Some(rows) = rows else {
                return Ok(Vec::new());
            };
            let mut out = Vec::new();
            for v in voters {
                if let Some(m) = rows.get(v).and_then(Row::live) {
                    out.push((v.clone(), from_cells(m)?));
                }
            }
            Ok(out)
        })
    }

    async fn commit_poll(&self, c: &PollCommit) -> Result<(), ViewError> {
        let s = &c.state;
        let ts = write_timestamp(s.position.offset);
        // Derived row first: a crash before the aggregate is repaired by
        // re-applying, which rewrites it.
        let row = OwnerPollRow::of(s);
        self.polls_by_owner.batch(
            &s.owner.id,
            ts,
            vec![Mutation::Upsert(
                std::cmp::Reverse((s.created_at.timestamp_micros(), s.poll_id)),
                to_cells(&row),
            )],
        );
        let mut muts = Vec::with_capacity(c.ballots.len() + 1);
        muts.push(Mutation::Static(to_cells(s)));
        for (k, b) in &c.ballots {
            muts.push(match b {
                Some(b) => Mutation::Upsert(k.clone(), to_cells(b)),
                None => Mutation::Delete(k.clone()),
            });
        }
        for (q, changes) in voter_changes(c) {
            let vm = changes
                .into_iter()
                .map(|(v, row)| match row {
                    Some(r) => Mutation::Upsert(v.to_owned(), to_cells(&r)),
                    None => Mutation::Delete(v.to_owned()),
                })
                .collect::<Vec<_>>();
            self.counters.write(vm.len() as u64);
            self.poll_voters.batch(&(s.poll_id, q), ts, vm);
        }
        self.counters.write(1 + muts.len() as u64);
        self.polls.batch(&s.poll_id, ts, muts);
        Ok(())
    }

    async fn question_voters(
        &self,
        poll: PollId,
        question: QuestionId,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<VoterRow>, ViewError> {
        self.counters.read();
        self.poll_voters.rows(&(poll, question), |rows| {
            page(rows, after.map(str::to_owned), limit)
        })
    }

    async fn load_items(&self, ids: &[FeedItemId]) -> Result<Vec<ItemState>, ViewError> {
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            self.counters.read();
            if let Some(m) = self.feed_items.statics(id) {
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
        self.counters.read();
        self.feed_items.rows(&item, |rows| {
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
        })
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
            self.counters.write(1);
            self.timelines.batch(&t, ts, vec![m]);
        }
        let mut muts = Vec::with_capacity(c.members.len() + 1);
        muts.push(Mutation::Static(to_cells(s)));
        for (k, m) in &c.members {
            muts.push(match m {
                Some(m) => Mutation::Upsert(k.clone(), to_cells(m)),
                None => Mutation::Delete(k.clone()),
            });
        }
        self.counters.write(muts.len() as u64);
        self.feed_items.batch(&s.item_id, ts, muts);
        Ok(())
    }

    async fn item(&self, id: FeedItemId) -> Result<Option<ItemState>, ViewError> {
        self.counters.read();
        self.feed_items.statics(&id).map(from_cells).transpose()
    }

    async fn timeline(
        &self,
        kind: Option<FeedKind>,
        before: Option<FeedCursor>,
        limit: usize,
    ) -> Result<Vec<TimelineRow>, ViewError> {
        self.counters.read();
        let name = kind.map_or(ALL_KINDS, FeedKind::as_str);
        let after = before.map(|(t, id)| std::cmp::Reverse((t.timestamp_micros(), id)));
        self.timelines.rows(&name, |rows| page(rows, after, limit))
    }

    async fn apply_patches(&self, cards: &[&Patch], uploads: &[&Patch]) -> Result<(), ViewError> {
        for p in cards {
            self.counters.write(1);
            self.cards.batch(
                &p.session_key,
                p.ts,
                vec![Mutation::Upsert(p.slot, patch_cells(p))],
            );
        }
        for p in uploads {
            self.counters.write(1);
            self.uploads
                .batch(&p.upload_id, p.ts, vec![Mutation::Static(patch_cells(p))]);
        }
        Ok(())
    }

    async fn cards(&self, session: &SessionKey) -> Result<Vec<Card>, ViewError> {
        self.counters.read();
        self.cards.rows(session, |rows| page(rows, None, 3))
    }

    async fn upload(&self, id: UploadId) -> Result<Option<Card>, ViewError> {
        self.counters.read();
        self.uploads.statics(&id).map(from_cells).transpose()
    }

    async fn poll(&self, id: PollId) -> Result<Option<PollState>, ViewError> {
        self.counters.read();
        self.polls.statics(&id).map(from_cells).transpose()
    }

    async fn polls_by_owner(
        &self,
        owner: &UserId,
        before: Option<OwnerCursor>,
        limit: usize,
    ) -> Result<Vec<OwnerPollRow>, ViewError> {
        self.counters.read();
        let after = before.map(|(t, id)| std::cmp::Reverse((t.timestamp_micros(), id)));
        self.polls_by_owner
            .rows(owner, |rows| page(rows, after, limit))
    }

    async fn checkpoint(
        &self,
        view: &str,
        topic: &str,
        partition: i32,
    ) -> Result<Option<Checkpoint>, ViewError> {
        self.counters.read();
        self.checkpoints.rows(&view.to_owned(), |rows| {
            rows.and_then(|r| r.get(&(topic.to_owned(), partition)))
                .and_then(Row::live)
                .map(from_cells)
                .transpose()
        })
    }

    async fn save_checkpoint(&self, cp: &Checkpoint) -> Result<(), ViewError> {
        self.counters.write(1);
        self.checkpoints.batch(
            &cp.view,
            write_timestamp(cp.offset),
            vec![Mutation::Upsert(
                (cp.topic.clone(), cp.partition),
                to_cells(cp),
            )],
        );
        Ok(())
    }

    async fn checkpoints(&self, view: &str) -> Result<Vec<Checkpoint>, ViewError> {
        self.counters.read();
        self.checkpoints.rows(&view.to_owned(), |rows| {
            rows.into_iter()
                .flat_map(|r| r.values())
                .filter_map(Row::live)
                .map(from_cells)
                .collect()
        })
    }

    async fn scan_polls(
        &self,
        after: Option<PollId>,
        limit: usize,
    ) -> Result<(Vec<PollState>, Option<PollId>), ViewError> {
        self.counters.read();
        let limit = limit.max(1);
        let parts = self.polls.parts.read();
        // Partitions are hashed, not ordered: one walk keeps the `limit`
        // smallest ids past the cursor in a max-heap, so a page costs one
        // pass over the table and `limit` ids of memory, never a sorted
        // copy of every key.
        let mut heap = std::collections::BinaryHeap::with_capacity(limit + 1);
        for id in parts.keys().filter(|id| after.is_none_or(|a| **id > a)) {
            if heap.len() < limit {
                heap.push(*id);
            } else if heap.peek().is_some_and(|top| id < top) {
                heap.pop();
                heap.push(*id);
            }
        }
        let ids = heap.into_sorted_vec();
        let next = (ids.len() == limit).then(|| ids.last().copied()).flatten();
        let mut out = Vec::with_capacity(ids.len());
        for id in &ids {
            // As in CQL, a partition without its aggregate is not a poll.
            if let Some(m) = parts.get(id).and_then(|p| p.statics.live()) {
                out.push(from_cells(m)?);
            }
        }
        Ok((out, next))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn newer_timestamps_win_per_cell() {
        let mut r = Row::default();
        r.write(5, obj(json!({"a": 1, "b": 1})));
        r.write(3, obj(json!({"a": 2, "c": 2})));
        r.write(7, obj(json!({"b": 3})));
        assert_eq!(r.live().unwrap(), obj(json!({"a": 1, "b": 3, "c": 2})));
    }

    #[test]
    fn deletes_shadow_older_cells_only() {
        let mut r = Row::default();
        r.write(5, obj(json!({"a": 1})));
        r.delete(5);
        assert!(r.live().is_none());
        r.write(4, obj(json!({"a": 2})));
        assert!(r.live().is_none(), "an older write stays dead");
        r.write(6, obj(json!({"a": 3})));
        assert_eq!(r.live().unwrap(), obj(json!({"a": 3})));
    }
}
