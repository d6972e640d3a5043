//! The consumer loop: in-order per partition, retried on retriable
//! failures, offsets stored only after a batch is durable.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use atelier::app::{App, Roles};
use atelier::bus::consumer::{self, ConsumerSpec};
use atelier::bus::{Batch, HandlerError, PartitionHandler};
use atelier::event::Topic;
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::helpers::{self, Backends};

#[derive(Default)]
struct Recorder {
    seen: Mutex<HashMap<i32, Vec<i64>>>,
    calls: AtomicU64,
    failures: AtomicU64,
    fail_every: u64,
    /// Offsets at or above this never become durable.
    stuck_at: Option<i64>,
}

#[async_trait]
impl PartitionHandler for Recorder {
    async fn assigned(&self, _: &str, _: i32) {}
    async fn handle(&self, b: &Batch) -> Result<(), HandlerError> {
        let n = self.calls.fetch_add(1, Ordering::Relaxed);
        let fail = (self.fail_every > 0 && n % self.fail_every == 1)
            || self
                .stuck_at
                .is_some_and(|s| b.records.iter().any(|r| r.offset >= s));
        if fail {
            self.failures.fetch_add(1, Ordering::Relaxed);
            return Err(HandlerError {
                message: "injected".into(),
                retriable: true,
            });
        }
        self.seen
            .lock()
            .entry(b.partition)
            .or_default()
            .extend(b.records.iter().map(|r| r.offset));
        Ok(())
    }
}

fn spec(group: String, topic: String) -> ConsumerSpec {
    ConsumerSpec {
        group,
        topics: vec![topic],
        max_batch: 10,
        linger: Duration::from_millis(2),
        queue_depth: 1,
        drain_timeout: Duration::from_secs(5),
    }
}

async fn setup(b: Backends) -> Option<(App, String, HashMap<i32, i64>)> {
    let cfg = helpers::config(b).await?;
    let app = App::start(cfg, Roles::NONE).await.unwrap();
    let topic = app.producer.topic(Topic::Polls);
    let mut last = HashMap::new();
    for i in 0..300 {
        let key = format!("k{}", i % 7);
        let at = app
            .producer
            .send_raw(&topic, Some(key.as_bytes()), &[], Some(b"x"))
            .await
            .unwrap();
        last.insert(at.partition, at.offset);
    }
    Some((app, topic, last))
}

async fn retries_keep_order(b: Backends) {
    let Some((app, topic, last)) = setup(b).await else {
        return;
    };
    let h = Arc::new(Recorder {
        fail_every: 3,
        ..Default::default()
    });
    let stop = CancellationToken::new();
    let log = (app.config.kafka.clone(), app.brokers.to_string());
    let group = format!("{}c1", app.config.kafka.namespace);
    let task = tokio::spawn(consumer::run(
        log.0,
        log.1,
        spec(group, topic),
        h.clone(),
        stop.clone(),
    ));
    helpers::eventually(60, "all records handled", || {
        let done = last
            .iter()
            .all(|(p, o)| h.seen.lock().get(p).and_then(|v| v.last().copied()) == Some(*o));
        async move { done.then_some(()) }
    })
    .await;
    stop.cancel();
    task.await.unwrap().unwrap();
    for (p, o) in &last {
        let seen = h.seen.lock()[p].clone();
        assert_eq!(
            seen,
            (0..=*o).collect::<Vec<_>>(),
            "partition {p}: in order, no gap, no repeat"
        );
    }
    app.stop().await.unwrap();
}
both!(retries_keep_order);

