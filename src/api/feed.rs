//! Feed routes: create, like, unlike, join, leave, delete (ingest) and the
//! item and timeline reads (one view query each).
//!
//! The edge refuses what the view already shows to be wrong (an unknown or
//! deleted item, joining a post, deleting someone else's item) with a clear
//! 4xx; what only the log order can decide (a second like, unliking without
//! a like) is decided by the fold and counted in the item's `rejected`.

use aide::axum::ApiRouter;
use aide::axum::routing::{get_with, post_with};
use axum::extract::{Path, State};
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{
    Accepted, DegradedNote, Etagged, IfNoneMatch, ItemRef, TIME_CURSOR, append, decode_time_cursor,
    encode_time_cursor, fresh, fresh_row,
};
use super::contract::op;
use super::json::{Int, JsonBody, QueryParams};
use super::token::{AFTER_DOC, Token};
use super::{ApiError, AppState, Authed};
use crate::edge::new_id;
use crate::event::{
    BODY_MAX, EventData, FeedContent, FeedItemCreated, FeedItemId, FeedItemRef, LINE_MAX,
    Principal, TEXT, Topic,
};
use crate::fold::Position;
use crate::fold::feed::{FeedKind, ItemState, RecentMember};
use crate::view::TimelineRow;
use crate::view::feed::VIEW;

pub(super) fn routes() -> ApiRouter<AppState> {
    ApiRouter::new()
        .api_route(
            "/v1/feed",
            post_with(create, |t| {
                op(
                    t,
                    "createFeedItem",
                    "feed",
                    "Create a post, game or team",
                    "Appends `FeedItemCreated` with a new item id; the caller is its author.",
                    &[503],
                )
            })
            .get_with(timeline, |t| {
                op(
                    t,
                    "readTimeline",
                    "feed",
                    "The feed, newest first",
                    "All kinds or one; cursor-paged by (time, id), so items arriving meanwhile \
                     never shift a walk. One view query.",
                    &[409, 503],
                )
            }),
        )
        .api_route(
            "/v1/feed/{id}",
            get_with(read, |t| {
                op(
                    t,
                    "readFeedItem",
                    "feed",
                    "Read a feed item",
                    "The item with its counts, recent members and rejections; a deleted item \
                     is 410 `item_deleted`. One view query.",
                    &[404, 409, 410, 503],
                )
            })
            .delete_with(remove, |t| {
                op(
                    t,
                    "deleteFeedItem",
                    "feed",
                    "Delete a feed item (author only)",
                    "Appends `FeedItemDeleted`; someone else is 403 `not_author`.",
                    &[403, 404, 409, 410, 503],
                )
            }),
        )
        .api_route(
            "/v1/feed/{id}/likes",
            post_with(like, |t| {
                op(
                    t,
                    "likeFeedItem",
                    "feed",
                    "Like a feed item",
                    "Appends `FeedItemLiked`; a second like is decided by the fold and counted \
                     in the item's `rejected`.",
                    &[404, 409, 410, 503],
                )
            })
            .delete_with(unlike, |t| {
                op(
                    t,
                    "unlikeFeedItem",
                    "feed",
                    "Withdraw your like",
                    "Appends `FeedItemUnliked`; unliking without a like is decided by the fold \
                     and counted in the item's `rejected`.",
                    &[404, 409, 410, 503],
                )
            }),
        )
        .api_route(
            "/v1/feed/{id}/members",
            post_with(join, |t| {
                op(
                    t,
                    "joinFeedItem",
                    "feed",
                    "Join a game or team",
                    "Appends `FeedItemJoined`; a post is 409 `not_joinable`.",
                    &[404, 409, 410, 503],
                )
            })
            .delete_with(leave, |t| {
                op(
                    t,
                    "leaveFeedItem",
                    "feed",
                    "Leave a game or team",
                    "Appends `FeedItemLeft`; a post is 409 `not_joinable`.",
                    &[404, 409, 410, 503],
                )
            }),
        )
}

