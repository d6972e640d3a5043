//! Every read is one view query, whatever the data size: counted at small
//! sizes and at 100,000 votes, voters, likes and feed items, on both stores.

use atelier::event::{Event, EventData, EventId, PollId, Principal, UserId, VoteCast};
use futures::StreamExt;
use serde_json::json;

use crate::helpers::{Backends, TestApp};

async fn votes(t: &TestApp, poll: &str, n: usize) -> String {
    let poll_id = PollId::parse(poll).unwrap();
    let sends = (0..n).map(|i| {
        let e = Event {
            id: EventId(uuid::Uuid::now_v7()),
            time: atelier::edge::now(),
            principal: Principal {
                id: UserId::parse(&format!("voter-{i}")).unwrap(),
                name: format!("Voter {i}"),
                avatar_url: None,
            },
            data: EventData::VoteCast(VoteCast {
                poll_id,
                question_ids: vec![(i % 3) as u16],
            }),
        };
        async move { t.app.producer.send(&e).await.unwrap() }
    });
    let mut s = futures::stream::iter(sends).buffered(2_000);
    let mut last = None;
    while let Some(at) = s.next().await {
        last = Some(at);
    }
    atelier::api::Token::from(&last.unwrap()).encode()
}

async fn reads_are_one_query(b: Backends) {
    let Some(t) = TestApp::spawn(b).await else {
        return;
    };
    for n in [10, 100_000] {
        let (id, tok) = t
            .create_poll(
                "owner",
                json!({"head": format!("{n} votes"), "questions": ["a", "b", "c"]}),
            )
            .await;
        let _ = t.get(&format!("/v1/polls/{id}?after={tok}")).await;
        let last = votes(&t, &id, n).await;
        // 100,000 votes may take longer than one bounded wait: retry.
        let v = crate::helpers::eventually(600, "the votes to be applied", || async {
            let (s, v) = t.get(&format!("/v1/polls/{id}?after={last}")).await;
            assert!(s == 200 || s == 503, "{v}");
            (s == 200).then_some(v)
        })
        .await;
        assert_eq!(v["voters"], n as u64);
        let views = &t.app.views;
        let (before, _) = views.counts();
        let (s, _) = t.get(&format!("/v1/polls/{id}?after={last}")).await;
        let (after, _) = views.counts();
        assert_eq!(
            (s, after - before),
            (200, 1),
            "GET /v1/polls/{{id}}?after= (applied) with {n} votes: one query"
        );
        let (before, _) = views.counts();
        let (s, v) = t.get(&format!("/v1/polls/{id}")).await;
        let (after, _) = views.counts();
        assert_eq!(s, 200);
        let total: u64 = v["questions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|q| q["votes"].as_u64().unwrap())
            .sum();
        assert_eq!(total, n as u64);
        assert_eq!(
            after - before,
            1,
            "GET /v1/polls/{{id}} with {n} votes: one query"
        );
        let (before, _) = views.counts();
        let (s, v) = t
            .get(&format!("/v1/polls/{id}/questions/1/voters?limit=100"))
            .await;
        let (after, _) = views.counts();
        assert_eq!(s, 200, "{v}");
        assert_eq!(
            v["voters"].as_array().unwrap().len(),
            (n / 3).min(100),
            "{v}"
        );
        assert_eq!(after - before, 1, "voters of a question: one query");
        let (before, _) = views.counts();
        let (s, _) = t.get("/v1/users/owner/polls?limit=50").await;
        let (after, _) = views.counts();
        assert_eq!(
            (s, after - before),
            (200, 1),
            "GET /v1/users/{{id}}/polls: one query"
        );
    }
    t.stop().await;
}
both!(reads_are_one_query);

fn principal(i: usize) -> Principal {
    Principal {
        id: UserId::parse(&format!("user-{i}")).unwrap(),
        name: format!("User {i}"),
        avatar_url: None,
    }
}

/// Sends events concurrently, then waits until the views applied them all
/// (a `?after` read per partition written); answers each written
/// partition's last token, by topic.
async fn send_all(t: &TestApp, events: Vec<Event>) -> Vec<(String, String)> {
    let sends = events
        .into_iter()
        .map(|e| async move { t.app.producer.send(&e).await.unwrap() });
    let mut s = futures::stream::iter(sends).buffered(2_000);
    let mut last = std::collections::HashMap::new();
    while let Some(at) = s.next().await {
        let e = last
            .entry((at.topic.clone(), at.partition))
            .or_insert_with(|| at.clone());
        if at.offset > e.offset {
            *e = at;
        }
    }
    let feed = t.app.producer.topic(atelier::event::Topic::Feed);
    let mut tokens = Vec::new();
    for ((topic, _), at) in last {
        let tok = atelier::api::Token::from(&at).encode();
        tokens.push((topic.clone(), tok.clone()));
        let path = if topic == feed {
            format!("/v1/feed?after={tok}")
        } else {
            format!("/v1/sessions/any/cards?after={tok}")
        };
        crate::helpers::eventually(600, "the views to apply the load", || async {
            let (s, v) = t.get_as("admin", &path).await;
            assert!(s == 200 || s == 503, "{v}");
            (s == 200).then_some(())
        })
        .await;
    }
    tokens
}

fn ev(p: Principal, data: EventData) -> Event {
    Event {
        id: EventId(uuid::Uuid::now_v7()),
        time: atelier::edge::now(),
        principal: p,
        data,
    }
}

/// Counts the view queries one GET makes.
async fn queries(t: &TestApp, path: &str) -> u64 {
    let (before, _) = t.app.views.counts();
    let (s, v) = t.get_as("user-0", path).await;
    let (after, _) = t.app.views.counts();
    assert_eq!(s, 200, "{path}: {v}");
    after - before
}

/// Feed pages, items, cards, upload status and question voters: one query
/// each, with a small feed and with a large one (100,000 items by default;
/// `ATELIER_IT_LARGE_FEED` raises it) and an item with 100,000 likes.
async fn feed_and_card_reads_are_one_query(b: Backends) {
    use atelier::event::{
        FeedContent, FeedItemCreated, FeedItemId, FeedItemRef, Style, UploadId, UploadReceived,
    };
    let Some(t) = TestApp::spawn(b).await else {
        return;
    };
    let large: usize = std::env::var("ATELIER_IT_LARGE_FEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    // User 0's, who uploads into it and reads.
    let session = crate::helpers::session_of("user-0");
    let upload = UploadId(uuid::Uuid::now_v7());
    let mut made = 0;
    for (items, likes) in [(10, 10), (large, 100_000)] {
        let ids: Vec<FeedItemId> = (made..items)
            .map(|_| FeedItemId(uuid::Uuid::now_v7()))
            .collect();
        let hot = ids[0];
        let mut events: Vec<Event> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                ev(
                    principal(i % 100),
                    EventData::FeedItemCreated(FeedItemCreated {
                        item_id: *id,
                        content: FeedContent::Post {
                            title: format!("item {i}"),
                            body: String::new(),
                        },
                    }),
                )
            })
            .collect();
        send_all(&t, std::mem::take(&mut events)).await;
        events.extend((0..likes).map(|i| {
            ev(
                principal(1_000 + i),
                EventData::FeedItemLiked(FeedItemRef { item_id: hot }),
            )
        }));
        events.push(ev(
            principal(0),
            EventData::UploadReceived(UploadReceived {
                upload_id: upload,
                session_key: session.clone(),
                slot: 1,
                style: Style::parse("mosaic").unwrap(),
                object_key: "uploads/x".into(),
                content_type: "image/png".into(),
                bytes: 1,
                width: 1,
                height: 1,
                sha256: "0".repeat(64),
            }),
        ));
        let tokens = send_all(&t, events).await;
        let token_of = |topic: atelier::event::Topic| {
            let name = t.app.producer.topic(topic);
            tokens
                .iter()
                .find(|(t, _)| *t == name)
                .map(|(_, tok)| tok.clone())
                .expect("a partition of the topic was written")
        };
        let (feed_tok, upload_tok) = (
            token_of(atelier::event::Topic::Feed),
            token_of(atelier::event::Topic::Uploads),
        );
        let (s, v) = t.get(&format!("/v1/feed/{hot}")).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["likes"], likes as u64, "{v}");
        made = items;
        let (_, v) = t.get("/v1/feed?limit=5").await;
        let cursor = v["next_cursor"].as_str().unwrap().to_owned();
        for path in [
            "/v1/feed?limit=100".to_owned(),
            format!("/v1/feed?kind=post&limit=100&cursor={cursor}"),
            format!("/v1/feed/{hot}"),
            format!("/v1/sessions/{session}/cards"),
            format!("/v1/uploads/{upload}"),
            // With `?after` (applied): still one view query.
            format!("/v1/feed?limit=100&after={feed_tok}"),
            format!("/v1/feed/{hot}?after={feed_tok}"),
            format!("/v1/sessions/{session}/cards?after={upload_tok}"),
            format!("/v1/uploads/{upload}?after={upload_tok}"),
        ] {
            assert_eq!(
                queries(&t, &path).await,
                1,
                "{path} with {items} items and {likes} likes: one query"
            );
        }
    }
    t.stop().await;
}
both!(feed_and_card_reads_are_one_query);
