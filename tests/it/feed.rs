//! The feed end to end: exactly-once likes and joins under redelivery and
//! replay (checked against the reference fold), timelines consistent with
//! the items, the ingest rules at the edge, stable pagination while items
//! arrive, ETags, and live updates over SSE.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use atelier::app::{App, Roles};
use atelier::config::Config;
use atelier::event::{
    Event, EventData, EventId, FeedContent, FeedItemCreated, FeedItemId, FeedItemRef, Principal,
    Topic, UserId,
};
use atelier::fold::Position;
use atelier::fold::feed::{FeedKind, reference};
use atelier::project::views::feed_into;
use atelier::project::{FeedProjector, ViewProjector, Watermarks};
use atelier::view::{CheckpointStore, FeedStore, Store};
use chrono::Duration as Dur;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::exactly_once::{FlakyStore, assert_poison_in_dlq, consume_until, context, produce};
use crate::helpers::{self, Backends, TestApp};

fn who(i: usize) -> Principal {
    Principal {
        id: UserId::parse(&format!("u{i}")).unwrap(),
        name: format!("User {i}"),
        avatar_url: None,
    }
}

/// Items of every kind, then likes, unlikes, joins, leaves and deletes by
/// authors and others, plus actions on unknown items: rule breakers included.
pub fn feed_workload(seed: u64, items: usize, events: usize) -> Vec<Event> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let t0 = atelier::edge::now();
    let ids: Vec<FeedItemId> = (0..items)
        .map(|_| FeedItemId(uuid::Uuid::now_v7()))
        .collect();
    let ev = |n: i64, p: Principal, data| Event {
        id: EventId(uuid::Uuid::now_v7()),
        time: t0 + Dur::milliseconds(n),
        principal: p,
        data,
    };
    let mut out = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let content = match i % 3 {
            0 => FeedContent::Post {
                title: format!("post {i}"),
                body: "hello".into(),
            },
            1 => FeedContent::Game {
                name: format!("game {i}"),
                location: "park".into(),
            },
            _ => FeedContent::Team {
                room: format!("room {i}"),
            },
        };
        out.push(ev(
            i as i64,
            who(i % 4),
            EventData::FeedItemCreated(FeedItemCreated {
                item_id: *id,
                content,
            }),
        ));
    }
    for n in 0..events {
        let i = rng.gen_range(0..ids.len());
        let r = FeedItemRef { item_id: ids[i] };
        let user = who(rng.gen_range(0..30));
        let data = match rng.gen_range(0..100u32) {
            0..=44 => EventData::FeedItemLiked(r),
            45..=59 => EventData::FeedItemUnliked(r),
            60..=79 => EventData::FeedItemJoined(r),
            80..=94 => EventData::FeedItemLeft(r),
            95 => EventData::FeedItemDeleted(r),
            _ => EventData::FeedItemLiked(FeedItemRef {
                item_id: FeedItemId(uuid::Uuid::now_v7()),
            }),
        };
        // Some deletes come from the author (the rest are refused).
        let p = match data {
            EventData::FeedItemDeleted(_) if rng.gen_bool(0.3) => who(i % 4),
            _ => user,
        };
        out.push(ev((items + n) as i64, p, data));
    }
    out
}

/// Every item equals the reference fold, and the timeline of all kinds
/// holds exactly the live items, newest first, with current counts.
pub async fn assert_feed_matches_reference(views: &dyn FeedStore, events: &[(Position, Event)]) {
    let expected = reference(events.iter().map(|(p, e)| (*p, e)));
    let mut live = HashMap::new();
    for (id, agg) in &expected {
        let got = views.item(*id).await.unwrap();
        assert_eq!(got.as_ref(), agg.state.as_ref(), "item {id}");
        if let Some(s) = &agg.state
            && s.deleted_at.is_none()
        {
            live.insert(*id, (s.likes, s.joined));
        }
    }
    assert!(!live.is_empty(), "the workload left live items");
    let mut seen = HashMap::new();
    let mut cursor = None;
    let mut prev: Option<(chrono::DateTime<chrono::Utc>, FeedItemId)> = None;
    loop {
        let page = views.timeline(None, cursor, 100).await.unwrap();
        for r in &page {
            if let Some(p) = prev {
                assert!((r.created_at, r.item_id) < p, "newest first");
            }
            prev = Some((r.created_at, r.item_id));
            assert!(
                seen.insert(r.item_id, (r.likes, r.joined)).is_none(),
                "once"
            );
        }
        if page.len() < 100 {
            break;
        }
        cursor = prev;
    }
    assert_eq!(seen, live, "timeline rows = live items with their counts");
}

