//! `/v1/admin/replay`: rebuild views into a new generation (the projector
//! supervisors do the work and the swap), see where rebuilds stand, drop
//! retired generations.

use aide::axum::ApiRouter;
use aide::axum::routing::post_with;
use aide::generate::GenContext;
use aide::openapi::{Operation, Response as DocResponse, StatusCode as Status};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::api::common::rebuild_err;
use crate::api::contract::{op, raw_response};
use crate::api::json::JsonBody;
use crate::api::{Admin, ApiError, AppState};
use crate::infer::replay::{infer_group, rewind_infer};
use crate::ops::{self, Planned, Rebuild, ViewStatus};
use crate::project::views;
use crate::view::View;

pub(super) fn routes() -> ApiRouter<AppState> {
    ApiRouter::new()
        .api_route(
            "/v1/admin/replay",
            post_with(start, |t| {
                op(
                    t,
                    "startReplay",
                    "admin",
                    "Rebuild views, or re-run inference",
                    "With `view`: rebuilds the view (or `all`) from its topics into a new \
                     generation while the active one keeps serving reads; the projector \
                     supervisors swap it in atomically once it has caught up (202). With \
                     `stage: infer`: moves the inference workers to a new consumer group, so \
                     every upload from `from` on is stylized again with the current models. \
                     `dry_run` answers 200 with what would be replayed. A rebuild under way: \
                     409 `rebuild_in_progress`. A view rebuild `from` a time after the \
                     log's retained start would lack the records before it: 422 \
                     `partial_rebuild`.",
                    &[409, 503],
                )
            })
            .get_with(status, |t| {
                op(
                    t,
                    "replayStatus",
                    "admin",
                    "Where rebuilds stand",
                    "Every view's control row (active, building, phase, retired generations) \
                     with per-partition progress of the active and the building generation, \
                     and the inference stage's generation.",
                    &[503],
                )
            }),
        )
        .api_route(
            "/v1/admin/replay/gc",
            post_with(gc, |t| {
                op(
                    t,
                    "replayGc",
                    "admin",
                    "Drop retired generations",
                    "Deletes the data of every generation a swap retired.",
                    &[503],
                )
            }),
        )
}

/// What to rebuild: a view (or all), or the inference stage.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StartBody {
    #[serde(default)]
    view: Option<String>,
    #[serde(default)]
    stage: Option<String>,
    #[serde(default)]
    from: Option<serde_json::Value>,
    #[serde(default)]
    dry_run: bool,
}

/// The body's contract: exactly one of `view` and `stage`, with the values
/// the handler takes.
impl JsonSchema for StartBody {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "StartReplay".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let mut views: Vec<&str> = views::ALL.iter().map(|r| r.view.as_str()).collect();
        views.push("all");
        let from = serde_json::json!({
            "description": "Where the replay starts: `earliest` (the default: the log's start), \
                an RFC 3339 time, or milliseconds since the epoch (the first record at or after \
                it).",
            "anyOf": [
                {"type": "string", "enum": ["earliest"]},
                {"type": "string", "format": "date-time"},
                {"type": "integer", "minimum": 0, "maximum": i64::MAX},
                {"type": "null"}
            ]
        });
        let dry_run = serde_json::json!({
            "type": "boolean",
            "description": "Only say what would be replayed (200).",
            "default": false
        });
        schemars::json_schema!({
            "oneOf": [
                {
                    "type": "object",
                    "properties": {
                        "view": {"type": "string", "enum": views, "description": "The view to rebuild, or `all`."},
                        "from": from,
                        "dry_run": dry_run,
                    },
                    "required": ["view"],
                    "additionalProperties": false
                },
                {
                    "type": "object",
                    "properties": {
                        "stage": {"type": "string", "enum": [crate::infer::replay::STAGE], "description": "Re-run the inference stage."},
                        "from": from,
                        "dry_run": dry_run,
                    },
                    "required": ["stage"],
                    "additionalProperties": false
                }
            ]
        })
    }
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
        // Before the epoch, the first record at or after it is the log's
        // first: the same as `earliest`.
        Some(serde_json::Value::String(s)) => chrono::DateTime::parse_from_rfc3339(s)
            .map(|t| Some(t.timestamp_millis().max(0)))
            .map_err(|_| bad()),
        // An integer as JSON Schema counts them (`5` and `5.0`).
        Some(serde_json::Value::Number(n)) => n
            .as_i64()
            .or_else(|| {
                n.as_f64()
                    .filter(|f| f.fract() == 0.0 && f.abs() < 9_007_199_254_740_992.0)
                    .map(|f| f as i64)
            })
            .filter(|m| *m >= 0)
            .map(Some)
            .ok_or_else(bad),
        Some(_) => Err(bad()),
    }
}

