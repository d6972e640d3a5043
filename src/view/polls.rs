//! The polls view: a poll's aggregate with its ballots (one partition), its
//! by-owner copy, and the voters of each question (never for anonymous
//! polls). Fed by `atelier.polls.v1`.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{AggregateStore, Generations, View, ViewError};
use crate::event::{PollId, QuestionId, Topic, UserId};
use crate::fold::Position;
use crate::fold::poll::{Ballot, PollAggregate, PollCommit, PollState, VoterKey};

/// The view.
pub const VIEW: View = View::new("polls", &[Topic::Polls]);

/// One row of "polls by owner", newest first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
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

/// Cursor into "polls by owner": the last row of the previous page.
pub type OwnerCursor = (DateTime<Utc>, PollId);

/// One voter of one question (never stored for anonymous polls).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct VoterRow {
    /// Who.
    pub voter: UserId,
    /// Display name at voting time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// When the ballot was cast.
    pub at: DateTime<Utc>,
}

/// The polls view's store.
#[async_trait]
pub trait PollsStore: Send + Sync + 'static {
    /// Projector: current states of these polls (absent ones are omitted).
    async fn load_polls(&self, ids: &[PollId]) -> Result<Vec<PollState>, ViewError>;
    /// Projector: the current ballots of these voters of one poll.
    async fn load_ballots(
        &self,
        poll: PollId,
        voters: &[VoterKey],
    ) -> Result<Vec<(VoterKey, Ballot)>, ViewError>;
    /// Projector: one atomic, versioned write of a poll aggregate (after its
    /// derived by-owner and voter rows).
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

#[async_trait]
impl AggregateStore<PollAggregate> for dyn PollsStore {
    async fn load(&self, ids: &[PollId]) -> Result<Vec<PollState>, ViewError> {
        self.load_polls(ids).await
    }
    async fn load_rows(
        &self,
        id: PollId,
        keys: &[VoterKey],
    ) -> Result<Vec<(VoterKey, Ballot)>, ViewError> {
        self.load_ballots(id, keys).await
    }
    async fn commit(&self, c: &PollCommit) -> Result<(), ViewError> {
        self.commit_poll(c).await
    }
}

impl Generations {
    /// The polls store readers see now (the active generation's).
    pub async fn polls(&self) -> Result<Arc<dyn PollsStore>, ViewError> {
        Ok(self.active(VIEW).await?)
    }
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
