//! The polls view on CQL: `polls` (the aggregate in static columns, one
//! ballot per clustering row), `polls_by_owner` and `poll_voters`.

use async_trait::async_trait;
use scylla::{DeserializeRow, SerializeRow};

use super::{
    CqlStore, Db, IN_CHUNK, Partitions, Stmt, Values, fan_out, json, rows_err, time, unjson, us,
};
use crate::event::{PollId, Principal, QuestionId, UserId};
use crate::fold::Position;
use crate::fold::poll::{Ballot, PollCommit, PollState, VoterKey};
use crate::view::polls::voter_changes;
use crate::view::{OwnerCursor, OwnerPollRow, PollsStore, ViewError, VoterRow, write_timestamp};

/// The view's tables.
pub(super) const TABLES: &[&str] = &["polls", "polls_by_owner", "poll_voters"];

pub(super) const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS {ks}.polls (
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
    "CREATE TABLE IF NOT EXISTS {ks}.polls_by_owner (
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
    "CREATE TABLE IF NOT EXISTS {ks}.poll_voters (
        poll_id uuid,
        question smallint,
        voter text,
        name text,
        voted_us bigint,
        PRIMARY KEY ((poll_id, question), voter))",
];

/// The aggregate's columns, as a literal for `concat!`.
macro_rules! poll_columns {
    () => {
        "poll_id, owner, head, message, created_us, ends_us, anonymous, multiple, closed_us, \
         questions, tallies, voters, recent, rejected, src_partition, src_offset"
    };
}

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

#[derive(DeserializeRow)]
struct VoterDbRow {
    voter: String,
    name: Option<String>,
    voted_us: Option<i64>,
}

/// The view's prepared statements.
#[derive(Debug)]
pub(super) struct Statements {
    poll: Stmt,
    ballots: Stmt,
    poll_static: Stmt,
    ballot_upsert: Stmt,
    ballot_delete: Stmt,
    owner_upsert: Stmt,
    owner_page: Stmt,
    owner_page_before: Stmt,
    voter_upsert: Stmt,
    voter_delete: Stmt,
    voters_page: Stmt,
    voters_page_after: Stmt,
    scan: Stmt,
    scan_after: Stmt,
}

impl Statements {
    pub(super) async fn prepare(db: &Db) -> Result<Self, ViewError> {
        let [
            poll,
            ballots,
            poll_static,
            ballot_upsert,
            ballot_delete,
            owner_upsert,
            owner_page,
            owner_page_before,
            voter_upsert,
            voter_delete,
            voters_page,
            voters_page_after,
            scan,
            scan_after,
        ] = db
            .prepare_all([
                concat!(
                    "SELECT ",
                    poll_columns!(),
                    " FROM {ks}.polls WHERE poll_id = ? LIMIT 1"
                ),
                "SELECT voter, choices, voted_us, name FROM {ks}.polls \
                 WHERE poll_id = ? AND voter IN ?",
                "UPDATE {ks}.polls SET owner = ?, head = ?, message = ?, created_us = ?, \
                 ends_us = ?, anonymous = ?, multiple = ?, closed_us = ?, questions = ?, \
                 tallies = ?, voters = ?, recent = ?, rejected = ?, src_partition = ?, \
                 src_offset = ? WHERE poll_id = ?",
                "INSERT INTO {ks}.polls (poll_id, voter, choices, voted_us, name) \
                 VALUES (?, ?, ?, ?, ?)",
                "DELETE FROM {ks}.polls WHERE poll_id = ? AND voter = ?",
                "INSERT INTO {ks}.polls_by_owner (owner_id, created_us, poll_id, head, \
                 closed, ends_us, voters, src_partition, src_offset) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?",
                "SELECT created_us, poll_id, head, closed, ends_us, voters, src_partition, \
                 src_offset FROM {ks}.polls_by_owner WHERE owner_id = ? LIMIT ?",
                "SELECT created_us, poll_id, head, closed, ends_us, voters, src_partition, \
                 src_offset FROM {ks}.polls_by_owner WHERE owner_id = ? \
                 AND (created_us, poll_id) < (?, ?) LIMIT ?",
                "INSERT INTO {ks}.poll_voters (poll_id, question, voter, name, voted_us) \
                 VALUES (?, ?, ?, ?, ?)",
                "DELETE FROM {ks}.poll_voters WHERE poll_id = ? AND question = ? AND voter = ?",
                "SELECT voter, name, voted_us FROM {ks}.poll_voters \
                 WHERE poll_id = ? AND question = ? LIMIT ?",
                "SELECT voter, name, voted_us FROM {ks}.poll_voters \
                 WHERE poll_id = ? AND question = ? AND voter > ? LIMIT ?",
                // DISTINCT reads one row per partition: the aggregate's static
                // columns, not its ballots.
                concat!(
                    "SELECT DISTINCT ",
                    poll_columns!(),
                    " FROM {ks}.polls LIMIT ?"
                ),
                concat!(
                    "SELECT DISTINCT ",
                    poll_columns!(),
                    " FROM {ks}.polls WHERE token(poll_id) > token(?) LIMIT ?"
                ),
            ])
            .await?;
        Ok(Self {
            poll,
            ballots,
            poll_static,
            ballot_upsert,
            ballot_delete,
            owner_upsert,
            owner_page,
            owner_page_before,
            voter_upsert,
            voter_delete,
            voters_page,
            voters_page_after,
            scan,
            scan_after,
        })
    }
}

