//! `atelier bench reads`: read latency, throughput and freshness of the API.
//!
//! Starts the whole application in this process (the embedded Kafka cluster
//! or a real one; the embedded view store or Cassandra) under a fresh
//! namespace, keyspace and data directory, seeds feed items, polls with votes and likes on a
//! few hot items straight onto the log, and waits until the views show them.
//! Then `--clients` closed-loop HTTP clients (one request in flight each, one
//! shared connection pool) hit one kind of read per phase, so that each gets
//! its own p50/p99/p99.9 and requests/s: the first feed page, later feed
//! pages through the returned `next_cursor`, items, polls. Last, freshness:
//! likes produced at `--rate` events/s, one in `--sample-every` read back
//! with `GET /v1/feed/{id}?after=<token>` right after the produce ack, timed
//! from the start of the produce to the 200.
//!
//! The load generator runs on the same machine as the server: the figures
//! are for the pair, and bounded by the cores they share.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use futures::StreamExt;
use parking_lot::Mutex;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;

use crate::api::Token;
use crate::app::{App, Roles};
use crate::bus::Producer;
use crate::bus::producer::Appended;
use crate::cli::latency::Latencies;
use crate::config::{Config, Secret, ViewBackend};
use crate::edge::{new_id, now};
use crate::event::{
    Event, EventData, EventId, FeedContent, FeedItemCreated, FeedItemId, FeedItemRef, PollId,
    Principal, Topic, UserId, VoteCast,
};
use crate::view::Generations;

#[derive(Debug, Args)]
pub(crate) struct ReadsArgs {
    /// View store (default: the configured one).
    #[arg(long)]
    views: Option<ViewBackend>,
    /// Kafka bootstrap servers; empty: the embedded mock cluster (default:
    /// the configured ones).
    #[arg(long)]
    brokers: Option<String>,
    /// CQL contact point `host:port` for `--views cql` (default: the
    /// configured ones).
    #[arg(long)]
    cql: Option<String>,
    /// Concurrent HTTP clients, one request in flight each.
    #[arg(long, default_value_t = 200)]
    clients: usize,
    /// Measured seconds of each read phase and of the freshness phase.
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    /// Unmeasured seconds at the start of each read phase.
    #[arg(long, default_value_t = 2)]
    warmup_secs: u64,
    /// Feed items to seed (posts, games and teams in turn).
    #[arg(long, default_value_t = 10_000)]
    items: usize,
    /// Polls to seed, with votes.
    #[arg(long, default_value_t = 20)]
    polls: usize,
    /// Likes per second in the freshness phase (0: skip it).
    #[arg(long, default_value_t = 5_000)]
    rate: u64,
    /// Zipf exponent of which items the freshness likes go to (0: uniform,
    /// every like on a different item: the least coalescing, the most
    /// view writes per event).
    #[arg(long, default_value_t = 0.0)]
    skew: f64,
    /// Read back one in this many freshness events.
    #[arg(long, default_value_t = 50)]
    sample_every: u64,
    /// Print JSON instead of the table.
    #[arg(long)]
    json: bool,
    /// Keep the run's topics and keyspace on real services, and its data
    /// directory (default: delete them at the end).
    #[arg(long)]
    keep: bool,
}

/// Items seeded with many likes.
const HOT_ITEMS: usize = 10;
/// Likes on each hot item.
const LIKES_PER_HOT: usize = 500;
/// Votes on each poll.
const VOTES_PER_POLL: usize = 250;
/// Share of item reads that go to a hot item (the rest: uniform).
const HOT_SHARE: f64 = 0.1;
/// Pages a client walks through `next_cursor` before it starts elsewhere.
const WALK: u32 = 10;
/// Page size of the feed reads.
const PAGE: usize = 20;
/// Sends in flight while seeding.
const SEED_IN_FLIGHT: usize = 5_000;
/// How long the seed may take to become visible.
const VISIBLE_WITHIN: Duration = Duration::from_secs(600);
/// Freshness producer tick.
const TICK: Duration = Duration::from_millis(10);

