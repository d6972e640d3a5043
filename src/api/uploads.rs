//! Image uploads: `POST /v1/uploads` (multipart), the images themselves,
//! and the styles on offer.
//!
//! Everything is checked before a byte is stored: the size while the body
//! streams in (413 past `uploads.max_bytes`), the type from the bytes (415
//! unless JPEG, PNG or WebP, whatever the file name says), the pixel
//! dimensions from the header against the caps (422: a decompression bomb
//! is never decoded), that the file is complete (422 for a truncated one),
//! and that the style has a published model (422). Then the image goes to
//! the blob store under a key with 128 random bits, `UploadReceived` is
//! appended, and the answer is 202 with the upload id and a token.

use aide::axum::ApiRouter;
use aide::axum::routing::{get_with, post_with};
use aide::generate::GenContext;
use aide::openapi::{Operation, Response as DocResponse, StatusCode as Status};
use axum::body::Body;
use axum::extract::multipart::MultipartError;
use axum::extract::{DefaultBodyLimit, Multipart, Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::auth::Reader;
use super::cards::{
    EXP_PATTERN, SIG_PATTERN, UploadPath, grant, may_read, unknown_upload, upload_card,
};
use super::common::{Accepted, Etagged, IfNoneMatch, UploadRef, append};
use super::contract::{header as doc_header, op, raw_response};
use super::json::{MultipartForm, QueryParams};
use super::{ApiError, AppState, Authed};
use crate::edge::new_id;
use crate::event::{
    EventData, ID_MAX, ModelVersion, NAME_MAX, SessionKey, Style, TEXT_ID, UploadId, UploadReceived,
};
use crate::image::codec::{self, Caps, Rejection};
use crate::infer::registry::{Catalog, sha256_hex};

/// Multipart overhead allowed beyond the image (boundaries, text fields).
pub(super) const FORM_OVERHEAD: usize = 64 * 1024;
/// Longest text field.
const MAX_TEXT: usize = 256;

pub(super) fn routes(max_bytes: usize) -> ApiRouter<AppState> {
    ApiRouter::new()
        .api_route(
            "/v1/uploads",
            post_with(create, |t| {
                op(
                    t,
                    "createUpload",
                    "uploads",
                    "Upload an image for stylization",
                    "A multipart form: `image` (the file), `session_key`, `slot` (1 to 3) and \
                     `style`. Checked before anything is stored: over `uploads.max_bytes` is \
                     413 `image_too_large`; a type other than JPEG, PNG or WebP (sniffed from \
                     the bytes, never the file name) 415 `unsupported_image_type`; an empty \
                     file 422 `empty_image`, an unreadable header 422 `corrupt_image`, a \
                     header claiming more pixels than `uploads.max_side` / \
                     `uploads.max_pixels` 422 `too_many_pixels` (never decoded), a truncated \
                     file 422 `truncated_image`; a style without a published model (see \
                     `GET /v1/styles`) 422 `unknown_style` (503 `models_loading` while this server \
                     is still reading the published models, just after it starts); a session that is not the \
                     caller's (keys come from `POST /v1/sessions`) 403 `not_your_session`. \
                     Then the image is stored under an unguessable key and `UploadReceived` \
                     appended; follow the job at `Location` or on `/v1/stream?upload=`.",
                    &[403, 503],
                )
            })
            .layer(DefaultBodyLimit::max(max_bytes + FORM_OVERHEAD)),
        )
        .api_route(
            "/v1/uploads/{id}/image",
            get_with(image, |t| {
                op(
                    t,
                    "readUploadImage",
                    "uploads",
                    "An upload's input or stylized output image",
                    "For the holder of a signed link (`exp` and `sig`, as cards carry them \
                     in `input_url` and `output_url`) until it expires, and for the upload's \
                     owner and administrators (bearer token); 404 `unknown_upload` for \
                     everyone else. One view query (the upload's keys), then the bytes from \
                     the blob store. `Cache-Control: private`.",
                    &[404, 503],
                )
            }),
        )
        .api_route(
            "/v1/styles",
            get_with(styles, |t| {
                op(
                    t,
                    "listStyles",
                    "uploads",
                    "The styles on offer",
                    "Every style with a published model, and its current version.",
                    &[],
                )
            }),
        )
}

/// The upload form (`multipart/form-data`; fields in any order, each once).
#[derive(Debug, JsonSchema)]
#[schemars(deny_unknown_fields)]
#[allow(dead_code)]
pub(super) struct UploadForm {
    /// The image: JPEG, PNG or WebP by its bytes, at most `uploads.max_bytes`.
    #[schemars(with = "BinaryFile")]
    image: (),
    /// The session whose cards show the upload: one of the caller's (`POST
    /// /v1/sessions`).
    #[schemars(length(min = 1, max = ID_MAX), pattern(TEXT_ID))]
    session_key: String,
    /// The card slot.
    #[schemars(range(min = 1, max = 3))]
    slot: u8,
    /// The style (one of `GET /v1/styles`).
    #[schemars(length(min = 1, max = NAME_MAX), pattern(TEXT_ID))]
    style: String,
}

/// A file part of a form.
struct BinaryFile;

impl JsonSchema for BinaryFile {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "BinaryFile".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"type": "string", "format": "binary"})
    }
}

