//! The API's contract, generated from the code: every route is declared
//! once, in its module's `routes()`, with its handler; the handler's
//! extractors and answer types say what the route takes and gives (their
//! JSON Schemas come from the request and response types), and the route's
//! declaration adds its summary, description and the error statuses its
//! handler can answer. `openapi.json` is this document, written by
//! `atelier schemas write` and checked against the code by a test.
//!
//! Errors are shared response components (one per status, each listing the
//! codes a client may meet) with the one [`ErrorBody`] schema.

use aide::openapi::{
    Components, Header, Info, License, Link, LinkOperation, MediaType, OpenApi, Operation,
    Parameter, ParameterSchemaOrContent, ReferenceOr, Response, SchemaObject, SecurityRequirement,
    SecurityScheme, StatusCode, Tag,
};
use aide::transform::TransformOperation;
use indexmap::IndexMap;
use schemars::JsonSchema;

use super::error::ErrorBody;

/// The security scheme of bearer credentials.
pub(super) const BEARER: &str = "bearer";

/// The error answers: status, response component and the codes a client
/// may meet there.
const ERRORS: &[(u16, &str, &str)] = &[
    (
        400,
        "BadRequest",
        "Bad request: malformed JSON (`malformed_json`), query string (`invalid_query`), \
         cursor (`invalid_cursor`), limit (`invalid_limit`), page (`invalid_page`), kind \
         (`invalid_kind`), consistency token (`invalid_token`), user id (`invalid_user`), \
         session key (`invalid_session`), stream filter (`invalid_poll`, `invalid_upload`) or \
         multipart form (`invalid_multipart`).",
    ),
    (
        401,
        "Unauthorized",
        "Missing, malformed, expired or unknown bearer credentials (`unauthorized`).",
    ),
    (
        403,
        "Forbidden",
        "Only the owner or author may do this (`not_owner`, `not_author`); only \
         administrators (`auth.admins`, `auth.admin_claim`) may use operations routes \
         (`not_admin`).",
    ),
    (
        404,
        "NotFound",
        "No such poll, question, item or upload (`unknown_poll`, `unknown_question`, \
         `unknown_item`, `unknown_upload`), or no such image yet \
         (`not_ready`, `image_missing`); no such dashboard file (`unknown_asset`); no dead \
         letter at that position (`unknown_dead_letter`).",
    ),
    (
        409,
        "Conflict",
        "The aggregate's state refuses the action (`poll_closed`, `poll_ended`, \
         `not_joinable`), a consistency token names a position this log \
         never had (`unknown_position`), the dead letter was replayed before \
         (`already_replayed`, saying where it went), or a rebuild of the view is under way \
         (`rebuild_in_progress`).",
    ),
    (
        410,
        "Gone",
        "The item was deleted by its author (`item_deleted`).",
    ),
    (
        413,
        "PayloadTooLarge",
        "The body is over `http.body_limit` (`body_too_large`), an image over \
         `uploads.max_bytes` (`image_too_large`).",
    ),
    (
        415,
        "UnsupportedMediaType",
        "The body is not `application/json` (`unsupported_media_type`), or not a multipart \
         form where one is expected; an image not JPEG, PNG or WebP by its bytes \
         (`unsupported_image_type`).",
    ),
    (
        422,
        "UnprocessableEntity",
        "Wrong shape, unknown field (`invalid_body`) or invalid value (`invalid_field`, with \
         `field`); a ballot its poll refuses (`too_many_choices`, `unknown_question`); an \
         image refused for what it is (`empty_image`, `corrupt_image`, `too_many_pixels`, \
         `truncated_image`) or a style without a model (`unknown_style`); a dead letter that \
         cannot be replayed as asked (`not_replayable`, `invalid_header`).",
    ),
    (
        429,
        "TooManyRequests",
        "Retry (after `Retry-After` seconds): this principal writes faster than \
         `limits.writes_per_sec`, or this address reads faster than `limits.reads_per_sec` \
         (`rate_limited`).",
    ),
    (
        500,
        "InternalServerError",
        "Stopped midway, saying what was done: a replay's copy was published but its marker \
         was not (`replay_marker_lost`; only without transactions, on the embedded log): \
         replaying it again would publish it twice.",
    ),
    (
        503,
        "ServiceUnavailable",
        "Retry (after `Retry-After` seconds): the view has not applied `?after` yet \
         (`not_yet_applied`), or the view store, event log or image store is unavailable \
         (`views_unavailable`, `log_unavailable`, `blobs_unavailable`); the views lag more \
         than `http.ready_lag` (`not_ready`, on `/readyz`); the DLQ was not read to its end \
         in time (`dlq_timeout`); a replay failed, publishing none or only some (those are \
         marked replayed: a retry skips them) (`replay_failed`); as many uploads as \
         `limits.uploads_in_flight` allows, or as much upload memory as \
         `limits.upload_memory_mib`, are in use (`uploads_busy`); this server, just started, \
         has not read the published models yet (`models_loading`).",
    ),
];

