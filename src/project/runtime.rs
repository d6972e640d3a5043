//! The generic projector: what every view's projector shares. Per
//! mini-batch of one partition:
//!
//! 1. read the partition's checkpoint (cached after the first read);
//! 2. decode in log order, skipping what the checkpoint covers; poison
//!    records go to the DLQ (each append acknowledged before going on);
//! 3. the view's [`Projection`] folds the events into a plan, then writes
//!    it (derived rows first, versioned aggregates `USING TIMESTAMP` from
//!    their offsets);
//!
//!    A write the store refuses for good (not an outage: those are retried
//!    with backoff while the partition waits) is narrowed down by halves to
//!    the records it cannot take; each of those goes to the DLQ with stage
//!    [`SINK`], the store's error and its source position, the rest is
//!    applied, and the partition moves on. `dlq replay` re-applies them
//!    once the cause is fixed;
//! 4. the rows are durable: if the projector is live, the changes and the
//!    watermark are announced, so reads waiting for the batch (`?after`)
//!    go on (a rebuild's projector runs silent until its swap);
//! 5. the checkpoint is saved; only then does the consumer loop store the
//!    offset.
//!
//! The runtime owns the checkpoint cache, assignment tracking, totals, the
//! live switch and the batch metrics; a view brings only its fold, its
//! store and its hooks.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;

use super::{Change, Watermarks};
use crate::bus::{Batch, HandlerError, PartitionHandler, Producer};
use crate::dlq;
use crate::event::{Event, Topic, wire};
use crate::fold::Position;
use crate::telemetry::emit;
use crate::view::{Checkpoint, CheckpointStore, Degraded, View, ViewError};

/// An event with its log position.
pub type Positioned = (Position, Event);

/// A replayed dead letter of a batch: its offset and its aggregate's key.
type Replayed = (i64, String);

/// The DLQ stage of records whose view writes the store refused for good.
pub const SINK: &str = "sink";

/// Counts of one batch, for metrics and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchStats {
    /// Events folded and applied.
    pub applied: u64,
    /// Events skipped as already applied.
    pub duplicates: u64,
    /// Events refused by a rule.
    pub rejected: u64,
    /// Records sent to the DLQ.
    pub poison: u64,
    /// Records whose writes the store refused for good, sent to the DLQ
    /// (stage [`SINK`]).
    pub sink: u64,
    /// Aggregate commits (or row patches) written.
    pub commits: u64,
}

impl BatchStats {
    /// Adds another batch's counts.
    pub fn add(&mut self, o: &BatchStats) {
        self.applied += o.applied;
        self.duplicates += o.duplicates;
        self.rejected += o.rejected;
        self.poison += o.poison;
        self.sink += o.sink;
        self.commits += o.commits;
    }
}

/// Where a changed row's announcement goes: the change, and the position
/// that caused it.
pub type Announce<'a> = &'a mut dyn FnMut(Change, Position);

/// What one view brings to the runtime: how a batch's events become
/// writes, and what to do once they are durable. Hooks other than `plan`,
/// `write` and `applied` default to no-ops.
#[async_trait]
pub trait Projection: Send + Sync + 'static {
    /// What one batch writes.
    type Plan: Send + Sync;

    /// Folds a partition's decoded events (log order) into a plan; may read
    /// the store. Counts go to `stats`; refusals no aggregate can hold (an
    /// event for an aggregate that does not exist) to `cp.rejected`.
    async fn plan(
        &self,
        partition: i32,
        events: Vec<Positioned>,
        stats: &mut BatchStats,
        cp: &mut Checkpoint,
    ) -> Result<Self::Plan, ViewError>;

    /// Writes a plan; the checkpoint is saved after it.
    async fn write(&self, plan: &Self::Plan) -> Result<(), ViewError>;

    /// The plan and its checkpoint are durable up to `last` (the batch's
    /// last record): update caches; `announce` (when the projector is live)
    /// each changed row.
    fn applied(&self, last: Position, plan: Self::Plan, announce: Option<Announce<'_>>);

    /// Writing failed (some of it may have landed): forget what may be
    /// stale before the retry.
    fn failed(&self, _partition: i32, _plan: &Self::Plan) {}

    /// A partition was assigned to this process: another one may have
    /// written it meanwhile.
    fn assigned(&self, _partition: i32) {}

    /// The key of the view row `data` changes (what a read names), for the
    /// degraded marks of refused writes; `None` when it changes none.
    fn key_of(&self, _data: &crate::event::EventData) -> Option<String> {
        None
    }
}

