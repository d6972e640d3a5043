//! `GET /v1/stream`: live view changes as Server-Sent Events, so dashboards
//! need not poll. Filters: `poll`, `session`, `upload` (ids) and `kind`
//! (`post`, `game`, `team` or `all`); several may be given, none means
//! everything. A filtered stream starts with the current state of what it
//! names. Each event's `id` is the consistency token of the change.
//!
//! Changes come from the projectors of this process once durable; bursts
//! are coalesced (one read per row per burst), and a subscriber that falls
//! too far behind gets a `lagged` event and continues with the newest.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use aide::axum::ApiRouter;
use aide::axum::routing::get_with;
use aide::generate::GenContext;
use aide::openapi::{Operation, Response as DocResponse, StatusCode as Status};
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use schemars::JsonSchema;
use serde::Deserialize;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

use super::access::Grant;
use super::auth::Reader;
use super::contract::{op, raw_response};
use super::json::QueryParams;
use super::{ApiError, AppState, Token};
use crate::event::{ID_MAX, PollId, SessionKey, TEXT_ID, Topic, UploadId};
use crate::fold::feed::FeedKind;
use crate::project::{Announced, Change};

pub(super) fn routes() -> ApiRouter<AppState> {
    ApiRouter::new().api_route(
        "/v1/stream",
        get_with(stream, |t| {
            op(
                t,
                "stream",
                "stream",
                "Live view changes (Server-Sent Events)",
                "Filters `poll`, `session`, `upload` and `kind` may be combined; none means \
                 everything but sessions and uploads (administrators: everything). \
                 `session` and `upload` follow only what the caller may read: its own (bearer \
                 token), or a session whose share link's `exp` and `sig` are given; 404 \
                 `unknown_session` or `unknown_upload` otherwise. A filtered stream starts with the current state of what it \
                 names. Each event's `id` is the consistency token of the change (none for \
                 the initial state); its name says which view row changed (`poll`, `feed`, \
                 `feed_deleted`, `cards`, `upload`) and its data is that row as its read \
                 answers it. Bursts are coalesced, and a subscriber that falls too far behind \
                 gets a `lagged` event and continues with the newest.",
                &[400, 404],
            )
        }),
    )
}

/// What to follow; several may be given, none means everything.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct StreamQuery {
    /// Follow this poll; the stream starts with its current state.
    #[schemars(with = "Option<uuid::Uuid>")]
    poll: Option<String>,
    /// Follow this session's cards; the stream starts with their current
    /// state.
    #[schemars(length(min = 1, max = ID_MAX), pattern(TEXT_ID))]
    session: Option<String>,
    /// Follow this upload's status; the stream starts with its current
    /// state.
    #[schemars(with = "Option<uuid::Uuid>")]
    upload: Option<String>,
    /// Follow feed changes of this kind (`all`: every kind).
    #[schemars(with = "Option<KindFilter>")]
    kind: Option<String>,
    /// A share link's expiry (with `session`, or `upload` of that session).
    #[schemars(pattern(super::cards::EXP_PATTERN))]
    exp: Option<String>,
    /// A share link's signature.
    #[schemars(pattern(super::cards::SIG_PATTERN))]
    sig: Option<String>,
}

/// A feed kind, or every kind.
#[derive(JsonSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
enum KindFilter {
    Post,
    Game,
    Team,
    All,
}

/// The answer: an endless `text/event-stream`.
struct Live(Response);

impl IntoResponse for Live {
    fn into_response(self) -> Response {
        self.0
    }
}

impl aide::OperationOutput for Live {
    type Inner = Self;

