//! The view store: materialized views with a CQL backend (ScyllaDB, or
//! Cassandra in CI) and an embedded backend that keeps the CQL data model
//! (partition key, clustering order, upserts, per-cell write timestamps).
//! One behaviour suite runs against both.
//!
//! - One small trait per view ([`PollsStore`], [`FeedStore`],
//!   [`CardsStore`]) and for the control rows ([`CheckpointStore`],
//!   [`GenerationStore`]); a backend's [`Store`] is all of them for one
//!   generation (a keyspace, or one embedded store). `view/cql/` and
//!   `view/embedded/` each hold one module per trait.
//! - Every read method is one query. Writes of an aggregate follow the
//!   exactly-once rules: derived rows first, then one single-partition batch
//!   holding the aggregate's state and version, written `USING TIMESTAMP`
//!   derived from the source offset.
//! - Statements are counted where every one of them passes on its way to
//!   the backend (the CQL session wrapper, the embedded tables), never by
//!   the store methods, so the one-query proof counts what really ran.
//! - [`Generations`] routes each view to its active generation's store.

pub mod cards;
pub mod control;
pub mod cql;
pub mod embedded;
pub mod feed;
pub mod generations;
pub mod polls;
pub mod snapshot;

pub use cards::{CardsStore, SessionRow};
pub use control::{Checkpoint, CheckpointStore, Degraded, GenerationStore};
pub use cql::CqlStore;
pub use embedded::EmbeddedStore;
pub use feed::{
    ALL_KINDS, FeedCursor, FeedStore, KnownBuckets, TimelinePart, TimelineParts, TimelineRow,
    timeline_page,
};
pub use generations::{Generation, Generations, Phase};
pub use polls::{OwnerCursor, OwnerPollRow, PollsStore, VoterRow};

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;

use crate::config::{ViewBackend, ViewsConfig};
use crate::event::Topic;
use crate::fold::Aggregate;

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

/// A materialized view: its name (in checkpoints, control rows, consumer
/// groups and URLs) and the topics folded into it. Each view's store module
/// declares its own (`polls::VIEW`, ...).
#[derive(Clone, Copy)]
pub struct View {
    name: &'static str,
    topics: &'static [Topic],
}

impl View {
    /// A view named `name`, fed by `topics`.
    pub const fn new(name: &'static str, topics: &'static [Topic]) -> Self {
        Self { name, topics }
    }

    /// Its name.
    pub fn as_str(self) -> &'static str {
        self.name
    }

    /// The topics folded into it.
    pub fn topics(self) -> &'static [Topic] {
        self.topics
    }
}

impl PartialEq for View {
    fn eq(&self, o: &Self) -> bool {
        self.name == o.name
    }
}

impl Eq for View {}

impl std::hash::Hash for View {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.name.hash(h)
    }
}

impl PartialOrd for View {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}

impl Ord for View {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.name.cmp(o.name)
    }
}

impl std::fmt::Debug for View {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

impl std::fmt::Display for View {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

impl serde::Serialize for View {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name)
    }
}

/// One generation's store: every view's tables and the control rows.
#[async_trait]
pub trait Store:
    PollsStore + FeedStore + CardsStore + CheckpointStore + GenerationStore + std::fmt::Debug
{
    /// `embedded` or `cql`.
    fn backend(&self) -> &'static str;
    /// This store, when it is the embedded one (which snapshots).
    fn as_embedded(&self) -> Option<&EmbeddedStore> {
        None
    }
    /// Statements executed so far: `(reads, writes)`, counted where every
    /// statement passes (see the module docs).
    fn counts(&self) -> (u64, u64);
    /// Requests made so far: each read or lone write statement is one, a
    /// batch one per partition it writes.
    fn requests(&self) -> u64;
    /// Creates the schema when missing (idempotent).
    async fn migrate(&self) -> Result<(), ViewError>;
    /// Deletes every row of one view (its tables and checkpoints) from this
    /// store: garbage collection of a retired generation that shares its
    /// store with others.
    async fn drop_view(&self, view: View) -> Result<(), ViewError>;
    /// Deletes this whole store (a generation's own keyspace).
    async fn drop_store(&self) -> Result<(), ViewError>;
}

/// What the generic projector needs of an aggregate's store: load states,
/// load the rows a batch touches, and write one commit (derived rows first,
/// then the versioned aggregate). Each view's store module implements it
/// over its trait.
#[async_trait]
pub trait AggregateStore<A: Aggregate>: Send + Sync {
    /// Current states of these aggregates (absent ones are omitted).
    async fn load(&self, ids: &[A::Id]) -> Result<Vec<A::State>, ViewError>;
    /// These rows of one aggregate (absent ones are omitted).
    async fn load_rows(
        &self,
        id: A::Id,
        keys: &[A::Key],
    ) -> Result<Vec<(A::Key, A::Row)>, ViewError>;
    /// One atomic, versioned write, its derived rows first.
    async fn commit(&self, commit: &A::Commit) -> Result<(), ViewError>;
    /// The derived rows of a whole batch's commits (each aggregate's last),
    /// grouped by the partitions they live in, before any of the
    /// aggregates' own writes ([`Self::commit_own`]). Default: none, each
    /// [`Self::commit_own`] writes its own.
    async fn commit_derived(&self, _commits: &[&A::Commit]) -> Result<(), ViewError> {
        Ok(())
    }
    /// The aggregate's own write, once [`Self::commit_derived`] wrote its
    /// derived rows. Default: [`Self::commit`].
    async fn commit_own(&self, commit: &A::Commit) -> Result<(), ViewError> {
        self.commit(commit).await
    }
}

/// Counts statements, for the one-query proof and writes-per-event figures.
/// Owned by the layer every statement passes through (never bumped by the
/// store methods themselves).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    reads: AtomicU64,
    writes: AtomicU64,
    requests: AtomicU64,
}

impl Counters {
    /// One read statement: one request.
    pub(crate) fn read(&self) {
        self.reads.fetch_add(1, Ordering::Relaxed);
        crate::telemetry::emit::view_reads(1);
        self.request(1);
    }
    /// `n` write statements (their requests are counted by [`Self::request`]).
    pub(crate) fn write(&self, n: u64) {
        self.writes.fetch_add(n, Ordering::Relaxed);
        crate::telemetry::emit::view_writes(n);
    }
    /// `n` requests: a statement alone, or a batch, is one per partition
    /// it writes (a single-partition batch is one; the coordinator fans a
    /// multi-partition batch out to each).
    pub(crate) fn request(&self, n: u64) {
        self.requests.fetch_add(n, Ordering::Relaxed);
        crate::telemetry::emit::view_requests(n);
    }
    pub(crate) fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
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
pub async fn open(cfg: &ViewsConfig) -> Result<Arc<dyn Store>, ViewError> {
    let store: Arc<dyn Store> = match cfg.backend {
        ViewBackend::Embedded => Arc::new(EmbeddedStore::default()),
        ViewBackend::Cql => Arc::new(CqlStore::connect(cfg).await?),
    };
    store.migrate().await?;
    Ok(store)
}
