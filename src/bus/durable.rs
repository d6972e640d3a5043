//! The embedded log made durable: what the mock cluster of `atelier up`
//! holds is kept in a [`Journal`] under the data directory, so that a
//! restart, or a SIGKILL, finds every topic as it was, at the same offsets,
//! and the inference group where it was.
//!
//! - A follower thread reads every partition of the cluster in offset
//!   order and journals what it read, in groups (one write, and one fsync
//!   under [`super::journal::Fsync::Always`], per group).
//! - A [`super::Producer`] of this process answers a send only once the
//!   follower journaled the record ([`Durable::journaled`]): the edge's 202
//!   means "on disk".
//! - The follower fetches only while something is to be journaled. The mock
//!   cluster answers an empty fetch only when the fetch's wait runs out, so
//!   a follower that kept fetching an idle cluster would cost CPU all the
//!   time (about 500 round trips a second at its 2 ms wait). A waiter
//!   ([`Durable::journaled`], [`Durable::barrier`]) says which offset it
//!   waits for, which wakes the follower; once everything asked for is
//!   journaled, the follower gives its partitions up and sleeps, looking
//!   again every [`IDLE_LOOK`] for records appended by writers that wait
//!   for nothing (another process on the cluster's port).
//! - An explicit commit ([`super::Member::commit`], the inference worker's)
//!   first waits until everything the cluster holds is journaled (the
//!   outcomes it commits for among it), journals the offsets, and only then
//!   commits them ([`Durable::commit_offsets`]). A crash between the two
//!   leaves the journal ahead of a cluster that is gone anyway.
//! - At start the journal is read back: its records are produced again, in
//!   order, into the fresh cluster, whose offsets are dense (the mock
//!   cluster writes no transaction markers), so each lands at its old
//!   offset, which is checked; then the journaled offsets are committed.
//!
//! The cluster keeps only the last 5 MiB of each partition (librdkafka's
//! mock cluster drops older batches as new ones arrive); the journal keeps
//! everything. A consumer of [`super::consumer::run`] (the projectors)
//! whose position is behind what the cluster holds, or that the cluster
//! skips past, reads those records from the journal ([`Durable::read`])
//! and then fetches from the cluster after them: the journal is the log,
//! the cluster its window.
//!
//! Groups that keep their position with their effects (the projectors:
//! the view store's checkpoints) are not journaled: they start where their
//! checkpoints say ([`super::PartitionHandler::resume_at`]).
//!
//! Every topic is created before the journal opens (`topics/*.toml`); a
//! topic created later is not followed, and a send to it is not waited on.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer as _, ProducerContext};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::journal::{Entry, Journal, JournalOptions, JournalRecord};
use super::{BusError, Delivery, Tp, client_config, producer_config};
use crate::config::KafkaConfig;

/// How long a send or a commit waits for the journal before it fails.
const WAIT: Duration = Duration::from_secs(30);
/// Most records the follower journals in one group.
const GROUP_RECORDS: usize = 20_000;
/// How often an idle follower fetches anyway, for records no waiter asked
/// for.
pub const IDLE_LOOK: Duration = Duration::from_millis(250);

/// The durable logs of this process, by their clusters' bootstrap servers:
/// how a producer or a member built from `brokers` finds its journal.
static OPEN: LazyLock<parking_lot::Mutex<HashMap<String, Weak<Durable>>>> =
    LazyLock::new(Default::default);

/// The durable log behind `brokers`, if they are a durable embedded
/// cluster's.
pub fn of(brokers: &str) -> Option<Arc<Durable>> {
    OPEN.lock().get(brokers).and_then(Weak::upgrade)
}

/// What reading the journal back found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Restored {
    /// Records produced again.
    pub records: u64,
    /// Groups whose offsets were committed again.
    pub groups: usize,
    /// Records the cluster could not keep: librdkafka's mock cluster holds
    /// at most the last 5 MiB (or 100,000 batches) of each partition and
    /// drops older batches as new ones arrive. The journal keeps them, and
    /// the projectors read them from it; a plain consumer of the cluster
    /// (`atelier replay --stage infer` from the log's start, the DLQ
    /// tools) starts at the cluster's first record.
    pub dropped: u64,
    /// How long it took.
    pub took: Duration,
}

