//! `atelier bench limits`: what the per-caller limits buy.
//!
//! Starts the API and projectors in this process on the embedded backends,
//! with the configured `[limits]`, and measures:
//!
//! 1. **A flood next to a steady writer.** A steady principal likes an item
//!    at `--steady-rate` per second, open loop (each request timed from when
//!    it was due, so a stall is not hidden by waiting for it), first alone,
//!    then while a flooding principal writes as fast as `--flood-clients`
//!    connections allow. It prints the steady writer's p50/p99/max in both
//!    phases with its refusals (there should be none), and the flood's
//!    accepted and refused (429) writes per second.
//! 2. **Many large uploads at once.** `--uploads` clients each send
//!    `--upload-mib` MiB uploads, trickled in 1 MiB chunks, over and over,
//!    while the process's resident memory is sampled every 20 ms. It prints
//!    the peak above the resident memory before the phase against the
//!    configured bound (`limits.upload_memory_mib`), and how many uploads
//!    were let in and how many were turned away (503 `uploads_busy`).
//!
//! The clients run in this process too, on the same cores; the upload
//! bodies are one shared buffer, so the memory measured is the server's.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use clap::Args;
use serde::Serialize;

use crate::app::{App, Roles};
use crate::cli::latency::Latencies;
use crate::config::{Config, Secret};

#[derive(Debug, Args)]
pub(crate) struct LimitsArgs {
    /// Seconds of each phase.
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    /// The steady principal's writes per second.
    #[arg(long, default_value_t = 50)]
    steady_rate: u64,
    /// Connections of the flooding principal, one write in flight each.
    #[arg(long, default_value_t = 64)]
    flood_clients: usize,
    /// Clients uploading at once in the memory phase.
    #[arg(long, default_value_t = 64)]
    uploads: usize,
    /// Size of each upload, in MiB.
    #[arg(long, default_value_t = 12)]
    upload_mib: usize,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// One phase of the steady writer.
#[derive(Debug, Serialize)]
struct Steady {
    phase: &'static str,
    writes: u64,
    refused: u64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

/// The flood's outcome.
#[derive(Debug, Serialize)]
struct Flood {
    accepted_per_sec: f64,
    refused_per_sec: f64,
    other: u64,
    retry_after_seen: bool,
}

/// The uploads phase.
#[derive(Debug, Serialize)]
struct Uploads {
    clients: usize,
    upload_mib: usize,
    offered_mib: usize,
    bound_mib: u32,
    slots: u32,
    rss_before_mib: f64,
    rss_peak_mib: f64,
    peak_above_before_mib: f64,
    admitted: u64,
    busy: u64,
    other: u64,
    /// Answers by status (0: no answer).
    statuses: std::collections::BTreeMap<u16, u64>,
}

#[derive(Debug, Serialize)]
struct Report {
    writes_per_sec: u32,
    writes_burst: u32,
    steady: Vec<Steady>,
    flood: Flood,
    uploads: Uploads,
}

pub(super) async fn run(mut cfg: Config, a: LimitsArgs) -> anyhow::Result<()> {
    anyhow::ensure!(a.steady_rate > 0, "--steady-rate must be at least 1");
    anyhow::ensure!(a.upload_mib > 0, "--upload-mib must be at least 1");
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    cfg.kafka.brokers = String::new();
    cfg.views.backend = crate::config::ViewBackend::Embedded;
    cfg.blobs = crate::config::BlobConfig::default();
    cfg.data_dir = std::env::temp_dir().join(format!("atelier-bench-limits-{run_id}"));
    cfg.http.listen = "127.0.0.1:0".parse()?;
    // Room for the uploads: a body as large as asked is read in full.
    cfg.uploads.max_bytes = cfg.uploads.max_bytes.max(a.upload_mib << 20);
    cfg.auth.jwt_secret = Secret(uuid::Uuid::new_v4().simple().to_string());
    cfg.auth.voter_key = Secret(uuid::Uuid::new_v4().simple().to_string());
    cfg.auth.link_key = Secret(uuid::Uuid::new_v4().simple().to_string());
    let app = App::start(
        cfg.clone(),
        Roles {
            infer: false,
            ..Roles::ALL
        },
    )
    .await?;
    let result = bench(&app, &cfg, &a).await;
    let stopped = app.stop().await;
    let _ = std::fs::remove_dir_all(&cfg.data_dir);
    let report = result?;
    stopped?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print(&report);
    }
    Ok(())
}

struct Client {
    http: reqwest::Client,
    base: String,
    secret: String,
}

impl Client {
    fn token(&self, user: &str) -> String {
        crate::api::mint(&self.secret, user, user, 3600)
    }

