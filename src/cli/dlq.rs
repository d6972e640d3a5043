//! `atelier dlq`: list, show and replay dead letters through the
//! `/v1/admin/dlq` routes of a running atelier.

use std::io::Read as _;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::{Map, Value, json};

use super::client::{Client, OpsArgs};
use crate::config::Config;
use crate::dlq::Pos;

/// Most dead letters the API answers per page.
const PAGE: usize = 100;
/// Error texts longer than this are cut in the table (`show` has them whole).
const ERROR_WIDTH: usize = 60;

#[derive(Debug, Subcommand)]
pub(super) enum DlqCmd {
    /// List dead letters, oldest first.
    List {
        /// Only those refused by this stage (`project.polls`, `infer`, ...).
        #[arg(long)]
        stage: Option<String>,
        /// Only those from this source topic (full or base name).
        #[arg(long)]
        topic: Option<String>,
        /// Only those whose error contains this text.
        #[arg(long)]
        error: Option<String>,
        /// Most dead letters to print.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        ops: OpsArgs,
    },
    /// Show one dead letter in full: headers, key and body.
    Show {
        #[command(flatten)]
        at: At,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        ops: OpsArgs,
    },
    /// Re-publish dead letters to their source topic: one (optionally with
    /// a corrected body or headers), or every one matching --filter. A dead
    /// letter is replayed once; again only with --force.
    Replay {
        #[command(flatten)]
        at: At,
        /// A corrected body, from a file or `-` for stdin (UTF-8 text).
        #[arg(long, value_name = "FILE|-")]
        body: Option<PathBuf>,
        /// Set a header on the copy (repeat).
        #[arg(long = "header", value_name = "NAME=VALUE")]
        headers: Vec<String>,
        /// Remove a header from the copy (repeat).
        #[arg(long = "drop-header", value_name = "NAME")]
        drop_headers: Vec<String>,
        /// Replay even if it was replayed before.
        #[arg(long)]
        force: bool,
        /// Print what would be published; publish nothing.
        #[arg(long)]
        dry_run: bool,
        /// Replay, unchanged, every dead letter not replayed yet that
        /// matches `stage=..,topic=..,error=..` (repeatable).
        #[arg(
            long,
            value_name = "KEY=VALUE,...",
            conflicts_with_all = ["position", "partition", "offset", "body", "headers", "drop_headers", "force"]
        )]
        filter: Vec<String>,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        ops: OpsArgs,
    },
}

/// A dead letter's position in the DLQ, as `dlq list` prints it.
#[derive(Debug, Args)]
pub(super) struct At {
    /// PARTITION/OFFSET in the DLQ.
    #[arg(conflicts_with_all = ["partition", "offset"])]
    position: Option<String>,
    /// DLQ partition (with --offset).
    #[arg(long, requires = "offset")]
    partition: Option<i32>,
    /// DLQ offset (with --partition).
    #[arg(long, requires = "partition")]
    offset: Option<i64>,
}

impl At {
    fn pos(&self) -> anyhow::Result<Option<Pos>> {
        match (&self.position, self.partition, self.offset) {
            (Some(s), _, _) => match Pos::parse(s) {
                Some(p) => Ok(Some(p)),
                None => bail!("{s:?} is not a DLQ position: give PARTITION/OFFSET, e.g. 0/12"),
            },
            (None, Some(partition), Some(offset)) if partition >= 0 && offset >= 0 => {
                Ok(Some(Pos { partition, offset }))
            }
            (None, Some(_), Some(_)) => bail!("--partition and --offset cannot be negative"),
            _ => Ok(None),
        }
    }
}

