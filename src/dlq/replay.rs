//! Replaying dead letters: a copy goes back to its source topic and a
//! marker is appended to the DLQ (same partition as the dead letter) saying
//! where it went. The marker is what makes a replay idempotent: a dead letter
//! with a marker is not published again unless forced.
//!
//! On real Kafka the copies and markers commit in one transaction of a
//! producer with a stable `transactional.id` per namespace, so a crash never
//! leaves a copy without its marker. Opening that producer fences any other
//! replay in flight (in any process) before the DLQ is read, so two replays
//! of one dead letter cannot both pass the check: the later fence aborts the
//! earlier transaction. The embedded mock cluster only fakes transactions:
//! there each copy, then its marker, is published and acknowledged in turn.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, Producer as _};

use super::DlqError;
use super::letters::{
    Copy, Cursor, DeadLetter, Edits, Entry, Filter, Place, Pos, Replayed, copy_of, marker_headers,
};
use super::read::{DlqLog, Scope};
use crate::bus::Delivery;

/// Most dead letters one bulk replay publishes (and lists as skipped); the
/// answer says when more were left for another call.
pub const MAX_BULK: usize = 200;
/// Most payload bytes one bulk replay holds in memory.
pub const MAX_BULK_BYTES: usize = 8 << 20;

/// How long a transaction step (init, commit, abort) may take.
const TXN_TIMEOUT: Duration = Duration::from_secs(30);

/// One replay at a time in this process: replays share one
/// `transactional.id` per namespace, and two at once would fence each
/// other; on the embedded cluster (no fencing) it is what keeps the check
/// and the publish of one replay together.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A replay planned or done.
#[derive(Clone, Debug)]
pub struct Replay {
    /// What is (or would be) published.
    pub copy: Copy,
    /// Where it went; `None` on a dry run.
    pub done: Option<Done>,
}

/// Where a replay's copy and marker landed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Done {
    /// The copy, in the source topic.
    pub to: Place,
    /// The marker, in the DLQ.
    pub marker: Pos,
}

/// A dead letter a bulk replay left alone, and why.
#[derive(Clone, Debug)]
pub struct Skipped {
    /// The dead letter.
    pub of: Pos,
    /// Why.
    pub reason: String,
    /// Its latest replay, when that is why.
    pub replayed: Option<Replayed>,
}

/// What a bulk replay did.
#[derive(Clone, Debug, Default)]
pub struct Bulk {
    /// Replays, in log order per partition.
    pub replays: Vec<Replay>,
    /// Matching dead letters not replayed (at most [`MAX_BULK`] listed).
    pub skipped: Vec<Skipped>,
    /// More matched than one call replays: call again for the rest.
    pub truncated: bool,
}

impl DlqLog {
    /// For a real replay: this process's turn (replays run one at a time)
    /// and the publisher; nothing for a dry run.
    async fn writer(
        &self,
        dry_run: bool,
    ) -> Result<(Option<tokio::sync::MutexGuard<'static, ()>>, Option<Out>), DlqError> {
        if dry_run {
            return Ok((None, None));
        }
        let one = ONE_AT_A_TIME.lock().await;
        Ok((Some(one), Some(Out::open(self).await?)))
    }

    /// Replays the dead letter at `pos` with `edits`; a dead letter already
    /// replayed is refused unless `force`. `by`: the admin, for the marker.
    pub async fn replay(
        &self,
        pos: Pos,
        edits: &Edits,
        force: bool,
        dry_run: bool,
        by: &str,
    ) -> Result<Replay, DlqError> {
        // Opened (and so fencing) before the read; see the module docs.
        let (_one, out) = self.writer(dry_run).await?;
        let letter = self.get(pos).await?.ok_or(DlqError::Unknown(pos))?;
        if let Some(r) = letter.replayed.clone()
            && !force
        {
            return Err(DlqError::AlreadyReplayed {
                of: pos,
                replayed: r,
            });
        }
        let copy = copy_of(&letter, self.topic(), &self.source_topics(), edits)?;
        let Some(out) = out else {
            return Ok(Replay { copy, done: None });
        };
        let mut done = out
            .publish(std::slice::from_ref(&copy), by, !edits.is_empty())
            .await?;
        Ok(Replay {
            copy,
            done: done.pop(),
        })
    }

