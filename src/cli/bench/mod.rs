//! `atelier bench`: end-to-end benchmarks that need running services (the
//! hot paths alone are criterion benches in `benches/`). Each prints what it
//! measured and how.

mod infer;
mod limits;
mod project;
mod reads;
mod soak;
mod start;

use clap::Subcommand;

use crate::config::Config;

/// The benchmarks.
#[derive(Debug, Subcommand)]
pub(super) enum BenchCmd {
    /// Projector throughput: Kafka → fold → view store.
    Project(project::ProjectArgs),
    /// Read latency and throughput per endpoint, and produce-to-visible
    /// freshness, against the configured (or given) backends.
    Reads(reads::ReadsArgs),
    /// Inference: images/s and latency against Python in-process and one
    /// Python process per image, a batch-size sweep, and (--memory)
    /// resident memory with 1 and 8 uploads in flight.
    Infer(infer::InferArgs),
    /// Per-caller limits: a steady writer's latency beside a flooding
    /// principal, and resident memory under many large uploads at once.
    Limits(limits::LimitsArgs),
    /// The embedded default's start: fill a data directory through the
    /// durable embedded log, start on it again, and time the journal's read
    /// back, the first answered request and the views catching up.
    Start(start::StartArgs),
    /// Memory under history: a long stream of polls and votes into the
    /// embedded default, resident memory printed against events accepted
    /// and the views' memory budget.
    Soak(soak::SoakArgs),
    /// One memory measurement of `bench infer --memory` (run as a child).
    #[command(hide = true)]
    InferMemoryProbe(infer::MemoryProbeArgs),
}

/// Resident memory of this process, in MiB.
pub(super) fn rss_mib() -> f64 {
    status_mib("VmRSS:")
}

/// Peak resident memory of this process, in MiB.
pub(super) fn peak_mib() -> f64 {
    status_mib("VmHWM:")
}

/// A memory line of `/proc/self/status` (kB there), in MiB.
fn status_mib(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

/// A healthy run logs no ERROR line: the benchmarks that run the pipeline
/// end with this check, and fail past it (the log says what went wrong).
pub(super) fn quiet_when_healthy() -> anyhow::Result<()> {
    let n = crate::telemetry::error_events();
    eprintln!("ERROR log lines during the run: {n}");
    anyhow::ensure!(n == 0, "{n} ERROR log lines: a healthy run logs none");
    Ok(())
}

/// Runs one benchmark.
pub(super) async fn run(cfg: Config, cmd: BenchCmd) -> anyhow::Result<()> {
    match cmd {
        BenchCmd::Project(a) => project::run(cfg, a).await,
        BenchCmd::Reads(a) => reads::run(cfg, a).await,
        BenchCmd::Infer(a) => infer::run(cfg, a).await,
        BenchCmd::Limits(a) => limits::run(cfg, a).await,
        BenchCmd::Start(a) => start::run(cfg, a).await,
        BenchCmd::Soak(a) => soak::run(cfg, a).await,
        BenchCmd::InferMemoryProbe(a) => infer::memory_probe(cfg, a).await,
    }
}
