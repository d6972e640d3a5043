//! What ingest and read routes share: appending an event and answering 202
//! with a token; waiting (bounded) for `?after=<token>`; JSON answers with an
//! ETag, and 304 for a matching `If-None-Match`; page cursors.

use axum::Json;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use super::{ApiError, AppState, Token};
use crate::edge::new_id;
use crate::event::{Event, EventData, EventId, Principal, Validate};
use crate::ops::RebuildError;
use crate::view::View;

/// The `?after=` of reads and of ingest routes that consult a view.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AfterQuery {
    pub(super) after: Option<String>,
}

/// What an accepted write answers.
#[derive(Debug, Serialize)]
pub(super) struct Accepted {
    pub(super) event_id: EventId,
    /// The aggregate the event is about (`poll_id`, `item_id`, ...).
    #[serde(flatten)]
    pub(super) about: serde_json::Map<String, serde_json::Value>,
    /// Pass as `?after=` to read your write.
    pub(super) token: String,
}

/// Stamps, validates and appends an event; answers where it landed.
pub(super) async fn append(
    st: &AppState,
    principal: Principal,
    data: EventData,
) -> Result<(EventId, Token), ApiError> {
    let event = Event {
        id: EventId(new_id()),
        time: crate::edge::now(),
        principal,
        data,
    };
    event.validate()?;
    let at = st.producer.send(&event).await?;
    crate::telemetry::emit::ingest_event(event.data.type_name());
    // Inside the request's span: the line carries the request id too.
    tracing::info!(
        event_id = %event.id.0,
        event_type = event.data.type_name(),
        principal = %event.principal.id,
        topic = %at.topic,
        partition = at.partition,
        offset = at.offset,
        "event appended"
    );
    Ok((event.id, Token::from(&at)))
}

/// `202 Accepted` with the event id, the aggregate's id under `about`, the
/// token, and a `Location` when one is given.
pub(super) fn accepted(
    event_id: EventId,
    about: Option<(&str, String)>,
    token: Token,
    location: Option<String>,
) -> Response {
    let mut m = serde_json::Map::new();
    if let Some((k, v)) = about {
        m.insert(k.to_owned(), serde_json::Value::String(v));
    }
    let mut res = (
        StatusCode::ACCEPTED,
        Json(Accepted {
            event_id,
            about: m,
            token: token.encode(),
        }),
    )
        .into_response();
    if let Some(l) = location
        && let Ok(v) = HeaderValue::from_str(&l)
    {
        res.headers_mut().insert(header::LOCATION, v);
    }
    res
}

/// Decodes `?after=` and checks that it names one of `view`'s topics.
pub(super) fn parse_after(
    st: &AppState,
    after: Option<&str>,
    view: View,
) -> Result<Option<Token>, ApiError> {
    let Some(t) = after.map(Token::decode).transpose()? else {
        return Ok(None);
    };
    if !view
        .topics()
        .iter()
        .any(|&x| st.producer.topic(x) == t.topic)
    {
        return Err(ApiError::bad_request(
            "invalid_token",
            format!("the consistency token is for another topic than {view}"),
        ));
    }
    Ok(Some(t))
}