fn too_large(max: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "image_too_large",
        format!("the image is larger than {max} bytes"),
    )
}

fn multipart_error(e: MultipartError, max: usize) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        too_large(max)
    } else {
        ApiError::bad_request("invalid_multipart", e.body_text())
    }
}

fn rejection(r: Rejection) -> ApiError {
    let (status, code) = match r {
        Rejection::Empty => (StatusCode::UNPROCESSABLE_ENTITY, "empty_image"),
        Rejection::UnsupportedType => {
            (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_image_type")
        }
        Rejection::BadHeader(..) => (StatusCode::UNPROCESSABLE_ENTITY, "corrupt_image"),
        Rejection::TooManyPixels { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "too_many_pixels"),
        Rejection::Truncated(_) => (StatusCode::UNPROCESSABLE_ENTITY, "truncated_image"),
    };
    let mut e = ApiError::new(status, code, r.to_string());
    e.field = Some("image".into());
    e
}

fn invalid(field: &str, reason: impl Into<String>) -> ApiError {
    let mut e = ApiError::unprocessable("invalid_field", reason);
    e.field = Some(field.into());
    e
}

/// The form's fields, read in any order.
#[derive(Default)]
struct Form {
    image: Option<Vec<u8>>,
    session_key: Option<String>,
    slot: Option<String>,
    style: Option<String>,
}

/// Reads the form; `declared` is the body's `Content-Length`, when known.
async fn read_form(mut mp: Multipart, max: usize, declared: Option<u64>) -> Result<Form, ApiError> {
    let mut form = Form::default();
    while let Some(mut field) = mp.next_field().await.map_err(|e| multipart_error(e, max))? {
        let name = field.name().unwrap_or_default().to_owned();
        let limit = if name == "image" { max } else { MAX_TEXT };
        // The image's buffer is sized once from the body's length: grown by
        // doubling, it would briefly hold twice what the upload reserved.
        let capacity = match declared {
            Some(n) if name == "image" => (n as usize).min(max),
            _ => 0,
        };
        let (mut buf, mut seen) = (Vec::with_capacity(capacity), 0usize);
        while let Some(chunk) = field.chunk().await.map_err(|e| multipart_error(e, max))? {
            // Past the limit, keep reading (up to the body limit) without
            // keeping: a client still writing its body then reads the 413
            // instead of a reset connection.
            seen += chunk.len();
            if seen <= limit {
                buf.extend_from_slice(&chunk);
            }
        }
        if seen > limit {
            return Err(if name == "image" {
                too_large(max)
            } else {
                invalid(&name, format!("longer than {MAX_TEXT} bytes"))
            });
        }
        let text =
            |buf: Vec<u8>| String::from_utf8(buf).map_err(|_| invalid(&name, "must be UTF-8 text"));
        let slot = match name.as_str() {
            "image" => {
                form.image = Some(buf);
                continue;
            }
            "session_key" => &mut form.session_key,
            "slot" => &mut form.slot,
            "style" => &mut form.style,
            _ => {
                return Err(invalid(
                    &name,
                    "unknown field; the form has image, session_key, slot and style",
                ));
            }
        };
        *slot = Some(text(buf)?);
    }
    Ok(form)
}

fn required<T>(v: Option<T>, field: &str) -> Result<T, ApiError> {
    v.ok_or_else(|| invalid(field, format!("the form needs a {field} field")))
}

async fn create(
    State(st): State<AppState>,
    Authed(principal): Authed,
    headers: axum::http::HeaderMap,
    MultipartForm(mp, _): MultipartForm<UploadForm>,
) -> Result<Accepted<UploadRef>, ApiError> {
    let max = st.uploads.max_bytes;
    // Room for it first: a slot, and the memory its body will take.
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // Each reserves twice its body: it was measured to hold about 1.55
    // times its body resident (the parser's and the connection's buffers,
    // and the allocator's slack), and at 1.5 times 64 concurrent uploads
    // took resident memory a few MiB past the bound (`atelier bench
    // limits`).
    let body = declared.unwrap_or(max as u64).min(max as u64 + 64 * 1024);
    let _room = st.limits.upload(body.saturating_mul(2))?;
    let form = read_form(mp, max, declared).await?;
    let image = required(form.image, "image")?;
    let session_key = SessionKey::parse(required(form.session_key, "session_key")?.trim())?;
    if !st.links.owns(&principal.id, &session_key) {
        let mut e = ApiError::forbidden(
            "not_your_session",
            format!(
                "session {:?} is not {}'s; upload into a session of your own (POST /v1/sessions)",
                session_key.as_str(),
                principal.id
            ),
        );
        e.field = Some("session_key".into());
        return Err(e);
    }
    let slot: u8 = required(form.slot, "slot")?
        .trim()
        .parse()
        .ok()
        .filter(|s| (1..=3).contains(s))
        .ok_or_else(|| invalid("slot", "must be 1, 2 or 3"))?;
    let style = Style::parse(required(form.style, "style")?.trim())?;
    published(&st.catalog, &style)?;
    let info = codec::inspect(&image, Caps::from(&st.uploads)).map_err(rejection)?;

    let upload_id = UploadId(new_id());
    // 128 random bits in the key: knowing an upload id is not enough to
    // guess where its bytes lie.
    let secret = uuid::Uuid::new_v4().simple();
    let object_key = format!(
        "uploads/{upload_id}/{secret}/original.{}",
        info.kind.extension()
    );
    let sha256 = sha256_hex(&image);
    let bytes = image.len() as u64;
    st.blobs
        .put(&object_key, Bytes::from(image), info.kind.content_type())
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "storing an upload failed");
            store_refused(&e)
        })?;
    let data = UploadReceived {
        upload_id,
        session_key,
        slot,
        style,
        object_key,
        content_type: info.kind.content_type().to_owned(),
        bytes,
        width: info.width,
        height: info.height,
        sha256,
    };
    let (event_id, token) = append(&st, principal, EventData::UploadReceived(data)).await?;
    crate::telemetry::emit::upload_accepted(info.kind.content_type());
    Ok(Accepted::new(event_id, UploadRef { upload_id }, token)
        .at(format!("/v1/uploads/{upload_id}")))
}

