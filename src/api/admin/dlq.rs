//! `/v1/admin` routes: dlq.

use axum::Router;

use crate::api::AppState;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
}
