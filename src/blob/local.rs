//! A local-directory blob store (the embedded default). Writes go to a
//! temporary file and are renamed into place, so a reader never sees half an
//! object and an overwrite is atomic.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;

use super::{BlobError, BlobMeta, BlobStore, check_key};

/// Objects as files under a root directory.
#[derive(Debug)]
pub struct LocalBlobs {
    root: PathBuf,
}

fn io(e: std::io::Error, key: &str) -> BlobError {
    if e.kind() == std::io::ErrorKind::NotFound {
        BlobError::NotFound(key.to_owned())
    } else {
        BlobError::Unavailable(format!("{key}: {e}"))
    }
}

impl LocalBlobs {
    /// A store rooted at `root` (created when missing).
    pub fn new(root: PathBuf) -> Result<Self, BlobError> {
        std::fs::create_dir_all(&root).map_err(|e| io(e, &root.display().to_string()))?;
        Ok(Self { root })
    }

    fn path(&self, key: &str) -> Result<PathBuf, BlobError> {
        check_key(key)?;
        Ok(self.root.join(key))
    }

    fn collect(dir: &Path, root: &Path, out: &mut Vec<String>) -> std::io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let p = entry.path();
            if entry.file_type()?.is_dir() {
                Self::collect(&p, root, out)?;
            } else if !p
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(".tmp-"))
                && let Ok(rel) = p.strip_prefix(root)
            {
                out.push(rel.to_string_lossy().replace('\\', "/"));
            }
        }
        Ok(())
    }
}

#[async_trait]
impl BlobStore for LocalBlobs {
    fn backend(&self) -> &'static str {
        "local"
    }

    async fn put(&self, key: &str, body: Bytes, content_type: &str) -> Result<(), BlobError> {
        let path = self.path(key)?;
        let key = key.to_owned();
        let ct = content_type.to_owned();
        tokio::task::spawn_blocking(move || {
            let dir = path.parent().expect("keys have a parent");
            std::fs::create_dir_all(dir)?;
            let tmp = dir.join(format!(".tmp-{}", uuid::Uuid::new_v4()));
            std::fs::write(&tmp, &body)?;
            std::fs::write(tmp.with_extension("ct"), ct.as_bytes())?;
            let ct_path = PathBuf::from(format!("{}.content-type", path.display()));
            std::fs::rename(tmp.with_extension("ct"), ct_path)?;
            std::fs::rename(&tmp, &path)
        })
        .await
        .map_err(|e| BlobError::Unavailable(e.to_string()))?
        .map_err(|e| io(e, &key))
    }

    async fn get(&self, key: &str) -> Result<Bytes, BlobError> {
        let path = self.path(key)?;
        tokio::fs::read(&path)
            .await
            .map(Bytes::from)
            .map_err(|e| io(e, key))
    }

    async fn head(&self, key: &str) -> Result<BlobMeta, BlobError> {
        let path = self.path(key)?;
        let md = tokio::fs::metadata(&path).await.map_err(|e| io(e, key))?;
        let ct = tokio::fs::read_to_string(format!("{}.content-type", path.display()))
            .await
            .ok();
        Ok(BlobMeta {
            size: md.len(),
            content_type: ct,
        })
    }

    async fn delete(&self, key: &str) -> Result<(), BlobError> {
        let path = self.path(key)?;
        let _ = tokio::fs::remove_file(format!("{}.content-type", path.display())).await;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(e, key)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, BlobError> {
        let root = self.root.clone();
        let prefix = prefix.to_owned();
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            LocalBlobs::collect(&root, &root, &mut out)?;
            out.retain(|k| k.starts_with(&prefix) && !k.ends_with(".content-type"));
            out.sort();
            Ok::<_, std::io::Error>(out)
        })
        .await
        .map_err(|e| BlobError::Unavailable(e.to_string()))?
        .map_err(|e| io(e, "list"))
    }
}
