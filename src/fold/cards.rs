//! The cards fold: a session's three slots and each upload's job status,
//! merged from two streams (uploads and completions) without coordination.
//!
//! Offsets of two topics are not comparable, so the write timestamp comes
//! from the merge order instead: the upload's own order (its UUID v7 time
//! and sub-millisecond bits) then the status rank. Status only moves
//! forward, received < started < failed < completed, and a newer upload in a
//! slot outranks everything about an older one. Every event becomes one
//! patch of the columns it owns, written with that timestamp; per-cell
//! last-write-wins then converges to the same card whatever the order of
//! arrival, duplicates included.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::event::{
    Event, EventData, ModelVersion, SessionKey, Style, StyleTransferCompleted, StyleTransferFailed,
    StyleTransferStarted, Timings, UploadId, UserId,
};

/// Where an upload stands.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Stored, waiting for a worker.
    Received,
    /// A worker is stylizing it.
    Started,
    /// It could not be stylized.
    Failed,
    /// The output is stored.
    Completed,
}

impl Status {
    /// The merge rank (low three bits of the write timestamp).
    pub fn rank(self) -> i64 {
        match self {
            Status::Received => 1,
            Status::Started => 2,
            Status::Failed => 3,
            Status::Completed => 4,
        }
    }

    /// Stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Received => "received",
            Status::Started => "started",
            Status::Failed => "failed",
            Status::Completed => "completed",
        }
    }
}

/// The order of an upload among others in the same slot: its UUID v7
/// millisecond time and the 12 bits after the version nibble. Ids that are
/// not v7 order as 0 (the status rank alone then decides). Two uploads into
/// one slot of one session within the same millisecond may tie; each cell
/// then resolves as CQL does (by value), which a person cannot cause.
pub fn upload_order(id: UploadId) -> i64 {
    let b = id.0.as_bytes();
    if id.0.get_version_num() != 7 {
        return 0;
    }
    let ms = u64::from_be_bytes([0, 0, b[0], b[1], b[2], b[3], b[4], b[5]]);
    let sub = (u64::from(b[6] & 0x0f) << 8) | u64::from(b[7]);
    ((ms << 12) | sub) as i64
}

/// The write timestamp of a patch: upload order, then status rank.
pub fn merge_timestamp(id: UploadId, status: Status) -> i64 {
    (upload_order(id) << 3) | status.rank()
}

/// The columns of a card (and of an upload's status row). `None` in a
/// patch means "not this patch's column"; [`Patch::clears`] lists the
/// columns a patch resets to empty.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Card {
    /// The upload shown in this slot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload_id: Option<UploadId>,
    /// Its slot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<u8>,
    /// Its session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_key: Option<SessionKey>,
    /// Requested style.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub style: Option<Style>,
    /// Where the input lies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_key: Option<String>,
    /// Input media type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// Input width.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    /// Input height.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    /// Input size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// When the upload was accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received_at: Option<DateTime<Utc>>,
    /// Where the job stands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    /// When a worker picked it up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    /// When it completed or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    /// Model version that ran (or runs) it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_version: Option<ModelVersion>,
    /// Where the output lies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_key: Option<String>,
    /// Stage timings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timings: Option<Timings>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Whether retrying may help.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retriable: Option<bool>,
}

/// Columns a received upload resets (a new upload in a slot starts clean).
pub const RESET_ON_RECEIVE: &[&str] = &[
    "started_at",
    "finished_at",
    "model_version",
    "output_key",
    "timings",
    "error",
    "retriable",
];

/// What one event writes: the same patch goes to the session's card and to
/// the upload's status row.
#[derive(Clone, Debug, PartialEq)]
pub struct Patch {
    /// Card partition.
    pub session_key: SessionKey,
    /// Card row.
    pub slot: u8,
    /// Status row.
    pub upload_id: UploadId,
    /// The status this patch moves to.
    pub status: Status,
    /// Write timestamp ([`merge_timestamp`]).
    pub ts: i64,
    /// The columns it sets.
    pub set: Card,
    /// Who uploaded (received patches only): the session's owner, whose
    /// list of sessions the patch also writes.
    pub owner: Option<UserId>,
}