/// A journaled embedded cluster: see the module's documentation.
pub struct Durable {
    brokers: String,
    dir: PathBuf,
    /// Per segment found at open, the last offset of each partition in it
    /// (segments written since are always read).
    extents: HashMap<PathBuf, HashMap<Tp, i64>>,
    journal: parking_lot::RwLock<Option<Journal>>,
    /// Per followed partition, the next offset to journal.
    marks: parking_lot::Mutex<HashMap<Tp, i64>>,
    /// Bumped whenever `marks` move or the follower fails.
    moved: tokio::sync::watch::Sender<u64>,
    /// Per followed partition, the next offset a waiter waits for: the
    /// follower fetches until `marks` reach it.
    wanted: parking_lot::Mutex<HashMap<Tp, i64>>,
    /// Wakes an idle follower (a want, or stop).
    wake: parking_lot::Condvar,
    /// How often an idle follower fetches anyway ([`IDLE_LOOK`]; tests
    /// lengthen it), in milliseconds.
    idle_look_ms: std::sync::atomic::AtomicU64,
    failed: parking_lot::Mutex<Option<String>>,
    stop: AtomicBool,
    follower: parking_lot::Mutex<Option<JoinHandle<()>>>,
    /// Asks the cluster where partitions end.
    probe: BaseConsumer,
    restored: Restored,
}

impl std::fmt::Debug for Durable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Durable")
            .field("brokers", &self.brokers)
            .field("restored", &self.restored)
            .finish_non_exhaustive()
    }
}

fn journal_err(e: impl std::fmt::Display) -> BusError {
    BusError::Journal(e.to_string())
}

/// Checks each replayed record's delivery: it must land where it was.
struct Replay {
    bad: parking_lot::Mutex<Option<String>>,
}

impl ClientContext for Replay {}

impl ProducerContext for Replay {
    type DeliveryOpaque = Box<i64>;
    fn delivery(&self, r: &DeliveryResult<'_>, want: Box<i64>) {
        let why = match r {
            Ok(m) if m.offset() == *want => return,
            Ok(m) => format!(
                "{} [{}]: a record journaled at offset {want} landed at {}",
                m.topic(),
                m.partition(),
                m.offset()
            ),
            Err((e, m)) => format!("{} [{}]: {e}", m.topic(), m.partition()),
        };
        self.bad.lock().get_or_insert(why);
    }
}

