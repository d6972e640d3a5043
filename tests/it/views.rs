//! One behaviour suite for the view store, run on the embedded store, on
//! the embedded store spilling every partition to disk past a budget of
//! one byte (each access reads it back from the spill file), and on
//! Cassandra: the CQL data model all of them must keep.

use std::sync::Arc;

use atelier::config::ViewsConfig;
use atelier::event::{
    Event, EventData, EventId, FeedContent, FeedItemId, ModelVersion, PollId, Principal, Question,
    SessionKey, Style, StyleTransferFailed, StyleTransferStarted, TransferRef, UploadId,
    UploadReceived, UserId,
};
use atelier::fold::Position;
use atelier::fold::cards::{Patch, Status, patch};
use atelier::fold::feed::{FeedKind, ItemCommit, ItemState, Member, Relation};
use atelier::fold::poll::{Ballot, PollCommit, PollState};
use atelier::view::{self, Checkpoint, Store, TimelineRow, VoterRow};
use chrono::{TimeZone, Utc};

use atelier::view::embedded::spill::Spill;

use crate::helpers::{Backends, cql_views, real, unique};

async fn store(b: Backends) -> Option<Arc<dyn Store>> {
    let cfg = match b {
        Backends::Embedded => ViewsConfig::default(),
        Backends::Real => cql_views(&real("ATELIER_IT_CQL")?),
    };
    let store = view::open(&cfg).await.expect("store opens");
    if b == Backends::Embedded && spilled() {
        // A budget of one byte: every partition leaves memory after each
        // access, and the next one reads it back from the file.
        let path = crate::helpers::scratch().join(format!("atelier-spill-{}", unique()));
        let spill = Spill::open(&path.join("views.spill"), 1, true, true).expect("spill opens");
        spill.set_hot_window(0);
        store
            .as_embedded()
            .expect("embedded")
            .attach(&spill, view::embedded::BASE_TAG);
    }
    Some(store)
}

tokio::task_local! {
    /// Set while the suite runs a behaviour on the spilling store.
    static SPILLED_RUN: ();
}

fn spilled() -> bool {
    SPILLED_RUN.try_with(|_| ()).is_ok()
}

/// Runs behaviours of the suite on the embedded store spilling to disk.
macro_rules! spilled {
    ($($name:ident),* $(,)?) => {
        mod spilled {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::SPILLED_RUN
                        .scope((), super::$name(crate::helpers::Backends::Embedded))
                        .await
                }
            )*
        }
    };
}

spilled!(
    round_trip_and_one_query,
    older_writes_lose,
    ballots_upsert_and_delete,
    owner_pages_newest_first,
    checkpoints_are_versioned,
    items_members_and_timelines,
    requests_count_partitions_not_statements,
    timelines_page_newest_first,
    timelines_span_buckets_and_shards,
    cards_converge_in_any_order,
    sessions_list_newest_minted_first,
    voters_by_question_follow_ballots,
    poll_scans_visit_every_poll_once,
);

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
    // Many voters at once (IN lists are chunked; on CQL a commit past 256
    // statements is written as several batches, the version row last).
    let many: Vec<(String, Option<Ballot>)> = (0..700)
        .map(|i| (format!("m{i}"), Some(ballot(1))))
        .collect();
    s.commit_poll(&PollCommit {
        state: state(id, "ann", 0, 4, vec![701, 1]),
        ballots: many.clone(),
        previous: vec![],
    })
    .await
    .unwrap();
    let keys: Vec<String> = many.iter().map(|(k, _)| k.clone()).collect();
    assert_eq!(s.load_ballots(id, &keys).await.unwrap().len(), 700);
    let got = s.poll(id).await.unwrap().unwrap();
    assert_eq!((got.tallies, got.position.offset), (vec![701, 1], 4));
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