pub async fn project_feed_until(
    cfg: &Config,
    brokers: &str,
    views: (Arc<dyn FeedStore>, Arc<dyn CheckpointStore>),
    group: &str,
    last: &HashMap<i32, i64>,
) -> Arc<FeedProjector> {
    let watermarks = Watermarks::new();
    let projector = feed_into(views.0, views.1, &context(cfg, brokers, watermarks.clone()));
    consume_until(
        cfg,
        brokers,
        Topic::Feed,
        group,
        projector.clone(),
        &watermarks,
        last,
    )
    .await;
    projector
}

async fn likes_and_joins_exactly_once(b: Backends) {
    let Some(mut cfg) = helpers::config(b).await else {
        return;
    };
    cfg.projector.max_batch = 89;
    cfg.projector.commit_rows = 5;
    let app = App::start(cfg.clone(), Roles::NONE).await.unwrap();
    let produced = produce(&app.producer, feed_workload(3, 25, 4_000), 3).await;
    let views: Arc<dyn Store> = app.views.base().clone();
    // Through a store that fails one write in eight, half the time after
    // it landed: batches are redelivered over items already ahead.
    let flaky = Arc::new(FlakyStore::new(views.clone(), 8));
    let ns = &cfg.kafka.namespace;
    project_feed_until(
        &cfg,
        &app.brokers,
        (flaky.clone(), flaky),
        &format!("{ns}f1"),
        &produced.last,
    )
    .await;
    assert_poison_in_dlq(&cfg, &app.brokers, Topic::Feed, produced.poison);
    assert_feed_matches_reference(views.as_ref(), &produced.events).await;
    // A full replay by a fresh group changes nothing.
    let (_, writes_before) = views.counts();
    let p2 = project_feed_until(
        &cfg,
        &app.brokers,
        (views.clone(), views.clone()),
        &format!("{ns}f2"),
        &produced.last,
    )
    .await;
    assert_eq!(p2.totals().applied, 0, "a replay applies nothing");
    assert_eq!(p2.totals().commits, 0, "a replay writes no item");
    assert_feed_matches_reference(views.as_ref(), &produced.events).await;
    let (_, writes_after) = views.counts();
    // Checkpoints only: at most one per batch, and a batch holds a record.
    assert!(
        writes_after - writes_before <= produced.events.len() as u64,
        "a replay writes checkpoints only"
    );
    app.stop().await.unwrap();
}
both!(likes_and_joins_exactly_once);

/// A projector that created an item knows its every membership: likes,
/// unlikes, joins and leaves of items it created read none from the store
/// (they come from its rows cache), and the views still equal the reference
/// fold. A fresh projector replaying the same log did not create them
/// here, and reads them.
async fn memberships_of_items_created_here_are_not_read(b: Backends) {
    let Some(mut cfg) = helpers::config(b).await else {
        return;
    };
    cfg.projector.max_batch = 200;
    let app = App::start(cfg.clone(), Roles::NONE).await.unwrap();
    let produced = produce(&app.producer, feed_workload(5, 40, 3_000), 3).await;
    let views: Arc<dyn Store> = app.views.base().clone();
    let ns = &cfg.kafka.namespace;
    let mut runs = Vec::new();
    for group in ["m1", "m2"] {
        // Counts membership reads, failing nothing.
        let counted = Arc::new(FlakyStore::new(views.clone(), 0));
        project_feed_until(
            &cfg,
            &app.brokers,
            (counted.clone(), views.clone()),
            &format!("{ns}{group}"),
            &produced.last,
        )
        .await;
        assert_feed_matches_reference(views.as_ref(), &produced.events).await;
        runs.push(
            counted
                .member_reads
                .load(std::sync::atomic::Ordering::Relaxed),
        );
    }
    assert_eq!(runs[0], 0, "membership reads of items created here");
    assert!(
        runs[1] > 0,
        "a replay of items created elsewhere reads them"
    );
    app.stop().await.unwrap();
}
both!(memberships_of_items_created_here_are_not_read);