impl Durable {
    /// Reads the journal in `dir` back into the cluster at `brokers` (whose
    /// `topics` exist and are empty), then follows every partition of them.
    pub fn open(
        cfg: &KafkaConfig,
        brokers: &str,
        topics: &[(String, i32)],
        dir: &Path,
        opts: JournalOptions,
    ) -> Result<Arc<Durable>, BusError> {
        let started = Instant::now();
        let known: HashSet<&str> = topics.iter().map(|(t, _)| t.as_str()).collect();
        let mut replay = producer_config(cfg, brokers, Delivery::Idempotent);
        replay
            .set("linger.ms", "5")
            // As the edge's producer: the mock cluster's per-partition
            // bound counts compressed batches.
            .set("compression.type", "lz4")
            // Bounded: what waits here is resident memory at every start.
            .set("queue.buffering.max.messages", "1000000")
            .set("queue.buffering.max.kbytes", "65536")
            .set("message.timeout.ms", "60000");
        let producer: BaseProducer<Replay> = replay.create_with_context(Replay {
            bad: parking_lot::Mutex::new(None),
        })?;
        let mut next: HashMap<Tp, i64> = HashMap::new();
        let mut groups: BTreeMap<String, BTreeMap<Tp, i64>> = BTreeMap::new();
        let mut records = 0u64;
        let mut extents: HashMap<PathBuf, HashMap<Tp, i64>> = HashMap::new();
        let journal = Journal::open(dir, opts, |segment, entry| {
            match entry {
                Entry::Records {
                    topic,
                    partition,
                    records: rs,
                } => {
                    if !known.contains(topic.as_str()) {
                        return Err(corrupt(dir, format!(
                            "it holds records of the topic {topic}, which no topics/*.toml file \
                             creates any more; restore that file, or move {} aside to start afresh",
                            dir.display()
                        )));
                    }
                    if let Some(last) = rs.last() {
                        let e = extents.entry(segment.to_owned()).or_default();
                        let high = e.entry((topic.clone(), partition)).or_insert(-1);
                        *high = (*high).max(last.offset);
                    }
                    let at = next.entry((topic.clone(), partition)).or_insert(0);
                    for r in rs {
                        if r.offset < *at {
                            continue;
                        }
                        if r.offset > *at {
                            return Err(corrupt(
                                dir,
                                format!(
                                    "{topic} [{partition}] jumps from offset {} to {}",
                                    *at, r.offset
                                ),
                            ));
                        }
                        send(&producer, &topic, partition, r);
                        *at += 1;
                        records += 1;
                        if records.is_multiple_of(10_000) {
                            producer.poll(Duration::ZERO);
                        }
                    }
                }
                Entry::Offsets { group, offsets } => {
                    let g = groups.entry(group).or_default();
                    for (t, p, o) in offsets {
                        g.insert((t, p), o);
                    }
                }
            }
            Ok(())
        })
        .map_err(journal_err)?;
        producer
            .flush(Duration::from_secs(120))
            .map_err(|e| BusError::Journal(format!("replaying the journal: {e}")))?;
        if let Some(why) = producer.context().bad.lock().take() {
            return Err(BusError::Journal(format!(
                "replaying the journal in {}: {why}",
                dir.display()
            )));
        }
        drop(producer);
        let probe: BaseConsumer = client_config(cfg, brokers).create()?;
        let mut dropped = 0u64;
        for (tp, n) in &next {
            let (low, _) = probe.fetch_watermarks(&tp.0, tp.1, Duration::from_secs(10))?;
            if low > 0 {
                tracing::info!(
                    topic = %tp.0,
                    partition = tp.1,
                    journaled = n,
                    in_journal_only = low,
                    "the in-process cluster keeps the last 5 MiB of a partition: the projectors \
                     read its first records from the journal"
                );
                dropped += low as u64;
            }
        }
        for (group, offsets) in &groups {
            let c: BaseConsumer = client_config(cfg, brokers)
                .set("group.id", group)
                .set("enable.auto.commit", "false")
                .create()?;
            let mut tpl = TopicPartitionList::new();
            for (tp, o) in offsets {
                // Never past what the journal holds.
                let o = (*o).min(next.get(tp).copied().unwrap_or(0));
                tpl.add_partition_offset(&tp.0, tp.1, Offset::Offset(o))?;
            }
            c.commit(&tpl, CommitMode::Sync)?;
        }
        let restored = Restored {
            records,
            dropped,
            groups: groups.len(),
            took: started.elapsed(),
        };
        // Follow every partition from where the journal ends.
        let mut follow = client_config(cfg, brokers);
        follow
            // Assigned, never joined nor committed: librdkafka wants a name.
            .set("group.id", "atelier.journal")
            .set("enable.auto.commit", "false")
            // Behind the log's start: read from there, and the check above
            // says what was lost.
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set("isolation.level", "read_uncommitted")
            // The mock cluster answers a fetch when its wait runs out: this
            // bounds what a 202 waits for the follower.
            .set("fetch.wait.max.ms", "2")
            .set("fetch.queue.backoff.ms", "0");
        let consumer: BaseConsumer = follow.create()?;
        let mut tpl = TopicPartitionList::new();
        let mut marks = HashMap::new();
        for (t, n) in topics {
            for p in 0..*n {
                let at = next.get(&(t.clone(), p)).copied().unwrap_or(0);
                tpl.add_partition_offset(t, p, Offset::Offset(at))?;
                marks.insert((t.clone(), p), at);
            }
        }
        consumer.assign(&tpl)?;
        let durable = Arc::new(Durable {
            brokers: brokers.to_owned(),
            dir: dir.to_owned(),
            extents,
            journal: parking_lot::RwLock::new(Some(journal)),
            marks: parking_lot::Mutex::new(marks),
            moved: tokio::sync::watch::Sender::new(0),
            wanted: parking_lot::Mutex::new(HashMap::new()),
            wake: parking_lot::Condvar::new(),
            idle_look_ms: std::sync::atomic::AtomicU64::new(IDLE_LOOK.as_millis() as u64),
            failed: parking_lot::Mutex::new(None),
            stop: AtomicBool::new(false),
            follower: parking_lot::Mutex::new(None),
            probe,
            restored,
        });
        let d = durable.clone();
        let handle = std::thread::Builder::new()
            .name("journal-follower".into())
            .spawn(move || d.follow(consumer))
            .map_err(journal_err)?;
        *durable.follower.lock() = Some(handle);
        OPEN.lock()
            .insert(brokers.to_owned(), Arc::downgrade(&durable));
        Ok(durable)
    }

    /// What reading the journal back did.
    pub fn restored(&self) -> &Restored {
        &self.restored
    }

    /// The next offset of a followed partition to be journaled: every
    /// record below it is on disk. `None` for a partition not followed.
    pub fn mark(&self, tp: &Tp) -> Option<i64> {
        self.marks.lock().get(tp).copied()
    }

