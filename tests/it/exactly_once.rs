//! Exactly-once effect in the views: a random poll workload (with poison
//! records) is projected, then the whole topic is replayed twice by fresh
//! consumer groups and random batches are redelivered; every poll must equal
//! a reference fold computed here from the raw events.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use atelier::app::{App, Roles};
use atelier::bus::consumer::{self, ConsumerSpec};
use atelier::bus::{Batch, Producer, Record, client_config};
use atelier::config::Config;
use atelier::event::{
    Event, EventData, EventId, FeedItemId, PollClosed, PollCreated, PollId, Principal, Question,
    Topic, UserId, VoteCast, VoteRetracted,
};
use atelier::fold::Position;
use atelier::fold::feed::{FeedKind, ItemCommit, ItemState, Member, MemberKey};
use atelier::fold::poll::{Ballot, FoldConfig, PollCommit, PollState, VoterKey, reference};
use atelier::project::views::polls_into;
use atelier::project::{Context, PollProjector, ViewProjector, Watermarks};
use atelier::view::{
    Checkpoint, CheckpointStore, FeedCursor, FeedStore, OwnerCursor, OwnerPollRow, PollsStore,
    Store, TimelineRow, ViewError, VoterRow,
};
use chrono::{Duration as Dur, Utc};
use futures::StreamExt;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::helpers::{self, Backends};

fn who(i: usize) -> Principal {
    Principal {
        id: UserId::parse(&format!("u{i}")).unwrap(),
        name: format!("User {i}"),
        avatar_url: None,
    }
}

/// A random workload: polls (some anonymous, multiple choice, ending),
/// ballots, replacements, retractions, closes and rule violations.
pub fn workload(seed: u64, polls: usize, events: usize) -> Vec<Event> {
    workload_with(seed, polls, events, 2)
}

/// [`workload`] with `close_pct` percent of events closing a poll.
pub fn workload_with(seed: u64, polls: usize, events: usize, close_pct: u32) -> Vec<Event> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let t0 = atelier::edge::now();
    let ids: Vec<PollId> = (0..polls).map(|_| PollId(uuid::Uuid::now_v7())).collect();
    let mut out = Vec::new();
    let ev = |t: chrono::DateTime<Utc>, p: Principal, data| Event {
        id: EventId(uuid::Uuid::now_v7()),
        time: t,
        principal: p,
        data,
    };
    for (i, id) in ids.iter().enumerate() {
        out.push(ev(
            t0,
            who(i % 3),
            EventData::PollCreated(PollCreated {
                poll_id: *id,
                head: format!("poll {i}"),
                message: String::new(),
                ends_at: (i % 4 == 3).then(|| t0 + Dur::seconds(events as i64 / 2)),
                anonymous: i % 5 == 1,
                multiple_choice: i % 3 == 2,
                questions: (0..4)
                    .map(|q| Question {
                        id: q,
                        text: format!("q{q}"),
                    })
                    .collect(),
            }),
        ));
    }
    for n in 0..events {
        let t = t0 + Dur::seconds(n as i64);
        let poll = ids[rng.gen_range(0..ids.len())];
        let voter = who(rng.gen_range(0..40));
        let roll = rng.gen_range(0..100u32);
        let data = match roll {
            r if r >= 96 && r < 96 + close_pct => {
                EventData::PollClosed(PollClosed { poll_id: poll })
            }
            0..=79 => {
                let k = if rng.gen_bool(0.2) { 2 } else { 1 };
                let mut qs: Vec<u16> = Vec::new();
                while qs.len() < k {
                    // Now and then an unknown question (id 4..5).
                    let hi = if rng.gen_bool(0.03) { 6 } else { 4 };
                    let q = rng.gen_range(0..hi);
                    if !qs.contains(&q) {
                        qs.push(q);
                    }
                }
                EventData::VoteCast(VoteCast {
                    poll_id: poll,
                    question_ids: qs,
                })
            }
            80..=95 => EventData::VoteRetracted(VoteRetracted { poll_id: poll }),
            _ => EventData::VoteCast(VoteCast {
                // A vote on a poll that does not exist.
                poll_id: PollId(uuid::Uuid::now_v7()),
                question_ids: vec![0],
            }),
        };
        let principal = match data {
            // Closes come from the owner half of the time.
            EventData::PollClosed(_) if rng.gen_bool(0.5) => {
                who(ids.iter().position(|p| *p == poll).unwrap() % 3)
            }
            _ => voter,
        };
        out.push(ev(t, principal, data));
    }
    out
}

