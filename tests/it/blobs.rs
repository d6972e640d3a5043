//! One behaviour suite for blob stores: the local directory and a real S3
//! server (s3s-fs in CI).

use std::sync::Arc;

use atelier::blob::{BlobError, BlobStore, LocalBlobs, S3Blobs};
use bytes::Bytes;

use crate::helpers::{Backends, unique};

async fn store(b: Backends) -> Option<(Arc<dyn BlobStore>, String)> {
    let prefix = format!("t{}/", unique());
    Some(match b {
        Backends::Embedded => {
            let dir = crate::helpers::scratch().join(format!("atelier-blobs-{}", unique()));
            (Arc::new(LocalBlobs::new(dir).unwrap()), prefix)
        }
        Backends::Real => {
            let cfg = crate::helpers::s3_blobs()?;
            let s = S3Blobs::connect(&cfg).await.unwrap();
            s.ensure_bucket().await.unwrap();
            (Arc::new(s), prefix)
        }
    })
}

async fn blob_behaviour(b: Backends) {
    let Some((s, p)) = store(b).await else { return };
    let key = format!("{p}models/mosaic/v1/model.pt");
    assert!(matches!(s.get(&key).await, Err(BlobError::NotFound(_))));
    assert!(matches!(s.head(&key).await, Err(BlobError::NotFound(_))));
    s.put(
        &key,
        Bytes::from_static(b"first"),
        "application/octet-stream",
    )
    .await
    .unwrap();
    s.put(
        &key,
        Bytes::from_static(b"second!"),
        "application/octet-stream",
    )
    .await
    .unwrap();
    assert_eq!(s.get(&key).await.unwrap(), Bytes::from_static(b"second!"));
    let meta = s.head(&key).await.unwrap();
    assert_eq!(meta.size, 7);
    assert_eq!(
        meta.content_type.as_deref(),
        Some("application/octet-stream")
    );
    let other = format!("{p}uploads/a.png");
    s.put(&other, Bytes::from(vec![0u8; 300_000]), "image/png")
        .await
        .unwrap();
    assert_eq!(s.get(&other).await.unwrap().len(), 300_000);
    assert_eq!(s.list(&p).await.unwrap(), vec![key.clone(), other.clone()]);
    assert_eq!(
        s.list(&format!("{p}uploads/")).await.unwrap(),
        vec![other.clone()]
    );
    s.delete(&key).await.unwrap();
    s.delete(&key).await.unwrap();
    assert!(matches!(s.get(&key).await, Err(BlobError::NotFound(_))));
    assert!(matches!(
        s.put("../escape", Bytes::new(), "x").await,
        Err(BlobError::BadKey(_))
    ));
}
both!(blob_behaviour);
