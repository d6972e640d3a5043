//! The journal of the embedded log: what the in-process cluster of
//! `atelier up` holds, kept on disk, so that a restart or a SIGKILL can
//! rebuild the cluster as it was (the records at their offsets, and the
//! consumer groups' committed offsets).
//!
//! The format is this module's own:
//!
//! - a directory of segment files `{first entry's sequence:020}.journal`,
//!   read in name order;
//! - each segment a run of frames `[len: u32 LE][crc32 of body: u32 LE]
//!   [body: len bytes]`, each body one [`Entry`]: records appended to one
//!   partition with the offsets they got, or a group's committed offsets.
//!
//! Appends go through one writer thread that commits in groups: every entry
//! queued while a group is being written joins the next one, which costs
//! one `write` and (with [`Fsync::Always`]) one `fsync`; only then is each
//! appender answered. So an answered append is on disk, and concurrent
//! appenders share the cost of the sync.
//!
//! On open, every segment is read in order. A frame cut short, or failing
//! its checksum, at the end of the last segment is a write a crash
//! interrupted (its appender was never answered): it is cut off, and
//! appends continue after the last whole frame. Anywhere else it is
//! corruption ([`JournalError::Corrupt`]): what the journal holds is never
//! guessed at.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// One record as the log holds it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JournalRecord {
    /// Its offset in its partition.
    pub offset: i64,
    /// Its timestamp (milliseconds since the epoch).
    pub timestamp_ms: i64,
    /// Key bytes.
    pub key: Option<Vec<u8>>,
    /// Headers, in order (a value may be absent).
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    /// Body bytes.
    pub payload: Option<Vec<u8>>,
}

/// What one frame holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    /// Records appended to one partition, in offset order.
    Records {
        /// Full topic name.
        topic: String,
        /// Partition.
        partition: i32,
        /// The records.
        records: Vec<JournalRecord>,
    },
    /// A consumer group's committed offsets: per partition, the next
    /// offset to read.
    Offsets {
        /// The group.
        group: String,
        /// `(topic, partition, next offset)`.
        offsets: Vec<(String, i32, i64)>,
    },
}

/// When an append reaches the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fsync {
    /// Each group is synced before its appenders are answered: an answered
    /// append survives a crash of the machine.
    Always,
    /// Groups are written before their appenders are answered (they
    /// survive a crash of the process) and synced at most this often.
    Every(Duration),
}

/// How a journal writes.
#[derive(Clone, Copy, Debug)]
pub struct JournalOptions {
    /// When appends are synced.
    pub fsync: Fsync,
    /// A segment past this size is closed and a new one started.
    pub segment_bytes: u64,
}

impl JournalOptions {
    /// The options `cfg` asks for, or why its fsync policy is not one.
    pub fn of(cfg: &crate::config::JournalConfig) -> Result<JournalOptions, String> {
        Ok(JournalOptions {
            fsync: cfg.fsync_interval()?.map_or(Fsync::Always, Fsync::Every),
            ..JournalOptions::default()
        })
    }
}

impl Default for JournalOptions {
    fn default() -> Self {
        Self {
            fsync: Fsync::Always,
            segment_bytes: 64 * 1024 * 1024,
        }
    }
}

