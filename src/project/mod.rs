//! The projector runtime: consumed partitions → pure folds → coalesced,
//! versioned view writes → offsets stored. Poison records go to the DLQ with
//! their reason and position; the partition never stalls on them.

pub mod cards;
pub mod changes;
mod common;
pub mod dlq;
pub mod feed;
pub mod follow;
pub mod polls;
pub mod supervisor;
pub mod watermarks;

pub use cards::CardProjector;
pub use changes::{Announced, Change, Changes};
pub use common::{BatchStats, Live};
pub use feed::FeedProjector;
pub use polls::PollProjector;
pub use watermarks::Watermarks;
