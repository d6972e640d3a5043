//! Dead letters end to end: poison records (undecodable, schema-invalid) on
//! each projected topic land in the DLQ with their reason and source while
//! the events after them apply; a corrected replay takes effect exactly once
//! however often it is asked for; bulk replays skip what was replayed; and
//! `atelier dlq` does the same from the command line.
//!
//! Poison on the uploads topic is dead-lettered by the inference worker: see
//! tests/it/infer.rs (it needs the `torch` feature).

use std::process::Command;

use atelier::api::Token;
use atelier::bus::Appended;
use atelier::event::wire::{self, WireRecord};
use atelier::event::{
    Event, EventData, FeedContent, FeedItemCreated, FeedItemId, ModelVersion, PollId, Style,
    StyleTransferStarted, TransferRef, UploadId, UploadReceived, VoteCast,
};
use serde_json::{Value, json};

use crate::helpers::{Backends, TestApp, event, unique};

const ADMIN: &str = "admin";

/// Appends a record as the ingest edge would, but with `body` (and the
/// header `drop` left out) instead of what `e` encodes to.
async fn poison(t: &TestApp, e: &Event, body: &[u8], drop: Option<&str>) -> Appended {
    let rec = wire::encode(e, "test/poison");
    let hs: Vec<(&str, &[u8])> = rec
        .headers
        .iter()
        .filter(|(k, _)| Some(k.as_str()) != drop)
        .map(|(k, v)| (k.as_str(), v.as_slice()))
        .collect();
    t.app
        .producer
        .send_raw(
            &t.app.config.kafka.topic(rec.topic),
            Some(rec.key.as_bytes()),
            &hs,
            Some(body),
        )
        .await
        .expect("poison appended")
}

/// `e`'s body with the field at `pointer` (which must exist) set to `value`.
fn edited_body(e: &Event, pointer: &str, value: Value) -> Vec<u8> {
    let WireRecord { body, .. } = wire::encode(e, "test/poison");
    let mut v: Value = serde_json::from_slice(&body).unwrap();
    let shown = v.to_string();
    *v.pointer_mut(pointer)
        .unwrap_or_else(|| panic!("no {pointer} in {shown}")) = value;
    serde_json::to_vec(&v).unwrap()
}

fn tallies(v: &Value) -> Vec<u64> {
    v["questions"]
        .as_array()
        .unwrap_or_else(|| panic!("no questions in {v}"))
        .iter()
        .map(|q| q["votes"].as_u64().unwrap())
        .collect()
}

/// Asserts an answer is what the OpenAPI document says for that route and
/// status.
fn documented(method: &str, template: &str, (status, body): &(u16, Value)) {
    let doc = atelier::api::document();
    let c = crate::openapi::Checker { doc: &doc };
    let what = format!("{method} {template} answered {status} {body}");
    let schema = c
        .response(method, template, *status)
        .and_then(|r| r.pointer("/content/application~1json/schema"))
        .unwrap_or_else(|| panic!("{what}: not documented"));
    c.assert_matches(schema, body, &what);
}

async fn admin_get(t: &TestApp, path: &str) -> (u16, Value) {
    let answer = t.call(reqwest::Method::GET, path, Some(ADMIN), None).await;
    let template = if path.starts_with("/v1/admin/dlq?") || path == "/v1/admin/dlq" {
        "/v1/admin/dlq"
    } else {
        "/v1/admin/dlq/{partition}/{offset}"
    };
    documented("get", template, &answer);
    answer
}

async fn replay(t: &TestApp, user: &str, body: Value) -> (u16, Value) {
    let answer = t.post("/v1/admin/dlq/replay", user, body).await;
    documented("post", "/v1/admin/dlq/replay", &answer);
    answer
}

async fn dead_letters(t: &TestApp, query: &str) -> Vec<Value> {
    let (s, v) = admin_get(t, &format!("/v1/admin/dlq?limit=100{query}")).await;
    assert_eq!(s, 200, "{v}");
    assert!(v.get("next_cursor").is_none(), "one page: {v}");
    v["dead_letters"].as_array().cloned().unwrap()
}