fn component(status: u16) -> &'static str {
    ERRORS
        .iter()
        .find(|(s, _, _)| *s == status)
        .map(|(_, c, _)| *c)
        .unwrap_or_else(|| panic!("no error component for status {status}"))
}

/// Adds the error answers of `statuses` to an operation (a reference to
/// each status's shared response).
pub(super) fn add_errors(op: &mut Operation, statuses: &[u16]) {
    let responses = op.responses.get_or_insert_with(Default::default);
    for &s in statuses {
        responses.responses.insert(
            StatusCode::Code(s),
            ReferenceOr::Reference {
                reference: format!("#/components/responses/{}", component(s)),
                description: None,
                summary: None,
            },
        );
    }
}

/// A route's declaration: its id, tag, summary and description, and the
/// error statuses its handler answers (beyond those its extractors add).
pub(super) fn op<'t>(
    t: TransformOperation<'t>,
    id: &str,
    tag: &str,
    summary: &str,
    description: &str,
    errors: &[u16],
) -> TransformOperation<'t> {
    let mut t = t.id(id).tag(tag).summary(summary).description(description);
    add_errors(t.inner_mut(), errors);
    t
}

/// Marks an operation as needing bearer credentials.
pub(super) fn secured(op: &mut Operation) {
    let mut req = SecurityRequirement::new();
    req.insert(BEARER.to_owned(), Vec::new());
    if !op.security.contains(&req) {
        op.security.push(req);
    }
}

/// Marks an operation as taking bearer credentials when given (anonymous
/// callers too).
pub(super) fn optionally_secured(op: &mut Operation) {
    let anonymous = SecurityRequirement::new();
    if !op.security.contains(&anonymous) {
        op.security.push(anonymous);
    }
    secured(op);
}

/// A `200` answer of `media` types with `schema` (for raw bodies: images,
/// event streams, exports, text).
pub(super) fn raw_response(
    description: &str,
    media: &[&str],
    schema: schemars::Schema,
) -> Response {
    Response {
        description: description.to_owned(),
        content: media
            .iter()
            .map(|m| {
                (
                    (*m).to_owned(),
                    MediaType {
                        schema: Some(SchemaObject {
                            json_schema: schema.clone(),
                            example: None,
                            external_docs: None,
                        }),
                        ..Default::default()
                    },
                )
            })
            .collect(),
        ..Default::default()
    }
}

/// The schema of `T` as a component reference (registering it).
pub(super) fn schema_of<T: JsonSchema>() -> schemars::Schema {
    aide::generate::in_context(|ctx| ctx.schema.subschema_for::<T>())
}

/// A header a response carries.
pub(super) fn header(description: &str, schema: schemars::Schema) -> ReferenceOr<Header> {
    ReferenceOr::Item(Header {
        description: Some(description.to_owned()),
        style: Default::default(),
        required: false,
        deprecated: None,
        format: ParameterSchemaOrContent::Schema(SchemaObject {
            json_schema: schema,
            example: None,
            external_docs: None,
        }),
        example: None,
        examples: IndexMap::new(),
        extensions: IndexMap::new(),
    })
}

