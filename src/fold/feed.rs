//! The feed fold: posts, games and teams with likes and joins.
//!
//! An item is one aggregate (its content, counts, rejections and version)
//! plus one membership row per user who likes or joined it. The runtime
//! loads only the memberships of the users a batch touches, so a hot item
//! with a million likes costs the projector neither memory nor rereads: a
//! batch of likes on it is one aggregate write plus one row per new liker.
//!
//! Rules, decided by log order so that replays decide alike: one like per
//! user, unliking needs a like; only games and teams can be joined, leaving
//! needs a join; only the author deletes; nothing happens to a deleted item.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use super::{Aggregate, Outcome, Position, reasons, versioned, versioned_state};
use crate::event::{Event, EventData, FeedContent, FeedItemId, Principal, UserId};

/// How many recent joiners an item shows.
pub const RECENT_MEMBERS: usize = 20;

reasons! {
    /// Why a feed event was refused.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
    #[serde(rename_all = "snake_case")]
    pub enum Rejection {
        /// The item does not exist (yet) in this partition.
        UnknownItem => "unknown_item",
        /// A second `FeedItemCreated` for the same id.
        DuplicateItem => "duplicate_item",
        /// The item was deleted.
        Deleted => "deleted",
        /// A second like by the same user.
        AlreadyLiked => "already_liked",
        /// Unliking without a like.
        NotLiked => "not_liked",
        /// Joining or leaving a post.
        NotJoinable => "not_joinable",
        /// A second join by the same user.
        AlreadyJoined => "already_joined",
        /// Leaving without having joined.
        NotJoined => "not_joined",
        /// Deleting someone else's item.
        NotAuthor => "not_author",
    }
}

/// What a feed item is.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum FeedKind {
    /// A post.
    Post,
    /// A game.
    Game,
    /// A team.
    Team,
}

impl FeedKind {
    /// Every kind.
    pub const ALL: [FeedKind; 3] = [FeedKind::Post, FeedKind::Game, FeedKind::Team];

    /// Stable name (`post`, `game`, `team`).
    pub fn as_str(self) -> &'static str {
        match self {
            FeedKind::Post => "post",
            FeedKind::Game => "game",
            FeedKind::Team => "team",
        }
    }

    /// Parses a stable name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The kind of some content.
    pub fn of(c: &FeedContent) -> Self {
        match c {
            FeedContent::Post { .. } => FeedKind::Post,
            FeedContent::Game { .. } => FeedKind::Game,
            FeedContent::Team { .. } => FeedKind::Team,
        }
    }

    /// Whether people can join items of this kind.
    pub fn joinable(self) -> bool {
        !matches!(self, FeedKind::Post)
    }
}

/// A relation between a user and an item.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Relation {
    /// The user joined (games and teams).
    Join,
    /// The user likes it.
    Like,
}

impl Relation {
    /// Stable name (`join`, `like`).
    pub fn as_str(self) -> &'static str {
        match self {
            Relation::Join => "join",
            Relation::Like => "like",
        }
    }

    /// Parses a stable name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "join" => Some(Relation::Join),
            "like" => Some(Relation::Like),
            _ => None,
        }
    }
}

/// A membership row's key: which relation, which user.
pub type MemberKey = (Relation, UserId);

/// A membership row: since when, under which display name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// When the like or join happened (event time).
    pub at: DateTime<Utc>,
    /// The user's display name then.
    pub name: String,
}

/// A joiner as the item shows them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RecentMember {
    /// Who.
    pub id: UserId,
    /// Display name.
    pub name: String,
    /// Avatar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avatar_url: Option<String>,
    /// When they joined.
    pub at: DateTime<Utc>,
}

/// A feed item's aggregate: what `GET /v1/feed/{id}` shows, and what the
/// timeline rows copy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ItemState {
    /// The item.
    pub item_id: FeedItemId,
    /// Post, game or team.
    pub kind: FeedKind,
    /// The kind's fields.
    pub content: FeedContent,
    /// Who created it.
    pub author: Principal,
    /// Created at (event time).
    pub created_at: DateTime<Utc>,
    /// Deleted at, by the author.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<DateTime<Utc>>,
    /// Users who like it.
    pub likes: u64,
    /// Users who joined it.
    pub joined: u64,
    /// The most recent joiners still joined, newest first.
    #[serde(default)]
    pub recent_members: Vec<RecentMember>,
    /// Refused events, by reason.
    #[serde(default)]
    pub rejected: BTreeMap<Rejection, u64>,
    /// The last event applied (the aggregate's version).
    pub position: Position,
}

