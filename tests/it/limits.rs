//! Limits per caller: a principal writing past `limits.writes_per_sec` gets
//! 429 with `Retry-After` while another principal's writes go through; an
//! address reading past `limits.reads_per_sec` without a token gets 429;
//! uploads past `limits.uploads_in_flight` or `limits.upload_memory_mib`
//! get 503 `uploads_busy`. Every refusal shows in `/metrics`.

use atelier::app::Roles;
use serde_json::{Value, json};

use crate::helpers::{self, Backends, TestApp};

async fn app(tune: impl FnOnce(&mut atelier::config::LimitsConfig)) -> TestApp {
    let mut cfg = helpers::config(Backends::Embedded).await.unwrap();
    tune(&mut cfg.limits);
    TestApp::start(
        cfg,
        Roles {
            infer: false,
            ..Roles::ALL
        },
    )
    .await
}

/// `atelier_limited_total{limit}` as `/metrics` shows it.
async fn limited(t: &TestApp, limit: &str) -> f64 {
    let text = t
        .http
        .get(format!("{}/metrics", t.url))
        .bearer_auth(t.token("ops"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find(|l| {
            l.starts_with("atelier_limited_total") && l.contains(&format!("limit=\"{limit}\""))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_principal_is_limited_and_another_is_not() {
    let t = app(|l| {
        l.writes_per_sec = 2;
        l.writes_burst = 5;
    })
    .await;
    let (poll, tok) = t
        .create_poll("owner", json!({"head": "Q", "questions": ["a", "b"]}))
        .await;
    let vote = |user: String| {
        let t = &t;
        let path = format!("{}/v1/polls/{poll}/votes?after={tok}", t.url);
        async move {
            let res = t
                .http
                .post(path)
                .bearer_auth(t.token(&user))
                .json(&json!({"question_ids": [0]}))
                .send()
                .await
                .unwrap();
            let retry = res
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            let status = res.status().as_u16();
            let body: Value = res.json().await.unwrap_or(Value::Null);
            (status, retry, body)
        }
    };
    let mut refused = 0;
    for _ in 0..20 {
        let (s, retry, body) = vote("flood".into()).await;
        if s == 429 {
            refused += 1;
            assert_eq!(body["error"], "rate_limited", "{body}");
            assert!(retry.is_some_and(|r| r >= 1), "Retry-After: {retry:?}");
        } else {
            assert_eq!(s, 202, "{body}");
        }
    }
    assert!(refused >= 10, "only {refused} of 20 refused");
    // Another principal, meanwhile: accepted.
    for i in 0..3 {
        let (s, _, body) = vote(format!("calm{i}")).await;
        assert_eq!(s, 202, "{body}");
    }
    assert!(limited(&t, "writes").await >= refused as f64);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_reading_too_fast_without_a_token_is_limited() {
    let t = app(|l| {
        l.reads_per_sec = 2;
        l.reads_burst = 5;
    })
    .await;
    let mut refused = 0;
    for _ in 0..20 {
        let (s, v) = t.get("/v1/styles").await;
        match s {
            429 => {
                refused += 1;
                assert_eq!(v["error"], "rate_limited", "{v}");
            }
            s => assert_eq!(s, 200, "{v}"),
        }
    }
    assert!(refused >= 10, "only {refused} of 20 refused");
    // With a token, reads are the principal's, not the address's.
    let res = t
        .http
        .get(format!("{}/v1/styles", t.url))
        .bearer_auth(t.token("ann"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let seen = limited(&t, "reads").await;
    assert!(
        seen >= refused as f64,
        "/metrics: {seen} read refusals, {refused} seen"
    );
    t.stop().await;
}

/// An upload whose body trickles in, by hand over TCP (chunked, so of
/// unknown length): it holds its slot and memory until the body ends, when
/// `stop` fires. `held` fires once it has gone unanswered for half a second
/// with its body open, i.e. holds its room. It is sent again if another
/// upload held the room when it came (a 503 `uploads_busy`); any other early
/// answer fails the test.
async fn slow_upload(
    t: &TestApp,
    held: tokio::sync::oneshot::Sender<()>,
    stop: tokio::sync::oneshot::Receiver<()>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = t.url.trim_start_matches("http://").to_owned();
    let boundary = "XXslowXX";
    let head = format!(
        "POST /v1/uploads HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: multipart/form-data; boundary={boundary}\r\n\
         Transfer-Encoding: chunked\r\n\r\n",
        t.token("slow")
    );
    let part = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"session_key\"\r\n\r\ns\r\n"
    );
    let chunk = |b: &str| format!("{:x}\r\n{b}\r\n", b.len());
    let mut tries = 0;
    let mut conn = loop {
        tries += 1;
        let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
        conn.write_all(head.as_bytes()).await.unwrap();
        conn.write_all(chunk(&part).as_bytes()).await.unwrap();
        // Not answered while its body is open.
        let mut early = vec![0u8; 512];
        match tokio::time::timeout(std::time::Duration::from_millis(500), conn.read(&mut early))
            .await
        {
            Ok(Ok(n)) => {
                let text = String::from_utf8_lossy(&early[..n]);
                assert!(
                    text.contains("uploads_busy") && tries < 20,
                    "answered early (try {tries}): {text}"
                );
            }
            _ => break conn,
        }
    };
    let _ = held.send(());
    let _ = stop.await;
    let end = format!("--{boundary}--\r\n");
    conn.write_all(format!("{}0\r\n\r\n", chunk(&end)).as_bytes())
        .await
        .unwrap();
    let mut answer = vec![0u8; 1024];
    let _ = conn.read(&mut answer).await;
}

async fn quick_upload(t: &TestApp) -> (u16, Value) {
    let form = reqwest::multipart::Form::new()
        .text("session_key", "quick")
        .text("slot", "1")
        .text("style", "sketch")
        .part(
            "image",
            reqwest::multipart::Part::bytes(vec![0xFF, 0xD8, 0xFF]).file_name("a.jpg"),
        );
    let res = t
        .http
        .post(format!("{}/v1/uploads", t.url))
        .bearer_auth(t.token("quick"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    let s = res.status().as_u16();
    (s, res.json().await.unwrap_or(Value::Null))
}

async fn busy_while_one_trickles(t: &TestApp, limit: &str) {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let (held_tx, held) = tokio::sync::oneshot::channel();
    let slow = slow_upload(t, held_tx, rx);
    tokio::pin!(slow);
    // Quick ones are sent only once the slow one holds its room: sent
    // together, a quick one could take the room first.
    tokio::select! {
        _ = &mut slow => panic!("the slow upload ended early"),
        _ = held => {}
    }
    // The slow one is in (it holds its room) once quick ones are refused.
    let v = tokio::select! {
        _ = &mut slow => panic!("the slow upload ended early"),
        v = helpers::eventually(10, "the slow upload to hold its room", || async {
            let (s, v) = quick_upload(t).await;
            (s == 503).then_some(v)
        }) => v,
    };
    assert_eq!(v["error"], "uploads_busy", "{v}");
    assert!(limited(t, limit).await >= 1.0);
    // Once it ends, uploads are let in again (this one is refused for what
    // it is, past the limits).
    tx.send(()).unwrap();
    slow.await;
    let (s, v) = quick_upload(t).await;
    assert_ne!(s, 503, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_past_the_slots_or_the_memory_are_refused_until_room_frees() {
    let t = app(|l| l.uploads_in_flight = 1).await;
    busy_while_one_trickles(&t, "uploads").await;
    t.stop().await;
    // A body of unknown length reserves the whole upload memory.
    let t = app(|l| {
        l.uploads_in_flight = 8;
        l.upload_memory_mib = 1;
    })
    .await;
    busy_while_one_trickles(&t, "uploads").await;
    t.stop().await;
}

/// Sends `head` and then `body` whole over a raw connection, reading
/// nothing until it is sent; answers what came back.
async fn send_then_read(t: &TestApp, head: &str, body: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = t.url.trim_start_matches("http://").to_owned();
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(body)
        .await
        .expect("the whole body is taken before the answer (no reset mid-send)");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        conn.read_to_end(&mut answer),
    )
    .await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// An upload past `uploads.max_bytes` (40 MB against 16 MiB) is answered a
/// readable 413 with its reason: after the body when the client sends it
/// whole first, before it when the client asks `Expect: 100-continue`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_upload_reads_its_413() {
    let t = app(|_| {}).await;
    let session = helpers::session_of("big");
    let boundary = "XXbigXX";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"session_key\"\r\n\r\n{session}\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.jpg\"\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(&[0xFF, 0xD8, 0xFF]);
    body.resize(40_000_000, 0);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let head = |expect: &str| {
        format!(
            "POST /v1/uploads HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
             Content-Type: multipart/form-data; boundary={boundary}\r\n\
             Content-Length: {}\r\n{expect}\r\n",
            t.token("big"),
            body.len()
        )
    };
    let answer = send_then_read(&t, &head(""), &body).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer:.300}");
    assert!(
        answer.contains("image_too_large") && answer.contains("uploads.max_bytes"),
        "{answer:.500}"
    );

    // With Expect: the 413 comes before the body (and no 100 Continue).
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = t.url.trim_start_matches("http://").to_owned();
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    conn.write_all(head("Expect: 100-continue\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(std::time::Duration::from_secs(10), conn.read(&mut buf))
        .await
        .expect("an answer before the body")
        .unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("image_too_large"), "{answer}");
    t.stop().await;
}