impl Patch {
    /// Columns this patch sets to empty.
    pub fn clears(&self) -> &'static [&'static str] {
        match self.status {
            Status::Received => RESET_ON_RECEIVE,
            _ => &[],
        }
    }
}

/// The card and job an uploads or completions event is about.
pub fn target(d: &EventData) -> Option<(&SessionKey, UploadId)> {
    match d {
        EventData::UploadReceived(e) => Some((&e.session_key, e.upload_id)),
        EventData::StyleTransferStarted(StyleTransferStarted { upload, .. })
        | EventData::StyleTransferCompleted(StyleTransferCompleted { upload, .. })
        | EventData::StyleTransferFailed(StyleTransferFailed { upload, .. }) => {
            Some((&upload.session_key, upload.upload_id))
        }
        _ => None,
    }
}

/// The patch of one uploads or completions event (`None` for other events).
pub fn patch(event: &Event) -> Option<Patch> {
    let (upload, status, set) = match &event.data {
        EventData::UploadReceived(e) => (
            (e.upload_id, &e.session_key, e.slot),
            Status::Received,
            Card {
                style: Some(e.style.clone()),
                input_key: Some(e.object_key.clone()),
                content_type: Some(e.content_type.clone()),
                width: Some(e.width),
                height: Some(e.height),
                bytes: Some(e.bytes),
                received_at: Some(event.time),
                ..Card::default()
            },
        ),
        EventData::StyleTransferStarted(e) => (
            (e.upload.upload_id, &e.upload.session_key, e.upload.slot),
            Status::Started,
            Card {
                started_at: Some(event.time),
                model_version: Some(e.model_version.clone()),
                ..Card::default()
            },
        ),
        EventData::StyleTransferCompleted(e) => (
            (e.upload.upload_id, &e.upload.session_key, e.upload.slot),
            Status::Completed,
            Card {
                finished_at: Some(event.time),
                model_version: Some(e.model_version.clone()),
                output_key: Some(e.output_key.clone()),
                timings: Some(e.timings.clone()),
                ..Card::default()
            },
        ),
        EventData::StyleTransferFailed(e) => (
            (e.upload.upload_id, &e.upload.session_key, e.upload.slot),
            Status::Failed,
            Card {
                finished_at: Some(event.time),
                error: Some(e.reason.clone()),
                retriable: Some(e.retriable),
                ..Card::default()
            },
        ),
        _ => return None,
    };
    let (upload_id, session_key, slot) = upload;
    // Only the owner uploads into a session (the edge checks), so the
    // uploader is the owner.
    let owner = (status == Status::Received).then(|| event.principal.id.clone());
    let mut set = set;
    set.upload_id = Some(upload_id);
    set.session_key = Some(session_key.clone());
    set.slot = Some(slot);
    set.status = Some(status);
    Some(Patch {
        session_key: session_key.clone(),
        slot,
        upload_id,
        status,
        ts: merge_timestamp(upload_id, status),
        set,
        owner,
    })
}

/// Coalesces a batch's patches by target row: per `key` (a card row and
/// status, or an upload and status) keep only the highest-timestamp patch,
/// so a batch writes each row at most once per status (usually once in
/// all), whatever its size. Order is kept stable.
pub fn coalesce<K, F>(patches: &[Patch], key: F) -> Vec<&Patch>
where
    K: std::hash::Hash + Eq,
    F: Fn(&Patch) -> K,
{
    let mut best: std::collections::HashMap<K, usize> = std::collections::HashMap::new();
    let mut out: Vec<Option<&Patch>> = Vec::with_capacity(patches.len());
    for p in patches {
        let k = key(p);
        match best.get(&k) {
            Some(&i) if out[i].is_some_and(|q| q.ts >= p.ts) => {}
            Some(&i) => {
                out[i] = None;
                best.insert(k, out.len());
                out.push(Some(p));
            }
            None => {
                best.insert(k, out.len());
                out.push(Some(p));
            }
        }
    }
    out.into_iter().flatten().collect()
}