async fn create(t: &TestApp, user: &str, body: Value) -> (String, String) {
    let (s, v) = t.post("/v1/feed", user, body).await;
    assert_eq!(s, 202, "{v}");
    (
        v["item_id"].as_str().unwrap().to_owned(),
        v["token"].as_str().unwrap().to_owned(),
    )
}

async fn delete(t: &TestApp, path: &str, user: &str) -> (u16, Value) {
    t.call(reqwest::Method::DELETE, path, Some(user), None)
        .await
}

async fn feed_rules_at_the_edge_and_in_the_fold(b: Backends) {
    let Some(t) = TestApp::spawn(b).await else {
        return;
    };
    let (post, tok) = create(
        &t,
        "ann",
        json!({"kind": "post", "title": "Hi", "body": "x"}),
    )
    .await;
    let (game, gtok) = create(
        &t,
        "ann",
        json!({"kind": "game", "name": "Chess", "location": "Park"}),
    )
    .await;
    // Read your write.
    let (s, v) = t.get(&format!("/v1/feed/{post}?after={tok}")).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (v["kind"].as_str(), v["title"].as_str()),
        (Some("post"), Some("Hi"))
    );
    let _ = t.get(&format!("/v1/feed/{game}?after={gtok}")).await;

    // Bad input at the edge.
    let bad = [
        ("/v1/feed", json!({"kind": "post"}), 422),
        ("/v1/feed", json!({"kind": "boat", "title": "x"}), 422),
        (
            "/v1/feed",
            json!({"kind": "post", "title": "x", "extra": 1}),
            422,
        ),
        ("/v1/feed", json!({"kind": "post", "title": ""}), 422),
    ];
    for (path, body, want) in bad {
        let (s, v) = t.post(path, "ann", body.clone()).await;
        assert_eq!(s, want, "{body} → {v}");
        assert!(v["error"].is_string() && v["reason"].is_string(), "{v}");
    }
    let unknown = uuid::Uuid::now_v7();
    let (s, v) = t
        .post(&format!("/v1/feed/{unknown}/likes"), "bob", json!({}))
        .await;
    assert_eq!((s, v["error"].as_str()), (404, Some("unknown_item")), "{v}");
    let (s, v) = t
        .post(&format!("/v1/feed/{post}/members"), "bob", json!({}))
        .await;
    assert_eq!((s, v["error"].as_str()), (409, Some("not_joinable")), "{v}");
    let (s, v) = delete(&t, &format!("/v1/feed/{post}"), "bob").await;
    assert_eq!((s, v["error"].as_str()), (403, Some("not_author")), "{v}");
    let (s, v) = t
        .call(
            reqwest::Method::POST,
            &format!("/v1/feed/{post}/likes"),
            None,
            None,
        )
        .await;
    assert_eq!(s, 401, "no bearer token: {v}");
    for q in [
        "cursor=%%%",
        "cursor=bm9wZQ",
        "limit=0",
        "limit=101",
        "kind=boat",
        "nope=1",
    ] {
        let (s, v) = t.get(&format!("/v1/feed?{q}")).await;
        assert_eq!(s, 400, "{q}: {v}");
    }

    // Rules only the log order decides: counted, visible rejections.
    let like = format!("/v1/feed/{post}/likes");
    assert_eq!(t.post(&like, "bob", json!({})).await.0, 202);
    let (s, v) = t.post(&like, "bob", json!({})).await;
    assert_eq!(s, 202, "accepted, then refused by the fold: {v}");
    let (s, v) = delete(&t, &format!("/v1/feed/{game}/likes"), "cat").await;
    assert_eq!(s, 202, "{v}");
    let gtok = v["token"].as_str().unwrap().to_owned();
    let join = format!("/v1/feed/{game}/members");
    let (_, v) = t.post(&join, "dan", json!({})).await;
    let jtok = v["token"].as_str().unwrap();
    let (_, v) = t.get(&format!("/v1/feed/{game}?after={jtok}")).await;
    assert_eq!(v["joined"], 1, "{v}");
    assert_eq!(v["recent_members"][0]["id"], "dan", "{v}");
    let (_, v) = t.get(&format!("/v1/feed/{game}?after={gtok}")).await;
    assert_eq!(v["rejected"]["not_liked"], 1, "{v}");
    let (s, v) = t.post(&like, "cat", json!({})).await;
    assert_eq!(s, 202);
    let ltok = v["token"].as_str().unwrap();
    let (_, v) = t.get(&format!("/v1/feed/{post}?after={ltok}")).await;
    assert_eq!(v["likes"], 2, "{v}");
    assert_eq!(v["rejected"]["already_liked"], 1, "{v}");

    // ETag: an unchanged item answers 304.
    let res = t
        .http
        .get(format!("{}/v1/feed/{post}", t.url))
        .send()
        .await
        .unwrap();
    let etag = res.headers()["etag"].to_str().unwrap().to_owned();
    let res = t
        .http
        .get(format!("{}/v1/feed/{post}", t.url))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 304);

    // Timelines carry the counts; delete by the author removes the item.
    let (_, v) = t.get("/v1/feed?kind=post&limit=10").await;
    let row = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["item_id"] == post.as_str())
        .cloned()
        .unwrap();
    assert_eq!(row["likes"], 2, "{row}");
    let (s, v) = delete(&t, &format!("/v1/feed/{post}"), "ann").await;
    assert_eq!(s, 202, "{v}");
    let dtok = v["token"].as_str().unwrap();
    let (s, v) = t.get(&format!("/v1/feed/{post}?after={dtok}")).await;
    assert_eq!((s, v["error"].as_str()), (410, Some("item_deleted")), "{v}");
    let (_, v) = t.get(&format!("/v1/feed?after={dtok}")).await;
    assert!(
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["item_id"] != post.as_str()),
        "gone from the timeline: {v}"
    );
    let (s, v) = t.post(&like, "eve", json!({})).await;
    assert_eq!((s, v["error"].as_str()), (410, Some("item_deleted")), "{v}");
    t.stop().await;
}
both!(feed_rules_at_the_edge_and_in_the_fold);

