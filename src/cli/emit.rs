//! `atelier emit`: create polls, votes and feed items through the HTTP API (so the edge's
//! validation and authentication apply), then read the result back with the
//! returned consistency token.

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::config::Config;

#[derive(Debug, Args)]
pub(super) struct Who {
    /// API base URL (default: from http.listen).
    #[arg(long, env = "ATELIER_API")]
    api: Option<String>,
    /// Act as this user (a token is signed with the configured or dev secret).
    #[arg(long = "as", default_value = "dev")]
    user: String,
    /// Use this bearer token instead of signing one.
    #[arg(long, env = "ATELIER_TOKEN")]
    token: Option<String>,
}

#[derive(Debug, Subcommand)]
pub(super) enum EmitCmd {
    /// Create a poll.
    Poll {
        /// Headline.
        #[arg(long)]
        head: String,
        /// Description.
        #[arg(long, default_value = "")]
        message: String,
        /// An option (repeat, in order).
        #[arg(long = "question", required = true)]
        questions: Vec<String>,
        /// Allow several choices per ballot.
        #[arg(long)]
        multiple: bool,
        /// Never store who voted.
        #[arg(long)]
        anonymous: bool,
        /// End the poll this many seconds from now.
        #[arg(long)]
        ends_in: Option<i64>,
        #[command(flatten)]
        who: Who,
    },
    /// Cast (or replace) a ballot.
    Vote {
        /// Poll id.
        #[arg(long)]
        poll: String,
        /// Chosen question id (repeat for multiple choice).
        #[arg(long = "question", required = true)]
        questions: Vec<u16>,
        #[command(flatten)]
        who: Who,
    },
    /// Withdraw a ballot.
    Retract {
        /// Poll id.
        #[arg(long)]
        poll: String,
        #[command(flatten)]
        who: Who,
    },
    /// Close a poll (owner only).
    Close {
        /// Poll id.
        #[arg(long)]
        poll: String,
        #[command(flatten)]
        who: Who,
    },
    /// Create a feed item: a post (--title, --body), a game (--name,
    /// --location) or a team (--room).
    Item {
        /// post, game or team.
        #[arg(long, value_parser = ["post", "game", "team"])]
        kind: String,
        /// A post's title.
        #[arg(long)]
        title: Option<String>,
        /// A post's body.
        #[arg(long, default_value = "")]
        body: String,
        /// A game's name.
        #[arg(long)]
        name: Option<String>,
        /// A game's location.
        #[arg(long)]
        location: Option<String>,
        /// A team's room.
        #[arg(long)]
        room: Option<String>,
        #[command(flatten)]
        who: Who,
    },
    /// Like a feed item.
    Like(ItemAction),
    /// Take a like back.
    Unlike(ItemAction),
    /// Join a game or team.
    Join(ItemAction),
    /// Leave a game or team.
    Leave(ItemAction),
    /// Delete a feed item (author only).
    Delete(ItemAction),
}

/// An action on one feed item.
#[derive(Debug, Args)]
pub(super) struct ItemAction {
    /// Item id.
    #[arg(long)]
    item: String,
    #[command(flatten)]
    who: Who,
}

struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    fn new(cfg: &Config, who: &Who) -> anyhow::Result<Self> {
        let base = who
            .api
            .clone()
            .unwrap_or_else(|| format!("http://{}", cfg.http.listen));
        let token = match &who.token {
            Some(t) => t.clone(),
            None => {
                let cfg = super::app::with_dev_auth(cfg.clone())?;
                if cfg.auth.jwt_secret.expose().is_empty() {
                    bail!("no JWT secret configured: pass --token");
                }
                crate::api::mint(cfg.auth.jwt_secret.expose(), &who.user, &who.user, 3600)
            }
        };
        Ok(Self {
            http: reqwest::Client::new(),
            base: base.trim_end_matches('/').to_owned(),
            token,
        })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req
            .send()
            .await
            .with_context(|| format!("calling {}{path} (is `atelier up` running?)", self.base))?;
        let status = res.status();
        let v: Value = res.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("{status}: {}", v);
        }
        Ok(v)
    }

    /// Reads the poll back once the view has applied `token` (the server
    /// waits a bounded time; past it we honour its `503`, a few times).
    async fn show(&self, poll: &str, token: &str) -> anyhow::Result<()> {
        self.show_at(&format!("/v1/polls/{poll}?after={token}"))
            .await
    }

    async fn show_at(&self, path: &str) -> anyhow::Result<()> {
        let path = path.to_owned();
        let mut tries = 0;
        let v = loop {
            match self.call(reqwest::Method::GET, &path, None).await {
                Err(e) if tries < 5 && e.to_string().contains("not_yet_applied") => {
                    tries += 1;
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
                other => break other?,
            }
        };
        println!("{}", serde_json::to_string_pretty(&v)?);
        Ok(())
    }
}