/// The document around the operations: info, tags, the security scheme
/// and the error responses.
pub(super) fn finish(api: &mut OpenApi) {
    api.info = Info {
        title: "atelier".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        summary: Some("Ingest and read API of an event-driven stream processor".into()),
        description: Some(
            "Writes are validated, authenticated and appended as events; they answer 202 with a \
             consistency token. Pass it as `?after=<token>` to a read (or a later write) and the \
             answer waits, bounded, until the view has applied it. Reads are one view query \
             each, answer with a strong `ETag`, and 304 for a matching `If-None-Match`. Errors \
             are JSON: `{\"error\": code, \"reason\": text, \"field\"?: name}`; an unknown route \
             is 404 `no_route`, a known route with another method 405."
                .into(),
        ),
        license: Some(License {
            name: "Apache-2.0".into(),
            identifier: Some("Apache-2.0".into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    api.tags = [
        ("polls", "Polls: create, vote, retract, close; reads."),
        (
            "feed",
            "Posts, games and teams: create, like, join, delete; reads.",
        ),
        ("cards", "Session cards and upload job status."),
        (
            "uploads",
            "Image uploads, their images, the styles on offer.",
        ),
        ("stream", "Live view changes as Server-Sent Events."),
        (
            "ops",
            "Liveness, readiness, metrics, pipeline health, this document and the dashboard.",
        ),
        (
            "admin",
            "Operations, for callers in `auth.admins` (otherwise 403 `not_admin`): dead \
             letters, view rebuilds, exports.",
        ),
    ]
    .into_iter()
    .map(|(name, description)| Tag {
        name: name.into(),
        description: Some(description.into()),
        ..Default::default()
    })
    .collect();
    let error = schema_of::<ErrorBody>();
    link_creates(api);
    // Every read may meet the per-address read limit (`limits.reads_per_sec`).
    if let Some(paths) = api.paths.as_mut() {
        for item in paths.paths.values_mut() {
            if let ReferenceOr::Item(item) = item
                && let Some(get) = item.get.as_mut()
            {
                add_errors(get, &[429]);
            }
        }
    }
    let components = api.components.get_or_insert_with(Components::default);
    components.security_schemes.insert(
        BEARER.into(),
        ReferenceOr::Item(SecurityScheme::Http {
            scheme: "bearer".into(),
            bearer_format: Some("JWT or API key".into()),
            description: Some(
                "A JWT (`sub`, `exp`; a name and avatar from configurable claims): HS256 signed \
                 with `auth.jwt_secret`, or RS256/ES256 verified against `auth.jwks`, with \
                 `iss` and `aud` checked when configured; or an API key from \
                 `auth.api_keys`."
                    .into(),
            ),
            extensions: IndexMap::new(),
        }),
    );
    for (status, name, description) in ERRORS {
        let mut r = raw_response(description, &["application/json"], error.clone());
        if matches!(*status, 429 | 503) {
            r.headers.insert(
                "Retry-After".into(),
                header(
                    "Seconds to wait before retrying.",
                    schemars::json_schema!({"type": "integer", "minimum": 0}),
                ),
            );
        }
        components
            .responses
            .insert((*name).into(), ReferenceOr::Item(r));
    }
}

/// The id field (`poll_id`, `item_id`, `upload_id`) of an operation's 202
/// answer, read from its schema (a definition of the generator: the
/// document's components are filled in after this runs).
fn accepted_id(op: &Operation) -> Option<String> {
    let ReferenceOr::Item(r) = op
        .responses
        .as_ref()?
        .responses
        .get(&StatusCode::Code(202))?
    else {
        return None;
    };
    let reference = r
        .content
        .get("application/json")?
        .schema
        .as_ref()?
        .json_schema
        .get("$ref")?
        .as_str()?;
    let name = reference.strip_prefix("#/components/schemas/")?;
    let schema = aide::generate::in_context(|ctx| ctx.schema.definitions().get(name).cloned())?;
    schema
        .get("properties")?
        .as_object()?
        .keys()
        .find(|k| k.ends_with("_id") && *k != "event_id")
        .cloned()
}

/// Whether an operation takes a `?after=` consistency token.
fn takes_after(op: &Operation) -> bool {
    op.parameters.iter().any(|p| {
        matches!(p, ReferenceOr::Item(Parameter::Query { parameter_data, .. })
            if parameter_data.name == "after")
    })
}

/// Links each write that creates an aggregate (a `POST` to a collection,
/// answering 202 with the new id) to every operation on that aggregate
/// (`{collection}/{id}...`): `id` from the answer's body and, where the
/// target takes one, the answer's token as `?after=`, so that the read
/// waits for the write. Derived from the routes, never listed: clients
/// (and the contract fuzzer's stateful phase) walk from a create to what
/// it made.
fn link_creates(api: &mut OpenApi) {
    let Some(paths) = api.paths.as_mut() else {
        return;
    };
    let mut creates: Vec<(String, String)> = Vec::new();
    for (path, item) in paths.iter() {
        if let ReferenceOr::Item(item) = item
            && let Some(post) = &item.post
            && let Some(field) = accepted_id(post)
        {
            creates.push((path.to_owned(), field));
        }
    }
    for (collection, field) in creates {
        let prefix = format!("{collection}/{{id}}");
        let mut links = IndexMap::new();
        for (path, item) in paths.iter() {
            let ReferenceOr::Item(item) = item else {
                continue;
            };
            if !(*path == prefix || path.starts_with(&format!("{prefix}/"))) {
                continue;
            }
            for (_, target) in item.iter() {
                let Some(id) = &target.operation_id else {
                    continue;
                };
                let mut parameters = IndexMap::new();
                parameters.insert(
                    "path.id".to_owned(),
                    format!("$response.body#/{field}").into(),
                );
                if takes_after(target) {
                    parameters.insert("query.after".to_owned(), "$response.body#/token".into());
                }
                links.insert(
                    id.clone(),
                    ReferenceOr::Item(Link {
                        description: None,
                        operation: LinkOperation::OperationId(id.clone()),
                        request_body: None,
                        parameters,
                        server: None,
                        extensions: IndexMap::new(),
                    }),
                );
            }
        }
        let create = paths
            .paths
            .get_mut(&collection)
            .and_then(|i| match i {
                ReferenceOr::Item(i) => i.post.as_mut(),
                ReferenceOr::Reference { .. } => None,
            })
            .and_then(|op| op.responses.as_mut())
            .and_then(|r| r.responses.get_mut(&StatusCode::Code(202)));
        if let Some(ReferenceOr::Item(r)) = create {
            r.links.extend(links);
        }
    }
}
