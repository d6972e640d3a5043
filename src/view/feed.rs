//! The feed view: an item's aggregate with its memberships (likes and
//! joins, one partition) and its copies in the timelines (one per kind, and
//! one of all kinds). Fed by `atelier.feed.v1`.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{AggregateStore, Generations, View, ViewError};
use crate::event::{FeedContent, FeedItemId, Principal, Topic};
use crate::fold::Position;
use crate::fold::feed::{FeedKind, ItemAggregate, ItemCommit, ItemState, Member, MemberKey};

/// The view.
pub const VIEW: View = View::new("feed", &[Topic::Feed]);

/// Cursor into a timeline: the last row of the previous page.
pub type FeedCursor = (DateTime<Utc>, FeedItemId);

/// The name of the timeline holding every kind.
pub const ALL_KINDS: &str = "all";

/// One row of a timeline (per kind, and one for all kinds), newest first: a
/// copy of the item with its counts, so a page is one query.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
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

/// The feed view's store.
#[async_trait]
pub trait FeedStore: Send + Sync + 'static {
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
}

#[async_trait]
impl AggregateStore<ItemAggregate> for dyn FeedStore {
    async fn load(&self, ids: &[FeedItemId]) -> Result<Vec<ItemState>, ViewError> {
        self.load_items(ids).await
    }
    async fn load_rows(
        &self,
        id: FeedItemId,
        keys: &[MemberKey],
    ) -> Result<Vec<(MemberKey, Member)>, ViewError> {
        self.load_members(id, keys).await
    }
    async fn commit(&self, c: &ItemCommit) -> Result<(), ViewError> {
        self.commit_item(c).await
    }
}

impl Generations {
    /// The feed store readers see now (the active generation's).
    pub async fn feed(&self) -> Result<Arc<dyn FeedStore>, ViewError> {
        Ok(self.active(VIEW).await?)
    }
}
