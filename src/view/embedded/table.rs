//! The embedded store's tables: partitions by key, static cells and
//! clustering rows in clustering order, every cell with its write timestamp
//! (the newer wins; a delete at the same timestamp wins over a write, as in
//! CQL). A batch to one partition is atomic and isolated: it is applied
//! under the table's lock. Every access is counted here, the one place the
//! store's statements pass through.
//!
//! A row holds JSON cells ([`Cells`]), or, in the tables the projectors
//! write on every event, one typed value written whole at one timestamp
//! ([`Whole`]): the views' rows go in as they are, with no JSON between
//! the fold and the table. A typed row is stored (in a snapshot or the
//! spill file) as itself beside its timestamp, and reads stored cells
//! (what an older atelier wrote) as its row.

use std::collections::BTreeMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use parking_lot::RwLock;
use rustc_hash::FxHashMap as HashMap;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::spill::{Evict, Spill};
use crate::view::{Counters, ViewError};

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Cell {
    ts: i64,
    value: Option<Value>,
}

/// What a row (or a partition's statics) holds: JSON cells, each with its
/// write timestamp ([`Cells`]), or a typed value written whole at one
/// timestamp ([`Whole`]).
pub(super) trait Content: Default + Clone + std::fmt::Debug + Send + Sync + 'static {
    /// What one write statement carries.
    type Write;
    /// What a live row reads as.
    type Out;
    /// Applies a write at `ts` (the newer wins).
    fn write(&mut self, ts: i64, w: Self::Write);
    /// The live contents, given the row's deletion timestamp.
    fn live(&self, deleted_at: Option<i64>) -> Option<Self::Out>;
    /// The estimated bytes of the contents in memory.
    fn bytes(&self) -> u64;
    /// The row, deleted at `deleted_at`, as a snapshot or the spill file
    /// stores it.
    fn serialize_row<S: serde::Serializer>(
        &self,
        deleted_at: Option<i64>,
        s: S,
    ) -> Result<S::Ok, S::Error>;
    /// A stored row: its deletion timestamp and contents.
    fn deserialize_row<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<(Option<i64>, Self), D::Error>;
}

/// A row stored as cells: `{"deleted_at", "cells": {column: {"ts",
/// "value"}}}`.
#[derive(Serialize)]
struct CellsRef<'a> {
    deleted_at: Option<i64>,
    cells: &'a Cells,
}

/// A row (or a partition's static cells).
#[derive(Clone, Debug, Default)]
pub(super) struct Row<V = Cells> {
    /// Row deletion timestamp: cells at or below it are dead.
    deleted_at: Option<i64>,
    cells: V,
}

/// A row's cells, sorted by column: a vector, not a map. A map's first node
/// holds room for eleven cells however few a row has, and rows have two to
/// six; the view tables hold millions of rows. Stored as a map, as before.
#[derive(Clone, Debug, Default)]
pub(super) struct Cells(Vec<(Box<str>, Cell)>);

impl Cells {
    fn find(&self, col: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(c, _)| (**c).cmp(col))
    }

    fn iter(&self) -> impl Iterator<Item = (&str, &Cell)> {
        self.0.iter().map(|(c, cell)| (&**c, cell))
    }
}

impl Serialize for Cells {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for Cells {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let m: BTreeMap<String, Cell> = BTreeMap::deserialize(d)?;
        Ok(Self(
            m.into_iter()
                .map(|(c, cell)| (c.into_boxed_str(), cell))
                .collect(),
        ))
    }
}

impl Content for Cells {
    type Write = Map<String, Value>;
    type Out = Map<String, Value>;

    fn write(&mut self, ts: i64, values: Map<String, Value>) {
        for (col, v) in values {
            let cell = Cell {
                ts,
                value: (!v.is_null()).then_some(v),
            };
            match self.find(&col) {
                Ok(i) => {
                    let c = &mut self.0[i].1;
                    if ts > c.ts || (ts == c.ts && c.value.is_some()) {
                        *c = cell;
                    }
                }
                Err(i) => self.0.insert(i, (col.into_boxed_str(), cell)),
            }
        }
    }

    fn live(&self, deleted_at: Option<i64>) -> Option<Map<String, Value>> {
        let mut out = Map::new();
        for (col, c) in self.iter() {
            if deleted_at.is_some_and(|d| c.ts <= d) {
                continue;
            }
            if let Some(v) = &c.value {
                out.insert(col.to_owned(), v.clone());
            }
        }
        (!out.is_empty()).then_some(out)
    }

    fn bytes(&self) -> u64 {
        self.iter()
            .map(|(k, c)| CELL_BYTES + k.len() as u64 + c.value.as_ref().map_or(0, value_bytes))
            .sum()
    }

    fn serialize_row<S: serde::Serializer>(
        &self,
        deleted_at: Option<i64>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        CellsRef {
            deleted_at,
            cells: self,
        }
        .serialize(s)
    }

    fn deserialize_row<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<(Option<i64>, Self), D::Error> {
        #[derive(Deserialize)]
        struct Stored {
            deleted_at: Option<i64>,
            cells: Cells,
        }
        let r = Stored::deserialize(d)?;
        Ok((r.deleted_at, r.cells))
    }
}

/// A row's value as one typed value written whole: every write statement
/// sets every column (as the CQL stores' do, binding absent values as
/// nulls), so one timestamp stands for all its cells. No JSON on the write
/// path: the projector's rows go in as they are.
#[derive(Clone, Debug)]
pub(super) struct Whole<R> {
    ts: i64,
    value: Option<R>,
}

impl<R> Default for Whole<R> {
    fn default() -> Self {
        Self {
            ts: i64::MIN,
            value: None,
        }
    }
}

