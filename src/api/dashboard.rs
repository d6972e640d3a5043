//! The live dashboard: one HTML page and its ES modules, served by the read
//! API at `/` with no front-end build step. The page reads the same public
//! routes as any client (feed, polls, cards, `/v1/stream`, `/v1/pipeline`);
//! nothing here touches a view.
//!
//! The assets are compiled into the binary (`include_str!`), so a deployed
//! `atelier serve` needs no files beside it, and they are answered with
//! `Cache-Control: no-cache` so that a new binary's page is never mixed with
//! an old cached module.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

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

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route("/dashboard/{file}", get(asset))
}

/// A static answer: the content with its type, revalidated on every load.
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
async fn index() -> Response {
    file("text/html; charset=utf-8", INDEX)
}

/// `GET /dashboard/{file}`: one of [`ASSETS`]; anything else is the API's
/// JSON 404, like any unknown resource.
async fn asset(Path(name): Path<String>) -> Result<Response, ApiError> {
    ASSETS
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, content_type, body)| file(content_type, body))
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