pub(super) async fn run(cfg: Config, cmd: DlqCmd) -> anyhow::Result<()> {
    match cmd {
        DlqCmd::List {
            stage,
            topic,
            error,
            limit,
            json,
            ops,
        } => {
            let ops = Client::ops(&cfg, &ops)?;
            let filter = [("stage", stage), ("topic", topic), ("error", error)];
            let letters = list(&ops, &filter, limit).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&letters)?);
            } else if letters.is_empty() {
                println!("no dead letters");
            } else {
                print!("{}", table(&letters));
            }
            Ok(())
        }
        DlqCmd::Show { at, json, ops } => {
            let Some(pos) = at.pos()? else {
                bail!("which dead letter? give PARTITION/OFFSET (see `atelier dlq list`)");
            };
            let ops = Client::ops(&cfg, &ops)?;
            let path = format!("/v1/admin/dlq/{}/{}", pos.partition, pos.offset);
            let v = ops.json(ops.request(reqwest::Method::GET, &path)).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", show(&v));
            }
            Ok(())
        }
        DlqCmd::Replay {
            at,
            body,
            headers,
            drop_headers,
            force,
            dry_run,
            filter,
            json,
            ops,
        } => {
            let mut req = Map::new();
            req.insert("dry_run".into(), dry_run.into());
            match (at.pos()?, filter.is_empty()) {
                (Some(pos), true) => {
                    req.insert("partition".into(), pos.partition.into());
                    req.insert("offset".into(), pos.offset.into());
                    req.insert("force".into(), force.into());
                    if let Some(path) = body {
                        req.insert("payload".into(), Value::String(read_body(&path)?));
                    }
                    let hs = header_edits(&headers, &drop_headers)?;
                    if !hs.is_empty() {
                        req.insert("headers".into(), Value::Object(hs));
                    }
                }
                (None, false) => {
                    req.insert("filter".into(), Value::Object(parse_filter(&filter)?));
                }
                (None, true) => bail!(
                    "which dead letters? give PARTITION/OFFSET, or --filter stage=..,topic=..,error=.."
                ),
                (Some(_), false) => unreachable!("clap keeps a position and --filter apart"),
            }
            let ops = Client::ops(&cfg, &ops)?;
            let req = ops
                .request(reqwest::Method::POST, "/v1/admin/dlq/replay")
                .json(&Value::Object(req));
            let v = ops.json(req).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", replayed(&v));
            }
            Ok(())
        }
    }
}

/// Pages through the list until `limit` dead letters or the end.
async fn list(
    ops: &Client,
    filter: &[(&str, Option<String>)],
    limit: usize,
) -> anyhow::Result<Vec<Value>> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    while out.len() < limit {
        let mut q: Vec<(&str, String)> = filter
            .iter()
            .filter_map(|(k, v)| v.clone().map(|v| (*k, v)))
            .collect();
        q.push(("limit", (limit - out.len()).min(PAGE).to_string()));
        if let Some(c) = &cursor {
            q.push(("cursor", c.clone()));
        }
        let page = ops
            .json(ops.request(reqwest::Method::GET, "/v1/admin/dlq").query(&q))
            .await?;
        out.extend(page["dead_letters"].as_array().cloned().unwrap_or_default());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    out.truncate(limit);
    Ok(out)
}

fn place(v: &Value) -> String {
    match (
        v["topic"].as_str(),
        v["partition"].as_i64(),
        v["offset"].as_i64(),
    ) {
        (Some(t), Some(p), Some(o)) => format!("{t}/{p}/{o}"),
        _ => "-".to_owned(),
    }
}

fn position(v: &Value) -> String {
    format!("{}/{}", v["partition"], v["offset"])
}

/// Cuts `s` to `n` characters, marking the cut.
fn cut(s: &str, n: usize) -> String {
    let one_line = s.replace(['\n', '\r'], " ");
    if one_line.chars().count() <= n {
        return one_line;
    }
    let mut t: String = one_line.chars().take(n.saturating_sub(1)).collect();
    t.push('…');
    t
}

/// The list as an aligned table.
fn table(letters: &[Value]) -> String {
    let header = [
        "POSITION", "STAGE", "SOURCE", "ATTEMPTS", "ERROR", "REPLAYED",
    ];
    let rows: Vec<[String; 6]> = letters
        .iter()
        .map(|l| {
            [
                position(l),
                l["stage"].as_str().unwrap_or("-").to_owned(),
                place(&l["source"]),
                l["attempts"]
                    .as_u64()
                    .map_or_else(|| "-".to_owned(), |n| n.to_string()),
                cut(l["error"].as_str().unwrap_or(""), ERROR_WIDTH),
                if l["replayed"].is_object() {
                    place(&l["replayed"])
                } else {
                    "-".to_owned()
                },
            ]
        })
        .collect();
    let mut widths = header.map(|h| h.chars().count());
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  "));
            }
        }
        s.trim_end().to_owned() + "\n"
    };
    let mut out = line(&header.map(str::to_owned));
    for r in &rows {
        out.push_str(&line(r));
    }
    out
}

