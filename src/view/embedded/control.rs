//! The control rows on the embedded store: checkpoints in a table of their
//! own, generation rows behind a lock (compare-and-set on `rev`).

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;

use super::EmbeddedStore;
use super::table::{Mutation, Row, Table, from_cells, to_cells};
use crate::view::{
    Checkpoint, CheckpointStore, Counters, Degraded, Generation, GenerationStore, ViewError,
    write_timestamp,
};

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct Tables {
    checkpoints: Table<String, (String, i32)>,
    /// The control rows of view generations, by view (or stage) name.
    #[serde(with = "locked")]
    generations: parking_lot::Mutex<BTreeMap<String, Generation>>,
    /// Degraded aggregates, by view and key (a sequence in a snapshot: its
    /// keys are pairs).
    #[serde(with = "locked_pairs")]
    degraded: parking_lot::Mutex<BTreeMap<(String, String), Degraded>>,
}

impl Tables {
    pub(super) fn new(c: &Arc<Counters>) -> Self {
        Self {
            checkpoints: Table::new(c),
            generations: Default::default(),
            degraded: Default::default(),
        }
    }

    pub(super) fn rebind(&mut self, c: &Arc<Counters>) {
        self.checkpoints.rebind(c);
    }

    /// Forgets every checkpoint of one view.
    pub(super) fn drop_checkpoints(&self, view: &str) -> Result<(), ViewError> {
        self.checkpoints.remove(&view.to_owned())
    }

    /// Forgets every checkpoint.
    pub(super) fn clear_checkpoints(&self) {
        self.checkpoints.clear();
    }
}

/// A locked value in a snapshot: the value, read under its lock.
mod locked {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub(super) fn serialize<S: Serializer, T: Serialize>(
        m: &parking_lot::Mutex<T>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        m.lock().serialize(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
        d: D,
    ) -> Result<parking_lot::Mutex<T>, D::Error> {
        T::deserialize(d).map(parking_lot::Mutex::new)
    }
}

/// A locked map in a snapshot: its entries as a sequence of pairs.
mod locked_pairs {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub(super) fn serialize<S: Serializer, K: Serialize, V: Serialize>(
        m: &parking_lot::Mutex<BTreeMap<K, V>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(m.lock().iter())
    }

    pub(super) fn deserialize<'de, D, K, V>(
        d: D,
    ) -> Result<parking_lot::Mutex<BTreeMap<K, V>>, D::Error>
    where
        D: Deserializer<'de>,
        K: Deserialize<'de> + Ord,
        V: Deserialize<'de>,
    {
        let pairs: Vec<(K, V)> = Vec::deserialize(d)?;
        Ok(parking_lot::Mutex::new(pairs.into_iter().collect()))
    }
}

#[async_trait]
impl CheckpointStore for EmbeddedStore {
    async fn checkpoint(
        &self,
        view: &str,
        topic: &str,
        partition: i32,
    ) -> Result<Option<Checkpoint>, ViewError> {
        self.control.checkpoints.rows(&view.to_owned(), |rows| {
            rows.and_then(|r| r.get(&(topic.to_owned(), partition)))
                .and_then(Row::live)
                .map(from_cells)
                .transpose()
        })?
    }

    async fn save_checkpoint(&self, cp: &Checkpoint) -> Result<(), ViewError> {
        self.control.checkpoints.batch(
            &cp.view,
            write_timestamp(cp.offset),
            vec![Mutation::Upsert(
                (cp.topic.clone(), cp.partition),
                to_cells(cp),
            )],
        )
    }

    async fn checkpoints(&self, view: &str) -> Result<Vec<Checkpoint>, ViewError> {
        self.control.checkpoints.rows(&view.to_owned(), |rows| {
            rows.into_iter()
                .flat_map(|r| r.values())
                .filter_map(Row::live)
                .map(from_cells)
                .collect()
        })?
    }

    async fn mark_degraded(&self, d: &Degraded) -> Result<(), ViewError> {
        self.control
            .degraded
            .lock()
            .insert((d.view.clone(), d.key.clone()), d.clone());
        Ok(())
    }

    async fn clear_degraded(&self, view: &str, key: &str) -> Result<(), ViewError> {
        self.control
            .degraded
            .lock()
            .remove(&(view.to_owned(), key.to_owned()));
        Ok(())
    }

    async fn degraded(&self, view: &str) -> Result<Vec<Degraded>, ViewError> {
        Ok(self
            .control
            .degraded
            .lock()
            .values()
            .filter(|d| d.view == view)
            .cloned()
            .collect())
    }
}

#[async_trait]
impl GenerationStore for EmbeddedStore {
    async fn generations(&self) -> Result<Vec<Generation>, ViewError> {
        Ok(self.control.generations.lock().values().cloned().collect())
    }

    async fn set_generation(&self, next: &Generation, expected: i64) -> Result<bool, ViewError> {
        let mut rows = self.control.generations.lock();
        let stored = rows.get(&next.view).map_or(0, |g| g.rev);
        if stored != expected {
            return Ok(false);
        }
        rows.insert(next.view.clone(), next.clone());
        Ok(true)
    }
}
