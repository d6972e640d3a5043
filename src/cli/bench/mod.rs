//! `atelier bench`: end-to-end benchmarks that need running services (the
//! hot paths alone are criterion benches in `benches/`). Each prints what it
//! measured and how.

mod infer;
mod limits;
mod project;
mod reads;

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
    /// One memory measurement of `bench infer --memory` (run as a child).
    #[command(hide = true)]
    InferMemoryProbe(infer::MemoryProbeArgs),
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
        BenchCmd::InferMemoryProbe(a) => infer::memory_probe(cfg, a).await,
    }
}
