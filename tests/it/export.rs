//! `GET /v1/admin/export` and `atelier export`: whole views streamed out as
//! JSON Lines or CSV, in pages smaller than the data, each row equal to
//! what the single reads answer; to a file and to S3 through the real
//! binary; and a body cut short never leaves an export behind.

use std::collections::BTreeMap;
use std::time::Duration;

use atelier::blob::{BlobError, BlobStore, S3Blobs};
use bytes::Bytes;
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{Backends, TestApp, s3_blobs, unique};

/// Polls and feed items with votes, likes and joins, all applied: the
/// single reads of every poll and live item (by id), and the id of an item
/// deleted since.
struct Data {
    polls: BTreeMap<String, Value>,
    items: BTreeMap<String, Value>,
    deleted: String,
}

async fn seed(t: &TestApp) -> Data {
    let polls = [
        json!({"head": "Lunch?", "message": "Today, \"really\"\nsoon", "questions": ["Pizza", "Sushi"]}),
        // A text a spreadsheet would run: CSV makes it text.
        json!({"head": "=HYPERLINK(\"http://x\")", "questions": ["a", "b", "c"], "multiple_choice": true}),
        json!({"head": "Secret", "questions": ["yes", "no"], "anonymous": true}),
        json!({"head": "Ends", "questions": ["x", "y"], "ends_at": "2099-01-01T00:00:00Z"}),
        json!({"head": "Closed", "questions": ["x", "y"]}),
    ];
    let mut out = Data {
        polls: BTreeMap::new(),
        items: BTreeMap::new(),
        deleted: String::new(),
    };
    for (i, body) in polls.into_iter().enumerate() {
        let owner = ["ann", "bob"][i % 2];
        let (id, mut token) = t.create_poll(owner, body).await;
        let ballots: &[(&str, &[u16])] = match i {
            0 => &[("cid", &[1]), ("dan", &[0]), ("eve", &[1])],
            1 => &[("cid", &[0, 2]), ("dan", &[2])],
            2 => &[("cid", &[0])],
            _ => &[("dan", &[1])],
        };
        for (voter, questions) in ballots {
            let (s, v) = t
                .post(
                    &format!("/v1/polls/{id}/votes?after={token}"),
                    voter,
                    json!({"question_ids": questions}),
                )
                .await;
            assert_eq!(s, 202, "{v}");
            token = v["token"].as_str().unwrap().to_owned();
        }
        if i == 4 {
            let (s, v) = t
                .call(
                    Method::POST,
                    &format!("/v1/polls/{id}/close?after={token}"),
                    Some(owner),
                    None,
                )
                .await;
            assert_eq!(s, 202, "{v}");
            token = v["token"].as_str().unwrap().to_owned();
        }
        let (s, poll) = t.get(&format!("/v1/polls/{id}?after={token}")).await;
        assert_eq!(s, 200, "{poll}");
        out.polls.insert(id, poll);
    }

    let items = [
        (
            "ann",
            json!({"kind": "post", "title": "Hi", "body": "-1+1, \"quoted\""}),
        ),
        (
            "bob",
            json!({"kind": "game", "name": "Chess", "location": "Park"}),
        ),
        ("cid", json!({"kind": "team", "room": "@blue"})),
        ("ann", json!({"kind": "post", "title": "Gone"})),
        (
            "dan",
            json!({"kind": "game", "name": "Go", "location": "Hall"}),
        ),
    ];
    for (i, (author, body)) in items.into_iter().enumerate() {
        let (s, v) = t.post("/v1/feed", author, body).await;
        assert_eq!(s, 202, "{v}");
        let id = v["item_id"].as_str().unwrap().to_owned();
        let mut token = v["token"].as_str().unwrap().to_owned();
        let acts: &[(Method, &str, &str)] = match i {
            0 => &[
                (Method::POST, "likes", "bob"),
                (Method::POST, "likes", "cid"),
            ],
            1 => &[
                (Method::POST, "members", "ann"),
                (Method::POST, "likes", "ann"),
            ],
            2 => &[(Method::POST, "members", "dan")],
            3 => &[(Method::DELETE, "", "ann")],
            _ => &[],
        };
        for (method, what, who) in acts {
            let path = if what.is_empty() {
                format!("/v1/feed/{id}?after={token}")
            } else {
                format!("/v1/feed/{id}/{what}?after={token}")
            };
            let (s, v) = t.call(method.clone(), &path, Some(who), None).await;
            assert_eq!(s, 202, "{v}");
            token = v["token"].as_str().unwrap().to_owned();
        }
        let (s, item) = t.get(&format!("/v1/feed/{id}?after={token}")).await;
        if i == 3 {
            assert_eq!(s, 410, "{item}");
            out.deleted = id;
        } else {
            assert_eq!(s, 200, "{item}");
            out.items.insert(id, item);
        }
    }
    // The timeline copies are written before the aggregate (derived rows
    // first), so they are there once the single reads are.
    out
}

