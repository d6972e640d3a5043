//! Rebuilding a view under load, and the operations surface around it:
//! `/metrics` as Prometheus text, consumer lag back to 0 when idle,
//! `/readyz`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{Backends, TestApp, eventually, unique};

const ADMIN: &str = "admin";

fn tallies(v: &Value) -> Vec<u64> {
    v["questions"]
        .as_array()
        .map(|qs| {
            qs.iter()
                .map(|q| q["votes"].as_u64().unwrap_or(0))
                .collect()
        })
        .unwrap_or_default()
}

/// POSTs to an operations route as the admin.
async fn replay_post(t: &TestApp, path: &str, body: Value) -> (u16, Value) {
    t.call(Method::POST, path, Some(ADMIN), Some(body)).await
}

async fn status(t: &TestApp, view: &str) -> Value {
    let (s, v) = t
        .call(Method::GET, "/v1/admin/replay", Some(ADMIN), None)
        .await;
    assert_eq!(s, 200, "{v}");
    v["views"]
        .as_array()
        .and_then(|vs| vs.iter().find(|x| x["view"] == view).cloned())
        .unwrap_or_else(|| panic!("no {view} in {v}"))
}

/// While votes stream in and readers read, `replay --view polls` rebuilds
/// into generation 1 and swaps: no read fails, no read sees a tally lower
/// than an earlier read of the same poll, and afterwards the tallies equal
/// the reference fold of every accepted vote.
async fn rebuild_under_load(b: Backends) {
    let Some(t) = TestApp::spawn(b).await else {
        return;
    };
    let t = Arc::new(t);
    let mut polls = Vec::new();
    for i in 0..3 {
        let (id, tok) = t
            .create_poll(
                "owner",
                json!({"head": format!("P{i}"), "questions": ["a", "b", "c"]}),
            )
            .await;
        let (s, v) = t.get(&format!("/v1/polls/{id}?after={tok}")).await;
        assert_eq!(s, 200, "{v}");
        polls.push(id);
    }
    // Reference: every accepted vote, by poll and question. Voters are all
    // distinct, so every tally only ever grows.
    let reference: Arc<Mutex<HashMap<String, [u64; 3]>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let run = unique();
    let writer = {
        let (t, polls, reference, stop, run) = (
            t.clone(),
            polls.clone(),
            reference.clone(),
            stop.clone(),
            run.clone(),
        );
        tokio::spawn(async move {
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let poll = &polls[n % polls.len()];
                let q = (n / polls.len()) % 3;
                let (s, v) = t
                    .post(
                        &format!("/v1/polls/{poll}/votes"),
                        &format!("v{run}{n}"),
                        json!({"question_ids": [q]}),
                    )
                    .await;
                assert_eq!(s, 202, "vote refused: {v}");
                reference.lock().entry(poll.clone()).or_default()[q] += 1;
                n += 1;
            }
            n
        })
    };
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (t, polls, stop) = (t.clone(), polls.clone(), stop.clone());
            tokio::spawn(async move {
                let mut seen: HashMap<String, Vec<u64>> = HashMap::new();
                let mut reads = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    for p in &polls {
                        let (s, v) = t.get(&format!("/v1/polls/{p}")).await;
                        assert_eq!(s, 200, "read failed during the rebuild: {v}");
                        let now = tallies(&v);
                        if let Some(before) = seen.get(p) {
                            for (q, (a, b)) in before.iter().zip(&now).enumerate() {
                                assert!(
                                    b >= a,
                                    "poll {p} question {q} went back from {a} to {b} (read {reads})"
                                );
                            }
                        }
                        seen.insert(p.clone(), now);
                        reads += 1;
                    }
                }
                reads
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (s, v) = replay_post(&t, "/v1/admin/replay", json!({"view": "polls"})).await;
    assert_eq!(s, 202, "{v}");
    assert_eq!(v["rebuilds"][0]["building"], 1, "{v}");
    // A second rebuild of the same view is refused while one runs.
    let (s, v) = replay_post(&t, "/v1/admin/replay", json!({"view": "polls"})).await;
    assert_eq!(s, 409, "{v}");
    assert_eq!(v["error"], "rebuild_in_progress");

    let started = Instant::now();
    let swapped = eventually(90, "the rebuilt generation is swapped in", || {
        let t = t.clone();
        async move {
            let st = status(&t, "polls").await;
            (st["active"] == 1).then_some(st)
        }
    })
    .await;
    assert_eq!(swapped["retired"], json!([0]), "{swapped}");
    assert_eq!(swapped["phase"], "idle");
    eprintln!("swapped after {:?}", started.elapsed());
    // Keep the load on across the swap for a while, then stop.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    let votes = writer.await.expect("writer");
    let mut reads = 0;
    for r in readers {
        reads += r.await.expect("reader");
    }
    assert!(
        votes > 10 && reads > 10,
        "load too light: {votes} votes, {reads} reads"
    );

    let expected: BTreeMap<String, Vec<u64>> = reference
        .lock()
        .iter()
        .map(|(k, v)| (k.clone(), v.to_vec()))
        .collect();
    for (p, want) in &expected {
        let p = p.clone();
        let want = want.clone();
        let t2 = t.clone();
        eventually(30, "tallies equal the reference fold", move || {
            let (t, p, want) = (t2.clone(), p.clone(), want.clone());
            async move { (tallies(&t.get(&format!("/v1/polls/{p}")).await.1) == want).then_some(()) }
        })
        .await;
    }

    // gc drops generation 0; reads keep answering from generation 1.
    let (s, v) = replay_post(&t, "/v1/admin/replay/gc", json!({})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["dropped"],
        json!([{"view": "polls", "generation": 0}]),
        "{v}"
    );
    for (p, want) in &expected {
        let (s, v) = t.get(&format!("/v1/polls/{p}")).await;
        assert_eq!(s, 200);
        assert_eq!(&tallies(&v), want);
    }
    assert_eq!(status(&t, "polls").await["retired"], json!([]));
    // Operations routes are for admins only.
    let (s, v) = t
        .call(Method::GET, "/v1/admin/replay", Some("owner"), None)
        .await;
    assert_eq!(s, 403, "{v}");
    assert_eq!(v["error"], "not_admin");
    let Ok(t) = Arc::try_unwrap(t) else {
        panic!("test tasks still hold the app")
    };
    t.stop().await;
}
both!(rebuild_under_load);