/// The estimated heap bytes of a typed row (beyond its own size).
pub(super) trait Footprint {
    /// Heap bytes its strings and vectors hold.
    fn heap(&self) -> u64;
}

impl Footprint for crate::event::Principal {
    fn heap(&self) -> u64 {
        (self.id.as_str().len() + self.name.len() + self.avatar_url.as_ref().map_or(0, String::len))
            as u64
    }
}

impl<R> Content for Whole<R>
where
    R: Footprint + Serialize + DeserializeOwned + Clone + std::fmt::Debug + Send + Sync + 'static,
{
    type Write = R;
    type Out = R;

    fn write(&mut self, ts: i64, r: R) {
        // A write at the same timestamp wins, as a cell's does.
        if ts >= self.ts {
            self.ts = ts;
            self.value = Some(r);
        }
    }

    fn live(&self, deleted_at: Option<i64>) -> Option<R> {
        self.value
            .as_ref()
            .filter(|_| deleted_at.is_none_or(|d| self.ts > d))
            .cloned()
    }

    fn bytes(&self) -> u64 {
        self.value.as_ref().map_or(0, |r| {
            CELL_BYTES + std::mem::size_of::<R>() as u64 + r.heap()
        })
    }

    /// `{"deleted_at", "ts", "row"}`: the row as its type serializes,
    /// with no JSON tree between.
    fn serialize_row<S: serde::Serializer>(
        &self,
        deleted_at: Option<i64>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Row", 3)?;
        st.serialize_field("deleted_at", &deleted_at)?;
        st.serialize_field("ts", &self.ts)?;
        st.serialize_field("row", &self.value)?;
        st.end()
    }

    /// Its own form, or cells (what an older atelier stored).
    fn deserialize_row<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<(Option<i64>, Self), D::Error> {
        #[derive(Deserialize)]
        #[serde(bound(deserialize = "R: DeserializeOwned"))]
        struct Stored<R> {
            deleted_at: Option<i64>,
            #[serde(default)]
            ts: Option<i64>,
            #[serde(default)]
            row: Option<R>,
            #[serde(default)]
            cells: Option<Cells>,
        }
        let r = Stored::<R>::deserialize(d)?;
        let whole = match r.cells {
            Some(c) => Self::from_cells(c, r.deleted_at).map_err(serde::de::Error::custom)?,
            None => Self {
                ts: r.ts.unwrap_or(i64::MIN),
                value: r.row,
            },
        };
        Ok((r.deleted_at, whole))
    }
}

impl<R: DeserializeOwned> Whole<R> {
    /// The live cells, at the newest of their timestamps (rows written as
    /// cells by an older atelier: it wrote every row whole too).
    fn from_cells(c: Cells, deleted_at: Option<i64>) -> Result<Self, String> {
        let mut ts = i64::MIN;
        let mut m = Map::new();
        for (col, cell) in c.0 {
            if deleted_at.is_some_and(|d| cell.ts <= d) {
                continue;
            }
            if let Some(v) = cell.value {
                ts = ts.max(cell.ts);
                m.insert(col.into_string(), v);
            }
        }
        if m.is_empty() {
            return Ok(Self::default());
        }
        let value = from_cells(m).map_err(|e| e.to_string())?;
        Ok(Self {
            ts,
            value: Some(value),
        })
    }
}

impl<V: Content> Row<V> {
    fn write(&mut self, ts: i64, w: V::Write) {
        self.cells.write(ts, w);
    }

    fn delete(&mut self, ts: i64) {
        self.deleted_at = Some(self.deleted_at.map_or(ts, |d| d.max(ts)));
    }

    /// The live contents; `None` when the row is dead.
    pub(super) fn live(&self) -> Option<V::Out> {
        self.cells.live(self.deleted_at)
    }
}

impl<V: Content> Serialize for Row<V> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.cells.serialize_row(self.deleted_at, s)
    }
}

impl<'de, V: Content> Deserialize<'de> for Row<V> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (deleted_at, cells) = V::deserialize_row(d)?;
        Ok(Self { deleted_at, cells })
    }
}

/// One partition: static cells and clustering rows.
#[derive(Debug, Serialize, Deserialize)]
#[serde(bound(
    serialize = "C: Serialize, S: Content, R: Content",
    deserialize = "C: Deserialize<'de>, S: Content, R: Content"
))]
pub(super) struct Partition<C: Ord, S = Cells, R = Cells> {
    pub(super) statics: Row<S>,
    #[serde(with = "pairs")]
    pub(super) rows: BTreeMap<C, Row<R>>,
    /// The access clock's tick of its last use (least recently used
    /// partitions are spilled first).
    #[serde(skip)]
    used: AtomicU64,
    /// Its estimated size in memory.
    #[serde(skip)]
    bytes: u64,
}

/// A map in a snapshot: its entries as a sequence of pairs (its keys need
/// not be strings).
mod pairs {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub(super) fn serialize<S: Serializer, K: Serialize, V: Serialize>(
        m: &BTreeMap<K, V>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(m.iter())
    }

    pub(super) fn deserialize<'de, D, K, V>(d: D) -> Result<BTreeMap<K, V>, D::Error>
    where
        D: Deserializer<'de>,
        K: Deserialize<'de> + Ord,
        V: Deserialize<'de>,
    {
        let pairs: Vec<(K, V)> = Vec::deserialize(d)?;
        Ok(pairs.into_iter().collect())
    }
}

impl<C: Ord, S: Default, R> Default for Partition<C, S, R> {
    fn default() -> Self {
        Self {
            statics: Row::default(),
            rows: BTreeMap::new(),
            used: AtomicU64::new(0),
            bytes: PART_BYTES,
        }
    }
}

/// Estimated bytes of a partition without rows, a row's map entry, a
/// cell's; calibrated against resident memory by `bench soak`.
const PART_BYTES: u64 = 400;
const ROW_BYTES: u64 = 240;
const CELL_BYTES: u64 = 170;

