//! The command line: one file per subcommand. `anyhow` lives here and in
//! tests only; the library layers below return typed errors.

mod bench;
mod client;
mod dlq;
mod emit;
mod export;
mod gc;
mod latency;
mod loadgen;
mod models;
mod replay;
pub mod schemas;
mod topics;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::app;
use crate::config::Config;

/// atelier: an event-driven stream processor. Kafka in, one-query views out.
#[derive(Debug, Parser)]
#[command(name = "atelier", version, about, long_about = None)]
pub struct Cli {
    /// Configuration file (default: ./atelier.toml when present, or
    /// $ATELIER_CONFIG). Environment: ATELIER_SECTION__FIELD.
    #[arg(long, global = true, env = "ATELIER_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run everything in one process (ingest, projector, read API); embedded
    /// backends unless configured otherwise.
    Up {
        /// Listen address (overrides http.listen).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
    },
    /// Run the ingest and read API only.
    Serve {
        /// Listen address (overrides http.listen).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
    },
    /// Run the projector consumers only.
    Project,
    /// Run the inference workers only: a consumer group on the uploads
    /// topic (needs a build with `--features torch`).
    Infer,
    /// Style models: publish a TorchScript file, list what is published.
    #[command(subcommand)]
    Models(models::ModelsCmd),
    /// Topics as code: apply `topics/*.toml` to Kafka, or list the specs.
    #[command(subcommand)]
    Topics(topics::TopicsCmd),
    /// Create polls and votes through the API.
    #[command(subcommand)]
    Emit(emit::EmitCmd),
    /// Drive a steady rate of realistic traffic through the API.
    Loadgen(loadgen::LoadgenArgs),
    /// Print a bearer token for a user (signed with the configured or the
    /// development secret).
    Token {
        /// User id.
        #[arg(long = "as", default_value = "dev")]
        user: String,
        /// Display name (default: the user id).
        #[arg(long)]
        name: Option<String>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 86_400)]
        ttl: u64,
    },
    /// Event schemas: write `schemas/` from the types, or check them.
    #[command(subcommand)]
    Schemas(schemas::SchemasCmd),
    /// Rebuild views from the log into a new generation, swapped in with no
    /// downtime; rewind inference; show progress; drop old generations.
    Replay(replay::ReplayArgs),
    /// Dead letters: list, show, replay (corrected) records.
    #[command(subcommand)]
    Dlq(dlq::DlqCmd),
    /// Stream a view out (JSON lines or CSV) to a file or S3.
    Export(export::ExportArgs),
    /// Remove orphaned images: stored by an upload whose event was never
    /// appended (a crash between the two).
    Gc(gc::GcArgs),
    /// Benchmarks that need running services (see also `cargo bench`).
    #[command(subcommand)]
    Bench(bench::BenchCmd),
    /// Print the effective configuration (secrets redacted).
    Config,
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    crate::telemetry::init_tracing();
    let cli = Cli::parse();
    if crate::telemetry::prometheus().is_none() {
        eprintln!("warning: metrics recorder unavailable; /metrics will be empty");
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load(path: Option<&std::path::Path>) -> anyhow::Result<Config> {
    Config::load(path).map_err(|e| anyhow::anyhow!("configuration: {e}"))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let cfg = load(cli.config.as_deref())?;
    match cli.command {
        Command::Up { listen } => {
            let mut cfg = cfg;
            if let Some(l) = listen {
                cfg.http.listen = l;
            }
            // The models `scripts/up` exports, unless configured otherwise.
            let exported = cfg.data_dir.join("models");
            if cfg.infer.models_dir.is_empty() && exported.is_dir() {
                cfg.infer.models_dir = exported.to_string_lossy().into_owned();
            }
            up(cfg, app::Roles::ALL).await
        }
        Command::Serve { listen } => {
            let mut cfg = cfg;
            if let Some(l) = listen {
                cfg.http.listen = l;
            }
            up(cfg, app::Roles::API).await
        }
        Command::Project => up(cfg, app::Roles::PROJECTOR).await,
        Command::Infer => up(cfg, app::Roles::INFER).await,
        Command::Models(c) => models::run(cfg, c).await,
        Command::Topics(c) => topics::run(cfg, c).await,
        Command::Emit(c) => emit::run(cfg, c).await,
        Command::Loadgen(a) => loadgen::run(cfg, a).await,
        Command::Token { user, name, ttl } => {
            let cfg = app::with_dev_auth(cfg)?;
            let name = name.unwrap_or_else(|| user.clone());
            println!(
                "{}",
                crate::api::mint(cfg.auth.jwt_secret.expose(), &user, &name, ttl)
            );
            Ok(())
        }
        Command::Schemas(c) => schemas::run(c),
        Command::Replay(a) => replay::run(cfg, a).await,
        Command::Dlq(c) => dlq::run(cfg, c).await,
        Command::Export(a) => export::run(cfg, a).await,
        Command::Gc(a) => gc::run(cfg, a).await,
        Command::Bench(c) => bench::run(cfg, c).await,
        Command::Config => {
            println!("{cfg:#?}");
            Ok(())
        }
    }
}

async fn up(cfg: Config, roles: app::Roles) -> anyhow::Result<()> {
    let embedded = cfg.kafka.is_embedded();
    let app = app::App::start(cfg, roles).await?;
    app::cancel_on_signals(app.shutdown.clone());
    // A closed stdout (a supervisor that stopped reading) must not take the
    // server down: the banner ignores write errors.
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let styles: Vec<String> = app
        .catalog
        .all()
        .iter()
        .map(|p| p.style.to_string())
        .collect();
    let inference = match &app.registry {
        Some(r) => format!(
            "libtorch on {}, {}",
            r.engine().device(),
            r.engine().precision()
        ),
        None if crate::infer::model::HAS_ENGINE => "not in this process".to_owned(),
        None => "off: this build has no model engine (use scripts/up)".to_owned(),
    };
    let banner = match app.addr {
        Some(addr) => format!(
            "atelier is up\n  dashboard  http://{addr}/\n  API        http://{addr}\n  log        {}\n  views      {}\n  \
             inference  {inference}\n  styles     {}\n  \
             try        atelier emit poll --head 'Lunch?' --question Pizza --question Sushi\n  \
             upload     atelier emit upload --session demo --style {} [IMAGE]\n  \
             stop       Ctrl-C\n",
            if !embedded {
                "Kafka".to_owned()
            } else if app.config.kafka.journal.enabled {
                format!(
                    "embedded, kept in {} (fsync {})",
                    app.config.data_dir.join("log").display(),
                    app.config.kafka.journal.fsync
                )
            } else {
                "embedded, in memory only (kafka.journal.enabled = false)".to_owned()
            },
            match (app.views.backend(), app.config.views.snapshot_secs) {
                ("embedded", n) if embedded && app.config.kafka.journal.enabled && n > 0 =>
                    format!(
                        "embedded, {}; snapshot {} every {n} s when changed and at a clean stop",
                        match app.config.views.memory_mb {
                            0 => "all in memory (views.memory_mb = 0)".to_owned(),
                            mb => format!(
                                "{mb} MiB in memory, the rest in {}",
                                crate::app::spill_path(&app.config).display()
                            ),
                        },
                        app.config.data_dir.join("views.snapshot").display()
                    ),
                (b, _) => b.to_owned(),
            },
            if styles.is_empty() {
                "none published".to_owned()
            } else {
                styles.join(", ")
            },
            styles.first().map_or("STYLE", String::as_str),
        ),
        None => format!("atelier running; inference: {inference} (Ctrl-C to stop)\n"),
    };
    let _ = out.write_all(banner.as_bytes()).and_then(|()| out.flush());
    drop(out);
    app.wait().await
}