async fn offsets_follow_durability(b: Backends) {
    let Some((app, topic, last)) = setup(b).await else {
        return;
    };
    let group = format!("{}c2", app.config.kafka.namespace);
    let log = (app.config.kafka.clone(), app.brokers.to_string());
    // First member: everything from offset 20 on fails, forever.
    let h1 = Arc::new(Recorder {
        stuck_at: Some(20),
        ..Default::default()
    });
    let stop = CancellationToken::new();
    let task = tokio::spawn(consumer::run(
        log.0.clone(),
        log.1.clone(),
        spec(group.clone(), topic.clone()),
        h1.clone(),
        stop.clone(),
    ));
    helpers::eventually(60, "the first member to be stuck", || {
        let done = last.keys().all(|p| h1.seen.lock().contains_key(p))
            && h1.failures.load(Ordering::Relaxed) >= 4;
        async move { done.then_some(()) }
    })
    .await;
    stop.cancel();
    task.await.unwrap().unwrap();
    // Second member of the same group resumes exactly after what was durable.
    let h2 = Arc::new(Recorder::default());
    let stop = CancellationToken::new();
    let task = tokio::spawn(consumer::run(
        log.0,
        log.1,
        spec(group, topic),
        h2.clone(),
        stop.clone(),
    ));
    helpers::eventually(60, "the rest handled", || {
        let done = last
            .iter()
            .filter(|(_, o)| **o >= 20)
            .all(|(p, o)| h2.seen.lock().get(p).and_then(|v| v.last().copied()) == Some(*o));
        async move { done.then_some(()) }
    })
    .await;
    stop.cancel();
    task.await.unwrap().unwrap();
    for (p, o) in &last {
        let durable = h1.seen.lock().get(p).cloned().unwrap_or_default();
        let rest = h2.seen.lock().get(p).cloned().unwrap_or_default();
        assert!(durable.iter().all(|&x| x < 20), "partition {p}");
        let mut all = durable.clone();
        all.extend(&rest);
        assert_eq!(
            all,
            (0..=*o).collect::<Vec<_>>(),
            "partition {p}: nothing lost, nothing repeated"
        );
    }
    app.stop().await.unwrap();
}
both!(offsets_follow_durability);

