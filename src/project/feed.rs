//! The feed projector: folds `atelier.feed.v1` into feed items and their
//! timeline rows, with the same mini-batch steps as the polls projector:
//! decode (poison to the DLQ), group by item, load states (bounded LRU cache
//! per partition) and only the memberships the batch touches, fold in log
//! order, write each item's commits (timeline rows first, then one atomic
//! partition batch `USING TIMESTAMP` from the offset), then the checkpoint.

use std::collections::{HashMap, HashSet};
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use lru::LruCache;
use parking_lot::Mutex;

use super::common::{
    Assigned, BatchStats, Checkpoints, Live, decode, evict_partition, observe_batch, view_err,
    write_commits,
};
use super::{Change, Watermarks};
use crate::bus::{Batch, HandlerError, PartitionHandler, Producer};
use crate::config::ProjectorConfig;
use crate::event::{Event, FeedItemId, Topic};
use crate::fold::feed::{
    ItemAggregate, ItemCommit, ItemState, Rejection, Relation, item_id, member_key,
};
use crate::fold::{Outcome, Position};
use crate::telemetry::names;
use crate::view::{Checkpoint, ViewError, ViewStore};

/// The view name used in checkpoints.
pub const VIEW: &str = "feed";
/// The DLQ stage name.
pub const STAGE: &str = "project.feed";

/// The projector for the feed.
pub struct FeedProjector {
    views: Arc<dyn ViewStore>,
    dlq: Producer,
    cfg: ProjectorConfig,
    watermarks: Arc<Watermarks>,
    cache: Mutex<LruCache<(i32, FeedItemId), ItemState>>,
    checkpoints: Checkpoints,
    totals: Mutex<BatchStats>,
    assigned: Assigned,
    /// Whether this projector's generation serves reads: only then does it
    /// announce changes and watermarks (a rebuild runs silent).
    live: Live,
}

impl std::fmt::Debug for FeedProjector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeedProjector")
            .field("views", &self.views.backend())
            .finish_non_exhaustive()
    }
}

type Positioned = (Position, Event);

impl FeedProjector {
    /// A projector writing to `views`, dead-lettering through `dlq`.
    pub fn new(
        views: Arc<dyn ViewStore>,
        dlq: Producer,
        cfg: ProjectorConfig,
        watermarks: Arc<Watermarks>,
    ) -> Self {
        let cap = NonZeroUsize::new(cfg.cache_polls.max(1)).expect("nonzero");
        Self {
            views,
            dlq,
            cfg,
            watermarks,
            cache: Mutex::new(LruCache::new(cap)),
            checkpoints: Checkpoints::new(VIEW),
            totals: Mutex::new(BatchStats::default()),
            assigned: Assigned::default(),
            live: Live::default(),
        }
    }

    /// Waits until a partition was assigned, or `timeout` passed.
    pub async fn wait_assigned(&self, timeout: std::time::Duration) -> bool {
        self.assigned.wait(timeout).await
    }

    /// Totals since start.
    pub fn totals(&self) -> BatchStats {
        *self.totals.lock()
    }

    /// Whether this projector announces what it applies (see [`Live`]).
    pub fn live(&self) -> &Live {
        &self.live
    }

    async fn write(
        &self,
        commits: &[(FeedItemId, Vec<ItemCommit>)],
        cp: &Checkpoint,
    ) -> Result<(), ViewError> {
        let views = self.views.as_ref();
        write_commits(
            views,
            commits,
            self.cfg.write_concurrency,
            |c| views.commit_item(c),
            cp,
        )
        .await
    }

    async fn load(
        &self,
        partition: i32,
        groups: &[(FeedItemId, Vec<Positioned>)],
    ) -> Result<Vec<ItemAggregate>, ViewError> {
        let mut states: HashMap<FeedItemId, ItemState> = HashMap::new();
        let mut missing = Vec::new();
        {
            let mut cache = self.cache.lock();
            for (id, _) in groups {
                match cache.get(&(partition, *id)) {
                    Some(s) => {
                        states.insert(*id, s.clone());
                    }
                    None => missing.push(*id),
                }
            }
        }
        if !missing.is_empty() {
            for s in self.views.load_items(&missing).await? {
                states.insert(s.item_id, s);
            }
        }
        let loads: Vec<_> = groups
            .iter()
            .map(|(id, events)| {
                let state = states.remove(id);
                // Only the memberships this batch touches, never all of them.
                let keys: Vec<_> = match &state {
                    None => Vec::new(),
                    Some(_) => events
                        .iter()
                        .filter_map(|(_, e)| member_key(e))
                        .collect::<HashSet<_>>()
                        .into_iter()
                        .collect(),
                };
                // With no likes (or no joins) at all, there is no row to
                // read: the first like of an item costs no read.
                let (absent, stored): (Vec<_>, Vec<_>) =
                    keys.into_iter().partition(|(rel, _)| match (&state, rel) {
                        (Some(s), Relation::Like) => s.likes == 0,
                        (Some(s), Relation::Join) => s.joined == 0,
                        (None, _) => true,
                    });
                async move {
                    let found = if stored.is_empty() {
                        Vec::new()
                    } else {
                        self.views.load_members(*id, &stored).await?
                    };
                    let mut agg = ItemAggregate::from_state(state);
                    for k in absent.into_iter().chain(stored) {
                        agg.load_member(k, None);
                    }
                    for (k, m) in found {
                        agg.load_member(k, Some(m));
                    }
                    Ok::<_, ViewError>(agg)
                }
            })
            .collect();
        futures::stream::iter(loads)
            .buffered(self.cfg.write_concurrency.max(1))
            .try_collect()
            .await
    }