fn text_or_flagged(v: &Value, flag: &Value) -> String {
    match (v.as_str(), flag.as_bool()) {
        (Some(s), Some(true)) => format!("{s} (base64)"),
        (Some(s), _) => s.to_owned(),
        _ => "(none)".to_owned(),
    }
}

/// One dead letter, for a person.
fn show(v: &Value) -> String {
    let mut out = String::new();
    let field = |out: &mut String, name: &str, value: String| {
        out.push_str(&format!("{name:<12}{value}\n"));
    };
    field(&mut out, "position", position(v));
    field(&mut out, "at", v["at"].as_str().unwrap_or("-").to_owned());
    field(
        &mut out,
        "stage",
        v["stage"].as_str().unwrap_or("-").to_owned(),
    );
    field(
        &mut out,
        "error",
        v["error"].as_str().unwrap_or("-").to_owned(),
    );
    field(&mut out, "source", place(&v["source"]));
    field(
        &mut out,
        "attempts",
        v["attempts"]
            .as_u64()
            .map_or_else(|| "-".to_owned(), |n| n.to_string()),
    );
    if let Some(t) = v["type"].as_str() {
        field(
            &mut out,
            "event",
            format!("{t} {}", v["id"].as_str().unwrap_or("")),
        );
    }
    field(
        &mut out,
        "key",
        text_or_flagged(&v["key"], &v["key_base64"]),
    );
    let replayed = &v["replayed"];
    field(
        &mut out,
        "replayed",
        if replayed.is_object() {
            format!(
                "to {} at {} by {}",
                place(replayed),
                replayed["at"].as_str().unwrap_or("?"),
                replayed["by"].as_str().unwrap_or("?")
            )
        } else {
            "no".to_owned()
        },
    );
    out.push_str("headers\n");
    for h in v["headers"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  {}: {}\n",
            h["name"].as_str().unwrap_or(""),
            text_or_flagged(&h["value"], &h["base64"])
        ));
    }
    out.push_str("payload\n");
    out.push_str(&text_or_flagged(&v["payload"], &v["payload_base64"]));
    out.push('\n');
    out
}

/// What a replay did, for a person.
fn replayed(v: &Value) -> String {
    let dry = v["dry_run"].as_bool().unwrap_or(false);
    let mut out = String::new();
    let replays = v["replayed"].as_array().cloned().unwrap_or_default();
    for r in &replays {
        if dry {
            let bytes = r["payload"].as_str().map_or(0, str::len);
            out.push_str(&format!(
                "would replay {} to {} (key {}, {} headers, {bytes} bytes of body)\n",
                position(r),
                r["topic"].as_str().unwrap_or("?"),
                text_or_flagged(&r["key"], &r["key_base64"]),
                r["headers"].as_array().map_or(0, Vec::len),
            ));
        } else {
            out.push_str(&format!(
                "replayed {} to {} (marker {})\n",
                position(r),
                place(&r["to"]),
                position(&r["marker"]),
            ));
        }
    }
    for s in v["skipped"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "skipped {}: {}\n",
            position(s),
            s["reason"].as_str().unwrap_or("")
        ));
    }
    if replays.is_empty() {
        out.push_str("nothing to replay\n");
    }
    if v["truncated"].as_bool().unwrap_or(false) {
        out.push_str("more dead letters match: run the command again for the rest\n");
    }
    out
}

/// Reads a corrected body from a file or stdin.
fn read_body(path: &std::path::Path) -> anyhow::Result<String> {
    let bytes = if path.as_os_str() == "-" {
        let mut b = Vec::new();
        std::io::stdin()
            .read_to_end(&mut b)
            .context("reading the body from stdin")?;
        b
    } else {
        std::fs::read(path).with_context(|| format!("reading {}", path.display()))?
    };
    String::from_utf8(bytes).map_err(|_| anyhow::anyhow!("the body must be UTF-8 text"))
}

