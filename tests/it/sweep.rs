//! Orphaned images: stored by an upload whose event was never appended (a
//! crash between the blob write and the append). `POST /v1/admin/blobs/gc`
//! (`atelier gc`) deletes them once they are older than the grace period,
//! and keeps every image of a known upload and every recent one; the
//! embedded default sweeps once at start.

use atelier::event::{EventData, Style, UploadId, UploadReceived};
use bytes::Bytes;
use serde_json::json;

use crate::helpers::{Backends, TestApp, event, session_of};

/// An upload id made `secs_ago` seconds ago (UUID v7 carries its time).
fn id_from(secs_ago: u64) -> UploadId {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    UploadId(uuid::Uuid::new_v7(uuid::Timestamp::from_unix(
        uuid::NoContext,
        now - secs_ago,
        0,
    )))
}

/// The API and projectors on `cfg` (no inference).
async fn start(cfg: atelier::config::Config) -> TestApp {
    TestApp::start(
        cfg,
        atelier::app::Roles {
            infer: false,
            ..atelier::app::Roles::ALL
        },
    )
    .await
}

async fn put(t: &TestApp, key: &str) {
    t.app
        .blobs
        .put(key, Bytes::from_static(b"image"), "image/png")
        .await
        .unwrap();
}

async fn exists(t: &TestApp, key: &str) -> bool {
    match t.app.blobs.get(key).await {
        Ok(_) => true,
        Err(atelier::blob::BlobError::NotFound(_)) => false,
        Err(e) => panic!("reading {key}: {e}"),
    }
}

async fn orphaned_images_are_swept_and_known_ones_kept(b: Backends) {
    let Some(mut cfg) = crate::helpers::config(b).await else {
        return;
    };
    // This test's orphan and known upload are made to look two hours old;
    // the embedded default's own sweep at start, racing the known upload's
    // event, would take it for an orphan too. That sweep has its own test.
    cfg.uploads.sweep_at_start = false;
    let t = start(cfg).await;
    // Two hours old, no event: the crash's orphan (its input, and an output
    // a worker wrote for it).
    let orphan = id_from(7200);
    let orphan_keys = [
        format!(
            "uploads/{orphan}/{}/original.png",
            uuid::Uuid::new_v4().simple()
        ),
        format!("outputs/{orphan}/sketch-v1.jpg"),
    ];
    // Two hours old, with its event: kept.
    let known = id_from(7200);
    let known_key = format!(
        "uploads/{known}/{}/original.png",
        uuid::Uuid::new_v4().simple()
    );
    // No event yet, but just made: an upload in progress, kept.
    let recent = UploadId(uuid::Uuid::now_v7());
    let recent_key = format!(
        "uploads/{recent}/{}/original.png",
        uuid::Uuid::new_v4().simple()
    );
    for k in orphan_keys.iter().chain([&known_key, &recent_key]) {
        put(&t, k).await;
    }
    let received = event(
        "ann",
        EventData::UploadReceived(UploadReceived {
            upload_id: known,
            session_key: session_of("ann"),
            slot: 1,
            style: Style::parse("sketch").unwrap(),
            object_key: known_key.clone(),
            content_type: "image/png".into(),
            bytes: 5,
            width: 1,
            height: 1,
            sha256: "ab".repeat(32),
        }),
    );
    t.app.producer.send(&received).await.unwrap();

    // Administrators only.
    let (s, v) = t.post("/v1/admin/blobs/gc", "ann", json!({})).await;
    assert_eq!((s, v["error"].as_str()), (403, Some("not_admin")), "{v}");

    // A dry run counts, deletes nothing. (The sweep waits for the view to
    // apply the uploads topic first, so the known upload is known.)
    let (s, v) = t
        .post("/v1/admin/blobs/gc?dry_run=true", "admin", json!({}))
        .await;
    assert_eq!(s, 200, "{v}");
    assert!(v["orphans"].as_u64().unwrap() >= 2, "{v}");
    assert!(v["known"].as_u64().unwrap() >= 1, "{v}");
    assert!(v["recent"].as_u64().unwrap() >= 1, "{v}");
    for k in &orphan_keys {
        assert!(exists(&t, k).await, "a dry run deleted {k}");
    }

    let (s, v) = t.post("/v1/admin/blobs/gc", "admin", json!({})).await;
    assert_eq!(s, 200, "{v}");
    for k in &orphan_keys {
        assert!(!exists(&t, k).await, "the orphan {k} is still there: {v}");
    }
    assert!(
        exists(&t, &known_key).await,
        "a known upload's image was deleted"
    );
    assert!(
        exists(&t, &recent_key).await,
        "a recent upload's image was deleted"
    );
    // Nothing left to sweep of this test's.
    let (_, v) = t
        .post("/v1/admin/blobs/gc?dry_run=true", "admin", json!({}))
        .await;
    let left: Vec<&str> = v["sample"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|k| k.as_str())
        .filter(|k| k.contains(&orphan.to_string()))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    t.stop().await;
}
both!(orphaned_images_are_swept_and_known_ones_kept);

/// The embedded default sweeps at start: an orphan a crash left in the data
/// directory's blob store is gone once the app has started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_default_sweeps_at_start() {
    let cfg = crate::helpers::config(Backends::Embedded).await.unwrap();
    let orphan = id_from(7200);
    let key = format!(
        "uploads/{orphan}/{}/original.png",
        uuid::Uuid::new_v4().simple()
    );
    let recent = UploadId(uuid::Uuid::now_v7());
    let recent_key = format!("uploads/{recent}/x/original.png");
    {
        // What the crashed run left in the data directory.
        let blobs = atelier::blob::open(&cfg.blobs, &cfg.data_dir)
            .await
            .unwrap();
        for k in [&key, &recent_key] {
            blobs
                .put(k, Bytes::from_static(b"image"), "image/png")
                .await
                .unwrap();
        }
    }
    let t = start(cfg).await;
    crate::helpers::eventually(60, "the sweep at start to remove the orphan", || async {
        (!exists(&t, &key).await).then_some(())
    })
    .await;
    assert!(
        exists(&t, &recent_key).await,
        "a recent upload's image was swept"
    );
    t.stop().await;
}