impl CqlStore {
    fn polls_st(&self) -> Result<&Statements, ViewError> {
        Ok(&self.st()?.polls)
    }

    async fn load_poll(&self, id: PollId) -> Result<Option<PollState>, ViewError> {
        let res = self.db.run(&self.polls_st()?.poll, (id.0,)).await?;
        let rows = res.into_rows_result().map_err(rows_err)?;
        match rows.maybe_first_row::<PollRow>().map_err(rows_err)? {
            Some(row) => row.into_state(),
            None => Ok(None),
        }
    }
}

#[async_trait]
impl PollsStore for CqlStore {
    async fn load_polls(&self, ids: &[PollId]) -> Result<Vec<PollState>, ViewError> {
        let reads: Vec<_> = ids.iter().map(|&id| self.load_poll(id)).collect();
        fan_out(reads).await
    }

    async fn load_ballots(
        &self,
        poll: PollId,
        voters: &[VoterKey],
    ) -> Result<Vec<(VoterKey, Ballot)>, ViewError> {
        let st = self.polls_st()?;
        let reads: Vec<_> = voters
            .chunks(IN_CHUNK)
            .map(<[VoterKey]>::to_vec)
            .map(|chunk| async move {
                let res = self.db.run(&st.ballots, (poll.0, chunk)).await?;
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
        let st = self.polls_st()?;
        let s = &c.state;
        let ts = write_timestamp(s.position.offset);
        // Derived row first (rule 3): re-applying after a crash rewrites it.
        let owner = OwnerPollRow::of(s);
        self.db
            .run(
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
            let mut stmts = Vec::with_capacity(changes.len());
            let mut values: Values = Vec::with_capacity(changes.len());
            for (voter, row) in changes {
                match row {
                    Some(r) => {
                        stmts.push(&st.voter_upsert);
                        values.push(Box::new((
                            s.poll_id.0,
                            q as i16,
                            voter.to_owned(),
                            r.name,
                            us(r.at),
                        )));
                    }
                    None => {
                        stmts.push(&st.voter_delete);
                        values.push(Box::new((s.poll_id.0, q as i16, voter.to_owned())));
                    }
                }
            }
            self.db
                .batch(Some(ts), Partitions::One, &stmts, values)
                .await?;
        }
        // Then the aggregate and its ballots: one single-partition batch, so
        // the version and the values it covers change together (the version
        // row last: a batch past `MAX_BATCH_STATEMENTS` is split, in order).
        let mut stmts = Vec::with_capacity(c.ballots.len() + 1);
        let mut values: Values = Vec::with_capacity(c.ballots.len() + 1);
        for (voter, b) in &c.ballots {
            match b {
                Some(b) => {
                    stmts.push(&st.ballot_upsert);
                    values.push(Box::new((
                        s.poll_id.0,
                        voter.clone(),
                        b.choices as i32,
                        us(b.at),
                        b.name.clone(),
                    )));
                }
                None => {
                    stmts.push(&st.ballot_delete);
                    values.push(Box::new((s.poll_id.0, voter.clone())));
                }
            }
        }
        stmts.push(&st.poll_static);
        values.push(Box::new(PollRow::of(s)));
        self.db
            .batch(Some(ts), Partitions::One, &stmts, values)
            .await
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
        let st = self.polls_st()?;
        let limit = limit.clamp(1, 1000) as i32;
        let res = match before {
            Some((t, id)) => {
                self.db
                    .run(&st.owner_page_before, (owner.as_str(), us(t), id.0, limit))
                    .await?
            }
            None => self.db.run(&st.owner_page, (owner.as_str(), limit)).await?,
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
        let st = self.polls_st()?;
        let limit = limit.clamp(1, 1000) as i32;
        let q = question as i16;
        let res = match after {
            Some(v) => {
                self.db
                    .run(&st.voters_page_after, (poll.0, q, v, limit))
                    .await?
            }
            None => self.db.run(&st.voters_page, (poll.0, q, limit)).await?,
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

    async fn scan_polls(
        &self,
        after: Option<PollId>,
        limit: usize,
    ) -> Result<(Vec<PollState>, Option<PollId>), ViewError> {
        let st = self.polls_st()?;
        let limit = limit.clamp(1, 1000);
        // One row past the page tells whether the page would end inside a
        // group of partitions sharing one token (see `scan_page_len`).
        let fetch = (limit + 1) as i32;
        let res = match after {
            Some(id) => self.db.run(&st.scan_after, (id.0, fetch)).await?,
            None => self.db.run(&st.scan, (fetch,)).await?,
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
                .map(|r| match st.poll.prepared.calculate_token(&(r.poll_id,)) {
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