pub struct Produced {
    pub events: Vec<(Position, Event)>,
    pub last: HashMap<i32, i64>,
    pub poison: usize,
}

/// Appends the events, plus `poison` undecodable records, and returns
/// positions in log order per partition.
pub async fn produce(p: &Producer, events: Vec<Event>, poison: usize) -> Produced {
    let mut out = Vec::with_capacity(events.len());
    let mut last: HashMap<i32, i64> = HashMap::new();
    let topic = p.topic(events.first().map_or(Topic::Polls, Event::topic));
    let mut rng = SmallRng::seed_from_u64(99);
    let mut poison_at: Vec<usize> = (0..poison)
        .map(|_| rng.gen_range(0..events.len()))
        .collect();
    poison_at.sort_unstable();
    poison_at.dedup();
    let poison = poison_at.len();
    let sends = events.into_iter().enumerate().map(|(i, e)| {
        let topic = topic.clone();
        let bad = poison_at.contains(&i);
        async move {
            if bad {
                let k = e.key();
                p.send_raw(
                    &topic,
                    Some(k.as_bytes()),
                    &[("ce_type", b"VoteCast")],
                    Some(b"{garbage"),
                )
                .await
                .unwrap();
            }
            let at = p.send(&e).await.unwrap();
            (at, e)
        }
    });
    // Pipelined; the idempotent producer keeps each partition's order, and
    // the positions it returns give the log's order.
    let mut results = futures::stream::iter(sends).buffered(2_000);
    while let Some((at, e)) = results.next().await {
        let l = last.entry(at.partition).or_insert(-1);
        *l = (*l).max(at.offset);
        out.push((
            Position {
                partition: at.partition,
                offset: at.offset,
            },
            e,
        ));
    }
    drop(results);
    out.sort_by_key(|(pos, _)| *pos);
    // The poison records were appended before the events that follow them;
    // a later record's offset bounds them.
    Produced {
        events: out,
        last,
        poison,
    }
}

/// Each of `poison` undecodable records of `source` is in the DLQ with
/// its stage, reason, original bytes and source position. A retried batch
/// may dead-letter one again (same source position), and a batch retried
/// after its checkpoint landed skips it: the DLQ, not a projector's count,
/// is what to check.
pub fn assert_poison_in_dlq(cfg: &Config, brokers: &str, source: Topic, poison: usize) {
    let dlq_topic = cfg.kafka.topic(Topic::Dlq);
    let dlq_end = end_offsets(cfg, brokers, &dlq_topic);
    let dead: Vec<Record> = read_all(cfg, brokers, &dlq_topic, &dlq_end)
        .into_values()
        .flatten()
        .collect();
    let text =
        |r: &Record, h: &str| String::from_utf8(r.header(h).unwrap_or_default().to_vec()).unwrap();
    let view = atelier::project::views::of_topic(source).expect("a view folds the topic");
    let mut sources = std::collections::BTreeSet::new();
    for r in &dead {
        assert_eq!(text(r, "dlq_stage"), format!("project.{}", view.as_str()));
        assert_eq!(text(r, "dlq_source_topic"), cfg.kafka.topic(source));
        assert!(!text(r, "dlq_error").is_empty());
        assert_eq!(r.payload(), Some(&b"{garbage"[..]), "original bytes kept");
        sources.insert((
            text(r, "dlq_source_partition"),
            text(r, "dlq_source_offset"),
        ));
    }
    assert_eq!(
        sources.len(),
        poison,
        "every poison record, once per source position"
    );
}

/// Runs a polls projector in consumer group `group` until every partition
/// reached `last`, then stops it.
pub async fn project_until(
    cfg: &Config,
    brokers: &str,
    views: (Arc<dyn PollsStore>, Arc<dyn CheckpointStore>),
    group: &str,
    last: &HashMap<i32, i64>,
) -> Arc<PollProjector> {
    let watermarks = Watermarks::new();
    let projector = polls_into(views.0, views.1, &context(cfg, brokers, watermarks.clone()));
    consume_until(
        cfg,
        brokers,
        Topic::Polls,
        group,
        projector.clone(),
        &watermarks,
        last,
    )
    .await;
    projector
}