fn value_bytes(v: &Value) -> u64 {
    match v {
        Value::Null | Value::Bool(_) | Value::Number(_) => 0,
        Value::String(s) => 32 + s.len() as u64,
        Value::Array(a) => 64 + a.iter().map(|v| 48 + value_bytes(v)).sum::<u64>(),
        Value::Object(m) => {
            96 + m
                .iter()
                .map(|(k, v)| 160 + k.len() as u64 + value_bytes(v))
                .sum::<u64>()
        }
    }
}

impl<V: Content> Row<V> {
    fn bytes(&self) -> u64 {
        ROW_BYTES + self.cells.bytes()
    }
}

impl<C: Ord, S: Content, R: Content> Partition<C, S, R> {
    /// Its estimated size, every row walked (read back from disk).
    fn estimate(&self) -> u64 {
        let per_row = std::mem::size_of::<C>() as u64;
        PART_BYTES
            + self.statics.bytes()
            + self.rows.values().map(|r| per_row + r.bytes()).sum::<u64>()
    }
}

/// A mutation of one partition, applied atomically: of its static cells
/// (written as `S`), or of a row (written as `R`).
pub(super) enum Mutation<C, S = Map<String, Value>, R = Map<String, Value>> {
    Static(S),
    Upsert(C, R),
    Delete(C),
}

/// A partition read back from the spill file (`None`: the file lacks
/// it), with the eviction count it was read at.
type ReadBack<C, S, R> = Option<(u64, Option<Partition<C, S, R>>)>;

/// A mutation of a table whose contents are `S` (statics) and `R` (rows).
type MutationOf<C, S, R> = Mutation<C, <S as Content>::Write, <R as Content>::Write>;

/// One table: partitions by key, rows in clustering order. With a spill
/// file attached (`spill`), partitions past the memory budget leave
/// memory and come back on their next use.
#[derive(Debug)]
pub(super) struct Table<P, C: Ord, S = Cells, R = Cells> {
    inner: Arc<Inner<P, C, S, R>>,
    counters: Arc<Counters>,
}

#[derive(Debug)]
struct Inner<P, C: Ord, S, R> {
    parts: RwLock<HashMap<P, Partition<C, S, R>>>,
    /// The estimated bytes of the resident partitions.
    bytes: AtomicU64,
    /// Bumped by every eviction and clear: a partition read from the file
    /// meanwhile is read again.
    evictions: AtomicU64,
    /// Bumped when the table is cleared: its spilled partitions are under
    /// a prefix of their epoch, and an old epoch's are garbage.
    epoch: AtomicU64,
    spill: OnceLock<Attached>,
}

#[derive(Debug)]
struct Attached {
    spill: Arc<Spill>,
    /// The store's and the table's name.
    tag: String,
}

impl<P, C: Ord, S, R> Inner<P, C, S, R> {
    fn prefix(&self, a: &Attached) -> Vec<u8> {
        format!("{}#{}\0", a.tag, self.epoch.load(Ordering::Acquire)).into_bytes()
    }
}

fn corrupt(e: serde_json::Error) -> ViewError {
    ViewError::Corrupt(format!("a spilled view partition: {e}"))
}

/// A text clustering key that compares by its first 16 bytes as one
/// integer before it compares the rest: a row lookup in a partition of a
/// hundred thousand voters makes some twenty comparisons, and most differ
/// in those bytes. Ordered as its text; stored as its text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct TextKey {
    /// The first 16 bytes, big-endian, zero-padded.
    head: u128,
    text: Box<str>,
}

impl From<String> for TextKey {
    fn from(s: String) -> Self {
        let mut b = [0u8; 16];
        let n = s.len().min(16);
        b[..n].copy_from_slice(&s.as_bytes()[..n]);
        Self {
            head: u128::from_be_bytes(b),
            text: s.into_boxed_str(),
        }
    }
}

impl From<&str> for TextKey {
    fn from(s: &str) -> Self {
        s.to_owned().into()
    }
}

impl Ord for TextKey {
    /// As the text's: heads that differ differ at a byte where the texts
    /// differ, or where the shorter one (padded with zero) ended first.
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.head.cmp(&o.head).then_with(|| self.text.cmp(&o.text))
    }
}

impl PartialOrd for TextKey {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}

impl Serialize for TextKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for TextKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Self::from)
    }
}

/// A page of a scan: static cells, and the key to continue after.
pub(super) type StaticsPage<P, S> = (Vec<<S as Content>::Out>, Option<P>);

/// Key and partition types of a table.
pub(super) trait PartKey:
    Hash + Eq + Clone + Ord + Serialize + DeserializeOwned + Send + Sync + 'static
{
}
impl<T: Hash + Eq + Clone + Ord + Serialize + DeserializeOwned + Send + Sync + 'static> PartKey
    for T
{
}
/// Clustering key types of a table.
pub(super) trait RowKey:
    Ord + Clone + Serialize + DeserializeOwned + Send + Sync + 'static
{
}
impl<T: Ord + Clone + Serialize + DeserializeOwned + Send + Sync + 'static> RowKey for T {}

impl<P: PartKey, C: RowKey, S: Content, R: Content> Table<P, C, S, R> {
    /// A table whose statements count in `counters`.
    pub(super) fn new(counters: &Arc<Counters>) -> Self {
        Self {
            inner: Arc::new(Inner {
                parts: RwLock::new(HashMap::default()),
                bytes: AtomicU64::new(0),
                evictions: AtomicU64::new(0),
                epoch: AtomicU64::new(0),
                spill: OnceLock::new(),
            }),
            counters: counters.clone(),
        }
    }

