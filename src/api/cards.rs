//! Session cards and upload job status: the replacement for polling a task
//! result backend. One view query each; `?after=` takes a token of the
//! uploads or completions topic.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::get;
use serde::Serialize;

use super::common::{AfterQuery, etagged, fresh};
use super::json::QueryParams;
use super::{ApiError, AppState};
use crate::event::{SessionKey, UploadId};
use crate::fold::cards::Card;
use crate::view::cards::VIEW;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/sessions/{key}/cards", get(cards))
        .route("/v1/uploads/{id}", get(upload))
}

/// A session's cards, by slot (1 to 3; empty slots are absent).
#[derive(Debug, Serialize)]
pub(super) struct Cards {
    session_key: SessionKey,
    cards: Vec<Card>,
}

/// Reads a session's cards (after `?after`).
pub(super) async fn session_cards(
    st: &AppState,
    key: SessionKey,
    after: Option<&str>,
) -> Result<Cards, ApiError> {
    fresh(st, after, VIEW).await?;
    let cards = st.views.cards().await?.cards(&key).await?;
    Ok(Cards {
        session_key: key,
        cards,
    })
}

async fn cards(
    State(st): State<AppState>,
    Path(key): Path<String>,
    QueryParams(q): QueryParams<AfterQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let key =
        SessionKey::parse(&key).map_err(|e| ApiError::bad_request("invalid_session", e.reason))?;
    let cards = session_cards(&st, key, q.after.as_deref()).await?;
    Ok(etagged(&headers, &cards))
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
    Path(id): Path<String>,
    QueryParams(q): QueryParams<AfterQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = UploadId::parse(&id)
        .map_err(|_| ApiError::not_found("unknown_upload", format!("no upload {id:?}")))?;
    let status = upload_status(&st, id, q.after.as_deref()).await?;
    Ok(etagged(&headers, &status))
}
