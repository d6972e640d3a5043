//! The embedded views' memory budget: partitions past it are spilled to an
//! on-disk B-tree (`data_dir/views.spill`, a redb file) and read back on
//! their next use, so that resident memory is bounded by the budget, not
//! by the views' history.
//!
//! Memory is a write-back cache of partitions over the spill file. A
//! partition is either resident (then the resident copy is the truth; the
//! file may hold an older copy of it) or not (then the file's copy, if
//! any, is the truth). A table moves a partition out under its write lock,
//! after the file took it, so no reader ever sees it in neither place.
//!
//! Durability follows the view snapshot (`view::snapshot`): spills are
//! committed without a sync, and each snapshot commits the file durably
//! (after the journal barrier, with spills held off) before it installs.
//! A crash leaves the snapshot and the file as of the same save: every
//! partition the file holds then is at least as new as the snapshot's
//! checkpoints (it left memory before the save finished), every resident
//! one is in the snapshot, and applying the log again from the
//! checkpoints is a no-op for rows already newer. When the views are
//! rebuilt from the log, the file is emptied first.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use redb::{Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use crate::view::ViewError;

const PARTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("partitions");

/// Evict down to this share of the budget once past it.
const LOW_WATER: f64 = 0.85;

/// Partitions used within this many accesses are not evicted (default).
const HOT: u64 = 2_048;

/// A table whose partitions can leave memory.
pub(super) trait Evict: Send + Sync {
    /// The key prefix its spilled partitions are under now.
    fn prefix(&self) -> Option<Vec<u8>>;
    /// Each resident partition's last use (the access clock's tick) and
    /// estimated bytes.
    fn ages(&self, out: &mut Vec<(u64, u64)>);
    /// Moves its partitions last used at or before `tick` to the spill
    /// file; answers how many bytes left memory.
    fn evict(&self, tick: u64) -> Result<u64, ViewError>;
}

/// The spill file and the budget over every table that spills to it.
pub struct Spill {
    db: redb::Database,
    path: PathBuf,
    budget: u64,
    resident: AtomicU64,
    clock: AtomicU64,
    tables: Mutex<Vec<Weak<dyn Evict>>>,
    /// Held while evicting, and by a durable commit (so that no spill
    /// lands between the journal barrier and the commit).
    evicting: Mutex<()>,
    spilled: AtomicU64,
    loaded: AtomicU64,
    /// Prefixes of cleared tables, removed from the file once a snapshot
    /// no longer refers to them.
    garbage: Mutex<Vec<Vec<u8>>>,
    /// Partitions used within this many accesses are not evicted.
    hot: AtomicU64,
    /// The access clock before which no eviction is tried again (the last
    /// round could not reach the low-water mark).
    retry_at: AtomicU64,
    /// The access clock when the working set past the budget was last
    /// reported (0: never).
    warned: AtomicU64,
    /// Spills commit durably themselves (no snapshot ever does: a start
    /// rebuilds the views, and the file's freed pages are reused only
    /// after a durable commit).
    sync_each: bool,
}

