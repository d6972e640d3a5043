//! `/v1/admin/dlq`: list dead letters, show one in full, replay one (with
//! a corrected body or headers) or all that match a filter. The DLQ is read
//! and written through the log itself (see `dlq`), so these work
//! the same against the embedded cluster of `atelier up` and real Kafka.

use std::collections::BTreeMap;

use aide::axum::ApiRouter;
use aide::axum::routing::{get_with, post_with};
use axum::Json;
use axum::extract::{Path, State};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::api::common::page_limit;
use crate::api::contract::op;
use crate::api::json::{Int, JsonBody, QueryParams};
use crate::api::{Admin, ApiError, AppState};
use crate::dlq::letters::Unreplayable;
use crate::dlq::replay::{Bulk, Replay, Skipped};
use crate::dlq::{Cursor, DeadLetter, DlqError, DlqLog, Edits, Filter, Place, Pos, Replayed};

pub(super) fn routes() -> ApiRouter<AppState> {
    ApiRouter::new()
        .api_route(
            "/v1/admin/dlq",
            get_with(list, |t| {
                op(
                    t,
                    "listDeadLetters",
                    "admin",
                    "List dead letters",
                    "Records the pipeline could not process (undecodable, schema-invalid, \
                     failed inference), oldest first: the stage that refused each, why, where \
                     it came from, and where a replay re-published it (`replayed`). Reads the \
                     DLQ topic to its end as of the request, bounded in time (503 \
                     `dlq_timeout`).",
                    &[503],
                )
            }),
        )
        .api_route(
            "/v1/admin/dlq/replay",
            post_with(replay, |t| {
                op(
                    t,
                    "replayDeadLetters",
                    "admin",
                    "Replay dead letters",
                    "Re-publishes a dead letter to its source topic with its key and headers \
                     (less `dlq_*`, plus `dlq_replay_of`), optionally with a corrected body or \
                     headers; or, unchanged, every one matching `filter` (at most 200 a call: \
                     `truncated`). A replay marker appended to the DLQ makes it idempotent: a \
                     dead letter replayed before is 409 `already_replayed` unless `force` (a \
                     filtered replay skips it). On Kafka the copy and its marker commit in one \
                     transaction. `dry_run` answers what would be published.",
                    &[404, 409, 500, 503],
                )
            }),
        )
        .api_route(
            "/v1/admin/dlq/{partition}/{offset}",
            get_with(show, |t| {
                op(
                    t,
                    "readDeadLetter",
                    "admin",
                    "Read a dead letter in full",
                    "Every header, the key and the body: UTF-8 text, or base64 where \
                     `payload_base64` (`key_base64`, a header's `base64`) says so.",
                    &[404, 503],
                )
            }),
        )
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

#[derive(Debug, Serialize, JsonSchema)]
#[schemars(rename = "RecordPlace")]
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

#[derive(Debug, Serialize, JsonSchema)]
#[schemars(rename = "DlqReplayed")]
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
#[derive(Debug, Serialize, JsonSchema)]
#[schemars(rename = "DeadLetter")]
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
        let (key, key_base64) = key_json(l.record.key());
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

#[derive(Debug, Serialize, JsonSchema)]
#[schemars(rename = "DlqHeader")]
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
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    /// Dead letters refused by this stage (`project.polls`, `project.feed`,
    /// `project.cards`, `infer`).
    stage: Option<String>,
    /// Dead letters from this source topic: its full name, or its name
    /// without the deployment's namespace (`atelier.polls.v1`).
    topic: Option<String>,
    /// Dead letters whose error contains this text.
    error: Option<String>,
    /// Page size (otherwise: 400 `invalid_limit`).
    #[schemars(range(min = 1, max = 100), extend("default" = 20))]
    limit: Option<Int<usize>>,
    /// Where the page starts: the previous page's `next_cursor` (per
    /// partition, the next offset; malformed: 400 `invalid_cursor`).
    #[schemars(pattern(DLQ_CURSOR))]
    cursor: Option<String>,
}

/// A list cursor: `<partition>:<offset>` pairs, comma-separated.
const DLQ_CURSOR: &str =
    "^((0|[1-9][0-9]{0,8}):(0|[1-9][0-9]{0,17})(,(0|[1-9][0-9]{0,8}):(0|[1-9][0-9]{0,17}))*)?$";

static DLQ_CURSOR_RE: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
    regex::Regex::new(DLQ_CURSOR).expect("the cursor pattern compiles")
});

fn nonempty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.is_empty())
}

