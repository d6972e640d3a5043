//! The cards projector: folds `atelier.uploads.v1` and
//! `atelier.completions.v1` into session cards and upload job status.
//!
//! No reads: every event is a patch merged by per-cell timestamps from the
//! merge order (see `fold::cards`), so the writes are blind, idempotent and
//! order-insensitive, and the two topics' tasks never coordinate. A batch
//! writes each card and status row at most once per status.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use parking_lot::Mutex;

use super::common::{Assigned, BatchStats, Checkpoints, Live, decode, observe_batch, view_err};
use super::{Change, Watermarks};
use crate::bus::{Batch, HandlerError, PartitionHandler, Producer};
use crate::event::{SessionKey, Topic, UploadId};
use crate::fold::Position;
use crate::fold::cards::{Patch, card_key, coalesce, patch, upload_key};
use crate::telemetry::names;
use crate::view::ViewStore;

/// The view name used in checkpoints.
pub const VIEW: &str = "cards";
/// The DLQ stage name.
pub const STAGE: &str = "project.cards";
/// The topics this projector reads.
pub const TOPICS: [Topic; 2] = [Topic::Uploads, Topic::Completions];

/// The projector for cards and job status.
pub struct CardProjector {
    views: Arc<dyn ViewStore>,
    dlq: Producer,
    watermarks: Arc<Watermarks>,
    checkpoints: Checkpoints,
    totals: Mutex<BatchStats>,
    assigned: Assigned,
    /// Whether this projector's generation serves reads: only then does it
    /// announce changes and watermarks (a rebuild runs silent).
    live: Live,
}

impl std::fmt::Debug for CardProjector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CardProjector")
            .field("views", &self.views.backend())
            .finish_non_exhaustive()
    }
}

impl CardProjector {
    /// A projector writing to `views`, dead-lettering through `dlq`.
    pub fn new(views: Arc<dyn ViewStore>, dlq: Producer, watermarks: Arc<Watermarks>) -> Self {
        Self {
            views,
            dlq,
            watermarks,
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

    /// Processes one batch of either topic.
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
        let decoded = decode(batch, cp.offset, &TOPICS, &self.dlq, STAGE, &mut stats).await?;
        let newest = decoded.iter().map(|(_, e)| e.time).max();
        let patches: Vec<Patch> = decoded.iter().filter_map(|(_, e)| patch(e)).collect();
        stats.applied = patches.len() as u64;
        let cards = coalesce(&patches, card_key);
        let uploads = coalesce(&patches, upload_key);
        metrics::histogram!(names::FOLD_SECONDS).record(started.elapsed().as_secs_f64());
        let wrote = Instant::now();
        stats.commits = (cards.len() + uploads.len()) as u64;
        self.views
            .apply_patches(&cards, &uploads)
            .await
            .map_err(view_err)?;
        cp.offset = last;
        self.views.save_checkpoint(&cp).await.map_err(view_err)?;
        metrics::histogram!(names::WRITE_SECONDS).record(wrote.elapsed().as_secs_f64());
        let at = Position {
            partition: batch.partition,
            offset: last,
        };
        let live = self.live.get();
        let sessions: BTreeSet<&SessionKey> = cards
            .iter()
            .filter(|_| live)
            .map(|p| &p.session_key)
            .collect();
        for s in sessions {
            self.watermarks
                .changes
                .publish(Change::Session(s.clone()), &batch.topic, at);
        }
        let ups: BTreeSet<UploadId> = uploads
            .iter()
            .filter(|_| live)
            .map(|p| p.upload_id)
            .collect();
        for u in ups {
            self.watermarks
                .changes
                .publish(Change::Upload(u), &batch.topic, at);
        }
        self.checkpoints.put(cp);
        if self.live.get() {
            self.watermarks.publish(&batch.topic, batch.partition, last);
        }
        observe_batch(VIEW, batch.records.len(), stats.commits, newest);
        metrics::counter!(names::FOLDED, "view" => VIEW, "outcome" => "applied")
            .increment(stats.applied);
        self.totals.lock().add(&stats);
        Ok(stats)
    }
}

#[async_trait]
impl PartitionHandler for CardProjector {
    async fn assigned(&self, topic: &str, partition: i32) {
        self.assigned.inc();
        self.checkpoints.forget(topic, partition);
    }

    async fn handle(&self, batch: &Batch) -> Result<(), HandlerError> {
        self.process(batch).await.map(|_| ())
    }
}
