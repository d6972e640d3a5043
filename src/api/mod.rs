//! The HTTP API (axum): ingest routes that validate, authenticate and append
//! events, and read routes that answer from one view query each, with
//! `?after=<token>` read-your-writes.

pub mod access;
mod admin;
mod auth;
mod cards;
mod common;
mod contract;
mod dashboard;
mod error;
mod feed;
mod json;
mod limits;
mod pipeline;
mod polls;
mod stream;
pub mod token;
mod uploads;

pub use access::session_key_for;
pub use auth::{Admin, Auth, Authed, Caller, Claims, Reader, mint, refresh_jwks};
pub use error::{ApiError, ErrorBody};
pub use token::Token;

use std::sync::Arc;
use std::time::{Duration, Instant};

use aide::axum::ApiRouter;
use aide::axum::routing::get_with;
use aide::openapi::OpenApi;
use axum::extract::{DefaultBodyLimit, FromRequestParts, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};

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
    /// How far each partition is known to reach (`?after` tokens).
    pub(crate) reached: Arc<common::Reached>,
    /// Aggregates the store refused a write of (reads say so).
    pub(crate) degraded: Arc<common::DegradedMarks>,
    /// Per-caller limits.
    pub(crate) limits: Arc<limits::Limits>,
    /// Session owners and signed links.
    pub(crate) links: Arc<access::Links>,
}

impl AppState {
    /// Until `shutdown`, every minute: the rate limiters forget callers
    /// idle long enough to be back at a full allowance (bounds their memory
    /// by the recently active callers).
    pub async fn forget_idle_callers(self, shutdown: tokio_util::sync::CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(60)) => self.limits.forget_idle(),
            }
        }
    }
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
    pub auth: Arc<Auth>,
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
            auth: p.auth,
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
            reached: Arc::default(),
            degraded: Arc::default(),
            limits: Arc::new(limits::Limits::new(&cfg.limits)),
            links: Arc::new(links(cfg)),
        }
    }
}

/// The link key, or (unconfigured, which only the embedded log allows) a
/// random one for this process: a key anyone knows would let anyone mint
/// another's sessions.
fn links(cfg: &Config) -> access::Links {
    let key = cfg.auth.link_key.expose();
    if key.is_empty() {
        tracing::warn!(
            "auth.link_key is not set: sessions and signed links last as long as this process"
        );
        let random: [u8; 32] = rand::random();
        return access::Links::new(&random, cfg.auth.link_ttl_secs);
    }
    access::Links::new(key.as_bytes(), cfg.auth.link_ttl_secs)
}

/// Sweeps orphaned images once (see `POST /v1/admin/blobs/gc`), as soon as
/// the cards view has caught up with the uploads topic, retrying while it
/// is behind; gives up at shutdown or after about five minutes.
pub async fn sweep_blobs_at_start(st: AppState, token: tokio_util::sync::CancellationToken) {
    for _ in 0..150 {
        let r = tokio::select! {
            r = admin::sweep(&st, false) => r,
            _ = token.cancelled() => return,
        };
        match r {
            Ok(s) => {
                tracing::info!(
                    scanned = s.scanned,
                    orphans = s.orphans,
                    interrupted = s.interrupted,
                    "blob sweep at start"
                );
                return;
            }
            Err(e) if e.status == axum::http::StatusCode::SERVICE_UNAVAILABLE => {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                    _ = token.cancelled() => return,
                }
            }
            Err(e) => {
                tracing::warn!(error = %e.reason, "the blob sweep at start failed");
                return;
            }
        }
    }
}

/// Every route, each declared once with its documentation.
fn routes(upload_limit: usize) -> ApiRouter<AppState> {
    ApiRouter::new()
        .merge(uploads::routes(upload_limit))
        .merge(polls::routes())
        .merge(feed::routes())
        .merge(cards::routes())
        .merge(stream::routes())
        .merge(admin::routes())
        .merge(dashboard::routes())
        .merge(pipeline::routes())
        .api_route(
            "/healthz",
            get_with(healthz, |t| {
                contract::op(
                    t,
                    "healthz",
                    "ops",
                    "Liveness",
                    "Answers `ok` while the process serves.",
                    &[],
                )
            }),
        )
        .api_route(
            "/metrics",
            get_with(metrics, |t| {
                contract::op(
                    t,
                    "metrics",
                    "ops",
                    "Prometheus metrics",
                    "The Prometheus text exposition of the process's metrics; 404 when no \
                     recorder is installed in this process. With `http.ops_token`, \
                     administrators only (401, 403 `not_admin`); with `http.ops_listen`, \
                     served there instead.",
                    &[401, 403, 404],
                )
            }),
        )
        .api_route(
            "/openapi.json",
            get_with(openapi, |t| {
                contract::op(
                    t,
                    "openapi",
                    "ops",
                    "This OpenAPI document",
                    "The OpenAPI 3.1 description of every route, generated from the code.",
                    &[],
                )
            }),
        )
}

/// The OpenAPI document of the routes.
fn build(upload_limit: usize) -> (Router<AppState>, OpenApi) {
    let mut api = OpenApi::default();
    let router = routes(upload_limit).finish_api_with(&mut api, |mut t| {
        contract::finish(t.inner_mut());
        t
    });
    (router, api)
}

/// The OpenAPI 3.1 document of the whole API, generated from the routes.
pub fn document() -> serde_json::Value {
    let (_, api) = build(UploadsConfig::default().max_bytes);
    serde_json::to_value(&api).expect("the document serializes")
}

/// Which listener a router serves (see `http.ops_listen`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    /// The API's, with the operations endpoints too.
    All,
    /// The API's; the operations endpoints are on another.
    Api,
    /// The operations endpoints' own: `/metrics`, `/v1/pipeline`,
    /// `/healthz`, `/readyz`.
    Ops,
}

