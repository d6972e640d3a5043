//! What ingest and read routes share: appending an event and answering 202
//! with a token; waiting (bounded) for `?after=<token>`; JSON answers with an
//! ETag, and 304 for a matching `If-None-Match`; page cursors. Each answer
//! type documents itself (`aide::OperationOutput`), so a route that returns
//! it is documented by what it returns.

use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::Duration;

use aide::generate::GenContext;
use aide::openapi::{
    Operation, Parameter, ParameterData, ParameterSchemaOrContent, Response, StatusCode as Status,
};
use axum::Json;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response as HttpResponse};
use chrono::{DateTime, Utc};
use indexmap::IndexMap;
use regex::Regex;
use schemars::JsonSchema;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use super::contract::{header as doc_header, raw_response};
use super::{ApiError, AppState, Token};
use crate::edge::new_id;
use crate::event::{Event, EventData, EventId, FeedItemId, PollId, Principal, UploadId, Validate};
use crate::ops::RebuildError;
use crate::view::{Degraded, Generations, View};

/// What an accepted write answers (202): the event's id, the id of the
/// aggregate it is about, and its consistency token; `Location` names the
/// new aggregate when the write created one.
#[derive(Debug, Serialize, JsonSchema)]
#[schemars(rename = "Accepted{K}")]
pub(super) struct Accepted<K> {
    /// The appended event's id.
    pub(super) event_id: EventId,
    /// The aggregate the event is about.
    #[serde(flatten)]
    pub(super) about: K,
    /// Pass as `?after=` to a read (or a later write) to see this write.
    pub(super) token: String,
    #[serde(skip)]
    #[schemars(skip)]
    location: Option<String>,
}

/// A write about a poll.
#[derive(Debug, Serialize, JsonSchema)]
#[schemars(rename = "Poll")]
pub(super) struct PollRef {
    /// The poll.
    pub(super) poll_id: PollId,
}

/// A write about a feed item.
#[derive(Debug, Serialize, JsonSchema)]
#[schemars(rename = "Item")]
pub(super) struct ItemRef {
    /// The item.
    pub(super) item_id: FeedItemId,
}

/// An upload.
#[derive(Debug, Serialize, JsonSchema)]
#[schemars(rename = "Upload")]
pub(super) struct UploadRef {
    /// The upload.
    pub(super) upload_id: UploadId,
}

impl<K> Accepted<K> {
    /// The answer to a write about `about`, appended as `event_id` at `token`.
    pub(super) fn new(event_id: EventId, about: K, token: Token) -> Self {
        Self {
            event_id,
            about,
            token: token.encode(),
            location: None,
        }
    }

    /// With `Location: <path>` (the aggregate the write created).
    pub(super) fn at(mut self, path: String) -> Self {
        self.location = Some(path);
        self
    }
}

impl<K: Serialize> IntoResponse for Accepted<K> {
    fn into_response(self) -> HttpResponse {
        let location = self.location.clone();
        let mut res = (StatusCode::ACCEPTED, Json(self)).into_response();
        if let Some(l) = location
            && let Ok(v) = HeaderValue::from_str(&l)
        {
            res.headers_mut().insert(header::LOCATION, v);
        }
        res
    }
}

impl<K: JsonSchema> aide::OperationOutput for Accepted<K> {
    type Inner = Self;

