//! Typed metric emitters: the only place that calls the `metrics` macros
//! (`clippy.toml` bans them everywhere else). Each function is one thing that
//! happened, with its labels as arguments, so a metric's name, kind and
//! labels are declared once and dashboards cannot drift from the code.
#![allow(clippy::disallowed_macros)]

use std::time::Duration;

use super::names;

/// An event appended by the ingest edge.
pub fn ingest_event(event_type: &'static str) {
    metrics::counter!(names::INGEST_EVENTS, "type" => event_type).increment(1);
}

/// A request refused at the edge.
pub fn ingest_rejected(reason: &'static str) {
    metrics::counter!(names::INGEST_REJECTED, "reason" => reason).increment(1);
}

/// An upload accepted at the edge.
pub fn upload_accepted(content_type: &'static str) {
    metrics::counter!(names::UPLOADS, "content_type" => content_type).increment(1);
}

/// An HTTP request answered, by route template (never the raw path).
pub fn http_request(route: String, status: u16, took: Duration) {
    metrics::histogram!(names::HTTP_SECONDS, "route" => route.clone()).record(took.as_secs_f64());
    metrics::counter!(names::HTTP_REQUESTS, "route" => route, "status" => status.to_string())
        .increment(1);
}

/// Records handed to a stage (`stage`: `project` for the projectors' loop,
/// `infer` for the inference worker).
pub fn consumed(topic: &str, stage: &'static str, n: u64) {
    metrics::counter!(names::CONSUMED, "topic" => topic.to_owned(), "stage" => stage).increment(n);
}

/// Partitions paused for backpressure (`n` at once).
pub fn paused(topic: Option<&str>, n: usize) {
    metrics::gauge!(names::PAUSED).increment(n as f64);
    if let Some(t) = topic {
        metrics::counter!(names::PAUSES, "topic" => t.to_owned()).increment(1);
    }
}

/// Partitions resumed after backpressure.
pub fn resumed(n: usize) {
    metrics::gauge!(names::PAUSED).decrement(n as f64);
}

/// A record sent to the DLQ by `stage`.
pub fn dead_letter(stage: &str) {
    metrics::counter!(names::DLQ, "stage" => stage.to_owned()).increment(1);
}

/// View-store read statements executed.
pub fn view_reads(n: u64) {
    metrics::counter!(names::VIEW_READS).increment(n);
}

/// View-store write statements executed.
pub fn view_writes(n: u64) {
    metrics::counter!(names::VIEW_WRITES).increment(n);
}

/// View-store requests made (a batch counts once per partition it writes).
pub fn view_requests(n: u64) {
    metrics::counter!(names::VIEW_REQUESTS).increment(n);
}

/// Embedded view partitions spilled past the memory budget.
pub fn view_spilled(n: u64) {
    metrics::counter!(names::VIEW_SPILLED).increment(n);
}

/// An embedded view partition read back from the spill file.
pub fn view_read_back() {
    metrics::counter!(names::VIEW_READ_BACK).increment(1);
}

/// The embedded views' resident bytes and their budget.
pub fn view_memory(resident: u64, budget: u64) {
    metrics::gauge!(names::VIEW_MEMORY).set(resident as f64);
    metrics::gauge!(names::VIEW_MEMORY_BUDGET).set(budget as f64);
}

/// An event refused by a fold rule.
pub fn fold_rejected(view: &'static str, reason: &'static str) {
    metrics::counter!(names::FOLD_REJECTED, "view" => view, "reason" => reason).increment(1);
}

/// What one projector mini-batch did: events folded (applied, skipped as
/// duplicates), how long folding and writing took, how many records it
/// held, commits written per event (how much it coalesced), and the
/// freshness of its newest event (event time to durable in the view).
#[derive(Clone, Copy, Debug)]
pub struct Batch {
    /// The view.
    pub view: &'static str,
    /// Records in the batch.
    pub records: usize,
    /// Events applied.
    pub applied: u64,
    /// Events skipped as already applied.
    pub duplicates: u64,
    /// Commits (or row patches) written.
    pub commits: u64,
    /// Time spent folding.
    pub fold: Duration,
    /// Time spent writing (views and checkpoint).
    pub write: Duration,
    /// Event time to durable, for the newest event.
    pub freshness: Option<Duration>,
}

