//! The committer: a thread that owns the outcome producer and commits, per
//! partition, the finished prefix of offsets ([`Ledger`]) with the records
//! its uploads produced (completions, failures, dead letters): in one
//! transaction on real Kafka, or records first and offsets after on the
//! embedded log (whose transactions are fakes).

use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use rdkafka::TopicPartitionList;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use tokio::sync::OwnedSemaphorePermit;

use super::ledger::Ledger;
use super::{GROUP, InferError};
use crate::bus::{Delivery, Member, Tp};
use crate::config::KafkaConfig;

/// A record the committer appends with the offsets.
pub(super) struct Out {
    pub(super) topic: String,
    pub(super) key: Option<Vec<u8>>,
    pub(super) headers: Vec<(String, Vec<u8>)>,
    pub(super) body: Vec<u8>,
}

/// The outcome of one upload record: the records it produced, and its
/// in-flight permit (released when the outcome is committed and dropped).
pub(super) struct Done {
    pub(super) tp: Tp,
    pub(super) generation: u64,
    pub(super) offset: i64,
    pub(super) outs: Vec<Out>,
    pub(super) permit: OwnedSemaphorePermit,
}

/// A finished upload, as the ledger holds it.
struct Finished {
    outs: Vec<Out>,
    _permit: OwnedSemaphorePermit,
}

/// What the consume loop and the stages tell the committer.
pub(super) enum ToCommitter {
    /// A partition was assigned, as this assignment generation.
    Assigned(Tp, u64),
    /// A partition was revoked.
    Revoked(Tp),
    /// Partitions are being revoked, inside the rebalance: commit what is
    /// finished, drop the rest of theirs, then answer (the rebalance waits).
    Revoking(Vec<Tp>, std_mpsc::SyncSender<()>),
    /// An offset was consumed.
    Register(Tp, u64, i64),
    /// An upload finished.
    Done(Done),
    /// Commit what is finished and stop.
    Stop,
}

/// The outcome producer: transactional under the worker's leased name
/// (see `lease`: stable across restarts, so a restarted worker aborts its
/// predecessor's open transaction at once instead of after the timeout).
pub(super) async fn out_producer(
    kafka: &KafkaConfig,
    brokers: &str,
    transactional: bool,
    name: &str,
) -> Result<FutureProducer, InferError> {
    let id = format!("{}.{name}", kafka.group(GROUP));
    let delivery = if transactional {
        tracing::info!(transactional_id = %id, "inference outcomes are transactional");
        Delivery::Transactional {
            id: &id,
            timeout: Duration::from_secs(20),
        }
    } else {
        Delivery::Idempotent
    };
    Ok(crate::bus::producer(kafka, brokers, delivery).await?)
}

/// Owns the outcome producer: commits finished prefixes of partitions,
/// with their records, in one transaction (or, without transactions,
/// records first and offsets after).
pub(super) struct Committer {
    consumer: Arc<Member>,
    out: FutureProducer,
    transactional: bool,
    /// Commits at most this often (each is a transaction: round trips).
    interval: Duration,
    /// A pause inside each commit, before the offsets (tests widen the
    /// window a kill must land in).
    delay: Duration,
    ledger: Ledger<Finished>,
}

impl Committer {
    /// A committer for `consumer`'s partitions, appending with `out`.
    pub(super) fn new(
        consumer: Arc<Member>,
        out: FutureProducer,
        transactional: bool,
        interval: Duration,
        delay: Duration,
    ) -> Self {
        Self {
            consumer,
            out,
            transactional,
            interval,
            delay,
            ledger: Ledger::default(),
        }
    }

    /// Runs until told to stop (then commits what is finished) or a commit
    /// fails for good.
    pub(super) fn run(mut self, rx: std_mpsc::Receiver<ToCommitter>) -> Result<(), InferError> {
        // Commit as soon as a partition has a finished prefix, but at most
        // once per interval (each commit is a transaction: a few round
        // trips), and block without a timer while nothing is ready.
        let mut last = Instant::now() - self.interval;
        loop {
            let msg = if self.ledger.ready() {
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
                Some(ToCommitter::Revoking(tps, ack)) => {
                    // Under the generation that consumed them, before the
                    // next owner reads the committed offsets.
                    let r = self.commit();
                    last = Instant::now();
                    for tp in &tps {
                        self.ledger.revoked(tp);
                    }
                    let _ = ack.send(());
                    r?;
                }
                Some(m) => self.apply(m),
                None => {}
            }
            if self.ledger.ready() && Instant::now() >= last + self.interval {
                self.commit()?;
                last = Instant::now();
            }
        }
    }

    fn apply(&mut self, msg: ToCommitter) {
        match msg {
            ToCommitter::Assigned(tp, generation) => self.ledger.assigned(tp, generation),
            ToCommitter::Revoked(tp) => self.ledger.revoked(&tp),
            ToCommitter::Register(tp, generation, offset) => {
                self.ledger.register(tp, generation, offset)
            }
            ToCommitter::Done(d) => {
                // A stale outcome (its partition moved on) is dropped: its
                // upload is the partition's next owner's.
                let finished = Finished {
                    outs: d.outs,
                    _permit: d.permit,
                };
                self.ledger.finish(&d.tp, d.generation, d.offset, finished);
            }
            ToCommitter::Stop | ToCommitter::Revoking(..) => {}
        }
    }

    /// Commits every partition's finished prefix; a failed commit keeps it
    /// for the next tick.
    fn commit(&mut self) -> Result<(), InferError> {
        let prefixes = self.ledger.prefixes();
        if prefixes.is_empty() {
            return Ok(());
        }
        let taken: Vec<(Tp, i64)> = prefixes.iter().map(|p| (p.tp.clone(), p.last)).collect();
        let next: Vec<(Tp, i64)> = taken.iter().map(|(tp, l)| (tp.clone(), l + 1)).collect();
        let offsets = crate::bus::member::offsets(&next).map_err(InferError::Bus)?;
        let outs: Vec<&Out> = prefixes
            .iter()
            .flat_map(|p| p.outcomes.iter().flat_map(|f| f.outs.iter()))
            .collect();
        let result = if self.transactional {
            self.commit_transaction(&outs, &offsets)
        } else {
            self.commit_plain(&outs, &offsets)
        };
        drop(outs);
        drop(prefixes);
        match result {
            Ok(()) => {
                for (tp, last) in taken {
                    // Dropping the entries releases their in-flight permits.
                    self.ledger.release(&tp, last);
                }
                Ok(())
            }
            Err(Fatal::No(e)) => {
                tracing::warn!(error = %e, "commit failed; retrying");
                Ok(())
            }
            Err(Fatal::Yes(e)) => {
                tracing::error!(error = %e, "commit failed for good");
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
            KafkaError::Transaction(r) if fenced(r.code()) => {
                crate::telemetry::emit::infer_fenced();
                Fatal::Yes(format!(
                    "fenced: another worker opened this worker's transactional id (two \
                     workers share one infer.instance, or a successor took over): {e}"
                ))
            }
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
            .commit(offsets)
            .map_err(|e| Fatal::No(e.to_string()))
    }
}

/// Whether `code` says another producer took this transactional id.
fn fenced(code: rdkafka::types::RDKafkaErrorCode) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    matches!(
        code,
        C::Fenced | C::ProducerFenced | C::InvalidProducerEpoch
    )
}

enum Fatal {
    Yes(String),
    No(String),
}
