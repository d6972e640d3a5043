//! The consumer loop: one `select!` over rebalances, the member's events,
//! the embedded log's catch-ups, a ticker and shutdown; one worker task per
//! assigned partition, reading that partition's own queue of records.
//!
//! - Each partition's records arrive on a queue of their own (librdkafka's
//!   partition queue, detached from the main queue before the partition is
//!   assigned). Its worker takes what is ready as one batch (up to the
//!   batch size; a batch not full lingers), so no record passes through a
//!   loop or a channel on its way to the handler.
//! - Backpressure needs no pause: librdkafka stops fetching a partition
//!   whose queue holds `max_batch * queue_depth` records (or 4 MiB) and
//!   fetches it again once it drains. A paused partition was fetched again
//!   only when the fetch in flight returned, up to `fetch.wait.max.ms`
//!   later.
//! - A worker hands a batch to the [`PartitionHandler`]; only when the
//!   handler says its effects are durable is the offset stored. Retriable
//!   failures are retried with capped backoff while the partition waits.
//! - On revoke a partition's worker is dropped; a write still in flight is
//!   fenced by the views' offset-derived write timestamps.
//! - On shutdown (the cancellation token, wired to SIGTERM/SIGINT) workers
//!   finish the batch in hand, with a timeout, then stored offsets are
//!   committed.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rdkafka::message::{BorrowedMessage, Headers, Message};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::BusError;
use super::member::{Member, MemberSpec, Offsets, PartitionQueue, Rebalance, Tp};
use crate::config::KafkaConfig;
use crate::telemetry::emit;

/// One consumed record, owned. Key, value and headers are packed into one
/// buffer: a record costs two allocations (the buffer and the header
/// index), whatever its headers.
#[derive(Clone, Debug, Default)]
pub struct Record {
    /// Offset in its partition.
    pub offset: i64,
    /// The key, the value, then header names and values, back to back.
    buf: Vec<u8>,
    /// End of the key in `buf` (`None`: no key).
    key_end: Option<u32>,
    /// End of the value in `buf` (`None`: no value).
    payload_end: Option<u32>,
    /// Per header: end of its name, end of its value (in `buf`).
    hidx: Vec<(u32, u32)>,
}

/// Room reserved for the headers of a record: the pipeline's own events
/// carry six CloudEvents headers, about 200 bytes with their names (at
/// 128, nearly every record grew its buffer once); more grow it once or
/// twice.
const HEADER_ROOM: usize = 256;

