//! The change follower: how an API process without projectors (`atelier
//! serve`, the `api` role of compose) learns what changed in the views, for
//! `GET /v1/stream` and prompt `?after` answers.
//!
//! It tails the source topics, holds each record until the view's
//! checkpoint for its partition has passed it, then announces the change and
//! the partition's watermark. Announcements therefore follow the projectors
//! (never run ahead of the views), whichever process the projectors run in.
//!
//! It joins no group: it assigns itself every partition, those that exist
//! when it starts at their end (the offset it reports to
//! [`super::Changes::follower_starts`] before it reads anything), and those
//! added later, which it finds by listing the topics again every
//! [`DISCOVER`], from their beginning. A group would cost a join before the
//! first record and, after each rebalance, a reset to the end that skips
//! whatever was appended in between; a partition added while it runs would
//! be read only from wherever its end was when the group noticed it.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use super::{Change, Watermarks};
use crate::bus::{BusError, tail_config};
use crate::config::KafkaConfig;
use crate::event::{EventData, Topic, wire};
use crate::fold::Position;
use crate::fold::feed::FeedKind;
use crate::view::Generations;

/// How often pending changes are checked against the checkpoints.
const TICK: Duration = Duration::from_millis(50);

/// How often the topics' partitions are listed again, to find partitions
/// added since (read from their beginning, so finding them later delays
/// their announcements but loses none).
pub const DISCOVER: Duration = Duration::from_secs(10);

/// How soon a failed listing is tried again.
const RETRY: Duration = Duration::from_secs(1);

/// A partition list query's limit.
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// The view whose checkpoint covers a topic.
fn view_of(t: Topic) -> Option<crate::view::View> {
    super::views::of_topic(t)
}

/// What a record changes; a feed action's kind is looked up when released.
#[derive(Clone, Debug)]
enum Pending {
    Ready(Change),
    FeedItem(crate::event::FeedItemId),
}

fn pending_of(data: &EventData) -> Vec<Pending> {
    if let EventData::FeedItemCreated(e) = data {
        let kind = FeedKind::of(&e.content);
        return vec![Pending::Ready(Change::Feed(e.item_id, kind))];
    }
    if let Some(id) = crate::fold::poll::poll_id(data) {
        return vec![Pending::Ready(Change::Poll(id))];
    }
    if let Some(id) = crate::fold::feed::item_id(data) {
        return vec![Pending::FeedItem(id)];
    }
    match crate::fold::cards::target(data) {
        Some((session, upload)) => vec![
            Pending::Ready(Change::Session(session.clone())),
            Pending::Ready(Change::Upload(upload)),
        ],
        None => Vec::new(),
    }
}

/// Follows the topics until `shutdown`; see the module docs.
pub async fn follow(
    kafka: &KafkaConfig,
    brokers: &str,
    views: Arc<Generations>,
    watermarks: Arc<Watermarks>,
    shutdown: CancellationToken,
) -> Result<(), BusError> {
    let consumer: Arc<StreamConsumer> =
        Arc::new(tail_config(kafka, brokers, "follow", "earliest").create()?);
    let names: BTreeMap<String, Topic> = [
        Topic::Polls,
        Topic::Feed,
        Topic::Uploads,
        Topic::Completions,
    ]
    .into_iter()
    .map(|t| (kafka.topic(t), t))
    .collect();
    let mut assigned: HashSet<(String, i32)> = HashSet::new();
    let mut started = false;
    let discover = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(discover);
    let mut pending: HashMap<(String, i32), VecDeque<(i64, Pending)>> = HashMap::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            () = &mut discover => {
                // A listing waits on the brokers (seconds when they are
                // down): shutdown does not wait for it.
                let listed = tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    r = added(&consumer, &names, &assigned, started) => r,
                };
                let next = match listed.and_then(|new| {
                    assign(&consumer, &new)?;
                    Ok(new)
                }) {
                    Ok(new) => {
                        for (topic, partition, from) in new {
                            // Announced from here on by the follower, so no
                            // longer by this process's projectors.
                            watermarks.changes.follower_starts(&topic, partition, from);
                            if started {
                                tracing::info!(%topic, partition, "change follower: a new partition, read from its beginning");
                            }
                            assigned.insert((topic, partition));
                        }
                        started = true;
                        DISCOVER
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "change follower: listing the partitions failed");
                        RETRY
                    }
                };
                discover.as_mut().reset(tokio::time::Instant::now() + next);
            }
            m = consumer.recv() => {
                let m = match m {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(error = %e, "change follower: receive failed");
                        continue;
                    }
                };
                let Some(&topic) = names.get(m.topic()) else { continue };
                let headers: Vec<(&str, &[u8])> = {
                    use rdkafka::message::Headers;
                    m.headers()
                        .map(|hs| hs.iter().map(|h| (h.key, h.value.unwrap_or_default())).collect())
                        .unwrap_or_default()
                };
                // Undecodable records change no view (the projector sends
                // them to the DLQ); nothing to announce.
                let Ok(event) = wire::decode(headers, m.payload().unwrap_or_default(), Some(topic)) else {
                    continue;
                };
                let q = pending.entry((m.topic().to_owned(), m.partition())).or_default();
                for p in pending_of(&event.data) {
                    q.push_back((m.offset(), p));
                }
            }
            _ = tick.tick() => {
                release(&mut pending, &names, views.as_ref(), &watermarks).await;
            }
        }
    }
}

