//! The polls projector: folds `atelier.polls.v1` into the `polls` view.
//!
//! Per mini-batch of one partition:
//! 1. decode; poison records go to the DLQ (acknowledged before going on);
//! 2. group events by poll; load the polls' states (bounded LRU cache,
//!    per-partition) and the ballots of the voters the batch touches;
//! 3. fold in log order (the pure fold skips what the aggregate's version
//!    already covers), cutting a commit every `commit_rows` ballot rows;
//! 4. write each poll's commits (derived row, then one atomic partition
//!    batch `USING TIMESTAMP` from the offset), polls in parallel, bounded;
//! 5. save the partition checkpoint, publish the watermark; the consumer
//!    loop then stores the offset.

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
use crate::event::{Event, EventData, PollId, Topic};
use crate::fold::poll::{FoldConfig, PollAggregate, PollCommit, PollState, Rejection, poll_id};
use crate::fold::{Outcome, Position};
use crate::telemetry::names;
use crate::view::{Checkpoint, ViewError, ViewStore};

/// The view name used in checkpoints.
pub const VIEW: &str = "polls";
/// The DLQ stage name.
pub const STAGE: &str = "project.polls";

/// An event with its log position.
type Positioned = (Position, Event);

/// The projector for polls.
pub struct PollProjector {
    views: Arc<dyn ViewStore>,
    dlq: Producer,
    cfg: ProjectorConfig,
    fold: FoldConfig,
    watermarks: Arc<Watermarks>,
    cache: Mutex<LruCache<(i32, PollId), PollState>>,
    checkpoints: Checkpoints,
    totals: Mutex<BatchStats>,
    assigned: Assigned,
    /// Whether this projector's generation serves reads: only then does it
    /// announce changes and watermarks (a rebuild runs silent).
    live: Live,
}

impl std::fmt::Debug for PollProjector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PollProjector")
            .field("views", &self.views.backend())
            .finish_non_exhaustive()
    }
}

impl PollProjector {
    /// A projector writing to `views`, dead-lettering through `dlq`.
    pub fn new(
        views: Arc<dyn ViewStore>,
        dlq: Producer,
        cfg: ProjectorConfig,
        fold: FoldConfig,
        watermarks: Arc<Watermarks>,
    ) -> Self {
        let cap = NonZeroUsize::new(cfg.cache_polls.max(1)).expect("nonzero");
        Self {
            views,
            dlq,
            cfg,
            fold,
            watermarks,
            cache: Mutex::new(LruCache::new(cap)),
            checkpoints: Checkpoints::new(VIEW),
            totals: Mutex::new(BatchStats::default()),
            assigned: Assigned::default(),
            live: Live::default(),
        }
    }

