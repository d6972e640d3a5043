//! Session cards and upload job status: the replacement for polling a task
//! result backend. One view query each; `?after=` takes a token of the
//! uploads or completions topic.

use aide::axum::ApiRouter;
use aide::axum::routing::get_with;
use axum::extract::{Path, State};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{DegradedNote, Etagged, IfNoneMatch, fresh};
use super::contract::op;
use super::json::QueryParams;
use super::token::{AFTER_DOC, Token};
use super::{ApiError, AppState};
use crate::event::{ID_MAX, SessionKey, TEXT_ID, UploadId};
use crate::fold::cards::Card;
use crate::view::cards::VIEW;

pub(super) fn routes() -> ApiRouter<AppState> {
    ApiRouter::new()
        .api_route(
            "/v1/sessions/{key}/cards",
            get_with(cards, |t| {
                op(
                    t,
                    "readSessionCards",
                    "cards",
                    "A session's cards",
                    "Slots 1 to 3 with each upload's job status (empty slots are absent). \
                     `?after` takes a token of the uploads or completions topic. One view \
                     query.",
                    &[409, 503],
                )
            }),
        )
        .api_route(
            "/v1/uploads/{id}",
            get_with(upload, |t| {
                op(
                    t,
                    "readUpload",
                    "cards",
                    "One upload's job status",
                    "`?after` takes a token of the uploads or completions topic. One view \
                     query.",
                    &[404, 409, 503],
                )
            }),
        )
}

/// The tokens the cards view takes.
pub(super) fn cards_token() -> String {
    Token::pattern(VIEW.topics())
}

/// `?after=` of the cards view.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "CardsAfter")]
struct AfterQuery {
    #[schemars(pattern(cards_token()), description = AFTER_DOC)]
    after: Option<String>,
}

/// A session in a path.
#[derive(Debug, Deserialize, JsonSchema)]
struct SessionPath {
    /// The session key (malformed: 400 `invalid_session`).
    #[schemars(length(min = 1, max = ID_MAX), pattern(TEXT_ID))]
    key: String,
}

/// An upload in a path.
#[derive(Debug, Deserialize, JsonSchema)]
pub(super) struct UploadPath {
    /// The upload's id (unknown or malformed: 404 `unknown_upload`).
    #[schemars(with = "uuid::Uuid")]
    pub(super) id: String,
}

/// A session's cards, by slot (1 to 3; empty slots are absent).
#[derive(Debug, Serialize, JsonSchema)]
#[schemars(rename = "SessionCards")]
pub(super) struct Cards {
    /// The session.
    session_key: SessionKey,
    /// Its cards.
    cards: Vec<Card>,
    /// Present when the store refused to write one of this session's
    /// events for good: the cards lack it until its dead letter is
    /// replayed.
    #[serde(skip_serializing_if = "Option::is_none")]
    degraded: Option<DegradedNote>,
}

/// Reads a session's cards (after `?after`).
pub(super) async fn session_cards(
    st: &AppState,
    key: SessionKey,
    after: Option<&str>,
) -> Result<Cards, ApiError> {
    fresh(st, after, VIEW).await?;
    let cards = st.views.cards().await?.cards(&key).await?;
    let degraded = st
        .degraded
        .of(&st.views, VIEW, key.as_str())
        .await
        .map(DegradedNote::from);
    Ok(Cards {
        session_key: key,
        cards,
        degraded,
    })
}

async fn cards(
    State(st): State<AppState>,
    Path(p): Path<SessionPath>,
    QueryParams(q): QueryParams<AfterQuery>,
    inm: IfNoneMatch,
) -> Result<Etagged<Cards>, ApiError> {
    let key = SessionKey::parse(&p.key)
        .map_err(|e| ApiError::bad_request("invalid_session", e.reason))?;
    let cards = session_cards(&st, key, q.after.as_deref()).await?;
    Ok(Etagged::new(inm, cards))
}

/// Reads one upload's status (after `?after`); 404 when unknown.
pub(super) async fn upload_status(
    st: &AppState,
    id: UploadId,
    after: Option<&str>,
) -> Result<Card, ApiError> {
    fresh(st, after, VIEW).await?;
    st.views
        .cards()
        .await?
        .upload(id)
        .await?
        .ok_or_else(|| ApiError::not_found("unknown_upload", format!("no upload {id}")))
}

async fn upload(
    State(st): State<AppState>,
    Path(p): Path<UploadPath>,
    QueryParams(q): QueryParams<AfterQuery>,
    inm: IfNoneMatch,
) -> Result<Etagged<Card>, ApiError> {
    let id = UploadId::parse(&p.id)
        .map_err(|_| ApiError::not_found("unknown_upload", format!("no upload {:?}", p.id)))?;
    let status = upload_status(&st, id, q.after.as_deref()).await?;
    Ok(Etagged::new(inm, status))
}
