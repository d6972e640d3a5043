//! `atelier bench start` fills a fresh embedded data directory with a poll
//! workload through the durable embedded log (every send answered once
//! journaled, as the edge's are), stops, and starts `atelier up`'s API and
//! projectors on it twice: first without a view snapshot (the views are
//! rebuilt from the journal; the clean stop writes the snapshot), then from
//! that snapshot. Each start times the journal read back into the
//! in-process cluster, the first answered request, the first read that
//! finds a poll of the workload, and the views caught up with the log.

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use futures::StreamExt;

use crate::app::{App, Roles};
use crate::bus::{EmbeddedCluster, Producer, topics};
use crate::config::Config;
use crate::event::EventData;

#[derive(Debug, Args)]
pub(crate) struct StartArgs {
    /// Votes in the log before the restart.
    #[arg(long, default_value_t = 1_000_000)]
    events: usize,
    /// Polls they go to.
    #[arg(long, default_value_t = 1_000)]
    polls: usize,
    /// Distinct voters.
    #[arg(long, default_value_t = 100_000)]
    voters: usize,
    /// The journal's fsync policy (`always`, or an interval such as
    /// `100ms`).
    #[arg(long, default_value = "always")]
    fsync: String,
    /// The data directory to fill (default: a fresh one under the system's
    /// temporary directory, removed at the end).
    #[arg(long)]
    data_dir: Option<std::path::PathBuf>,
}

pub(super) async fn run(mut cfg: Config, a: StartArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        cfg.kafka.is_embedded(),
        "bench start measures the embedded log: run it without kafka.brokers"
    );
    let scratch = a.data_dir.is_none();
    cfg.data_dir = a.data_dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!(
            "atelier-bench-start-{}",
            uuid::Uuid::new_v4().simple()
        ))
    });
    anyhow::ensure!(
        !cfg.data_dir.join("log").exists(),
        "{} already holds a log: give bench start an empty directory",
        cfg.data_dir.display()
    );
    cfg.kafka.journal.enabled = true;
    cfg.kafka.journal.fsync = a.fsync.clone();
    let opts =
        crate::bus::journal::JournalOptions::of(&cfg.kafka.journal).map_err(anyhow::Error::msg)?;
    eprintln!(
        "bench start: {} votes over {} polls into {} (fsync {})",
        a.events,
        a.polls,
        cfg.data_dir.display(),
        a.fsync
    );

    // Fill: every send is answered once journaled.
    let events = super::project::workload(a.events, a.polls, a.voters, 0.0, 42);
    let first_poll = match &events[0].data {
        EventData::PollCreated(p) => p.poll_id,
        _ => anyhow::bail!("the workload starts with its polls"),
    };
    // What the views answer for it once they applied the whole log.
    let voters: std::collections::HashSet<&str> = events
        .iter()
        .filter_map(|e| match &e.data {
            EventData::VoteCast(v) if v.poll_id == first_poll => Some(e.principal.id.as_str()),
            _ => None,
        })
        .collect();
    let want_voters = voters.len() as u64;
    drop(voters);
    {
        let _dir = crate::app::DataDir::claim(&cfg.data_dir)?;
        let mut cluster = EmbeddedCluster::start(1)?;
        topics::ensure_embedded(&cluster, &cfg.kafka)?;
        cluster.make_durable(&cfg.kafka, &cfg.data_dir.join("log"), opts)?;
        let producer = Producer::new(&cfg.kafka, cluster.bootstrap_servers(), "atelier/bench")?;
        let t = Instant::now();
        let (creates, votes) = events.split_at(a.polls);
        for part in [creates, votes] {
            let mut sends = futures::stream::iter(part.iter())
                .map(|e| producer.send(e))
                .buffer_unordered(10_000);
            while let Some(r) = sends.next().await {
                r?;
            }
        }
        let s = t.elapsed().as_secs_f64();
        eprintln!(
            "journaled {} events in {s:.1} s ({:.0}/s, each send answered once on disk)",
            events.len(),
            events.len() as f64 / s
        );
        drop(producer);
        let t = Instant::now();
        drop(cluster);
        eprintln!("closed in {:.2} s", t.elapsed().as_secs_f64());
    }
    let total = events.len();
    drop(events);
    let log_bytes: u64 = std::fs::read_dir(cfg.data_dir.join("log"))?
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();
    eprintln!(
        "the journal: {:.1} MiB ({:.0} bytes per event)",
        log_bytes as f64 / 1048576.0,
        log_bytes as f64 / total as f64
    );

    // Start again: API and projectors, as `atelier up` without inference.
    // The first start has no view snapshot: the projectors rebuild the
    // views from the journal. Its clean stop writes the snapshot the second
    // start reads.
    cfg.http.listen = "127.0.0.1:0".parse().expect("an address");
    cfg.infer.models_dir = String::new();
    let probe = Probe {
        first_poll,
        want_voters,
        total,
    };
    let rebuilt = probe
        .run(
            &cfg,
            "without a view snapshot (views rebuilt from the journal)",
        )
        .await;
    let snapshot = match &rebuilt {
        Ok(_) => Some(
            probe
                .run(&cfg, "from the view snapshot the clean stop wrote")
                .await,
        ),
        Err(_) => None,
    };
    if scratch {
        let _ = std::fs::remove_dir_all(&cfg.data_dir);
    }
    let rebuilt = rebuilt?;
    let from_snapshot = snapshot.expect("run after a rebuild")?;
    println!(
        "views complete: {:.2} s rebuilding from the journal ({:.0} events/s), {:.2} s from \
         the snapshot",
        rebuilt.as_secs_f64(),
        total as f64 / rebuilt.as_secs_f64(),
        from_snapshot.as_secs_f64()
    );
    Ok(())
}