/// The partitions of `names` not yet `assigned`, each with the offset to
/// read it from: its end (the last stable offset: the follower reads
/// committed records only) on the first listing, its beginning (offset 0)
/// after that, since a partition that appears later is new. A topic that
/// does not exist yet has no partitions.
async fn added(
    consumer: &Arc<StreamConsumer>,
    names: &BTreeMap<String, Topic>,
    assigned: &HashSet<(String, i32)>,
    started: bool,
) -> Result<Vec<(String, i32, i64)>, BusError> {
    let consumer = consumer.clone();
    let topics: Vec<String> = names.keys().cloned().collect();
    let assigned = assigned.clone();
    tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        for topic in topics {
            let md = consumer.fetch_metadata(Some(&topic), QUERY_TIMEOUT)?;
            for t in md.topics() {
                match t.error() {
                    None => {}
                    Some(e)
                        if RDKafkaErrorCode::from(e)
                            == RDKafkaErrorCode::UnknownTopicOrPartition =>
                    {
                        continue;
                    }
                    Some(e) => {
                        return Err(BusError::Handler(format!(
                            "metadata of {topic}: {:?}",
                            RDKafkaErrorCode::from(e)
                        )));
                    }
                }
                for p in t.partitions() {
                    if assigned.contains(&(topic.clone(), p.id())) {
                        continue;
                    }
                    let from = if started {
                        0
                    } else {
                        consumer.fetch_watermarks(&topic, p.id(), QUERY_TIMEOUT)?.1
                    };
                    out.push((topic.clone(), p.id(), from));
                }
            }
        }
        Ok(out)
    })
    .await
    .map_err(|e| BusError::Handler(format!("partition listing: {e}")))?
}

/// Adds partitions to the follower's own assignment (no group: nothing
/// else ever changes it).
fn assign(consumer: &StreamConsumer, new: &[(String, i32, i64)]) -> Result<(), BusError> {
    if new.is_empty() {
        return Ok(());
    }
    let mut tpl = TopicPartitionList::new();
    for (topic, partition, from) in new {
        tpl.add_partition_offset(topic, *partition, Offset::Offset(*from))?;
    }
    consumer.incremental_assign(&tpl)?;
    Ok(())
}

/// Announces every pending change whose offset the view has applied.
async fn release(
    pending: &mut HashMap<(String, i32), VecDeque<(i64, Pending)>>,
    names: &BTreeMap<String, Topic>,
    views: &Generations,
    watermarks: &Watermarks,
) {
    for ((topic, partition), q) in pending.iter_mut() {
        if q.is_empty() {
            continue;
        }
        let Some(view) = names.get(topic).copied().and_then(view_of) else {
            q.clear();
            continue;
        };
        let Ok(store) = views.active(view).await else {
            continue;
        };
        // What this process's own projectors applied needs no read; the
        // checkpoint is read for partitions projected elsewhere.
        let applied = match watermarks.local(topic, *partition) {
            Some(o) if q.front().is_some_and(|(f, _)| *f <= o) => o,
            _ => match store.checkpoint(view.as_str(), topic, *partition).await {
                Ok(Some(cp)) => cp.offset,
                _ => continue,
            },
        };
        let mut last = None;
        while q.front().is_some_and(|(o, _)| *o <= applied) {
            let (offset, p) = q.pop_front().expect("front exists");
            let change = match p {
                Pending::Ready(c) => Some(c),
                // Its kind costs a view read: only when someone listens.
                Pending::FeedItem(_) if !watermarks.changes.has_subscribers() => None,
                Pending::FeedItem(id) => store
                    .item(id)
                    .await
                    .ok()
                    .flatten()
                    .map(|s| Change::Feed(id, s.kind)),
            };
            let at = Position {
                partition: *partition,
                offset,
            };
            if let Some(c) = change {
                watermarks.changes.publish(c, topic, at);
            }
            last = Some(offset);
        }
        if let Some(o) = last {
            watermarks.publish(topic, *partition, o.max(applied));
        }
    }
}