    fn inferred_responses(
        ctx: &mut GenContext,
        _: &mut Operation,
    ) -> Vec<(Option<Status>, Response)> {
        let mut r = raw_response(
            "Accepted: the event is in the log.",
            &["application/json"],
            ctx.schema.subschema_for::<Self>(),
        );
        r.headers.insert(
            "Location".into(),
            doc_header(
                "The aggregate the write created (writes that create one).",
                schemars::json_schema!({"type": "string"}),
            ),
        );
        vec![(Some(Status::Code(202)), r)]
    }
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
    st.reached.appended(&at.topic, at.partition, at.offset);
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

/// Decodes `?after=` and checks that it names one of `view`'s topics.
pub(super) fn parse_after(after: Option<&str>, view: View) -> Result<Option<Token>, ApiError> {
    let Some(t) = after.map(Token::decode).transpose()? else {
        return Ok(None);
    };
    if !view.topics().contains(&t.topic) {
        return Err(ApiError::bad_request(
            "invalid_token",
            format!("the consistency token is for another topic than {view}"),
        ));
    }
    Ok(Some(t))
}

/// The furthest offset this process knows each partition has reached: from
/// its own appends, and from the brokers when a token names a position past
/// what it knew (at most one query per partition per [`REACHED_EVERY`]).
/// A token beyond it names a position the log never had, and is answered at
/// once rather than after the wait.
#[derive(Debug, Default)]
pub(crate) struct Reached {
    /// Per partition: the furthest offset known, and when the brokers were
    /// last asked.
    heads: parking_lot::Mutex<std::collections::HashMap<Partition, (i64, Option<Instant>)>>,
}

/// A topic partition: full topic name and partition.
type Partition = (String, i32);

/// How often the brokers are asked about one partition's head.
const REACHED_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

impl Reached {
    /// Records an append at `offset`.
    pub(crate) fn appended(&self, topic: &str, partition: i32, offset: i64) {
        let mut m = self.heads.lock();
        let e = m.entry((topic.to_owned(), partition)).or_insert((-1, None));
        e.0 = e.0.max(offset);
    }

