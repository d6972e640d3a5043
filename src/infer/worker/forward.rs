//! Stage 3: the forward pass, on the model thread (libtorch's intra-op
//! pool, never the async runtime), one batch at a time.

use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::shared::Shared;
use super::{Inferred, Ready};
use crate::infer::model::Pixels;
use crate::telemetry::emit;

/// The model thread: runs batches, one at a time, with libtorch's own
/// intra-op threads; transient model errors are retried, others fail the
/// batch's uploads.
pub(super) fn model_loop(
    sh: &Shared,
    mut rx: mpsc::Receiver<Vec<Ready>>,
    tx: mpsc::Sender<Inferred>,
) {
    while let Some(batch) = rx.blocking_recv() {
        let start = Instant::now();
        let first = &batch[0];
        let (h, w) = (first.image.bucket_h, first.image.bucket_w);
        let model = first.model.clone();
        let mut data = Vec::with_capacity(batch.len() * (h * w * 3) as usize);
        for r in &batch {
            data.extend_from_slice(&r.image.pixels);
        }
        let input = Pixels {
            n: batch.len(),
            height: h,
            width: w,
            data: &data,
        };
        let mut delay = Duration::from_millis(sh.cfg.retry_base_ms.max(1));
        let mut attempts = 0;
        let result = loop {
            attempts += 1;
            match model.model.run(input) {
                Err(e) if e.retriable && attempts < sh.cfg.attempts.max(1) => {
                    emit::infer_retry("model");
                    tracing::warn!(error = %e, ?delay, "model failed; retrying");
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                r => break r,
            }
        };
        let elapsed = start.elapsed();
        emit::infer_batch(model.style.to_string(), batch.len(), elapsed);
        let infer_ms = elapsed.as_millis() as u64 / batch.len() as u64;
        let size = batch.len() as u32;
        match result {
            Ok(out) => {
                let per = (h * w * 3) as usize;
                for (i, ready) in batch.into_iter().enumerate() {
                    let queue_ms =
                        start.saturating_duration_since(ready.ready_at).as_millis() as u64;
                    emit::infer_stage("queue", Duration::from_millis(queue_ms));
                    let item = Inferred {
                        pixels: out[i * per..(i + 1) * per].to_vec(),
                        ready,
                        queue_ms,
                        infer_ms,
                        batch: size,
                    };
                    if tx.blocking_send(item).is_err() {
                        return;
                    }
                }
            }
            Err(e) => {
                for r in batch {
                    sh.fail(
                        r.job,
                        &r.upload,
                        format!("model: {}", e.message),
                        e.retriable,
                        attempts,
                    );
                }
            }
        }
    }
}
