//! `atelier replay`: rebuild views into a new generation and swap it in.

use clap::Args;

use super::ops::OpsArgs;
use crate::config::Config;

#[derive(Debug, Args)]
pub(super) struct ReplayArgs {
    #[command(flatten)]
    ops: OpsArgs,
}

pub(super) async fn run(_cfg: Config, _args: ReplayArgs) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
