//! `atelier dlq`: list, show and replay dead letters.

use clap::Subcommand;

use super::ops::OpsArgs;
use crate::config::Config;

#[derive(Debug, Subcommand)]
pub(super) enum DlqCmd {
    /// List dead letters.
    List {
        #[command(flatten)]
        ops: OpsArgs,
    },
}

pub(super) async fn run(_cfg: Config, _cmd: DlqCmd) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
