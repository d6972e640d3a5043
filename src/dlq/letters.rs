//! What the DLQ topic holds, typed: each record is either a dead letter or a
//! replay marker (appended by `atelier dlq replay` after it re-published a
//! dead letter). Filters, list pages with their cursor, and the copy a replay
//! publishes. Pure: records in, values out; the I/O is in `read` and
//! `replay`.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;

use chrono::{DateTime, Utc};

use super::header;
use crate::bus::Record;
use crate::event::wire;

/// A record's place in the DLQ topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pos {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
}

impl Pos {
    /// Parses `PARTITION/OFFSET`.
    pub fn parse(s: &str) -> Option<Pos> {
        let (p, o) = s.split_once('/')?;
        let pos = Pos {
            partition: p.trim().parse().ok()?,
            offset: o.trim().parse().ok()?,
        };
        (pos.partition >= 0 && pos.offset >= 0).then_some(pos)
    }
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.partition, self.offset)
    }
}

/// A record's place in any topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Place {
    /// Full topic name.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
}

impl Place {
    /// Parses `TOPIC/PARTITION/OFFSET` (topic names cannot hold a `/`).
    pub fn parse(s: &str) -> Option<Place> {
        let mut it = s.rsplitn(3, '/');
        let offset = it.next()?.parse().ok()?;
        let partition = it.next()?.parse().ok()?;
        let topic = it.next().filter(|t| !t.is_empty())?;
        Some(Place {
            topic: topic.to_owned(),
            partition,
            offset,
        })
    }
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.topic, self.partition, self.offset)
    }
}

/// Where a dead letter was re-published, by whom, when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replayed {
    /// The copy's place in the source topic.
    pub to: Place,
    /// When the marker was appended.
    pub time: Option<DateTime<Utc>>,
    /// The admin who replayed it.
    pub by: Option<String>,
}

impl fmt::Display for Replayed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to)?;
        if let Some(t) = self.time {
            write!(f, " at {}", t.to_rfc3339())?;
        }
        if let Some(by) = &self.by {
            write!(f, " by {by}")?;
        }
        Ok(())
    }
}

/// A record that could not be processed, as the DLQ holds it.
#[derive(Clone, Debug)]
pub struct DeadLetter {
    /// Its place in the DLQ.
    pub pos: Pos,
    /// The DLQ record's timestamp.
    pub time: Option<DateTime<Utc>>,
    /// The stage that refused it (`dlq_stage`).
    pub stage: String,
    /// Why (`dlq_error`).
    pub error: String,
    /// Where it came from; `None` when its `dlq_source_*` headers are
    /// missing or malformed (it was not appended by atelier).
    pub source: Option<Place>,
    /// Attempts made before giving up (`dlq_attempts`).
    pub attempts: Option<u32>,
    /// The latest replay, when the scan saw its marker.
    pub replayed: Option<Replayed>,
    /// The original key, headers (with the `dlq_*` ones) and bytes.
    pub record: Record,
}

impl DeadLetter {
    fn text_header(&self, name: &str) -> Option<&str> {
        self.record
            .header(name)
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The CloudEvents type (`ce_type`), when present.
    pub fn event_type(&self) -> Option<&str> {
        self.text_header(wire::header::TYPE)
    }

    /// The CloudEvents id (`ce_id`), when present.
    pub fn event_id(&self) -> Option<&str> {
        self.text_header(wire::header::ID)
    }
}

/// A replay marker: the dead letter at `of` was re-published.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Marker {
    /// The marker's own place.
    pub pos: Pos,
    /// The dead letter it is about (in the same partition).
    pub of: Pos,
    /// Where the copy went.
    pub replayed: Replayed,
}

/// One DLQ record, classified.
#[derive(Clone, Debug)]
pub enum Entry {
    /// A dead letter.
    Letter(Box<DeadLetter>),
    /// A replay marker.
    Marker(Marker),
    /// A marker of another DLQ topic, or one whose headers are malformed:
    /// neither listed nor counted as a replay.
    Ignored(Pos),
}