/// The card row and status a patch writes (coalescing key for cards).
pub fn card_key(p: &Patch) -> (SessionKey, u8, Status) {
    (p.session_key.clone(), p.slot, p.status)
}

/// The owner's session row a received patch writes (coalescing key for
/// the sessions by owner; `None` for other patches).
pub fn session_of_owner(p: &Patch) -> Option<(UserId, SessionKey)> {
    p.owner.clone().map(|o| (o, p.session_key.clone()))
}

/// The upload and status a patch writes (coalescing key for job status).
pub fn upload_key(p: &Patch) -> (UploadId, Status) {
    (p.upload_id, p.status)
}

/// Applies patches to an in-memory card with last-write-wins per column:
/// the reference the stores are checked against (cell timestamps kept in
/// `stamps`).
pub fn merge(card: &mut Card, stamps: &mut std::collections::BTreeMap<String, i64>, p: &Patch) {
    let mut cur = serde_json::to_value(&*card).expect("cards serialize");
    let obj = cur.as_object_mut().expect("object");
    let set = serde_json::to_value(&p.set).expect("cards serialize");
    let mut cols: Vec<(String, serde_json::Value)> = set
        .as_object()
        .expect("object")
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    cols.extend(
        p.clears()
            .iter()
            .map(|c| ((*c).to_owned(), serde_json::Value::Null)),
    );
    for (col, v) in cols {
        let old = stamps.get(&col).copied().unwrap_or(i64::MIN);
        if p.ts > old || (p.ts == old && v.is_null()) {
            stamps.insert(col.clone(), p.ts);
            if v.is_null() {
                obj.remove(&col);
            } else {
                obj.insert(col, v);
            }
        }
    }
    *card = serde_json::from_value(cur).expect("cards deserialize");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{EventId, Principal, TransferRef, UploadReceived, UserId};
    use std::collections::BTreeMap;

    fn ev(data: EventData) -> Event {
        Event {
            id: EventId(uuid::Uuid::now_v7()),
            time: DateTime::from_timestamp_micros(1_700_000_000_000_000).unwrap(),
            principal: Principal {
                id: UserId::parse("ann").unwrap(),
                name: "Ann".into(),
                avatar_url: None,
            },
            data,
        }
    }

    fn lifecycle(upload: UploadId, slot: u8) -> Vec<Event> {
        let session = SessionKey::parse("s1").unwrap();
        let style = Style::parse("mosaic").unwrap();
        let r = TransferRef {
            upload_id: upload,
            session_key: session.clone(),
            slot,
            style: style.clone(),
        };
        let v = ModelVersion::parse("v1").unwrap();
        vec![
            ev(EventData::UploadReceived(UploadReceived {
                upload_id: upload,
                session_key: session,
                slot,
                style,
                object_key: format!("uploads/{upload}"),
                content_type: "image/png".into(),
                bytes: 10,
                width: 2,
                height: 2,
                sha256: "0".repeat(64),
            })),
            ev(EventData::StyleTransferStarted(StyleTransferStarted {
                upload: r.clone(),
                model_version: v.clone(),
            })),
            ev(EventData::StyleTransferCompleted(StyleTransferCompleted {
                upload: r,
                output_key: format!("outputs/{upload}"),
                model_version: v,
                timings: Timings {
                    queue_ms: 1,
                    decode_ms: 2,
                    infer_ms: 3,
                    encode_ms: 4,
                    batch: 0,
                },
            })),
        ]
    }

    fn fold(events: &[&Event]) -> Card {
        let mut card = Card::default();
        let mut stamps = BTreeMap::new();
        for e in events {
            merge(&mut card, &mut stamps, &patch(e).unwrap());
        }
        card
    }

    #[test]
    fn any_order_and_duplicates_converge() {
        let up = UploadId(uuid::Uuid::now_v7());
        let evs = lifecycle(up, 1);
        let inorder = fold(&evs.iter().collect::<Vec<_>>());
        assert_eq!(inorder.status, Some(Status::Completed));
        assert!(inorder.output_key.is_some() && inorder.started_at.is_some());
        let orders: [[usize; 5]; 4] = [
            [2, 1, 0, 0, 2],
            [1, 2, 0, 1, 0],
            [0, 2, 1, 2, 2],
            [2, 0, 1, 1, 0],
        ];
        for o in orders {
            let seq: Vec<&Event> = o.iter().map(|&i| &evs[i]).collect();
            assert_eq!(fold(&seq), inorder, "order {o:?}");
        }
    }

    #[test]
    fn a_newer_upload_replaces_the_slot_even_when_the_old_one_completes_late() {
        let old = UploadId(uuid::Uuid::now_v7());
        std::thread::sleep(std::time::Duration::from_millis(2));
        let new = UploadId(uuid::Uuid::now_v7());
        let a = lifecycle(old, 2);
        let b = lifecycle(new, 2);
        let card = fold(&[&a[0], &b[0], &a[1], &a[2]]);
        assert_eq!(card.upload_id, Some(new));
        assert_eq!(card.status, Some(Status::Received));
        assert_eq!(card.output_key, None, "the old output must not show");
        assert_eq!(card.model_version, None);
    }

    #[test]
    fn completed_outranks_failed_and_failed_outranks_started() {
        let up = UploadId(uuid::Uuid::now_v7());
        let evs = lifecycle(up, 3);
        let r = TransferRef {
            upload_id: up,
            session_key: SessionKey::parse("s1").unwrap(),
            slot: 3,
            style: Style::parse("mosaic").unwrap(),
        };
        let failed = ev(EventData::StyleTransferFailed(StyleTransferFailed {
            upload: r,
            reason: "corrupt".into(),
            retriable: false,
        }));
        let card = fold(&[&failed, &evs[0], &evs[1]]);
        assert_eq!(card.status, Some(Status::Failed));
        assert_eq!(card.error.as_deref(), Some("corrupt"));
        let card = fold(&[&evs[2], &failed]);
        assert_eq!(card.status, Some(Status::Completed));
    }

    #[test]
    fn coalescing_keeps_one_patch_per_card_and_status() {
        // One millisecond apart: ids minted within one millisecond order only
        // by their 12 sub-millisecond bits (see `upload_order`).
        let ups: Vec<UploadId> = (0..5)
            .map(|_| {
                std::thread::sleep(std::time::Duration::from_millis(2));
                UploadId(uuid::Uuid::now_v7())
            })
            .collect();
        let patches: Vec<Patch> = ups
            .iter()
            .map(|u| patch(&lifecycle(*u, 1)[0]).unwrap())
            .collect();
        let kept = coalesce(&patches, card_key);
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].upload_id, ups[4]);
        assert_eq!(
            coalesce(&patches, upload_key).len(),
            5,
            "every upload keeps its status"
        );
        let twice: Vec<Patch> = patches.iter().chain(&patches).cloned().collect();
        assert_eq!(coalesce(&twice, upload_key).len(), 5);
    }

    #[test]
    fn upload_order_follows_v7_time() {
        let a = UploadId(uuid::Uuid::now_v7());
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = UploadId(uuid::Uuid::now_v7());
        assert!(upload_order(a) < upload_order(b));
        assert!(merge_timestamp(a, Status::Completed) < merge_timestamp(b, Status::Received));
        assert_eq!(upload_order(UploadId(uuid::Uuid::new_v4())), 0);
    }
}
