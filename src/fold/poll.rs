//! The poll fold: polls, ballots and tallies.
//!
//! Rules, decided by event time and log order so that replays decide alike:
//! a vote at or after the end time, or after `PollClosed`, is rejected; one
//! ballot per voter (a multiple-choice ballot may name several questions); a
//! second `VoteCast` replaces the voter's ballot; unknown questions are
//! rejected; only the owner closes a poll. Rejections are counted in the poll.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::{Aggregate, Outcome, Position, reasons, versioned, versioned_state};
use crate::event::{
    Event, EventData, PollCreated, PollId, Principal, Question, QuestionId, UserId,
};

/// How many recent voters a poll view shows.
pub const RECENT_VOTERS: usize = 10;

reasons! {
    /// Why an event was refused.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
    #[serde(rename_all = "snake_case")]
    pub enum Rejection {
        /// The poll does not exist (yet) in this partition.
        UnknownPoll => "unknown_poll",
        /// A second `PollCreated` for the same id.
        DuplicatePoll => "duplicate_poll",
        /// The ballot names a question the poll does not have.
        UnknownQuestion => "unknown_question",
        /// Several choices on a single-choice poll.
        TooManyChoices => "too_many_choices",
        /// At or after the poll's end time.
        AfterEnd => "after_end",
        /// After the poll was closed.
        Closed => "closed",
        /// Retracting without a ballot.
        NoBallot => "no_ballot",
        /// Closing someone else's poll.
        NotOwner => "not_owner",
    }
}

/// A voter as shown in "recent voters" (never kept for anonymous polls).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RecentVoter {
    /// Who.
    pub id: UserId,
    /// Display name when they voted.
    pub name: String,
    /// Avatar when they voted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avatar_url: Option<String>,
    /// When.
    pub at: DateTime<Utc>,
}

/// One voter's current ballot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ballot {
    /// Chosen questions as a bit set (a poll has at most 20 questions).
    pub choices: u32,
    /// When it was cast.
    pub at: DateTime<Utc>,
    /// Display name (absent for anonymous polls).
    pub name: Option<String>,
}

impl Ballot {
    /// The chosen question ids, ascending.
    pub fn question_ids(&self) -> Vec<QuestionId> {
        (0..32u16)
            .filter(|q| self.choices & (1 << q) != 0)
            .collect()
    }
}

/// Identifies a voter within a poll: the user id, or for anonymous polls a
/// keyed hash of it, so the view never stores who voted.
pub type VoterKey = String;

/// The aggregate's state: everything `GET /v1/polls/{id}` shows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PollState {
    /// The poll.
    pub poll_id: PollId,
    /// Creator (snapshot).
    pub owner: Principal,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Headline.
    pub head: String,
    /// Description.
    pub message: String,
    /// End time.
    pub ends_at: Option<DateTime<Utc>>,
    /// Voters are not stored readable.
    pub anonymous: bool,
    /// Ballots may choose several questions.
    pub multiple_choice: bool,
    /// Questions in display order.
    pub questions: Vec<Question>,
    /// When the owner closed it.
    pub closed_at: Option<DateTime<Utc>>,
    /// Votes per question, indexed by question id.
    pub tallies: Vec<u64>,
    /// Voters with a ballot.
    pub voters: u64,
    /// Newest first.
    pub recent: Vec<RecentVoter>,
    /// Refused events by reason.
    pub rejected: BTreeMap<Rejection, u64>,
    /// The last event applied (the version of this aggregate).
    pub position: Position,
}

impl PollState {
    fn new(e: &PollCreated, owner: &Principal, time: DateTime<Utc>, pos: Position) -> Self {
        Self {
            poll_id: e.poll_id,
            owner: owner.clone(),
            created_at: time,
            head: e.head.clone(),
            message: e.message.clone(),
            ends_at: e.ends_at,
            anonymous: e.anonymous,
            multiple_choice: e.multiple_choice,
            questions: e.questions.clone(),
            closed_at: None,
            tallies: vec![0; e.questions.len()],
            voters: 0,
            recent: Vec::new(),
            rejected: BTreeMap::new(),
            position: pos,
        }
    }

    /// Whether the poll still takes votes at `t`.
    pub fn is_open_at(&self, t: DateTime<Utc>) -> Result<(), Rejection> {
        if self.closed_at.is_some() {
            return Err(Rejection::Closed);
        }
        if self.ends_at.is_some_and(|end| t >= end) {
            return Err(Rejection::AfterEnd);
        }
        Ok(())
    }

