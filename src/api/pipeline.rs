//! Pipeline health: `GET /v1/pipeline` (what the dashboard charts: records
//! applied and lag per topic, records in the DLQ, view generations) and
//! `GET /readyz` (ready = the view store and the log answer, and the views
//! are caught up within `http.ready_lag`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use aide::axum::ApiRouter;
use aide::axum::routing::get_with;
use axum::Json;
use axum::extract::State;
use schemars::JsonSchema;
use serde::Serialize;

use super::common::rebuild_err;
use super::contract::op;
use super::{ApiError, AppState};
use crate::bus::behind;
use crate::event::Topic;
use crate::ops;
use crate::project::supervisor::group_of;
use crate::view::Phase;

pub(super) fn routes() -> ApiRouter<AppState> {
    ApiRouter::new()
        .api_route(
            "/v1/pipeline",
            get_with(pipeline, |t| {
                op(
                    t,
                    "pipeline",
                    "ops",
                    "Pipeline health",
                    "Per topic, the records the active generation of its view has applied (a \
                     counter: its rate is the throughput) and its lag; the records in the DLQ \
                     topic; each view's generations. The dashboard charts this. With \
                     `http.ops_token`, administrators only (401, 403 `not_admin`); with \
                     `http.ops_listen`, served there instead.",
                    &[401, 403, 503],
                )
            }),
        )
        .api_route(
            "/readyz",
            get_with(readyz, |t| {
                op(
                    t,
                    "readyz",
                    "ops",
                    "Readiness",
                    "Ready when the view store and the log answer and the views lag the log by \
                     at most `http.ready_lag` records, and the published models have been \
                     read (otherwise 503 `not_ready`, `views_unavailable`, `log_unavailable` \
                     or `models_loading`). `/healthz` is liveness only.",
                    &[503],
                )
            }),
        )
}

/// A view's generations, as the dashboard shows them.
#[derive(Clone, Debug, Serialize, JsonSchema)]
struct ViewGenerations {
    /// The view.
    view: String,
    /// The generation serving reads.
    active: u32,
    /// The generation being rebuilt.
    building: Option<u32>,
    /// Where a rebuild stands.
    phase: Phase,
}

/// One measurement of the pipeline: per topic `(applied, lag)`, the views'
/// generations, the records in the DLQ topic.
#[derive(Clone, Debug)]
pub(crate) struct Measured {
    topics: BTreeMap<String, (u64, u64)>,
    views: Vec<ViewGenerations>,
    dlq: i64,
}

impl Measured {
    fn lag(&self) -> u64 {
        self.topics.values().map(|(_, l)| l).sum()
    }
}

/// How long a measurement answers both routes: they are public, and each
/// measurement asks the brokers for every partition's head.
const FRESH_FOR: Duration = Duration::from_secs(1);

/// The last measurement, if younger than [`FRESH_FOR`], else a new one;
/// concurrent callers wait for one measurement instead of each making one.
async fn measured(s: &AppState) -> Result<Measured, ApiError> {
    let mut last = s.health.lock().await;
    if let Some((at, m)) = last.as_ref()
        && at.elapsed() < FRESH_FOR
    {
        return Ok(m.clone());
    }
    let m = measure(s).await?;
    *last = Some((Instant::now(), m.clone()));
    Ok(m)
}

/// Per topic: records applied by the active generation of its view, and
/// its lag. Where this process consumes a partition itself, its consumer's
/// lag counts (it sees past transaction markers, which checkpoints cannot).
async fn measure(s: &AppState) -> Result<Measured, ApiError> {
    let (gens, heads) = (&s.views, &s.heads);
    let views = ops::status(gens, heads, &s.kafka)
        .await
        .map_err(rebuild_err)?;
    let local = crate::telemetry::lag::snapshot();
    let mut topics: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut gens_out = Vec::new();
    for v in &views {
        let group = s
            .kafka
            .group(&group_of(&v.generation.view, v.generation.active));
        for p in &v.partitions {
            let by_checkpoint = behind(p.head, p.active);
            let lag = local
                .iter()
                .find(|r| r.group == group && r.topic == p.topic && r.partition == p.partition)
                .map_or(by_checkpoint, |r| by_checkpoint.min(r.lag.max(0) as u64));
            let e = topics.entry(p.topic.clone()).or_default();
            e.0 += (p.active + 1).max(0) as u64;
            e.1 += lag;
        }
        gens_out.push(ViewGenerations {
            view: v.generation.view.clone(),
            active: v.generation.active,
            building: v.generation.building,
            phase: v.generation.phase,
        });
    }
    let dlq: i64 = heads
        .of(&s.kafka.topic(Topic::Dlq))
        .await
        .map_err(|e| ApiError::unavailable("log_unavailable", e.to_string()))?
        .iter()
        .map(|(_, h)| *h)
        .sum();
    Ok(Measured {
        topics,
        views: gens_out,
        dlq,
    })
}

/// One topic's progress.
#[derive(Debug, Serialize, JsonSchema)]
struct TopicHealth {
    /// The full topic name.
    topic: String,
    /// Records the active generation of its view has applied (a counter).
    consumed: u64,
    /// Records it has yet to apply.
    lag: u64,
}

/// What the dashboard charts.
#[derive(Debug, Serialize, JsonSchema)]
struct Pipeline {
    /// When this was measured (milliseconds since the epoch).
    at_ms: i64,
    /// Per topic.
    topics: Vec<TopicHealth>,
    /// Records the views have yet to apply, over all topics.
    lag: u64,
    /// Records in the DLQ topic.
    dlq: i64,
    /// Each view's generations.
    views: Vec<ViewGenerations>,
}

async fn pipeline(State(s): State<AppState>) -> Result<Json<Pipeline>, ApiError> {
    let m = measured(&s).await?;
    let lag = m.lag();
    let topics = m
        .topics
        .into_iter()
        .map(|(topic, (consumed, lag))| TopicHealth {
            topic,
            consumed,
            lag,
        })
        .collect();
    Ok(Json(Pipeline {
        at_ms: chrono::Utc::now().timestamp_millis(),
        topics,
        lag,
        dlq: m.dlq,
        views: m.views,
    }))
}

/// Ready.
#[derive(Debug, Serialize, JsonSchema)]
struct Ready {
    /// Always `true` (not ready is a 503).
    ready: bool,
    /// Records the views have yet to apply.
    lag: u64,
}

async fn readyz(State(s): State<AppState>) -> Result<Json<Ready>, ApiError> {
    if !s.catalog.caught_up() {
        return Err(ApiError::unavailable(
            "models_loading",
            "the published models have not been read yet",
        ));
    }
    let m = measured(&s).await.map_err(|mut e| {
        e.status = axum::http::StatusCode::SERVICE_UNAVAILABLE;
        e
    })?;
    let lag = m.lag();
    if lag <= s.ready_lag {
        Ok(Json(Ready { ready: true, lag }))
    } else {
        Err(ApiError::unavailable(
            "not_ready",
            format!(
                "the views lag the log by {lag} records (ready at ≤ {})",
                s.ready_lag
            ),
        ))
    }
}