/// What the clients read from.
#[derive(Debug, Default)]
struct Targets {
    items: Vec<FeedItemId>,
    hot: Vec<FeedItemId>,
    polls: Vec<PollId>,
    /// Every `next_cursor` of a walk of the whole timeline.
    cursors: Vec<String>,
}

/// The read phases, one endpoint kind each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    FirstPage,
    NextPages,
    Item,
    Poll,
}

impl Kind {
    const ALL: [Kind; 4] = [Kind::FirstPage, Kind::NextPages, Kind::Item, Kind::Poll];

    fn name(self) -> &'static str {
        match self {
            Kind::FirstPage => "feed, first page",
            Kind::NextPages => "feed, next pages",
            Kind::Item => "item",
            Kind::Poll => "poll",
        }
    }

    fn request(self) -> &'static str {
        match self {
            Kind::FirstPage => "GET /v1/feed?limit=20",
            Kind::NextPages => "GET /v1/feed?limit=20&cursor=<next_cursor>",
            Kind::Item => "GET /v1/feed/{id}",
            Kind::Poll => "GET /v1/polls/{id}",
        }
    }
}

/// One read phase's figures.
#[derive(Debug, Serialize)]
struct Row {
    name: &'static str,
    request: &'static str,
    /// 200s in the measured window.
    ok: u64,
    /// Everything else in the measured window (status or transport error).
    errors: u64,
    error_kinds: BTreeMap<String, u64>,
    /// 200s per second of the measured window.
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
    /// View-store reads per request, warm-up included.
    view_reads_per_request: f64,
}

/// The freshness phase's figures.
#[derive(Debug, Serialize)]
struct Freshness {
    target_rate: u64,
    /// Zipf exponent over items (0: uniform).
    skew: f64,
    /// Seconds spent producing.
    secs: f64,
    produced: u64,
    produce_errors: u64,
    /// Events handed to the producer per second.
    offered_rate: f64,
    /// Events acknowledged per second, from the first send to the last ack.
    acked_rate: f64,
    ack_p50_ms: f64,
    ack_p99_ms: f64,
    /// Of the events read back, until this process's projector published
    /// them as applied (durable in the views): the projector's share of
    /// "visible".
    applied: u64,
    applied_p50_ms: f64,
    applied_p99_ms: f64,
    applied_max_ms: f64,
    /// Events read back with `?after`.
    sampled: u64,
    /// Of those, answered 200.
    visible: u64,
    read_errors: BTreeMap<String, u64>,
    visible_p50_ms: f64,
    visible_p99_ms: f64,
    visible_p999_ms: f64,
    visible_max_ms: f64,
    /// View-store statements per like, once every like is applied (the
    /// projector's reads and writes; the read-backs' reads taken out).
    view_statements_per_event: f64,
    /// View-store requests per like (a batch counts once per partition it
    /// writes).
    view_requests_per_event: f64,
}

#[derive(Debug, Serialize)]
struct SeedReport {
    events: usize,
    produce_secs: f64,
    /// From the last ack until every partition's last record was visible.
    visible_secs: f64,
    /// Items found walking the whole timeline.
    timeline_items: usize,
    timeline_pages: usize,
}

#[derive(Debug, Serialize)]
struct Report {
    views: String,
    kafka: &'static str,
    cores: usize,
    items: usize,
    polls: usize,
    clients: usize,
    duration_secs: u64,
    warmup_secs: u64,
    seed: SeedReport,
    reads: Vec<Row>,
    freshness: Option<Freshness>,
}