/// Whether a projector's generation serves reads. A rebuild's projector
/// runs silent (its progress must not answer `?after` or feed live updates
/// for rows readers cannot see yet) until its generation is swapped in.
#[derive(Debug)]
pub struct Live(std::sync::atomic::AtomicBool);

impl Default for Live {
    fn default() -> Self {
        Self(std::sync::atomic::AtomicBool::new(true))
    }
}

impl Live {
    /// Serving reads?
    pub fn get(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Acquire)
    }
    /// Starts or stops announcing.
    pub fn set(&self, live: bool) {
        self.0.store(live, std::sync::atomic::Ordering::Release);
    }
}

/// Counts assigned partitions so that callers can wait for the group join.
#[derive(Debug)]
struct Assigned(tokio::sync::watch::Sender<usize>);

impl Default for Assigned {
    fn default() -> Self {
        Self(tokio::sync::watch::Sender::new(0))
    }
}

impl Assigned {
    fn inc(&self) {
        self.0.send_modify(|n| *n += 1);
    }

    /// Waits until at least one partition was assigned, or `timeout`.
    async fn wait(&self, timeout: Duration) -> bool {
        let mut rx = self.0.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|n| *n > 0))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

/// A running projector of one view, as its supervisor sees it.
#[async_trait]
pub trait ViewProjector: PartitionHandler + std::fmt::Debug {
    /// The view.
    fn view(&self) -> View;
    /// Whether it announces what it applies (see [`Live`]).
    fn live(&self) -> &Live;
    /// Totals since start.
    fn totals(&self) -> BatchStats;
    /// Waits until it has been assigned at least one partition (it has
    /// joined its consumer group), or `timeout` passed.
    async fn wait_assigned(&self, timeout: Duration) -> bool;
}

/// What every projector is built with.
#[derive(Clone, Debug)]
pub struct Context {
    /// Where poison records go.
    pub dlq: Producer,
    /// Where progress and changes are announced.
    pub watermarks: Arc<Watermarks>,
    /// Tuning.
    pub cfg: crate::config::ProjectorConfig,
    /// The fold configuration (the anonymous voters' key).
    pub fold: crate::fold::poll::FoldConfig,
}

/// The projector of one view: the runtime around a [`Projection`].
pub struct Projector<P> {
    view: View,
    projection: P,
    checkpoints: Arc<dyn CheckpointStore>,
    dlq: Producer,
    watermarks: Arc<Watermarks>,
    cache: Mutex<HashMap<(String, i32), Checkpoint>>,
    totals: Mutex<BatchStats>,
    assigned: Assigned,
    live: Live,
}

impl<P> std::fmt::Debug for Projector<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Projector")
            .field("view", &self.view)
            .finish_non_exhaustive()
    }
}

impl<P: Projection> Projector<P> {
    /// The projector of `view`, keeping its checkpoints in `checkpoints`
    /// (the store its projection writes to).
    pub fn new(
        view: View,
        projection: P,
        checkpoints: Arc<dyn CheckpointStore>,
        ctx: &Context,
    ) -> Self {
        Self {
            view,
            projection,
            checkpoints,
            dlq: ctx.dlq.clone(),
            watermarks: ctx.watermarks.clone(),
            cache: Mutex::new(HashMap::new()),
            totals: Mutex::new(BatchStats::default()),
            assigned: Assigned::default(),
            live: Live::default(),
        }
    }

    /// The DLQ stage of this view's records.
    pub fn stage(&self) -> String {
        format!("project.{}", self.view.as_str())
    }

