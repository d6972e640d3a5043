//! The change follower: how an API process without projectors (`atelier
//! serve`, the `api` role of compose) learns what changed in the views, for
//! `GET /v1/stream` and prompt `?after` answers.
//!
//! It tails the source topics from their end (a private group that commits
//! nothing), holds each record until the view's checkpoint for its partition
//! has passed it, then announces the change and the partition's watermark.
//! Announcements therefore follow the projectors (never run ahead of the
//! views), whichever process the projectors run in.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
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
    let cfg = tail_config(kafka, brokers, "follow", "latest");
    let consumer: StreamConsumer = cfg.create()?;
    let names: BTreeMap<String, Topic> = [
        Topic::Polls,
        Topic::Feed,
        Topic::Uploads,
        Topic::Completions,
    ]
    .into_iter()
    .map(|t| (kafka.topic(t), t))
    .collect();
    let topics: Vec<&str> = names.keys().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    let mut pending: HashMap<(String, i32), VecDeque<(i64, Pending)>> = HashMap::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
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
                let q = match pending.entry((m.topic().to_owned(), m.partition())) {
                    std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::hash_map::Entry::Vacant(e) => {
                        // This process's projectors stop announcing this
                        // partition's changes from here on.
                        watermarks.changes.follower_starts(m.topic(), m.partition(), m.offset());
                        e.insert(VecDeque::new())
                    }
                };
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
