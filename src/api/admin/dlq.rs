//! `/v1/admin/dlq`: list dead letters, show one in full, replay one (with
//! a corrected body or headers) or all that match a filter. The DLQ is read
//! and written through the log itself (see `dlq`), so these work
//! the same against the embedded cluster of `atelier up` and real Kafka.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::api::common::{decode_text_cursor, encode_text_cursor, page_limit};
use crate::api::json::{JsonBody, QueryParams};
use crate::api::{Admin, ApiError, AppState};
use crate::dlq::letters::Unreplayable;
use crate::dlq::replay::{Bulk, Replay, Skipped};
use crate::dlq::{Cursor, DeadLetter, DlqError, DlqLog, Edits, Filter, Place, Pos, Replayed};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/admin/dlq", get(list))
        .route("/v1/admin/dlq/replay", post(replay))
        .route("/v1/admin/dlq/{partition}/{offset}", get(show))
}

impl From<DlqError> for ApiError {
    fn from(e: DlqError) -> Self {
        match e {
            DlqError::Unknown(pos) => ApiError::not_found(
                "unknown_dead_letter",
                format!("no dead letter at {pos} of the DLQ"),
            ),
            DlqError::AlreadyReplayed { .. } => ApiError::conflict(
                "already_replayed",
                format!("{e}; pass force to replay it again"),
            ),
            DlqError::Unreplayable(
                u @ (Unreplayable::ReservedHeader(_) | Unreplayable::EmptyHeader),
            ) => ApiError {
                field: Some("headers".into()),
                ..ApiError::unprocessable("invalid_header", u.to_string())
            },
            DlqError::Unreplayable(u) => ApiError::unprocessable("not_replayable", u.to_string()),
            DlqError::Timeout(_) => ApiError::unavailable("dlq_timeout", e.to_string()),
            DlqError::Publish { .. } => {
                tracing::warn!(error = %e, "DLQ replay failed");
                ApiError::unavailable("replay_failed", format!("{e}; retry"))
            }
            DlqError::MarkerLost { .. } => {
                tracing::error!(error = %e, "DLQ replay half done");
                ApiError::new(
                    axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                    "replay_marker_lost",
                    e.to_string(),
                )
            }
            e => {
                tracing::warn!(error = %e, "DLQ read failed");
                ApiError::unavailable("log_unavailable", "the event log is unavailable; retry")
            }
        }
    }
}

fn log(st: &AppState) -> DlqLog {
    DlqLog::new(&st.kafka, &st.brokers)
}

/// Bytes as UTF-8 text when they are, else base64 (the flag says which).
fn text_or_base64(b: &[u8]) -> (String, bool) {
    match std::str::from_utf8(b) {
        Ok(s) => (s.to_owned(), false),
        Err(_) => (STANDARD.encode(b), true),
    }
}

#[derive(Debug, Serialize)]
struct PlaceJson {
    topic: String,
    partition: i32,
    offset: i64,
}

impl From<&Place> for PlaceJson {
    fn from(p: &Place) -> Self {
        Self {
            topic: p.topic.clone(),
            partition: p.partition,
            offset: p.offset,
        }
    }
}

#[derive(Debug, Serialize)]
struct ReplayedJson {
    topic: String,
    partition: i32,
    offset: i64,
    at: Option<DateTime<Utc>>,
    by: Option<String>,
}

impl From<&Replayed> for ReplayedJson {
    fn from(r: &Replayed) -> Self {
        Self {
            topic: r.to.topic.clone(),
            partition: r.to.partition,
            offset: r.to.offset,
            at: r.time,
            by: r.by.clone(),
        }
    }
}

/// A dead letter in a list.
#[derive(Debug, Serialize)]
struct LetterJson {
    partition: i32,
    offset: i64,
    stage: String,
    error: String,
    source: Option<PlaceJson>,
    attempts: Option<u32>,
    key: Option<String>,
    key_base64: bool,
    #[serde(rename = "type")]
    event_type: Option<String>,
    id: Option<String>,
    at: Option<DateTime<Utc>>,
    replayed: Option<ReplayedJson>,
}

fn key_json(key: Option<&[u8]>) -> (Option<String>, bool) {
    match key.map(text_or_base64) {
        Some((k, b)) => (Some(k), b),
        None => (None, false),
    }
}

