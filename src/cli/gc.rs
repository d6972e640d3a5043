//! `atelier gc`: removes orphaned images (stored by an upload whose event
//! was never appended) through `POST /v1/admin/blobs/gc`, so it works the
//! same against the embedded default and against real services.

use clap::Args;
use serde_json::json;

use super::client::{Client, OpsArgs};
use crate::config::Config;

#[derive(Debug, Args)]
pub(super) struct GcArgs {
    /// Count the orphans, delete nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print the JSON answer.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    ops: OpsArgs,
}

pub(super) async fn run(cfg: Config, a: GcArgs) -> anyhow::Result<()> {
    let ops = Client::ops(&cfg, &a.ops)?;
    let path = if a.dry_run {
        "/v1/admin/blobs/gc?dry_run=true"
    } else {
        "/v1/admin/blobs/gc"
    };
    let v = ops.post(path, &json!({})).await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "{} images: {} of known uploads, {} recent, {} foreign; {} orphans {}",
        v["scanned"],
        v["known"],
        v["recent"],
        v["foreign"],
        v["orphans"],
        if a.dry_run { "found" } else { "deleted" }
    );
    for key in v["sample"].as_array().into_iter().flatten() {
        println!("  {}", key.as_str().unwrap_or_default());
    }
    Ok(())
}