/// Runs `handler` in consumer group `group` on `topic` until `watermarks`
/// say every partition reached `last`, then stops it (cleanly: it must
/// not have failed).
pub async fn consume_until(
    cfg: &Config,
    brokers: &str,
    topic: Topic,
    group: &str,
    handler: Arc<dyn atelier::bus::PartitionHandler>,
    watermarks: &Watermarks,
    last: &HashMap<i32, i64>,
) {
    let spec = ConsumerSpec {
        group: group.to_owned(),
        topics: vec![cfg.kafka.topic(topic)],
        max_batch: cfg.projector.max_batch,
        linger: Duration::from_millis(2),
        queue_depth: 2,
        drain_timeout: Duration::from_secs(5),
    };
    let stop = CancellationToken::new();
    let task = tokio::spawn(consumer::run(
        cfg.kafka.clone(),
        brokers.to_owned(),
        spec,
        Arc::new(FromTheStart(handler)),
        stop.clone(),
    ));
    let topic = cfg.kafka.topic(topic);
    helpers::eventually(120, "the projector to catch up", || {
        let done = last
            .iter()
            .all(|(p, o)| watermarks.local(&topic, *p).is_some_and(|w| w >= *o));
        async move { done.then_some(()) }
    })
    .await;
    stop.cancel();
    task.await.unwrap().unwrap();
}

/// A handler whose group reads from the log's start, as a fresh group
/// does on Kafka: on the embedded log a projector would otherwise start
/// after its checkpoint, and these tests replay everything through each
/// new group (every record a duplicate after the first pass).
struct FromTheStart(Arc<dyn atelier::bus::PartitionHandler>);

#[async_trait::async_trait]
impl atelier::bus::PartitionHandler for FromTheStart {
    async fn assigned(&self, topic: &str, partition: i32) {
        self.0.assigned(topic, partition).await
    }
    async fn handle(&self, batch: &Batch) -> Result<(), atelier::bus::HandlerError> {
        self.0.handle(batch).await
    }
    async fn resume_at(&self, _: &str, _: i32) -> Option<i64> {
        Some(0)
    }
}

/// What a test's projector is built with.
pub fn context(cfg: &Config, brokers: &str, watermarks: Arc<Watermarks>) -> Context {
    Context {
        dlq: Producer::new(&cfg.kafka, brokers, "test").unwrap(),
        watermarks,
        cfg: cfg.projector.clone(),
        fold: FoldConfig {
            voter_key: cfg.auth.voter_key.expose().as_bytes().to_vec(),
        },
    }
}

/// A store as the two halves a projector writes to.
pub fn halves(s: &Arc<dyn Store>) -> (Arc<dyn PollsStore>, Arc<dyn CheckpointStore>) {
    (s.clone(), s.clone())
}

/// Asserts that every poll in the view equals the reference fold.
pub async fn assert_matches_reference(
    cfg: &Config,
    views: &dyn PollsStore,
    events: &[(Position, Event)],
) {
    let fold = FoldConfig {
        voter_key: cfg.auth.voter_key.expose().as_bytes().to_vec(),
    };
    let expected = reference(&fold, events.iter().map(|(p, e)| (*p, e)));
    let mut checked = 0;
    for (id, agg) in &expected {
        let want: Option<&PollState> = agg.state.as_ref();
        let got = views.poll(*id).await.unwrap();
        assert_eq!(got.as_ref(), want, "poll {id}");
        checked += usize::from(want.is_some());
    }
    assert!(checked > 0, "the workload created polls");
}

/// The last offset of each non-empty partition of `topic`.
pub fn end_offsets(cfg: &Config, brokers: &str, topic: &str) -> HashMap<i32, i64> {
    let mut c = client_config(&cfg.kafka, brokers);
    c.set("group.id", format!("{}ends", cfg.kafka.namespace));
    let consumer: BaseConsumer = c.create().unwrap();
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let mut out = HashMap::new();
    for p in md.topics()[0].partitions() {
        let (_, high) = consumer
            .fetch_watermarks(topic, p.id(), Duration::from_secs(10))
            .unwrap();
        if high > 0 {
            out.insert(p.id(), high - 1);
        }
    }
    out
}

