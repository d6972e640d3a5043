//! View changes, announced once their writes are durable: what `GET
//! /v1/stream` pushes to dashboards. A slow subscriber lags (and is told
//! so) instead of slowing the projectors.
//!
//! On the embedded log this process's projectors own every partition and
//! announce what they apply. On a shared log other processes apply most
//! changes, so the change follower ([`super::follow`]) announces every
//! change, whichever process applied it, and the local projectors' own
//! announcements are muted where the follower covers them.
//!
//! The follower covers a partition from the offset it starts reading it at:
//! the partition's end when the follower starts, its beginning for a
//! partition added later. It records that offset before it reads
//! ([`Changes::follower_starts`]); a local batch that begins below it, or on
//! a partition the follower has not assigned itself yet (it lists the topics
//! only every few seconds), is announced by its projector. Nothing falls
//! between the two; a change both announce in that overlap reaches a
//! subscriber twice, which costs a re-read of one row.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::RwLock;

use tokio::sync::broadcast;

use crate::event::{FeedItemId, PollId, SessionKey, UploadId};
use crate::fold::Position;
use crate::fold::feed::FeedKind;

/// Which view row changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A poll's aggregate.
    Poll(PollId),
    /// A feed item (and its timeline rows).
    Feed(FeedItemId, FeedKind),
    /// A session's cards.
    Session(SessionKey),
    /// An upload's job status.
    Upload(UploadId),
}

/// A change and the log position that caused it (for `?after` tokens).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Announced {
    /// What changed.
    pub change: Change,
    /// Source topic.
    pub topic: String,
    /// The last offset applied.
    pub position: Position,
}

/// The fan-out point.
#[derive(Debug)]
pub struct Changes {
    tx: broadcast::Sender<Announced>,
    /// A change follower runs in this process.
    followed: AtomicBool,
    /// Per topic and partition, the offset the follower reads from: it
    /// announces every change from that offset on.
    starts: RwLock<HashMap<String, HashMap<i32, i64>>>,
}

impl Default for Changes {
    fn default() -> Self {
        Self::new(4096)
    }
}

impl Changes {
    /// A hub that keeps up to `capacity` changes for slow subscribers.
    pub fn new(capacity: usize) -> Self {
        Self {
            tx: broadcast::channel(capacity.max(1)).0,
            followed: AtomicBool::new(false),
            starts: RwLock::default(),
        }
    }

    /// A change follower runs in this process: it announces each partition's
    /// changes from the offset it reports through [`Self::follower_starts`].
    pub fn follow_all(&self) {
        self.followed.store(true, Ordering::Release);
    }

    /// The change follower reads a partition from `offset` on: it announces
    /// every change from there. Later reports change nothing.
    pub fn follower_starts(&self, topic: &str, partition: i32, offset: i64) {
        let known = self
            .starts
            .read()
            .get(topic)
            .is_some_and(|p| p.contains_key(&partition));
        if !known {
            let mut starts = self.starts.write();
            let parts = starts.entry(topic.to_owned()).or_default();
            parts.entry(partition).or_insert(offset);
        }
    }

    /// Whether a projector of this process announces the changes of a batch
    /// that begins at offset `first`: always without a change follower, and
    /// with one where the follower does not cover the whole batch.
    pub fn announces_locally(&self, topic: &str, partition: i32, first: i64) -> bool {
        if !self.followed.load(Ordering::Acquire) {
            return true;
        }
        let covered = self
            .starts
            .read()
            .get(topic)
            .and_then(|p| p.get(&partition))
            .is_some_and(|&start| start <= first);
        !covered
    }

    /// Announces a change (a no-op without subscribers).
    pub fn publish(&self, change: Change, topic: &str, position: Position) {
        if self.tx.receiver_count() > 0 {
            let _ = self.tx.send(Announced {
                change,
                topic: topic.to_owned(),
                position,
            });
        }
    }

    /// Whether anyone listens (work done only to announce can be skipped).
    pub fn has_subscribers(&self) -> bool {
        self.tx.receiver_count() > 0
    }

    /// A new subscription, from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Announced> {
        self.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_batches_are_announced_until_the_follower_covers_them() {
        let c = Changes::new(8);
        assert!(c.announces_locally("t", 0, 5), "no follower");
        c.follow_all();
        assert!(
            c.announces_locally("t", 0, 5),
            "the follower has read nothing of the partition yet"
        );
        c.follower_starts("t", 0, 10);
        c.follower_starts("t", 0, 3);
        assert!(c.announces_locally("t", 0, 9), "begins below the start");
        assert!(!c.announces_locally("t", 0, 10));
        assert!(!c.announces_locally("t", 0, 11));
        assert!(c.announces_locally("t", 1, 11), "another partition");
        assert!(c.announces_locally("u", 0, 11), "another topic");
    }
}
