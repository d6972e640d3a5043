//! `POST /v1/admin/blobs/gc`: finds and removes orphaned images.
//!
//! An upload stores its image first and appends `UploadReceived` second; a
//! crash (or a failed append) between the two leaves an image no event
//! names, and nothing would ever read or delete it. An inference worker
//! stopped between storing an output and committing its completion leaves
//! an output no completion names (a rerun writes the same key, so only an
//! upload the log never had leaves one for good).
//!
//! The sweep lists the blob store's `uploads/` and `outputs/` keys. Each
//! names its upload id, a UUID v7 whose first 48 bits are when the edge
//! made it. An image is an orphan when its upload is older than
//! `uploads.orphan_grace_secs` (an upload in progress appends its event
//! within seconds of storing its image) and the cards view, once it has
//! applied the whole uploads topic as it stood when the sweep began, has
//! no such upload. `atelier up` sweeps once at start (the embedded blob
//! store is the data directory's); `atelier gc` calls this route.

use std::collections::HashSet;

use aide::axum::ApiRouter;
use aide::axum::routing::post_with;
use axum::Json;
use axum::extract::State;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::super::common::wait_applied;
use super::super::contract::op;
use super::super::json::QueryParams;
use super::super::token::Token;
use super::super::{Admin, ApiError, AppState};
use crate::event::{Topic, UploadId};
use crate::view::cards::VIEW;

pub(super) fn routes() -> ApiRouter<AppState> {
    ApiRouter::new().api_route(
        "/v1/admin/blobs/gc",
        post_with(gc, |t| {
            op(
                t,
                "sweepBlobs",
                "admin",
                "Remove orphaned images",
                "Deletes every stored input or output image whose upload is older than \
                 `uploads.orphan_grace_secs` and unknown to the cards view, once the view has \
                 applied the uploads topic as it stood when the sweep began (an image stored \
                 by an upload whose event was never appended: a crash between the two). \
                 `?dry_run=true` only counts them. 503 `not_yet_applied` while the view is \
                 behind; retry.",
                &[503],
            )
        }),
    )
}

/// Whether to delete.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct GcQuery {
    /// Count the orphans, delete nothing.
    dry_run: Option<bool>,
}

/// What a sweep found.
#[derive(Debug, Default, Serialize, JsonSchema)]
#[schemars(rename = "BlobSweep")]
pub(crate) struct Swept {
    /// Image keys listed.
    pub(crate) scanned: usize,
    /// Keys of uploads the view knows: kept.
    pub(crate) known: usize,
    /// Keys of uploads younger than the grace period: kept.
    pub(crate) recent: usize,
    /// Keys that name no upload (not written by atelier): kept.
    pub(crate) foreign: usize,
    /// Orphans deleted (or, on a dry run, found).
    pub(crate) orphans: usize,
    /// Partial files of image writes a crash interrupted, older than the
    /// grace period, deleted (left alone on a dry run).
    pub(crate) interrupted: usize,
    /// The first orphans' keys.
    pub(crate) sample: Vec<String>,
    /// Whether anything was deleted.
    pub(crate) dry_run: bool,
}

/// The upload id a blob key names: `uploads/{id}/…` or `outputs/{id}/…`.
fn upload_of(key: &str) -> Option<UploadId> {
    let rest = key
        .strip_prefix("uploads/")
        .or_else(|| key.strip_prefix("outputs/"))?;
    UploadId::parse(rest.split('/').next()?).ok()
}

/// When the edge made an upload id (UUID v7), in milliseconds since the
/// epoch; `None` for another version.
fn made_ms(id: UploadId) -> Option<u64> {
    let ts = id.0.get_timestamp()?;
    let (s, n) = ts.to_unix();
    Some(s * 1000 + u64::from(n) / 1_000_000)
}

/// The sweep (see the module's documentation).
pub(crate) async fn sweep(st: &AppState, dry_run: bool) -> Result<Swept, ApiError> {
    let unavailable = |e: String| ApiError::unavailable("blobs_unavailable", e);
    // Every upload the log had when the sweep began is in the view first.
    let topic = st.producer.topic(Topic::Uploads);
    let ends = st
        .heads
        .of(&topic)
        .await
        .map_err(|e| ApiError::unavailable("log_unavailable", e.to_string()))?;
    for (partition, end) in ends {
        if end > 0 {
            let t = Token {
                topic: Topic::Uploads,
                partition,
                offset: end - 1,
            };
            wait_applied(st, VIEW, &t).await?;
        }
    }
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let grace_ms = st.uploads.orphan_grace_secs.saturating_mul(1000);
    let mut keys = st
        .blobs
        .list("uploads/")
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    keys.extend(
        st.blobs
            .list("outputs/")
            .await
            .map_err(|e| unavailable(e.to_string()))?,
    );
    let cards = st.views.cards().await?;
    let mut out = Swept {
        scanned: keys.len(),
        dry_run,
        ..Swept::default()
    };
    if !dry_run {
        out.interrupted = st
            .blobs
            .remove_interrupted(std::time::Duration::from_millis(grace_ms))
            .await
            .map_err(|e| unavailable(e.to_string()))?;
    }
    let mut known: HashSet<UploadId> = HashSet::new();
    let mut unknown: HashSet<UploadId> = HashSet::new();
    for key in keys {
        let Some(id) = upload_of(&key) else {
            out.foreign += 1;
            continue;
        };
        if made_ms(id).is_none_or(|t| t + grace_ms > now_ms) {
            out.recent += 1;
            continue;
        }
        if !known.contains(&id) && !unknown.contains(&id) {
            if cards.upload(id).await?.is_some() {
                known.insert(id);
            } else {
                unknown.insert(id);
            }
        }
        if known.contains(&id) {
            out.known += 1;
            continue;
        }
        if !dry_run {
            match st.blobs.delete(&key).await {
                Ok(()) | Err(crate::blob::BlobError::NotFound(_)) => {}
                Err(e) => return Err(unavailable(e.to_string())),
            }
        }
        out.orphans += 1;
        if out.sample.len() < 20 {
            out.sample.push(key);
        }
    }
    if out.orphans > 0 {
        tracing::info!(
            orphans = out.orphans,
            dry_run,
            "orphaned images {}",
            if dry_run { "found" } else { "deleted" }
        );
    }
    Ok(out)
}

async fn gc(
    State(st): State<AppState>,
    Admin(who): Admin,
    QueryParams(q): QueryParams<GcQuery>,
) -> Result<Json<Swept>, ApiError> {
    let swept = sweep(&st, q.dry_run.unwrap_or(false)).await?;
    tracing::info!(admin = %who.id, orphans = swept.orphans, "blob sweep");
    Ok(Json(swept))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_their_upload_and_its_time() {
        let id = UploadId(uuid::Uuid::now_v7());
        assert_eq!(
            upload_of(&format!("uploads/{id}/abc/original.png")),
            Some(id)
        );
        assert_eq!(upload_of(&format!("outputs/{id}/sketch-v1.jpg")), Some(id));
        assert_eq!(upload_of("uploads/not-an-id/x"), None);
        assert_eq!(upload_of("models/sketch/v1.pt"), None);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let made = made_ms(id).unwrap();
        assert!(made <= now && now - made < 5_000, "{made} vs {now}");
        assert_eq!(made_ms(UploadId(uuid::Uuid::new_v4())), None);
    }
}
