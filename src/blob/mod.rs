//! Object storage for large bodies (images, models): S3 (or any
//! S3-compatible server) and a local directory, behind one trait that one
//! behaviour suite tests on both.

mod local;
mod s3;

pub use local::LocalBlobs;
pub use s3::{MIN_PART, S3Blobs, S3Upload};

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use crate::config::{BlobBackend, BlobConfig};

/// A blob-store failure, with a retry hint.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BlobError {
    /// No object at that key.
    #[error("no object at {0}")]
    NotFound(String),
    /// The key is not acceptable (empty, `..`, absolute).
    #[error("bad key {0:?}")]
    BadKey(String),
    /// The store is unreachable or failed: retry with backoff.
    #[error("blob store unavailable: {0}")]
    Unavailable(String),
    /// The store's disk (or quota) is full: retry once space is freed.
    #[error("blob store full: {0}")]
    Full(String),
    /// The store refuses writes (a read-only file system, or a directory
    /// this process may not write): retry once an operator fixed it.
    #[error("blob store not writable: {0}")]
    ReadOnly(String),
}

impl BlobError {
    /// Whether trying again may succeed.
    pub fn is_retriable(&self) -> bool {
        matches!(
            self,
            BlobError::Unavailable(_) | BlobError::Full(_) | BlobError::ReadOnly(_)
        )
    }
}

/// Metadata of a stored object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobMeta {
    /// Size in bytes.
    pub size: u64,
    /// Media type, when known.
    pub content_type: Option<String>,
}

/// Object storage.
#[async_trait]
pub trait BlobStore: Send + Sync + std::fmt::Debug + 'static {
    /// `local` or `s3`.
    fn backend(&self) -> &'static str;
    /// Stores (or overwrites) an object.
    async fn put(&self, key: &str, body: Bytes, content_type: &str) -> Result<(), BlobError>;
    /// Reads a whole object.
    async fn get(&self, key: &str) -> Result<Bytes, BlobError>;
    /// An object's metadata.
    async fn head(&self, key: &str) -> Result<BlobMeta, BlobError>;
    /// Deletes an object (absent: no error).
    async fn delete(&self, key: &str) -> Result<(), BlobError>;
    /// Keys under a prefix, sorted.
    async fn list(&self, prefix: &str) -> Result<Vec<String>, BlobError>;
    /// Removes what writes a crash interrupted left behind, older than
    /// `age` (none on S3, whose puts are whole or absent); answers how
    /// many.
    async fn remove_interrupted(&self, _age: std::time::Duration) -> Result<usize, BlobError> {
        Ok(0)
    }
}

/// Keys are relative, `/`-separated, without empty or dot segments.
pub fn check_key(key: &str) -> Result<(), BlobError> {
    let ok = !key.is_empty()
        && key.len() <= 1024
        && !key.starts_with('/')
        && key
            .split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != "..")
        && !key.contains('\\')
        && !key.chars().any(char::is_control);
    if ok {
        Ok(())
    } else {
        Err(BlobError::BadKey(key.to_owned()))
    }
}

/// Opens the configured blob store.
pub async fn open(
    cfg: &BlobConfig,
    data_dir: &std::path::Path,
) -> Result<Arc<dyn BlobStore>, BlobError> {
    Ok(match cfg.backend {
        BlobBackend::Local => Arc::new(LocalBlobs::new(data_dir.join("blobs"))?),
        BlobBackend::S3 => {
            let s3 = S3Blobs::connect(cfg).await?;
            s3.ensure_bucket().await?;
            Arc::new(s3)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_cannot_escape() {
        assert!(check_key("models/mosaic/v1/model.pt").is_ok());
        for bad in ["", "/abs", "a/../b", "a//b", "./a", "a\\b", "a/."] {
            assert!(check_key(bad).is_err(), "{bad:?}");
        }
    }
}
