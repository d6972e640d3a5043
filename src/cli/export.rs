//! `atelier export`: stream a view out as JSON Lines or CSV. The views live
//! in the running atelier (inside `atelier up` with the embedded default),
//! so this asks its `GET /v1/admin/export` and copies the answer, chunk by
//! chunk, to a file, stdout or S3: memory holds one chunk (one S3 part),
//! whatever the view's size.
//!
//! An export is whole or absent: a file is written as `PATH.partial` and
//! renamed when complete; an S3 object appears when its multipart upload
//! completes. A body the server cut short (a store failure mid-way), a
//! failed write or Ctrl-C removes the partial file or aborts the upload,
//! and the command fails. Only stdout cannot take back what it wrote.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use indicatif::{HumanBytes, ProgressBar, ProgressStyle};
use tokio::io::{AsyncWriteExt, BufWriter};

use super::client::{Client, OpsArgs};
use crate::blob::{S3Blobs, S3Upload};
use crate::config::{BlobConfig, Config};

/// S3 part size: over the 5 MiB minimum, few enough requests.
const PART_SIZE: usize = 8 * 1024 * 1024;

#[derive(Debug, Args)]
pub(super) struct ExportArgs {
    #[command(flatten)]
    ops: OpsArgs,
    /// Which view: every poll, or every live feed item (newest first).
    #[arg(long, value_parser = ["polls", "feed"])]
    view: String,
    /// `json`: JSON Lines, one object per poll or item, as the read API
    /// shows them. `csv`: a header, then one record per item, or per poll
    /// question (the poll's columns repeated; a poll's records are
    /// consecutive).
    #[arg(long, value_parser = ["json", "csv"], default_value = "json")]
    format: String,
    /// Where: a file (written to PATH.partial, renamed when complete), `-`
    /// for stdout, or s3://BUCKET/KEY (a multipart upload, with the
    /// endpoint, region and credentials of the blobs.* settings).
    #[arg(long)]
    to: String,
    /// Rows the server reads from the view store at a time (1 to 1000).
    #[arg(long, default_value_t = 500)]
    page: usize,
}

/// Where the export goes.
#[derive(Debug, PartialEq, Eq)]
enum Dest {
    Stdout,
    File(PathBuf),
    S3 { bucket: String, key: String },
}

impl Dest {
    fn parse(to: &str) -> anyhow::Result<Self> {
        if to == "-" {
            return Ok(Dest::Stdout);
        }
        let Some(rest) = to.strip_prefix("s3://") else {
            if to.is_empty() {
                bail!("--to: give a file path, `-` or s3://BUCKET/KEY");
            }
            return Ok(Dest::File(PathBuf::from(to)));
        };
        match rest.split_once('/') {
            Some((bucket, key)) if !bucket.is_empty() && !key.is_empty() => Ok(Dest::S3 {
                bucket: bucket.to_owned(),
                key: key.to_owned(),
            }),
            _ => bail!("--to {to}: expected s3://BUCKET/KEY"),
        }
    }
}

/// The open destination.
enum Sink {
    Stdout(BufWriter<tokio::io::Stdout>),
    File {
        out: BufWriter<tokio::fs::File>,
        partial: PathBuf,
        path: PathBuf,
    },
    S3(S3Upload),
}

impl Sink {
    async fn open(dest: &Dest, blobs: &BlobConfig, content_type: &str) -> anyhow::Result<Self> {
        Ok(match dest {
            Dest::Stdout => Sink::Stdout(BufWriter::new(tokio::io::stdout())),
            Dest::File(path) => {
                let mut partial = path.clone().into_os_string();
                partial.push(".partial");
                let partial = PathBuf::from(partial);
                let file = tokio::fs::File::create(&partial)
                    .await
                    .with_context(|| format!("creating {}", partial.display()))?;
                Sink::File {
                    out: BufWriter::new(file),
                    partial,
                    path: path.clone(),
                }
            }
            Dest::S3 { bucket, key } => {
                let cfg = BlobConfig {
                    bucket: bucket.clone(),
                    ..blobs.clone()
                };
                let s3 = S3Blobs::connect(&cfg).await?;
                Sink::S3(s3.upload(key, content_type, PART_SIZE)?)
            }
        })
    }

