//! Pipeline health: `GET /v1/pipeline` (what the dashboard charts: records
//! applied and lag per topic, records in the DLQ, view generations) and
//! `GET /readyz` (ready = the view store and the log answer, and the views
//! are caught up within `http.ready_lag`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use super::common::rebuild_err;
use super::{ApiError, AppState};
use crate::bus::behind;
use crate::event::Topic;
use crate::ops;
use crate::project::supervisor::group_of;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/pipeline", get(pipeline))
        .route("/readyz", get(readyz))
}

/// One measurement of the pipeline: per topic `(applied, lag)`, the views'
/// generations, the records in the DLQ topic.
#[derive(Clone, Debug)]
pub(crate) struct Measured {
    topics: BTreeMap<String, (u64, u64)>,
    views: Vec<serde_json::Value>,
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
        gens_out.push(json!({
            "view": v.generation.view,
            "active": v.generation.active,
            "building": v.generation.building,
            "phase": v.generation.phase,
        }));
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

async fn pipeline(State(s): State<AppState>) -> Result<Response, ApiError> {
    let m = measured(&s).await?;
    let lag = m.lag();
    let topics: Vec<_> = m
        .topics
        .into_iter()
        .map(|(t, (consumed, lag))| json!({"topic": t, "consumed": consumed, "lag": lag}))
        .collect();
    Ok(axum::Json(json!({
        "at_ms": chrono::Utc::now().timestamp_millis(),
        "topics": topics,
        "lag": lag,
        "dlq": m.dlq,
        "views": m.views,
    }))
    .into_response())
}

async fn readyz(State(s): State<AppState>) -> Response {
    match measured(&s).await {
        Ok(m) => {
            let lag = m.lag();
            if lag <= s.ready_lag {
                axum::Json(json!({"ready": true, "lag": lag})).into_response()
            } else {
                ApiError::unavailable(
                    "not_ready",
                    format!(
                        "the views lag the log by {lag} records (ready at ≤ {})",
                        s.ready_lag
                    ),
                )
                .into_response()
            }
        }
        Err(e) => {
            let mut r = e.into_response();
            *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            r
        }
    }
}