/// Which image of an upload.
#[derive(Debug, Default, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
enum Variant {
    /// What was uploaded.
    #[default]
    Input,
    /// The stylized output (404 `not_ready` until it exists).
    Output,
}

impl Variant {
    fn as_str(self) -> &'static str {
        match self {
            Variant::Input => "input",
            Variant::Output => "output",
        }
    }
}

/// Which image, and a signed link's grant.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct ImageQuery {
    /// The uploaded image (the default) or the stylized output.
    variant: Option<Variant>,
    /// A signed link's expiry (seconds since the epoch).
    #[schemars(pattern(EXP_PATTERN))]
    exp: Option<String>,
    /// A signed link's signature.
    #[schemars(pattern(SIG_PATTERN))]
    sig: Option<String>,
}

/// An image's bytes, cacheable privately (keys never change meaning) for
/// as long as the link that fetched it lives.
#[derive(Debug)]
struct Image {
    bytes: Bytes,
    content_type: Option<String>,
    max_age: u64,
}

impl IntoResponse for Image {
    fn into_response(self) -> Response {
        let mut res = Body::from(self.bytes).into_response();
        let h = res.headers_mut();
        if let Some(ct) = self
            .content_type
            .and_then(|c| HeaderValue::from_str(&c).ok())
        {
            h.insert(header::CONTENT_TYPE, ct);
        }
        if let Ok(v) = HeaderValue::from_str(&format!("private, max-age={}", self.max_age)) {
            h.insert(header::CACHE_CONTROL, v);
        }
        h.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        res
    }
}

impl aide::OperationOutput for Image {
    type Inner = Self;

    fn inferred_responses(
        _: &mut GenContext,
        _: &mut Operation,
    ) -> Vec<(Option<Status>, DocResponse)> {
        let mut r = raw_response(
            "The image: the uploaded one as it was sent, the output as JPEG.",
            &["image/jpeg", "image/png", "image/webp"],
            schemars::json_schema!({"type": "string", "format": "binary"}),
        );
        r.headers.insert(
            "Cache-Control".into(),
            doc_header(
                "`private, max-age=<seconds>`: for the browser only, as long as the link lives \
                 (an hour for a bearer's read).",
                schemars::json_schema!({"type": "string"}),
            ),
        );
        vec![(Some(Status::Code(200)), r)]
    }
}

