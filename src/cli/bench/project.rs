//! `atelier bench project` writes a workload (votes on polls, or with
//! `--likes` likes on feed items) to a fresh namespace of the configured
//! Kafka (or the embedded cluster), then runs that view's projector from
//! offset 0 into the configured view store and reports events/s, and view
//! statements and requests per event. Pin it to one core with
//! `taskset -c 0`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use futures::StreamExt;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;

use crate::bus::consumer::{self, ConsumerSpec};
use crate::bus::{EmbeddedCluster, Producer, topics};
use crate::cli::loadgen::Zipf;
use crate::config::{Config, ViewBackend};
use crate::event::{
    Event, EventData, EventId, FeedContent, FeedItemCreated, FeedItemId, FeedItemRef, PollCreated,
    PollId, Principal, Question, Topic, UserId, VoteCast,
};
use crate::fold::poll::FoldConfig;
use crate::project::{Context as ProjectorContext, ViewProjector, Watermarks};

#[derive(Debug, Args)]
pub(crate) struct ProjectArgs {
    /// Votes (or likes) to project.
    #[arg(long, default_value_t = 1_000_000)]
    events: usize,
    /// Polls (or feed items) they go to.
    #[arg(long, default_value_t = 1_000)]
    polls: usize,
    /// Zipf exponent of which polls the votes go to (0: uniform, the worst
    /// case for coalescing).
    #[arg(long, default_value_t = 1.1)]
    skew: f64,
    /// Likes on feed items (through the feed projector: memberships,
    /// counts and timeline copies) instead of votes on polls.
    #[arg(long)]
    likes: bool,
    /// Distinct voters (or likers).
    #[arg(long, default_value_t = 100_000)]
    voters: usize,
    /// View store (default: the configured one).
    #[arg(long)]
    views: Option<ViewBackend>,
    /// Keep the run's topics and keyspace on real services (default: delete
    /// them at the end).
    #[arg(long)]
    keep: bool,
}

/// A poll of four colours, one choice each.
pub(super) fn colour_poll(poll_id: PollId, head: String) -> EventData {
    EventData::PollCreated(PollCreated {
        poll_id,
        head,
        message: String::new(),
        ends_at: None,
        anonymous: false,
        multiple_choice: false,
        questions: ["red", "green", "blue", "yellow"]
            .iter()
            .enumerate()
            .map(|(i, t)| Question {
                id: i as u16,
                text: (*t).into(),
            })
            .collect(),
    })
}

/// Builds the workload: poll creations then votes, Zipf-distributed over
/// the polls with exponent `skew` (0: uniform).
pub fn workload(events: usize, polls: usize, voters: usize, skew: f64, seed: u64) -> Vec<Event> {
    generate(
        (events, polls, voters, skew, seed),
        ("voter", "Voter"),
        |_, id| colour_poll(PollId(id), "Which colour?".into()),
        |id, rng| {
            EventData::VoteCast(VoteCast {
                poll_id: PollId(id),
                question_ids: vec![rng.gen_range(0..4)],
            })
        },
    )
}

/// The likes workload: `items` feed posts created, then `likes` likes by
/// `users` users, Zipf-distributed over the items with exponent `skew` (0:
/// uniform). A user liking an item twice is refused by the fold.
pub fn likes_workload(
    likes: usize,
    items: usize,
    users: usize,
    skew: f64,
    seed: u64,
) -> Vec<Event> {
    generate(
        (likes, items, users, skew, seed),
        ("liker", "Liker"),
        |i, id| {
            EventData::FeedItemCreated(FeedItemCreated {
                item_id: FeedItemId(id),
                content: FeedContent::Post {
                    title: format!("Post {i}"),
                    body: String::new(),
                },
            })
        },
        |id, _| {
            EventData::FeedItemLiked(FeedItemRef {
                item_id: FeedItemId(id),
            })
        },
    )
}

