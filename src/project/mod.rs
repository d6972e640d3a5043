//! The projector runtime: consumed partitions → pure folds → coalesced,
//! versioned view writes → offsets stored. Poison records go to the DLQ with
//! their reason and position; the partition never stalls on them.
//!
//! - [`runtime`]: the generic projector every view runs in (checkpoints,
//!   decoding, the DLQ, live state, totals, metrics).
//! - [`aggregate`]: the projection of read-modify-write aggregates (polls,
//!   feed items), generic over the fold and the store; [`cards`]: the
//!   order-insensitive patches of session cards.
//! - [`views`]: the registered views, one line each.
//! - [`supervisor`]: one projector per view and generation, and the swap of
//!   a rebuilt generation.
//! - [`watermarks`], [`changes`], [`follow`]: what the views have applied,
//!   announced to `?after` waits and live streams.

pub mod aggregate;
pub mod cards;
pub mod changes;
pub mod follow;
pub mod runtime;
pub mod supervisor;
pub mod views;
pub mod watermarks;

pub use changes::{Announced, Change, Changes};
pub use runtime::{BatchStats, Context, Live, Projector, ViewProjector};
pub use views::{CardProjector, FeedProjector, PollProjector};
pub use watermarks::Watermarks;