    /// Reads journaled records of some partitions (per partition, the
    /// offsets `from..to`, below its [`Durable::mark`]) in offset order,
    /// handing them to `each` a frame at a time, while the journal is
    /// written. `each` answers whether to go on with that partition.
    /// Blocking: what a consumer behind the cluster's retained records (it
    /// keeps the last 5 MiB of a partition) reads instead.
    pub fn read(
        &self,
        wants: &HashMap<Tp, (i64, i64)>,
        each: &mut dyn FnMut(&Tp, Vec<JournalRecord>) -> bool,
    ) -> Result<(), BusError> {
        let mut at: HashMap<Tp, i64> = wants
            .iter()
            .filter(|(_, (from, to))| from < to)
            .map(|(tp, (from, _))| (tp.clone(), *from))
            .collect();
        if at.is_empty() {
            return Ok(());
        }
        // A segment found at open that holds nothing wanted is not read.
        let starts = at.clone();
        let skip = |seg: &Path| {
            self.extents.get(seg).is_some_and(|e| {
                starts
                    .iter()
                    .all(|(tp, from)| e.get(tp).is_none_or(|high| high < from))
            })
        };
        let want = |t: &str, p: i32| starts.keys().any(|(wt, wp)| *wp == p && wt == t);
        let mut failure = None;
        super::journal::scan(&self.dir, &skip, &want, &mut |entry| {
            let Entry::Records {
                topic,
                partition,
                records,
            } = entry
            else {
                return true;
            };
            let tp = (topic, partition);
            let (Some(next), Some(&(_, to))) = (at.get_mut(&tp), wants.get(&tp)) else {
                return true;
            };
            let mut out = Vec::with_capacity(records.len());
            for r in records {
                if r.offset < *next || r.offset >= to {
                    continue;
                }
                if r.offset > *next {
                    failure = Some(format!(
                        "{} [{}]: the journal jumps from offset {} to {}",
                        tp.0, tp.1, *next, r.offset
                    ));
                    return false;
                }
                *next += 1;
                out.push(r);
            }
            let done = *next >= to;
            let go_on = out.is_empty() || each(&tp, out);
            if done || !go_on {
                at.remove(&tp);
            }
            !at.is_empty()
        })
        .map_err(journal_err)?;
        if let Some(why) = failure {
            return Err(BusError::Journal(why));
        }
        if let Some((tp, next)) = at.iter().next() {
            return Err(BusError::Journal(format!(
                "{} [{}]: the journal ends at offset {next}, before {}",
                tp.0, tp.1, wants[tp].1
            )));
        }
        Ok(())
    }

    fn check(&self) -> Result<(), BusError> {
        match &*self.failed.lock() {
            Some(why) => Err(BusError::Journal(why.clone())),
            None => Ok(()),
        }
    }

    fn fail(&self, why: String) {
        tracing::error!(error = %why, "the embedded log's journal failed; appends are refused");
        self.failed.lock().get_or_insert(why);
        self.moved.send_modify(|v| *v += 1);
    }