fn text(rec: &Record, name: &str) -> Option<String> {
    rec.header(name)
        .and_then(|v| std::str::from_utf8(v).ok())
        .map(str::to_owned)
}

fn number<T: std::str::FromStr>(rec: &Record, name: &str) -> Option<T> {
    text(rec, name)?.trim().parse().ok()
}

/// Classifies the record at `pos` of the DLQ topic `dlq_topic`.
pub fn classify(dlq_topic: &str, pos: Pos, time: Option<DateTime<Utc>>, record: Record) -> Entry {
    if record.header(header::MARKER).is_some() {
        let of = text(&record, header::REPLAY_OF).and_then(|s| Place::parse(&s));
        let to = text(&record, header::REPLAYED_TO).and_then(|s| Place::parse(&s));
        return match (of, to) {
            (Some(of), Some(to)) if of.topic == dlq_topic => Entry::Marker(Marker {
                pos,
                of: Pos {
                    partition: of.partition,
                    offset: of.offset,
                },
                replayed: Replayed {
                    to,
                    time,
                    by: text(&record, header::REPLAYED_BY),
                },
            }),
            _ => Entry::Ignored(pos),
        };
    }
    let source = match (
        text(&record, header::TOPIC),
        number(&record, header::PARTITION),
        number(&record, header::OFFSET),
    ) {
        (Some(topic), Some(partition), Some(offset)) => Some(Place {
            topic,
            partition,
            offset,
        }),
        _ => None,
    };
    Entry::Letter(Box::new(DeadLetter {
        pos,
        time,
        stage: text(&record, header::STAGE).unwrap_or_default(),
        error: text(&record, header::ERROR).unwrap_or_default(),
        source,
        attempts: number(&record, header::ATTEMPTS),
        replayed: None,
        record,
    }))
}

/// Which dead letters to list or replay; empty fields match everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// Exactly this stage.
    pub stage: Option<String>,
    /// From this source topic: its full name, or its name without the
    /// namespace.
    pub topic: Option<String>,
    /// The error contains this text.
    pub error: Option<String>,
}

impl Filter {
    /// Whether nothing is asked for.
    pub fn is_empty(&self) -> bool {
        self.stage.is_none() && self.topic.is_none() && self.error.is_none()
    }

    /// Whether `l` matches, with topic names under `namespace`.
    pub fn matches(&self, l: &DeadLetter, namespace: &str) -> bool {
        let stage = self.stage.as_ref().is_none_or(|s| *s == l.stage);
        let topic = self.topic.as_ref().is_none_or(|t| {
            l.source.as_ref().is_some_and(|s| {
                s.topic == *t
                    || s.topic
                        .strip_prefix(namespace)
                        .is_some_and(|base| base == t)
            })
        });
        let error = self.error.as_ref().is_none_or(|e| l.error.contains(e));
        stage && topic && error
    }
}

/// Where a list page starts: per partition, the first offset not yet
/// listed (partitions absent start at their beginning).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cursor(pub BTreeMap<i32, i64>);

impl Cursor {
    /// Parses what [`Cursor`]'s `Display` writes: `0:12,2:5` (a partition
    /// named twice takes its last offset).
    pub fn parse(s: &str) -> Option<Cursor> {
        let mut m = BTreeMap::new();
        for part in s.split(',').filter(|p| !p.is_empty()) {
            let (p, o) = part.split_once(':')?;
            let (p, o): (i32, i64) = (p.parse().ok()?, o.parse().ok()?);
            if p < 0 || o < 0 {
                return None;
            }
            m.insert(p, o);
        }
        Some(Cursor(m))
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (p, o)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{p}:{o}")?;
        }
        Ok(())
    }
}

/// One page of the list, oldest first.
#[derive(Debug, Default)]
pub struct Page {
    /// The dead letters.
    pub letters: Vec<DeadLetter>,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<Cursor>,
}