/// A journal failure.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The disk refused (full, read-only, failing).
    #[error("journal {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// A frame that is neither whole nor the interrupted last write.
    #[error("journal {path} is corrupt at byte {at}: {why}")]
    Corrupt {
        /// The segment.
        path: PathBuf,
        /// Where its bad frame starts.
        at: u64,
        /// What is wrong with it.
        why: String,
    },
    /// The writer is gone (the journal was closed, or a write failed
    /// before: nothing more is appended after a failed write).
    #[error("the journal is closed: {0}")]
    Closed(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Frame header: length and checksum.
const HEADER: usize = 8;
/// The largest body a frame may declare (a larger one is corruption).
const MAX_BODY: u32 = 256 * 1024 * 1024;

const TAG_RECORDS: u8 = 1;
const TAG_OFFSETS: u8 = 2;

fn put_bytes(out: &mut Vec<u8>, b: Option<&[u8]>) {
    match b {
        None => out.extend_from_slice(&(-1i32).to_le_bytes()),
        Some(b) => {
            out.extend_from_slice(&(b.len() as i32).to_le_bytes());
            out.extend_from_slice(b);
        }
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

impl Entry {
    /// The body of this entry's frame.
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Entry::Records {
                topic,
                partition,
                records,
            } => {
                out.push(TAG_RECORDS);
                put_str(out, topic);
                out.extend_from_slice(&partition.to_le_bytes());
                out.extend_from_slice(&(records.len() as u32).to_le_bytes());
                for r in records {
                    out.extend_from_slice(&r.offset.to_le_bytes());
                    out.extend_from_slice(&r.timestamp_ms.to_le_bytes());
                    put_bytes(out, r.key.as_deref());
                    put_bytes(out, r.payload.as_deref());
                    out.extend_from_slice(&(r.headers.len() as u32).to_le_bytes());
                    for (k, v) in &r.headers {
                        put_str(out, k);
                        put_bytes(out, v.as_deref());
                    }
                }
            }
            Entry::Offsets { group, offsets } => {
                out.push(TAG_OFFSETS);
                put_str(out, group);
                out.extend_from_slice(&(offsets.len() as u32).to_le_bytes());
                for (topic, partition, next) in offsets {
                    put_str(out, topic);
                    out.extend_from_slice(&partition.to_le_bytes());
                    out.extend_from_slice(&next.to_le_bytes());
                }
            }
        }
    }

    /// The partition a records frame's body is of, without decoding it
    /// (`None` for other entries).
    fn partition_of(body: &[u8]) -> Option<(&str, i32)> {
        let mut c = Cursor { b: body, at: 0 };
        if c.u8().ok()? != TAG_RECORDS {
            return None;
        }
        let n = c.u32().ok()? as usize;
        let topic = std::str::from_utf8(c.take(n).ok()?).ok()?;
        Some((topic, c.i32().ok()?))
    }

    /// The entry of a frame's body (whose checksum matched).
    fn decode(body: &[u8]) -> Result<Entry, String> {
        let mut c = Cursor { b: body, at: 0 };
        let e = match c.u8()? {
            TAG_RECORDS => {
                let topic = c.string()?;
                let partition = c.i32()?;
                let n = c.u32()?;
                let mut records = Vec::with_capacity(n.min(1 << 16) as usize);
                for _ in 0..n {
                    let offset = c.i64()?;
                    let timestamp_ms = c.i64()?;
                    let key = c.bytes()?;
                    let payload = c.bytes()?;
                    let h = c.u32()?;
                    let mut headers = Vec::with_capacity(h.min(64) as usize);
                    for _ in 0..h {
                        headers.push((c.string()?, c.bytes()?));
                    }
                    records.push(JournalRecord {
                        offset,
                        timestamp_ms,
                        key,
                        headers,
                        payload,
                    });
                }
                Entry::Records {
                    topic,
                    partition,
                    records,
                }
            }
            TAG_OFFSETS => {
                let group = c.string()?;
                let n = c.u32()?;
                let mut offsets = Vec::with_capacity(n.min(1 << 12) as usize);
                for _ in 0..n {
                    offsets.push((c.string()?, c.i32()?, c.i64()?));
                }
                Entry::Offsets { group, offsets }
            }
            t => return Err(format!("unknown entry tag {t}")),
        };
        if c.at != body.len() {
            return Err(format!("{} bytes after the entry", body.len() - c.at));
        }
        Ok(e)
    }
}

/// Reads a body, every read bounds-checked.
struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or_else(|| format!("a field runs past the entry's end at {}", self.at))?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.array::<1>()?[0])
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn i32(&mut self) -> Result<i32, String> {
        Ok(i32::from_le_bytes(self.array()?))
    }
    fn i64(&mut self) -> Result<i64, String> {
        Ok(i64::from_le_bytes(self.array()?))
    }
    fn bytes(&mut self) -> Result<Option<Vec<u8>>, String> {
        match self.i32()? {
            -1 => Ok(None),
            n if n >= 0 => Ok(Some(self.take(n as usize)?.to_vec())),
            n => Err(format!("length {n}")),
        }
    }
    fn string(&mut self) -> Result<String, String> {
        let n = self.u32()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|e| e.to_string())
    }
}

