//! A consumer group member with manual offsets: the one consumer that the
//! projectors' loop ([`super::consumer::run`]) and the inference worker
//! build. Its rebalances arrive as [`Rebalance`] events that its owner's
//! loop selects on beside the records, so no caller sees librdkafka's
//! callback context.

use std::time::Duration;

use rdkafka::consumer::stream_consumer::StreamPartitionQueue;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, ConsumerGroupMetadata, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::mpsc;

use super::{BusError, Record, client_config};
use crate::config::KafkaConfig;

/// A topic partition: full topic name and partition.
pub type Tp = (String, i32);

/// How a member's offsets reach its group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offsets {
    /// Stored by hand once a batch's effects are durable
    /// ([`Member::store`]), and committed in the background every second.
    Stored,
    /// Committed by the owner ([`Member::commit`], or with the records of a
    /// transaction).
    Explicit,
}

/// What a member consumes, and how.
#[derive(Clone, Debug)]
pub struct MemberSpec {
    /// The consumer group (its full name, namespace included).
    pub group: String,
    /// Full topic names.
    pub topics: Vec<String>,
    /// Who commits.
    pub offsets: Offsets,
    /// Most kilobytes librdkafka prefetches: per partition with
    /// `partition_queues`, else for all of them together.
    pub prefetch_kbytes: u32,
    /// Each partition's records on a queue of its own
    /// ([`Member::partition_queue`]), none on the main queue
    /// ([`Member::recv`]). librdkafka then stops fetching a partition
    /// whose queue holds `prefetch_records` records or `prefetch_kbytes`,
    /// and fetches it again as soon as it drains below: a slow partition
    /// needs no pause, and none of librdkafka's slow resumes.
    pub partition_queues: bool,
    /// With `partition_queues`: the records librdkafka keeps ready per
    /// partition (`queued.min.messages`).
    pub prefetch_records: u32,
}

/// How long librdkafka waits to look again at a partition whose queue was
/// full (`fetch.queue.backoff.ms`, 1 s by default): only a local check.
const QUEUE_BACKOFF_MS: &str = "20";

/// The longest a broker holds a fetch that finds no new record
/// (`fetch.wait.max.ms`, 500 ms by default), for members with partition
/// queues. librdkafka keeps one fetch in flight per broker: a partition
/// whose queue drains is fetched again only when that fetch returns, and
/// when every other partition is idle the broker holds it this long. With
/// 500 ms, a backlog left on one partition ran at 21-55 % of a core; an
/// idle member pays for it with this many fetches a second per broker.
const PARTITION_QUEUE_FETCH_WAIT_MS: &str = "100";

/// The configuration of a group member: read-committed, from the earliest
/// record of a partition the group has no offset for, offsets never
/// stored automatically. Passthrough properties win where they set the
/// session timeout or the fetch wait.
pub fn member_config(cfg: &KafkaConfig, brokers: &str, spec: &MemberSpec) -> rdkafka::ClientConfig {
    let mut c = client_config(cfg, brokers);
    c.set("group.id", &spec.group)
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .set(
            "queued.max.messages.kbytes",
            spec.prefetch_kbytes.to_string(),
        );
    if spec.partition_queues {
        c.set(
            "queued.min.messages",
            spec.prefetch_records.max(1).to_string(),
        );
        if c.get("fetch.queue.backoff.ms").is_none() {
            c.set("fetch.queue.backoff.ms", QUEUE_BACKOFF_MS);
        }
        if !cfg.is_embedded() && c.get("fetch.wait.max.ms").is_none() {
            c.set("fetch.wait.max.ms", PARTITION_QUEUE_FETCH_WAIT_MS);
        }
        // Each partition's prefetched records, as a gauge.
        if c.get("statistics.interval.ms").is_none() {
            c.set("statistics.interval.ms", "1000");
        }
    }
    match spec.offsets {
        Offsets::Stored => c
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "1000"),
        Offsets::Explicit => c.set("enable.auto.commit", "false"),
    };
    if c.get("session.timeout.ms").is_none() {
        c.set("session.timeout.ms", "6000");
    }
    group_protocol(&mut c, spec.offsets);
    // The mock cluster answers a fetch only when its wait runs out (a broker
    // answers as soon as data arrives): with the default 500 ms, freshness
    // was p50 279 ms; with 10 ms, 17 ms.
    if cfg.is_embedded() && c.get("fetch.wait.max.ms").is_none() {
        c.set("fetch.wait.max.ms", "10");
    }
    c
}

