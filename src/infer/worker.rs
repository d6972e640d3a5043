//! The inference worker (`atelier infer`): a consumer group on the uploads
//! topic whose records flow through pipelined stages joined by bounded
//! queues, and a committer that makes each upload's outcome and the
//! consumer offsets durable together.
//!
//! ```text
//! consumer ──▶ fetch+decode (tasks) ──▶ batcher ──▶ model thread ──▶ encode+store (tasks)
//!    │  ▲            │ failed                (style, version, shape bucket)        │
//!    │  └ pause when │                                                          done │
//!    │    in-flight  ▼                                                               ▼
//!    └─ register ─▶ committer: per partition, the finished prefix of offsets, in one
//!                   transaction with its completions, DLQ records and offsets
//! ```
//!
//! - **Bounded**: at most `infer.in_flight` uploads between consume and
//!   commit; when that many are in flight the partitions are paused (not
//!   buffered), and resumed as commits free room.
//! - **Batched**: images are grouped by style, model version and shape
//!   bucket; a batch runs when full (`max_batch`, `max_batch_pixels`) or
//!   when its oldest image waited `max_delay_ms`. The model runs on its own
//!   thread with libtorch's intra-op pool, never on the async runtime.
//! - **Exactly once**: the committer takes, per partition, the contiguous
//!   prefix of finished offsets and, on real Kafka, produces their
//!   completions (and dead letters) and commits the offsets in one
//!   transaction. A killed worker's open transaction is aborted when its
//!   successor (same `infer.instance`) starts; the uncommitted uploads run
//!   again and overwrite their deterministic output keys. Read-committed
//!   consumers see exactly one completion or failure per upload.
//!   `StyleTransferStarted` is informational and sent at least once, outside
//!   transactions (the card merge makes repeats harmless).
//! - **Never stuck**: transient failures (S3, model) are retried with
//!   capped backoff; a corrupt image, a missing input or a failure that
//!   outlasts its retries becomes `StyleTransferFailed` plus a DLQ record,
//!   and the partition moves on.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::model::Pixels;
use super::publish::system_principal;
use super::registry::{Loaded, Registry};
use crate::blob::{BlobError, BlobStore};
use crate::bus::consumer::{Ctx, Rebalanced};
use crate::bus::{BusError, Producer, Record, client_config};
use crate::config::{InferConfig, KafkaConfig, Transactions, UploadsConfig};
use crate::dlq;
use crate::event::{
    Event, EventData, EventId, StyleTransferCompleted, StyleTransferFailed, StyleTransferStarted,
    Timings, Topic, TransferRef, UploadReceived, wire,
};
use crate::image::codec::{self, Caps, Prepared};
use crate::telemetry::emit;

/// The DLQ stage name of this worker.
pub const STAGE: &str = "infer";

/// The consumer group's name (before the namespace).
pub const GROUP: &str = "infer";

