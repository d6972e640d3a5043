//! Kafka: the one producer builder (idempotent or transactional), the one
//! group-member builder (manual offsets) and the per-partition consumer loop
//! on it, topics as code (admin), and the embedded mock cluster of
//! `atelier up`.

pub mod consumer;
pub mod durable;
pub mod embedded;
pub mod heads;
pub mod journal;
pub mod member;
pub mod producer;
pub mod topics;

pub use consumer::{Batch, HandlerError, PartitionHandler, Record};
pub use embedded::EmbeddedCluster;
pub use heads::{Heads, behind};
pub use member::{Member, MemberSpec, Offsets, Rebalance, Rebalances, Tp};
pub use producer::{Appended, Delivery, Producer, producer, producer_config};

use rdkafka::ClientConfig;

use crate::config::KafkaConfig;

/// A Kafka failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BusError {
    /// From librdkafka.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The embedded cluster could not be started or changed.
    #[error("embedded cluster: {0}")]
    Embedded(String),
    /// Topic configuration files are wrong.
    #[error("topics: {0}")]
    Topics(String),
    /// The embedded log's journal failed (disk full, read-only, corrupt).
    #[error("the embedded log's journal: {0}")]
    Journal(String),
    /// A partition handler failed permanently.
    #[error("handler: {0}")]
    Handler(String),
}

/// The base client configuration: brokers plus every passthrough property.
pub fn client_config(cfg: &KafkaConfig, brokers: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers);
    c.set("client.id", "atelier");
    for (k, v) in &cfg.properties {
        c.set(k, v);
    }
    c
}

/// The configuration of a private tail consumer: a fresh group of its own
/// that commits nothing and reads only committed records, starting at
/// `reset` (`earliest` or `latest`).
pub fn tail_config(cfg: &KafkaConfig, brokers: &str, name: &str, reset: &str) -> ClientConfig {
    let mut c = client_config(cfg, brokers);
    c.set(
        "group.id",
        cfg.group(&format!("{name}.{}", uuid::Uuid::new_v4().simple())),
    )
    .set("enable.auto.commit", "false")
    .set("auto.offset.reset", reset)
    .set("isolation.level", "read_committed");
    if c.get("session.timeout.ms").is_none() {
        c.set("session.timeout.ms", "6000");
    }
    c
}