/// How a member takes part in its group's rebalances, where passthrough
/// properties do not say:
/// - **Cooperative, for members that store their offsets** (the
///   projectors: `cooperative-sticky`). A member that joins or leaves moves
///   only the partitions that change owner; every other partition goes on
///   being read, with its worker's batch in hand and its cached states.
///   Under librdkafka's default (eager `range` and `roundrobin`) every
///   member gave up every partition at each join or departure, its workers
///   were stopped mid-batch and its caches dropped, group-wide.
///   A member that commits its offsets itself (the inference worker, in
///   transactions that name the group's generation) keeps the eager
///   protocol: its revocation hook finishes every commit before any
///   partition moves, which a rebalance that leaves kept partitions
///   running would not give it.
/// - **A heartbeat every sixth of the session timeout** (1 s for the 6 s
///   default). A member hears of a rebalance only at its next heartbeat,
///   and a cooperative join takes two rounds: with librdkafka's 3 s, a
///   moved partition waited up to 3 s without an owner; with 1 s, a
///   second projector took its half of a 12-partition topic 2.0 s after it
///   joined, and the partitions it took had no owner for 1.0 s (Kafka 4,
///   `consumer::a_joining_member_moves_only_what_it_takes`). A late
///   heartbeat on a busy machine also no longer costs the member its
///   place (3 s was half the session).
///
/// The owners' loops take both protocols alike: each [`Rebalance`] names
/// the partitions gained (possibly none) or given away.
fn group_protocol(c: &mut rdkafka::ClientConfig, offsets: Offsets) {
    if offsets == Offsets::Stored && c.get("partition.assignment.strategy").is_none() {
        c.set("partition.assignment.strategy", "cooperative-sticky");
    }
    if c.get("heartbeat.interval.ms").is_none() {
        let session: u64 = c
            .get("session.timeout.ms")
            .and_then(|v| v.parse().ok())
            .unwrap_or(6000);
        c.set(
            "heartbeat.interval.ms",
            (session / 6).clamp(100, 3000).to_string(),
        );
    }
}

/// A change of the partitions a member owns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rebalance {
    /// Partitions gained (under the eager protocol: every partition now
    /// owned, after a revocation of all).
    Assigned(Vec<Tp>),
    /// Partitions about to be given away (under the eager protocol: all).
    Revoked(Vec<Tp>),
}

/// Called, synchronously, before partitions are given away.
pub type RevokeHook = Box<dyn Fn(&[Tp]) + Send + Sync>;

/// The consumer context: forwards rebalances to the member's owner, and
/// runs the revoke hook (see [`Member::on_revoke`]).
struct Ctx {
    tx: mpsc::UnboundedSender<Rebalance>,
    /// Detach each partition's queue before it is assigned
    /// ([`MemberSpec::partition_queues`]), and report what each holds.
    detach: bool,
    group: String,
    on_revoke: parking_lot::RwLock<Option<RevokeHook>>,
}

impl ClientContext for Ctx {
    fn stats(&self, s: rdkafka::Statistics) {
        if !self.detach {
            return;
        }
        for (name, topic) in &s.topics {
            for (p, part) in &topic.partitions {
                // librdkafka's internal "unassigned" partition is -1.
                if *p >= 0 && part.fetch_state == "active" {
                    crate::telemetry::emit::prefetched(&self.group, name, *p, part.fetchq_cnt);
                }
            }
        }
    }
}

fn parts(tpl: &TopicPartitionList) -> Vec<Tp> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_owned(), e.partition()))
        .collect()
}

impl ConsumerContext for Ctx {
    fn pre_rebalance(&self, base: &BaseConsumer<Self>, r: &rdkafka::consumer::Rebalance<'_>) {
        if let rdkafka::consumer::Rebalance::Assign(tpl) = r
            && self.detach
        {
            // Before the fetches start: no record of these partitions
            // reaches the main queue.
            for e in tpl.elements() {
                if !kafka_partition_queue::detach_partition(base.client(), e.topic(), e.partition())
                {
                    tracing::warn!(
                        topic = e.topic(),
                        partition = e.partition(),
                        "could not detach a partition's queue"
                    );
                }
            }
        }
        if let rdkafka::consumer::Rebalance::Revoke(tpl) = r {
            let gone = parts(tpl);
            if let Some(hook) = self.on_revoke.read().as_ref() {
                hook(&gone);
            }
            let _ = self.tx.send(Rebalance::Revoked(gone));
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, r: &rdkafka::consumer::Rebalance<'_>) {
        match r {
            rdkafka::consumer::Rebalance::Assign(tpl) => {
                let got = parts(tpl);
                crate::telemetry::emit::rebalance();
                tracing::info!(
                    partitions = got.len(),
                    topics = ?got.iter().map(|(t, _)| t.as_str()).collect::<std::collections::BTreeSet<_>>(),
                    "partitions assigned"
                );
                let _ = self.tx.send(Rebalance::Assigned(got));
            }
            rdkafka::consumer::Rebalance::Error(e) => {
                tracing::warn!(error = %e, "rebalance error")
            }
            rdkafka::consumer::Rebalance::Revoke(_) => {}
        }
    }
}

/// The rebalances of a member, in order. Unbounded, but fed only by
/// rebalance callbacks: a handful per rebalance, drained by the owner's
/// loop.
#[derive(Debug)]
pub struct Rebalances(mpsc::UnboundedReceiver<Rebalance>);

impl Rebalances {
    /// The next rebalance (cancel-safe); `None` once the member is gone.
    pub async fn next(&mut self) -> Option<Rebalance> {
        self.0.recv().await
    }
}

/// A subscribed group member. Shared (`Arc`) between its owner's loop and
/// whoever commits for it.
pub struct Member {
    consumer: std::sync::Arc<StreamConsumer<Ctx>>,
    group: String,
    /// On a durable embedded cluster, for an [`Offsets::Explicit`] member:
    /// commits are journaled first.
    durable: Option<std::sync::Arc<super::durable::Durable>>,
}

impl std::fmt::Debug for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Member").finish_non_exhaustive()
    }
}