/// Appends one frame of `entry` to `buf`.
fn frame(entry: &Entry, buf: &mut Vec<u8>) {
    let start = buf.len();
    buf.extend_from_slice(&[0; HEADER]);
    entry.encode(buf);
    let body = &buf[start + HEADER..];
    let len = body.len() as u32;
    let crc = crc32fast::hash(body);
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    buf[start + 4..start + HEADER].copy_from_slice(&crc.to_le_bytes());
}

/// The segments of `dir`, in order.
fn segments(dir: &Path) -> Result<Vec<PathBuf>, JournalError> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(io(dir))? {
        let p = e.map_err(io(dir))?.path();
        if p.extension().is_some_and(|x| x == "journal") {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

fn segment_name(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.journal"))
}

/// Reads one segment's whole frames into `each`; answers where they end,
/// and what is wrong after that (`None`: nothing, the segment is whole).
fn read_segment(
    path: &Path,
    each: &mut dyn FnMut(&Path, Entry) -> Result<(), JournalError>,
) -> Result<(u64, u64, Option<String>), JournalError> {
    let mut data = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut data))
        .map_err(io(path))?;
    let mut at = 0usize;
    let mut entries = 0u64;
    while at < data.len() {
        let rest = &data[at..];
        if rest.len() < HEADER {
            return Ok((at as u64, entries, Some("a frame header cut short".into())));
        }
        let word = |i: usize| u32::from_le_bytes([rest[i], rest[i + 1], rest[i + 2], rest[i + 3]]);
        let (len, crc) = (word(0), word(4));
        if len > MAX_BODY {
            return Ok((at as u64, entries, Some(format!("a frame of {len} bytes"))));
        }
        let Some(body) = rest.get(HEADER..HEADER + len as usize) else {
            return Ok((at as u64, entries, Some("a frame cut short".into())));
        };
        if crc32fast::hash(body) != crc {
            return Ok((at as u64, entries, Some("a checksum mismatch".into())));
        }
        let entry = Entry::decode(body).map_err(|why| JournalError::Corrupt {
            path: path.to_owned(),
            at: at as u64,
            why,
        })?;
        each(path, entry)?;
        entries += 1;
        at += HEADER + len as usize;
    }
    Ok((at as u64, entries, None))
}

