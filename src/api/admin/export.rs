//! `/v1/admin` routes: export.

use axum::Router;

use crate::api::AppState;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
}