/// Why the worker stopped.
#[derive(Debug, thiserror::Error)]
pub enum InferError {
    /// Kafka failed (or fenced this worker: another one took over).
    #[error(transparent)]
    Bus(#[from] BusError),
    /// The committer failed for good.
    #[error("committer: {0}")]
    Commit(String),
}

impl From<KafkaError> for InferError {
    fn from(e: KafkaError) -> Self {
        InferError::Bus(BusError::Kafka(e))
    }
}

type Tp = (String, i32);

/// How long a full in-flight window may last before the partitions are
/// paused. A pause and resume restarts the fetch (measured ~0.7 s a cycle
/// on the mock cluster: one upload at a time ran at 1 image/s with an
/// immediate pause, against 3.6 without); meanwhile librdkafka's prefetch
/// stays bounded by `queued.max.messages.kbytes`.
const PAUSE_GRACE: Duration = Duration::from_millis(500);

/// One consumed upload record on its way through the stages.
struct Job {
    tp: Tp,
    generation: u64,
    rec: Record,
    consumed: Instant,
    permit: OwnedSemaphorePermit,
}

/// A decoded upload, waiting for its batch.
struct Ready {
    job: Job,
    upload: UploadReceived,
    model: Arc<Loaded>,
    image: Prepared,
    decode_ms: u64,
    ready_at: Instant,
}

/// An upload the model ran on.
struct Inferred {
    ready: Ready,
    pixels: Vec<u8>,
    queue_ms: u64,
    infer_ms: u64,
    batch: u32,
}

/// A record the committer appends with the offsets.
struct Out {
    topic: String,
    key: Option<Vec<u8>>,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

/// The outcome of one upload record.
struct Done {
    tp: Tp,
    generation: u64,
    offset: i64,
    outs: Vec<Out>,
    _permit: OwnedSemaphorePermit,
}

enum ToCommitter {
    Assigned(Tp, u64),
    Revoked(Tp),
    Register(Tp, u64, i64),
    Done(Done),
    Stop,
}

/// What the stages share.
struct Shared {
    cfg: InferConfig,
    caps: Caps,
    kafka: KafkaConfig,
    registry: Arc<Registry>,
    blobs: Arc<dyn BlobStore>,
    started: Producer,
    commit: std_mpsc::Sender<ToCommitter>,
    fetch: Semaphore,
    store: Semaphore,
}

/// An inference worker, ready to run.
#[derive(Clone, Debug)]
pub struct InferWorker {
    /// Tuning.
    pub cfg: InferConfig,
    /// Image caps (the edge's, checked again before decoding).
    pub uploads: UploadsConfig,
    /// The log.
    pub kafka: KafkaConfig,
    /// Bootstrap servers.
    pub brokers: String,
    /// Loaded models.
    pub registry: Arc<Registry>,
    /// Inputs and outputs.
    pub blobs: Arc<dyn BlobStore>,
    /// True once the models topic has been read (and its models loaded).
    pub models_ready: watch::Receiver<bool>,
    /// Consumer group (before the namespace prefix): [`GROUP`], or a later
    /// generation's after `replay --stage infer`.
    pub group: String,
}

impl InferWorker {
    /// Whether completions and offsets commit in one transaction.
    pub fn transactional(&self) -> bool {
        match self.cfg.transactions {
            Transactions::On => true,
            Transactions::Off => false,
            Transactions::Auto => !self.kafka.is_embedded(),
        }
    }

    /// The batch size: configured, or 8 on CUDA and 1 on the CPU, where
    /// larger batches measured slower (`atelier bench infer`) and hold
    /// every image's activations at once.
    pub fn max_batch(&self) -> usize {
        match self.cfg.max_batch {
            0 if self.registry.engine().device().starts_with("cuda") => 8,
            0 => 1,
            n => n,
        }
    }

    /// Runs until `shutdown` (then drains what is in flight, briefly) or a
    /// fatal error.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), InferError> {
        self.cfg.max_batch = self.max_batch();
        // Models first: an upload must not fail for a model still loading.
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            r = self.models_ready.wait_for(|r| *r) => { let _ = r; }
        }
        let transactional = self.transactional();
        let mut base = client_config(&self.kafka, &self.brokers);
        if base.get("session.timeout.ms").is_none() {
            base.set("session.timeout.ms", "6000");
        }
        let mut ccfg = base.clone();
        ccfg.set("group.id", self.kafka.group(&self.group))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_committed")
            .set("queued.max.messages.kbytes", "4096");
        if self.kafka.is_embedded() && ccfg.get("fetch.wait.max.ms").is_none() {
            ccfg.set("fetch.wait.max.ms", "10");
        }
        let (rb_tx, mut rb_rx) = mpsc::unbounded_channel();
        let consumer: Arc<StreamConsumer<Ctx>> =
            Arc::new(ccfg.create_with_context(Ctx { tx: rb_tx })?);
        consumer.subscribe(&[&self.kafka.topic(Topic::Uploads)])?;

        let out = out_producer(&base, &self.kafka, transactional, &self.cfg.instance)?;
        let (commit_tx, commit_rx) = std_mpsc::channel();
        let fatal = CancellationToken::new();
        let committer = {
            let c = Committer {
                consumer: consumer.clone(),
                out,
                transactional,
                interval: Duration::from_millis(self.cfg.commit_interval_ms.max(1)),
                delay: Duration::from_millis(self.cfg.commit_delay_ms),
                parts: HashMap::new(),
            };
            let fatal = fatal.clone();
            std::thread::Builder::new()
                .name("infer-commit".into())
                .spawn(move || {
                    let r = c.run(commit_rx);
                    if r.is_err() {
                        fatal.cancel();
                    }
                    r
                })
                .map_err(|e| InferError::Commit(e.to_string()))?
        };