    /// Waits until the record at `offset` of a partition is journaled. A
    /// partition this log does not follow is not waited on.
    pub async fn journaled(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
    ) -> Result<(), BusError> {
        let key = (topic.to_owned(), partition);
        let mut moved = self.moved.subscribe();
        self.want([(&key, offset + 1)]);
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            self.check()?;
            match self.marks.lock().get(&key) {
                None => return Ok(()),
                Some(&n) if n > offset => return Ok(()),
                Some(_) => {}
            }
            match tokio::time::timeout_at(deadline, moved.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(BusError::Journal("the journal closed".into())),
                Err(_) => {
                    return Err(BusError::Journal(format!(
                        "{topic} [{partition}] offset {offset} was not journaled within {WAIT:?}"
                    )));
                }
            }
        }
    }

    /// Asks the follower to journal followed partitions up to (below) the
    /// given next offsets, waking it if it is idle.
    fn want<'a>(&self, wants: impl IntoIterator<Item = (&'a Tp, i64)>) {
        let marks = self.marks.lock();
        let mut wanted = self.wanted.lock();
        let mut more = false;
        for (tp, next) in wants {
            if marks.get(tp).is_some_and(|&m| m < next) {
                let w = wanted.entry(tp.clone()).or_insert(0);
                if *w < next {
                    *w = next;
                    more = true;
                }
            }
        }
        drop(marks);
        if more {
            self.wake.notify_all();
        }
    }

    /// Waits (blocking) until everything the cluster holds now is journaled.
    pub fn barrier(&self, within: Duration) -> Result<(), BusError> {
        let deadline = Instant::now() + within;
        let followed: Vec<Tp> = self.marks.lock().keys().cloned().collect();
        let mut want = Vec::with_capacity(followed.len());
        for tp in followed {
            let (_, high) = self.probe.fetch_watermarks(&tp.0, tp.1, within)?;
            want.push((tp, high));
        }
        self.want(want.iter().map(|(tp, high)| (tp, *high)));
        loop {
            self.check()?;
            {
                let marks = self.marks.lock();
                if want
                    .iter()
                    .all(|(tp, high)| marks.get(tp).is_some_and(|n| n >= high))
                {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err(BusError::Journal(format!(
                    "the journal did not catch up with the log within {within:?}"
                )));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Journals a group's offsets (per partition, the next offset to read)
    /// once everything the cluster holds is journaled; blocking.
    pub fn commit_offsets(&self, group: &str, next: &TopicPartitionList) -> Result<(), BusError> {
        self.barrier(WAIT)?;
        let offsets = next
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) => Some((e.topic().to_owned(), e.partition(), o)),
                _ => None,
            })
            .collect();
        let pending = self
            .journal
            .read()
            .as_ref()
            .ok_or_else(|| BusError::Journal("the journal closed".into()))?
            .submit(Entry::Offsets {
                group: group.to_owned(),
                offsets,
            })
            .map_err(journal_err)?;
        futures::executor::block_on(pending).map_err(journal_err)
    }

    /// The follower: reads every followed partition and journals it.
    fn follow(&self, consumer: BaseConsumer) {
        let mut batch: BTreeMap<Tp, Vec<JournalRecord>> = BTreeMap::new();
        // Per partition, the next offset the journal expects: a record
        // past it means the cluster dropped records before they were
        // journaled (its per-partition bound, with the follower behind).
        let mut expect: HashMap<Tp, i64> = self.marks.lock().clone();
        while !self.stop.load(Ordering::Acquire) {
            let mut n = 0usize;
            // Nothing for this long, with everything asked for journaled:
            // the follower goes idle (see `idle`).
            let mut wait = Duration::from_millis(10);
            while n < GROUP_RECORDS {
                let Some(r) = consumer.poll(wait) else { break };
                wait = Duration::ZERO;
                match r {
                    Ok(m) => {
                        let tp = (m.topic().to_owned(), m.partition());
                        let want = expect.get(&tp).copied().unwrap_or(0);
                        if m.offset() != want {
                            self.fail(format!(
                                "{} [{}]: the in-process cluster dropped offsets {want}..{} \
                                 before they were journaled (it keeps the last 5 MiB of a \
                                 partition and the journal fell behind)",
                                tp.0,
                                tp.1,
                                m.offset()
                            ));
                            return;
                        }
                        expect.insert(tp.clone(), want + 1);
                        batch.entry(tp).or_default().push(record(&m));
                        n += 1;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "the journal's follower could not fetch");
                        break;
                    }
                }
            }
            if batch.is_empty() {
                if n == 0
                    && let Err(why) = self.idle(&consumer, &expect)
                {
                    self.fail(why);
                    return;
                }
                continue;
            }
            if let Err(why) = self.write(&mut batch) {
                self.fail(why);
                return;
            }
        }
    }

    /// Once every offset asked for is journaled: stops the follower's
    /// fetches and sleeps until a waiter asks for more, [`IDLE_LOOK`]
    /// passes, or the log closes; then fetches again from where it was.
    /// (It gives its partitions up rather than pausing them: librdkafka
    /// wakes a consumer's idle broker thread when a partition starts
    /// fetching, not when one resumes, which left a resumed follower
    /// waiting up to a second.)
    fn idle(&self, consumer: &BaseConsumer, expect: &HashMap<Tp, i64>) -> Result<(), String> {
        let mut wanted = self.wanted.lock();
        if !satisfied(expect, &wanted) || self.stop.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), next) in expect {
            if tpl
                .add_partition_offset(topic, *partition, Offset::Offset(*next))
                .is_err()
            {
                return Ok(());
            }
        }
        if consumer.unassign().is_err() {
            return Ok(());
        }
        let until =
            Instant::now() + Duration::from_millis(self.idle_look_ms.load(Ordering::Relaxed));
        while satisfied(expect, &wanted) && !self.stop.load(Ordering::Acquire) {
            if self.wake.wait_until(&mut wanted, until).timed_out() {
                break;
            }
        }
        drop(wanted);
        consumer
            .assign(&tpl)
            .map_err(|e| format!("the journal's follower could not fetch again: {e}"))
    }

    /// Journals one group of records, then moves the marks past them.
    fn write(&self, batch: &mut BTreeMap<Tp, Vec<JournalRecord>>) -> Result<(), String> {
        let mut ends = Vec::with_capacity(batch.len());
        let mut pending = Vec::with_capacity(batch.len());
        {
            let journal = self.journal.read();
            let j = journal.as_ref().ok_or("the journal closed")?;
            for ((topic, partition), records) in std::mem::take(batch) {
                let end = records.last().map_or(0, |r| r.offset + 1);
                ends.push(((topic.clone(), partition), end));
                pending.push(
                    j.submit(Entry::Records {
                        topic,
                        partition,
                        records,
                    })
                    .map_err(|e| e.to_string())?,
                );
            }
        }
        for p in pending {
            futures::executor::block_on(p).map_err(|e| e.to_string())?;
        }
        let mut marks = self.marks.lock();
        for (tp, end) in ends {
            marks.insert(tp, end);
        }
        drop(marks);
        self.moved.send_modify(|v| *v += 1);
        Ok(())
    }

    /// Journals what the cluster still holds (within a bound), stops the
    /// follower and closes the journal (its last group synced).
    pub fn close(&self) {
        if self.check().is_ok()
            && let Err(e) = self.barrier(Duration::from_secs(10))
        {
            tracing::warn!(error = %e, "closing the journal before it caught up");
        }
        self.stop.store(true, Ordering::Release);
        {
            let _wanted = self.wanted.lock();
            self.wake.notify_all();
        }
        if let Some(h) = self.follower.lock().take() {
            let _ = h.join();
        }
        if let Some(j) = self.journal.write().take() {
            j.close();
        }
        let mut open = OPEN.lock();
        if open
            .get(&self.brokers)
            .is_some_and(|w| std::ptr::eq(w.as_ptr(), self))
        {
            open.remove(&self.brokers);
        }
        drop(open);
        self.moved.send_modify(|v| *v += 1);
    }
}

