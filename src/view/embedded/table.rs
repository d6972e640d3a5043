//! The embedded store's tables: partitions by key, static cells and
//! clustering rows in clustering order, every cell with its write timestamp
//! (the newer wins; a delete at the same timestamp wins over a write, as in
//! CQL). A batch to one partition is atomic and isolated: it is applied
//! under the table's lock. Every access is counted here, the one place the
//! store's statements pass through.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::sync::Arc;

use parking_lot::RwLock;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::view::{Counters, ViewError};

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Cell {
    ts: i64,
    value: Option<Value>,
}

/// A row (or a partition's static cells).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(super) struct Row {
    /// Row deletion timestamp: cells at or below it are dead.
    deleted_at: Option<i64>,
    cells: BTreeMap<String, Cell>,
}

impl Row {
    fn write(&mut self, ts: i64, values: Map<String, Value>) {
        for (col, v) in values {
            let newer = match self.cells.get(&col) {
                Some(c) => ts > c.ts || (ts == c.ts && c.value.is_some()),
                None => true,
            };
            if newer {
                self.cells.insert(
                    col,
                    Cell {
                        ts,
                        value: (!v.is_null()).then_some(v),
                    },
                );
            }
        }
    }

    fn delete(&mut self, ts: i64) {
        self.deleted_at = Some(self.deleted_at.map_or(ts, |d| d.max(ts)));
    }

    /// The live cells as a JSON object; `None` when the row is dead.
    pub(super) fn live(&self) -> Option<Map<String, Value>> {
        let mut out = Map::new();
        for (col, c) in &self.cells {
            if self.deleted_at.is_some_and(|d| c.ts <= d) {
                continue;
            }
            if let Some(v) = &c.value {
                out.insert(col.clone(), v.clone());
            }
        }
        (!out.is_empty()).then_some(out)
    }
}

/// One partition: static cells and clustering rows.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(bound(serialize = "C: Serialize", deserialize = "C: Deserialize<'de>"))]
pub(super) struct Partition<C: Ord> {
    pub(super) statics: Row,
    #[serde(with = "pairs")]
    pub(super) rows: BTreeMap<C, Row>,
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

impl<C: Ord> Default for Partition<C> {
    fn default() -> Self {
        Self {
            statics: Row::default(),
            rows: BTreeMap::new(),
        }
    }
}

/// A mutation of one partition, applied atomically.
pub(super) enum Mutation<C> {
    Static(Map<String, Value>),
    Upsert(C, Map<String, Value>),
    Delete(C),
}

/// One table: partitions by key, rows in clustering order.
#[derive(Debug)]
pub(super) struct Table<P, C: Ord> {
    parts: RwLock<HashMap<P, Partition<C>>>,
    counters: Arc<Counters>,
}

impl<P: Hash + Eq + Clone, C: Ord + Clone> Table<P, C> {
    /// A table whose statements count in `counters`.
    pub(super) fn new(counters: &Arc<Counters>) -> Self {
        Self {
            parts: RwLock::new(HashMap::new()),
            counters: counters.clone(),
        }
    }

    /// One write statement per mutation, applied together.
    pub(super) fn batch(&self, pk: &P, ts: i64, muts: Vec<Mutation<C>>) {
        self.counters.write(muts.len() as u64);
        self.counters.request(1);
        let mut parts = self.parts.write();
        let part = parts.entry(pk.clone()).or_default();
        for m in muts {
            match m {
                Mutation::Static(v) => part.statics.write(ts, v),
                Mutation::Upsert(ck, v) => part.rows.entry(ck).or_default().write(ts, v),
                Mutation::Delete(ck) => part.rows.entry(ck).or_default().delete(ts),
            }
        }
    }

    /// One read: a partition's static cells.
    pub(super) fn statics(&self, pk: &P) -> Option<Map<String, Value>> {
        self.counters.read();
        self.parts.read().get(pk).and_then(|p| p.statics.live())
    }

    /// One read: a partition's rows.
    pub(super) fn rows<F, R>(&self, pk: &P, f: F) -> R
    where
        F: FnOnce(Option<&BTreeMap<C, Row>>) -> R,
    {
        self.counters.read();
        let parts = self.parts.read();
        f(parts.get(pk).map(|p| &p.rows))
    }

    /// One read over every partition (a scan).
    pub(super) fn scan<F, R>(&self, f: F) -> R
    where
        F: FnOnce(&HashMap<P, Partition<C>>) -> R,
    {
        self.counters.read();
        f(&self.parts.read())
    }

    /// Drops one partition.
    pub(super) fn remove(&self, pk: &P) {
        self.parts.write().remove(pk);
    }

    /// Drops every partition.
    pub(super) fn clear(&self) {
        self.parts.write().clear();
    }

    /// Counts this table's statements in `counters` (a table read from a
    /// snapshot).
    pub(super) fn rebind(&mut self, counters: &Arc<Counters>) {
        self.counters = counters.clone();
    }
}

/// A table in a snapshot: its partitions, as a sequence of `(key,
/// partition)` pairs (keys need not be strings), read under its lock.
impl<P: Serialize, C: Ord + Serialize> Serialize for Table<P, C> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.parts.read().iter())
    }
}

impl<'de, P, C> Deserialize<'de> for Table<P, C>
where
    P: Deserialize<'de> + Hash + Eq,
    C: Deserialize<'de> + Ord,
{
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let pairs: Vec<(P, Partition<C>)> = Vec::deserialize(d)?;
        Ok(Self {
            parts: RwLock::new(pairs.into_iter().collect()),
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

/// Rows after a cursor in a newest-first clustering.
pub(super) fn page<K: Ord, T: DeserializeOwned>(
    rows: Option<&BTreeMap<K, Row>>,
    after: Option<K>,
    limit: usize,
) -> Result<Vec<T>, ViewError> {
    let Some(rows) = rows else {
        return Ok(Vec::new());
    };
    let iter: Box<dyn Iterator<Item = (&K, &Row)>> = match after {
        Some(start) => {
            Box::new(rows.range((std::ops::Bound::Excluded(start), std::ops::Bound::Unbounded)))
        }
        None => Box::new(rows.iter()),
    };
    iter.filter_map(|(_, r)| r.live())
        .take(limit)
        .map(from_cells)
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
        let mut r = Row::default();
        r.write(5, obj(json!({"a": 1, "b": 1})));
        r.write(3, obj(json!({"a": 2, "c": 2})));
        r.write(7, obj(json!({"b": 3})));
        assert_eq!(r.live().unwrap(), obj(json!({"a": 1, "b": 3, "c": 2})));
    }

    #[test]
    fn deletes_shadow_older_cells_only() {
        let mut r = Row::default();
        r.write(5, obj(json!({"a": 1})));
        r.delete(5);
        assert!(r.live().is_none());
        r.write(4, obj(json!({"a": 2})));
        assert!(r.live().is_none(), "an older write stays dead");
        r.write(6, obj(json!({"a": 3})));
        assert_eq!(r.live().unwrap(), obj(json!({"a": 3})));
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
        );
        let _ = t.statics(&1);
        t.rows(&1, |_| ());
        assert_eq!(counters.get(), (2, 2));
    }
}
