//! Stage 2: batching. Groups decoded images by style, model version and
//! shape bucket, and hands a batch to the model thread when it is full
//! (`max_batch`, `max_batch_pixels`) or its oldest image waited
//! `max_delay_ms`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::Ready;
use super::shared::Shared;

type BatchKey = (String, String, u32, u32);

/// Groups ready images by (style, version, bucket) and hands a batch to the
/// model thread when it is full or its oldest image has waited long enough.
pub(super) async fn batcher(
    sh: Arc<Shared>,
    mut rx: mpsc::Receiver<Ready>,
    tx: mpsc::Sender<Vec<Ready>>,
) {
    let max_delay = Duration::from_millis(sh.cfg.max_delay_ms);
    let max_batch = sh.cfg.max_batch.max(1);
    let max_pixels = sh.cfg.max_batch_pixels.max(1);
    let mut groups: BTreeMap<BatchKey, (Instant, Vec<Ready>)> = BTreeMap::new();
    loop {
        let deadline = groups.values().map(|(t, _)| *t + max_delay).min();
        let next = tokio::select! {
            r = rx.recv() => match r {
                Some(r) => Some(r),
                None => return,
            },
            _ = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d.into()).await,
                    None => std::future::pending().await,
                }
            } => None,
        };
        let mut full = Vec::new();
        if let Some(r) = next {
            let key = (
                r.model.style.to_string(),
                r.model.version.to_string(),
                r.image.bucket_w,
                r.image.bucket_h,
            );
            let px = u64::from(r.image.bucket_w) * u64::from(r.image.bucket_h);
            let g = groups
                .entry(key.clone())
                .or_insert_with(|| (Instant::now(), Vec::new()));
            g.1.push(r);
            if g.1.len() >= max_batch || px * (g.1.len() as u64 + 1) > max_pixels {
                full.push(key);
            }
        }
        let now = Instant::now();
        full.extend(
            groups
                .iter()
                .filter(|(_, (t, _))| now >= *t + max_delay)
                .map(|(k, _)| k.clone()),
        );
        for key in full {
            if let Some((_, batch)) = groups.remove(&key)
                && tx.send(batch).await.is_err()
            {
                return;
            }
        }
    }
}
