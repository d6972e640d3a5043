//! The authorization matrix: every operation of the OpenAPI document is
//! called as an anonymous caller, as the owner of what it names, as another
//! user and as an administrator, and each answer's status is checked
//! against one table. An operation the document has and the table lacks
//! (or the other way round) fails the test: a new route needs a row.
//!
//! Ann owns everything the requests name (a poll, feed items, a session
//! with a finished upload); Bob is the other user; `admin` the
//! administrator. Writes carry bodies valid enough to get past their
//! checks, so a status is the authorization's, not a validation's.

use std::collections::BTreeSet;

use atelier::event::{SessionKey, UploadId};
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{Backends, TestApp};

/// Who calls.
#[derive(Clone, Copy, Debug)]
enum As {
    Anonymous,
    Owner,
    Other,
    Admin,
}

impl As {
    fn user(self) -> Option<&'static str> {
        match self {
            As::Anonymous => None,
            As::Owner => Some("ann"),
            As::Other => Some("bob"),
            As::Admin => Some(atelier::config::ADMIN),
        }
    }
}

/// The order the callers go in: the owner last, so that what the owner's
/// call changes (a deleted item, a closed poll) is seen by nobody else.
const ORDER: [As; 4] = [As::Anonymous, As::Other, As::Admin, As::Owner];

/// Operation id → the status for [anonymous, owner, other, admin].
///
/// Reading what is public (polls, the feed, styles) is everyone's; writing
/// needs a signed-in caller; deleting and closing are the author's and
/// owner's; sessions, their uploads and images are the owner's and the
/// administrators' (404 for everyone else, so that ids leak nothing; 403
/// for an upload into another's session); the operations routes are the
/// administrators'. The operations endpoints (`/metrics`, `/v1/pipeline`)
/// are open here as on the embedded default; `tests/it/ops_endpoints.rs`
/// covers `http.ops_token` and `http.ops_listen`.
const MATRIX: &[(&str, [u16; 4])] = &[
    // The page and the process.
    ("dashboard", [200, 200, 200, 200]),
    ("dashboardAsset", [200, 200, 200, 200]),
    ("healthz", [200, 200, 200, 200]),
    ("readyz", [200, 200, 200, 200]),
    ("openapi", [200, 200, 200, 200]),
    ("metrics", [200, 200, 200, 200]),
    ("pipeline", [200, 200, 200, 200]),
    // Polls: public reads, signed-in writes, the owner closes.
    ("createPoll", [401, 202, 202, 202]),
    ("readPoll", [200, 200, 200, 200]),
    ("listQuestionVoters", [200, 200, 200, 200]),
    ("listPollsByOwner", [200, 200, 200, 200]),
    ("castVote", [401, 202, 202, 202]),
    ("retractVote", [401, 202, 202, 202]),
    ("closePoll", [401, 202, 403, 403]),
    // The feed: public reads, signed-in writes, the author deletes.
    ("readTimeline", [200, 200, 200, 200]),
    ("readFeedItem", [200, 200, 200, 200]),
    ("createFeedItem", [401, 202, 202, 202]),
    ("likeFeedItem", [401, 202, 202, 202]),
    ("unlikeFeedItem", [401, 202, 202, 202]),
    ("joinFeedItem", [401, 202, 202, 202]),
    ("leaveFeedItem", [401, 202, 202, 202]),
    ("deleteFeedItem", [401, 202, 403, 403]),
    // Sessions, uploads and images: the owner's and the administrators'.
    ("createSession", [401, 200, 200, 200]),
    ("listSessions", [401, 200, 200, 200]),
    ("readMe", [401, 200, 200, 200]),
    ("shareSession", [401, 200, 404, 404]),
    ("readSessionCards", [404, 200, 404, 200]),
    ("readUpload", [404, 200, 404, 200]),
    ("readUploadImage", [404, 200, 404, 200]),
    ("stream", [404, 200, 404, 200]),
    // Only the owner uploads into a session (and this app publishes no
    // model, so the owner's upload stops at the style: past every check of
    // who may).
    ("createUpload", [401, 422, 403, 403]),
    ("listStyles", [200, 200, 200, 200]),
    // Operations: administrators only (the administrator's bodies select
    // nothing or are refused for what they are, after the check of who).
    ("listDeadLetters", [401, 403, 403, 200]),
    ("readDeadLetter", [401, 403, 403, 404]),
    ("replayDeadLetters", [401, 403, 403, 422]),
    ("exportView", [401, 403, 403, 200]),
    ("replayStatus", [401, 403, 403, 200]),
    ("startReplay", [401, 403, 403, 422]),
    ("replayGc", [401, 403, 403, 200]),
    ("sweepBlobs", [401, 403, 403, 200]),
];