    fn inferred_responses(
        _: &mut GenContext,
        _: &mut Operation,
    ) -> Vec<(Option<Status>, DocResponse)> {
        vec![(
            Some(Status::Code(200)),
            raw_response(
                "Server-Sent Events, until the client or the server goes away.",
                &["text/event-stream"],
                schemars::json_schema!({
                    "description": "One event.",
                    "type": "object",
                    "properties": {
                        "event": {
                            "type": "string",
                            "enum": ["poll", "feed", "feed_deleted", "cards", "upload", "lagged"],
                            "description": "Which view row changed (`lagged`: changes were skipped)."
                        },
                        "data": {
                            "type": "string",
                            "description": "The row as its read answers it, as JSON (`feed_deleted`: the item's id; `lagged`: a note)."
                        },
                        "id": {
                            "type": "string",
                            "pattern": Token::pattern(&Topic::ALL),
                            "description": "The consistency token of the change (none for the initial state)."
                        }
                    },
                    "required": ["event", "data"]
                }),
            ),
        )]
    }
}

/// What a subscriber asked for.
#[derive(Clone, Debug, Default)]
struct Filter {
    poll: Option<PollId>,
    session: Option<SessionKey>,
    upload: Option<UploadId>,
    /// `Some(None)`: every kind; `Some(Some(k))`: one kind.
    kind: Option<Option<FeedKind>>,
    /// Whether an unfiltered stream carries every session's and upload's
    /// changes (administrators').
    everything: bool,
}

impl Filter {
    fn is_empty(&self) -> bool {
        self.poll.is_none()
            && self.session.is_none()
            && self.upload.is_none()
            && self.kind.is_none()
    }

    fn wants(&self, c: &Change) -> bool {
        if self.is_empty() {
            return self.everything || !matches!(c, Change::Session(_) | Change::Upload(_));
        }
        match c {
            Change::Poll(id) => self.poll == Some(*id),
            Change::Session(k) => self.session.as_ref() == Some(k),
            Change::Upload(u) => self.upload == Some(*u),
            Change::Feed(_, k) => match self.kind {
                Some(None) => true,
                Some(Some(want)) => want == *k,
                None => false,
            },
        }
    }
}

fn parse(q: StreamQuery) -> Result<Filter, ApiError> {
    let bad = |code: &'static str, what: &str| ApiError::bad_request(code, what.to_owned());
    Ok(Filter {
        poll: q
            .poll
            .map(|p| PollId::parse(&p).map_err(|_| bad("invalid_poll", "poll must be a poll id")))
            .transpose()?,
        session: q
            .session
            .map(|s| SessionKey::parse(&s).map_err(|e| bad("invalid_session", &e.reason)))
            .transpose()?,
        upload: q
            .upload
            .map(|u| {
                UploadId::parse(&u)
                    .map_err(|_| bad("invalid_upload", "upload must be an upload id"))
            })
            .transpose()?,
        kind: q
            .kind
            .map(|k| super::feed::parse_kind(Some(&k)))
            .transpose()?,
        everything: false,
    })
}

/// Who follows: the caller and the share link it gave.
#[derive(Clone, Debug)]
struct Access {
    reader: Reader,
    grant: Option<Grant>,
}

impl Access {
    fn may_read(&self, st: &AppState, key: &SessionKey) -> bool {
        super::cards::may_read(&st.links, &self.reader, key, self.grant.as_ref())
    }
}

/// Reads the view row a change names and renders it as one SSE event
/// (`None` when it is gone or unreadable: the next change retries).
async fn render(st: &AppState, who: &Access, a: &Announced) -> Option<Event> {
    // A snapshot (no topic) reflects whatever is applied now: no token.
    let token = Token::at(&a.topic, a.position.partition, a.position.offset).map(|t| t.encode());
    let (name, data) = match &a.change {
        Change::Poll(id) => {
            let p = st.views.polls().await.ok()?.poll(*id).await.ok()??;
            (
                "poll",
                serde_json::to_value(super::polls::PollView::from(p)),
            )
        }
        Change::Feed(id, _) => match super::feed::item_view(st, *id, None).await {
            Ok(v) => ("feed", serde_json::to_value(v)),
            Err(_) => (
                "feed_deleted",
                Ok(serde_json::json!({ "item_id": id.to_string() })),
            ),
        },
        Change::Session(k) => {
            let c = super::cards::session_cards(st, k.clone(), None)
                .await
                .ok()?;
            ("cards", serde_json::to_value(c))
        }
        Change::Upload(u) => {
            let c = super::cards::upload_card(st, *u, None, |k| who.may_read(st, k))
                .await
                .ok()?;
            (
                "upload",
                serde_json::to_value(super::cards::CardView::new(c, &st.links)),
            )
        }
    };
    let mut e = Event::default().event(name);
    if let Some(t) = token {
        e = e.id(t);
    }
    e.json_data(data.ok()?).ok()
}