pub(super) async fn run(mut cfg: Config, a: ReadsArgs) -> anyhow::Result<()> {
    anyhow::ensure!(a.clients > 0, "--clients must be at least 1");
    anyhow::ensure!(a.sample_every > 0, "--sample-every must be at least 1");
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    cfg.kafka.namespace = format!("bench-reads-{run_id}.");
    if let Some(b) = &a.brokers {
        cfg.kafka.brokers = b.clone();
    }
    if let Some(v) = a.views {
        cfg.views.backend = v;
    }
    if let Some(c) = &a.cql {
        cfg.views.contact_points = vec![c.clone()];
    }
    if cfg.views.backend == ViewBackend::Cql {
        cfg.views.keyspace = format!("bench_reads_{run_id}");
    }
    cfg.http.listen = "127.0.0.1:0".parse()?;
    cfg.http.max_after_wait_ms = 10_000;
    // A scratch data directory: the configured one is `atelier up`'s, whose
    // embedded log would otherwise journal the run's topics (and refuse to
    // start on them afterwards) and whose view snapshot the run would
    // overwrite.
    cfg.data_dir = std::env::temp_dir().join(format!("atelier-bench-reads-{run_id}"));
    // Reads need no credentials: per-run secrets rather than a dev secret
    // written under the data dir.
    if cfg.auth.jwt_secret.expose().is_empty() && cfg.auth.api_keys.is_empty() {
        cfg.auth.jwt_secret = Secret(uuid::Uuid::new_v4().simple().to_string());
    }
    if cfg.auth.voter_key.expose().is_empty() {
        cfg.auth.voter_key = Secret(uuid::Uuid::new_v4().simple().to_string());
    }
    if cfg.auth.link_key.expose().is_empty() {
        cfg.auth.link_key = Secret(uuid::Uuid::new_v4().simple().to_string());
    }
    let kafka = if cfg.kafka.is_embedded() {
        "embedded Kafka"
    } else {
        crate::bus::topics::apply(&cfg.kafka, &cfg.kafka.brokers, false)
            .await
            .context("creating the run's topics")?;
        "Kafka"
    };
    let app = match App::start(
        cfg.clone(),
        Roles {
            infer: false,
            ..Roles::ALL
        },
    )
    .await
    {
        Ok(app) => app,
        Err(e) => {
            if !a.keep {
                crate::app::delete_run_data(&cfg).await;
                let _ = std::fs::remove_dir_all(&cfg.data_dir);
            }
            return Err(e);
        }
    };
    let result = bench(&app, kafka, &a).await;
    let stopped = app.stop().await;
    if !a.keep {
        crate::app::delete_run_data(&cfg).await;
        let _ = std::fs::remove_dir_all(&cfg.data_dir);
    }
    let report = result?;
    stopped?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    super::quiet_when_healthy()
}

async fn bench(app: &App, kafka: &'static str, a: &ReadsArgs) -> anyhow::Result<Report> {
    let base = app.url();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(a.clients)
        .tcp_nodelay(true)
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    eprintln!(
        "bench reads: {kafka} -> {} views, {cores} cores; seeding {} items, {} polls",
        app.views.backend(),
        a.items,
        a.polls
    );
    let (targets, seed) = seed(app, &http, &base, a).await?;
    eprintln!(
        "seeded {} events in {:.1} s, visible {:.1} s later; timeline {} items in {} pages",
        seed.events, seed.produce_secs, seed.visible_secs, seed.timeline_items, seed.timeline_pages
    );
    let targets = Arc::new(targets);
    let mut rows = Vec::new();
    for kind in Kind::ALL {
        if kind == Kind::NextPages && targets.cursors.is_empty() {
            eprintln!("skipping {}: the timeline has one page", kind.name());
            continue;
        }
        if kind == Kind::Poll && targets.polls.is_empty() {
            continue;
        }
        eprintln!(
            "{}: {} clients, {} s warm-up + {} s",
            kind.name(),
            a.clients,
            a.warmup_secs,
            a.duration_secs
        );
        rows.push(phase(&http, &base, kind, &targets, a, &app.views).await);
    }
    let freshness = if a.rate > 0 && !targets.items.is_empty() {
        eprintln!(
            "freshness: {} likes/s for {} s, 1 in {} read back with ?after",
            a.rate, a.duration_secs, a.sample_every
        );
        Some(freshness(app, &http, &base, &targets, a).await?)
    } else {
        None
    };
    Ok(Report {
        views: app.views.backend().to_owned(),
        kafka,
        cores,
        items: a.items,
        polls: a.polls,
        clients: a.clients,
        duration_secs: a.duration_secs,
        warmup_secs: a.warmup_secs,
        seed,
        reads: rows,
        freshness,
    })
}