    /// Spills this table's partitions past the budget to `spill`, under
    /// `tag` (unique per store and table). Its resident partitions count
    /// against the budget from now on.
    pub(super) fn attach(&self, spill: &Arc<Spill>, tag: String) {
        let mut total = 0;
        for p in self.inner.parts.write().values_mut() {
            p.bytes = p.estimate();
            total += p.bytes;
        }
        if self
            .inner
            .spill
            .set(Attached {
                spill: spill.clone(),
                tag,
            })
            .is_ok()
        {
            self.inner.bytes.store(total, Ordering::Relaxed);
            spill.grew(total);
            let weak: Weak<dyn Evict> = Arc::downgrade(&self.inner) as Weak<Inner<P, C, S, R>>;
            spill.register(weak);
        }
    }

    /// The partition `pk` as the spill file holds it.
    fn load(&self, a: &Attached, pk: &P) -> Result<Option<Partition<C, S, R>>, ViewError> {
        let mut key = self.inner.prefix(a);
        key.extend(serde_json::to_vec(pk).map_err(corrupt)?);
        let Some(bytes) = a.spill.get(&key)? else {
            return Ok(None);
        };
        let mut p: Partition<C, S, R> = serde_json::from_slice(&bytes).map_err(corrupt)?;
        p.bytes = p.estimate();
        Ok(Some(p))
    }

