//! A view write the store refuses for good (not an outage, which is
//! retried): the records it refuses go to the DLQ with stage `sink`, the
//! error and their source position; everything else in the partition
//! applies and the projector keeps going. Once the cause is fixed,
//! replaying the letter applies it, once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use atelier::app::{App, Roles};
use atelier::dlq::{Cursor, DlqLog, Filter};
use atelier::event::{
    Event, EventData, EventId, PollCreated, PollId, Principal, Question, UserId, VoteCast,
};
use atelier::fold::Position;
use atelier::fold::poll::{
    Ballot, FoldConfig, PollCommit, PollState, VoterKey, reference as poll_reference,
};
use atelier::project::runtime::SINK;
use atelier::view::{OwnerCursor, OwnerPollRow, PollsStore, ViewError, VoterRow};

use crate::exactly_once::{halves, produce, project_until};
use crate::helpers::{self, Backends};

/// The refused voter: any commit carrying their ballot is refused.
const REFUSED: &str = "v-refused";

/// A polls store that refuses, for good, every commit carrying the ballot
/// of [`REFUSED`] while `refusing` holds (a value the store cannot take).
struct Refusing {
    inner: Arc<dyn PollsStore>,
    refusing: AtomicBool,
}

#[async_trait::async_trait]
impl PollsStore for Refusing {
    async fn load_polls(&self, ids: &[PollId]) -> Result<Vec<PollState>, ViewError> {
        self.inner.load_polls(ids).await
    }
    async fn load_ballots(
        &self,
        poll: PollId,
        voters: &[VoterKey],
    ) -> Result<Vec<(VoterKey, Ballot)>, ViewError> {
        self.inner.load_ballots(poll, voters).await
    }
    async fn commit_poll(&self, c: &PollCommit) -> Result<(), ViewError> {
        if self.refusing.load(Ordering::Relaxed) && c.ballots.iter().any(|(k, _)| k == REFUSED) {
            return Err(ViewError::Rejected(
                "a value the store refuses (injected)".into(),
            ));
        }
        self.inner.commit_poll(c).await
    }
    async fn poll(&self, id: PollId) -> Result<Option<PollState>, ViewError> {
        self.inner.poll(id).await
    }
    async fn polls_by_owner(
        &self,
        owner: &UserId,
        before: Option<OwnerCursor>,
        limit: usize,
    ) -> Result<Vec<OwnerPollRow>, ViewError> {
        self.inner.polls_by_owner(owner, before, limit).await
    }
    async fn question_voters(
        &self,
        poll: PollId,
        question: u16,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<VoterRow>, ViewError> {
        self.inner
            .question_voters(poll, question, after, limit)
            .await
    }
    async fn scan_polls(
        &self,
        after: Option<PollId>,
        limit: usize,
    ) -> Result<(Vec<PollState>, Option<PollId>), ViewError> {
        self.inner.scan_polls(after, limit).await
    }
}

fn event(who: &str, data: EventData) -> Event {
    Event {
        id: EventId(uuid::Uuid::now_v7()),
        time: atelier::edge::now(),
        principal: Principal {
            id: UserId::parse(who).unwrap(),
            name: who.to_uppercase(),
            avatar_url: None,
        },
        data,
    }
}

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
    let app = App::start(cfg.clone(), Roles::NONE).await.unwrap();
    let (events, [refused_poll, other_poll]) = workload();
    let produced = produce(&app.producer, events, 0).await;
    let (rows, checkpoints) = halves(app.views.base());
    let store = Arc::new(Refusing {
        inner: rows,
        refusing: AtomicBool::new(true),
    });
    let group = format!("{}sink", cfg.kafka.namespace);
    let projector = project_until(
        &cfg,
        &app.brokers,
        (store.clone(), checkpoints.clone()),
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

    // Fixed: the replayed copy applies, once.
    store.refusing.store(false, Ordering::Relaxed);
    let bulk = dlq.replay_matching(&sink, false, "test").await.unwrap();
    assert_eq!(bulk.replays.len(), 1);
    let to = bulk.replays[0].done.as_ref().unwrap().to.clone();
    let last = std::collections::HashMap::from([(to.partition, to.offset)]);
    project_until(
        &cfg,
        &app.brokers,
        (store.clone(), checkpoints),
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
    app.stop().await.unwrap();
}
both!(refused_writes_become_sink_letters);