    /// Checks a ballot against the poll's questions.
    pub fn check_choices(&self, ids: &[QuestionId]) -> Result<u32, Rejection> {
        if !self.multiple_choice && ids.len() > 1 {
            return Err(Rejection::TooManyChoices);
        }
        let mut bits = 0u32;
        for &q in ids {
            if usize::from(q) >= self.questions.len() {
                return Err(Rejection::UnknownQuestion);
            }
            bits |= 1 << q;
        }
        Ok(bits)
    }
}

versioned_state!(PollState, Rejection);

/// Configuration the fold needs: the key for anonymous voter pseudonyms.
#[derive(Clone, Debug, Default)]
pub struct FoldConfig {
    /// HMAC key; must stay the same for the life of the views.
    pub voter_key: Vec<u8>,
}

impl FoldConfig {
    /// The key a voter's ballot is stored under.
    pub fn voter_key(&self, anonymous: bool, poll: PollId, user: &UserId) -> VoterKey {
        self.voter_key_ref(anonymous, poll, user).into_owned()
    }

    /// [`FoldConfig::voter_key`] without allocating for named polls.
    pub fn voter_key_ref<'u>(
        &self,
        anonymous: bool,
        poll: PollId,
        user: &'u UserId,
    ) -> Cow<'u, str> {
        if !anonymous {
            return Cow::Borrowed(user.as_str());
        }
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.voter_key)
            .expect("HMAC takes keys of any length");
        mac.update(poll.0.as_bytes());
        mac.update(user.as_str().as_bytes());
        Cow::Owned(format!(
            "h:{}",
            hex::encode(&mac.finalize().into_bytes()[..16])
        ))
    }
}

/// A poll with the ballots the next events need.
///
/// The runtime loads the ballots of the voters a batch touches (a missing
/// entry means "no ballot"); the reference fold in tests simply keeps all.
#[derive(Clone, Debug, Default)]
pub struct PollAggregate {
    /// `None` until the poll is created.
    pub state: Option<PollState>,
    /// Known ballots. Keys are authenticated user ids (or their keyed
    /// hashes), so a fast non-DoS-resistant hasher is acceptable here.
    ballots: Ballots,
    /// Ballots changed since the last commit.
    dirty: usize,
    /// Whether `state` changed since the last commit.
    state_dirty: bool,
}

/// The ballots an aggregate knows, by voter.
type Ballots = FxHashMap<VoterKey, Slot>;

/// A voter's ballot as the fold knows it.
#[derive(Clone, Debug, Default)]
struct Slot {
    /// `None`: no ballot (never cast, or retracted).
    ballot: Option<Ballot>,
    /// Changed since the last commit.
    dirty: bool,
    /// The choices the view holds for this voter (0: no ballot stored), so
    /// a commit can tell derived rows which questions a voter left.
    stored: u32,
}

impl Slot {
    /// Marks the slot changed, counting it once per commit.
    fn touch(&mut self, dirty: &mut usize) {
        if !self.dirty {
            self.dirty = true;
            *dirty += 1;
        }
    }
}

/// The slot of `key`, created empty when absent (hashing twice only then).
fn slot<'a>(ballots: &'a mut Ballots, key: Cow<'_, str>) -> &'a mut Slot {
    if !ballots.contains_key(key.as_ref()) {
        ballots.insert(key.clone().into_owned(), Slot::default());
    }
    ballots.get_mut(key.as_ref()).expect("just inserted")
}

/// What one atomic write of an aggregate contains: its state (with the
/// version) and the ballot rows that changed with it.
#[derive(Clone, Debug, PartialEq)]
pub struct PollCommit {
    /// The state after the last applied event.
    pub state: PollState,
    /// Changed ballots (`None`: delete the row).
    pub ballots: Vec<(VoterKey, Option<Ballot>)>,
    /// For each changed ballot (same index), the choices the view held
    /// before this commit (0: none; missing entries count as 0).
    pub previous: Vec<u32>,
}

impl PollAggregate {
    /// An aggregate restored from the view.
    pub fn from_state(state: Option<PollState>) -> Self {
        Self {
            state,
            ..Self::default()
        }
    }

