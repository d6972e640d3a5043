//! `atelier replay`: rebuild views from the log into a new generation while
//! the current one serves reads; the projector supervisors swap it in once
//! it has caught up. This command starts the rebuild and follows it with a
//! progress bar (events/s, lag, ETA); Ctrl-C stops following, not the
//! rebuild. `replay status` shows where every view stands, `replay gc`
//! drops retired generations.

use std::time::{Duration, Instant};

use anyhow::bail;
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use super::client::{Client, OpsArgs};
use crate::config::Config;

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(super) struct ReplayArgs {
    #[command(subcommand)]
    cmd: Option<ReplayCmd>,
    /// The view to rebuild: polls, feed, cards or all.
    #[arg(long, conflicts_with = "stage")]
    view: Option<String>,
    /// `infer`: rewind the inference stage (a new consumer group) so every
    /// upload is stylized again with the models published now.
    #[arg(long)]
    stage: Option<String>,
    /// Where to start: `earliest` (default), an RFC 3339 time, or
    /// milliseconds since the epoch.
    #[arg(long, default_value = "earliest")]
    from: String,
    /// Say what would be replayed, change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Start the rebuild and return without following it.
    #[arg(long)]
    no_wait: bool,
    #[command(flatten)]
    ops: OpsArgs,
}

#[derive(Debug, Subcommand)]
enum ReplayCmd {
    /// Where every view's generations and rebuilds stand.
    Status {
        /// Print the JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Drop the data of retired generations.
    Gc,
}

pub(super) async fn run(cfg: Config, a: ReplayArgs) -> anyhow::Result<()> {
    let ops = Client::ops(&cfg, &a.ops)?;
    match a.cmd {
        Some(ReplayCmd::Status { json }) => {
            let v = ops.get("/v1/admin/replay").await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print_status(&v);
            }
            Ok(())
        }
        Some(ReplayCmd::Gc) => {
            let v = ops.post("/v1/admin/replay/gc", &json!({})).await?;
            let dropped = v["dropped"].as_array().cloned().unwrap_or_default();
            if dropped.is_empty() {
                println!("nothing to drop");
            }
            for d in dropped {
                println!(
                    "dropped {} generation {}",
                    str_of(&d["view"]),
                    d["generation"]
                );
            }
            Ok(())
        }
        None => {
            let Some(view) = a.view else {
                bail!(
                    "say which view: --view polls|feed|cards|all (or `replay status`, `replay gc`)"
                );
            };
            let from: Value = match a.from.parse::<i64>() {
                Ok(ms) => json!(ms),
                Err(_) => json!(a.from),
            };
            let v = ops
                .post(
                    "/v1/admin/replay",
                    &json!({"view": view, "from": from, "dry_run": a.dry_run}),
                )
                .await?;
            let rebuilds = v["rebuilds"].as_array().cloned().unwrap_or_default();
            for r in &rebuilds {
                println!(
                    "{} {}: generation {} → {} ({} records to replay)",
                    if a.dry_run {
                        "would rebuild"
                    } else {
                        "rebuilding"
                    },
                    str_of(&r["view"]),
                    r["active"],
                    r["building"],
                    r["records"]
                );
            }
            if a.dry_run || a.no_wait {
                return Ok(());
            }
            if rebuilds.iter().any(|r| r["view"] == "infer") {
                println!(
                    "the inference workers move to the new consumer group within a second; \
                     completions follow on the completions topic"
                );
                return Ok(());
            }
            for r in rebuilds {
                follow(
                    &ops,
                    str_of(&r["view"]),
                    r["building"].as_u64().unwrap_or(0),
                )
                .await?;
            }
            Ok(())
        }
    }
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or("?")
}

/// Follows one rebuild until its generation is active.
async fn follow(ops: &Client, view: &str, generation: u64) -> anyhow::Result<()> {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>6} [{bar:30}] {pos}/{len} records  {msg}")?
            .progress_chars("=> "),
    );
    bar.set_prefix(view.to_owned());
    let started = Instant::now();
    let mut last: Option<(Instant, u64)> = None;
    let mut rate = 0.0f64;
    loop {
        let st = ops.get("/v1/admin/replay").await?;
        let Some(v) = st["views"]
            .as_array()
            .and_then(|vs| vs.iter().find(|v| v["view"] == view))
        else {
            bail!("the API did not report view {view}");
        };
        if v["active"].as_u64() == Some(generation) {
            bar.finish_with_message(format!(
                "swapped in after {:.1} s",
                started.elapsed().as_secs_f64()
            ));
            if bar.is_hidden() {
                println!(
                    "{view}: generation {generation} is active (rebuilt in {:.1} s)",
                    started.elapsed().as_secs_f64()
                );
            }
            return Ok(());
        }
        if v["building"].as_u64() != Some(generation) {
            bar.abandon();
            bail!("the rebuild of {view} (generation {generation}) is no longer under way");
        }
        let applied = v["building_applied"].as_u64().unwrap_or(0);
        let left = v["building_remaining"].as_u64().unwrap_or(0);
        let now = Instant::now();
        if let Some((t, a)) = last {
            let dt = now.duration_since(t).as_secs_f64();
            if dt > 0.0 {
                let r = applied.saturating_sub(a) as f64 / dt;
                rate = if rate == 0.0 { r } else { 0.7 * rate + 0.3 * r };
            }
        }
        last = Some((now, applied));
        let eta = if rate > 0.0 {
            format!("ETA {:.0} s", left as f64 / rate)
        } else {
            "ETA ?".to_owned()
        };
        bar.set_length(applied + left);
        bar.set_position(applied);
        bar.set_message(format!(
            "{rate:.0} events/s, lag {left}, {eta}, {}",
            str_of(&v["phase"])
        ));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn print_status(v: &Value) {
    let infer = &v["infer"];
    if !infer.is_null() {
        println!(
            "inference stage: generation {} (consumer group {})",
            infer["generation"],
            str_of(&infer["group"])
        );
    }
    println!(
        "{:<6} {:>6} {:>9} {:>9} {:>10} {:>10}  retired",
        "view", "active", "building", "phase", "lag", "remaining"
    );
    for s in v["views"].as_array().into_iter().flatten() {
        let retired: Vec<String> = s["retired"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| r.to_string())
            .collect();
        println!(
            "{:<6} {:>6} {:>9} {:>9} {:>10} {:>10}  {}",
            str_of(&s["view"]),
            s["active"].to_string(),
            s["building"]
                .as_u64()
                .map_or("-".to_owned(), |b| b.to_string()),
            str_of(&s["phase"]),
            s["lag"].to_string(),
            s["building_remaining"]
                .as_u64()
                .map_or("-".to_owned(), |b| b.to_string()),
            if retired.is_empty() {
                "-".to_owned()
            } else {
                retired.join(", ")
            }
        );
    }
}
