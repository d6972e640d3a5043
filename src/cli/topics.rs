//! `atelier topics`: apply `topics/*.toml` to Kafka (create missing topics,
//! report or fix drift), or list the specs.

use clap::Subcommand;

use crate::bus::topics;
use crate::config::Config;

#[derive(Debug, Subcommand)]
pub(super) enum TopicsCmd {
    /// Create missing topics and report drift (idempotent).
    Apply {
        /// Also repair drift (add partitions, set configs).
        #[arg(long)]
        fix: bool,
    },
    /// Print the topic specs.
    List,
}

pub(super) async fn run(cfg: Config, cmd: TopicsCmd) -> anyhow::Result<()> {
    match cmd {
        TopicsCmd::List => {
            for s in topics::specs()? {
                println!(
                    "{}{}  partitions={} replication={} key={:?} events={:?}",
                    cfg.kafka.namespace, s.name, s.partitions, s.replication, s.key, s.events
                );
            }
            Ok(())
        }
        TopicsCmd::Apply { fix } => {
            anyhow::ensure!(
                !cfg.kafka.is_embedded(),
                "no brokers configured (ATELIER_KAFKA__BROKERS); the embedded cluster creates its topics at start"
            );
            let changes = topics::apply(&cfg.kafka, &cfg.kafka.brokers, fix).await?;
            let (mut drift, mut refused) = (false, false);
            for c in &changes {
                println!("{c}");
                drift |= matches!(c, topics::TopicChange::Drift { fixed: false, .. });
                refused |= matches!(c, topics::TopicChange::GrowthRefused { .. });
            }
            anyhow::ensure!(
                !refused,
                "a key-ordered topic has fewer partitions than its spec, and adding them would \
                 lose events: see above"
            );
            anyhow::ensure!(
                !drift,
                "topics drifted from their specs (run with --fix to repair what can be)"
            );
            Ok(())
        }
    }
}
