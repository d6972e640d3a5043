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
pub mod generations;

pub use cql::CqlStore;
pub use embedded::EmbeddedStore;
pub use generations::{Generation, Generations, Phase, RoutedStore, View};

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::config::{ViewBackend, ViewsConfig};
use crate::event::{
    FeedContent, FeedItemId, PollId, Principal, QuestionId, SessionKey, UploadId, UserId,
};
use crate::fold::Position;
use crate::fold::cards::{Card, Patch};
use crate::fold::feed::{FeedKind, ItemCommit, ItemState, Member, MemberKey};
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

/// Cursor into a timeline: the last row of the previous page.
pub type FeedCursor = (DateTime<Utc>, FeedItemId);

/// The name of the timeline holding every kind.
pub const ALL_KINDS: &str = "all";

/// One row of a timeline (per kind, and one for all kinds), newest first: a
/// copy of the item with its counts, so a page is one query.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineRow {
    /// The item.
    pub item_id: FeedItemId,
    /// Post, game or team.
    pub kind: FeedKind,
    /// The kind's fields.
    pub content: FeedContent,
    /// Who created it.
    pub author: Principal,
    /// Created at.
    pub created_at: DateTime<Utc>,
    /// Users who like it.
    pub likes: u64,
    /// Users who joined it.
    pub joined: u64,
    /// Version of the item this row reflects.
    pub position: Position,
}

impl TimelineRow {
    /// The timeline copy of an item.
    pub fn of(s: &ItemState) -> Self {
        Self {
            item_id: s.item_id,
            kind: s.kind,
            content: s.content.clone(),
            author: s.author.clone(),
            created_at: s.created_at,
            likes: s.likes,
            joined: s.joined,
            position: s.position,
        }
    }

    /// The timelines an item appears in: its kind's and the one of all.
    pub fn timelines(kind: FeedKind) -> [&'static str; 2] {
        [kind.as_str(), ALL_KINDS]
    }
}

/// One voter of one question (never stored for anonymous polls).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoterRow {
    /// Who.
    pub voter: UserId,
    /// Display name at voting time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// When the ballot was cast.
    pub at: DateTime<Utc>,
}

/// The view store.
#[async_trait]
pub trait ViewStore: Send + Sync + std::fmt::Debug + 'static {
    /// `embedded` or `cql`.
    fn backend(&self) -> &'static str;
    /// Statements executed so far: `(reads, writes)`.
    fn counts(&self) -> (u64, u64);
    /// Creates the schema when missing (idempotent).
    async fn migrate(&self) -> Result<(), ViewError>;

    /// The generation rows of every view (one query on the control table;
    /// not counted as a view read: readers consult it through a short
    /// cache, not per request).
    async fn generations(&self) -> Result<Vec<Generation>, ViewError>;
    /// Compare-and-set of one view's generation row: stores `next` only if
    /// the stored row's `rev` is `expected` (0: no row yet). `Ok(false)`
    /// when another writer got there first.
    async fn set_generation(&self, next: &Generation, expected: i64) -> Result<bool, ViewError>;
    /// Deletes every row of one view (its tables and checkpoints) from this
    /// store: garbage collection of a retired generation that shares its
    /// store with others.
    async fn drop_view(&self, view: View) -> Result<(), ViewError>;
    /// Deletes this whole store (a generation's own keyspace).
    async fn drop_store(&self) -> Result<(), ViewError>;

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

    /// Read: the voters of one question, by voter id, after `after`, one
    /// query (empty for anonymous polls: their voters are never stored).
    async fn question_voters(
        &self,
        poll: PollId,
        question: QuestionId,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<VoterRow>, ViewError>;

    /// Projector: current states of these feed items (absent ones omitted).
    async fn load_items(&self, ids: &[FeedItemId]) -> Result<Vec<ItemState>, ViewError>;
    /// Projector: these memberships of one item (absent ones omitted).
    async fn load_members(
        &self,
        item: FeedItemId,
        keys: &[MemberKey],
    ) -> Result<Vec<(MemberKey, Member)>, ViewError>;
    /// Projector: the timeline rows (derived, first), then one atomic,
    /// versioned write of the item and its changed memberships.
    async fn commit_item(&self, commit: &ItemCommit) -> Result<(), ViewError>;
    /// Read: one feed item, one query.
    async fn item(&self, id: FeedItemId) -> Result<Option<ItemState>, ViewError>;
    /// Read: a timeline page, newest first, one query (`kind` `None`: all).
    async fn timeline(
        &self,
        kind: Option<FeedKind>,
        before: Option<FeedCursor>,
        limit: usize,
    ) -> Result<Vec<TimelineRow>, ViewError>;

    /// Projector: merge patches into session cards and upload status rows,
    /// each `USING TIMESTAMP` its merge order (see `fold::cards`).
    async fn apply_patches(&self, cards: &[&Patch], uploads: &[&Patch]) -> Result<(), ViewError>;
    /// Read: a session's cards by slot, one query.
    async fn cards(&self, session: &SessionKey) -> Result<Vec<Card>, ViewError>;
    /// Read: one upload's job status, one query.
    async fn upload(&self, id: UploadId) -> Result<Option<Card>, ViewError>;

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

    /// Export: one page of every poll's state, in the backend's scan order
    /// (token order in CQL, id order embedded), starting after `after` (the
    /// previous page's `next`; `None`: from the start). One query per page,
    /// at most `limit` polls (fewer is not the end: only `next == None`
    /// is). Not a snapshot: a poll that exists for the whole scan is seen
    /// exactly once, one created meanwhile may or may not be.
    async fn scan_polls(
        &self,
        after: Option<PollId>,
        limit: usize,
    ) -> Result<(Vec<PollState>, Option<PollId>), ViewError>;
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

/// The derived "voters of a question" rows a poll commit changes: per
/// question, the voters to upsert (`Some`) or delete (`None`). Nothing for
/// anonymous polls, whose voters are never stored readable.
pub(crate) fn voter_changes(c: &PollCommit) -> BTreeMap<QuestionId, Vec<(&str, Option<VoterRow>)>> {
    let mut out: BTreeMap<QuestionId, Vec<(&str, Option<VoterRow>)>> = BTreeMap::new();
    if c.state.anonymous {
        return out;
    }
    for (i, (voter, ballot)) in c.ballots.iter().enumerate() {
        let before = c.previous.get(i).copied().unwrap_or(0);
        let now = ballot.as_ref().map_or(0, |b| b.choices);
        let Ok(id) = UserId::parse(voter) else {
            continue;
        };
        for q in bits(before & !now) {
            out.entry(q).or_default().push((voter.as_str(), None));
        }
        if let Some(b) = ballot {
            for q in bits(now) {
                out.entry(q).or_default().push((
                    voter.as_str(),
                    Some(VoterRow {
                        voter: id.clone(),
                        name: b.name.clone(),
                        at: b.at,
                    }),
                ));
            }
        }
    }
    out
}

/// The question ids of a choice bitset.
fn bits(mut b: u32) -> impl Iterator<Item = QuestionId> {
    std::iter::from_fn(move || {
        (b != 0).then(|| {
            let q = b.trailing_zeros() as QuestionId;
            b &= b - 1;
            q
        })
    })
}
