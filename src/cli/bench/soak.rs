//! `atelier bench soak` runs `atelier up`'s projectors on a fresh embedded
//! data directory and sends a long stream of polls and votes through its
//! durable log (each send answered once journaled, as the edge's are):
//! new polls keep coming and votes go to the recent ones, so the views
//! grow with history while their working set does not. Every 100,000
//! events it prints resident memory against events accepted, and the
//! views' resident bytes against their budget (`--memory-mb`, 0 for
//! none); at the end, once the views applied everything, the peak.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use futures::StreamExt;
use rand::{Rng, SeedableRng, rngs::SmallRng};

use crate::app::{App, Roles};
use crate::config::Config;
use crate::event::{Event, EventData, EventId, PollId, Principal, UserId, VoteCast};

#[derive(Debug, Args)]
pub(crate) struct SoakArgs {
    /// Events to send (polls and votes).
    #[arg(long, default_value_t = 1_000_000)]
    events: usize,
    /// The views' memory budget, MiB (`views.memory_mb`; 0: none).
    #[arg(long, default_value_t = 64)]
    memory_mb: u64,
    /// One event in this many creates a poll.
    #[arg(long, default_value_t = 50)]
    poll_every: usize,
    /// Votes go to the most recent this many polls.
    #[arg(long, default_value_t = 500)]
    recent: usize,
    /// Distinct voters.
    #[arg(long, default_value_t = 100_000)]
    voters: usize,
    /// The journal's fsync policy.
    #[arg(long, default_value = "always")]
    fsync: String,
}

fn mib(b: u64) -> f64 {
    b as f64 / 1048576.0
}

/// The stream: a poll every `poll_every` events, votes to recent polls.
struct Stream {
    rng: SmallRng,
    owner: Principal,
    polls: Vec<PollId>,
    a: (usize, usize, usize),
}

