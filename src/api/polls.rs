//! Poll routes: create, vote, retract, close (ingest) and the poll and
//! by-owner reads (one view query each).

use std::collections::BTreeMap;

use aide::axum::ApiRouter;
use aide::axum::routing::{get_with, post_with};
use axum::extract::{Path, State};
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{
    Accepted, DegradedNote, Etagged, IfNoneMatch, PollRef, TIME_CURSOR, append, decode_time_cursor,
    encode_time_cursor, fresh, fresh_row, page_limit,
};
use super::contract::op;
use super::json::{Int, JsonBody, QueryParams};
use super::token::{AFTER_DOC, Token};
use super::{ApiError, AppState, Authed};
use crate::edge::new_id;
use crate::event::{
    EventData, ID_MAX, LINE_MAX, MAX_QUESTIONS, MESSAGE_MAX, MIN_QUESTIONS, PollClosed,
    PollCreated, PollId, Principal, Question, QuestionId, TEXT, TEXT_ID, Topic, UserId, Validate,
    VoteCast, VoteRetracted,
};
use crate::fold::Position;
use crate::fold::poll::{PollState, RecentVoter, Rejection};
use crate::view::polls::VIEW;
use crate::view::{OwnerPollRow, VoterRow};

pub(super) fn routes() -> ApiRouter<AppState> {
    ApiRouter::new()
        .api_route(
            "/v1/polls",
            post_with(create, |t| {
                op(
                    t,
                    "createPoll",
                    "polls",
                    "Create a poll",
                    "Appends `PollCreated` with a new poll id; the caller owns the poll. \
                     `ends_at` must be in the future (otherwise 422 `invalid_field`).",
                    &[503],
                )
            }),
        )
        .api_route(
            "/v1/polls/{id}",
            get_with(read, |t| {
                op(
                    t,
                    "readPoll",
                    "polls",
                    "Read a poll",
                    "Header, questions in order with tallies, voters, recent voters and \
                     rejections: one view query.",
                    &[404, 409, 503],
                )
            }),
        )
        .api_route(
            "/v1/polls/{id}/votes",
            post_with(vote, |t| {
                op(
                    t,
                    "castVote",
                    "polls",
                    "Cast or replace your ballot",
                    "Appends `VoteCast` for the caller. A closed poll is 409 `poll_closed`, an \
                     ended one 409 `poll_ended`; several choices on a single-choice poll are \
                     422 `too_many_choices`, a question the poll does not have 422 \
                     `unknown_question`.",
                    &[404, 409, 503],
                )
            })
            .delete_with(retract, |t| {
                op(
                    t,
                    "retractVote",
                    "polls",
                    "Retract your ballot",
                    "Appends `VoteRetracted` for the caller; a retraction without a ballot is \
                     decided by the fold and counted in the poll's `rejected`.",
                    &[404, 409, 503],
                )
            }),
        )
        .api_route(
            "/v1/polls/{id}/close",
            post_with(close, |t| {
                op(
                    t,
                    "closePoll",
                    "polls",
                    "Close a poll (owner only)",
                    "Appends `PollClosed`; someone else is 403 `not_owner`, a closed poll 409 \
                     `poll_closed`.",
                    &[403, 404, 409, 503],
                )
            }),
        )
        .api_route(
            "/v1/polls/{id}/questions/{q}/voters",
            get_with(voters, |t| {
                op(
                    t,
                    "listQuestionVoters",
                    "polls",
                    "One question's voters, by user id",
                    "Cursor-paged, one view query. Anonymous polls store no voters, so none \
                     are listed.",
                    &[404, 409, 503],
                )
            }),
        )
        .api_route(
            "/v1/users/{id}/polls",
            get_with(by_owner, |t| {
                op(
                    t,
                    "listPollsByOwner",
                    "polls",
                    "An owner's polls, newest first",
                    "Cursor-paged, one view query.",
                    &[409, 503],
                )
            }),
        )
}

/// `POST /v1/polls`: a new poll.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct CreatePoll {
    /// The headline.
    #[schemars(length(min = 1, max = LINE_MAX), pattern(TEXT))]
    head: String,
    /// A longer description.
    #[serde(default)]
    #[schemars(length(max = MESSAGE_MAX), pattern(TEXT))]
    message: String,
    /// Votes at or after this time are refused; absent or `null`: open-ended.
    #[serde(default)]
    ends_at: Option<DateTime<Utc>>,
    /// Voters are never stored readable.
    #[serde(default)]
    anonymous: bool,
    /// A ballot may choose several questions.
    #[serde(default)]
    multiple_choice: bool,
    /// The questions' texts in display order; a question's id is its
    /// position.
    #[schemars(length(min = MIN_QUESTIONS, max = MAX_QUESTIONS), inner(length(min = 1, max = LINE_MAX), pattern(TEXT)))]
    questions: Vec<String>,
}