    /// Records what the store holds for a voter (`None`: no ballot).
    pub fn load_ballot(&mut self, key: VoterKey, ballot: Option<Ballot>) {
        self.ballots.insert(
            key,
            Slot {
                stored: ballot.as_ref().map_or(0, |b| b.choices),
                ballot,
                dirty: false,
            },
        );
    }

    /// Every known ballot.
    pub fn ballots(&self) -> impl Iterator<Item = (&VoterKey, &Ballot)> {
        self.ballots
            .iter()
            .filter_map(|(k, s)| s.ballot.as_ref().map(|b| (k, b)))
    }

    /// Ballot rows changed since the last commit.
    pub fn dirty_ballots(&self) -> usize {
        self.dirty
    }

    /// Takes what must be written, if anything changed.
    pub fn take_commit(&mut self) -> Option<PollCommit> {
        if !self.state_dirty && self.dirty == 0 {
            return None;
        }
        let state = self.state.clone()?;
        let mut changed = Vec::with_capacity(self.dirty);
        if self.dirty > 0 {
            for (k, slot) in self.ballots.iter_mut().filter(|(_, s)| s.dirty) {
                slot.dirty = false;
                let before = slot.stored;
                slot.stored = slot.ballot.as_ref().map_or(0, |b| b.choices);
                changed.push((k.clone(), slot.ballot.clone(), before));
            }
        }
        changed.sort_by(|a, b| a.0.cmp(&b.0));
        self.dirty = 0;
        self.state_dirty = false;
        let previous = changed.iter().map(|c| c.2).collect();
        let ballots = changed.into_iter().map(|(k, b, _)| (k, b)).collect();
        Some(PollCommit {
            state,
            ballots,
            previous,
        })
    }

    /// Applies one event at `pos`. Events at or below the aggregate's
    /// position are duplicates (redelivery, replay) and change nothing.
    pub fn apply(&mut self, cfg: &FoldConfig, pos: Position, event: &Event) -> Outcome<Rejection> {
        let (ballots, dirty) = (&mut self.ballots, &mut self.dirty);
        versioned(
            &mut self.state,
            &mut self.state_dirty,
            pos,
            Rejection::UnknownPoll,
            |state| {
                Some(match &event.data {
                    EventData::PollCreated(e) => match state {
                        Some(_) => Err(Rejection::DuplicatePoll),
                        None => {
                            *state = Some(PollState::new(e, &event.principal, event.time, pos));
                            Ok(())
                        }
                    },
                    EventData::VoteCast(e) => {
                        cast(state, ballots, dirty, cfg, event, &e.question_ids)
                    }
                    EventData::VoteRetracted(_) => retract(state, ballots, dirty, cfg, event),
                    EventData::PollClosed(_) => match state {
                        None => Err(Rejection::UnknownPoll),
                        Some(s) if s.owner.id != event.principal.id => Err(Rejection::NotOwner),
                        Some(s) if s.closed_at.is_some() => Err(Rejection::Closed),
                        Some(s) => {
                            s.closed_at = Some(event.time);
                            Ok(())
                        }
                    },
                    _ => return None,
                })
            },
        )
    }
}

/// The state of a poll that takes votes at `t`.
fn open_at(state: &mut Option<PollState>, t: DateTime<Utc>) -> Result<&mut PollState, Rejection> {
    let s = state.as_mut().ok_or(Rejection::UnknownPoll)?;
    s.is_open_at(t)?;
    Ok(s)
}

fn cast(
    state: &mut Option<PollState>,
    ballots: &mut Ballots,
    dirty: &mut usize,
    cfg: &FoldConfig,
    event: &Event,
    ids: &[QuestionId],
) -> Result<(), Rejection> {
    let s = open_at(state, event.time)?;
    let bits = s.check_choices(ids)?;
    let p = &event.principal;
    let slot = slot(ballots, cfg.voter_key_ref(s.anonymous, s.poll_id, &p.id));
    let name = match slot.ballot.take() {
        Some(prev) => {
            untally(&mut s.tallies, prev.choices);
            // Reuse the stored name when it did not change.
            prev.name.filter(|n| *n == p.name)
        }
        None => {
            s.voters += 1;
            None
        }
    };
    tally(&mut s.tallies, bits);
    slot.ballot = Some(Ballot {
        choices: bits,
        at: event.time,
        name: if s.anonymous {
            None
        } else {
            name.or_else(|| Some(p.name.clone()))
        },
    });
    slot.touch(dirty);
    if !s.anonymous {
        match s.recent.first_mut() {
            // The same voter again: only the time moves.
            Some(r) if r.id == p.id && r.name == p.name && r.avatar_url == p.avatar_url => {
                r.at = event.time
            }
            _ => {
                s.recent.retain(|r| r.id != p.id);
                s.recent.truncate(RECENT_VOTERS - 1);
                s.recent.insert(
                    0,
                    RecentVoter {
                        id: p.id.clone(),
                        name: p.name.clone(),
                        avatar_url: p.avatar_url.clone(),
                        at: event.time,
                    },
                );
            }
        }
    }
    Ok(())
}

