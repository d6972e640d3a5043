//! Sessions, uploads and images are their owners': another user gets 404
//! on each read and 403 on the session's upload slot; administrators read
//! everything; a share link opens a session to whoever holds it; images are
//! served through signed, expiring links, privately cached.

use atelier::event::{
    EventData, ModelVersion, SessionKey, Style, StyleTransferCompleted, Timings, TransferRef,
    UploadId, UploadReceived,
};
use bytes::Bytes;
use serde_json::{Value, json};

use crate::helpers::{Backends, TestApp, event};

/// An upload of `who` into `session`, completed, with both images stored
/// (`input-bytes`, `output-bytes`); answers its id and the tokens of its two
/// events (two topics: read after each).
pub(crate) async fn completed_upload(
    t: &TestApp,
    who: &str,
    session: &SessionKey,
) -> (UploadId, Vec<String>) {
    let upload_id = UploadId(uuid::Uuid::now_v7());
    let style = Style::parse("mosaic").unwrap();
    let input = format!(
        "uploads/{upload_id}/{}/original.png",
        uuid::Uuid::new_v4().simple()
    );
    let output = format!("outputs/{upload_id}/mosaic/v1.jpg");
    t.app
        .blobs
        .put(&input, Bytes::from_static(b"input-bytes"), "image/png")
        .await
        .unwrap();
    t.app
        .blobs
        .put(&output, Bytes::from_static(b"output-bytes"), "image/jpeg")
        .await
        .unwrap();
    let received = event(
        who,
        EventData::UploadReceived(UploadReceived {
            upload_id,
            session_key: session.clone(),
            slot: 1,
            style: style.clone(),
            object_key: input.clone(),
            content_type: "image/png".into(),
            bytes: 11,
            width: 4,
            height: 4,
            sha256: "ab".repeat(32),
        }),
    );
    let done = event(
        who,
        EventData::StyleTransferCompleted(StyleTransferCompleted {
            upload: TransferRef {
                upload_id,
                session_key: session.clone(),
                slot: 1,
                style,
            },
            output_key: output,
            model_version: ModelVersion::parse("v1").unwrap(),
            timings: Timings {
                queue_ms: 1,
                decode_ms: 1,
                infer_ms: 1,
                encode_ms: 1,
                batch: 0,
            },
        }),
    );
    // Two topics: the answer is read after each write's own token.
    let mut tokens = Vec::new();
    for e in [&received, &done] {
        let at = t.app.producer.send(e).await.unwrap();
        tokens.push(atelier::api::Token::from(&at).encode());
    }
    (upload_id, tokens)
}

/// A raw GET: status, headers and body bytes.
async fn fetch(
    t: &TestApp,
    path: &str,
    user: Option<&str>,
) -> (u16, reqwest::header::HeaderMap, Bytes) {
    let mut req = t.http.get(format!("{}{path}", t.url));
    if let Some(u) = user {
        req = req.bearer_auth(t.token(u));
    }
    let res = req.send().await.unwrap();
    let (status, headers) = (res.status().as_u16(), res.headers().clone());
    (status, headers, res.bytes().await.unwrap())
}

fn png() -> Vec<u8> {
    use atelier::image::codec;
    codec::encode_png(codec::test_pattern(8, 8, 1).as_raw(), 8, 8).unwrap()
}

