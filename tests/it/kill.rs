//! SIGKILL the projector process at random points of a 100,000-vote stream
//! and a 40,000-event stream of likes and joins on real Kafka and Cassandra,
//! restart it each time, and end with every poll and every feed item (and
//! its timeline rows) equal to the reference fold.

use std::process::Child;
use std::time::Duration;

use atelier::event::Topic;
use atelier::view;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

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
            "ATELIER_DATA_DIR",
            cfg.data_dir.to_string_lossy().into_owned(),
        ),
        ("ATELIER_LOG", format!("info,atelier=info,run={run}")),
    ];
    helpers::spawn_atelier("project", &envs, log)
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
    let log = std::env::temp_dir().join(format!("atelier-kill-{}.log", helpers::unique()));
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
        *child = spawn(&cfg, &log, *kills);
    };
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
        tokio::time::sleep(Duration::from_millis(rng.gen_range(200..1_500))).await;
        kill(&mut child, &mut kills);
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
    while kills < 8 && !caught_up().await {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(300..2_500))).await;
        kill(&mut child, &mut kills);
    }
    helpers::eventually(300, "the projector to catch up after the kills", || async {
        caught_up().await.then_some(())
    })
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    eprintln!("{kills} kills");
    assert_matches_reference(&cfg, views.as_ref(), &events).await;
    assert_feed_matches_reference(views.as_ref(), &feed_events).await;
}