        let shared = Arc::new(Shared {
            caps: Caps::from(&self.uploads),
            kafka: self.kafka.clone(),
            registry: self.registry.clone(),
            blobs: self.blobs.clone(),
            started: Producer::new(&self.kafka, &self.brokers, "atelier/infer")?,
            commit: commit_tx.clone(),
            fetch: Semaphore::new(self.cfg.fetch_concurrency.max(1)),
            store: Semaphore::new(self.cfg.store_concurrency.max(1)),
            cfg: self.cfg.clone(),
        });
        let (ready_tx, ready_rx) = mpsc::channel::<Ready>(self.cfg.in_flight.max(1));
        let (batch_tx, batch_rx) = mpsc::channel::<Vec<Ready>>(1);
        let (inferred_tx, inferred_rx) = mpsc::channel::<Inferred>(self.cfg.in_flight.max(1));
        let batcher = tokio::spawn(batcher(shared.clone(), ready_rx, batch_tx));
        let model_thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("infer-model".into())
                .spawn(move || model_loop(&shared, batch_rx, inferred_tx))
                .map_err(|e| InferError::Commit(e.to_string()))?
        };
        let storer = tokio::spawn(storer(shared.clone(), inferred_rx));

        let in_flight = Arc::new(Semaphore::new(self.cfg.in_flight.max(1)));
        let mut generations: HashMap<Tp, u64> = HashMap::new();
        let mut next_gen = 0u64;
        let mut permit: Option<OwnedSemaphorePermit> = None;
        let mut failure = None;
        loop {
            if permit.is_none() {
                let quick = tokio::time::timeout(PAUSE_GRACE, in_flight.clone().acquire_owned());
                permit = match quick.await {
                    Ok(Ok(p)) => Some(p),
                    Ok(Err(_)) => break,
                    Err(_) => {
                        // Full for a while: stop fetching rather than buffer.
                        let assigned = consumer.assignment()?;
                        consumer.pause(&assigned)?;
                        emit::paused(None, assigned.count());
                        let p = tokio::select! {
                            _ = shutdown.cancelled() => None,
                            _ = fatal.cancelled() => None,
                            p = in_flight.clone().acquire_owned() => p.ok(),
                        };
                        let _ = consumer.resume(&assigned);
                        emit::resumed(assigned.count());
                        match p {
                            Some(p) => Some(p),
                            None => break,
                        }
                    }
                };
            }
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = fatal.cancelled() => break,
                Some(ev) = rb_rx.recv() => match ev {
                    Rebalanced::Assigned(tps) => for tp in tps {
                        next_gen += 1;
                        generations.insert(tp.clone(), next_gen);
                        let _ = commit_tx.send(ToCommitter::Assigned(tp, next_gen));
                    },
                    Rebalanced::Revoked(tps) => for tp in tps {
                        generations.remove(&tp);
                        let _ = commit_tx.send(ToCommitter::Revoked(tp));
                    },
                },
                m = consumer.recv() => match m {
                    Ok(m) => {
                        let tp = (m.topic().to_owned(), m.partition());
                        let generation = *generations.entry(tp.clone()).or_insert_with(|| {
                            next_gen += 1;
                            next_gen
                        });
                        let rec = Record::of(&m);
                        emit::consumed(&tp.0, STAGE, 1);
                        let _ = commit_tx.send(ToCommitter::Register(tp.clone(), generation, rec.offset));
                        let job = Job {
                            tp,
                            generation,
                            rec,
                            consumed: Instant::now(),
                            permit: permit.take().expect("a permit is held"),
                        };
                        tokio::spawn(fetch_and_decode(shared.clone(), job, ready_tx.clone()));
                    }
                    Err(e) => tracing::warn!(error = %e, "kafka consumer error"),
                },
            }
        }
        if fatal.is_cancelled() {
            failure = Some(InferError::Commit("the committer stopped".into()));
        }
        drop(permit);

        // Drain: everything in flight is committed when all permits are back.
        let total = u32::try_from(self.cfg.in_flight.max(1)).unwrap_or(u32::MAX);
        if failure.is_none()
            && tokio::time::timeout(Duration::from_secs(15), in_flight.acquire_many(total))
                .await
                .is_err()
        {
            tracing::warn!("inference drain timed out; uncommitted uploads will run again");
        }
        drop(ready_tx);
        let _ = commit_tx.send(ToCommitter::Stop);
        drop(commit_tx);
        drop(shared);
        batcher.abort();
        storer.abort();
        let committed = tokio::task::spawn_blocking(move || committer.join())
            .await
            .map_err(|e| InferError::Commit(e.to_string()))?;
        let _ = model_thread;
        consumer.unsubscribe();
        match committed {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(InferError::Commit("the committer panicked".into())),
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

fn out_producer(
    base: &ClientConfig,
    kafka: &KafkaConfig,
    transactional: bool,
    instance: &str,
) -> Result<FutureProducer, InferError> {
    let mut c = ClientConfig::new();
    for (k, v) in base.config_map() {
        if !crate::bus::producer::is_consumer_only(k) {
            c.set(k, v);
        }
    }
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "30000");
    if transactional {
        let instance = if instance.is_empty() {
            hostname()
        } else {
            instance.to_owned()
        };
        // Stable per worker: a restarted worker aborts its predecessor's
        // open transaction at once instead of after the timeout.
        c.set(
            "transactional.id",
            format!("{}.{instance}", kafka.group(GROUP)),
        )
        .set("transaction.timeout.ms", "20000")
        .set("message.timeout.ms", "15000");
    }
    let p: FutureProducer = c.create()?;
    if transactional {
        p.init_transactions(Duration::from_secs(30))?;
    }
    Ok(p)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "worker".into())
}