/// Walks the whole feed page by page while new items keep arriving: every
/// item that existed when the walk began appears exactly once, newest first.
async fn pagination_is_stable_while_items_arrive(b: Backends) {
    let Some(t) = TestApp::spawn(b).await else {
        return;
    };
    let mut last: HashMap<i32, (i64, String)> = HashMap::new();
    let mut before = Vec::new();
    for i in 0..120 {
        let kind = ["post", "game", "team"][i % 3];
        let body = match kind {
            "post" => json!({"kind": "post", "title": format!("p{i}")}),
            "game" => json!({"kind": "game", "name": format!("g{i}"), "location": "x"}),
            _ => json!({"kind": "team", "room": format!("r{i}")}),
        };
        let (id, tok) = create(&t, &format!("u{}", i % 5), body).await;
        before.push(id);
        let at = atelier::api::Token::decode(&tok).unwrap();
        let e = last.entry(at.partition).or_insert((-1, String::new()));
        if at.offset > e.0 {
            *e = (at.offset, tok);
        }
    }
    // Every partition's last write, so the walk starts from a complete view.
    for (_, tok) in last.values() {
        let (s, _) = t.get(&format!("/v1/feed?after={tok}")).await;
        assert_eq!(s, 200);
    }
    let stop = CancellationToken::new();
    let writer = {
        let stop = stop.clone();
        let http = t.http.clone();
        let url = t.url.clone();
        let token = t.token("writer");
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.is_cancelled() {
                let _ = http
                    .post(format!("{url}/v1/feed"))
                    .bearer_auth(&token)
                    .json(&json!({"kind": "post", "title": format!("new {n}")}))
                    .send()
                    .await;
                n += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            n
        })
    };
    let mut seen: Vec<String> = Vec::new();
    let mut times: Vec<String> = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/feed?limit=7&cursor={c}"),
            None => "/v1/feed?limit=7".to_owned(),
        };
        let (s, v) = t.get(&path).await;
        assert_eq!(s, 200, "{v}");
        for r in v["items"].as_array().unwrap() {
            seen.push(r["item_id"].as_str().unwrap().to_owned());
            times.push(r["created_at"].as_str().unwrap().to_owned());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    stop.cancel();
    let written = writer.await.unwrap();
    assert!(written > 0, "items arrived during the walk");
    let walked: std::collections::HashSet<&String> = seen.iter().collect();
    assert_eq!(walked.len(), seen.len(), "no duplicates");
    for id in &before {
        assert!(walked.contains(id), "no gaps: {id} missing");
    }
    let mut sorted = times.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(times, sorted, "newest first");
    t.stop().await;
}
both!(pagination_is_stable_while_items_arrive);