versioned_state!(ItemState, Rejection);

/// One aggregate as the runtime folds it: its state and the membership rows
/// it knows (those of the users the current batch touches).
#[derive(Clone, Debug, Default)]
pub struct ItemAggregate {
    /// `None` until the item is created.
    pub state: Option<ItemState>,
    members: FxHashMap<MemberKey, MemberSlot>,
    dirty: usize,
    state_dirty: bool,
}

#[derive(Clone, Debug, Default)]
struct MemberSlot {
    member: Option<Member>,
    dirty: bool,
}

/// One atomic write of an item: its state (with the version) and the
/// membership rows that changed with it.
#[derive(Clone, Debug, PartialEq)]
pub struct ItemCommit {
    /// The state after the last applied event.
    pub state: ItemState,
    /// Changed memberships (`None`: delete the row).
    pub members: Vec<(MemberKey, Option<Member>)>,
}

impl ItemAggregate {
    /// An aggregate restored from the view.
    pub fn from_state(state: Option<ItemState>) -> Self {
        Self {
            state,
            ..Self::default()
        }
    }

    /// Records what the store holds for a membership (`None`: no row).
    pub fn load_member(&mut self, key: MemberKey, member: Option<Member>) {
        self.members.insert(
            key,
            MemberSlot {
                member,
                dirty: false,
            },
        );
    }

    /// Whether a user holds a relation, as far as this aggregate knows.
    pub fn member(&self, key: &MemberKey) -> Option<&Member> {
        self.members.get(key).and_then(|s| s.member.as_ref())
    }

    /// Membership rows changed since the last commit.
    pub fn dirty_members(&self) -> usize {
        self.dirty
    }

    /// Takes what must be written, if anything changed.
    pub fn take_commit(&mut self) -> Option<ItemCommit> {
        if !self.state_dirty && self.dirty == 0 {
            return None;
        }
        let state = self.state.clone()?;
        let mut members = Vec::with_capacity(self.dirty);
        for (k, slot) in self.members.iter_mut().filter(|(_, s)| s.dirty) {
            slot.dirty = false;
            members.push((k.clone(), slot.member.clone()));
        }
        members.sort_by(|a, b| a.0.cmp(&b.0));
        self.dirty = 0;
        self.state_dirty = false;
        Some(ItemCommit { state, members })
    }

    /// Applies one event at `pos`; events at or below the aggregate's
    /// position are duplicates and change nothing.
    pub fn apply(&mut self, pos: Position, event: &Event) -> Outcome<Rejection> {
        let (members, dirty) = (&mut self.members, &mut self.dirty);
        let p = &event.principal;
        versioned(
            &mut self.state,
            &mut self.state_dirty,
            pos,
            Rejection::UnknownItem,
            |state| {
                Some(match &event.data {
                    EventData::FeedItemCreated(e) => match state {
                        Some(_) => Err(Rejection::DuplicateItem),
                        None => {
                            *state = Some(ItemState {
                                item_id: e.item_id,
                                kind: FeedKind::of(&e.content),
                                content: e.content.clone(),
                                author: p.clone(),
                                created_at: event.time,
                                deleted_at: None,
                                likes: 0,
                                joined: 0,
                                recent_members: Vec::new(),
                                rejected: BTreeMap::new(),
                                position: pos,
                            });
                            Ok(())
                        }
                    },
                    EventData::FeedItemLiked(_) => {
                        relate(state, members, dirty, Relation::Like, event, true)
                    }
                    EventData::FeedItemUnliked(_) => {
                        relate(state, members, dirty, Relation::Like, event, false)
                    }
                    EventData::FeedItemJoined(_) => {
                        relate(state, members, dirty, Relation::Join, event, true)
                    }
                    EventData::FeedItemLeft(_) => {
                        relate(state, members, dirty, Relation::Join, event, false)
                    }
                    EventData::FeedItemDeleted(_) => match state {
                        None => Err(Rejection::UnknownItem),
                        Some(s) if s.deleted_at.is_some() => Err(Rejection::Deleted),
                        Some(s) if s.author.id != p.id => Err(Rejection::NotAuthor),
                        Some(s) => {
                            s.deleted_at = Some(event.time);
                            Ok(())
                        }
                    },
                    _ => return None,
                })
            },
        )
    }
}

