//! What the stages share: configuration, clients, the committer's inbox,
//! and how an upload's outcome is told (a completion, or a failure event
//! plus a dead letter), with the capped retry every stage uses.

use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use tokio::sync::Semaphore;

use super::commit::{Done, Out, ToCommitter};
use super::{Job, STAGE};
use crate::blob::BlobStore;
use crate::bus::Producer;
use crate::config::{InferConfig, KafkaConfig};
use crate::dlq;
use crate::event::{
    Event, EventData, EventId, StyleTransferFailed, Topic, TransferRef, UploadReceived, wire,
};
use crate::image::codec::Caps;
use crate::infer::publish::system_principal;
use crate::infer::registry::Registry;
use crate::telemetry::emit;

/// What the stages share.
pub(super) struct Shared {
    pub(super) cfg: InferConfig,
    pub(super) caps: Caps,
    pub(super) kafka: KafkaConfig,
    pub(super) registry: Arc<Registry>,
    pub(super) blobs: Arc<dyn BlobStore>,
    /// Sends `StyleTransferStarted` (informational, outside transactions).
    pub(super) started: Producer,
    pub(super) commit: std_mpsc::Sender<ToCommitter>,
    /// Bounds concurrent fetch-and-decode tasks.
    pub(super) fetch: Semaphore,
    /// Bounds concurrent encode-and-store tasks.
    pub(super) store: Semaphore,
}

/// Retries `op` while its error is transient, with capped exponential
/// backoff; answers the last error and the attempts made.
pub(super) async fn retry<T, E, F, Fut>(
    cfg: &InferConfig,
    stage: &'static str,
    mut op: F,
    transient: impl Fn(&E) -> bool,
) -> Result<T, (E, u32)>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    let attempts = cfg.attempts.max(1);
    let mut delay = Duration::from_millis(cfg.retry_base_ms.max(1));
    for attempt in 1..=attempts {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if transient(&e) && attempt < attempts => {
                emit::infer_retry(stage);
                tracing::warn!(stage, attempt, error = %e, ?delay, "transient failure; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err((e, attempt)),
        }
    }
    unreachable!("the last attempt returns")
}

pub(super) fn event(data: EventData) -> Event {
    Event {
        id: EventId(uuid::Uuid::now_v7()),
        time: crate::edge::now(),
        principal: system_principal("infer"),
        data,
    }
}

pub(super) fn transfer(u: &UploadReceived) -> TransferRef {
    TransferRef {
        upload_id: u.upload_id,
        session_key: u.session_key.clone(),
        slot: u.slot,
        style: u.style.clone(),
    }
}

/// The output key: next to the input (whose directory is unguessable),
/// named by style and model version, so a re-run overwrites.
pub fn output_key(u: &UploadReceived, version: &crate::event::ModelVersion) -> String {
    match u.object_key.rsplit_once('/') {
        Some((dir, _)) => format!("{dir}/{}-{version}.jpg", u.style),
        None => format!("outputs/{}/{}-{version}.jpg", u.upload_id, u.style),
    }
}

impl Shared {
    pub(super) fn out_event(&self, e: &Event) -> Out {
        let w = wire::encode(e, "atelier/infer");
        Out {
            topic: self.kafka.topic(w.topic),
            key: Some(w.key.into_bytes()),
            headers: w.headers,
            body: w.body,
        }
    }

    pub(super) fn out_dlq(&self, job: &Job, error: &str, attempts: u32) -> Out {
        emit::dead_letter(STAGE);
        tracing::warn!(
            offset = job.rec.offset,
            partition = job.tp.1,
            error,
            "upload to the DLQ"
        );
        Out {
            topic: self.kafka.topic(Topic::Dlq),
            key: job.rec.key().map(<[u8]>::to_vec),
            headers: dlq::headers(STAGE, &job.tp.0, job.tp.1, &job.rec, error, attempts),
            body: job.rec.payload().unwrap_or_default().to_vec(),
        }
    }

    pub(super) fn done(&self, job: Job, outs: Vec<Out>) {
        let _ = self.commit.send(ToCommitter::Done(Done {
            tp: job.tp,
            generation: job.generation,
            offset: job.rec.offset,
            outs,
            permit: job.permit,
        }));
    }

    /// The upload failed: a failure event for its card, and a dead letter.
    pub(super) fn fail(
        &self,
        job: Job,
        upload: &UploadReceived,
        reason: String,
        retriable: bool,
        attempts: u32,
    ) {
        emit::infer_done("failed");
        let failed = self.out_event(&event(EventData::StyleTransferFailed(
            StyleTransferFailed {
                upload: transfer(upload),
                reason: reason.clone(),
                retriable,
            },
        )));
        let dead = self.out_dlq(&job, &reason, attempts);
        self.done(job, vec![failed, dead]);
    }
}
