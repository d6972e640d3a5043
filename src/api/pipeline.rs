//! Pipeline health: `GET /v1/pipeline` (what the dashboard charts: records
//! applied and lag per topic, records in the DLQ, view generations) and
//! `GET /readyz` (ready = the view store and the log answer, and the views
//! are caught up within `http.ready_lag`).

use std::collections::BTreeMap;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use super::admin::{parts, rebuild_err};
use super::{ApiError, AppState};
use crate::event::Topic;
use crate::project::supervisor::{self, group_of};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/pipeline", get(pipeline))
        .route("/readyz", get(readyz))
}

/// Per topic: records applied by the active generation of its view, and
/// its lag. Where this process consumes a partition itself, its consumer's
/// lag counts (it sees past transaction markers, which checkpoints cannot).
async fn measure(
    s: &AppState,
) -> Result<(BTreeMap<String, (u64, u64)>, Vec<serde_json::Value>), ApiError> {
    let (gens, heads) = parts(s)?;
    let views = supervisor::status(gens, heads, &s.kafka)
        .await
        .map_err(rebuild_err)?;
    let local = crate::telemetry::lag::snapshot();
    let mut topics: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut gens_out = Vec::new();
    for v in &views {
        let group = s
            .kafka
            .group(&group_of(v.generation.view, v.generation.active));
        for p in &v.partitions {
            let by_checkpoint = (p.head - 1 - p.active).max(0) as u64;
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
    Ok((topics, gens_out))
}

async fn pipeline(State(s): State<AppState>) -> Result<Response, ApiError> {
    let (topics, views) = measure(&s).await?;
    let (_, heads) = parts(&s)?;
    let dlq: i64 = heads
        .of(&s.kafka.topic(Topic::Dlq))
        .await
        .map_err(|e| ApiError::unavailable("log_unavailable", e.to_string()))?
        .iter()
        .map(|(_, h)| *h)
        .sum();
    let lag: u64 = topics.values().map(|(_, l)| l).sum();
    let topics: Vec<_> = topics
        .into_iter()
        .map(|(t, (consumed, lag))| json!({"topic": t, "consumed": consumed, "lag": lag}))
        .collect();
    Ok(axum::Json(json!({
        "at_ms": chrono::Utc::now().timestamp_millis(),
        "topics": topics,
        "lag": lag,
        "dlq": dlq,
        "views": views,
    }))
    .into_response())
}

async fn readyz(State(s): State<AppState>) -> Response {
    match measure(&s).await {
        Ok((topics, _)) => {
            let lag: u64 = topics.values().map(|(_, l)| l).sum();
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
