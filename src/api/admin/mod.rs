//! Operations routes under `/v1/admin`, for callers in `auth.admins` (the
//! CLI's `replay`, `dlq` and `export` commands talk to these, so they work
//! the same against the embedded default and against real services):
//! view generations and rebuilds, dead letters, exports, orphaned images.

mod blobs;
mod dlq;
mod export;
mod replay;

use aide::axum::ApiRouter;

pub(crate) use blobs::sweep;

use super::AppState;

pub(super) fn routes() -> ApiRouter<AppState> {
    ApiRouter::new()
        .merge(replay::routes())
        .merge(dlq::routes())
        .merge(export::routes())
        .merge(blobs::routes())
}
