//! The CQL view store: ScyllaDB in production, Apache Cassandra 5 in CI (same
//! CQL, same driver). Statements are prepared once; fan-out is bounded.
//!
//! One module per view (and one for the control rows), as in
//! `view/embedded/`: each holds its tables' schema, its row mappers and its
//! prepared statements. Every statement passes through [`Db`], which counts
//! it by what it is (a read, a write, or a control-row statement, which is
//! not a view statement), so no store method counts for itself.
//!
//! A poll is one partition of `polls`: the aggregate lives in static columns
//! (with its version, `src_offset`) and each voter's ballot is a clustering
//! row, so the aggregate and its ballots change in one single-partition
//! batch, which CQL applies atomically and in isolation.

mod cards;
mod control;
mod feed;
mod polls;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::response::query_result::QueryResult;
use scylla::serialize::row::SerializeRow;
use scylla::statement::Consistency;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;

use super::{Counters, Store, View, ViewError};
use crate::config::{CqlConsistency, ViewsConfig};

/// Most values in one `IN (...)` list.
const IN_CHUNK: usize = 100;
/// Most concurrent single-partition reads of one call.
const FANOUT: usize = 32;

/// What a statement is, for counting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Reads a view or checkpoint table.
    Read,
    /// Writes one.
    Write,
    /// Reads or writes the generation rows or the degraded marks, or reads
    /// the feed's bucket index: readers consult them through a cache, never
    /// per request, so they are not view statements.
    Control,
}

/// A prepared statement and what it is.
#[derive(Clone, Debug)]
struct Stmt {
    prepared: PreparedStatement,
    kind: Kind,
}

/// The session of one keyspace: every statement of the store passes
/// through here, and is counted here.
#[derive(Debug)]
struct Db {
    session: Session,
    keyspace: String,
    counters: Counters,
    /// Consistency of view writes and of view reads.
    write: Consistency,
    read: Consistency,
}

fn consistency(c: CqlConsistency) -> Consistency {
    match c {
        CqlConsistency::One => Consistency::One,
        CqlConsistency::LocalOne => Consistency::LocalOne,
        CqlConsistency::Quorum => Consistency::Quorum,
        CqlConsistency::LocalQuorum => Consistency::LocalQuorum,
        CqlConsistency::EachQuorum => Consistency::EachQuorum,
        CqlConsistency::All => Consistency::All,
    }
}

/// Most statements in one batch. Batches are per partition (Cassandra and
/// ScyllaDB exempt those from the batch size thresholds), so the bound
/// that matters is the mutation size limit (stock Cassandra: 16 MiB, half
/// the commit log segment); at a few hundred bytes a row, 256 rows stay far
/// under it, and under the 50 KiB fail threshold of batches that span
/// partitions.
pub(super) const MAX_BATCH_STATEMENTS: usize = 256;

/// Boxed bound values of one batch statement.
type Values = Vec<Box<dyn SerializeRow + Send + Sync>>;

impl Db {
    /// Prepares `cql` (with `{ks}` for the keyspace) and classifies it.
    async fn prepare(&self, cql: &str) -> Result<Stmt, ViewError> {
        let cql = cql.replace("{ks}", &self.keyspace);
        let select = cql.trim_start().to_ascii_uppercase().starts_with("SELECT");
        let kind = if cql.contains(&format!("{}.generations", self.keyspace))
            || cql.contains(&format!("{}.degraded", self.keyspace))
            || (select && cql.contains(&format!("{}.feed_timeline_buckets", self.keyspace)))
        {
            Kind::Control
        } else if select {
            Kind::Read
        } else {
            Kind::Write
        };
        let mut prepared = self
            .session
            .prepare(cql)
            .await
            .map_err(|e| ViewError::Rejected(e.to_string()))?;
        match kind {
            Kind::Read => prepared.set_consistency(self.read),
            Kind::Write => prepared.set_consistency(self.write),
            Kind::Control => prepared.set_consistency(Consistency::LocalQuorum),
        }
        Ok(Stmt { prepared, kind })
    }