fn principal(id: &str, name: String) -> anyhow::Result<Principal> {
    Ok(Principal {
        id: UserId::parse(id)?,
        name,
        avatar_url: None,
    })
}

fn event(principal: Principal, data: EventData) -> Event {
    Event {
        id: EventId(new_id()),
        time: now(),
        principal,
        data,
    }
}

/// The last record (and its key) acknowledged per (topic, partition).
type Last = HashMap<(String, i32), (Appended, String)>;

async fn send_all(producer: &Producer, events: &[Event], last: &mut Last) -> anyhow::Result<()> {
    let mut sends = futures::stream::iter(events)
        .map(|e| async move { (producer.send(e).await, e) })
        .buffer_unordered(SEED_IN_FLIGHT);
    while let Some((r, e)) = sends.next().await {
        let at = r.context("producing the seed")?;
        let slot = last.entry((at.topic.clone(), at.partition));
        match slot {
            std::collections::hash_map::Entry::Occupied(mut o) => {
                if at.offset > o.get().0.offset {
                    o.insert((at, e.key()));
                }
            }
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert((at, e.key()));
            }
        }
    }
    Ok(())
}

#[derive(Debug, Deserialize)]
struct Page {
    items: Vec<serde::de::IgnoredAny>,
    next_cursor: Option<String>,
}