/// Builds a page from a scan: keeps the first `limit` matching dead letters
/// of each partition (no more can make the page), marks those a later
/// marker says were replayed, then merges the partitions oldest first.
#[derive(Debug)]
pub struct PageBuilder {
    filter: Filter,
    namespace: String,
    limit: usize,
    runs: BTreeMap<i32, VecDeque<DeadLetter>>,
    /// A partition had more matches than `limit`.
    more: bool,
}

impl PageBuilder {
    /// A builder of a page of at most `limit` (at least 1) letters.
    pub fn new(filter: Filter, namespace: &str, limit: usize) -> Self {
        Self {
            filter,
            namespace: namespace.to_owned(),
            limit: limit.max(1),
            runs: BTreeMap::new(),
            more: false,
        }
    }

    /// Takes the next entry of a partition (entries of one partition come
    /// in offset order).
    pub fn push(&mut self, e: Entry) {
        match e {
            Entry::Letter(l) => {
                if !self.filter.matches(&l, &self.namespace) {
                    return;
                }
                let run = self.runs.entry(l.pos.partition).or_default();
                if run.len() < self.limit {
                    run.push_back(*l);
                } else {
                    self.more = true;
                }
            }
            Entry::Marker(m) => mark(&mut self.runs, &m),
            Entry::Ignored(_) => {}
        }
    }

    /// The page; `start` is where the scan started (the request's cursor).
    pub fn finish(mut self, start: &Cursor) -> Page {
        let mut letters = Vec::new();
        while letters.len() < self.limit {
            // The oldest head; ties by partition so the order is stable.
            let next = self
                .runs
                .iter()
                .filter_map(|(p, run)| run.front().map(|l| (l.time, *p)))
                .min();
            let Some((_, p)) = next else { break };
            if let Some(l) = self.runs.get_mut(&p).and_then(VecDeque::pop_front) {
                letters.push(l);
            }
        }
        let left = self.more || self.runs.values().any(|r| !r.is_empty());
        let next = left.then(|| {
            let mut c = start.clone();
            for l in &letters {
                c.0.insert(l.pos.partition, l.pos.offset + 1);
            }
            c
        });
        Page { letters, next }
    }
}

/// Records the marker on its letter, when that letter is held.
fn mark(runs: &mut BTreeMap<i32, VecDeque<DeadLetter>>, m: &Marker) {
    if let Some(run) = runs.get_mut(&m.of.partition)
        && let Ok(i) = run.binary_search_by_key(&m.of.offset, |l| l.pos.offset)
    {
        run[i].replayed = Some(m.replayed.clone());
    }
}

/// Changes to a dead letter before it is re-published.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Edits {
    /// A corrected body.
    pub payload: Option<Vec<u8>>,
    /// Headers to set (`Some`) or remove (`None`).
    pub headers: BTreeMap<String, Option<Vec<u8>>>,
}

impl Edits {
    /// Whether nothing changes.
    pub fn is_empty(&self) -> bool {
        self.payload.is_none() && self.headers.is_empty()
    }
}

/// What a replay publishes to the source topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Copy {
    /// The dead letter it re-publishes.
    pub of: Pos,
    /// Full source topic name.
    pub topic: String,
    /// The partition, when the key does not decide it (no key: the source
    /// partition, so the record stays where it was).
    pub partition: Option<i32>,
    /// The original key.
    pub key: Option<Vec<u8>>,
    /// Headers, in order.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Body.
    pub payload: Option<Vec<u8>>,
}

/// Why a dead letter cannot be replayed as asked.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Unreplayable {
    /// Its source headers are missing: nowhere to send it.
    #[error("dead letter {0} has no dlq_source_* headers: its source is unknown")]
    NoSource(Pos),
    /// Its source topic is not one of this deployment's topics.
    #[error("dead letter {0} came from {1}, which is not a topic of this deployment")]
    ForeignTopic(Pos, String),
    /// An edit names a header the replay itself owns.
    #[error("header {0:?} cannot be set: dlq_* headers are the DLQ's own")]
    ReservedHeader(String),
    /// An edit names an empty header.
    #[error("a header name cannot be empty")]
    EmptyHeader,
}