/// `POST /v1/feed`: the kind and its fields; strict (unknown fields are a 422).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
enum CreateItem {
    /// A post.
    Post {
        /// Its title.
        #[schemars(length(min = 1, max = LINE_MAX), pattern(TEXT))]
        title: String,
        /// Its text.
        #[serde(default)]
        #[schemars(length(max = BODY_MAX), pattern(TEXT))]
        body: String,
    },
    /// A game people can join.
    Game {
        /// Its name.
        #[schemars(length(min = 1, max = LINE_MAX), pattern(TEXT))]
        name: String,
        /// Where it takes place.
        #[schemars(length(min = 1, max = LINE_MAX), pattern(TEXT))]
        location: String,
    },
    /// A team people can join.
    Team {
        /// Its room.
        #[schemars(length(min = 1, max = LINE_MAX), pattern(TEXT))]
        room: String,
    },
}

impl From<CreateItem> for FeedContent {
    fn from(c: CreateItem) -> Self {
        match c {
            CreateItem::Post { title, body } => FeedContent::Post { title, body },
            CreateItem::Game { name, location } => FeedContent::Game { name, location },
            CreateItem::Team { room } => FeedContent::Team { room },
        }
    }
}

/// A feed item in a path.
#[derive(Debug, Deserialize, JsonSchema)]
struct ItemPath {
    /// The item's id (unknown or malformed: 404 `unknown_item`).
    #[schemars(with = "uuid::Uuid")]
    id: String,
}

fn feed_token() -> String {
    Token::pattern(&[Topic::Feed])
}

/// `?after=` of the feed view.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "FeedAfter")]
struct AfterQuery {
    #[schemars(pattern(feed_token()), description = AFTER_DOC)]
    after: Option<String>,
}

fn item_id(s: &str) -> Result<FeedItemId, ApiError> {
    FeedItemId::parse(s).map_err(|_| ApiError::not_found("unknown_item", format!("no item {s:?}")))
}

async fn create(
    State(st): State<AppState>,
    Authed(principal): Authed,
    JsonBody(req): JsonBody<CreateItem>,
) -> Result<Accepted<ItemRef>, ApiError> {
    let id = FeedItemId(new_id());
    let data = FeedItemCreated {
        item_id: id,
        content: req.into(),
    };
    let (event_id, token) = append(&st, principal, EventData::FeedItemCreated(data)).await?;
    Ok(Accepted::new(event_id, ItemRef { item_id: id }, token).at(format!("/v1/feed/{id}")))
}

/// Reads an item, after `?after` when given.
async fn fresh_item(
    st: &AppState,
    id: FeedItemId,
    after: Option<&str>,
) -> Result<Option<ItemState>, ApiError> {
    let store = st.views.feed().await?;
    fresh_row(st, after, VIEW, || store.item(id), |s| s.position).await
}

/// The live item an action is about, or the 4xx that explains why not.
async fn live_item(st: &AppState, id: &str, after: Option<&str>) -> Result<ItemState, ApiError> {
    let id = item_id(id)?;
    let item = fresh_item(st, id, after)
        .await?
        .ok_or_else(|| ApiError::not_found("unknown_item", format!("no item {id}")))?;
    if item.deleted_at.is_some() {
        return Err(gone(id));
    }
    Ok(item)
}

fn gone(id: FeedItemId) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::GONE,
        "item_deleted",
        format!("item {id} was deleted by its author"),
    )
}