/// A dry run says what would be replayed and changes nothing.
async fn dry_run_changes_nothing(b: Backends) {
    let Some(t) = TestApp::spawn(b).await else {
        return;
    };
    let (id, tok) = t
        .create_poll("owner", json!({"head": "Q", "questions": ["a", "b"]}))
        .await;
    let _ = t.get(&format!("/v1/polls/{id}?after={tok}")).await;
    let (s, v) = replay_post(
        &t,
        "/v1/admin/replay",
        json!({"view": "all", "dry_run": true}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["rebuilds"].as_array().map(Vec::len), Some(3), "{v}");
    let polls = v["rebuilds"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["view"] == "polls")
        .unwrap();
    assert_eq!(polls["records"], 1, "{v}");
    let st = status(&t, "polls").await;
    assert_eq!(st["active"], 0);
    assert!(st["building"].is_null(), "{st}");
    let (s, v) = replay_post(&t, "/v1/admin/replay", json!({"view": "nope"})).await;
    assert_eq!(s, 422, "{v}");
    t.stop().await;
}
both!(dry_run_changes_nothing);

/// Parses the Prometheus text exposition format strictly enough to catch a
/// malformed line: `# HELP`/`# TYPE` comments, then samples
/// `name{label="value",...} number`.
/// One sample: metric name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

fn parse_prometheus(text: &str) -> Result<Vec<Sample>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_end();
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix('#') {
            let mut parts = rest.split_whitespace();
            match parts.next() {
                Some("TYPE") => {
                    let (Some(_), Some(kind)) = (parts.next(), parts.next()) else {
                        return Err(format!("line {}: bad TYPE: {line}", i + 1));
                    };
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                        return Err(format!("line {}: unknown type {kind}", i + 1));
                    }
                }
                Some("HELP") | None => {}
                Some(_) => {}
            }
            continue;
        }
        let (name_labels, value) = line
            .rsplit_once(' ')
            .ok_or_else(|| format!("line {}: no value: {line}", i + 1))?;
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v
                .parse()
                .map_err(|_| format!("line {}: bad value {v:?}", i + 1))?,
        };
        let (name, labels) = match name_labels.split_once('{') {
            None => (name_labels, BTreeMap::new()),
            Some((n, rest)) => {
                let body = rest
                    .strip_suffix('}')
                    .ok_or_else(|| format!("line {}: unclosed labels", i + 1))?;
                let mut labels = BTreeMap::new();
                let mut s = body;
                while !s.is_empty() {
                    let (k, after) = s
                        .split_once("=\"")
                        .ok_or_else(|| format!("line {}: bad label in {body}", i + 1))?;
                    // Values escape `"` and `\` with a backslash.
                    let mut val = String::new();
                    let mut chars = after.char_indices();
                    let mut end = None;
                    while let Some((j, c)) = chars.next() {
                        match c {
                            '\\' => {
                                if let Some((_, e)) = chars.next() {
                                    val.push(match e {
                                        'n' => '\n',
                                        other => other,
                                    });
                                }
                            }
                            '"' => {
                                end = Some(j);
                                break;
                            }
                            c => val.push(c),
                        }
                    }
                    let end = end.ok_or_else(|| format!("line {}: unterminated value", i + 1))?;
                    labels.insert(k.to_owned(), val);
                    s = after[end + 1..].trim_start_matches(',');
                }
                (n, labels)
            }
        };
        let ok = name.chars().enumerate().all(|(j, c)| {
            c.is_ascii_alphabetic() || c == '_' || c == ':' || (j > 0 && c.is_ascii_digit())
        });
        if name.is_empty() || !ok {
            return Err(format!("line {}: bad metric name {name:?}", i + 1));
        }
        out.push((name.to_owned(), labels, value));
    }
    Ok(out)
}

