//! Projections as pure functions: a state and an event in, the next state
//! out, plus what was decided (applied, duplicate, rejected). No I/O, no
//! clock: time comes with the event, the log position with the record, so a
//! replay decides exactly as the first run did.

pub mod cards;
pub mod feed;
pub mod poll;

use serde::{Deserialize, Serialize};

/// A record's place in its topic: what versioned aggregates remember.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Position {
    /// Partition.
    pub partition: i32,
    /// Offset within the partition.
    pub offset: i64,
}

/// What a fold did with one event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome<R> {
    /// The state changed.
    Applied,
    /// Already applied (at or below the aggregate's offset): a no-op.
    Duplicate,
    /// Refused by a rule; counted, never silently dropped.
    Rejected(R),
}