    /// Prepares several statements, in order.
    async fn prepare_all<const N: usize>(&self, cql: [&str; N]) -> Result<[Stmt; N], ViewError> {
        let mut out = Vec::with_capacity(N);
        for c in cql {
            out.push(self.prepare(c).await?);
        }
        out.try_into()
            .map_err(|_| ViewError::Rejected("a statement went missing".into()))
    }

    /// Executes one statement (unpaged).
    async fn run(&self, st: &Stmt, values: impl SerializeRow) -> Result<QueryResult, ViewError> {
        match st.kind {
            Kind::Read => self.counters.read(),
            Kind::Write => {
                self.counters.write(1);
                self.counters.request(1);
            }
            Kind::Control => {}
        }
        self.session
            .execute_unpaged(&st.prepared, values)
            .await
            .map_err(exec_err)
    }

    /// A batch of `statements` with their `values`, all written at `ts`
    /// (`None`: each statement says its own `USING TIMESTAMP`). More than
    /// [`MAX_BATCH_STATEMENTS`] are split into consecutive batches, in
    /// order, so callers put the row that carries the version last: a
    /// crash between the parts leaves the old version, and the retry
    /// rewrites the earlier parts with the same timestamps.
    async fn batch(
        &self,
        ts: Option<i64>,
        partitions: Partitions,
        statements: &[&Stmt],
        mut values: Values,
    ) -> Result<(), ViewError> {
        let mut start = 0;
        while start < statements.len() {
            let end = (start + MAX_BATCH_STATEMENTS).min(statements.len());
            let rest = values.split_off(end - start);
            let part = std::mem::replace(&mut values, rest);
            let mut batch = Batch::new(BatchType::Unlogged);
            batch.set_timestamp(ts);
            batch.set_consistency(self.write);
            for st in &statements[start..end] {
                batch.append_statement(st.prepared.clone());
            }
            self.counters.write(batch.statements.len() as u64);
            self.counters.request(match partitions {
                Partitions::One => 1,
            });
            self.session.batch(&batch, part).await.map_err(exec_err)?;
            start = end;
        }
        Ok(())
    }

    /// A schema statement (not a view statement; not counted).
    async fn ddl(&self, cql: &str) -> Result<(), ViewError> {
        self.session
            .query_unpaged(cql.replace("{ks}", &self.keyspace), ())
            .await
            .map_err(exec_err)?;
        Ok(())
    }
}

/// The partitions a batch writes, for counting its requests.
#[derive(Clone, Copy, Debug)]
enum Partitions {
    /// All its statements write one partition (every batch of the store
    /// does: multi-partition batches cost the coordinator a request per
    /// partition, and none is needed).
    One,
}

/// The replication map `CREATE KEYSPACE` gets from `cfg`.
fn replication(cfg: &ViewsConfig) -> String {
    if cfg.datacenters.is_empty() {
        return format!(
            "{{'class': 'SimpleStrategy', 'replication_factor': {}}}",
            cfg.replication_factor.max(1)
        );
    }
    let dcs: Vec<String> = cfg
        .datacenters
        .iter()
        .map(|(dc, n)| format!("'{}': {}", dc.replace('\'', "''"), n.max(&1)))
        .collect();
    format!("{{'class': 'NetworkTopologyStrategy', {}}}", dcs.join(", "))
}

/// The prepared statements, by module.
#[derive(Debug)]
struct Statements {
    polls: polls::Statements,
    feed: feed::Statements,
    cards: cards::Statements,
    control: control::Statements,
}

/// The CQL store.
#[derive(Debug)]
pub struct CqlStore {
    db: Db,
    /// The keyspace's replication map, as CQL.
    replication: String,
    st: tokio::sync::OnceCell<Statements>,
    /// The feed's timeline buckets this process knows of.
    buckets: super::KnownBuckets,
}

