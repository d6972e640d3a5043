//! The OpenAPI 3.1 document of the HTTP API, served at `GET /openapi.json`
//! and kept in the repository as `openapi.json` (`atelier schemas write`
//! regenerates it, `atelier schemas check` and a test fail when it drifts).
//!
//! [`OPERATIONS`] is the one table of routes: method, path template,
//! summary, parameters, body and answers. Response bodies are hand-written
//! JSON Schemas whose field names are exactly those the handlers' serde
//! structs produce; an integration test checks real answers against them,
//! and that every operation is routed (and nothing else answers).

use std::sync::OnceLock;

use axum::Json;
use serde_json::{Map, Value, json};

/// What a path parameter names.
#[derive(Clone, Copy, Debug)]
enum PathParam {
    Poll,
    Item,
    User,
    Upload,
    Session,
    Question,
    Asset,
    DlqPartition,
    DlqOffset,
}

impl PathParam {
    fn schema(self) -> Value {
        match self {
            Self::Poll => uuid("The poll's id (unknown or malformed: 404 `unknown_poll`)."),
            Self::Item => uuid("The feed item's id (unknown or malformed: 404 `unknown_item`)."),
            Self::Upload => uuid("The upload's id (unknown or malformed: 404 `unknown_upload`)."),
            Self::User => text_id(64, "The owner's user id (malformed: 400 `invalid_user`)."),
            Self::Session => text_id(64, "The session key (malformed: 400 `invalid_session`)."),
            Self::Question => json!({
                "type": "integer",
                "minimum": 0,
                "maximum": 19,
                "description": "The question's id: its position in the poll (out of range: 404 `unknown_question`)."
            }),
            Self::Asset => json!({
                "type": "string",
                "enum": super::dashboard::ASSETS.iter().map(|(name, _, _)| *name).collect::<Vec<_>>(),
                "description": "A file of the dashboard (another name: 404 `unknown_asset`)."
            }),
            Self::DlqPartition => json!({
                "type": "integer",
                "minimum": 0,
                "description": "A partition of the DLQ topic (with the offset, a dead letter's position; none there: 404 `unknown_dead_letter`)."
            }),
            Self::DlqOffset => json!({
                "type": "integer",
                "format": "int64",
                "minimum": 0,
                "description": "An offset in that DLQ partition."
            }),
        }
    }
}

/// A query parameter; each is a shared component.
#[derive(Clone, Copy, Debug)]
enum QueryParam {
    After,
    Cursor,
    Limit,
    Kind,
    Poll,
    Session,
    Upload,
    Variant,
    Stage,
    Topic,
    Error,
    View,
    Format,
    Page,
}

impl QueryParam {
    const ALL: [Self; 14] = [
        Self::After,
        Self::Cursor,
        Self::Limit,
        Self::Kind,
        Self::Poll,
        Self::Session,
        Self::Upload,
        Self::Variant,
        Self::Stage,
        Self::Topic,
        Self::Error,
        Self::View,
        Self::Format,
        Self::Page,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::After => "after",
            Self::Cursor => "cursor",
            Self::Limit => "limit",
            Self::Kind => "kind",
            Self::Poll => "poll",
            Self::Session => "session",
            Self::Upload => "upload",
            Self::Variant => "variant",
            Self::Stage => "stage",
            Self::Topic => "topic",
            Self::Error => "error",
            Self::View => "view",
            Self::Format => "format",
            Self::Page => "page",
        }
    }

    fn definition(self) -> Value {
        let (description, schema) = match self {
            Self::After => (
                "A consistency token from a write's 202 answer: the answer waits, bounded by \
                 `http.max_after_wait_ms`, until the view has applied that write (past the \
                 bound: 503 `not_yet_applied`). A token of another topic: 400 `invalid_token`.",
                json!({"type": "string"}),
            ),
            Self::Cursor => (
                "Where the page starts: the previous page's `next_cursor` (opaque; malformed: \
                 400 `invalid_cursor`).",
                json!({"type": "string"}),
            ),
            Self::Limit => (
                "Page size (otherwise: 400 `invalid_limit`).",
                json!({"type": "integer", "minimum": 1, "maximum": 100, "default": 20}),
            ),
            Self::Kind => (
                "Feed item kind, or `all` (otherwise: 400 `invalid_kind`). On `/v1/stream` it \
                 subscribes to feed changes of that kind.",
                json!({"type": "string", "enum": ["post", "game", "team", "all"]}),
            ),
            Self::Poll => (
                "Subscribe to this poll's changes; the stream starts with its current state.",
                json!({"type": "string", "format": "uuid"}),
            ),
            Self::Session => (
                "Subscribe to this session's cards; the stream starts with their current state.",
                text_id(64, "A session key."),
            ),
            Self::Upload => (
                "Subscribe to this upload's status; the stream starts with its current state.",
                json!({"type": "string", "format": "uuid"}),
            ),
            Self::Variant => (
                "Which image: what was uploaded, or the stylized output (404 `not_ready` \
                 until the job completed).",
                json!({"type": "string", "enum": ["input", "output"], "default": "input"}),
            ),
            Self::Stage => (
                "Dead letters refused by this stage (`project.polls`, `project.feed`, \
                 `project.cards`, `infer`).",
                json!({"type": "string"}),
            ),
            Self::Topic => (
                "Dead letters from this source topic: its full name, or its name without the \
                 deployment's namespace (`atelier.polls.v1`).",
                json!({"type": "string"}),
            ),
            Self::Error => (
                "Dead letters whose error contains this text.",
                json!({"type": "string"}),
            ),
            Self::View => (
                "What to export: every poll, or every live feed item (otherwise: 400 \
                 `invalid_query`).",
                json!({"type": "string", "enum": ["polls", "feed"]}),
            ),
            Self::Format => (
                "JSON Lines or CSV (otherwise: 400 `invalid_query`).",
                json!({"type": "string", "enum": ["json", "csv"], "default": "json"}),
            ),
            Self::Page => (
                "Rows read from the view store at a time (otherwise: 400 `invalid_page`).",
                json!({"type": "integer", "minimum": 1, "maximum": 1000, "default": 500}),
            ),
        };
        json!({
            "name": self.name(),
            "in": "query",
            "required": false,
            "description": description,
            "schema": schema,
        })
    }
}