    async fn like(&self, token: &str, item: &str) -> Option<reqwest::Response> {
        self.http
            .post(format!("{}/v1/feed/{item}/likes", self.base))
            .bearer_auth(token)
            .send()
            .await
            .ok()
    }
}

async fn bench(app: &App, cfg: &Config, a: &LimitsArgs) -> anyhow::Result<Report> {
    let c = Arc::new(Client {
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(a.flood_clients + a.uploads + 8)
            .tcp_nodelay(true)
            .no_proxy()
            .timeout(Duration::from_secs(60))
            .build()?,
        base: app.url(),
        secret: cfg.auth.jwt_secret.expose().to_owned(),
    });
    // An item to like, visible before the first like.
    let owner = c.token("owner");
    let res = c
        .http
        .post(format!("{}/v1/feed", c.base))
        .bearer_auth(&owner)
        .json(&serde_json::json!({"kind": "post", "title": "Like me"}))
        .send()
        .await?;
    anyhow::ensure!(res.status() == 202, "creating the item: {}", res.status());
    let v: serde_json::Value = res.json().await?;
    let item = v["item_id"].as_str().context("item_id")?.to_owned();
    let tok = v["token"].as_str().context("token")?;
    let res = c
        .http
        .get(format!("{}/v1/feed/{item}?after={tok}", c.base))
        .send()
        .await?;
    anyhow::ensure!(res.status() == 200, "reading the item: {}", res.status());

    let d = Duration::from_secs(a.duration_secs);
    eprintln!(
        "bench limits: a steady writer at {}/s for {} s alone",
        a.steady_rate, a.duration_secs
    );
    let alone = steady(&c, &item, a.steady_rate, d, "alone").await;
    eprintln!(
        "then beside a flood of {} connections for {} s",
        a.flood_clients, a.duration_secs
    );
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new([
        AtomicU64::new(0),
        AtomicU64::new(0),
        AtomicU64::new(0),
        AtomicU64::new(0),
    ]);
    let mut flooders = tokio::task::JoinSet::new();
    for _ in 0..a.flood_clients {
        let (c, stop, counts, item) = (c.clone(), stop.clone(), counts.clone(), item.clone());
        flooders.spawn(async move {
            let token = c.token("flood");
            while !stop.load(Ordering::Relaxed) {
                match c.like(&token, &item).await {
                    Some(r) if r.status() == 202 => counts[0].fetch_add(1, Ordering::Relaxed),
                    Some(r) if r.status() == 429 => {
                        if r.headers().contains_key(reqwest::header::RETRY_AFTER) {
                            counts[3].store(1, Ordering::Relaxed);
                        }
                        counts[1].fetch_add(1, Ordering::Relaxed)
                    }
                    _ => counts[2].fetch_add(1, Ordering::Relaxed),
                };
            }
        });
    }
    // Let the flood reach its pace first.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let base = [
        counts[0].load(Ordering::Relaxed),
        counts[1].load(Ordering::Relaxed),
    ];
    let started = Instant::now();
    let flooded = steady(&c, &item, a.steady_rate, d, "beside a flood").await;
    let secs = started.elapsed().as_secs_f64();
    let flood = Flood {
        accepted_per_sec: (counts[0].load(Ordering::Relaxed) - base[0]) as f64 / secs,
        refused_per_sec: (counts[1].load(Ordering::Relaxed) - base[1]) as f64 / secs,
        other: counts[2].load(Ordering::Relaxed),
        retry_after_seen: counts[3].load(Ordering::Relaxed) == 1,
    };
    stop.store(true, Ordering::Relaxed);
    while flooders.join_next().await.is_some() {}

