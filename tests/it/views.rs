//! One behaviour suite for the view store, run on the embedded store and on
//! Cassandra: the CQL data model both must keep.

use std::sync::Arc;

use atelier::config::ViewsConfig;
use atelier::event::{PollId, Principal, Question, UserId};
use atelier::fold::Position;
use atelier::fold::poll::{Ballot, PollCommit, PollState};
use atelier::view::{self, Checkpoint, ViewStore};
use chrono::{TimeZone, Utc};

use crate::helpers::{Backends, cql_views, real};

async fn store(b: Backends) -> Option<Arc<dyn ViewStore>> {
    let cfg = match b {
        Backends::Embedded => ViewsConfig::default(),
        Backends::Real => cql_views(&real("ATELIER_IT_CQL")?),
    };
    Some(view::open(&cfg).await.expect("store opens"))
}

fn state(id: PollId, owner: &str, created_s: i64, offset: i64, tallies: Vec<u64>) -> PollState {
    PollState {
        poll_id: id,
        owner: Principal {
            id: UserId::parse(owner).unwrap(),
            name: owner.into(),
            avatar_url: Some("https://example.test/a.png".into()),
        },
        created_at: Utc.timestamp_opt(1_700_000_000 + created_s, 0).unwrap(),
        head: "head".into(),
        message: "msg".into(),
        ends_at: None,
        anonymous: false,
        multiple_choice: true,
        questions: (0..tallies.len() as u16)
            .map(|i| Question {
                id: i,
                text: format!("q{i}"),
            })
            .collect(),
        closed_at: None,
        voters: tallies.iter().sum(),
        tallies,
        recent: vec![],
        rejected: Default::default(),
        position: Position {
            partition: 2,
            offset,
        },
    }
}

fn ballot(choices: u32) -> Ballot {
    Ballot {
        choices,
        at: Utc.timestamp_opt(1_700_000_100, 0).unwrap(),
        name: Some("Ann".into()),
    }
}

async fn round_trip_and_one_query(b: Backends) {
    let Some(s) = store(b).await else { return };
    let id = PollId(uuid::Uuid::now_v7());
    assert_eq!(s.poll(id).await.unwrap(), None);
    let st = state(id, "ann", 0, 5, vec![1, 2]);
    s.commit_poll(&PollCommit {
        state: st.clone(),
        ballots: vec![("ann".into(), Some(ballot(0b10)))],
        previous: vec![],
    })
    .await
    .unwrap();
    let (reads, _) = s.counts();
    assert_eq!(s.poll(id).await.unwrap(), Some(st.clone()));
    assert_eq!(s.counts().0 - reads, 1, "a poll read is one query");
    assert_eq!(
        s.load_polls(&[id, PollId(uuid::Uuid::now_v7())])
            .await
            .unwrap(),
        vec![st]
    );
}
both!(round_trip_and_one_query);

/// Write timestamps come from offsets: an older commit arriving late (a
/// fenced-out projector) never overwrites a newer one.
async fn older_writes_lose(b: Backends) {
    let Some(s) = store(b).await else { return };
    let id = PollId(uuid::Uuid::now_v7());
    let newer = state(id, "ann", 0, 20, vec![5, 5]);
    let older = state(id, "ann", 0, 10, vec![1, 1]);
    s.commit_poll(&PollCommit {
        state: newer.clone(),
        ballots: vec![("v".into(), Some(ballot(0b01)))],
        previous: vec![],
    })
    .await
    .unwrap();
    s.commit_poll(&PollCommit {
        state: older,
        ballots: vec![("v".into(), Some(ballot(0b10))), ("w".into(), None)],
        previous: vec![],
    })
    .await
    .unwrap();
    assert_eq!(s.poll(id).await.unwrap(), Some(newer.clone()));
    let got = s.load_ballots(id, &["v".into()]).await.unwrap();
    assert_eq!(got, vec![("v".to_owned(), ballot(0b01))]);
    // Replaying the same commit is a no-op.
    s.commit_poll(&PollCommit {
        state: newer.clone(),
        ballots: vec![],
        previous: vec![],
    })
    .await
    .unwrap();
    assert_eq!(s.poll(id).await.unwrap(), Some(newer));
}
both!(older_writes_lose);