/// What a route answers when it succeeds.
#[derive(Clone, Copy, Debug)]
enum Success {
    /// `202` with the event id, the token and the aggregate's id under
    /// `about`; `Location` of the new aggregate when `location`.
    Accepted { about: &'static str, location: bool },
    /// `200` JSON of this component schema with an `ETag`; `304` for a
    /// matching `If-None-Match`.
    Read(&'static str),
    /// `200` Server-Sent Events.
    Stream,
    /// `200` plain text; `404` plain text with the second description.
    Text(&'static str, Option<&'static str>),
    /// `200` this document.
    Document,
    /// `200` image bytes (JPEG, PNG or WebP), cacheable for good.
    Image,
    /// `200` JSON of this component schema, not cached (an operations
    /// answer, computed per request).
    Json(&'static str),
    /// `200` a file of the dashboard in one of these media types,
    /// revalidated on every load.
    Static(&'static [&'static str]),
    /// `202` JSON of this component schema (`200` for a dry run).
    JsonAccepted(&'static str),
    /// `200` a whole view streamed as JSON Lines or CSV; a failure midway
    /// cuts the body short.
    Export,
}

/// A request body: a component schema, sent as JSON or as a multipart
/// form.
#[derive(Clone, Copy, Debug)]
enum RequestBody {
    Json(&'static str),
    Multipart(&'static str),
}

/// One operation of the API: a row of [`OPERATIONS`].
#[derive(Debug)]
struct Operation {
    /// Lower-case HTTP method.
    method: &'static str,
    /// Path template, `{name}` for parameters.
    path: &'static str,
    operation_id: &'static str,
    tag: &'static str,
    summary: &'static str,
    description: &'static str,
    /// Needs `Authorization: Bearer` (adds the security requirement and 401).
    auth: bool,
    path_params: &'static [(&'static str, PathParam)],
    /// Query parameters (any adds 400 for a bad query string).
    query: &'static [QueryParam],
    /// The request body (adds 400, 413, 415, 422).
    body: Option<RequestBody>,
    success: Success,
    /// Further error statuses, each answered with an `Error` body.
    errors: &'static [u16],
}

use PathParam as P;
use QueryParam as Q;
use RequestBody as B;

/// Every route of the router, the single source of the document.
const OPERATIONS: &[Operation] = &[
    Operation {
        method: "post",
        path: "/v1/polls",
        operation_id: "createPoll",
        tag: "polls",
        summary: "Create a poll",
        description: "Appends `PollCreated` with a new poll id; the caller owns the poll.",
        auth: true,
        path_params: &[],
        query: &[],
        body: Some(B::Json("CreatePoll")),
        success: Success::Accepted {
            about: "poll_id",
            location: true,
        },
        errors: &[503],
    },
    Operation {
        method: "get",
        path: "/v1/polls/{id}",
        operation_id: "readPoll",
        tag: "polls",
        summary: "Read a poll",
        description: "Header, questions in order with tallies, voters, recent voters and \
                      rejections: one view query.",
        auth: false,
        path_params: &[("id", P::Poll)],
        query: &[Q::After],
        body: None,
        success: Success::Read("Poll"),
        errors: &[404, 503],
    },
    Operation {
        method: "post",
        path: "/v1/polls/{id}/votes",
        operation_id: "castVote",
        tag: "polls",
        summary: "Cast or replace your ballot",
        description: "Appends `VoteCast` for the caller. A closed poll is 409 `poll_closed`, an \
                      ended one 409 `poll_ended`; several choices on a single-choice poll are \
                      422 `too_many_choices`, an unknown question 422 `unknown_question`.",
        auth: true,
        path_params: &[("id", P::Poll)],
        query: &[Q::After],
        body: Some(B::Json("CastVote")),
        success: Success::Accepted {
            about: "poll_id",
            location: false,
        },
        errors: &[404, 409, 503],
    },
    Operation {
        method: "delete",
        path: "/v1/polls/{id}/votes",
        operation_id: "retractVote",
        tag: "polls",
        summary: "Retract your ballot",
        description: "Appends `VoteRetracted` for the caller; a retraction without a ballot is \
                      decided by the fold and counted in the poll's `rejected`.",
        auth: true,
        path_params: &[("id", P::Poll)],
        query: &[Q::After],
        body: None,
        success: Success::Accepted {
            about: "poll_id",
            location: false,
        },
        errors: &[404, 409, 503],
    },
    Operation {
        method: "post",
        path: "/v1/polls/{id}/close",
        operation_id: "closePoll",
        tag: "polls",
        summary: "Close a poll (owner only)",
        description: "Appends `PollClosed`; someone else is 403 `not_owner`, a closed poll 409 \
                      `poll_closed`.",
        auth: true,
        path_params: &[("id", P::Poll)],
        query: &[Q::After],
        body: None,
        success: Success::Accepted {
            about: "poll_id",
            location: false,
        },
        errors: &[403, 404, 409, 503],
    },
    Operation {
        method: "get",
        path: "/v1/polls/{id}/questions/{q}/voters",
        operation_id: "listQuestionVoters",
        tag: "polls",
        summary: "One question's voters, by user id",
        description: "Cursor-paged, one view query. Anonymous polls store no voters, so none \
                      are listed.",
        auth: false,
        path_params: &[("id", P::Poll), ("q", P::Question)],
        query: &[Q::Cursor, Q::Limit, Q::After],
        body: None,
        success: Success::Read("VotersPage"),
        errors: &[404, 503],
    },
    Operation {
        method: "get",
        path: "/v1/users/{id}/polls",
        operation_id: "listPollsByOwner",
        tag: "polls",
        summary: "An owner's polls, newest first",
        description: "Cursor-paged, one view query.",
        auth: false,
        path_params: &[("id", P::User)],
        query: &[Q::Cursor, Q::Limit, Q::After],
        body: None,
        success: Success::Read("OwnerPollPage"),
        errors: &[503],
    },
    Operation {
        method: "post",
        path: "/v1/feed",
        operation_id: "createFeedItem",
        tag: "feed",
        summary: "Create a post, game or team",
        description: "Appends `FeedItemCreated` with a new item id; the caller is its author.",
        auth: true,
        path_params: &[],
        query: &[],
        body: Some(B::Json("CreateFeedItem")),
        success: Success::Accepted {
            about: "item_id",
            location: true,
        },
        errors: &[503],
    },
    Operation {
        method: "get",
        path: "/v1/feed",
        operation_id: "readTimeline",
        tag: "feed",
        summary: "The feed, newest first",
        description: "All kinds or one; cursor-paged by (time, id), so items arriving meanwhile \
                      never shift a walk. One view query.",
        auth: false,
        path_params: &[],
        query: &[Q::Kind, Q::Cursor, Q::Limit, Q::After],
        body: None,
        success: Success::Read("TimelinePage"),
        errors: &[503],
    },
    Operation {
        method: "get",
        path: "/v1/feed/{id}",
        operation_id: "readFeedItem",
        tag: "feed",
        summary: "Read a feed item",
        description: "The item with its counts, recent members and rejections; a deleted item \
                      is 410 `item_deleted`. One view query.",
        auth: false,
        path_params: &[("id", P::Item)],
        query: &[Q::After],
        body: None,
        success: Success::Read("FeedItem"),
        errors: &[404, 410, 503],
    },
    Operation {
        method: "delete",
        path: "/v1/feed/{id}",
        operation_id: "deleteFeedItem",
        tag: "feed",
        summary: "Delete a feed item (author only)",
        description: "Appends `FeedItemDeleted`; someone else is 403 `not_author`.",
        auth: true,
        path_params: &[("id", P::Item)],
        query: &[Q::After],
        body: None,
        success: Success::Accepted {
            about: "item_id",
            location: false,
        },
        errors: &[403, 404, 410, 503],
    },
    Operation {
        method: "post",
        path: "/v1/feed/{id}/likes",
        operation_id: "likeFeedItem",
        tag: "feed",
        summary: "Like a feed item",
        description: "Appends `FeedItemLiked`; a second like is decided by the fold and counted \
                      in the item's `rejected`.",
        auth: true,
        path_params: &[("id", P::Item)],
        query: &[Q::After],
        body: None,
        success: Success::Accepted {
            about: "item_id",
            location: false,
        },
        errors: &[404, 410, 503],
    },
    Operation {
        method: "delete",
        path: "/v1/feed/{id}/likes",
        operation_id: "unlikeFeedItem",
        tag: "feed",
        summary: "Withdraw your like",
        description: "Appends `FeedItemUnliked`; unliking without a like is decided by the fold \
                      and counted in the item's `rejected`.",
        auth: true,
        path_params: &[("id", P::Item)],
        query: &[Q::After],
        body: None,
        success: Success::Accepted {
            about: "item_id",
            location: false,
        },
        errors: &[404, 410, 503],
    },
    Operation {
        method: "post",
        path: "/v1/feed/{id}/members",
        operation_id: "joinFeedItem",
        tag: "feed",
        summary: "Join a game or team",
        description: "Appends `FeedItemJoined`; a post is 409 `not_joinable`.",
        auth: true,
        path_params: &[("id", P::Item)],
        query: &[Q::After],
        body: None,
        success: Success::Accepted {
            about: "item_id",
            location: false,
        },
        errors: &[404, 409, 410, 503],
    },
    Operation {
        method: "delete",
        path: "/v1/feed/{id}/members",
        operation_id: "leaveFeedItem",
        tag: "feed",
        summary: "Leave a game or team",
        description: "Appends `FeedItemLeft`; a post is 409 `not_joinable`.",
        auth: true,
        path_params: &[("id", P::Item)],
        query: &[Q::After],
        body: None,
        success: Success::Accepted {
            about: "item_id",
            location: false,
        },
        errors: &[404, 409, 410, 503],
    },
    Operation {
        method: "get",
        path: "/v1/sessions/{key}/cards",
        operation_id: "readSessionCards",
        tag: "cards",
        summary: "A session's cards",
        description: "Slots 1 to 3 with each upload's job status (empty slots are absent). \
                      `?after` takes a token of the uploads or completions topic. One view \
                      query.",
        auth: false,
        path_params: &[("key", P::Session)],
        query: &[Q::After],
        body: None,
        success: Success::Read("SessionCards"),
        errors: &[503],
    },
    Operation {
        method: "post",
        path: "/v1/uploads",
        operation_id: "createUpload",
        tag: "uploads",
        summary: "Upload an image for stylization",
        description: "A multipart form: `image` (the file), `session_key`, `slot` (1 to 3) and \
                      `style`. Checked before anything is stored: over `uploads.max_bytes` is \
                      413 `image_too_large`; a type other than JPEG, PNG or WebP (sniffed from \
                      the bytes, never the file name) 415 `unsupported_image_type`; an empty \
                      file 422 `empty_image`, an unreadable header 422 `corrupt_image`, a \
                      header claiming more pixels than `uploads.max_side` / \
                      `uploads.max_pixels` 422 `too_many_pixels` (never decoded), a truncated \
                      file 422 `truncated_image`, a style without a published model 422 \
                      `unknown_style`. Then the image is stored under an unguessable key and \
                      `UploadReceived` appended; follow the job at `Location` or on \
                      `/v1/stream?upload=`.",
        auth: true,
        path_params: &[],
        query: &[],
        body: Some(B::Multipart("UploadForm")),
        success: Success::Accepted {
            about: "upload_id",
            location: true,
        },
        errors: &[503],
    },
    Operation {
        method: "get",
        path: "/v1/uploads/{id}/image",
        operation_id: "readUploadImage",
        tag: "uploads",
        summary: "An upload's input or stylized output image",
        description: "One view query (the upload's keys), then the bytes from the blob store.",
        auth: false,
        path_params: &[("id", P::Upload)],
        query: &[Q::Variant],
        body: None,
        success: Success::Image,
        errors: &[404, 503],
    },
    Operation {
        method: "get",
        path: "/v1/styles",
        operation_id: "listStyles",
        tag: "uploads",
        summary: "The styles on offer",
        description: "Every style with a published model, and its current version.",
        auth: false,
        path_params: &[],
        query: &[],
        body: None,
        success: Success::Read("Styles"),
        errors: &[],
    },
    Operation {
        method: "get",
        path: "/v1/uploads/{id}",
        operation_id: "readUpload",
        tag: "cards",
        summary: "One upload's job status",
        description: "`?after` takes a token of the uploads or completions topic. One view \
                      query.",
        auth: false,
        path_params: &[("id", P::Upload)],
        query: &[Q::After],
        body: None,
        success: Success::Read("Card"),
        errors: &[404, 503],
    },
    Operation {
        method: "get",
        path: "/v1/stream",
        operation_id: "stream",
        tag: "stream",
        summary: "Live view changes (Server-Sent Events)",
        description: "Filters `poll`, `session`, `upload` and `kind` may be combined; none means \
                      everything. A filtered stream starts with the current state of what it \
                      names. Each event's `id` is the consistency token of the change (empty \
                      for the initial state); bursts are coalesced, and a subscriber that falls \
                      too far behind gets a `lagged` event and continues with the newest.",
        auth: false,
        path_params: &[],
        query: &[Q::Poll, Q::Session, Q::Upload, Q::Kind],
        body: None,
        success: Success::Stream,
        errors: &[],
    },
    Operation {
        method: "get",
        path: "/healthz",
        operation_id: "healthz",
        tag: "ops",
        summary: "Liveness",
        description: "Answers `ok` while the process serves.",
        auth: false,
        path_params: &[],
        query: &[],
        body: None,
        success: Success::Text("`ok`.", None),
        errors: &[],
    },
    Operation {
        method: "get",
        path: "/readyz",
        operation_id: "readyz",
        tag: "ops",
        summary: "Readiness",
        description: "Ready when the view store and the log answer and the views lag the log by \
                      at most `http.ready_lag` records (otherwise 503 `not_ready`, \
                      `views_unavailable` or `log_unavailable`). `/healthz` is liveness only.",
        auth: false,
        path_params: &[],
        query: &[],
        body: None,
        success: Success::Json("Ready"),
        errors: &[503],
    },
    Operation {
        method: "get",
        path: "/v1/pipeline",
        operation_id: "pipeline",
        tag: "ops",
        summary: "Pipeline health",
        description: "Per topic, the records the active generation of its view has applied (a \
                      counter: its rate is the throughput) and its lag; the records in the DLQ \
                      topic; each view's generations. The dashboard charts this.",
        auth: false,
        path_params: &[],
        query: &[],
        body: None,
        success: Success::Json("Pipeline"),
        errors: &[503],
    },
    Operation {
        method: "post",
        path: "/v1/admin/replay",
        operation_id: "startReplay",
        tag: "admin",
        summary: "Rebuild views, or re-run inference",
        description: "With `view`: rebuilds the view (or `all`) from its topics into a new \
                      generation while the active one keeps serving reads; the projector \
                      supervisors swap it in atomically once it has caught up (202). With \
                      `stage: infer`: moves the inference workers to a new consumer group, so \
                      every upload from `from` on is stylized again with the current models. \
                      `dry_run` answers 200 with what would be replayed. A rebuild under way: \
                      409 `rebuild_in_progress`.",
        auth: true,
        path_params: &[],
        query: &[],
        body: Some(B::Json("StartReplay")),
        success: Success::JsonAccepted("Rebuilds"),
        errors: &[403, 409, 503],
    },
    Operation {
        method: "get",
        path: "/v1/admin/replay",
        operation_id: "replayStatus",
        tag: "admin",
        summary: "Where rebuilds stand",
        description: "Every view's control row (active, building, phase, retired generations) \
                      with per-partition progress of the active and the building generation, \
                      and the inference stage's generation.",
        auth: true,
        path_params: &[],
        query: &[],
        body: None,
        success: Success::Json("ReplayStatus"),
        errors: &[403, 503],
    },
    Operation {
        method: "post",
        path: "/v1/admin/replay/gc",
        operation_id: "replayGc",
        tag: "admin",
        summary: "Drop retired generations",
        description: "Deletes the data of every generation a swap retired.",
        auth: true,
        path_params: &[],
        query: &[],
        body: None,
        success: Success::Json("GcResult"),
        errors: &[403, 503],
    },
    Operation {
        method: "get",
        path: "/metrics",
        operation_id: "metrics",
        tag: "ops",
        summary: "Prometheus metrics",
        description: "The Prometheus text exposition of the process's metrics.",
        auth: false,
        path_params: &[],
        query: &[],
        body: None,
        success: Success::Text(
            "Prometheus text format.",
            Some("No metrics recorder is installed in this process."),
        ),
        errors: &[],
    },
    Operation {
        method: "get",
        path: "/openapi.json",
        operation_id: "openapi",
        tag: "ops",
        summary: "This OpenAPI document",
        description: "The OpenAPI 3.1 description of every route.",
        auth: false,
        path_params: &[],
        query: &[],
        body: None,
        success: Success::Document,
        errors: &[],
    },
    Operation {
        method: "get",
        path: "/",
        operation_id: "dashboard",
        tag: "ops",
        summary: "The live dashboard",
        description: "An HTML page over the public reads: the feed (paged, live), an owner's \
                      polls with live tallies, a session's cards with their images, and \
                      pipeline health from `/v1/pipeline`. Parameters, read by the page: \
                      `?owner=`, `?session=`, `?poll=` or `#poll=`.",
        auth: false,
        path_params: &[],
        query: &[],
        body: None,
        success: Success::Static(&["text/html"]),
        errors: &[],
    },
    Operation {
        method: "get",
        path: "/dashboard/{file}",
        operation_id: "dashboardAsset",
        tag: "ops",
        summary: "A script or style sheet of the dashboard",
        description: "The ES modules and the style sheet the page loads, built into the binary.",
        auth: false,
        path_params: &[("file", P::Asset)],
        query: &[],
        body: None,
        success: Success::Static(&["text/javascript", "text/css"]),
        errors: &[404],
    },
    Operation {
        method: "get",
        path: "/v1/admin/dlq",
        operation_id: "listDeadLetters",
        tag: "admin",
        summary: "List dead letters",
        description: "Records the pipeline could not process (undecodable, schema-invalid, failed \
                      inference), oldest first: the stage that refused each, why, where it came \
                      from, and where a replay re-published it (`replayed`). Reads the DLQ topic \
                      to its end as of the request, bounded in time (503 `dlq_timeout`).",
        auth: true,
        path_params: &[],
        query: &[Q::Stage, Q::Topic, Q::Error, Q::Limit, Q::Cursor],
        body: None,
        success: Success::Json("DeadLetterPage"),
        errors: &[403, 503],
    },
    Operation {
        method: "get",
        path: "/v1/admin/dlq/{partition}/{offset}",
        operation_id: "readDeadLetter",
        tag: "admin",
        summary: "Read a dead letter in full",
        description: "Every header, the key and the body: UTF-8 text, or base64 where \
                      `payload_base64` (`key_base64`, a header's `base64`) says so.",
        auth: true,
        path_params: &[("partition", P::DlqPartition), ("offset", P::DlqOffset)],
        query: &[],
        body: None,
        success: Success::Json("DeadLetterRecord"),
        errors: &[403, 404, 503],
    },
    Operation {
        method: "post",
        path: "/v1/admin/dlq/replay",
        operation_id: "replayDeadLetters",
        tag: "admin",
        summary: "Replay dead letters",
        description: "Re-publishes a dead letter to its source topic with its key and headers \
                      (less `dlq_*`, plus `dlq_replay_of`), optionally with a corrected body or \
                      headers; or, unchanged, every one matching `filter` (at most 200 a call: \
                      `truncated`). A replay marker appended to the DLQ makes it idempotent: a \
                      dead letter replayed before is 409 `already_replayed` unless `force` (a \
                      filtered replay skips it). On Kafka the copy and its marker commit in one \
                      transaction. `dry_run` answers what would be published.",
        auth: true,
        path_params: &[],
        query: &[],
        body: Some(B::Json("ReplayDeadLetters")),
        success: Success::Json("ReplayResult"),
        errors: &[403, 404, 409, 500, 503],
    },
    Operation {
        method: "get",
        path: "/v1/admin/export",
        operation_id: "exportView",
        tag: "admin",
        summary: "Export a whole view (JSON Lines or CSV)",
        description: "Streams every poll (in the store's scan order) or every live feed item \
                      (newest first), reading the view store a page at a time. JSON Lines: \
                      one object per line, a poll as `GET /v1/polls/{id}` answers it, an item \
                      as a `GET /v1/feed` page lists it. CSV: a header, then for polls one \
                      record per question (`poll_id, head, message, owner_id, owner_name, \
                      created_at, ends_at, closed, closed_at, anonymous, multiple_choice, \
                      voters` repeated, then `question_id, question, votes`; a poll's records \
                      are consecutive), for items one record each (`item_id, kind, title, \
                      body, name, location, room, author_id, author_name, created_at, likes, \
                      joined`, the fields of other kinds empty). User text that a spreadsheet \
                      would run as a formula (starting `=`, `+`, `-`, `@`) is prefixed with \
                      `'` in CSV. Not a snapshot: what exists for the whole export appears \
                      exactly once; what is created meanwhile may not.",
        auth: true,
        path_params: &[],
        query: &[Q::View, Q::Format, Q::Page],
        body: None,
        success: Success::Export,
        errors: &[403, 503],
    },
];

/// The error answers, as shared response components: status, component
/// name, and the codes a client may meet.
const ERRORS: &[(u16, &str, &str)] = &[
    (
        400,
        "BadRequest",
        "Bad request: malformed JSON (`malformed_json`), query string (`invalid_query`), \
         cursor (`invalid_cursor`), limit (`invalid_limit`), page (`invalid_page`), kind \
         (`invalid_kind`), consistency token (`invalid_token`), user id (`invalid_user`), \
         session key (`invalid_session`), stream filter (`invalid_poll`, `invalid_upload`) or multipart \
         form (`invalid_multipart`).",
    ),
    (
        401,
        "Unauthorized",
        "Missing, malformed, expired or unknown bearer credentials (`unauthorized`).",
    ),
    (
        403,
        "Forbidden",
        "Only the owner or author may do this (`not_owner`, `not_author`); only callers in \
         `auth.admins` may use operations routes (`not_admin`).",
    ),
    (
        404,
        "NotFound",
        "No such poll, question, item or upload (`unknown_poll`, `unknown_question`, \
         `unknown_item`, `unknown_upload`), or no such image yet (`not_ready`, \
         `image_missing`); no such dashboard file (`unknown_asset`); no dead letter at that \
         position (`unknown_dead_letter`).",
    ),
    (
        409,
        "Conflict",
        "The aggregate's state refuses the action (`poll_closed`, `poll_ended`, \
         `not_joinable`), the dead letter was replayed before (`already_replayed`, saying \
         where it went), or a rebuild of the view is under way (`rebuild_in_progress`).",
    ),
    (
        410,
        "Gone",
        "The item was deleted by its author (`item_deleted`).",
    ),
    (
        413,
        "PayloadTooLarge",
        "The body is over `http.body_limit` (`body_too_large`), an image over \
         `uploads.max_bytes` (`image_too_large`).",
    ),
    (
        415,
        "UnsupportedMediaType",
        "The body is not `application/json` (`unsupported_media_type`), an image not JPEG, \
         PNG or WebP by its bytes (`unsupported_image_type`).",
    ),
    (
        422,
        "UnprocessableEntity",
        "Wrong shape, unknown field (`invalid_body`) or invalid value (`invalid_field`, with \
         `field`; `too_many_choices`, `unknown_question`), or an image refused for what it \
         is (`empty_image`, `corrupt_image`, `too_many_pixels`, `truncated_image`, \
         `unknown_style`), or a dead letter that cannot be replayed as asked \
         (`not_replayable`, `invalid_header`).",
    ),
    (
        503,
        "ServiceUnavailable",
        "Retry (after `Retry-After` seconds): the view has not applied `?after` yet \
         (`not_yet_applied`), or the view store or event log is unavailable \
         (`views_unavailable`, `log_unavailable`, `blobs_unavailable`); the views lag more than \
         `http.ready_lag` (`not_ready`, on `/readyz`); the DLQ was not \
         read to its end in time (`dlq_timeout`); a replay failed, publishing none or only \
         some (those are marked replayed: a retry skips them) (`replay_failed`).",
    ),
    (
        500,
        "InternalServerError",
        "Stopped midway, saying what was done: a replay's copy was published but its \
         marker was not (`replay_marker_lost`; only without transactions, on the embedded \
         log): replaying it again would publish it twice.",
    ),
];

/// The OpenAPI 3.1 document of the whole API.
pub fn document() -> Value {
    let mut paths = Map::new();
    for op in OPERATIONS {
        let item = paths
            .entry(op.path)
            .or_insert_with(|| Value::Object(Map::new()));
        let previous = item
            .as_object_mut()
            .expect("path items are objects")
            .insert(op.method.to_owned(), operation(op));
        assert!(
            previous.is_none(),
            "{} {} is in the table twice",
            op.method,
            op.path
        );
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "atelier",
            "version": env!("CARGO_PKG_VERSION"),
            "summary": "Ingest and read API of an event-driven stream processor",
            "description": "Writes are validated, authenticated and appended as events; they \
                answer 202 with a consistency token. Pass it as `?after=<token>` to a read (or a \
                later write) and the answer waits, bounded, until the view has applied it. Reads \
                are one view query each, answer with a strong `ETag`, and 304 for a matching \
                `If-None-Match`. Errors are JSON: `{\"error\": code, \"reason\": text, \
                \"field\"?: name}`; an unknown route is 404 `no_route`.",
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "tags": [
            {"name": "polls", "description": "Polls: create, vote, retract, close; reads."},
            {"name": "feed", "description": "Posts, games and teams: create, like, join, delete; reads."},
            {"name": "cards", "description": "Session cards and upload job status."},
            {"name": "uploads", "description": "Image uploads, their images, the styles on offer."},
            {"name": "stream", "description": "Live view changes as Server-Sent Events."},
            {"name": "ops", "description": "Liveness, metrics, this document and the dashboard."},
            {"name": "admin", "description": "Operations, for callers in `auth.admins` (otherwise 403 `not_admin`): dead letters, view rebuilds, exports."},
        ],
        "paths": paths,
        "components": components(),
    })
}

/// `GET /openapi.json`.
pub(super) async fn serve() -> Json<Value> {
    static DOC: OnceLock<Value> = OnceLock::new();
    Json(DOC.get_or_init(document).clone())
}

/// The path parameter names of a template, in order.
fn template_params(path: &str) -> Vec<&str> {
    path.split('/')
        .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
        .collect()
}

fn operation(op: &Operation) -> Value {
    let names: Vec<&str> = op.path_params.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        template_params(op.path),
        names,
        "{} {}: the path parameters in the table differ from the template",
        op.method,
        op.path
    );
    let mut parameters: Vec<Value> = op
        .path_params
        .iter()
        .map(|(name, p)| {
            json!({
                "name": name,
                "in": "path",
                "required": true,
                "schema": p.schema(),
            })
        })
        .collect();
    parameters.extend(
        op.query
            .iter()
            .map(|q| json!({"$ref": format!("#/components/parameters/{}", q.name())})),
    );
    if matches!(op.success, Success::Read(_)) {
        parameters.push(json!({"$ref": "#/components/parameters/IfNoneMatch"}));
    }

    let mut responses = Map::new();
    match op.success {
        Success::Accepted { about, location } => {
            let mut headers = Map::new();
            if location {
                headers.insert(
                    "Location".into(),
                    json!({
                        "description": "Where the new aggregate will be readable.",
                        "schema": {"type": "string"},
                    }),
                );
            }
            responses.insert(
                "202".into(),
                json!({
                    "description": "Accepted: the event is appended to the log; pass `token` \
                                    as `?after=` to read your write.",
                    "headers": headers,
                    "content": {"application/json": {"schema": {
                        "allOf": [
                            schema_ref("Accepted"),
                            {
                                "type": "object",
                                "required": [about],
                                "properties": {about: uuid("The aggregate the event is about.")},
                            },
                        ],
                    }}},
                }),
            );
        }
        Success::Read(schema) => {
            responses.insert(
                "200".into(),
                json!({
                    "description": "The view's current answer.",
                    "headers": {
                        "ETag": {"$ref": "#/components/headers/ETag"},
                        "Cache-Control": {
                            "description": "`no-cache`: revalidate with `If-None-Match`.",
                            "schema": {"type": "string"},
                        },
                    },
                    "content": {"application/json": {"schema": schema_ref(schema)}},
                }),
            );
            responses.insert(
                "304".into(),
                json!({"$ref": "#/components/responses/NotModified"}),
            );
        }
        Success::Stream => {
            responses.insert(
                "200".into(),
                json!({
                    "description": "A Server-Sent Events stream. Event names and their `data` \
                                    (JSON unless noted) are listed in `x-sse-events`; a \
                                    comment keeps the connection alive every 15 s.",
                    "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    "x-sse-events": {
                        "poll": schema_ref("Poll"),
                        "feed": schema_ref("FeedItem"),
                        "feed_deleted": {
                            "type": "object",
                            "required": ["item_id"],
                            "properties": {"item_id": uuid("The deleted item.")},
                        },
                        "cards": schema_ref("SessionCards"),
                        "upload": schema_ref("Card"),
                        "lagged": {
                            "type": "string",
                            "description": "Plain text: how many changes were skipped; reload.",
                        },
                    },
                }),
            );
        }
        Success::Text(ok, not_found) => {
            responses.insert(
                "200".into(),
                json!({
                    "description": ok,
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                }),
            );
            if let Some(nf) = not_found {
                responses.insert(
                    "404".into(),
                    json!({
                        "description": nf,
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }),
                );
            }
        }
        Success::Image => {
            let bytes = json!({"schema": {"type": "string", "contentMediaType": "application/octet-stream"}});
            responses.insert(
                "200".into(),
                json!({
                    "description": "The image. Keys never change meaning (an output names its \
                                    model version): `Cache-Control: immutable`.",
                    "content": {"image/jpeg": bytes, "image/png": bytes, "image/webp": bytes},
                }),
            );
        }
        Success::Static(media) => {
            let content: Map<String, Value> = media
                .iter()
                .map(|m| ((*m).to_owned(), json!({"schema": {"type": "string"}})))
                .collect();
            responses.insert(
                "200".into(),
                json!({
                    "description": "The file.",
                    "headers": {"Cache-Control": {
                        "description": "`no-cache`: a new binary's files are never mixed with old ones.",
                        "schema": {"type": "string"},
                    }},
                    "content": content,
                }),
            );
        }
        Success::Json(schema) => {
            responses.insert(
                "200".into(),
                json!({
                    "description": "The answer.",
                    "content": {"application/json": {"schema": schema_ref(schema)}},
                }),
            );
        }
        Success::JsonAccepted(schema) => {
            for (code, what) in [("202", "Started."), ("200", "A dry run: what would start.")] {
                responses.insert(
                    code.into(),
                    json!({
                        "description": what,
                        "content": {"application/json": {"schema": schema_ref(schema)}},
                    }),
                );
            }
        }
        Success::Export => {
            responses.insert(
                "200".into(),
                json!({
                    "description": "The whole view, sent as it is read. A failure after the \
                                    first byte ends the body with an error (the chunked \
                                    transfer is cut short, never closed cleanly): a body \
                                    that ended cleanly is complete.",
                    "headers": {"Content-Disposition": {
                        "description": "`attachment; filename=\"polls.jsonl\"` (`feed`, `.csv`).",
                        "schema": {"type": "string"},
                    }},
                    "content": {
                        "application/x-ndjson": {
                            "schema": {"type": "string"},
                            "x-ndjson-rows": {"oneOf": [schema_ref("Poll"), schema_ref("TimelineItem")]},
                        },
                        "text/csv": {"schema": {"type": "string"}},
                    },
                }),
            );
        }
        Success::Document => {
            responses.insert(
                "200".into(),
                json!({
                    "description": "This OpenAPI 3.1 document.",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                }),
            );
        }
    }
    let mut errors: Vec<u16> = op.errors.to_vec();
    if op.auth {
        errors.push(401);
    }
    if !op.query.is_empty() {
        errors.push(400);
    }
    if op.body.is_some() {
        errors.extend([400, 413, 415, 422]);
    }
    errors.sort_unstable();
    errors.dedup();
    for status in errors {
        let (_, name, _) = ERRORS
            .iter()
            .find(|(s, _, _)| *s == status)
            .unwrap_or_else(|| panic!("{} {}: no error response {status}", op.method, op.path));
        responses.insert(
            status.to_string(),
            json!({"$ref": format!("#/components/responses/{name}")}),
        );
    }

