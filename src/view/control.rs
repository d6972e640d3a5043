//! The control rows every store keeps beside its views: projector
//! checkpoints (where each view stands in each partition) and, in the base
//! store, the generation rows of rebuilds.

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::{Generation, ViewError};

/// Where a projector stands in one partition, and partition-level counts
/// (rejections of events whose aggregate does not exist). Versioned like an
/// aggregate: written after the batch's aggregates.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The view (`polls`).
    pub view: String,
    /// Source topic (full name).
    pub topic: String,
    /// Source partition.
    pub partition: i32,
    /// Last offset whose effects are in the view.
    pub offset: i64,
    /// Refused events with no aggregate to count them in, by reason.
    pub rejected: BTreeMap<String, u64>,
}

impl Checkpoint {
    /// Nothing applied yet in a partition.
    pub fn start(view: &str, topic: &str, partition: i32) -> Self {
        Self {
            view: view.into(),
            topic: topic.into(),
            partition,
            offset: -1,
            rejected: BTreeMap::new(),
        }
    }

    /// The last offset these checkpoints have applied in a partition (-1:
    /// none).
    pub fn applied_at(cps: &[Checkpoint], topic: &str, partition: i32) -> i64 {
        cps.iter()
            .find(|c| c.topic == topic && c.partition == partition)
            .map_or(-1, |c| c.offset)
    }
}

/// An aggregate whose write the store refused for good (a `sink` dead
/// letter): its row lacks that event until the letter is replayed. Reads
/// of the aggregate say so instead of answering silently stale.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Degraded {
    /// The view (`polls`).
    pub view: String,
    /// The aggregate's key in the view (a poll or item id, a session key).
    pub key: String,
    /// What the store said.
    pub reason: String,
    /// The refused event's source topic (full name), partition and offset:
    /// the dead letter names the same.
    pub topic: String,
    /// Source partition.
    pub partition: i32,
    /// Source offset.
    pub offset: i64,
    /// When it was refused (ms since the epoch).
    pub at_ms: i64,
}

/// Projector checkpoints, and the aggregates the store refused a write of.
#[async_trait]
pub trait CheckpointStore: Send + Sync + 'static {
    /// A projector checkpoint.
    async fn checkpoint(
        &self,
        view: &str,
        topic: &str,
        partition: i32,
    ) -> Result<Option<Checkpoint>, ViewError>;
    /// Stores a checkpoint (`USING TIMESTAMP` its offset).
    async fn save_checkpoint(&self, cp: &Checkpoint) -> Result<(), ViewError>;
    /// All checkpoints of a view (one query).
    async fn checkpoints(&self, view: &str) -> Result<Vec<Checkpoint>, ViewError>;
    /// Marks an aggregate degraded (a later mark of the same one replaces
    /// it).
    async fn mark_degraded(&self, d: &Degraded) -> Result<(), ViewError>;
    /// Clears an aggregate's mark (its letter was replayed and applied).
    async fn clear_degraded(&self, view: &str, key: &str) -> Result<(), ViewError>;
    /// Every degraded aggregate of a view (one query on a small control
    /// table; readers consult it through a cache, not per request).
    async fn degraded(&self, view: &str) -> Result<Vec<Degraded>, ViewError>;
}

/// The generation rows of rebuilds (read from the base store).
#[async_trait]
pub trait GenerationStore: Send + Sync + 'static {
    /// Every stored generation row (one query on the control table; not
    /// counted as a view read: readers consult it through a short cache,
    /// not per request).
    async fn generations(&self) -> Result<Vec<Generation>, ViewError>;
    /// Compare-and-set of one generation row: stores `next` only if the
    /// stored row's `rev` is `expected` (0: no row yet). `Ok(false)` when
    /// another writer got there first.
    async fn set_generation(&self, next: &Generation, expected: i64) -> Result<bool, ViewError>;
}
