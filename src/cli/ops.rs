//! The client the operations commands (`replay`, `dlq`, `export`) share:
//! they call the `/v1/admin` routes of a running atelier, so they work the
//! same against `atelier up` (embedded log and views live in that process)
//! and against real services. Tokens are signed for `auth::ADMIN` with the
//! configured or development secret unless one is given.

use anyhow::{Context, bail};
use clap::Args;
use serde_json::Value;

use crate::config::{ADMIN, Config};

/// Where the API is and how to authenticate.
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

/// An authenticated client of the operations routes.
#[derive(Clone, Debug)]
pub(super) struct Ops {
    pub(super) http: reqwest::Client,
    pub(super) base: String,
    token: String,
}

impl Ops {
    pub(super) fn new(cfg: &Config, args: &OpsArgs) -> anyhow::Result<Self> {
        let base = args
            .api
            .clone()
            .unwrap_or_else(|| format!("http://{}", cfg.http.listen));
        let token = match &args.token {
            Some(t) => t.clone(),
            None => {
                let cfg = crate::app::with_dev_auth(cfg.clone())?;
                if cfg.auth.jwt_secret.expose().is_empty() {
                    bail!("no JWT secret configured: pass --token");
                }
                crate::api::mint(cfg.auth.jwt_secret.expose(), ADMIN, ADMIN, 3600)
            }
        };
        Ok(Self {
            http: reqwest::Client::new(),
            base: base.trim_end_matches('/').to_owned(),
            token,
        })
    }

    /// A request to `path` with the admin token.
    pub(super) fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
    }

    /// Sends and checks the status; the error says what the API said.
    pub(super) async fn send(
        &self,
        req: reqwest::RequestBuilder,
    ) -> anyhow::Result<reqwest::Response> {
        let res = req
            .send()
            .await
            .with_context(|| format!("calling {} (is atelier running?)", self.base))?;
        let status = res.status();
        if !status.is_success() {
            let body = res.text().await.unwrap_or_default();
            bail!("{status}: {body}");
        }
        Ok(res)
    }

    /// GET a JSON answer.
    pub(super) async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let res = self.send(self.request(reqwest::Method::GET, path)).await?;
        Ok(res.json().await?)
    }

    /// POST a JSON body, read a JSON answer.
    pub(super) async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let res = self
            .send(self.request(reqwest::Method::POST, path).json(body))
            .await?;
        Ok(res.json().await?)
    }
}