    let mut o = Map::new();
    o.insert("operationId".into(), op.operation_id.into());
    o.insert("summary".into(), op.summary.into());
    o.insert("description".into(), op.description.into());
    o.insert("tags".into(), json!([op.tag]));
    if !parameters.is_empty() {
        o.insert("parameters".into(), Value::Array(parameters));
    }
    if let Some(body) = op.body {
        let (media, schema) = match body {
            RequestBody::Json(s) => ("application/json", s),
            RequestBody::Multipart(s) => ("multipart/form-data", s),
        };
        o.insert(
            "requestBody".into(),
            json!({
                "required": true,
                "content": {media: {"schema": schema_ref(schema)}},
            }),
        );
    }
    o.insert("responses".into(), Value::Object(responses));
    if op.auth {
        o.insert("security".into(), json!([{"bearerAuth": []}]));
    }
    Value::Object(o)
}

fn components() -> Value {
    let parameters: Map<String, Value> = QueryParam::ALL
        .iter()
        .map(|q| (q.name().to_owned(), q.definition()))
        .chain([(
            "IfNoneMatch".to_owned(),
            json!({
                "name": "If-None-Match",
                "in": "header",
                "required": false,
                "description": "An `ETag` of an earlier answer (or `*`): 304 when the answer \
                                is unchanged.",
                "schema": {"type": "string"},
            }),
        )])
        .collect();
    let mut responses: Map<String, Value> = ERRORS
        .iter()
        .map(|(status, name, description)| {
            let mut r = json!({
                "description": description,
                "content": {"application/json": {"schema": schema_ref("Error")}},
            });
            if *status == 503 {
                r["headers"] = json!({"Retry-After": {
                    "description": "Seconds to wait before retrying.",
                    "schema": {"type": "integer"},
                }});
            }
            ((*name).to_owned(), r)
        })
        .collect();
    responses.insert(
        "NotModified".into(),
        json!({
            "description": "Not modified: the `If-None-Match` matched; no body.",
            "headers": {"ETag": {"$ref": "#/components/headers/ETag"}},
        }),
    );
    json!({
        "securitySchemes": {
            "bearerAuth": {
                "type": "http",
                "scheme": "bearer",
                "bearerFormat": "JWT",
                "description": "`Authorization: Bearer <token>`: an HS256 JWT (`sub`, `name`, \
                    optional `picture`, `exp`) signed with `auth.jwt_secret`, or an API key \
                    from `auth.api_keys`. The acting principal always comes from here, never \
                    from a request body.",
            },
        },
        "headers": {
            "ETag": {
                "description": "A strong validator of the answer's bytes.",
                "schema": {"type": "string"},
            },
        },
        "parameters": parameters,
        "responses": responses,
        "schemas": schemas(),
    })
}