/// The largest `atelier_consumer_prefetched` gauge of a topic's partition
/// in the metrics text.
fn prefetched(text: &str, topic: &str, partition: i32) -> f64 {
    let label = format!("partition=\"{partition}\"");
    text.lines()
        .filter(|l| {
            l.starts_with("atelier_consumer_prefetched")
                && l.contains(&format!("topic=\"{topic}\""))
                && l.contains(&label)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(0.0, f64::max)
}

/// How many times the topic's partitions were paused, from the metrics
/// text.
fn pauses(text: &str, topic: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with("atelier_partition_pauses_total") && l.contains(topic))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A slow handler falls behind a backlog of its partition: librdkafka
/// stops fetching the partition once its queue holds the prefetch bound
/// (a batch per queue slot, or a fetch more), so the process buffers a
/// bounded part of the backlog, not all of it; nothing is lost, nothing
/// is paused.
async fn a_slow_partition_prefetches_a_bounded_part(b: Backends) {
    let Some(cfg) = helpers::config(b).await else {
        return;
    };
    let metrics = atelier::telemetry::prometheus().expect("recorder");
    let app = App::start(cfg, Roles::NONE).await.unwrap();
    let topic = app.producer.topic(Topic::Polls);
    struct Slow(Recorder);
    #[async_trait]
    impl PartitionHandler for Slow {
        async fn assigned(&self, t: &str, p: i32) {
            self.0.assigned(t, p).await
        }
        async fn handle(&self, b: &Batch) -> Result<(), HandlerError> {
            tokio::time::sleep(Duration::from_millis(100)).await;
            self.0.handle(b).await
        }
    }
    let h = Arc::new(Slow(Recorder::default()));
    let stop = CancellationToken::new();
    // Batches of 10, one queued: librdkafka keeps 10 records ready. A
    // fetch brings at most 64 KiB of a partition (eight records).
    let sp = spec(format!("{}c3", app.config.kafka.namespace), topic.clone());
    let mut kafka = app.config.kafka.clone();
    kafka
        .properties
        .insert("max.partition.fetch.bytes".into(), (64 << 10).to_string());
    let task = tokio::spawn(consumer::run(
        kafka,
        app.brokers.to_string(),
        sp,
        h.clone(),
        stop.clone(),
    ));
    // Incompressible (the producer compresses): a record takes its 8 KiB
    // of a fetch.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let body: Vec<u8> = (0..8 << 10)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let send = || {
        app.producer
            .send_raw(&topic, Some(b"one"), &[], Some(&body))
    };
    let first = send().await.unwrap();
    helpers::eventually(60, "the first record handled", || {
        let live = h.0.seen.lock().contains_key(&first.partition);
        async move { live.then_some(()) }
    })
    .await;
    // 400 records of 8 KiB, each its own producer batch, arrive far
    // faster than the handler takes them (10 per 100 ms).
    let mut last = first.offset;
    for _ in 0..400 {
        let at = send().await.unwrap();
        assert_eq!(at.partition, first.partition, "one key, one partition");
        last = at.offset;
    }
    let mut most = 0.0f64;
    helpers::eventually(120, "all records handled", || {
        most = most.max(prefetched(&metrics.render(), &topic, first.partition));
        let done =
            h.0.seen
                .lock()
                .get(&first.partition)
                .and_then(|v| v.last().copied())
                == Some(last);
        async move { done.then_some(()) }
    })
    .await;
    stop.cancel();
    task.await.unwrap().unwrap();
    assert_eq!(
        h.0.seen.lock()[&first.partition],
        (first.offset..=last).collect::<Vec<_>>(),
        "in order, no gap, no repeat"
    );
    // The fault landed: records waited in the partition's queue.
    assert!(
        most > 0.0,
        "the backlog waited in the partition's queue: at most {most} records"
    );
    // The bound: 10 ready, and the fetches under way (librdkafka decides
    // the next fetch before the last one's records are queued: two of
    // eight records); unbounded, the queue would have held most of the 400.
    assert!(
        most <= 10.0 + 2.0 * 8.0 + 14.0,
        "the partition's queue stayed bounded: {most} records"
    );
    let pauses = pauses(&metrics.render(), &topic);
    assert_eq!(pauses, 0.0, "no pause: the queue bound stops the fetches");
    app.stop().await.unwrap();
}
both!(a_slow_partition_prefetches_a_bounded_part);

/// A handler whose first call holds its partition until the test opens
/// the gate; it keeps every call's offsets.
struct Gate {
    calls: Mutex<Vec<Vec<i64>>>,
    open: tokio::sync::Semaphore,
}

#[async_trait]
impl PartitionHandler for Gate {
    async fn assigned(&self, _: &str, _: i32) {}
    async fn handle(&self, b: &Batch) -> Result<(), HandlerError> {
        let first = {
            let mut calls = self.calls.lock();
            calls.push(b.records.iter().map(|r| r.offset).collect());
            calls.len() == 1
        };
        if first {
            let _ = self.open.acquire().await.unwrap();
        }
        Ok(())
    }
}

/// Consumes the polls topic of a fresh app through a [`Gate`] with these
/// batch and queue sizes: one record is taken and held, five more are sent
/// well apart (each its own lingered batch) behind it, and the gate opens
/// 2 s later. Answers the handler's calls once all six are handled, and
/// the first and last offsets.
async fn behind_a_busy_handler(
    b: Backends,
    group: &str,
    max_batch: usize,
    queue_depth: usize,
) -> Option<(Vec<Vec<i64>>, i64, i64, String)> {
    let cfg = helpers::config(b).await?;
    let app = App::start(cfg, Roles::NONE).await.unwrap();
    let topic = app.producer.topic(Topic::Polls);
    let h = Arc::new(Gate {
        calls: Mutex::new(Vec::new()),
        open: tokio::sync::Semaphore::new(0),
    });
    let stop = CancellationToken::new();
    let mut sp = spec(
        format!("{}{group}", app.config.kafka.namespace),
        topic.clone(),
    );
    sp.max_batch = max_batch;
    sp.queue_depth = queue_depth;
    let task = tokio::spawn(consumer::run(
        app.config.kafka.clone(),
        app.brokers.to_string(),
        sp,
        h.clone(),
        stop.clone(),
    ));
    let send = || app.producer.send_raw(&topic, Some(b"one"), &[], Some(b"x"));
    let first = send().await.unwrap();
    helpers::eventually(60, "the first batch to be taken", || {
        let taken = !h.calls.lock().is_empty();
        async move { taken.then_some(()) }
    })
    .await;
    let mut last = first.offset;
    for _ in 0..5 {
        let at = send().await.unwrap();
        assert_eq!(at.partition, first.partition, "one key, one partition");
        last = at.offset;
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    h.open.add_permits(1);
    helpers::eventually(60, "all records handled", || {
        let done = h.calls.lock().last().and_then(|c| c.last().copied()) == Some(last);
        async move { done.then_some(()) }
    })
    .await;
    stop.cancel();
    task.await.unwrap().unwrap();
    app.stop().await.unwrap();
    let calls = h.calls.lock().clone();
    let all: Vec<i64> = calls.iter().flatten().copied().collect();
    assert_eq!(
        all,
        (first.offset..=last).collect::<Vec<_>>(),
        "in order, no gap, no repeat: {calls:?}"
    );
    Some((calls, first.offset, last, topic))
}

/// While a partition's handler is busy, what queues up behind it is
/// handled together (up to the batch size), in order, rather than one
/// small batch per turn.
async fn queued_batches_merge(b: Backends) {
    let Some((calls, _, _, _)) = behind_a_busy_handler(b, "c4", 100, 8).await else {
        return;
    };
    let after: Vec<&Vec<i64>> = calls.iter().skip(1).collect();
    assert!(
        after.len() < 5 && after.iter().any(|c| c.len() > 1),
        "the five queued records were handled together, not one call each: {calls:?}"
    );
}
both!(queued_batches_merge);

/// A handler busy with one batch while more records arrive: they wait in
/// the partition's queue, which librdkafka keeps filling (up to its bound),
/// and the partition is never paused: librdkafka fetches a resumed
/// partition again only when its fetch in flight returns (hundreds of ms),
/// which cost live traffic on Cassandra most of a second whenever one
/// write outlasted two lingers.
async fn a_busy_handler_pauses_nothing(b: Backends) {
    let metrics = atelier::telemetry::prometheus().expect("recorder");
    let Some((calls, _, _, topic)) = behind_a_busy_handler(b, "c5", 100, 1).await else {
        return;
    };
    // The five records arrived while the first call was held, and were
    // handled after it.
    assert!(
        calls.len() >= 2 && calls[1..].iter().map(Vec::len).sum::<usize>() == 5,
        "records waited behind the busy handler: {calls:?}"
    );
    let pauses = pauses(&metrics.render(), &topic);
    assert_eq!(pauses, 0.0, "paused behind a busy handler: {calls:?}");
}
both!(a_busy_handler_pauses_nothing);

/// A member that joins a group takes its share without stopping the member
/// already there: the first gives away exactly the partitions the newcomer
/// gets, and keeps reading the rest throughout. (Under librdkafka's default
/// eager protocol it gave every partition away, and got half of them back
/// only once both had joined again.)
async fn a_joining_member_moves_only_what_it_takes(b: Backends) {
    use atelier::bus::{Member, MemberSpec, Offsets, Rebalance, Rebalances};
    use std::collections::BTreeSet;

    let Some(cfg) = helpers::config(b).await else {
        return;
    };
    let app = App::start(cfg, Roles::NONE).await.unwrap();
    let spec = MemberSpec {
        group: format!("{}join", app.config.kafka.namespace),
        topics: vec![app.producer.topic(Topic::Polls)],
        offsets: Offsets::Stored,
        prefetch_kbytes: 64,
        partition_queues: true,
        prefetch_records: 10,
    };
    let brokers = app.brokers.to_string();
    // A member's rebalances are served while its main queue is polled.
    let join = || {
        let (m, r) = Member::join(&app.config.kafka, &brokers, &spec).unwrap();
        let m = Arc::new(m);
        let polled = m.clone();
        let task = tokio::spawn(async move {
            loop {
                let _ = polled.recv().await;
            }
        });
        (m, r, task)
    };
    // What a member owns, applying its rebalances as they come; every
    // event is kept.
    #[derive(Default)]
    struct Seen {
        owned: BTreeSet<(String, i32)>,
        events: Vec<Rebalance>,
    }
    async fn next(r: &mut Rebalances, s: &mut Seen) {
        let ev = r.next().await.expect("the member lives");
        match &ev {
            Rebalance::Assigned(tps) => s.owned.extend(tps.iter().cloned()),
            Rebalance::Revoked(tps) => tps.iter().for_each(|tp| {
                s.owned.remove(tp);
            }),
        }
        s.events.push(ev);
    }
    let (first, mut first_r, first_task) = join();
    let mut a = Seen::default();
    tokio::time::timeout(Duration::from_secs(60), next(&mut first_r, &mut a))
        .await
        .expect("the first member is assigned partitions in 60 s");
    let all = a.owned.clone();
    assert!(all.len() > 1, "the topic has partitions to share: {all:?}");
    let (second, mut second_r, second_task) = join();
    let mut b = Seen::default();
    let settled = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let shared = !b.owned.is_empty()
                && a.owned.is_disjoint(&b.owned)
                && a.owned.union(&b.owned).cloned().collect::<BTreeSet<_>>() == all;
            if shared {
                return;
            }
            tokio::select! {
                _ = next(&mut first_r, &mut a) => {}
                _ = next(&mut second_r, &mut b) => {}
            }
        }
    })
    .await;
    assert!(
        settled.is_ok(),
        "the partitions were not shared in 60 s: first {:?}, second {:?}",
        a.events,
        b.events
    );
    let given: BTreeSet<_> = a.events[1..]
        .iter()
        .flat_map(|e| match e {
            Rebalance::Revoked(tps) => tps.clone(),
            // A cooperative round that gives a member nothing new says so.
            Rebalance::Assigned(tps) if tps.is_empty() => Vec::new(),
            Rebalance::Assigned(tps) => panic!("the first member was assigned {tps:?} again"),
        })
        .collect();
    assert_eq!(
        given, b.owned,
        "the first member gave away exactly what the second took"
    );
    for t in [first_task, second_task] {
        t.abort();
    }
    first.leave();
    second.leave();
    app.stop().await.unwrap();
}
both!(a_joining_member_moves_only_what_it_takes);
