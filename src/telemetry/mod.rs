//! Tracing setup and the metric names: every metric the crate emits is
//! named here, once, so dashboards and code cannot drift apart.

pub mod emit;
pub mod lag;

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Metric names.
pub mod names {
    /// Events appended by the ingest edge, by `topic`, `type`.
    pub const INGEST_EVENTS: &str = "atelier_ingest_events_total";
    /// Requests refused at the edge, by `reason`.
    pub const INGEST_REJECTED: &str = "atelier_ingest_rejected_total";
    /// Records consumed, by `topic`, `stage`.
    pub const CONSUMED: &str = "atelier_consumed_total";
    /// Events applied by a fold, by `view`, `outcome` (applied, duplicate, rejected).
    pub const FOLDED: &str = "atelier_folded_total";
    /// Events refused by a fold, by `view`, `reason`.
    pub const FOLD_REJECTED: &str = "atelier_fold_rejected_total";
    /// Records sent to the DLQ, by `stage`.
    pub const DLQ: &str = "atelier_dlq_total";
    /// Fold time per mini-batch, seconds.
    pub const FOLD_SECONDS: &str = "atelier_fold_seconds";
    /// View write time per mini-batch, seconds.
    pub const WRITE_SECONDS: &str = "atelier_view_write_seconds";
    /// View writes (aggregate commits) per event, per mini-batch, by
    /// `view`: below 1 when the mini-batch coalesced.
    pub const WRITES_PER_EVENT: &str = "atelier_writes_per_event";
    /// Event time to durable in the view, seconds, by `view` (the newest
    /// event of each mini-batch).
    pub const FRESHNESS: &str = "atelier_view_freshness_seconds";
    /// View-store read statements.
    pub const VIEW_READS: &str = "atelier_view_reads_total";
    /// View-store write statements.
    pub const VIEW_WRITES: &str = "atelier_view_writes_total";
    /// View-store requests: each read or lone write statement is one, a
    /// batch one per partition it writes.
    pub const VIEW_REQUESTS: &str = "atelier_view_requests_total";
    /// Estimated bytes of the embedded views' partitions in memory.
    pub const VIEW_MEMORY: &str = "atelier_view_memory_bytes";
    /// The embedded views' memory budget (`views.memory_mb`).
    pub const VIEW_MEMORY_BUDGET: &str = "atelier_view_memory_budget_bytes";
    /// Embedded view partitions moved to the spill file past the budget.
    pub const VIEW_SPILLED: &str = "atelier_view_partitions_spilled_total";
    /// Embedded view partitions read back from the spill file.
    pub const VIEW_READ_BACK: &str = "atelier_view_partitions_read_back_total";
    /// Events per mini-batch.
    pub const BATCH_EVENTS: &str = "atelier_batch_events";
    /// Partitions paused for backpressure right now.
    pub const PAUSED: &str = "atelier_partitions_paused";
    /// Times a partition was paused for backpressure, by `topic`.
    pub const PAUSES: &str = "atelier_partition_pauses_total";
    /// Consumer lag (records not yet applied), by `group`, `topic`,
    /// `partition`; measured every second by each consumer loop.
    pub const LAG: &str = "atelier_consumer_lag";
    /// Records librdkafka fetched for a partition that its worker has not
    /// taken yet, by `group`, `topic`, `partition` (the projectors'
    /// consumers; from librdkafka's statistics, every second).
    pub const PREFETCHED: &str = "atelier_consumer_prefetched";
    /// Rebalances this process's consumer group members went through
    /// (each assignment they received).
    pub const REBALANCES: &str = "atelier_rebalances_total";
    /// Requests refused by a limit, by `limit` (writes, reads, uploads).
    pub const LIMITED: &str = "atelier_limited_total";
    /// HTTP requests, by `route`, `status`.
    pub const HTTP_REQUESTS: &str = "atelier_http_requests_total";
    /// HTTP latency, seconds, by `route`.
    pub const HTTP_SECONDS: &str = "atelier_http_seconds";
    /// Model calls, seconds, by `style`.
    pub const INFER_SECONDS: &str = "atelier_infer_seconds";
    /// Images per model call, by `style`.
    pub const INFER_BATCH: &str = "atelier_infer_batch_images";
    /// Time per pipeline stage and image, seconds, by `stage` (decode,
    /// queue, encode) .
    pub const INFER_STAGE_SECONDS: &str = "atelier_infer_stage_seconds";
    /// Uploads finished by the inference workers, by `outcome`
    /// (completed, failed).
    pub const INFER_DONE: &str = "atelier_infer_uploads_total";
    /// Transient failures retried, by `stage`.
    pub const INFER_RETRIES: &str = "atelier_infer_retries_total";
    /// Times an inference worker was fenced: another worker opened its
    /// transactional id (a duplicate `infer.instance`, or its successor).
    pub const INFER_FENCED: &str = "atelier_infer_fenced_total";
    /// 1, labelled with the inference engine's `device` and `precision`
    /// (fp32, bf16) as chosen at start.
    pub const INFER_ENGINE: &str = "atelier_infer_engine_info";
    /// ERROR events logged (a healthy process logs none).
    pub const LOG_ERRORS: &str = "atelier_log_errors_total";
    /// Models loaded into memory, by `style`.
    pub const MODEL_LOADS: &str = "atelier_model_loads_total";
    /// Uploads accepted at the edge, by `content_type`.
    pub const UPLOADS: &str = "atelier_uploads_total";
}

static PROMETHEUS: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the Prometheus recorder once per process; `None` when another
/// recorder was installed first.
pub fn prometheus() -> Option<&'static PrometheusHandle> {
    PROMETHEUS
        .get_or_init(|| PrometheusBuilder::new().install_recorder().ok())
        .as_ref()
}

/// ERROR events logged by this process (see [`ErrorCounter`]).
static ERRORS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// ERROR events this process has logged since it started: a healthy run
/// logs none (the benchmarks check it).
pub fn error_events() -> u64 {
    ERRORS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Counts ERROR events, in [`error_events`] and in `/metrics`
/// (`names::LOG_ERRORS`).
#[derive(Debug)]
struct ErrorCounter;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for ErrorCounter {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if *event.metadata().level() == tracing::Level::ERROR {
            ERRORS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            emit::log_error();
        }
    }
}

/// Initializes tracing: level from `ATELIER_LOG` (or `RUST_LOG`), format from
/// `ATELIER_LOG_FORMAT` (`pretty` default, or `json`). Safe to call twice.
pub fn init_tracing() {
    use tracing_subscriber::prelude::*;
    use tracing_subscriber::{EnvFilter, fmt};
    let filter = EnvFilter::try_from_env("ATELIER_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info,rdkafka=warn,scylla=warn,aws=warn"));
    let json = std::env::var("ATELIER_LOG_FORMAT").is_ok_and(|f| f == "json");
    let output = if json {
        fmt::layer().json().with_writer(std::io::stderr).boxed()
    } else {
        fmt::layer().compact().with_writer(std::io::stderr).boxed()
    };
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(output)
        .with(ErrorCounter)
        .try_init();
}