    /// Waits until this projector has been assigned at least one partition
    /// (it has joined its consumer group), or `timeout` passed.
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
        commits: &[(PollId, Vec<PollCommit>)],
        cp: &Checkpoint,
    ) -> Result<(), ViewError> {
        let views = self.views.as_ref();
        write_commits(
            views,
            commits,
            self.cfg.write_concurrency,
            |c| views.commit_poll(c),
            cp,
        )
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

        // 1. Decode; dead-letter what cannot be.
        let decoded = decode(
            batch,
            cp.offset,
            &[Topic::Polls],
            &self.dlq,
            STAGE,
            &mut stats,
        )
        .await?;
        let newest = decoded.iter().map(|(_, e)| e.time).max();
        let mut by_poll: Vec<(PollId, Vec<Positioned>)> = Vec::new();
        let mut index: HashMap<PollId, usize> = HashMap::new();
        for (pos, event) in decoded {
            let Some(id) = poll_id(&event.data) else {
                continue;
            };
            let i = *index.entry(id).or_insert_with(|| {
                by_poll.push((id, Vec::new()));
                by_poll.len() - 1
            });
            by_poll[i].1.push((pos, event));
        }

        // 2. Load states (cache first) and the touched ballots.
        let mut states: HashMap<PollId, PollState> = HashMap::new();
        let mut missing = Vec::new();
        {
            let mut cache = self.cache.lock();
            for (id, _) in &by_poll {
                match cache.get(&(batch.partition, *id)) {
                    Some(s) => {
                        states.insert(*id, s.clone());
                    }
                    None => missing.push(*id),
                }
            }
        }
        if !missing.is_empty() {
            for s in self.views.load_polls(&missing).await.map_err(view_err)? {
                states.insert(s.poll_id, s);
            }
        }
        let mut aggs: Vec<(PollId, PollAggregate, &[Positioned])> = Vec::new();
        let loads: Vec<_> = by_poll
            .iter()
            .map(|(id, events)| {
                let state = states.remove(id);
                let keys: Vec<String> = match &state {
                    // A poll created in this batch has no stored ballots.
                    None => Vec::new(),
                    Some(s) => {
                        // Distinct voters, without a copy per vote.
                        let distinct: HashSet<String> = events
                            .iter()
                            .filter(|(_, e)| {
                                matches!(
                                    e.data,
                                    EventData::VoteCast(_) | EventData::VoteRetracted(_)
                                )
                            })
                            .map(|(_, e)| {
                                self.fold.voter_key(s.anonymous, s.poll_id, &e.principal.id)
                            })
                            .collect();
                        distinct.into_iter().collect()
                    }
                };
                async move {
                    let found = if keys.is_empty() {
                        Vec::new()
                    } else {
                        self.views.load_ballots(*id, &keys).await?
                    };
                    let mut agg = PollAggregate::from_state(state);
                    for k in keys {
                        agg.load_ballot(k, None);
                    }
                    for (k, b) in found {
                        agg.load_ballot(k, Some(b));
                    }
                    Ok::<_, ViewError>((*id, agg, events.as_slice()))
                }
            })
            .collect();
        let loaded: Vec<_> = futures::stream::iter(loads)
            .buffered(self.cfg.write_concurrency.max(1))
            .try_collect()
            .await
            .map_err(view_err)?;
        aggs.extend(loaded);

        // 3. Fold, cutting commits so no single batch statement grows huge.
        let mut commits: Vec<(PollId, Vec<PollCommit>)> = Vec::new();
        let mut finals: Vec<(PollId, PollState, bool)> = Vec::new();
        for (id, mut agg, events) in aggs {
            let mut mine = Vec::new();
            for (pos, e) in events {
                match agg.apply(&self.fold, *pos, e) {
                    Outcome::Applied => stats.applied += 1,
                    Outcome::Duplicate => stats.duplicates += 1,
                    Outcome::Rejected(r) => {
                        stats.rejected += 1;
                        metrics::counter!(names::FOLD_REJECTED, "view" => VIEW, "reason" => r.as_str())
                            .increment(1);
                        if r == Rejection::UnknownPoll && agg.state.is_none() {
                            *cp.rejected.entry(r.as_str().to_owned()).or_default() += 1;
                        }
                    }
                }
                if agg.dirty_ballots() >= self.cfg.commit_rows.max(1)
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
                finals.push((id, s, changed));
            }
            if changed {
                commits.push((id, mine));
            }
        }
        metrics::histogram!(names::FOLD_SECONDS).record(started.elapsed().as_secs_f64());

        // 4. Write: polls in parallel (bounded), each poll's commits in order;
        // 5. then the checkpoint.
        let wrote = Instant::now();
        stats.commits = commits.iter().map(|(_, c)| c.len() as u64).sum();
        cp.offset = last;
        if let Err(e) = self.write(&commits, &cp).await {
            // Some writes may have landed: forget the cached states of this
            // batch so that the retry reloads states consistent with the
            // stored ballots.
            let mut cache = self.cache.lock();
            for (id, _) in &by_poll {
                cache.pop(&(batch.partition, *id));
            }
            return Err(view_err(e));
        }
        metrics::histogram!(names::WRITE_SECONDS).record(wrote.elapsed().as_secs_f64());
        {
            let mut cache = self.cache.lock();
            for (id, s, changed) in finals {
                if changed && self.live.get() {
                    self.watermarks
                        .changes
                        .publish(Change::Poll(id), &batch.topic, s.position);
                }
                cache.put((batch.partition, id), s);
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
impl PartitionHandler for PollProjector {
    async fn assigned(&self, topic: &str, partition: i32) {
        self.assigned.inc();
        // Another process may have written this partition meanwhile: forget
        // everything cached about it.
        self.checkpoints.forget(topic, partition);
        evict_partition(&self.cache, partition);
    }

    async fn handle(&self, batch: &Batch) -> Result<(), HandlerError> {
        self.process(batch).await.map(|_| ())
    }
}