/// `NAME=VALUE` settings and names to drop, as the API's header edits.
fn header_edits(set: &[String], drop: &[String]) -> anyhow::Result<Map<String, Value>> {
    let mut m = Map::new();
    for h in set {
        let Some((k, v)) = h.split_once('=').filter(|(k, _)| !k.is_empty()) else {
            bail!("--header {h:?}: give NAME=VALUE");
        };
        m.insert(k.to_owned(), json!(v));
    }
    for k in drop {
        if m.insert(k.clone(), Value::Null).is_some() {
            bail!("header {k:?} is both set and dropped");
        }
    }
    Ok(m)
}

/// `stage=..,topic=..,error=..` (from one or more --filter flags) as the
/// API's filter. A comma not followed by a known key belongs to the value
/// before it (an error text may hold commas).
fn parse_filter(args: &[String]) -> anyhow::Result<Map<String, Value>> {
    const KEYS: [&str; 3] = ["stage", "topic", "error"];
    let mut m = Map::new();
    for arg in args {
        let mut parts: Vec<String> = Vec::new();
        for piece in arg.split(',') {
            let starts_key = piece
                .split_once('=')
                .is_some_and(|(k, _)| KEYS.contains(&k.trim()));
            match parts.last_mut() {
                Some(last) if !starts_key => {
                    last.push(',');
                    last.push_str(piece);
                }
                _ => parts.push(piece.to_owned()),
            }
        }
        for p in parts {
            let Some((k, v)) = p.split_once('=') else {
                bail!("--filter {arg:?}: give KEY=VALUE pairs, keys stage, topic, error");
            };
            let k = k.trim();
            if !KEYS.contains(&k) {
                bail!("--filter: unknown key {k:?} (stage, topic or error)");
            }
            if m.insert(k.to_owned(), json!(v)).is_some() {
                bail!("--filter: {k} given twice");
            }
        }
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_split_on_known_keys_only() {
        let m = parse_filter(&["stage=project.polls,error=expected `,` or `}`".into()]).unwrap();
        assert_eq!(m["stage"], "project.polls");
        assert_eq!(m["error"], "expected `,` or `}`");
        let m = parse_filter(&["topic=atelier.feed.v1".into(), "stage=x".into()]).unwrap();
        assert_eq!(
            (m["topic"].as_str(), m["stage"].as_str()),
            (Some("atelier.feed.v1"), Some("x"))
        );
        assert!(parse_filter(&["nope=1".into()]).is_err());
        assert!(parse_filter(&["stage".into()]).is_err());
        assert!(parse_filter(&["stage=a,stage=b".into()]).is_err());
    }

    #[test]
    fn header_edits_set_and_drop() {
        let m = header_edits(&["ce_type=VoteCast".into(), "x=a=b".into()], &["y".into()]).unwrap();
        assert_eq!(m["ce_type"], "VoteCast");
        assert_eq!(m["x"], "a=b");
        assert_eq!(m["y"], Value::Null);
        assert!(header_edits(&["novalue".into()], &[]).is_err());
        assert!(header_edits(&["x=1".into()], &["x".into()]).is_err());
    }

    #[test]
    fn the_table_is_aligned_and_cuts_long_errors() {
        let l = |p: i64, err: &str| {
            json!({"partition": 0, "offset": p, "stage": "project.polls", "error": err,
                   "source": {"topic": "atelier.polls.v1", "partition": 3, "offset": 17},
                   "attempts": 1, "replayed": null})
        };
        let t = table(&[l(5, "short"), l(12, &"x".repeat(100))]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        let col = |s: &str| s.find("atelier.polls.v1").unwrap();
        assert_eq!(col(lines[1]), col(lines[2]));
        assert!(lines[2].contains('…') && !lines[2].contains(&"x".repeat(60)));
        assert!(lines[0].starts_with("POSITION"));
    }
}
