//! `atelier up`, the binary as a user runs it, keeps what it accepted: under
//! a steady load of polls, votes, items, likes, joins and uploads (with the
//! exported models) it is SIGKILLed at
//! five random moments and restarted each time, then stopped with SIGTERM
//! and started again. Every write that got a 202 is visible exactly once,
//! the views equal the fold of what was accepted (plus, at most, writes
//! that were in flight at a kill and never answered), each upload has one
//! outcome and every stored image belongs to an accepted upload, and after the
//! SIGTERM every read answers what it answered before: at once, from the
//! view snapshot the stop wrote, and again after that snapshot is damaged
//! (set aside, the views rebuilt from the log). The views' memory budget
//! is small enough that their partitions are spilled to disk and read
//! back throughout.
//!
//! Each kill is shown to have landed on work: requests were in flight when
//! it struck (they fail with a transport error, never an answer).

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use crate::helpers::{SECRET, eventually, unique};

/// A running `atelier up`.
struct Up {
    child: Child,
    url: String,
}

impl Up {
    fn start(data: &Path, log: &Path, models: Option<&Path>) -> Up {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_atelier"))
            .args(["up", "--listen", "127.0.0.1:0"])
            .env("ATELIER_DATA_DIR", data)
            .env("ATELIER_AUTH__JWT_SECRET", SECRET)
            // Uploads are stylized with the exported models (none: no
            // uploads in the load).
            .env(
                "ATELIER_INFER__MODELS_DIR",
                models
                    .map(|m| m.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            )
            .env("ATELIER_LOG", "info")
            // Snapshots between the kills: each start reads the views from
            // the last one and the log after it.
            .env("ATELIER_VIEWS__SNAPSHOT_SECS", "1")
            // A memory budget the load's views outgrow: partitions are
            // spilled to disk and read back across the kills.
            .env("ATELIER_VIEWS__MEMORY_MB", "1")
            // An image stored without its event (a kill between the two)
            // is swept at the next start once it is this old.
            .env("ATELIER_UPLOADS__ORPHAN_GRACE_SECS", "3")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("atelier up starts");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut url = None;
        for line in lines.by_ref() {
            let line = line.unwrap();
            if let Some(u) = line.trim().strip_prefix("API") {
                url = Some(u.trim().to_owned());
                break;
            }
        }
        std::thread::spawn(move || for _ in lines {});
        Up {
            child,
            url: url.expect("atelier up prints the API URL"),
        }
    }

    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    fn term(mut self) -> std::process::ExitStatus {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        self.child.wait().unwrap()
    }
}

impl Drop for Up {
    /// A failed assertion leaves no process behind.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// What the load wrote: answered (202) and unanswered (in flight at a kill).
#[derive(Default)]
struct Written {
    /// Polls whose creation was answered.
    polls: Vec<String>,
    /// Items whose creation was answered.
    items: Vec<String>,
    /// (poll, question) → answered votes, and unanswered ones.
    votes: HashMap<(String, u64), (u64, u64)>,
    /// (item, "likes" | "members") → answered, unanswered.
    feed: HashMap<(String, &'static str), (u64, u64)>,
    /// Requests that failed without an answer, per run.
    lost_answers: u64,
    /// 404s for a poll or an item not yet in the views.
    not_yet: u64,
    /// Other answers than 202 and those 404s (none are expected).
    refused: Vec<String>,
    /// Uploads answered 202: (upload id, its owner).
    uploads: Vec<(String, String)>,
    /// Owners of uploads sent and never answered (each its own user).
    uploads_unanswered: Vec<String>,
}

fn token(user: &str) -> String {
    atelier::api::mint(SECRET, user, &user.to_uppercase(), 3600)
}

/// Posts; `Ok(Some(status, body))` when answered, `Ok(None)` when the
/// request went out and the connection broke before an answer (in flight
/// at a kill), `Err` when it never connected (the process is down).
async fn post(
    http: &reqwest::Client,
    url: &str,
    user: &str,
    body: Value,
) -> Result<Option<(u16, Value)>, ()> {
    let r = match http
        .post(url)
        .bearer_auth(token(user))
        .json(&body)
        .send()
        .await
    {
        Ok(r) => r,
        Err(e) if e.is_connect() => return Err(()),
        Err(_) => return Ok(None),
    };
    let s = r.status().as_u16();
    match r.bytes().await {
        Ok(b) => Ok(Some((s, serde_json::from_slice(&b).unwrap_or(Value::Null)))),
        // The status came, the body did not: the answer may not be 202.
        Err(_) => Ok(None),
    }
}

/// One load worker: until `stop`, creates a poll or an item now and then
/// and votes, likes and joins on what exists, each from a new user.
async fn load(
    worker: u64,
    url: String,
    w: Arc<parking_lot::Mutex<Written>>,
    users: Arc<std::sync::atomic::AtomicU64>,
    stop: tokio_util::sync::CancellationToken,
) {
    let http = reqwest::Client::new();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(worker ^ 0x5eed);
    // The process is down (killed): nothing was sent; wait for the stop.
    let down = || tokio::time::sleep(Duration::from_millis(20));
    while !stop.is_cancelled() {
        let user = format!(
            "u{}",
            users.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let (polls, items) = {
            let w = w.lock();
            (w.polls.len(), w.items.len())
        };
        let pick = rng.gen_range(0..10);
        if polls == 0 || pick == 0 {
            let body = json!({"head": format!("{user}'s poll"), "questions": ["a", "b", "c"]});
            match post(&http, &format!("{url}/v1/polls"), &user, body).await {
                Err(()) => down().await,
                Ok(Some((202, v))) => w
                    .lock()
                    .polls
                    .push(v["poll_id"].as_str().unwrap().to_owned()),
                Ok(Some((s, v))) => w.lock().refused.push(format!("create poll: {s} {v}")),
                Ok(None) => w.lock().lost_answers += 1,
            }
        } else if items == 0 || pick == 1 {
            let body =
                json!({"kind": "game", "name": format!("{user}'s game"), "location": "park"});
            match post(&http, &format!("{url}/v1/feed"), &user, body).await {
                Err(()) => down().await,
                Ok(Some((202, v))) => w
                    .lock()
                    .items
                    .push(v["item_id"].as_str().unwrap().to_owned()),
                Ok(Some((s, v))) => w.lock().refused.push(format!("create item: {s} {v}")),
                Ok(None) => w.lock().lost_answers += 1,
            }
        } else if pick < 6 {
            let (poll, q) = {
                let w = w.lock();
                (
                    w.polls[rng.gen_range(0..w.polls.len())].clone(),
                    rng.gen_range(0..3u64),
                )
            };
            let r = post(
                &http,
                &format!("{url}/v1/polls/{poll}/votes"),
                &user,
                json!({"question_ids": [q]}),
            )
            .await;
            let Ok(r) = r else {
                down().await;
                continue;
            };
            let mut w = w.lock();
            let e = w.votes.entry((poll, q)).or_default();
            match r {
                Some((202, _)) => e.0 += 1,
                None => {
                    e.1 += 1;
                    w.lost_answers += 1;
                }
                // Created, not yet in the views (just now, or while they
                // rebuild after a restart): refused, not lost.
                Some((404, _)) => w.not_yet += 1,
                Some((s, v)) => w.refused.push(format!("vote: {s} {v}")),
            }
        } else {
            let (item, what) = {
                let w = w.lock();
                let what = if pick < 8 { "likes" } else { "members" };
                (w.items[rng.gen_range(0..w.items.len())].clone(), what)
            };
            let r = post(
                &http,
                &format!("{url}/v1/feed/{item}/{what}"),
                &user,
                json!({}),
            )
            .await;
            let Ok(r) = r else {
                down().await;
                continue;
            };
            let mut w = w.lock();
            let e = w.feed.entry((item, what)).or_default();
            match r {
                Some((202, _)) => e.0 += 1,
                None => {
                    e.1 += 1;
                    w.lost_answers += 1;
                }
                Some((404, _)) => w.not_yet += 1,
                Some((s, v)) => w.refused.push(format!("{what}: {s} {v}")),
            }
        }
    }
}

/// The upload worker: until `stop`, each new user mints a session and
/// uploads an image into it.
async fn uploads(
    url: String,
    w: Arc<parking_lot::Mutex<Written>>,
    users: Arc<std::sync::atomic::AtomicU64>,
    stop: tokio_util::sync::CancellationToken,
) {
    use atelier::image::codec;
    let http = reqwest::Client::new();
    let image = codec::encode_png(codec::test_pattern(64, 64, 7).as_raw(), 64, 64).unwrap();
    let styles = ["sketch", "mosaic", "palette", "painterly"];
    let mut n = 0usize;
    while !stop.is_cancelled() {
        let user = format!(
            "p{}",
            users.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let session = match post(&http, &format!("{url}/v1/sessions"), &user, json!({})).await {
            Ok(Some((200, v))) => v["session_key"].as_str().map(str::to_owned),
            _ => None,
        };
        let Some(session) = session else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        n += 1;
        let form = reqwest::multipart::Form::new()
            .text("session_key", session)
            .text("slot", "1")
            .text("style", styles[n % styles.len()])
            .part(
                "image",
                reqwest::multipart::Part::bytes(image.clone()).file_name("a.png"),
            );
        let r = http
            .post(format!("{url}/v1/uploads"))
            .bearer_auth(token(&user))
            .multipart(form)
            .send()
            .await;
        let answer = match r {
            Ok(r) => {
                let s = r.status().as_u16();
                r.json::<Value>().await.ok().map(|v| (s, v))
            }
            Err(e) if e.is_connect() => {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            Err(_) => None,
        };
        let mut w = w.lock();
        match answer {
            Some((202, v)) => w
                .uploads
                .push((v["upload_id"].as_str().unwrap().to_owned(), user)),
            Some((s, v)) => w.refused.push(format!("upload: {s} {v}")),
            None => {
                w.uploads_unanswered.push(user);
                w.lost_answers += 1;
            }
        }
    }
}

/// Every upload has one outcome, and every image in the blob store
/// belongs to an accepted upload (its input, or its one output). `Err`
/// says what is off.
async fn check_uploads(url: &str, blobs: &Path, w: &Written) -> Result<usize, String> {
    let http = reqwest::Client::new();
    let status = |id: String, user: String| {
        let http = http.clone();
        async move {
            let r = http
                .get(format!("{url}/v1/uploads/{id}"))
                .bearer_auth(token(&user))
                .send()
                .await
                .ok()?;
            if r.status().as_u16() != 200 {
                return None;
            }
            let v: Value = r.json().await.ok()?;
            v["status"].as_str().map(str::to_owned)
        }
    };
    for (id, user) in &w.uploads {
        match status(id.clone(), user.clone()).await.as_deref() {
            Some("completed" | "failed") => {}
            s => return Err(format!("upload {id}: {s:?}, not an outcome")),
        }
    }
    // Every stored image lies under its upload's directory: the input as
    // uploads/{id}/{secret}/original.*, the output beside it (content-type
    // sidecars aside).
    let mut per_upload: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    if let Ok(ids) = std::fs::read_dir(blobs.join("uploads")) {
        for e in ids.flatten() {
            let id = e.file_name().to_string_lossy().into_owned();
            let entry = per_upload.entry(id).or_default();
            for f in files(&e.path()) {
                let name = f
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned();
                if name.ends_with(".content-type") {
                    continue;
                }
                if name.starts_with("original.") {
                    entry.0 += 1;
                } else {
                    entry.1 += 1;
                }
            }
        }
    }
    let answered: HashMap<&str, &str> = w
        .uploads
        .iter()
        .map(|(i, u)| (i.as_str(), u.as_str()))
        .collect();
    // A directory the sweep emptied holds no image.
    per_upload.retain(|_, (i, o)| *i + *o > 0);
    for (id, (inputs, outputs)) in &per_upload {
        let outcome = match answered.get(id.as_str()) {
            Some(user) => status(id.clone(), (*user).to_owned()).await,
            // Accepted while its answer was lost to a kill: one of the
            // unanswered users owns it.
            None => {
                let mut found = None;
                for user in &w.uploads_unanswered {
                    if let Some(s) = status(id.clone(), user.clone()).await {
                        found = Some(s);
                        break;
                    }
                }
                found
            }
        };
        match outcome.as_deref() {
            Some("completed") if *inputs == 1 && *outputs == 1 => {}
            Some("failed") if *inputs == 1 && *outputs == 0 => {}
            s => {
                return Err(format!(
                    "upload {id}: {inputs} input and {outputs} output images, status {s:?} \
                     (an orphan, or more than one outcome)"
                ));
            }
        }
    }
    for (id, _) in &w.uploads {
        if !per_upload.contains_key(id) {
            return Err(format!("upload {id}: answered 202, no image stored"));
        }
    }
    Ok(per_upload.len())
}

/// The files under `dir`.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// `atelier_view_partitions_read_back_total` on `/metrics`.
async fn spilled_read_back(url: &str) -> f64 {
    let text = reqwest::get(format!("{url}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("atelier_view_partitions_read_back_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

async fn get(http: &reqwest::Client, url: &str) -> (u16, Value) {
    match http.get(url).send().await {
        Ok(r) => {
            let s = r.status().as_u16();
            (s, r.json().await.unwrap_or(Value::Null))
        }
        Err(_) => (0, Value::Null),
    }
}

/// Every poll and item the load created, as the API reads them now.
async fn read_all(url: &str, w: &Written) -> BTreeMap<String, Value> {
    let http = reqwest::Client::new();
    let mut out = BTreeMap::new();
    for p in &w.polls {
        out.insert(
            format!("poll {p}"),
            get(&http, &format!("{url}/v1/polls/{p}")).await.1,
        );
    }
    for i in &w.items {
        out.insert(
            format!("item {i}"),
            get(&http, &format!("{url}/v1/feed/{i}")).await.1,
        );
    }
    out
}

/// Whether the reads hold what was written: every answered write exactly
/// once, at most the unanswered ones besides. `Err` says what is off.
fn check(reads: &BTreeMap<String, Value>, w: &Written) -> Result<(), String> {
    for p in &w.polls {
        let v = &reads[&format!("poll {p}")];
        let qs = v["questions"]
            .as_array()
            .ok_or_else(|| format!("poll {p}: {v}"))?;
        let mut sum = 0;
        for (q, got) in qs.iter().enumerate() {
            let got = got["votes"].as_u64().unwrap_or(0);
            let (yes, maybe) = w
                .votes
                .get(&(p.clone(), q as u64))
                .copied()
                .unwrap_or_default();
            if got < yes || got > yes + maybe {
                return Err(format!(
                    "poll {p} question {q}: {got} votes, {yes} answered and {maybe} unanswered"
                ));
            }
            sum += got;
        }
        if v["voters"].as_u64() != Some(sum) {
            return Err(format!("poll {p}: {} voters, {sum} votes", v["voters"]));
        }
    }
    for i in &w.items {
        let v = &reads[&format!("item {i}")];
        for (what, field) in [("likes", "likes"), ("members", "joined")] {
            let got = v[field].as_u64().ok_or_else(|| format!("item {i}: {v}"))?;
            let (yes, maybe) = w.feed.get(&(i.clone(), what)).copied().unwrap_or_default();
            if got < yes || got > yes + maybe {
                return Err(format!(
                    "item {i} {what}: {got}, {yes} answered and {maybe} unanswered"
                ));
            }
        }
        if let Some(r) = v["rejected"].as_object()
            && let Some((why, n)) = r.iter().find(|(_, n)| n.as_u64() != Some(0))
        {
            return Err(format!("item {i}: a write was applied twice ({why}: {n})"));
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_keeps_every_accepted_write_across_sigkill_and_sigterm() {
    let data: PathBuf = crate::helpers::scratch().join(format!("atelier-restart-{}", unique()));
    let log = crate::helpers::scratch().join(format!("atelier-restart-{}.log", unique()));
    eprintln!("atelier up's log: {}", log.display());
    let w = Arc::new(parking_lot::Mutex::new(Written::default()));
    let users = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut rng = rand::rngs::SmallRng::from_entropy();
    // With the exported models, uploads join the load.
    let models = crate::helpers::real("ATELIER_IT_MODELS").map(PathBuf::from);
    for run in 0..5 {
        let up = Up::start(&data, &log, models.as_deref());
        let stop = tokio_util::sync::CancellationToken::new();
        let mut workers: Vec<_> = (0..6)
            .map(|i| {
                tokio::spawn(load(
                    run * 100 + i,
                    up.url.clone(),
                    w.clone(),
                    users.clone(),
                    stop.clone(),
                ))
            })
            .collect();
        if models.is_some() {
            workers.push(tokio::spawn(uploads(
                up.url.clone(),
                w.clone(),
                users.clone(),
                stop.clone(),
            )));
        }
        let lost_before = w.lock().lost_answers;
        tokio::time::sleep(Duration::from_millis(rng.gen_range(700..2_500))).await;
        // The kill lands while the workers' requests are in flight.
        let killing = tokio::task::spawn_blocking(move || up.kill());
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.cancel();
        for t in workers {
            t.await.unwrap();
        }
        killing.await.unwrap();
        let lost = w.lock().lost_answers - lost_before;
        assert!(lost > 0, "run {run}: the kill struck no request in flight");
    }
    let w = Arc::try_unwrap(w).ok().unwrap().into_inner();
    assert!(
        w.refused.is_empty(),
        "{} writes refused, the first: {:?}",
        w.refused.len(),
        &w.refused[..w.refused.len().min(3)]
    );
    let answered: u64 = w.votes.values().map(|v| v.0).sum::<u64>()
        + w.feed.values().map(|v| v.0).sum::<u64>()
        + (w.polls.len() + w.items.len()) as u64;
    eprintln!(
        "{answered} writes answered 202 over 5 kills, {} unanswered, {} refused for a \
         target not yet in the views",
        w.lost_answers, w.not_yet
    );
    assert!(answered > 100, "the load wrote too little: {answered}");
    if models.is_some() {
        eprintln!(
            "{} uploads answered 202, {} unanswered",
            w.uploads.len(),
            w.uploads_unanswered.len()
        );
        assert!(w.uploads.len() > 5, "too few uploads: {}", w.uploads.len());
    }

    // After the last kill: everything answered is there (once the views
    // caught up with the log they rebuild from). Past the orphan grace, the
    // start's sweep removes images the kills left without their events.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let up = Up::start(&data, &log, models.as_deref());
    let before = eventually(120, "the views hold every answered write", || async {
        let r = read_all(&up.url, &w).await;
        check(&r, &w).ok().map(|()| r)
    })
    .await;
    // Settled: a second read answers the same.
    assert_eq!(read_all(&up.url, &w).await, before);
    // Those reads were answered from partitions spilled past the budget.
    let read_back = spilled_read_back(&up.url).await;
    assert!(
        read_back > 0.0,
        "no view partition was read back from the spill file: the budget was never in play"
    );
    if models.is_some() {
        let blobs = data.join("blobs");
        // Every upload has one outcome, and no image is orphaned.
        let deadline = std::time::Instant::now() + Duration::from_secs(300);
        let n = loop {
            match check_uploads(&up.url, &blobs, &w).await {
                Ok(n) => break n,
                Err(why) if std::time::Instant::now() > deadline => panic!("{why}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        };
        eprintln!("{n} uploads stored, each with one outcome");
    }
    let status = up.term();
    assert!(status.success(), "SIGTERM stops cleanly: {status}");

    // The clean stop wrote a snapshot: the first read after the start,
    // before any record is applied again, answers what it did before.
    let snapshot = data.join("views.snapshot");
    assert!(snapshot.exists(), "SIGTERM leaves a view snapshot");
    let up = Up::start(&data, &log, models.as_deref());
    assert_eq!(read_all(&up.url, &w).await, before);
    let status = up.term();
    assert!(status.success(), "{status}");

    // A damaged snapshot is set aside, never served: the views are rebuilt
    // from the log and answer the same.
    let mut bytes = std::fs::read(&snapshot).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    std::fs::write(&snapshot, &bytes).unwrap();
    let up = Up::start(&data, &log, models.as_deref());
    assert!(
        data.join("views.unusable").exists(),
        "the damaged snapshot is moved aside"
    );
    let after = eventually(
        120,
        "every read answers what it answered before",
        || async {
            let r = read_all(&up.url, &w).await;
            (r == before).then_some(r)
        },
    )
    .await;
    assert_eq!(after, before);
    let status = up.term();
    assert!(status.success(), "{status}");
    let _ = std::fs::remove_dir_all(&data);
}
