//! The feed view on CQL: `feed_items` (the aggregate in static columns, one
//! membership per clustering row), `feed_timelines` (one partition per
//! timeline, day bucket and shard, newest first) and
//! `feed_timeline_buckets` (each timeline's buckets).

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
use crate::view::feed::{BUCKETS_TTL, shards};
use crate::view::{
    FeedCursor, FeedStore, KnownBuckets, TimelinePart, TimelineParts, TimelineRow, ViewError,
    timeline_page, write_timestamp,
};

/// The view's tables.
pub(super) const TABLES: &[&str] = &["feed_items", "feed_timelines", "feed_timeline_buckets"];

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
    "CREATE TABLE IF NOT EXISTS {ks}.feed_timelines (
        timeline text,
        bucket bigint,
        shard smallint,
        created_us bigint,
        item_id uuid,
        kind text,
        content text,
        author text,
        likes bigint,
        joined bigint,
        src_partition int,
        src_offset bigint,
        PRIMARY KEY ((timeline, bucket, shard), created_us, item_id))
        WITH CLUSTERING ORDER BY (created_us DESC, item_id DESC)",
    "CREATE TABLE IF NOT EXISTS {ks}.feed_timeline_buckets (
        timeline text,
        bucket bigint,
        PRIMARY KEY (timeline, bucket))
        WITH CLUSTERING ORDER BY (bucket DESC)",
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
    bucket_insert: Stmt,
    buckets: Stmt,
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
            bucket_insert,
            buckets,
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
                "INSERT INTO {ks}.feed_timelines (timeline, bucket, shard, created_us, item_id, \
                 kind, content, author, likes, joined, src_partition, src_offset) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?",
                "DELETE FROM {ks}.feed_timelines USING TIMESTAMP ? \
                 WHERE timeline = ? AND bucket = ? AND shard = ? AND created_us = ? \
                 AND item_id = ?",
                // One query over several partitions (buckets and shards),
                // each read newest first up to the page's size, merged
                // here (an `ORDER BY` over `IN` makes Cassandra read every
                // row of every partition to sort them: 40 pages/s here).
                concat!(
                    "SELECT ",
                    timeline_columns!(),
                    " FROM {ks}.feed_timelines WHERE timeline = ? AND bucket IN ? \
                     AND shard IN ? PER PARTITION LIMIT ?"
                ),
                concat!(
                    "SELECT ",
                    timeline_columns!(),
                    " FROM {ks}.feed_timelines WHERE timeline = ? AND bucket IN ? \
                     AND shard IN ? AND (created_us, item_id) < (?, ?) PER PARTITION LIMIT ?"
                ),
                "INSERT INTO {ks}.feed_timeline_buckets (timeline, bucket) VALUES (?, ?)",
                "SELECT bucket FROM {ks}.feed_timeline_buckets WHERE timeline = ?",
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
            bucket_insert,
            buckets,
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

    async fn commit_timelines(&self, states: &[&ItemState]) -> Result<(), ViewError> {
        let st = self.feed_st()?;
        // Derived rows first (rule 3): each item's timeline copies, or their
        // removal, one single-partition batch per timeline partition (each
        // row at its own timestamp), then the index entries of buckets this
        // process has not written before.
        let mut parts: BTreeMap<TimelinePart, (Vec<&Stmt>, Values)> = BTreeMap::new();
        for s in states {
            let ts = write_timestamp(s.position.offset);
            let row = TimelineRow::of(s);
            for p in TimelineRow::parts(s) {
                let (stmts, values) = parts.entry(p).or_default();
                match s.deleted_at {
                    Some(_) => {
                        stmts.push(&st.timeline_delete);
                        values.push(Box::new((
                            ts,
                            p.timeline,
                            p.bucket,
                            p.shard,
                            us(s.created_at),
                            s.item_id.0,
                        )));
                    }
                    None => {
                        stmts.push(&st.timeline_upsert);
                        values.push(Box::new((
                            p.timeline,
                            p.bucket,
                            p.shard,
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
        }
        let mut index: BTreeMap<&'static str, Vec<i64>> = BTreeMap::new();
        for p in parts.keys() {
            if !self.buckets.has(p.timeline, p.bucket) {
                let b = index.entry(p.timeline).or_default();
                if b.last() != Some(&p.bucket) {
                    b.push(p.bucket);
                }
            }
        }
        let writes: Vec<_> = parts
            .into_values()
            .map(|(stmts, values)| async move {
                self.db.batch(None, Partitions::One, &stmts, values).await?;
                Ok::<_, ViewError>(None::<()>)
            })
            .collect();
        fan_out(writes).await?;
        for (timeline, buckets) in index {
            let stmts = vec![&st.bucket_insert; buckets.len()];
            let values: Values = buckets
                .iter()
                .map(|&b| Box::new((timeline, b)) as Box<dyn SerializeRow + Send + Sync>)
                .collect();
            self.db.batch(None, Partitions::One, &stmts, values).await?;
            for b in buckets {
                self.buckets.note(timeline, b);
            }
        }
        Ok(())
    }

    async fn commit_members(&self, c: &ItemCommit) -> Result<(), ViewError> {
        let st = self.feed_st()?;
        let s = &c.state;
        let ts = write_timestamp(s.position.offset);
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
        timeline_page(self, kind, before, limit).await
    }
}

#[async_trait]
impl TimelineParts for CqlStore {
    async fn read_buckets(
        &self,
        timeline: &'static str,
        buckets: &[i64],
        before: Option<FeedCursor>,
        limit: usize,
    ) -> Result<Vec<TimelineRow>, ViewError> {
        let st = self.feed_st()?;
        let limit = limit.clamp(1, 1000) as i32;
        let buckets = buckets.to_vec();
        let shards: Vec<i16> = (0..shards(timeline)).collect();
        let res = match before {
            Some((t, id)) => {
                self.db
                    .run(
                        &st.timeline_page_before,
                        (timeline, buckets, shards, us(t), id.0, limit),
                    )
                    .await?
            }
            None => {
                self.db
                    .run(&st.timeline_page, (timeline, buckets, shards, limit))
                    .await?
            }
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

    async fn known_buckets(&self, timeline: &'static str) -> Result<&KnownBuckets, ViewError> {
        if self.buckets.stale(timeline, Some(BUCKETS_TTL)) {
            let res = self.db.run(&self.feed_st()?.buckets, (timeline,)).await?;
            let rows = res.into_rows_result().map_err(rows_err)?;
            let found = rows
                .rows::<(i64,)>()
                .map_err(rows_err)?
                .map(|r| r.map(|(b,)| b).map_err(rows_err))
                .collect::<Result<Vec<_>, _>>()?;
            self.buckets.read(timeline, found);
        }
        Ok(&self.buckets)
    }
}
