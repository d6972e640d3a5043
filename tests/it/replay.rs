//! Rebuilding a view under load, and the operations surface around it:
//! `/metrics` as Prometheus text, consumer lag back to 0 when idle,
//! `/readyz`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use atelier::app::Roles;
use parking_lot::Mutex;
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{self, Backends, TestApp, eventually, unique};

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

/// A view rebuild from a time after the log's first record would swap in a
/// view without the records before it: refused with the count it would
/// lack, while a time before every record (the same as `earliest`) starts.
async fn partial_rebuild_is_refused(b: Backends) {
    let Some(t) = TestApp::spawn(b).await else {
        return;
    };
    let (id, tok) = t
        .create_poll("owner", json!({"head": "Q", "questions": ["a", "b"]}))
        .await;
    let _ = t.get(&format!("/v1/polls/{id}?after={tok}")).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let later = chrono::Utc::now().to_rfc3339();
    let (s, v) = replay_post(
        &t,
        "/v1/admin/replay",
        json!({"view": "polls", "from": later}),
    )
    .await;
    assert_eq!(s, 422, "{v}");
    assert_eq!(v["error"], "partial_rebuild", "{v}");
    assert!(
        v["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("lack the 1 records"),
        "{v}"
    );
    let st = status(&t, "polls").await;
    assert!(st["building"].is_null(), "nothing started: {st}");
    // The inference stage may start anywhere.
    let (s, v) = replay_post(
        &t,
        "/v1/admin/replay",
        json!({"stage": "infer", "from": later, "dry_run": true}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    // A time before every record is the log's start. (librdkafka's mock
    // cluster answers every offset-for-time query with the log's end, so
    // there any `from` is refused: safe, if stricter.)
    if b == Backends::Real {
        let (s, v) = replay_post(
            &t,
            "/v1/admin/replay",
            json!({"view": "polls", "from": 0, "dry_run": true}),
        )
        .await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["rebuilds"][0]["records"], 1, "{v}");
    }
    t.stop().await;
}
both!(partial_rebuild_is_refused);

/// One sample: metric name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

/// Parses the Prometheus text exposition format (`openmetrics-parser`, a
/// grammar that refuses malformed text) into samples; a summary or
/// histogram gives its `_count` and `_sum` samples.
fn parse_prometheus(text: &str) -> Result<Vec<Sample>, String> {
    use openmetrics_parser::PrometheusValue;
    let exposition =
        openmetrics_parser::prometheus::parse_prometheus(text).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for family in exposition.families.values() {
        for sample in family.iter_samples() {
            let labels: BTreeMap<String, String> = sample
                .get_labelset()
                .map_err(|e| e.to_string())?
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let name = &family.family_name;
            let mut push = |name: String, value: f64| out.push((name, labels.clone(), value));
            match &sample.value {
                PrometheusValue::Unknown(n) | PrometheusValue::Gauge(n) => {
                    push(name.clone(), n.as_f64())
                }
                PrometheusValue::Counter(c) => push(name.clone(), c.value.as_f64()),
                PrometheusValue::Summary(s) => {
                    push(format!("{name}_count"), s.count.unwrap_or(0) as f64);
                    push(
                        format!("{name}_sum"),
                        s.sum.as_ref().map_or(0.0, |n| n.as_f64()),
                    );
                }
                PrometheusValue::Histogram(h) => {
                    push(format!("{name}_count"), h.count.unwrap_or(0) as f64);
                    push(
                        format!("{name}_sum"),
                        h.sum.as_ref().map_or(0.0, |n| n.as_f64()),
                    );
                }
            }
        }
    }
    Ok(out)
}

#[test]
fn the_parser_refuses_malformed_text() {
    assert!(parse_prometheus("a_total 1\n").is_ok());
    // A label value may hold braces (route templates do).
    assert_eq!(
        parse_prometheus("# TYPE a_total counter\na_total{route=\"/v1/polls/{id}\"} 2.5\n")
            .unwrap(),
        vec![(
            "a_total".to_owned(),
            BTreeMap::from([("route".to_owned(), "/v1/polls/{id}".to_owned())]),
            2.5
        )]
    );
    assert!(parse_prometheus("a_total{x=\"1\" 2\n").is_err());
    assert!(parse_prometheus("a total 2\n").is_err());
    assert!(parse_prometheus("a_total x\n").is_err());
    assert!(parse_prometheus("9a 1\n").is_err());
}

/// Under a backlog (the API accepts, no projector runs yet) the pipeline's
/// lag is exactly what was accepted and `/readyz` answers 503 `not_ready`;
/// once the projectors have caught up, `/metrics` is Prometheus text with
/// the pipeline's metrics in it, every partition's lag reads 0, and
/// `/readyz` is ready.
async fn metrics_and_lag(b: Backends) {
    atelier::telemetry::prometheus().expect("the recorder installs");
    let Some(mut cfg) = helpers::config(b).await else {
        return;
    };
    cfg.http.ready_lag = 5;
    let mut t = TestApp::start(cfg, Roles::API).await;
    // Polls, not votes: a vote is refused until its poll is in the view.
    let (mut id, mut last) = (String::new(), String::new());
    for i in 0..21 {
        (id, last) = t
            .create_poll(
                &format!("owner{i}"),
                json!({"head": "M", "questions": ["a", "b"]}),
            )
            .await;
    }
    let polls_topic = t.app.config.kafka.topic(atelier::event::Topic::Polls);
    let topic_of = |v: &Value| {
        v["topics"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["topic"] == polls_topic.as_str())
            .cloned()
            .unwrap_or_else(|| panic!("{v}"))
    };
    // 21 records accepted, none applied: measured within a second.
    let v = eventually(10, "the backlog measured", || {
        let t = &t;
        async move {
            let (s, v) = t.get("/v1/pipeline").await;
            (s == 200 && v["lag"].as_u64() > Some(0)).then_some(v)
        }
    })
    .await;
    assert_eq!(topic_of(&v)["lag"], 21, "{v}");
    assert_eq!(topic_of(&v)["consumed"], 0, "{v}");
    assert_eq!(v["lag"], 21, "only the polls topic has records: {v}");
    let (s, v) = t.get("/readyz").await;
    assert_eq!((s, v["error"].as_str()), (503, Some("not_ready")), "{v}");

    t.app.start_projectors().await.expect("projectors start");
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
    // Each route answers one measurement for up to a second: the one taken
    // under the backlog may still be served.
    let v = eventually(10, "/readyz ready", || {
        let t = &t;
        async move {
            let (s, v) = t.get("/readyz").await;
            (s != 503).then_some((s, v))
        }
    })
    .await;
    assert_eq!(v.0, 200, "{}", v.1);
    assert_eq!(v.1["ready"], true);
    let (s, v) = t.get("/v1/pipeline").await;
    assert_eq!(s, 200, "{v}");
    let polls = topic_of(&v);
    assert_eq!(polls["consumed"], 21, "{v}");
    assert_eq!(polls["lag"], 0, "{v}");
    t.stop().await;
}
both!(metrics_and_lag);
