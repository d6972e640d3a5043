//! Dead letters: a record that cannot be processed is appended to the DLQ
//! topic with its original key, headers and bytes, plus headers that say
//! where it came from and why it failed. The operations routes read them
//! (`read`) and re-publish them (`replay`), leaving replay markers in the
//! DLQ (`letters` says which record is which).

pub mod letters;
pub mod read;
pub mod replay;

pub use letters::{Cursor, DeadLetter, Edits, Filter, Place, Pos, Replayed};
pub use read::DlqLog;

use crate::bus::{BusError, Producer, Record};
use crate::event::Topic;

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
    /// On a replay marker (value `replayed`): the record is no dead letter
    /// but says that one was re-published.
    pub const MARKER: &str = "dlq_marker";
    /// On a marker and on the copy: the dead letter replayed, as
    /// `<dlq topic>/<partition>/<offset>`.
    pub const REPLAY_OF: &str = "dlq_replay_of";
    /// On a marker: where the copy went, `<topic>/<partition>/<offset>`.
    pub const REPLAYED_TO: &str = "dlq_replayed_to";
    /// On a marker: the admin who replayed it.
    pub const REPLAYED_BY: &str = "dlq_replayed_by";
    /// On a marker (value `true`): the copy's body or headers were edited.
    pub const REPLAY_EDITED: &str = "dlq_replay_edited";
}

/// Why reading or replaying dead letters failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DlqError {
    /// The log failed.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// A read task failed.
    #[error("reading the DLQ: {0}")]
    Read(String),
    /// The DLQ was not read to its end in time.
    #[error("the DLQ could not be read to its end within {0:?}")]
    Timeout(std::time::Duration),
    /// No dead letter there.
    #[error("no dead letter at {0}")]
    Unknown(Pos),
    /// Not replayable as asked.
    #[error(transparent)]
    Unreplayable(#[from] letters::Unreplayable),
    /// Replayed before (and not forced).
    #[error("dead letter {of} was already replayed to {replayed}")]
    AlreadyReplayed {
        /// The dead letter.
        of: Pos,
        /// Its latest replay.
        replayed: Replayed,
    },
    /// Publishing failed; `done` replays (copy and marker) went through
    /// before (none within a transaction: it was aborted).
    #[error("replay failed after {done} of {total} were published: {error}")]
    Publish {
        /// Replays completed.
        done: usize,
        /// Replays asked.
        total: usize,
        /// Why.
        error: String,
    },
    /// A copy went out but its marker did not (only without transactions):
    /// replaying it again would publish it twice.
    #[error(
        "the copy of {of} was published to {to} but its replay marker was not ({error}); \
         do not replay it again"
    )]
    MarkerLost {
        /// The dead letter.
        of: Pos,
        /// Where its copy went.
        to: Place,
        /// Why the marker failed.
        error: String,
    },
}

impl From<rdkafka::error::KafkaError> for DlqError {
    fn from(e: rdkafka::error::KafkaError) -> Self {
        DlqError::Bus(BusError::Kafka(e))
    }
}

impl DlqError {
    /// Whether trying again may succeed.
    pub fn is_retriable(&self) -> bool {
        matches!(
            self,
            DlqError::Bus(_) | DlqError::Read(_) | DlqError::Timeout(_) | DlqError::Publish { .. }
        )
    }
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
    // A replayed copy that fails again keeps `dlq_replay_of`: its new dead
    // letter links back to the one it was replayed from.
    let mut hs: Vec<(String, Vec<u8>)> = rec
        .header_pairs()
        .filter(|(k, _)| !k.starts_with("dlq_") || *k == header::REPLAY_OF)
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
        .send_raw(&producer.topic(Topic::Dlq), rec.key(), &hs, rec.payload())
        .await?;
    crate::telemetry::emit::dead_letter(stage);
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
