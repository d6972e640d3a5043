//! The projector supervisor: runs one projector consumer per view and
//! generation this process should feed, and carries rebuilds through to an
//! atomic swap. Every projector process runs one; they agree through
//! compare-and-set on the control rows (see `view::generations`).
//!
//! A rebuild, per view:
//! 1. `building` — the new generation's projector (its own consumer group,
//!    so it starts at the log's start, or at the `--from` checkpoints) runs
//!    silent next to the active one, until its lag is within `swap_lag`;
//! 2. `swapping` — the active generation's projectors stop, so what readers
//!    see freezes; once the new generation has applied at least everything
//!    the old one had, in every partition, the row names it active. Reads
//!    therefore never go backwards across the swap;
//! 3. the new projector goes live (announces changes and watermarks); the
//!    old generation is `retired` until `atelier replay gc` drops it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::Watermarks;
use super::runtime::{Context, ViewProjector};
use super::views;
use crate::bus::consumer::{self, ConsumerSpec};
use crate::bus::{BusError, Heads, Producer, behind};
use crate::config::Config;
use crate::fold::poll::FoldConfig;
use crate::view::generations::Rows;
use crate::view::{Checkpoint, Generations, Phase, View, ViewError};

/// How often the control rows are read.
const TICK: Duration = Duration::from_millis(250);
/// How long a swap waits after the freeze before comparing offsets, so that
/// every process has seen `swapping` and stopped its old projectors.
const FREEZE_GRACE: Duration = Duration::from_secs(1);

struct Running {
    projector: Arc<dyn ViewProjector>,
    token: CancellationToken,
    task: JoinHandle<Result<(), BusError>>,
}

/// The consumer group of one generation of a view (generation 0 keeps the
/// name it always had).
pub fn group_of(view: &str, generation: u32) -> String {
    match generation {
        0 => format!("project.{view}"),
        n => format!("project.{view}.g{n}"),
    }
}