    eprintln!(
        "then {} clients uploading {} MiB each, over and over, for {} s",
        a.uploads, a.upload_mib, a.duration_secs
    );
    let uploads = uploads(&c, cfg, a, d).await?;
    Ok(Report {
        writes_per_sec: cfg.limits.writes_per_sec,
        writes_burst: cfg.limits.writes_burst,
        steady: vec![alone, flooded],
        flood,
        uploads,
    })
}

/// A steady writer, open loop: one like every `1/rate` s for `d`.
async fn steady(
    c: &Arc<Client>,
    item: &str,
    rate: u64,
    d: Duration,
    phase: &'static str,
) -> Steady {
    let token = Arc::new(c.token("steady"));
    let every = Duration::from_secs_f64(1.0 / rate as f64);
    let start = tokio::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let mut n = 0u32;
    loop {
        let due = start + every * n;
        if due.duration_since(start) >= d {
            break;
        }
        tokio::time::sleep_until(due).await;
        let (c, token, item) = (c.clone(), token.clone(), item.to_owned());
        tasks.spawn(async move {
            let r = c.like(&token, &item).await;
            let ok = r.is_some_and(|r| r.status() == 202);
            (due.elapsed(), ok)
        });
        n += 1;
    }
    let mut lat = Latencies::default();
    let (mut writes, mut refused) = (0, 0);
    while let Some(r) = tasks.join_next().await {
        if let Ok((took, ok)) = r {
            writes += 1;
            if ok {
                lat.record(took);
            } else {
                refused += 1;
            }
        }
    }
    Steady {
        phase,
        writes,
        refused,
        p50_ms: lat.quantile_ms(0.5),
        p99_ms: lat.quantile_ms(0.99),
        max_ms: lat.max_ms(),
    }
}

/// One upload over its own connection, its body (`head`, then `image`) sent
/// in 1 MiB chunks 20 ms apart; answers the status.
async fn trickle(
    base: &str,
    token: &str,
    content_type: &str,
    head: &[u8],
    image: &[u8],
) -> anyhow::Result<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let mut conn = tokio::net::TcpStream::connect(addr).await?;
    conn.set_nodelay(true)?;
    let request = format!(
        "POST /v1/uploads HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        head.len() + image.len()
    );
    conn.write_all(request.as_bytes()).await?;
    conn.write_all(head).await?;
    for chunk in image.chunks(1 << 20) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        // A refusal may come (and the connection close) before the body
        // is sent: the status says what happened.
        if conn.write_all(chunk).await.is_err() {
            break;
        }
    }
    let mut answer = vec![0u8; 64];
    let n = conn.read(&mut answer).await?;
    let line = String::from_utf8_lossy(&answer[..n]);
    line.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status in {line:?}"))
}