#[derive(Debug, Serialize, JsonSchema)]
#[schemars(rename = "DeadLetterPage")]
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
    let limit = page_limit(q.limit.map(|l| l.0))?;
    let bad_cursor = || ApiError::bad_request("invalid_cursor", "the cursor is malformed");
    let cursor = match nonempty(q.cursor) {
        Some(c) if DLQ_CURSOR_RE.is_match(&c) => Cursor::parse(&c).ok_or_else(bad_cursor)?,
        Some(_) => return Err(bad_cursor()),
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
        next_cursor: page.next.map(|c| c.to_string()),
    }))
}

/// A dead letter in full.
#[derive(Debug, Serialize, JsonSchema)]
#[schemars(rename = "DeadLetterRecord")]
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

/// A dead letter's position in a path.
#[derive(Debug, Deserialize, JsonSchema)]
struct LetterPath {
    /// A partition of the DLQ topic (with the offset, a dead letter's
    /// position; none there: 404 `unknown_dead_letter`).
    #[schemars(with = "i32", range(min = 0))]
    partition: String,
    /// An offset in that partition.
    #[schemars(with = "i64", range(min = 0))]
    offset: String,
}

/// `GET /v1/admin/dlq/{partition}/{offset}`.
async fn show(
    Admin(_): Admin,
    State(st): State<AppState>,
    Path(p): Path<LetterPath>,
) -> Result<Json<LetterFull>, ApiError> {
    let at = pos(&p.partition, &p.offset)?;
    let l = log(&st).get(at).await?.ok_or(DlqError::Unknown(at))?;
    let (payload, payload_base64) = match l.record.payload().map(text_or_base64) {
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
    partition: Option<Int<i32>>,
    offset: Option<Int<i64>>,
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

/// The body's contract: one dead letter with its corrections, or a filter
/// with at least one non-empty criterion.
impl JsonSchema for ReplayBody {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ReplayDeadLetters".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let dry_run = serde_json::json!({
            "type": "boolean",
            "default": false,
            "description": "Only say what would be published."
        });
        let criterion =
            |what: &str| serde_json::json!({"type": ["string", "null"], "description": what});
        let non_empty = |name: &str| {
            serde_json::json!({
                "properties": {name: {"type": "string", "minLength": 1}},
                "required": [name]
            })
        };
        schemars::json_schema!({
            "oneOf": [
                {
                    "type": "object",
                    "description": "Replay one dead letter, optionally corrected.",
                    "properties": {
                        "partition": {"type": "integer", "minimum": 0, "maximum": i32::MAX, "description": "The dead letter's DLQ partition."},
                        "offset": {"type": "integer", "minimum": 0, "maximum": i64::MAX, "description": "Its offset there."},
                        "payload": {"description": "A corrected body: a string is sent as it is, any other JSON value as its JSON text."},
                        "headers": {
                            "type": ["object", "null"],
                            "description": "Header values to set; `null` removes one. `dlq_*` headers are the DLQ's own.",
                            "propertyNames": {"pattern": r"^([\s\S]{1,3}|[^d][\s\S]*|d[^l][\s\S]*|dl[^q][\s\S]*|dlq[^_][\s\S]*)$"},
                            "additionalProperties": {"type": ["string", "null"]}
                        },
                        "force": {"type": "boolean", "default": false, "description": "Replay it even if it was replayed before."},
                        "dry_run": dry_run,
                    },
                    "required": ["partition", "offset"],
                    "additionalProperties": false
                },
                {
                    "type": "object",
                    "description": "Replay, unchanged, every dead letter that matches and was not replayed yet.",
                    "properties": {
                        "filter": {
                            "type": "object",
                            "properties": {
                                "stage": criterion("Dead letters refused by this stage."),
                                "topic": criterion("Dead letters from this source topic (full name, or without the namespace)."),
                                "error": criterion("Dead letters whose error contains this text."),
                            },
                            "additionalProperties": false,
                            "anyOf": [non_empty("stage"), non_empty("topic"), non_empty("error")]
                        },
                        "dry_run": dry_run,
                    },
                    "required": ["filter"],
                    "additionalProperties": false
                }
            ]
        })
    }
}

/// What one replay published (or, on a dry run, would publish).
#[derive(Debug, Serialize, JsonSchema)]
#[schemars(rename = "DeadLetterReplay")]
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

#[derive(Debug, Serialize, JsonSchema)]
#[schemars(rename = "ReplayMarker")]
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

#[derive(Debug, Serialize, JsonSchema)]
#[schemars(rename = "ReplaySkipped")]
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

#[derive(Debug, Serialize, JsonSchema)]
#[schemars(rename = "ReplayResult")]
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
        (Some(Int(partition)), Some(Int(offset)), None) => {
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