impl Record {
    /// A record from parts.
    pub fn new<'a>(
        offset: i64,
        key: Option<&[u8]>,
        headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
        payload: Option<&[u8]>,
    ) -> Self {
        let len = |b: Option<&[u8]>| b.map_or(0, <[u8]>::len);
        let mut buf = Vec::with_capacity(len(key) + len(payload) + HEADER_ROOM);
        let end = |b: Option<&[u8]>, buf: &mut Vec<u8>| {
            b.map(|b| {
                buf.extend_from_slice(b);
                buf.len() as u32
            })
        };
        let key_end = end(key, &mut buf);
        let payload_end = end(payload, &mut buf);
        let headers = headers.into_iter();
        let mut hidx = match headers.size_hint() {
            (_, Some(0)) => Vec::new(),
            (n, _) => Vec::with_capacity(n.max(8)),
        };
        for (k, v) in headers {
            buf.extend_from_slice(k.as_bytes());
            let kend = buf.len() as u32;
            buf.extend_from_slice(v);
            hidx.push((kend, buf.len() as u32));
        }
        Self {
            offset,
            buf,
            key_end,
            payload_end,
            hidx,
        }
    }

    /// Owns a consumed message.
    pub fn of(m: &BorrowedMessage<'_>) -> Self {
        match m.headers() {
            Some(hs) => Self::new(
                m.offset(),
                m.key(),
                hs.iter().map(|h| (h.key, h.value.unwrap_or_default())),
                m.payload(),
            ),
            None => Self::new(m.offset(), m.key(), [], m.payload()),
        }
    }

    /// A record read from the embedded log's journal.
    pub fn from_journal(r: &super::journal::JournalRecord) -> Self {
        Self::new(
            r.offset,
            r.key.as_deref(),
            r.headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_deref().unwrap_or_default())),
            r.payload.as_deref(),
        )
    }

    /// Its key, if it has one.
    pub fn key(&self) -> Option<&[u8]> {
        self.key_end.map(|e| &self.buf[..e as usize])
    }

    /// Its value, if it has one.
    pub fn payload(&self) -> Option<&[u8]> {
        let start = self.key_end.unwrap_or(0) as usize;
        self.payload_end.map(|e| &self.buf[start..e as usize])
    }

    /// Where its headers start in `buf`.
    fn headers_start(&self) -> usize {
        self.payload_end.or(self.key_end).unwrap_or(0) as usize
    }

    /// Headers as borrowed pairs, in order (for `event::wire::decode`).
    pub fn header_pairs(&self) -> impl Iterator<Item = (&str, &[u8])> {
        let mut start = self.headers_start();
        self.hidx.iter().map(move |&(kend, vend)| {
            let (kend, vend) = (kend as usize, vend as usize);
            // Keys were `&str` when packed.
            let key = std::str::from_utf8(&self.buf[start..kend]).unwrap_or_default();
            let value = &self.buf[kend..vend];
            start = vend;
            (key, value)
        })
    }

    /// The value of the first header named `name` (names compared as
    /// bytes: no UTF-8 check of the names passed over).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        let mut start = self.headers_start();
        self.hidx.iter().find_map(|&(kend, vend)| {
            let (kend, vend) = (kend as usize, vend as usize);
            let found = &self.buf[start..kend] == name.as_bytes();
            let value = &self.buf[kend..vend];
            start = vend;
            found.then_some(value)
        })
    }
}

/// Consecutive records of one partition, in offset order.
#[derive(Clone, Debug)]
pub struct Batch {
    /// Full topic name.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Records.
    pub records: Vec<Record>,
}

/// Why a batch could not be processed.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct HandlerError {
    /// What failed.
    pub message: String,
    /// Whether retrying the same batch may succeed (outage, timeout).
    pub retriable: bool,
}

/// What a consumer does with batches. Implementations must make handling
/// idempotent: after a crash the same records arrive again.
#[async_trait]
pub trait PartitionHandler: Send + Sync + 'static {
    /// A partition was assigned to this process: drop any cached state of it.
    async fn assigned(&self, topic: &str, partition: i32);
    /// Processes a batch; `Ok` means its effects are durable.
    async fn handle(&self, batch: &Batch) -> Result<(), HandlerError>;
    /// Where a partition's records start for this handler, when it keeps
    /// its own position with its effects (the projectors' checkpoints);
    /// `None`: at the group's committed offset. Asked on the embedded log,
    /// whose older records are read from its journal.
    async fn resume_at(&self, _topic: &str, _partition: i32) -> Option<i64> {
        None
    }
}

/// Consumer settings.
#[derive(Clone, Debug)]
pub struct ConsumerSpec {
    /// Consumer group id.
    pub group: String,
    /// Full topic names.
    pub topics: Vec<String>,
    /// Most records per batch.
    pub max_batch: usize,
    /// Longest wait for a batch to fill.
    pub linger: Duration,
    /// Batches of records each partition keeps ready: what librdkafka
    /// prefetches for it, and how far the embedded log's journal reads run
    /// ahead of its worker.
    pub queue_depth: usize,
    /// How long shutdown waits for workers to drain.
    pub drain_timeout: Duration,
}

/// What the lag sampler needs to know of one partition.
#[derive(Debug, Default)]
struct Progress {
    /// The next offset to apply (the last durable one + 1), -1 before any.
    next: AtomicI64,
    /// Records taken from the log and not yet durable (in a batch being
    /// filled, queued from the journal or being handled).
    inside: AtomicUsize,
}