/// The copy of `l` a replay publishes: the original key and headers
/// without `dlq_*`, `edits` applied, plus `dlq_replay_of`. `topics`: the
/// deployment's full topic names a copy may go to.
pub fn copy_of(
    l: &DeadLetter,
    dlq_topic: &str,
    topics: &[String],
    edits: &Edits,
) -> Result<Copy, Unreplayable> {
    let source = l.source.as_ref().ok_or(Unreplayable::NoSource(l.pos))?;
    if !topics.contains(&source.topic) {
        return Err(Unreplayable::ForeignTopic(l.pos, source.topic.clone()));
    }
    let mut headers: Vec<(String, Vec<u8>)> = l
        .record
        .header_pairs()
        .filter(|(k, _)| !k.starts_with("dlq_"))
        .map(|(k, v)| (k.to_owned(), v.to_vec()))
        .collect();
    for (name, value) in &edits.headers {
        if name.is_empty() {
            return Err(Unreplayable::EmptyHeader);
        }
        if name.starts_with("dlq_") {
            return Err(Unreplayable::ReservedHeader(name.clone()));
        }
        match headers.iter().position(|(k, _)| k == name) {
            Some(first) => {
                // Header order is kept: the first occurrence takes the new
                // value in place, repeats go (only later ones are removed,
                // so `first` still points at it).
                let mut i = 0;
                headers.retain(|(k, _)| {
                    let keep = k != name || i == first;
                    i += 1;
                    keep
                });
                match value {
                    Some(v) => headers[first].1 = v.clone(),
                    None => {
                        headers.remove(first);
                    }
                }
            }
            None => {
                if let Some(v) = value {
                    headers.push((name.clone(), v.clone()));
                }
            }
        }
    }
    headers.push((
        header::REPLAY_OF.to_owned(),
        Place {
            topic: dlq_topic.to_owned(),
            partition: l.pos.partition,
            offset: l.pos.offset,
        }
        .to_string()
        .into_bytes(),
    ));
    Ok(Copy {
        of: l.pos,
        topic: source.topic.clone(),
        partition: l.record.key().is_none().then_some(source.partition),
        key: l.record.key().map(<[u8]>::to_vec),
        headers,
        payload: edits
            .payload
            .clone()
            .or_else(|| l.record.payload().map(<[u8]>::to_vec)),
    })
}

/// The headers of the marker saying the dead letter at `of` went to `to`.
pub fn marker_headers(
    dlq_topic: &str,
    of: Pos,
    to: &Place,
    by: &str,
    edited: bool,
) -> Vec<(String, Vec<u8>)> {
    let of = Place {
        topic: dlq_topic.to_owned(),
        partition: of.partition,
        offset: of.offset,
    };
    let mut hs = vec![
        (header::MARKER.to_owned(), b"replayed".to_vec()),
        (header::REPLAY_OF.to_owned(), of.to_string().into_bytes()),
        (header::REPLAYED_TO.to_owned(), to.to_string().into_bytes()),
        (header::REPLAYED_BY.to_owned(), by.as_bytes().to_vec()),
    ];
    if edited {
        hs.push((header::REPLAY_EDITED.to_owned(), b"true".to_vec()));
    }
    hs
}

#[cfg(test)]
mod tests {
    use super::*;

    const DLQ: &str = "ns.atelier.dlq.v1";

    fn letter(p: i32, o: i64, stage: &str, error: &str) -> Record {
        let (po, oo) = (p.to_string(), (o * 10).to_string());
        Record::new(
            o,
            Some(b"k1"),
            [
                ("ce_type", b"VoteCast".as_slice()),
                ("dlq_stage", stage.as_bytes()),
                ("dlq_error", error.as_bytes()),
                ("dlq_source_topic", b"ns.atelier.polls.v1".as_slice()),
                ("dlq_source_partition", po.as_bytes()),
                ("dlq_source_offset", oo.as_bytes()),
                ("dlq_attempts", b"1".as_slice()),
            ],
            Some(b"{broken"),
        )
    }