fn schemas() -> Value {
    let mut m = Map::new();
    m.insert(
        "Error".into(),
        json!({
            "type": "object",
            "description": "Every error answer.",
            "required": ["error", "reason"],
            "properties": {
                "error": {"type": "string", "description": "Stable machine-readable code (`unknown_poll`, `invalid_body`, ...)."},
                "reason": {"type": "string", "description": "What went wrong, for a person."},
                "field": {"type": "string", "description": "The field the error is about, when one is."},
            },
        }),
    );
    m.insert(
        "Accepted".into(),
        json!({
            "type": "object",
            "description": "An accepted write; the aggregate's id is beside these fields.",
            "required": ["event_id", "token"],
            "properties": {
                "event_id": uuid("The appended event's id."),
                "token": {"type": "string", "description": "Consistency token: pass as `?after=` to read your write."},
            },
        }),
    );
    m.insert(
        "Principal".into(),
        json!({
            "type": "object",
            "description": "Who acted, as the authenticated caller was at the time.",
            "required": ["id", "name"],
            "properties": {
                "id": text_id(64, "Stable user id."),
                "name": {"type": "string", "description": "Display name."},
                "avatar_url": {"type": "string", "description": "Avatar URL."},
            },
        }),
    );
    m.insert(
        "Position".into(),
        json!({
            "type": "object",
            "description": "The log position of the last event the view applied.",
            "required": ["partition", "offset"],
            "properties": {
                "partition": {"type": "integer", "format": "int32"},
                "offset": {"type": "integer", "format": "int64"},
            },
        }),
    );
    m.insert(
        "CreatePoll".into(),
        json!({
            "type": "object",
            "additionalProperties": false,
            "required": ["head", "questions"],
            "properties": {
                "head": {"type": "string", "minLength": 1, "maxLength": 200, "description": "Headline."},
                "message": {"type": "string", "maxLength": 2000, "default": "", "description": "Longer description."},
                "ends_at": time("Votes at or after this time are rejected; must be in the future. Absent: open-ended."),
                "anonymous": {"type": "boolean", "default": false, "description": "Voters are never stored readable."},
                "multiple_choice": {"type": "boolean", "default": false, "description": "A ballot may choose several questions."},
                "questions": {
                    "type": "array",
                    "minItems": 2,
                    "maxItems": 20,
                    "description": "Question texts in display order; their ids are their positions.",
                    "items": {"type": "string", "minLength": 1, "maxLength": 200},
                },
            },
        }),
    );
    m.insert(
        "CastVote".into(),
        json!({
            "type": "object",
            "additionalProperties": false,
            "required": ["question_ids"],
            "properties": {
                "question_ids": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": 20,
                    "uniqueItems": true,
                    "description": "The chosen questions: exactly one unless the poll is multiple choice.",
                    "items": question_id(),
                },
            },
        }),
    );
    m.insert(
        "Poll".into(),
        json!({
            "type": "object",
            "required": [
                "poll_id", "owner", "head", "message", "created_at", "anonymous",
                "multiple_choice", "closed", "questions", "voters", "recent_voters",
                "rejected", "version",
            ],
            "properties": {
                "poll_id": uuid("The poll."),
                "owner": schema_ref("Principal"),
                "head": {"type": "string"},
                "message": {"type": "string"},
                "created_at": time("When it was created."),
                "ends_at": time("When voting ends; absent when open-ended."),
                "anonymous": {"type": "boolean"},
                "multiple_choice": {"type": "boolean"},
                "closed": {"type": "boolean", "description": "Closed by its owner."},
                "closed_at": time("When it was closed; absent while open."),
                "questions": {"type": "array", "items": schema_ref("QuestionTally"), "description": "In display order."},
                "voters": count("Voters with a ballot."),
                "recent_voters": {"type": "array", "items": schema_ref("RecentVoter"), "description": "Newest first; always empty for anonymous polls."},
                "rejected": rejected(),
                "version": schema_ref("Position"),
            },
        }),
    );
    m.insert(
        "QuestionTally".into(),
        json!({
            "type": "object",
            "required": ["id", "text", "votes"],
            "properties": {
                "id": question_id(),
                "text": {"type": "string"},
                "votes": count("Ballots choosing it."),
            },
        }),
    );
    m.insert(
        "RecentVoter".into(),
        json!({
            "type": "object",
            "required": ["id", "name", "at"],
            "properties": {
                "id": text_id(64, "Who."),
                "name": {"type": "string", "description": "Display name when they voted."},
                "avatar_url": {"type": "string"},
                "at": time("When they voted."),
            },
        }),
    );
    m.insert(
        "OwnerPollPage".into(),
        json!({
            "type": "object",
            "required": ["items"],
            "properties": {
                "items": {"type": "array", "items": schema_ref("OwnerPollRow")},
                "next_cursor": next_cursor(),
            },
        }),
    );
    m.insert(
        "OwnerPollRow".into(),
        json!({
            "type": "object",
            "required": ["poll_id", "created_at", "head", "closed", "ends_at", "voters", "position"],
            "properties": {
                "poll_id": uuid("The poll."),
                "created_at": time("When it was created."),
                "head": {"type": "string"},
                "closed": {"type": "boolean"},
                "ends_at": {"type": ["string", "null"], "format": "date-time", "description": "When voting ends; null when open-ended."},
                "voters": count("Voters with a ballot."),
                "position": schema_ref("Position"),
            },
        }),
    );
    m.insert(
        "VotersPage".into(),
        json!({
            "type": "object",
            "required": ["poll_id", "question_id", "voters"],
            "properties": {
                "poll_id": uuid("The poll."),
                "question_id": question_id(),
                "voters": {"type": "array", "items": schema_ref("Voter"), "description": "By user id."},
                "next_cursor": next_cursor(),
            },
        }),
    );
    m.insert(
        "Voter".into(),
        json!({
            "type": "object",
            "required": ["voter", "at"],
            "properties": {
                "voter": text_id(64, "Who."),
                "name": {"type": "string", "description": "Display name at voting time."},
                "at": time("When the ballot was cast."),
            },
        }),
    );
    m.insert(
        "CreateFeedItem".into(),
        json!({
            "description": "The kind and its fields.",
            "oneOf": [
                {
                    "type": "object",
                    "additionalProperties": false,
                    "required": ["kind", "title"],
                    "properties": {
                        "kind": {"const": "post"},
                        "title": {"type": "string", "minLength": 1, "maxLength": 200},
                        "body": {"type": "string", "maxLength": 10000, "default": ""},
                    },
                },
                {
                    "type": "object",
                    "additionalProperties": false,
                    "required": ["kind", "name", "location"],
                    "properties": {
                        "kind": {"const": "game"},
                        "name": {"type": "string", "minLength": 1, "maxLength": 200},
                        "location": {"type": "string", "minLength": 1, "maxLength": 200},
                    },
                },
                {
                    "type": "object",
                    "additionalProperties": false,
                    "required": ["kind", "room"],
                    "properties": {
                        "kind": {"const": "team"},
                        "room": {"type": "string", "minLength": 1, "maxLength": 200},
                    },
                },
            ],
        }),
    );
    m.insert(
        "FeedContent".into(),
        json!({
            "description": "What the item is: `kind` and that kind's fields.",
            "oneOf": [
                {
                    "type": "object",
                    "required": ["kind", "title", "body"],
                    "properties": {
                        "kind": {"const": "post"},
                        "title": {"type": "string"},
                        "body": {"type": "string"},
                    },
                },
                {
                    "type": "object",
                    "required": ["kind", "name", "location"],
                    "properties": {
                        "kind": {"const": "game"},
                        "name": {"type": "string"},
                        "location": {"type": "string"},
                    },
                },
                {
                    "type": "object",
                    "required": ["kind", "room"],
                    "properties": {
                        "kind": {"const": "team"},
                        "room": {"type": "string"},
                    },
                },
            ],
        }),
    );
    m.insert(
        "FeedItem".into(),
        json!({
            "allOf": [
                schema_ref("FeedContent"),
                {
                    "type": "object",
                    "required": [
                        "item_id", "author", "created_at", "likes", "joined",
                        "recent_members", "rejected", "version",
                    ],
                    "properties": {
                        "item_id": uuid("The item."),
                        "author": schema_ref("Principal"),
                        "created_at": time("When it was created."),
                        "likes": count("Users who like it."),
                        "joined": count("Users who joined it (games and teams)."),
                        "recent_members": {"type": "array", "items": schema_ref("RecentMember"), "description": "Newest first."},
                        "rejected": rejected(),
                        "version": schema_ref("Position"),
                    },
                },
            ],
        }),
    );
    m.insert(
        "RecentMember".into(),
        json!({
            "type": "object",
            "required": ["id", "name", "at"],
            "properties": {
                "id": text_id(64, "Who."),
                "name": {"type": "string"},
                "avatar_url": {"type": "string"},
                "at": time("When they joined."),
            },
        }),
    );
    m.insert(
        "TimelinePage".into(),
        json!({
            "type": "object",
            "required": ["kind", "items"],
            "properties": {
                "kind": {"type": "string", "enum": ["post", "game", "team", "all"], "description": "The kind asked for."},
                "items": {"type": "array", "items": schema_ref("TimelineItem"), "description": "Newest first."},
                "next_cursor": next_cursor(),
            },
        }),
    );
    m.insert(
        "TimelineItem".into(),
        json!({
            "allOf": [
                schema_ref("FeedContent"),
                {
                    "type": "object",
                    "required": ["item_id", "author", "created_at", "likes", "joined"],
                    "properties": {
                        "item_id": uuid("The item."),
                        "author": schema_ref("Principal"),
                        "created_at": time("When it was created."),
                        "likes": count("Users who like it."),
                        "joined": count("Users who joined it."),
                    },
                },
            ],
        }),
    );
    m.insert(
        "SessionCards".into(),
        json!({
            "type": "object",
            "required": ["session_key", "cards"],
            "properties": {
                "session_key": text_id(64, "The session."),
                "cards": {"type": "array", "items": schema_ref("Card"), "description": "By slot; empty slots are absent."},
            },
        }),
    );
    m.insert(
        "Card".into(),
        json!({
            "type": "object",
            "description": "An upload in a session's slot and its job status; fields not known yet are absent.",
            "properties": {
                "upload_id": uuid("The upload shown in this slot."),
                "slot": {"type": "integer", "minimum": 1, "maximum": 3},
                "session_key": text_id(64, "Its session."),
                "style": text_id(40, "Requested style."),
                "input_key": {"type": "string", "description": "Where the input lies in the blob store."},
                "content_type": {"type": "string", "description": "Input media type."},
                "width": {"type": "integer", "minimum": 0, "description": "Input width."},
                "height": {"type": "integer", "minimum": 0, "description": "Input height."},
                "bytes": count("Input size."),
                "received_at": time("When the upload was accepted."),
                "status": {"type": "string", "enum": ["received", "started", "failed", "completed"]},
                "started_at": time("When a worker picked it up."),
                "finished_at": time("When it completed or failed."),
                "model_version": text_id(40, "Model version that ran (or runs) it."),
                "output_key": {"type": "string", "description": "Where the output lies in the blob store."},
                "timings": schema_ref("Timings"),
                "error": {"type": "string", "description": "Why it failed."},
                "retriable": {"type": "boolean", "description": "Whether retrying may help."},
            },
        }),
    );
    m.insert(
        "UploadForm".into(),
        json!({
            "type": "object",
            "description": "The multipart form of an upload.",
            "required": ["image", "session_key", "slot", "style"],
            "properties": {
                "image": {"type": "string", "contentMediaType": "application/octet-stream", "description": "A JPEG, PNG or WebP file."},
                "session_key": text_id(64, "The session whose cards show it."),
                "slot": {"type": "integer", "minimum": 1, "maximum": 3, "description": "Card slot."},
                "style": text_id(40, "A style from `GET /v1/styles`."),
            },
        }),
    );
    m.insert(
        "Styles".into(),
        json!({
            "type": "object",
            "required": ["styles"],
            "properties": {
                "styles": {"type": "array", "items": {
                    "type": "object",
                    "required": ["style", "version"],
                    "properties": {
                        "style": text_id(40, "The style."),
                        "version": text_id(40, "Its current model version."),
                    },
                }},
            },
        }),
    );
    m.insert(
        "Timings".into(),
        json!({
            "type": "object",
            "description": "Time spent per stage, in milliseconds.",
            "required": ["queue_ms", "decode_ms", "infer_ms", "encode_ms"],
            "properties": {
                "queue_ms": count("Waiting for a batch."),
                "decode_ms": count("Fetch and decode."),
                "infer_ms": count("Model execution (the batch's share)."),
                "encode_ms": count("Encode and store."),
                "batch": {"type": "integer", "minimum": 1, "description": "Images in the model call that ran it."},
            },
        }),
    );
    dlq_schemas(&mut m);
    ops_schemas(&mut m);
    Value::Object(m)
}