    /// Replays, unchanged, every dead letter matching `filter` that was not
    /// replayed yet (at most [`MAX_BULK`] per call).
    pub async fn replay_matching(
        &self,
        filter: &Filter,
        dry_run: bool,
        by: &str,
    ) -> Result<Bulk, DlqError> {
        let (_one, out) = self.writer(dry_run).await?;
        let namespace = self.kafka().namespace.clone();
        let mut picked: BTreeMap<Pos, DeadLetter> = BTreeMap::new();
        let mut bytes = 0usize;
        let mut bulk = Bulk::default();
        let size = |l: &DeadLetter| l.record.payload().map_or(0, <[u8]>::len);
        self.scan(&Scope::All(Cursor::default()), |e| match e {
            Entry::Letter(l) if filter.matches(&l, &namespace) => {
                if picked.len() >= MAX_BULK || bytes + size(&l) > MAX_BULK_BYTES {
                    bulk.truncated = true;
                } else {
                    bytes += size(&l);
                    picked.insert(l.pos, *l);
                }
            }
            // Markers follow their dead letter in its partition: by the
            // time one is read, its letter was seen.
            Entry::Marker(m) => {
                if let Some(l) = picked.remove(&m.of) {
                    bytes -= size(&l);
                    if bulk.skipped.len() < MAX_BULK {
                        bulk.skipped.push(Skipped {
                            of: m.of,
                            reason: format!("already replayed to {}", m.replayed),
                            replayed: Some(m.replayed),
                        });
                    }
                } else if let Some(s) = bulk.skipped.iter_mut().find(|s| s.of == m.of) {
                    // Replayed more than once (forced): the latest counts.
                    s.reason = format!("already replayed to {}", m.replayed);
                    s.replayed = Some(m.replayed);
                }
            }
            _ => {}
        })
        .await?;
        let (topic, topics) = (self.topic().to_owned(), self.source_topics());
        let mut copies = Vec::with_capacity(picked.len());
        for l in picked.values() {
            match copy_of(l, &topic, &topics, &Edits::default()) {
                Ok(c) => copies.push(c),
                Err(e) if bulk.skipped.len() < MAX_BULK => bulk.skipped.push(Skipped {
                    of: l.pos,
                    reason: e.to_string(),
                    replayed: None,
                }),
                Err(_) => {}
            }
        }
        let done = match out {
            Some(out) if !copies.is_empty() => out.publish(&copies, by, false).await?,
            _ => Vec::new(),
        };
        let mut done = done.into_iter();
        bulk.replays = copies
            .into_iter()
            .map(|copy| Replay {
                copy,
                done: done.next(),
            })
            .collect();
        Ok(bulk)
    }
}

/// The replay producer: transactional on real Kafka.
struct Out {
    producer: FutureProducer,
    transactional: bool,
    dlq_topic: String,
    /// On the embedded log: each copy and marker is answered once journaled
    /// (as every other write of the process).
    durable: Option<std::sync::Arc<crate::bus::durable::Durable>>,
}

impl Out {
    async fn open(log: &DlqLog) -> Result<Out, DlqError> {
        let transactional = !log.kafka().is_embedded();
        // Stable per namespace: opening it fences any replay still in
        // flight elsewhere (see the module docs).
        let id = log.kafka().group("dlq-replay");
        let delivery = if transactional {
            Delivery::Transactional {
                id: &id,
                timeout: Duration::from_secs(60),
            }
        } else {
            Delivery::Idempotent
        };
        let producer = crate::bus::producer(log.kafka(), log.brokers(), delivery).await?;
        Ok(Out {
            producer,
            transactional,
            dlq_topic: log.topic().to_owned(),
            durable: crate::bus::durable::of(log.brokers()),
        })
    }