    /// Runs `f` on the partition `pk` (resident, or read back from the
    /// spill file into memory; `None` when neither holds it) under the
    /// table's write lock when `create`, or when it was read back.
    fn with<T>(
        &self,
        pk: &P,
        create: bool,
        f: impl FnOnce(Option<&mut Partition<C, S, R>>) -> (T, i64),
    ) -> Result<T, ViewError> {
        let a = self.inner.spill.get();
        let mut loaded: ReadBack<C, S, R> = None;
        let (r, grew) = loop {
            let mut parts = self.inner.parts.write();
            if !parts.contains_key(pk)
                && let Some(a) = a
            {
                let evictions = self.inner.evictions.load(Ordering::Acquire);
                match &loaded {
                    // Read back before any eviction since: it is current.
                    Some((at, _)) if *at == evictions => {}
                    _ => {
                        drop(parts);
                        loaded = Some((evictions, self.load(a, pk)?));
                        continue;
                    }
                }
            }
            let mut grew = 0i64;
            if !parts.contains_key(pk) {
                let part = match loaded.take().and_then(|(_, p)| p) {
                    Some(p) => p,
                    None if create => Partition::default(),
                    None => break f(None),
                };
                grew += part.bytes as i64;
                parts.insert(pk.clone(), part);
            }
            let part = parts.get_mut(pk).expect("inserted");
            if let Some(a) = a {
                part.used.store(a.spill.tick(), Ordering::Relaxed);
            }
            let before = part.bytes as i64;
            let (r, delta) = f(Some(part));
            part.bytes = (before + delta).max(0) as u64;
            break (r, grew + delta);
        };
        if let Some(a) = a {
            if grew > 0 {
                self.inner.bytes.fetch_add(grew as u64, Ordering::Relaxed);
                a.spill.grew(grew as u64);
            } else if grew < 0 {
                let by = grew.unsigned_abs();
                let _ = self
                    .inner
                    .bytes
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                        Some(b.saturating_sub(by))
                    });
                a.spill.shrank(by);
            }
            a.spill.enforce();
        }
        Ok(r)
    }

    /// Runs `f` on the resident partition `pk` under the read lock, or,
    /// when it is not resident, as `with` does.
    fn read<T>(
        &self,
        pk: &P,
        f: impl FnOnce(Option<&Partition<C, S, R>>) -> T,
    ) -> Result<T, ViewError> {
        {
            let parts = self.inner.parts.read();
            match (parts.get(pk), self.inner.spill.get()) {
                (Some(p), a) => {
                    if let Some(a) = a {
                        p.used.store(a.spill.tick(), Ordering::Relaxed);
                    }
                    return Ok(f(Some(p)));
                }
                (None, None) => return Ok(f(None)),
                (None, Some(_)) => {}
            }
        }
        self.with(pk, false, |p| (f(p.map(|p| &*p)), 0))
    }

    /// One write statement per mutation, applied together.
    pub(super) fn batch(
        &self,
        pk: &P,
        ts: i64,
        muts: Vec<MutationOf<C, S, R>>,
    ) -> Result<(), ViewError> {
        self.batch_each(pk, muts.into_iter().map(|m| (ts, m)).collect())
    }

    /// One request to one partition: a write statement per mutation, each
    /// at its own timestamp, applied together.
    pub(super) fn batch_each(
        &self,
        pk: &P,
        muts: Vec<(i64, MutationOf<C, S, R>)>,
    ) -> Result<(), ViewError> {
        self.counters.write(muts.len() as u64);
        self.counters.request(1);
        let sized = self.inner.spill.get().is_some();
        self.with(pk, true, |part| {
            let part = part.expect("created");
            let mut delta = 0i64;
            let size_s = |r: &Row<S>| if sized { r.bytes() as i64 } else { 0 };
            let size = |r: &Row<R>| if sized { r.bytes() as i64 } else { 0 };
            let per_row = if sized {
                std::mem::size_of::<C>() as i64
            } else {
                0
            };
            for (ts, m) in muts {
                let (ck, write) = match m {
                    Mutation::Static(v) => {
                        let b = size_s(&part.statics);
                        part.statics.write(ts, v);
                        delta += size_s(&part.statics) - b;
                        continue;
                    }
                    Mutation::Upsert(ck, v) => (ck, Some(v)),
                    Mutation::Delete(ck) => (ck, None),
                };
                let (row, b) = match part.rows.entry(ck) {
                    std::collections::btree_map::Entry::Occupied(o) => {
                        let row = o.into_mut();
                        let b = size(row);
                        (row, b)
                    }
                    std::collections::btree_map::Entry::Vacant(v) => {
                        (v.insert(Row::default()), -per_row)
                    }
                };
                match write {
                    Some(v) => row.write(ts, v),
                    None => row.delete(ts),
                }
                delta += size(row) - b;
            }
            ((), if sized { delta } else { 0 })
        })
    }

    /// One read: a partition's static cells.
    pub(super) fn statics(&self, pk: &P) -> Result<Option<S::Out>, ViewError> {
        self.counters.read();
        self.read(pk, |p| p.and_then(|p| p.statics.live()))
    }

    /// One read: a partition's rows.
    pub(super) fn rows<F, T>(&self, pk: &P, f: F) -> Result<T, ViewError>
    where
        F: FnOnce(Option<&BTreeMap<C, Row<R>>>) -> T,
    {
        self.counters.read();
        self.read(pk, |p| f(p.map(|p| &p.rows)))
    }

    /// One read over several partitions (as CQL's `IN` on the partition
    /// key): `f` on each one's rows in turn.
    pub(super) fn rows_of<F>(&self, pks: &[P], mut f: F) -> Result<(), ViewError>
    where
        F: FnMut(Option<&BTreeMap<C, Row<R>>>) -> Result<(), ViewError>,
    {
        self.counters.read();
        for pk in pks {
            self.read(pk, |p| f(p.map(|p| &p.rows)))??;
        }
        Ok(())
    }

    /// A control read of a partition's rows, not counted (as CQL's control
    /// statements are not): what a store reads behind a cache of its own.
    pub(super) fn control_rows<F, T>(&self, pk: &P, f: F) -> Result<T, ViewError>
    where
        F: FnOnce(Option<&BTreeMap<C, Row<R>>>) -> T,
    {
        self.read(pk, |p| f(p.map(|p| &p.rows)))
    }

    /// One read over every partition (a scan): the static cells of the
    /// `limit` smallest keys past `after`, spilled partitions included, and
    /// the key to continue after (when the page is full).
    pub(super) fn scan_statics(
        &self,
        after: Option<&P>,
        limit: usize,
    ) -> Result<StaticsPage<P, S>, ViewError> {
        self.counters.read();
        let limit = limit.max(1);
        // Partitions are hashed, not ordered: one walk keeps the `limit`
        // smallest keys past the cursor in a max-heap, so a page costs one
        // pass over the keys and `limit` of them in memory.
        let mut heap = std::collections::BinaryHeap::with_capacity(limit + 1);
        let mut offer = |k: P| {
            if after.is_some_and(|a| k <= *a) {
                return;
            }
            if heap.len() < limit {
                heap.push(k);
            } else if heap.peek().is_some_and(|top| k < *top) {
                heap.pop();
                heap.push(k);
            }
        };
        for k in self.inner.parts.read().keys() {
            offer(k.clone());
        }
        if let Some(a) = self.inner.spill.get() {
            for k in a.spill.keys(&self.inner.prefix(a))? {
                offer(serde_json::from_slice(&k).map_err(corrupt)?);
            }
        }
        let mut keys = heap.into_sorted_vec();
        keys.dedup();
        let next = (keys.len() == limit)
            .then(|| keys.last().cloned())
            .flatten();
        let mut out = Vec::with_capacity(keys.len());
        for k in &keys {
            let resident = self.inner.parts.read().get(k).map(|p| p.statics.live());
            let live = match (resident, self.inner.spill.get()) {
                (Some(live), _) => live,
                // Read from the file without bringing it back: a scan
                // passes every partition once.
                (None, Some(a)) => self.load(a, k)?.and_then(|p| p.statics.live()),
                (None, None) => None,
            };
            // As in CQL, a partition without static cells is left out.
            out.extend(live);
        }
        Ok((out, next))
    }

    /// Drops one partition (in memory and in the spill file at once: the
    /// control rows, its only user, never spill).
    pub(super) fn remove(&self, pk: &P) -> Result<(), ViewError> {
        let mut parts = self.inner.parts.write();
        let gone = parts.remove(pk);
        if let Some(a) = self.inner.spill.get() {
            let mut key = self.inner.prefix(a);
            key.extend(serde_json::to_vec(pk).map_err(corrupt)?);
            a.spill.remove(&key, false)?;
            self.inner.evictions.fetch_add(1, Ordering::AcqRel);
            if let Some(p) = gone {
                self.inner.bytes.fetch_sub(p.bytes, Ordering::Relaxed);
                a.spill.shrank(p.bytes);
            }
        }
        Ok(())
    }

    /// Drops every partition. Spilled ones stay in the file under the old
    /// epoch until a snapshot no longer refers to it (`Spill::collect_garbage`).
    pub(super) fn clear(&self) {
        let mut parts = self.inner.parts.write();
        parts.clear();
        if let Some(a) = self.inner.spill.get() {
            a.spill.garbage(self.inner.prefix(a));
            self.inner.epoch.fetch_add(1, Ordering::AcqRel);
            // A partition being read back from the old epoch is read again
            // (from the new one: nothing).
            self.inner.evictions.fetch_add(1, Ordering::AcqRel);
            let b = self.inner.bytes.swap(0, Ordering::Relaxed);
            a.spill.shrank(b);
        }
    }

    /// Counts this table's statements in `counters` (a table read from a
    /// snapshot).
    pub(super) fn rebind(&mut self, counters: &Arc<Counters>) {
        self.counters = counters.clone();
    }
}

impl<P: PartKey, C: RowKey, S: Content, R: Content> Evict for Inner<P, C, S, R> {
    fn prefix(&self) -> Option<Vec<u8>> {
        self.spill.get().map(|a| Inner::prefix(self, a))
    }

