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

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{CardProjector, FeedProjector, Live, PollProjector, Watermarks};
use crate::bus::consumer::{self, ConsumerSpec};
use crate::bus::{BusError, Heads, PartitionHandler, Producer, client_config};
use crate::config::Config;
use crate::fold::poll::FoldConfig;
use crate::view::{Checkpoint, Generation, Generations, Phase, View, ViewError};

/// How often the control rows are read.
const TICK: Duration = Duration::from_millis(250);
/// How long a swap waits after the freeze before comparing offsets, so that
/// every process has seen `swapping` and stopped its old projectors.
const FREEZE_GRACE: Duration = Duration::from_secs(1);

/// A running projector of one view.
#[derive(Clone, Debug)]
pub enum Projector {
    /// Polls.
    Polls(Arc<PollProjector>),
    /// Feed.
    Feed(Arc<FeedProjector>),
    /// Cards.
    Cards(Arc<CardProjector>),
}

impl Projector {
    fn live(&self) -> &Live {
        match self {
            Projector::Polls(p) => p.live(),
            Projector::Feed(p) => p.live(),
            Projector::Cards(p) => p.live(),
        }
    }

    fn handler(&self) -> Arc<dyn PartitionHandler> {
        match self {
            Projector::Polls(p) => p.clone(),
            Projector::Feed(p) => p.clone(),
            Projector::Cards(p) => p.clone(),
        }
    }

    /// Waits until the projector joined its group (or `timeout`).
    pub async fn wait_assigned(&self, timeout: Duration) -> bool {
        match self {
            Projector::Polls(p) => p.wait_assigned(timeout).await,
            Projector::Feed(p) => p.wait_assigned(timeout).await,
            Projector::Cards(p) => p.wait_assigned(timeout).await,
        }
    }
}

struct Running {
    projector: Projector,
    token: CancellationToken,
    task: JoinHandle<Result<(), BusError>>,
}

/// The consumer group of one generation of a view (generation 0 keeps the
/// name it always had).
pub fn group_of(view: View, generation: u32) -> String {
    match generation {
        0 => format!("project.{}", view.as_str()),
        n => format!("project.{}.g{n}", view.as_str()),
    }
}

