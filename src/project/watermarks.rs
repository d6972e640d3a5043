//! How far the views have applied each partition: the answer to a read's
//! `?after=<token>`. A projector in the same process publishes here as soon
//! as a batch is durable; a process without one falls back to the
//! checkpoints in the view store.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;
use tokio::sync::Notify;

/// Applied offsets per `(topic, partition)`, with a wake-up for waiters,
/// and the rows that changed (for live updates): the views' progress as the
/// projectors of this process report it.
#[derive(Debug, Default)]
pub struct Watermarks {
    applied: RwLock<HashMap<(String, i32), i64>>,
    changed: Notify,
    /// Changed view rows, for `GET /v1/stream`.
    pub changes: super::Changes,
}

impl Watermarks {
    /// A shared, empty set.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Records that `offset` (and everything before it) is in the views.
    pub fn publish(&self, topic: &str, partition: i32, offset: i64) {
        {
            let mut m = self.applied.write();
            let e = m.entry((topic.to_owned(), partition)).or_insert(-1);
            *e = (*e).max(offset);
        }
        self.changed.notify_waiters();
    }

    /// The applied offset, when a local projector reported one.
    pub fn local(&self, topic: &str, partition: i32) -> Option<i64> {
        self.applied
            .read()
            .get(&(topic.to_owned(), partition))
            .copied()
    }

    /// Resolves at the next publish (or spuriously; callers re-check).
    pub async fn changed(&self) {
        self.changed.notified().await;
    }
}
