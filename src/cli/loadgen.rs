//! `atelier loadgen`: a steady rate of realistic traffic through the API:
//! many polls and feed items with Zipf-skewed popularity, many users; votes,
//! ballot replacements and retractions; likes, unlikes, joins, leaves and
//! new posts. It stops by itself after `--duration`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use parking_lot::Mutex;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use tokio::sync::Semaphore;

use super::latency::Latencies;
use crate::config::Config;

#[derive(Debug, Args)]
pub(super) struct LoadgenArgs {
    /// API base URL (default: from http.listen).
    #[arg(long, env = "ATELIER_API")]
    api: Option<String>,
    /// Requests per second.
    #[arg(long, default_value_t = 200)]
    rate: u64,
    /// Seconds to run.
    #[arg(long, default_value_t = 30)]
    duration: u64,
    /// Polls to create.
    #[arg(long, default_value_t = 100)]
    polls: usize,
    /// Feed items to create (posts, games and teams).
    #[arg(long, default_value_t = 100)]
    items: usize,
    /// Share of requests that are feed actions (the rest are votes).
    #[arg(long, default_value_t = 0.5)]
    feed_share: f64,
    /// Distinct voters.
    #[arg(long, default_value_t = 10_000)]
    voters: usize,
    /// Zipf exponent of poll popularity (0: uniform).
    #[arg(long, default_value_t = 1.1)]
    skew: f64,
    /// Requests in flight at most.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Random seed.
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

/// Ranks `0..n` drawn with probability proportional to `1/(k+1)^s`
/// (`rand_distr`'s Zipf, whose ranks start at 1); `s = 0` is uniform.
#[derive(Debug)]
pub struct Zipf(rand_distr::Zipf<f64>);

impl Zipf {
    /// A sampler over `n` ranks (at least one); a negative or NaN exponent
    /// counts as 0.
    pub fn new(n: usize, s: f64) -> Self {
        let s = if s.is_nan() { 0.0 } else { s.max(0.0) };
        Self(rand_distr::Zipf::new(n.max(1) as u64, s).expect("n ≥ 1 and s ≥ 0"))
    }

    /// One rank.
    pub fn sample<R: Rng>(&self, rng: &mut R) -> usize {
        use rand_distr::Distribution;
        (self.0.sample(rng) as usize).saturating_sub(1)
    }
}

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    client_err: AtomicU64,
    server_err: AtomicU64,
    failed: AtomicU64,
    latencies: Mutex<Latencies>,
}