/// `POST /v1/polls/{id}/votes`: a ballot.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct CastVote {
    /// The chosen questions' ids: one, or several on a multiple-choice poll.
    #[schemars(length(min = 1, max = MAX_QUESTIONS), inner(range(max = 19)))]
    #[schemars(extend("uniqueItems" = true))]
    question_ids: Vec<Int<QuestionId>>,
}

/// A poll in a path.
#[derive(Debug, Deserialize, JsonSchema)]
struct PollPath {
    /// The poll's id (unknown or malformed: 404 `unknown_poll`).
    #[schemars(with = "uuid::Uuid")]
    id: String,
}

/// A question of a poll in a path.
#[derive(Debug, Deserialize, JsonSchema)]
struct QuestionPath {
    /// The poll's id (unknown or malformed: 404 `unknown_poll`).
    #[schemars(with = "uuid::Uuid")]
    id: String,
    /// The question's id, its position in the poll (out of range: 404
    /// `unknown_question`).
    #[schemars(with = "u16", range(max = 19))]
    q: String,
}

/// An owner in a path.
#[derive(Debug, Deserialize, JsonSchema)]
struct OwnerPath {
    /// The owner's user id (malformed: 400 `invalid_user`).
    #[schemars(length(min = 1, max = ID_MAX), pattern(TEXT_ID))]
    id: String,
}

fn poll_id(s: &str) -> Result<PollId, ApiError> {
    PollId::parse(s).map_err(|_| ApiError::not_found("unknown_poll", format!("no poll {s:?}")))
}

async fn create(
    State(st): State<AppState>,
    Authed(principal): Authed,
    JsonBody(req): JsonBody<CreatePoll>,
) -> Result<Accepted<PollRef>, ApiError> {
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
    Ok(Accepted::new(event_id, PollRef { poll_id: id }, token).at(format!("/v1/polls/{id}")))
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
    Path(p): Path<PollPath>,
    QueryParams(q): QueryParams<AfterQuery>,
    Authed(principal): Authed,
    JsonBody(req): JsonBody<CastVote>,
) -> Result<Accepted<PollRef>, ApiError> {
    let poll = open_poll(&st, &p.id, q.after.as_deref()).await?;
    let data = VoteCast {
        poll_id: poll.poll_id,
        question_ids: req.question_ids.into_iter().map(|q| q.0).collect(),
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
    Ok(Accepted::new(
        event_id,
        PollRef {
            poll_id: poll.poll_id,
        },
        token,
    ))
}

async fn retract(
    State(st): State<AppState>,
    Path(p): Path<PollPath>,
    QueryParams(q): QueryParams<AfterQuery>,
    Authed(principal): Authed,
) -> Result<Accepted<PollRef>, ApiError> {
    let poll = open_poll(&st, &p.id, q.after.as_deref()).await?;
    let (event_id, token) = append(
        &st,
        principal,
        EventData::VoteRetracted(VoteRetracted {
            poll_id: poll.poll_id,
        }),
    )
    .await?;
    Ok(Accepted::new(
        event_id,
        PollRef {
            poll_id: poll.poll_id,
        },
        token,
    ))
}

async fn close(
    State(st): State<AppState>,
    Path(p): Path<PollPath>,
    QueryParams(q): QueryParams<AfterQuery>,
    Authed(principal): Authed,
) -> Result<Accepted<PollRef>, ApiError> {
    let pid = poll_id(&p.id)?;
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
    Ok(Accepted::new(event_id, PollRef { poll_id: pid }, token))
}

/// The poll as `GET /v1/polls/{id}` shows it.
#[derive(Debug, Serialize, JsonSchema)]
#[schemars(rename = "Poll")]
pub struct PollView {
    /// The poll.
    poll_id: PollId,
    /// Who created it (as they were then).
    owner: Principal,
    /// The headline.
    head: String,
    /// The description.
    message: String,
    /// When it was created.
    created_at: DateTime<Utc>,
    /// When it ends, if it does.
    #[serde(skip_serializing_if = "Option::is_none")]
    ends_at: Option<DateTime<Utc>>,
    /// Voters are not stored readable.
    anonymous: bool,
    /// Ballots may choose several questions.
    multiple_choice: bool,
    /// The owner closed it.
    closed: bool,
    /// When the owner closed it.
    #[serde(skip_serializing_if = "Option::is_none")]
    closed_at: Option<DateTime<Utc>>,
    /// The questions in display order, with their tallies.
    questions: Vec<QuestionView>,
    /// Voters with a ballot.
    voters: u64,
    /// The most recent voters, newest first (none for anonymous polls).
    recent_voters: Vec<RecentVoter>,
    /// Refused events, by reason.
    rejected: BTreeMap<String, u64>,
    /// The log position this row reflects.
    version: Position,
    /// Present when the store refused to write one of this poll's events
    /// for good: the row lacks it until its dead letter is replayed.
    #[serde(skip_serializing_if = "Option::is_none")]
    degraded: Option<DegradedNote>,
}

/// A question with its tally.
#[derive(Debug, Serialize, JsonSchema)]
#[schemars(rename = "PollQuestion")]
struct QuestionView {
    /// Its id (its position).
    id: QuestionId,
    /// Its text.
    text: String,
    /// Ballots that chose it.
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
            degraded: None,
        }
    }
}