async fn uploads(
    c: &Arc<Client>,
    cfg: &Config,
    a: &LimitsArgs,
    d: Duration,
) -> anyhow::Result<Uploads> {
    // Each client is its own principal (the write limit is per principal)
    // with its own session; the image part, the bulk of each body, is one
    // buffer shared by all.
    let boundary = "atelierbenchlimits";
    let mut heads = Vec::new();
    for i in 0..a.uploads {
        let token = c.token(&format!("uploader-{i}"));
        let res = c
            .http
            .post(format!("{}/v1/sessions", c.base))
            .bearer_auth(&token)
            .send()
            .await?;
        let v: serde_json::Value = res.json().await?;
        let session = v["session_key"].as_str().context("session_key")?.to_owned();
        let mut head = String::new();
        for (name, value) in [
            ("session_key", session.as_str()),
            ("slot", "1"),
            ("style", "sketch"),
        ] {
            head.push_str(&format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            ));
        }
        heads.push((token, Bytes::from(head)));
    }
    // A JPEG's first bytes and filler: refused for what it is once read in
    // full; what is measured is the memory it holds meanwhile.
    let mut image = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"big.jpg\"\r\n\
         Content-Type: image/jpeg\r\n\r\n"
    )
    .into_bytes();
    image.extend_from_slice(&[0xFF, 0xD8, 0xFF, 0xE0]);
    image.resize(image.len() + (a.upload_mib << 20) - 4, 0x5A);
    image.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let image = Bytes::from(image);

    let rss_before = super::rss_mib();
    let peak = Arc::new(parking_lot::Mutex::new(rss_before));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, stop) = (peak.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let now = super::rss_mib();
                {
                    let mut p = peak.lock();
                    if now > *p {
                        *p = now;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let counts = Arc::new([AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)]);
    let statuses = Arc::new(parking_lot::Mutex::new(std::collections::BTreeMap::new()));
    let mut clients = tokio::task::JoinSet::new();
    let until = Instant::now() + d;
    for (token, head) in heads {
        let (c, image, counts) = (c.clone(), image.clone(), counts.clone());
        let statuses = statuses.clone();
        let ct = format!("multipart/form-data; boundary={boundary}");
        clients.spawn(async move {
            while Instant::now() < until {
                // Trickled in 1 MiB chunks, 20 ms apart: each upload is held
                // open a while, as over a real network.
                let status = trickle(&c.base, &token, &ct, &head, &image).await;
                *statuses
                    .lock()
                    .entry(*status.as_ref().unwrap_or(&0))
                    .or_insert(0) += 1;
                let slot = match status {
                    Ok(503) => 1,
                    Ok(s) if s < 500 => 0,
                    _ => 2,
                };
                counts[slot].fetch_add(1, Ordering::Relaxed);
                if slot == 1 {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        });
    }
    while clients.join_next().await.is_some() {}
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.await;
    let rss_peak = *peak.lock();
    Ok(Uploads {
        clients: a.uploads,
        upload_mib: a.upload_mib,
        offered_mib: a.uploads * a.upload_mib,
        bound_mib: cfg.limits.upload_memory_mib,
        slots: cfg.limits.uploads_in_flight,
        rss_before_mib: rss_before,
        rss_peak_mib: rss_peak,
        peak_above_before_mib: rss_peak - rss_before,
        admitted: counts[0].load(Ordering::Relaxed),
        busy: counts[1].load(Ordering::Relaxed),
        other: counts[2].load(Ordering::Relaxed),
        statuses: statuses.lock().clone(),
    })
}

fn print(r: &Report) {
    println!(
        "per-principal write limit: {}/s, bursts of {}",
        r.writes_per_sec, r.writes_burst
    );
    println!(
        "{:<16} {:>7} {:>8} {:>8} {:>8} {:>8}",
        "steady writer", "writes", "refused", "p50 ms", "p99 ms", "max ms"
    );
    for s in &r.steady {
        println!(
            "{:<16} {:>7} {:>8} {:>8.2} {:>8.2} {:>8.2}",
            s.phase, s.writes, s.refused, s.p50_ms, s.p99_ms, s.max_ms
        );
    }
    println!(
        "flood: {:.0} writes/s accepted, {:.0}/s refused with 429{} ({} other)",
        r.flood.accepted_per_sec,
        r.flood.refused_per_sec,
        if r.flood.retry_after_seen {
            " and Retry-After"
        } else {
            ""
        },
        r.flood.other
    );
    let u = &r.uploads;
    println!(
        "uploads: {} clients × {} MiB ({} MiB offered at once); bound {} MiB, {} slots",
        u.clients, u.upload_mib, u.offered_mib, u.bound_mib, u.slots
    );
    println!(
        "  resident memory {:.0} MiB before, {:.0} MiB at peak: {:.0} MiB above (bound {} MiB); {} let in, {} turned away (503), {} other",
        u.rss_before_mib,
        u.rss_peak_mib,
        u.peak_above_before_mib,
        u.bound_mib,
        u.admitted,
        u.busy,
        u.other
    );
    println!("  answers by status: {:?}", u.statuses);
}