    /// Whether the log has an offset at or past `offset` in the partition:
    /// `Some(false)` only from a broker answer of this call (the log grows:
    /// an earlier answer says nothing of a later append, perhaps by another
    /// process), `None` when the brokers were asked less than
    /// [`REACHED_EVERY`] ago or could not say.
    async fn has(
        &self,
        heads: &crate::bus::Heads,
        topic: &str,
        partition: i32,
        offset: i64,
    ) -> Option<bool> {
        let key = (topic.to_owned(), partition);
        let asked = {
            let m = self.heads.lock();
            match m.get(&key) {
                Some((known, _)) if *known >= offset => return Some(true),
                Some((_, Some(at))) if at.elapsed() < REACHED_EVERY => return None,
                _ => Instant::now(),
            }
        };
        let head = heads.head(topic, partition).await.ok()?;
        let mut m = self.heads.lock();
        let e = m.entry(key).or_insert((-1, None));
        // The high watermark is the next offset: the last one is below it.
        e.0 = e.0.max(head.map_or(-1, |h| h - 1));
        e.1 = Some(asked);
        Some(e.0 >= offset)
    }
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
    let topic = st.producer.topic(t.topic);
    loop {
        let change = st.watermarks.next_change();
        if st
            .watermarks
            .local(&topic, t.partition)
            .is_some_and(|o| o >= t.offset)
        {
            return Ok(());
        }
        let now = Instant::now();
        if now >= next_read {
            next_read = now + CHECKPOINT_EVERY;
            if let Ok(store) = st.views.active(view).await
                && matches!(
                    store.checkpoint(view.as_str(), &topic, t.partition).await,
                    Ok(Some(cp)) if cp.offset >= t.offset
                )
            {
                return Ok(());
            }
        }
        // Not applied yet: a position the log has will be; one it never
        // had never will (the brokers are asked after the cheap checks
        // above, at most every `REACHED_EVERY` per partition).
        if st
            .reached
            .has(&st.heads, &topic, t.partition, t.offset)
            .await
            == Some(false)
        {
            return Err(unknown_position(&topic, t));
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(not_yet(&topic, t));
        }
        let wait = (deadline - now).min(CHECKPOINT_EVERY);
        tokio::select! {
            _ = change => {}
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
    let token = parse_after(after, view)?;
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

/// The answer when a token names a position the log never had: waiting
/// cannot help (the token is not from this log).
fn unknown_position(topic: &str, t: &Token) -> ApiError {
    ApiError::conflict(
        "unknown_position",
        format!(
            "{topic}/{} never had offset {}: the token is not from this log",
            t.partition, t.offset
        ),
    )
}

/// The answer when a token's offset is not applied in time.
fn not_yet(topic: &str, t: &Token) -> ApiError {
    ApiError::unavailable(
        "not_yet_applied",
        format!(
            "the view has not applied offset {} of {topic}/{} yet; retry",
            t.offset, t.partition
        ),
    )
}

/// `?after` for a read: parse, check the topic, wait.
pub(super) async fn fresh(st: &AppState, after: Option<&str>, view: View) -> Result<(), ApiError> {
    if let Some(t) = parse_after(after, view)? {
        wait_applied(st, view, &t).await?;
    }
    Ok(())
}

/// The `If-None-Match` of a read (documented as an optional header).
#[derive(Debug, Default)]
pub(super) struct IfNoneMatch(Vec<String>);

impl<S: Send + Sync> FromRequestParts<S> for IfNoneMatch {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(
            parts
                .headers
                .get_all(header::IF_NONE_MATCH)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .map(|v| v.trim().to_owned())
                .collect(),
        ))
    }
}

impl aide::OperationInput for IfNoneMatch {
    fn operation_input(ctx: &mut GenContext, op: &mut Operation) {
        let schema = ctx.schema.subschema_for::<String>();
        aide::operation::add_parameters(
            ctx,
            op,
            [Parameter::Header {
                parameter_data: ParameterData {
                    name: "If-None-Match".into(),
                    description: Some(
                        "An `ETag` this read answered before: if the view still gives the same \
                         bytes, the answer is 304 with no body."
                            .into(),
                    ),
                    required: false,
                    format: ParameterSchemaOrContent::Schema(aide::openapi::SchemaObject {
                        json_schema: schema,
                        example: None,
                        external_docs: None,
                    }),
                    extensions: IndexMap::new(),
                    deprecated: None,
                    example: None,
                    examples: IndexMap::new(),
                    explode: None,
                },
                style: aide::openapi::HeaderStyle::Simple,
            }],
        );
    }
}

/// How often the degraded marks are read again (one control query per
/// view, not per request).
const DEGRADED_FRESH_FOR: Duration = Duration::from_secs(1);

/// Degraded marks by view and key.
type Marks = HashMap<(String, String), Degraded>;

/// The degraded marks of every view (aggregates whose write the store
/// refused for good), from a copy at most [`DEGRADED_FRESH_FOR`] old; the
/// last copy while the store does not answer.
#[derive(Debug, Default)]
pub(crate) struct DegradedMarks {
    copy: parking_lot::RwLock<(Option<Instant>, Marks)>,
    refreshing: tokio::sync::Mutex<()>,
}

impl DegradedMarks {
    /// The mark of `key` in `view`, if it has one.
    pub(crate) async fn of(&self, views: &Generations, view: View, key: &str) -> Option<Degraded> {
        let stale = self
            .copy
            .read()
            .0
            .is_none_or(|t| t.elapsed() >= DEGRADED_FRESH_FOR);
        if stale && let Ok(_g) = self.refreshing.try_lock() {
            let mut all = HashMap::new();
            let mut ok = true;
            for v in crate::project::views::ALL.iter().map(|r| r.view) {
                let got = match views.active(v).await {
                    Ok(store) => store.degraded(v.as_str()).await,
                    Err(e) => Err(e),
                };
                match got {
                    Ok(ds) => {
                        all.extend(ds.into_iter().map(|d| ((d.view.clone(), d.key.clone()), d)))
                    }
                    Err(_) => ok = false,
                }
            }
            let mut copy = self.copy.write();
            copy.0 = Some(Instant::now());
            if ok {
                copy.1 = all;
            }
        }
        self.copy
            .read()
            .1
            .get(&(view.as_str().to_owned(), key.to_owned()))
            .cloned()
    }
}

/// What a read of a degraded aggregate adds: the row lacks an event the
/// store refused to write (a `sink` dead letter), until it is replayed.
#[derive(Debug, Serialize, JsonSchema)]
pub(super) struct DegradedNote {
    /// What the store said.
    reason: String,
    /// When it was refused.
    since: DateTime<Utc>,
    /// The refused event's source position, as the dead letter names it
    /// (`topic/partition/offset`).
    source: String,
}

impl From<Degraded> for DegradedNote {
    fn from(d: Degraded) -> Self {
        Self {
            reason: d.reason,
            since: DateTime::from_timestamp_millis(d.at_ms).unwrap_or_default(),
            source: format!("{}/{}/{}", d.topic, d.partition, d.offset),
        }
    }
}

/// A JSON answer with a strong ETag over its bytes; `304 Not Modified` when
/// the client already holds it (`If-None-Match`), so dashboards can poll
/// cheaply.
#[derive(Debug)]
pub(super) struct Etagged<T> {
    value: T,
    if_none_match: IfNoneMatch,
}

impl<T> Etagged<T> {
    /// `value`, unless the caller holds it already.
    pub(super) fn new(if_none_match: IfNoneMatch, value: T) -> Self {
        Self {
            value,
            if_none_match,
        }
    }
}

impl<T: Serialize> IntoResponse for Etagged<T> {
    fn into_response(self) -> HttpResponse {
        let body = match serde_json::to_vec(&self.value) {
            Ok(b) => b,
            Err(e) => {
                return ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
                    .into_response();
            }
        };
        let digest = Sha256::digest(&body);
        let tag = format!("\"{}\"", hex::encode(&digest[..12]));
        let matches = self
            .if_none_match
            .0
            .iter()
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
}

impl<T: JsonSchema> aide::OperationOutput for Etagged<T> {
    type Inner = T;

