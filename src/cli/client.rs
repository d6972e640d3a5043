//! The one HTTP client of the commands that call a running atelier
//! (`emit`, `replay`, `dlq`, `export`): the base URL from `--api` or
//! `http.listen`, a bearer token given or signed with the configured (or
//! development) secret, and errors that say what the API said. The
//! operations commands call the `/v1/admin` routes, so they work the same
//! against `atelier up` (whose log and views live in that process) and
//! against real services.

use anyhow::{Context, bail};
use clap::Args;
use serde_json::Value;

use crate::config::{ADMIN, Config};

/// Where the API is and how an operations command authenticates.
#[derive(Clone, Debug, Args)]
pub(super) struct OpsArgs {
    /// API base URL (default: from http.listen).
    #[arg(long, env = "ATELIER_API", global = true)]
    pub(super) api: Option<String>,
    /// Use this bearer token (its subject must be in auth.admins) instead of
    /// signing one for `admin`.
    #[arg(long, env = "ATELIER_ADMIN_TOKEN", global = true)]
    pub(super) token: Option<String>,
}

/// An authenticated client of the API.
#[derive(Clone, Debug)]
pub(super) struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    /// A client of the API at `api` (default: `http.listen`) with `token`,
    /// or one signed for `user`.
    pub(super) fn new(
        cfg: &Config,
        api: Option<&str>,
        token: Option<&str>,
        user: &str,
    ) -> anyhow::Result<Self> {
        let base = api.map_or_else(|| format!("http://{}", cfg.http.listen), str::to_owned);
        let token = match token {
            Some(t) => t.to_owned(),
            None => {
                let cfg = crate::app::with_dev_auth(cfg.clone())?;
                if cfg.auth.jwt_secret.expose().is_empty() {
                    bail!("no JWT secret configured: pass --token");
                }
                crate::api::mint(cfg.auth.jwt_secret.expose(), user, user, 3600)
            }
        };
        Ok(Self {
            http: reqwest::Client::new(),
            base: base.trim_end_matches('/').to_owned(),
            token,
        })
    }

    /// A client of the operations routes, as `auth::ADMIN` unless a token
    /// is given.
    pub(super) fn ops(cfg: &Config, args: &OpsArgs) -> anyhow::Result<Self> {
        Self::new(cfg, args.api.as_deref(), args.token.as_deref(), ADMIN)
    }

    /// The API's base URL.
    pub(super) fn base(&self) -> &str {
        &self.base
    }

    /// A request to `path` with the token.
    pub(super) fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
    }

    /// Sends; an error answer becomes the API's reason and code
    /// (`reason (code, HTTP status)`).
    pub(super) async fn send(
        &self,
        req: reqwest::RequestBuilder,
    ) -> anyhow::Result<reqwest::Response> {
        let res = req
            .send()
            .await
            .with_context(|| format!("calling {} (is atelier running?)", self.base))?;
        let status = res.status();
        if status.is_success() {
            return Ok(res);
        }
        let text = res.text().await.unwrap_or_default();
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        match (body["reason"].as_str(), body["error"].as_str()) {
            (Some(reason), Some(code)) => bail!("{reason} ({code}, HTTP {})", status.as_u16()),
            _ => bail!("HTTP {status}: {text}"),
        }
    }

    /// Sends and reads a JSON answer (`null` when the body is not JSON).
    pub(super) async fn json(&self, req: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let text = self.send(req).await?.text().await?;
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// `method path` with an optional JSON body; the JSON answer.
    pub(super) async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        let mut req = self.request(method, path);
        if let Some(b) = body {
            req = req.json(b);
        }
        self.json(req).await
    }

    /// GET a JSON answer.
    pub(super) async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.call(reqwest::Method::GET, path, None).await
    }

    /// POST a JSON body, read a JSON answer.
    pub(super) async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }
}
