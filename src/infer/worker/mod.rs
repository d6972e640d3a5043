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

mod batcher;
mod commit;
mod decode;
mod forward;
mod lease;
mod ledger;
mod shared;
mod store;

pub use shared::output_key;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use rdkafka::error::KafkaError;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio_util::sync::CancellationToken;

use self::commit::{Committer, ToCommitter};
use self::shared::Shared;
use super::registry::{Loaded, Registry};
use crate::blob::BlobStore;
use crate::bus::{BusError, Member, MemberSpec, Offsets, Producer, Rebalance, Record, Tp};
use crate::config::{InferConfig, KafkaConfig, Transactions, UploadsConfig};
use crate::event::{Topic, UploadReceived};
use crate::image::codec::{Caps, Prepared};
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
    /// This worker's name (its transactional id) could not be leased.
    #[error("worker name: {0}")]
    Lease(String),
}

impl From<KafkaError> for InferError {
    fn from(e: KafkaError) -> Self {
        InferError::Bus(BusError::Kafka(e))
    }
}

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
        let (consumer, mut rebalances) = Member::join(
            &self.kafka,
            &self.brokers,
            &MemberSpec {
                group: self.kafka.group(&self.group),
                topics: vec![self.kafka.topic(Topic::Uploads)],
                offsets: Offsets::Explicit,
                prefetch_kbytes: 4096,
                partition_queues: false,
                prefetch_records: 0,
            },
        )?;
        let consumer = Arc::new(consumer);
        let lease = lease::acquire(&self.kafka.group(GROUP), &self.cfg.instance)?;
        let out =
            commit::out_producer(&self.kafka, &self.brokers, transactional, &lease.name).await?;
        let (commit_tx, commit_rx) = std_mpsc::channel();
        // Revocations wait for the committer (see `Member::on_revoke`): a
        // commit racing a rebalance in which this worker gets the same
        // partition back duplicated a completion in the chaos test.
        {
            let tx = parking_lot::Mutex::new(commit_tx.clone());
            consumer.on_revoke(Box::new(move |tps| {
                let (ack_tx, ack_rx) = std_mpsc::sync_channel(1);
                let sent = tx
                    .lock()
                    .send(ToCommitter::Revoking(tps.to_vec(), ack_tx))
                    .is_ok();
                if sent && ack_rx.recv_timeout(Duration::from_secs(60)).is_err() {
                    tracing::warn!("the committer did not finish before a revocation");
                }
            }));
        }
        let fatal = CancellationToken::new();
        let committer = {
            let c = Committer::new(
                consumer.clone(),
                out,
                transactional,
                Duration::from_millis(self.cfg.commit_interval_ms.max(1)),
                Duration::from_millis(self.cfg.commit_delay_ms),
            );
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
        let batcher = tokio::spawn(batcher::batcher(shared.clone(), ready_rx, batch_tx));
        let model_thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("infer-model".into())
                .spawn(move || forward::model_loop(&shared, batch_rx, inferred_tx))
                .map_err(|e| InferError::Commit(e.to_string()))?
        };
        let storer = tokio::spawn(store::storer(shared.clone(), inferred_rx));

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
                        emit::paused(None, consumer.pause_all()?);
                        let p = tokio::select! {
                            _ = shutdown.cancelled() => None,
                            _ = fatal.cancelled() => None,
                            p = in_flight.clone().acquire_owned() => p.ok(),
                        };
                        if let Ok(n) = consumer.resume_all() {
                            emit::resumed(n);
                        }
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
                Some(ev) = rebalances.next() => match ev {
                    Rebalance::Assigned(tps) => for tp in tps {
                        next_gen += 1;
                        generations.insert(tp.clone(), next_gen);
                        let _ = commit_tx.send(ToCommitter::Assigned(tp, next_gen));
                    },
                    Rebalance::Revoked(tps) => for tp in tps {
                        generations.remove(&tp);
                        let _ = commit_tx.send(ToCommitter::Revoked(tp));
                    },
                },
                m = consumer.recv() => match m {
                    Ok((tp, rec)) => {
                        let generation = *generations.entry(tp.clone()).or_insert_with(|| {
                            next_gen += 1;
                            next_gen
                        });
                        emit::consumed(&tp.0, STAGE, 1);
                        let _ = commit_tx.send(ToCommitter::Register(tp.clone(), generation, rec.offset));
                        let job = Job {
                            tp,
                            generation,
                            rec,
                            consumed: Instant::now(),
                            permit: permit.take().expect("a permit is held"),
                        };
                        tokio::spawn(decode::fetch_and_decode(shared.clone(), job, ready_tx.clone()));
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
        consumer.leave();
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
