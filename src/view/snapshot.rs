//! Snapshots of the embedded view store: every generation's tables and the
//! control rows (checkpoints, generations, degraded marks) in one file
//! under the data directory, so that a restart serves the views at once
//! and its projectors read only the log after the snapshot's checkpoints.
//!
//! The file is `[magic: 16 bytes][body length: u64 LE][crc32 of body: u32
//! LE][body]`, the body JSON (cells, and typed rows as they serialize). It
//! is written beside its place, synced, and renamed over the old one, so a crash
//! leaves the old snapshot or the new one, never a mix. On read, a wrong
//! magic, length or checksum, or a body that does not parse, is an error:
//! the caller rebuilds from the log and never serves it.
//!
//! The control rows are written before the views' tables, each table under
//! its lock: every row is at least as new as the checkpoint that covers
//! it, and applying the log again after a checkpoint is a no-op for rows
//! already newer (versioned aggregates, offset-derived write timestamps),
//! exactly as after a crash between a batch's writes and its checkpoint.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{EmbeddedStore, Generations, Store, View};

/// What a snapshot file starts with (the format's version is its last
/// two bytes; v3: the feed's timelines are bucketed by day and sharded;
/// v4: the tables of typed rows store them as rows, not cells).
const MAGIC: &[u8; 16] = b"atelier-views\0v4";
/// The versions this one reads: v3's typed tables hold cells, which they
/// read as rows.
const READS: [&[u8; 16]; 2] = [MAGIC, b"atelier-views\0v3"];
const HEADER: usize = 16 + 8 + 4;

/// A snapshot that cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The disk refused.
    #[error("view snapshot {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// The file is not a whole snapshot of this version.
    #[error("view snapshot {path} is unusable: {why}")]
    Bad {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Io {
        path: path.to_owned(),
        source,
    }
}

fn bad(path: &Path, why: impl Into<String>) -> SnapshotError {
    SnapshotError::Bad {
        path: path.to_owned(),
        why: why.into(),
    }
}

#[derive(Serialize)]
struct Out<'a> {
    base: &'a EmbeddedStore,
    generations: Vec<(&'static str, u32, &'a EmbeddedStore)>,
}

#[derive(Deserialize)]
struct In {
    base: EmbeddedStore,
    generations: Vec<(String, u32, EmbeddedStore)>,
}

/// The stores of a snapshot read back.
#[derive(Debug)]
pub struct Restored {
    /// Generation 0 of every view, and the control rows.
    pub base: Arc<EmbeddedStore>,
    /// The other generations' stores.
    pub generations: Vec<((View, u32), Arc<dyn Store>)>,
    /// The file's size.
    pub bytes: u64,
    /// How long reading it took.
    pub took: Duration,
}

/// What writing a snapshot did.
#[derive(Clone, Copy, Debug)]
pub struct Saved {
    /// The file's size.
    pub bytes: u64,
    /// How long writing it took.
    pub took: Duration,
}

/// Counts and checksums what passes through.
struct Summing<W> {
    inner: W,
    crc: crc32fast::Hasher,
    n: u64,
}

impl<W: Write> Write for Summing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let k = self.inner.write(buf)?;
        self.crc.update(&buf[..k]);
        self.n += k as u64;
        Ok(k)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Writes a snapshot of every embedded store of `gens` to `path`. The
/// new file replaces the old one only after `before_install` succeeds (the
/// embedded log waits there until everything the views may have applied
/// is journaled: a snapshot never runs ahead of the log it is restored
/// against). `None` when the views are not embedded. Blocking.
pub fn save(
    gens: &Generations,
    path: &Path,
    before_install: impl FnOnce() -> Result<(), String>,
) -> Result<Option<Saved>, SnapshotError> {
    let t0 = Instant::now();
    let Some(base) = gens.base().as_embedded() else {
        return Ok(None);
    };
    let others = gens.opened();
    let mut generations = Vec::new();
    for ((view, n), s) in &others {
        if let Some(e) = s.as_embedded() {
            generations.push((view.as_str(), *n, e));
        }
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    let tmp = path.with_extension("partial");
    let mut file = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    file.write_all(&[0; HEADER]).map_err(io(&tmp))?;
    let (n, crc) = {
        let mut w = Summing {
            inner: std::io::BufWriter::with_capacity(1 << 20, &mut file),
            crc: crc32fast::Hasher::new(),
            n: 0,
        };
        serde_json::to_writer(&mut w, &Out { base, generations })
            .map_err(|e| bad(&tmp, e.to_string()))?;
        w.flush().map_err(io(&tmp))?;
        (w.n, w.crc.finalize())
    };
    let mut header = Vec::with_capacity(HEADER);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&n.to_le_bytes());
    header.extend_from_slice(&crc.to_le_bytes());
    file.seek(SeekFrom::Start(0)).map_err(io(&tmp))?;
    file.write_all(&header).map_err(io(&tmp))?;
    file.sync_all().map_err(io(&tmp))?;
    drop(file);
    // The spilled partitions are part of the snapshot: committed durably
    // once the log holds what the views applied, with no spill in between.
    match base.spill() {
        Some(spill) => spill
            .sync(before_install)
            .map_err(|e| bad(path, e.to_string()))?,
        None => before_install().map_err(|why| bad(path, why))?,
    }
    std::fs::rename(&tmp, path).map_err(io(path))?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(dir))?;
    }
    if let Some(spill) = base.spill()
        && let Err(e) = spill.collect_garbage()
    {
        tracing::warn!(error = %e, "cleared view partitions stay in the spill file");
    }
    Ok(Some(Saved {
        bytes: n + HEADER as u64,
        took: t0.elapsed(),
    }))
}