async fn act(
    st: AppState,
    principal: Principal,
    id: String,
    after: Option<String>,
    make: fn(FeedItemRef) -> EventData,
) -> Result<Accepted<ItemRef>, ApiError> {
    let item = live_item(&st, &id, after.as_deref()).await?;
    let data = make(FeedItemRef {
        item_id: item.item_id,
    });
    match &data {
        EventData::FeedItemJoined(_) | EventData::FeedItemLeft(_) if !item.kind.joinable() => {
            return Err(ApiError::conflict(
                "not_joinable",
                format!("a {} cannot be joined", item.kind.as_str()),
            ));
        }
        EventData::FeedItemDeleted(_) if item.author.id != principal.id => {
            return Err(ApiError::forbidden(
                "not_author",
                "only the item's author can delete it",
            ));
        }
        _ => {}
    }
    let (event_id, token) = append(&st, principal, data).await?;
    Ok(Accepted::new(
        event_id,
        ItemRef {
            item_id: item.item_id,
        },
        token,
    ))
}

macro_rules! action {
    ($name:ident, $variant:ident) => {
        async fn $name(
            State(st): State<AppState>,
            Path(p): Path<ItemPath>,
            QueryParams(q): QueryParams<AfterQuery>,
            Authed(principal): Authed,
        ) -> Result<Accepted<ItemRef>, ApiError> {
            act(st, principal, p.id, q.after, EventData::$variant).await
        }
    };
}

action!(like, FeedItemLiked);
action!(unlike, FeedItemUnliked);
action!(join, FeedItemJoined);
action!(leave, FeedItemLeft);
action!(remove, FeedItemDeleted);

/// A feed item as `GET /v1/feed/{id}` shows it.
#[derive(Debug, Serialize, JsonSchema)]
#[schemars(rename = "FeedItem")]
pub(super) struct ItemView {
    /// The item.
    item_id: FeedItemId,
    /// The kind's fields, with `kind` itself.
    #[serde(flatten)]
    content: FeedContent,
    /// Who created it (as they were then).
    author: Principal,
    /// When it was created.
    created_at: DateTime<Utc>,
    /// Users who like it.
    likes: u64,
    /// Users who joined it.
    joined: u64,
    /// The most recent joiners still joined, newest first.
    recent_members: Vec<RecentMember>,
    /// Refused events, by reason.
    rejected: std::collections::BTreeMap<String, u64>,
    /// The log position this row reflects.
    version: Position,
    /// Present when the store refused to write one of this item's events
    /// for good: the row lacks it until its dead letter is replayed.
    #[serde(skip_serializing_if = "Option::is_none")]
    degraded: Option<DegradedNote>,
}

impl From<ItemState> for ItemView {
    fn from(s: ItemState) -> Self {
        Self {
            item_id: s.item_id,
            content: s.content,
            author: s.author,
            created_at: s.created_at,
            likes: s.likes,
            joined: s.joined,
            recent_members: s.recent_members,
            rejected: s
                .rejected
                .into_iter()
                .map(|(k, v)| (k.as_str().to_owned(), v))
                .collect(),
            version: s.position,
            degraded: None,
        }
    }
}

/// One item for a reader: 404 unknown, 410 deleted, else the item.
pub(super) async fn item_view(
    st: &AppState,
    id: FeedItemId,
    after: Option<&str>,
) -> Result<ItemView, ApiError> {
    let item = fresh_item(st, id, after)
        .await?
        .ok_or_else(|| ApiError::not_found("unknown_item", format!("no item {id}")))?;
    if item.deleted_at.is_some() {
        return Err(gone(id));
    }
    let mut view = ItemView::from(item);
    view.degraded = st
        .degraded
        .of(&st.views, crate::view::feed::VIEW, &id.to_string())
        .await
        .map(DegradedNote::from);
    Ok(view)
}

async fn read(
    State(st): State<AppState>,
    Path(p): Path<ItemPath>,
    QueryParams(q): QueryParams<AfterQuery>,
    inm: IfNoneMatch,
) -> Result<Etagged<ItemView>, ApiError> {
    let item = item_view(&st, item_id(&p.id)?, q.after.as_deref()).await?;
    Ok(Etagged::new(inm, item))
}

