//! Session cards and upload job status: the replacement for polling a task
//! result backend. One view query each; `?after=` takes a token of the
//! uploads or completions topic.

use aide::axum::ApiRouter;
use aide::axum::routing::{get_with, post_with};
use axum::Json;
use axum::extract::{Path, State};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use chrono::{DateTime, Utc};

use super::access::{Grant, Links};
use super::auth::{Authed, Reader, SignedIn};
use super::common::{DegradedNote, Etagged, IfNoneMatch, fresh, page_limit};
use super::contract::op;
use super::json::{Int, QueryParams};
use super::token::{AFTER_DOC, Token};
use super::{ApiError, AppState};
use crate::event::{ID_MAX, ModelVersion, SessionKey, Style, TEXT_ID, Timings, UploadId, UserId};
use crate::fold::cards::{Card, Status};
use crate::view::cards::VIEW;

pub(super) fn routes() -> ApiRouter<AppState> {
    ApiRouter::new()
        .api_route(
            "/v1/sessions",
            get_with(list_sessions, |t| {
                op(
                    t,
                    "listSessions",
                    "cards",
                    "The caller's sessions",
                    "The caller's sessions that have an upload, newest minted first, each with \
                     its latest upload (a signed link to its input image) and a share link to \
                     open it with (what `POST /v1/sessions/{key}/share` answers). Paged: pass \
                     `next_cursor` as `cursor`. `?after` takes a token of the uploads topic, \
                     such as an upload's. One view query.",
                    &[400, 409, 503],
                )
            })
            .post_with(create_session, |t| {
                op(
                    t,
                    "createSession",
                    "cards",
                    "A new session of the caller's",
                    "Mints a session key that names the caller as its owner without saying \
                     who (an HMAC of a random nonce and the caller's id under \
                     `auth.link_key`); nothing is stored until the first upload. Only the \
                     owner uploads into it; only the owner and administrators read it, or \
                     whoever holds a share link. The answer carries a share link too.",
                    &[],
                )
            }),
        )
        .api_route(
            "/v1/me",
            get_with(me, |t| {
                op(
                    t,
                    "readMe",
                    "cards",
                    "Who the caller is",
                    "The principal a bearer token names (its id, and the display name and \
                     avatar from `auth.name_claim` and `auth.avatar_claim`) and whether it is \
                     an administrator: what a client shows once signed in.",
                    &[],
                )
            }),
        )
        .api_route(
            "/v1/sessions/{key}/share",
            post_with(share_session, |t| {
                op(
                    t,
                    "shareSession",
                    "cards",
                    "A share link of one of the caller's sessions",
                    "Signed over the session key and an expiry (`auth.link_ttl_secs`, on a \
                     grid: one to two periods): whoever holds it reads the session's cards \
                     and its uploads, and follows them on the stream, until it expires. The \
                     owner's only; 404 `unknown_session` for everyone else.",
                    &[400, 404],
                )
            }),
        )
        .api_route(
            "/v1/sessions/{key}/cards",
            get_with(cards, |t| {
                op(
                    t,
                    "readSessionCards",
                    "cards",
                    "A session's cards",
                    "Slots 1 to 3 with each upload's job status (empty slots are absent), \
                     each with signed, expiring links to its images. Its owner's and \
                     administrators' (bearer token), or anyone's with a share link of the \
                     session (`exp` and `sig`, from `POST /v1/sessions/{key}/share`); 404 \
                     `unknown_session` for everyone else. `?after` takes a token of the \
                     uploads or completions topic. One view query.",
                    &[404, 409, 503],
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
                    "Its session's owner's and administrators', or anyone's with a share link \
                     of its session (`exp`, `sig`); 404 `unknown_upload` for everyone else. \
                     `?after` takes a token of the uploads or completions topic. One view \
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

/// `?after=` of the cards view, and a share link's grant.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "CardsAfter")]
struct AfterQuery {
    #[schemars(pattern(cards_token()), description = AFTER_DOC)]
    after: Option<String>,
    /// A share link's expiry (seconds since the epoch).
    #[schemars(pattern(EXP_PATTERN))]
    exp: Option<String>,
    /// A share link's signature.
    #[schemars(pattern(SIG_PATTERN))]
    sig: Option<String>,
}

/// A link's expiry: seconds since the epoch.
pub(super) const EXP_PATTERN: &str = "^[0-9]{1,19}$";
/// A link's signature: base64url.
pub(super) const SIG_PATTERN: &str = "^[A-Za-z0-9_-]{1,64}$";

/// The grant of `exp` and `sig` when both are given; 400 `invalid_link`
/// when either is malformed.
pub(super) fn grant(exp: Option<String>, sig: Option<String>) -> Result<Option<Grant>, ApiError> {
    let bad = |what: &str| ApiError::bad_request("invalid_link", format!("malformed {what}"));
    let exp = exp
        .map(|e| {
            (e.len() <= 19 && e.bytes().all(|b| b.is_ascii_digit()))
                .then(|| e.parse::<u64>().ok())
                .flatten()
                .ok_or_else(|| bad("exp: seconds since the epoch"))
        })
        .transpose()?;
    if let Some(s) = &sig
        && !((1..=64).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
    {
        return Err(bad("sig: base64url"));
    }
    Ok(exp.zip(sig).map(|(exp, sig)| Grant { exp, sig }))
}

/// Whether `reader` (or the holder of `grant`) may read `key`: its owner,
/// an administrator, or a share link's holder.
pub(super) fn may_read(
    links: &Links,
    reader: &Reader,
    key: &SessionKey,
    grant: Option<&Grant>,
) -> bool {
    reader.admin()
        || reader.user().is_some_and(|u| links.owns(u, key))
        || grant.is_some_and(|g| links.shared(key, g))
}

/// A card as the API answers it: the job's status and signed, expiring
/// links to its images; where the images lie is never said.
#[derive(Clone, Debug, Default, PartialEq, Serialize, JsonSchema)]
#[schemars(rename = "Card")]
pub(super) struct CardView {
    /// The upload shown in this slot.
    #[serde(skip_serializing_if = "Option::is_none")]
    upload_id: Option<UploadId>,
    /// Its slot.
    #[serde(skip_serializing_if = "Option::is_none")]
    slot: Option<u8>,
    /// Its session.
    #[serde(skip_serializing_if = "Option::is_none")]
    session_key: Option<SessionKey>,
    /// Requested style.
    #[serde(skip_serializing_if = "Option::is_none")]
    style: Option<Style>,
    /// The uploaded image: a signed link that expires (`auth.link_ttl_secs`).
    #[serde(skip_serializing_if = "Option::is_none")]
    input_url: Option<String>,
    /// Input media type.
    #[serde(skip_serializing_if = "Option::is_none")]
    content_type: Option<String>,
    /// Input width.
    #[serde(skip_serializing_if = "Option::is_none")]
    width: Option<u32>,
    /// Input height.
    #[serde(skip_serializing_if = "Option::is_none")]
    height: Option<u32>,
    /// Input size.
    #[serde(skip_serializing_if = "Option::is_none")]
    bytes: Option<u64>,
    /// When the upload was accepted.
    #[serde(skip_serializing_if = "Option::is_none")]
    received_at: Option<DateTime<Utc>>,
    /// Where the job stands.
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<Status>,
    /// When a worker picked it up.
    #[serde(skip_serializing_if = "Option::is_none")]
    started_at: Option<DateTime<Utc>>,
    /// When it completed or failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    finished_at: Option<DateTime<Utc>>,
    /// Model version that ran (or runs) it.
    #[serde(skip_serializing_if = "Option::is_none")]
    model_version: Option<ModelVersion>,
    /// The stylized output, once there is one: a signed link that expires.
    #[serde(skip_serializing_if = "Option::is_none")]
    output_url: Option<String>,
    /// Stage timings.
    #[serde(skip_serializing_if = "Option::is_none")]
    timings: Option<Timings>,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    /// Whether retrying may help.
    #[serde(skip_serializing_if = "Option::is_none")]
    retriable: Option<bool>,
}

impl CardView {
    pub(super) fn new(c: Card, links: &Links) -> Self {
        let url = |key: &Option<String>, variant| {
            c.upload_id
                .filter(|_| key.is_some())
                .map(|id| links.image_url(id, variant))
        };
        Self {
            input_url: url(&c.input_key, "input"),
            output_url: url(&c.output_key, "output"),
            upload_id: c.upload_id,
            slot: c.slot,
            session_key: c.session_key,
            style: c.style,
            content_type: c.content_type,
            width: c.width,
            height: c.height,
            bytes: c.bytes,
            received_at: c.received_at,
            status: c.status,
            started_at: c.started_at,
            finished_at: c.finished_at,
            model_version: c.model_version,
            timings: c.timings,
            error: c.error,
            retriable: c.retriable,
        }
    }
}

/// A session in a path.
#[derive(Debug, Deserialize, JsonSchema)]
struct SessionPath {
    /// The session key (malformed: 400 `invalid_session`).
    #[schemars(length(min = 1, max = ID_MAX), pattern(TEXT_ID))]
    key: String,
}

/// A share link of a session: its grant and the URLs that use it.
#[derive(Debug, Serialize, JsonSchema)]
#[schemars(rename = "SessionLink")]
struct SessionLink {
    /// The session.
    session_key: SessionKey,
    /// When the link stops working (seconds since the epoch).
    exp: u64,
    /// The link's signature.
    sig: String,
    /// The session's cards, for the link's holder.
    cards_url: String,
    /// The session's live changes, for the link's holder.
    stream_url: String,
    /// The dashboard's gallery of the session.
    dashboard_url: String,
}

impl SessionLink {
    fn new(links: &Links, key: SessionKey) -> Self {
        let g = links.share(&key, None);
        let q = format!("exp={}&sig={}", g.exp, g.sig);
        Self {
            cards_url: format!("/v1/sessions/{}/cards?{q}", key.as_str()),
            stream_url: format!("/v1/stream?session={}&{q}", key.as_str()),
            dashboard_url: format!("/?session={}&{q}", key.as_str()),
            session_key: key,
            exp: g.exp,
            sig: g.sig,
        }
    }
}

/// A page of the caller's sessions.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct SessionsQuery {
    /// Where the page starts: the previous page's `next_cursor` (the last
    /// session's key; malformed: 400 `invalid_cursor`).
    #[schemars(length(min = 1, max = ID_MAX), pattern(TEXT_ID))]
    cursor: Option<String>,
    /// Page size (otherwise: 400 `invalid_limit`).
    #[schemars(range(min = 1, max = 100), extend("default" = 20))]
    limit: Option<Int<usize>>,
    #[schemars(pattern(cards_token()), description = AFTER_DOC)]
    after: Option<String>,
}

/// One of the caller's sessions.
#[derive(Debug, Serialize, JsonSchema)]
#[schemars(rename = "SessionSummary")]
struct SessionSummary {
    /// The session.
    session_key: SessionKey,
    /// When its key was minted (absent for keys older than that record).
    #[serde(skip_serializing_if = "Option::is_none")]
    minted_at: Option<DateTime<Utc>>,
    /// Its latest upload.
    last_upload_id: UploadId,
    /// That upload's style.
    last_style: Style,
    /// When that upload was accepted.
    last_received_at: DateTime<Utc>,
    /// That upload's input image: a signed link that expires.
    last_input_url: String,
    /// A share link of the session.
    link: SessionLink,
}

/// The caller's sessions, newest minted first.
#[derive(Debug, Serialize, JsonSchema)]
#[schemars(rename = "SessionList")]
struct SessionList {
    /// The sessions.
    sessions: Vec<SessionSummary>,
    /// Pass as `cursor` for the next page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

async fn list_sessions(
    State(st): State<AppState>,
    Authed(caller): Authed,
    QueryParams(q): QueryParams<SessionsQuery>,
    inm: IfNoneMatch,
) -> Result<Etagged<SessionList>, ApiError> {
    let limit = page_limit(q.limit.map(|l| l.0))?;
    let before = q
        .cursor
        .as_deref()
        .map(|c| {
            SessionKey::parse(c)
                .map_err(|_| ApiError::bad_request("invalid_cursor", "the cursor is malformed"))
        })
        .transpose()?;
    fresh(&st, q.after.as_deref(), VIEW).await?;
    let rows = st
        .views
        .cards()
        .await?
        .sessions_of(&caller.id, before.as_ref(), limit)
        .await?;
    let next_cursor = (rows.len() == limit)
        .then(|| rows.last().map(|r| r.session_key.to_string()))
        .flatten();
    let sessions = rows
        .into_iter()
        .map(|r| SessionSummary {
            minted_at: Some(r.session_key.minted_ms())
                .filter(|&ms| ms > 0)
                .and_then(DateTime::from_timestamp_millis),
            last_input_url: st.links.image_url(r.last_upload_id, "input"),
            link: SessionLink::new(&st.links, r.session_key.clone()),
            session_key: r.session_key,
            last_upload_id: r.last_upload_id,
            last_style: r.last_style,
            last_received_at: r.last_received_at,
        })
        .collect();
    Ok(Etagged::new(
        inm,
        SessionList {
            sessions,
            next_cursor,
        },
    ))
}

/// The signed-in caller.
#[derive(Debug, Serialize, JsonSchema)]
#[schemars(rename = "Me")]
struct Me {
    /// The user id (a token's subject, or an API key's principal).
    id: UserId,
    /// Display name.
    name: String,
    /// Avatar URL.
    #[serde(skip_serializing_if = "Option::is_none")]
    avatar_url: Option<String>,
    /// Whether the caller may use the administrators' routes.
    admin: bool,
}

async fn me(SignedIn(c): SignedIn) -> Json<Me> {
    Json(Me {
        id: c.principal.id,
        name: c.principal.name,
        avatar_url: c.principal.avatar_url,
        admin: c.admin,
    })
}

async fn create_session(State(st): State<AppState>, Authed(p): Authed) -> Json<SessionLink> {
    let key = st.links.mint_session(&p.id);
    Json(SessionLink::new(&st.links, key))
}

async fn share_session(
    State(st): State<AppState>,
    Authed(caller): Authed,
    Path(p): Path<SessionPath>,
) -> Result<Json<SessionLink>, ApiError> {
    let key = SessionKey::parse(&p.key)
        .map_err(|e| ApiError::bad_request("invalid_session", e.reason))?;
    // A share link is a grant: only the owner gives it.
    if !st.links.owns(&caller.id, &key) {
        return Err(unknown_session(&key));
    }
    Ok(Json(SessionLink::new(&st.links, key)))
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
    cards: Vec<CardView>,
    /// Present when the store refused to write one of this session's
    /// events for good: the cards lack it until its dead letter is
    /// replayed.
    #[serde(skip_serializing_if = "Option::is_none")]
    degraded: Option<DegradedNote>,
}

/// Reads a session's cards (after `?after`), for a reader allowed to.
pub(super) async fn session_cards(
    st: &AppState,
    key: SessionKey,
    after: Option<&str>,
) -> Result<Cards, ApiError> {
    fresh(st, after, VIEW).await?;
    let cards = st.views.cards().await?.cards(&key).await?;
    let cards = cards
        .into_iter()
        .map(|c| CardView::new(c, &st.links))
        .collect();
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

/// 404 for a session the caller may not read (whether it exists is not
/// said).
pub(super) fn unknown_session(key: &SessionKey) -> ApiError {
    ApiError::not_found(
        "unknown_session",
        format!(
            "no session {:?} of yours (sessions are their owners'; sign in, or use a share link)",
            key.as_str()
        ),
    )
}

async fn cards(
    State(st): State<AppState>,
    reader: Reader,
    Path(p): Path<SessionPath>,
    QueryParams(q): QueryParams<AfterQuery>,
    inm: IfNoneMatch,
) -> Result<Etagged<Cards>, ApiError> {
    let key = SessionKey::parse(&p.key)
        .map_err(|e| ApiError::bad_request("invalid_session", e.reason))?;
    if !may_read(&st.links, &reader, &key, grant(q.exp, q.sig)?.as_ref()) {
        return Err(unknown_session(&key));
    }
    let cards = session_cards(&st, key, q.after.as_deref()).await?;
    Ok(Etagged::new(inm, cards))
}

/// 404 for an upload that is unknown or not the caller's.
pub(super) fn unknown_upload(id: &str) -> ApiError {
    ApiError::not_found("unknown_upload", format!("no upload {id:?} of yours"))
}

/// Reads one upload's status row (after `?after`), if `allowed` to see its
/// session; 404 when unknown or not allowed alike.
pub(super) async fn upload_card(
    st: &AppState,
    id: UploadId,
    after: Option<&str>,
    allowed: impl FnOnce(&SessionKey) -> bool,
) -> Result<Card, ApiError> {
    fresh(st, after, VIEW).await?;
    st.views
        .cards()
        .await?
        .upload(id)
        .await?
        .filter(|c| c.session_key.as_ref().is_some_and(allowed))
        .ok_or_else(|| unknown_upload(&id.to_string()))
}

async fn upload(
    State(st): State<AppState>,
    reader: Reader,
    Path(p): Path<UploadPath>,
    QueryParams(q): QueryParams<AfterQuery>,
    inm: IfNoneMatch,
) -> Result<Etagged<CardView>, ApiError> {
    let id = UploadId::parse(&p.id).map_err(|_| unknown_upload(&p.id))?;
    let g = grant(q.exp, q.sig)?;
    let card = upload_card(&st, id, q.after.as_deref(), |k| {
        may_read(&st.links, &reader, k, g.as_ref())
    })
    .await?;
    Ok(Etagged::new(inm, CardView::new(card, &st.links)))
}