/// The current state of what a filter names, as initial events.
async fn snapshot(st: &AppState, who: &Access, f: &Filter) -> Vec<Event> {
    let mut out = Vec::new();
    let at = |change| Announced {
        change,
        topic: String::new(),
        position: Default::default(),
    };
    let mut wanted = Vec::new();
    if let Some(p) = f.poll {
        wanted.push(at(Change::Poll(p)));
    }
    if let Some(s) = &f.session {
        wanted.push(at(Change::Session(s.clone())));
    }
    if let Some(u) = f.upload {
        wanted.push(at(Change::Upload(u)));
    }
    for a in wanted {
        if let Some(e) = render(st, who, &a).await {
            out.push(e);
        }
    }
    out
}

struct Sub {
    st: AppState,
    who: Access,
    filter: Filter,
    rx: tokio::sync::broadcast::Receiver<Announced>,
    ready: VecDeque<Event>,
}

fn events(sub: Sub) -> impl Stream<Item = Result<Event, Infallible>> {
    futures::stream::unfold(sub, |mut sub| async move {
        loop {
            if let Some(e) = sub.ready.pop_front() {
                return Some((Ok(e), sub));
            }
            // Wait for one change, then take the whole burst behind it.
            let mut burst: Vec<Announced> = Vec::new();
            let next = tokio::select! {
                r = sub.rx.recv() => r,
                _ = sub.st.shutdown.cancelled() => return None,
            };
            match next {
                Ok(a) => burst.push(a),
                Err(RecvError::Lagged(n)) => {
                    let e = Event::default()
                        .event("lagged")
                        .data(format!("{n} changes were skipped; reload"));
                    return Some((Ok(e), sub));
                }
                Err(RecvError::Closed) => return None,
            }
            loop {
                match sub.rx.try_recv() {
                    Ok(a) => burst.push(a),
                    Err(TryRecvError::Lagged(_)) => continue,
                    Err(_) => break,
                }
            }
            // Newest announcement per row, in arrival order of their last one.
            let mut last: Vec<Announced> = Vec::new();
            for a in burst.into_iter().filter(|a| sub.filter.wants(&a.change)) {
                last.retain(|b| b.change != a.change);
                last.push(a);
            }
            for a in &last {
                if let Some(e) = render(&sub.st, &sub.who, a).await {
                    sub.ready.push_back(e);
                }
            }
        }
    })
}

async fn stream(
    State(st): State<AppState>,
    reader: Reader,
    QueryParams(mut q): QueryParams<StreamQuery>,
) -> Result<Live, ApiError> {
    let grant = super::cards::grant(q.exp.take(), q.sig.take())?;
    let mut filter = parse(q)?;
    filter.everything = reader.admin();
    let who = Access { reader, grant };
    if let Some(k) = &filter.session
        && !who.may_read(&st, k)
    {
        return Err(super::cards::unknown_session(k));
    }
    // An upload not yet projected may still become the caller's: each of
    // its changes is checked as it is rendered. One already known and not
    // the caller's is refused now.
    if let Some(u) = filter.upload
        && let Ok(Some(c)) = st.views.cards().await?.upload(u).await
        && !c.session_key.as_ref().is_some_and(|k| who.may_read(&st, k))
    {
        return Err(super::cards::unknown_upload(&u.to_string()));
    }
    // Subscribe before the snapshot, so nothing falls between the two.
    let rx = st.watermarks.changes.subscribe();
    let ready: VecDeque<Event> = snapshot(&st, &who, &filter).await.into();
    let sub = Sub {
        st,
        who,
        filter,
        rx,
        ready,
    };
    Ok(Live(
        Sse::new(events(sub))
            .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
            .into_response(),
    ))
}