/// A projector mini-batch, applied.
pub fn batch(b: Batch) {
    metrics::histogram!(names::FOLD_SECONDS).record(b.fold.as_secs_f64());
    metrics::histogram!(names::WRITE_SECONDS).record(b.write.as_secs_f64());
    metrics::histogram!(names::BATCH_EVENTS).record(b.records as f64);
    if b.records > 0 {
        metrics::histogram!(names::WRITES_PER_EVENT, "view" => b.view)
            .record(b.commits as f64 / b.records as f64);
    }
    if let Some(f) = b.freshness {
        metrics::histogram!(names::FRESHNESS, "view" => b.view).record(f.as_secs_f64());
    }
    metrics::counter!(names::FOLDED, "view" => b.view, "outcome" => "applied").increment(b.applied);
    metrics::counter!(names::FOLDED, "view" => b.view, "outcome" => "duplicate")
        .increment(b.duplicates);
}

/// A consumer's lag in one partition.
pub fn lag(group: &str, topic: &str, partition: i32, lag: i64) {
    metrics::gauge!(names::LAG, "group" => group.to_owned(), "topic" => topic.to_owned(),
        "partition" => partition.to_string())
    .set(lag as f64);
}

/// Records fetched for a partition and not yet taken by its worker.
pub fn prefetched(group: &str, topic: &str, partition: i32, records: i64) {
    metrics::gauge!(names::PREFETCHED, "group" => group.to_owned(), "topic" => topic.to_owned(),
        "partition" => partition.to_string())
    .set(records as f64);
}

/// A request refused by a limit (`writes`, `reads`, `uploads`).
pub fn limited(limit: &'static str) {
    metrics::counter!(names::LIMITED, "limit" => limit).increment(1);
}

/// A consumer group member received an assignment.
pub fn rebalance() {
    metrics::counter!(names::REBALANCES).increment(1);
}

/// A model loaded into memory.
pub fn model_loaded(style: String) {
    metrics::counter!(names::MODEL_LOADS, "style" => style).increment(1);
}

/// A transient inference failure retried, in `stage` (model, fetch, store).
pub fn infer_retry(stage: &'static str) {
    metrics::counter!(names::INFER_RETRIES, "stage" => stage).increment(1);
}

/// This worker was fenced (see `names::INFER_FENCED`).
pub fn infer_fenced() {
    metrics::counter!(names::INFER_FENCED).increment(1);
}

/// One ERROR event was logged (see `names::LOG_ERRORS`).
pub fn log_error() {
    metrics::counter!(names::LOG_ERRORS).increment(1);
}

/// The inference engine's device and precision (see `names::INFER_ENGINE`).
pub fn infer_engine(device: &str, precision: &'static str) {
    metrics::gauge!(names::INFER_ENGINE, "device" => device.to_owned(), "precision" => precision)
        .set(1.0);
}

/// Time one image spent in an inference pipeline stage (decode, queue,
/// encode).
pub fn infer_stage(stage: &'static str, took: Duration) {
    metrics::histogram!(names::INFER_STAGE_SECONDS, "stage" => stage).record(took.as_secs_f64());
}

/// One model call on a batch of images.
pub fn infer_batch(style: String, images: usize, took: Duration) {
    metrics::histogram!(names::INFER_SECONDS, "style" => style.clone()).record(took.as_secs_f64());
    metrics::histogram!(names::INFER_BATCH, "style" => style).record(images as f64);
}

/// An upload the inference worker finished (`completed` or `failed`).
pub fn infer_done(outcome: &'static str) {
    metrics::counter!(names::INFER_DONE, "outcome" => outcome).increment(1);
}