/// `(events, aggregates, people, skew, seed)`: `aggregates` created by one
/// owner (`create` of each index and id), then `events` acts (`act` on an
/// aggregate's id) by `people` principals (`(id prefix, name prefix)`),
/// Zipf-distributed over the aggregates with exponent `skew` (0: uniform).
fn generate(
    (events, aggregates, people, skew, seed): (usize, usize, usize, f64, u64),
    (id_prefix, name_prefix): (&str, &str),
    create: impl Fn(usize, uuid::Uuid) -> EventData,
    act: impl Fn(uuid::Uuid, &mut SmallRng) -> EventData,
) -> Vec<Event> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let t0 = crate::edge::now();
    let owner = Principal {
        id: UserId::parse("bench-owner").expect("valid"),
        name: "Bench".into(),
        avatar_url: None,
    };
    let ids: Vec<uuid::Uuid> = (0..aggregates)
        .map(|_| uuid::Uuid::from_u128(rng.r#gen()))
        .collect();
    let mut out: Vec<Event> = ids
        .iter()
        .enumerate()
        .map(|(i, &id)| Event {
            id: EventId(uuid::Uuid::from_u128(rng.r#gen())),
            time: t0,
            principal: owner.clone(),
            data: create(i, id),
        })
        .collect();
    let zipf = (skew > 0.0).then(|| Zipf::new(aggregates, skew));
    let names: Vec<Principal> = (0..people.max(1))
        .map(|i| Principal {
            id: UserId::parse(&format!("{id_prefix}-{i}")).expect("valid"),
            name: format!("{name_prefix} {i}"),
            avatar_url: None,
        })
        .collect();
    for _ in 0..events {
        let id = EventId(uuid::Uuid::from_u128(rng.r#gen()));
        let principal = names[rng.gen_range(0..names.len())].clone();
        let target = ids[match &zipf {
            Some(z) => z.sample(&mut rng),
            None => rng.gen_range(0..aggregates),
        }];
        out.push(Event {
            id,
            time: t0,
            principal,
            data: act(target, &mut rng),
        });
    }
    out
}

pub(super) async fn run(mut cfg: Config, a: ProjectArgs) -> anyhow::Result<()> {
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    cfg.kafka.namespace = format!("bench-{run_id}.");
    if let Some(v) = a.views {
        cfg.views.backend = v;
    }
    if cfg.views.backend == ViewBackend::Cql {
        cfg.views.keyspace = format!("bench_{run_id}");
    }
    let keep = a.keep;
    let result = project(cfg.clone(), a, &run_id).await;
    // Each run's topics and keyspace are its own: left behind, they pile
    // up on the services (gigabytes of log, a keyspace per run) and slow
    // the next runs down.
    if !keep {
        crate::app::delete_run_data(&cfg).await;
    }
    result
}

async fn project(cfg: Config, a: ProjectArgs, run_id: &str) -> anyhow::Result<()> {
    // The embedded log as `atelier up` runs it: journaled, its records
    // past the cluster's per-partition window read from the journal; in a
    // directory removed when the run ends, errors included (declared
    // first: dropped after the cluster that writes it).
    let scratch = tempfile::Builder::new()
        .prefix(&format!("atelier-bench-project-{run_id}-"))
        .tempdir()?;
    let mut cluster = None;
    let brokers = if cfg.kafka.is_embedded() {
        let c = cluster.insert(EmbeddedCluster::start(1)?);
        topics::ensure_embedded(c, &cfg.kafka)?;
        c.make_durable(
            &cfg.kafka,
            scratch.path(),
            crate::bus::journal::JournalOptions::of(&cfg.kafka.journal)
                .map_err(anyhow::Error::msg)?,
        )?;
        c.bootstrap_servers().to_owned()
    } else {
        topics::apply(&cfg.kafka, &cfg.kafka.brokers, false).await?;
        cfg.kafka.brokers.clone()
    };
    let kafka = if cfg.kafka.is_embedded() {
        "the embedded log"
    } else {
        "Kafka"
    };
    let (what, over, who) = if a.likes {
        ("likes", "feed items", "users")
    } else {
        ("votes", "polls", "voters")
    };
    eprintln!(
        "bench project: {} {what} over {} {over} ({}), {} {who}; {kafka} -> {:?} views",
        a.events,
        a.polls,
        if a.skew > 0.0 {
            format!("Zipf {}", a.skew)
        } else {
            "uniform".to_owned()
        },
        a.voters,
        cfg.views.backend
    );

    // Produce the workload.
    let events = if a.likes {
        likes_workload(a.events, a.polls, a.voters, a.skew, 42)
    } else {
        workload(a.events, a.polls, a.voters, a.skew, 42)
    };
    let producer = Producer::new(&cfg.kafka, &brokers, "atelier/bench")?;
    let t = Instant::now();
    let mut last: HashMap<i32, i64> = HashMap::new();
    // Creations first (acknowledged), then the votes: a vote must not land
    // before its poll exists.
    let (creates, votes) = events.split_at(a.polls);
    for part in [creates, votes] {
        let mut sends = futures::stream::iter(part.iter())
            .map(|e| producer.send(e))
            .buffer_unordered(10_000);
        while let Some(r) = sends.next().await {
            let at = r?;
            let e = last.entry(at.partition).or_insert(-1);
            *e = (*e).max(at.offset);
        }
    }
    let produce_s = t.elapsed().as_secs_f64();
    eprintln!(
        "produced {} records in {produce_s:.1} s ({:.0}/s)",
        events.len(),
        events.len() as f64 / produce_s
    );
    drop(events);

    // Project from offset 0 and time until every partition is applied.
    let views = crate::view::open(&cfg.views)
        .await
        .context("opening the view store")?;
    let watermarks = Watermarks::new();
    let ctx = ProjectorContext {
        dlq: producer.clone(),
        watermarks: watermarks.clone(),
        cfg: cfg.projector.clone(),
        fold: FoldConfig {
            voter_key: b"bench".to_vec(),
        },
    };
    let (projector, topic): (Arc<dyn ViewProjector>, _) = if a.likes {
        (
            crate::project::views::feed(views.clone(), &ctx),
            Topic::Feed,
        )
    } else {
        (
            crate::project::views::polls(views.clone(), &ctx),
            Topic::Polls,
        )
    };
    let spec = ConsumerSpec {
        group: cfg.kafka.group("bench.project"),
        topics: vec![cfg.kafka.topic(topic)],
        max_batch: cfg.projector.max_batch,
        linger: Duration::from_millis(cfg.projector.linger_ms),
        queue_depth: 2,
        drain_timeout: Duration::from_secs(10),
    };
    let stop = CancellationToken::new();
    let topic = cfg.kafka.topic(topic);
    let (reads0, writes0) = views.counts();
    let requests0 = views.requests();
    let t = Instant::now();
    let task = tokio::spawn(consumer::run(
        cfg.kafka.clone(),
        brokers.clone(),
        spec,
        projector.clone(),
        stop.clone(),
    ));
    loop {
        let change = watermarks.next_change();
        let done = last
            .iter()
            .all(|(p, o)| watermarks.local(&topic, *p).is_some_and(|w| w >= *o));
        if done {
            break;
        }
        anyhow::ensure!(!task.is_finished(), "projector stopped early");
        tokio::select! {
            _ = change => {}
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
    let secs = t.elapsed().as_secs_f64();
    stop.cancel();
    task.await??;
    let (reads, writes) = views.counts();
    let requests = views.requests() - requests0;
    let totals = projector.totals();
    let n = (a.events + a.polls) as f64;
    println!(
        "projected {} events in {secs:.2} s: {:.0} events/s; per event: statements {:.3} (writes {:.3}, reads {:.3}), requests {:.3} (a batch counts once per partition); commits {} (applied {}, rejected {}, duplicates {})",
        n,
        n / secs,
        (writes - writes0 + reads - reads0) as f64 / n,
        (writes - writes0) as f64 / n,
        (reads - reads0) as f64 / n,
        requests as f64 / n,
        totals.commits,
        totals.applied,
        totals.rejected,
        totals.duplicates,
    );
    // The clients before the cluster they talk to: dropped after it, they
    // log its connections refused as errors.
    drop((projector, ctx, producer));
    drop(cluster);
    drop(scratch);
    super::quiet_when_healthy()
}