/// A dashboard subscribed to a poll sees its tally move without polling.
async fn stream_pushes_view_changes(b: Backends) {
    let Some(t) = TestApp::spawn(b).await else {
        return;
    };
    let (poll, tok) = t
        .create_poll("ann", json!({"head": "Live?", "questions": ["yes", "no"]}))
        .await;
    let _ = t.get(&format!("/v1/polls/{poll}?after={tok}")).await;
    let res = t
        .http
        .get(format!("{}/v1/stream?poll={poll}&kind=all", t.url))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut res = res;
    let (s, _) = t
        .post(
            &format!("/v1/polls/{poll}/votes"),
            "bob",
            json!({"question_ids": [1]}),
        )
        .await;
    assert_eq!(s, 202);
    let (item, _) = create(&t, "cat", json!({"kind": "team", "room": "blue"})).await;
    let mut text = String::new();
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        let mut saw_vote = false;
        let mut saw_item = false;
        while let Some(chunk) = res.chunk().await.unwrap() {
            text.push_str(&String::from_utf8_lossy(&chunk));
            for block in text.split("\n\n") {
                let data: String = block
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(str::trim)
                    .collect();
                let Ok(v) = serde_json::from_str::<Value>(&data) else {
                    continue;
                };
                if block.contains("event: poll") && v["questions"][1]["votes"] == 1 {
                    saw_vote = true;
                }
                if block.contains("event: feed") && v["item_id"] == item.as_str() {
                    saw_item = true;
                }
            }
            if saw_vote && saw_item {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(found, Ok(true), "stream so far: {text}");
    let (s, _) = t.get("/v1/stream?poll=nope").await;
    assert_eq!(s, 400);
    // The stream is still open: stopping must end it, not wait on it.
    t.stop().await;
    drop(res);
}
both!(stream_pushes_view_changes);

#[test]
fn kinds_round_trip() {
    for k in FeedKind::ALL {
        assert_eq!(FeedKind::parse(k.as_str()), Some(k));
    }
}

/// API and projectors in separate processes (compose's roles): the API
/// learns of view changes by following the topics behind the checkpoints,
/// so live updates and `?after` work there too. Real services only: two
/// embedded apps would not share a cluster or a store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_works_when_projectors_run_elsewhere() {
    let Some(cfg) = helpers::config(Backends::Real).await else {
        return;
    };
    let projector = App::start(cfg.clone(), Roles::PROJECTOR).await.unwrap();
    let api = TestApp::start(cfg, Roles::API).await;
    let (poll, tok) = api
        .create_poll("ann", json!({"head": "Split?", "questions": ["a", "b"]}))
        .await;
    let (s, v) = api.get(&format!("/v1/polls/{poll}?after={tok}")).await;
    assert_eq!(s, 200, "{v}");
    let mut res = api
        .http
        .get(format!("{}/v1/stream?poll={poll}", api.url))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    // The follower lists the partitions asynchronously: vote until it
    // reports.
    let mut text = String::new();
    let seen = tokio::time::timeout(Duration::from_secs(60), async {
        let mut n = 0;
        loop {
            let (s, _) = api
                .post(
                    &format!("/v1/polls/{poll}/votes"),
                    &format!("v{n}"),
                    json!({"question_ids": [0]}),
                )
                .await;
            assert_eq!(s, 202);
            n += 1;
            let next = tokio::time::timeout(Duration::from_secs(2), res.chunk()).await;
            if let Ok(Ok(Some(chunk))) = next {
                text.push_str(&String::from_utf8_lossy(&chunk));
                // The snapshot has no id; a change announced by the
                // follower carries its consistency token as the id.
                if text
                    .split("\n\n")
                    .any(|b| b.contains("event: poll") && b.contains("\nid:"))
                {
                    return true;
                }
            }
        }
    })
    .await;
    assert_eq!(seen, Ok(true), "stream: {text}");
    // The projector first: stopping the test app deletes the run's data.
    projector.stop().await.unwrap();
    api.stop().await;
    drop(res);
}

/// A process running the API and projectors shares the polls' partitions
/// with another projector process: its live stream still announces every
/// change, including those the other process applied (it follows the log
/// instead of hearing only its own projectors). Real services only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_announces_changes_applied_by_other_processes() {
    let Some(cfg) = helpers::config(Backends::Real).await else {
        return;
    };
    let other = App::start(cfg.clone(), Roles::PROJECTOR).await.unwrap();
    let api = TestApp::start(
        cfg,
        Roles {
            infer: false,
            ..Roles::ALL
        },
    )
    .await;
    let mut polls = Vec::new();
    for i in 0..16 {
        let (poll, tok) = api
            .create_poll(
                "ann",
                json!({"head": format!("P{i}"), "questions": ["a", "b"]}),
            )
            .await;
        let (s, v) = api
            .get_applied(&format!("/v1/polls/{poll}?after={tok}"), 60)
            .await;
        assert_eq!(s, 200, "{v}");
        polls.push(poll);
    }
    // Unfiltered: every change.
    let mut res = api
        .http
        .get(format!("{}/v1/stream", api.url))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    // The follower starts asynchronously: vote on every poll each round
    // until every poll has had a change announced (an event with an id).
    let mut text = String::new();
    let announced = |text: &str, poll: &str| {
        text.split("\n\n")
            .any(|b| b.contains("event: poll") && b.contains("\nid:") && b.contains(poll))
    };
    let all = tokio::time::timeout(Duration::from_secs(90), async {
        let mut round = 0;
        loop {
            for p in &polls {
                let (s, _) = api
                    .post(
                        &format!("/v1/polls/{p}/votes"),
                        &format!("v{round}"),
                        json!({"question_ids": [0]}),
                    )
                    .await;
                assert_eq!(s, 202);
            }
            round += 1;
            let until = tokio::time::Instant::now() + Duration::from_secs(2);
            while let Ok(Ok(Some(chunk))) = tokio::time::timeout_at(until, res.chunk()).await {
                text.push_str(&String::from_utf8_lossy(&chunk));
            }
            if polls.iter().all(|p| announced(&text, p)) {
                return;
            }
        }
    })
    .await;
    let missing: Vec<&String> = polls.iter().filter(|p| !announced(&text, p)).collect();
    assert!(all.is_ok(), "no change announced for {missing:?}");
    // The fault landed: the other process applied some of these votes.
    let applied = other
        .projector(atelier::view::polls::VIEW)
        .expect("polls projector")
        .totals()
        .applied;
    assert!(applied > 0, "the other process applied nothing");
    other.stop().await.unwrap();
    api.stop().await;
    drop(res);
}