fn item(id: FeedItemId, kind: usize, created_s: i64, offset: i64) -> ItemState {
    let content = match kind {
        0 => FeedContent::Post {
            title: "t".into(),
            body: "b".into(),
        },
        1 => FeedContent::Game {
            name: "n".into(),
            location: "l".into(),
        },
        _ => FeedContent::Team { room: "r".into() },
    };
    ItemState {
        item_id: id,
        kind: FeedKind::of(&content),
        content,
        author: Principal {
            id: UserId::parse("ann").unwrap(),
            name: "Ann".into(),
            avatar_url: None,
        },
        created_at: Utc.timestamp_opt(1_700_000_000 + created_s, 0).unwrap(),
        deleted_at: None,
        likes: 0,
        joined: 0,
        recent_members: vec![],
        rejected: Default::default(),
        position: Position {
            partition: 1,
            offset,
        },
    }
}

fn member(s: i64) -> Member {
    Member {
        at: Utc.timestamp_opt(1_700_000_000 + s, 0).unwrap(),
        name: "Bob".into(),
    }
}

async fn items_members_and_timelines(b: Backends) {
    let Some(s) = store(b).await else { return };
    let id = FeedItemId(uuid::Uuid::now_v7());
    let bob = (Relation::Like, UserId::parse("bob").unwrap());
    let cat = (Relation::Join, UserId::parse("cat").unwrap());
    let mut st = item(id, 1, 0, 5);
    st.likes = 1;
    st.joined = 1;
    s.commit_item(&ItemCommit {
        state: st.clone(),
        members: vec![
            (bob.clone(), Some(member(1))),
            (cat.clone(), Some(member(2))),
        ],
    })
    .await
    .unwrap();
    assert_eq!(s.item(id).await.unwrap(), Some(st.clone()));
    let mut got = s
        .load_members(
            id,
            &[
                bob.clone(),
                cat.clone(),
                (Relation::Like, UserId::parse("dan").unwrap()),
            ],
        )
        .await
        .unwrap();
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        got,
        vec![(cat.clone(), member(2)), (bob.clone(), member(1))]
    );
    for kind in [None, Some(FeedKind::Game)] {
        let rows = s.timeline(kind, None, 10).await.unwrap();
        assert_eq!(rows, vec![TimelineRow::of(&st)], "{kind:?}");
    }
    assert!(
        s.timeline(Some(FeedKind::Post), None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    // Unlike (row deleted), then delete at offset 9.
    st.likes = 0;
    st.position.offset = 7;
    s.commit_item(&ItemCommit {
        state: st.clone(),
        members: vec![(bob.clone(), None)],
    })
    .await
    .unwrap();
    assert_eq!(
        s.load_members(id, std::slice::from_ref(&bob))
            .await
            .unwrap(),
        vec![]
    );
    assert_eq!(s.timeline(None, None, 10).await.unwrap()[0].likes, 0);
    let mut gone = st.clone();
    gone.deleted_at = Some(Utc.timestamp_opt(1_700_000_050, 0).unwrap());
    gone.position.offset = 9;
    s.commit_item(&ItemCommit {
        state: gone.clone(),
        members: vec![],
    })
    .await
    .unwrap();
    assert!(s.timeline(None, None, 10).await.unwrap().is_empty());
    // A fenced-out projector replays offset 8: it loses on timestamp, and the
    // timeline rows stay deleted.
    let mut stale = st.clone();
    stale.likes = 4;
    stale.position.offset = 8;
    s.commit_item(&ItemCommit {
        state: stale,
        members: vec![],
    })
    .await
    .unwrap();
    assert_eq!(s.item(id).await.unwrap(), Some(gone));
    assert!(s.timeline(None, None, 10).await.unwrap().is_empty());
    assert!(
        s.timeline(Some(FeedKind::Game), None, 10)
            .await
            .unwrap()
            .is_empty()
    );
}
both!(items_members_and_timelines);

/// Requests are counted per partition a write reaches, not per statement:
/// an item's commit with two memberships is five statements, and three
/// requests (two timeline partitions, then the item's partition in one
/// batch); a read is one of each. The first item of a day also writes the
/// bucket index of both its timelines (two statements, two requests).
async fn requests_count_partitions_not_statements(b: Backends) {
    let Some(s) = store(b).await else { return };
    let first = item(FeedItemId(uuid::Uuid::now_v7()), 0, 0, 8);
    let (w0, q0) = (s.counts().1, s.requests());
    s.commit_item(&ItemCommit {
        state: first,
        members: vec![],
    })
    .await
    .unwrap();
    assert_eq!(
        (s.counts().1 - w0, s.requests() - q0),
        (5, 5),
        "(statements, requests) of the first commit of a day"
    );
    let id = FeedItemId(uuid::Uuid::now_v7());
    let mut st = item(id, 0, 0, 9);
    st.likes = 2;
    let (w0, q0) = (s.counts().1, s.requests());
    s.commit_item(&ItemCommit {
        state: st,
        members: vec![
            (
                (Relation::Like, UserId::parse("bob").unwrap()),
                Some(member(1)),
            ),
            (
                (Relation::Like, UserId::parse("cat").unwrap()),
                Some(member(2)),
            ),
        ],
    })
    .await
    .unwrap();
    assert_eq!(
        (s.counts().1 - w0, s.requests() - q0),
        (5, 3),
        "(statements, requests) of a commit"
    );
    let (r0, q0) = (s.counts().0, s.requests());
    s.item(id).await.unwrap().unwrap();
    assert_eq!((s.counts().0 - r0, s.requests() - q0), (1, 1));
}
both!(requests_count_partitions_not_statements);

async fn timelines_page_newest_first(b: Backends) {
    let Some(s) = store(b).await else { return };
    let ids: Vec<FeedItemId> = (0..7).map(|_| FeedItemId(uuid::Uuid::now_v7())).collect();
    for (i, id) in ids.iter().enumerate() {
        // Two items share a creation time: the id breaks the tie.
        let created = if i == 4 { 3 } else { i as i64 };
        s.commit_item(&ItemCommit {
            state: item(*id, i % 3, created, i as i64),
            members: vec![],
        })
        .await
        .unwrap();
    }
    let mut walked = Vec::new();
    let mut cursor = None;
    loop {
        let page = s.timeline(None, cursor, 3).await.unwrap();
        walked.extend(page.iter().map(|r| r.item_id));
        if page.len() < 3 {
            break;
        }
        let last = page.last().unwrap();
        cursor = Some((last.created_at, last.item_id));
    }
    let order = [6, 5, 4, 3, 2, 1, 0];
    assert_eq!(walked, order.map(|i| ids[i]).to_vec());
    let posts = s.timeline(Some(FeedKind::Post), None, 10).await.unwrap();
    assert_eq!(
        posts.iter().map(|r| r.item_id).collect::<Vec<_>>(),
        vec![ids[6], ids[3], ids[0]]
    );
}
both!(timelines_page_newest_first);

/// Timelines are bucketed by day (and the all-kinds one sharded): pages
/// are newest first across buckets and shards, a page that ends a bucket
/// continues in the next older one with rows (empty days between are not
/// read), and a full page of the current days is one query.
async fn timelines_span_buckets_and_shards(b: Backends) {
    let Some(s) = store(b).await else { return };
    let day = view::feed::BUCKET_SECS;
    // Seconds into today's bucket, relative to 1_700_000_000 as `item`
    // takes them.
    let today = Utc::now().timestamp().div_euclid(day) * day - 1_700_000_000;
    let ages = [
        -5,
        -4,
        -3,
        -2,
        -1, // today
        day - 5,
        day - 6, // yesterday
        3 * day, // three days ago
        400 * day - 1,
        400 * day - 2, // over a year ago
        3_000 * day,   // years ago
    ];
    let mut made = Vec::new();
    for (i, age) in ages.iter().enumerate() {
        let id = FeedItemId(uuid::Uuid::now_v7());
        let mut st = item(id, i % 3, today - age, 100 + i as i64);
        // From five log partitions: every shard of the all-kinds timeline.
        st.position.partition = (i % 5) as i32;
        s.commit_item(&ItemCommit {
            state: st.clone(),
            members: vec![],
        })
        .await
        .unwrap();
        made.push(st);
    }
    // Newest first, the id breaking ties (none here).
    let expect = |made: &[ItemState], kind: Option<FeedKind>| -> Vec<FeedItemId> {
        let mut v: Vec<&ItemState> = made
            .iter()
            .filter(|st| kind.is_none_or(|k| st.kind == k))
            .collect();
        v.sort_by_key(|st| std::cmp::Reverse((st.created_at, st.item_id)));
        v.iter().map(|st| st.item_id).collect()
    };
    for kind in [None, Some(FeedKind::Post), Some(FeedKind::Game)] {
        for limit in [1, 2, 3, 4, 100] {
            let mut walked = Vec::new();
            let mut cursor = None;
            loop {
                let page = s.timeline(kind, cursor, limit).await.unwrap();
                assert!(page.len() <= limit);
                walked.extend(page.iter().map(|r| r.item_id));
                if page.len() < limit {
                    break;
                }
                let last = page.last().unwrap();
                cursor = Some((last.created_at, last.item_id));
            }
            assert_eq!(walked, expect(&made, kind), "{kind:?}, pages of {limit}");
        }
    }
    // A full first page of today's items: one query, whatever lies older.
    let (r0, _) = s.counts();
    assert_eq!(s.timeline(None, None, 5).await.unwrap().len(), 5);
    assert_eq!(s.counts().0 - r0, 1, "a full page of today: one query");
    // The whole feed in one page: the query of today's and yesterday's
    // buckets, then the three older ones with rows (of thousands of days
    // between) in one more.
    let (r0, _) = s.counts();
    assert_eq!(s.timeline(None, None, 100).await.unwrap().len(), ages.len());
    assert_eq!(
        s.counts().0 - r0,
        2,
        "the current days, then 3 older in one"
    );
    // A deleted item leaves its old bucket's page.
    let mut gone = made[8].clone();
    gone.deleted_at = Some(Utc::now());
    gone.position.offset = 500;
    s.commit_item(&ItemCommit {
        state: gone.clone(),
        members: vec![],
    })
    .await
    .unwrap();
    made.remove(8);
    assert_eq!(
        s.timeline(None, None, 100)
            .await
            .unwrap()
            .iter()
            .map(|r| r.item_id)
            .collect::<Vec<_>>(),
        expect(&made, None)
    );
}
both!(timelines_span_buckets_and_shards);

async fn cards_converge_in_any_order(b: Backends) {
    let Some(s) = store(b).await else { return };
    let key = SessionKey::parse(&format!("s{}", crate::helpers::unique())).unwrap();
    let up = UploadId(uuid::Uuid::now_v7());
    let r = TransferRef {
        upload_id: up,
        session_key: key.clone(),
        slot: 2,
        style: Style::parse("sketch").unwrap(),
    };
    let ev = |data| Event {
        id: EventId(uuid::Uuid::now_v7()),
        time: Utc.timestamp_opt(1_700_000_000, 0).unwrap(),
        principal: Principal {
            id: UserId::parse("ann").unwrap(),
            name: "Ann".into(),
            avatar_url: None,
        },
        data,
    };
    let events = [
        ev(EventData::UploadReceived(UploadReceived {
            upload_id: up,
            session_key: key.clone(),
            slot: 2,
            style: Style::parse("sketch").unwrap(),
            object_key: "in".into(),
            content_type: "image/jpeg".into(),
            bytes: 9,
            width: 3,
            height: 4,
            sha256: "c".repeat(64),
        })),
        ev(EventData::StyleTransferStarted(StyleTransferStarted {
            upload: r.clone(),
            model_version: ModelVersion::parse("v2").unwrap(),
        })),
        ev(EventData::StyleTransferFailed(StyleTransferFailed {
            upload: r,
            reason: "model error".into(),
            retriable: true,
        })),
    ];
    let patches: Vec<Patch> = events.iter().filter_map(patch).collect();
    // Newest first, one at a time: the oldest patch arrives last.
    for p in patches.iter().rev() {
        s.apply_patches(&[p], &[p], &[p]).await.unwrap();
    }
    let cards = s.cards(&key).await.unwrap();
    assert_eq!(cards.len(), 1);
    let c = &cards[0];
    assert_eq!(c.status, Some(Status::Failed));
    assert_eq!(c.error.as_deref(), Some("model error"));
    assert_eq!(c.input_key.as_deref(), Some("in"));
    assert_eq!(
        c.model_version.as_ref().map(|m| m.to_string()),
        Some("v2".into())
    );
    assert_eq!(c.slot, Some(2));
    let u = s.upload(up).await.unwrap().unwrap();
    assert_eq!(&u, c, "the job status row holds the same columns");
    assert_eq!(
        s.upload(UploadId(uuid::Uuid::now_v7())).await.unwrap(),
        None
    );
}
both!(cards_converge_in_any_order);

/// An owner's sessions: one row per session with an upload, its latest
/// upload whatever the order of arrival, newest minted first (keys minted
/// before nonces carried the time last), paged by the last key; nobody
/// else's, and nothing from a worker's patch.
async fn sessions_list_newest_minted_first(b: Backends) {
    let Some(s) = store(b).await else { return };
    let owner = format!("own{}", crate::helpers::unique());
    let mut keys = Vec::new();
    for _ in 0..3 {
        keys.push(
            SessionKey::parse(&atelier::api::access::session_key_for(
                crate::helpers::LINK_KEY,
                &owner,
            ))
            .unwrap(),
        );
        // Another millisecond: minting order is listing order.
        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    }
    let legacy = SessionKey::parse(&format!("legacy{}", crate::helpers::unique())).unwrap();
    let by = |who: &str, key: &SessionKey, style: &str| {
        let up = UploadId(uuid::Uuid::now_v7());
        let e = Event {
            id: EventId(uuid::Uuid::now_v7()),
            time: Utc::now(),
            principal: Principal {
                id: UserId::parse(who).unwrap(),
                name: who.into(),
                avatar_url: None,
            },
            data: EventData::UploadReceived(UploadReceived {
                upload_id: up,
                session_key: key.clone(),
                slot: 1,
                style: Style::parse(style).unwrap(),
                object_key: "in".into(),
                content_type: "image/jpeg".into(),
                bytes: 9,
                width: 3,
                height: 4,
                sha256: "c".repeat(64),
            }),
        };
        (up, e)
    };
    let (first, e1) = by(&owner, &keys[0], "sketch");
    // Another millisecond: two uploads in one are a tie each store
    // resolves its own way (to one of them whole).
    tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    let (latest, e2) = by(&owner, &keys[0], "mosaic");
    assert!(first.0 < latest.0);
    let (_, e3) = by(&owner, &keys[1], "sketch");
    let (_, e4) = by(&owner, &keys[2], "sketch");
    let (_, e5) = by(&owner, &legacy, "sketch");
    let (_, theirs) = by("someone-else", &keys[1], "sketch");
    let done = Event {
        data: EventData::StyleTransferStarted(StyleTransferStarted {
            upload: TransferRef {
                upload_id: first,
                session_key: keys[0].clone(),
                slot: 1,
                style: Style::parse("sketch").unwrap(),
            },
            model_version: ModelVersion::parse("v1").unwrap(),
        }),
        principal: Principal {
            id: UserId::parse("worker").unwrap(),
            name: "worker".into(),
            avatar_url: None,
        },
        ..e1.clone()
    };
    // The latest upload first, the older one after it.
    for e in [&e2, &e1, &e3, &e4, &e5, &theirs, &done] {
        let p = patch(e).unwrap();
        let sessions: Vec<&Patch> = p.owner.is_some().then_some(&p).into_iter().collect();
        assert_eq!(sessions.is_empty(), e.principal.id.as_str() == "worker");
        s.apply_patches(&[], &[], &sessions).await.unwrap();
    }
    let owner_id = UserId::parse(&owner).unwrap();
    let all = s.sessions_of(&owner_id, None, 10).await.unwrap();
    let listed: Vec<&SessionKey> = all.iter().map(|r| &r.session_key).collect();
    assert_eq!(listed, vec![&keys[2], &keys[1], &keys[0], &legacy]);
    assert_eq!(all[2].last_upload_id, latest, "the latest upload wins");
    assert_eq!(all[2].last_style.as_str(), "mosaic");
    let page = s.sessions_of(&owner_id, None, 2).await.unwrap();
    assert_eq!(page, all[..2].to_vec());
    let rest = s
        .sessions_of(&owner_id, Some(&page[1].session_key), 10)
        .await
        .unwrap();
    assert_eq!(rest, all[2..].to_vec());
    let none = s
        .sessions_of(&UserId::parse("nobody-at-all").unwrap(), None, 10)
        .await
        .unwrap();
    assert!(none.is_empty(), "{none:?}");
}
both!(sessions_list_newest_minted_first);

async fn voters_by_question_follow_ballots(b: Backends) {
    let Some(s) = store(b).await else { return };
    let id = PollId(uuid::Uuid::now_v7());
    s.commit_poll(&PollCommit {
        state: state(id, "own", 0, 3, vec![2, 1]),
        ballots: vec![
            ("ann".into(), Some(ballot(0b01))),
            ("bob".into(), Some(ballot(0b11))),
        ],
        previous: vec![0, 0],
    })
    .await
    .unwrap();
    let names = |v: Vec<VoterRow>| {
        v.into_iter()
            .map(|r| r.voter.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(s.question_voters(id, 0, None, 10).await.unwrap()),
        ["ann", "bob"]
    );
    assert_eq!(
        names(s.question_voters(id, 1, None, 10).await.unwrap()),
        ["bob"]
    );
    assert_eq!(
        names(s.question_voters(id, 0, Some("ann"), 10).await.unwrap()),
        ["bob"]
    );
    // bob moves to question 1 only; ann retracts.
    s.commit_poll(&PollCommit {
        state: state(id, "own", 0, 4, vec![0, 1]),
        ballots: vec![("ann".into(), None), ("bob".into(), Some(ballot(0b10)))],
        previous: vec![0b01, 0b11],
    })
    .await
    .unwrap();
    assert!(s.question_voters(id, 0, None, 10).await.unwrap().is_empty());
    assert_eq!(
        names(s.question_voters(id, 1, None, 10).await.unwrap()),
        ["bob"]
    );
    // Anonymous polls store no voters at all.
    let anon = PollId(uuid::Uuid::now_v7());
    let mut st = state(anon, "own", 0, 5, vec![1, 0]);
    st.anonymous = true;
    s.commit_poll(&PollCommit {
        state: st,
        ballots: vec![("hmac-of-ann".into(), Some(ballot(0b01)))],
        previous: vec![0],
    })
    .await
    .unwrap();
    assert!(
        s.question_voters(anon, 0, None, 10)
            .await
            .unwrap()
            .is_empty()
    );
}
both!(voters_by_question_follow_ballots);

/// Export scans: every poll exactly once across pages (ballot rows are not
/// polls), each page one query, and the last page says so.
async fn poll_scans_visit_every_poll_once(b: Backends) {
    let Some(s) = store(b).await else { return };
    assert_eq!(s.scan_polls(None, 3).await.unwrap(), (vec![], None));
    let mut want: Vec<PollState> = Vec::new();
    for i in 0..7u64 {
        let st = state(
            PollId(uuid::Uuid::now_v7()),
            "ann",
            i as i64,
            10,
            vec![i, 1],
        );
        s.commit_poll(&PollCommit {
            state: st.clone(),
            ballots: (0..3).map(|v| (format!("v{v}"), Some(ballot(1)))).collect(),
            previous: vec![],
        })
        .await
        .unwrap();
        want.push(st);
    }
    let mut seen = Vec::new();
    let mut after = None;
    let mut pages = 0;
    loop {
        let (reads, _) = s.counts();
        let (page, next) = s.scan_polls(after, 3).await.unwrap();
        assert_eq!(s.counts().0 - reads, 1, "a scan page is one query");
        assert!(page.len() <= 3, "{} polls in a page of 3", page.len());
        pages += 1;
        seen.extend(page);
        match next {
            Some(n) => after = Some(n),
            None => break,
        }
        assert!(pages < 10, "the scan does not end");
    }
    assert!(pages >= 3, "7 polls in pages of 3 took {pages} pages");
    seen.sort_by_key(|p| p.poll_id);
    want.sort_by_key(|p| p.poll_id);
    assert_eq!(seen, want);
    // A page larger than the data is the last one.
    let (all, next) = s.scan_polls(None, 100).await.unwrap();
    assert_eq!((all.len(), next), (7, None));
}
both!(poll_scans_visit_every_poll_once);