/// Whether the follower has every offset a waiter asked for (`expect`,
/// its next offset per partition, at or past `wanted`).
fn satisfied(expect: &HashMap<Tp, i64>, wanted: &HashMap<Tp, i64>) -> bool {
    wanted
        .iter()
        .all(|(tp, w)| expect.get(tp).is_some_and(|e| e >= w))
}

fn corrupt(dir: &Path, why: String) -> super::journal::JournalError {
    super::journal::JournalError::Corrupt {
        path: dir.to_owned(),
        at: 0,
        why,
    }
}

/// A fetched record as the journal keeps it.
fn record<M: Message>(m: &M) -> JournalRecord {
    JournalRecord {
        offset: m.offset(),
        timestamp_ms: m.timestamp().to_millis().unwrap_or(0),
        key: m.key().map(<[u8]>::to_vec),
        headers: m
            .headers()
            .map(|hs| {
                hs.iter()
                    .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
                    .collect()
            })
            .unwrap_or_default(),
        payload: m.payload().map(<[u8]>::to_vec),
    }
}

/// Produces a journaled record again (waiting while the queue is full).
fn send(producer: &BaseProducer<Replay>, topic: &str, partition: i32, r: JournalRecord) {
    let mut hs = OwnedHeaders::new_with_capacity(r.headers.len());
    for (k, v) in &r.headers {
        hs = hs.insert(Header {
            key: k,
            value: v.as_deref(),
        });
    }
    let mut rec: BaseRecord<'_, [u8], [u8], Box<i64>> =
        BaseRecord::with_opaque_to(topic, Box::new(r.offset))
            .partition(partition)
            .timestamp(r.timestamp_ms)
            .headers(hs);
    if let Some(k) = &r.key {
        rec = rec.key(k.as_slice());
    }
    if let Some(p) = &r.payload {
        rec = rec.payload(p.as_slice());
    }
    loop {
        match producer.send(rec) {
            Ok(()) => return,
            Err((e, back)) => {
                if !matches!(
                    e,
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull
                    )
                ) {
                    producer
                        .context()
                        .bad
                        .lock()
                        .get_or_insert(format!("{topic} [{partition}]: {e}"));
                    return;
                }
                rec = back;
                producer.poll(Duration::from_millis(10));
            }
        }
    }
}