    fn ages(&self, out: &mut Vec<(u64, u64)>) {
        out.extend(
            self.parts
                .read()
                .values()
                .map(|p| (p.used.load(Ordering::Relaxed), p.bytes)),
        );
    }

    fn evict(&self, tick: u64) -> Result<u64, ViewError> {
        let Some(a) = self.spill.get() else {
            return Ok(0);
        };
        let prefix = Inner::prefix(self, a);
        let mut parts = self.parts.write();
        let mut freed = 0u64;
        let mut out = Vec::new();
        let mut victims = Vec::new();
        for (k, p) in parts.iter() {
            if p.used.load(Ordering::Relaxed) > tick {
                continue;
            }
            let mut key = prefix.clone();
            key.extend(serde_json::to_vec(k).map_err(corrupt)?);
            out.push((key, serde_json::to_vec(p).map_err(corrupt)?));
            freed += p.bytes;
            victims.push(k.clone());
        }
        if victims.is_empty() {
            return Ok(0);
        }
        // In the file before it leaves memory: never in neither place.
        a.spill.put(&out)?;
        for k in &victims {
            parts.remove(k);
        }
        self.evictions.fetch_add(1, Ordering::AcqRel);
        drop(parts);
        let _ = self
            .bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                Some(b.saturating_sub(freed))
            });
        a.spill.shrank(freed);
        Ok(freed)
    }
}

/// A table in a snapshot: its spill epoch and its resident partitions, as
/// a sequence of `(key, partition)` pairs (keys need not be strings), read
/// under its lock. Spilled partitions are in the spill file.
impl<P: Serialize, C: Ord + Serialize, S: Content, R: Content> Serialize for Table<P, C, S, R> {
    fn serialize<Z: serde::Serializer>(&self, s: Z) -> Result<Z::Ok, Z::Error> {
        use serde::ser::SerializeStruct;
        let parts = self.inner.parts.read();
        let mut st = s.serialize_struct("Table", 2)?;
        st.serialize_field("epoch", &self.inner.epoch.load(Ordering::Acquire))?;
        st.serialize_field("parts", &Seq(&*parts))?;
        st.end()
    }
}

struct Seq<'a, P, C: Ord, S, R>(&'a HashMap<P, Partition<C, S, R>>);

impl<P: Serialize, C: Ord + Serialize, S: Content, R: Content> Serialize for Seq<'_, P, C, S, R> {
    fn serialize<Z: serde::Serializer>(&self, s: Z) -> Result<Z::Ok, Z::Error> {
        s.collect_seq(self.0.iter())
    }
}

#[derive(Deserialize)]
#[serde(bound(
    deserialize = "P: Deserialize<'de> + Hash + Eq, C: Deserialize<'de> + Ord, S: Content, R: Content"
))]
struct Stored<P, C: Ord, S, R> {
    epoch: u64,
    parts: Vec<(P, Partition<C, S, R>)>,
}

impl<'de, P, C, S, R> Deserialize<'de> for Table<P, C, S, R>
where
    P: Deserialize<'de> + Hash + Eq,
    C: Deserialize<'de> + Ord,
    S: Content,
    R: Content,
{
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let t = Stored::<P, C, S, R>::deserialize(d)?;
        Ok(Self {
            inner: Arc::new(Inner {
                parts: RwLock::new(t.parts.into_iter().collect()),
                bytes: AtomicU64::new(0),
                evictions: AtomicU64::new(0),
                epoch: AtomicU64::new(t.epoch),
                spill: OnceLock::new(),
            }),
            counters: Arc::default(),
        })
    }
}

/// A value as the cells of a row.
pub(super) fn to_cells<T: Serialize>(v: &T) -> Map<String, Value> {
    match serde_json::to_value(v) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    }
}

/// A row's cells as a value.
pub(super) fn from_cells<T: DeserializeOwned>(m: Map<String, Value>) -> Result<T, ViewError> {
    serde_json::from_value(Value::Object(m)).map_err(|e| ViewError::Corrupt(e.to_string()))
}

/// Contents read as a `T`: JSON cells as any type they deserialize to, a
/// typed row as itself.
pub(super) trait ReadAs<T>: Content {
    /// The live contents as a `T`.
    fn read_as(out: Self::Out) -> Result<T, ViewError>;
}

impl<T: DeserializeOwned> ReadAs<T> for Cells {
    fn read_as(out: Map<String, Value>) -> Result<T, ViewError> {
        from_cells(out)
    }
}

impl<R> ReadAs<R> for Whole<R>
where
    Whole<R>: Content<Out = R>,
{
    fn read_as(out: R) -> Result<R, ViewError> {
        Ok(out)
    }
}

