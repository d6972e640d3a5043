//! The views this runtime projects: one registration each, naming the view,
//! its fold, its store and what a changed row announces. Everything else
//! (checkpoints, decoding, the DLQ, caches, writes, live state, the
//! supervisor's generations) is the generic runtime's.

use std::sync::Arc;

use super::Change;
use super::aggregate::Aggregates;
use super::cards::Cards;
use super::runtime::{Context, Projector, ViewProjector};
use crate::fold::feed::ItemAggregate;
use crate::fold::poll::PollAggregate;
use crate::view::{CheckpointStore, FeedStore, PollsStore, Store, View, cards, feed, polls};

/// How to build one view's projector over a generation's store.
#[derive(Clone, Copy, Debug)]
pub struct Registration {
    /// The view.
    pub view: View,
    /// Builds its projector.
    pub build: fn(Arc<dyn Store>, &Context) -> Arc<dyn ViewProjector>,
}

/// Every view, in the order their projectors start.
pub const ALL: &[Registration] = &[
    Registration {
        view: polls::VIEW,
        build: |s, c| polls(s, c),
    },
    Registration {
        view: feed::VIEW,
        build: |s, c| feed(s, c),
    },
    Registration {
        view: cards::VIEW,
        build: |s, c| cards(s, c),
    },
];

/// The registered view named `name`.
pub fn find(name: &str) -> Option<View> {
    ALL.iter().map(|r| r.view).find(|v| v.as_str() == name)
}

/// The registered view a topic is folded into.
pub fn of_topic(t: crate::event::Topic) -> Option<View> {
    ALL.iter().map(|r| r.view).find(|v| v.topics().contains(&t))
}

/// The polls projector.
pub type PollProjector = Projector<Aggregates<PollAggregate, dyn PollsStore>>;
/// The feed projector.
pub type FeedProjector = Projector<Aggregates<ItemAggregate, dyn FeedStore>>;
/// The cards projector.
pub type CardProjector = Projector<Cards>;

/// Polls, ballots, voters and polls by owner.
pub fn polls(store: Arc<dyn Store>, ctx: &Context) -> Arc<PollProjector> {
    polls_into(store.clone(), store, ctx)
}

/// The polls projector over a polls store and a checkpoint store.
pub fn polls_into(
    rows: Arc<dyn PollsStore>,
    checkpoints: Arc<dyn CheckpointStore>,
    ctx: &Context,
) -> Arc<PollProjector> {
    let fold = Aggregates::new(polls::VIEW, rows, ctx.fold.clone(), ctx.cfg.clone(), |s| {
        Change::Poll(s.poll_id)
    });
    Arc::new(Projector::new(polls::VIEW, fold, checkpoints, ctx))
}

/// Feed items, memberships and timelines.
pub fn feed(store: Arc<dyn Store>, ctx: &Context) -> Arc<FeedProjector> {
    feed_into(store.clone(), store, ctx)
}

/// The feed projector over a feed store and a checkpoint store.
pub fn feed_into(
    rows: Arc<dyn FeedStore>,
    checkpoints: Arc<dyn CheckpointStore>,
    ctx: &Context,
) -> Arc<FeedProjector> {
    let fold = Aggregates::new(feed::VIEW, rows, (), ctx.cfg.clone(), |s| {
        Change::Feed(s.item_id, s.kind)
    });
    Arc::new(Projector::new(feed::VIEW, fold, checkpoints, ctx))
}

/// Session cards and upload status.
pub fn cards(store: Arc<dyn Store>, ctx: &Context) -> Arc<CardProjector> {
    Arc::new(Projector::new(
        cards::VIEW,
        Cards::new(store.clone()),
        store,
        ctx,
    ))
}
