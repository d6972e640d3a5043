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

/// The headers of `rec`'s dead letter: its own (earlier `dlq_` ones
/// dropped), then where it came from and why it failed.
pub fn headers(
    stage: &str,
    topic: &str,
    partition: i32,
    rec: &Record,
    error: &str,
    attempts: u32,
) -> Vec<(String, Vec<u8>)> {
    let mut hs: Vec<(String, Vec<u8>)> = rec
        .header_pairs()
        .filter(|(k, _)| !k.starts_with("dlq_"))
        .map(|(k, v)| (k.to_owned(), v.to_vec()))
        .collect();
    hs.extend([
        (header::STAGE.to_owned(), stage.as_bytes().to_vec()),
        (header::ERROR.to_owned(), error.as_bytes().to_vec()),
        (header::TOPIC.to_owned(), topic.as_bytes().to_vec()),
        (
            header::PARTITION.to_owned(),
            partition.to_string().into_bytes(),
        ),
        (
            header::OFFSET.to_owned(),
            rec.offset.to_string().into_bytes(),
        ),
        (
            header::ATTEMPTS.to_owned(),
            attempts.to_string().into_bytes(),
        ),
    ]);
    hs
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
    let owned = headers(stage, topic, partition, rec, error, attempts);
    let hs: Vec<(&str, &[u8])> = owned
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_slice()))
        .collect();
    producer
        .send_raw(
            &producer.topic(Topic::Dlq),
            rec.key.as_deref(),
            &hs,
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