/// Rows after a cursor in a newest-first clustering.
pub(super) fn page<K: Ord, V: ReadAs<T>, T>(
    rows: Option<&BTreeMap<K, Row<V>>>,
    after: Option<K>,
    limit: usize,
) -> Result<Vec<T>, ViewError> {
    let Some(rows) = rows else {
        return Ok(Vec::new());
    };
    let iter: Box<dyn Iterator<Item = (&K, &Row<V>)>> = match after {
        Some(start) => {
            Box::new(rows.range((std::ops::Bound::Excluded(start), std::ops::Bound::Unbounded)))
        }
        None => Box::new(rows.iter()),
    };
    iter.filter_map(|(_, r)| r.live())
        .take(limit)
        .map(V::read_as)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn newer_timestamps_win_per_cell() {
        let mut r = Row::<Cells>::default();
        r.write(5, obj(json!({"a": 1, "b": 1})));
        r.write(3, obj(json!({"a": 2, "c": 2})));
        r.write(7, obj(json!({"b": 3})));
        assert_eq!(r.live().unwrap(), obj(json!({"a": 1, "b": 3, "c": 2})));
    }

    #[test]
    fn deletes_shadow_older_cells_only() {
        let mut r = Row::<Cells>::default();
        r.write(5, obj(json!({"a": 1})));
        r.delete(5);
        assert!(r.live().is_none());
        r.write(4, obj(json!({"a": 2})));
        assert!(r.live().is_none(), "an older write stays dead");
        r.write(6, obj(json!({"a": 3})));
        assert_eq!(r.live().unwrap(), obj(json!({"a": 3})));
    }

    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    struct Typed {
        n: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    }

    impl Footprint for Typed {
        fn heap(&self) -> u64 {
            self.name.as_ref().map_or(0, |n| n.len() as u64)
        }
    }

    fn typed(n: i64, name: Option<&str>) -> Typed {
        Typed {
            n,
            name: name.map(str::to_owned),
        }
    }

    #[test]
    fn a_whole_row_takes_the_newest_write_and_a_delete_shadows_older_ones() {
        let mut r = Row::<Whole<Typed>>::default();
        assert_eq!(r.live(), None);
        r.write(5, typed(1, Some("a")));
        r.write(3, typed(2, None));
        assert_eq!(r.live(), Some(typed(1, Some("a"))), "an older write loses");
        r.write(5, typed(3, None));
        assert_eq!(r.live(), Some(typed(3, None)), "the same timestamp wins");
        r.delete(6);
        assert_eq!(r.live(), None);
        r.write(6, typed(4, None));
        assert_eq!(r.live(), None, "a delete wins at its own timestamp");
        r.write(7, typed(5, Some("b")));
        assert_eq!(r.live(), Some(typed(5, Some("b"))));
    }

    /// A typed table reads the cells an older atelier stored (snapshot v3,
    /// or its spill file) with their timestamps, and its own form.
    #[test]
    fn typed_tables_read_stored_cells_and_their_own_form() {
        let c = Arc::new(Counters::default());
        let cells: Table<u8, u8> = Table::new(&c);
        let cell_rows = [
            (1, json!({"n": 1, "name": "a"})),
            (2, json!({"n": 2})),
            (3, json!({"n": 3, "name": "c"})),
        ];
        for (k, v) in &cell_rows {
            cells
                .batch(&7, 10, vec![Mutation::Upsert(*k, obj(v.clone()))])
                .unwrap();
        }
        cells
            .batch(
                &7,
                11,
                vec![Mutation::Static(obj(json!({"n": 70}))), Mutation::Delete(3)],
            )
            .unwrap();
        type Typed2 = Table<u8, u8, Whole<Typed>, Whole<Typed>>;
        let whole: Typed2 = serde_json::from_slice(&serde_json::to_vec(&cells).unwrap()).unwrap();
        let read = |t: &Typed2| {
            (
                t.statics(&7).unwrap(),
                t.rows(&7, |r| page::<_, _, Typed>(r, None, 10))
                    .unwrap()
                    .unwrap(),
            )
        };
        let expect = (
            Some(typed(70, None)),
            vec![typed(1, Some("a")), typed(2, None)],
        );
        assert_eq!(read(&whole), expect);
        // The timestamps came along: an older write still loses, and the
        // delete still shadows one at its timestamp.
        let stale = |t: &Typed2| {
            t.batch(&7, 9, vec![Mutation::Upsert(1, typed(9, None))])
                .unwrap();
            t.batch(&7, 11, vec![Mutation::Upsert(3, typed(9, None))])
                .unwrap();
        };
        stale(&whole);
        assert_eq!(read(&whole), expect);
        // Its own form: the same rows, and the same timestamps.
        let again: Typed2 = serde_json::from_slice(&serde_json::to_vec(&whole).unwrap()).unwrap();
        stale(&again);
        assert_eq!(read(&again), expect);
        again
            .batch(&7, 12, vec![Mutation::Upsert(3, typed(9, None))])
            .unwrap();
        assert_eq!(read(&again).1.len(), 3, "a newer write revives the row");
    }

    #[test]
    fn text_keys_order_as_their_text() {
        let words = [
            "",
            "a",
            "a\0",
            "a\0\0b",
            "ab",
            "voter-1",
            "voter-10",
            "voter-100000000002",
            "voter-100000000010",
            "voter-2",
            "voter-20",
            "h:00ff",
            "h:00fe99",
            "\u{7f}",
            "é",
            "0123456789abcdef",
            "0123456789abcdef0",
            "0123456789abcdeg",
        ];
        for a in words {
            for b in words {
                assert_eq!(
                    TextKey::from(a).cmp(&TextKey::from(b)),
                    a.cmp(b),
                    "{a:?} against {b:?}"
                );
            }
        }
        let k = TextKey::from("voter-7");
        let text = serde_json::to_string(&k).unwrap();
        assert_eq!(text, "\"voter-7\"");
        assert_eq!(serde_json::from_str::<TextKey>(&text).unwrap(), k);
    }

    #[test]
    fn every_access_is_counted_once() {
        let counters = Arc::new(Counters::default());
        let t: Table<u8, u8> = Table::new(&counters);
        t.batch(
            &1,
            1,
            vec![
                Mutation::Static(obj(json!({"a": 1}))),
                Mutation::Upsert(2, obj(json!({"b": 1}))),
            ],
        )
        .unwrap();
        let _ = t.statics(&1).unwrap();
        t.rows(&1, |_| ()).unwrap();
        assert_eq!(counters.get(), (2, 2));
    }
}

#[cfg(test)]
mod spill_tests {
    use super::*;
    use rand::{Rng, SeedableRng, rngs::SmallRng};
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    type Contents = Vec<(
        u32,
        Option<Map<String, Value>>,
        Vec<(u32, Map<String, Value>)>,
    )>;

