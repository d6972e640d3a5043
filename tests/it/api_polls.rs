//! The poll path end to end through the HTTP API: create, vote, replace,
//! retract, close, read with `?after`, and every kind of bad input.

use std::time::{Duration, Instant};

use atelier::api::Token;
use atelier::event::{Event, EventData, EventId, PollId, Principal, UserId, VoteCast};
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{Backends, TestApp};

fn tallies(v: &Value) -> Vec<u64> {
    v["questions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["votes"].as_u64().unwrap())
        .collect()
}

async fn poll_path(b: Backends) {
    let Some(t) = TestApp::spawn(b).await else {
        return;
    };
    let (id, token) = t
        .create_poll(
            "owner",
            json!({"head": "Lunch?", "message": "Friday", "questions": ["pizza", "sushi", "tacos"]}),
        )
        .await;
    let (s, v) = t.get(&format!("/v1/polls/{id}?after={token}")).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["owner"]["id"], "owner");
    assert_eq!(v["owner"]["name"], "OWNER");
    assert_eq!(tallies(&v), vec![0, 0, 0]);

    let mut last = String::new();
    for (who, q) in [("ann", 0), ("bob", 1), ("cid", 1), ("ann", 2)] {
        let (s, v) = t
            .post(
                &format!("/v1/polls/{id}/votes?after={token}"),
                who,
                json!({"question_ids": [q]}),
            )
            .await;
        assert_eq!(s, 202, "{v}");
        last = v["token"].as_str().unwrap().to_owned();
    }
    let (_, v) = t.get(&format!("/v1/polls/{id}?after={last}")).await;
    assert_eq!(
        tallies(&v),
        vec![0, 2, 1],
        "ann's second ballot replaced her first"
    );
    assert_eq!(v["voters"], 3);
    assert_eq!(v["recent_voters"][0]["id"], "ann");

    // Retract: bob's ballot goes; a second retract is a counted rejection.
    let path = format!("/v1/polls/{id}/votes");
    let (s, _) = t.call(Method::DELETE, &path, Some("bob"), None).await;
    assert_eq!(s, 202);
    let (s, v) = t.call(Method::DELETE, &path, Some("bob"), None).await;
    assert_eq!(s, 202);
    let tok = v["token"].as_str().unwrap().to_owned();
    let (_, v) = t.get(&format!("/v1/polls/{id}?after={tok}")).await;
    assert_eq!(tallies(&v), vec![0, 1, 1]);
    assert_eq!(v["rejected"]["no_ballot"], 1);

    // Close: only the owner; afterwards votes are refused at the edge.
    let (s, v) = t
        .post(&format!("/v1/polls/{id}/close"), "bob", json!(null))
        .await;
    assert_eq!((s, v["error"].as_str()), (403, Some("not_owner")));
    let (s, v) = t
        .call(
            Method::POST,
            &format!("/v1/polls/{id}/close"),
            Some("owner"),
            None,
        )
        .await;
    assert_eq!(s, 202, "{v}");
    let tok = v["token"].as_str().unwrap().to_owned();
    let (s, v) = t
        .post(
            &format!("/v1/polls/{id}/votes?after={tok}"),
            "dan",
            json!({"question_ids": [0]}),
        )
        .await;
    assert_eq!((s, v["error"].as_str()), (409, Some("poll_closed")));

    // By owner, newest first, paged.
    let (id2, tok2) = t
        .create_poll("owner", json!({"head": "Dinner?", "questions": ["a", "b"]}))
        .await;
    let _ = t.get(&format!("/v1/polls/{id2}?after={tok2}")).await;
    let (s, v) = t.get("/v1/users/owner/polls?limit=1").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["items"][0]["poll_id"], id2.as_str());
    let cursor = v["next_cursor"].as_str().unwrap().to_owned();
    let (_, v) = t
        .get(&format!("/v1/users/owner/polls?limit=1&cursor={cursor}"))
        .await;
    assert_eq!(v["items"][0]["poll_id"], id.as_str());
    assert_eq!(v["items"][0]["closed"], true);
    t.stop().await;
}
both!(poll_path);