/// Waits (bounded by the configured maximum) until `view` has applied the
/// token's offset; `503 not_yet_applied` with `Retry-After` otherwise.
///
/// What this process's projectors (or its change follower) report is free
/// to consult and wakes the wait; the view store's checkpoint is the truth
/// when the partition is projected elsewhere (another process, or after a
/// rebalance), so it is read too, but at most every [`CHECKPOINT_EVERY`]:
/// hundreds of waiting readers must not turn every batch into a storm of
/// checkpoint reads.
pub(super) async fn wait_applied(st: &AppState, view: View, t: &Token) -> Result<(), ApiError> {
    let deadline = Instant::now() + st.max_after_wait;
    let mut next_read = Instant::now();
    loop {
        if st
            .watermarks
            .local(&t.topic, t.partition)
            .is_some_and(|o| o >= t.offset)
        {
            return Ok(());
        }
        let now = Instant::now();
        if now >= next_read {
            next_read = now + CHECKPOINT_EVERY;
            if let Ok(store) = st.views.active(view).await
                && matches!(
                    store.checkpoint(view.as_str(), &t.topic, t.partition).await,
                    Ok(Some(cp)) if cp.offset >= t.offset
                )
            {
                return Ok(());
            }
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(not_yet(t));
        }
        let wait = (deadline - now).min(CHECKPOINT_EVERY);
        tokio::select! {
            _ = st.watermarks.changed() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// How often a waiting read consults the view store's checkpoint.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(50);

/// Reads one aggregate's row honouring `?after`: a token of the row's own
/// partition is answered by the row's version at once; any other waits for
/// the view (bounded), then reads again.
pub(super) async fn fresh_row<T, F, Fut>(
    st: &AppState,
    after: Option<&str>,
    view: View,
    read: F,
    version: fn(&T) -> crate::fold::Position,
) -> Result<Option<T>, ApiError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>, crate::view::ViewError>>,
{
    let token = parse_after(st, after, view)?;
    let row = read().await?;
    let Some(t) = token else {
        return Ok(row);
    };
    if row
        .as_ref()
        .map(version)
        .is_some_and(|p| p.partition == t.partition && p.offset >= t.offset)
    {
        return Ok(row);
    }
    wait_applied(st, view, &t).await?;
    Ok(read().await?)
}

/// The answer when a token's offset is not applied in time.
pub(super) fn not_yet(t: &Token) -> ApiError {
    ApiError::unavailable(
        "not_yet_applied",
        format!(
            "the view has not applied offset {} of {}/{} yet; retry",
            t.offset, t.topic, t.partition
        ),
    )
}

/// `?after` for a read: parse, check the topic, wait.
pub(super) async fn fresh(st: &AppState, after: Option<&str>, view: View) -> Result<(), ApiError> {
    if let Some(t) = parse_after(st, after, view)? {
        wait_applied(st, view, &t).await?;
    }
    Ok(())
}

/// A JSON answer with a strong ETag over its bytes; `304 Not Modified` when
/// the client already holds it (`If-None-Match`), so dashboards can poll
/// cheaply.
pub(super) fn etagged<T: Serialize>(headers: &HeaderMap, value: &T) -> Response {
    let body = match serde_json::to_vec(value) {
        Ok(b) => b,
        Err(e) => {
            return ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
                .into_response();
        }
    };
    let digest = Sha256::digest(&body);
    let tag = format!("\"{}\"", hex::encode(&digest[..12]));
    let matches = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|v| v == "*" || v.trim_start_matches("W/") == tag);
    let etag = HeaderValue::from_str(&tag).expect("hex is a valid header");
    if matches {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response();
    }
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (header::ETAG, etag),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

/// Checks a page size: 1 to 100, 20 by default.
pub(super) fn page_limit(limit: Option<usize>) -> Result<usize, ApiError> {
    let limit = limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_limit",
            "limit must be between 1 and 100",
        ));
    }
    Ok(limit)
}

/// A newest-first cursor: the time and id of the previous page's last row.
pub(super) fn encode_time_cursor(t: DateTime<Utc>, id: impl std::fmt::Display) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}:{id}", t.timestamp_micros()))
}

/// Decodes a cursor of [`encode_time_cursor`]; malformed ones are a 400.
pub(super) fn decode_time_cursor<I, E>(
    s: &str,
    parse: impl Fn(&str) -> Result<I, E>,
) -> Result<(DateTime<Utc>, I), ApiError> {
    let bad = || ApiError::bad_request("invalid_cursor", "the cursor is malformed");
    let raw = URL_SAFE_NO_PAD.decode(s).map_err(|_| bad())?;
    let text = String::from_utf8(raw).map_err(|_| bad())?;
    let (us, id) = text.split_once(':').ok_or_else(bad)?;
    let us: i64 = us.parse().map_err(|_| bad())?;
    let t = DateTime::from_timestamp_micros(us).ok_or_else(bad)?;
    Ok((t, parse(id).map_err(|_| bad())?))
}

/// An opaque cursor over a text key (voter ids).
pub(super) fn encode_text_cursor(s: &str) -> String {
    URL_SAFE_NO_PAD.encode(s)
}

/// Decodes [`encode_text_cursor`]; malformed ones are a 400.
pub(super) fn decode_text_cursor(s: &str) -> Result<String, ApiError> {
    let bad = || ApiError::bad_request("invalid_cursor", "the cursor is malformed");
    let raw = URL_SAFE_NO_PAD.decode(s).map_err(|_| bad())?;
    String::from_utf8(raw).map_err(|_| bad())
}

pub(super) fn rebuild_err(e: RebuildError) -> ApiError {
    match e {
        RebuildError::InProgress(..) => ApiError::conflict("rebuild_in_progress", e.to_string()),
        RebuildError::View(e) => ApiError::unavailable("views_unavailable", e.to_string()),
        RebuildError::Bus(e) => ApiError::unavailable("log_unavailable", e.to_string()),
    }
}