    async fn write(&mut self, chunk: &[u8]) -> anyhow::Result<()> {
        match self {
            Sink::Stdout(out) => out.write_all(chunk).await?,
            Sink::File { out, partial, .. } => out
                .write_all(chunk)
                .await
                .with_context(|| format!("writing {}", partial.display()))?,
            Sink::S3(up) => up.write(chunk).await?,
        }
        Ok(())
    }

    /// Makes the export visible, whole.
    async fn finish(&mut self) -> anyhow::Result<()> {
        match self {
            Sink::Stdout(out) => out.flush().await?,
            Sink::File { out, partial, path } => {
                out.flush().await?;
                // On disk before it gets its name: a crash never leaves a
                // short file under the final name.
                out.get_ref().sync_all().await?;
                tokio::fs::rename(&*partial, &*path)
                    .await
                    .with_context(|| format!("renaming to {}", path.display()))?;
            }
            Sink::S3(up) => {
                up.finish().await?;
            }
        }
        Ok(())
    }

    /// Takes back what was written, as far as the destination allows.
    async fn abort(&mut self) {
        match self {
            Sink::Stdout(out) => {
                let _ = out.flush().await;
            }
            Sink::File { partial, .. } => {
                if let Err(e) = tokio::fs::remove_file(&*partial).await
                    && e.kind() != std::io::ErrorKind::NotFound
                {
                    eprintln!("warning: could not remove {}: {e}", partial.display());
                }
            }
            Sink::S3(up) => {
                let id = up.upload_id().unwrap_or_default().to_owned();
                if let Err(e) = up.abort().await {
                    eprintln!("warning: could not abort the multipart upload {id}: {e}");
                }
            }
        }
    }
}

