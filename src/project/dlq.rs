//! Dead letters: a record that cannot be processed is appended to the DLQ
//! topic with its original key, headers and bytes, plus headers that say
//! where it came from and why it failed.

use crate::bus::{BusError, Producer, Record};
use crate::event::Topic;
use crate::telemetry::names;

/// DLQ header names.
pub mod header {
    /// The stage that refused it (`project.polls`, `infer`, ...).
    pub const STAGE: &str = "dlq_stage";
    /// Why.
    pub const ERROR: &str = "dlq_error";
    /// Source topic.
    pub const TOPIC: &str = "dlq_source_topic";
    /// Source partition.
    pub const PARTITION: &str = "dlq_source_partition";
    /// Source offset.
    pub const OFFSET: &str = "dlq_source_offset";
    /// Attempts made.
    pub const ATTEMPTS: &str = "dlq_attempts";
}

/// Appends `rec` (from `topic`/`partition`) to the DLQ and waits for the
/// broker's acknowledgement: the caller stores its offset only after that.
pub async fn send(
    producer: &Producer,
    stage: &str,
    topic: &str,
    partition: i32,
    rec: &Record,
    error: &str,
    attempts: u32,
) -> Result<(), BusError> {
    let partition_s = partition.to_string();
    let offset_s = rec.offset.to_string();
    let attempts_s = attempts.to_string();
    let mut headers: Vec<(&str, &[u8])> = rec
        .header_pairs()
        .filter(|(k, _)| !k.starts_with("dlq_"))
        .collect();
    headers.extend([
        (header::STAGE, stage.as_bytes()),
        (header::ERROR, error.as_bytes()),
        (header::TOPIC, topic.as_bytes()),
        (header::PARTITION, partition_s.as_bytes()),
        (header::OFFSET, offset_s.as_bytes()),
        (header::ATTEMPTS, attempts_s.as_bytes()),
    ]);
    producer
        .send_raw(
            &producer.topic(Topic::Dlq),
            rec.key.as_deref(),
            &headers,
            rec.payload.as_deref(),
        )
        .await?;
    metrics::counter!(names::DLQ, "stage" => stage.to_owned()).increment(1);
    tracing::warn!(
        stage,
        topic,
        partition,
        offset = rec.offset,
        error,
        "record sent to the DLQ"
    );
    Ok(())
}