async fn read(
    State(st): State<AppState>,
    Path(p): Path<PollPath>,
    QueryParams(q): QueryParams<AfterQuery>,
    inm: IfNoneMatch,
) -> Result<Etagged<PollView>, ApiError> {
    let pid = poll_id(&p.id)?;
    let poll = fresh_poll(&st, pid, q.after.as_deref())
        .await?
        .ok_or_else(|| ApiError::not_found("unknown_poll", format!("no poll {pid}")))?;
    let mut view = PollView::from(poll);
    view.degraded = st
        .degraded
        .of(&st.views, VIEW, &pid.to_string())
        .await
        .map(DegradedNote::from);
    Ok(Etagged::new(inm, view))
}

/// A page of an owner's polls.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct OwnerQuery {
    /// Where the page starts: the previous page's `next_cursor` (malformed:
    /// 400 `invalid_cursor`).
    #[schemars(pattern(TIME_CURSOR))]
    cursor: Option<String>,
    /// Page size (otherwise: 400 `invalid_limit`).
    #[schemars(range(min = 1, max = 100), extend("default" = 20))]
    limit: Option<Int<usize>>,
    #[schemars(pattern(polls_token()), description = AFTER_DOC)]
    after: Option<String>,
}

/// A page of one question's voters.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct VotersQuery {
    /// Where the page starts: the previous page's `next_cursor` (the last
    /// voter's id).
    #[schemars(length(min = 1, max = ID_MAX), pattern(TEXT_ID))]
    cursor: Option<String>,
    /// Page size (otherwise: 400 `invalid_limit`).
    #[schemars(range(min = 1, max = 100), extend("default" = 20))]
    limit: Option<Int<usize>>,
    #[schemars(pattern(polls_token()), description = AFTER_DOC)]
    after: Option<String>,
}

fn polls_token() -> String {
    Token::pattern(&[Topic::Polls])
}

/// `?after=` of the polls view.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "PollsAfter")]
struct AfterQuery {
    #[schemars(pattern(polls_token()), description = AFTER_DOC)]
    after: Option<String>,
}

/// An owner's polls, newest first.
#[derive(Debug, Serialize, JsonSchema)]
struct OwnerPollPage {
    /// The polls.
    items: Vec<OwnerPollRow>,
    /// Pass as `cursor` for the next page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

async fn by_owner(
    State(st): State<AppState>,
    Path(p): Path<OwnerPath>,
    QueryParams(q): QueryParams<OwnerQuery>,
    inm: IfNoneMatch,
) -> Result<Etagged<OwnerPollPage>, ApiError> {
    let owner =
        UserId::parse(&p.id).map_err(|e| ApiError::bad_request("invalid_user", e.reason))?;
    let limit = page_limit(q.limit.map(|l| l.0))?;
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
    Ok(Etagged::new(inm, OwnerPollPage { items, next_cursor }))
}

/// One question's voters, by user id.
#[derive(Debug, Serialize, JsonSchema)]
struct VotersPage {
    /// The poll.
    poll_id: PollId,
    /// The question.
    question_id: QuestionId,
    /// Its voters.
    voters: Vec<VoterRow>,
    /// Pass as `cursor` for the next page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

/// `GET /v1/polls/{id}/questions/{q}/voters`: one question's voters by id,
/// paged; one query. Anonymous polls have none stored, so none are listed.
async fn voters(
    State(st): State<AppState>,
    Path(p): Path<QuestionPath>,
    QueryParams(page): QueryParams<VotersQuery>,
    inm: IfNoneMatch,
) -> Result<Etagged<VotersPage>, ApiError> {
    let pid = poll_id(&p.id)?;
    let question: QuestionId = p
        .q
        .parse()
        .ok()
        .filter(|&n| usize::from(n) < MAX_QUESTIONS)
        .ok_or_else(|| ApiError::not_found("unknown_question", format!("no question {:?}", p.q)))?;
    let limit = page_limit(page.limit.map(|l| l.0))?;
    let after = page
        .cursor
        .as_deref()
        .map(|c| {
            UserId::parse(c)
                .map_err(|_| ApiError::bad_request("invalid_cursor", "the cursor is malformed"))
        })
        .transpose()?;
    fresh(&st, page.after.as_deref(), VIEW).await?;
    let voters = st
        .views
        .polls()
        .await?
        .question_voters(pid, question, after.as_ref().map(UserId::as_str), limit)
        .await?;
    let next_cursor = (voters.len() == limit)
        .then(|| voters.last().map(|v| v.voter.to_string()))
        .flatten();
    Ok(Etagged::new(
        inm,
        VotersPage {
            poll_id: pid,
            question_id: question,
            voters,
            next_cursor,
        },
    ))
}
