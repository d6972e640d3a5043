//! The producer: idempotent (`enable.idempotence`, `acks=all`), so a retried
//! send never duplicates; every send answers with the record's position,
//! which the ingest edge turns into a consistency token.

use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::util::Timeout;

use super::{BusError, client_config};
use crate::config::KafkaConfig;
use crate::event::wire::{self, WireRecord};
use crate::event::{Event, Topic};

/// Properties that only mean something to a consumer.
pub(crate) fn is_consumer_only(k: &str) -> bool {
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

/// An idempotent producer bound to one namespace.
#[derive(Clone)]
pub struct Producer {
    inner: FutureProducer,
    cfg: KafkaConfig,
    source: String,
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
        let mut c = client_config(
            &KafkaConfig {
                properties: Default::default(),
                ..cfg.clone()
            },
            brokers,
        );
        c.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "2")
            .set("compression.type", "lz4")
            .set("message.timeout.ms", "30000");
        // Passthrough properties win over the defaults above; consumer-only
        // ones are left out (librdkafka warns about them on a producer).
        for (k, v) in &cfg.properties {
            if !is_consumer_only(k) {
                c.set(k, v);
            }
        }
        Ok(Self {
            inner: c.create()?,
            cfg: cfg.clone(),
            source: source.to_owned(),
        })
    }

    /// The full name of a topic in this namespace.
    pub fn topic(&self, t: Topic) -> String {
        self.cfg.topic(t)
    }

    /// Encodes and appends an event; resolves once the broker acknowledged.
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
        let mut hs = OwnedHeaders::new_with_capacity(headers.len());
        for (k, v) in headers {
            hs = hs.insert(Header {
                key: k,
                value: Some(*v),
            });
        }
        let mut r: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).headers(hs);
        if let Some(k) = key {
            r = r.key(k);
        }
        if let Some(b) = body {
            r = r.payload(b);
        }
        let d = self
            .inner
            .send(r, Timeout::After(Duration::from_secs(30)))
            .await
            .map_err(|(e, _)| BusError::Kafka(e))?;
        Ok(Appended {
            topic: topic.to_owned(),
            partition: d.partition,
            offset: d.offset,
        })
    }

    /// Waits for in-flight records (shutdown).
    pub fn flush(&self, timeout: Duration) -> Result<(), BusError> {
        self.inner.flush(Timeout::After(timeout))?;
        Ok(())
    }
}