/// Retries `op` while its error is transient, with capped exponential
/// backoff; answers the last error and the attempts made.
async fn retry<T, E, F, Fut>(
    cfg: &InferConfig,
    stage: &'static str,
    mut op: F,
    transient: impl Fn(&E) -> bool,
) -> Result<T, (E, u32)>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    let attempts = cfg.attempts.max(1);
    let mut delay = Duration::from_millis(cfg.retry_base_ms.max(1));
    for attempt in 1..=attempts {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if transient(&e) && attempt < attempts => {
                emit::infer_retry(stage);
                tracing::warn!(stage, attempt, error = %e, ?delay, "transient failure; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err((e, attempt)),
        }
    }
    unreachable!("the last attempt returns")
}

fn event(data: EventData) -> Event {
    Event {
        id: EventId(uuid::Uuid::now_v7()),
        time: crate::edge::now(),
        principal: system_principal("infer"),
        data,
    }
}

fn transfer(u: &UploadReceived) -> TransferRef {
    TransferRef {
        upload_id: u.upload_id,
        session_key: u.session_key.clone(),
        slot: u.slot,
        style: u.style.clone(),
    }
}

/// The output key: next to the input (whose directory is unguessable),
/// named by style and model version, so a re-run overwrites.
pub fn output_key(u: &UploadReceived, version: &crate::event::ModelVersion) -> String {
    match u.object_key.rsplit_once('/') {
        Some((dir, _)) => format!("{dir}/{}-{version}.jpg", u.style),
        None => format!("outputs/{}/{}-{version}.jpg", u.upload_id, u.style),
    }
}

impl Shared {
    fn out_event(&self, e: &Event) -> Out {
        let w = wire::encode(e, "atelier/infer");
        Out {
            topic: self.kafka.topic(w.topic),
            key: Some(w.key.into_bytes()),
            headers: w.headers,
            body: w.body,
        }
    }

    fn out_dlq(&self, job: &Job, error: &str, attempts: u32) -> Out {
        emit::dead_letter(STAGE);
        tracing::warn!(
            offset = job.rec.offset,
            partition = job.tp.1,
            error,
            "upload to the DLQ"
        );
        Out {
            topic: self.kafka.topic(Topic::Dlq),
            key: job.rec.key.clone(),
            headers: dlq::headers(STAGE, &job.tp.0, job.tp.1, &job.rec, error, attempts),
            body: job.rec.payload.clone().unwrap_or_default(),
        }
    }

    fn done(&self, job: Job, outs: Vec<Out>) {
        let _ = self.commit.send(ToCommitter::Done(Done {
            tp: job.tp,
            generation: job.generation,
            offset: job.rec.offset,
            outs,
            _permit: job.permit,
        }));
    }

    /// The upload failed: a failure event for its card, and a dead letter.
    fn fail(
        &self,
        job: Job,
        upload: &UploadReceived,
        reason: String,
        retriable: bool,
        attempts: u32,
    ) {
        emit::infer_done("failed");
        let failed = self.out_event(&event(EventData::StyleTransferFailed(
            StyleTransferFailed {
                upload: transfer(upload),
                reason: reason.clone(),
                retriable,
            },
        )));
        let dead = self.out_dlq(&job, &reason, attempts);
        self.done(job, vec![failed, dead]);
    }
}

