//! The view store: materialized views behind one trait, with a CQL backend
//! (ScyllaDB, or Cassandra in CI) and an embedded backend that keeps the CQL
//! data model (partition key, clustering order, upserts, per-cell write
//! timestamps). One behaviour suite runs against both.
//!
//! Every read method is one query. Writes of an aggregate follow the
//! exactly-once rules: derived rows first, then one single-partition batch
//! holding the aggregate's state and version, written `USING TIMESTAMP`
//! derived from the source offset.

mod cql;
mod embedded;

pub use cql::CqlStore;
pub use embedded::EmbeddedStore;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::config::{ViewBackend, ViewsConfig};
use crate::event::{PollId, UserId};
use crate::fold::Position;
use crate::fold::poll::{Ballot, PollCommit, PollState, VoterKey};

/// A view-store failure, with a retry hint.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ViewError {
    /// The store is unreachable or overloaded: retry with backoff.
    #[error("view store unavailable: {0}")]
    Unavailable(String),
    /// The store refused the statement (schema, syntax): do not retry.
    #[error("view store rejected a statement: {0}")]
    Rejected(String),
    /// A stored row could not be read back.
    #[error("corrupt view row: {0}")]
    Corrupt(String),
}

impl ViewError {
    /// Whether trying again may succeed.
    pub fn is_retriable(&self) -> bool {
        matches!(self, ViewError::Unavailable(_))
    }
}

/// One row of "polls by owner", newest first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerPollRow {
    /// The poll.
    pub poll_id: PollId,
    /// Created at.
    pub created_at: DateTime<Utc>,
    /// Headline.
    pub head: String,
    /// Closed by the owner.
    pub closed: bool,
    /// End time.
    pub ends_at: Option<DateTime<Utc>>,
    /// Voters so far.
    pub voters: u64,
    /// Version of the poll this row reflects.
    pub position: Position,
}

impl OwnerPollRow {
    /// The by-owner copy of a poll.
    pub fn of(s: &PollState) -> Self {
        Self {
            poll_id: s.poll_id,
            created_at: s.created_at,
            head: s.head.clone(),
            closed: s.closed_at.is_some(),
            ends_at: s.ends_at,
            voters: s.voters,
            position: s.position,
        }
    }
}

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

/// Cursor into "polls by owner": the last row of the previous page.
pub type OwnerCursor = (DateTime<Utc>, PollId);

/// The view store.
#[async_trait]
pub trait ViewStore: Send + Sync + std::fmt::Debug + 'static {
    /// `embedded` or `cql`.
    fn backend(&self) -> &'static str;
    /// Statements executed so far: `(reads, writes)`.
    fn counts(&self) -> (u64, u64);
    /// Creates the schema when missing (idempotent).
    async fn migrate(&self) -> Result<(), ViewError>;

    /// Projector: current states of these polls (absent ones are omitted).
    async fn load_polls(&self, ids: &[PollId]) -> Result<Vec<PollState>, ViewError>;
    /// Projector: the current ballots of these voters of one poll.
    async fn load_ballots(
        &self,
        poll: PollId,
        voters: &[VoterKey],
    ) -> Result<Vec<(VoterKey, Ballot)>, ViewError>;
    /// Projector: one atomic, versioned write of a poll aggregate (after its
    /// derived by-owner row).
    async fn commit_poll(&self, commit: &PollCommit) -> Result<(), ViewError>;

    /// Read: one poll, one query.
    async fn poll(&self, id: PollId) -> Result<Option<PollState>, ViewError>;
    /// Read: an owner's polls, newest first, one query.
    async fn polls_by_owner(
        &self,
        owner: &UserId,
        before: Option<OwnerCursor>,
        limit: usize,
    ) -> Result<Vec<OwnerPollRow>, ViewError>;

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
}

/// Counts statements, for the one-query proof and writes-per-event figures.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    reads: AtomicU64,
    writes: AtomicU64,
}

impl Counters {
    pub(crate) fn read(&self) {
        self.reads.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(crate::telemetry::names::VIEW_READS).increment(1);
    }
    pub(crate) fn write(&self, n: u64) {
        self.writes.fetch_add(n, Ordering::Relaxed);
        metrics::counter!(crate::telemetry::names::VIEW_WRITES).increment(n);
    }
    pub(crate) fn get(&self) -> (u64, u64) {
        (
            self.reads.load(Ordering::Relaxed),
            self.writes.load(Ordering::Relaxed),
        )
    }
}

/// The write timestamp for a source offset. Offsets start at 0 and CQL
/// timestamps must be positive; higher offsets always win.
pub fn write_timestamp(offset: i64) -> i64 {
    offset + 1
}

/// Opens the configured store and creates its schema.
pub async fn open(cfg: &ViewsConfig) -> Result<Arc<dyn ViewStore>, ViewError> {
    let store: Arc<dyn ViewStore> = match cfg.backend {
        ViewBackend::Embedded => Arc::new(EmbeddedStore::default()),
        ViewBackend::Cql => Arc::new(CqlStore::connect(cfg).await?),
    };
    store.migrate().await?;
    Ok(store)
}