#[test]
fn the_parser_refuses_malformed_text() {
    assert!(parse_prometheus("a_total 1\n").is_ok());
    assert!(parse_prometheus("a_total{x=\"1\"} 2.5\n").is_ok());
    assert!(parse_prometheus("a_total{x=\"1\" 2\n").is_err());
    assert!(parse_prometheus("a total 2\n").is_err());
    assert!(parse_prometheus("a_total x\n").is_err());
    assert!(parse_prometheus("9a 1\n").is_err());
}

/// `/metrics` is Prometheus text with the pipeline's metrics in it, and
/// once the pipeline is idle every partition's lag reads 0; `/readyz` is
/// ready then.
async fn metrics_and_lag(b: Backends) {
    atelier::telemetry::prometheus().expect("the recorder installs");
    let Some(t) = TestApp::spawn(b).await else {
        return;
    };
    let (id, tok) = t
        .create_poll("owner", json!({"head": "M", "questions": ["a", "b"]}))
        .await;
    let (s, _) = t.get(&format!("/v1/polls/{id}?after={tok}")).await;
    assert_eq!(s, 200);
    let mut last = String::new();
    for i in 0..20 {
        let (s, v) = t
            .post(
                &format!("/v1/polls/{id}/votes"),
                &format!("m{i}"),
                json!({"question_ids": [i % 2]}),
            )
            .await;
        assert_eq!(s, 202);
        last = v["token"].as_str().unwrap().to_owned();
    }
    let (s, _) = t.get(&format!("/v1/polls/{id}?after={last}")).await;
    assert_eq!(s, 200);
    let polls_topic = t.app.config.kafka.topic(atelier::event::Topic::Polls);
    let samples = eventually(30, "every partition's lag reads 0", || {
        let t = &t;
        let polls_topic = polls_topic.clone();
        async move {
            let res = t.http.get(format!("{}/metrics", t.url)).send().await.ok()?;
            let text = res.text().await.ok()?;
            let samples = parse_prometheus(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
            let lag: Vec<_> = samples
                .iter()
                .filter(|(n, l, _)| {
                    n == "atelier_consumer_lag" && l.get("topic") == Some(&polls_topic)
                })
                .collect();
            (!lag.is_empty() && lag.iter().all(|(_, _, v)| *v == 0.0)).then_some(samples)
        }
    })
    .await;
    let names: std::collections::BTreeSet<&str> =
        samples.iter().map(|(n, _, _)| n.as_str()).collect();
    for want in [
        "atelier_consumed_total",
        "atelier_folded_total",
        "atelier_view_writes_total",
        "atelier_http_requests_total",
        "atelier_http_seconds_count",
        "atelier_fold_seconds_count",
        "atelier_view_write_seconds_count",
        "atelier_writes_per_event_count",
        "atelier_view_freshness_seconds_count",
        "atelier_ingest_events_total",
    ] {
        assert!(names.contains(want), "/metrics lacks {want}: {names:?}");
    }
    let (s, v) = t.get("/readyz").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["ready"], true);
    let (s, v) = t.get("/v1/pipeline").await;
    assert_eq!(s, 200, "{v}");
    let polls = v["topics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["topic"] == polls_topic.as_str())
        .unwrap_or_else(|| panic!("{v}"));
    assert_eq!(polls["consumed"], 21, "{v}");
    assert_eq!(polls["lag"], 0, "{v}");
    t.stop().await;
}
both!(metrics_and_lag);
