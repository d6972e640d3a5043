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

    /// Resolves at the first publish after this call (or spuriously;
    /// callers re-check). Take it *before* checking the offsets, then await
    /// it: a publish between the check and the await still wakes the
    /// caller. (Waiting on a notification taken after the check missed
    /// such a publish, and a read with `?after` slept out its 50 ms poll.)
    pub fn next_change(&self) -> impl std::future::Future<Output = ()> + Send + '_ {
        let mut armed = Box::pin(self.changed.notified());
        armed.as_mut().enable();
        armed
    }

    /// Resolves once a local projector reported `offset` (or later) of the
    /// partition as applied.
    pub async fn reached(&self, topic: &str, partition: i32, offset: i64) {
        loop {
            let change = self.next_change();
            if self.local(topic, partition).is_some_and(|o| o >= offset) {
                return;
            }
            change.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::Watermarks;

    /// A publish between taking the wake-up and awaiting it wakes the
    /// waiter (a notification taken when first polled missed it).
    #[tokio::test]
    async fn a_publish_after_the_check_still_wakes() {
        let w = Watermarks::new();
        let change = w.next_change();
        assert_eq!(w.local("t", 0), None, "nothing applied yet");
        w.publish("t", 0, 7);
        tokio::time::timeout(Duration::from_secs(5), change)
            .await
            .expect("the publish woke the waiter");
        assert_eq!(w.local("t", 0), Some(7));
    }
}