pub(super) async fn run(cfg: Config, a: LoadgenArgs) -> anyhow::Result<()> {
    let cfg = crate::app::with_dev_auth(cfg)?;
    let secret = cfg.auth.jwt_secret.expose().to_owned();
    anyhow::ensure!(
        !secret.is_empty(),
        "loadgen signs tokens: configure auth.jwt_secret"
    );
    let base = a
        .api
        .clone()
        .unwrap_or_else(|| format!("http://{}", cfg.http.listen));
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(a.concurrency)
        .build()?;
    let voters: Vec<String> = (0..a.voters.max(1))
        .map(|i| {
            crate::api::mint(
                &secret,
                &format!("voter-{i}"),
                &format!("Voter {i}"),
                86_400,
            )
        })
        .collect();

    // Polls first; wait until the last is visible.
    let mut polls = Vec::with_capacity(a.polls);
    let mut last_token = String::new();
    for i in 0..a.polls.max(1) {
        let owner = crate::api::mint(&secret, &format!("owner-{}", i % 50), "Owner", 86_400);
        let v: serde_json::Value = http
            .post(format!("{base}/v1/polls"))
            .bearer_auth(owner)
            .json(&json!({
                "head": format!("Poll {i}"),
                "questions": ["red", "green", "blue", "yellow"],
                "multiple_choice": i % 5 == 0,
            }))
            .send()
            .await
            .with_context(|| format!("creating polls at {base}"))?
            .error_for_status()?
            .json()
            .await?;
        polls.push(v["poll_id"].as_str().unwrap_or_default().to_owned());
        last_token = v["token"].as_str().unwrap_or_default().to_owned();
    }
    http.get(format!(
        "{base}/v1/polls/{}?after={last_token}",
        polls[polls.len() - 1]
    ))
    .send()
    .await?
    .error_for_status()
    .context("polls did not become visible")?;
    let mut items = Vec::with_capacity(a.items);
    for i in 0..a.items.max(1) {
        let author = crate::api::mint(&secret, &format!("author-{}", i % 50), "Author", 86_400);
        let body = match i % 3 {
            0 => json!({"kind": "post", "title": format!("Post {i}"), "body": "hello"}),
            1 => json!({"kind": "game", "name": format!("Game {i}"), "location": "park"}),
            _ => json!({"kind": "team", "room": format!("Room {i}")}),
        };
        let v: serde_json::Value = http
            .post(format!("{base}/v1/feed"))
            .bearer_auth(author)
            .json(&body)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        items.push((
            v["item_id"].as_str().unwrap_or_default().to_owned(),
            i % 3 != 0,
        ));
        last_token = v["token"].as_str().unwrap_or_default().to_owned();
    }
    http.get(format!(
        "{base}/v1/feed/{}?after={last_token}",
        items[items.len() - 1].0
    ))
    .send()
    .await?
    .error_for_status()
    .context("feed items did not become visible")?;
    eprintln!(
        "created {} polls and {} feed items; driving {} req/s for {} s",
        polls.len(),
        items.len(),
        a.rate,
        a.duration
    );

    let zipf = Zipf::new(polls.len(), a.skew);
    let item_zipf = Zipf::new(items.len(), a.skew);
    let tally = Arc::new(Tally::default());
    let sem = Arc::new(Semaphore::new(a.concurrency.max(1)));
    let mut rng = SmallRng::seed_from_u64(a.seed);
    let start = Instant::now();
    let end = start + Duration::from_secs(a.duration);
    let total = a.rate * a.duration;
    let period = Duration::from_secs_f64(1.0 / a.rate.max(1) as f64);
    let mut next = Instant::now();
    let mut sent = 0u64;
    while sent < total && Instant::now() < end {
        next += period;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            tokio::time::sleep(wait).await;
        }
        let permit = sem.clone().acquire_owned().await?;
        let voter = voters[rng.gen_range(0..voters.len())].clone();
        let roll: f64 = rng.r#gen();
        let req = if rng.gen_bool(a.feed_share.clamp(0.0, 1.0)) {
            let (item, joinable) = &items[item_zipf.sample(&mut rng)];
            match roll {
                r if r < 0.01 => http
                    .post(format!("{base}/v1/feed"))
                    .json(&json!({"kind": "post", "title": "A new post", "body": "hi"})),
                r if r < 0.60 => http.post(format!("{base}/v1/feed/{item}/likes")),
                r if r < 0.75 => http.delete(format!("{base}/v1/feed/{item}/likes")),
                r if r < 0.90 && *joinable => http.post(format!("{base}/v1/feed/{item}/members")),
                _ if *joinable => http.delete(format!("{base}/v1/feed/{item}/members")),
                _ => http.post(format!("{base}/v1/feed/{item}/likes")),
            }
        } else {
            let poll = polls[zipf.sample(&mut rng)].clone();
            if roll < 0.05 {
                http.delete(format!("{base}/v1/polls/{poll}/votes"))
            } else {
                let q: u16 = rng.gen_range(0..4);
                http.post(format!("{base}/v1/polls/{poll}/votes"))
                    .json(&json!({ "question_ids": [q] }))
            }
        }
        .bearer_auth(voter);
        let tally = tally.clone();
        tokio::spawn(async move {
            let t0 = Instant::now();
            match req.send().await {
                Ok(r) if r.status().is_success() => tally.ok.fetch_add(1, Ordering::Relaxed),
                Ok(r) if r.status().is_client_error() => {
                    tally.client_err.fetch_add(1, Ordering::Relaxed)
                }
                Ok(_) => tally.server_err.fetch_add(1, Ordering::Relaxed),
                Err(_) => tally.failed.fetch_add(1, Ordering::Relaxed),
            };
            tally.latencies.lock().record(t0.elapsed());
            drop(permit);
        });
        sent += 1;
    }
    // Wait for the requests in flight.
    let _ = sem.acquire_many(a.concurrency.max(1) as u32).await?;
    let elapsed = start.elapsed().as_secs_f64();
    let lat = std::mem::take(&mut *tally.latencies.lock());
    println!(
        "sent {sent} in {elapsed:.1} s ({:.0}/s): {} accepted, {} 4xx, {} 5xx, {} failed; latency p50 {:.2} ms p99 {:.2} ms",
        sent as f64 / elapsed,
        tally.ok.load(Ordering::Relaxed),
        tally.client_err.load(Ordering::Relaxed),
        tally.server_err.load(Ordering::Relaxed),
        tally.failed.load(Ordering::Relaxed),
        lat.quantile_ms(0.5),
        lat.quantile_ms(0.99),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipf_prefers_low_ranks() {
        let z = Zipf::new(100, 1.1);
        let mut rng = SmallRng::seed_from_u64(1);
        let mut counts = [0u32; 100];
        for _ in 0..10_000 {
            counts[z.sample(&mut rng)] += 1;
        }
        assert!(counts[0] > counts[10] && counts[10] > counts[90]);
        assert!(counts.iter().sum::<u32>() == 10_000, "every rank in 0..100");
    }

    #[test]
    fn zipf_of_exponent_0_is_uniform() {
        let z = Zipf::new(4, 0.0);
        let mut rng = SmallRng::seed_from_u64(2);
        let mut counts = [0u32; 4];
        for _ in 0..40_000 {
            counts[z.sample(&mut rng)] += 1;
        }
        assert!(
            counts.iter().all(|&c| (9_000..11_000).contains(&c)),
            "{counts:?}"
        );
    }
}