impl std::fmt::Debug for Spill {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spill")
            .field("path", &self.path)
            .field("budget", &self.budget)
            .field("resident", &self.resident.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// What the budget holds, for the banner, metrics and benchmarks.
#[derive(Clone, Copy, Debug)]
pub struct SpillStats {
    /// The budget, bytes.
    pub budget: u64,
    /// The estimated bytes of resident partitions.
    pub resident: u64,
    /// Partitions moved to the file so far.
    pub spilled: u64,
    /// Partitions read back from it so far.
    pub loaded: u64,
}

fn unavailable(path: &Path) -> impl Fn(String) -> ViewError + '_ {
    move |e| ViewError::Unavailable(format!("view spill file {}: {e}", path.display()))
}

impl Spill {
    /// Opens (or creates) the spill file at `path` under a budget of
    /// `budget` bytes; `fresh` empties it (the views are rebuilt from the
    /// log); `snapshots`: view snapshots commit it durably (otherwise each
    /// spill does).
    pub fn open(
        path: &Path,
        budget: u64,
        fresh: bool,
        snapshots: bool,
    ) -> Result<Arc<Spill>, ViewError> {
        let err = unavailable(path);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
        }
        if fresh {
            match std::fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(err(e.to_string())),
            }
        }
        // Its page cache is part of the budget's constant: small.
        let cache = (budget / 16).clamp(1 << 20, 32 << 20) as usize;
        let db = redb::Database::builder()
            .set_cache_size(cache)
            .create(path)
            .map_err(|e| err(e.to_string()))?;
        let tx = db.begin_write().map_err(|e| err(e.to_string()))?;
        tx.open_table(PARTS).map_err(|e| err(e.to_string()))?;
        tx.commit().map_err(|e| err(e.to_string()))?;
        Ok(Arc::new(Spill {
            db,
            path: path.to_owned(),
            budget,
            resident: AtomicU64::new(0),
            clock: AtomicU64::new(0),
            tables: Mutex::new(Vec::new()),
            evicting: Mutex::new(()),
            spilled: AtomicU64::new(0),
            loaded: AtomicU64::new(0),
            garbage: Mutex::new(Vec::new()),
            sync_each: !snapshots,
            warned: AtomicU64::new(0),
            hot: AtomicU64::new(HOT),
            retry_at: AtomicU64::new(0),
        }))
    }

    /// Partitions used within the last `accesses` stay in memory (by
    /// default 2,048; tests that want every partition spilled set 0).
    pub fn set_hot_window(&self, accesses: u64) {
        self.hot.store(accesses, Ordering::Relaxed);
    }

    /// Where the file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What the budget holds now.
    pub fn stats(&self) -> SpillStats {
        SpillStats {
            budget: self.budget,
            resident: self.resident.load(Ordering::Relaxed),
            spilled: self.spilled.load(Ordering::Relaxed),
            loaded: self.loaded.load(Ordering::Relaxed),
        }
    }

    pub(super) fn register(&self, t: Weak<dyn Evict>) {
        let mut tables = self.tables.lock();
        tables.retain(|t| t.strong_count() > 0);
        tables.push(t);
    }

    /// A tick of the access clock (the tables' LRU order).
    pub(super) fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::Relaxed)
    }

    pub(super) fn grew(&self, by: u64) {
        self.resident.fetch_add(by, Ordering::Relaxed);
    }

    pub(super) fn shrank(&self, by: u64) {
        let _ = self
            .resident
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |r| {
                Some(r.saturating_sub(by))
            });
    }

    /// Past the budget: evicts the least recently used partitions of
    /// every table, down to the low-water mark. A disk that refuses keeps the
    /// partitions in memory (over budget, never lost) and says so.
    pub(super) fn enforce(&self) {
        if self.clock.load(Ordering::Relaxed).is_multiple_of(1024) {
            crate::telemetry::emit::view_memory(self.resident.load(Ordering::Relaxed), self.budget);
        }
        if self.resident.load(Ordering::Relaxed) <= self.budget {
            return;
        }
        // A working set past the budget: not walked again on every access,
        // only once the clock has moved on.
        if self.clock.load(Ordering::Relaxed) < self.retry_at.load(Ordering::Relaxed) {
            return;
        }
        let Some(_g) = self.evicting.try_lock() else {
            return;
        };
        let tables: Vec<Arc<dyn Evict>> = self
            .tables
            .lock()
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        let target = (self.budget as f64 * LOW_WATER) as u64;
        // Least recently used first over every table: the last use at or
        // before which partitions leave frees enough.
        let mut ages = Vec::new();
        for t in &tables {
            t.ages(&mut ages);
        }
        let total: u64 = ages.iter().map(|(_, b)| b).sum();
        // The running total is an estimate kept by many writers: the walk
        // just made is the truth.
        self.resident.store(total, Ordering::Relaxed);
        if total <= target {
            return;
        }
        ages.sort_unstable_by_key(|(used, _)| *used);
        let (mut freed, mut cutoff) = (0u64, 0u64);
        // What was used in the last `HOT` accesses stays: evicting a
        // partition the next batch reads again costs a write and a read of
        // all of it (thrashing), so a working set past the budget is held,
        // and said.
        let hot = self
            .clock
            .load(Ordering::Relaxed)
            .saturating_sub(self.hot.load(Ordering::Relaxed));
        for (used, bytes) in ages {
            if freed >= total - target || used > hot {
                break;
            }
            freed += bytes;
            cutoff = used;
        }
        if freed < total - target {
            let now = self.clock.load(Ordering::Relaxed);
            self.retry_at.store(
                now + self.hot.load(Ordering::Relaxed).max(1_024),
                Ordering::Relaxed,
            );
            let last = self.warned.load(Ordering::Relaxed);
            if last == 0 || now.saturating_sub(last) > 1_000_000 {
                self.warned.store(now.max(1), Ordering::Relaxed);
                tracing::warn!(
                    resident_mib = (total - freed) >> 20,
                    budget_mib = self.budget >> 20,
                    "the views' working set is past views.memory_mb: what is in use stays in memory"
                );
            }
        }
        if freed == 0 {
            return;
        }
        for t in &tables {
            if let Err(e) = t.evict(cutoff) {
                tracing::warn!(error = %e, "view partitions could not be spilled: memory is over its budget");
                return;
            }
        }
    }

    /// Writes partitions (key, bytes) in one commit, not synced.
    pub(super) fn put(&self, parts: &[(Vec<u8>, Vec<u8>)]) -> Result<(), ViewError> {
        let err = unavailable(&self.path);
        let mut tx = self.db.begin_write().map_err(|e| err(e.to_string()))?;
        tx.set_durability(if self.sync_each {
            Durability::Immediate
        } else {
            Durability::None
        })
        .map_err(|e| err(e.to_string()))?;
        {
            let mut t = tx.open_table(PARTS).map_err(|e| err(e.to_string()))?;
            for (k, v) in parts {
                t.insert(k.as_slice(), v.as_slice())
                    .map_err(|e| err(e.to_string()))?;
            }
        }
        tx.commit().map_err(|e| err(e.to_string()))?;
        self.spilled
            .fetch_add(parts.len() as u64, Ordering::Relaxed);
        crate::telemetry::emit::view_spilled(parts.len() as u64);
        Ok(())
    }

    /// One partition's bytes.
    pub(super) fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, ViewError> {
        let err = unavailable(&self.path);
        let tx = self.db.begin_read().map_err(|e| err(e.to_string()))?;
        let t = tx.open_table(PARTS).map_err(|e| err(e.to_string()))?;
        let v = t.get(key).map_err(|e| err(e.to_string()))?;
        let v = v.map(|g| g.value().to_vec());
        if v.is_some() {
            self.loaded.fetch_add(1, Ordering::Relaxed);
            crate::telemetry::emit::view_read_back();
        }
        Ok(v)
    }

    /// Every key under `prefix` (without it).
    pub(super) fn keys(&self, prefix: &[u8]) -> Result<Vec<Vec<u8>>, ViewError> {
        let err = unavailable(&self.path);
        let tx = self.db.begin_read().map_err(|e| err(e.to_string()))?;
        let t = tx.open_table(PARTS).map_err(|e| err(e.to_string()))?;
        let mut out = Vec::new();
        for kv in t.range(prefix..).map_err(|e| err(e.to_string()))? {
            let (k, _) = kv.map_err(|e| err(e.to_string()))?;
            let k = k.value();
            if !k.starts_with(prefix) {
                break;
            }
            out.push(k[prefix.len()..].to_vec());
        }
        Ok(out)
    }

    /// Removes one key, or every key under a prefix (not synced).
    pub(super) fn remove(&self, key: &[u8], whole_prefix: bool) -> Result<(), ViewError> {
        let err = unavailable(&self.path);
        let mut tx = self.db.begin_write().map_err(|e| err(e.to_string()))?;
        tx.set_durability(Durability::None)
            .map_err(|e| err(e.to_string()))?;
        {
            let mut t = tx.open_table(PARTS).map_err(|e| err(e.to_string()))?;
            if whole_prefix {
                t.retain_in(key.., |k: &[u8], _: &[u8]| !k.starts_with(key))
                    .map_err(|e| err(e.to_string()))?;
            } else {
                t.remove(key).map_err(|e| err(e.to_string()))?;
            }
        }
        tx.commit().map_err(|e| err(e.to_string()))
    }

    /// A cleared table's old prefix: garbage once the next snapshot is
    /// installed.
    pub(super) fn garbage(&self, prefix: Vec<u8>) {
        self.garbage.lock().push(prefix);
    }

    /// Removes the partitions of tables cleared before the snapshot just
    /// installed (not synced: the next snapshot's commit makes it so).
    pub fn collect_garbage(&self) -> Result<(), ViewError> {
        let gone = std::mem::take(&mut *self.garbage.lock());
        for p in &gone {
            self.remove(p, true)?;
        }
        Ok(())
    }

    /// At start, after every store read from the snapshot is attached:
    /// removes what no attached table refers to (tables cleared, and
    /// generations dropped, before the snapshot was taken). Answers how
    /// many partitions it removed.
    pub fn collect_unreferenced(&self) -> Result<u64, ViewError> {
        let live: Vec<Vec<u8>> = self
            .tables
            .lock()
            .iter()
            .filter_map(Weak::upgrade)
            .filter_map(|t| t.prefix())
            .collect();
        let err = unavailable(&self.path);
        let mut tx = self.db.begin_write().map_err(|e| err(e.to_string()))?;
        tx.set_durability(Durability::None)
            .map_err(|e| err(e.to_string()))?;
        let mut removed = 0u64;
        {
            let mut t = tx.open_table(PARTS).map_err(|e| err(e.to_string()))?;
            // Keys are `tag#epoch\0pk`, sorted: one seek per prefix, so a
            // start does not read every spilled partition.
            let mut at: Vec<u8> = Vec::new();
            loop {
                let next = t
                    .range(at.as_slice()..)
                    .map_err(|e| err(e.to_string()))?
                    .next()
                    .transpose()
                    .map_err(|e| err(e.to_string()))?
                    .map(|(k, _)| k.value().to_vec());
                let Some(key) = next else { break };
                let Some(cut) = key.iter().position(|b| *b == 0) else {
                    // Not a key this format writes: removed.
                    t.remove(key.as_slice()).map_err(|e| err(e.to_string()))?;
                    removed += 1;
                    continue;
                };
                let prefix = &key[..=cut];
                let mut end = key[..cut].to_vec();
                end.push(1);
                if !live.iter().any(|p| p.as_slice() == prefix) {
                    let before = t.len().map_err(|e| err(e.to_string()))?;
                    t.retain_in(prefix..end.as_slice(), |_: &[u8], _: &[u8]| false)
                        .map_err(|e| err(e.to_string()))?;
                    removed += before - t.len().map_err(|e| err(e.to_string()))?;
                }
                at = end;
            }
        }
        tx.commit().map_err(|e| err(e.to_string()))?;
        Ok(removed)
    }

    /// Commits everything spilled so far durably, once `barrier` says the
    /// log holds everything the views may have applied; no spill lands in
    /// between. Blocking.
    pub fn sync(&self, barrier: impl FnOnce() -> Result<(), String>) -> Result<(), ViewError> {
        let err = unavailable(&self.path);
        let _g = self.evicting.lock();
        barrier().map_err(&err)?;
        let mut tx = self.db.begin_write().map_err(|e| err(e.to_string()))?;
        tx.set_durability(Durability::Immediate)
            .map_err(|e| err(e.to_string()))?;
        tx.commit().map_err(|e| err(e.to_string()))
    }
}