async fn fetch_and_decode(sh: Arc<Shared>, job: Job, ready: mpsc::Sender<Ready>) {
    let Ok(_slot) = sh.fetch.acquire().await else {
        return;
    };
    let t0 = Instant::now();
    let ev = match wire::decode(
        job.rec.header_pairs(),
        job.rec.payload.as_deref().unwrap_or_default(),
        Some(Topic::Uploads),
    ) {
        Ok(ev) => ev,
        Err(e) => {
            let dead = sh.out_dlq(&job, &format!("undecodable upload event: {e}"), 1);
            return sh.done(job, vec![dead]);
        }
    };
    let EventData::UploadReceived(upload) = ev.data else {
        let dead = sh.out_dlq(&job, "not an UploadReceived event", 1);
        return sh.done(job, vec![dead]);
    };
    // The model (one loaded copy, shared): it may be loading still.
    let model = retry(
        &sh.cfg,
        "model",
        || async {
            sh.registry
                .get(&upload.style)
                .ok_or_else(|| format!("no model for style {:?}", upload.style.as_str()))
        },
        |_| true,
    )
    .await;
    let model = match model {
        Ok(m) => m,
        Err((reason, attempts)) => return sh.fail(job, &upload, reason, true, attempts),
    };
    let started = event(EventData::StyleTransferStarted(StyleTransferStarted {
        upload: transfer(&upload),
        model_version: model.version.clone(),
    }));
    {
        let p = sh.started.clone();
        tokio::spawn(async move {
            if let Err(e) = p.send(&started).await {
                tracing::debug!(error = %e, "StyleTransferStarted not sent");
            }
        });
    }
    let bytes = retry(
        &sh.cfg,
        "fetch",
        || sh.blobs.get(&upload.object_key),
        BlobError::is_retriable,
    )
    .await;
    let bytes: Bytes = match bytes {
        Ok(b) => b,
        Err((e, attempts)) => {
            let retriable = e.is_retriable();
            return sh.fail(job, &upload, format!("input: {e}"), retriable, attempts);
        }
    };
    let (caps, max_side, bucket) = (sh.caps, sh.cfg.max_side, sh.cfg.bucket);
    let decoded = tokio::task::spawn_blocking(move || {
        codec::decode(&bytes, caps).map(|img| codec::prepare(img, max_side, bucket))
    })
    .await;
    let image = match decoded {
        Ok(Ok(img)) => img,
        Ok(Err(e)) => return sh.fail(job, &upload, e.0, false, 1),
        Err(e) => return sh.fail(job, &upload, format!("decoder crashed: {e}"), false, 1),
    };
    let decode_ms = t0.elapsed().as_millis() as u64;
    emit::infer_stage("decode", t0.elapsed());
    let r = Ready {
        job,
        upload,
        model,
        image,
        decode_ms,
        ready_at: Instant::now(),
    };
    if let Err(mpsc::error::SendError(r)) = ready.send(r).await {
        // Shutting down: the upload stays uncommitted and runs again.
        drop(r);
    }
}

type BatchKey = (String, String, u32, u32);

/// Groups ready images by (style, version, bucket) and hands a batch to the
/// model thread when it is full or its oldest image has waited long enough.
async fn batcher(sh: Arc<Shared>, mut rx: mpsc::Receiver<Ready>, tx: mpsc::Sender<Vec<Ready>>) {
    let max_delay = Duration::from_millis(sh.cfg.max_delay_ms);
    let max_batch = sh.cfg.max_batch.max(1);
    let max_pixels = sh.cfg.max_batch_pixels.max(1);
    let mut groups: BTreeMap<BatchKey, (Instant, Vec<Ready>)> = BTreeMap::new();
    loop {
        let deadline = groups.values().map(|(t, _)| *t + max_delay).min();
        let next = tokio::select! {
            r = rx.recv() => match r {
                Some(r) => Some(r),
                None => return,
            },
            _ = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d.into()).await,
                    None => std::future::pending().await,
                }
            } => None,
        };
        let mut full = Vec::new();
        if let Some(r) = next {
            let key = (
                r.model.style.to_string(),
                r.model.version.to_string(),
                r.image.bucket_w,
                r.image.bucket_h,
            );
            let px = u64::from(r.image.bucket_w) * u64::from(r.image.bucket_h);
            let g = groups
                .entry(key.clone())
                .or_insert_with(|| (Instant::now(), Vec::new()));
            g.1.push(r);
            if g.1.len() >= max_batch || px * (g.1.len() as u64 + 1) > max_pixels {
                full.push(key);
            }
        }
        let now = Instant::now();
        full.extend(
            groups
                .iter()
                .filter(|(_, (t, _))| now >= *t + max_delay)
                .map(|(k, _)| k.clone()),
        );
        for key in full {
            if let Some((_, batch)) = groups.remove(&key)
                && tx.send(batch).await.is_err()
            {
                return;
            }
        }
    }
}