async fn multiple_choice_and_anonymous(b: Backends) {
    let Some(t) = TestApp::spawn(b).await else {
        return;
    };
    let (id, token) = t
        .create_poll(
            "owner",
            json!({"head": "Toppings", "questions": ["a", "b", "c"], "multiple_choice": true, "anonymous": true}),
        )
        .await;
    let path = format!("/v1/polls/{id}/votes?after={token}");
    t.post(&path, "voter-ann", json!({"question_ids": [0, 2]}))
        .await;
    let (_, v) = t
        .post(&path, "voter-bob", json!({"question_ids": [2]}))
        .await;
    let tok = v["token"].as_str().unwrap().to_owned();
    let (_, v) = t.get(&format!("/v1/polls/{id}?after={tok}")).await;
    assert_eq!(tallies(&v), vec![1, 0, 2]);
    assert_eq!(
        v["recent_voters"],
        json!([]),
        "anonymous polls show no voters"
    );
    assert!(!v.to_string().contains("ann"), "no voter id anywhere: {v}");

    // What the store holds names no voter of the anonymous poll (ids and
    // display names are minted as `voter-ann` and `VOTER-ANN`). A named
    // poll beside it shows that the same scan does find a voter.
    let (named, token) = t
        .create_poll("owner", json!({"head": "Named", "questions": ["x", "y"]}))
        .await;
    let (_, v) = t
        .post(
            &format!("/v1/polls/{named}/votes?after={token}"),
            "voter-cid",
            json!({"question_ids": [1]}),
        )
        .await;
    let tok = v["token"].as_str().unwrap().to_owned();
    let (s, _) = t.get(&format!("/v1/polls/{named}?after={tok}")).await;
    assert_eq!(s, 200);
    let stored = stored_values(&t).await;
    assert!(
        stored.contains("Toppings"),
        "the scan sees the anonymous poll"
    );
    assert!(
        stored.contains("voter-cid"),
        "the scan sees a named poll's voter"
    );
    for name in ["voter-ann", "VOTER-ANN", "voter-bob", "VOTER-BOB"] {
        assert!(
            !stored.contains(name),
            "the store holds {name:?}, a voter of an anonymous poll"
        );
    }
    t.stop().await;
}

/// Every value the view store holds, as text: the embedded store's tables
/// as they are (their `Debug` form holds every cell), or every row of every
/// table of the CQL keyspace, read with the driver (not through the store).
async fn stored_values(t: &TestApp) -> String {
    let store = t.app.views.base();
    if store.backend() == "embedded" {
        return format!("{store:?}");
    }
    let cfg = &t.app.config.views;
    let session = scylla::client::session_builder::SessionBuilder::new()
        .known_nodes(&cfg.contact_points)
        .build()
        .await
        .expect("a CQL session");
    let tables: Vec<(String,)> = session
        .query_unpaged(
            "SELECT table_name FROM system_schema.tables WHERE keyspace_name = ?",
            (cfg.keyspace.as_str(),),
        )
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .rows::<(String,)>()
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(!tables.is_empty(), "keyspace {} has tables", cfg.keyspace);
    let mut out = String::new();
    for (table,) in tables {
        let rows = session
            .query_unpaged(format!("SELECT * FROM {}.{table}", cfg.keyspace), ())
            .await
            .unwrap()
            .into_rows_result()
            .unwrap();
        for row in rows.rows::<scylla::value::Row>().unwrap() {
            out.push_str(&format!("{table}: {:?}\n", row.unwrap()));
        }
    }
    out
}
both!(multiple_choice_and_anonymous);

