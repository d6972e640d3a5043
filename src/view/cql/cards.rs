//! The cards view on CQL: `cards` (a session's slots, one partition) and
//! `uploads` (one job status per upload), each patch written `USING
//! TIMESTAMP` its merge order.

use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use scylla::DeserializeRow;
use scylla::value::{CqlValue, MaybeUnset};

use super::{CqlStore, Db, FANOUT, Stmt, json, rows_err, time, unjson, us};
use crate::event::{ModelVersion, SessionKey, Style, UploadId, UserId};
use crate::fold::cards::{Card, Patch, Status};
use crate::view::{CardsStore, SessionRow, ViewError};

/// The view's tables.
pub(super) const TABLES: &[&str] = &["cards", "uploads", "sessions_by_owner"];

pub(super) const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS {ks}.cards (
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
    "CREATE TABLE IF NOT EXISTS {ks}.uploads (
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
    "CREATE TABLE IF NOT EXISTS {ks}.sessions_by_owner (
        owner_id text,
        minted_ms bigint,
        session_key text,
        last frozen<tuple<uuid, text, bigint>>,
        PRIMARY KEY (owner_id, minted_ms, session_key))
        WITH CLUSTERING ORDER BY (minted_ms DESC, session_key DESC)",
];

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

/// A session row. Its latest upload (id, style, received time) is one
/// cell, a tuple: two uploads with the same merge timestamp (one
/// millisecond, one API process) resolve to one of them whole, never to a
/// mix of their columns.
#[derive(DeserializeRow)]
struct SessionDbRow {
    session_key: String,
    last: Option<(uuid::Uuid, String, i64)>,
}

impl SessionDbRow {
    fn into_row(self) -> Result<Option<SessionRow>, ViewError> {
        let corrupt = |e: crate::event::ValidationError| ViewError::Corrupt(e.reason);
        let Some((id, style, at)) = self.last else {
            return Ok(None);
        };
        Ok(Some(SessionRow {
            session_key: SessionKey::parse(&self.session_key).map_err(corrupt)?,
            last_upload_id: UploadId(id),
            last_style: Style::parse(&style).map_err(corrupt)?,
            last_received_at: time(at),
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

/// The view's prepared statements.
#[derive(Debug)]
pub(super) struct Statements {
    card_patch: Stmt,
    upload_patch: Stmt,
    cards: Stmt,
    upload: Stmt,
    session_upsert: Stmt,
    sessions: Stmt,
    sessions_before: Stmt,
}

impl Statements {
    pub(super) async fn prepare(db: &Db) -> Result<Self, ViewError> {
        let card_patch = format!(
            "UPDATE {{ks}}.cards USING TIMESTAMP ? {} WHERE session_key = ? AND slot = ?",
            patch_set_clause(&["upload_id"])
        );
        let upload_patch = format!(
            "UPDATE {{ks}}.uploads USING TIMESTAMP ? {} WHERE upload_id = ?",
            patch_set_clause(&["session_key", "slot"])
        );
        let cards = format!("SELECT {CARD_COLUMNS} FROM {{ks}}.cards WHERE session_key = ?");
        let upload = format!("SELECT {CARD_COLUMNS} FROM {{ks}}.uploads WHERE upload_id = ?");
        let [card_patch, upload_patch, cards, upload] = db
            .prepare_all([&card_patch, &upload_patch, &cards, &upload].map(String::as_str))
            .await?;
        let [session_upsert, sessions, sessions_before] = db
            .prepare_all([
                "UPDATE {ks}.sessions_by_owner USING TIMESTAMP ? SET last = ? \
                 WHERE owner_id = ? AND minted_ms = ? AND session_key = ?",
                "SELECT session_key, last FROM {ks}.sessions_by_owner WHERE owner_id = ? LIMIT ?",
                "SELECT session_key, last FROM {ks}.sessions_by_owner WHERE owner_id = ? \
                 AND (minted_ms, session_key) < (?, ?) LIMIT ?",
            ])
            .await?;
        Ok(Self {
            card_patch,
            upload_patch,
            cards,
            upload,
            session_upsert,
            sessions,
            sessions_before,
        })
    }
}

impl CqlStore {
    fn cards_st(&self) -> Result<&Statements, ViewError> {
        Ok(&self.st()?.cards)
    }
}

#[async_trait]
impl CardsStore for CqlStore {
    async fn apply_patches(
        &self,
        cards: &[&Patch],
        uploads: &[&Patch],
        sessions: &[&Patch],
    ) -> Result<(), ViewError> {
        let st = self.cards_st()?;
        let mut writes: Vec<(&Stmt, Vec<PatchValue>)> = Vec::new();
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
        for p in sessions {
            let Some((owner, row)) = SessionRow::of(p) else {
                continue;
            };
            writes.push((
                &st.session_upsert,
                vec![
                    set(CqlValue::BigInt(p.ts)),
                    set(CqlValue::Tuple(vec![
                        Some(CqlValue::Uuid(row.last_upload_id.0)),
                        Some(CqlValue::Text(row.last_style.to_string())),
                        Some(CqlValue::BigInt(us(row.last_received_at))),
                    ])),
                    set(CqlValue::Text(owner.to_string())),
                    set(CqlValue::BigInt(p.session_key.minted_ms())),
                    set(CqlValue::Text(p.session_key.to_string())),
                ],
            ));
        }
        let runs: Vec<_> = writes
            .into_iter()
            .map(|(stmt, v)| async move { self.db.run(stmt, v).await.map(|_| ()) })
            .collect();
        futures::stream::iter(runs)
            .buffer_unordered(FANOUT)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    async fn cards(&self, session: &SessionKey) -> Result<Vec<Card>, ViewError> {
        let res = self
            .db
            .run(&self.cards_st()?.cards, (session.to_string(),))
            .await?;
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
        let res = self.db.run(&self.cards_st()?.upload, (id.0,)).await?;
        let rows = res.into_rows_result().map_err(rows_err)?;
        match rows.maybe_first_row::<CardRow>().map_err(rows_err)? {
            Some(r) => r.into_card(),
            None => Ok(None),
        }
    }

    async fn sessions_of(
        &self,
        owner: &UserId,
        before: Option<&SessionKey>,
        limit: usize,
    ) -> Result<Vec<SessionRow>, ViewError> {
        let st = self.cards_st()?;
        let limit = limit.clamp(1, 1000) as i32;
        let res = match before {
            Some(k) => {
                self.db
                    .run(
                        &st.sessions_before,
                        (owner.as_str(), k.minted_ms(), k.as_str(), limit),
                    )
                    .await?
            }
            None => self.db.run(&st.sessions, (owner.as_str(), limit)).await?,
        };
        let rows = res.into_rows_result().map_err(rows_err)?;
        let mut out = Vec::new();
        for r in rows.rows::<SessionDbRow>().map_err(rows_err)? {
            if let Some(row) = r.map_err(rows_err)?.into_row()? {
                out.push(row);
            }
        }
        Ok(out)
    }
}