/// A multipart upload of a tiny PNG into `session` as `who`.
async fn upload_into(t: &TestApp, who: &str, session: &str) -> (u16, Value) {
    let form = reqwest::multipart::Form::new()
        .text("session_key", session.to_owned())
        .text("slot", "1")
        .text("style", "mosaic")
        .part(
            "image",
            reqwest::multipart::Part::bytes(png()).file_name("a.png"),
        );
    let res = t
        .http
        .post(format!("{}/v1/uploads", t.url))
        .bearer_auth(t.token(who))
        .multipart(form)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// The first SSE frame's event name of a stream, or the refusal's status.
async fn stream_first(t: &TestApp, path: &str, user: Option<&str>) -> Result<String, u16> {
    let mut req = t.http.get(format!("{}{path}", t.url));
    if let Some(u) = user {
        req = req.bearer_auth(t.token(u));
    }
    let mut res = req.send().await.unwrap();
    if res.status() != 200 {
        return Err(res.status().as_u16());
    }
    let mut buf = String::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while !buf.contains("\n\n") {
        let chunk = tokio::time::timeout_at(deadline, res.chunk())
            .await
            .expect("a first event within 10 s")
            .unwrap()
            .expect("the stream stays open");
        buf.push_str(&String::from_utf8_lossy(&chunk));
    }
    Ok(buf
        .lines()
        .find_map(|l| l.strip_prefix("event:"))
        .unwrap_or_default()
        .trim()
        .to_owned())
}

async fn sessions_uploads_and_images_are_their_owners(b: Backends) {
    let Some(t) = TestApp::spawn(b).await else {
        return;
    };
    // Ann mints a session; the key is hers and says nothing of her.
    let (s, minted) = t.post("/v1/sessions", "ann", json!({})).await;
    assert_eq!(s, 200, "{minted}");
    let key = minted["session_key"].as_str().unwrap().to_owned();
    assert!(!key.contains("ann"), "{key}");
    let session = SessionKey::parse(&key).unwrap();
    let (upload, tokens) = completed_upload(&t, "ann", &session).await;

    // The owner reads her cards (after both writes), her upload, its images.
    let cards = format!("/v1/sessions/{key}/cards");
    let mut v = Value::Null;
    for tok in &tokens {
        let (s, read) = t.get_as("ann", &format!("{cards}?after={tok}")).await;
        assert_eq!(s, 200, "{read}");
        v = read;
    }
    let card = &v["cards"][0];
    assert_eq!(card["status"], "completed", "{v}");
    for (s, v) in [
        t.get_as("ann", &format!("/v1/uploads/{upload}")).await,
        t.get_as("admin", &format!("/v1/uploads/{upload}")).await,
        t.get_as("admin", &cards).await,
    ] {
        assert_eq!(s, 200, "owner and administrator read it: {v}");
    }
    let input_url = card["input_url"].as_str().unwrap().to_owned();
    let output_url = card["output_url"].as_str().unwrap().to_owned();

    // Her list of sessions holds this one, with its latest upload and a
    // share link that opens it; nobody else's list does, an
    // administrator's included (a list is its caller's own).
    let after = tokens.last().unwrap();
    let (s, list) = t
        .get_as("ann", &format!("/v1/sessions?after={after}"))
        .await;
    assert_eq!(s, 200, "{list}");
    let mine: Vec<&Value> = list["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["session_key"] == key.as_str())
        .collect();
    assert_eq!(mine.len(), 1, "{list}");
    assert_eq!(mine[0]["last_upload_id"], upload.to_string(), "{list}");
    let (s, via) = t.get(mine[0]["link"]["cards_url"].as_str().unwrap()).await;
    assert_eq!(
        (s, via["cards"][0]["upload_id"].as_str()),
        (200, Some(&*upload.to_string())),
        "the listed share link opens the session: {via}"
    );
    for who in ["bob", "admin"] {
        let (s, list) = t.get_as(who, &format!("/v1/sessions?after={after}")).await;
        assert_eq!(s, 200, "{list}");
        assert!(
            !list.to_string().contains(&key),
            "{who} lists Ann's session: {list}"
        );
    }
    let (s, v) = t.get("/v1/sessions").await;
    assert_eq!((s, v["error"].as_str()), (401, Some("unauthorized")), "{v}");
    // Who a token names, as a signed-in client shows it.
    for (who, admin) in [("ann", false), ("admin", true)] {
        let (s, me) = t.get_as(who, "/v1/me").await;
        assert_eq!(s, 200, "{me}");
        assert_eq!(
            (me["id"].as_str(), me["admin"].as_bool()),
            (Some(who), Some(admin)),
            "{me}"
        );
    }

    // Another user, and an anonymous caller: 404 everywhere, as for an
    // upload or session that does not exist.
    for who in [Some("bob"), None] {
        let t = &t;
        let read = |path: String| async move {
            match who {
                Some(u) => t.get_as(u, &path).await,
                None => t.get(&path).await,
            }
        };
        let (s, v) = read(cards.clone()).await;
        assert_eq!(
            (s, v["error"].as_str()),
            (404, Some("unknown_session")),
            "{who:?}: {v}"
        );
        let (s, v) = read(format!("/v1/uploads/{upload}")).await;
        assert_eq!(
            (s, v["error"].as_str()),
            (404, Some("unknown_upload")),
            "{who:?}: {v}"
        );
        for variant in ["input", "output"] {
            let (s, _, body) = fetch(
                t,
                &format!("/v1/uploads/{upload}/image?variant={variant}"),
                who,
            )
            .await;
            assert_eq!(s, 404, "{who:?} {variant}: {body:?}");
        }
        assert_eq!(
            stream_first(t, &format!("/v1/stream?session={key}"), who).await,
            Err(404),
            "{who:?}: the session's stream"
        );
        assert_eq!(
            stream_first(t, &format!("/v1/stream?upload={upload}"), who).await,
            Err(404),
            "{who:?}: the upload's stream"
        );
    }
    // Bob's own session key is not Ann's, and her slot is not his.
    let (s, v) = upload_into(&t, "bob", &key).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (403, Some("not_your_session")),
        "{v}"
    );
    let (s, v) = upload_into(&t, "bob", "demo").await;
    assert_eq!(
        (s, v["error"].as_str()),
        (403, Some("not_your_session")),
        "{v}"
    );
    // Ann's upload passes the owner check (and stops at the style: this app
    // publishes no model).
    let (s, v) = upload_into(&t, "ann", &key).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (422, Some("unknown_style")),
        "{v}"
    );

    // The owner's stream starts with her cards.
    assert_eq!(
        stream_first(&t, &format!("/v1/stream?session={key}"), Some("ann")).await,
        Ok("cards".to_owned())
    );
    assert_eq!(
        stream_first(&t, &format!("/v1/stream?upload={upload}"), Some("ann")).await,
        Ok("upload".to_owned())
    );

    // Signed image links work for anyone, privately cached; a tampered or
    // re-targeted link does not.
    for (url, bytes) in [
        (&input_url, &b"input-bytes"[..]),
        (&output_url, b"output-bytes"),
    ] {
        let (s, h, body) = fetch(&t, url, None).await;
        assert_eq!((s, &body[..]), (200, bytes), "{url}");
        let cc = h["cache-control"].to_str().unwrap();
        assert!(cc.starts_with("private, max-age="), "{cc}");
    }
    let swapped = input_url.replace("variant=input", "variant=output");
    let (s, _, _) = fetch(&t, &swapped, None).await;
    assert_eq!(s, 404, "a link is bound to its variant");
    let stretched = {
        let exp: u64 = input_url
            .split("exp=")
            .nth(1)
            .and_then(|r| r.split('&').next())
            .unwrap()
            .parse()
            .unwrap();
        input_url.replace(&format!("exp={exp}"), &format!("exp={}", exp + 3600))
    };
    let (s, _, _) = fetch(&t, &stretched, None).await;
    assert_eq!(s, 404, "a link's expiry is signed");

    // A share link opens the session, its uploads and its stream to anyone
    // holding it; Bob cannot make one for Ann's session.
    let (s, v) = t
        .post(&format!("/v1/sessions/{key}/share"), "bob", json!({}))
        .await;
    assert_eq!(
        (s, v["error"].as_str()),
        (404, Some("unknown_session")),
        "{v}"
    );
    let (s, link) = t
        .post(&format!("/v1/sessions/{key}/share"), "ann", json!({}))
        .await;
    assert_eq!(s, 200, "{link}");
    let (s, v) = t.get(link["cards_url"].as_str().unwrap()).await;
    assert_eq!(
        (s, v["cards"][0]["upload_id"].as_str()),
        (200, Some(&*upload.to_string())),
        "{v}"
    );
    let grant = format!("exp={}&sig={}", link["exp"], link["sig"].as_str().unwrap());
    let (s, v) = t.get(&format!("/v1/uploads/{upload}?{grant}")).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        stream_first(&t, link["stream_url"].as_str().unwrap(), None).await,
        Ok("cards".to_owned())
    );
    // The link is the session's: another session of Ann's stays closed.
    let (_, other) = t.post("/v1/sessions", "ann", json!({})).await;
    let other = other["session_key"].as_str().unwrap();
    let (s, _) = t.get(&format!("/v1/sessions/{other}/cards?{grant}")).await;
    assert_eq!(s, 404);

    t.stop().await;
}
both!(sessions_uploads_and_images_are_their_owners);