fn field<'a>(v: &'a Value, k: &str) -> anyhow::Result<&'a str> {
    v.get(k)
        .and_then(Value::as_str)
        .with_context(|| format!("response without {k}: {v}"))
}

pub(super) async fn run(cfg: Config, cmd: EmitCmd) -> anyhow::Result<()> {
    use reqwest::Method;
    match cmd {
        EmitCmd::Poll {
            head,
            message,
            questions,
            multiple,
            anonymous,
            ends_in,
            who,
        } => {
            let c = Client::new(&cfg, &who)?;
            let ends_at = ends_in.map(|s| chrono::Utc::now() + chrono::Duration::seconds(s));
            let v = c
                .call(
                    Method::POST,
                    "/v1/polls",
                    Some(json!({
                        "head": head, "message": message, "questions": questions,
                        "multiple_choice": multiple, "anonymous": anonymous, "ends_at": ends_at,
                    })),
                )
                .await?;
            let id = field(&v, "poll_id")?;
            eprintln!("created poll {id}");
            c.show(id, field(&v, "token")?).await
        }
        EmitCmd::Vote {
            poll,
            questions,
            who,
        } => {
            let c = Client::new(&cfg, &who)?;
            let v = c
                .call(
                    Method::POST,
                    &format!("/v1/polls/{poll}/votes"),
                    Some(json!({ "question_ids": questions })),
                )
                .await?;
            c.show(&poll, field(&v, "token")?).await
        }
        EmitCmd::Retract { poll, who } => {
            let c = Client::new(&cfg, &who)?;
            let v = c
                .call(Method::DELETE, &format!("/v1/polls/{poll}/votes"), None)
                .await?;
            c.show(&poll, field(&v, "token")?).await
        }
        EmitCmd::Close { poll, who } => {
            let c = Client::new(&cfg, &who)?;
            let v = c
                .call(Method::POST, &format!("/v1/polls/{poll}/close"), None)
                .await?;
            c.show(&poll, field(&v, "token")?).await
        }
        EmitCmd::Item {
            kind,
            title,
            body,
            name,
            location,
            room,
            who,
        } => {
            let need = |v: Option<String>, flag: &str| {
                v.with_context(|| format!("a {kind} needs --{flag}"))
            };
            let payload = match kind.as_str() {
                "post" => json!({"kind": "post", "title": need(title, "title")?, "body": body}),
                "game" => json!({
                    "kind": "game", "name": need(name, "name")?,
                    "location": need(location, "location")?,
                }),
                _ => json!({"kind": "team", "room": need(room, "room")?}),
            };
            let c = Client::new(&cfg, &who)?;
            let v = c.call(Method::POST, "/v1/feed", Some(payload)).await?;
            let id = field(&v, "item_id")?;
            eprintln!("created {kind} {id}");
            c.show_at(&format!("/v1/feed/{id}?after={}", field(&v, "token")?))
                .await
        }
        EmitCmd::Like(a) => item_action(&cfg, a, Method::POST, "likes").await,
        EmitCmd::Unlike(a) => item_action(&cfg, a, Method::DELETE, "likes").await,
        EmitCmd::Join(a) => item_action(&cfg, a, Method::POST, "members").await,
        EmitCmd::Leave(a) => item_action(&cfg, a, Method::DELETE, "members").await,
        EmitCmd::Delete(a) => {
            let c = Client::new(&cfg, &a.who)?;
            let v = c
                .call(Method::DELETE, &format!("/v1/feed/{}", a.item), None)
                .await?;
            eprintln!("deleted item {} (token {})", a.item, field(&v, "token")?);
            Ok(())
        }
    }
}

async fn item_action(
    cfg: &Config,
    a: ItemAction,
    method: reqwest::Method,
    what: &str,
) -> anyhow::Result<()> {
    let c = Client::new(cfg, &a.who)?;
    let v = c
        .call(method, &format!("/v1/feed/{}/{what}", a.item), None)
        .await?;
    c.show_at(&format!(
        "/v1/feed/{}?after={}",
        a.item,
        field(&v, "token")?
    ))
    .await
}
