//! `replay --stage infer`: the inference stage's generations are consumer
//! groups. A rewind moves the workers to a new group that starts at the
//! log's start (or at a time), so every upload is stylized again with the
//! models published now.

use crate::bus::{BusError, Heads};
use crate::ops::{Planned, RebuildError};
use crate::view::Generations;

/// The name of the inference stage's generation row.
pub const STAGE: &str = "infer";

/// The consumer group of one generation of the inference stage.
pub fn infer_group(generation: u32) -> String {
    match generation {
        0 => super::worker::GROUP.to_owned(),
        n => format!("{}.g{n}", super::worker::GROUP),
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
    let g = gens.refresh().await?.get(STAGE);
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
        view: STAGE.to_owned(),
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
        let mut tpl = rdkafka::TopicPartitionList::new();
        for (p, off) in &starts {
            tpl.add_partition_offset(&topic, *p, rdkafka::Offset::Offset(*off))
                .map_err(BusError::from)?;
        }
        let (kafka, brokers, group) = (
            kafka.clone(),
            brokers.to_owned(),
            kafka.group(&infer_group(n)),
        );
        tokio::task::spawn_blocking(move || {
            crate::bus::member::commit_group(&kafka, &brokers, &group, &tpl)
        })
        .await
        .map_err(|e| BusError::Handler(e.to_string()))??;
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
        return Err(RebuildError::InProgress(STAGE, n));
    }
    gens.remember(&next);
    Ok(plan)
}