/// Runs the projectors of every view.
pub struct Supervisor {
    gens: Arc<Generations>,
    cfg: Config,
    brokers: String,
    embedded: bool,
    dlq: Producer,
    watermarks: Arc<Watermarks>,
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
        embedded: bool,
        watermarks: Arc<Watermarks>,
        heads: Heads,
    ) -> Result<Self, BusError> {
        Ok(Self {
            gens,
            cfg: cfg.clone(),
            brokers: brokers.to_owned(),
            embedded,
            dlq: Producer::new(&cfg.kafka, brokers, "atelier/projector")?,
            watermarks,
            heads,
            running: HashMap::new(),
            swapping_seen: HashMap::new(),
        })
    }

    /// Starts the active generations' projectors and returns them (by view),
    /// once the control rows were read.
    pub async fn start(&mut self, shutdown: &CancellationToken) -> anyhow::Result<Vec<Projector>> {
        let rows = self.gens.refresh().await?;
        self.reconcile(&rows, shutdown).await?;
        let mut out = Vec::new();
        for v in View::ALL {
            if let Some(r) = self.running.get(&(v, rows[&v].active)) {
                out.push(r.projector.clone());
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
                _ = shutdown.cancelled() => break Ok(()),
                _ = tick.tick() => {}
            }
            if let Some(e) = self.reap().await {
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
        for (_, r) in self.running.drain() {
            r.token.cancel();
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

    async fn reconcile(
        &mut self,
        rows: &BTreeMap<View, Generation>,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        for v in View::ALL {
            let g = &rows[&v];
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
                    self.watermarks.publish(&cp.topic, cp.partition, cp.offset);
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
                left += behind(head, applied_at(&cps, &topic, p));
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
        if v == View::Infer {
            anyhow::bail!("the inference stage has no projector");
        }
        let store = self.gens.store(v, n).await?;
        let cfg = &self.cfg;
        let projector = match v {
            View::Infer => unreachable!("refused above"),
            View::Polls => Projector::Polls(Arc::new(PollProjector::new(
                store,
                self.dlq.clone(),
                cfg.projector.clone(),
                FoldConfig {
                    voter_key: cfg.auth.voter_key.expose().as_bytes().to_vec(),
                },
                self.watermarks.clone(),
            ))),
            View::Feed => Projector::Feed(Arc::new(FeedProjector::new(
                store,
                self.dlq.clone(),
                cfg.projector.clone(),
                self.watermarks.clone(),
            ))),
            View::Cards => Projector::Cards(Arc::new(CardProjector::new(
                store,
                self.dlq.clone(),
                self.watermarks.clone(),
            ))),
        };
        projector.live().set(live);
        let mut base = client_config(&cfg.kafka, &self.brokers);
        if base.get("session.timeout.ms").is_none() {
            base.set("session.timeout.ms", "6000");
        }
        // The mock cluster answers a fetch only when its wait runs out (a
        // broker answers as soon as data arrives): with the default 500 ms,
        // freshness was p50 279 ms; with 10 ms, 17 ms.
        if self.embedded && base.get("fetch.wait.max.ms").is_none() {
            base.set("fetch.wait.max.ms", "10");
        }
        let spec = ConsumerSpec {
            group: cfg.kafka.group(&group_of(v, n)),
            topics: v.topics().iter().map(|t| cfg.kafka.topic(*t)).collect(),
            max_batch: cfg.projector.max_batch,
            linger: Duration::from_millis(cfg.projector.linger_ms),
            queue_depth: 2,
            drain_timeout: Duration::from_secs(10),
        };
        let token = shutdown.child_token();
        let handler = projector.handler();
        let t = token.clone();
        let task = tokio::spawn(async move { consumer::run(base, spec, handler, t).await });
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

/// The last offset these checkpoints have applied in a partition (-1:
/// none).
fn applied_at(cps: &[Checkpoint], topic: &str, partition: i32) -> i64 {
    cps.iter()
        .find(|c| c.topic == topic && c.partition == partition)
        .map_or(-1, |c| c.offset)
}

/// Records a partition holds after `applied`, up to its `head` (the next
/// offset; transaction markers count, so this reads at most a few high).
pub fn behind(head: i64, applied: i64) -> u64 {
    (head - 1 - applied).max(0) as u64
}

/// What `atelier replay` asks for.
#[derive(Clone, Debug)]
pub struct Rebuild {
    /// The view.
    pub view: View,
    /// Start at the first record at or after this time (ms); `None`: the
    /// log's start.
    pub from_ms: Option<i64>,
    /// Only say what would happen.
    pub dry_run: bool,
}

/// Why a rebuild cannot start.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    /// One is under way.
    #[error("a rebuild of {0} is under way (generation {1}); see `atelier replay status`")]
    InProgress(&'static str, u32),
    /// The view store failed.
    #[error(transparent)]
    View(#[from] ViewError),
    /// The log failed.
    #[error(transparent)]
    Bus(#[from] BusError),
}

/// A rebuild that started (or would start).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Planned {
    /// The view.
    pub view: View,
    /// The generation serving reads.
    pub active: u32,
    /// The generation being built.
    pub building: u32,
    /// Records to replay.
    pub records: u64,
    /// Only planned.
    pub dry_run: bool,
}

/// Starts a rebuild: creates the generation's store, sets its starting
/// checkpoints when `from_ms` is given, and records it as `building` (the
/// supervisors take it from there).
pub async fn start_rebuild(
    gens: &Generations,
    heads: &Heads,
    kafka: &crate::config::KafkaConfig,
    r: &Rebuild,
) -> Result<Planned, RebuildError> {
    let rows = gens.refresh().await?;
    let g = rows[&r.view].clone();
    if let Some(b) = g.building {
        return Err(RebuildError::InProgress(r.view.as_str(), b));
    }
    let n = g.highest().max(g.last) + 1;
    let mut starts: Vec<(String, Vec<(i32, i64)>)> = Vec::new();
    let mut records = 0u64;
    for t in r.view.topics() {
        let topic = kafka.topic(*t);
        let hs = heads.of(&topic).await?;
        let from = match r.from_ms {
            Some(ms) => heads.at_time(&topic, ms).await?,
            None => hs.iter().map(|(p, _)| (*p, 0)).collect(),
        };
        for ((_, head), (_, start)) in hs.iter().zip(&from) {
            records += (head - start).max(0) as u64;
        }
        starts.push((topic, from));
    }
    let plan = Planned {
        view: r.view,
        active: g.active,
        building: n,
        records,
        dry_run: r.dry_run,
    };
    if r.dry_run {
        return Ok(plan);
    }
    let store = gens.store(r.view, n).await?;
    for (topic, from) in starts {
        for (partition, start) in from {
            if start > 0 {
                store
                    .save_checkpoint(&Checkpoint {
                        view: r.view.as_str().to_owned(),
                        topic: topic.clone(),
                        partition,
                        offset: start - 1,
                        rejected: Default::default(),
                    })
                    .await?;
            }
        }
    }
    let mut next = g.clone();
    next.building = Some(n);
    next.last = n;
    next.phase = Phase::Building;
    next.from_ms = r.from_ms;
    next.started_ms = Some(chrono::Utc::now().timestamp_millis());
    next.rev += 1;
    if !gens.base().set_generation(&next, g.rev).await? {
        return Err(RebuildError::InProgress(r.view.as_str(), n));
    }
    gens.remember(&next);
    Ok(plan)
}

/// One partition of a view's progress.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PartitionProgress {
    /// Full topic name.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// The log's head (next offset).
    pub head: i64,
    /// Last offset applied by the active generation (-1: none).
    pub active: i64,
    /// Last offset applied by the generation being built.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub building: Option<i64>,
}

/// A view's generations and progress.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ViewStatus {
    /// The control row.
    #[serde(flatten)]
    pub generation: Generation,
    /// Per partition.
    pub partitions: Vec<PartitionProgress>,
    /// Records the active generation has not applied.
    pub lag: u64,
    /// Records the generation being built has applied, and has left.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub building_applied: Option<u64>,
    /// Records the generation being built has yet to apply.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub building_remaining: Option<u64>,
}

/// Where every view stands.
pub async fn status(
    gens: &Generations,
    heads: &Heads,
    kafka: &crate::config::KafkaConfig,
) -> Result<Vec<ViewStatus>, RebuildError> {
    let rows = gens.refresh().await?;
    let mut out = Vec::new();
    for v in View::ALL {
        let g = rows[&v].clone();
        let active = gens
            .store(v, g.active)
            .await?
            .checkpoints(v.as_str())
            .await?;
        let building = match g.building {
            Some(b) => Some(gens.store(v, b).await?.checkpoints(v.as_str()).await?),
            None => None,
        };
        let mut partitions = Vec::new();
        let (mut lag, mut applied, mut remaining) = (0u64, 0u64, 0u64);
        for t in v.topics() {
            let topic = kafka.topic(*t);
            for (p, head) in heads.of(&topic).await? {
                let a = applied_at(&active, &topic, p);
                lag += behind(head, a);
                let b = building.as_deref().map(|cps| applied_at(cps, &topic, p));
                if let Some(b) = b {
                    applied += (b + 1).max(0) as u64;
                    remaining += behind(head, b);
                }
                partitions.push(PartitionProgress {
                    topic: topic.clone(),
                    partition: p,
                    head,
                    active: a,
                    building: b,
                });
            }
        }
        out.push(ViewStatus {
            building_applied: g.building.map(|_| applied),
            building_remaining: g.building.map(|_| remaining),
            generation: g,
            partitions,
            lag,
        });
    }
    Ok(out)
}

/// Drops the data of every retired generation; returns `(view, generation)`
/// of what was dropped.
pub async fn gc(gens: &Generations) -> Result<Vec<(View, u32)>, ViewError> {
    let mut dropped = Vec::new();
    for (v, g) in gens.refresh().await? {
        // The inference stage's generations are consumer groups: no data.
        if g.retired.is_empty() || v == View::Infer {
            continue;
        }
        for &r in &g.retired {
            if r != g.active && Some(r) != g.building {
                gens.drop_generation(v, r).await?;
                dropped.push((v, r));
            }
        }
        let mut next = g.clone();
        next.retired.retain(|r| !dropped.contains(&(v, *r)));
        next.rev += 1;
        if gens.base().set_generation(&next, g.rev).await? {
            gens.remember(&next);
        }
    }
    Ok(dropped)
}

/// The consumer group of one generation of the inference stage.
pub fn infer_group(generation: u32) -> String {
    match generation {
        0 => crate::infer::worker::GROUP.to_owned(),
        n => format!("{}.g{n}", crate::infer::worker::GROUP),
    }
}

/// `replay --stage infer`: moves the inference workers to a new consumer
/// group that starts at the log's start (or at `from_ms`), so every upload
/// is stylized again with the models published now. Workers notice within a
/// second, drain, and restart in the new group; the old group's offsets are
/// left as they were.
pub async fn rewind_infer(
    gens: &Generations,
    heads: &Heads,
    kafka: &crate::config::KafkaConfig,
    brokers: &str,
    from_ms: Option<i64>,
    dry_run: bool,
) -> Result<Planned, RebuildError> {
    let rows = gens.refresh().await?;
    let g = rows[&View::Infer].clone();
    let n = g.highest().max(g.last) + 1;
    let topic = kafka.topic(crate::event::Topic::Uploads);
    let hs = heads.of(&topic).await?;
    let starts = match from_ms {
        Some(ms) => heads.at_time(&topic, ms).await?,
        None => hs.iter().map(|(p, _)| (*p, 0)).collect(),
    };
    let records = hs
        .iter()
        .zip(&starts)
        .map(|((_, h), (_, s))| (h - s).max(0) as u64)
        .sum();
    let plan = Planned {
        view: View::Infer,
        active: g.active,
        building: n,
        records,
        dry_run,
    };
    if dry_run {
        return Ok(plan);
    }
    if from_ms.is_some() {
        // The new group has no members yet: its starting offsets can be
        // committed from here.
        use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
        let mut c = client_config(kafka, brokers);
        c.set("group.id", kafka.group(&infer_group(n)))
            .set("enable.auto.commit", "false");
        let consumer: BaseConsumer = c.create().map_err(BusError::from)?;
        let mut tpl = rdkafka::TopicPartitionList::new();
        for (p, off) in &starts {
            tpl.add_partition_offset(&topic, *p, rdkafka::Offset::Offset(*off))
                .map_err(BusError::from)?;
        }
        tokio::task::spawn_blocking(move || consumer.commit(&tpl, CommitMode::Sync))
            .await
            .map_err(|e| BusError::Handler(e.to_string()))?
            .map_err(BusError::from)?;
    }
    let mut next = g.clone();
    next.retired.push(g.active);
    next.active = n;
    next.last = n;
    next.from_ms = from_ms;
    next.started_ms = Some(chrono::Utc::now().timestamp_millis());
    next.swapped_ms = next.started_ms;
    next.rev += 1;
    if !gens.base().set_generation(&next, g.rev).await? {
        return Err(RebuildError::InProgress("infer", n));
    }
    gens.remember(&next);
    Ok(plan)
}
