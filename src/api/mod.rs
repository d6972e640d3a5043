//! The HTTP API (axum): ingest routes that validate, authenticate and append
//! events, and read routes that answer from one view query each, with
//! `?after=<token>` read-your-writes.

mod admin;
mod auth;
mod cards;
mod common;
mod error;
mod feed;
mod json;
pub mod openapi;
mod polls;
mod stream;
pub mod token;
mod uploads;

pub use auth::{Admin, Auth, Authed, Claims, mint};
pub use error::ApiError;
pub use token::Token;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::blob::BlobStore;
use crate::bus::Producer;
use crate::config::{Config, UploadsConfig};
use crate::infer::registry::Catalog;
use crate::project::Watermarks;
use crate::telemetry::names;
use crate::view::ViewStore;

/// Now, at the precision events carry (microseconds, as on the wire and in
/// the views), so that an event compares equal after a round trip. The edge
/// stamps time; the pure core never reads a clock.
pub fn now() -> chrono::DateTime<chrono::Utc> {
    let t = chrono::Utc::now();
    chrono::DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t)
}

/// A fresh, time-ordered id (UUID v7) for a new event or aggregate.
pub fn new_id() -> uuid::Uuid {
    uuid::Uuid::now_v7()
}

/// What every handler can reach.
#[derive(Clone, Debug)]
pub struct AppState {
    /// Appends events.
    pub producer: Producer,
    /// Reads views.
    pub views: Arc<dyn ViewStore>,
    /// Verifies callers.
    pub auth: Arc<Auth>,
    /// Applied offsets, for `?after`.
    pub watermarks: Arc<Watermarks>,
    /// Longest `?after` wait.
    pub max_after_wait: Duration,
    /// Fires at shutdown: long-lived answers (SSE) end so the server can.
    pub shutdown: tokio_util::sync::CancellationToken,
    /// Images (uploads in, outputs out).
    pub blobs: Arc<dyn BlobStore>,
    /// Styles with a published model.
    pub catalog: Arc<Catalog>,
    /// What uploads may be.
    pub uploads: UploadsConfig,
}

impl AppState {
    /// State from configuration and the opened backends.
    pub fn new(
        cfg: &Config,
        producer: Producer,
        views: Arc<dyn ViewStore>,
        auth: Auth,
        watermarks: Arc<Watermarks>,
        blobs: Arc<dyn BlobStore>,
        catalog: Arc<Catalog>,
    ) -> Self {
        Self {
            blobs,
            catalog,
            uploads: cfg.uploads.clone(),
            producer,
            views,
            auth: Arc::new(auth),
            watermarks,
            max_after_wait: Duration::from_millis(cfg.http.max_after_wait_ms),
            shutdown: tokio_util::sync::CancellationToken::new(),
        }
    }
}

/// The whole API.
pub fn router(state: AppState, body_limit: usize) -> Router {
    let upload_limit = state.uploads.max_bytes;
    Router::new()
        .merge(uploads::routes(upload_limit))
        .merge(polls::routes())
        .merge(feed::routes())
        .merge(cards::routes())
        .merge(stream::routes())
        .merge(admin::routes())
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi::serve))
        .fallback(|| async {
            ApiError::not_found("no_route", "no such route; see the README for the API")
        })
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn(observe))
        .with_state(state)
}

async fn metrics(State(_): State<AppState>) -> Response {
    match crate::telemetry::prometheus() {
        Some(h) => h.render().into_response(),
        None => (StatusCode::NOT_FOUND, "metrics recorder not installed").into_response(),
    }
}

/// Records latency and status by route template (never by raw path, which
/// would explode label cardinality).
async fn observe(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let started = Instant::now();
    let res = next.run(req).await;
    metrics::histogram!(names::HTTP_SECONDS, "route" => route.clone())
        .record(started.elapsed().as_secs_f64());
    metrics::counter!(names::HTTP_REQUESTS, "route" => route, "status" => res.status().as_u16().to_string())
        .increment(1);
    res
}