type Parts = Arc<parking_lot::Mutex<HashMap<Tp, Arc<Progress>>>>;

/// How often each consumer measures its partitions' lag.
const LAG_EVERY: Duration = Duration::from_secs(1);

/// What a partition's worker is fed besides its own queue of records: on
/// the embedded log, the batches read from its journal, then where the
/// records from the cluster take over.
enum Feed {
    Batch(Batch),
    Live(i64),
}

/// The loop's side of a partition's worker.
struct Worker {
    progress: Arc<Progress>,
    feed: mpsc::Sender<Feed>,
    task: JoinHandle<()>,
    /// On the embedded log: which catch-up is the current one.
    epoch: u64,
    /// On the embedded log: caught up to here, the cluster's fetch not yet
    /// moved there (librdkafka refuses a seek until the partition's fetch
    /// has started; retried each tick).
    seek_to: Option<i64>,
}

/// A partition to read from the journal: from where (`None`: where its
/// handler or group is), into which worker.
struct CatchUp {
    tp: Tp,
    from: Option<i64>,
    epoch: u64,
    tx: mpsc::Sender<Feed>,
    progress: Arc<Progress>,
}

/// Runs a consumer group member of `spec.group` on the log (`kafka`,
/// `brokers`) until `shutdown` fires or a handler fails permanently.
pub async fn run<H: PartitionHandler + ?Sized>(
    kafka: KafkaConfig,
    brokers: String,
    spec: ConsumerSpec,
    handler: Arc<H>,
    shutdown: CancellationToken,
) -> Result<(), BusError> {
    // The most records a batch takes.
    let max_batch = spec.max_batch.max(1);
    let depth = spec.queue_depth.max(1);
    // Offsets are stored by hand, only after a batch is durable. Each
    // partition's records arrive on its own queue, which its worker reads.
    let (consumer, mut rebalances) = Member::join(
        &kafka,
        &brokers,
        &MemberSpec {
            group: spec.group.clone(),
            topics: spec.topics.clone(),
            offsets: Offsets::Stored,
            prefetch_kbytes: PREFETCH_KBYTES,
            partition_queues: true,
            prefetch_records: u32::try_from(max_batch.saturating_mul(depth)).unwrap_or(u32::MAX),
        },
    )?;
    let consumer = Arc::new(consumer);

    let (fatal_tx, mut fatal_rx) = mpsc::channel::<String>(1);
    let mut workers: HashMap<Tp, Worker> = HashMap::new();
    let mut tick = tokio::time::interval(spec.linger.max(Duration::from_millis(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Workers finish the batch in hand and stop; past the drain timeout,
    // their retries stop too.
    let closing = CancellationToken::new();
    let worker_stop = CancellationToken::new();
    let mut failure = None;

    // On the embedded log, records behind the cluster's window are read
    // from its journal (see `catch_up`); a worker that finds one missing
    // asks for them on `gaps`.
    let durable = super::durable::of(&brokers);
    let (caught_tx, mut caught_rx) = mpsc::unbounded_channel::<(Tp, i64, u64)>();
    let (gaps_tx, mut gaps_rx) = mpsc::unbounded_channel::<(Tp, i64)>();
    let mut epochs = 0u64;
    // Said once: a group this member cannot join because another member
    // rebalances eagerly.
    let mut told_protocol = false;
    let parts: Parts = Default::default();
    let sampler_stop = shutdown.child_token();
    let sampler = tokio::spawn(sample_lag(
        consumer.clone(),
        spec.group.clone(),
        parts.clone(),
        sampler_stop.clone(),
    ));
    let spawn = |tp: &Tp, workers: &mut HashMap<Tp, Worker>| -> Result<(), BusError> {
        let Some(live) = consumer.partition_queue(tp) else {
            return Err(BusError::Handler(format!(
                "no queue for the assigned partition {}/{}",
                tp.0, tp.1
            )));
        };
        let (tx, rx) = mpsc::channel(depth);
        let progress = Arc::new(Progress {
            next: AtomicI64::new(-1),
            inside: AtomicUsize::new(0),
        });
        parts.lock().insert(tp.clone(), progress.clone());
        let intake = Intake {
            tp: tp.clone(),
            live,
            feed: rx,
            max_batch,
            linger: spec.linger,
            // On the embedded log a partition starts from its journal.
            gaps: durable.as_ref().map(|_| gaps_tx.clone()),
            catching: durable.is_some(),
            next: 0,
            progress: progress.clone(),
            taken: Vec::new(),
        };
        let task = tokio::spawn(worker(
            handler.clone(),
            consumer.clone(),
            intake,
            closing.clone(),
            worker_stop.child_token(),
            fatal_tx.clone(),
        ));
        workers.insert(
            tp.clone(),
            Worker {
                progress,
                feed: tx,
                task,
                epoch: 0,
                seek_to: None,
            },
        );
        Ok(())
    };
    // Starts reading partitions from the journal (the embedded log only):
    // their fetches from the cluster are paused until it is read.
    let catch_up = |tps: Vec<(Tp, Option<i64>)>,
                    workers: &mut HashMap<Tp, Worker>,
                    epochs: &mut u64|
     -> Result<(), BusError> {
        let Some(d) = &durable else { return Ok(()) };
        let mut jobs = Vec::new();
        for (tp, from) in tps {
            let Some(w) = workers.get_mut(&tp) else {
                continue;
            };
            consumer.pause(&tp)?;
            *epochs += 1;
            w.seek_to = None;
            w.epoch = *epochs;
            jobs.push(CatchUp {
                tp,
                from,
                epoch: w.epoch,
                tx: w.feed.clone(),
                progress: w.progress.clone(),
            });
        }
        tokio::spawn(read_journal(
            d.clone(),
            handler.clone(),
            consumer.clone(),
            jobs,
            max_batch,
            caught_tx.clone(),
            fatal_tx.clone(),
        ));
        Ok(())
    };

    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            Some(msg) = fatal_rx.recv() => {
                failure = Some(BusError::Handler(msg));
                break;
            }
            Some(ev) = rebalances.next() => match ev {
                Rebalance::Assigned(tps) => {
                    let mut fresh = Vec::new();
                    for tp in tps {
                        if !workers.contains_key(&tp) {
                            spawn(&tp, &mut workers)?;
                            fresh.push((tp, None));
                        }
                    }
                    catch_up(fresh, &mut workers, &mut epochs)?;
                }
                Rebalance::Revoked(tps) => {
                    for tp in tps {
                        if let Some(w) = workers.remove(&tp) {
                            w.task.abort();
                        }
                        parts.lock().remove(&tp);
                        crate::telemetry::lag::forget(&spec.group, &tp.0, tp.1);
                        emit::prefetched(&spec.group, &tp.0, tp.1, 0);
                    }
                }
            },
            Some((tp, from)) = gaps_rx.recv() => {
                // The cluster dropped records before one its worker
                // fetched: read them from the journal.
                catch_up(vec![(tp, Some(from))], &mut workers, &mut epochs)?;
            }
            Some((tp, to, epoch)) = caught_rx.recv() => {
                // The journal was read up to `to`: fetch from the cluster
                // after it.
                if let Some(w) = workers.get_mut(&tp)
                    && w.epoch == epoch
                {
                    w.seek_to = Some(to);
                    go_live(&consumer, &tp, w)?;
                }
            }
            // The main queue serves the member's events; every record
            // arrives on its partition's queue.
            msg = consumer.recv() => match msg {
                Ok(((topic, partition), record)) => {
                    failure = Some(BusError::Handler(format!(
                        "record {topic}/{partition}@{} arrived outside its partition's queue",
                        record.offset
                    )));
                    break;
                }
                Err(e) if e.rdkafka_error_code()
                    == Some(rdkafka::types::RDKafkaErrorCode::InconsistentGroupProtocol) =>
                {
                    if !told_protocol {
                        told_protocol = true;
                        tracing::warn!(
                            group = %spec.group,
                            "another member of this group rebalances eagerly (an earlier \
                             release, or another partition.assignment.strategy): this member \
                             waits, and takes partitions once the last such member leaves \
                             (see the README's note on upgrading a running group)"
                        );
                    } else {
                        tracing::debug!(group = %spec.group, error = %e, "group protocol refused");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "kafka consumer error"),
            },
            _ = tick.tick() => {
                for (tp, w) in workers.iter_mut() {
                    if w.seek_to.is_some() {
                        go_live(&consumer, tp, w)?;
                    }
                }
            }
        }
    }

    // Drain: workers finish the batch in hand.
    closing.cancel();
    let deadline = Instant::now() + spec.drain_timeout;
    let tasks: Vec<JoinHandle<()>> = workers.into_values().map(|w| w.task).collect();
    for t in tasks {
        let left = deadline.saturating_duration_since(Instant::now());
        if tokio::time::timeout(left, t).await.is_err() {
            worker_stop.cancel();
        }
    }
    worker_stop.cancel();
    // The sampler holds the consumer while it measures: wait for it (it
    // stops after the partition it is measuring), so the consumer is gone
    // when this returns (a client outliving its topics logs errors about
    // them). A broker slow to answer does not hold the shutdown up.
    sampler_stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(3), sampler).await;
    for tp in parts.lock().keys() {
        crate::telemetry::lag::forget(&spec.group, &tp.0, tp.1);
        emit::prefetched(&spec.group, &tp.0, tp.1, 0);
    }
    if let Err(e) = consumer.commit_stored() {
        // Nothing stored since the last commit is a normal outcome.
        tracing::debug!(error = %e, "final commit");
    }
    consumer.leave();
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Most kilobytes librdkafka prefetches per partition.
const PREFETCH_KBYTES: u32 = 4096;

/// Reads partitions from the embedded log's journal into their workers
/// (waiting while a worker's feed is full), from where each was asked to
/// start up to what the journal held when this began, then tells each
/// worker, and the loop, where the cluster's records take over. One pass
/// over the journal serves every partition of `jobs`.
async fn read_journal<H: PartitionHandler + ?Sized>(
    durable: Arc<super::durable::Durable>,
    handler: Arc<H>,
    consumer: Arc<Member>,
    jobs: Vec<CatchUp>,
    max_batch: usize,
    caught: mpsc::UnboundedSender<(Tp, i64, u64)>,
    fatal: mpsc::Sender<String>,
) {
    let mut wants = HashMap::new();
    let mut into = HashMap::new();
    for job in jobs {
        let from = match job.from {
            Some(o) => o,
            None => match handler.resume_at(&job.tp.0, job.tp.1).await {
                Some(o) => o,
                None => {
                    let (c, tp) = (consumer.clone(), job.tp.clone());
                    match tokio::task::spawn_blocking(move || c.committed(&tp)).await {
                        Ok(Ok(o)) => o.unwrap_or(0),
                        Ok(Err(e)) => {
                            let _ = fatal.send(format!("reading committed offsets: {e}")).await;
                            return;
                        }
                        Err(_) => return,
                    }
                }
            },
        }
        .max(0);
        let to = durable.mark(&job.tp).unwrap_or(from).max(from);
        if from >= to {
            if job.tx.send(Feed::Live(to)).await.is_ok() {
                let _ = caught.send((job.tp, to, job.epoch));
            }
            continue;
        }
        wants.insert(job.tp.clone(), (from, to));
        into.insert(job.tp, (job.tx, job.progress, job.epoch, to));
    }
    if wants.is_empty() {
        return;
    }
    let read = tokio::task::spawn_blocking(move || {
        // Per partition, records read and not yet handed over: batches are
        // filled across the journal's frames (a frame holds what one
        // journal group held of the partition, often a few records).
        let mut pending: HashMap<Tp, Vec<Record>> = HashMap::new();
        durable.read(&wants, &mut |tp, records| {
            let Some((tx, progress, epoch, to)) = into.get(tp) else {
                return false;
            };
            let last = records.last().map_or(-1, |r| r.offset);
            let buf = pending.entry(tp.clone()).or_default();
            buf.extend(records.iter().map(Record::from_journal));
            let done = last + 1 >= *to;
            let mut sent = Ok(());
            while sent.is_ok() && (buf.len() >= max_batch || (done && !buf.is_empty())) {
                let rest = buf.split_off(buf.len().min(max_batch));
                let records = std::mem::replace(buf, rest);
                let n = records.len();
                progress.inside.fetch_add(n, Ordering::Relaxed);
                emit::consumed(&tp.0, "project", n as u64);
                let batch = Feed::Batch(Batch {
                    topic: tp.0.clone(),
                    partition: tp.1,
                    records,
                });
                // Backpressure: a full feed stops this read (as a full
                // partition queue stops the cluster's fetches) until it
                // drains.
                sent = match tx.try_send(batch) {
                    Ok(()) => Ok(()),
                    Err(mpsc::error::TrySendError::Full(batch)) => {
                        emit::paused(Some(&tp.0), 1);
                        let sent = tx.blocking_send(batch).map_err(drop);
                        emit::resumed(1);
                        sent
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => Err(()),
                };
                if sent.is_err() {
                    progress.inside.fetch_sub(n, Ordering::Relaxed);
                }
            }
            if done && sent.is_ok() {
                sent = tx.blocking_send(Feed::Live(*to)).map_err(drop);
                if sent.is_ok() {
                    let _ = caught.send((tp.clone(), *to, *epoch));
                }
            }
            if sent.is_err() || done {
                // Revoked (its worker is gone), or caught up.
                into.remove(tp);
                pending.remove(tp);
                return sent.is_ok();
            }
            true
        })
    })
    .await;
    let why = match read {
        Ok(Ok(())) => return,
        Ok(Err(e)) => e.to_string(),
        Err(e) => e.to_string(),
    };
    let _ = fatal.send(format!("reading the journal: {why}")).await;
}

/// Moves a caught-up partition's fetch to where the journal read ended and
/// fetches it again; a seek librdkafka refuses yet is tried next tick.
fn go_live(consumer: &Member, tp: &Tp, w: &mut Worker) -> Result<(), BusError> {
    let Some(to) = w.seek_to else { return Ok(()) };
    if let Err(e) = consumer.seek(tp, to) {
        tracing::debug!(topic = %tp.0, partition = tp.1, error = %e, "seek after the journal; retrying");
        return Ok(());
    }
    w.seek_to = None;
    consumer.resume(tp)
}

/// Where a partition's worker takes its batches from: its own queue of
/// records (librdkafka stops fetching the partition while the queue is
/// full, so a busy worker needs no pause), and on the embedded log its
/// feed from the journal.
struct Intake {
    tp: Tp,
    live: PartitionQueue,
    feed: mpsc::Receiver<Feed>,
    max_batch: usize,
    linger: Duration,
    /// On the embedded log: where to ask for the records the cluster
    /// dropped (its records must arrive without a gap).
    gaps: Option<mpsc::UnboundedSender<(Tp, i64)>>,
    /// On the embedded log: the records come from the journal until its
    /// feed says where the cluster's take over; the cluster's are dropped.
    catching: bool,
    /// On the embedded log, once caught up: the next offset expected from
    /// the cluster.
    next: i64,
    progress: Arc<Progress>,
    /// Records taken from the queue in one call, before `take` sees them.
    taken: Vec<Result<Record, rdkafka::error::KafkaError>>,
}

impl Intake {
    /// The next batch: from the journal, or the partition's records: what
    /// is ready, up to `max_batch`. A batch whose first record had to be
    /// waited for lingers up to `linger` for more; one whose records were
    /// already waiting (the worker was busy) goes at once. `None` once
    /// `closing` fires.
    async fn next(&mut self, closing: &CancellationToken) -> Option<Vec<Record>> {
        loop {
            if closing.is_cancelled() {
                return None;
            }
            let mut records = Vec::new();
            if !self.catching {
                self.take_ready(&mut records);
            }
            // A batch whose records were already waiting (the worker was
            // busy) goes at once; one whose first record had to be waited
            // for lingers.
            let lingers = records.is_empty();
            if lingers {
                let first = tokio::select! {
                    biased;
                    _ = closing.cancelled() => return None,
                    fed = self.feed.recv() => match fed? {
                        Feed::Batch(b) => return Some(b.records),
                        Feed::Live(to) => {
                            self.catching = false;
                            self.next = to;
                            continue;
                        }
                    },
                    r = self.live.recv(), if !self.catching => r,
                };
                self.take(first, &mut records);
            }
            let started = Instant::now();
            while records.len() < self.max_batch && !self.catching {
                if self.take_ready(&mut records) > 0 {
                    continue;
                }
                if !lingers {
                    break;
                }
                let left = self.linger.saturating_sub(started.elapsed());
                if left.is_zero() {
                    break;
                }
                match tokio::time::timeout(left, self.live.recv()).await {
                    Ok(r) => self.take(r, &mut records),
                    Err(_) => break,
                }
            }
            if !records.is_empty() {
                let n = records.len();
                self.progress.inside.fetch_add(n, Ordering::Relaxed);
                emit::consumed(&self.tp.0, "project", n as u64);
                return Some(records);
            }
        }
    }

    /// Takes what the partition's queue holds ready, up to a whole batch,
    /// into `records` (see [`Intake::take`]); answers how many records
    /// left the queue.
    fn take_ready(&mut self, records: &mut Vec<Record>) -> usize {
        let mut taken = std::mem::take(&mut self.taken);
        let n = self
            .live
            .take_ready(self.max_batch.saturating_sub(records.len()), &mut taken);
        for r in taken.drain(..) {
            self.take(r, records);
        }
        self.taken = taken;
        n
    }

    /// Adds a record of the partition's queue to `records`; on the embedded
    /// log only the next one expected (older ones were read from the
    /// journal; a newer one means the cluster dropped some).
    fn take(&mut self, r: Result<Record, rdkafka::error::KafkaError>, records: &mut Vec<Record>) {
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(topic = %self.tp.0, partition = self.tp.1, error = %e, "kafka consumer error");
                return;
            }
        };
        if let Some(gaps) = &self.gaps {
            if self.catching || r.offset < self.next {
                return;
            }
            if r.offset > self.next {
                self.catching = true;
                let _ = gaps.send((self.tp.clone(), self.next));
                return;
            }
            self.next += 1;
        }
        records.push(r);
    }
}

async fn worker<H: PartitionHandler + ?Sized>(
    handler: Arc<H>,
    consumer: Arc<Member>,
    mut intake: Intake,
    closing: CancellationToken,
    stop: CancellationToken,
    fatal: mpsc::Sender<String>,
) {
    let tp = intake.tp.clone();
    let progress = intake.progress.clone();
    handler.assigned(&tp.0, tp.1).await;
    while let Some(records) = intake.next(&closing).await {
        let Some(last) = records.last().map(|r| r.offset) else {
            continue;
        };
        let batch = Batch {
            topic: tp.0.clone(),
            partition: tp.1,
            records,
        };
        let mut backoff = Duration::from_millis(100);
        // Every log line of the batch (dead letters, retries) says where
        // in the log it was.
        let span = tracing::info_span!("batch", topic = %tp.0, partition = tp.1,
            first = batch.records.first().map_or(last, |r| r.offset), last);
        loop {
            match tracing::Instrument::instrument(handler.handle(&batch), span.clone()).await {
                Ok(()) => break,
                Err(e) if e.retriable => {
                    tracing::warn!(topic = %tp.0, partition = tp.1, error = %e, ?backoff, "retrying batch");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
                Err(e) => {
                    tracing::error!(topic = %tp.0, partition = tp.1, error = %e, "batch failed permanently");
                    let _ = fatal.send(e.message).await;
                    return;
                }
            }
        }
        // The effects are durable: only now may the offset move (librdkafka
        // commits `last + 1`).
        if let Err(e) = consumer.store(&tp, last) {
            tracing::debug!(error = %e, "store_offset (partition revoked?)");
        }
        progress.next.store(last + 1, Ordering::Relaxed);
        progress
            .inside
            .fetch_sub(batch.records.len(), Ordering::Relaxed);
    }
}

/// Measures each partition's lag every [`LAG_EVERY`]: the head minus the
/// next offset to apply. When nothing is inside the process, the consumer's
/// position counts instead: it has moved past transaction markers, which
/// are never delivered (so a transactional topic reads 0 when idle).
async fn sample_lag(consumer: Arc<Member>, group: String, parts: Parts, stop: CancellationToken) {
    let mut tick = tokio::time::interval(LAG_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let snapshot: Vec<(Tp, Arc<Progress>)> = parts
            .lock()
            .iter()
            .map(|(tp, p)| (tp.clone(), p.clone()))
            .collect();
        if snapshot.is_empty() {
            continue;
        }
        let c = consumer.clone();
        let tps: Vec<Tp> = snapshot.iter().map(|(tp, _)| tp.clone()).collect();
        let halt = stop.clone();
        let measured =
            tokio::task::spawn_blocking(move || c.positions_and_heads(&tps, &halt)).await;
        let Ok(measured) = measured else { continue };
        for ((pos, head), (tp, progress)) in measured.into_iter().zip(&snapshot) {
            let Some(head) = head else { continue };
            let next = progress.next.load(Ordering::Relaxed);
            let idle = progress.inside.load(Ordering::Relaxed) == 0;
            let done = match pos {
                Some(p) if idle => p.max(next),
                _ => next,
            };
            // Before the first record, an empty partition has no lag.
            let lag = if done < 0 {
                head.max(0)
            } else {
                (head - done).max(0)
            };
            crate::telemetry::lag::record(&group, &tp.0, tp.1, head, lag);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Record;

    #[test]
    fn a_record_keeps_its_parts_apart() {
        let headers = [
            ("type", &b"poll.voted"[..]),
            ("empty", b""),
            ("type", b"again"),
        ];
        for key in [None, Some(&b""[..]), Some(b"k1")] {
            for payload in [None, Some(&b""[..]), Some(b"{\"a\":1}")] {
                for hs in [&headers[..], &[]] {
                    let r = Record::new(7, key, hs.iter().copied(), payload);
                    let what = format!("{key:?} {payload:?} {hs:?}");
                    assert_eq!(r.offset, 7, "{what}");
                    assert_eq!(r.key(), key, "{what}");
                    assert_eq!(r.payload(), payload, "{what}");
                    assert_eq!(r.header_pairs().collect::<Vec<_>>(), hs, "{what}");
                    // The first of two headers of one name.
                    let first = hs.first().map(|(_, v)| *v);
                    assert_eq!(r.header("type"), first, "{what}");
                    assert_eq!(r.header("missing"), None, "{what}");
                    // Past the first header; present but empty; a name's
                    // prefix is another name.
                    let empty = (!hs.is_empty()).then_some(&b""[..]);
                    assert_eq!(r.header("empty"), empty, "{what}");
                    assert_eq!(r.header("typ"), None, "{what}");
                }
            }
        }
    }
}
