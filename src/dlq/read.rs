//! Reading the DLQ topic for the operations routes: a private consumer
//! (no group membership, no commits, committed records only) assigned the
//! partitions from given offsets up to their heads as of the start of the
//! read, so every read ends even while new dead letters arrive, bounded in
//! time. On the durable embedded log, what its cluster no longer holds
//! (it keeps the last 5 MiB of a partition) is read from the journal.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::{Message, Offset, TopicPartitionList};

use super::DlqError;
use super::letters::{Cursor, DeadLetter, Entry, Filter, Page, PageBuilder, Pos, classify};
use crate::bus::{Record, tail_config};
use crate::config::KafkaConfig;
use crate::event::Topic;

/// How long a metadata or watermark query may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest one read of the DLQ may take. Dead letters are rare, so a
/// read is normally a few records; past this the caller is told to retry
/// rather than held.
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// What to read.
#[derive(Clone, Debug)]
pub enum Scope {
    /// Every partition, from the cursor's offsets (the start of those it
    /// does not name).
    All(Cursor),
    /// One partition from an offset.
    From(Pos),
}

/// The DLQ topic of one deployment.
#[derive(Clone, Debug)]
pub struct DlqLog {
    kafka: KafkaConfig,
    brokers: String,
    topic: String,
}

impl DlqLog {
    /// The DLQ of the namespace in `kafka`, on `brokers`.
    pub fn new(kafka: &KafkaConfig, brokers: &str) -> Self {
        Self {
            kafka: kafka.clone(),
            brokers: brokers.to_owned(),
            topic: kafka.topic(Topic::Dlq),
        }
    }

    /// Full DLQ topic name.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The Kafka configuration (namespace, properties).
    pub fn kafka(&self) -> &KafkaConfig {
        &self.kafka
    }

    /// Bootstrap servers.
    pub fn brokers(&self) -> &str {
        &self.brokers
    }

    /// Full names of the topics a dead letter may be replayed to.
    pub fn source_topics(&self) -> Vec<String> {
        Topic::ALL
            .into_iter()
            .filter(|t| *t != Topic::Dlq)
            .map(|t| self.kafka.topic(t))
            .collect()
    }

    /// Reads `scope` up to the heads as of now, calling `visit` with each
    /// record in offset order per partition. Answers whether the scope's
    /// partition exists (always true for [`Scope::All`]).
    pub async fn scan(
        &self,
        scope: &Scope,
        mut visit: impl FnMut(Entry),
    ) -> Result<bool, DlqError> {
        let mut cfg = tail_config(&self.kafka, &self.brokers, "dlq.read", "earliest");
        // The end of each partition is where the read stops; with
        // read_committed that is the last stable offset, so an open
        // transaction's records are not waited for.
        cfg.set("enable.partition.eof", "true");
        // The mock cluster answers a fetch only when its wait runs out (see
        // the projector consumers in cli/app.rs).
        if self.kafka.is_embedded() && cfg.get("fetch.wait.max.ms").is_none() {
            cfg.set("fetch.wait.max.ms", "10");
        }
        let consumer: Arc<StreamConsumer> = Arc::new(cfg.create()?);
        let deadline = tokio::time::Instant::now() + READ_TIMEOUT;

        let marks = {
            let (c, topic) = (consumer.clone(), self.topic.clone());
            let query = tokio::task::spawn_blocking(move || watermarks(&c, &topic));
            match tokio::time::timeout_at(deadline, query).await {
                Ok(joined) => joined.map_err(|e| DlqError::Read(e.to_string()))??,
                Err(_) => return Err(DlqError::Timeout(READ_TIMEOUT)),
            }
        };
        let mut heads: BTreeMap<i32, i64> = BTreeMap::new();
        let mut tpl = TopicPartitionList::new();
        let mut exists = matches!(scope, Scope::All(_));
        // On the durable embedded log the cluster keeps the last 5 MiB of
        // a partition: what it no longer holds is read from the journal.
        let durable = crate::bus::durable::of(&self.brokers);
        let mut behind: HashMap<crate::bus::Tp, (i64, i64)> = HashMap::new();
        for (p, low, high) in marks {
            let from = match scope {
                Scope::All(c) => c.0.get(&p).copied().unwrap_or(0),
                Scope::From(pos) if pos.partition == p => {
                    exists = true;
                    pos.offset
                }
                Scope::From(_) => continue,
            };
            if durable.is_some() && from < low {
                behind.insert((self.topic.clone(), p), (from.max(0), low));
            }
            let from = from.max(low);
            if from < high {
                tpl.add_partition_offset(&self.topic, p, Offset::Offset(from))?;
                heads.insert(p, high);
            }
        }
        if let Some(d) = durable
            && !behind.is_empty()
        {
            let topic = self.topic.clone();
            let read = tokio::task::spawn_blocking(move || {
                let mut out = Vec::new();
                d.read(&behind, &mut |tp, records| {
                    for r in records {
                        let pos = Pos {
                            partition: tp.1,
                            offset: r.offset,
                        };
                        let time = chrono::DateTime::from_timestamp_millis(r.timestamp_ms);
                        out.push(classify(&topic, pos, time, Record::from_journal(&r)));
                    }
                    true
                })
                .map(|()| out)
            });
            let entries = match tokio::time::timeout_at(deadline, read).await {
                Ok(joined) => joined
                    .map_err(|e| DlqError::Read(e.to_string()))?
                    .map_err(|e| DlqError::Read(e.to_string()))?,
                Err(_) => return Err(DlqError::Timeout(READ_TIMEOUT)),
            };
            for e in entries {
                visit(e);
            }
        }
        if heads.is_empty() {
            return Ok(exists);
        }
        consumer.assign(&tpl)?;
        while !heads.is_empty() {
            let msg = match tokio::time::timeout_at(deadline, consumer.recv()).await {
                Err(_) => return Err(DlqError::Timeout(READ_TIMEOUT)),
                Ok(m) => m,
            };
            match msg {
                Ok(m) => {
                    let p = m.partition();
                    let Some(&head) = heads.get(&p) else { continue };
                    if m.offset() >= head {
                        heads.remove(&p);
                        continue;
                    }
                    let time = m
                        .timestamp()
                        .to_millis()
                        .and_then(chrono::DateTime::from_timestamp_millis);
                    let pos = Pos {
                        partition: p,
                        offset: m.offset(),
                    };
                    visit(classify(&self.topic, pos, time, Record::of(&m)));
                    if m.offset() + 1 >= head {
                        heads.remove(&p);
                    }
                }
                // The end of what is committed: the rest (transaction
                // markers, open transactions) holds no dead letter to read.
                Err(KafkaError::PartitionEOF(p)) => {
                    heads.remove(&p);
                }
                // Transient (a broker reconnecting): librdkafka retries;
                // the deadline bounds the wait.
                Err(e) => tracing::debug!(error = %e, "DLQ read"),
            }
        }
        Ok(exists)
    }