impl Stream {
    fn next(&mut self, i: usize) -> Event {
        let (poll_every, recent, voters) = self.a;
        let id = EventId(uuid::Uuid::from_u128(self.rng.r#gen()));
        let time = crate::edge::now();
        if self.polls.is_empty() || i.is_multiple_of(poll_every) {
            let poll_id = PollId(uuid::Uuid::from_u128(self.rng.r#gen()));
            self.polls.push(poll_id);
            return Event {
                id,
                time,
                principal: self.owner.clone(),
                data: super::project::colour_poll(poll_id, format!("Poll {i}: which colour?")),
            };
        }
        let back = self.rng.gen_range(0..recent.min(self.polls.len()));
        let poll_id = self.polls[self.polls.len() - 1 - back];
        let v = self.rng.gen_range(0..voters.max(1));
        Event {
            id,
            time,
            principal: Principal {
                id: UserId::parse(&format!("voter-{v}")).expect("valid"),
                name: format!("Voter {v}"),
                avatar_url: None,
            },
            data: EventData::VoteCast(VoteCast {
                poll_id,
                question_ids: vec![self.rng.gen_range(0..4)],
            }),
        }
    }
}

pub(super) async fn run(mut cfg: Config, a: SoakArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        cfg.kafka.is_embedded(),
        "bench soak measures the embedded default: run it without kafka.brokers"
    );
    anyhow::ensure!(
        a.poll_every > 0 && a.recent > 0,
        "--poll-every and --recent are at least 1"
    );
    cfg.data_dir = std::env::temp_dir().join(format!(
        "atelier-bench-soak-{}",
        uuid::Uuid::new_v4().simple()
    ));
    cfg.kafka.journal.enabled = true;
    cfg.kafka.journal.fsync = a.fsync.clone();
    cfg.views.memory_mb = a.memory_mb;
    cfg.http.listen = "127.0.0.1:0".parse().expect("an address");
    cfg.infer.models_dir = String::new();
    let result = soak(&cfg, &a).await;
    let _ = std::fs::remove_dir_all(&cfg.data_dir);
    result
}

async fn soak(cfg: &Config, a: &SoakArgs) -> anyhow::Result<()> {
    let app = App::start(
        cfg.clone(),
        Roles {
            api: false,
            projector: true,
            infer: false,
        },
    )
    .await
    .context("starting on a fresh data directory")?;
    let base = super::rss_mib();
    let spill = app
        .views
        .base()
        .as_embedded()
        .and_then(|e| e.spill().cloned());
    println!(
        "bench soak: {} events (a poll every {}, votes to the last {} polls, {} voters), \
         views' budget {}, fsync {}\n  resident memory at start: {base:.0} MiB",
        a.events,
        a.poll_every,
        a.recent,
        a.voters,
        match a.memory_mb {
            0 => "none (all in memory)".to_owned(),
            mb => format!("{mb} MiB"),
        },
        a.fsync
    );
    println!(
        "  {:>9}  {:>8}  {:>9}  {:>13}  {:>8}",
        "accepted", "seconds", "RSS MiB", "views MiB", "spilled"
    );
    let report = |n: usize, t: Duration| {
        let (views, spilled) = spill
            .as_ref()
            .map(|s| s.stats())
            .map_or(("-".to_owned(), "-".to_owned()), |s| {
                (format!("{:.1}", mib(s.resident)), s.spilled.to_string())
            });
        println!(
            "  {n:>9}  {:>8.1}  {:>9.0}  {views:>13}  {spilled:>8}",
            t.as_secs_f64(),
            super::rss_mib()
        );
    };
    let mut stream = Stream {
        rng: SmallRng::seed_from_u64(42),
        owner: Principal {
            id: UserId::parse("soak-owner").expect("valid"),
            name: "Soak".into(),
            avatar_url: None,
        },
        polls: Vec::new(),
        a: (a.poll_every, a.recent, a.voters),
    };
    // The last poll's voters: the views applied everything once it shows
    // them all.
    let mut last_voters: HashSet<String> = HashSet::new();
    let t0 = Instant::now();
    let chunk = 100_000;
    let mut sent = 0;
    while sent < a.events {
        let n = chunk.min(a.events - sent);
        let mut events = Vec::with_capacity(n);
        for i in sent..sent + n {
            let e = stream.next(i);
            match &e.data {
                EventData::PollCreated(_) => last_voters.clear(),
                EventData::VoteCast(v) if Some(&v.poll_id) == stream.polls.last() => {
                    last_voters.insert(e.principal.id.as_str().to_owned());
                }
                _ => {}
            }
            events.push(e);
        }
        let mut sends = futures::stream::iter(events.iter())
            .map(|e| app.producer.send(e))
            .buffer_unordered(5_000);
        while let Some(r) = sends.next().await {
            r?;
        }
        drop(sends);
        sent += n;
        report(sent, t0.elapsed());
    }
    let accepted = t0.elapsed();
    let last = *stream.polls.last().expect("a poll");
    let want = last_voters.len() as u64;
    let limit = Duration::from_secs(900);
    loop {
        let got = app.views.polls().await?.poll(last).await?.map(|p| p.voters);
        if got == Some(want) {
            break;
        }
        anyhow::ensure!(
            t0.elapsed() < limit,
            "after {limit:?} the views have not applied the whole stream ({got:?} of {want} voters)"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let applied = t0.elapsed();
    report(sent, applied);
    let peak = super::peak_mib();
    println!(
        "  accepted in {:.1} s ({:.0} events/s); the views applied everything at {:.1} s\n  \
         peak resident memory {peak:.0} MiB: {} + {:.0} MiB",
        accepted.as_secs_f64(),
        a.events as f64 / accepted.as_secs_f64(),
        applied.as_secs_f64(),
        match a.memory_mb {
            0 => "no budget".to_owned(),
            mb => format!("the budget {mb} MiB"),
        },
        peak - a.memory_mb as f64
    );
    if let Some(s) = &spill {
        let st = s.stats();
        println!(
            "  views in memory {:.1} MiB (estimated); {} partitions spilled, {} read back; \
             spill file {:.1} MiB",
            mib(st.resident),
            st.spilled,
            st.loaded,
            mib(std::fs::metadata(s.path()).map_or(0, |m| m.len()))
        );
    }
    let t = Instant::now();
    app.stop().await?;
    let snap = std::fs::metadata(cfg.data_dir.join("views.snapshot")).map_or(0, |m| m.len());
    println!(
        "  clean stop {:.1} s; view snapshot {:.1} MiB",
        t.elapsed().as_secs_f64(),
        mib(snap)
    );
    super::quiet_when_healthy()
}