/// The model thread: runs batches, one at a time, with libtorch's own
/// intra-op threads; transient model errors are retried, others fail the
/// batch's uploads.
fn model_loop(sh: &Shared, mut rx: mpsc::Receiver<Vec<Ready>>, tx: mpsc::Sender<Inferred>) {
    while let Some(batch) = rx.blocking_recv() {
        let start = Instant::now();
        let first = &batch[0];
        let (h, w) = (first.image.bucket_h, first.image.bucket_w);
        let model = first.model.clone();
        let mut data = Vec::with_capacity(batch.len() * (h * w * 3) as usize);
        for r in &batch {
            data.extend_from_slice(&r.image.pixels);
        }
        let input = Pixels {
            n: batch.len(),
            height: h,
            width: w,
            data: &data,
        };
        let mut delay = Duration::from_millis(sh.cfg.retry_base_ms.max(1));
        let mut attempts = 0;
        let result = loop {
            attempts += 1;
            match model.model.run(input) {
                Err(e) if e.retriable && attempts < sh.cfg.attempts.max(1) => {
                    emit::infer_retry("model");
                    tracing::warn!(error = %e, ?delay, "model failed; retrying");
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                r => break r,
            }
        };
        let elapsed = start.elapsed();
        emit::infer_batch(model.style.to_string(), batch.len(), elapsed);
        let infer_ms = elapsed.as_millis() as u64 / batch.len() as u64;
        let size = batch.len() as u32;
        match result {
            Ok(out) => {
                let per = (h * w * 3) as usize;
                for (i, ready) in batch.into_iter().enumerate() {
                    let queue_ms =
                        start.saturating_duration_since(ready.ready_at).as_millis() as u64;
                    emit::infer_stage("queue", Duration::from_millis(queue_ms));
                    let item = Inferred {
                        pixels: out[i * per..(i + 1) * per].to_vec(),
                        ready,
                        queue_ms,
                        infer_ms,
                        batch: size,
                    };
                    if tx.blocking_send(item).is_err() {
                        return;
                    }
                }
            }
            Err(e) => {
                for r in batch {
                    sh.fail(
                        r.job,
                        &r.upload,
                        format!("model: {}", e.message),
                        e.retriable,
                        attempts,
                    );
                }
            }
        }
    }
}

async fn storer(sh: Arc<Shared>, mut rx: mpsc::Receiver<Inferred>) {
    while let Some(item) = rx.recv().await {
        tokio::spawn(encode_and_store(sh.clone(), item));
    }
}

async fn encode_and_store(sh: Arc<Shared>, item: Inferred) {
    let Ok(_slot) = sh.store.acquire().await else {
        return;
    };
    let t0 = Instant::now();
    let Inferred {
        ready,
        pixels,
        queue_ms,
        infer_ms,
        batch,
    } = item;
    let img = &ready.image;
    let (bw, w, h, q) = (img.bucket_w, img.width, img.height, sh.cfg.jpeg_quality);
    let encoded = tokio::task::spawn_blocking(move || {
        codec::encode_jpeg(&codec::crop(&pixels, bw, w, h), w, h, q)
    })
    .await;
    let jpeg = match encoded {
        Ok(Ok(j)) => Bytes::from(j),
        Ok(Err(e)) => return sh.fail(ready.job, &ready.upload, e.0, false, 1),
        Err(e) => {
            return sh.fail(
                ready.job,
                &ready.upload,
                format!("encoder crashed: {e}"),
                false,
                1,
            );
        }
    };
    let key = output_key(&ready.upload, &ready.model.version);
    let stored = retry(
        &sh.cfg,
        "store",
        || sh.blobs.put(&key, jpeg.clone(), "image/jpeg"),
        BlobError::is_retriable,
    )
    .await;
    if let Err((e, attempts)) = stored {
        let retriable = e.is_retriable();
        return sh.fail(
            ready.job,
            &ready.upload,
            format!("output: {e}"),
            retriable,
            attempts,
        );
    }
    let encode_ms = t0.elapsed().as_millis() as u64;
    emit::infer_stage("encode", t0.elapsed());
    emit::infer_done("completed");
    let completed = sh.out_event(&event(EventData::StyleTransferCompleted(
        StyleTransferCompleted {
            upload: transfer(&ready.upload),
            output_key: key,
            model_version: ready.model.version.clone(),
            timings: Timings {
                queue_ms,
                decode_ms: ready.decode_ms,
                infer_ms,
                encode_ms,
                batch,
            },
        },
    )));
    tracing::debug!(
        upload = %ready.upload.upload_id,
        total_ms = ready.job.consumed.elapsed().as_millis() as u64,
        "stylized"
    );
    sh.done(ready.job, vec![completed]);
}

struct PartState {
    generation: u64,
    /// Registered offsets; `Some` once finished.
    offsets: BTreeMap<i64, Option<Done>>,
}

/// Owns the outcome producer: commits finished prefixes of partitions,
/// with their records, in one transaction (or, without transactions,
/// records first and offsets after).
struct Committer {
    consumer: Arc<StreamConsumer<Ctx>>,
    out: FutureProducer,
    transactional: bool,
    interval: Duration,
    delay: Duration,
    parts: HashMap<Tp, PartState>,
}

impl Committer {
    fn run(mut self, rx: std_mpsc::Receiver<ToCommitter>) -> Result<(), InferError> {
        // Commit as soon as a partition has a finished prefix, but at most
        // once per interval (each commit is a transaction: a few round
        // trips), and block without a timer while nothing is ready.
        let mut last = Instant::now() - self.interval;
        loop {
            let msg = if self.ready() {
                let wait = (last + self.interval).saturating_duration_since(Instant::now());
                match rx.recv_timeout(wait) {
                    Ok(m) => Some(m),
                    Err(std_mpsc::RecvTimeoutError::Timeout) => None,
                    Err(std_mpsc::RecvTimeoutError::Disconnected) => Some(ToCommitter::Stop),
                }
            } else {
                Some(rx.recv().unwrap_or(ToCommitter::Stop))
            };
            match msg {
                Some(ToCommitter::Stop) => return self.commit(),
                Some(m) => self.apply(m),
                None => {}
            }
            if self.ready() && Instant::now() >= last + self.interval {
                self.commit()?;
                last = Instant::now();
            }
        }
    }

    /// Whether some partition's lowest registered offset is finished.
    fn ready(&self) -> bool {
        self.parts.values().any(|p| {
            p.offsets
                .first_key_value()
                .is_some_and(|(_, d)| d.is_some())
        })
    }

    fn apply(&mut self, msg: ToCommitter) {
        match msg {
            ToCommitter::Assigned(tp, generation) => {
                self.parts.insert(
                    tp,
                    PartState {
                        generation,
                        offsets: BTreeMap::new(),
                    },
                );
            }
            ToCommitter::Revoked(tp) => {
                // Unfinished work of a lost partition is its next owner's.
                self.parts.remove(&tp);
            }
            ToCommitter::Register(tp, generation, offset) => {
                let p = self.parts.entry(tp).or_insert_with(|| PartState {
                    generation,
                    offsets: BTreeMap::new(),
                });
                if p.generation != generation {
                    p.generation = generation;
                    p.offsets.clear();
                }
                p.offsets.insert(offset, None);
            }
            ToCommitter::Done(d) => {
                if let Some(p) = self.parts.get_mut(&d.tp)
                    && p.generation == d.generation
                    && let Some(slot) = p.offsets.get_mut(&d.offset)
                {
                    *slot = Some(d);
                }
            }
            ToCommitter::Stop => {}
        }
    }

    /// Commits every partition's finished prefix; a failed commit keeps it
    /// for the next tick.
    fn commit(&mut self) -> Result<(), InferError> {
        let mut offsets = TopicPartitionList::new();
        let mut outs: Vec<&Out> = Vec::new();
        let mut taken: Vec<(Tp, i64)> = Vec::new();
        for (tp, p) in &self.parts {
            let mut last = None;
            for (&off, d) in &p.offsets {
                match d {
                    Some(d) => {
                        outs.extend(d.outs.iter());
                        last = Some(off);
                    }
                    None => break,
                }
            }
            if let Some(last) = last {
                offsets
                    .add_partition_offset(&tp.0, tp.1, Offset::Offset(last + 1))
                    .map_err(|e| InferError::Commit(e.to_string()))?;
                taken.push((tp.clone(), last));
            }
        }
        if taken.is_empty() {
            return Ok(());
        }
        let result = if self.transactional {
            self.commit_transaction(&outs, &offsets)
        } else {
            self.commit_plain(&outs, &offsets)
        };
        match result {
            Ok(()) => {
                for (tp, last) in taken {
                    if let Some(p) = self.parts.get_mut(&tp) {
                        // Dropping the entries releases their in-flight permits.
                        p.offsets = p.offsets.split_off(&(last + 1));
                    }
                }
                Ok(())
            }
            Err(Fatal::No(e)) => {
                tracing::warn!(error = %e, "commit failed; retrying");
                Ok(())
            }
            Err(Fatal::Yes(e)) => {
                tracing::error!(error = %e, "commit failed for good (fenced by another worker?)");
                Err(InferError::Commit(e))
            }
        }
    }

    fn send_all(
        &self,
        outs: &[&Out],
    ) -> Result<Vec<rdkafka::producer::DeliveryFuture>, KafkaError> {
        let mut futures = Vec::with_capacity(outs.len());
        for o in outs {
            let mut hs = OwnedHeaders::new_with_capacity(o.headers.len());
            for (k, v) in &o.headers {
                hs = hs.insert(Header {
                    key: k,
                    value: Some(v.as_slice()),
                });
            }
            let mut rec: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&o.topic)
                .headers(hs)
                .payload(o.body.as_slice());
            if let Some(k) = &o.key {
                rec = rec.key(k.as_slice());
            }
            loop {
                match self.out.send_result(rec) {
                    Ok(f) => {
                        futures.push(f);
                        break;
                    }
                    Err((
                        KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                        r,
                    )) => {
                        rec = r;
                        self.out.poll(Duration::from_millis(50));
                    }
                    Err((e, _)) => return Err(e),
                }
            }
        }
        Ok(futures)
    }

    fn commit_transaction(&self, outs: &[&Out], offsets: &TopicPartitionList) -> Result<(), Fatal> {
        let t = Duration::from_secs(30);
        let classify = |e: KafkaError| match &e {
            KafkaError::Transaction(r) if r.is_fatal() => Fatal::Yes(e.to_string()),
            _ => Fatal::No(e.to_string()),
        };
        let attempt = || -> Result<(), KafkaError> {
            self.out.begin_transaction()?;
            drop(self.send_all(outs)?);
            self.out.flush(t)?;
            std::thread::sleep(self.delay);
            let meta = self
                .consumer
                .group_metadata()
                .ok_or(KafkaError::Global(rdkafka::types::RDKafkaErrorCode::State))?;
            self.out.send_offsets_to_transaction(offsets, &meta, t)?;
            // A retriable commit error means "call commit again", never
            // "produce again": the records may already be in.
            let mut tries = 0;
            loop {
                match self.out.commit_transaction(t) {
                    Err(KafkaError::Transaction(ref r)) if r.is_retriable() && tries < 5 => {
                        tries += 1
                    }
                    r => return r,
                }
            }
        };
        match attempt() {
            Ok(()) => Ok(()),
            Err(e) => {
                let f = classify(e);
                if let Fatal::No(_) = f
                    && let Err(a) = self.out.abort_transaction(t)
                    && let Fatal::Yes(m) = classify(a)
                {
                    return Err(Fatal::Yes(m));
                }
                Err(f)
            }
        }
    }

    fn commit_plain(&self, outs: &[&Out], offsets: &TopicPartitionList) -> Result<(), Fatal> {
        let futures = self.send_all(outs).map_err(|e| Fatal::No(e.to_string()))?;
        for f in futures {
            match futures::executor::block_on(f) {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => return Err(Fatal::No(e.to_string())),
                Err(_) => return Err(Fatal::No("delivery cancelled".into())),
            }
        }
        std::thread::sleep(self.delay);
        self.consumer
            .commit(offsets, CommitMode::Sync)
            .map_err(|e| Fatal::No(e.to_string()))
    }
}

enum Fatal {
    Yes(String),
    No(String),
}