    fn contents(t: &Table<u32, u32>, pks: u32) -> Contents {
        (0..pks)
            .map(|pk| {
                let statics = t.statics(&pk).unwrap();
                let rows = t
                    .rows(&pk, |r| {
                        r.into_iter()
                            .flatten()
                            .filter_map(|(k, row)| Some((*k, row.live()?)))
                            .collect::<Vec<_>>()
                    })
                    .unwrap();
                (pk, statics, rows)
            })
            .collect()
    }

    fn resident(t: &Table<u32, u32>) -> (usize, u64, u64) {
        let parts = t.inner.parts.read();
        let walked = parts.values().map(Partition::estimate).sum();
        (parts.len(), t.inner.bytes.load(Ordering::Relaxed), walked)
    }

    #[test]
    fn a_table_past_its_budget_spills_and_answers_as_one_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let budget = 24 << 10;
        let spill = Spill::open(&dir.path().join("views.spill"), budget, true, true).unwrap();
        spill.set_hot_window(0);
        let c = Arc::new(Counters::default());
        let mem: Table<u32, u32> = Table::new(&c);
        let disk: Table<u32, u32> = Table::new(&c);
        disk.attach(&spill, "t".into());
        let pks = 150;
        let mut rng = SmallRng::seed_from_u64(11);
        for i in 0..6000i64 {
            let pk = rng.gen_range(0..pks);
            // Timestamps out of order too: an older write loses per cell.
            let ts = i - rng.gen_range(0..50);
            let muts = || {
                let mut r = SmallRng::seed_from_u64(i as u64);
                (0..r.gen_range(1..4))
                    .map(|_| match r.gen_range(0..10) {
                        0 => Mutation::Delete(r.gen_range(0..40)),
                        1 => Mutation::Static(obj(
                            json!({"n": i, "s": "x".repeat(r.gen_range(0..60))}),
                        )),
                        _ => Mutation::Upsert(
                            r.gen_range(0..40),
                            obj(json!({"v": i, "s": "y".repeat(r.gen_range(0..60))})),
                        ),
                    })
                    .collect::<Vec<_>>()
            };
            mem.batch(&pk, ts, muts()).unwrap();
            disk.batch(&pk, ts, muts()).unwrap();
            if i % 500 == 0 {
                let probe = rng.gen_range(0..pks);
                assert_eq!(
                    disk.statics(&probe).unwrap(),
                    mem.statics(&probe).unwrap(),
                    "partition {probe} after {i} batches"
                );
            }
        }
        let (n, bytes, walked) = resident(&disk);
        assert!(
            n < pks as usize / 2,
            "{n} of {pks} partitions stayed in memory"
        );
        assert!(
            bytes <= budget,
            "{bytes} resident bytes over a budget of {budget}"
        );
        assert_eq!(
            bytes, walked,
            "the running estimate drifted from a walk of the rows"
        );
        assert!(!spill.keys(b"t#0\0").unwrap().is_empty());
        // Every partition reads back as the in-memory table has it, and a
        // scan sees the spilled ones too.
        assert_eq!(contents(&disk, pks), contents(&mem, pks));
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let (mut after_a, mut after_b) = (None, None);
        loop {
            let (pa, na) = disk.scan_statics(after_a.as_ref(), 7).unwrap();
            let (pb, nb) = mem.scan_statics(after_b.as_ref(), 7).unwrap();
            a.extend(pa);
            b.extend(pb);
            assert_eq!(na, nb);
            if na.is_none() {
                break;
            }
            (after_a, after_b) = (na, nb);
        }
        assert_eq!(a, b);
        assert!(!a.is_empty());
        // Cleared: nothing comes back from the file.
        disk.clear();
        mem.clear();
        assert_eq!(contents(&disk, pks), contents(&mem, pks));
        assert_eq!(
            disk.scan_statics(None, 1000).unwrap().0,
            Vec::<Map<String, Value>>::new()
        );
    }
}

#[cfg(test)]
mod garbage_tests {
    use super::*;
    use serde_json::json;

    fn fill(t: &Table<u32, u32>) {
        for pk in 0..20 {
            let m = json!({"v": pk}).as_object().unwrap().clone();
            t.batch(&pk, 1, vec![Mutation::Upsert(pk, m)]).unwrap();
        }
    }

    #[test]
    fn what_no_table_refers_to_is_removed_at_start_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        let spill = Spill::open(&dir.path().join("views.spill"), 1, true, true).unwrap();
        spill.set_hot_window(0);
        let c = Arc::new(Counters::default());
        let kept: Table<u32, u32> = Table::new(&c);
        kept.attach(&spill, "kept".into());
        let cleared: Table<u32, u32> = Table::new(&c);
        cleared.attach(&spill, "cleared".into());
        {
            // A store dropped (a generation gone): its partitions are in
            // the file, and no table refers to them.
            let gone: Table<u32, u32> = Table::new(&c);
            gone.attach(&spill, "gone".into());
            fill(&gone);
        }
        fill(&kept);
        fill(&cleared);
        cleared.clear();
        fill(&cleared);
        assert_eq!(spill.keys(b"gone#0\0").unwrap().len(), 20);
        assert_eq!(spill.keys(b"cleared#0\0").unwrap().len(), 20);
        assert_eq!(spill.collect_unreferenced().unwrap(), 40);
        assert!(spill.keys(b"gone#0\0").unwrap().is_empty());
        assert!(spill.keys(b"cleared#0\0").unwrap().is_empty());
        assert_eq!(spill.keys(b"cleared#1\0").unwrap().len(), 20);
        assert_eq!(spill.keys(b"kept#0\0").unwrap().len(), 20);
        for pk in 0..20 {
            let v = kept.rows(&pk, |r| r.and_then(|r| r.get(&pk)).and_then(Row::live));
            assert_eq!(v.unwrap().unwrap()["v"], json!(pk));
        }
    }
}
