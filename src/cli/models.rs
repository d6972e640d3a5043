//! `atelier models`: publish a TorchScript style model (checked, stored,
//! announced), list the published ones.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Subcommand;
use tokio_util::sync::CancellationToken;

use crate::bus::Producer;
use crate::config::Config;
use crate::event::{ModelVersion, Style};
use crate::infer::{model, publish, registry};

#[derive(Debug, Subcommand)]
pub(super) enum ModelsCmd {
    /// Check a TorchScript file against the model contract (by running it
    /// once on small inputs), store it at models/{style}/{version}/model.pt
    /// and announce it; workers swap it in without dropping work.
    Publish {
        /// The style it implements.
        #[arg(long)]
        style: String,
        /// Version (default: the first 12 hex digits of its SHA-256).
        #[arg(long)]
        version: Option<String>,
        /// The TorchScript file.
        file: PathBuf,
    },
    /// The published model of every style.
    List,
}

pub(super) async fn run(cfg: Config, cmd: ModelsCmd) -> anyhow::Result<()> {
    if cfg.kafka.is_embedded() {
        bail!(
            "models need a shared log: set kafka.brokers (with `atelier up` on the embedded \
             defaults, put {{style}}.pt files in infer.models_dir instead)"
        );
    }
    let brokers = cfg.kafka.brokers.clone();
    match cmd {
        ModelsCmd::Publish {
            style,
            version,
            file,
        } => {
            let style = Style::parse(&style).map_err(|e| anyhow::anyhow!(e.reason))?;
            let version = version
                .map(|v| ModelVersion::parse(&v))
                .transpose()
                .map_err(|e| anyhow::anyhow!(e.reason))?;
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let engine = model::engine(&cfg.infer)?;
            let blobs = crate::blob::open(&cfg.blobs, &cfg.data_dir).await?;
            let producer = Producer::new(&cfg.kafka, &brokers, "atelier/models")?;
            let (p, at) = publish::publish(
                &engine,
                blobs.as_ref(),
                &producer,
                style,
                version,
                bytes.into(),
            )
            .await?;
            producer.flush(Duration::from_secs(10))?;
            println!(
                "published {} version {} ({}, sha256 {}) at {}/{}@{}",
                p.style, p.version, p.object_key, p.sha256, at.topic, at.partition, at.offset
            );
            Ok(())
        }
        ModelsCmd::List => {
            let catalog = registry::Catalog::new();
            let mut ready = catalog.ready();
            let stop = CancellationToken::new();
            let follower = {
                let (kafka, catalog, stop) = (cfg.kafka.clone(), catalog.clone(), stop.clone());
                tokio::spawn(async move {
                    registry::follow(&kafka, &brokers, catalog, None, stop).await
                })
            };
            tokio::time::timeout(Duration::from_secs(30), ready.wait_for(|r| *r))
                .await
                .context("reading the models topic")??;
            stop.cancel();
            follower.await??;
            for p in catalog.all() {
                println!("{}\t{}\t{}\t{}", p.style, p.version, p.object_key, p.sha256);
            }
            Ok(())
        }
    }
}