/// Sends `n` incompressible records of 2 KiB, all with one key, to
/// `topic` (4,000 are more than the embedded cluster keeps of a
/// partition); answers their partition.
#[cfg(test)]
pub(crate) async fn overflow_one_partition(p: &crate::bus::Producer, topic: &str, n: usize) -> i32 {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut partition = None;
    let mut left = n;
    while left > 0 {
        let k = left.min(500);
        left -= k;
        let bodies: Vec<Vec<u8>> = (0..k)
            .map(|_| {
                (0..2048)
                    .map(|_| {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        seed as u8
                    })
                    .collect()
            })
            .collect();
        let sent = futures::future::join_all(
            bodies
                .iter()
                .map(|b| p.send_raw(topic, Some(b"one"), &[], Some(b.as_slice()))),
        )
        .await;
        for a in sent {
            partition = Some(a.expect("sent").partition);
        }
    }
    partition.expect("at least one record")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::{EmbeddedCluster, Producer};
    use rdkafka::consumer::BaseConsumer;

    const TOPIC: &str = "t.durable";

    fn start(cfg: &KafkaConfig, dir: &Path) -> EmbeddedCluster {
        let mut c = EmbeddedCluster::start(1).unwrap();
        c.create_topic(TOPIC, 3).unwrap();
        c.make_durable(cfg, dir, JournalOptions::default()).unwrap();
        c
    }

    /// Every record of the topic: (partition, offset, key, payload, headers).
    type Seen = (
        i32,
        i64,
        Option<Vec<u8>>,
        Option<Vec<u8>>,
        Vec<(String, Option<Vec<u8>>)>,
    );

    fn read_all(cfg: &KafkaConfig, brokers: &str, want: usize) -> Vec<Seen> {
        let c: BaseConsumer = client_config(cfg, brokers)
            .set("group.id", "reader")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in 0..3 {
            tpl.add_partition_offset(TOPIC, p, Offset::Beginning)
                .unwrap();
        }
        c.assign(&tpl).unwrap();
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while out.len() < want && Instant::now() < deadline {
            if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
                let r = record(&m);
                out.push((m.partition(), r.offset, r.key, r.payload, r.headers));
            }
        }
        out.sort_by_key(|s| (s.0, s.1));
        out
    }

    fn committed(cfg: &KafkaConfig, brokers: &str, group: &str) -> Vec<(i32, Offset)> {
        let c: BaseConsumer = client_config(cfg, brokers)
            .set("group.id", group)
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in 0..3 {
            tpl.add_partition(TOPIC, p);
        }
        c.committed_offsets(tpl, Duration::from_secs(10))
            .unwrap()
            .elements()
            .iter()
            .map(|e| (e.partition(), e.offset()))
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restarted_cluster_holds_what_was_answered_at_the_same_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = KafkaConfig::default();
        let c = start(&cfg, dir.path());
        let brokers = c.bootstrap_servers().to_owned();
        let p = Producer::new(&cfg, &brokers, "test").unwrap();
        for i in 0..120u32 {
            let key = format!("k{}", i % 7);
            let body = format!("body {i}");
            let hs: [(&str, &[u8]); 1] = [("n", &i.to_le_bytes())];
            let a = p
                .send_raw(TOPIC, Some(key.as_bytes()), &hs, Some(body.as_bytes()))
                .await
                .unwrap();
            // Answered: journaled.
            assert!(c.durable().unwrap().marks.lock()[&(TOPIC.to_owned(), a.partition)] > a.offset);
        }
        let before = read_all(&cfg, &brokers, 120);
        assert_eq!(before.len(), 120);
        let mut next = TopicPartitionList::new();
        next.add_partition_offset(TOPIC, 0, Offset::Offset(5))
            .unwrap();
        next.add_partition_offset(TOPIC, 2, Offset::Offset(9))
            .unwrap();
        let g = "g.infer";
        tokio::task::spawn_blocking({
            let (cfg, brokers) = (cfg.clone(), brokers.clone());
            move || crate::bus::member::commit_group(&cfg, &brokers, g, &next)
        })
        .await
        .unwrap()
        .unwrap();
        drop(p);
        drop(c);

        let c = start(&cfg, dir.path());
        let brokers = c.bootstrap_servers().to_owned();
        assert_eq!(c.durable().unwrap().restored().records, 120);
        assert_eq!(c.durable().unwrap().restored().groups, 1);
        assert_eq!(read_all(&cfg, &brokers, 120), before);
        assert_eq!(
            committed(&cfg, &brokers, g),
            vec![
                (0, Offset::Offset(5)),
                (1, Offset::Invalid),
                (2, Offset::Offset(9))
            ]
        );
        // And it goes on after what it restored.
        let p = Producer::new(&cfg, &brokers, "test").unwrap();
        let a = p
            .send_raw(TOPIC, Some(b"k0"), &[], Some(b"after"))
            .await
            .unwrap();
        let was = before.iter().filter(|s| s.0 == a.partition).count() as i64;
        assert_eq!(a.offset, was);
        drop(p);
        drop(c);
        let c = start(&cfg, dir.path());
        assert_eq!(c.durable().unwrap().restored().records, 121);
    }

    /// An idle log's follower stops fetching: the cluster is asked next to
    /// nothing while nobody writes (a follower that kept fetching asked
    /// about 500 times a second). A record of a writer that waits for
    /// nothing is still journaled, found by the follower's next look; and a
    /// send wakes it at once, which the test proves by making the looks an
    /// hour apart first (the send would time out otherwise).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_idle_follower_stops_fetching_and_wakes_for_a_send() {
        use rdkafka::producer::{FutureProducer, FutureRecord};
        let dir = tempfile::tempdir().unwrap();
        let cfg = KafkaConfig::default();
        let c = start(&cfg, dir.path());
        let brokers = c.bootstrap_servers().to_owned();
        let d = c.durable().unwrap().clone();
        let mark = |partition: i32| d.mark(&(TOPIC.to_owned(), partition)).unwrap();
        let p = Producer::new(&cfg, &brokers, "test").unwrap();
        let a = p
            .send_raw(TOPIC, Some(b"k"), &[], Some(b"one"))
            .await
            .unwrap();
        assert!(mark(a.partition) > a.offset);
        c.track_fetches().unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        c.take_fetches().unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let idle = c.take_fetches().unwrap();
        assert!(
            idle < 200,
            "{idle} fetch requests in 2 s with nothing written"
        );

        // A writer that waits for nothing: found by a look.
        let raw: FutureProducer = client_config(&cfg, &brokers).create().unwrap();
        let b = raw
            .send(
                FutureRecord::to(TOPIC).key("k").payload("two"),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while mark(b.partition) <= b.offset {
            assert!(
                Instant::now() < deadline,
                "a record nobody waits for was not journaled"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        // Looks an hour apart: once the current look has passed, only a
        // waiter's want wakes the follower.
        d.idle_look_ms.store(3_600_000, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(2 * IDLE_LOOK.as_millis() as u64)).await;
        c.take_fetches().unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(c.take_fetches().unwrap() < 10, "the follower is asleep");
        let e = p
            .send_raw(TOPIC, Some(b"k"), &[], Some(b"three"))
            .await
            .unwrap();
        assert!(mark(e.partition) > e.offset);
        // And a commit's barrier (the worker's) wakes it too.
        let f = raw
            .send(
                FutureRecord::to(TOPIC).key("k").payload("four"),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
        let d2 = d.clone();
        tokio::task::spawn_blocking(move || d2.barrier(Duration::from_secs(10)))
            .await
            .unwrap()
            .unwrap();
        assert!(mark(f.partition) > f.offset);
    }

    /// Collects what a consumer hands over.
    #[derive(Default)]
    struct Collect(parking_lot::Mutex<Vec<(i32, i64)>>);

    #[async_trait::async_trait]
    impl crate::bus::PartitionHandler for Collect {
        async fn assigned(&self, _: &str, _: i32) {}
        async fn handle(&self, batch: &crate::bus::Batch) -> Result<(), crate::bus::HandlerError> {
            let mut seen = self.0.lock();
            seen.extend(batch.records.iter().map(|r| (batch.partition, r.offset)));
            Ok(())
        }
    }

    /// Runs a consumer group member over the topic until it has `want`
    /// records; answers them in order of arrival.
    async fn consume(
        cfg: &KafkaConfig,
        brokers: &str,
        group: &str,
        want: usize,
    ) -> Vec<(i32, i64)> {
        let handler = Arc::new(Collect::default());
        let stop = tokio_util::sync::CancellationToken::new();
        let spec = crate::bus::consumer::ConsumerSpec {
            group: group.into(),
            topics: vec![TOPIC.into()],
            max_batch: 500,
            linger: Duration::from_millis(5),
            queue_depth: 2,
            drain_timeout: Duration::from_secs(5),
        };
        let task = tokio::spawn(crate::bus::consumer::run(
            cfg.clone(),
            brokers.to_owned(),
            spec,
            handler.clone(),
            stop.clone(),
        ));
        let deadline = Instant::now() + Duration::from_secs(60);
        while handler.0.lock().len() < want && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Nothing more than what the log holds arrives.
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.cancel();
        task.await.unwrap().unwrap();
        handler.0.lock().clone()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_consumer_reads_what_the_cluster_no_longer_holds_from_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = KafkaConfig::default();
        let c = start(&cfg, dir.path());
        let brokers = c.bootstrap_servers().to_owned();
        let p = Producer::new(&cfg, &brokers, "test").unwrap();
        // 8 MiB of incompressible records into one partition: more than
        // the cluster keeps of it.
        let n = 4_000usize;
        let partition = overflow_one_partition(&p, TOPIC, n).await;
        let (low, high) = c
            .durable()
            .unwrap()
            .probe
            .fetch_watermarks(TOPIC, partition, Duration::from_secs(5))
            .unwrap();
        assert_eq!(high, n as i64);
        assert!(low > 0, "the cluster dropped the partition's first records");
        let every: Vec<(i32, i64)> = (0..n as i64).map(|o| (partition, o)).collect();
        assert_eq!(consume(&cfg, &brokers, "g1", n).await, every);
        drop(p);
        drop(c);

        // Restarted, the cluster holds only the tail again; a new group
        // still reads everything, in order, once.
        let c = start(&cfg, dir.path());
        let brokers = c.bootstrap_servers().to_owned();
        assert!(c.durable().unwrap().restored().dropped > 0);
        assert_eq!(consume(&cfg, &brokers, "g2", n).await, every);
    }

    #[test]
    fn a_journal_with_a_gap_is_refused_not_served() {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        {
            let j = Journal::open(dir.path(), JournalOptions::default(), |_, _| Ok(())).unwrap();
            let rec = |offset| JournalRecord {
                offset,
                payload: Some(b"x".to_vec()),
                ..JournalRecord::default()
            };
            rt.block_on(async {
                for o in [0, 1, 3] {
                    j.append(Entry::Records {
                        topic: TOPIC.into(),
                        partition: 0,
                        records: vec![rec(o)],
                    })
                    .await
                    .unwrap();
                }
            });
        }
        let mut c = EmbeddedCluster::start(1).unwrap();
        c.create_topic(TOPIC, 3).unwrap();
        let e = c
            .make_durable(
                &KafkaConfig::default(),
                dir.path(),
                JournalOptions::default(),
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("jumps from offset 2 to 3"), "{e}");
    }
}