/// Schemas of the replay and pipeline-health routes.
fn ops_schemas(m: &mut Map<String, Value>) {
    let int = |d: &str| json!({"type": "integer", "description": d});
    let nullable_int = |d: &str| json!({"type": ["integer", "null"], "description": d});
    let view = || json!({"type": "string", "enum": ["polls", "feed", "cards", "infer"]});
    m.insert(
        "Ready".into(),
        json!({
            "type": "object",
            "required": ["ready", "lag"],
            "properties": {
                "ready": {"type": "boolean"},
                "lag": int("Records the views have yet to apply."),
            },
        }),
    );
    m.insert(
        "Pipeline".into(),
        json!({
            "type": "object",
            "required": ["at_ms", "topics", "lag", "dlq", "views"],
            "properties": {
                "at_ms": int("When this was measured (ms since the epoch)."),
                "topics": {"type": "array", "items": {
                    "type": "object",
                    "required": ["topic", "consumed", "lag"],
                    "properties": {
                        "topic": {"type": "string"},
                        "consumed": int("Records applied so far (a counter)."),
                        "lag": int("Records not applied yet."),
                    },
                }},
                "lag": int("Sum of the topics' lag."),
                "dlq": int("Records in the DLQ topic (replay markers included)."),
                "views": {"type": "array", "items": {
                    "type": "object",
                    "required": ["view", "active", "phase"],
                    "properties": {
                        "view": view(),
                        "active": int("Generation serving reads."),
                        "building": nullable_int("Generation being rebuilt."),
                        "phase": {"type": "string", "enum": ["idle", "building", "swapping"]},
                    },
                }},
            },
        }),
    );
    m.insert(
        "StartReplay".into(),
        json!({
            "type": "object",
            "additionalProperties": false,
            "properties": {
                "view": {"type": "string", "enum": ["polls", "feed", "cards", "all"]},
                "stage": {"type": "string", "enum": ["infer"]},
                "from": {
                    "description": "`earliest` (default), an RFC 3339 time, or ms since the epoch.",
                    "oneOf": [{"type": "string"}, {"type": "integer", "minimum": 0}, {"type": "null"}],
                },
                "dry_run": {"type": "boolean", "default": false},
            },
        }),
    );
    m.insert(
        "Rebuilds".into(),
        json!({
            "type": "object",
            "required": ["rebuilds"],
            "properties": {"rebuilds": {"type": "array", "items": {
                "type": "object",
                "required": ["view", "active", "building", "records", "dry_run"],
                "properties": {
                    "view": view(),
                    "active": int("Generation serving reads now."),
                    "building": int("The new generation."),
                    "records": int("Records to replay."),
                    "dry_run": {"type": "boolean"},
                },
            }}},
        }),
    );
    m.insert(
        "ReplayStatus".into(),
        json!({
            "type": "object",
            "required": ["views", "infer"],
            "properties": {
                "views": {"type": "array", "items": {
                    "type": "object",
                    "required": ["view", "active", "phase", "retired", "partitions", "lag"],
                    "properties": {
                        "view": view(),
                        "active": int("Generation serving reads."),
                        "building": nullable_int("Generation being rebuilt."),
                        "phase": {"type": "string", "enum": ["idle", "building", "swapping"]},
                        "retired": {"type": "array", "items": {"type": "integer"}},
                        "lag": int("Records the active generation has yet to apply."),
                        "building_applied": int("Records the new generation has applied."),
                        "building_remaining": int("Records it has yet to apply."),
                        "partitions": {"type": "array", "items": {
                            "type": "object",
                            "required": ["topic", "partition", "head", "active"],
                            "properties": {
                                "topic": {"type": "string"},
                                "partition": int("Partition."),
                                "head": int("The log's next offset."),
                                "active": int("Last offset applied by the active generation."),
                                "building": int("Last offset applied by the new generation."),
                            },
                        }},
                    },
                }},
                "infer": {"type": "object", "required": ["generation", "group"], "properties": {
                    "generation": int("The inference stage's generation."),
                    "group": {"type": "string", "description": "Its consumer group."},
                }},
            },
        }),
    );
    m.insert(
        "GcResult".into(),
        json!({
            "type": "object",
            "required": ["dropped"],
            "properties": {"dropped": {"type": "array", "items": {
                "type": "object",
                "required": ["view", "generation"],
                "properties": {"view": view(), "generation": int("Generation dropped.")},
            }}},
        }),
    );
}