fn retract(
    state: &mut Option<PollState>,
    ballots: &mut Ballots,
    dirty: &mut usize,
    cfg: &FoldConfig,
    event: &Event,
) -> Result<(), Rejection> {
    let s = open_at(state, event.time)?;
    let key = cfg.voter_key_ref(s.anonymous, s.poll_id, &event.principal.id);
    let slot = ballots.get_mut(key.as_ref()).ok_or(Rejection::NoBallot)?;
    let prev = slot.ballot.take().ok_or(Rejection::NoBallot)?;
    untally(&mut s.tallies, prev.choices);
    s.voters -= 1;
    s.recent.retain(|r| r.id != event.principal.id);
    slot.touch(dirty);
    Ok(())
}

impl Aggregate for PollAggregate {
    type Id = PollId;
    type State = PollState;
    type Key = VoterKey;
    type Row = Ballot;
    type Commit = PollCommit;
    type Reason = Rejection;
    type Config = FoldConfig;

    fn id_of(event: &EventData) -> Option<PollId> {
        poll_id(event)
    }
    fn id(state: &PollState) -> PollId {
        state.poll_id
    }
    fn from_state(state: Option<PollState>) -> Self {
        PollAggregate::from_state(state)
    }
    fn state(&self) -> Option<&PollState> {
        self.state.as_ref()
    }
    fn into_state(self) -> Option<PollState> {
        self.state
    }
    /// The ballots of the distinct voters who vote or retract.
    fn touched(cfg: &FoldConfig, s: &PollState, events: &[(Position, Event)]) -> Vec<VoterKey> {
        let distinct: std::collections::HashSet<VoterKey> = events
            .iter()
            .filter(|(_, e)| matches!(e.data, EventData::VoteCast(_) | EventData::VoteRetracted(_)))
            .map(|(_, e)| cfg.voter_key(s.anonymous, s.poll_id, &e.principal.id))
            .collect();
        distinct.into_iter().collect()
    }
    fn load_row(&mut self, key: VoterKey, row: Option<Ballot>) {
        self.load_ballot(key, row)
    }
    fn apply(&mut self, cfg: &FoldConfig, pos: Position, event: &Event) -> Outcome<Rejection> {
        PollAggregate::apply(self, cfg, pos, event)
    }
    fn dirty_rows(&self) -> usize {
        self.dirty
    }
    fn take_commit(&mut self) -> Option<PollCommit> {
        PollAggregate::take_commit(self)
    }
    fn into_rows(c: PollCommit) -> Vec<(VoterKey, Option<Ballot>)> {
        c.ballots
    }
}

/// Adds a ballot's choices. Bits beyond the poll's questions (only a
/// corrupt stored ballot could carry them) are ignored, never a panic.
fn tally(tallies: &mut [u64], bits: u32) {
    let mut b = bits;
    while b != 0 {
        if let Some(t) = tallies.get_mut(b.trailing_zeros() as usize) {
            *t += 1;
        }
        b &= b - 1;
    }
}

/// Removes a ballot's choices (see [`tally`]).
fn untally(tallies: &mut [u64], bits: u32) {
    let mut b = bits;
    while b != 0 {
        if let Some(t) = tallies.get_mut(b.trailing_zeros() as usize) {
            *t = t.saturating_sub(1);
        }
        b &= b - 1;
    }
}

