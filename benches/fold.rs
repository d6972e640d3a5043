//! Hot paths of the projector, without I/O: the poll fold alone (votes into
//! tallies), the feed fold (likes and joins on a hot item), the cards merge
//! (patches and coalescing), decoding records off the wire, and a
//! mini-batch through the embedded store. `cargo bench --bench fold`.

use std::hint::black_box;

use atelier::event::wire::{decode, encode};
use atelier::event::{
    Event, EventData, EventId, FeedContent, FeedItemCreated, FeedItemId, FeedItemRef, ModelVersion,
    PollCreated, PollId, Principal, Question, SessionKey, Style, StyleTransferStarted, TransferRef,
    UploadId, UserId, VoteCast,
};
use atelier::fold::Position;
use atelier::fold::cards::{card_key, coalesce, patch, upload_key};
use atelier::fold::feed::ItemAggregate;
use atelier::fold::poll::{FoldConfig, PollAggregate};
use atelier::view::{EmbeddedStore, PollsStore};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

const VOTES: usize = 100_000;
const VOTERS: usize = 10_000;

fn events() -> (Event, Vec<Event>) {
    let poll = PollId(uuid::Uuid::from_u128(1));
    let t = atelier::edge::now();
    let who = |i: usize| Principal {
        id: UserId::parse(&format!("voter-{i}")).unwrap(),
        name: format!("Voter {i}"),
        avatar_url: None,
    };
    let create = Event {
        id: EventId(uuid::Uuid::from_u128(2)),
        time: t,
        principal: who(0),
        data: EventData::PollCreated(PollCreated {
            poll_id: poll,
            head: "Which colour?".into(),
            message: String::new(),
            ends_at: None,
            anonymous: false,
            multiple_choice: false,
            questions: (0..4)
                .map(|i| Question {
                    id: i,
                    text: format!("q{i}"),
                })
                .collect(),
        }),
    };
    let votes = (0..VOTES)
        .map(|i| Event {
            id: EventId(uuid::Uuid::from_u128(10 + i as u128)),
            time: t,
            principal: who(i % VOTERS),
            data: EventData::VoteCast(VoteCast {
                poll_id: poll,
                question_ids: vec![(i % 4) as u16],
            }),
        })
        .collect();
    (create, votes)
}

fn pos(offset: usize) -> Position {
    Position {
        partition: 0,
        offset: offset as i64,
    }
}

fn fold(c: &mut Criterion) {
    let (create, votes) = events();
    let cfg = FoldConfig::default();
    let mut g = c.benchmark_group("fold");
    g.throughput(Throughput::Elements(VOTES as u64));
    g.bench_function("votes_into_tallies", |b| {
        b.iter_batched(
            || {
                let mut agg = PollAggregate::default();
                agg.apply(&cfg, pos(0), &create);
                agg
            },
            |mut agg| {
                for (i, v) in votes.iter().enumerate() {
                    black_box(agg.apply(&cfg, pos(i + 1), v));
                }
                agg
            },
            BatchSize::LargeInput,
        )
    });
    g.bench_function("replayed_duplicates", |b| {
        let mut agg = PollAggregate::default();
        agg.apply(&cfg, pos(0), &create);
        for (i, v) in votes.iter().enumerate() {
            agg.apply(&cfg, pos(i + 1), v);
        }
        b.iter(|| {
            for (i, v) in votes.iter().enumerate() {
                black_box(agg.apply(&cfg, pos(i + 1), v));
            }
        })
    });
    g.finish();
}