    /// The checkpoint of a partition (offset -1 when none is stored).
    async fn checkpoint(&self, topic: &str, partition: i32) -> Result<Checkpoint, ViewError> {
        if let Some(cp) = self.cache.lock().get(&(topic.to_owned(), partition)) {
            return Ok(cp.clone());
        }
        Ok(self
            .checkpoints
            .checkpoint(self.view.as_str(), topic, partition)
            .await?
            .unwrap_or_else(|| Checkpoint::start(self.view.as_str(), topic, partition)))
    }

    /// Decodes a batch in log order, skipping records at or below `applied`
    /// (the checkpoint) and dead-lettering those that cannot be decoded or
    /// do not belong to this view's topics; each DLQ append is acknowledged
    /// before going on.
    ///
    /// Also returns the replayed dead letters (`dlq_replay_of`) among the
    /// batch's records, duplicates included, with their aggregate's key:
    /// noted while each record's headers are read anyway, rather than in a
    /// second pass over the batch once its records are cold.
    async fn decode(
        &self,
        batch: &Batch,
        applied: i64,
        stats: &mut BatchStats,
        dead_letter: bool,
    ) -> Result<(Vec<Positioned>, Vec<Replayed>), HandlerError> {
        let expect: &[Topic] = self.view.topics();
        let expect_one = match expect {
            [t] => Some(*t),
            _ => None,
        };
        let mut out = Vec::with_capacity(batch.records.len());
        let mut replayed = Vec::new();
        for rec in &batch.records {
            let body = rec.payload().unwrap_or_default();
            if rec.offset <= applied {
                stats.duplicates += 1;
                // Applied before, but its mark may not have been cleared.
                if rec.header(crate::dlq::header::REPLAY_OF).is_some()
                    && let Ok(e) = wire::decode(rec.header_pairs(), body, None)
                {
                    replayed.extend(self.replayed(rec.offset, &e));
                }
                continue;
            }
            let mut replay = false;
            let headers = rec
                .header_pairs()
                .inspect(|(k, _)| replay |= *k == crate::dlq::header::REPLAY_OF);
            let decoded = wire::decode(headers, body, expect_one)
                .map_err(|e| e.to_string())
                .and_then(|e| {
                    if expect.contains(&e.topic()) {
                        Ok(e)
                    } else {
                        Err(format!(
                            "{} does not belong on {}",
                            e.data.type_name(),
                            batch.topic
                        ))
                    }
                });
            match decoded {
                Ok(e) => {
                    if replay {
                        replayed.extend(self.replayed(rec.offset, &e));
                    }
                    out.push((
                        Position {
                            partition: batch.partition,
                            offset: rec.offset,
                        },
                        e,
                    ));
                }
                // Decoding again (to isolate a sink failure): already sent.
                Err(_) if !dead_letter => {}
                Err(reason) => {
                    dlq::send(
                        &self.dlq,
                        &self.stage(),
                        &batch.topic,
                        batch.partition,
                        rec,
                        &reason,
                        1,
                    )
                    .await
                    .map_err(|e| HandlerError {
                        message: format!("DLQ: {e}"),
                        retriable: true,
                    })?;
                    stats.poison += 1;
                }
            }
        }
        Ok((out, replayed))
    }

    /// A replayed dead letter at `offset`, with its aggregate's key.
    fn replayed(&self, offset: i64, e: &Event) -> Option<Replayed> {
        self.projection.key_of(&e.data).map(|key| (offset, key))
    }

    /// A replayed dead letter (`dlq_replay_of`) that applied clears its
    /// aggregate's degraded mark; one the store refused again does not.
    async fn clear_replayed(
        &self,
        replayed: &[Replayed],
        refused: &[i64],
    ) -> Result<(), HandlerError> {
        for (offset, key) in replayed {
            if refused.contains(offset) {
                continue;
            }
            self.checkpoints
                .clear_degraded(self.view.as_str(), key)
                .await
                .map_err(view_err)?;
        }
        Ok(())
    }