/// Schemas of the dead-letter routes (`/v1/admin/dlq`).
fn dlq_schemas(m: &mut Map<String, Value>) {
    let nullable = |s: Value| json!({"oneOf": [s, {"type": "null"}]});
    let partition = || json!({"type": "integer", "minimum": 0, "description": "Partition."});
    let place = |description: &str| {
        json!({
            "type": "object",
            "description": description,
            "required": ["topic", "partition", "offset"],
            "properties": {
                "topic": {"type": "string", "description": "Full topic name."},
                "partition": partition(),
                "offset": count("Offset."),
            },
        })
    };
    let text_or_base64 = |what: &str| json!({"type": ["string", "null"], "description": format!("{what}: UTF-8 text, or base64 where the flag beside it says so; `null` when absent.")});
    let flag = |what: &str| json!({"type": "boolean", "description": format!("{what} is base64 (its bytes are not UTF-8).")});
    m.insert(
        "DlqSource".into(),
        place("Where a dead letter came from: its record in the source topic."),
    );
    m.insert(
        "DlqReplayed".into(),
        json!({
            "type": "object",
            "description": "The latest replay of a dead letter: where the copy went, when, by whom.",
            "required": ["topic", "partition", "offset", "at", "by"],
            "properties": {
                "topic": {"type": "string", "description": "The source topic the copy went to."},
                "partition": partition(),
                "offset": count("The copy's offset."),
                "at": {"type": ["string", "null"], "format": "date-time", "description": "When it was replayed."},
                "by": {"type": ["string", "null"], "description": "The admin who replayed it."},
            },
        }),
    );
    m.insert(
        "DlqHeader".into(),
        json!({
            "type": "object",
            "description": "A record header, in order (names may repeat).",
            "required": ["name", "value", "base64"],
            "properties": {
                "name": {"type": "string"},
                "value": {"type": "string", "description": "UTF-8 text, or base64 when `base64`."},
                "base64": {"type": "boolean"},
            },
        }),
    );
    m.insert(
        "DeadLetter".into(),
        json!({
            "type": "object",
            "description": "A record the pipeline could not process, as the DLQ holds it.",
            "required": ["partition", "offset", "stage", "error", "source", "attempts", "key",
                         "key_base64", "type", "id", "at", "replayed"],
            "properties": {
                "partition": partition(),
                "offset": count("Its offset in that DLQ partition: with `partition`, its position."),
                "stage": {"type": "string", "description": "The stage that refused it (`project.polls`, `infer`, ...)."},
                "error": {"type": "string", "description": "Why."},
                "source": nullable(schema_ref("DlqSource")),
                "attempts": {"type": ["integer", "null"], "minimum": 0, "description": "Attempts made before giving up."},
                "key": text_or_base64("The record's key"),
                "key_base64": flag("`key`"),
                "type": {"type": ["string", "null"], "description": "The event type (`ce_type`), when the header is there."},
                "id": {"type": ["string", "null"], "description": "The event id (`ce_id`), when the header is there."},
                "at": {"type": ["string", "null"], "format": "date-time", "description": "When it was dead-lettered (the DLQ record's time)."},
                "replayed": nullable(schema_ref("DlqReplayed")),
            },
        }),
    );
    m.insert(
        "DeadLetterPage".into(),
        json!({
            "type": "object",
            "description": "Dead letters, oldest first.",
            "required": ["dead_letters"],
            "properties": {
                "dead_letters": {"type": "array", "items": schema_ref("DeadLetter")},
                "next_cursor": next_cursor(),
            },
        }),
    );
    m.insert(
        "DeadLetterRecord".into(),
        json!({
            "description": "A dead letter in full.",
            "allOf": [
                schema_ref("DeadLetter"),
                {
                    "type": "object",
                    "required": ["headers", "payload", "payload_base64"],
                    "properties": {
                        "headers": {"type": "array", "items": schema_ref("DlqHeader")},
                        "payload": text_or_base64("The body"),
                        "payload_base64": flag("`payload`"),
                    },
                },
            ],
        }),
    );
    let dlq_offset = json!({"type": "integer", "format": "int64", "minimum": 0});
    m.insert(
        "ReplayDeadLetters".into(),
        json!({
            "type": "object",
            "description": "One dead letter by position, optionally corrected; or every dead \
                letter matching `filter`, unchanged (those replayed before are skipped).",
            "additionalProperties": false,
            "oneOf": [{"required": ["partition", "offset"]}, {"required": ["filter"]}],
            "properties": {
                "partition": {"type": "integer", "minimum": 0, "description": "The dead letter's DLQ partition."},
                "offset": dlq_offset,
                "payload": {"description": "A corrected body: a string is sent as it is, any other JSON value as its JSON text."},
                "headers": {
                    "type": "object",
                    "description": "Headers to set on the copy; `null` removes one. `dlq_*` are the DLQ's own (422 `invalid_header`).",
                    "additionalProperties": {"type": ["string", "null"]},
                },
                "force": {"type": "boolean", "default": false, "description": "Replay even if it was replayed before."},
                "dry_run": {"type": "boolean", "default": false, "description": "Answer what would be published; publish nothing."},
                "filter": {
                    "type": "object",
                    "description": "At least one of these.",
                    "additionalProperties": false,
                    "minProperties": 1,
                    "properties": {
                        "stage": {"type": "string", "description": "Exactly this stage."},
                        "topic": {"type": "string", "description": "This source topic (full name or without the namespace)."},
                        "error": {"type": "string", "description": "The error contains this text."},
                    },
                },
            },
        }),
    );
    m.insert(
        "DeadLetterReplay".into(),
        json!({
            "type": "object",
            "description": "What one replay published (or would publish).",
            "required": ["partition", "offset", "topic", "to", "marker", "key", "key_base64",
                         "headers", "payload", "payload_base64"],
            "properties": {
                "partition": partition(),
                "offset": count("The dead letter's DLQ offset."),
                "topic": {"type": "string", "description": "The source topic the copy goes to."},
                "to": nullable(place("Where the copy landed (`null` on a dry run).")),
                "marker": nullable(json!({
                    "type": "object",
                    "description": "The replay marker in the DLQ (`null` on a dry run).",
                    "required": ["partition", "offset"],
                    "properties": {"partition": partition(), "offset": count("Offset.")},
                })),
                "key": text_or_base64("The key"),
                "key_base64": flag("`key`"),
                "headers": {"type": "array", "items": schema_ref("DlqHeader")},
                "payload": text_or_base64("The body"),
                "payload_base64": flag("`payload`"),
            },
        }),
    );
    m.insert(
        "ReplayResult".into(),
        json!({
            "type": "object",
            "description": "What a replay did (or, on a dry run, would do).",
            "required": ["dry_run", "replayed", "skipped", "truncated"],
            "properties": {
                "dry_run": {"type": "boolean"},
                "replayed": {"type": "array", "items": schema_ref("DeadLetterReplay")},
                "skipped": {
                    "type": "array",
                    "description": "Matching dead letters left alone, and why (at most 200 listed).",
                    "items": {
                        "type": "object",
                        "required": ["partition", "offset", "reason", "replayed"],
                        "properties": {
                            "partition": partition(),
                            "offset": count("Offset."),
                            "reason": {"type": "string"},
                            "replayed": nullable(schema_ref("DlqReplayed")),
                        },
                    },
                },
                "truncated": {"type": "boolean", "description": "More matched than one call replays: call again for the rest."},
            },
        }),
    );
}