    /// Processes one batch; see the module docs for the steps.
    pub async fn process(&self, batch: &Batch) -> Result<BatchStats, HandlerError> {
        let mut stats = BatchStats::default();
        let Some(last) = batch.records.last().map(|r| r.offset) else {
            return Ok(stats);
        };
        let mut cp = self
            .checkpoints
            .get(self.views.as_ref(), &batch.topic, batch.partition)
            .await
            .map_err(view_err)?;
        let started = Instant::now();
        let decoded = decode(
            batch,
            cp.offset,
            &[Topic::Feed],
            &self.dlq,
            STAGE,
            &mut stats,
        )
        .await?;
        let newest = decoded.iter().map(|(_, e)| e.time).max();
        let mut groups: Vec<(FeedItemId, Vec<Positioned>)> = Vec::new();
        let mut index: HashMap<FeedItemId, usize> = HashMap::new();
        for (pos, event) in decoded {
            let Some(id) = item_id(&event.data) else {
                continue;
            };
            let i = *index.entry(id).or_insert_with(|| {
                groups.push((id, Vec::new()));
                groups.len() - 1
            });
            groups[i].1.push((pos, event));
        }
        let aggs = self
            .load(batch.partition, &groups)
            .await
            .map_err(view_err)?;

        let mut commits: Vec<(FeedItemId, Vec<ItemCommit>)> = Vec::new();
        let mut finals: Vec<(ItemState, bool)> = Vec::new();
        for ((id, events), mut agg) in groups.iter().zip(aggs) {
            let mut mine = Vec::new();
            for (pos, e) in events {
                match agg.apply(*pos, e) {
                    Outcome::Applied => stats.applied += 1,
                    Outcome::Duplicate => stats.duplicates += 1,
                    Outcome::Rejected(r) => {
                        stats.rejected += 1;
                        metrics::counter!(names::FOLD_REJECTED, "view" => VIEW, "reason" => r.as_str())
                            .increment(1);
                        if r == Rejection::UnknownItem && agg.state.is_none() {
                            *cp.rejected.entry(r.as_str().to_owned()).or_default() += 1;
                        }
                    }
                }
                if agg.dirty_members() >= self.cfg.commit_rows.max(1)
                    && let Some(c) = agg.take_commit()
                {
                    mine.push(c);
                }
            }
            if let Some(c) = agg.take_commit() {
                mine.push(c);
            }
            let changed = !mine.is_empty();
            if let Some(s) = agg.state {
                finals.push((s, changed));
            }
            if changed {
                commits.push((*id, mine));
            }
        }
        metrics::histogram!(names::FOLD_SECONDS).record(started.elapsed().as_secs_f64());

        let wrote = Instant::now();
        stats.commits = commits.iter().map(|(_, c)| c.len() as u64).sum();
        cp.offset = last;
        if let Err(e) = self.write(&commits, &cp).await {
            // Some writes may have landed: reload this batch's items on retry.
            let mut cache = self.cache.lock();
            for (id, _) in &groups {
                cache.pop(&(batch.partition, *id));
            }
            return Err(view_err(e));
        }
        metrics::histogram!(names::WRITE_SECONDS).record(wrote.elapsed().as_secs_f64());
        {
            let mut cache = self.cache.lock();
            for (s, changed) in finals {
                if changed && self.live.get() {
                    self.watermarks.changes.publish(
                        Change::Feed(s.item_id, s.kind),
                        &batch.topic,
                        s.position,
                    );
                }
                cache.put((batch.partition, s.item_id), s);
            }
        }
        self.checkpoints.put(cp);
        if self.live.get() {
            self.watermarks.publish(&batch.topic, batch.partition, last);
        }
        observe_batch(VIEW, batch.records.len(), stats.commits, newest);
        metrics::counter!(names::FOLDED, "view" => VIEW, "outcome" => "applied")
            .increment(stats.applied);
        metrics::counter!(names::FOLDED, "view" => VIEW, "outcome" => "duplicate")
            .increment(stats.duplicates);
        self.totals.lock().add(&stats);
        Ok(stats)
    }
}

#[async_trait]
impl PartitionHandler for FeedProjector {
    async fn assigned(&self, topic: &str, partition: i32) {
        self.assigned.inc();
        self.checkpoints.forget(topic, partition);
        evict_partition(&self.cache, partition);
    }

    async fn handle(&self, batch: &Batch) -> Result<(), HandlerError> {
        self.process(batch).await.map(|_| ())
    }
}
