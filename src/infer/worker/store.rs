//! Stage 4: encode and store. Crops the model's output to the image,
//! encodes a JPEG off the runtime, writes it under its deterministic key
//! (a re-run overwrites) and tells the committer the upload completed.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::Inferred;
use super::shared::{Shared, event, output_key, retry, transfer};
use crate::blob::BlobError;
use crate::event::{EventData, StyleTransferCompleted, Timings};
use crate::image::codec;
use crate::telemetry::emit;

pub(super) async fn storer(sh: Arc<Shared>, mut rx: mpsc::Receiver<Inferred>) {
    while let Some(item) = rx.recv().await {
        tokio::spawn(encode_and_store(sh.clone(), item));
    }
}

async fn encode_and_store(sh: Arc<Shared>, item: Inferred) {
    let Ok(_slot) = sh.store.acquire().await else {
        return;
    };
    let t0 = Instant::now();
    let Inferred {
        ready,
        pixels,
        queue_ms,
        infer_ms,
        batch,
    } = item;
    let img = &ready.image;
    let (bw, w, h, q) = (img.bucket_w, img.width, img.height, sh.cfg.jpeg_quality);
    let encoded = tokio::task::spawn_blocking(move || {
        codec::encode_jpeg(&codec::crop(&pixels, bw, w, h), w, h, q)
    })
    .await;
    let jpeg = match encoded {
        Ok(Ok(j)) => Bytes::from(j),
        Ok(Err(e)) => return sh.fail(ready.job, &ready.upload, e.0, false, 1),
        Err(e) => {
            return sh.fail(
                ready.job,
                &ready.upload,
                format!("encoder crashed: {e}"),
                false,
                1,
            );
        }
    };
    let key = output_key(&ready.upload, &ready.model.version);
    let stored = retry(
        &sh.cfg,
        "store",
        || sh.blobs.put(&key, jpeg.clone(), "image/jpeg"),
        BlobError::is_retriable,
    )
    .await;
    if let Err((e, attempts)) = stored {
        let retriable = e.is_retriable();
        return sh.fail(
            ready.job,
            &ready.upload,
            format!("output: {e}"),
            retriable,
            attempts,
        );
    }
    let encode_ms = t0.elapsed().as_millis() as u64;
    emit::infer_stage("encode", t0.elapsed());
    emit::infer_done("completed");
    let completed = sh.out_event(&event(EventData::StyleTransferCompleted(
        StyleTransferCompleted {
            upload: transfer(&ready.upload),
            output_key: key,
            model_version: ready.model.version.clone(),
            timings: Timings {
                queue_ms,
                decode_ms: ready.decode_ms,
                infer_ms,
                encode_ms,
                batch,
            },
        },
    )));
    tracing::debug!(
        upload = %ready.upload.upload_id,
        total_ms = ready.job.consumed.elapsed().as_millis() as u64,
        "stylized"
    );
    sh.done(ready.job, vec![completed]);
}