    fn at(secs: i64) -> Option<DateTime<Utc>> {
        DateTime::from_timestamp(secs, 0)
    }

    fn entry(p: i32, o: i64, secs: i64, stage: &str, error: &str) -> Entry {
        classify(
            DLQ,
            Pos {
                partition: p,
                offset: o,
            },
            at(secs),
            letter(p, o, stage, error),
        )
    }

    fn marker(p: i32, o: i64, of: i64, to: &str) -> Entry {
        let of = format!("{DLQ}/{p}/{of}");
        classify(
            DLQ,
            Pos {
                partition: p,
                offset: o,
            },
            at(1000),
            Record::new(
                o,
                Some(b"k1"),
                [
                    ("dlq_marker", b"replayed".as_slice()),
                    ("dlq_replay_of", of.as_bytes()),
                    ("dlq_replayed_to", to.as_bytes()),
                    ("dlq_replayed_by", b"admin".as_slice()),
                ],
                None,
            ),
        )
    }

    fn dead(e: Entry) -> DeadLetter {
        match e {
            Entry::Letter(l) => *l,
            other => panic!("not a letter: {other:?}"),
        }
    }

    #[test]
    fn letters_and_markers_are_told_apart() {
        let l = dead(entry(1, 4, 10, "project.polls", "body: EOF"));
        assert_eq!(l.stage, "project.polls");
        assert_eq!(l.error, "body: EOF");
        assert_eq!(
            l.source,
            Some(Place {
                topic: "ns.atelier.polls.v1".into(),
                partition: 1,
                offset: 40
            })
        );
        assert_eq!((l.attempts, l.event_type()), (Some(1), Some("VoteCast")));
        assert_eq!(l.event_id(), None);
        match marker(1, 9, 4, "ns.atelier.polls.v1/1/77") {
            Entry::Marker(m) => {
                assert_eq!(
                    m.of,
                    Pos {
                        partition: 1,
                        offset: 4
                    }
                );
                assert_eq!(m.replayed.to.offset, 77);
                assert_eq!(m.replayed.by.as_deref(), Some("admin"));
            }
            other => panic!("{other:?}"),
        }
        // A marker naming another DLQ, or malformed, is neither.
        let other = Record::new(
            3,
            None,
            [
                ("dlq_marker", b"replayed".as_slice()),
                ("dlq_replay_of", b"other.dlq/1/4".as_slice()),
                ("dlq_replayed_to", b"x/1/2".as_slice()),
            ],
            None,
        );
        let pos = Pos {
            partition: 1,
            offset: 3,
        };
        assert!(matches!(classify(DLQ, pos, None, other), Entry::Ignored(_)));
        let bare = dead(classify(DLQ, pos, None, Record::new(3, None, [], None)));
        assert_eq!((bare.source, bare.attempts), (None, None));
    }

    #[test]
    fn filters_match_stage_exactly_topic_by_either_name_and_error_by_substring() {
        let l = dead(entry(0, 0, 1, "project.polls", "body: expected value"));
        let f = |stage: Option<&str>, topic: Option<&str>, error: Option<&str>| Filter {
            stage: stage.map(Into::into),
            topic: topic.map(Into::into),
            error: error.map(Into::into),
        };
        assert!(Filter::default().matches(&l, "ns."));
        assert!(f(Some("project.polls"), None, None).matches(&l, "ns."));
        assert!(!f(Some("project"), None, None).matches(&l, "ns."));
        assert!(f(None, Some("ns.atelier.polls.v1"), None).matches(&l, "ns."));
        assert!(f(None, Some("atelier.polls.v1"), None).matches(&l, "ns."));
        assert!(!f(None, Some("atelier.feed.v1"), None).matches(&l, "ns."));
        assert!(f(None, None, Some("expected")).matches(&l, "ns."));
        assert!(!f(Some("project.polls"), None, Some("missing")).matches(&l, "ns."));
    }

