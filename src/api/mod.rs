//! The HTTP API (axum): ingest routes that validate, authenticate and append
//! events, and read routes that answer from one view query each, with
//! `?after=<token>` read-your-writes.

mod admin;
mod auth;
mod cards;
mod common;
mod dashboard;
mod error;
mod feed;
mod json;
pub mod openapi;
mod pipeline;
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
use crate::bus::{Heads, Producer};
use crate::config::{Config, KafkaConfig, UploadsConfig};
use crate::infer::registry::Catalog;
use crate::project::Watermarks;
use crate::view::Generations;

/// What every handler can reach, built complete by the composition root.
#[derive(Clone, Debug)]
pub struct AppState {
    /// Appends events.
    pub producer: Producer,
    /// Reads views (each from its active generation).
    pub views: Arc<Generations>,
    /// Where the topics end (lag, replay progress, readiness).
    pub heads: Heads,
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
    /// The log's configuration (namespace, properties), for the operations
    /// routes that open their own clients (DLQ reads and replays).
    pub kafka: KafkaConfig,
    /// Bootstrap servers of the log (the embedded cluster's when embedded).
    pub brokers: String,
    /// Most records the views may lag for `/readyz` to answer ready.
    pub ready_lag: u64,
    /// The last pipeline measurement (`/readyz`, `/v1/pipeline`).
    pub(crate) health: Arc<tokio::sync::Mutex<Option<(Instant, pipeline::Measured)>>>,
}

/// The running parts the API is built over.
#[derive(Debug)]
pub struct Parts {
    /// Appends events.
    pub producer: Producer,
    /// The views' generations.
    pub views: Arc<Generations>,
    /// Where the topics end.
    pub heads: Heads,
    /// Verifies callers.
    pub auth: Auth,
    /// Applied offsets.
    pub watermarks: Arc<Watermarks>,
    /// Images.
    pub blobs: Arc<dyn BlobStore>,
    /// Styles with a published model.
    pub catalog: Arc<Catalog>,
    /// Bootstrap servers of the log.
    pub brokers: String,
    /// Fires at shutdown.
    pub shutdown: tokio_util::sync::CancellationToken,
}

impl AppState {
    /// State from configuration and the running parts.
    pub fn new(cfg: &Config, p: Parts) -> Self {
        Self {
            producer: p.producer,
            views: p.views,
            heads: p.heads,
            auth: Arc::new(p.auth),
            watermarks: p.watermarks,
            max_after_wait: Duration::from_millis(cfg.http.max_after_wait_ms),
            shutdown: p.shutdown,
            blobs: p.blobs,
            catalog: p.catalog,
            uploads: cfg.uploads.clone(),
            kafka: cfg.kafka.clone(),
            brokers: p.brokers,
            ready_lag: cfg.http.ready_lag,
            health: Arc::default(),
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
        .merge(dashboard::routes())
        .merge(pipeline::routes())
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

/// The request id header: taken from the caller when it is a sane token
/// (a proxy's), otherwise minted; echoed on the answer and carried by every
/// log line of the request.
pub const REQUEST_ID: &str = "x-request-id";

/// Records latency and status by route template (never by raw path, which
/// would explode label cardinality), and runs the request in a span with
/// its request id.
async fn observe(req: Request, next: Next) -> Response {
    use tracing::Instrument;
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let request_id = req
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        })
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    let span = tracing::info_span!("request", request_id = %request_id, method = %req.method(), route = %route);
    let started = Instant::now();
    let mut res = next.run(req).instrument(span.clone()).await;
    span.in_scope(|| {
        tracing::debug!(
            status = res.status().as_u16(),
            ms = started.elapsed().as_secs_f64() * 1e3,
            "request served"
        )
    });
    if let Ok(v) = axum::http::HeaderValue::from_str(&request_id) {
        res.headers_mut().insert(REQUEST_ID, v);
    }
    crate::telemetry::emit::http_request(route, res.status().as_u16(), started.elapsed());
    res
}
