//! A view write the store refuses for good (not an outage, which is
//! retried): the records it refuses go to the DLQ with stage `sink`, the
//! error and their source position; everything else in the partition
//! applies and the projector keeps going. Once the cause is fixed,
//! replaying the letter applies it, once.

use std::sync::Arc;

use atelier::app::{App, Roles};
use atelier::dlq::{Cursor, DlqLog, Filter};
use atelier::event::{Event, EventData, PollCreated, PollId, Question, VoteCast};
use atelier::fold::Position;
use atelier::fold::poll::{FoldConfig, PollState, reference as poll_reference};
use atelier::project::runtime::SINK;
use atelier::view::{CheckpointStore, PollsStore};

use crate::exactly_once::{FlakyStore, produce, project_until};
use crate::helpers::{self, Backends, event};

/// The refused voter: any commit carrying their ballot is refused.
const REFUSED: &str = "v-refused";

/// Two polls, 40 votes on each; one vote on the first is [`REFUSED`]'s.
fn workload() -> (Vec<Event>, [PollId; 2]) {
    let ids = [PollId(uuid::Uuid::now_v7()), PollId(uuid::Uuid::now_v7())];
    let mut out: Vec<Event> = ids
        .iter()
        .map(|id| {
            event(
                "owner",
                EventData::PollCreated(PollCreated {
                    poll_id: *id,
                    head: "sink".into(),
                    message: String::new(),
                    ends_at: None,
                    anonymous: false,
                    multiple_choice: false,
                    questions: (0..2)
                        .map(|q| Question {
                            id: q,
                            text: format!("q{q}"),
                        })
                        .collect(),
                }),
            )
        })
        .collect();
    for i in 0..40u16 {
        for id in ids {
            let voter = if i == 20 && id == ids[0] {
                REFUSED.to_owned()
            } else {
                format!("v{i}")
            };
            out.push(event(
                &voter,
                EventData::VoteCast(VoteCast {
                    poll_id: id,
                    question_ids: vec![i % 2],
                }),
            ));
        }
    }
    (out, ids)
}

async fn refused_writes_become_sink_letters(b: Backends) {
    let Some(mut cfg) = helpers::config(b).await else {
        return;
    };
    // Batches of several votes: the refused one shares its batch (and its
    // poll's commit) with others that must still apply.
    cfg.projector.max_batch = 16;
    // The API too: reads of the refused poll must say it is degraded.
    let app = App::start(cfg.clone(), Roles::API).await.unwrap();
    let read = |id: PollId| {
        let url = format!("{}/v1/polls/{id}", app.url());
        async move {
            let v: serde_json::Value = reqwest::get(url).await.unwrap().json().await.unwrap();
            v
        }
    };
    let (events, [refused_poll, other_poll]) = workload();
    let produced = produce(&app.producer, events, 0).await;
    // Never flaky; refuses the voter's ballots.
    let store = Arc::new(FlakyStore::new(app.views.base().clone(), 0));
    *store.refuse.lock() = Some(REFUSED.to_owned());
    let group = format!("{}sink", cfg.kafka.namespace);
    let projector = project_until(
        &cfg,
        &app.brokers,
        (store.clone(), store.clone()),
        &group,
        &produced.last,
    )
    .await;
    use atelier::project::ViewProjector;
    assert_eq!(projector.totals().sink, 1, "one record refused");

    // Everything but the refused vote applied.
    let fold = FoldConfig {
        voter_key: cfg.auth.voter_key.expose().as_bytes().to_vec(),
    };
    let (refused_at, _) = produced
        .events
        .iter()
        .find(|(_, e)| e.principal.id.as_str() == REFUSED)
        .cloned()
        .unwrap();
    let without = poll_reference(
        &fold,
        produced
            .events
            .iter()
            .filter(|(p, _)| *p != refused_at)
            .map(|(p, e)| (*p, e)),
    );
    let all = poll_reference(&fold, produced.events.iter().map(|(p, e)| (*p, e)));
    let tallies = |m: &std::collections::HashMap<PollId, atelier::fold::poll::PollAggregate>,
                   id: PollId| {
        let s = m[&id].state.as_ref().unwrap();
        (s.tallies.clone(), s.voters)
    };
    let stored = |s: Option<PollState>| {
        let s = s.expect("the poll is in the view");
        (s.tallies, s.voters)
    };
    assert_eq!(
        stored(store.poll(refused_poll).await.unwrap()),
        tallies(&without, refused_poll)
    );
    assert_eq!(
        stored(store.poll(other_poll).await.unwrap()),
        tallies(&all, other_poll)
    );
    assert_ne!(
        tallies(&without, refused_poll),
        tallies(&all, refused_poll),
        "the refused vote counts"
    );

    // The letter: stage, error, source position.
    let dlq = DlqLog::new(&cfg.kafka, &app.brokers);
    let sink = Filter {
        stage: Some(SINK.to_owned()),
        ..Filter::default()
    };
    let page = dlq.list(sink.clone(), 10, Cursor::default()).await.unwrap();
    assert_eq!(page.letters.len(), 1, "{:#?}", page.letters);
    let l = &page.letters[0];
    assert!(l.error.contains("refuses"), "{}", l.error);
    let source = l.source.as_ref().expect("a source position");
    assert_eq!(
        Position {
            partition: source.partition,
            offset: source.offset
        },
        refused_at
    );

    // The refused poll is marked degraded, with the letter's position, and
    // its reads say so; the other poll's do not.
    let marks = store.degraded("polls").await.unwrap();
    assert_eq!(marks.len(), 1, "{marks:?}");
    assert_eq!(marks[0].key, refused_poll.to_string());
    assert_eq!(
        (marks[0].partition, marks[0].offset),
        (refused_at.partition, refused_at.offset)
    );
    let v = read(refused_poll).await;
    assert!(
        v["degraded"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("refuses")),
        "{v}"
    );
    assert!(
        v["degraded"]["source"].as_str().is_some_and(
            |s| s.ends_with(&format!("/{}/{}", refused_at.partition, refused_at.offset))
        ),
        "{v}"
    );
    let v = read(other_poll).await;
    assert!(v.get("degraded").is_none(), "{v}");

    // Fixed: the replayed copy applies, once.
    *store.refuse.lock() = None;
    let bulk = dlq.replay_matching(&sink, false, "test").await.unwrap();
    assert_eq!(bulk.replays.len(), 1);
    let to = bulk.replays[0].done.as_ref().unwrap().to.clone();
    let last = std::collections::HashMap::from([(to.partition, to.offset)]);
    project_until(
        &cfg,
        &app.brokers,
        (store.clone(), store.clone()),
        &group,
        &last,
    )
    .await;
    assert_eq!(
        stored(store.poll(refused_poll).await.unwrap()),
        tallies(&all, refused_poll)
    );
    let again = dlq.replay_matching(&sink, false, "test").await.unwrap();
    assert!(again.replays.is_empty(), "replayed once");
    // Applied: the mark is gone, and so is the note (after the marks'
    // one-second cache).
    assert!(store.degraded("polls").await.unwrap().is_empty());
    helpers::eventually(10, "the degraded note to go", || async {
        read(refused_poll)
            .await
            .get("degraded")
            .is_none()
            .then_some(())
    })
    .await;
    app.stop().await.unwrap();
}
both!(refused_writes_become_sink_letters);
