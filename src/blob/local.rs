//! A local-directory blob store (the embedded default). Writes go to a
//! temporary file, which is synced and renamed into place (then the
//! directory is synced), so a reader never sees half an object, an
//! overwrite is atomic, and a stored object survives a crash of the
//! machine. A full disk and a directory that refuses writes are errors of
//! their own ([`BlobError::Full`], [`BlobError::ReadOnly`]), so the edge can
//! say which.

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
    use std::io::ErrorKind as K;
    match e.kind() {
        K::NotFound => BlobError::NotFound(key.to_owned()),
        K::StorageFull | K::QuotaExceeded => BlobError::Full(format!("{key}: {e}")),
        K::ReadOnlyFilesystem | K::PermissionDenied => BlobError::ReadOnly(format!("{key}: {e}")),
        _ => BlobError::Unavailable(format!("{key}: {e}")),
    }
}

/// Writes `body` to `path` durably: a synced temporary file renamed into
/// place, then the directory synced. A failed write leaves no temporary
/// file behind.
fn write_durably(dir: &Path, path: &Path, body: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let tmp = dir.join(format!(".tmp-{}", uuid::Uuid::new_v4()));
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(body)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    std::fs::File::open(dir)?.sync_all()
}

fn root_name() -> String {
    "the blob directory".to_owned()
}

/// Deletes the temporary files of writes a crash interrupted (never
/// renamed into place) older than `age`, under `dir`; answers how many.
fn remove_temps(dir: &Path, age: std::time::Duration) -> std::io::Result<usize> {
    let mut n = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let p = entry.path();
        if entry.file_type()?.is_dir() {
            n += remove_temps(&p, age)?;
        } else if entry.file_name().to_string_lossy().starts_with(".tmp-")
            && entry
                .metadata()?
                .modified()?
                .elapsed()
                .is_ok_and(|a| a >= age)
        {
            std::fs::remove_file(&p)?;
            n += 1;
        }
    }
    Ok(n)
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
            let ct_path = PathBuf::from(format!("{}.content-type", path.display()));
            write_durably(dir, &ct_path, ct.as_bytes())?;
            write_durably(dir, &path, &body)
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

    async fn remove_interrupted(&self, age: std::time::Duration) -> Result<usize, BlobError> {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || remove_temps(&root, age))
            .await
            .map_err(|e| BlobError::Unavailable(e.to_string()))?
            .map_err(|e| io(e, &root_name()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn what_an_interrupted_write_left_is_removed_once_old_enough() {
        let dir = tempfile::tempdir().unwrap();
        let b = LocalBlobs::new(dir.path().to_owned()).unwrap();
        b.put(
            "uploads/x/original.png",
            Bytes::from_static(b"png"),
            "image/png",
        )
        .await
        .unwrap();
        // A crash between the temporary file and its rename.
        let left = dir.path().join("uploads/x/.tmp-interrupted");
        std::fs::write(&left, b"half").unwrap();
        let hour = std::time::Duration::from_secs(3600);
        assert_eq!(b.remove_interrupted(hour).await.unwrap(), 0);
        assert!(left.exists(), "younger than the age: kept");
        let none = std::time::Duration::ZERO;
        assert_eq!(b.remove_interrupted(none).await.unwrap(), 1);
        assert!(!left.exists());
        assert_eq!(
            b.list("uploads/").await.unwrap(),
            ["uploads/x/original.png"]
        );
    }

    #[test]
    fn a_full_disk_and_a_refused_write_say_so() {
        let e = |code| io(std::io::Error::from_raw_os_error(code), "k");
        // ENOSPC, EDQUOT: full; EROFS, EACCES, EPERM: not writable.
        for code in [28, 122] {
            assert!(matches!(e(code), BlobError::Full(_)), "{code}: {}", e(code));
        }
        for code in [30, 13, 1] {
            assert!(
                matches!(e(code), BlobError::ReadOnly(_)),
                "{code}: {}",
                e(code)
            );
        }
        assert!(matches!(e(2), BlobError::NotFound(_)));
        assert!(matches!(e(5), BlobError::Unavailable(_)), "EIO");
    }
}