fn relate(
    state: &mut Option<ItemState>,
    members: &mut FxHashMap<MemberKey, MemberSlot>,
    dirty: &mut usize,
    rel: Relation,
    event: &Event,
    add: bool,
) -> Result<(), Rejection> {
    let s = state.as_mut().ok_or(Rejection::UnknownItem)?;
    if s.deleted_at.is_some() {
        return Err(Rejection::Deleted);
    }
    if rel == Relation::Join && !s.kind.joinable() {
        return Err(Rejection::NotJoinable);
    }
    let p = &event.principal;
    let key = (rel, p.id.clone());
    let slot = members.entry(key).or_default();
    match (add, slot.member.is_some()) {
        (true, true) => {
            return Err(match rel {
                Relation::Like => Rejection::AlreadyLiked,
                Relation::Join => Rejection::AlreadyJoined,
            });
        }
        (false, false) => {
            return Err(match rel {
                Relation::Like => Rejection::NotLiked,
                Relation::Join => Rejection::NotJoined,
            });
        }
        (true, false) => {
            slot.member = Some(Member {
                at: event.time,
                name: p.name.clone(),
            });
            match rel {
                Relation::Like => s.likes += 1,
                Relation::Join => {
                    s.joined += 1;
                    s.recent_members.retain(|m| m.id != p.id);
                    s.recent_members.truncate(RECENT_MEMBERS - 1);
                    s.recent_members.insert(
                        0,
                        RecentMember {
                            id: p.id.clone(),
                            name: p.name.clone(),
                            avatar_url: p.avatar_url.clone(),
                            at: event.time,
                        },
                    );
                }
            }
        }
        (false, true) => {
            slot.member = None;
            match rel {
                Relation::Like => s.likes = s.likes.saturating_sub(1),
                Relation::Join => {
                    s.joined = s.joined.saturating_sub(1);
                    s.recent_members.retain(|m| m.id != p.id);
                }
            }
        }
    }
    if !slot.dirty {
        slot.dirty = true;
        *dirty += 1;
    }
    Ok(())
}

impl Aggregate for ItemAggregate {
    type Id = FeedItemId;
    type State = ItemState;
    type Key = MemberKey;
    type Row = Member;
    type Commit = ItemCommit;
    type Reason = Rejection;
    type Config = ();

    fn id_of(event: &EventData) -> Option<FeedItemId> {
        item_id(event)
    }
    fn id(state: &ItemState) -> FeedItemId {
        state.item_id
    }
    fn from_state(state: Option<ItemState>) -> Self {
        ItemAggregate::from_state(state)
    }
    fn state(&self) -> Option<&ItemState> {
        self.state.as_ref()
    }
    fn into_state(self) -> Option<ItemState> {
        self.state
    }
    /// The memberships of the distinct users who like, unlike, join or
    /// leave, never all of them.
    fn touched(_: &(), _: &ItemState, events: &[(Position, Event)]) -> Vec<MemberKey> {
        let distinct: std::collections::HashSet<MemberKey> =
            events.iter().filter_map(|(_, e)| member_key(e)).collect();
        distinct.into_iter().collect()
    }
    /// With no likes (or no joins) at all, there is no row to read: the
    /// first like of an item costs no read.
    fn surely_absent(s: &ItemState, (rel, _): &MemberKey) -> bool {
        match rel {
            Relation::Like => s.likes == 0,
            Relation::Join => s.joined == 0,
        }
    }
    fn load_row(&mut self, key: MemberKey, row: Option<Member>) {
        self.load_member(key, row)
    }
    fn apply(&mut self, _: &(), pos: Position, event: &Event) -> Outcome<Rejection> {
        ItemAggregate::apply(self, pos, event)
    }
    fn dirty_rows(&self) -> usize {
        self.dirty
    }
    fn take_commit(&mut self) -> Option<ItemCommit> {
        ItemAggregate::take_commit(self)
    }
    fn into_rows(c: ItemCommit) -> Vec<(MemberKey, Option<Member>)> {
        c.members
    }
}

