//! The control rows on CQL: `checkpoints` (one partition per view) and
//! `generations` (one row per view or stage, changed by lightweight
//! transactions).

use std::collections::BTreeMap;

use async_trait::async_trait;
use scylla::DeserializeRow;
use scylla::value::CqlValue;

use super::{CqlStore, Db, Stmt, json, rows_err, unjson};
use crate::view::{
    Checkpoint, CheckpointStore, Degraded, Generation, GenerationStore, ViewError, write_timestamp,
};

pub(super) const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS {ks}.generations (
        view_name text PRIMARY KEY,
        body text,
        rev bigint)",
    "CREATE TABLE IF NOT EXISTS {ks}.checkpoints (
        view_name text,
        topic text,
        partition int,
        offset bigint,
        rejected text,
        PRIMARY KEY (view_name, topic, partition))",
    "CREATE TABLE IF NOT EXISTS {ks}.degraded (
        view_name text,
        key text,
        body text,
        PRIMARY KEY (view_name, key))",
];

#[derive(DeserializeRow)]
struct CheckpointRow {
    topic: String,
    partition: i32,
    offset: Option<i64>,
    rejected: Option<String>,
}

fn checkpoint_of(view: &str, r: CheckpointRow) -> Result<Checkpoint, ViewError> {
    Ok(Checkpoint {
        view: view.to_owned(),
        topic: r.topic,
        partition: r.partition,
        offset: r.offset.unwrap_or(-1),
        rejected: unjson::<Option<BTreeMap<String, u64>>>("rejected", r.rejected)?
            .unwrap_or_default(),
    })
}

/// The control rows' prepared statements.
#[derive(Debug)]
pub(super) struct Statements {
    checkpoint: Stmt,
    checkpoint_save: Stmt,
    checkpoints: Stmt,
    checkpoints_delete: Stmt,
    generations: Stmt,
    generation_insert: Stmt,
    generation_update: Stmt,
    degraded_mark: Stmt,
    degraded_clear: Stmt,
    degraded: Stmt,
}

impl Statements {
    pub(super) async fn prepare(db: &Db) -> Result<Self, ViewError> {
        let [
            checkpoint,
            checkpoint_save,
            checkpoints,
            checkpoints_delete,
            generations,
            generation_insert,
            generation_update,
            degraded_mark,
            degraded_clear,
            degraded,
        ] = db
            .prepare_all([
                "SELECT topic, partition, offset, rejected FROM {ks}.checkpoints \
                 WHERE view_name = ? AND topic = ? AND partition = ?",
                "INSERT INTO {ks}.checkpoints (view_name, topic, partition, offset, rejected) \
                 VALUES (?, ?, ?, ?, ?) USING TIMESTAMP ?",
                "SELECT topic, partition, offset, rejected FROM {ks}.checkpoints \
                 WHERE view_name = ?",
                "DELETE FROM {ks}.checkpoints WHERE view_name = ?",
                "SELECT body FROM {ks}.generations",
                "INSERT INTO {ks}.generations (view_name, body, rev) VALUES (?, ?, ?) \
                 IF NOT EXISTS",
                "UPDATE {ks}.generations SET body = ?, rev = ? WHERE view_name = ? IF rev = ?",
                "INSERT INTO {ks}.degraded (view_name, key, body) VALUES (?, ?, ?)",
                "DELETE FROM {ks}.degraded WHERE view_name = ? AND key = ?",
                "SELECT body FROM {ks}.degraded WHERE view_name = ?",
            ])
            .await?;
        Ok(Self {
            checkpoint,
            checkpoint_save,
            checkpoints,
            checkpoints_delete,
            generations,
            generation_insert,
            generation_update,
            degraded_mark,
            degraded_clear,
            degraded,
        })
    }
}

impl CqlStore {
    fn control_st(&self) -> Result<&Statements, ViewError> {
        Ok(&self.st()?.control)
    }

    /// Deletes every checkpoint of one view.
    pub(super) async fn drop_checkpoints(&self, view: &str) -> Result<(), ViewError> {
        self.db
            .run(&self.control_st()?.checkpoints_delete, (view,))
            .await?;
        Ok(())
    }
}