/// Every bad input is a clear 4xx with a JSON reason; nothing is a 5xx.
async fn bad_input(b: Backends) {
    let Some(t) = TestApp::spawn(b).await else {
        return;
    };
    let (id, token) = t
        .create_poll("owner", json!({"head": "Q", "questions": ["a", "b"]}))
        .await;
    let votes = format!("/v1/polls/{id}/votes?after={token}");
    let raw = |body: &'static str, auth: Option<String>| {
        let mut r = t
            .http
            .post(format!("{}{votes}", t.url))
            .header("content-type", "application/json")
            .body(body);
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        r
    };
    let good = format!("Bearer {}", t.token("ann"));
    let forged = format!(
        "Bearer {}",
        atelier::api::mint("not-the-secret", "ann", "Ann", 60)
    );
    let cases: Vec<(&str, reqwest::RequestBuilder, u16, &str)> = vec![
        (
            "malformed JSON",
            raw("{\"question_ids\": [0", Some(good.clone())),
            400,
            "malformed_json",
        ),
        (
            "unknown field (voter in body)",
            raw(
                "{\"question_ids\": [0], \"voter\": \"bob\"}",
                Some(good.clone()),
            ),
            422,
            "invalid_body",
        ),
        (
            "missing token",
            raw("{\"question_ids\": [0]}", None),
            401,
            "unauthorized",
        ),
        (
            "forged token",
            raw("{\"question_ids\": [0]}", Some(forged)),
            401,
            "unauthorized",
        ),
        (
            "garbage token",
            raw("{\"question_ids\": [0]}", Some("Bearer abc".into())),
            401,
            "unauthorized",
        ),
        (
            "unknown question",
            raw("{\"question_ids\": [7]}", Some(good.clone())),
            422,
            "unknown_question",
        ),
        (
            "second choice on single choice",
            raw("{\"question_ids\": [0, 1]}", Some(good.clone())),
            422,
            "too_many_choices",
        ),
        (
            "no choice",
            raw("{\"question_ids\": []}", Some(good.clone())),
            422,
            "invalid_field",
        ),
        (
            "same choice twice",
            raw("{\"question_ids\": [1, 1]}", Some(good.clone())),
            422,
            "invalid_field",
        ),
    ];
    for (what, req, status, code) in cases {
        let res = req.send().await.unwrap();
        let s = res.status().as_u16();
        let v: Value = res.json().await.unwrap_or(Value::Null);
        assert_eq!(
            (s, v["error"].as_str()),
            (status, Some(code)),
            "{what}: {v}"
        );
        assert!(
            v["reason"].as_str().is_some_and(|r| !r.is_empty()),
            "{what}: {v}"
        );
    }
    // Unknown poll, malformed ids, bad tokens and cursors.
    let other = uuid::Uuid::now_v7();
    let (s, v) = t
        .post(
            &format!("/v1/polls/{other}/votes"),
            "ann",
            json!({"question_ids": [0]}),
        )
        .await;
    assert_eq!((s, v["error"].as_str()), (404, Some("unknown_poll")));
    let (s, _) = t.get("/v1/polls/not-a-uuid").await;
    assert_eq!(s, 404);
    let (s, v) = t.get(&format!("/v1/polls/{id}?after=%%%")).await;
    assert_eq!((s, v["error"].as_str()), (400, Some("invalid_token")));
    let (s, v) = t.get("/v1/users/owner/polls?cursor=zzz").await;
    assert_eq!((s, v["error"].as_str()), (400, Some("invalid_cursor")));
    let (s, v) = t.get("/v1/users/owner/polls?limit=0").await;
    assert_eq!((s, v["error"].as_str()), (400, Some("invalid_limit")));
    let (s, v) = t.get("/v1/users/owner/polls?limit=abc").await;
    assert_eq!((s, v["error"].as_str()), (400, Some("invalid_query")));
    let (s, v) = t.get(&format!("/v1/polls/{id}?nope=1")).await;
    assert_eq!((s, v["error"].as_str()), (400, Some("invalid_query")));
    // Invalid polls.
    for body in [
        json!({"head": "", "questions": ["a", "b"]}),
        json!({"head": "x", "questions": ["a"]}),
        json!({"head": "x", "questions": ["a", ""]}),
        json!({"head": "x", "questions": ["a", "b"], "ends_at": "2001-01-01T00:00:00Z"}),
    ] {
        let (s, v) = t.post("/v1/polls", "owner", body.clone()).await;
        assert_eq!(s, 422, "{body}: {v}");
    }
    // Oversized body.
    let big = "x".repeat(200 * 1024);
    let (s, v) = t
        .post(
            "/v1/polls",
            "owner",
            json!({"head": big, "questions": ["a", "b"]}),
        )
        .await;
    assert_eq!((s, v["error"].as_str()), (413, Some("body_too_large")));
    // Ten megabytes: the body is read and dropped, then the 413 with its
    // reason arrives, never a connection reset mid-send.
    for _ in 0..3 {
        let huge = "x".repeat(10 << 20);
        let (s, v) = t
            .post(
                "/v1/polls",
                "owner",
                json!({"head": huge, "questions": ["a", "b"]}),
            )
            .await;
        assert_eq!(
            (s, v["error"].as_str()),
            (413, Some("body_too_large")),
            "{v}"
        );
        assert!(
            v["reason"]
                .as_str()
                .is_some_and(|r| r.contains("http.body_limit")),
            "{v}"
        );
    }
    // After the end time, the edge refuses.
    let soon = chrono::Utc::now() + chrono::Duration::milliseconds(300);
    let (ending, tok) = t
        .create_poll(
            "owner",
            json!({"head": "Q", "questions": ["a", "b"], "ends_at": soon}),
        )
        .await;
    let _ = t.get(&format!("/v1/polls/{ending}?after={tok}")).await;
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    let (s, v) = t
        .post(
            &format!("/v1/polls/{ending}/votes"),
            "ann",
            json!({"question_ids": [0]}),
        )
        .await;
    assert_eq!((s, v["error"].as_str()), (409, Some("poll_ended")));
    // Unknown routes answer JSON too.
    let (s, v) = t.get("/v1/nope").await;
    assert_eq!((s, v["error"].as_str()), (404, Some("no_route")));
    t.stop().await;
}
both!(bad_input);