    /// Publishes each copy, then its marker; in one transaction when
    /// transactional. Answers where each landed, in order.
    async fn publish(
        &self,
        copies: &[Copy],
        by: &str,
        edited: bool,
    ) -> Result<Vec<Done>, DlqError> {
        if !self.transactional {
            return self.send_all(copies, by, edited).await;
        }
        self.producer.begin_transaction()?;
        let sent = self.send_all(copies, by, edited).await;
        let failed = |error: String| DlqError::Publish {
            done: 0,
            total: copies.len(),
            error,
        };
        let done = match sent {
            Ok(done) => done,
            Err(e) => {
                self.abort().await;
                return Err(failed(e.to_string()));
            }
        };
        let p = self.producer.clone();
        let committed = tokio::task::spawn_blocking(move || {
            // A retriable commit error means "commit again", never "publish
            // again": the records may already be in.
            let mut tries = 0;
            loop {
                match p.commit_transaction(TXN_TIMEOUT) {
                    Err(KafkaError::Transaction(ref r)) if r.is_retriable() && tries < 5 => {
                        tries += 1
                    }
                    r => return r,
                }
            }
        })
        .await
        .map_err(|e| failed(e.to_string()))?;
        if let Err(e) = committed {
            self.abort().await;
            return Err(failed(e.to_string()));
        }
        Ok(done)
    }

    /// Aborts the open transaction; a failure is logged (the broker aborts
    /// it at the transaction timeout, or the next replay's fence does).
    async fn abort(&self) {
        let p = self.producer.clone();
        let r = tokio::task::spawn_blocking(move || p.abort_transaction(TXN_TIMEOUT)).await;
        if let Ok(Err(e)) = r {
            tracing::warn!(error = %e, "aborting a DLQ replay transaction");
        }
    }

    /// Each copy then its marker, each acknowledged before the next send.
    async fn send_all(
        &self,
        copies: &[Copy],
        by: &str,
        edited: bool,
    ) -> Result<Vec<Done>, DlqError> {
        let mut done = Vec::with_capacity(copies.len());
        for c in copies {
            let to = self
                .send(
                    &c.topic,
                    c.partition,
                    c.key.as_deref(),
                    &c.headers,
                    c.payload.as_deref(),
                )
                .await
                .map_err(|e| DlqError::Publish {
                    done: done.len(),
                    total: copies.len(),
                    error: e.to_string(),
                })?;
            let marker = marker_headers(&self.dlq_topic, c.of, &to, by, edited);
            // Same partition as the dead letter: a read of that partition
            // from the letter on finds it.
            let marker = self
                .send(
                    &self.dlq_topic,
                    Some(c.of.partition),
                    c.key.as_deref(),
                    &marker,
                    None,
                )
                .await
                .map_err(|e| DlqError::MarkerLost {
                    of: c.of,
                    to: to.clone(),
                    error: e.to_string(),
                })?;
            tracing::info!(of = %c.of, to = %to, by, "dead letter replayed");
            done.push(Done {
                to,
                marker: Pos {
                    partition: marker.partition,
                    offset: marker.offset,
                },
            });
        }
        Ok(done)
    }

    async fn send(
        &self,
        topic: &str,
        partition: Option<i32>,
        key: Option<&[u8]>,
        headers: &[(String, Vec<u8>)],
        payload: Option<&[u8]>,
    ) -> Result<Place, crate::bus::BusError> {
        let hs: Vec<(&str, &[u8])> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect();
        let a = crate::bus::producer::append(
            &self.producer,
            self.durable.as_deref(),
            topic,
            partition,
            key,
            &hs,
            payload,
        )
        .await?;
        Ok(Place {
            topic: a.topic,
            partition: a.partition,
            offset: a.offset,
        })
    }
}
