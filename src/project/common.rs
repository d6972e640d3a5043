//! What every projector shares: decoding a batch with poison records sent to
//! the DLQ, the per-partition checkpoint cache, assignment tracking and
//! batch statistics.

use std::collections::HashMap;

use futures::{StreamExt, TryStreamExt};
use parking_lot::Mutex;

use super::dlq;
use crate::bus::{Batch, HandlerError, Producer};
use crate::event::{Event, Topic, wire};
use crate::fold::Position;
use crate::view::{Checkpoint, ViewError, ViewStore};

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
        self.commits += o.commits;
    }
}

/// A view-store error as the consumer loop sees it.
pub(crate) fn view_err(e: ViewError) -> HandlerError {
    HandlerError {
        retriable: e.is_retriable(),
        message: e.to_string(),
    }
}

/// Decodes a batch in log order, skipping records at or below `applied`
/// (the checkpoint) and dead-lettering those that cannot be decoded; each
/// DLQ append is acknowledged before going on.
pub(crate) async fn decode(
    batch: &Batch,
    applied: i64,
    expect: &[Topic],
    dlq: &Producer,
    stage: &str,
    stats: &mut BatchStats,
) -> Result<Vec<(Position, Event)>, HandlerError> {
    let mut out = Vec::with_capacity(batch.records.len());
    let expect_one = match expect {
        [t] => Some(*t),
        _ => None,
    };
    for rec in &batch.records {
        if rec.offset <= applied {
            stats.duplicates += 1;
            continue;
        }
        let decoded = wire::decode(
            rec.header_pairs(),
            rec.payload.as_deref().unwrap_or_default(),
            expect_one,
        )
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
            Ok(e) => out.push((
                Position {
                    partition: batch.partition,
                    offset: rec.offset,
                },
                e,
            )),
            Err(reason) => {
                dlq::send(dlq, stage, &batch.topic, batch.partition, rec, &reason, 1)
                    .await
                    .map_err(|e| HandlerError {
                        message: format!("DLQ: {e}"),
                        retriable: true,
                    })?;
                stats.poison += 1;
            }
        }
    }
    Ok(out)
}

/// The partition checkpoints of one view, cached after the first read.
#[derive(Debug)]
pub(crate) struct Checkpoints {
    view: &'static str,
    cache: Mutex<HashMap<(String, i32), Checkpoint>>,
}

impl Checkpoints {
    pub(crate) fn new(view: &'static str) -> Self {
        Self {
            view,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The checkpoint of a partition (offset -1 when none is stored).
    pub(crate) async fn get(
        &self,
        views: &dyn ViewStore,
        topic: &str,
        partition: i32,
    ) -> Result<Checkpoint, ViewError> {
        if let Some(cp) = self.cache.lock().get(&(topic.to_owned(), partition)) {
            return Ok(cp.clone());
        }
        Ok(views
            .checkpoint(self.view, topic, partition)
            .await?
            .unwrap_or_else(|| Checkpoint {
                view: self.view.into(),
                topic: topic.into(),
                partition,
                offset: -1,
                rejected: Default::default(),
            }))
    }

    /// Remembers a checkpoint that is now stored.
    pub(crate) fn put(&self, cp: Checkpoint) {
        self.cache
            .lock()
            .insert((cp.topic.clone(), cp.partition), cp);
    }

    /// Forgets a partition (another process may have moved it).
    pub(crate) fn forget(&self, topic: &str, partition: i32) {
        self.cache.lock().remove(&(topic.to_owned(), partition));
    }
}

/// Batch metrics: events per batch, view writes per event (how much the
/// mini-batch coalesced), and freshness (event time to durable in the view,
/// for the newest event of the batch).
pub(crate) fn observe_batch(
    view: &'static str,
    records: usize,
    writes: u64,
    newest: Option<chrono::DateTime<chrono::Utc>>,
) {
    metrics::histogram!(crate::telemetry::names::BATCH_EVENTS).record(records as f64);
    if records > 0 {
        metrics::histogram!(crate::telemetry::names::WRITES_PER_EVENT, "view" => view)
            .record(writes as f64 / records as f64);
    }
    if let Some(t) = newest {
        let age = (chrono::Utc::now() - t)
            .num_microseconds()
            .unwrap_or(0)
            .max(0);
        metrics::histogram!(crate::telemetry::names::FRESHNESS, "view" => view)
            .record(age as f64 / 1e6);
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
pub(crate) struct Assigned(tokio::sync::watch::Sender<usize>);

impl Default for Assigned {
    fn default() -> Self {
        Self(tokio::sync::watch::Sender::new(0))
    }
}

impl Assigned {
    pub(crate) fn inc(&self) {
        self.0.send_modify(|n| *n += 1);
    }

    /// Waits until at least one partition was assigned, or `timeout`.
    pub(crate) async fn wait(&self, timeout: std::time::Duration) -> bool {
        let mut rx = self.0.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|n| *n > 0))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

/// Writes each aggregate's commits in order, aggregates concurrently (at
/// most `concurrency` at once), then the checkpoint: offsets move only
/// after every write of the batch is durable.
pub(crate) async fn write_commits<'a, K, C, F, Fut>(
    views: &dyn ViewStore,
    groups: &'a [(K, Vec<C>)],
    concurrency: usize,
    commit: F,
    cp: &Checkpoint,
) -> Result<(), ViewError>
where
    F: Fn(&'a C) -> Fut,
    Fut: std::future::Future<Output = Result<(), ViewError>> + 'a,
{
    let commit = &commit;
    // Collected first: a lazy map here trips the compiler's lifetime
    // inference for the `Send` future of the handler.
    let writes: Vec<_> = groups
        .iter()
        .map(|(_, cs)| async move {
            for c in cs {
                commit(c).await?;
            }
            Ok::<_, ViewError>(())
        })
        .collect();
    futures::stream::iter(writes)
        .buffer_unordered(concurrency.max(1))
        .try_collect::<Vec<()>>()
        .await?;
    views.save_checkpoint(cp).await
}

/// Drops every cached aggregate of one partition (it was just assigned:
/// another process may have written it meanwhile).
pub(crate) fn evict_partition<K: Copy + std::hash::Hash + Eq, V>(
    cache: &Mutex<lru::LruCache<(i32, K), V>>,
    partition: i32,
) {
    let mut cache = cache.lock();
    let stale: Vec<_> = cache
        .iter()
        .filter(|((p, _), _)| *p == partition)
        .map(|(k, _)| *k)
        .collect();
    for k in stale {
        cache.pop(&k);
    }
}