impl CqlStore {
    /// Connects to the cluster (the schema is created by `migrate`).
    pub async fn connect(cfg: &ViewsConfig) -> Result<Self, ViewError> {
        if !cfg
            .keyspace
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'_')
        {
            return Err(ViewError::Rejected(format!(
                "keyspace {:?}: use letters, digits and _",
                cfg.keyspace
            )));
        }
        let mut b = SessionBuilder::new().known_nodes(&cfg.contact_points);
        if !cfg.username.is_empty() {
            b = b.user(&cfg.username, cfg.password.expose());
        }
        let session = b.build().await.map_err(unavailable)?;
        Ok(Self {
            db: Db {
                session,
                keyspace: cfg.keyspace.clone(),
                counters: Counters::default(),
                write: consistency(cfg.write_consistency),
                read: consistency(cfg.read_consistency),
            },
            replication: replication(cfg),
            st: tokio::sync::OnceCell::new(),
            buckets: super::KnownBuckets::default(),
        })
    }

    /// Warns when the keyspace exists with another replication than the
    /// configured one (`CREATE KEYSPACE IF NOT EXISTS` leaves it alone;
    /// changing it is an `ALTER KEYSPACE` and a repair, an operator's call).
    async fn warn_replication(&self) {
        let got = self
            .db
            .session
            .query_unpaged(
                "SELECT replication FROM system_schema.keyspaces WHERE keyspace_name = ?",
                (&self.db.keyspace,),
            )
            .await
            .ok()
            .and_then(|r| r.into_rows_result().ok())
            .and_then(|rows| {
                rows.maybe_first_row::<(std::collections::HashMap<String, String>,)>()
                    .ok()
                    .flatten()
            });
        let Some((got,)) = got else { return };
        let class = got.get("class").map(String::as_str).unwrap_or_default();
        let want_nts = self.replication.contains("NetworkTopologyStrategy");
        if class.ends_with("NetworkTopologyStrategy") != want_nts {
            tracing::warn!(keyspace = %self.db.keyspace, existing = ?got,
                configured = %self.replication,
                "the keyspace exists with another replication strategy; it is left as it is");
        }
    }

    fn st(&self) -> Result<&Statements, ViewError> {
        self.st
            .get()
            .ok_or_else(|| ViewError::Rejected("migrate() was not called".into()))
    }

    /// The tables of one view; `None` when this store has no such view.
    fn tables_of(view: View) -> Option<&'static [&'static str]> {
        [
            (super::polls::VIEW, polls::TABLES),
            (super::feed::VIEW, feed::TABLES),
            (super::cards::VIEW, cards::TABLES),
        ]
        .into_iter()
        .find(|(v, _)| *v == view)
        .map(|(_, t)| t)
    }
}

#[async_trait]
impl Store for CqlStore {
    fn backend(&self) -> &'static str {
        "cql"
    }

    fn counts(&self) -> (u64, u64) {
        self.db.counters.get()
    }

    fn requests(&self) -> u64 {
        self.db.counters.requests()
    }

    async fn migrate(&self) -> Result<(), ViewError> {
        self.db
            .ddl(&format!(
                "CREATE KEYSPACE IF NOT EXISTS {{ks}} WITH replication = {}",
                self.replication
            ))
            .await?;
        self.warn_replication().await;
        for ddl in [polls::SCHEMA, feed::SCHEMA, cards::SCHEMA, control::SCHEMA]
            .into_iter()
            .flatten()
        {
            self.db.ddl(ddl).await?;
        }
        self.db
            .session
            .await_schema_agreement()
            .await
            .map_err(unavailable)?;
        let st = Statements {
            polls: polls::Statements::prepare(&self.db).await?,
            feed: feed::Statements::prepare(&self.db).await?,
            cards: cards::Statements::prepare(&self.db).await?,
            control: control::Statements::prepare(&self.db).await?,
        };
        let _ = self.st.set(st);
        Ok(())
    }

    async fn drop_view(&self, view: View) -> Result<(), ViewError> {
        let tables =
            Self::tables_of(view).ok_or_else(|| ViewError::Rejected(format!("no view {view}")))?;
        for t in tables {
            self.db.ddl(&format!("TRUNCATE {{ks}}.{t}")).await?;
        }
        if view == super::feed::VIEW {
            self.buckets.clear();
        }
        self.drop_checkpoints(view.as_str()).await
    }

    async fn drop_store(&self) -> Result<(), ViewError> {
        self.db.ddl("DROP KEYSPACE IF EXISTS {ks}").await
    }
}