/// Folds a whole stream in memory: the reference the runtime is checked
/// against. `events` are `(position, event)` in log order per partition.
pub fn reference<'a, I>(cfg: &FoldConfig, events: I) -> HashMap<PollId, PollAggregate>
where
    I: IntoIterator<Item = (Position, &'a Event)>,
{
    let mut polls: HashMap<PollId, PollAggregate> = HashMap::new();
    for (pos, e) in events {
        if let Some(id) = poll_id(&e.data) {
            polls.entry(id).or_default().apply(cfg, pos, e);
        }
    }
    polls
}

/// The poll an event belongs to, for poll events.
pub fn poll_id(d: &EventData) -> Option<PollId> {
    match d {
        EventData::PollCreated(e) => Some(e.poll_id),
        EventData::VoteCast(e) => Some(e.poll_id),
        EventData::VoteRetracted(e) => Some(e.poll_id),
        EventData::PollClosed(e) => Some(e.poll_id),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{EventId, PollClosed, VoteCast, VoteRetracted};
    use chrono::TimeZone;
    use proptest::prelude::*;

    fn who(id: &str) -> Principal {
        Principal {
            id: UserId::parse(id).unwrap(),
            name: id.to_uppercase(),
            avatar_url: None,
        }
    }

    fn at(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + s, 0).unwrap()
    }

    fn ev(by: &str, t: i64, data: EventData) -> Event {
        Event {
            id: EventId(uuid::Uuid::now_v7()),
            time: at(t),
            principal: who(by),
            data,
        }
    }

    fn create(poll: PollId, multiple: bool, anonymous: bool, ends: Option<i64>) -> EventData {
        EventData::PollCreated(PollCreated {
            poll_id: poll,
            head: "h".into(),
            message: String::new(),
            ends_at: ends.map(at),
            anonymous,
            multiple_choice: multiple,
            questions: (0..3)
                .map(|i| Question {
                    id: i,
                    text: format!("q{i}"),
                })
                .collect(),
        })
    }

    fn vote(poll: PollId, q: &[u16]) -> EventData {
        EventData::VoteCast(VoteCast {
            poll_id: poll,
            question_ids: q.to_vec(),
        })
    }

    fn run(events: &[Event]) -> (PollAggregate, Vec<Outcome<Rejection>>) {
        let cfg = FoldConfig::default();
        let mut agg = PollAggregate::default();
        let out = events
            .iter()
            .enumerate()
            .map(|(i, e)| {
                agg.apply(
                    &cfg,
                    Position {
                        partition: 0,
                        offset: i as i64,
                    },
                    e,
                )
            })
            .collect();
        (agg, out)
    }

    #[test]
    fn ballots_replace_and_retract() {
        let p = PollId(uuid::Uuid::now_v7());
        let (agg, out) = run(&[
            ev("own", 0, create(p, false, false, None)),
            ev("a", 1, vote(p, &[0])),
            ev("b", 2, vote(p, &[0])),
            ev("a", 3, vote(p, &[2])),
            ev(
                "b",
                4,
                EventData::VoteRetracted(VoteRetracted { poll_id: p }),
            ),
            ev(
                "b",
                5,
                EventData::VoteRetracted(VoteRetracted { poll_id: p }),
            ),
        ]);
        let s = agg.state.unwrap();
        assert_eq!(s.tallies, vec![0, 0, 1]);
        assert_eq!(s.voters, 1);
        assert_eq!(out[5], Outcome::Rejected(Rejection::NoBallot));
        assert_eq!(s.rejected.get(&Rejection::NoBallot), Some(&1));
        assert_eq!(
            s.recent.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            vec!["a"]
        );
    }

    #[test]
    fn rules_reject_and_count() {
        let p = PollId(uuid::Uuid::now_v7());
        let (agg, out) = run(&[
            ev("a", 0, vote(p, &[0])),
            ev("own", 1, create(p, false, false, Some(100))),
            ev("own", 2, create(p, false, false, None)),
            ev("a", 3, vote(p, &[0, 1])),
            ev("a", 4, vote(p, &[7])),
            ev("a", 100, vote(p, &[0])),
            ev("b", 5, EventData::PollClosed(PollClosed { poll_id: p })),
            ev("own", 6, EventData::PollClosed(PollClosed { poll_id: p })),
            ev("a", 7, vote(p, &[1])),
        ]);
        assert_eq!(
            out,
            vec![
                Outcome::Rejected(Rejection::UnknownPoll),
                Outcome::Applied,
                Outcome::Rejected(Rejection::DuplicatePoll),
                Outcome::Rejected(Rejection::TooManyChoices),
                Outcome::Rejected(Rejection::UnknownQuestion),
                Outcome::Rejected(Rejection::AfterEnd),
                Outcome::Rejected(Rejection::NotOwner),
                Outcome::Applied,
                Outcome::Rejected(Rejection::Closed),
            ]
        );
        let s = agg.state.unwrap();
        assert_eq!(s.tallies, vec![0, 0, 0]);
        assert_eq!(s.rejected.values().sum::<u64>(), 6);
    }

    #[test]
    fn multiple_choice_counts_each_question_once_per_voter() {
        let p = PollId(uuid::Uuid::now_v7());
        let (agg, _) = run(&[
            ev("own", 0, create(p, true, false, None)),
            ev("a", 1, vote(p, &[0, 2])),
            ev("b", 2, vote(p, &[2])),
            ev("a", 3, vote(p, &[1, 2])),
        ]);
        let s = agg.state.unwrap();
        assert_eq!(s.tallies, vec![0, 1, 2]);
        assert_eq!(s.voters, 2);
    }

    #[test]
    fn anonymous_polls_never_store_who_voted() {
        let p = PollId(uuid::Uuid::now_v7());
        let (mut agg, _) = run(&[
            ev("own", 0, create(p, false, true, None)),
            ev("alice", 1, vote(p, &[1])),
            ev("alice", 2, vote(p, &[0])),
        ]);
        let c = agg.take_commit().unwrap();
        assert_eq!(c.state.tallies, vec![1, 0, 0]);
        assert!(c.state.recent.is_empty());
        assert_eq!(c.ballots.len(), 1);
        let (key, ballot) = &c.ballots[0];
        assert!(key.starts_with("h:") && !key.contains("alice"));
        assert_eq!(ballot.as_ref().unwrap().name, None);
    }

    #[test]
    fn commits_carry_only_changes() {
        let p = PollId(uuid::Uuid::now_v7());
        let (mut agg, _) = run(&[
            ev("own", 0, create(p, false, false, None)),
            ev("a", 1, vote(p, &[1])),
        ]);
        let c = agg.take_commit().unwrap();
        assert_eq!(c.ballots.len(), 1);
        assert_eq!(c.state.position.offset, 1);
        assert!(agg.take_commit().is_none());
    }

    proptest! {
        /// Redelivering any prefix, or replaying everything, changes nothing:
        /// the versioned aggregate skips what it has applied.
        #[test]
        fn replay_and_redelivery_are_no_ops(
            votes in prop::collection::vec((0u8..6, 0u16..3, any::<bool>()), 1..200),
            redeliver in prop::collection::vec((0usize..200, 1usize..50), 0..10),
        ) {
            let p = PollId(uuid::Uuid::now_v7());
            let mut log = vec![ev("own", 0, create(p, false, false, None))];
            for (i, (voter, q, retract)) in votes.iter().enumerate() {
                let by = format!("v{voter}");
                let data = if *retract {
                    EventData::VoteRetracted(VoteRetracted { poll_id: p })
                } else {
                    vote(p, &[*q])
                };
                log.push(ev(&by, i as i64 + 1, data));
            }
            let cfg = FoldConfig::default();
            let pos = |i: usize| Position { partition: 0, offset: i as i64 };
            let mut once = PollAggregate::default();
            for (i, e) in log.iter().enumerate() {
                once.apply(&cfg, pos(i), e);
            }
            // Deliver with random redeliveries of earlier ranges interleaved.
            let mut twice = PollAggregate::default();
            let mut next = 0;
            let mut plan = redeliver.clone();
            plan.sort();
            for (at, len) in plan {
                let at = at.min(log.len());
                while next < at {
                    twice.apply(&cfg, pos(next), &log[next]);
                    next += 1;
                }
                let from = at.saturating_sub(len);
                for (i, e) in log.iter().enumerate().take(at).skip(from) {
                    prop_assert_eq!(twice.apply(&cfg, pos(i), e), Outcome::Duplicate);
                }
            }
            while next < log.len() {
                twice.apply(&cfg, pos(next), &log[next]);
                next += 1;
            }
            for (i, e) in log.iter().enumerate() {
                twice.apply(&cfg, pos(i), e);
            }
            let (a, b) = (once.state.clone().unwrap(), twice.state.unwrap());
            prop_assert_eq!(&a, &b);
            // Tallies agree with the final ballots.
            let mut expect = vec![0u64; 3];
            for (_, bl) in once.ballots() {
                for q in bl.question_ids() { expect[q as usize] += 1; }
            }
            prop_assert_eq!(&a.tallies, &expect);
            prop_assert_eq!(a.voters, once.ballots().count() as u64);
        }
    }
}