/// The operations endpoints `http.ops_listen` moves and `http.ops_token`
/// guards.
const OPS_PATHS: [&str; 2] = ["/metrics", "/v1/pipeline"];

/// Routes a request by listener, and asks for an administrator on the
/// operations endpoints when `http.ops_token` is set.
async fn ops_gate(
    State((st, listener, token)): State<(AppState, Listener, bool)>,
    req: Request,
    next: Next,
) -> Response {
    let path = req.uri().path();
    let ops = OPS_PATHS.contains(&path);
    let here = match listener {
        Listener::All => true,
        Listener::Api => !ops,
        Listener::Ops => ops || matches!(path, "/healthz" | "/readyz"),
    };
    if !here {
        return ApiError::not_found("no_route", "not served on this listener (http.ops_listen)")
            .into_response();
    }
    if ops && token {
        let (mut parts, body) = req.into_parts();
        if let Err(e) =
            <Admin as FromRequestParts<AppState>>::from_request_parts(&mut parts, &st).await
        {
            return e.into_response();
        }
        return next.run(Request::from_parts(parts, body)).await;
    }
    next.run(req).await
}

/// The whole API.
pub fn router(state: AppState, body_limit: usize) -> Router {
    router_for(state, body_limit, Listener::All, false)
}

/// The API as one listener serves it.
pub fn router_for(
    state: AppState,
    body_limit: usize,
    listener: Listener,
    ops_token: bool,
) -> Router {
    let (router, api) = build(state.uploads.max_bytes);
    let upload_limit = state.uploads.max_bytes;
    let doc = Arc::new(serde_json::to_value(&api).expect("the document serializes"));
    router
        .layer(axum::Extension(Document(doc)))
        .fallback(|| async {
            ApiError::not_found("no_route", "no such route; see the README for the API")
        })
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn(move |req, next| {
            refuse_oversized(body_limit, upload_limit, req, next)
        }))
        .layer(middleware::from_fn_with_state(state.clone(), limits::reads))
        .layer(middleware::from_fn_with_state(
            (state.clone(), listener, ops_token),
            ops_gate,
        ))
        .layer(middleware::from_fn(observe))
        .with_state(state)
}

/// The most bytes an oversized body is read (and dropped) before its 413.
const DRAIN_MAX: u64 = 64 << 20;

/// A body whose `Content-Length` is over `limit` (a multipart upload: over
/// `upload_limit`, the image's, and the form around it) is answered 413
/// (`body_too_large`, `image_too_large`) after its bytes are read and
/// dropped, up to [`DRAIN_MAX`]: a client that sends its whole body before
/// it reads the answer then reads the 413 with its reason, not a reset
/// connection. A client that sent `Expect: 100-continue` gets the 413
/// before it sends a byte (nothing is read, so no `100 Continue` goes
/// out). Past `DRAIN_MAX` the connection is closed after the answer. An
/// upload of unknown length is counted as it streams in (see
/// `uploads::read_form`).
async fn refuse_oversized(limit: usize, upload_limit: usize, req: Request, next: Next) -> Response {
    let length = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let multipart = req
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/"));
    let most = if multipart {
        upload_limit + uploads::FORM_OVERHEAD
    } else {
        limit
    };
    let Some(length) = length.filter(|n| *n > most as u64) else {
        return next.run(req).await;
    };
    let refusal = if multipart {
        ApiError::new(
            axum::http::StatusCode::PAYLOAD_TOO_LARGE,
            "image_too_large",
            format!(
                "the upload is {length} bytes; images of at most {upload_limit} bytes are \
                 accepted (uploads.max_bytes)"
            ),
        )
    } else {
        ApiError::new(
            axum::http::StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the body is {length} bytes; at most {limit} are accepted (http.body_limit)"),
        )
    };
    let expects_continue = req
        .headers()
        .get(axum::http::header::EXPECT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
    if length > DRAIN_MAX || expects_continue {
        let mut res = refusal.into_response();
        res.headers_mut().insert(
            axum::http::header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
        return res;
    }
    let mut body = req.into_body().into_data_stream();
    let mut read = 0u64;
    while let Some(Ok(chunk)) = futures::StreamExt::next(&mut body).await {
        read += chunk.len() as u64;
        if read > DRAIN_MAX {
            break;
        }
    }
    refusal.into_response()
}

/// The generated document, served as it is.
#[derive(Clone, Debug)]
struct Document(Arc<serde_json::Value>);

/// `GET /openapi.json`.
async fn openapi(axum::Extension(doc): axum::Extension<Document>) -> Json<serde_json::Value> {
    Json(doc.0.as_ref().clone())
}

/// `GET /healthz`.
async fn healthz() -> &'static str {
    "ok"
}

/// Prometheus text.
struct Metrics(Response);

impl IntoResponse for Metrics {
    fn into_response(self) -> Response {
        self.0
    }
}

impl aide::OperationOutput for Metrics {
    type Inner = String;

    fn inferred_responses(
        _: &mut aide::generate::GenContext,
        _: &mut aide::openapi::Operation,
    ) -> Vec<(Option<aide::openapi::StatusCode>, aide::openapi::Response)> {
        vec![(
            Some(aide::openapi::StatusCode::Code(200)),
            contract::raw_response(
                "The Prometheus text format.",
                &["text/plain"],
                schemars::json_schema!({"type": "string"}),
            ),
        )]
    }
}

async fn metrics() -> Result<Metrics, ApiError> {
    match crate::telemetry::prometheus() {
        Some(h) => Ok(Metrics(h.render().into_response())),
        None => Err(ApiError::not_found(
            "no_metrics",
            "no metrics recorder is installed in this process",
        )),
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