async fn seed(
    app: &App,
    http: &reqwest::Client,
    base: &str,
    a: &ReadsArgs,
) -> anyhow::Result<(Targets, SeedReport)> {
    let authors = (0..50)
        .map(|i| principal(&format!("author-{i}"), format!("Author {i}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut t = Targets::default();
    let mut creates = Vec::with_capacity(a.items + a.polls);
    for i in 0..a.items {
        let item_id = FeedItemId(new_id());
        let content = match i % 3 {
            0 => FeedContent::Post {
                title: format!("Post {i}"),
                body: "A short post body, about the length of a sentence or two that \
                       people write under a picture of their lunch."
                    .into(),
            },
            1 => FeedContent::Game {
                name: format!("Game {i}"),
                location: "Court 3".into(),
            },
            _ => FeedContent::Team {
                room: format!("room-{i}"),
            },
        };
        creates.push(event(
            authors[i % authors.len()].clone(),
            EventData::FeedItemCreated(FeedItemCreated { item_id, content }),
        ));
        t.items.push(item_id);
    }
    for i in 0..a.polls {
        let poll_id = PollId(new_id());
        creates.push(event(
            authors[i % authors.len()].clone(),
            super::project::colour_poll(poll_id, format!("Poll {i}: which colour?")),
        ));
        t.polls.push(poll_id);
    }
    t.hot = t.items.iter().take(HOT_ITEMS).copied().collect();
    let mut actions = Vec::new();
    for &item_id in &t.hot {
        for j in 0..LIKES_PER_HOT {
            actions.push(event(
                principal(&format!("liker-{j}"), format!("Liker {j}"))?,
                EventData::FeedItemLiked(FeedItemRef { item_id }),
            ));
        }
    }
    for &poll_id in &t.polls {
        for j in 0..VOTES_PER_POLL {
            actions.push(event(
                principal(&format!("voter-{j}"), format!("Voter {j}"))?,
                EventData::VoteCast(VoteCast {
                    poll_id,
                    question_ids: vec![(j % 4) as u16],
                }),
            ));
        }
    }

    // Creations first (acknowledged), then what refers to them.
    let started = Instant::now();
    let mut last = Last::new();
    send_all(&app.producer, &creates, &mut last).await?;
    send_all(&app.producer, &actions, &mut last).await?;
    let produce_secs = started.elapsed().as_secs_f64();

    // Visible: every partition's last record, read with `?after`.
    let started = Instant::now();
    let polls_topic = app.producer.topic(Topic::Polls);
    for ((topic, _), (at, key)) in &last {
        let token = Token::from(at).encode();
        let path = if *topic == polls_topic {
            format!("/v1/polls/{key}?after={token}")
        } else {
            format!("/v1/feed?limit=1&after={token}")
        };
        loop {
            let res = http.get(format!("{base}{path}")).send().await?;
            let status = res.status();
            if status.is_success() {
                break;
            }
            anyhow::ensure!(
                status == reqwest::StatusCode::SERVICE_UNAVAILABLE
                    && started.elapsed() < VISIBLE_WITHIN,
                "the seed did not become visible: {status} {}",
                res.text().await.unwrap_or_default()
            );
        }
    }
    let visible_secs = started.elapsed().as_secs_f64();

    // Walk the timeline once: a check of the seed, and the cursors the
    // next-pages phase starts from.
    let mut cursor: Option<String> = None;
    let (mut timeline_items, mut timeline_pages) = (0, 0);
    loop {
        let mut url = format!("{base}/v1/feed?limit={PAGE}");
        if let Some(c) = &cursor {
            url.push_str("&cursor=");
            url.push_str(c);
        }
        let page: Page = http
            .get(url)
            .send()
            .await?
            .error_for_status()
            .context("walking the timeline")?
            .json()
            .await?;
        timeline_items += page.items.len();
        timeline_pages += 1;
        match page.next_cursor {
            Some(c) => {
                t.cursors.push(c.clone());
                cursor = Some(c);
            }
            None => break,
        }
    }
    if timeline_items != a.items {
        eprintln!(
            "warning: the timeline shows {timeline_items} items, {} were seeded",
            a.items
        );
    }
    Ok((
        t,
        SeedReport {
            events: creates.len() + actions.len(),
            produce_secs,
            visible_secs,
            timeline_items,
            timeline_pages,
        },
    ))
}

/// One client's record of a phase.
#[derive(Debug, Default)]
struct Tally {
    /// Latencies of the measured 200s.
    lat: Latencies,
    /// Measured failures by kind.
    errors: BTreeMap<String, u64>,
    /// Requests sent, warm-up included.
    sent: u64,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.lat.merge(&other.lat);
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
        self.sent += other.sent;
    }
}

fn micros(since: Instant) -> u32 {
    u32::try_from(since.elapsed().as_micros()).unwrap_or(u32::MAX)
}

/// Sends a GET and reads the whole body: the body of a 200, or what went
/// wrong (the status, or the transport error's kind).
async fn get(http: &reqwest::Client, url: &str) -> Result<bytes::Bytes, String> {
    let res = http.get(url).send().await.map_err(|e| error_kind(&e))?;
    let status = res.status();
    let body = res.bytes().await.map_err(|e| error_kind(&e))?;
    if status == reqwest::StatusCode::OK {
        Ok(body)
    } else {
        Err(status.as_u16().to_string())
    }
}

fn error_kind(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timeout".into()
    } else if e.is_connect() {
        "connect".into()
    } else {
        "transport".into()
    }
}

async fn client(
    http: reqwest::Client,
    base: String,
    kind: Kind,
    t: Arc<Targets>,
    seed: u64,
    measure_from: Instant,
    end: Instant,
) -> Tally {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut tally = Tally::default();
    let mut cursor: Option<String> = None;
    let mut left = 0u32;
    loop {
        let url = match kind {
            Kind::FirstPage => format!("{base}/v1/feed?limit={PAGE}"),
            Kind::NextPages => {
                let c = match cursor.take() {
                    Some(c) if left > 0 => c,
                    _ => {
                        left = WALK;
                        t.cursors[rng.gen_range(0..t.cursors.len())].clone()
                    }
                };
                let url = format!("{base}/v1/feed?limit={PAGE}&cursor={c}");
                left -= 1;
                url
            }
            Kind::Item => {
                let id = if !t.hot.is_empty() && rng.gen_bool(HOT_SHARE) {
                    t.hot[rng.gen_range(0..t.hot.len())]
                } else {
                    t.items[rng.gen_range(0..t.items.len())]
                };
                format!("{base}/v1/feed/{id}")
            }
            Kind::Poll => format!(
                "{base}/v1/polls/{}",
                t.polls[rng.gen_range(0..t.polls.len())]
            ),
        };
        let t0 = Instant::now();
        if t0 >= end {
            break;
        }
        let measured = t0 >= measure_from;
        let outcome = get(&http, &url).await;
        let us = micros(t0);
        tally.sent += 1;
        match outcome {
            Ok(body) => {
                if measured {
                    tally.lat.record_us(us.into());
                }
                if kind == Kind::NextPages {
                    cursor = serde_json::from_slice::<Page>(&body)
                        .ok()
                        .and_then(|p| p.next_cursor);
                }
            }
            Err(k) => {
                if measured {
                    *tally.errors.entry(k).or_default() += 1;
                }
            }
        }
    }
    tally
}

async fn phase(
    http: &reqwest::Client,
    base: &str,
    kind: Kind,
    targets: &Arc<Targets>,
    a: &ReadsArgs,
    views: &Arc<Generations>,
) -> Row {
    let (reads0, _) = views.counts();
    let start = Instant::now();
    let measure_from = start + Duration::from_secs(a.warmup_secs);
    let end = measure_from + Duration::from_secs(a.duration_secs);
    let mut tasks = JoinSet::new();
    for c in 0..a.clients {
        tasks.spawn(client(
            http.clone(),
            base.to_owned(),
            kind,
            targets.clone(),
            c as u64,
            measure_from,
            end,
        ));
    }
    let mut all = Tally::default();
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(t) => all.merge(t),
            Err(e) => {
                *all.errors
                    .entry(format!("client panicked: {e}"))
                    .or_default() += 1
            }
        }
    }
    let (reads1, _) = views.counts();
    let lat = &all.lat;
    Row {
        name: kind.name(),
        request: kind.request(),
        ok: lat.len(),
        errors: all.errors.values().sum(),
        error_kinds: all.errors,
        rps: lat.len() as f64 / a.duration_secs.max(1) as f64,
        p50_ms: lat.quantile_ms(0.5),
        p99_ms: lat.quantile_ms(0.99),
        p999_ms: lat.quantile_ms(0.999),
        max_ms: lat.max_ms(),
        view_reads_per_request: (reads1 - reads0) as f64 / all.sent.max(1) as f64,
    }
}