fn feed(c: &mut Criterion) {
    let item = FeedItemId(uuid::Uuid::from_u128(1));
    let t = atelier::edge::now();
    let who = |i: usize| Principal {
        id: UserId::parse(&format!("user-{i}")).unwrap(),
        name: format!("User {i}"),
        avatar_url: None,
    };
    let ev = |i: usize, data| Event {
        id: EventId(uuid::Uuid::from_u128(10 + i as u128)),
        time: t,
        principal: who(i),
        data,
    };
    let create = ev(
        0,
        EventData::FeedItemCreated(FeedItemCreated {
            item_id: item,
            content: FeedContent::Game {
                name: "Chess".into(),
                location: "Park".into(),
            },
        }),
    );
    // Distinct users: a like and a join each, as on a hot item.
    let r = FeedItemRef { item_id: item };
    let actions: Vec<Event> = (0..VOTES)
        .map(|i| {
            let data = if i % 2 == 0 {
                EventData::FeedItemLiked(r.clone())
            } else {
                EventData::FeedItemJoined(r.clone())
            };
            ev(i / 2, data)
        })
        .collect();
    let mut g = c.benchmark_group("fold");
    g.throughput(Throughput::Elements(VOTES as u64));
    g.bench_function("likes_and_joins_on_a_hot_item", |b| {
        b.iter_batched(
            || {
                let mut agg = ItemAggregate::default();
                agg.apply(pos(0), &create);
                agg
            },
            |mut agg| {
                for (i, a) in actions.iter().enumerate() {
                    black_box(agg.apply(pos(i + 1), a));
                }
                agg
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

fn cards(c: &mut Criterion) {
    let t = atelier::edge::now();
    let events: Vec<Event> = (0..10_000)
        .map(|i| Event {
            id: EventId(uuid::Uuid::from_u128(i as u128)),
            time: t,
            principal: Principal {
                id: UserId::parse("worker").unwrap(),
                name: "Worker".into(),
                avatar_url: None,
            },
            data: EventData::StyleTransferStarted(StyleTransferStarted {
                upload: TransferRef {
                    upload_id: UploadId(uuid::Uuid::now_v7()),
                    session_key: SessionKey::parse(&format!("s{}", i % 500)).unwrap(),
                    slot: (i % 3) as u8 + 1,
                    style: Style::parse("mosaic").unwrap(),
                },
                model_version: ModelVersion::parse("v1").unwrap(),
            }),
        })
        .collect();
    let mut g = c.benchmark_group("cards");
    g.throughput(Throughput::Elements(events.len() as u64));
    g.bench_function("patch_and_coalesce", |b| {
        b.iter(|| {
            let patches: Vec<_> = events.iter().filter_map(patch).collect();
            black_box(coalesce(&patches, card_key).len() + coalesce(&patches, upload_key).len())
        })
    });
    g.finish();
}

fn wire(c: &mut Criterion) {
    let (_, votes) = events();
    let recs: Vec<_> = votes
        .iter()
        .take(10_000)
        .map(|e| encode(e, "bench"))
        .collect();
    let mut g = c.benchmark_group("wire");
    g.throughput(Throughput::Elements(recs.len() as u64));
    g.bench_function("decode_votes", |b| {
        b.iter(|| {
            for r in &recs {
                let hs = r.headers.iter().map(|(k, v)| (k.as_str(), v.as_slice()));
                black_box(decode(hs, &r.body, None).unwrap());
            }
        })
    });
    g.finish();
}

fn embedded_commit(c: &mut Criterion) {
    let (create, votes) = events();
    let cfg = FoldConfig::default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("embedded_store");
    let batch = 5_000;
    g.throughput(Throughput::Elements(batch as u64));
    g.bench_function("fold_and_commit_5000_votes", |b| {
        b.iter_batched(
            || {
                let store = EmbeddedStore::default();
                let mut agg = PollAggregate::default();
                agg.apply(&cfg, pos(0), &create);
                (store, agg)
            },
            |(store, mut agg)| {
                for (i, v) in votes.iter().take(batch).enumerate() {
                    agg.apply(&cfg, pos(i + 1), v);
                }
                let c = agg.take_commit().unwrap();
                rt.block_on(store.commit_poll(&c)).unwrap();
                store
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, fold, feed, cards, wire, embedded_commit);
criterion_main!(benches);