    /// Applies `events` (log order) part by part after their batch's write
    /// was refused for good: a part the store refuses is halved, and a
    /// single record it refuses goes to the DLQ with stage [`SINK`]. Parts
    /// apply in log order; an outage meanwhile is returned as retriable
    /// (the whole batch runs again, and what landed is skipped as applied).
    #[allow(clippy::too_many_arguments)]
    async fn isolate(
        &self,
        batch: &Batch,
        events: Vec<Positioned>,
        stats: &mut BatchStats,
        cp: &mut Checkpoint,
        announce: &mut (dyn FnMut(Change, Position) + Send),
        live: bool,
        refused: &mut Vec<i64>,
    ) -> Result<(), HandlerError> {
        let mut parts = std::collections::VecDeque::from([events]);
        while let Some(part) = parts.pop_front() {
            let Some(&(last, _)) = part.last() else {
                continue;
            };
            let (mut part_stats, mut part_cp) = (BatchStats::default(), cp.clone());
            let plan = self
                .projection
                .plan(batch.partition, part.clone(), &mut part_stats, &mut part_cp)
                .await
                .map_err(view_err)?;
            match self.projection.write(&plan).await {
                Ok(()) => {
                    self.projection.applied(
                        last,
                        plan,
                        live.then_some(&mut *announce as Announce<'_>),
                    );
                    stats.add(&part_stats);
                    *cp = part_cp;
                }
                Err(e) if e.is_retriable() => {
                    self.projection.failed(batch.partition, &plan);
                    return Err(view_err(e));
                }
                Err(e) if part.len() == 1 => {
                    self.projection.failed(batch.partition, &plan);
                    refused.push(last.offset);
                    let rec = batch
                        .records
                        .iter()
                        .find(|r| r.offset == last.offset)
                        .expect("a decoded event comes from a record of its batch");
                    if let Some(key) = self.projection.key_of(&part[0].1.data) {
                        // Reads of the aggregate say it lacks this event.
                        let mark = Degraded {
                            view: self.view.as_str().to_owned(),
                            key,
                            reason: e.to_string(),
                            topic: batch.topic.clone(),
                            partition: batch.partition,
                            offset: last.offset,
                            at_ms: chrono::Utc::now().timestamp_millis(),
                        };
                        self.checkpoints
                            .mark_degraded(&mark)
                            .await
                            .map_err(view_err)?;
                    }
                    dlq::send(
                        &self.dlq,
                        SINK,
                        &batch.topic,
                        batch.partition,
                        rec,
                        &format!("{}: {e}", self.view.as_str()),
                        1,
                    )
                    .await
                    .map_err(|e| HandlerError {
                        message: format!("DLQ: {e}"),
                        retriable: true,
                    })?;
                    stats.sink += 1;
                }
                Err(_) => {
                    self.projection.failed(batch.partition, &plan);
                    let mut first = part;
                    let second = first.split_off(first.len() / 2);
                    parts.push_front(second);
                    parts.push_front(first);
                }
            }
        }
        Ok(())
    }

    /// Processes one batch; see the module docs for the steps.
    pub async fn process(&self, batch: &Batch) -> Result<BatchStats, HandlerError> {
        let mut stats = BatchStats::default();
        let Some(last) = batch.records.last().map(|r| r.offset) else {
            return Ok(stats);
        };
        let mut cp = self
            .checkpoint(&batch.topic, batch.partition)
            .await
            .map_err(view_err)?;
        let started = Instant::now();
        let (events, replayed) = self.decode(batch, cp.offset, &mut stats, true).await?;
        let newest = events.iter().map(|(_, e)| e.time).max();
        let plan = self
            .projection
            .plan(batch.partition, events, &mut stats, &mut cp)
            .await
            .map_err(view_err)?;
        let folded = started.elapsed();
        let wrote = Instant::now();
        let live = self.live.get();
        let mut refused: Vec<i64> = Vec::new();
        let changes = &self.watermarks.changes;
        let first = batch.records.first().map_or(last, |r| r.offset);
        let local = changes.announces_locally(&batch.topic, batch.partition, first);
        let mut announce = |c: Change, at: Position| {
            if local {
                changes.publish(c, &batch.topic, at);
            }
        };
        let at = Position {
            partition: batch.partition,
            offset: last,
        };
        match self.projection.write(&plan).await {
            Ok(()) => {
                self.projection
                    .applied(at, plan, live.then_some(&mut announce as Announce<'_>));
            }
            Err(e) if e.is_retriable() => {
                self.projection.failed(batch.partition, &plan);
                return Err(view_err(e));
            }
            Err(e) => {
                self.projection.failed(batch.partition, &plan);
                tracing::warn!(error = %e, "the store refused a batch for good; isolating the records it refuses");
                // Start over from the stored checkpoint's counts (the
                // refused plan's refusals are counted again as its parts
                // apply): read again rather than copied on every batch.
                cp = self
                    .checkpoint(&batch.topic, batch.partition)
                    .await
                    .map_err(view_err)?;
                stats = BatchStats {
                    poison: stats.poison,
                    duplicates: stats.duplicates,
                    ..BatchStats::default()
                };
                let (events, _) = self
                    .decode(batch, cp.offset, &mut BatchStats::default(), false)
                    .await?;
                self.isolate(
                    batch,
                    events,
                    &mut stats,
                    &mut cp,
                    &mut announce,
                    live,
                    &mut refused,
                )
                .await?;
            }
        }
        self.clear_replayed(&replayed, &refused).await?;
        // The batch's rows are durable: reads waiting for it (`?after`)
        // may go on while the checkpoint is saved.
        if live {
            self.watermarks.publish(&batch.topic, batch.partition, last);
        }
        cp.offset = last;
        self.checkpoints
            .save_checkpoint(&cp)
            .await
            .map_err(view_err)?;
        let write = wrote.elapsed();
        self.cache
            .lock()
            .insert((cp.topic.clone(), cp.partition), cp);
        emit::batch(emit::Batch {
            view: self.view.as_str(),
            records: batch.records.len(),
            applied: stats.applied,
            duplicates: stats.duplicates,
            commits: stats.commits,
            fold: folded,
            write,
            freshness: newest.map(|t| (chrono::Utc::now() - t).to_std().unwrap_or(Duration::ZERO)),
        });
        self.totals.lock().add(&stats);
        Ok(stats)
    }
}

/// A view-store error as the consumer loop sees it.
fn view_err(e: ViewError) -> HandlerError {
    HandlerError {
        retriable: e.is_retriable(),
        message: e.to_string(),
    }
}

#[async_trait]
impl<P: Projection> PartitionHandler for Projector<P> {
    async fn assigned(&self, topic: &str, partition: i32) {
        self.assigned.inc();
        // Another process may have written this partition meanwhile: forget
        // everything cached about it.
        self.cache.lock().remove(&(topic.to_owned(), partition));
        self.projection.assigned(partition);
    }

    async fn handle(&self, batch: &Batch) -> Result<(), HandlerError> {
        self.process(batch).await.map(|_| ())
    }

    /// After the checkpoint: what it covers would be skipped anyway.
    async fn resume_at(&self, topic: &str, partition: i32) -> Option<i64> {
        match self
            .checkpoints
            .checkpoint(self.view.as_str(), topic, partition)
            .await
        {
            Ok(cp) => Some(cp.map_or(0, |c| c.offset + 1)),
            Err(e) => {
                tracing::warn!(error = %e, topic, partition, "reading a checkpoint; starting at the group's offset");
                None
            }
        }
    }
}

#[async_trait]
impl<P: Projection> ViewProjector for Projector<P> {
    fn view(&self) -> View {
        self.view
    }

    fn live(&self) -> &Live {
        &self.live
    }

    fn totals(&self) -> BatchStats {
        *self.totals.lock()
    }

    async fn wait_assigned(&self, timeout: Duration) -> bool {
        self.assigned.wait(timeout).await
    }
}