    #[test]
    fn positions_places_and_cursors_round_trip() {
        let p = Pos::parse("2/17").unwrap();
        assert_eq!(p.to_string(), "2/17");
        for bad in ["2", "2/", "/1", "-1/3", "1/-3", "a/b", "1/2/3"] {
            assert_eq!(Pos::parse(bad), None, "{bad}");
        }
        let pl = Place::parse("ns.atelier.polls.v1/3/9").unwrap();
        assert_eq!(pl.to_string(), "ns.atelier.polls.v1/3/9");
        assert_eq!(Place::parse("/3/9"), None);
        let c = Cursor(BTreeMap::from([(0, 12), (2, 5)]));
        assert_eq!(Cursor::parse(&c.to_string()), Some(c));
        assert_eq!(Cursor::parse(""), Some(Cursor::default()));
        for bad in ["0", "0:x", "-1:0", "0:1;1:2"] {
            assert_eq!(Cursor::parse(bad), None, "{bad}");
        }
        // What the API's documented cursor pattern admits parses: a
        // partition named twice takes its last offset.
        assert_eq!(
            Cursor::parse("0:1,0:2"),
            Some(Cursor(BTreeMap::from([(0, 2)])))
        );
    }

    #[test]
    fn pages_merge_partitions_oldest_first_and_resume_where_they_stopped() {
        // Partition 0 at t=1,4,5; partition 1 at t=2,3; a marker for 1/1.
        let feed = |b: &mut PageBuilder| {
            for e in [
                entry(0, 0, 1, "s", "e"),
                entry(0, 1, 4, "s", "e"),
                entry(0, 2, 5, "s", "e"),
                entry(1, 0, 2, "s", "e"),
                entry(1, 1, 3, "s", "e"),
                marker(1, 2, 1, "ns.atelier.polls.v1/0/99"),
            ] {
                b.push(e);
            }
        };
        let mut b = PageBuilder::new(Filter::default(), "ns.", 3);
        feed(&mut b);
        let page = b.finish(&Cursor::default());
        let got: Vec<String> = page.letters.iter().map(|l| l.pos.to_string()).collect();
        assert_eq!(got, ["0/0", "1/0", "1/1"]);
        assert!(page.letters[2].replayed.is_some());
        assert!(page.letters[0].replayed.is_none());
        let next = page.next.expect("more to come");
        assert_eq!(next, Cursor(BTreeMap::from([(0, 1), (1, 2)])));

        // The next page: the scan resumes at the cursor.
        let mut b = PageBuilder::new(Filter::default(), "ns.", 3);
        for e in [entry(0, 1, 4, "s", "e"), entry(0, 2, 5, "s", "e")] {
            b.push(e);
        }
        let page = b.finish(&next);
        let got: Vec<String> = page.letters.iter().map(|l| l.pos.to_string()).collect();
        assert_eq!(got, ["0/1", "0/2"]);
        assert_eq!(page.next, None);

        // A partition with more matches than the page holds says so.
        let mut b = PageBuilder::new(Filter::default(), "ns.", 2);
        feed(&mut b);
        let page = b.finish(&Cursor::default());
        assert_eq!(page.letters.len(), 2);
        assert!(page.next.is_some());
        // Filtered out letters never make the page.
        let mut b = PageBuilder::new(
            Filter {
                error: Some("nope".into()),
                ..Filter::default()
            },
            "ns.",
            2,
        );
        feed(&mut b);
        let page = b.finish(&Cursor::default());
        assert!(page.letters.is_empty() && page.next.is_none());
    }