/// Rebuilds started (202) or, on a dry run, planned (200).
#[derive(Debug, Serialize, JsonSchema)]
#[schemars(rename = "Rebuilds")]
struct Rebuilds {
    /// The rebuilds.
    rebuilds: Vec<Planned>,
    #[serde(skip)]
    #[schemars(skip)]
    dry_run: bool,
}

impl IntoResponse for Rebuilds {
    fn into_response(self) -> Response {
        let code = if self.dry_run {
            StatusCode::OK
        } else {
            StatusCode::ACCEPTED
        };
        (code, Json(self)).into_response()
    }
}

impl aide::OperationOutput for Rebuilds {
    type Inner = Self;

    fn inferred_responses(
        ctx: &mut GenContext,
        _: &mut Operation,
    ) -> Vec<(Option<Status>, DocResponse)> {
        let schema = ctx.schema.subschema_for::<Self>();
        vec![
            (
                Some(Status::Code(202)),
                raw_response("Started.", &["application/json"], schema.clone()),
            ),
            (
                Some(Status::Code(200)),
                raw_response(
                    "A dry run: what would be replayed.",
                    &["application/json"],
                    schema,
                ),
            ),
        ]
    }
}

async fn start(
    State(s): State<AppState>,
    Admin(who): Admin,
    JsonBody(b): JsonBody<StartBody>,
) -> Result<Rebuilds, ApiError> {
    let (gens, heads) = (&s.views, &s.heads);
    let from_ms = from_ms(b.from.as_ref())?;
    let view = match (b.view.as_deref(), b.stage.as_deref()) {
        (None, Some(crate::infer::replay::STAGE)) => {
            let p = rewind_infer(gens, heads, &s.kafka, &s.brokers, from_ms, b.dry_run)
                .await
                .map_err(rebuild_err)?;
            tracing::info!(admin = %who.id, generation = p.building, records = p.records,
                dry_run = b.dry_run, "inference stage rewound");
            return Ok(Rebuilds {
                rebuilds: vec![p],
                dry_run: b.dry_run,
            });
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
    Ok(Rebuilds {
        rebuilds: planned,
        dry_run: b.dry_run,
    })
}

/// The inference stage's generation.
#[derive(Debug, Serialize, JsonSchema)]
struct InferStatus {
    /// Its generation.
    generation: u32,
    /// The consumer group of that generation.
    group: String,
    /// Where its last rewind started (ms), if it was rewound to a time.
    from_ms: Option<i64>,
    /// When it was last rewound (ms).
    rewound_ms: Option<i64>,
}

/// Where every view and the inference stage stand.
#[derive(Debug, Serialize, JsonSchema)]
struct ReplayStatus {
    /// Every view.
    views: Vec<ViewStatus>,
    /// The inference stage.
    infer: InferStatus,
}

async fn status(
    State(s): State<AppState>,
    Admin(_): Admin,
) -> Result<Json<ReplayStatus>, ApiError> {
    let (gens, heads) = (&s.views, &s.heads);
    let views = ops::status(gens, heads, &s.kafka)
        .await
        .map_err(rebuild_err)?;
    let infer = gens
        .row(crate::infer::replay::STAGE)
        .await
        .map_err(|e| ApiError::unavailable("views_unavailable", e.to_string()))?;
    Ok(Json(ReplayStatus {
        views,
        infer: InferStatus {
            generation: infer.active,
            group: infer_group(infer.active),
            from_ms: infer.from_ms,
            rewound_ms: infer.swapped_ms,
        },
    }))
}

/// A generation whose data was dropped.
#[derive(Debug, Serialize, JsonSchema)]
struct Dropped {
    /// The view.
    view: String,
    /// The generation.
    generation: u32,
}

/// What garbage collection dropped.
#[derive(Debug, Serialize, JsonSchema)]
#[schemars(rename = "GcResult")]
struct GcResult {
    /// The generations dropped.
    dropped: Vec<Dropped>,
}

async fn gc(State(s): State<AppState>, Admin(who): Admin) -> Result<Json<GcResult>, ApiError> {
    let gens = &s.views;
    let dropped = ops::gc(gens)
        .await
        .map_err(|e| ApiError::unavailable("views_unavailable", e.to_string()))?;
    tracing::info!(admin = %who.id, dropped = dropped.len(), "retired generations dropped");
    Ok(Json(GcResult {
        dropped: dropped
            .into_iter()
            .map(|(v, n)| Dropped {
                view: v.as_str().to_owned(),
                generation: n,
            })
            .collect(),
    }))
}