/// The dead letter whose source is `at`.
fn from<'a>(letters: &'a [Value], at: &Appended) -> &'a Value {
    letters
        .iter()
        .find(|l| {
            l["source"]
                == json!({"topic": at.topic, "partition": at.partition, "offset": at.offset})
        })
        .unwrap_or_else(|| panic!("no dead letter from {at:?} in {letters:#?}"))
}

fn card_status(v: &Value, slot: u64) -> Option<&str> {
    v["cards"].as_array()?.iter().find(|c| c["slot"] == slot)?["status"].as_str()
}

async fn poison_is_dead_lettered_and_later_events_apply(b: Backends) {
    let Some(t) = TestApp::spawn(b).await else {
        return;
    };
    let ns = t.app.config.kafka.namespace.clone();

    // Polls: a vote whose body is not JSON, one that breaks its contract
    // (no choice), then a good vote.
    let (poll, token) = t
        .create_poll(
            "owner",
            json!({"head": "Lunch?", "questions": ["pizza", "sushi"]}),
        )
        .await;
    let poll_id = PollId::parse(&poll).unwrap();
    let vote = event(
        "vic",
        EventData::VoteCast(VoteCast {
            poll_id,
            question_ids: vec![1],
        }),
    );
    let broken_vote = poison(&t, &vote, br#"{"poll_id": "#, None).await;
    let empty = edited_body(&vote, "/question_ids", json!([]));
    let invalid_vote = poison(&t, &vote, &empty, None).await;
    let (s, v) = t
        .post(
            &format!("/v1/polls/{poll}/votes?after={token}"),
            "ann",
            json!({"question_ids": [0]}),
        )
        .await;
    assert_eq!(s, 202, "{v}");
    let (_, v) = t
        .get(&format!(
            "/v1/polls/{poll}?after={}",
            v["token"].as_str().unwrap()
        ))
        .await;
    assert_eq!(
        tallies(&v),
        vec![1, 0],
        "the vote after the poison counts: {v}"
    );

    // Feed: a like whose body is not even UTF-8, a post without a title,
    // then a good like.
    let (s, v) = t
        .post("/v1/feed", "ann", json!({"kind": "post", "title": "Hi"}))
        .await;
    assert_eq!(s, 202, "{v}");
    let item = v["item_id"].as_str().unwrap().to_owned();
    let item_id = FeedItemId::parse(&item).unwrap();
    let like = event(
        "bob",
        EventData::FeedItemLiked(atelier::event::FeedItemRef { item_id }),
    );
    let broken_like = poison(&t, &like, &[0xff, 0xfe, 0x00], None).await;
    let created = event(
        "bob",
        EventData::FeedItemCreated(FeedItemCreated {
            item_id,
            content: FeedContent::Post {
                title: "x".into(),
                body: String::new(),
            },
        }),
    );
    let untitled = edited_body(&created, "/content/title", json!(""));
    let invalid_post = poison(&t, &created, &untitled, None).await;
    let (s, v) = t
        .post(
            &format!(
                "/v1/feed/{item}/likes?after={}",
                v["token"].as_str().unwrap()
            ),
            "cid",
            json!({}),
        )
        .await;
    assert_eq!(s, 202, "{v}");
    let (_, v) = t
        .get(&format!(
            "/v1/feed/{item}?after={}",
            v["token"].as_str().unwrap()
        ))
        .await;
    assert_eq!(v["likes"], 1, "the like after the poison counts: {v}");

    // Completions: an upload, then a start without its type header and one
    // for slot 9, then a good start.
    let session = crate::helpers::session_of("ann");
    let upload = UploadId(uuid::Uuid::now_v7());
    let style = Style::parse("mosaic").unwrap();
    let received = event(
        "ann",
        EventData::UploadReceived(UploadReceived {
            upload_id: upload,
            session_key: session.clone(),
            slot: 1,
            style: style.clone(),
            object_key: format!("uploads/{upload}"),
            content_type: "image/png".into(),
            bytes: 10,
            width: 4,
            height: 4,
            sha256: "ab".repeat(32),
        }),
    );
    t.app.producer.send(&received).await.unwrap();
    let started = event(
        "ann",
        EventData::StyleTransferStarted(StyleTransferStarted {
            upload: TransferRef {
                upload_id: upload,
                session_key: session.clone(),
                slot: 1,
                style,
            },
            model_version: ModelVersion::parse("v1").unwrap(),
        }),
    );
    let good = wire::encode(&started, "test").body;
    let untyped = poison(&t, &started, &good, Some(wire::header::TYPE)).await;
    let slot9 = edited_body(&started, "/slot", json!(9));
    let invalid_start = poison(&t, &started, &slot9, None).await;
    let at = t.app.producer.send(&started).await.unwrap();
    let (_, v) = t
        .get_as(
            "ann",
            &format!(
                "/v1/sessions/{session}/cards?after={}",
                Token::from(&at).encode()
            ),
        )
        .await;
    assert_eq!(card_status(&v, 1), Some("started"), "{v}");

    // Each poison record is in the DLQ with its stage, reason and source;
    // the later events were not.
    let all = dead_letters(&t, "").await;
    assert_eq!(all.len(), 6, "{all:#?}");
    let expect = [
        (&broken_vote, "project.polls", "body:", "VoteCast"),
        (&invalid_vote, "project.polls", "question_ids", "VoteCast"),
        (&broken_like, "project.feed", "body:", "FeedItemLiked"),
        (
            &invalid_post,
            "project.feed",
            "content.title",
            "FeedItemCreated",
        ),
        (&untyped, "project.cards", "missing header ce_type", ""),
        (
            &invalid_start,
            "project.cards",
            "slot",
            "StyleTransferStarted",
        ),
    ];
    for (at, stage, reason, ty) in expect {
        let l = from(&all, at);
        assert_eq!(l["stage"], stage, "{l}");
        let error = l["error"].as_str().unwrap();
        assert!(
            error.contains(reason),
            "{stage}: {error:?} lacks {reason:?}"
        );
        assert_eq!(l["attempts"], 1, "{l}");
        assert!(l["replayed"].is_null(), "{l}");
        assert!(l["at"].is_string(), "{l}");
        if ty.is_empty() {
            assert!(l["type"].is_null(), "{l}");
        } else {
            assert_eq!(l["type"], ty, "{l}");
        }
        assert!(at.topic.starts_with(&ns), "{at:?}");
    }
    assert_eq!(from(&all, &broken_vote)["key"], poll);
    assert_eq!(from(&all, &broken_vote)["id"], vote.id.to_string());

    // Filters: stage exactly, topic by its full or base name, error text.
    let polls = dead_letters(&t, "&stage=project.polls").await;
    assert_eq!(polls.len(), 2, "{polls:#?}");
    let feed = dead_letters(&t, "&topic=atelier.feed.v1").await;
    assert_eq!(feed.len(), 2, "{feed:#?}");
    let feed_full = dead_letters(&t, &format!("&topic={ns}atelier.feed.v1")).await;
    assert_eq!(feed_full.len(), 2, "{feed_full:#?}");
    let missing = dead_letters(&t, "&error=missing%20header").await;
    assert_eq!(missing.len(), 1, "{missing:#?}");
    assert!(dead_letters(&t, "&stage=project").await.is_empty());

    // Pages of one cover the six, each once, oldest first.
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let (s, v) = admin_get(&t, &format!("/v1/admin/dlq?limit=1{cursor}")).await;
        assert_eq!(s, 200, "{v}");
        seen.extend(v["dead_letters"].as_array().cloned().unwrap());
        match v["next_cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => break,
        }
        assert!(seen.len() <= 6, "pages never end: {seen:#?}");
    }
    assert_eq!(seen, all);
    let times: Vec<chrono::DateTime<chrono::Utc>> = all
        .iter()
        .map(|l| l["at"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "oldest first: {times:?}"
    );

    // The full record of one: headers, key and body as sent.
    let l = from(&all, &broken_vote);
    let (s, full) = admin_get(
        &t,
        &format!("/v1/admin/dlq/{}/{}", l["partition"], l["offset"]),
    )
    .await;
    assert_eq!(s, 200, "{full}");
    assert_eq!(full["payload"], r#"{"poll_id": "#);
    assert_eq!(full["payload_base64"], false);
    let header = |name: &str| {
        full["headers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["name"] == name)
            .map(|h| h["value"].clone())
    };
    assert_eq!(header("ce_type"), Some(json!("VoteCast")));
    assert_eq!(header("dlq_stage"), Some(json!("project.polls")));
    assert_eq!(
        header("dlq_source_offset"),
        Some(json!(broken_vote.offset.to_string()))
    );
    let l = from(&all, &broken_like);
    let (_, full) = admin_get(
        &t,
        &format!("/v1/admin/dlq/{}/{}", l["partition"], l["offset"]),
    )
    .await;
    assert_eq!(full["payload_base64"], true, "{full}");
    assert_eq!(full["payload"], "//4A");

    // Only admins; unknown or malformed positions are 404.
    let (s, v) = t
        .call(reqwest::Method::GET, "/v1/admin/dlq", Some("ann"), None)
        .await;
    assert_eq!((s, v["error"].as_str()), (403, Some("not_admin")), "{v}");
    let (s, _) = t.get("/v1/admin/dlq").await;
    assert_eq!(s, 401);
    for path in ["0/999999", "99/0", "x/1", "0/-1"] {
        let (s, v) = admin_get(&t, &format!("/v1/admin/dlq/{path}")).await;
        assert_eq!(
            (s, v["error"].as_str()),
            (404, Some("unknown_dead_letter")),
            "{path}: {v}"
        );
    }
    for q in ["limit=0", "cursor=%%%", "nope=1"] {
        let (s, v) = admin_get(&t, &format!("/v1/admin/dlq?{q}")).await;
        assert_eq!(s, 400, "{q}: {v}");
    }
    t.stop().await;
}
both!(poison_is_dead_lettered_and_later_events_apply);

/// A poll with one vote from `ann`, and a dead vote from `vic` (its body cut
/// short) behind it; answers the poll id, the dead letter and the vote.
async fn poll_with_dead_vote(t: &TestApp) -> (String, Value, Event) {
    let (poll, token) = t
        .create_poll(
            "owner",
            json!({"head": "Lunch?", "questions": ["pizza", "sushi"]}),
        )
        .await;
    let vote = event(
        "vic",
        EventData::VoteCast(VoteCast {
            poll_id: PollId::parse(&poll).unwrap(),
            question_ids: vec![1],
        }),
    );
    let body = wire::encode(&vote, "test").body;
    let dead = poison(t, &vote, &body[..body.len() / 2], None).await;
    let (s, v) = t
        .post(
            &format!("/v1/polls/{poll}/votes?after={token}"),
            "ann",
            json!({"question_ids": [0]}),
        )
        .await;
    assert_eq!(s, 202, "{v}");
    let (_, v) = t
        .get(&format!(
            "/v1/polls/{poll}?after={}",
            v["token"].as_str().unwrap()
        ))
        .await;
    assert_eq!(tallies(&v), vec![1, 0], "{v}");
    let letters = dead_letters(t, "").await;
    let l = from(&letters, &dead).clone();
    (poll, l, vote)
}

async fn a_corrected_replay_counts_exactly_once(b: Backends) {
    let Some(t) = TestApp::spawn(b).await else {
        return;
    };
    let (poll, l, vote) = poll_with_dead_vote(&t).await;
    let corrected: Value = serde_json::from_slice(&wire::encode(&vote, "test").body).unwrap();
    let ask = json!({"partition": l["partition"], "offset": l["offset"], "payload": corrected});

    // A dry run says what would go out and publishes nothing.
    let mut dry = ask.clone();
    dry["dry_run"] = json!(true);
    let (s, v) = replay(&t, ADMIN, dry).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["dry_run"], true);
    let r = &v["replayed"][0];
    assert!(r["to"].is_null() && r["marker"].is_null(), "{v}");
    assert_eq!(r["topic"], l["source"]["topic"]);
    assert_eq!(r["key"], poll);
    assert_eq!(
        serde_json::from_str::<Value>(r["payload"].as_str().unwrap()).unwrap(),
        corrected
    );
    let names: Vec<&str> = r["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"ce_type") && names.contains(&"dlq_replay_of"),
        "{names:?}"
    );
    assert!(!names.contains(&"dlq_stage"), "{names:?}");
    let letters = dead_letters(&t, "").await;
    assert!(
        letters[0]["replayed"].is_null(),
        "a dry run marks nothing: {letters:#?}"
    );

    // The replay: the copy goes to the poll's partition and counts.
    let (s, v) = replay(&t, ADMIN, ask.clone()).await;
    assert_eq!(s, 200, "{v}");
    let to = v["replayed"][0]["to"].clone();
    assert_eq!(to["topic"], l["source"]["topic"], "{v}");
    let copy = Appended {
        topic: to["topic"].as_str().unwrap().to_owned(),
        partition: to["partition"].as_i64().unwrap() as i32,
        offset: to["offset"].as_i64().unwrap(),
    };
    // Answered: on disk, on the embedded log too (its journal holds the
    // copy), as every accepted write.
    if let Some(d) = atelier::bus::durable::of(&t.app.brokers) {
        let mark = d.mark(&(copy.topic.clone(), copy.partition)).unwrap();
        assert!(
            mark > copy.offset,
            "replayed to {copy:?}, journaled below {mark}"
        );
    }
    let (_, p) = t
        .get(&format!(
            "/v1/polls/{poll}?after={}",
            Token::from(&copy).encode()
        ))
        .await;
    assert_eq!(tallies(&p), vec![1, 1], "{p}");
    assert_eq!(p["voters"], 2, "{p}");

    // Again: refused, saying where it went, publishing nothing: two probes
    // of the poll's partition around it land next to each other.
    let probe = |who: &str| {
        event(
            who,
            EventData::VoteCast(VoteCast {
                poll_id: PollId::parse(&poll).unwrap(),
                question_ids: vec![0],
            }),
        )
    };
    let before = t.app.producer.send(&probe("wes")).await.unwrap();
    let (s, v) = replay(&t, ADMIN, ask.clone()).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (409, Some("already_replayed")),
        "{v}"
    );
    let place = format!("{}/{}/{}", copy.topic, copy.partition, copy.offset);
    assert!(v["reason"].as_str().unwrap().contains(&place), "{v}");
    let next = t.app.producer.send(&probe("xia")).await.unwrap();
    assert_eq!(before.partition, copy.partition, "one poll, one partition");
    assert_eq!(
        (next.partition, next.offset),
        (before.partition, before.offset + 1),
        "the refused replay published nothing"
    );
    let (_, p) = t
        .get(&format!(
            "/v1/polls/{poll}?after={}",
            Token::from(&next).encode()
        ))
        .await;
    assert_eq!(tallies(&p), vec![3, 1], "vic's ballot counts once: {p}");

    // The list shows where it went.
    let letters = dead_letters(&t, "").await;
    assert_eq!(letters.len(), 1, "markers are not listed: {letters:#?}");
    let r = &letters[0]["replayed"];
    assert_eq!(
        (&r["topic"], &r["partition"], &r["offset"]),
        (&to["topic"], &to["partition"], &to["offset"]),
        "{r}"
    );
    assert_eq!(r["by"], ADMIN);

    // Forced, it goes out again (the ballot replaces itself) and the list
    // shows the latest copy.
    let mut forced = ask.clone();
    forced["force"] = json!(true);
    let (s, v) = replay(&t, ADMIN, forced).await;
    assert_eq!(s, 200, "{v}");
    let again = v["replayed"][0]["to"]["offset"].as_i64().unwrap();
    assert!(again > next.offset, "{v}");
    let letters = dead_letters(&t, "").await;
    assert_eq!(letters[0]["replayed"]["offset"], again);

    // Bad asks.
    let bad = [
        (json!({"partition": 0}), 422, "invalid_body"),
        (
            json!({"partition": 0, "offset": 0, "filter": {"stage": "x"}}),
            422,
            "invalid_body",
        ),
        (json!({"filter": {}}), 422, "invalid_body"),
        (
            json!({"filter": {"stage": "x"}, "force": true}),
            422,
            "invalid_body",
        ),
        (
            json!({"partition": 0, "offset": 0, "nope": 1}),
            422,
            "invalid_body",
        ),
        (
            json!({"partition": l["partition"], "offset": l["offset"], "force": true,
                   "headers": {"dlq_stage": "x"}}),
            422,
            "invalid_header",
        ),
        (
            json!({"partition": 0, "offset": 999_999}),
            404,
            "unknown_dead_letter",
        ),
    ];
    for (body, status, code) in bad {
        let (s, v) = replay(&t, ADMIN, body.clone()).await;
        assert_eq!(
            (s, v["error"].as_str()),
            (status, Some(code)),
            "{body}: {v}"
        );
    }
    let (s, v) = replay(&t, "ann", ask).await;
    assert_eq!((s, v["error"].as_str()), (403, Some("not_admin")), "{v}");
    t.stop().await;
}
both!(a_corrected_replay_counts_exactly_once);

async fn a_filtered_replay_skips_what_was_replayed(b: Backends) {
    let Some(t) = TestApp::spawn(b).await else {
        return;
    };
    let (_, first, _) = poll_with_dead_vote(&t).await;
    let (_, second, _) = poll_with_dead_vote(&t).await;
    let pos = |l: &Value| (l["partition"].clone(), l["offset"].clone());
    let filter = json!({"filter": {"stage": "project.polls", "error": "body:"}, "dry_run": true});

    let (s, v) = replay(&t, ADMIN, filter.clone()).await;
    assert_eq!(s, 200, "{v}");
    let planned: Vec<_> = v["replayed"].as_array().unwrap().iter().map(pos).collect();
    assert_eq!(planned.len(), 2, "{v}");
    assert!(
        planned.contains(&pos(&first)) && planned.contains(&pos(&second)),
        "{v}"
    );

    // Replay one by hand, then the filter: only the other goes out.
    let (s, v) = replay(
        &t,
        ADMIN,
        json!({"partition": first["partition"], "offset": first["offset"]}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let mut real = filter.clone();
    real["dry_run"] = json!(false);
    let (s, v) = replay(&t, ADMIN, real).await;
    assert_eq!(s, 200, "{v}");
    let done: Vec<_> = v["replayed"].as_array().unwrap().iter().map(pos).collect();
    // The replayed copies are still poison: they come back as new dead
    // letters, which a later filtered replay may pick up. These two never.
    assert!(
        done.contains(&pos(&second)) && !done.contains(&pos(&first)),
        "{v}"
    );
    assert!(
        v["replayed"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["to"].is_object()),
        "{v}"
    );
    let skipped: Vec<_> = v["skipped"].as_array().unwrap().iter().map(pos).collect();
    assert!(skipped.contains(&pos(&first)), "{v}");

    let (s, v) = replay(&t, ADMIN, filter).await;
    assert_eq!(s, 200, "{v}");
    let again: Vec<_> = v["replayed"].as_array().unwrap().iter().map(pos).collect();
    assert!(
        !again.contains(&pos(&first)) && !again.contains(&pos(&second)),
        "{v}"
    );
    let skipped: Vec<_> = v["skipped"].as_array().unwrap().iter().map(pos).collect();
    assert!(
        skipped.contains(&pos(&first)) && skipped.contains(&pos(&second)),
        "{v}"
    );
    t.stop().await;
}
both!(a_filtered_replay_skips_what_was_replayed);

fn atelier(t: &TestApp, args: &[&str]) -> (bool, String, String) {
    let data = crate::helpers::scratch().join(format!("atelier-cli-{}", unique()));
    let token = t.token(ADMIN);
    let out = Command::new(env!("CARGO_BIN_EXE_atelier"))
        .args(args)
        .args(["--api", &t.url, "--token", &token])
        .env("ATELIER_DATA_DIR", &data)
        .output()
        .expect("atelier runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn the_cli_lists_shows_and_replays(b: Backends) {
    let Some(t) = TestApp::spawn(b).await else {
        return;
    };
    let (poll, l, vote) = poll_with_dead_vote(&t).await;
    let at = format!("{}/{}", l["partition"], l["offset"]);
    let source = format!(
        "{}/{}/{}",
        l["source"]["topic"].as_str().unwrap(),
        l["source"]["partition"],
        l["source"]["offset"]
    );

    // Blocking child processes: off the runtime's threads.
    let run = |args: Vec<String>| {
        let t = &t;
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            tokio::task::block_in_place(|| atelier(t, &args))
        }
    };
    let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();

    let (ok, out, err) = run(args(&["dlq", "list"])).await;
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[0].starts_with("POSITION") && lines[0].contains("REPLAYED"),
        "{out}"
    );
    assert!(lines[1].starts_with(&at), "{out}");
    assert!(
        lines[1].contains("project.polls") && lines[1].contains(&source),
        "{out}"
    );
    assert_eq!(
        lines[0].find("SOURCE"),
        lines[1].find(&source),
        "aligned: {out}"
    );

    let (ok, out, err) = run(args(&["dlq", "list", "--stage", "project.feed"])).await;
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "no dead letters");

    let (ok, out, err) = run(args(&["dlq", "show", &at])).await;
    assert!(ok, "{err}");
    assert!(
        out.contains("ce_type: VoteCast") && out.contains(&source),
        "{out}"
    );

    // The corrected body from a file.
    let body = crate::helpers::scratch().join(format!("vote-{}.json", unique()));
    std::fs::write(&body, wire::encode(&vote, "test").body).unwrap();
    let body = body.to_string_lossy().into_owned();
    let (ok, out, err) = run(args(&["dlq", "replay", &at, "--body", &body, "--dry-run"])).await;
    assert!(ok, "{err}");
    assert!(out.starts_with(&format!("would replay {at} to ")), "{out}");
    let (ok, out, err) = run(args(&["dlq", "replay", &at, "--body", &body])).await;
    assert!(ok, "{err}");
    assert!(out.starts_with(&format!("replayed {at} to ")), "{out}");

    let (ok, _, err) = run(args(&["dlq", "replay", &at, "--body", &body])).await;
    assert!(
        !ok && err.contains("already_replayed") && err.contains("HTTP 409"),
        "{err}"
    );

    let (ok, out, err) = run(args(&["dlq", "list", "--json"])).await;
    assert!(ok, "{err}");
    let listed: Value = serde_json::from_str(&out).unwrap();
    let to = &listed[0]["replayed"];
    assert!(to.is_object(), "{listed:#}");
    let copy = Appended {
        topic: to["topic"].as_str().unwrap().to_owned(),
        partition: to["partition"].as_i64().unwrap() as i32,
        offset: to["offset"].as_i64().unwrap(),
    };
    let (_, p) = t
        .get(&format!(
            "/v1/polls/{poll}?after={}",
            Token::from(&copy).encode()
        ))
        .await;
    assert_eq!(tallies(&p), vec![1, 1], "{p}");

    let (ok, out, err) = run(args(&["dlq", "replay", "--filter", "stage=project.polls"])).await;
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!("skipped {at}: already replayed")),
        "{out}"
    );

    // Clear errors, not crashes.
    let (ok, _, err) = run(args(&["dlq", "show", "nope"])).await;
    assert!(!ok && err.contains("PARTITION/OFFSET"), "{err}");
    let (ok, _, err) = run(args(&["dlq", "show", "0/999999"])).await;
    assert!(!ok && err.contains("unknown_dead_letter"), "{err}");
    let (ok, _, err) = run(args(&["dlq", "replay", "--filter", "colour=red"])).await;
    assert!(!ok && err.contains("unknown key"), "{err}");
    t.stop().await;
}
both!(the_cli_lists_shows_and_replays);