/// One partition's records, in order ([`Member::partition_queue`]).
pub struct PartitionQueue {
    /// What takes the ready records in one call. Declared first, so it is
    /// released first: `stream` may hold the last reference to the
    /// consumer, and a queue outliving its client is freed memory.
    ready: kafka_partition_queue::ReadyQueue,
    /// What waits for the first record.
    stream: StreamPartitionQueue<Ctx>,
}

impl std::fmt::Debug for PartitionQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionQueue").finish_non_exhaustive()
    }
}

impl PartitionQueue {
    /// The next record, owned (cancel-safe).
    pub async fn recv(&self) -> Result<Record, KafkaError> {
        self.stream.recv().await.map(|m| Record::of(&m))
    }

    /// Up to `max` records that are ready, owned, into `out`, in one call
    /// to librdkafka; answers how many (errors included).
    pub fn take_ready(&mut self, max: usize, out: &mut Vec<Result<Record, KafkaError>>) -> usize {
        self.ready.take_ready(max, |t| {
            out.push(match t.error() {
                Some((code, _)) => Err(KafkaError::MessageConsumption(code.into())),
                None => Ok(Record::new(t.offset(), t.key(), t.headers(), t.payload())),
            })
        })
    }
}

/// One partition as a list.
pub fn tpl(tp: &Tp) -> TopicPartitionList {
    let mut l = TopicPartitionList::new();
    l.add_partition(&tp.0, tp.1);
    l
}

/// Offsets to commit: per partition, the next offset to read.
pub fn offsets(next: &[(Tp, i64)]) -> Result<TopicPartitionList, BusError> {
    let mut l = TopicPartitionList::new();
    for ((topic, partition), offset) in next {
        l.add_partition_offset(topic, *partition, Offset::Offset(*offset))?;
    }
    Ok(l)
}

