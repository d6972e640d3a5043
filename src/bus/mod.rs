//! Kafka: the idempotent producer, the per-partition consumer loop, topics as
//! code (admin), and the embedded mock cluster of `atelier up`.

pub mod consumer;
pub mod embedded;
pub mod producer;
pub mod topics;

pub use consumer::{Batch, HandlerError, PartitionHandler, Record};
pub use embedded::EmbeddedCluster;
pub use producer::{Appended, Producer};

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