/// Partitions added to a topic while an API process follows it are read
/// from their beginning: a change applied there by another process is
/// announced, even when its record was appended before the follower noticed
/// the partition. (A follower that joined a group found new partitions only
/// at its next rebalance, and read them from their end.) Real services only:
/// the embedded log's topics are fixed by the process that runs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_change_follower_reads_partitions_added_while_it_runs() {
    use atelier::bus::client_config;
    use atelier::event::{Style, UploadId, UploadReceived, wire};
    use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::OwnedHeaders;
    use rdkafka::producer::{FutureProducer, FutureRecord};

    let Some(mut cfg) = helpers::config(Backends::Real).await else {
        return;
    };
    // The projector process's group notices new partitions at its next
    // metadata refresh (librdkafka's default is five minutes).
    cfg.kafka
        .properties
        .insert("topic.metadata.refresh.interval.ms".into(), "1000".into());
    let projector = App::start(cfg.clone(), Roles::PROJECTOR).await.unwrap();
    let api = TestApp::start(cfg.clone(), Roles::API).await;
    let mut changes = api.app.watermarks.changes.subscribe();
    let topic = cfg.kafka.topic(Topic::Uploads);
    let brokers = cfg.kafka.brokers.clone();
    let probe: BaseConsumer = client_config(&cfg.kafka, &brokers).create().unwrap();
    let count = |probe: &BaseConsumer| {
        tokio::task::block_in_place(|| {
            probe
                .fetch_metadata(Some(&topic), Duration::from_secs(10))
                .unwrap()
                .topics()[0]
                .partitions()
                .len() as i32
        })
    };
    let before = count(&probe);
    assert!(before > 0, "the uploads topic exists");
    // The follower has listed the partitions before they grow (it reports
    // where it starts on each before it reads).
    helpers::eventually(30, "the follower to start on the uploads topic", || {
        let started = api
            .app
            .watermarks
            .changes
            .announces_locally(&topic, 0, i64::MAX);
        async move { (!started).then_some(()) }
    })
    .await;
    let admin: AdminClient<DefaultClientContext> =
        client_config(&cfg.kafka, &brokers).create().unwrap();
    for r in admin
        .create_partitions(
            [&NewPartitions::new(&topic, before as usize + 1)],
            &AdminOptions::new(),
        )
        .await
        .unwrap()
    {
        r.unwrap();
    }
    helpers::eventually(30, "the new partition to be listed", || {
        let n = count(&probe);
        async move { (n > before).then_some(()) }
    })
    .await;
    // At once, into the new partition: before the follower can have
    // noticed it (it lists the topics every few seconds).
    let session = helpers::session_of("ann");
    let upload_id = UploadId(uuid::Uuid::now_v7());
    let received = helpers::event(
        "ann",
        EventData::UploadReceived(UploadReceived {
            upload_id,
            session_key: session.clone(),
            slot: 1,
            style: Style::parse("mosaic").unwrap(),
            object_key: format!("uploads/{upload_id}/x/original.png"),
            content_type: "image/png".into(),
            bytes: 11,
            width: 4,
            height: 4,
            sha256: "ab".repeat(32),
        }),
    );
    let rec = wire::encode(&received, "test");
    let mut headers = OwnedHeaders::new();
    for (k, v) in &rec.headers {
        headers = headers.insert(rdkafka::message::Header {
            key: k,
            value: Some(v),
        });
    }
    let producer: FutureProducer = client_config(&cfg.kafka, &brokers).create().unwrap();
    let (partition, offset) = producer
        .send(
            FutureRecord::to(&topic)
                .partition(before)
                .key(&rec.key)
                .payload(&rec.body)
                .headers(headers),
            Duration::from_secs(10),
        )
        .await
        .map(|d| (d.partition, d.offset))
        .unwrap();
    assert_eq!(
        (partition, offset),
        (before, 0),
        "the new partition's first record"
    );
    // The other process applies it; the API process announces it.
    let announced = tokio::time::timeout(Duration::from_secs(90), async {
        loop {
            match changes.recv().await {
                Ok(a) if a.change == atelier::project::Change::Upload(upload_id) => return a,
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("changes: {e}"),
            }
        }
    })
    .await
    .expect("the upload in the new partition is announced");
    assert_eq!(
        (announced.topic.as_str(), announced.position.partition),
        (topic.as_str(), before)
    );
    let applied = projector
        .projector(atelier::view::cards::VIEW)
        .expect("cards projector")
        .totals()
        .applied;
    assert!(applied > 0, "the other process applied it");
    projector.stop().await.unwrap();
    api.stop().await;
}