/// `?after` with a position the log never had is 409 `unknown_position`,
/// well before the wait's bound; a position appended by another producer
/// (not through this API) right after the brokers were asked about its
/// partition is waited for and answered, never refused for what the
/// brokers said before it existed.
async fn after_a_position_the_log_never_had(b: Backends) {
    let Some(t) = TestApp::spawn(b).await else {
        return;
    };
    let (id, tok) = t
        .create_poll("ann", json!({"head": "Lunch?", "questions": ["a", "b"]}))
        .await;
    let (s, v) = t.get(&format!("/v1/polls/{id}?after={tok}")).await;
    assert_eq!(s, 200, "{v}");
    let at = Token::decode(&tok).expect("the API's token decodes");
    let beyond = Token {
        offset: at.offset + 1_000_000,
        ..at
    };
    let started = Instant::now();
    let (s, v) = t
        .get(&format!("/v1/polls/{id}?after={}", beyond.encode()))
        .await;
    assert_eq!(
        (s, v["error"].as_str()),
        (409, Some("unknown_position")),
        "{v}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(t.app.config.http.max_after_wait_ms / 2),
        "answered only after {:?}",
        started.elapsed()
    );

    // Votes appended by this test's own producer, each read at once with
    // its token: the brokers were just asked about the partition (the
    // refusal above, and each read that finds its vote not yet applied),
    // so an answer they gave before the append must not refuse it.
    for i in 0..20 {
        let vote = Event {
            id: EventId(uuid::Uuid::now_v7()),
            time: chrono::Utc::now(),
            principal: Principal {
                id: UserId::parse(&format!("v{i}")).unwrap(),
                name: format!("Voter {i}"),
                avatar_url: None,
            },
            data: EventData::VoteCast(VoteCast {
                poll_id: PollId::parse(&id).unwrap(),
                question_ids: vec![i % 2],
            }),
        };
        let appended = t.app.producer.send(&vote).await.expect("appended");
        let token = Token::from(&appended).encode();
        let (s, v) = t.get(&format!("/v1/polls/{id}?after={token}")).await;
        assert_eq!(s, 200, "vote {i}: {v}");
    }
    let (_, v) = t.get(&format!("/v1/polls/{id}")).await;
    assert_eq!(tallies(&v), vec![10, 10], "{v}");
    t.stop().await;
}
both!(after_a_position_the_log_never_had);