pub(super) async fn run(cfg: Config, args: ExportArgs) -> anyhow::Result<()> {
    let dest = Dest::parse(&args.to)?;
    let ops = Client::ops(&cfg, &args.ops)?;
    let started = Instant::now();
    let req = ops
        .request(reqwest::Method::GET, "/v1/admin/export")
        .query(&[
            ("view", args.view.as_str()),
            ("format", args.format.as_str()),
            ("page", &args.page.to_string()),
        ]);
    // Asked before anything is created: a refusal (403, 503) leaves no
    // partial file or upload behind.
    let mut res = ops.send(req).await?;
    let content_type = res
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream")
        .to_owned();
    let noun = if args.view == "polls" {
        "polls"
    } else {
        "items"
    };
    let mut sink = Sink::open(&dest, &cfg.blobs, &content_type).await?;
    let bar = progress(noun);
    let mut tally = Tally::new(args.format == "csv");
    let copied = tokio::select! {
        r = copy(&mut res, &mut sink, &mut tally, &bar) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    let done = match copied {
        Ok(()) => sink.finish().await,
        Err(e) => Err(e),
    };
    if let Err(e) = done {
        bar.abandon();
        sink.abort().await;
        return Err(e.context("export failed; nothing was kept"));
    }
    bar.finish_and_clear();
    eprintln!(
        "exported {} {noun} ({} bytes) to {} in {:.1} s",
        tally.rows(),
        tally.bytes,
        args.to,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Copies the body chunk by chunk. A body the server cut short is an error
/// here (reqwest reports the unfinished chunked transfer).
async fn copy(
    res: &mut reqwest::Response,
    sink: &mut Sink,
    tally: &mut Tally,
    bar: &ProgressBar,
) -> anyhow::Result<()> {
    while let Some(chunk) = res
        .chunk()
        .await
        .context("the server cut the export short")?
    {
        tally.feed(&chunk);
        sink.write(&chunk).await?;
        bar.set_position(tally.rows());
        bar.set_message(HumanBytes(tally.bytes).to_string());
    }
    Ok(())
}

/// Rows, bytes, rows/s and elapsed on stderr; nothing when stderr is not a
/// terminal (a log file must not fill with redraws).
fn progress(noun: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner().with_prefix(noun.to_owned());
    if let Ok(style) =
        ProgressStyle::with_template("{spinner} {human_pos} {prefix} ({per_sec}), {msg}, {elapsed}")
    {
        bar.set_style(style);
    }
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// Counts the polls or items of an export as its bytes go by, without
/// holding them. JSON Lines: a row per line (JSON escapes newlines inside
/// strings). CSV: a record ends at a newline outside quotes; the first is
/// the header; a poll's records (one per question) are consecutive and
/// share their first field (the id), so rows are runs of equal first
/// fields.
#[derive(Debug)]
struct Tally {
    csv: bool,
    bytes: u64,
    lines: u64,
    in_quotes: bool,
    in_first_field: bool,
    /// The current record's first field (an id: short; capped anyway).
    first: Vec<u8>,
    previous: Vec<u8>,
    records: u64,
    runs: u64,
}

/// More of a first field than an id needs to be told apart.
const FIRST_FIELD_CAP: usize = 64;

impl Tally {
    fn new(csv: bool) -> Self {
        Self {
            csv,
            bytes: 0,
            lines: 0,
            in_quotes: false,
            in_first_field: true,
            first: Vec::new(),
            previous: Vec::new(),
            records: 0,
            runs: 0,
        }
    }

    fn feed(&mut self, chunk: &[u8]) {
        self.bytes += chunk.len() as u64;
        if !self.csv {
            self.lines += chunk.iter().filter(|&&b| b == b'\n').count() as u64;
            return;
        }
        for &b in chunk {
            match b {
                // An escaped quote (`""`) toggles twice: still inside.
                b'"' => self.in_quotes = !self.in_quotes,
                b',' if !self.in_quotes => self.in_first_field = false,
                b'\n' if !self.in_quotes => {
                    // The header (record 0) starts no run.
                    if self.records > 0 && (self.runs == 0 || self.first != self.previous) {
                        self.runs += 1;
                    }
                    self.records += 1;
                    std::mem::swap(&mut self.first, &mut self.previous);
                    self.first.clear();
                    self.in_first_field = true;
                    continue;
                }
                b'\r' if !self.in_quotes => continue,
                _ => {}
            }
            if self.in_first_field && self.first.len() < FIRST_FIELD_CAP {
                self.first.push(b);
            }
        }
    }

    /// Polls or items so far.
    fn rows(&self) -> u64 {
        if self.csv { self.runs } else { self.lines }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations() {
        assert_eq!(Dest::parse("-").unwrap(), Dest::Stdout);
        assert_eq!(
            Dest::parse("out/polls.csv").unwrap(),
            Dest::File("out/polls.csv".into())
        );
        assert_eq!(
            Dest::parse("s3://b/exports/polls.jsonl").unwrap(),
            Dest::S3 {
                bucket: "b".into(),
                key: "exports/polls.jsonl".into()
            }
        );
        for bad in ["", "s3://", "s3://b", "s3://b/", "s3:///k"] {
            assert!(Dest::parse(bad).is_err(), "{bad:?}");
        }
    }

    /// Feeds `text` cut at every byte boundary: the count never depends on
    /// where chunks end.
    fn count(csv: bool, text: &str) -> u64 {
        let whole = {
            let mut t = Tally::new(csv);
            t.feed(text.as_bytes());
            t.rows()
        };
        for cut in 0..text.len() {
            let mut t = Tally::new(csv);
            t.feed(&text.as_bytes()[..cut]);
            t.feed(&text.as_bytes()[cut..]);
            assert_eq!(t.rows(), whole, "cut at {cut}");
            assert_eq!(t.bytes, text.len() as u64);
        }
        whole
    }

    #[test]
    fn json_lines_are_rows() {
        assert_eq!(count(false, ""), 0);
        assert_eq!(count(false, "{\"a\":\"x\\ny\"}\n{\"a\":2}\n"), 2);
    }

    #[test]
    fn csv_rows_are_runs_of_ids_after_the_header() {
        assert_eq!(count(true, "id,q\n"), 0);
        // Two polls: p1 with two questions, p2 with one; quoted newlines,
        // commas and escaped quotes inside fields are not boundaries.
        let polls = "poll_id,question\n\
                     p1,\"Pizza, \"\"hot\"\"\nor cold\"\n\
                     p1,Sushi\n\
                     p2,Tea\n";
        assert_eq!(count(true, polls), 2);
        // Items: one record each; CRLF terminators too.
        assert_eq!(count(true, "item_id,kind\r\ni1,post\r\ni2,game\r\n"), 2);
        // A poll id again after another is a new run (never the case: the
        // server writes a poll's records together).
        assert_eq!(count(true, "id\na\nb\na\n"), 3);
    }
}