    /// One page of dead letters matching `filter`, oldest first.
    pub async fn list(
        &self,
        filter: Filter,
        limit: usize,
        cursor: Cursor,
    ) -> Result<Page, DlqError> {
        let mut b = PageBuilder::new(filter, &self.kafka.namespace, limit);
        self.scan(&Scope::All(cursor.clone()), |e| b.push(e))
            .await?;
        Ok(b.finish(&cursor))
    }

    /// The dead letter at `pos`, with its latest replay; `None` when there
    /// is no record there or it is not a dead letter (a replay marker).
    pub async fn get(&self, pos: Pos) -> Result<Option<DeadLetter>, DlqError> {
        let mut found: Option<DeadLetter> = None;
        self.scan(&Scope::From(pos), |e| match e {
            Entry::Letter(l) if l.pos == pos => found = Some(*l),
            Entry::Marker(m) if m.of == pos => {
                if let Some(l) = found.as_mut() {
                    l.replayed = Some(m.replayed);
                }
            }
            _ => {}
        })
        .await?;
        Ok(found)
    }
}

/// `(partition, low, high)` of every partition of `topic` (blocking).
fn watermarks(c: &StreamConsumer, topic: &str) -> Result<Vec<(i32, i64, i64)>, DlqError> {
    let md = c.fetch_metadata(Some(topic), QUERY_TIMEOUT)?;
    let mut out = Vec::new();
    for t in md.topics().iter().filter(|t| t.name() == topic) {
        for p in t.partitions() {
            let (low, high) = c.fetch_watermarks(topic, p.id(), QUERY_TIMEOUT)?;
            out.push((p.id(), low, high));
        }
    }
    out.sort_unstable();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::{EmbeddedCluster, Producer, topics};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dead_letters_the_cluster_no_longer_holds_are_read_from_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = KafkaConfig::default();
        let mut c = EmbeddedCluster::start(1).unwrap();
        topics::ensure_embedded(&c, &cfg).unwrap();
        c.make_durable(&cfg, dir.path(), Default::default())
            .unwrap();
        let brokers = c.bootstrap_servers().to_owned();
        let log = DlqLog::new(&cfg, &brokers);
        let p = Producer::new(&cfg, &brokers, "test").unwrap();
        // 8 MiB of incompressible records into one DLQ partition: more
        // than the cluster keeps of it.
        let n = 4_000usize;
        let partition = crate::bus::durable::overflow_one_partition(&p, log.topic(), n).await;
        let probe: rdkafka::consumer::BaseConsumer =
            crate::bus::client_config(&cfg, &brokers).create().unwrap();
        let (low, high) = probe
            .fetch_watermarks(log.topic(), partition, Duration::from_secs(5))
            .unwrap();
        assert_eq!(high, n as i64);
        assert!(low > 0, "the cluster dropped the partition's first records");
        let mut seen = Vec::new();
        log.scan(&Scope::All(Cursor::default()), |e| {
            seen.push(match e {
                Entry::Letter(l) => l.pos.offset,
                Entry::Marker(m) => m.pos.offset,
                Entry::Ignored(pos) => pos.offset,
            })
        })
        .await
        .unwrap();
        assert_eq!(seen, (0..n as i64).collect::<Vec<_>>());
        drop(p);
    }
}