fn us(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn time(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap_or_default()
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("view values serialize")
}

fn unjson<T: serde::de::DeserializeOwned>(col: &str, s: Option<String>) -> Result<T, ViewError> {
    serde_json::from_str(s.as_deref().unwrap_or("null"))
        .map_err(|e| ViewError::Corrupt(format!("{col}: {e}")))
}

/// Runs reads at most [`FANOUT`] at a time and concatenates what they found
/// (an `Option` or a `Vec` each).
async fn fan_out<F, I>(reads: Vec<F>) -> Result<Vec<I::Item>, ViewError>
where
    F: std::future::Future<Output = Result<I, ViewError>>,
    I: IntoIterator,
{
    let found: Vec<I> = futures::stream::iter(reads)
        .buffer_unordered(FANOUT)
        .try_collect()
        .await?;
    Ok(found.into_iter().flatten().collect())
}

fn unavailable(e: impl std::fmt::Display) -> ViewError {
    ViewError::Unavailable(e.to_string())
}

/// Classifies a driver error: request failures (timeouts, connection loss,
/// overload) are retriable; the rest are statements the store refused.
fn exec_err(e: scylla::errors::ExecutionError) -> ViewError {
    use scylla::errors::{DbError as D, ExecutionError as E, RequestAttemptError as R};
    match &e {
        E::BadQuery(_) | E::PrepareError(_) => ViewError::Rejected(e.to_string()),
        E::LastAttemptError(R::DbError(
            D::SyntaxError
            | D::Invalid
            | D::Unauthorized
            | D::ConfigError
            | D::AlreadyExists { .. }
            | D::ProtocolError,
            _,
        )) => ViewError::Rejected(e.to_string()),
        _ => unavailable(e),
    }
}

fn rows_err(e: impl std::fmt::Display) -> ViewError {
    ViewError::Corrupt(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replication_is_simple_by_default_and_per_datacenter_when_configured() {
        let mut cfg = ViewsConfig {
            replication_factor: 3,
            ..ViewsConfig::default()
        };
        assert_eq!(
            replication(&cfg),
            "{'class': 'SimpleStrategy', 'replication_factor': 3}"
        );
        cfg.datacenters = [("eu-west".to_owned(), 3), ("us'east".to_owned(), 2)].into();
        assert_eq!(
            replication(&cfg),
            "{'class': 'NetworkTopologyStrategy', 'eu-west': 3, 'us''east': 2}"
        );
    }

    #[test]
    fn consistency_levels_come_from_the_configuration() {
        let cfg: crate::config::Config = figment::Figment::new()
            .merge(figment::providers::Serialized::defaults(
                crate::config::Config::default(),
            ))
            .merge(<figment::providers::Toml as figment::providers::Format>::string(
                "[views]\nwrite_consistency = \"each_quorum\"\nread_consistency = \"local_one\"\ndatacenters = { dc1 = 3 }\n",
            ))
            .extract()
            .unwrap();
        assert_eq!(
            consistency(cfg.views.write_consistency),
            Consistency::EachQuorum
        );
        assert_eq!(
            consistency(cfg.views.read_consistency),
            Consistency::LocalOne
        );
        assert_eq!(cfg.views.datacenters.get("dc1"), Some(&3));
    }
}