impl From<&DeadLetter> for LetterJson {
    fn from(l: &DeadLetter) -> Self {
        let (key, key_base64) = key_json(l.record.key.as_deref());
        Self {
            partition: l.pos.partition,
            offset: l.pos.offset,
            stage: l.stage.clone(),
            error: l.error.clone(),
            source: l.source.as_ref().map(PlaceJson::from),
            attempts: l.attempts,
            key,
            key_base64,
            event_type: l.event_type().map(str::to_owned),
            id: l.event_id().map(str::to_owned),
            at: l.time,
            replayed: l.replayed.as_ref().map(ReplayedJson::from),
        }
    }
}

#[derive(Debug, Serialize)]
struct HeaderJson {
    name: String,
    value: String,
    base64: bool,
}

fn headers_json<'a>(hs: impl Iterator<Item = (&'a str, &'a [u8])>) -> Vec<HeaderJson> {
    hs.map(|(name, v)| {
        let (value, base64) = text_or_base64(v);
        HeaderJson {
            name: name.to_owned(),
            value,
            base64,
        }
    })
    .collect()
}

/// Query of `GET /v1/admin/dlq`; empty values mean "any".
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    stage: Option<String>,
    topic: Option<String>,
    error: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

fn nonempty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.is_empty())
}

#[derive(Debug, Serialize)]
struct LetterPage {
    dead_letters: Vec<LetterJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

/// `GET /v1/admin/dlq`: dead letters oldest first (replay markers are not
/// listed; they show as `replayed` on their dead letter).
async fn list(
    Admin(_): Admin,
    State(st): State<AppState>,
    QueryParams(q): QueryParams<ListQuery>,
) -> Result<Json<LetterPage>, ApiError> {
    let limit = page_limit(q.limit)?;
    let cursor = match nonempty(q.cursor) {
        Some(c) => Cursor::parse(&decode_text_cursor(&c)?)
            .ok_or_else(|| ApiError::bad_request("invalid_cursor", "the cursor is malformed"))?,
        None => Cursor::default(),
    };
    let filter = Filter {
        stage: nonempty(q.stage),
        topic: nonempty(q.topic),
        error: nonempty(q.error),
    };
    let page = log(&st).list(filter, limit, cursor).await?;
    Ok(Json(LetterPage {
        dead_letters: page.letters.iter().map(LetterJson::from).collect(),
        next_cursor: page.next.map(|c| encode_text_cursor(&c.to_string())),
    }))
}

/// A dead letter in full.
#[derive(Debug, Serialize)]
struct LetterFull {
    #[serde(flatten)]
    letter: LetterJson,
    headers: Vec<HeaderJson>,
    payload: Option<String>,
    payload_base64: bool,
}

/// A position from path segments; malformed is as unknown.
fn pos(partition: &str, offset: &str) -> Result<Pos, ApiError> {
    Pos::parse(&format!("{partition}/{offset}")).ok_or_else(|| {
        ApiError::not_found(
            "unknown_dead_letter",
            format!("{partition}/{offset} is not a DLQ position (PARTITION/OFFSET)"),
        )
    })
}

/// `GET /v1/admin/dlq/{partition}/{offset}`.
async fn show(
    Admin(_): Admin,
    State(st): State<AppState>,
    Path((partition, offset)): Path<(String, String)>,
) -> Result<Json<LetterFull>, ApiError> {
    let at = pos(&partition, &offset)?;
    let l = log(&st).get(at).await?.ok_or(DlqError::Unknown(at))?;
    let (payload, payload_base64) = match l.record.payload.as_deref().map(text_or_base64) {
        Some((p, b)) => (Some(p), b),
        None => (None, false),
    };
    Ok(Json(LetterFull {
        letter: LetterJson::from(&l),
        headers: headers_json(l.record.header_pairs()),
        payload,
        payload_base64,
    }))
}

/// Body of `POST /v1/admin/dlq/replay`: one dead letter (`partition`,
/// `offset`, optional corrections) or every one matching `filter`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayBody {
    partition: Option<i32>,
    offset: Option<i64>,
    /// A JSON value is sent as its JSON text, a string as it is.
    payload: Option<Value>,
    /// Header values to set; `null` removes one.
    headers: Option<BTreeMap<String, Option<String>>>,
    #[serde(default)]
    force: bool,
    #[serde(default)]
    dry_run: bool,
    filter: Option<FilterBody>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilterBody {
    stage: Option<String>,
    topic: Option<String>,
    error: Option<String>,
}

/// What one replay published (or, on a dry run, would publish).
#[derive(Debug, Serialize)]
struct ReplayJson {
    /// The dead letter.
    partition: i32,
    offset: i64,
    /// The source topic the copy goes to.
    topic: String,
    /// Where the copy landed (`null` on a dry run).
    to: Option<PlaceJson>,
    /// The replay marker in the DLQ (`null` on a dry run).
    marker: Option<MarkerJson>,
    key: Option<String>,
    key_base64: bool,
    headers: Vec<HeaderJson>,
    payload: Option<String>,
    payload_base64: bool,
}

#[derive(Debug, Serialize)]
struct MarkerJson {
    partition: i32,
    offset: i64,
}

impl From<&Replay> for ReplayJson {
    fn from(r: &Replay) -> Self {
        let c = &r.copy;
        let (key, key_base64) = key_json(c.key.as_deref());
        let (payload, payload_base64) = match c.payload.as_deref().map(text_or_base64) {
            Some((p, b)) => (Some(p), b),
            None => (None, false),
        };
        Self {
            partition: c.of.partition,
            offset: c.of.offset,
            topic: c.topic.clone(),
            to: r.done.as_ref().map(|d| PlaceJson::from(&d.to)),
            marker: r.done.as_ref().map(|d| MarkerJson {
                partition: d.marker.partition,
                offset: d.marker.offset,
            }),
            key,
            key_base64,
            headers: headers_json(c.headers.iter().map(|(k, v)| (k.as_str(), v.as_slice()))),
            payload,
            payload_base64,
        }
    }
}

#[derive(Debug, Serialize)]
struct SkippedJson {
    partition: i32,
    offset: i64,
    reason: String,
    replayed: Option<ReplayedJson>,
}

impl From<&Skipped> for SkippedJson {
    fn from(s: &Skipped) -> Self {
        Self {
            partition: s.of.partition,
            offset: s.of.offset,
            reason: s.reason.clone(),
            replayed: s.replayed.as_ref().map(ReplayedJson::from),
        }
    }
}

#[derive(Debug, Serialize)]
struct ReplayAnswer {
    dry_run: bool,
    replayed: Vec<ReplayJson>,
    skipped: Vec<SkippedJson>,
    truncated: bool,
}

/// What the body asks for, checked.
enum Ask {
    One { at: Pos, edits: Edits, force: bool },
    Matching(Filter),
}

fn ask(b: ReplayBody) -> Result<Ask, ApiError> {
    let invalid = |reason: &str| ApiError::unprocessable("invalid_body", reason);
    match (b.partition, b.offset, b.filter) {
        (Some(partition), Some(offset), None) => {
            if partition < 0 || offset < 0 {
                return Err(invalid("partition and offset cannot be negative"));
            }
            let payload = b.payload.map(|p| match p {
                Value::String(s) => s.into_bytes(),
                other => other.to_string().into_bytes(),
            });
            let headers = b
                .headers
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.map(String::into_bytes)))
                .collect();
            Ok(Ask::One {
                at: Pos { partition, offset },
                edits: Edits { payload, headers },
                force: b.force,
            })
        }
        (None, None, Some(f)) => {
            if b.payload.is_some() || b.headers.is_some() || b.force {
                return Err(invalid(
                    "a filtered replay re-publishes records unchanged: payload, headers and \
                     force apply to one dead letter (partition and offset)",
                ));
            }
            let filter = Filter {
                stage: nonempty(f.stage),
                topic: nonempty(f.topic),
                error: nonempty(f.error),
            };
            if filter.is_empty() {
                return Err(invalid(
                    "the filter needs at least one of stage, topic or error",
                ));
            }
            Ok(Ask::Matching(filter))
        }
        _ => Err(invalid(
            "give either partition and offset (one dead letter) or filter (all that match)",
        )),
    }
}

/// `POST /v1/admin/dlq/replay`.
async fn replay(
    Admin(admin): Admin,
    State(st): State<AppState>,
    JsonBody(body): JsonBody<ReplayBody>,
) -> Result<Json<ReplayAnswer>, ApiError> {
    let dry_run = body.dry_run;
    let by = admin.id.to_string();
    let log = log(&st);
    let bulk = match ask(body)? {
        Ask::One { at, edits, force } => {
            let r = log.replay(at, &edits, force, dry_run, &by).await?;
            Bulk {
                replays: vec![r],
                ..Bulk::default()
            }
        }
        Ask::Matching(filter) => log.replay_matching(&filter, dry_run, &by).await?,
    };
    Ok(Json(ReplayAnswer {
        dry_run,
        replayed: bulk.replays.iter().map(ReplayJson::from).collect(),
        skipped: bulk.skipped.iter().map(SkippedJson::from).collect(),
        truncated: bulk.truncated,
    }))
}