#[async_trait]
impl CheckpointStore for CqlStore {
    async fn checkpoint(
        &self,
        view: &str,
        topic: &str,
        partition: i32,
    ) -> Result<Option<Checkpoint>, ViewError> {
        let res = self
            .db
            .run(&self.control_st()?.checkpoint, (view, topic, partition))
            .await?;
        let rows = res.into_rows_result().map_err(rows_err)?;
        rows.maybe_first_row::<CheckpointRow>()
            .map_err(rows_err)?
            .map(|r| checkpoint_of(view, r))
            .transpose()
    }

    async fn save_checkpoint(&self, cp: &Checkpoint) -> Result<(), ViewError> {
        self.db
            .run(
                &self.control_st()?.checkpoint_save,
                (
                    &cp.view,
                    &cp.topic,
                    cp.partition,
                    cp.offset,
                    json(&cp.rejected),
                    write_timestamp(cp.offset),
                ),
            )
            .await?;
        Ok(())
    }

    async fn checkpoints(&self, view: &str) -> Result<Vec<Checkpoint>, ViewError> {
        let res = self
            .db
            .run(&self.control_st()?.checkpoints, (view,))
            .await?;
        let rows = res.into_rows_result().map_err(rows_err)?;
        rows.rows::<CheckpointRow>()
            .map_err(rows_err)?
            .map(|r| checkpoint_of(view, r.map_err(rows_err)?))
            .collect()
    }

    async fn mark_degraded(&self, d: &Degraded) -> Result<(), ViewError> {
        self.db
            .run(
                &self.control_st()?.degraded_mark,
                (&d.view, &d.key, json(d)),
            )
            .await?;
        Ok(())
    }

    async fn clear_degraded(&self, view: &str, key: &str) -> Result<(), ViewError> {
        self.db
            .run(&self.control_st()?.degraded_clear, (view, key))
            .await?;
        Ok(())
    }

    async fn degraded(&self, view: &str) -> Result<Vec<Degraded>, ViewError> {
        let res = self.db.run(&self.control_st()?.degraded, (view,)).await?;
        let rows = res.into_rows_result().map_err(rows_err)?;
        let mut out = Vec::new();
        for r in rows.rows::<(Option<String>,)>().map_err(rows_err)? {
            let (body,) = r.map_err(rows_err)?;
            if let Some(d) = unjson::<Option<Degraded>>("degraded", body)? {
                out.push(d);
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl GenerationStore for CqlStore {
    async fn generations(&self) -> Result<Vec<Generation>, ViewError> {
        let res = self.db.run(&self.control_st()?.generations, ()).await?;
        let rows = res.into_rows_result().map_err(rows_err)?;
        rows.rows::<(Option<String>,)>()
            .map_err(rows_err)?
            .filter_map(|r| match r {
                Ok((Some(body),)) => Some(
                    serde_json::from_str::<Generation>(&body)
                        .map_err(|e| ViewError::Corrupt(format!("generations: {e}"))),
                ),
                Ok((None,)) => None,
                Err(e) => Some(Err(rows_err(e))),
            })
            .collect()
    }

    async fn set_generation(&self, next: &Generation, expected: i64) -> Result<bool, ViewError> {
        let st = self.control_st()?;
        let body = json(next);
        // Lightweight transactions: the compare-and-set is decided by Paxos
        // on the row, so two supervisors cannot both win a swap.
        let res = if expected == 0 {
            self.db
                .run(&st.generation_insert, (next.view.as_str(), body, next.rev))
                .await?
        } else {
            self.db
                .run(
                    &st.generation_update,
                    (body, next.rev, next.view.as_str(), expected),
                )
                .await?
        };
        let rows = res.into_rows_result().map_err(rows_err)?;
        let first = rows
            .maybe_first_row::<scylla::value::Row>()
            .map_err(rows_err)?;
        Ok(matches!(
            first.and_then(|r| r.columns.into_iter().next().flatten()),
            Some(CqlValue::Boolean(true))
        ))
    }
}
