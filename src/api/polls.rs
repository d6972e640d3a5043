//! Poll routes: create, vote, retract, close (ingest) and the poll and
//! by-owner reads (one view query each).

use std::collections::BTreeMap;

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::json::{JsonBody, QueryParams};
use super::{ApiError, AppState, Authed, Token, new_id};
use crate::event::{
    Event, EventData, EventId, PollClosed, PollCreated, PollId, Principal, Question, QuestionId,
    Topic, UserId, Validate, VoteCast, VoteRetracted,
};
use crate::fold::Position;
use crate::fold::poll::{PollState, RecentVoter, Rejection};
use crate::project::polls::VIEW;
use crate::telemetry::names;
use crate::view::OwnerPollRow;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/polls", post(create))
        .route("/v1/polls/{id}", get(read))
        .route("/v1/polls/{id}/votes", post(vote).delete(retract))
        .route("/v1/polls/{id}/close", post(close))
        .route("/v1/users/{id}/polls", get(by_owner))
}

/// `POST /v1/polls`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreatePoll {
    head: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    ends_at: Option<DateTime<Utc>>,
    #[serde(default)]
    anonymous: bool,
    #[serde(default)]
    multiple_choice: bool,
    /// Question texts in display order.
    questions: Vec<String>,
}

/// `POST /v1/polls/{id}/votes`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CastVote {
    question_ids: Vec<QuestionId>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AfterQuery {
    after: Option<String>,
}

/// What an accepted write answers.
#[derive(Debug, Serialize)]
struct Accepted {
    event_id: EventId,
    #[serde(skip_serializing_if = "Option::is_none")]
    poll_id: Option<PollId>,
    /// Pass as `?after=` to read your write.
    token: String,
}

fn poll_id(s: &str) -> Result<PollId, ApiError> {
    PollId::parse(s).map_err(|_| ApiError::not_found("unknown_poll", format!("no poll {s:?}")))
}

async fn append(
    st: &AppState,
    principal: Principal,
    data: EventData,
) -> Result<(EventId, Token), ApiError> {
    let event = Event {
        id: EventId(new_id()),
        time: super::now(),
        principal,
        data,
    };
    event.validate()?;
    let at = st.producer.send(&event).await?;
    metrics::counter!(names::INGEST_EVENTS, "type" => event.data.type_name()).increment(1);
    Ok((event.id, Token::from(&at)))
}

