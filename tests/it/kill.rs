//! SIGKILL the projector process at random points of a 100,000-vote stream
//! and a 40,000-event stream of likes and joins on real Kafka and Cassandra,
//! restart it each time, and end with every poll and every feed item (and
//! its timeline rows) equal to the reference fold. Each kill is shown to
//! have landed on work: records produced and not yet applied, or applied to
//! the views and not yet committed to the group (so the next run receives
//! them again and must not count them twice).

use std::collections::HashMap;
use std::process::Child;
use std::time::Duration;

use atelier::event::Topic;
use atelier::project::supervisor::group_of;
use atelier::view::{self, Store};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use crate::exactly_once::{assert_matches_reference, produce, workload_with};
use crate::feed::{assert_feed_matches_reference, feed_workload};
use crate::helpers::{self, Backends};

fn spawn(cfg: &atelier::config::Config, log: &std::path::Path, run: usize) -> Child {
    let envs = [
        ("ATELIER_KAFKA__BROKERS", cfg.kafka.brokers.clone()),
        ("ATELIER_KAFKA__NAMESPACE", cfg.kafka.namespace.clone()),
        // Static membership: a restarted process takes its partitions back
        // at once instead of waiting out the dead member's session.
        ("ATELIER_KAFKA_PROP_GROUP_INSTANCE_ID", "kill-test".into()),
        ("ATELIER_VIEWS__BACKEND", "cql".into()),
        (
            "ATELIER_VIEWS__CONTACT_POINTS",
            format!("[\"{}\"]", cfg.views.contact_points[0]),
        ),
        ("ATELIER_VIEWS__KEYSPACE", cfg.views.keyspace.clone()),
        (
            "ATELIER_AUTH__JWT_SECRET",
            cfg.auth.jwt_secret.expose().to_owned(),
        ),
        (
            "ATELIER_AUTH__VOTER_KEY",
            cfg.auth.voter_key.expose().to_owned(),
        ),
        (
            "ATELIER_AUTH__LINK_KEY",
            cfg.auth.link_key.expose().to_owned(),
        ),
        (
            "ATELIER_DATA_DIR",
            cfg.data_dir.to_string_lossy().into_owned(),
        ),
        ("ATELIER_LOG", format!("info,atelier=info,run={run}")),
    ];
    helpers::spawn_atelier("project", &envs, log)
}

/// The offset (next to read) the group `group` committed for each of
/// `partitions` of `topic`, where it committed one.
fn committed(
    cfg: &atelier::config::Config,
    group: &str,
    topic: &str,
    partitions: impl Iterator<Item = i32>,
) -> HashMap<i32, i64> {
    let mut c = atelier::bus::client_config(&cfg.kafka, &cfg.kafka.brokers);
    // Asks for the group's offsets without joining it.
    c.set("group.id", group);
    let consumer: BaseConsumer = c.create().unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in partitions {
        tpl.add_partition(topic, p);
    }
    let got = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap();
    got.elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect()
}

/// Where a kill left one view: whether records produced to it were not
/// yet applied, and whether records applied to it were not yet committed.
async fn left_behind(
    cfg: &atelier::config::Config,
    views: &dyn Store,
    view: &str,
    topic: &str,
    produced: &HashMap<i32, i64>,
) -> (bool, bool) {
    let applied: HashMap<i32, i64> = views
        .checkpoints(view)
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c.topic == topic)
        .map(|c| (c.partition, c.offset))
        .collect();
    let group = cfg.kafka.group(&group_of(view, 0));
    let committed = committed(cfg, &group, topic, applied.keys().copied());
    let unapplied = produced
        .iter()
        .any(|(p, o)| applied.get(p).is_none_or(|a| a < o));
    let uncommitted = applied
        .iter()
        .any(|(p, a)| committed.get(p).is_none_or(|c| c <= a));
    (unapplied, uncommitted)
}

