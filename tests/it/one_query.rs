//! Every read is one view query, whatever the data size: counted at 10 and
//! at 100,000 votes, on both stores.

use atelier::event::{Event, EventData, EventId, PollId, Principal, UserId, VoteCast};
use futures::StreamExt;
use serde_json::json;

use crate::helpers::{Backends, TestApp};

async fn votes(t: &TestApp, poll: &str, n: usize) -> String {
    let poll_id = PollId::parse(poll).unwrap();
    let sends = (0..n).map(|i| {
        let e = Event {
            id: EventId(uuid::Uuid::now_v7()),
            time: atelier::api::now(),
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
        let (s, v) = t.get(&format!("/v1/polls/{id}?after={last}")).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["voters"], n as u64);
        let views = &t.app.views;
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