/// Runs the projectors of every view.
pub struct Supervisor {
    gens: Arc<Generations>,
    cfg: Config,
    brokers: String,
    ctx: Context,
    heads: Heads,
    running: HashMap<(View, u32), Running>,
    swapping_seen: HashMap<View, Instant>,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("running", &self.running.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Supervisor {
    /// A supervisor over `gens`, consuming from `brokers`.
    pub fn new(
        gens: Arc<Generations>,
        cfg: &Config,
        brokers: &str,
        watermarks: Arc<Watermarks>,
        heads: Heads,
    ) -> Result<Self, BusError> {
        Ok(Self {
            gens,
            cfg: cfg.clone(),
            brokers: brokers.to_owned(),
            ctx: Context {
                dlq: Producer::new(&cfg.kafka, brokers, "atelier/projector")?,
                watermarks,
                cfg: cfg.projector.clone(),
                fold: FoldConfig {
                    voter_key: cfg.auth.voter_key.expose().as_bytes().to_vec(),
                },
            },
            heads,
            running: HashMap::new(),
            swapping_seen: HashMap::new(),
        })
    }

    /// Starts the active generations' projectors and returns them, once
    /// the control rows were read.
    pub async fn start(
        &mut self,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Vec<Arc<dyn ViewProjector>>> {
        let rows = self.gens.refresh().await?;
        self.reconcile(&rows, shutdown).await?;
        let mut out = Vec::new();
        for r in views::ALL {
            let active = rows.get(r.view.as_str()).active;
            if let Some(run) = self.running.get(&(r.view, active)) {
                out.push(run.projector.clone());
            }
        }
        Ok(out)
    }

    /// Supervises until `shutdown`, or until a projector fails.
    pub async fn run(mut self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let result = loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break Ok(()),
                _ = tick.tick() => {}
            }
            if let Some(e) = self.reap().await {
                // A projector that ended because everything is stopping
                // (its token is a child of `shutdown`) did not fail.
                if shutdown.is_cancelled() {
                    break Ok(());
                }
                break Err(e);
            }
            let rows = match self.gens.refresh().await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "reading view generations");
                    continue;
                }
            };
            if let Err(e) = self.reconcile(&rows, &shutdown).await {
                tracing::warn!(error = %e, "supervising projectors");
            }
        };
        // Every projector is told first, then waited for: they drain at
        // once, not one after another.
        let running: Vec<_> = self.running.drain().map(|(_, r)| r).collect();
        for r in &running {
            r.token.cancel();
        }
        for r in running {
            let _ = tokio::time::timeout(Duration::from_secs(20), r.task).await;
        }
        result
    }

    /// A projector consumer that ended on its own is a failure.
    async fn reap(&mut self) -> Option<anyhow::Error> {
        let k = self
            .running
            .iter()
            .find(|(_, r)| r.task.is_finished())
            .map(|(k, _)| *k)?;
        let r = self.running.remove(&k).expect("found");
        let what = format!("{} projector (generation {})", k.0.as_str(), k.1);
        Some(match r.task.await {
            Ok(Ok(())) => anyhow::anyhow!("{what} stopped"),
            Ok(Err(e)) => anyhow::Error::new(e).context(what),
            Err(e) => anyhow::anyhow!("{what} panicked: {e}"),
        })
    }

    async fn reconcile(&mut self, rows: &Rows, shutdown: &CancellationToken) -> anyhow::Result<()> {
        for reg in views::ALL {
            let v = reg.view;
            let g = &rows.get(v.as_str());
            // What runs, and which of it serves reads.
            let want: Vec<(u32, bool)> = match (g.phase, g.building) {
                (Phase::Building, Some(b)) => vec![(g.active, true), (b, false)],
                (Phase::Swapping, Some(b)) => vec![(b, false)],
                _ => vec![(g.active, true)],
            };
            let stale: Vec<(View, u32)> = self
                .running
                .keys()
                .filter(|(view, n)| *view == v && !want.iter().any(|(w, _)| w == n))
                .copied()
                .collect();
            for k in stale {
                let r = self.running.remove(&k).expect("listed");
                r.projector.live().set(false);
                r.token.cancel();
                let _ = tokio::time::timeout(Duration::from_secs(20), r.task).await;
                tracing::info!(view = v.as_str(), generation = k.1, "projector stopped");
            }
            for (n, live) in want {
                if !self.running.contains_key(&(v, n)) {
                    self.spawn(v, n, live, shutdown).await?;
                }
            }
            match (g.phase, g.building) {
                (Phase::Building, Some(b)) => {
                    self.swapping_seen.remove(&v);
                    if self.remaining(v, b).await? <= self.cfg.projector.swap_lag {
                        let mut next = g.clone();
                        next.phase = Phase::Swapping;
                        next.rev += 1;
                        if self.gens.base().set_generation(&next, g.rev).await? {
                            tracing::info!(
                                view = v.as_str(),
                                generation = b,
                                "caught up; swapping"
                            );
                            self.gens.remember(&next);
                        }
                    }
                }
                (Phase::Swapping, Some(b)) => {
                    let seen = *self.swapping_seen.entry(v).or_insert_with(Instant::now);
                    if seen.elapsed() >= FREEZE_GRACE && self.covers(v, b, g.active).await? {
                        let mut next = g.clone();
                        next.retired.push(g.active);
                        next.active = b;
                        next.building = None;
                        next.phase = Phase::Idle;
                        next.swapped_ms = Some(chrono::Utc::now().timestamp_millis());
                        next.rev += 1;
                        if self.gens.base().set_generation(&next, g.rev).await? {
                            self.gens.remember(&next);
                            tracing::info!(view = v.as_str(), generation = b, "swapped in");
                        }
                    }
                }
                _ => {
                    self.swapping_seen.remove(&v);
                }
            }
            // The active generation announces; once swapped, publish what it
            // has applied so `?after` waits see it at once.
            if let Some(r) = self.running.get(&(v, g.active))
                && !r.projector.live().get()
            {
                r.projector.live().set(true);
                let store = self.gens.store(v, g.active).await?;
                for cp in store.checkpoints(v.as_str()).await? {
                    self.ctx
                        .watermarks
                        .publish(&cp.topic, cp.partition, cp.offset);
                }
            }
        }
        Ok(())
    }

    /// Records generation `n` of `v` has yet to apply, over all partitions.
    async fn remaining(&self, v: View, n: u32) -> Result<u64, ViewError> {
        let store = self.gens.store(v, n).await?;
        let cps = store.checkpoints(v.as_str()).await?;
        let mut left = 0u64;
        for t in v.topics() {
            let topic = self.cfg.kafka.topic(*t);
            let heads = self
                .heads
                .of(&topic)
                .await
                .map_err(|e| ViewError::Unavailable(e.to_string()))?;
            for (p, head) in heads {
                left += behind(head, Checkpoint::applied_at(&cps, &topic, p));
            }
        }
        Ok(left)
    }

    /// Whether generation `new` has applied, in every partition, at least
    /// what generation `old` had.
    async fn covers(&self, v: View, new: u32, old: u32) -> Result<bool, ViewError> {
        let old_cps = self
            .gens
            .store(v, old)
            .await?
            .checkpoints(v.as_str())
            .await?;
        let new_cps = self
            .gens
            .store(v, new)
            .await?
            .checkpoints(v.as_str())
            .await?;
        Ok(old_cps.iter().all(|o| {
            new_cps
                .iter()
                .any(|n| n.topic == o.topic && n.partition == o.partition && n.offset >= o.offset)
        }))
    }

    async fn spawn(
        &mut self,
        v: View,
        n: u32,
        live: bool,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        let reg = views::ALL
            .iter()
            .find(|r| r.view == v)
            .ok_or_else(|| anyhow::anyhow!("no view {v}"))?;
        let store = self.gens.store(v, n).await?;
        let cfg = &self.cfg;
        let projector = (reg.build)(store, &self.ctx);
        projector.live().set(live);
        let spec = ConsumerSpec {
            group: cfg.kafka.group(&group_of(v.as_str(), n)),
            topics: v.topics().iter().map(|t| cfg.kafka.topic(*t)).collect(),
            max_batch: cfg.projector.max_batch,
            linger: Duration::from_millis(cfg.projector.linger_ms),
            queue_depth: 2,
            drain_timeout: Duration::from_secs(10),
        };
        let token = shutdown.child_token();
        let handler: Arc<dyn crate::bus::PartitionHandler> = projector.clone();
        let t = token.clone();
        let (kafka, brokers) = (cfg.kafka.clone(), self.brokers.clone());
        let task =
            tokio::spawn(async move { consumer::run(kafka, brokers, spec, handler, t).await });
        tracing::info!(view = v.as_str(), generation = n, live, "projector started");
        self.running.insert(
            (v, n),
            Running {
                projector,
                token,
                task,
            },
        );
        Ok(())
    }
}
