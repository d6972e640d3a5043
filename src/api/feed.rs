//! Feed routes: create, like, unlike, join, leave, delete (ingest) and the
//! item and timeline reads (one view query each).
//!
//! The edge refuses what the view already shows to be wrong (an unknown or
//! deleted item, joining a post, deleting someone else's item) with a clear
//! 4xx; what only the log order can decide (a second like, unliking without
//! a like) is decided by the fold and counted in the item's `rejected`.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::common::{
    AfterQuery, accepted, append, decode_time_cursor, encode_time_cursor, etagged, fresh, fresh_row,
};
use super::json::{JsonBody, QueryParams};
use super::{ApiError, AppState, Authed};
use crate::edge::new_id;
use crate::event::{EventData, FeedContent, FeedItemCreated, FeedItemId, FeedItemRef, Principal};
use crate::fold::Position;
use crate::fold::feed::{FeedKind, ItemState, RecentMember};
use crate::view::TimelineRow;
use crate::view::feed::VIEW;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/feed", post(create).get(timeline))
        .route("/v1/feed/{id}", get(read).delete(remove))
        .route("/v1/feed/{id}/likes", post(like).delete(unlike))
        .route("/v1/feed/{id}/members", post(join).delete(leave))
}

/// `POST /v1/feed`: the kind and its fields; strict (unknown fields are a 422).
#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
enum CreateItem {
    Post {
        title: String,
        #[serde(default)]
        body: String,
    },
    Game {
        name: String,
        location: String,
    },
    Team {
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

fn item_id(s: &str) -> Result<FeedItemId, ApiError> {
    FeedItemId::parse(s).map_err(|_| ApiError::not_found("unknown_item", format!("no item {s:?}")))
}

async fn create(
    State(st): State<AppState>,
    Authed(principal): Authed,
    JsonBody(req): JsonBody<CreateItem>,
) -> Result<Response, ApiError> {
    let id = FeedItemId(new_id());
    let data = FeedItemCreated {
        item_id: id,
        content: req.into(),
    };
    let (event_id, token) = append(&st, principal, EventData::FeedItemCreated(data)).await?;
    Ok(accepted(
        event_id,
        Some(("item_id", id.to_string())),
        token,
        Some(format!("/v1/feed/{id}")),
    ))
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
) -> Result<Response, ApiError> {
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
    Ok(accepted(
        event_id,
        Some(("item_id", item.item_id.to_string())),
        token,
        None,
    ))
}

macro_rules! action {
    ($name:ident, $variant:ident) => {
        async fn $name(
            State(st): State<AppState>,
            Path(id): Path<String>,
            QueryParams(q): QueryParams<AfterQuery>,
            Authed(principal): Authed,
        ) -> Result<Response, ApiError> {
            act(st, principal, id, q.after, EventData::$variant).await
        }
    };
}

action!(like, FeedItemLiked);
action!(unlike, FeedItemUnliked);
action!(join, FeedItemJoined);
action!(leave, FeedItemLeft);
action!(remove, FeedItemDeleted);

/// A feed item as `GET /v1/feed/{id}` shows it.
#[derive(Debug, Serialize)]
pub(super) struct ItemView {
    item_id: FeedItemId,
    /// The kind's fields, with `kind` itself.
    #[serde(flatten)]
    content: FeedContent,
    author: Principal,
    created_at: DateTime<Utc>,
    likes: u64,
    joined: u64,
    recent_members: Vec<RecentMember>,
    rejected: std::collections::BTreeMap<String, u64>,
    version: Position,
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
    Ok(ItemView::from(item))
}

async fn read(
    State(st): State<AppState>,
    Path(id): Path<String>,
    QueryParams(q): QueryParams<AfterQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let item = item_view(&st, item_id(&id)?, q.after.as_deref()).await?;
    Ok(etagged(&headers, &item))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TimelineQuery {
    kind: Option<String>,
    cursor: Option<String>,
    limit: Option<usize>,
    after: Option<String>,
}

/// A timeline row as a page shows it.
#[derive(Debug, Serialize)]
pub(super) struct TimelineItem {
    item_id: FeedItemId,
    /// The kind's fields, with `kind` itself.
    #[serde(flatten)]
    content: FeedContent,
    author: Principal,
    created_at: DateTime<Utc>,
    likes: u64,
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

#[derive(Debug, Serialize)]
struct TimelinePage {
    kind: String,
    items: Vec<TimelineItem>,
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
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let kind = parse_kind(q.kind.as_deref())?;
    let limit = super::common::page_limit(q.limit)?;
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
    Ok(etagged(
        &headers,
        &TimelinePage {
            kind: kind.map_or("all", FeedKind::as_str).to_owned(),
            items: rows.into_iter().map(TimelineItem::from).collect(),
            next_cursor,
        },
    ))
}
