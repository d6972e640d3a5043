//! Projections as pure functions: a state and an event in, the next state
//! out, plus what was decided (applied, duplicate, rejected). No I/O, no
//! clock: time comes with the event, the log position with the record, so a
//! replay decides exactly as the first run did.
//!
//! - [`Aggregate`]: what the generic projector runtime needs of a
//!   read-modify-write aggregate (a poll, a feed item): which aggregate an
//!   event belongs to, which of its rows a batch touches, apply, and what to
//!   commit.
//! - [`versioned`]: the one ending every versioned apply shares (skip what
//!   the version covers, stamp the version, count refusals).
//! - `cards` is no aggregate: its events are order-insensitive patches.

pub mod cards;
pub mod feed;
pub mod poll;

use std::collections::BTreeMap;
use std::hash::Hash;

use serde::{Deserialize, Serialize};

use crate::event::{Event, EventData};

/// A record's place in its topic: what versioned aggregates remember.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
pub struct Position {
    /// Partition.
    pub partition: i32,
    /// Offset within the partition.
    pub offset: i64,
}

/// What a fold did with one event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome<R> {
    /// The state changed.
    Applied,
    /// Already applied (at or below the aggregate's offset): a no-op.
    Duplicate,
    /// Refused by a rule; counted, never silently dropped.
    Rejected(R),
}

/// Why a fold refused an event.
pub trait Reason: Copy + Ord + Send + Sync + std::fmt::Debug + 'static {
    /// Stable snake_case name (metrics label, JSON key).
    fn as_str(self) -> &'static str;
}

/// Declares why a fold refuses events: an enum whose variants each have a
/// stable snake_case name (a metrics label and a JSON key), and its
/// [`Reason`] implementation.
macro_rules! reasons {
    ($(#[$meta:meta])* $vis:vis enum $name:ident {
        $($(#[$vmeta:meta])* $variant:ident => $text:literal,)+
    }) => {
        $(#[$meta])*
        $vis enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Stable snake_case name (metrics label, JSON key).
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
        }

        impl $crate::fold::Reason for $name {
            fn as_str(self) -> &'static str {
                $name::as_str(self)
            }
        }
    };
}
pub(crate) use reasons;

/// Implements [`Versioned`] for a state with a `position` field and a
/// `rejected` map of `$reason`.
macro_rules! versioned_state {
    ($state:ty, $reason:ty) => {
        impl $crate::fold::Versioned for $state {
            type Reason = $reason;
            fn position(&self) -> $crate::fold::Position {
                self.position
            }
            fn set_position(&mut self, pos: $crate::fold::Position) {
                self.position = pos;
            }
            fn rejected_mut(&mut self) -> &mut ::std::collections::BTreeMap<$reason, u64> {
                &mut self.rejected
            }
        }
    };
}
pub(crate) use versioned_state;

/// An aggregate's state that carries its version (the position of the last
/// event applied) and its refusals by reason.
pub trait Versioned {
    /// Why its fold refuses events.
    type Reason: Reason;
    /// The last event applied.
    fn position(&self) -> Position;
    /// Records the last event applied.
    fn set_position(&mut self, pos: Position);
    /// Refused events, by reason.
    fn rejected_mut(&mut self) -> &mut BTreeMap<Self::Reason, u64>;
}

/// The ending every versioned apply shares. An event at or below the
/// state's version is a duplicate (redelivery, replay) and changes nothing.
/// Otherwise `decide` applies it (`None`: not this fold's event, a no-op);
/// then, if the aggregate exists, its version moves to `pos` (a refusal is
/// an event applied too: it is counted in the state) and `changed` is set.
/// A refusal without an aggregate is answered with `unknown`.
pub fn versioned<S, F>(
    state: &mut Option<S>,
    changed: &mut bool,
    pos: Position,
    unknown: S::Reason,
    decide: F,
) -> Outcome<S::Reason>
where
    S: Versioned,
    F: FnOnce(&mut Option<S>) -> Option<Result<(), S::Reason>>,
{
    if state
        .as_ref()
        .is_some_and(|s| pos.offset <= s.position().offset)
    {
        return Outcome::Duplicate;
    }
    // Other topics' events never reach a fold (the runtime routes by
    // topic); a stray one is a no-op rather than a panic.
    let Some(result) = decide(state) else {
        return Outcome::Duplicate;
    };
    let Some(s) = state.as_mut() else {
        return Outcome::Rejected(unknown);
    };
    s.set_position(pos);
    *changed = true;
    match result {
        Ok(()) => Outcome::Applied,
        Err(r) => {
            *s.rejected_mut().entry(r).or_default() += 1;
            Outcome::Rejected(r)
        }
    }
}

/// A read-modify-write aggregate as the generic projector folds it: its
/// state (cached between batches), the rows of it the store keeps apart
/// (ballots, memberships: only those a batch touches are loaded), and the
/// commits it cuts.
pub trait Aggregate: Default + Send + 'static {
    /// The aggregate's id (the topic key).
    type Id: Copy + Eq + Hash + Send + Sync + std::fmt::Debug + std::fmt::Display + 'static;
    /// Its state, as the view stores it.
    type State: Versioned<Reason = Self::Reason> + Clone + Send + Sync + 'static;
    /// A row kept apart from the state.
    type Key: Clone + Eq + Hash + Send + Sync + 'static;
    /// That row's value.
    type Row: Clone + Send + Sync + 'static;
    /// One atomic write of the aggregate.
    type Commit: Send + Sync + 'static;
    /// Why its fold refuses events.
    type Reason: Reason;
    /// What the fold needs besides the events.
    type Config: Send + Sync + 'static;

    /// The aggregate an event belongs to (`None`: not one of its events).
    fn id_of(event: &EventData) -> Option<Self::Id>;
    /// The id of a state.
    fn id(state: &Self::State) -> Self::Id;
    /// An aggregate restored from the view (`None`: not created yet).
    fn from_state(state: Option<Self::State>) -> Self;
    /// Its state, once created.
    fn state(&self) -> Option<&Self::State>;
    /// Takes its state.
    fn into_state(self) -> Option<Self::State>;
    /// The rows these events (of this aggregate, in log order) touch: the
    /// ones to load before folding them.
    fn touched(
        cfg: &Self::Config,
        state: &Self::State,
        events: &[(Position, Event)],
    ) -> Vec<Self::Key>;
    /// Whether the store surely holds no such row, so no read is needed
    /// (the first like of an item with no likes).
    fn surely_absent(_state: &Self::State, _key: &Self::Key) -> bool {
        false
    }
    /// Records what the store holds for a row (`None`: no row).
    fn load_row(&mut self, key: Self::Key, row: Option<Self::Row>);
    /// Applies one event at `pos` (see [`versioned`]).
    fn apply(&mut self, cfg: &Self::Config, pos: Position, event: &Event) -> Outcome<Self::Reason>;
    /// Rows changed since the last commit (the runtime cuts a commit when
    /// they reach its limit, so no single write grows huge).
    fn dirty_rows(&self) -> usize;
    /// Takes what must be written, if anything changed.
    fn take_commit(&mut self) -> Option<Self::Commit>;
    /// The rows a commit wrote (`None`: a deletion), taken from it once it
    /// is durable, so that a projector that knows every row of an
    /// aggregate keeps knowing them without reading them back (or copying
    /// them).
    fn into_rows(commit: Self::Commit) -> Vec<(Self::Key, Option<Self::Row>)>;
}