/// Reads every record of `topic` up to `last`, per partition.
pub fn read_all(
    cfg: &Config,
    brokers: &str,
    topic: &str,
    last: &HashMap<i32, i64>,
) -> HashMap<i32, Vec<Record>> {
    let mut c = client_config(&cfg.kafka, brokers);
    c.set("group.id", format!("{}reader", cfg.kafka.namespace));
    c.set("enable.auto.commit", "false");
    let consumer: BaseConsumer = c.create().unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in last.keys() {
        tpl.add_partition_offset(topic, *p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut out: HashMap<i32, Vec<Record>> = HashMap::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while last.iter().any(|(p, o)| {
        out.get(p)
            .and_then(|v| v.last())
            .is_none_or(|r| r.offset < *o)
    }) {
        assert!(
            std::time::Instant::now() < deadline,
            "reading the topic back"
        );
        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
            let m = m.unwrap();
            out.entry(m.partition()).or_default().push(Record::of(&m));
        }
    }
    out
}

/// A view store that fails some writes with a retriable error, before or
/// after performing them: the polls and feed stores and the checkpoints a
/// projector writes to, nothing else. It can also refuse, for good, every
/// poll commit carrying one voter's ballot (a value the store cannot take).
#[derive(Debug)]
pub struct FlakyStore {
    inner: Arc<dyn Store>,
    /// One write in this many fails (0: none).
    one_in: u64,
    n: std::sync::atomic::AtomicU64,
    /// The voter whose ballots are refused, while set.
    pub refuse: parking_lot::Mutex<Option<VoterKey>>,
    /// Feed membership reads made through it.
    pub member_reads: std::sync::atomic::AtomicU64,
}

impl FlakyStore {
    pub fn new(inner: Arc<dyn Store>, one_in: u64) -> Self {
        Self {
            inner,
            one_in,
            n: Default::default(),
            refuse: Default::default(),
            member_reads: Default::default(),
        }
    }

    /// `Some(true)`: fail after writing; `Some(false)`: fail instead.
    fn roll(&self) -> Option<bool> {
        if self.one_in == 0 {
            return None;
        }
        let n = self.n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let h = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 7;
        h.is_multiple_of(self.one_in).then_some(h.is_multiple_of(2))
    }

    /// Runs `write`, failing it (before or after) as [`Self::roll`] says.
    async fn flaky<F>(&self, write: F) -> Result<(), ViewError>
    where
        F: std::future::Future<Output = Result<(), ViewError>>,
    {
        match self.roll() {
            Some(true) => {
                write.await?;
                Err(flake())
            }
            Some(false) => Err(flake()),
            None => write.await,
        }
    }
}

fn flake() -> ViewError {
    ViewError::Unavailable("injected fault".into())
}

#[async_trait::async_trait]
impl PollsStore for FlakyStore {
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
        if let Some(v) = self.refuse.lock().as_ref()
            && c.ballots.iter().any(|(k, _)| k == v)
        {
            return Err(ViewError::Rejected(
                "a value the store refuses (injected)".into(),
            ));
        }
        self.flaky(self.inner.commit_poll(c)).await
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

#[async_trait::async_trait]
impl FeedStore for FlakyStore {
    async fn load_items(&self, ids: &[FeedItemId]) -> Result<Vec<ItemState>, ViewError> {
        self.inner.load_items(ids).await
    }
    async fn load_members(
        &self,
        item: FeedItemId,
        keys: &[MemberKey],
    ) -> Result<Vec<(MemberKey, Member)>, ViewError> {
        self.member_reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner.load_members(item, keys).await
    }
    async fn commit_timelines(&self, states: &[&ItemState]) -> Result<(), ViewError> {
        self.flaky(self.inner.commit_timelines(states)).await
    }
    async fn commit_members(&self, c: &ItemCommit) -> Result<(), ViewError> {
        self.flaky(self.inner.commit_members(c)).await
    }
    async fn item(&self, id: FeedItemId) -> Result<Option<ItemState>, ViewError> {
        self.inner.item(id).await
    }
    async fn timeline(
        &self,
        kind: Option<FeedKind>,
        before: Option<FeedCursor>,
        limit: usize,
    ) -> Result<Vec<TimelineRow>, ViewError> {
        self.inner.timeline(kind, before, limit).await
    }
}

#[async_trait::async_trait]
impl CheckpointStore for FlakyStore {
    async fn checkpoint(
        &self,
        view: &str,
        topic: &str,
        partition: i32,
    ) -> Result<Option<Checkpoint>, ViewError> {
        self.inner.checkpoint(view, topic, partition).await
    }
    async fn save_checkpoint(&self, cp: &Checkpoint) -> Result<(), ViewError> {
        self.flaky(self.inner.save_checkpoint(cp)).await
    }
    async fn checkpoints(&self, view: &str) -> Result<Vec<Checkpoint>, ViewError> {
        self.inner.checkpoints(view).await
    }
    async fn mark_degraded(&self, d: &atelier::view::Degraded) -> Result<(), ViewError> {
        self.inner.mark_degraded(d).await
    }
    async fn clear_degraded(&self, view: &str, key: &str) -> Result<(), ViewError> {
        self.inner.clear_degraded(view, key).await
    }
    async fn degraded(&self, view: &str) -> Result<Vec<atelier::view::Degraded>, ViewError> {
        self.inner.degraded(view).await
    }
}

async fn exactly_once(b: Backends) {
    let Some(cfg) = helpers::config(b).await else {
        return;
    };
    let mut cfg = cfg;
    // Small batches and commits: more boundaries, more chances to be wrong.
    cfg.projector.max_batch = 97;
    cfg.projector.commit_rows = 7;
    let app = App::start(cfg.clone(), Roles::NONE).await.unwrap();
    let events = workload(7, 12, 3_000);
    let produced = produce(&app.producer, events, 5).await;
    let brokers = app.brokers.clone();
    let views = app.views.base().clone();

    // First pass, through a store that fails one write in eight, half of
    // the time after the write landed (a lost acknowledgement): the batch is
    // redelivered over aggregates that are already ahead of the checkpoint.
    let flaky = Arc::new(FlakyStore::new(views.clone(), 8));
    let g1 = format!("{}g1", cfg.kafka.namespace);
    let p1 = project_until(&cfg, &brokers, (flaky.clone(), flaky), &g1, &produced.last).await;
    assert!(p1.totals().rejected > 0, "the workload breaks rules");
    assert_poison_in_dlq(&cfg, &brokers, Topic::Polls, produced.poison);
    assert_matches_reference(&cfg, views.as_ref(), &produced.events).await;

    // Two full replays by fresh groups: every event is a duplicate.
    for g in ["g2", "g3"] {
        let group = format!("{}{g}", cfg.kafka.namespace);
        let p = project_until(&cfg, &brokers, halves(&views), &group, &produced.last).await;
        assert_eq!(p.totals().applied, 0, "a replay applies nothing");
        assert_matches_reference(&cfg, views.as_ref(), &produced.events).await;
    }

    // Random redeliveries straight into a projector with cold caches.
    let polls_topic = cfg.kafka.topic(Topic::Polls);
    let records = read_all(&cfg, &brokers, &polls_topic, &produced.last);
    let fresh =
        atelier::project::views::polls(views.clone(), &context(&cfg, &brokers, Watermarks::new()));
    let mut rng = SmallRng::seed_from_u64(3);
    let topic = cfg.kafka.topic(Topic::Polls);
    for _ in 0..40 {
        let parts: Vec<&i32> = records.keys().collect();
        let p = *parts[rng.gen_range(0..parts.len())];
        let recs = &records[&p];
        let from = rng.gen_range(0..recs.len());
        let to = (from + rng.gen_range(1..200)).min(recs.len());
        let s = fresh
            .process(&Batch {
                topic: topic.clone(),
                partition: p,
                records: recs[from..to].to_vec(),
            })
            .await
            .unwrap();
        assert_eq!(s.applied, 0, "redelivered records change nothing");
    }
    assert_matches_reference(&cfg, views.as_ref(), &produced.events).await;
    app.stop().await.unwrap();
}
both!(exactly_once);
