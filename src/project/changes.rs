//! View changes, announced once their writes are durable: what `GET
//! /v1/stream` pushes to dashboards. A slow subscriber lags (and is told
//! so) instead of slowing the projectors.
//!
//! On the embedded log this process's projectors own every partition and
//! announce what they apply. On a shared log other processes apply most
//! changes, so the change follower ([`super::follow`]) announces every
//! change, whichever process applied it, and the local projectors' own
//! announcements are muted (one source, no duplicates).

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
    /// The change follower announces; local projectors stay quiet.
    followed: std::sync::atomic::AtomicBool,
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
            followed: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// From now on the change follower announces every change; what local
    /// projectors announce through [`Self::publish_local`] is dropped.
    pub fn follow_all(&self) {
        self.followed
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// A change a projector of this process applied: announced unless the
    /// change follower announces everything.
    pub fn publish_local(&self, change: Change, topic: &str, position: Position) {
        if !self.followed.load(std::sync::atomic::Ordering::Acquire) {
            self.publish(change, topic, position);
        }
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