/// One start on a filled directory, probed until the views applied the
/// whole log.
struct Probe {
    first_poll: crate::event::PollId,
    want_voters: u64,
    total: usize,
}

impl Probe {
    /// Starts, probes, prints, stops cleanly; answers how long the views
    /// took to apply the whole log.
    async fn run(&self, cfg: &Config, what: &str) -> anyhow::Result<Duration> {
        let Probe {
            first_poll,
            want_voters,
            total,
        } = self;
        let rss0 = super::rss_mib();
        let t0 = Instant::now();
        let app = App::start(
            cfg.clone(),
            Roles {
                api: true,
                projector: true,
                infer: false,
            },
        )
        .await
        .context("starting on the filled directory")?;
        let started = t0.elapsed();
        let dropped = app.dropped_at_start();
        let url = app.url();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?;
        let mut first_answer = None;
        let mut first_poll_read = None;
        let mut ready = None;
        let mut caught_up = None;
        let mut gave_up = None;
        let limit = Duration::from_secs(600);
        while caught_up.is_none() {
            if first_answer.is_none()
                && http
                    .get(format!("{url}/healthz"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
            {
                first_answer = Some(t0.elapsed());
            }
            if let Ok(r) = http
                .get(format!("{url}/v1/polls/{first_poll}"))
                .send()
                .await
                && r.status().is_success()
            {
                first_poll_read.get_or_insert(t0.elapsed());
                let v: serde_json::Value = r.json().await.unwrap_or_default();
                if v["voters"].as_u64() == Some(*want_voters) {
                    caught_up = Some(t0.elapsed());
                }
            }
            if caught_up.is_none() && t0.elapsed() > limit {
                gave_up = Some(format!(
                    "after {limit:?} the views have not applied the whole log"
                ));
                break;
            }
            if ready.is_none()
                && http
                    .get(format!("{url}/readyz"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
            {
                ready = Some(t0.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let s = |d: Option<Duration>| {
            d.map_or("never".to_owned(), |d| format!("{:.2} s", d.as_secs_f64()))
        };
        let rss = super::rss_mib();
        let t = Instant::now();
        app.stop().await?;
        let stopped = t.elapsed();
        println!(
            "start {what}, {total} events in the embedded log (fsync {}):\n  \
             App::start returned            {:.2} s\n  \
             first answered request         {}\n  \
             first read of a workload poll  {}\n  \
             /readyz first ready            {}\n  \
             that poll shows every voter    {} (the views applied the whole log)\n  \
             resident memory                {rss0:.0} MiB before, {rss:.0} MiB once caught up\n  \
             read from the journal only     {dropped} of the records (the in-process cluster \
             holds the last 5 MiB of each partition)\n  \
             clean stop (writes the views' snapshot) {:.2} s",
            cfg.kafka.journal.fsync,
            started.as_secs_f64(),
            s(first_answer),
            s(first_poll_read),
            s(ready),
            s(caught_up),
            stopped.as_secs_f64(),
        );
        match (gave_up, caught_up) {
            (Some(why), _) => anyhow::bail!(why),
            (None, Some(d)) => Ok(d),
            (None, None) => anyhow::bail!("the views never applied the whole log"),
        }
    }
}
