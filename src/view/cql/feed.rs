//! The feed view on CQL: `feed_items` (the aggregate in static columns, one
//! membership per clustering row) and `feed_timeline` (one partition per
//! timeline, newest first).

use std::collections::BTreeMap;

use async_trait::async_trait;
use scylla::DeserializeRow;
use scylla::serialize::row::SerializeRow;
use scylla::value::MaybeUnset;

use super::{
    CqlStore, Db, IN_CHUNK, Partitions, Stmt, Values, fan_out, json, rows_err, time, unjson, us,
};
use crate::event::{FeedItemId, UserId};
use crate::fold::Position;
use crate::fold::feed::{FeedKind, ItemCommit, ItemState, Member, MemberKey, Relation};
use crate::view::{ALL_KINDS, FeedCursor, FeedStore, TimelineRow, ViewError, write_timestamp};

/// The view's tables.
pub(super) const TABLES: &[&str] = &["feed_items", "feed_timeline"];

pub(super) const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS {ks}.feed_items (
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
    "CREATE TABLE IF NOT EXISTS {ks}.feed_timeline (
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
];

/// The aggregate's columns, as a literal for `concat!`.
macro_rules! item_columns {
    () => {
        "item_id, kind, content, author, created_us, deleted_us, likes, joined, recent, \
         rejected, src_partition, src_offset"
    };
}

/// A timeline row's columns, as a literal for `concat!`.
macro_rules! timeline_columns {
    () => {
        "created_us, item_id, kind, content, author, likes, joined, src_partition, src_offset"
    };
}

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

/// The view's prepared statements.
#[derive(Debug)]
pub(super) struct Statements {
    item: Stmt,
    members: Stmt,
    item_static: Stmt,
    member_upsert: Stmt,
    member_delete: Stmt,
    timeline_upsert: Stmt,
    timeline_delete: Stmt,
    timeline_page: Stmt,
    timeline_page_before: Stmt,
}

impl Statements {
    pub(super) async fn prepare(db: &Db) -> Result<Self, ViewError> {
        let [
            item,
            members,
            item_static,
            member_upsert,
            member_delete,
            timeline_upsert,
            timeline_delete,
            timeline_page,
            timeline_page_before,
        ] = db
            .prepare_all([
                concat!(
                    "SELECT ",
                    item_columns!(),
                    " FROM {ks}.feed_items WHERE item_id = ? LIMIT 1"
                ),
                "SELECT rel, user_id, at_us, name FROM {ks}.feed_items \
                 WHERE item_id = ? AND rel = ? AND user_id IN ?",
                "UPDATE {ks}.feed_items SET kind = ?, content = ?, author = ?, created_us = ?, \
                 deleted_us = ?, likes = ?, joined = ?, recent = ?, rejected = ?, \
                 src_partition = ?, src_offset = ? WHERE item_id = ?",
                "INSERT INTO {ks}.feed_items (item_id, rel, user_id, at_us, name) \
                 VALUES (?, ?, ?, ?, ?)",
                "DELETE FROM {ks}.feed_items WHERE item_id = ? AND rel = ? AND user_id = ?",
                "INSERT INTO {ks}.feed_timeline (timeline, created_us, item_id, kind, content, \
                 author, likes, joined, src_partition, src_offset) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?",
                "DELETE FROM {ks}.feed_timeline USING TIMESTAMP ? \
                 WHERE timeline = ? AND created_us = ? AND item_id = ?",
                concat!(
                    "SELECT ",
                    timeline_columns!(),
                    " FROM {ks}.feed_timeline WHERE timeline = ? LIMIT ?"
                ),
                concat!(
                    "SELECT ",
                    timeline_columns!(),
                    " FROM {ks}.feed_timeline WHERE timeline = ? \
                     AND (created_us, item_id) < (?, ?) LIMIT ?"
                ),
            ])
            .await?;
        Ok(Self {
            item,
            members,
            item_static,
            member_upsert,
            member_delete,
            timeline_upsert,
            timeline_delete,
            timeline_page,
            timeline_page_before,
        })
    }
}

impl CqlStore {
    fn feed_st(&self) -> Result<&Statements, ViewError> {
        Ok(&self.st()?.feed)
    }
}

#[async_trait]
impl FeedStore for CqlStore {
    async fn load_items(&self, ids: &[FeedItemId]) -> Result<Vec<ItemState>, ViewError> {
        let reads: Vec<_> = ids.iter().map(|&id| self.item(id)).collect();
        fan_out(reads).await
    }

    async fn load_members(
        &self,
        item: FeedItemId,
        keys: &[MemberKey],
    ) -> Result<Vec<(MemberKey, Member)>, ViewError> {
        let st = self.feed_st()?;
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
                let res = self
                    .db
                    .run(&st.members, (item.0, rel.as_str(), chunk))
                    .await?;
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
        let st = self.feed_st()?;
        let s = &c.state;
        let ts = write_timestamp(s.position.offset);
        // Derived rows first (rule 3): the timelines' copies, or their
        // removal; both timelines in one request (an unlogged batch of two
        // partitions: atomicity is not needed, a re-apply repairs them).
        let row = TimelineRow::of(s);
        let mut stmts = Vec::with_capacity(2);
        let mut values: Values = Vec::with_capacity(2);
        for t in TimelineRow::timelines(s.kind) {
            match s.deleted_at {
                Some(_) => {
                    stmts.push(&st.timeline_delete);
                    values.push(Box::new((ts, t, us(s.created_at), s.item_id.0)));
                }
                None => {
                    stmts.push(&st.timeline_upsert);
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
        self.db
            .batch(None, Partitions::EachStatement, &stmts, values)
            .await?;
        // The members, then the version row last (see `Db::batch`).
        let mut stmts = Vec::with_capacity(c.members.len() + 1);
        let mut values: Values = Vec::with_capacity(c.members.len() + 1);
        let item_static: Box<dyn SerializeRow + Send + Sync> = Box::new((
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
        ));
        for ((rel, user), m) in &c.members {
            match m {
                Some(m) => {
                    stmts.push(&st.member_upsert);
                    values.push(Box::new((
                        s.item_id.0,
                        rel.as_str(),
                        user.as_str().to_owned(),
                        us(m.at),
                        m.name.clone(),
                    )));
                }
                None => {
                    stmts.push(&st.member_delete);
                    values.push(Box::new((
                        s.item_id.0,
                        rel.as_str(),
                        user.as_str().to_owned(),
                    )));
                }
            }
        }
        stmts.push(&st.item_static);
        values.push(item_static);
        self.db
            .batch(Some(ts), Partitions::One, &stmts, values)
            .await
    }

    async fn item(&self, id: FeedItemId) -> Result<Option<ItemState>, ViewError> {
        let res = self.db.run(&self.feed_st()?.item, (id.0,)).await?;
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
        let st = self.feed_st()?;
        let name = kind.map_or(ALL_KINDS, FeedKind::as_str);
        let limit = limit.clamp(1, 1000) as i32;
        let res = match before {
            Some((t, id)) => {
                self.db
                    .run(&st.timeline_page_before, (name, us(t), id.0, limit))
                    .await?
            }
            None => self.db.run(&st.timeline_page, (name, limit)).await?,
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
}
