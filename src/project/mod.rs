//! The projector runtime: consumed partitions → pure folds → coalesced,
//! versioned view writes → offsets stored. Poison records go to the DLQ with
//! their reason and position; the partition never stalls on them.

pub mod dlq;
pub mod polls;
pub mod watermarks;

pub use polls::PollProjector;
pub use watermarks::Watermarks;
