//! Cards and job status: uploads and completions, two topics, merged in any
//! order into a session's cards and each upload's status; one query each.

use atelier::event::{
    Event, EventData, EventId, ModelVersion, Principal, SessionKey, Style, StyleTransferCompleted,
    StyleTransferFailed, StyleTransferStarted, Timings, TransferRef, UploadId, UploadReceived,
    UserId,
};
use serde_json::Value;

use crate::helpers::{Backends, TestApp, session_of};

fn ev(data: EventData) -> Event {
    Event {
        id: EventId(uuid::Uuid::now_v7()),
        time: atelier::edge::now(),
        principal: Principal {
            id: UserId::parse("ann").unwrap(),
            name: "Ann".into(),
            avatar_url: None,
        },
        data,
    }
}

fn lifecycle(session: &SessionKey, upload: UploadId, slot: u8, fail: bool) -> Vec<Event> {
    let style = Style::parse("mosaic").unwrap();
    let r = TransferRef {
        upload_id: upload,
        session_key: session.clone(),
        slot,
        style: style.clone(),
    };
    let v = ModelVersion::parse("v1").unwrap();
    let end = if fail {
        EventData::StyleTransferFailed(StyleTransferFailed {
            upload: r.clone(),
            reason: "corrupt image".into(),
            retriable: false,
        })
    } else {
        EventData::StyleTransferCompleted(StyleTransferCompleted {
            upload: r.clone(),
            output_key: format!("outputs/{upload}/mosaic/v1.png"),
            model_version: v.clone(),
            timings: Timings {
                queue_ms: 1,
                decode_ms: 2,
                infer_ms: 3,
                encode_ms: 4,
                batch: 0,
            },
        })
    };
    vec![
        ev(EventData::UploadReceived(UploadReceived {
            upload_id: upload,
            session_key: session.clone(),
            slot,
            style,
            object_key: format!("uploads/{upload}"),
            content_type: "image/png".into(),
            bytes: 1234,
            width: 64,
            height: 48,
            sha256: "ab".repeat(32),
        })),
        ev(EventData::StyleTransferStarted(StyleTransferStarted {
            upload: r,
            model_version: v,
        })),
        ev(end),
    ]
}

async fn send(t: &TestApp, e: &Event) -> String {
    let at = t.app.producer.send(e).await.unwrap();
    atelier::api::Token::from(&at).encode()
}

fn slot(v: &Value, n: u64) -> Value {
    v["cards"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["slot"] == n)
        .cloned()
        .unwrap_or(Value::Null)
}

async fn cards_merge_uploads_and_completions(b: Backends) {
    let Some(t) = TestApp::spawn(b).await else {
        return;
    };
    let session = session_of("ann");
    let a = UploadId(uuid::Uuid::now_v7());
    tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    let bad = UploadId(uuid::Uuid::now_v7());
    let la = lifecycle(&session, a, 1, false);
    let lb = lifecycle(&session, bad, 2, true);
    // Completions before the upload they finish: the merge does not care.
    let mut toks = Vec::new();
    for e in [&la[2], &la[1], &lb[0], &la[0], &lb[2]] {
        toks.push(send(&t, e).await);
    }
    // Read your writes on both topics.
    for tok in &toks {
        let (s, v) = t
            .get_as("ann", &format!("/v1/sessions/{session}/cards?after={tok}"))
            .await;
        assert_eq!(s, 200, "{v}");
    }
    let (_, v) = t
        .get_as("ann", &format!("/v1/sessions/{session}/cards"))
        .await;
    let one = slot(&v, 1);
    assert_eq!(one["status"], "completed", "{v}");
    assert_eq!(one["upload_id"], a.to_string());
    // Signed links to the images; where they lie is never said.
    let input = one["input_url"].as_str().unwrap_or_default();
    assert!(
        input.starts_with(&format!("/v1/uploads/{a}/image?variant=input&exp=")),
        "{one}"
    );
    let output = one["output_url"].as_str().unwrap_or_default();
    assert!(
        output.starts_with(&format!("/v1/uploads/{a}/image?variant=output&exp=")),
        "{one}"
    );
    assert!(!v.to_string().contains(&format!("\"uploads/{a}\"")), "{v}");
    assert!(
        one.get("input_key").is_none() && one.get("output_key").is_none(),
        "{one}"
    );
    assert_eq!(one["width"], 64);
    assert!(one["started_at"].is_string(), "{one}");
    let two = slot(&v, 2);
    assert_eq!(two["status"], "failed", "{v}");
    assert_eq!(two["error"], "corrupt image");
    // Job status by id.
    let (s, v) = t.get_as("ann", &format!("/v1/uploads/{bad}")).await;
    assert_eq!((s, v["status"].as_str()), (200, Some("failed")), "{v}");
    let (s, v) = t
        .get_as("ann", &format!("/v1/uploads/{}", uuid::Uuid::now_v7()))
        .await;
    assert_eq!(
        (s, v["error"].as_str()),
        (404, Some("unknown_upload")),
        "{v}"
    );
    let (s, _) = t.get("/v1/uploads/not-an-id").await;
    assert_eq!(s, 404);

    // A newer upload into slot 1 replaces the card; the old job keeps its
    // status; a late duplicate of the old completion changes nothing.
    let c = UploadId(uuid::Uuid::now_v7());
    let lc = lifecycle(&session, c, 1, false);
    // Two topics: wait on each write's own token.
    let tc = send(&t, &lc[0]).await;
    let tok = send(&t, &la[2]).await;
    let (s, _) = t
        .get_as("ann", &format!("/v1/sessions/{session}/cards?after={tc}"))
        .await;
    assert_eq!(s, 200);
    let (_, v) = t
        .get_as("ann", &format!("/v1/sessions/{session}/cards?after={tok}"))
        .await;
    let one = slot(&v, 1);
    assert_eq!(one["upload_id"], c.to_string(), "{v}");
    assert_eq!(one["status"], "received", "{v}");
    assert!(one.get("output_url").is_none(), "no stale output: {one}");
    let (_, v) = t.get_as("ann", &format!("/v1/uploads/{a}")).await;
    assert_eq!(v["status"], "completed", "{v}");
    let tok = send(&t, &lc[1]).await;
    let (_, v) = t
        .get_as("ann", &format!("/v1/uploads/{c}?after={tok}"))
        .await;
    assert_eq!(v["status"], "started", "{v}");
    t.stop().await;
}
both!(cards_merge_uploads_and_completions);