/// Reads the snapshot at `path`; `None` when there is none. A snapshot
/// that is not whole is an error, never a partial store.
pub fn read(path: &Path) -> Result<Option<Restored>, SnapshotError> {
    let t0 = Instant::now();
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(path)(e)),
    };
    let mut header = [0u8; HEADER];
    file.read_exact(&mut header)
        .map_err(|_| bad(path, "shorter than its header"))?;
    if !READS.iter().any(|m| header[..16] == m[..]) {
        return Err(bad(
            path,
            "not a view snapshot of this version (another atelier wrote it?)",
        ));
    }
    let [_magic @ .., n0, n1, n2, n3, n4, n5, n6, n7, c0, c1, c2, c3] = header;
    let n = u64::from_le_bytes([n0, n1, n2, n3, n4, n5, n6, n7]);
    let crc = u32::from_le_bytes([c0, c1, c2, c3]);
    let mut body = Vec::new();
    file.read_to_end(&mut body).map_err(io(path))?;
    if body.len() as u64 != n {
        return Err(bad(
            path,
            format!("its body is {} bytes, its header says {n}", body.len()),
        ));
    }
    if crc32fast::hash(&body) != crc {
        return Err(bad(path, "a checksum mismatch"));
    }
    let snap: In = serde_json::from_slice(&body).map_err(|e| bad(path, e.to_string()))?;
    drop(body);
    let mut generations = Vec::new();
    for (name, gen_, store) in snap.generations {
        let view = [super::polls::VIEW, super::feed::VIEW, super::cards::VIEW]
            .into_iter()
            .find(|v| v.as_str() == name)
            .ok_or_else(|| bad(path, format!("it holds a view {name} this atelier lacks")))?;
        let store: Arc<dyn Store> = Arc::new(store.rebound());
        generations.push(((view, gen_), store));
    }
    Ok(Some(Restored {
        base: Arc::new(snap.base.rebound()),
        generations,
        bytes: n + HEADER as u64,
        took: t0.elapsed(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ViewsConfig;
    use crate::view::{Checkpoint, CheckpointStore};

    async fn filled() -> Arc<Generations> {
        let base = Arc::new(EmbeddedStore::default());
        base.save_checkpoint(&Checkpoint {
            view: "polls".into(),
            topic: "t".into(),
            partition: 3,
            offset: 41,
            rejected: Default::default(),
        })
        .await
        .unwrap();
        Generations::new(base, &ViewsConfig::default())
    }

    #[tokio::test]
    async fn a_snapshot_reads_back_as_written_and_a_damaged_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("views.snapshot");
        assert!(read(&path).unwrap().is_none());
        let gens = filled().await;
        let saved = save(&gens, &path, || Ok(())).unwrap().unwrap();
        assert_eq!(saved.bytes, std::fs::metadata(&path).unwrap().len());
        let back = read(&path).unwrap().unwrap();
        let cp = back
            .base
            .checkpoint("polls", "t", 3)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(cp.offset, 41);

        // One byte changed anywhere in the body: refused.
        let mut bytes = std::fs::read(&path).unwrap();
        let at = HEADER + (bytes.len() - HEADER) / 2;
        bytes[at] ^= 0x20;
        std::fs::write(&path, &bytes).unwrap();
        let e = read(&path).unwrap_err().to_string();
        assert!(e.contains("checksum"), "{e}");
        // Cut short (a write the rename never installed would be here).
        bytes[at] ^= 0x20;
        std::fs::write(&path, &bytes[..bytes.len() - 7]).unwrap();
        let e = read(&path).unwrap_err().to_string();
        assert!(e.contains("header says"), "{e}");
        // Another version's file.
        bytes[15] = b'9';
        std::fs::write(&path, &bytes).unwrap();
        assert!(read(&path).unwrap_err().to_string().contains("version"));
    }

    #[tokio::test]
    async fn a_refused_install_keeps_the_old_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("views.snapshot");
        let gens = filled().await;
        save(&gens, &path, || Ok(())).unwrap();
        let before = std::fs::read(&path).unwrap();
        gens.base()
            .save_checkpoint(&Checkpoint {
                view: "polls".into(),
                topic: "t".into(),
                partition: 3,
                offset: 99,
                rejected: Default::default(),
            })
            .await
            .unwrap();
        assert!(save(&gens, &path, || Err("the log is behind".into())).is_err());
        assert_eq!(std::fs::read(&path).unwrap(), before);
    }
}