/// What the requests name, all Ann's.
struct Fixtures {
    poll: String,
    /// A poll only `closePoll` touches.
    poll_to_close: String,
    game: String,
    /// An item only `deleteFeedItem` touches.
    item_to_delete: String,
    session: SessionKey,
    upload: UploadId,
}

/// A request body.
enum Body {
    None,
    Json(Value),
    /// The upload form, into this session.
    Upload(String),
}

/// The request an operation is called with; `None` for an operation this
/// test does not know (it then fails, naming it).
fn request(op: &str, f: &Fixtures) -> Option<(Method, String, Body)> {
    let (p, item, s, u) = (&f.poll, &f.game, f.session.as_str(), f.upload);
    let get = |path: String| Some((Method::GET, path, Body::None));
    let post = |path: String, body: Value| Some((Method::POST, path, Body::Json(body)));
    let delete = |path: String| Some((Method::DELETE, path, Body::None));
    match op {
        "dashboard" => get("/".into()),
        "dashboardAsset" => get("/dashboard/app.js".into()),
        "healthz" => get("/healthz".into()),
        "readyz" => get("/readyz".into()),
        "openapi" => get("/openapi.json".into()),
        "metrics" => get("/metrics".into()),
        "pipeline" => get("/v1/pipeline".into()),
        "createPoll" => post(
            "/v1/polls".into(),
            json!({"head": "Lunch?", "questions": ["Pizza", "Sushi"]}),
        ),
        "readPoll" => get(format!("/v1/polls/{p}")),
        "listQuestionVoters" => get(format!("/v1/polls/{p}/questions/1/voters")),
        "listPollsByOwner" => get("/v1/users/ann/polls".into()),
        "castVote" => post(format!("/v1/polls/{p}/votes"), json!({"question_ids": [1]})),
        "retractVote" => delete(format!("/v1/polls/{p}/votes")),
        "closePoll" => post(format!("/v1/polls/{}/close", f.poll_to_close), json!({})),
        "readTimeline" => get("/v1/feed".into()),
        "readFeedItem" => get(format!("/v1/feed/{item}")),
        "createFeedItem" => post("/v1/feed".into(), json!({"kind": "post", "title": "Hi"})),
        "likeFeedItem" => post(format!("/v1/feed/{item}/likes"), json!({})),
        "unlikeFeedItem" => delete(format!("/v1/feed/{item}/likes")),
        "joinFeedItem" => post(format!("/v1/feed/{item}/members"), json!({})),
        "leaveFeedItem" => delete(format!("/v1/feed/{item}/members")),
        "deleteFeedItem" => delete(format!("/v1/feed/{}", f.item_to_delete)),
        "createSession" => post("/v1/sessions".into(), json!({})),
        "listSessions" => get("/v1/sessions".into()),
        "readMe" => get("/v1/me".into()),
        "shareSession" => post(format!("/v1/sessions/{s}/share"), json!({})),
        "readSessionCards" => get(format!("/v1/sessions/{s}/cards")),
        "readUpload" => get(format!("/v1/uploads/{u}")),
        "readUploadImage" => get(format!("/v1/uploads/{u}/image?variant=output")),
        "stream" => get(format!("/v1/stream?session={s}")),
        "createUpload" => Some((Method::POST, "/v1/uploads".into(), Body::Upload(s.into()))),
        "listStyles" => get("/v1/styles".into()),
        "listDeadLetters" => get("/v1/admin/dlq".into()),
        "readDeadLetter" => get("/v1/admin/dlq/0/999999".into()),
        "replayDeadLetters" => post("/v1/admin/dlq/replay".into(), json!({})),
        "exportView" => get("/v1/admin/export?view=polls".into()),
        "replayStatus" => get("/v1/admin/replay".into()),
        "startReplay" => post("/v1/admin/replay".into(), json!({})),
        "replayGc" => post("/v1/admin/replay/gc".into(), json!({})),
        // A dry run: the test bucket is shared with tests running beside.
        "sweepBlobs" => post("/v1/admin/blobs/gc?dry_run=true".into(), json!({})),
        _ => None,
    }
}