/// Commits `next` offsets for a group that has no members yet (its
/// starting offsets); blocking. On a durable embedded cluster they are
/// journaled first.
pub fn commit_group(
    cfg: &KafkaConfig,
    brokers: &str,
    group: &str,
    next: &TopicPartitionList,
) -> Result<(), BusError> {
    if let Some(j) = super::durable::of(brokers) {
        j.commit_offsets(group, next)?;
    }
    let consumer: BaseConsumer = client_config(cfg, brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()?;
    Ok(consumer.commit(next, CommitMode::Sync)?)
}

impl Member {
    /// Joins `spec.group` and subscribes to its topics.
    pub fn join(
        cfg: &KafkaConfig,
        brokers: &str,
        spec: &MemberSpec,
    ) -> Result<(Member, Rebalances), BusError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let consumer: StreamConsumer<Ctx> =
            member_config(cfg, brokers, spec).create_with_context(Ctx {
                tx,
                detach: spec.partition_queues,
                group: spec.group.clone(),
                on_revoke: parking_lot::RwLock::new(None),
            })?;
        let topics: Vec<&str> = spec.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics)?;
        let durable = match spec.offsets {
            Offsets::Explicit => super::durable::of(brokers),
            Offsets::Stored => None,
        };
        Ok((
            Member {
                consumer: std::sync::Arc::new(consumer),
                group: spec.group.clone(),
                durable,
            },
            Rebalances(rx),
        ))
    }

    /// Runs `hook` inside every revocation, before the partitions are given
    /// away: the rebalance waits for it. A member that commits on its own
    /// schedule ([`Offsets::Explicit`]) finishes its commits there, so that
    /// no commit for a partition lands after its next owner read the
    /// committed offset (the next owner would do the work again).
    pub fn on_revoke(&self, hook: RevokeHook) {
        *self.consumer.context().on_revoke.write() = Some(hook);
    }

    /// The next record, owned, with its partition (cancel-safe).
    pub async fn recv(&self) -> Result<(Tp, Record), KafkaError> {
        use rdkafka::Message;
        let m = self.consumer.recv().await?;
        Ok(((m.topic().to_owned(), m.partition()), Record::of(&m)))
    }

    /// An assigned partition's own queue ([`MemberSpec::partition_queues`]);
    /// `None` when librdkafka knows no such partition.
    pub fn partition_queue(&self, tp: &Tp) -> Option<PartitionQueue> {
        let stream = self.consumer.split_partition_queue(&tp.0, tp.1)?;
        let ready = kafka_partition_queue::ReadyQueue::open(self.consumer.client(), &tp.0, tp.1)?;
        Some(PartitionQueue { ready, stream })
    }

    /// Moves a partition's fetch position to `offset` (what was fetched
    /// before it is dropped).
    pub fn seek(&self, tp: &Tp, offset: i64) -> Result<(), BusError> {
        Ok(self
            .consumer
            .seek(&tp.0, tp.1, Offset::Offset(offset), Duration::from_secs(1))?)
    }

    /// The group's committed offset of a partition (the next to read);
    /// blocking.
    pub fn committed(&self, tp: &Tp) -> Result<Option<i64>, BusError> {
        let l = self
            .consumer
            .committed_offsets(tpl(tp), Duration::from_secs(10))?;
        Ok(l.find_partition(&tp.0, tp.1)
            .and_then(|e| match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            }))
    }

    /// Stops fetching a partition.
    pub fn pause(&self, tp: &Tp) -> Result<(), BusError> {
        Ok(self.consumer.pause(&tpl(tp))?)
    }

    /// Fetches a paused partition again.
    pub fn resume(&self, tp: &Tp) -> Result<(), BusError> {
        Ok(self.consumer.resume(&tpl(tp))?)
    }

    /// Pauses every owned partition; answers how many.
    pub fn pause_all(&self) -> Result<usize, BusError> {
        let owned = self.consumer.assignment()?;
        self.consumer.pause(&owned)?;
        Ok(owned.count())
    }

    /// Resumes every owned partition; answers how many.
    pub fn resume_all(&self) -> Result<usize, BusError> {
        let owned = self.consumer.assignment()?;
        self.consumer.resume(&owned)?;
        Ok(owned.count())
    }

    /// Marks `offset` of a partition done (its effects are durable): the
    /// background commit moves the group past it ([`Offsets::Stored`]).
    pub fn store(&self, tp: &Tp, offset: i64) -> Result<(), BusError> {
        Ok(self.consumer.store_offset(&tp.0, tp.1, offset)?)
    }

    /// Commits what was stored, now (shutdown).
    pub fn commit_stored(&self) -> Result<(), BusError> {
        Ok(self.consumer.commit_consumer_state(CommitMode::Sync)?)
    }

    /// Commits `next` offsets, synchronously ([`Offsets::Explicit`]). On a
    /// durable embedded cluster they are journaled first, once everything
    /// the cluster holds is (the records they commit for among it).
    pub fn commit(&self, next: &TopicPartitionList) -> Result<(), BusError> {
        if let Some(j) = &self.durable {
            j.commit_offsets(&self.group, next)?;
        }
        Ok(self.consumer.commit(next, CommitMode::Sync)?)
    }

    /// The group's metadata, for offsets sent with a transaction.
    pub fn group_metadata(&self) -> Option<ConsumerGroupMetadata> {
        self.consumer.group_metadata()
    }

    /// Each owned partition's position (the next offset it will fetch;
    /// past transaction markers) and its head, in order, until `stop` is
    /// cancelled (then fewer: each head is a request to its broker).
    pub(super) fn positions_and_heads(
        &self,
        tps: &[Tp],
        stop: &tokio_util::sync::CancellationToken,
    ) -> Vec<(Option<i64>, Option<i64>)> {
        let positions = self.consumer.position().ok();
        tps.iter()
            .take_while(|_| !stop.is_cancelled())
            .map(|tp| {
                let head = self
                    .consumer
                    .fetch_watermarks(&tp.0, tp.1, Duration::from_secs(2))
                    .ok()
                    .map(|(_, h)| h);
                let pos = positions
                    .as_ref()
                    .and_then(|l| l.find_partition(&tp.0, tp.1))
                    .and_then(|e| match e.offset() {
                        Offset::Offset(o) => Some(o),
                        _ => None,
                    });
                (pos, head)
            })
            .collect()
    }

    /// Leaves the group.
    pub fn leave(&self) {
        self.consumer.unsubscribe();
    }
}