    fn inferred_responses(
        ctx: &mut GenContext,
        _: &mut Operation,
    ) -> Vec<(Option<Status>, Response)> {
        let etag = || {
            doc_header(
                "A strong tag of the answer's bytes, for `If-None-Match`.",
                schemars::json_schema!({"type": "string"}),
            )
        };
        let mut ok = raw_response(
            "The view's row.",
            &["application/json"],
            ctx.schema.subschema_for::<T>(),
        );
        ok.headers.insert("ETag".into(), etag());
        let mut not_modified = Response {
            description: "Not modified: the `If-None-Match` tag is still the answer's.".into(),
            ..Default::default()
        };
        not_modified.headers.insert("ETag".into(), etag());
        vec![
            (Some(Status::Code(200)), ok),
            (Some(Status::Code(304)), not_modified),
        ]
    }
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

/// A newest-first page's cursor: the time (microseconds) and id of the
/// previous page's last row, `<micros>_<uuid>`.
pub(super) const TIME_CURSOR: &str =
    "^(0|[1-9][0-9]{0,15})_[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$";

static TIME_CURSOR_RE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(TIME_CURSOR).expect("the cursor pattern compiles"));

/// A newest-first cursor: the time and id of the previous page's last row.
pub(super) fn encode_time_cursor(t: DateTime<Utc>, id: impl std::fmt::Display) -> String {
    format!("{}_{id}", t.timestamp_micros().max(0))
}

/// Decodes a cursor of [`encode_time_cursor`]: exactly what
/// [`TIME_CURSOR`] admits; anything else is a 400.
pub(super) fn decode_time_cursor<I, E>(
    s: &str,
    parse: impl Fn(&str) -> Result<I, E>,
) -> Result<(DateTime<Utc>, I), ApiError> {
    let bad = || ApiError::bad_request("invalid_cursor", "the cursor is malformed");
    if !TIME_CURSOR_RE.is_match(s) {
        return Err(bad());
    }
    let (us, id) = s.split_once('_').ok_or_else(bad)?;
    let us: i64 = us.parse().map_err(|_| bad())?;
    let t = DateTime::from_timestamp_micros(us).ok_or_else(bad)?;
    Ok((t, parse(id).map_err(|_| bad())?))
}

pub(super) fn rebuild_err(e: RebuildError) -> ApiError {
    match e {
        RebuildError::InProgress(..) => ApiError::conflict("rebuild_in_progress", e.to_string()),
        RebuildError::Partial { .. } => {
            ApiError::unprocessable("partial_rebuild", e.to_string()).field("from")
        }
        RebuildError::View(e) => ApiError::unavailable("views_unavailable", e.to_string()),
        RebuildError::Bus(e) => ApiError::unavailable("log_unavailable", e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_cursors_round_trip_and_fit_their_pattern() {
        let t = DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap();
        let id = PollId(uuid::Uuid::now_v7());
        let c = encode_time_cursor(t, id);
        assert!(TIME_CURSOR_RE.is_match(&c), "{c}");
        assert_eq!(decode_time_cursor(&c, PollId::parse).unwrap(), (t, id));
        for bad in [
            "",
            "1_x",
            "01_0190a5c4-2b7e-7cc0-8f00-000000000000",
            "1_0190A5C4-2B7E-7CC0-8F00-000000000000",
        ] {
            assert!(decode_time_cursor(bad, PollId::parse).is_err(), "{bad}");
        }
    }
}
