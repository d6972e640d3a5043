//! Poll routes: create, vote, retract, close (ingest) and the poll and
//! by-owner reads (one view query each).

use std::collections::BTreeMap;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::common::{
    AfterQuery, accepted, append, decode_text_cursor, decode_time_cursor, encode_text_cursor,
    encode_time_cursor, etagged, fresh, fresh_row, page_limit,
};
use super::json::{JsonBody, QueryParams};
use super::{ApiError, AppState, Authed};
use crate::edge::new_id;
use crate::event::{
    EventData, PollClosed, PollCreated, PollId, Principal, Question, QuestionId, UserId, Validate,
    VoteCast, VoteRetracted,
};
use crate::fold::Position;
use crate::fold::poll::{PollState, RecentVoter, Rejection};
use crate::view::polls::VIEW;
use crate::view::{OwnerPollRow, VoterRow};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/polls", post(create))
        .route("/v1/polls/{id}", get(read))
        .route("/v1/polls/{id}/votes", post(vote).delete(retract))
        .route("/v1/polls/{id}/close", post(close))
        .route("/v1/polls/{id}/questions/{q}/voters", get(voters))
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

fn poll_id(s: &str) -> Result<PollId, ApiError> {
    PollId::parse(s).map_err(|_| ApiError::not_found("unknown_poll", format!("no poll {s:?}")))
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
        Some(("poll_id", id.to_string())),
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
    let store = st.views.polls().await?;
    fresh_row(st, after, VIEW, || store.poll(id), |s| s.position).await
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
    Ok(accepted(
        event_id,
        Some(("poll_id", poll.poll_id.to_string())),
        token,
        None,
    ))
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
    Ok(accepted(
        event_id,
        Some(("poll_id", poll.poll_id.to_string())),
        token,
        None,
    ))
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
    Ok(accepted(
        event_id,
        Some(("poll_id", pid.to_string())),
        token,
        None,
    ))
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
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let pid = poll_id(&id)?;
    let poll = fresh_poll(&st, pid, q.after.as_deref())
        .await?
        .ok_or_else(|| ApiError::not_found("unknown_poll", format!("no poll {pid}")))?;
    Ok(etagged(&headers, &PollView::from(poll)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PageQuery {
    pub(super) cursor: Option<String>,
    pub(super) limit: Option<usize>,
    pub(super) after: Option<String>,
}

#[derive(Debug, Serialize)]
struct OwnerPage {
    items: Vec<OwnerPollRow>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

async fn by_owner(
    State(st): State<AppState>,
    Path(id): Path<String>,
    QueryParams(q): QueryParams<PageQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let owner = UserId::parse(&id).map_err(|e| ApiError::bad_request("invalid_user", e.reason))?;
    let limit = page_limit(q.limit)?;
    let before = q
        .cursor
        .as_deref()
        .map(|c| decode_time_cursor(c, PollId::parse))
        .transpose()?;
    fresh(&st, q.after.as_deref(), VIEW).await?;
    let items = st
        .views
        .polls()
        .await?
        .polls_by_owner(&owner, before, limit)
        .await?;
    let next_cursor = (items.len() == limit)
        .then(|| {
            items
                .last()
                .map(|r| encode_time_cursor(r.created_at, r.poll_id))
        })
        .flatten();
    Ok(etagged(&headers, &OwnerPage { items, next_cursor }))
}

#[derive(Debug, Serialize)]
struct VotersPage {
    poll_id: PollId,
    question_id: QuestionId,
    voters: Vec<VoterRow>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

/// `GET /v1/polls/{id}/questions/{q}/voters`: one question's voters by id,
/// paged; one query. Anonymous polls have none stored, so none are listed.
async fn voters(
    State(st): State<AppState>,
    Path((id, q)): Path<(String, String)>,
    QueryParams(page): QueryParams<PageQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let pid = poll_id(&id)?;
    let question: QuestionId = q
        .parse()
        .ok()
        .filter(|&n| usize::from(n) < crate::event::MAX_QUESTIONS)
        .ok_or_else(|| ApiError::not_found("unknown_question", format!("no question {q:?}")))?;
    let limit = page_limit(page.limit)?;
    let after = page.cursor.as_deref().map(decode_text_cursor).transpose()?;
    fresh(&st, page.after.as_deref(), VIEW).await?;
    let voters = st
        .views
        .polls()
        .await?
        .question_voters(pid, question, after.as_deref(), limit)
        .await?;
    let next_cursor = (voters.len() == limit)
        .then(|| voters.last().map(|v| encode_text_cursor(v.voter.as_str())))
        .flatten();
    Ok(etagged(
        &headers,
        &VotersPage {
            poll_id: pid,
            question_id: question,
            voters,
            next_cursor,
        },
    ))
}
