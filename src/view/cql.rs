//! The CQL view store: ScyllaDB in production, Apache Cassandra 5 in CI (same
//! CQL, same driver). Statements are prepared once; fan-out is bounded.
//!
//! A poll is one partition of `polls`: the aggregate lives in static columns
//! (with its version, `src_offset`) and each voter's ballot is a clustering
//! row, so the aggregate and its ballots change in one single-partition
//! batch, which CQL applies atomically and in isolation.

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::serialize::row::SerializeRow;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::{DeserializeRow, SerializeRow};

use scylla::value::{CqlValue, MaybeUnset};

use super::{
    ALL_KINDS, Checkpoint, Counters, FeedCursor, Generation, OwnerCursor, OwnerPollRow,
    TimelineRow, View, ViewError, ViewStore, VoterRow, voter_changes, write_timestamp,
};
use crate::config::ViewsConfig;
use crate::event::{
    FeedItemId, ModelVersion, PollId, Principal, QuestionId, SessionKey, Style, UploadId, UserId,
};
use crate::fold::Position;
use crate::fold::cards::{Card, Patch, Status};
use crate::fold::feed::{FeedKind, ItemCommit, ItemState, Member, MemberKey, Relation};
use crate::fold::poll::{Ballot, PollCommit, PollState, VoterKey};

/// Most values in one `IN (...)` list.
const IN_CHUNK: usize = 100;
/// Most concurrent single-partition reads of one call.
const FANOUT: usize = 32;

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS polls (
        poll_id uuid,
        voter text,
        owner text static,
        head text static,
        message text static,
        created_us bigint static,
        ends_us bigint static,
        anonymous boolean static,
        multiple boolean static,
        closed_us bigint static,
        questions text static,
        tallies frozen<list<bigint>> static,
        voters bigint static,
        recent text static,
        rejected text static,
        src_partition int static,
        src_offset bigint static,
        choices int,
        voted_us bigint,
        name text,
        PRIMARY KEY (poll_id, voter))",
    "CREATE TABLE IF NOT EXISTS polls_by_owner (
        owner_id text,
        created_us bigint,
        poll_id uuid,
        head text,
        closed boolean,
        ends_us bigint,
        voters bigint,
        src_partition int,
        src_offset bigint,
        PRIMARY KEY (owner_id, created_us, poll_id))
        WITH CLUSTERING ORDER BY (created_us DESC, poll_id DESC)",
    "CREATE TABLE IF NOT EXISTS poll_voters (
        poll_id uuid,
        question smallint,
        voter text,
        name text,
        voted_us bigint,
        PRIMARY KEY ((poll_id, question), voter))",
    "CREATE TABLE IF NOT EXISTS feed_items (
        item_id uuid,
        rel text,
        user_id text,
        kind text static,
        content text static,
        author text static,
        created_us bigint static,
        deleted_us bigint static,
        likes bigint static,
        joined bigint static,
        recent text static,
        rejected text static,
        src_partition int static,
        src_offset bigint static,
        at_us bigint,
        name text,
        PRIMARY KEY (item_id, rel, user_id))",
    "CREATE TABLE IF NOT EXISTS feed_timeline (
        timeline text,
        created_us bigint,
        item_id uuid,
        kind text,
        content text,
        author text,
        likes bigint,
        joined bigint,
        src_partition int,
        src_offset bigint,
        PRIMARY KEY (timeline, created_us, item_id))
        WITH CLUSTERING ORDER BY (created_us DESC, item_id DESC)",
    "CREATE TABLE IF NOT EXISTS cards (
        session_key text,
        slot tinyint,
        upload_id uuid,
        style text,
        input_key text,
        content_type text,
        width int,
        height int,
        bytes bigint,
        received_us bigint,
        status text,
        started_us bigint,
        finished_us bigint,
        model_version text,
        output_key text,
        timings text,
        error text,
        retriable boolean,
        PRIMARY KEY (session_key, slot))",
    "CREATE TABLE IF NOT EXISTS uploads (
        upload_id uuid PRIMARY KEY,
        session_key text,
        slot tinyint,
        style text,
        input_key text,
        content_type text,
        width int,
        height int,
        bytes bigint,
        received_us bigint,
        status text,
        started_us bigint,
        finished_us bigint,
        model_version text,
        output_key text,
        timings text,
        error text,
        retriable boolean)",
    "CREATE TABLE IF NOT EXISTS generations (
        view_name text PRIMARY KEY,
        body text,
        rev bigint)",
    "CREATE TABLE IF NOT EXISTS checkpoints (
        view_name text,
        topic text,
        partition int,
        offset bigint,
        rejected text,
        PRIMARY KEY (view_name, topic, partition))",
];

const POLL_COLUMNS: &str = "poll_id, owner, head, message, created_us, ends_us, anonymous, multiple, \
     closed_us, questions, tallies, voters, recent, rejected, src_partition, src_offset";

#[derive(DeserializeRow, SerializeRow)]
struct PollRow {
    poll_id: uuid::Uuid,
    owner: Option<String>,
    head: Option<String>,
    message: Option<String>,
    created_us: Option<i64>,
    ends_us: Option<i64>,
    anonymous: Option<bool>,
    multiple: Option<bool>,
    closed_us: Option<i64>,
    questions: Option<String>,
    tallies: Option<Vec<i64>>,
    voters: Option<i64>,
    recent: Option<String>,
    rejected: Option<String>,
    src_partition: Option<i32>,
    src_offset: Option<i64>,
}

#[derive(DeserializeRow)]
struct BallotRow {
    voter: String,
    choices: Option<i32>,
    voted_us: Option<i64>,
    name: Option<String>,
}

#[derive(DeserializeRow)]
struct OwnerRow {
    created_us: i64,
    poll_id: uuid::Uuid,
    head: Option<String>,
    closed: Option<bool>,
    ends_us: Option<i64>,
    voters: Option<i64>,
    src_partition: Option<i32>,
    src_offset: Option<i64>,
}