    #[test]
    fn a_copy_keeps_key_and_headers_drops_dlq_headers_and_applies_edits() {
        let l = dead(entry(1, 4, 10, "project.polls", "body: EOF"));
        let topics = vec!["ns.atelier.polls.v1".to_owned()];
        let c = copy_of(&l, DLQ, &topics, &Edits::default()).unwrap();
        assert_eq!(c.topic, "ns.atelier.polls.v1");
        assert_eq!(c.key.as_deref(), Some(b"k1".as_slice()));
        assert_eq!(c.partition, None, "the key decides the partition");
        assert_eq!(c.payload.as_deref(), Some(b"{broken".as_slice()));
        let names: Vec<&str> = c.headers.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["ce_type", "dlq_replay_of"]);
        assert_eq!(c.headers[1].1, format!("{DLQ}/1/4").into_bytes());

        let edits = Edits {
            payload: Some(b"{}".to_vec()),
            headers: BTreeMap::from([
                ("ce_type".to_owned(), Some(b"VoteRetracted".to_vec())),
                ("x_new".to_owned(), Some(b"1".to_vec())),
                ("x_absent".to_owned(), None),
            ]),
        };
        let c = copy_of(&l, DLQ, &topics, &edits).unwrap();
        assert_eq!(c.payload.as_deref(), Some(b"{}".as_slice()));
        assert_eq!(
            c.headers,
            vec![
                ("ce_type".to_owned(), b"VoteRetracted".to_vec()),
                ("x_new".to_owned(), b"1".to_vec()),
                (
                    "dlq_replay_of".to_owned(),
                    format!("{DLQ}/1/4").into_bytes()
                ),
            ]
        );
        let drop = Edits {
            headers: BTreeMap::from([("ce_type".to_owned(), None)]),
            ..Edits::default()
        };
        let c = copy_of(&l, DLQ, &topics, &drop).unwrap();
        assert!(c.headers.iter().all(|(k, _)| k != "ce_type"));

        let reserved = Edits {
            headers: BTreeMap::from([("dlq_stage".to_owned(), Some(b"x".to_vec()))]),
            ..Edits::default()
        };
        assert!(matches!(
            copy_of(&l, DLQ, &topics, &reserved),
            Err(Unreplayable::ReservedHeader(_))
        ));
        assert!(matches!(
            copy_of(&l, DLQ, &["other".to_owned()], &Edits::default()),
            Err(Unreplayable::ForeignTopic(..))
        ));
    }

    #[test]
    fn repeated_headers_collapse_to_the_edited_value_in_place() {
        let rec = Record::new(
            0,
            None,
            [
                ("a", b"1".as_slice()),
                ("b", b"2".as_slice()),
                ("a", b"3".as_slice()),
                ("dlq_source_topic", b"t".as_slice()),
                ("dlq_source_partition", b"4".as_slice()),
                ("dlq_source_offset", b"5".as_slice()),
            ],
            None,
        );
        let pos = Pos {
            partition: 0,
            offset: 0,
        };
        let l = dead(classify(DLQ, pos, None, rec));
        let edits = Edits {
            headers: BTreeMap::from([("a".to_owned(), Some(b"9".to_vec()))]),
            ..Edits::default()
        };
        let c = copy_of(&l, DLQ, &["t".to_owned()], &edits).unwrap();
        assert_eq!(c.headers[0], ("a".to_owned(), b"9".to_vec()));
        assert_eq!(c.headers[1], ("b".to_owned(), b"2".to_vec()));
        assert_eq!(c.headers.len(), 3);
        assert_eq!(c.partition, Some(4), "no key: the source partition");
    }

    #[test]
    fn markers_name_the_letter_and_the_copy() {
        let to = Place {
            topic: "ns.atelier.polls.v1".into(),
            partition: 3,
            offset: 8,
        };
        let of = Pos {
            partition: 1,
            offset: 4,
        };
        let rec = Record::new(
            9,
            Some(b"k1"),
            marker_headers(DLQ, of, &to, "admin", true)
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_slice())),
            None,
        );
        match classify(
            DLQ,
            Pos {
                partition: 1,
                offset: 9,
            },
            None,
            rec,
        ) {
            Entry::Marker(m) => {
                assert_eq!(m.of, of);
                assert_eq!(m.replayed.to, to);
            }
            other => panic!("{other:?}"),
        }
    }
}