/// Reads the journal in `dir` while it is being written: every segment in
/// order (but those `skip` names), each whole frame of a partition `want`
/// names decoded and handed to `each`, until `each` answers `false`. A
/// frame still being written ends the read; a frame failing its checksum
/// is corruption.
pub fn scan(
    dir: &Path,
    skip: &dyn Fn(&Path) -> bool,
    want: &dyn Fn(&str, i32) -> bool,
    each: &mut dyn FnMut(Entry) -> bool,
) -> Result<(), JournalError> {
    let mut body = Vec::new();
    for path in segments(dir)? {
        if skip(&path) {
            continue;
        }
        let file = File::open(&path).map_err(io(&path))?;
        let mut r = std::io::BufReader::with_capacity(1 << 20, file);
        let mut at = 0u64;
        loop {
            let mut head = [0u8; HEADER];
            match read_full(&mut r, &mut head).map_err(io(&path))? {
                0 => break,
                n if n < HEADER => return Ok(()),
                _ => {}
            }
            let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
            let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
            if len > MAX_BODY {
                return Err(JournalError::Corrupt {
                    path,
                    at,
                    why: format!("a frame of {len} bytes"),
                });
            }
            body.resize(len as usize, 0);
            if read_full(&mut r, &mut body).map_err(io(&path))? < body.len() {
                // The writer's frame, not whole yet.
                return Ok(());
            }
            if crc32fast::hash(&body) != crc {
                return Err(JournalError::Corrupt {
                    path,
                    at,
                    why: "a checksum mismatch".into(),
                });
            }
            at += (HEADER + body.len()) as u64;
            let wanted = match Entry::partition_of(&body) {
                Some((topic, partition)) => want(topic, partition),
                None => false,
            };
            if !wanted {
                continue;
            }
            let entry = Entry::decode(&body).map_err(|why| JournalError::Corrupt {
                path: path.clone(),
                at,
                why,
            })?;
            if !each(entry) {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Reads until `buf` is full or the file ends; answers how much it read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

struct Append {
    entry: Entry,
    done: tokio::sync::oneshot::Sender<Result<(), String>>,
}

/// An open journal: appends go to its writer thread.
#[derive(Debug)]
pub struct Journal {
    tx: Option<mpsc::Sender<Append>>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl Journal {
    /// Opens the journal in `dir` (created when missing): hands every
    /// entry it holds to `each`, in order, with the segment holding it,
    /// cuts off a write a crash interrupted at its end, and starts the
    /// writer after it.
    pub fn open(
        dir: &Path,
        opts: JournalOptions,
        mut each: impl FnMut(&Path, Entry) -> Result<(), JournalError>,
    ) -> Result<Journal, JournalError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let segs = segments(dir)?;
        let mut seq = 0u64;
        let mut tail: Option<(PathBuf, u64)> = None;
        for (i, path) in segs.iter().enumerate() {
            let (end, n, bad) = read_segment(path, &mut each)?;
            seq += n;
            let last = i + 1 == segs.len();
            match bad {
                Some(why) if !last => {
                    return Err(JournalError::Corrupt {
                        path: path.clone(),
                        at: end,
                        why,
                    });
                }
                Some(why) => {
                    tracing::warn!(
                        segment = %path.display(),
                        at = end,
                        %why,
                        "the journal's last write was interrupted; cut off"
                    );
                    let f = OpenOptions::new()
                        .write(true)
                        .open(path)
                        .map_err(io(path))?;
                    f.set_len(end).map_err(io(path))?;
                    f.sync_all().map_err(io(path))?;
                }
                None => {}
            }
            if last {
                tail = Some((path.clone(), end));
            }
        }
        let (path, len) = match tail {
            Some(t) => t,
            None => (segment_name(dir, 0), 0),
        };
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io(&path))?;
        file.seek(SeekFrom::End(0)).map_err(io(&path))?;
        sync_dir(dir)?;
        let (tx, rx) = mpsc::channel();
        let w = Writer {
            dir: dir.to_owned(),
            opts,
            file,
            path,
            len,
            seq,
            synced: Instant::now(),
            dirty: false,
        };
        let writer = std::thread::Builder::new()
            .name("journal".into())
            .spawn(move || w.run(rx))
            .map_err(io(dir))?;
        Ok(Journal {
            tx: Some(tx),
            writer: Some(writer),
        })
    }

    /// Appends `entry`; answers once it is written (and, with
    /// [`Fsync::Always`], synced).
    pub async fn append(&self, entry: Entry) -> Result<(), JournalError> {
        self.submit(entry)?.await
    }

    /// Queues `entry`; the future answers once it is written (and, with
    /// [`Fsync::Always`], synced). Entries queued together join one group.
    pub fn submit(
        &self,
        entry: Entry,
    ) -> Result<impl Future<Output = Result<(), JournalError>> + Send + 'static, JournalError> {
        let (done, answer) = tokio::sync::oneshot::channel();
        self.tx
            .as_ref()
            .ok_or_else(|| JournalError::Closed("closed".into()))?
            .send(Append { entry, done })
            .map_err(|_| JournalError::Closed("the writer stopped".into()))?;
        Ok(async move {
            answer
                .await
                .map_err(|_| JournalError::Closed("the writer stopped".into()))?
                .map_err(JournalError::Closed)
        })
    }

    /// Writes what is queued, syncs, and stops the writer.
    pub fn close(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.tx.take();
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        self.stop();
    }
}

fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

struct Writer {
    dir: PathBuf,
    opts: JournalOptions,
    file: File,
    path: PathBuf,
    len: u64,
    seq: u64,
    synced: Instant,
    dirty: bool,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Append>) {
        let mut buf = Vec::with_capacity(1 << 20);
        let mut group: Vec<Append> = Vec::new();
        let mut failed: Option<String> = None;
        let idle = match self.opts.fsync {
            Fsync::Always => Duration::from_secs(3600),
            Fsync::Every(d) => d.max(Duration::from_millis(1)),
        };
        loop {
            // Wait for the next append (or, with a sync interval, for the
            // time to sync what was written).
            match rx.recv_timeout(idle) {
                Ok(a) => group.push(a),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if failed.is_none()
                        && let Err(e) = self.sync_if_due(true)
                    {
                        failed = Some(e.to_string());
                    }
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            // Everything queued meanwhile joins this group.
            while let Ok(a) = rx.try_recv() {
                group.push(a);
            }
            let result = match &failed {
                Some(why) => Err(why.clone()),
                None => self.write_group(&group, &mut buf).map_err(|e| {
                    let why = e.to_string();
                    tracing::error!(error = %why, "journal write failed; appends are refused from now on");
                    failed = Some(why.clone());
                    why
                }),
            };
            for a in group.drain(..) {
                let _ = a.done.send(result.clone());
            }
        }
        if failed.is_none() && self.dirty {
            let _ = self.file.sync_all();
        }
    }

    fn write_group(&mut self, group: &[Append], buf: &mut Vec<u8>) -> Result<(), JournalError> {
        buf.clear();
        for a in group {
            frame(&a.entry, buf);
        }
        self.file.write_all(buf).map_err(io(&self.path))?;
        self.len += buf.len() as u64;
        self.seq += group.len() as u64;
        self.dirty = true;
        self.sync_if_due(false)?;
        if self.len >= self.opts.segment_bytes {
            self.roll()?;
        }
        Ok(())
    }

    /// Syncs when the policy says so (`idle`: the interval's timer ran out).
    fn sync_if_due(&mut self, idle: bool) -> Result<(), JournalError> {
        if !self.dirty {
            return Ok(());
        }
        let due = match self.opts.fsync {
            Fsync::Always => true,
            Fsync::Every(d) => idle || self.synced.elapsed() >= d,
        };
        if due {
            self.file.sync_data().map_err(io(&self.path))?;
            self.synced = Instant::now();
            self.dirty = false;
        }
        Ok(())
    }

    /// Closes the current segment and starts the next.
    fn roll(&mut self) -> Result<(), JournalError> {
        self.file.sync_all().map_err(io(&self.path))?;
        let path = segment_name(&self.dir, self.seq);
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io(&path))?;
        sync_dir(&self.dir)?;
        self.path = path;
        self.len = 0;
        self.dirty = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(offset: i64, body: &str) -> JournalRecord {
        JournalRecord {
            offset,
            timestamp_ms: 1_700_000_000_000 + offset,
            key: (offset % 2 == 0).then(|| format!("k{offset}").into_bytes()),
            headers: vec![
                ("ce_type".into(), Some(b"vote".to_vec())),
                ("empty".into(), None),
            ],
            payload: Some(body.as_bytes().to_vec()),
        }
    }

    fn records(partition: i32, from: i64, n: i64) -> Entry {
        Entry::Records {
            topic: "ns.atelier.polls.v1".into(),
            partition,
            records: (from..from + n)
                .map(|o| rec(o, &format!("body {o}")))
                .collect(),
        }
    }

    fn read(dir: &Path, opts: JournalOptions) -> Result<(Journal, Vec<Entry>), JournalError> {
        let mut seen = Vec::new();
        let j = Journal::open(dir, opts, |_, e| {
            seen.push(e);
            Ok(())
        })?;
        Ok((j, seen))
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap()
    }

    #[test]
    fn what_was_answered_is_read_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let small = JournalOptions {
            fsync: Fsync::Always,
            // A few entries per segment: reading crosses segments.
            segment_bytes: 600,
        };
        let rt = rt();
        let (j, none) = read(dir.path(), small).unwrap();
        assert!(none.is_empty());
        let j = std::sync::Arc::new(j);
        // Eight appenders at once (they share groups), each in its order.
        rt.block_on(async {
            let tasks: Vec<_> = (0..8)
                .map(|p| {
                    let j = j.clone();
                    tokio::spawn(async move {
                        for i in 0..10 {
                            j.append(records(p, i * 3, 3)).await.unwrap();
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
            j.append(Entry::Offsets {
                group: "g".into(),
                offsets: vec![("t".into(), 0, 42), ("t".into(), 1, 7)],
            })
            .await
            .unwrap();
        });
        drop(j);
        assert!(segments(dir.path()).unwrap().len() > 1, "it rolled");
        let (_j, seen) = read(dir.path(), small).unwrap();
        assert_eq!(seen.len(), 81);
        for p in 0..8 {
            let mine: Vec<&Entry> = seen
                .iter()
                .filter(|e| matches!(e, Entry::Records { partition, .. } if *partition == p))
                .collect();
            let want: Vec<Entry> = (0..10).map(|i| records(p, i * 3, 3)).collect();
            assert_eq!(mine, want.iter().collect::<Vec<_>>(), "partition {p}");
        }
        assert!(matches!(&seen[80], Entry::Offsets { group, .. } if group == "g"));
    }

    #[test]
    fn an_interrupted_last_write_is_cut_off_and_appends_go_on() {
        let rt = rt();
        for cut in [1u64, 5, 9, 30] {
            let dir = tempfile::tempdir().unwrap();
            let (j, _) = read(dir.path(), JournalOptions::default()).unwrap();
            rt.block_on(async {
                for i in 0..3 {
                    j.append(records(0, i, 1)).await.unwrap();
                }
            });
            drop(j);
            // The crash: the last frame loses its end.
            let seg = segments(dir.path()).unwrap().pop().unwrap();
            let len = std::fs::metadata(&seg).unwrap().len();
            let f = OpenOptions::new().write(true).open(&seg).unwrap();
            f.set_len(len - cut).unwrap();
            drop(f);
            let (j, seen) = read(dir.path(), JournalOptions::default()).unwrap();
            assert_eq!(seen, vec![records(0, 0, 1), records(0, 1, 1)], "cut {cut}");
            rt.block_on(async { j.append(records(0, 2, 1)).await.unwrap() });
            drop(j);
            let (_j, seen) = read(dir.path(), JournalOptions::default()).unwrap();
            assert_eq!(seen.len(), 3, "cut {cut}");
            assert_eq!(seen[2], records(0, 2, 1));
        }
    }

    #[test]
    fn a_bad_frame_before_the_end_is_corruption() {
        let rt = rt();
        let dir = tempfile::tempdir().unwrap();
        let small = JournalOptions {
            fsync: Fsync::Every(Duration::from_millis(5)),
            segment_bytes: 200,
        };
        let (j, _) = read(dir.path(), small).unwrap();
        rt.block_on(async {
            for i in 0..6 {
                j.append(records(0, i, 1)).await.unwrap();
            }
        });
        drop(j);
        let segs = segments(dir.path()).unwrap();
        assert!(segs.len() >= 2, "{segs:?}");
        // One flipped bit in an earlier segment: never served.
        let mut data = std::fs::read(&segs[0]).unwrap();
        data[HEADER + 3] ^= 0x10;
        std::fs::write(&segs[0], data).unwrap();
        match read(dir.path(), small) {
            Err(JournalError::Corrupt { path, .. }) => assert_eq!(path, segs[0]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_field_round_trips_and_a_wrong_length_is_caught() {
        let e = Entry::Records {
            topic: "t".into(),
            partition: 3,
            records: vec![
                JournalRecord::default(),
                JournalRecord {
                    offset: i64::MAX,
                    timestamp_ms: -1,
                    key: Some(vec![]),
                    headers: vec![("h".into(), Some(vec![0, 255]))],
                    payload: None,
                },
            ],
        };
        let mut buf = Vec::new();
        e.encode(&mut buf);
        assert_eq!(Entry::decode(&buf).unwrap(), e);
        assert!(Entry::decode(&buf[..buf.len() - 1]).is_err());
        let mut longer = buf.clone();
        longer.push(0);
        assert!(Entry::decode(&longer).is_err());
        assert!(Entry::decode(&[9]).is_err());
    }
}