/// The item an event is about, when it is a feed event.
pub fn item_id(d: &EventData) -> Option<FeedItemId> {
    match d {
        EventData::FeedItemCreated(e) => Some(e.item_id),
        EventData::FeedItemLiked(e)
        | EventData::FeedItemUnliked(e)
        | EventData::FeedItemJoined(e)
        | EventData::FeedItemLeft(e)
        | EventData::FeedItemDeleted(e) => Some(e.item_id),
        _ => None,
    }
}

/// The membership an event touches, if any.
pub fn member_key(event: &Event) -> Option<MemberKey> {
    let rel = match event.data {
        EventData::FeedItemLiked(_) | EventData::FeedItemUnliked(_) => Relation::Like,
        EventData::FeedItemJoined(_) | EventData::FeedItemLeft(_) => Relation::Join,
        _ => return None,
    };
    Some((rel, event.principal.id.clone()))
}

/// Folds a whole stream in memory, keeping every membership: the reference
/// the runtime is checked against.
pub fn reference<'a, I>(events: I) -> HashMap<FeedItemId, ItemAggregate>
where
    I: IntoIterator<Item = (Position, &'a Event)>,
{
    let mut out: HashMap<FeedItemId, ItemAggregate> = HashMap::new();
    for (pos, e) in events {
        if let Some(id) = item_id(&e.data) {
            out.entry(id).or_default().apply(pos, e);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{EventId, FeedItemCreated, FeedItemRef};

    fn principal(id: &str) -> Principal {
        Principal {
            id: UserId::parse(id).unwrap(),
            name: id.to_uppercase(),
            avatar_url: None,
        }
    }

    fn ev(who: &str, data: EventData) -> Event {
        Event {
            id: EventId(uuid::Uuid::now_v7()),
            time: DateTime::from_timestamp_micros(1_700_000_000_000_000).unwrap(),
            principal: principal(who),
            data,
        }
    }

    struct Run {
        agg: ItemAggregate,
        offset: i64,
        id: FeedItemId,
    }

    impl Run {
        fn new(content: FeedContent) -> Self {
            let id = FeedItemId(uuid::Uuid::now_v7());
            let mut r = Self {
                agg: ItemAggregate::default(),
                offset: -1,
                id,
            };
            let out = r.apply(
                "ann",
                EventData::FeedItemCreated(FeedItemCreated {
                    item_id: id,
                    content,
                }),
            );
            assert_eq!(out, Outcome::Applied);
            r
        }

        fn apply(&mut self, who: &str, data: EventData) -> Outcome<Rejection> {
            self.offset += 1;
            let pos = Position {
                partition: 0,
                offset: self.offset,
            };
            self.agg.apply(pos, &ev(who, data))
        }

        fn act(&mut self, who: &str, f: fn(FeedItemRef) -> EventData) -> Outcome<Rejection> {
            let r = FeedItemRef { item_id: self.id };
            self.apply(who, f(r))
        }

        fn state(&self) -> &ItemState {
            self.agg.state.as_ref().unwrap()
        }
    }

    fn game() -> FeedContent {
        FeedContent::Game {
            name: "Chess".into(),
            location: "Park".into(),
        }
    }

    fn post() -> FeedContent {
        FeedContent::Post {
            title: "Hi".into(),
            body: "there".into(),
        }
    }

    #[test]
    fn one_like_per_user_and_unlike_needs_a_like() {
        let mut r = Run::new(post());
        assert_eq!(r.act("bob", EventData::FeedItemLiked), Outcome::Applied);
        assert_eq!(
            r.act("bob", EventData::FeedItemLiked),
            Outcome::Rejected(Rejection::AlreadyLiked)
        );
        assert_eq!(r.act("cat", EventData::FeedItemLiked), Outcome::Applied);
        assert_eq!(r.state().likes, 2);
        assert_eq!(r.act("bob", EventData::FeedItemUnliked), Outcome::Applied);
        assert_eq!(
            r.act("bob", EventData::FeedItemUnliked),
            Outcome::Rejected(Rejection::NotLiked)
        );
        assert_eq!(r.state().likes, 1);
        assert_eq!(r.state().rejected[&Rejection::AlreadyLiked], 1);
        assert_eq!(r.state().rejected[&Rejection::NotLiked], 1);
    }

    #[test]
    fn only_games_and_teams_are_joined() {
        let mut p = Run::new(post());
        assert_eq!(
            p.act("bob", EventData::FeedItemJoined),
            Outcome::Rejected(Rejection::NotJoinable)
        );
        let mut g = Run::new(game());
        assert_eq!(g.act("bob", EventData::FeedItemJoined), Outcome::Applied);
        assert_eq!(g.act("cat", EventData::FeedItemJoined), Outcome::Applied);
        assert_eq!(
            g.act("cat", EventData::FeedItemJoined),
            Outcome::Rejected(Rejection::AlreadyJoined)
        );
        assert_eq!(g.state().joined, 2);
        assert_eq!(g.state().recent_members[0].id.as_str(), "cat");
        assert_eq!(g.act("cat", EventData::FeedItemLeft), Outcome::Applied);
        assert_eq!(
            g.act("dan", EventData::FeedItemLeft),
            Outcome::Rejected(Rejection::NotJoined)
        );
        assert_eq!(g.state().joined, 1);
        assert_eq!(g.state().recent_members.len(), 1);
    }

    #[test]
    fn only_the_author_deletes_and_deleted_items_refuse_everything() {
        let mut r = Run::new(game());
        assert_eq!(
            r.act("bob", EventData::FeedItemDeleted),
            Outcome::Rejected(Rejection::NotAuthor)
        );
        assert_eq!(r.act("ann", EventData::FeedItemDeleted), Outcome::Applied);
        assert!(r.state().deleted_at.is_some());
        for f in [
            EventData::FeedItemLiked as fn(FeedItemRef) -> EventData,
            EventData::FeedItemJoined,
            EventData::FeedItemDeleted,
        ] {
            assert_eq!(r.act("ann", f), Outcome::Rejected(Rejection::Deleted));
        }
    }

    #[test]
    fn unknown_items_and_duplicates() {
        let mut agg = ItemAggregate::default();
        let id = FeedItemId(uuid::Uuid::now_v7());
        let like = ev("bob", EventData::FeedItemLiked(FeedItemRef { item_id: id }));
        let pos = Position {
            partition: 0,
            offset: 3,
        };
        assert_eq!(
            agg.apply(pos, &like),
            Outcome::Rejected(Rejection::UnknownItem)
        );
        let mut r = Run::new(post());
        let at = Position {
            partition: 0,
            offset: 0,
        };
        let again = ev(
            "ann",
            EventData::FeedItemCreated(FeedItemCreated {
                item_id: r.id,
                content: post(),
            }),
        );
        assert_eq!(r.agg.apply(at, &again), Outcome::Duplicate);
        assert_eq!(
            r.apply(
                "ann",
                EventData::FeedItemCreated(FeedItemCreated {
                    item_id: r.id,
                    content: post(),
                })
            ),
            Outcome::Rejected(Rejection::DuplicateItem)
        );
    }

    #[test]
    fn commits_carry_only_touched_members_and_a_hot_item_stays_small() {
        let mut r = Run::new(post());
        r.agg.take_commit();
        for i in 0..1000 {
            let who = format!("u{i}");
            r.act(&who, EventData::FeedItemLiked);
        }
        let c = r.agg.take_commit().unwrap();
        assert_eq!(c.members.len(), 1000);
        assert_eq!(c.state.likes, 1000);
        assert!(r.agg.take_commit().is_none(), "nothing new to write");
        // A restored aggregate knows none of the 1000 likers, yet one more
        // like needs only that user's row.
        let mut fresh = ItemAggregate::from_state(Some(c.state));
        fresh.load_member((Relation::Like, UserId::parse("zed").unwrap()), None);
        let pos = Position {
            partition: 0,
            offset: 5000,
        };
        let like = ev(
            "zed",
            EventData::FeedItemLiked(FeedItemRef { item_id: r.id }),
        );
        assert_eq!(fresh.apply(pos, &like), Outcome::Applied);
        let c = fresh.take_commit().unwrap();
        assert_eq!(c.state.likes, 1001);
        assert_eq!(c.members.len(), 1);
    }
}
