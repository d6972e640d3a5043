//! Rebuilds of a view into a new generation: planning and starting one,
//! every view's progress, and garbage collection of retired generations.

use crate::bus::{BusError, Heads, behind};
use crate::project::views;
use crate::view::{Checkpoint, Generation, Generations, Phase, View, ViewError};

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
    /// A rebuild from a time would lack what the log holds before it: a
    /// view is the fold of its whole log, so it would be wrong, not old.
    #[error(
        "a rebuild of {view} from that time would lack the {records} records the log still \
         holds before it (a view folds its whole log, so swapping it in would lose them); \
         rebuild from `earliest` (the default), or replay the inference stage, which may \
         start anywhere"
    )]
    Partial {
        /// The view.
        view: &'static str,
        /// Records before the time.
        records: u64,
    },
    /// The view store failed.
    #[error(transparent)]
    View(#[from] ViewError),
    /// The log failed.
    #[error(transparent)]
    Bus(#[from] BusError),
}

/// A rebuild that started (or would start).
#[derive(Clone, Debug, serde::Serialize, schemars::JsonSchema)]
pub struct Planned {
    /// The view (or `infer`, the inference stage).
    pub view: String,
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
    let g = gens.refresh().await?.get(r.view.as_str());
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
        if r.from_ms.is_some() {
            // Refused unless the time is at or before what retention kept.
            let lacking: u64 = heads
                .starts(&topic)
                .await?
                .iter()
                .zip(&from)
                .map(|((_, low), (_, start))| (start - low).max(0) as u64)
                .sum();
            if lacking > 0 {
                return Err(RebuildError::Partial {
                    view: r.view.as_str(),
                    records: lacking,
                });
            }
        }
        for ((_, head), (_, start)) in hs.iter().zip(&from) {
            records += (head - start).max(0) as u64;
        }
        starts.push((topic, from));
    }
    let plan = Planned {
        view: r.view.as_str().to_owned(),
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
#[derive(Clone, Debug, serde::Serialize, schemars::JsonSchema)]
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
#[derive(Clone, Debug, serde::Serialize, schemars::JsonSchema)]
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
    for v in views::ALL.iter().map(|r| r.view) {
        let g = rows.get(v.as_str());
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
                let a = Checkpoint::applied_at(&active, &topic, p);
                lag += behind(head, a);
                let b = building
                    .as_deref()
                    .map(|cps| Checkpoint::applied_at(cps, &topic, p));
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
    let rows = gens.refresh().await?;
    // Only views hold data (the inference stage's generations are consumer
    // groups).
    let retired: Vec<(View, &Generation)> = rows
        .stored()
        .filter(|g| !g.retired.is_empty())
        .filter_map(|g| Some((views::find(&g.view)?, g)))
        .collect();
    for (v, g) in retired {
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