fn schema_ref(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn uuid(description: &str) -> Value {
    json!({"type": "string", "format": "uuid", "description": description})
}

fn text_id(max: u32, description: &str) -> Value {
    json!({
        "type": "string",
        "pattern": format!("^[A-Za-z0-9_.:@-]{{1,{max}}}$"),
        "description": description,
    })
}

fn time(description: &str) -> Value {
    json!({"type": "string", "format": "date-time", "description": description})
}

fn count(description: &str) -> Value {
    json!({"type": "integer", "format": "int64", "minimum": 0, "description": description})
}

fn question_id() -> Value {
    json!({"type": "integer", "minimum": 0, "maximum": 19, "description": "A question's position in its poll."})
}

fn next_cursor() -> Value {
    json!({"type": "string", "description": "Pass as `?cursor=` for the next page; absent on the last page."})
}

fn rejected() -> Value {
    json!({
        "type": "object",
        "description": "Events the fold refused, counted by reason.",
        "additionalProperties": {"type": "integer", "minimum": 0},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reference_resolves() {
        fn walk(doc: &Value, v: &Value, out: &mut Vec<String>) {
            match v {
                Value::Object(m) => {
                    if let Some(Value::String(r)) = m.get("$ref") {
                        let ok = r.strip_prefix('#').and_then(|p| doc.pointer(p)).is_some();
                        if !ok {
                            out.push(r.clone());
                        }
                    }
                    m.values().for_each(|v| walk(doc, v, out));
                }
                Value::Array(a) => a.iter().for_each(|v| walk(doc, v, out)),
                _ => {}
            }
        }
        let doc = document();
        let mut dangling = Vec::new();
        walk(&doc, &doc, &mut dangling);
        assert_eq!(dangling, Vec::<String>::new());
    }

    #[test]
    fn operation_ids_are_unique() {
        let mut ids: Vec<&str> = OPERATIONS.iter().map(|o| o.operation_id).collect();
        ids.sort_unstable();
        let n = ids.len();
        ids.dedup();
        assert_eq!(ids.len(), n);
    }
}