async fn ballots_upsert_and_delete(b: Backends) {
    let Some(s) = store(b).await else { return };
    let id = PollId(uuid::Uuid::now_v7());
    s.commit_poll(&PollCommit {
        state: state(id, "ann", 0, 1, vec![2, 0]),
        ballots: vec![("a".into(), Some(ballot(1))), ("b".into(), Some(ballot(1)))],
        previous: vec![],
    })
    .await
    .unwrap();
    s.commit_poll(&PollCommit {
        state: state(id, "ann", 0, 2, vec![1, 0]),
        ballots: vec![("a".into(), None)],
        previous: vec![],
    })
    .await
    .unwrap();
    let mut got = s
        .load_ballots(id, &["a".into(), "b".into(), "zz".into()])
        .await
        .unwrap();
    got.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(got, vec![("b".to_owned(), ballot(1))]);
    // A re-vote after a delete, at a higher offset, is live again.
    s.commit_poll(&PollCommit {
        state: state(id, "ann", 0, 3, vec![1, 1]),
        ballots: vec![("a".into(), Some(ballot(2)))],
        previous: vec![],
    })
    .await
    .unwrap();
    assert_eq!(s.load_ballots(id, &["a".into()]).await.unwrap().len(), 1);
    // Many voters at once (IN lists are chunked).
    let many: Vec<(String, Option<Ballot>)> = (0..250)
        .map(|i| (format!("m{i}"), Some(ballot(1))))
        .collect();
    s.commit_poll(&PollCommit {
        state: state(id, "ann", 0, 4, vec![251, 1]),
        ballots: many.clone(),
        previous: vec![],
    })
    .await
    .unwrap();
    let keys: Vec<String> = many.iter().map(|(k, _)| k.clone()).collect();
    assert_eq!(s.load_ballots(id, &keys).await.unwrap().len(), 250);
}
both!(ballots_upsert_and_delete);

async fn owner_pages_newest_first(b: Backends) {
    let Some(s) = store(b).await else { return };
    let owner = format!("o{}", crate::helpers::unique());
    let ids: Vec<PollId> = (0..5).map(|_| PollId(uuid::Uuid::now_v7())).collect();
    for (i, id) in ids.iter().enumerate() {
        s.commit_poll(&PollCommit {
            state: state(*id, &owner, i as i64, 1, vec![0, 0]),
            ballots: vec![],
            previous: vec![],
        })
        .await
        .unwrap();
    }
    let o = UserId::parse(&owner).unwrap();
    let (reads, _) = s.counts();
    let p1 = s.polls_by_owner(&o, None, 2).await.unwrap();
    assert_eq!(s.counts().0 - reads, 1);
    assert_eq!(
        p1.iter().map(|r| r.poll_id).collect::<Vec<_>>(),
        vec![ids[4], ids[3]]
    );
    let cur = (p1[1].created_at, p1[1].poll_id);
    let p2 = s.polls_by_owner(&o, Some(cur), 10).await.unwrap();
    assert_eq!(
        p2.iter().map(|r| r.poll_id).collect::<Vec<_>>(),
        vec![ids[2], ids[1], ids[0]]
    );
}
both!(owner_pages_newest_first);

async fn checkpoints_are_versioned(b: Backends) {
    let Some(s) = store(b).await else { return };
    let view = format!("v{}", crate::helpers::unique());
    let cp = |offset| Checkpoint {
        view: view.clone(),
        topic: "t".into(),
        partition: 3,
        offset,
        rejected: [("unknown_poll".to_owned(), offset as u64)].into(),
    };
    assert_eq!(s.checkpoint(&view, "t", 3).await.unwrap(), None);
    s.save_checkpoint(&cp(9)).await.unwrap();
    s.save_checkpoint(&cp(4)).await.unwrap();
    assert_eq!(s.checkpoint(&view, "t", 3).await.unwrap(), Some(cp(9)));
    assert_eq!(s.checkpoints(&view).await.unwrap(), vec![cp(9)]);
}
both!(checkpoints_are_versioned);