/// Counts one kill by what it left behind (`(unapplied, uncommitted)` of
/// the polls and feed views).
fn tally(
    polls: (bool, bool),
    feed: (bool, bool),
    landed: &mut usize,
    redelivered: &mut usize,
    idle: &mut usize,
) {
    if polls.0 || polls.1 || feed.0 || feed.1 {
        *landed += 1;
        *redelivered += usize::from(polls.1 || feed.1);
    } else {
        *idle += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_points_loses_and_duplicates_nothing() {
    let Some(cfg) = helpers::config(Backends::Real).await else {
        return;
    };
    let views = view::open(&cfg.views).await.unwrap();
    let producer =
        atelier::bus::Producer::new(&cfg.kafka, &cfg.kafka.brokers, "kill-test").unwrap();
    // 100,000 votes (and retractions, rule breakers) over 40 polls; no
    // closes, so most ballots count. Produced in chunks while the projector
    // runs, with a SIGKILL after each chunk and more until it caught up.
    let topic = cfg.kafka.topic(Topic::Polls);
    let log = crate::helpers::scratch().join(format!("atelier-kill-{}.log", helpers::unique()));
    eprintln!("projector log: {}", log.display());
    let mut rng = SmallRng::seed_from_u64(5);
    let mut child = spawn(&cfg, &log, 0);
    let mut kills = 0;
    let mut events = Vec::new();
    let mut feed_events = Vec::new();
    let mut last = std::collections::HashMap::new();
    let mut feed_last = std::collections::HashMap::new();
    let feed_topic = cfg.kafka.topic(Topic::Feed);
    let all = workload_with(11, 40, 100_000, 0);
    let feed_all = feed_workload(13, 300, 40_000);
    let mut feed_chunks = feed_all.chunks(8_000).map(<[_]>::to_vec);
    let mut chunks = all
        .chunks(20_000)
        .map(<[_]>::to_vec)
        .collect::<Vec<_>>()
        .into_iter();
    let kill = |child: &mut std::process::Child, kills: &mut usize| {
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        *kills += 1;
    };
    // Kills that landed on work (records produced and not applied, or
    // applied and not committed), and those that left applied records
    // uncommitted: the window the versioned aggregates exist for. A kill
    // after the projector had applied and committed everything proves
    // nothing; it is counted apart.
    let (mut landed, mut redelivered, mut idle) = (0, 0, 0);
    for (i, chunk) in chunks.by_ref().enumerate() {
        let p = produce(&producer, chunk, usize::from(i == 2)).await;
        events.extend(p.events);
        for (part, o) in p.last {
            let e = last.entry(part).or_insert(-1);
            *e = (*e).max(o);
        }
        if let Some(fc) = feed_chunks.next() {
            let p = produce(&producer, fc, usize::from(i == 1)).await;
            feed_events.extend(p.events);
            for (part, o) in p.last {
                let e = feed_last.entry(part).or_insert(-1);
                *e = (*e).max(o);
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(50..700))).await;
        kill(&mut child, &mut kills);
        let polls = left_behind(&cfg, views.as_ref(), "polls", &topic, &last).await;
        let feed = left_behind(&cfg, views.as_ref(), "feed", &feed_topic, &feed_last).await;
        tally(polls, feed, &mut landed, &mut redelivered, &mut idle);
        child = spawn(&cfg, &log, kills);
    }
    events.sort_by_key(|(pos, _)| *pos);
    feed_events.sort_by_key(|(pos, _)| *pos);
    let caught_up = || async {
        let cps = views.checkpoints("polls").await.unwrap_or_default();
        let fcps = views.checkpoints("feed").await.unwrap_or_default();
        last.iter().all(|(p, o)| {
            cps.iter()
                .any(|c| c.topic == topic && c.partition == *p && c.offset >= *o)
        }) && feed_last.iter().all(|(p, o)| {
            fcps.iter()
                .any(|c| c.topic == feed_topic && c.partition == *p && c.offset >= *o)
        })
    };
    while kills < 8 {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(300..2_500))).await;
        if caught_up().await {
            break;
        }
        kill(&mut child, &mut kills);
        let polls = left_behind(&cfg, views.as_ref(), "polls", &topic, &last).await;
        let feed = left_behind(&cfg, views.as_ref(), "feed", &feed_topic, &feed_last).await;
        tally(polls, feed, &mut landed, &mut redelivered, &mut idle);
        child = spawn(&cfg, &log, kills);
    }
    helpers::eventually(300, "the projector to catch up after the kills", || async {
        caught_up().await.then_some(())
    })
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    eprintln!(
        "{kills} kills: {landed} on work ({redelivered} with applied records not yet \
         committed), {idle} on an idle projector"
    );
    assert!(
        landed * 2 >= kills,
        "only {landed} of {kills} kills landed on work"
    );
    assert!(
        redelivered > 0,
        "no kill left applied records uncommitted: re-delivery was never exercised"
    );
    assert_matches_reference(&cfg, views.as_ref(), &events).await;
    assert_feed_matches_reference(views.as_ref(), &feed_events).await;
}
