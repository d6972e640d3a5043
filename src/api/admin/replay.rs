//! `/v1/admin/replay`: rebuild views into a new generation (the projector
//! supervisors do the work and the swap), see where rebuilds stand, drop
//! retired generations.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Deserialize;
use serde_json::json;

use crate::api::common::rebuild_err;
use crate::api::json::JsonBody;
use crate::api::{Admin, ApiError, AppState};
use crate::infer::replay::{infer_group, rewind_infer};
use crate::ops::{self, Rebuild};
use crate::project::views;
use crate::view::View;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/admin/replay", post(start).get(status))
        .route("/v1/admin/replay/gc", post(gc))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StartBody {
    /// `polls`, `feed`, `cards` or `all`.
    #[serde(default)]
    view: Option<String>,
    /// `infer`: re-run the inference stage instead of rebuilding a view.
    #[serde(default)]
    stage: Option<String>,
    /// `earliest` (default), an RFC 3339 time, or milliseconds since the epoch.
    #[serde(default)]
    from: Option<serde_json::Value>,
    #[serde(default)]
    dry_run: bool,
}

fn from_ms(v: Option<&serde_json::Value>) -> Result<Option<i64>, ApiError> {
    let bad = || {
        ApiError::unprocessable(
            "invalid_field",
            "from: `earliest`, an RFC 3339 time or milliseconds since the epoch",
        )
        .field("from")
    };
    match v {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) if s == "earliest" => Ok(None),
        Some(serde_json::Value::String(s)) => chrono::DateTime::parse_from_rfc3339(s)
            .map(|t| Some(t.timestamp_millis()))
            .map_err(|_| bad()),
        Some(serde_json::Value::Number(n)) => {
            n.as_i64().filter(|m| *m >= 0).map(Some).ok_or_else(bad)
        }
        Some(_) => Err(bad()),
    }
}

async fn start(
    State(s): State<AppState>,
    Admin(who): Admin,
    JsonBody(b): JsonBody<StartBody>,
) -> Result<Response, ApiError> {
    let (gens, heads) = (&s.views, &s.heads);
    let from_ms = from_ms(b.from.as_ref())?;
    let view = match (b.view.as_deref(), b.stage.as_deref()) {
        (None, Some("infer")) => {
            let p = rewind_infer(gens, heads, &s.kafka, &s.brokers, from_ms, b.dry_run)
                .await
                .map_err(rebuild_err)?;
            tracing::info!(admin = %who.id, generation = p.building, records = p.records,
                dry_run = b.dry_run, "inference stage rewound");
            let code = if b.dry_run {
                StatusCode::OK
            } else {
                StatusCode::ACCEPTED
            };
            return Ok((code, axum::Json(json!({ "rebuilds": [p] }))).into_response());
        }
        (None, Some(_)) => {
            return Err(ApiError::unprocessable("invalid_field", "stage: infer").field("stage"));
        }
        (Some(v), None) => v.to_owned(),
        _ => {
            return Err(ApiError::unprocessable(
                "invalid_field",
                "give either view (polls, feed, cards or all) or stage (infer)",
            )
            .field("view"));
        }
    };
    let views: Vec<View> = match view.as_str() {
        "all" => views::ALL.iter().map(|r| r.view).collect(),
        v => vec![views::find(v).ok_or_else(|| {
            ApiError::unprocessable("invalid_field", "view: polls, feed, cards or all")
                .field("view")
        })?],
    };
    let mut planned = Vec::new();
    for view in views {
        let r = Rebuild {
            view,
            from_ms,
            dry_run: b.dry_run,
        };
        let p = ops::start_rebuild(gens, heads, &s.kafka, &r)
            .await
            .map_err(rebuild_err)?;
        tracing::info!(admin = %who.id, view = view.as_str(), generation = p.building,
            records = p.records, dry_run = b.dry_run, "rebuild requested");
        planned.push(p);
    }
    let code = if b.dry_run {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((code, axum::Json(json!({ "rebuilds": planned }))).into_response())
}

async fn status(State(s): State<AppState>, Admin(_): Admin) -> Result<Response, ApiError> {
    let (gens, heads) = (&s.views, &s.heads);
    let views = ops::status(gens, heads, &s.kafka)
        .await
        .map_err(rebuild_err)?;
    let infer = gens
        .row(crate::infer::replay::STAGE)
        .await
        .map_err(|e| ApiError::unavailable("views_unavailable", e.to_string()))?;
    Ok(axum::Json(json!({
        "views": views,
        "infer": {
            "generation": infer.active,
            "group": infer_group(infer.active),
            "from_ms": infer.from_ms,
            "rewound_ms": infer.swapped_ms,
        },
    }))
    .into_response())
}

async fn gc(State(s): State<AppState>, Admin(who): Admin) -> Result<Response, ApiError> {
    let gens = &s.views;
    let dropped = ops::gc(gens)
        .await
        .map_err(|e| ApiError::unavailable("views_unavailable", e.to_string()))?;
    tracing::info!(admin = %who.id, dropped = dropped.len(), "retired generations dropped");
    let dropped: Vec<_> = dropped
        .into_iter()
        .map(|(v, n)| json!({"view": v, "generation": n}))
        .collect();
    Ok(axum::Json(json!({ "dropped": dropped })).into_response())
}