/// Every operation id of the document.
fn operations() -> BTreeSet<String> {
    let doc = atelier::api::document();
    doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|ops| ops.as_object().unwrap().values())
        .filter_map(|op| op["operationId"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn every_operation_has_a_row() {
    let documented = operations();
    let table: BTreeSet<String> = MATRIX.iter().map(|(op, _)| (*op).to_owned()).collect();
    let missing: Vec<_> = documented.difference(&table).collect();
    let stale: Vec<_> = table.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "operations without a row in the authorization matrix: {missing:?}"
    );
    assert!(stale.is_empty(), "rows for no operation: {stale:?}");
    assert_eq!(table.len(), MATRIX.len(), "one row per operation");
}

fn png() -> Vec<u8> {
    use atelier::image::codec;
    codec::encode_png(codec::test_pattern(8, 8, 1).as_raw(), 8, 8).unwrap()
}

async fn send(t: &TestApp, who: As, method: Method, path: &str, body: &Body) -> (u16, String) {
    let mut req = t.http.request(method, format!("{}{path}", t.url));
    if let Some(u) = who.user() {
        req = req.bearer_auth(t.token(u));
    }
    req = match body {
        Body::None => req,
        Body::Json(v) => req.json(v),
        Body::Upload(session) => req.multipart(
            reqwest::multipart::Form::new()
                .text("session_key", session.clone())
                .text("slot", "1")
                .text("style", "mosaic")
                .part(
                    "image",
                    reqwest::multipart::Part::bytes(png()).file_name("a.png"),
                ),
        ),
    };
    let res = req.send().await.expect("request sent");
    let status = res.status().as_u16();
    // A stream answers its head and then stays open: its status is enough.
    if path.starts_with("/v1/stream") {
        return (status, String::new());
    }
    (status, res.text().await.unwrap_or_default())
}

/// Ann's poll, game, item to delete, and session with a finished upload,
/// applied to the views before the first call.
async fn fixtures(t: &TestApp) -> Fixtures {
    let created = |path: &'static str, body: Value| async move {
        let (s, v) = t.post(path, "ann", body).await;
        assert_eq!(s, 202, "{v}");
        v
    };
    let poll = created(
        "/v1/polls",
        json!({"head": "Tea?", "questions": ["Green", "Black"]}),
    )
    .await;
    let poll_to_close = created(
        "/v1/polls",
        json!({"head": "Close me", "questions": ["A", "B"]}),
    )
    .await;
    let game = created(
        "/v1/feed",
        json!({"kind": "game", "name": "Chess", "location": "Park"}),
    )
    .await;
    let doomed = created("/v1/feed", json!({"kind": "post", "title": "Bye"})).await;

    let (s, minted) = t.post("/v1/sessions", "ann", json!({})).await;
    assert_eq!(s, 200, "{minted}");
    let session = SessionKey::parse(minted["session_key"].as_str().unwrap()).unwrap();
    let (upload, upload_tokens) = crate::access::completed_upload(t, "ann", &session).await;
    // Everything applied before the first call: each write's token read
    // back on a view of its topic.
    let mut reads: Vec<String> = Vec::new();
    for v in [&poll, &poll_to_close] {
        reads.push(format!(
            "/v1/users/ann/polls?after={}",
            v["token"].as_str().unwrap()
        ));
    }
    for v in [&game, &doomed] {
        reads.push(format!("/v1/feed?after={}", v["token"].as_str().unwrap()));
    }
    for tok in &upload_tokens {
        reads.push(format!("/v1/sessions/{session}/cards?after={tok}"));
    }
    // 503 `not_yet_applied` is the contract's "retry" (the wait is bounded
    // by `max_after_wait`, which a loaded machine can outlast): retried
    // for up to a minute; any other answer fails at once.
    for path in &reads {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let (s, v) = t.get_as("ann", path).await;
            if s == 503
                && v["error"].as_str() == Some("not_yet_applied")
                && std::time::Instant::now() < deadline
            {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                continue;
            }
            assert_eq!(s, 200, "{path}: {v}");
            break;
        }
    }
    let id = |v: &Value, f: &str| v[f].as_str().unwrap().to_owned();
    Fixtures {
        poll: id(&poll, "poll_id"),
        poll_to_close: id(&poll_to_close, "poll_id"),
        game: id(&game, "item_id"),
        item_to_delete: id(&doomed, "item_id"),
        session,
        upload,
    }
}

async fn every_operation_answers_each_caller_as_the_matrix_says(b: Backends) {
    let Some(t) = TestApp::spawn(b).await else {
        return;
    };
    let f = fixtures(&t).await;
    let documented = operations();
    let mut wrong = Vec::new();
    for (op, want) in MATRIX {
        assert!(documented.contains(*op), "{op} is not in the document");
        let (method, path, body) =
            request(op, &f).unwrap_or_else(|| panic!("no request for {op}: add one"));
        for who in ORDER {
            let (status, text) = send(&t, who, method.clone(), &path, &body).await;
            let expected = want[match who {
                As::Anonymous => 0,
                As::Owner => 1,
                As::Other => 2,
                As::Admin => 3,
            }];
            if status != expected {
                wrong.push(format!(
                    "{op} {method} {path} as {who:?}: {status}, not {expected} ({})",
                    text.chars().take(200).collect::<String>()
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    t.stop().await;
}
both!(every_operation_answers_each_caller_as_the_matrix_says);