#[derive(Debug, Default)]
struct FreshTally {
    ack: Mutex<Latencies>,
    applied: Mutex<Latencies>,
    visible: Mutex<Latencies>,
    read_errors: Mutex<BTreeMap<String, u64>>,
    produce_errors: AtomicU64,
    sampled: AtomicU64,
    /// Microseconds from the start to the latest ack.
    last_ack_us: AtomicU64,
    /// Each partition's last acknowledged like.
    last: Mutex<HashMap<i32, Appended>>,
}

async fn freshness(
    app: &App,
    http: &reqwest::Client,
    base: &str,
    t: &Targets,
    a: &ReadsArgs,
) -> anyhow::Result<Freshness> {
    let tally = Arc::new(FreshTally::default());
    let ticks = Duration::from_secs(a.duration_secs).as_millis() / TICK.as_millis();
    let per_tick = a.rate as f64 * TICK.as_secs_f64();
    let mut interval = tokio::time::interval(TICK);
    let mut rng = SmallRng::seed_from_u64(99);
    let zipf = (a.skew > 0.0).then(|| crate::cli::loadgen::Zipf::new(t.items.len(), a.skew));
    let mut tasks = JoinSet::new();
    let mut n = 0u64;
    let views = &app.views;
    let ((reads0, writes0), requests0) = (views.counts(), views.requests());
    let start = Instant::now();
    for k in 1..=ticks {
        interval.tick().await;
        let due = (per_tick * k as f64).round() as u64;
        while n < due {
            let item_id = match &zipf {
                Some(z) => t.items[z.sample(&mut rng)],
                None => t.items[rng.gen_range(0..t.items.len())],
            };
            let ev = event(
                principal(&format!("fresh-{n}"), format!("Fresh {n}"))?,
                EventData::FeedItemLiked(FeedItemRef { item_id }),
            );
            let sample = n.is_multiple_of(a.sample_every);
            let producer = app.producer.clone();
            let watermarks = app.watermarks.clone();
            let http = http.clone();
            let base = base.to_owned();
            let tally = tally.clone();
            tasks.spawn(async move {
                let t0 = Instant::now();
                let at = match producer.send(&ev).await {
                    Ok(at) => at,
                    Err(_) => {
                        tally.produce_errors.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                };
                tally.ack.lock().record_us(micros(t0).into());
                tally
                    .last_ack_us
                    .fetch_max(u64::from(micros(start)), Ordering::Relaxed);
                {
                    let mut last = tally.last.lock();
                    let slot = last.entry(at.partition).or_insert_with(|| at.clone());
                    if at.offset > slot.offset {
                        *slot = at.clone();
                    }
                }
                if !sample {
                    return;
                }
                tally.sampled.fetch_add(1, Ordering::Relaxed);
                let url = format!(
                    "{base}/v1/feed/{item_id}?after={}",
                    Token::from(&at).encode()
                );
                // Beside the read: when the projector published the like
                // as applied (it runs in this process).
                let applied = async {
                    watermarks.reached(&at.topic, at.partition, at.offset).await;
                    micros(t0)
                };
                tokio::pin!(applied);
                let read = get(&http, &url);
                tokio::pin!(read);
                let mut applied_us = None;
                let read = loop {
                    tokio::select! {
                        us = &mut applied, if applied_us.is_none() => applied_us = Some(us),
                        r = &mut read => break r,
                    }
                };
                let visible_us = micros(t0);
                // A read answered from the row's own version may beat the
                // publish (which follows the checkpoint) by a little.
                if read.is_ok() && applied_us.is_none() {
                    applied_us = tokio::time::timeout(Duration::from_secs(1), applied)
                        .await
                        .ok();
                }
                match read {
                    Ok(_) => {
                        if let Some(us) = applied_us {
                            tally.applied.lock().record_us(us.into());
                        }
                        tally.visible.lock().record_us(visible_us.into());
                    }
                    Err(k) => *tally.read_errors.lock().entry(k).or_default() += 1,
                }
            });
            n += 1;
        }
        while tasks.try_join_next().is_some() {}
    }
    let secs = start.elapsed().as_secs_f64();
    while tasks.join_next().await.is_some() {}
    let acked_secs = tally.last_ack_us.load(Ordering::Relaxed) as f64 / 1e6;
    let ack = std::mem::take(&mut *tally.ack.lock());
    let vis = std::mem::take(&mut *tally.visible.lock());
    let applied = std::mem::take(&mut *tally.applied.lock());
    // Every like applied: each partition's last one read back (one read
    // each, taken out below with the sampled read-backs').
    let lasts: Vec<Appended> = tally.last.lock().values().cloned().collect();
    let mut catch_up = 0u64;
    for at in &lasts {
        let url = format!("{base}/v1/feed?limit=1&after={}", Token::from(at).encode());
        let deadline = Instant::now() + VISIBLE_WITHIN;
        loop {
            match get(http, &url).await {
                Ok(_) => {
                    catch_up += 1;
                    break;
                }
                Err(k) => anyhow::ensure!(
                    Instant::now() < deadline,
                    "the likes did not become visible: {k}"
                ),
            }
        }
    }
    let ((reads1, writes1), requests1) = (views.counts(), views.requests());
    let api_reads = vis.len() + catch_up;
    let likes = n.max(1) as f64;
    let statements = (reads1 - reads0 + writes1 - writes0).saturating_sub(api_reads);
    let requests = (requests1 - requests0).saturating_sub(api_reads);
    Ok(Freshness {
        target_rate: a.rate,
        skew: a.skew,
        secs,
        produced: n,
        produce_errors: tally.produce_errors.load(Ordering::Relaxed),
        offered_rate: n as f64 / secs,
        acked_rate: ack.len() as f64 / acked_secs.max(secs),
        ack_p50_ms: ack.quantile_ms(0.5),
        ack_p99_ms: ack.quantile_ms(0.99),
        applied: applied.len(),
        applied_p50_ms: applied.quantile_ms(0.5),
        applied_p99_ms: applied.quantile_ms(0.99),
        applied_max_ms: applied.max_ms(),
        sampled: tally.sampled.load(Ordering::Relaxed),
        visible: vis.len(),
        read_errors: std::mem::take(&mut *tally.read_errors.lock()),
        visible_p50_ms: vis.quantile_ms(0.5),
        visible_p99_ms: vis.quantile_ms(0.99),
        visible_p999_ms: vis.quantile_ms(0.999),
        visible_max_ms: vis.max_ms(),
        view_statements_per_event: statements as f64 / likes,
        view_requests_per_event: requests as f64 / likes,
    })
}

fn kinds(errors: &BTreeMap<String, u64>) -> String {
    errors
        .iter()
        .map(|(k, v)| format!("{k} x{v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn print_table(r: &Report) {
    println!(
        "bench reads: {} views, {}; {} cores shared by server and clients",
        r.views, r.kafka, r.cores
    );
    println!(
        "seed: {} items, {} polls ({} events) produced in {:.1} s, visible {:.1} s later; \
         timeline walk {} items in {} pages",
        r.items,
        r.polls,
        r.seed.events,
        r.seed.produce_secs,
        r.seed.visible_secs,
        r.seed.timeline_items,
        r.seed.timeline_pages
    );
    println!(
        "reads: {} clients, closed loop, {} s measured after {} s warm-up per phase",
        r.clients, r.duration_secs, r.warmup_secs
    );
    println!(
        "{:<44} {:>9} {:>7} {:>9} {:>8} {:>8} {:>8} {:>8} {:>7}",
        "request", "ok", "errors", "req/s", "p50 ms", "p99 ms", "p999 ms", "max ms", "q/req"
    );
    for row in &r.reads {
        println!(
            "{:<44} {:>9} {:>7} {:>9.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>7.2}",
            row.request,
            row.ok,
            row.errors,
            row.rps,
            row.p50_ms,
            row.p99_ms,
            row.p999_ms,
            row.max_ms,
            row.view_reads_per_request
        );
        if row.errors > 0 {
            println!("    errors: {}", kinds(&row.error_kinds));
        }
    }
    println!("(q/req: view-store reads per request, warm-up included)");
    if let Some(f) = &r.freshness {
        println!(
            "freshness: likes at {} events/s (item skew {}) for {:.1} s: {} produced ({:.0}/s offered, {:.0}/s acked), {} produce errors",
            f.target_rate,
            f.skew,
            f.secs,
            f.produced,
            f.offered_rate,
            f.acked_rate,
            f.produce_errors
        );
        println!(
            "{:<44} {:>9} {:>7} {:>8} {:>8} {:>8} {:>8}",
            "", "n", "errors", "p50 ms", "p99 ms", "p999 ms", "max ms"
        );
        println!(
            "{:<44} {:>9} {:>7} {:>8.2} {:>8.2} {:>8} {:>8}",
            "produce -> ack", f.produced, f.produce_errors, f.ack_p50_ms, f.ack_p99_ms, "", ""
        );
        println!(
            "{:<44} {:>9} {:>7} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
            "produce -> visible (GET /v1/feed/{id}?after)",
            f.visible,
            f.sampled - f.visible,
            f.visible_p50_ms,
            f.visible_p99_ms,
            f.visible_p999_ms,
            f.visible_max_ms
        );
        println!(
            "{:<44} {:>9} {:>7} {:>8.2} {:>8.2} {:>8} {:>8.2}",
            "  of which produce -> applied (projector)",
            f.applied,
            "",
            f.applied_p50_ms,
            f.applied_p99_ms,
            "",
            f.applied_max_ms
        );
        if !f.read_errors.is_empty() {
            println!("    errors: {}", kinds(&f.read_errors));
        }
        println!(
            "view store per like, once all applied: {:.3} statements, {:.3} requests (a batch counts once per partition it writes)",
            f.view_statements_per_event, f.view_requests_per_event
        );
    }
}
