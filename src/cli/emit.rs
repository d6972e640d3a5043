//! `atelier emit`: create polls, votes and feed items through the HTTP API (so the edge's
//! validation and authentication apply), then read the result back with the
//! returned consistency token.

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::client::Client;
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
    /// Upload an image for stylization and follow its job until it is
    /// done (its card is printed at the end).
    Upload {
        /// Session whose cards show it: one of yours, from an earlier upload
        /// (without it, a new session is made and its key printed).
        #[arg(long)]
        session: Option<String>,
        /// Card slot, 1 to 3.
        #[arg(long, default_value_t = 1)]
        slot: u8,
        /// Style (see `GET /v1/styles`).
        #[arg(long)]
        style: String,
        /// JPEG, PNG or WebP file; without one, a generated test picture.
        file: Option<std::path::PathBuf>,
        /// Seconds to wait for the job to finish (0: do not wait).
        #[arg(long, default_value_t = 120)]
        wait: u64,
        #[command(flatten)]
        who: Who,
    },
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

/// The client of `who`.
fn client(cfg: &Config, who: &Who) -> anyhow::Result<Client> {
    Client::new(cfg, who.api.as_deref(), who.token.as_deref(), &who.user)
}

/// Reads `path` once the view has applied what it waits for (the server
/// waits a bounded time; past it we honour its `503`, a few times) and
/// prints it.
async fn show_at(c: &Client, path: &str) -> anyhow::Result<()> {
    let mut tries = 0;
    let v = loop {
        match c.get(path).await {
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

/// Reads the poll back once the view has applied `token`.
async fn show(c: &Client, poll: &str, token: &str) -> anyhow::Result<()> {
    show_at(c, &format!("/v1/polls/{poll}?after={token}")).await
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
            let c = client(&cfg, &who)?;
            let ends_at = ends_in.map(|s| chrono::Utc::now() + chrono::Duration::seconds(s));
            let v = c
                .call(
                    Method::POST,
                    "/v1/polls",
                    Some(&json!({
                        "head": head, "message": message, "questions": questions,
                        "multiple_choice": multiple, "anonymous": anonymous, "ends_at": ends_at,
                    })),
                )
                .await?;
            let id = field(&v, "poll_id")?;
            eprintln!("created poll {id}");
            show(&c, id, field(&v, "token")?).await
        }
        EmitCmd::Vote {
            poll,
            questions,
            who,
        } => {
            let c = client(&cfg, &who)?;
            let v = c
                .call(
                    Method::POST,
                    &format!("/v1/polls/{poll}/votes"),
                    Some(&json!({ "question_ids": questions })),
                )
                .await?;
            show(&c, &poll, field(&v, "token")?).await
        }
        EmitCmd::Retract { poll, who } => {
            let c = client(&cfg, &who)?;
            let v = c
                .call(Method::DELETE, &format!("/v1/polls/{poll}/votes"), None)
                .await?;
            show(&c, &poll, field(&v, "token")?).await
        }
        EmitCmd::Close { poll, who } => {
            let c = client(&cfg, &who)?;
            let v = c
                .call(Method::POST, &format!("/v1/polls/{poll}/close"), None)
                .await?;
            show(&c, &poll, field(&v, "token")?).await
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
            let c = client(&cfg, &who)?;
            let v = c.call(Method::POST, "/v1/feed", Some(&payload)).await?;
            let id = field(&v, "item_id")?;
            eprintln!("created {kind} {id}");
            show_at(&c, &format!("/v1/feed/{id}?after={}", field(&v, "token")?)).await
        }
        EmitCmd::Like(a) => item_action(&cfg, a, Method::POST, "likes").await,
        EmitCmd::Unlike(a) => item_action(&cfg, a, Method::DELETE, "likes").await,
        EmitCmd::Join(a) => item_action(&cfg, a, Method::POST, "members").await,
        EmitCmd::Leave(a) => item_action(&cfg, a, Method::DELETE, "members").await,
        EmitCmd::Upload {
            session,
            slot,
            style,
            file,
            wait,
            who,
        } => upload(&cfg, &who, session, slot, style, file, wait).await,
        EmitCmd::Delete(a) => {
            let c = client(&cfg, &a.who)?;
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
    let c = client(cfg, &a.who)?;
    let v = c
        .call(method, &format!("/v1/feed/{}/{what}", a.item), None)
        .await?;
    show_at(
        &c,
        &format!("/v1/feed/{}?after={}", a.item, field(&v, "token")?),
    )
    .await
}

async fn upload(
    cfg: &Config,
    who: &Who,
    session: Option<String>,
    slot: u8,
    style: String,
    file: Option<std::path::PathBuf>,
    wait: u64,
) -> anyhow::Result<()> {
    use crate::image::codec;
    let (bytes, name) = match &file {
        Some(f) => (
            std::fs::read(f).with_context(|| format!("reading {}", f.display()))?,
            f.file_name()
                .map_or("image".into(), |n| n.to_string_lossy().into_owned()),
        ),
        None => {
            let img = codec::test_pattern(640, 480, u32::from(slot));
            let jpeg = codec::encode_jpeg(img.as_raw(), 640, 480, 90)?;
            (jpeg, "test-pattern.jpg".into())
        }
    };
    let c = client(cfg, who)?;
    let session = match session {
        Some(s) => s,
        None => {
            let v = c.call(reqwest::Method::POST, "/v1/sessions", None).await?;
            let key = field(&v, "session_key")?.to_owned();
            eprintln!("new session {key} (pass --session {key} to upload into it again)");
            key
        }
    };
    let form = reqwest::multipart::Form::new()
        .text("session_key", session.clone())
        .text("slot", slot.to_string())
        .text("style", style)
        .part(
            "image",
            reqwest::multipart::Part::bytes(bytes).file_name(name),
        );
    let v = c
        .json(
            c.request(reqwest::Method::POST, "/v1/uploads")
                .multipart(form),
        )
        .await?;
    let id = field(&v, "upload_id")?.to_owned();
    eprintln!("uploaded {id}");
    if wait == 0 {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    // Follow the job on the live stream (no status polling): it starts with
    // the upload's current state, then each change.
    let mut res = c
        .send(c.request(reqwest::Method::GET, &format!("/v1/stream?upload={id}")))
        .await?;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(wait);
    let (mut buf, mut last) = (String::new(), String::new());
    loop {
        let chunk = tokio::time::timeout_at(deadline, res.chunk())
            .await
            .with_context(|| format!("upload {id} not done after {wait} s"))??
            .with_context(|| format!("the stream ended before upload {id} was done"))?;
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let frame: String = buf.drain(..end + 2).collect();
            let data: String = frame
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(str::trim_start)
                .collect();
            let is_upload = frame.lines().any(|l| l.trim() == "event: upload");
            let Ok(card) = serde_json::from_str::<Value>(&data) else {
                continue;
            };
            if !is_upload {
                continue;
            }
            let status = card
                .get("status")
                .and_then(Value::as_str)
                .unwrap_or("pending");
            if status != last {
                eprintln!("  {status}");
                last = status.to_owned();
            }
            if matches!(status, "completed" | "failed") {
                println!("{}", serde_json::to_string_pretty(&card)?);
                if status == "completed" {
                    // A share link opens the session's gallery in a browser
                    // (the session is the caller's alone otherwise).
                    let link = c
                        .call(
                            reqwest::Method::POST,
                            &format!("/v1/sessions/{session}/share"),
                            None,
                        )
                        .await?;
                    eprintln!(
                        "output:  {}{}\ngallery: {}{}",
                        c.base(),
                        card.get("output_url")
                            .and_then(Value::as_str)
                            .unwrap_or_default(),
                        c.base(),
                        field(&link, "dashboard_url")?,
                    );
                }
                return Ok(());
            }
        }
    }
}