/// Which timeline.
#[derive(Clone, Copy, Debug, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
enum KindQuery {
    /// Posts.
    Post,
    /// Games.
    Game,
    /// Teams.
    Team,
    /// Every kind.
    #[default]
    All,
}

impl KindQuery {
    fn kind(self) -> Option<FeedKind> {
        match self {
            KindQuery::Post => Some(FeedKind::Post),
            KindQuery::Game => Some(FeedKind::Game),
            KindQuery::Team => Some(FeedKind::Team),
            KindQuery::All => None,
        }
    }
}

/// A page of a timeline.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct TimelineQuery {
    /// Feed item kind, or `all` (the default).
    kind: Option<KindQuery>,
    /// Where the page starts: the previous page's `next_cursor` (malformed:
    /// 400 `invalid_cursor`).
    #[schemars(pattern(TIME_CURSOR))]
    cursor: Option<String>,
    /// Page size (otherwise: 400 `invalid_limit`).
    #[schemars(range(min = 1, max = 100), extend("default" = 20))]
    limit: Option<Int<usize>>,
    #[schemars(pattern(feed_token()), description = AFTER_DOC)]
    after: Option<String>,
}

/// A timeline row as a page shows it.
#[derive(Debug, Serialize, JsonSchema)]
pub(super) struct TimelineItem {
    /// The item.
    item_id: FeedItemId,
    /// The kind's fields, with `kind` itself.
    #[serde(flatten)]
    content: FeedContent,
    /// Who created it.
    author: Principal,
    /// When it was created.
    created_at: DateTime<Utc>,
    /// Users who like it.
    likes: u64,
    /// Users who joined it.
    joined: u64,
}

impl From<TimelineRow> for TimelineItem {
    fn from(r: TimelineRow) -> Self {
        Self {
            item_id: r.item_id,
            content: r.content,
            author: r.author,
            created_at: r.created_at,
            likes: r.likes,
            joined: r.joined,
        }
    }
}

/// A page of a timeline, newest first.
#[derive(Debug, Serialize, JsonSchema)]
struct TimelinePage {
    /// The timeline: `post`, `game`, `team` or `all`.
    kind: String,
    /// Its items.
    items: Vec<TimelineItem>,
    /// Pass as `cursor` for the next page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

/// Parses `?kind=`: a kind, `all`, or absent (all).
pub(super) fn parse_kind(kind: Option<&str>) -> Result<Option<FeedKind>, ApiError> {
    match kind {
        None | Some("all") => Ok(None),
        Some(k) => FeedKind::parse(k).map(Some).ok_or_else(|| {
            ApiError::bad_request("invalid_kind", "kind must be post, game, team or all")
        }),
    }
}

/// `GET /v1/feed`: newest first, cursor-paged. The cursor is the last row's
/// (time, id), so items arriving meanwhile (newer, at the top) never shift a
/// walk: no duplicates, no gaps.
async fn timeline(
    State(st): State<AppState>,
    QueryParams(q): QueryParams<TimelineQuery>,
    inm: IfNoneMatch,
) -> Result<Etagged<TimelinePage>, ApiError> {
    let kind = q.kind.unwrap_or_default().kind();
    let limit = super::common::page_limit(q.limit.map(|l| l.0))?;
    let before = q
        .cursor
        .as_deref()
        .map(|c| decode_time_cursor(c, FeedItemId::parse))
        .transpose()?;
    fresh(&st, q.after.as_deref(), VIEW).await?;
    let rows = st.views.feed().await?.timeline(kind, before, limit).await?;
    let next_cursor = (rows.len() == limit)
        .then(|| {
            rows.last()
                .map(|r| encode_time_cursor(r.created_at, r.item_id))
        })
        .flatten();
    Ok(Etagged::new(
        inm,
        TimelinePage {
            kind: kind.map_or("all", FeedKind::as_str).to_owned(),
            items: rows.into_iter().map(TimelineItem::from).collect(),
            next_cursor,
        },
    ))
}
