//! The polls view on the embedded tables: `polls` (the aggregate in static
//! cells, a ballot per voter row), `polls_by_owner` and `poll_voters`.

use std::sync::Arc;

use async_trait::async_trait;

use super::EmbeddedStore;
use super::table::{Cells, Footprint, Mutation, Row, Table, TextKey, Whole, page};
use crate::event::{PollId, QuestionId, UserId};
use crate::fold::poll::{Ballot, PollCommit, PollState, VoterKey};
use crate::view::polls::voter_changes;
use crate::view::{
    Counters, OwnerCursor, OwnerPollRow, PollsStore, ViewError, VoterRow, write_timestamp,
};

/// Newest first: clustering order `created_at DESC, poll_id DESC`.
type OwnerKey = std::cmp::Reverse<(i64, PollId)>;

/// Typed rows, written whole (as the CQL store writes every column): no
/// JSON on the projector's write path.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct Tables {
    polls: Table<PollId, TextKey, Whole<PollState>, Whole<Ballot>>,
    by_owner: Table<UserId, OwnerKey, Cells, Whole<OwnerPollRow>>,
    voters: Table<(PollId, QuestionId), TextKey, Cells, Whole<VoterRow>>,
}

impl Footprint for PollState {
    fn heap(&self) -> u64 {
        let each = |n: usize, size: usize| (n * size) as u64;
        self.owner.heap()
            + (self.head.len() + self.message.len()) as u64
            + self
                .questions
                .iter()
                .map(|q| (std::mem::size_of_val(q) + q.text.len()) as u64)
                .sum::<u64>()
            + each(self.tallies.len(), 8)
            + self
                .recent
                .iter()
                .map(|r| {
                    (std::mem::size_of_val(r)
                        + r.id.as_str().len()
                        + r.name.len()
                        + r.avatar_url.as_ref().map_or(0, String::len)) as u64
                })
                .sum::<u64>()
            + each(self.rejected.len(), 64)
    }
}

impl Footprint for Ballot {
    fn heap(&self) -> u64 {
        self.name.as_ref().map_or(0, |n| n.len() as u64)
    }
}

impl Footprint for OwnerPollRow {
    fn heap(&self) -> u64 {
        self.head.len() as u64
    }
}

impl Footprint for VoterRow {
    fn heap(&self) -> u64 {
        (self.voter.as_str().len() + self.name.as_ref().map_or(0, String::len)) as u64
    }
}

impl Tables {
    pub(super) fn new(c: &Arc<Counters>) -> Self {
        Self {
            polls: Table::new(c),
            by_owner: Table::new(c),
            voters: Table::new(c),
        }
    }

    pub(super) fn rebind(&mut self, c: &Arc<Counters>) {
        self.polls.rebind(c);
        self.by_owner.rebind(c);
        self.voters.rebind(c);
    }

    pub(super) fn attach(&self, spill: &Arc<super::spill::Spill>, tag: &str) {
        self.polls.attach(spill, format!("{tag}/polls.polls"));
        self.by_owner.attach(spill, format!("{tag}/polls.by_owner"));
        self.voters.attach(spill, format!("{tag}/polls.voters"));
    }

    pub(super) fn clear(&self) {
        self.polls.clear();
        self.by_owner.clear();
        self.voters.clear();
    }
}

#[async_trait]
impl PollsStore for EmbeddedStore {
    async fn load_polls(&self, ids: &[PollId]) -> Result<Vec<PollState>, ViewError> {
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            out.extend(self.polls.polls.statics(id)?);
        }
        Ok(out)
    }

    async fn load_ballots(
        &self,
        poll: PollId,
        voters: &[VoterKey],
    ) -> Result<Vec<(VoterKey, Ballot)>, ViewError> {
        self.polls.polls.rows(&poll, |rows| {
            let Some(rows) = rows else {
                return Vec::new();
            };
            voters
                .iter()
                .filter_map(|v| {
                    let live = rows.get(&TextKey::from(v.as_str())).and_then(Row::live)?;
                    Some((v.clone(), live))
                })
                .collect()
        })
    }

    async fn commit_poll(&self, c: &PollCommit) -> Result<(), ViewError> {
        let s = &c.state;
        let ts = write_timestamp(s.position.offset);
        // Derived rows first: a crash before the aggregate is repaired by
        // re-applying, which rewrites them.
        let row = OwnerPollRow::of(s);
        self.polls.by_owner.batch(
            &s.owner.id,
            ts,
            vec![Mutation::Upsert(
                std::cmp::Reverse((s.created_at.timestamp_micros(), s.poll_id)),
                row,
            )],
        )?;
        for (q, changes) in voter_changes(c) {
            let vm = changes
                .into_iter()
                .map(|(v, row)| match row {
                    Some(r) => Mutation::Upsert(v.into(), r),
                    None => Mutation::Delete(v.into()),
                })
                .collect::<Vec<_>>();
            self.polls.voters.batch(&(s.poll_id, q), ts, vm)?;
        }
        let mut muts = Vec::with_capacity(c.ballots.len() + 1);
        muts.push(Mutation::Static(s.clone()));
        for (k, b) in &c.ballots {
            muts.push(match b {
                Some(b) => Mutation::Upsert(k.as_str().into(), b.clone()),
                None => Mutation::Delete(k.as_str().into()),
            });
        }
        self.polls.polls.batch(&s.poll_id, ts, muts)
    }

    async fn poll(&self, id: PollId) -> Result<Option<PollState>, ViewError> {
        self.polls.polls.statics(&id)
    }

    async fn polls_by_owner(
        &self,
        owner: &UserId,
        before: Option<OwnerCursor>,
        limit: usize,
    ) -> Result<Vec<OwnerPollRow>, ViewError> {
        let after = before.map(|(t, id)| std::cmp::Reverse((t.timestamp_micros(), id)));
        self.polls
            .by_owner
            .rows(owner, |rows| page(rows, after, limit))?
    }

    async fn question_voters(
        &self,
        poll: PollId,
        question: QuestionId,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<VoterRow>, ViewError> {
        self.polls.voters.rows(&(poll, question), |rows| {
            page(rows, after.map(TextKey::from), limit)
        })?
    }

    async fn scan_polls(
        &self,
        after: Option<PollId>,
        limit: usize,
    ) -> Result<(Vec<PollState>, Option<PollId>), ViewError> {
        self.polls.polls.scan_statics(after.as_ref(), limit)
    }
}
