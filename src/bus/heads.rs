//! The log's heads: each partition's high watermark, for consumer lag,
//! replay progress and readiness. Queries are blocking librdkafka calls, so
//! they run on the blocking pool, bounded by a timeout.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};

use super::{BusError, tail_config};
use crate::config::KafkaConfig;

/// How long one metadata or offsets query may take.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Asks the brokers where topics end.
#[derive(Clone)]
pub struct Heads {
    client: Arc<BaseConsumer>,
    /// Reads uncommitted: where a partition's log ends, whatever the
    /// transactions in it (see [`Heads::head`]).
    uncommitted: Arc<BaseConsumer>,
    brokers: String,
}

impl std::fmt::Debug for Heads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Heads").finish_non_exhaustive()
    }
}

impl Heads {
    /// A client on `brokers` (it joins no group and reads nothing).
    pub fn new(cfg: &KafkaConfig, brokers: &str) -> Result<Self, BusError> {
        let client: BaseConsumer = tail_config(cfg, brokers, "heads", "latest").create()?;
        let uncommitted: BaseConsumer = tail_config(cfg, brokers, "heads", "latest")
            .set("isolation.level", "read_uncommitted")
            .create()?;
        Ok(Self {
            client: Arc::new(client),
            uncommitted: Arc::new(uncommitted),
            brokers: brokers.to_owned(),
        })
    }

    /// Whether the log is the durable embedded one: its journal holds every
    /// record from offset 0; the cluster only the last 5 MiB of each
    /// partition (see `bus::durable`).
    fn journaled(&self) -> bool {
        super::durable::of(&self.brokers).is_some()
    }

    /// `(partition, high watermark)` of every partition of `topic`, in
    /// partition order. The high watermark is the offset the next record
    /// will get (transaction markers included).
    pub async fn of(&self, topic: &str) -> Result<Vec<(i32, i64)>, BusError> {
        let client = self.client.clone();
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || {
            let md = client.fetch_metadata(Some(&topic), TIMEOUT)?;
            let mut out = Vec::new();
            for t in md.topics() {
                for p in t.partitions() {
                    let (_, high) = client.fetch_watermarks(&topic, p.id(), TIMEOUT)?;
                    out.push((p.id(), high));
                }
            }
            out.sort_unstable();
            Ok(out)
        })
        .await
        .map_err(|e| BusError::Handler(format!("heads query: {e}")))?
    }

    /// The high watermark of one partition, open and undecided
    /// transactions included: every offset below it is in the log. (A
    /// read-committed client is answered the last stable offset, which a
    /// record of a transaction that just committed may still be past: the
    /// coordinator writes the commit markers after the commit returns.)
    /// `None` when the topic has no such partition.
    pub async fn head(&self, topic: &str, partition: i32) -> Result<Option<i64>, BusError> {
        let client = self.uncommitted.clone();
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || {
            let md = client.fetch_metadata(Some(&topic), TIMEOUT)?;
            let known = md
                .topics()
                .iter()
                .any(|t| t.partitions().iter().any(|p| p.id() == partition));
            if !known {
                return Ok(None);
            }
            let (_, high) = client.fetch_watermarks(&topic, partition, TIMEOUT)?;
            Ok(Some(high))
        })
        .await
        .map_err(|e| BusError::Handler(format!("heads query: {e}")))?
    }

    /// `(partition, low watermark)` of every partition of `topic`: the
    /// first offset the log still holds (retention deletes before it; the
    /// embedded log's journal holds everything).
    pub async fn starts(&self, topic: &str) -> Result<Vec<(i32, i64)>, BusError> {
        let heads = self.of(topic).await?;
        if self.journaled() {
            return Ok(heads.into_iter().map(|(p, _)| (p, 0)).collect());
        }
        let client = self.client.clone();
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            for (p, _) in heads {
                let (low, _) = client.fetch_watermarks(&topic, p, TIMEOUT)?;
                out.push((p, low));
            }
            Ok(out)
        })
        .await
        .map_err(|e| BusError::Handler(format!("watermarks query: {e}")))?
    }

    /// The first offset of each partition of `topic` whose record time is
    /// at or after `ms` (the high watermark where there is none). On the
    /// embedded log, an answer at the start of the cluster's window may
    /// have earlier records in the journal only: it is 0 there (a superset
    /// of what was asked, never a record short).
    pub async fn at_time(&self, topic: &str, ms: i64) -> Result<Vec<(i32, i64)>, BusError> {
        let heads = self.of(topic).await?;
        let journaled = self.journaled();
        let client = self.client.clone();
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || {
            let mut tpl = rdkafka::TopicPartitionList::new();
            for (p, _) in &heads {
                tpl.add_partition_offset(&topic, *p, rdkafka::Offset::Offset(ms))?;
            }
            let found = client.offsets_for_times(tpl, TIMEOUT)?;
            let mut out = Vec::new();
            for (p, high) in heads {
                let mut off = match found.find_partition(&topic, p).map(|e| e.offset()) {
                    Some(rdkafka::Offset::Offset(o)) => o,
                    _ => high,
                };
                if journaled && off > 0 && off <= client.fetch_watermarks(&topic, p, TIMEOUT)?.0 {
                    off = 0;
                }
                out.push((p, off));
            }
            Ok(out)
        })
        .await
        .map_err(|e| BusError::Handler(format!("offsets query: {e}")))?
    }
}

/// Records a partition holds after `applied`, up to its `head` (the next
/// offset; transaction markers count, so this reads at most a few high).
pub fn behind(head: i64, applied: i64) -> u64 {
    (head - 1 - applied).max(0) as u64
}