fn accepted(
    event_id: EventId,
    poll: Option<PollId>,
    token: Token,
    location: Option<String>,
) -> Response {
    let mut res = (
        StatusCode::ACCEPTED,
        Json(Accepted {
            event_id,
            poll_id: poll,
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

async fn create(
    State(st): State<AppState>,
    Authed(principal): Authed,
    JsonBody(req): JsonBody<CreatePoll>,
) -> Result<Response, ApiError> {
    let id = PollId(new_id());
    let data = PollCreated {
        poll_id: id,
        head: req.head,
        message: req.message,
        ends_at: req.ends_at,
        anonymous: req.anonymous,
        multiple_choice: req.multiple_choice,
        questions: req
            .questions
            .into_iter()
            .enumerate()
            // A position beyond u16 wraps; validation refuses more than
            // MAX_QUESTIONS anyway, so no such poll is ever appended.
            .map(|(i, text)| Question {
                id: i as QuestionId,
                text,
            })
            .collect(),
    };
    if let Some(end) = data.ends_at
        && end <= Utc::now()
    {
        return Err(ApiError::unprocessable(
            "invalid_field",
            "ends_at must be in the future",
        ));
    }
    let (event_id, token) = append(&st, principal, EventData::PollCreated(data)).await?;
    Ok(accepted(
        event_id,
        Some(id),
        token,
        Some(format!("/v1/polls/{id}")),
    ))
}

/// Reads a poll, waiting (bounded) until the view reflects `after`.
async fn fresh_poll(
    st: &AppState,
    id: PollId,
    after: Option<&str>,
) -> Result<Option<PollState>, ApiError> {
    let after = after.map(Token::decode).transpose()?;
    if let Some(t) = &after
        && t.topic != st.producer.topic(Topic::Polls)
    {
        return Err(ApiError::bad_request(
            "invalid_token",
            "the consistency token is for another topic than polls",
        ));
    }
    let deadline = Instant::now() + st.max_after_wait;
    loop {
        let poll = st.views.poll(id).await?;
        let Some(t) = &after else {
            return Ok(poll);
        };
        let own = poll
            .as_ref()
            .is_some_and(|s| s.position.partition == t.partition && s.position.offset >= t.offset);
        if own
            || st
                .watermarks
                .reached(st.views.as_ref(), VIEW, &t.topic, t.partition, t.offset)
                .await
        {
            return Ok(poll);
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(ApiError::unavailable(
                "not_yet_applied",
                format!(
                    "the view has not applied offset {} of {}/{} yet; retry",
                    t.offset, t.topic, t.partition
                ),
            ));
        }
        let wait = (deadline - now).min(std::time::Duration::from_millis(25));
        tokio::select! {
            _ = st.watermarks.changed() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

async fn open_poll(st: &AppState, id: &str, after: Option<&str>) -> Result<PollState, ApiError> {
    let pid = poll_id(id)?;
    let poll = fresh_poll(st, pid, after)
        .await?
        .ok_or_else(|| ApiError::not_found("unknown_poll", format!("no poll {pid}")))?;
    match poll.is_open_at(Utc::now()) {
        Ok(()) => Ok(poll),
        Err(Rejection::Closed) => Err(ApiError::conflict("poll_closed", "the poll is closed")),
        Err(_) => Err(ApiError::conflict("poll_ended", "the poll has ended")),
    }
}

async fn vote(
    State(st): State<AppState>,
    Path(id): Path<String>,
    QueryParams(q): QueryParams<AfterQuery>,
    Authed(principal): Authed,
    JsonBody(req): JsonBody<CastVote>,
) -> Result<Response, ApiError> {
    let poll = open_poll(&st, &id, q.after.as_deref()).await?;
    let data = VoteCast {
        poll_id: poll.poll_id,
        question_ids: req.question_ids,
    };
    // The ballot's own contract first (empty, a question twice): its reason
    // is more precise than the poll's rules below.
    data.validate()?;
    poll.check_choices(&data.question_ids)
        .map_err(|r| match r {
            Rejection::TooManyChoices => {
                ApiError::unprocessable("too_many_choices", "this poll takes one choice per ballot")
            }
            _ => ApiError::unprocessable("unknown_question", "the poll has no such question"),
        })?;
    let (event_id, token) = append(&st, principal, EventData::VoteCast(data)).await?;
    Ok(accepted(event_id, Some(poll.poll_id), token, None))
}

async fn retract(
    State(st): State<AppState>,
    Path(id): Path<String>,
    QueryParams(q): QueryParams<AfterQuery>,
    Authed(principal): Authed,
) -> Result<Response, ApiError> {
    let poll = open_poll(&st, &id, q.after.as_deref()).await?;
    let (event_id, token) = append(
        &st,
        principal,
        EventData::VoteRetracted(VoteRetracted {
            poll_id: poll.poll_id,
        }),
    )
    .await?;
    Ok(accepted(event_id, Some(poll.poll_id), token, None))
}

async fn close(
    State(st): State<AppState>,
    Path(id): Path<String>,
    QueryParams(q): QueryParams<AfterQuery>,
    Authed(principal): Authed,
) -> Result<Response, ApiError> {
    let pid = poll_id(&id)?;
    let poll = fresh_poll(&st, pid, q.after.as_deref())
        .await?
        .ok_or_else(|| ApiError::not_found("unknown_poll", format!("no poll {pid}")))?;
    if poll.owner.id != principal.id {
        return Err(ApiError::forbidden(
            "not_owner",
            "only the poll's owner can close it",
        ));
    }
    if poll.closed_at.is_some() {
        return Err(ApiError::conflict(
            "poll_closed",
            "the poll is already closed",
        ));
    }
    let (event_id, token) = append(
        &st,
        principal,
        EventData::PollClosed(PollClosed { poll_id: pid }),
    )
    .await?;
    Ok(accepted(event_id, Some(pid), token, None))
}

/// The poll as `GET /v1/polls/{id}` shows it.
#[derive(Debug, Serialize)]
pub struct PollView {
    poll_id: PollId,
    owner: Principal,
    head: String,
    message: String,
    created_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ends_at: Option<DateTime<Utc>>,
    anonymous: bool,
    multiple_choice: bool,
    closed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    closed_at: Option<DateTime<Utc>>,
    questions: Vec<QuestionView>,
    voters: u64,
    recent_voters: Vec<RecentVoter>,
    rejected: BTreeMap<String, u64>,
    version: Position,
}

#[derive(Debug, Serialize)]
struct QuestionView {
    id: QuestionId,
    text: String,
    votes: u64,
}

impl From<PollState> for PollView {
    fn from(s: PollState) -> Self {
        let questions = s
            .questions
            .into_iter()
            .map(|q| QuestionView {
                votes: s
                    .tallies
                    .get(usize::from(q.id))
                    .copied()
                    .unwrap_or_default(),
                id: q.id,
                text: q.text,
            })
            .collect();
        Self {
            poll_id: s.poll_id,
            owner: s.owner,
            head: s.head,
            message: s.message,
            created_at: s.created_at,
            ends_at: s.ends_at,
            anonymous: s.anonymous,
            multiple_choice: s.multiple_choice,
            closed: s.closed_at.is_some(),
            closed_at: s.closed_at,
            questions,
            voters: s.voters,
            recent_voters: if s.anonymous { Vec::new() } else { s.recent },
            rejected: s
                .rejected
                .into_iter()
                .map(|(k, v)| (k.as_str().to_owned(), v))
                .collect(),
            version: s.position,
        }
    }
}

async fn read(
    State(st): State<AppState>,
    Path(id): Path<String>,
    QueryParams(q): QueryParams<AfterQuery>,
) -> Result<Response, ApiError> {
    let pid = poll_id(&id)?;
    let poll = fresh_poll(&st, pid, q.after.as_deref())
        .await?
        .ok_or_else(|| ApiError::not_found("unknown_poll", format!("no poll {pid}")))?;
    Ok(Json(PollView::from(poll)).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PageQuery {
    cursor: Option<String>,
    limit: Option<usize>,
}

#[derive(Debug, Serialize)]
struct OwnerPage {
    items: Vec<OwnerPollRow>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

fn encode_cursor(r: &OwnerPollRow) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!(
        "{}:{}",
        r.created_at.timestamp_micros(),
        r.poll_id
    ))
}

fn decode_cursor(s: &str) -> Result<(DateTime<Utc>, PollId), ApiError> {
    use base64::Engine;
    let bad = || ApiError::bad_request("invalid_cursor", "the cursor is malformed");
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| bad())?;
    let text = String::from_utf8(raw).map_err(|_| bad())?;
    let (us, id) = text.split_once(':').ok_or_else(bad)?;
    let us: i64 = us.parse().map_err(|_| bad())?;
    let t = DateTime::from_timestamp_micros(us).ok_or_else(bad)?;
    Ok((t, PollId::parse(id).map_err(|_| bad())?))
}

async fn by_owner(
    State(st): State<AppState>,
    Path(id): Path<String>,
    QueryParams(q): QueryParams<PageQuery>,
) -> Result<Response, ApiError> {
    let owner = UserId::parse(&id).map_err(|e| ApiError::bad_request("invalid_user", e.reason))?;
    let limit = q.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_limit",
            "limit must be between 1 and 100",
        ));
    }
    let before = q.cursor.as_deref().map(decode_cursor).transpose()?;
    let items = st.views.polls_by_owner(&owner, before, limit).await?;
    let next_cursor = (items.len() == limit)
        .then(|| items.last().map(encode_cursor))
        .flatten();
    Ok(Json(OwnerPage { items, next_cursor }).into_response())
}
