//! Producers. [`producer`] is the one builder: idempotent
//! (`enable.idempotence`, `acks=all`, so a retried send never duplicates),
//! and transactional under a stable id where asked. [`Producer`] is the
//! ingest edge's: every send answers with the record's position, which the
//! edge turns into a consistency token.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::util::Timeout;

use super::BusError;
use crate::config::KafkaConfig;
use crate::event::wire::{self, WireRecord};
use crate::event::{Event, Topic};

/// Properties that only mean something to a consumer.
fn is_consumer_only(k: &str) -> bool {
    [
        "group.",
        "session.timeout.ms",
        "heartbeat.interval.ms",
        "auto.offset.reset",
        "enable.auto.",
        "auto.commit.",
        "isolation.level",
        "fetch.",
        "max.poll.interval.ms",
        "partition.assignment.strategy",
        "queued.",
    ]
    .iter()
    .any(|p| k.starts_with(p))
}

/// How a producer delivers.
#[derive(Clone, Copy, Debug)]
pub enum Delivery<'a> {
    /// Idempotent: a retried send never duplicates.
    Idempotent,
    /// Idempotent and transactional under a stable `id`: a producer opened
    /// with the same id fences its predecessor and aborts the
    /// predecessor's open transaction at once. `timeout` bounds an open
    /// transaction (a dead owner's is aborted past it).
    Transactional {
        /// The `transactional.id`.
        id: &'a str,
        /// The `transaction.timeout.ms`.
        timeout: Duration,
    },
}

/// The configuration of a producer: the passthrough properties (less the
/// consumer-only ones, which librdkafka warns about on a producer) over
/// atelier's defaults (2 ms linger, lz4, a 30 s delivery bound, never more
/// than a transaction's timeout), then what delivery needs, which no
/// property overrides.
pub fn producer_config(cfg: &KafkaConfig, brokers: &str, delivery: Delivery<'_>) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("client.id", "atelier")
        .set("linger.ms", "2")
        .set("compression.type", "lz4")
        .set("message.timeout.ms", "30000");
    if let Delivery::Transactional { timeout, .. } = delivery {
        // A record's delivery may not outlast its transaction.
        let bound = (timeout.as_millis() * 3 / 4).min(30_000);
        c.set("message.timeout.ms", bound.to_string());
    }
    for (k, v) in &cfg.properties {
        if !is_consumer_only(k) {
            c.set(k, v);
        }
    }
    c.set("enable.idempotence", "true").set("acks", "all");
    if let Delivery::Transactional { id, timeout } = delivery {
        c.set("transactional.id", id)
            .set("transaction.timeout.ms", timeout.as_millis().to_string());
    }
    c
}

/// Creates a producer; a transactional one has its transactions
/// initialized (fencing its predecessor), off the async runtime.
pub async fn producer(
    cfg: &KafkaConfig,
    brokers: &str,
    delivery: Delivery<'_>,
) -> Result<FutureProducer, BusError> {
    let p: FutureProducer = producer_config(cfg, brokers, delivery).create()?;
    if let Delivery::Transactional { .. } = delivery {
        let init = p.clone();
        tokio::task::spawn_blocking(move || init.init_transactions(Duration::from_secs(30)))
            .await
            .map_err(|e| BusError::Handler(format!("initializing transactions: {e}")))??;
    }
    Ok(p)
}

/// Where a record landed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Appended {
    /// Full topic name.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
}

/// Appends one record with `producer` (to `partition`, or where its key
/// hashes), answering once the broker acknowledged it and, on a durable
/// embedded log (`durable`), once it is journaled: the one write path of
/// the process's producers, so that "answered" means "kept" for all.
pub(crate) async fn append(
    producer: &FutureProducer,
    durable: Option<&super::durable::Durable>,
    topic: &str,
    partition: Option<i32>,
    key: Option<&[u8]>,
    headers: &[(&str, &[u8])],
    body: Option<&[u8]>,
) -> Result<Appended, BusError> {
    let mut hs = OwnedHeaders::new_with_capacity(headers.len());
    for (k, v) in headers {
        hs = hs.insert(Header {
            key: k,
            value: Some(*v),
        });
    }
    let mut r: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).headers(hs);
    if let Some(p) = partition {
        r = r.partition(p);
    }
    if let Some(k) = key {
        r = r.key(k);
    }
    if let Some(b) = body {
        r = r.payload(b);
    }
    let d = producer
        .send(r, Timeout::After(Duration::from_secs(30)))
        .await
        .map_err(|(e, _)| BusError::Kafka(e))?;
    if let Some(j) = durable {
        j.journaled(topic, d.partition, d.offset).await?;
    }
    Ok(Appended {
        topic: topic.to_owned(),
        partition: d.partition,
        offset: d.offset,
    })
}

/// An idempotent producer bound to one namespace.
#[derive(Clone)]
pub struct Producer {
    inner: FutureProducer,
    cfg: KafkaConfig,
    source: String,
    /// On a durable embedded cluster: a send answers once journaled.
    durable: Option<std::sync::Arc<super::durable::Durable>>,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl Producer {
    /// Creates a producer. `source` becomes `ce_source` on events it encodes.
    pub fn new(cfg: &KafkaConfig, brokers: &str, source: &str) -> Result<Self, BusError> {
        Ok(Self {
            inner: producer_config(cfg, brokers, Delivery::Idempotent).create()?,
            cfg: cfg.clone(),
            source: source.to_owned(),
            durable: super::durable::of(brokers),
        })
    }

    /// The full name of a topic in this namespace.
    pub fn topic(&self, t: Topic) -> String {
        self.cfg.topic(t)
    }

    /// Encodes and appends an event; resolves once the broker acknowledged
    /// (and, on a durable embedded cluster, once the record is journaled).
    pub async fn send(&self, event: &Event) -> Result<Appended, BusError> {
        let rec = wire::encode(event, &self.source);
        self.send_wire(&rec).await
    }

    /// Appends an encoded record.
    pub async fn send_wire(&self, rec: &WireRecord) -> Result<Appended, BusError> {
        let topic = self.topic(rec.topic);
        let hs: Vec<(&str, &[u8])> = rec
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect();
        self.send_raw(&topic, Some(rec.key.as_bytes()), &hs, Some(&rec.body))
            .await
    }

    /// Appends raw bytes to a topic (DLQ records, replays, poison tests).
    pub async fn send_raw(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        headers: &[(&str, &[u8])],
        body: Option<&[u8]>,
    ) -> Result<Appended, BusError> {
        append(
            &self.inner,
            self.durable.as_deref(),
            topic,
            None,
            key,
            headers,
            body,
        )
        .await
    }

    /// Waits for in-flight records (shutdown).
    pub fn flush(&self, timeout: Duration) -> Result<(), BusError> {
        self.inner.flush(Timeout::After(timeout))?;
        Ok(())
    }
}
