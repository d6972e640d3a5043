//! Stage 1: fetch and decode. Decodes the upload event, takes the style's
//! loaded model (waiting, bounded, for one still loading), announces
//! `StyleTransferStarted`, fetches the input from the blob store and
//! decodes it off the runtime; refusals become the upload's failure.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::shared::{Shared, event, retry, transfer};
use super::{Job, Ready};
use crate::blob::BlobError;
use crate::event::{EventData, StyleTransferStarted, Topic, wire};
use crate::image::codec;
use crate::telemetry::emit;

pub(super) async fn fetch_and_decode(sh: Arc<Shared>, job: Job, ready: mpsc::Sender<Ready>) {
    let Ok(_slot) = sh.fetch.acquire().await else {
        return;
    };
    let t0 = Instant::now();
    let ev = match wire::decode(
        job.rec.header_pairs(),
        job.rec.payload().unwrap_or_default(),
        Some(Topic::Uploads),
    ) {
        Ok(ev) => ev,
        Err(e) => {
            let dead = sh.out_dlq(&job, &format!("undecodable upload event: {e}"), 1);
            return sh.done(job, vec![dead]);
        }
    };
    let EventData::UploadReceived(upload) = ev.data else {
        let dead = sh.out_dlq(&job, "not an UploadReceived event", 1);
        return sh.done(job, vec![dead]);
    };
    // The model (one loaded copy, shared): it may be loading still.
    let model = retry(
        &sh.cfg,
        "model",
        || async {
            sh.registry
                .get(&upload.style)
                .ok_or_else(|| format!("no model for style {:?}", upload.style.as_str()))
        },
        |_| true,
    )
    .await;
    let model = match model {
        Ok(m) => m,
        Err((reason, attempts)) => return sh.fail(job, &upload, reason, true, attempts),
    };
    let started = event(EventData::StyleTransferStarted(StyleTransferStarted {
        upload: transfer(&upload),
        model_version: model.version.clone(),
    }));
    {
        let p = sh.started.clone();
        tokio::spawn(async move {
            if let Err(e) = p.send(&started).await {
                tracing::debug!(error = %e, "StyleTransferStarted not sent");
            }
        });
    }
    let bytes = retry(
        &sh.cfg,
        "fetch",
        || sh.blobs.get(&upload.object_key),
        BlobError::is_retriable,
    )
    .await;
    let bytes: Bytes = match bytes {
        Ok(b) => b,
        Err((e, attempts)) => {
            let retriable = e.is_retriable();
            return sh.fail(job, &upload, format!("input: {e}"), retriable, attempts);
        }
    };
    let (caps, max_side, bucket) = (sh.caps, sh.cfg.max_side, sh.cfg.bucket);
    let decoded = tokio::task::spawn_blocking(move || {
        codec::decode(&bytes, caps).map(|img| codec::prepare(img, max_side, bucket))
    })
    .await;
    let image = match decoded {
        Ok(Ok(img)) => img,
        Ok(Err(e)) => return sh.fail(job, &upload, e.0, false, 1),
        Err(e) => return sh.fail(job, &upload, format!("decoder crashed: {e}"), false, 1),
    };
    let decode_ms = t0.elapsed().as_millis() as u64;
    emit::infer_stage("decode", t0.elapsed());
    let r = Ready {
        job,
        upload,
        model,
        image,
        decode_ms,
        ready_at: Instant::now(),
    };
    if let Err(mpsc::error::SendError(r)) = ready.send(r).await {
        // Shutting down: the upload stays uncommitted and runs again.
        drop(r);
    }
}