#[derive(DeserializeRow)]
struct CheckpointRow {
    topic: String,
    partition: i32,
    offset: Option<i64>,
    rejected: Option<String>,
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

impl PollRow {
    fn of(s: &PollState) -> Self {
        Self {
            poll_id: s.poll_id.0,
            owner: Some(json(&s.owner)),
            head: Some(s.head.clone()),
            message: Some(s.message.clone()),
            created_us: Some(us(s.created_at)),
            ends_us: s.ends_at.map(us),
            anonymous: Some(s.anonymous),
            multiple: Some(s.multiple_choice),
            closed_us: s.closed_at.map(us),
            questions: Some(json(&s.questions)),
            tallies: Some(s.tallies.iter().map(|&t| t as i64).collect()),
            voters: Some(s.voters as i64),
            recent: Some(json(&s.recent)),
            rejected: Some(json(&s.rejected)),
            src_partition: Some(s.position.partition),
            src_offset: Some(s.position.offset),
        }
    }

    fn into_state(self) -> Result<Option<PollState>, ViewError> {
        let poll_id = PollId(self.poll_id);
        // A partition with ballots but no aggregate cannot be written by the
        // projector (ballots commit with their aggregate); treat as absent.
        let (Some(head), Some(offset)) = (self.head, self.src_offset) else {
            return Ok(None);
        };
        let owner: Principal = unjson("owner", self.owner)?;
        Ok(Some(PollState {
            poll_id,
            owner,
            created_at: time(self.created_us.unwrap_or_default()),
            head,
            message: self.message.unwrap_or_default(),
            ends_at: self.ends_us.map(time),
            anonymous: self.anonymous.unwrap_or_default(),
            multiple_choice: self.multiple.unwrap_or_default(),
            questions: unjson("questions", self.questions)?,
            closed_at: self.closed_us.map(time),
            tallies: self
                .tallies
                .unwrap_or_default()
                .into_iter()
                .map(|t| t.max(0) as u64)
                .collect(),
            voters: self.voters.unwrap_or_default().max(0) as u64,
            recent: unjson::<Option<_>>("recent", self.recent)?.unwrap_or_default(),
            rejected: unjson::<Option<_>>("rejected", self.rejected)?.unwrap_or_default(),
            position: Position {
                partition: self.src_partition.unwrap_or_default(),
                offset,
            },
        }))
    }
}

const ITEM_COLUMNS: &str = "item_id, kind, content, author, created_us, deleted_us, likes, joined, \
     recent, rejected, src_partition, src_offset";

#[derive(DeserializeRow)]
struct ItemRow {
    item_id: uuid::Uuid,
    kind: Option<String>,
    content: Option<String>,
    author: Option<String>,
    created_us: Option<i64>,
    deleted_us: Option<i64>,
    likes: Option<i64>,
    joined: Option<i64>,
    recent: Option<String>,
    rejected: Option<String>,
    src_partition: Option<i32>,
    src_offset: Option<i64>,
}

impl ItemRow {
    fn into_state(self) -> Result<Option<ItemState>, ViewError> {
        let (Some(kind), Some(offset)) = (self.kind, self.src_offset) else {
            return Ok(None);
        };
        Ok(Some(ItemState {
            item_id: FeedItemId(self.item_id),
            kind: FeedKind::parse(&kind)
                .ok_or_else(|| ViewError::Corrupt(format!("kind {kind:?}")))?,
            content: unjson("content", self.content)?,
            author: unjson("author", self.author)?,
            created_at: time(self.created_us.unwrap_or_default()),
            deleted_at: self.deleted_us.map(time),
            likes: self.likes.unwrap_or_default().max(0) as u64,
            joined: self.joined.unwrap_or_default().max(0) as u64,
            recent_members: unjson::<Option<_>>("recent", self.recent)?.unwrap_or_default(),
            rejected: unjson::<Option<_>>("rejected", self.rejected)?.unwrap_or_default(),
            position: Position {
                partition: self.src_partition.unwrap_or_default(),
                offset,
            },
        }))
    }
}

#[derive(DeserializeRow)]
struct MemberRow {
    rel: String,
    user_id: String,
    at_us: Option<i64>,
    name: Option<String>,
}

#[derive(DeserializeRow)]
struct TimelineDbRow {
    created_us: i64,
    item_id: uuid::Uuid,
    kind: Option<String>,
    content: Option<String>,
    author: Option<String>,
    likes: Option<i64>,
    joined: Option<i64>,
    src_partition: Option<i32>,
    src_offset: Option<i64>,
}

#[derive(DeserializeRow)]
struct VoterDbRow {
    voter: String,
    name: Option<String>,
    voted_us: Option<i64>,
}

const CARD_COLUMNS: &str = "upload_id, session_key, slot, style, input_key, content_type, width, \
     height, bytes, received_us, status, started_us, finished_us, model_version, output_key, \
     timings, error, retriable";

#[derive(DeserializeRow)]
struct CardRow {
    upload_id: Option<uuid::Uuid>,
    session_key: Option<String>,
    slot: Option<i8>,
    style: Option<String>,
    input_key: Option<String>,
    content_type: Option<String>,
    width: Option<i32>,
    height: Option<i32>,
    bytes: Option<i64>,
    received_us: Option<i64>,
    status: Option<String>,
    started_us: Option<i64>,
    finished_us: Option<i64>,
    model_version: Option<String>,
    output_key: Option<String>,
    timings: Option<String>,
    error: Option<String>,
    retriable: Option<bool>,
}

impl CardRow {
    fn into_card(self) -> Result<Option<Card>, ViewError> {
        let Some(status) = self.status else {
            return Ok(None);
        };
        let status = match status.as_str() {
            "received" => Status::Received,
            "started" => Status::Started,
            "failed" => Status::Failed,
            "completed" => Status::Completed,
            other => return Err(ViewError::Corrupt(format!("status {other:?}"))),
        };
        let session_key = self
            .session_key
            .map(|v| SessionKey::parse(&v))
            .transpose()
            .map_err(|e| ViewError::Corrupt(e.reason))?;
        let style = self
            .style
            .map(|v| Style::parse(&v))
            .transpose()
            .map_err(|e| ViewError::Corrupt(e.reason))?;
        let model_version = self
            .model_version
            .map(|v| ModelVersion::parse(&v))
            .transpose()
            .map_err(|e| ViewError::Corrupt(e.reason))?;
        Ok(Some(Card {
            upload_id: self.upload_id.map(UploadId),
            slot: self.slot.map(|s| s as u8),
            session_key,
            style,
            input_key: self.input_key,
            content_type: self.content_type,
            width: self.width.map(|v| v.max(0) as u32),
            height: self.height.map(|v| v.max(0) as u32),
            bytes: self.bytes.map(|v| v.max(0) as u64),
            received_at: self.received_us.map(time),
            status: Some(status),
            started_at: self.started_us.map(time),
            finished_at: self.finished_us.map(time),
            model_version,
            output_key: self.output_key,
            timings: self
                .timings
                .map(|t| unjson("timings", Some(t)))
                .transpose()?,
            error: self.error,
            retriable: self.retriable,
        }))
    }
}

/// A bound patch value: not written (unset), cleared (null), or set.
type PatchValue = MaybeUnset<Option<CqlValue>>;

/// The columns a patch may write besides the keys, in statement order.
const PATCH_COLUMNS: [&str; 15] = [
    "style",
    "input_key",
    "content_type",
    "width",
    "height",
    "bytes",
    "received_us",
    "status",
    "started_us",
    "finished_us",
    "model_version",
    "output_key",
    "timings",
    "error",
    "retriable",
];

fn patch_set_clause(extra: &[&str]) -> String {
    let cols: Vec<String> = extra
        .iter()
        .chain(PATCH_COLUMNS.iter())
        .map(|c| format!("{c} = ?"))
        .collect();
    format!("SET {}", cols.join(", "))
}

/// The values of [`PATCH_COLUMNS`] for a patch.
fn patch_values(p: &Patch) -> Vec<PatchValue> {
    let c = &p.set;
    let clears = p.clears();
    let v = |name: &str, value: Option<CqlValue>| match value {
        Some(v) => MaybeUnset::Set(Some(v)),
        None if clears.contains(&name) => MaybeUnset::Set(None),
        None => MaybeUnset::Unset,
    };
    vec![
        v(
            "style",
            c.style.as_ref().map(|s| CqlValue::Text(s.to_string())),
        ),
        v("input_key", c.input_key.clone().map(CqlValue::Text)),
        v("content_type", c.content_type.clone().map(CqlValue::Text)),
        v("width", c.width.map(|x| CqlValue::Int(x as i32))),
        v("height", c.height.map(|x| CqlValue::Int(x as i32))),
        v("bytes", c.bytes.map(|x| CqlValue::BigInt(x as i64))),
        v(
            "received_at",
            c.received_at.map(|t| CqlValue::BigInt(us(t))),
        ),
        v(
            "status",
            c.status.map(|s| CqlValue::Text(s.as_str().to_owned())),
        ),
        v("started_at", c.started_at.map(|t| CqlValue::BigInt(us(t)))),
        v(
            "finished_at",
            c.finished_at.map(|t| CqlValue::BigInt(us(t))),
        ),
        v(
            "model_version",
            c.model_version
                .as_ref()
                .map(|m| CqlValue::Text(m.to_string())),
        ),
        v("output_key", c.output_key.clone().map(CqlValue::Text)),
        v(
            "timings",
            c.timings.as_ref().map(|t| CqlValue::Text(json(t))),
        ),
        v("error", c.error.clone().map(CqlValue::Text)),
        v("retriable", c.retriable.map(CqlValue::Boolean)),
    ]
}

fn set(v: CqlValue) -> PatchValue {
    MaybeUnset::Set(Some(v))
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

#[derive(Debug)]
struct Statements {
    poll: PreparedStatement,
    ballots: PreparedStatement,
    poll_static: PreparedStatement,
    ballot_upsert: PreparedStatement,
    ballot_delete: PreparedStatement,
    owner_upsert: PreparedStatement,
    owner_page: PreparedStatement,
    owner_page_before: PreparedStatement,
    checkpoint: PreparedStatement,
    checkpoint_save: PreparedStatement,
    checkpoints: PreparedStatement,
    voter_upsert: PreparedStatement,
    voter_delete: PreparedStatement,
    voters_page: PreparedStatement,
    voters_page_after: PreparedStatement,
    item: PreparedStatement,
    members: PreparedStatement,
    item_static: PreparedStatement,
    member_upsert: PreparedStatement,
    member_delete: PreparedStatement,
    timeline_upsert: PreparedStatement,
    timeline_delete: PreparedStatement,
    timeline_page: PreparedStatement,
    timeline_page_before: PreparedStatement,
    card_patch: PreparedStatement,
    upload_patch: PreparedStatement,
    cards: PreparedStatement,
    upload: PreparedStatement,
    generations: PreparedStatement,
    generation_insert: PreparedStatement,
    generation_update: PreparedStatement,
    checkpoints_delete: PreparedStatement,
    polls_scan: PreparedStatement,
    polls_scan_after: PreparedStatement,
}

/// The CQL store.
#[derive(Debug)]
pub struct CqlStore {
    session: Session,
    keyspace: String,
    replication_factor: u32,
    st: tokio::sync::OnceCell<Statements>,
    counters: Counters,
}

impl CqlStore {
    /// Connects to the cluster (the schema is created by `migrate`).
    pub async fn connect(cfg: &ViewsConfig) -> Result<Self, ViewError> {
        let mut b = SessionBuilder::new().known_nodes(&cfg.contact_points);
        if !cfg.username.is_empty() {
            b = b.user(&cfg.username, cfg.password.expose());
        }
        let session = b.build().await.map_err(unavailable)?;
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
        Ok(Self {
            session,
            keyspace: cfg.keyspace.clone(),
            replication_factor: cfg.replication_factor.max(1),
            st: tokio::sync::OnceCell::new(),
            counters: Counters::default(),
        })
    }

    fn st(&self) -> Result<&Statements, ViewError> {
        self.st
            .get()
            .ok_or_else(|| ViewError::Rejected("migrate() was not called".into()))
    }

    async fn prepare(&self, cql: &str) -> Result<PreparedStatement, ViewError> {
        let cql = cql.replace("{ks}", &self.keyspace);
        self.session
            .prepare(cql)
            .await
            .map_err(|e| ViewError::Rejected(e.to_string()))
    }

    async fn run(
        &self,
        st: &PreparedStatement,
        values: impl SerializeRow,
    ) -> Result<scylla::response::query_result::QueryResult, ViewError> {
        self.session
            .execute_unpaged(st, values)
            .await
            .map_err(exec_err)
    }

    async fn prepare_all(&self) -> Result<Statements, ViewError> {
        Ok(Statements {
            poll: self
                .prepare(&format!(
                    "SELECT {POLL_COLUMNS} FROM {{ks}}.polls WHERE poll_id = ? LIMIT 1"
                ))
                .await?,
            ballots: self
                .prepare(
                    "SELECT voter, choices, voted_us, name FROM {ks}.polls \
                     WHERE poll_id = ? AND voter IN ?",
                )
                .await?,
            poll_static: self
                .prepare(
                    "UPDATE {ks}.polls SET owner = ?, head = ?, message = ?, created_us = ?, \
                     ends_us = ?, anonymous = ?, multiple = ?, closed_us = ?, questions = ?, \
                     tallies = ?, voters = ?, recent = ?, rejected = ?, src_partition = ?, \
                     src_offset = ? WHERE poll_id = ?",
                )
                .await?,
            ballot_upsert: self
                .prepare(
                    "INSERT INTO {ks}.polls (poll_id, voter, choices, voted_us, name) \
                     VALUES (?, ?, ?, ?, ?)",
                )
                .await?,
            ballot_delete: self
                .prepare("DELETE FROM {ks}.polls WHERE poll_id = ? AND voter = ?")
                .await?,
            owner_upsert: self
                .prepare(
                    "INSERT INTO {ks}.polls_by_owner (owner_id, created_us, poll_id, head, \
                     closed, ends_us, voters, src_partition, src_offset) \
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?",
                )
                .await?,
            owner_page: self
                .prepare(
                    "SELECT created_us, poll_id, head, closed, ends_us, voters, src_partition, \
                     src_offset FROM {ks}.polls_by_owner WHERE owner_id = ? LIMIT ?",
                )
                .await?,
            owner_page_before: self
                .prepare(
                    "SELECT created_us, poll_id, head, closed, ends_us, voters, src_partition, \
                     src_offset FROM {ks}.polls_by_owner WHERE owner_id = ? \
                     AND (created_us, poll_id) < (?, ?) LIMIT ?",
                )
                .await?,
            checkpoint: self
                .prepare(
                    "SELECT topic, partition, offset, rejected FROM {ks}.checkpoints \
                     WHERE view_name = ? AND topic = ? AND partition = ?",
                )
                .await?,
            checkpoint_save: self
                .prepare(
                    "INSERT INTO {ks}.checkpoints (view_name, topic, partition, offset, rejected) \
                     VALUES (?, ?, ?, ?, ?) USING TIMESTAMP ?",
                )
                .await?,
            checkpoints: self
                .prepare(
                    "SELECT topic, partition, offset, rejected FROM {ks}.checkpoints \
                     WHERE view_name = ?",
                )
                .await?,
            voter_upsert: self
                .prepare(
                    "INSERT INTO {ks}.poll_voters (poll_id, question, voter, name, voted_us) \
                     VALUES (?, ?, ?, ?, ?)",
                )
                .await?,
            voter_delete: self
                .prepare(
                    "DELETE FROM {ks}.poll_voters WHERE poll_id = ? AND question = ? AND voter = ?",
                )
                .await?,
            voters_page: self
                .prepare(
                    "SELECT voter, name, voted_us FROM {ks}.poll_voters \
                     WHERE poll_id = ? AND question = ? LIMIT ?",
                )
                .await?,
            voters_page_after: self
                .prepare(
                    "SELECT voter, name, voted_us FROM {ks}.poll_voters \
                     WHERE poll_id = ? AND question = ? AND voter > ? LIMIT ?",
                )
                .await?,
            item: self
                .prepare(&format!(
                    "SELECT {ITEM_COLUMNS} FROM {{ks}}.feed_items WHERE item_id = ? LIMIT 1"
                ))
                .await?,
            members: self
                .prepare(
                    "SELECT rel, user_id, at_us, name FROM {ks}.feed_items \
                     WHERE item_id = ? AND rel = ? AND user_id IN ?",
                )
                .await?,
            item_static: self
                .prepare(
                    "UPDATE {ks}.feed_items SET kind = ?, content = ?, author = ?, created_us = ?, \
                     deleted_us = ?, likes = ?, joined = ?, recent = ?, rejected = ?, \
                     src_partition = ?, src_offset = ? WHERE item_id = ?",
                )
                .await?,
            member_upsert: self
                .prepare(
                    "INSERT INTO {ks}.feed_items (item_id, rel, user_id, at_us, name) \
                     VALUES (?, ?, ?, ?, ?)",
                )
                .await?,
            member_delete: self
                .prepare(
                    "DELETE FROM {ks}.feed_items WHERE item_id = ? AND rel = ? AND user_id = ?",
                )
                .await?,
            timeline_upsert: self
                .prepare(
                    "INSERT INTO {ks}.feed_timeline (timeline, created_us, item_id, kind, content, \
                     author, likes, joined, src_partition, src_offset) \
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?",
                )
                .await?,
            timeline_delete: self
                .prepare(
                    "DELETE FROM {ks}.feed_timeline USING TIMESTAMP ? \
                     WHERE timeline = ? AND created_us = ? AND item_id = ?",
                )
                .await?,
            timeline_page: self
                .prepare(
                    "SELECT created_us, item_id, kind, content, author, likes, joined, \
                     src_partition, src_offset FROM {ks}.feed_timeline WHERE timeline = ? LIMIT ?",
                )
                .await?,
            timeline_page_before: self
                .prepare(
                    "SELECT created_us, item_id, kind, content, author, likes, joined, \
                     src_partition, src_offset FROM {ks}.feed_timeline WHERE timeline = ? \
                     AND (created_us, item_id) < (?, ?) LIMIT ?",
                )
                .await?,
            card_patch: self
                .prepare(&format!(
                    "UPDATE {{ks}}.cards USING TIMESTAMP ? {} \
                         WHERE session_key = ? AND slot = ?",
                    patch_set_clause(&["upload_id"])
                ))
                .await?,
            upload_patch: self
                .prepare(&format!(
                    "UPDATE {{ks}}.uploads USING TIMESTAMP ? {} WHERE upload_id = ?",
                    patch_set_clause(&["session_key", "slot"])
                ))
                .await?,
            cards: self
                .prepare(&format!(
                    "SELECT {CARD_COLUMNS} FROM {{ks}}.cards WHERE session_key = ?"
                ))
                .await?,
            upload: self
                .prepare(&format!(
                    "SELECT {CARD_COLUMNS} FROM {{ks}}.uploads WHERE upload_id = ?"
                ))
                .await?,
            generations: self.prepare("SELECT body FROM {ks}.generations").await?,
            generation_insert: self
                .prepare(
                    "INSERT INTO {ks}.generations (view_name, body, rev) VALUES (?, ?, ?) \
                     IF NOT EXISTS",
                )
                .await?,
            generation_update: self
                .prepare(
                    "UPDATE {ks}.generations SET body = ?, rev = ? WHERE view_name = ? IF rev = ?",
                )
                .await?,
            checkpoints_delete: self
                .prepare("DELETE FROM {ks}.checkpoints WHERE view_name = ?")
                .await?,
            // DISTINCT reads one row per partition: the aggregate's static
            // columns, not its ballots.
            polls_scan: self
                .prepare(&format!(
                    "SELECT DISTINCT {POLL_COLUMNS} FROM {{ks}}.polls LIMIT ?"
                ))
                .await?,
            polls_scan_after: self
                .prepare(&format!(
                    "SELECT DISTINCT {POLL_COLUMNS} FROM {{ks}}.polls \
                     WHERE token(poll_id) > token(?) LIMIT ?"
                ))
                .await?,
        })
    }

    async fn load_poll(&self, id: PollId) -> Result<Option<PollState>, ViewError> {
        self.counters.read();
        let res = self.run(&self.st()?.poll, (id.0,)).await?;
        let rows = res.into_rows_result().map_err(rows_err)?;
        match rows.maybe_first_row::<PollRow>().map_err(rows_err)? {
            Some(row) => row.into_state(),
            None => Ok(None),
        }
    }
}

#[async_trait]
impl ViewStore for CqlStore {
    fn backend(&self) -> &'static str {
        "cql"
    }

    fn counts(&self) -> (u64, u64) {
        self.counters.get()
    }

    async fn migrate(&self) -> Result<(), ViewError> {
        let ks = format!(
            "CREATE KEYSPACE IF NOT EXISTS {} WITH replication = \
             {{'class': 'SimpleStrategy', 'replication_factor': {}}}",
            self.keyspace, self.replication_factor
        );
        self.session.query_unpaged(ks, ()).await.map_err(exec_err)?;
        for ddl in SCHEMA {
            let ddl = ddl.replace(
                "CREATE TABLE IF NOT EXISTS ",
                &format!("CREATE TABLE IF NOT EXISTS {}.", self.keyspace),
            );
            self.session
                .query_unpaged(ddl, ())
                .await
                .map_err(exec_err)?;
        }
        self.session
            .await_schema_agreement()
            .await
            .map_err(unavailable)?;
        let st = self.prepare_all().await?;
        let _ = self.st.set(st);
        Ok(())
    }

    async fn generations(&self) -> Result<Vec<Generation>, ViewError> {
        let res = self.run(&self.st()?.generations, ()).await?;
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
        let st = self.st()?;
        let body = json(next);
        // Lightweight transactions: the compare-and-set is decided by Paxos
        // on the row, so two supervisors cannot both win a swap.
        let res = if expected == 0 {
            self.run(&st.generation_insert, (next.view.as_str(), body, next.rev))
                .await?
        } else {
            self.run(
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

    async fn drop_view(&self, view: View) -> Result<(), ViewError> {
        let tables: &[&str] = match view {
            View::Polls => &["polls", "polls_by_owner", "poll_voters"],
            View::Feed => &["feed_items", "feed_timeline"],
            View::Cards => &["cards", "uploads"],
            View::Infer => &[],
        };
        for t in tables {
            self.session
                .query_unpaged(format!("TRUNCATE {}.{t}", self.keyspace), ())
                .await
                .map_err(exec_err)?;
        }
        self.run(&self.st()?.checkpoints_delete, (view.as_str(),))
            .await?;
        Ok(())
    }

    async fn drop_store(&self) -> Result<(), ViewError> {
        self.session
            .query_unpaged(format!("DROP KEYSPACE IF EXISTS {}", self.keyspace), ())
            .await
            .map_err(exec_err)?;
        Ok(())
    }

    async fn load_polls(&self, ids: &[PollId]) -> Result<Vec<PollState>, ViewError> {
        let reads: Vec<_> = ids.iter().map(|&id| self.load_poll(id)).collect();
        fan_out(reads).await
    }

    async fn load_ballots(
        &self,
        poll: PollId,
        voters: &[VoterKey],
    ) -> Result<Vec<(VoterKey, Ballot)>, ViewError> {
        let st = self.st()?;
        let reads: Vec<_> = voters
            .chunks(IN_CHUNK)
            .map(<[VoterKey]>::to_vec)
            .map(|chunk| async move {
                self.counters.read();
                let res = self.run(&st.ballots, (poll.0, chunk)).await?;
                let rows = res.into_rows_result().map_err(rows_err)?;
                let mut out = Vec::new();
                for r in rows.rows::<BallotRow>().map_err(rows_err)? {
                    let r = r.map_err(rows_err)?;
                    if let (Some(c), Some(t)) = (r.choices, r.voted_us) {
                        out.push((
                            r.voter,
                            Ballot {
                                choices: c as u32,
                                at: time(t),
                                name: r.name,
                            },
                        ));
                    }
                }
                Ok::<_, ViewError>(out)
            })
            .collect();
        fan_out(reads).await
    }

    async fn commit_poll(&self, c: &PollCommit) -> Result<(), ViewError> {
        let st = self.st()?;
        let s = &c.state;
        let ts = write_timestamp(s.position.offset);
        // Derived row first (rule 3): re-applying after a crash rewrites it.
        let owner = OwnerPollRow::of(s);
        self.counters.write(1);
        self.run(
            &st.owner_upsert,
            (
                s.owner.id.as_str(),
                us(owner.created_at),
                s.poll_id.0,
                &owner.head,
                owner.closed,
                owner.ends_at.map(us),
                owner.voters as i64,
                s.position.partition,
                s.position.offset,
                ts,
            ),
        )
        .await?;
        // The voters-by-question rows are derived too: one batch per question
        // partition, before the aggregate.
        for (q, changes) in voter_changes(c) {
            let mut batch = Batch::new(BatchType::Unlogged);
            batch.set_timestamp(Some(ts));
            let mut values: Vec<Box<dyn SerializeRow + Send + Sync>> = Vec::new();
            for (voter, row) in changes {
                match row {
                    Some(r) => {
                        batch.append_statement(st.voter_upsert.clone());
                        values.push(Box::new((
                            s.poll_id.0,
                            q as i16,
                            voter.to_owned(),
                            r.name,
                            us(r.at),
                        )));
                    }
                    None => {
                        batch.append_statement(st.voter_delete.clone());
                        values.push(Box::new((s.poll_id.0, q as i16, voter.to_owned())));
                    }
                }
            }
            self.counters.write(values.len() as u64);
            self.session.batch(&batch, values).await.map_err(exec_err)?;
        }
        // Then the aggregate and its ballots: one single-partition batch, so
        // the version and the values it covers change together.
        let mut batch = Batch::new(BatchType::Unlogged);
        batch.set_timestamp(Some(ts));
        let mut values: Vec<Box<dyn SerializeRow + Send + Sync>> =
            Vec::with_capacity(c.ballots.len() + 1);
        batch.append_statement(st.poll_static.clone());
        values.push(Box::new(PollRow::of(s)));
        for (voter, b) in &c.ballots {
            match b {
                Some(b) => {
                    batch.append_statement(st.ballot_upsert.clone());
                    values.push(Box::new((
                        s.poll_id.0,
                        voter.clone(),
                        b.choices as i32,
                        us(b.at),
                        b.name.clone(),
                    )));
                }
                None => {
                    batch.append_statement(st.ballot_delete.clone());
                    values.push(Box::new((s.poll_id.0, voter.clone())));
                }
            }
        }
        self.counters.write(values.len() as u64);
        self.session.batch(&batch, values).await.map_err(exec_err)?;
        Ok(())
    }

    async fn poll(&self, id: PollId) -> Result<Option<PollState>, ViewError> {
        self.load_poll(id).await
    }

    async fn polls_by_owner(
        &self,
        owner: &UserId,
        before: Option<OwnerCursor>,
        limit: usize,
    ) -> Result<Vec<OwnerPollRow>, ViewError> {
        let st = self.st()?;
        self.counters.read();
        let limit = limit.clamp(1, 1000) as i32;
        let res = match before {
            Some((t, id)) => {
                self.run(&st.owner_page_before, (owner.as_str(), us(t), id.0, limit))
                    .await?
            }
            None => self.run(&st.owner_page, (owner.as_str(), limit)).await?,
        };
        let rows = res.into_rows_result().map_err(rows_err)?;
        rows.rows::<OwnerRow>()
            .map_err(rows_err)?
            .map(|r| {
                let r = r.map_err(rows_err)?;
                Ok(OwnerPollRow {
                    poll_id: PollId(r.poll_id),
                    created_at: time(r.created_us),
                    head: r.head.unwrap_or_default(),
                    closed: r.closed.unwrap_or_default(),
                    ends_at: r.ends_us.map(time),
                    voters: r.voters.unwrap_or_default().max(0) as u64,
                    position: Position {
                        partition: r.src_partition.unwrap_or_default(),
                        offset: r.src_offset.unwrap_or_default(),
                    },
                })
            })
            .collect()
    }

    async fn question_voters(
        &self,
        poll: PollId,
        question: QuestionId,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<VoterRow>, ViewError> {
        let st = self.st()?;
        self.counters.read();
        let limit = limit.clamp(1, 1000) as i32;
        let q = question as i16;
        let res = match after {
            Some(v) => {
                self.run(&st.voters_page_after, (poll.0, q, v, limit))
                    .await?
            }
            None => self.run(&st.voters_page, (poll.0, q, limit)).await?,
        };
        let rows = res.into_rows_result().map_err(rows_err)?;
        rows.rows::<VoterDbRow>()
            .map_err(rows_err)?
            .map(|r| {
                let r = r.map_err(rows_err)?;
                Ok(VoterRow {
                    voter: UserId::parse(&r.voter).map_err(|e| ViewError::Corrupt(e.reason))?,
                    name: r.name,
                    at: time(r.voted_us.unwrap_or_default()),
                })
            })
            .collect()
    }

    async fn load_items(&self, ids: &[FeedItemId]) -> Result<Vec<ItemState>, ViewError> {
        let reads: Vec<_> = ids.iter().map(|&id| self.item(id)).collect();
        fan_out(reads).await
    }

    async fn load_members(
        &self,
        item: FeedItemId,
        keys: &[MemberKey],
    ) -> Result<Vec<(MemberKey, Member)>, ViewError> {
        let st = self.st()?;
        let mut by_rel: BTreeMap<Relation, Vec<String>> = BTreeMap::new();
        for (rel, user) in keys {
            by_rel
                .entry(*rel)
                .or_default()
                .push(user.as_str().to_owned());
        }
        let reads: Vec<_> = by_rel
            .iter()
            .flat_map(|(rel, users)| users.chunks(IN_CHUNK).map(move |c| (*rel, c.to_vec())))
            .map(|(rel, chunk)| async move {
                self.counters.read();
                let res = self.run(&st.members, (item.0, rel.as_str(), chunk)).await?;
                let rows = res.into_rows_result().map_err(rows_err)?;
                let mut out = Vec::new();
                for r in rows.rows::<MemberRow>().map_err(rows_err)? {
                    let r = r.map_err(rows_err)?;
                    let (Some(rel), Ok(user), Some(at)) =
                        (Relation::parse(&r.rel), UserId::parse(&r.user_id), r.at_us)
                    else {
                        continue;
                    };
                    out.push((
                        (rel, user),
                        Member {
                            at: time(at),
                            name: r.name.unwrap_or_default(),
                        },
                    ));
                }
                Ok::<_, ViewError>(out)
            })
            .collect();
        fan_out(reads).await
    }

    async fn commit_item(&self, c: &ItemCommit) -> Result<(), ViewError> {
        let st = self.st()?;
        let s = &c.state;
        let ts = write_timestamp(s.position.offset);
        // Derived rows first (rule 3): the timelines' copies, or their
        // removal; both timelines in one request (an unlogged batch of two
        // partitions: atomicity is not needed, a re-apply repairs them).
        let row = TimelineRow::of(s);
        let mut derived = Batch::new(BatchType::Unlogged);
        let mut values: Vec<Box<dyn SerializeRow + Send + Sync>> = Vec::with_capacity(2);
        for t in TimelineRow::timelines(s.kind) {
            match s.deleted_at {
                Some(_) => {
                    derived.append_statement(st.timeline_delete.clone());
                    values.push(Box::new((ts, t, us(s.created_at), s.item_id.0)));
                }
                None => {
                    derived.append_statement(st.timeline_upsert.clone());
                    values.push(Box::new((
                        t,
                        us(row.created_at),
                        row.item_id.0,
                        row.kind.as_str(),
                        json(&row.content),
                        json(&row.author),
                        row.likes as i64,
                        row.joined as i64,
                        row.position.partition,
                        row.position.offset,
                        ts,
                    )));
                }
            }
        }
        self.counters.write(values.len() as u64);
        self.session
            .batch(&derived, values)
            .await
            .map_err(exec_err)?;
        let mut batch = Batch::new(BatchType::Unlogged);
        batch.set_timestamp(Some(ts));
        let mut values: Vec<Box<dyn SerializeRow + Send + Sync>> =
            Vec::with_capacity(c.members.len() + 1);
        batch.append_statement(st.item_static.clone());
        values.push(Box::new((
            s.kind.as_str(),
            json(&s.content),
            json(&s.author),
            us(s.created_at),
            // Never a null: an unset column leaves no tombstone behind.
            match s.deleted_at {
                Some(t) => MaybeUnset::Set(us(t)),
                None => MaybeUnset::Unset,
            },
            s.likes as i64,
            s.joined as i64,
            json(&s.recent_members),
            json(&s.rejected),
            s.position.partition,
            s.position.offset,
            s.item_id.0,
        )));
        for ((rel, user), m) in &c.members {
            match m {
                Some(m) => {
                    batch.append_statement(st.member_upsert.clone());
                    values.push(Box::new((
                        s.item_id.0,
                        rel.as_str(),
                        user.as_str().to_owned(),
                        us(m.at),
                        m.name.clone(),
                    )));
                }
                None => {
                    batch.append_statement(st.member_delete.clone());
                    values.push(Box::new((
                        s.item_id.0,
                        rel.as_str(),
                        user.as_str().to_owned(),
                    )));
                }
            }
        }
        self.counters.write(values.len() as u64);
        self.session.batch(&batch, values).await.map_err(exec_err)?;
        Ok(())
    }

    async fn item(&self, id: FeedItemId) -> Result<Option<ItemState>, ViewError> {
        self.counters.read();
        let res = self.run(&self.st()?.item, (id.0,)).await?;
        let rows = res.into_rows_result().map_err(rows_err)?;
        match rows.maybe_first_row::<ItemRow>().map_err(rows_err)? {
            Some(row) => row.into_state(),
            None => Ok(None),
        }
    }

    async fn timeline(
        &self,
        kind: Option<FeedKind>,
        before: Option<FeedCursor>,
        limit: usize,
    ) -> Result<Vec<TimelineRow>, ViewError> {
        let st = self.st()?;
        self.counters.read();
        let name = kind.map_or(ALL_KINDS, FeedKind::as_str);
        let limit = limit.clamp(1, 1000) as i32;
        let res = match before {
            Some((t, id)) => {
                self.run(&st.timeline_page_before, (name, us(t), id.0, limit))
                    .await?
            }
            None => self.run(&st.timeline_page, (name, limit)).await?,
        };
        let rows = res.into_rows_result().map_err(rows_err)?;
        rows.rows::<TimelineDbRow>()
            .map_err(rows_err)?
            .map(|r| {
                let r = r.map_err(rows_err)?;
                let kind = r.kind.unwrap_or_default();
                Ok(TimelineRow {
                    item_id: FeedItemId(r.item_id),
                    kind: FeedKind::parse(&kind)
                        .ok_or_else(|| ViewError::Corrupt(format!("kind {kind:?}")))?,
                    content: unjson("content", r.content)?,
                    author: unjson("author", r.author)?,
                    created_at: time(r.created_us),
                    likes: r.likes.unwrap_or_default().max(0) as u64,
                    joined: r.joined.unwrap_or_default().max(0) as u64,
                    position: Position {
                        partition: r.src_partition.unwrap_or_default(),
                        offset: r.src_offset.unwrap_or_default(),
                    },
                })
            })
            .collect()
    }

    async fn apply_patches(&self, cards: &[&Patch], uploads: &[&Patch]) -> Result<(), ViewError> {
        let st = self.st()?;
        let mut writes: Vec<(&PreparedStatement, Vec<PatchValue>)> = Vec::new();
        for p in cards {
            let mut v = vec![
                set(CqlValue::BigInt(p.ts)),
                set(CqlValue::Uuid(p.upload_id.0)),
            ];
            v.extend(patch_values(p));
            v.push(set(CqlValue::Text(p.session_key.to_string())));
            v.push(set(CqlValue::TinyInt(p.slot as i8)));
            writes.push((&st.card_patch, v));
        }
        for p in uploads {
            let mut v = vec![
                set(CqlValue::BigInt(p.ts)),
                set(CqlValue::Text(p.session_key.to_string())),
                set(CqlValue::TinyInt(p.slot as i8)),
            ];
            v.extend(patch_values(p));
            v.push(set(CqlValue::Uuid(p.upload_id.0)));
            writes.push((&st.upload_patch, v));
        }
        let runs: Vec<_> = writes
            .into_iter()
            .map(|(stmt, v)| async move {
                self.counters.write(1);
                self.run(stmt, v).await.map(|_| ())
            })
            .collect();
        futures::stream::iter(runs)
            .buffer_unordered(FANOUT)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    async fn cards(&self, session: &SessionKey) -> Result<Vec<Card>, ViewError> {
        self.counters.read();
        let res = self.run(&self.st()?.cards, (session.to_string(),)).await?;
        let rows = res.into_rows_result().map_err(rows_err)?;
        let mut out = Vec::new();
        for r in rows.rows::<CardRow>().map_err(rows_err)? {
            if let Some(c) = r.map_err(rows_err)?.into_card()? {
                out.push(c);
            }
        }
        Ok(out)
    }

    async fn upload(&self, id: UploadId) -> Result<Option<Card>, ViewError> {
        self.counters.read();
        let res = self.run(&self.st()?.upload, (id.0,)).await?;
        let rows = res.into_rows_result().map_err(rows_err)?;
        match rows.maybe_first_row::<CardRow>().map_err(rows_err)? {
            Some(r) => r.into_card(),
            None => Ok(None),
        }
    }

    async fn checkpoint(
        &self,
        view: &str,
        topic: &str,
        partition: i32,
    ) -> Result<Option<Checkpoint>, ViewError> {
        self.counters.read();
        let res = self
            .run(&self.st()?.checkpoint, (view, topic, partition))
            .await?;
        let rows = res.into_rows_result().map_err(rows_err)?;
        rows.maybe_first_row::<CheckpointRow>()
            .map_err(rows_err)?
            .map(|r| checkpoint_of(view, r))
            .transpose()
    }

    async fn save_checkpoint(&self, cp: &Checkpoint) -> Result<(), ViewError> {
        self.counters.write(1);
        self.run(
            &self.st()?.checkpoint_save,
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
        self.counters.read();
        let res = self.run(&self.st()?.checkpoints, (view,)).await?;
        let rows = res.into_rows_result().map_err(rows_err)?;
        rows.rows::<CheckpointRow>()
            .map_err(rows_err)?
            .map(|r| checkpoint_of(view, r.map_err(rows_err)?))
            .collect()
    }

    async fn scan_polls(
        &self,
        after: Option<PollId>,
        limit: usize,
    ) -> Result<(Vec<PollState>, Option<PollId>), ViewError> {
        let st = self.st()?;
        self.counters.read();
        let limit = limit.clamp(1, 1000);
        // One row past the page tells whether the page would end inside a
        // group of partitions sharing one token (see `scan_page_len`).
        let fetch = (limit + 1) as i32;
        let res = match after {
            Some(id) => self.run(&st.polls_scan_after, (id.0, fetch)).await?,
            None => self.run(&st.polls_scan, (fetch,)).await?,
        };
        let rows = res.into_rows_result().map_err(rows_err)?;
        let mut rows = rows
            .rows::<PollRow>()
            .map_err(rows_err)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(rows_err)?;
        let more = rows.len() > limit;
        if more {
            let tokens = rows
                .iter()
                .map(|r| match st.poll.calculate_token(&(r.poll_id,)) {
                    Ok(Some(t)) => Ok(t.value()),
                    Ok(None) => Err(ViewError::Rejected("polls has no partition key".into())),
                    Err(e) => Err(ViewError::Rejected(e.to_string())),
                })
                .collect::<Result<Vec<_>, _>>()?;
            let keep = scan_page_len(&tokens, limit).ok_or_else(|| {
                ViewError::Rejected(format!(
                    "more than {limit} polls share one token: scan with larger pages"
                ))
            })?;
            rows.truncate(keep);
        }
        let next = if more {
            rows.last().map(|r| PollId(r.poll_id))
        } else {
            None
        };
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            out.extend(r.into_state()?);
        }
        Ok((out, next))
    }
}

/// How many of `limit + 1` scanned rows (their tokens, in scan order) make
/// the page. The next page starts after the last row's *token*, so a page
/// must not split partitions that share one (rare, but Murmur3 tokens are
/// 64 bits, not ids): rows sharing the lookahead row's token wait for the
/// next page. `None` when they are the whole page (no progress possible).
fn scan_page_len(tokens: &[i64], limit: usize) -> Option<usize> {
    let boundary = *tokens.get(limit)?;
    let keep = tokens[..limit]
        .iter()
        .rposition(|&t| t != boundary)
        .map_or(0, |i| i + 1);
    (keep > 0).then_some(keep)
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

#[cfg(test)]
mod tests {
    use super::scan_page_len;

    #[test]
    fn scan_pages_never_split_a_token() {
        // Distinct tokens: the page is the first `limit` rows.
        assert_eq!(scan_page_len(&[1, 2, 3, 4], 3), Some(3));
        // The last row shares the lookahead's token: it waits.
        assert_eq!(scan_page_len(&[1, 2, 3, 3], 3), Some(2));
        assert_eq!(scan_page_len(&[1, 4, 4, 4], 3), Some(1));
        // A group inside the page is whole: kept.
        assert_eq!(scan_page_len(&[2, 2, 3, 4], 3), Some(3));
        // Every row shares one token: no page can make progress.
        assert_eq!(scan_page_len(&[5, 5, 5, 5], 3), None);
        // Not a lookahead scan.
        assert_eq!(scan_page_len(&[1, 2], 3), None);
    }
}