/// `GET /v1/uploads/{id}/image?variant=input|output[&exp=&sig=]`: one view
/// query for the upload's keys, then the bytes. Keys never change meaning
/// (an output key names its model version), so answers are cacheable,
/// privately, while the link lives.
async fn image(
    State(st): State<AppState>,
    reader: Reader,
    Path(p): Path<UploadPath>,
    QueryParams(q): QueryParams<ImageQuery>,
) -> Result<Image, ApiError> {
    let upload_id = UploadId::parse(&p.id).map_err(|_| unknown_upload(&p.id))?;
    let variant = q.variant.unwrap_or_default();
    // A signed link names the image; a bearer must own its session.
    let signed =
        grant(q.exp, q.sig)?.and_then(|g| st.links.image_allowed(upload_id, variant.as_str(), &g));
    let card = upload_card(&st, upload_id, None, |k| {
        signed.is_some() || may_read(&st.links, &reader, k, None)
    })
    .await?;
    let max_age = signed.unwrap_or(3600);
    let (key, content_type) = match variant {
        Variant::Input => (card.input_key, card.content_type),
        Variant::Output => (card.output_key, Some("image/jpeg".to_owned())),
    };
    let key = key.ok_or_else(|| {
        ApiError::not_found("not_ready", format!("upload {upload_id} has no output yet"))
    })?;
    let bytes = st.blobs.get(&key).await.map_err(|e| match e {
        crate::blob::BlobError::NotFound(_) => ApiError::not_found(
            "image_missing",
            format!("the image of upload {upload_id} is gone"),
        ),
        e => {
            tracing::warn!(error = %e, "reading an image failed");
            ApiError::unavailable("blobs_unavailable", "the image store is unavailable; retry")
        }
    })?;
    Ok(Image {
        bytes,
        content_type,
        max_age,
    })
}

/// A style on offer.
#[derive(Debug, Serialize, JsonSchema)]
struct StyleInfo {
    /// The style.
    style: Style,
    /// Its current model version.
    version: ModelVersion,
}

/// The styles with a published model.
#[derive(Debug, Serialize, JsonSchema)]
struct Styles {
    /// Every style on offer.
    styles: Vec<StyleInfo>,
}

async fn styles(State(st): State<AppState>, inm: IfNoneMatch) -> Etagged<Styles> {
    let styles = st
        .catalog
        .all()
        .into_iter()
        .map(|p| StyleInfo {
            style: p.style,
            version: p.version,
        })
        .collect();
    Etagged::new(inm, Styles { styles })
}

/// The 503 of an image the store would not take: a full disk and a store
/// that refuses writes say so (an operator's problem, not a client's), and
/// nothing is appended, so nothing already accepted is touched.
fn store_refused(e: &crate::blob::BlobError) -> ApiError {
    use crate::blob::BlobError;
    match e {
        BlobError::Full(_) => ApiError::unavailable(
            "storage_full",
            "the image store's disk is full; nothing was stored (retry once space is freed)",
        )
        .retry_after(30),
        BlobError::ReadOnly(_) => ApiError::unavailable(
            "storage_read_only",
            "the image store refuses writes (a read-only or unwritable directory); nothing was \
             stored",
        )
        .retry_after(30),
        _ => ApiError::unavailable("blobs_unavailable", "the image store is unavailable; retry"),
    }
}

/// Whether `style` has a published model: 422 `unknown_style` when not, or
/// 503 `models_loading` while this process has not yet read the models
/// published before it started (the style may well be among them).
fn published(catalog: &Catalog, style: &Style) -> Result<(), ApiError> {
    if catalog.get(style).is_some() {
        return Ok(());
    }
    if !catalog.caught_up() {
        return Err(ApiError::unavailable(
            "models_loading",
            "this server is still reading the published models; retry shortly",
        )
        .retry_after(1));
    }
    let known: Vec<String> = catalog.all().iter().map(|p| p.style.to_string()).collect();
    let mut e = ApiError::unprocessable(
        "unknown_style",
        format!(
            "no model for style {:?}; styles: {}",
            style.as_str(),
            known.join(", ")
        ),
    );
    e.field = Some("style".into());
    Err(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{ModelPublished, ModelVersion};

    fn announced(style: &str) -> ModelPublished {
        ModelPublished {
            style: Style::parse(style).unwrap(),
            version: ModelVersion::parse("v1").unwrap(),
            object_key: format!("models/{style}/v1/model.pt"),
            sha256: "00".into(),
        }
    }

    #[test]
    fn a_missing_style_is_loading_until_the_models_are_read() {
        let catalog = Catalog::default();
        let sketch = Style::parse("sketch").unwrap();
        let code = |r: Result<(), ApiError>| r.map_err(|e| (e.status.as_u16(), e.code));
        assert_eq!(
            code(published(&catalog, &sketch)),
            Err((503, "models_loading"))
        );
        catalog.publish(&announced("sketch"));
        assert_eq!(
            code(published(&catalog, &sketch)),
            Ok(()),
            "known before the end"
        );
        let cubism = Style::parse("cubism").unwrap();
        assert_eq!(
            code(published(&catalog, &cubism)),
            Err((503, "models_loading"))
        );
        catalog.mark_caught_up();
        assert_eq!(
            code(published(&catalog, &cubism)),
            Err((422, "unknown_style"))
        );
        assert_eq!(code(published(&catalog, &sketch)), Ok(()));
    }
}
