//! Operations, used alike by the admin routes (`api/admin`) and the command
//! line (`cli`): rebuilding views into a new generation, where rebuilds and
//! views stand, dropping retired generations. The projector supervisors do
//! the rebuild's work and the swap; this starts them and reports.

pub mod rebuild;

pub use rebuild::{
    PartitionProgress, Planned, Rebuild, RebuildError, ViewStatus, gc, start_rebuild, status,
};
