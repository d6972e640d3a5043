//! The live dashboard: one HTML page and its ES modules, served by the read
//! API at `/` with no front-end build step. The page reads the same public
//! routes as any client (feed, polls, cards, `/v1/stream`, `/v1/pipeline`);
//! nothing here touches a view.
//!
//! The assets are compiled into the binary (`include_str!`), so a deployed
//! `atelier serve` needs no files beside it, and they are answered with
//! `Cache-Control: no-cache` so that a new binary's page is never mixed with
//! an old cached module.

use aide::axum::ApiRouter;
use aide::axum::routing::get_with;
use aide::generate::GenContext;
use aide::openapi::{Operation, Response as DocResponse, StatusCode as Status};
use axum::extract::Path;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use schemars::JsonSchema;
use serde::Deserialize;

use super::contract::{op, raw_response};
use super::{ApiError, AppState};

/// The page itself.
const INDEX: &str = include_str!("dashboard/index.html");

/// The files under `/dashboard/`: name, media type, content. The OpenAPI
/// document lists the names from here.
pub(super) const ASSETS: &[(&str, &str, &str)] = &[
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("dashboard/style.css"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("dashboard/app.js"),
    ),
    (
        "api.js",
        "text/javascript; charset=utf-8",
        include_str!("dashboard/api.js"),
    ),
    (
        "dom.js",
        "text/javascript; charset=utf-8",
        include_str!("dashboard/dom.js"),
    ),
    (
        "charts.js",
        "text/javascript; charset=utf-8",
        include_str!("dashboard/charts.js"),
    ),
    (
        "feed.js",
        "text/javascript; charset=utf-8",
        include_str!("dashboard/feed.js"),
    ),
    (
        "polls.js",
        "text/javascript; charset=utf-8",
        include_str!("dashboard/polls.js"),
    ),
    (
        "gallery.js",
        "text/javascript; charset=utf-8",
        include_str!("dashboard/gallery.js"),
    ),
    (
        "account.js",
        "text/javascript; charset=utf-8",
        include_str!("dashboard/account.js"),
    ),
    (
        "pipeline.js",
        "text/javascript; charset=utf-8",
        include_str!("dashboard/pipeline.js"),
    ),
];

/// Everything the page loads comes from this origin: the policy makes a
/// stray third-party URL (a font, a CDN script) fail loudly in the browser
/// instead of silently reaching out, and forbids inline script.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
                   img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
                   form-action 'none'; frame-ancestors 'none'";

pub(super) fn routes() -> ApiRouter<AppState> {
    ApiRouter::new()
        .api_route(
            "/",
            get_with(index, |t| {
                op(
                    t,
                    "dashboard",
                    "ops",
                    "The live dashboard",
                    "An HTML page over the public reads: the feed (paged, live), an owner's \
                     polls with live tallies, a session's cards with their images (and, \
                     signed in with a token, the list of one's own sessions), and \
                     pipeline health from `/v1/pipeline`. Parameters, read by the page: \
                     `?owner=`, `?session=`, `?poll=` or `#poll=`.",
                    &[],
                )
            }),
        )
        .api_route(
            "/dashboard/{file}",
            get_with(asset, |t| {
                op(
                    t,
                    "dashboardAsset",
                    "ops",
                    "A script or style sheet of the dashboard",
                    "The ES modules and the style sheet the page loads, built into the binary.",
                    &[404],
                )
            }),
        )
}

/// A file of the dashboard in a path.
#[derive(Debug, Deserialize, JsonSchema)]
struct AssetPath {
    /// The file (another name: 404 `unknown_asset`).
    #[schemars(with = "AssetName")]
    file: String,
}

/// The names of [`ASSETS`].
struct AssetName;

impl JsonSchema for AssetName {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "DashboardAsset".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let names: Vec<&str> = ASSETS.iter().map(|(n, _, _)| *n).collect();
        schemars::json_schema!({"type": "string", "enum": names})
    }
}

/// A static answer: the content with its type, revalidated on every load.
struct File {
    content_type: &'static str,
    body: &'static str,
}

/// The media types a [`File`] answer of a route can have.
trait Media {
    const TYPES: &'static [&'static str];
}

/// The page.
struct Html;
impl Media for Html {
    const TYPES: &'static [&'static str] = &["text/html"];
}

/// A module or style sheet.
struct Script;
impl Media for Script {
    const TYPES: &'static [&'static str] = &["text/javascript", "text/css"];
}

/// A [`File`] of media `M`.
struct Static<M>(File, std::marker::PhantomData<M>);

impl<M: Media> aide::OperationOutput for Static<M> {
    type Inner = String;

    fn inferred_responses(
        _: &mut GenContext,
        _: &mut Operation,
    ) -> Vec<(Option<Status>, DocResponse)> {
        vec![(
            Some(Status::Code(200)),
            raw_response(
                "The file, revalidated on every load.",
                M::TYPES,
                schemars::json_schema!({"type": "string"}),
            ),
        )]
    }
}

impl<M> IntoResponse for Static<M> {
    fn into_response(self) -> Response {
        file(self.0.content_type, self.0.body)
    }
}

fn file(content_type: &'static str, body: &'static str) -> Response {
    let mut res = body.into_response();
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    res
}

/// `GET /`: the dashboard page.
async fn index() -> Static<Html> {
    Static(
        File {
            content_type: "text/html; charset=utf-8",
            body: INDEX,
        },
        std::marker::PhantomData,
    )
}

/// `GET /dashboard/{file}`: one of [`ASSETS`]; anything else is the API's
/// JSON 404, like any unknown resource.
async fn asset(Path(p): Path<AssetPath>) -> Result<Static<Script>, ApiError> {
    let name = p.file;
    ASSETS
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, content_type, body)| {
            Static(File { content_type, body }, std::marker::PhantomData)
        })
        .ok_or_else(|| {
            ApiError::not_found(
                "unknown_asset",
                format!("the dashboard has no file {name:?}"),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every module the page imports is served: a missing entry would
    /// only show as a blank page in a browser.
    #[test]
    fn every_imported_module_is_an_asset() {
        let served = |name: &str| ASSETS.iter().any(|(n, _, _)| *n == name);
        let sources = std::iter::once(INDEX).chain(ASSETS.iter().map(|(_, _, body)| *body));
        for text in sources {
            for part in text.split("/dashboard/").skip(1) {
                let name: String = part
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
                    .collect();
                assert!(served(&name), "{name:?} is referenced but not served");
            }
            for part in text.split("from './").skip(1) {
                let name: String = part.chars().take_while(|c| *c != '\'').collect();
                assert!(served(&name), "module {name:?} is imported but not served");
            }
        }
    }

    #[test]
    fn media_types_follow_the_extension() {
        for (name, content_type, _) in ASSETS {
            let want = match name.rsplit('.').next() {
                Some("js") => "text/javascript",
                Some("css") => "text/css",
                other => panic!("{name}: no media type for {other:?}"),
            };
            assert!(content_type.starts_with(want), "{name}: {content_type}");
        }
    }
}