/// `GET /v1/admin/export?{query}` as the admin: status, content type, body.
async fn export(t: &TestApp, query: &str) -> (u16, String, String) {
    let res = t
        .http
        .get(format!("{}/v1/admin/export?{query}", t.url))
        .bearer_auth(t.token("admin"))
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    let ct = res
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (status, ct, res.text().await.unwrap())
}

fn json_lines(body: &str) -> Vec<Value> {
    assert!(body.is_empty() || body.ends_with('\n'), "{body:?}");
    body.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// The CSV records as maps from header to value.
fn csv_records(body: &str) -> Vec<BTreeMap<String, String>> {
    let mut r = csv::Reader::from_reader(body.as_bytes());
    let header: Vec<String> = r.headers().unwrap().iter().map(str::to_owned).collect();
    r.records()
        .map(|rec| {
            header
                .iter()
                .cloned()
                .zip(rec.unwrap().iter().map(str::to_owned))
                .collect()
        })
        .collect()
}

/// A JSON value as a CSV cell: strings as they are, absent as empty.
fn cell(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// User text as the CSV has it: formulas made text (the test data's only
/// formula starts with `=`, `-` or `@`).
fn text(v: &Value) -> String {
    let s = cell(v);
    if s.starts_with(['=', '-', '@']) {
        format!("'{s}")
    } else {
        s
    }
}

async fn exports_match_single_reads(b: Backends) {
    let Some(t) = TestApp::spawn(b).await else {
        return;
    };
    let data = seed(&t).await;

    // Polls as JSON Lines, in pages of 2 (5 polls: 3 pages): each line is
    // the poll as `GET /v1/polls/{id}` answers it.
    let (s, ct, body) = export(&t, "view=polls&format=json&page=2").await;
    assert_eq!((s, ct.as_str()), (200, "application/x-ndjson"), "{body}");
    let rows = json_lines(&body);
    let got: BTreeMap<String, Value> = rows
        .into_iter()
        .map(|p| (p["poll_id"].as_str().unwrap().to_owned(), p))
        .collect();
    assert_eq!(got, data.polls);

    // Polls as CSV: one record per question, a poll's records together.
    let (s, ct, body) = export(&t, "view=polls&format=csv&page=2").await;
    assert_eq!((s, ct.as_str()), (200, "text/csv; charset=utf-8"), "{body}");
    let records = csv_records(&body);
    let questions: usize = data
        .polls
        .values()
        .map(|p| p["questions"].as_array().unwrap().len())
        .sum();
    assert_eq!(records.len(), questions);
    let mut order: Vec<&str> = records.iter().map(|r| r["poll_id"].as_str()).collect();
    order.dedup();
    assert_eq!(
        order.len(),
        data.polls.len(),
        "a poll's records are consecutive"
    );
    for (id, poll) in &data.polls {
        let mine: Vec<_> = records.iter().filter(|r| &r["poll_id"] == id).collect();
        let qs = poll["questions"].as_array().unwrap();
        assert_eq!(mine.len(), qs.len(), "{id}");
        for (r, q) in mine.iter().zip(qs) {
            let want = [
                ("head", text(&poll["head"])),
                ("message", text(&poll["message"])),
                ("owner_id", cell(&poll["owner"]["id"])),
                ("owner_name", cell(&poll["owner"]["name"])),
                ("created_at", cell(&poll["created_at"])),
                ("ends_at", cell(&poll["ends_at"])),
                ("closed", cell(&poll["closed"])),
                ("closed_at", cell(&poll["closed_at"])),
                ("anonymous", cell(&poll["anonymous"])),
                ("multiple_choice", cell(&poll["multiple_choice"])),
                ("voters", cell(&poll["voters"])),
                ("question_id", cell(&q["id"])),
                ("question", text(&q["text"])),
                ("votes", cell(&q["votes"])),
            ];
            for (col, v) in want {
                assert_eq!(r[col], v, "{id} {col}");
            }
        }
    }
    let formula = records
        .iter()
        .find(|r| r["head"].contains("HYPERLINK"))
        .unwrap();
    assert_eq!(formula["head"], "'=HYPERLINK(\"http://x\")");

    // The feed as JSON Lines: every live item, newest first, as a timeline
    // page lists it (a subset of the single read's fields, equal).
    let (s, ct, body) = export(&t, "view=feed&format=json&page=2").await;
    assert_eq!((s, ct.as_str()), (200, "application/x-ndjson"), "{body}");
    let rows = json_lines(&body);
    let ids: Vec<&str> = rows
        .iter()
        .map(|r| r["item_id"].as_str().unwrap())
        .collect();
    let mut want_ids: Vec<&str> = data.items.keys().map(String::as_str).collect();
    let created = |id: &str| {
        let t = data.items[id]["created_at"].as_str().unwrap();
        chrono::DateTime::parse_from_rfc3339(t).unwrap()
    };
    want_ids.sort_unstable_by(|a, b| (created(b), b).cmp(&(created(a), a)));
    assert_eq!(ids, want_ids, "newest first, the deleted item absent");
    assert!(!ids.contains(&data.deleted.as_str()));
    for row in &rows {
        let read = &data.items[row["item_id"].as_str().unwrap()];
        for (k, v) in row.as_object().unwrap() {
            assert_eq!(&read[k], v, "{k} of {row}");
        }
        for k in ["kind", "author", "created_at", "likes", "joined"] {
            assert!(row.get(k).is_some(), "{k} missing from {row}");
        }
    }

    // The feed as CSV.
    let (s, _, body) = export(&t, "view=feed&format=csv&page=2").await;
    assert_eq!(s, 200, "{body}");
    let records = csv_records(&body);
    assert_eq!(
        records
            .iter()
            .map(|r| r["item_id"].as_str())
            .collect::<Vec<_>>(),
        want_ids
    );
    for r in &records {
        let read = &data.items[&r["item_id"]];
        for col in ["title", "body", "name", "location", "room"] {
            assert_eq!(r[col], text(&read[col]), "{col}");
        }
        assert_eq!(r["kind"], cell(&read["kind"]));
        assert_eq!(r["author_id"], text(&read["author"]["id"]));
        assert_eq!(r["author_name"], cell(&read["author"]["name"]));
        for col in ["created_at", "likes", "joined"] {
            assert_eq!(r[col], cell(&read[col]), "{col}");
        }
    }
    let team = records.iter().find(|r| r["kind"] == "team").unwrap();
    assert_eq!(team["room"], "'@blue");

    // One page for the lot gives the same bytes as many small pages.
    let (_, _, small) = export(&t, "view=polls&format=csv&page=1").await;
    let (_, _, large) = export(&t, "view=polls&format=csv").await;
    assert_eq!(small, large);

    // Refusals come before any byte, as JSON.
    let (s, _, body) = export(&t, "view=votes").await;
    assert_eq!(s, 400, "{body}");
    let (s, _, body) = export(&t, "view=polls&page=0").await;
    assert_eq!(s, 400, "{body}");
    assert!(body.contains("invalid_page"), "{body}");
    let (s, v) = t
        .call(
            Method::GET,
            "/v1/admin/export?view=polls",
            Some("ann"),
            None,
        )
        .await;
    assert_eq!((s, v["error"].as_str()), (403, Some("not_admin")), "{v}");
    let (s, _) = t.get("/v1/admin/export?view=polls").await;
    assert_eq!(s, 401);
    t.stop().await;
}
both!(exports_match_single_reads);

/// Runs the `atelier` binary with `args` and `envs`: success, stderr.
async fn atelier(args: &[&str], envs: &[(&str, String)]) -> (bool, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_atelier"))
        .args(args)
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .env(
            "ATELIER_DATA_DIR",
            crate::helpers::scratch().join(format!("atelier-export-{}", unique())),
        )
        .output()
        .await
        .expect("atelier runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The blob settings of `atelier export`'s S3 destination, as environment.
fn s3_env() -> Option<Vec<(&'static str, String)>> {
    let c = s3_blobs()?;
    Some(vec![
        ("ATELIER_BLOBS__ENDPOINT", c.endpoint),
        ("ATELIER_BLOBS__REGION", c.region),
        ("ATELIER_BLOBS__ACCESS_KEY", c.access_key),
        (
            "ATELIER_BLOBS__SECRET_KEY",
            c.secret_key.expose().to_owned(),
        ),
        ("ATELIER_BLOBS__FORCE_PATH_STYLE", "true".into()),
    ])
}

async fn cli_exports_to_a_file_and_to_s3(b: Backends) {
    let Some(t) = TestApp::spawn(b).await else {
        return;
    };
    let data = seed(&t).await;
    let token = t.token("admin");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("polls.csv");
    let (ok, err) = atelier(
        &[
            "export",
            "--api",
            &t.url,
            "--token",
            &token,
            "--view",
            "polls",
            "--format",
            "csv",
            "--page",
            "2",
            "--to",
            path.to_str().unwrap(),
        ],
        &[],
    )
    .await;
    assert!(ok, "{err}");
    let written = std::fs::read_to_string(&path).unwrap();
    let (_, _, api) = export(&t, "view=polls&format=csv").await;
    assert_eq!(written, api);
    assert!(
        err.contains(&format!(
            "exported {} polls ({} bytes) to {}",
            data.polls.len(),
            written.len(),
            path.display()
        )),
        "{err}"
    );
    assert!(!dir.path().join("polls.csv.partial").exists());

    // A refusal creates nothing.
    let refused = dir.path().join("refused.jsonl");
    let (ok, err) = atelier(
        &[
            "export",
            "--api",
            &t.url,
            "--token",
            &t.token("ann"),
            "--view",
            "feed",
            "--to",
            refused.to_str().unwrap(),
        ],
        &[],
    )
    .await;
    assert!(!ok && err.contains("not_admin"), "{err}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

    // To S3, on the real server: into the app's bucket, read back.
    if b == Backends::Real {
        let env = s3_env().expect("real backends have S3");
        let bucket = &t.app.config.blobs.bucket;
        let key = format!("exports/{}/feed.jsonl", unique());
        let (ok, err) = atelier(
            &[
                "export",
                "--api",
                &t.url,
                "--token",
                &token,
                "--view",
                "feed",
                "--to",
                &format!("s3://{bucket}/{key}"),
            ],
            &env,
        )
        .await;
        assert!(ok, "{err}");
        assert!(
            err.contains(&format!("exported {} items", data.items.len())),
            "{err}"
        );
        let s3 = S3Blobs::connect(&t.app.config.blobs).await.unwrap();
        let object = s3.get(&key).await.unwrap();
        let (_, _, api) = export(&t, "view=feed&format=json").await;
        assert_eq!(object, api.as_bytes());
        let meta = s3.head(&key).await.unwrap();
        assert_eq!(meta.content_type.as_deref(), Some("application/x-ndjson"));
    }
    t.stop().await;
}
both!(cli_exports_to_a_file_and_to_s3);

/// A stand-in for atelier whose export sends `bytes` bytes of rows, then
/// fails, as the real route does when the view store fails midway.
async fn cut_short_server(bytes: usize) -> String {
    let app = axum::Router::new().route(
        "/v1/admin/export",
        axum::routing::get(move || async move {
            let row = Bytes::from(format!("{}\n", "x".repeat(1023)));
            let rows = futures::stream::iter((0..bytes / row.len()).map(move |_| Ok(row.clone())));
            let failure = futures::stream::once(async {
                // Let what came before reach the client first.
                tokio::time::sleep(Duration::from_millis(300)).await;
                Err(std::io::Error::other("view store unavailable"))
            });
            axum::body::Body::from_stream(futures::StreamExt::chain(rows, failure))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_cut_short_leaves_no_file() {
    let url = cut_short_server(256 * 1024).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("polls.jsonl");
    let (ok, err) = atelier(
        &[
            "export",
            "--api",
            &url,
            "--token",
            "t",
            "--view",
            "polls",
            "--to",
            path.to_str().unwrap(),
        ],
        &[],
    )
    .await;
    assert!(!ok, "a truncated export must fail");
    assert!(err.contains("cut the export short"), "{err}");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "neither the file nor its .partial is left"
    );
}

/// Over one S3 part (8 MiB) before the failure: the multipart upload was
/// under way, and is aborted; no object appears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_cut_short_leaves_no_object() {
    let (Some(cfg), Some(env)) = (s3_blobs(), s3_env()) else {
        return;
    };
    let s3 = S3Blobs::connect(&cfg).await.unwrap();
    s3.ensure_bucket().await.unwrap();
    let url = cut_short_server(12 << 20).await;
    let key = "exports/cut.jsonl";
    let (ok, err) = atelier(
        &[
            "export",
            "--api",
            &url,
            "--token",
            "t",
            "--view",
            "polls",
            "--to",
            &format!("s3://{}/{key}", cfg.bucket),
        ],
        &env,
    )
    .await;
    assert!(!ok, "a truncated export must fail");
    assert!(err.contains("cut the export short"), "{err}");
    assert!(!err.contains("could not abort"), "{err}");
    assert!(matches!(s3.head(key).await, Err(BlobError::NotFound(_))));
}

/// The S3 writer on its own: a small object is one PUT, a large one a
/// multipart upload of growing parts, read back whole; an aborted one is
/// not there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_uploads_stream_in_parts() {
    let Some(cfg) = s3_blobs() else { return };
    let s3 = S3Blobs::connect(&cfg).await.unwrap();
    s3.ensure_bucket().await.unwrap();
    let data: Vec<u8> = (0..(11 << 20) + 12345).map(|i| (i % 251) as u8).collect();
    for (key, len) in [("small", 1000), ("large", data.len())] {
        let mut up = s3.upload(key, "text/plain", 0).unwrap();
        // Uneven writes: parts are cut from the buffer, not per write.
        for chunk in data[..len].chunks(777_777) {
            up.write(chunk).await.unwrap();
        }
        assert_eq!(up.finish().await.unwrap(), len as u64);
        assert_eq!(s3.get(key).await.unwrap(), &data[..len], "{key}");
    }
    // Aborted: the object is absent and the server dropped the parts.
    let mut up = s3.upload("aborted", "text/plain", 0).unwrap();
    up.write(&data).await.unwrap();
    let id = up.upload_id().expect("a part went up").to_owned();
    let parts = |id: String| {
        let (raw, bucket) = (raw_client(&cfg), cfg.bucket.clone());
        async move {
            let out = raw
                .list_parts()
                .bucket(bucket)
                .key("aborted")
                .upload_id(id)
                .send()
                .await;
            out.map(|o| o.parts().len())
        }
    };
    assert_eq!(parts(id.clone()).await.unwrap(), 2);
    up.abort().await.unwrap();
    assert!(matches!(
        s3.head("aborted").await,
        Err(BlobError::NotFound(_))
    ));
    // S3 answers NoSuchUpload; s3s-fs lists no parts.
    let after = parts(id).await;
    assert!(!matches!(after, Ok(n) if n > 0), "parts left: {after:?}");
}

/// A bare S3 client, for what the blob store does not offer (listing an
/// upload's parts).
fn raw_client(cfg: &atelier::config::BlobConfig) -> aws_sdk_s3::Client {
    let creds = aws_sdk_s3::config::Credentials::new(
        cfg.access_key.clone(),
        cfg.secret_key.expose().to_owned(),
        None,
        None,
        "test",
    );
    let conf = aws_sdk_s3::config::Builder::new()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new(cfg.region.clone()))
        .endpoint_url(&cfg.endpoint)
        .credentials_provider(creds)
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}
