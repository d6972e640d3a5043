//! `atelier export`: stream a view out as JSON lines or CSV.

use clap::Args;

use super::ops::OpsArgs;
use crate::config::Config;

#[derive(Debug, Args)]
pub(super) struct ExportArgs {
    #[command(flatten)]
    ops: OpsArgs,
}

pub(super) async fn run(_cfg: Config, _args: ExportArgs) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
