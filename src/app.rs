//! The composition root: builds the running application once, for `main`
//! and for tests. [`App::start`] opens what every role shares (the log,
//! embedded or real; the view store and its generations; blobs; the models
//! catalog), then runs one builder per role: the inference worker, the
//! projectors, the HTTP API. All-in-one (`atelier up`) is all three. Every
//! task runs under one shutdown token.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState, Auth};
use crate::blob::BlobStore;
use crate::bus::{EmbeddedCluster, Heads, Producer, client_config, topics};
use crate::config::{Config, Secret, ViewBackend};
use crate::event::{Style, Topic};
use crate::infer::registry::{self, Catalog, Registry};
use crate::infer::worker::InferWorker;
use crate::infer::{model, publish};
use crate::project::supervisor::Supervisor;
use crate::project::{ViewProjector, Watermarks};
use crate::view::{self, Generations, View};
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;

/// Which parts run in this process.
#[derive(Clone, Copy, Debug)]
pub struct Roles {
    /// Ingest and read API.
    pub api: bool,
    /// Projector consumers.
    pub projector: bool,
    /// Inference workers.
    pub infer: bool,
}

impl Roles {
    /// Everything (`atelier up`); inference only in builds with a model
    /// engine.
    pub const ALL: Roles = Roles {
        api: true,
        projector: true,
        infer: crate::infer::model::HAS_ENGINE,
    };
    /// The API alone (`atelier serve`).
    pub const API: Roles = Roles {
        api: true,
        ..Roles::NONE
    };
    /// The projectors alone (`atelier project`).
    pub const PROJECTOR: Roles = Roles {
        projector: true,
        ..Roles::NONE
    };
    /// Inference alone (`atelier infer`).
    pub const INFER: Roles = Roles {
        infer: true,
        ..Roles::NONE
    };
    /// Nothing but the log, views and blobs (tests add their own parts).
    pub const NONE: Roles = Roles {
        api: false,
        projector: false,
        infer: false,
    };
}

/// A running application.
#[derive(Debug)]
pub struct App {
    /// Where the API listens (when it runs).
    pub addr: Option<SocketAddr>,
    /// Where `/metrics` and `/v1/pipeline` are served, when apart
    /// (`http.ops_listen`).
    pub ops_addr: Option<SocketAddr>,
    /// Bootstrap servers of the log.
    pub brokers: String,
    /// The effective configuration (with generated dev secrets).
    pub config: Config,
    /// The views' generations: reads of a view go to its active one.
    pub views: Arc<Generations>,
    /// Where the topics end.
    pub heads: Heads,
    /// A producer on the log.
    pub producer: Producer,
    /// Applied offsets.
    pub watermarks: Arc<Watermarks>,
    /// The projectors of the views' active generations (when they run).
    pub projectors: Vec<Arc<dyn ViewProjector>>,
    /// Images and models.
    pub blobs: Arc<dyn BlobStore>,
    /// Styles with a published model.
    pub catalog: Arc<Catalog>,
    /// Loaded models (when inference runs).
    pub registry: Option<Arc<Registry>>,
    /// Fires to stop everything.
    pub shutdown: CancellationToken,
    tasks: Vec<(&'static str, JoinHandle<anyhow::Result<()>>)>,
    // Dropped last: the mock cluster must outlive its clients.
    cluster: Option<EmbeddedCluster>,
    /// This process's claim on its data directory (the embedded default).
    _data_dir: Option<DataDir>,
    /// See `Snapshotter::on_disk`.
    snapshot_writes: Arc<std::sync::atomic::AtomicU64>,
}

/// The data directory's format version: written on first use, checked on
/// every start of the embedded default.
pub const DATA_FORMAT: u32 = 1;

/// A claimed data directory: its format checked, and a lock held for the
/// process's life (released by the kernel at exit, SIGKILL included).
#[derive(Debug)]
pub struct DataDir {
    _lock: std::fs::File,
}

impl DataDir {
    /// Checks `dir`'s format (writing it on first use) and locks it; a
    /// directory another process holds, or one of another format, is
    /// refused with what to do.
    pub fn claim(dir: &Path) -> anyhow::Result<DataDir> {
        use std::io::Write;
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the data directory {}", dir.display()))?;
        let lock_path = dir.join("LOCK");
        let mut lock = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .with_context(|| format!("opening {}", lock_path.display()))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&lock_path).unwrap_or_default();
                anyhow::bail!(
                    "another atelier process (pid {}) uses the data directory {}; give each \
                     process its own (ATELIER_DATA_DIR or data_dir), or stop that one first",
                    holder.trim(),
                    dir.display()
                );
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", lock_path.display()));
            }
        }
        lock.set_len(0)?;
        writeln!(lock, "{}", std::process::id())?;
        let format_path = dir.join("FORMAT");
        match std::fs::read_to_string(&format_path) {
            Ok(s) => {
                let v: Option<u32> = s
                    .trim()
                    .strip_prefix("atelier-data ")
                    .and_then(|v| v.parse().ok());
                match v {
                    Some(DATA_FORMAT) => {}
                    Some(v) => anyhow::bail!(
                        "the data directory {} has format {v}; this atelier reads format \
                         {DATA_FORMAT}. Run the atelier version that wrote it, or move the \
                         directory aside (`mv {0} {0}.v{v}`) and start afresh",
                        dir.display()
                    ),
                    None => anyhow::bail!(
                        "{} is not an atelier data format file ({:?}); is {} another \
                         program's directory?",
                        format_path.display(),
                        s.trim(),
                        dir.display()
                    ),
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::write(&format_path, format!("atelier-data {DATA_FORMAT}\n"))
                    .with_context(|| format!("writing {}", format_path.display()))?;
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", format_path.display())),
        }
        Ok(DataDir { _lock: lock })
    }
}

/// Reads (or creates) the development JWT secret under `data_dir`.
pub fn dev_secret(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join("dev-secret");
    if let Ok(s) = std::fs::read_to_string(&path)
        && !s.trim().is_empty()
    {
        return Ok(s.trim().to_owned());
    }
    std::fs::create_dir_all(data_dir)?;
    let secret = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    std::fs::write(&path, &secret)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(secret)
}

/// Fills in development credentials when none are configured, so the
/// embedded default works with no setup and never with a shared secret.
/// Outside it, [`App::start`] refuses to start without the secrets its roles
/// share with other processes ([`require_secrets`]); the tools that only
/// sign tokens (`atelier token`, `emit`) still get a development secret.
pub fn with_dev_auth(mut cfg: Config) -> anyhow::Result<Config> {
    if cfg.auth.jwt_secret.expose().is_empty()
        && cfg.auth.api_keys.is_empty()
        && cfg.auth.jwks.is_empty()
    {
        cfg.auth.jwt_secret = Secret(dev_secret(&cfg.data_dir)?);
    }
    // The embedded default's administrator is the CLI's (`admin`, with the
    // development secret); elsewhere only what is configured.
    if cfg.kafka.is_embedded() && cfg.auth.admins.is_empty() && cfg.auth.admin_claim.is_empty() {
        cfg.auth.admins = vec![crate::config::ADMIN.to_owned()];
    }
    if cfg.auth.voter_key.expose().is_empty() {
        // Stable per data dir: pseudonyms of anonymous voters must not change
        // between runs over the same views.
        cfg.auth.voter_key = Secret(format!("voters:{}", dev_secret(&cfg.data_dir)?));
    }
    if cfg.auth.link_key.expose().is_empty() {
        // Stable per data dir: session keys stay their owners' across runs.
        cfg.auth.link_key = Secret(format!("links:{}", dev_secret(&cfg.data_dir)?));
    }
    Ok(cfg)
}

/// Outside the embedded default, the secrets that every process of a role
/// must share, or the refusal that names them: API processes verify the
/// same tokens (`auth.jwt_secret` or `auth.api_keys`), and projectors key
/// anonymous voters alike (`auth.voter_key`; two keys would count a
/// ballot twice once its poll moves between projectors). A secret derived
/// from each process's own data directory would differ between processes.
pub fn require_secrets(cfg: &Config, roles: Roles) -> anyhow::Result<()> {
    if cfg.kafka.is_embedded() {
        return Ok(());
    }
    let mut missing = Vec::new();
    if roles.api
        && cfg.auth.jwt_secret.expose().is_empty()
        && cfg.auth.api_keys.is_empty()
        && cfg.auth.jwks.is_empty()
    {
        missing.push(
            "auth.jwt_secret, auth.jwks or auth.api_keys (ATELIER_AUTH__JWT_SECRET): every API \
             process must verify the same tokens",
        );
    }
    if roles.api && cfg.auth.link_key.expose().is_empty() {
        missing.push(
            "auth.link_key (ATELIER_AUTH__LINK_KEY): every API process must recognize the same \
             session owners and signed links",
        );
    }
    if roles.projector && cfg.auth.voter_key.expose().is_empty() {
        missing.push(
            "auth.voter_key (ATELIER_AUTH__VOTER_KEY): every projector must key anonymous voters \
             alike, and the key must never change over the life of the views",
        );
    }
    if missing.is_empty() {
        return Ok(());
    }
    anyhow::bail!(
        "refusing to start on a shared log without the secrets its processes must agree on \
         (each process would derive its own from its data directory):\n  - {}",
        missing.join("\n  - ")
    )
}

impl App {
    /// Starts the roles on the configured backends.
    pub async fn start(cfg: Config, roles: Roles) -> anyhow::Result<App> {
        require_secrets(&cfg, roles)?;
        // On the embedded default the directory is the deployment's state:
        // one process at a time, of a format it reads.
        let data_dir = if cfg.kafka.is_embedded() {
            Some(DataDir::claim(&cfg.data_dir)?)
        } else {
            None
        };
        let mut app = App::open(with_dev_auth(cfg)?).await?;
        app._data_dir = data_dir;
        let engine = if roles.infer {
            Some(model::engine(&app.config.infer).context("the inference role")?)
        } else {
            None
        };
        app.follow_models(engine.as_ref())?;
        if !app.config.infer.models_dir.is_empty() {
            bootstrap_models(&app, engine.as_ref()).await?;
        }
        if roles.infer {
            app.start_infer();
        }
        // On a shared log other processes apply most changes: every API
        // process follows them all (see `project::changes`).
        if roles.api && (!roles.projector || !app.config.kafka.is_embedded()) {
            app.watermarks.changes.follow_all();
            app.start_change_follower();
        }
        if roles.projector {
            app.start_projectors().await?;
            app.start_snapshots();
        }
        if roles.api {
            app.start_api().await?;
        }
        Ok(app)
    }

    /// What every role shares: the log, the views, the blobs, the catalog.
    async fn open(cfg: Config) -> anyhow::Result<App> {
        // The views' snapshot is read while the journal is read back.
        let snapshot = (cfg.kafka.is_embedded()
            && cfg.kafka.journal.enabled
            && cfg.views.backend == crate::config::ViewBackend::Embedded)
            .then(|| {
                let path = snapshot_path(&cfg);
                tokio::task::spawn_blocking(move || view::snapshot::read(&path))
            });
        let (cluster, brokers) = if cfg.kafka.is_embedded() {
            let mut c = EmbeddedCluster::start(1).context("starting the embedded Kafka cluster")?;
            topics::ensure_embedded(&c, &cfg.kafka)?;
            if cfg.kafka.journal.enabled {
                let opts = crate::bus::journal::JournalOptions::of(&cfg.kafka.journal)
                    .map_err(anyhow::Error::msg)?;
                let dir = cfg.data_dir.join("log");
                let d = c.make_durable(&cfg.kafka, &dir, opts).with_context(|| {
                    format!("reading the embedded log back from {}", dir.display())
                })?;
                let r = d.restored();
                tracing::info!(
                    dir = %dir.display(),
                    records = r.records,
                    in_journal_only = r.dropped,
                    groups = r.groups,
                    took_ms = r.took.as_millis() as u64,
                    fsync = %cfg.kafka.journal.fsync,
                    "the embedded log is kept on disk"
                );
            }
            let b = c.bootstrap_servers().to_owned();
            (Some(c), b)
        } else {
            (None, cfg.kafka.brokers.clone())
        };
        let snapshot = match snapshot {
            Some(read) => Some(read.await?),
            None => None,
        };
        let (views, restored) =
            open_views(&cfg, cluster.as_ref().and_then(|c| c.durable()), snapshot).await?;
        let blobs = crate::blob::open(&cfg.blobs, &cfg.data_dir)
            .await
            .context("opening the blob store")?;
        Ok(App {
            addr: None,
            ops_addr: None,
            views,
            // Where the topics end: one client for the supervisor and the API.
            heads: Heads::new(&cfg.kafka, &brokers)?,
            producer: Producer::new(&cfg.kafka, &brokers, "atelier/ingest")?,
            watermarks: Watermarks::new(),
            projectors: Vec::new(),
            blobs,
            catalog: Catalog::new(),
            registry: None,
            shutdown: CancellationToken::new(),
            tasks: Vec::new(),
            brokers,
            config: cfg,
            cluster,
            _data_dir: None,
            // Views read from the snapshot on disk match it until they change.
            snapshot_writes: Arc::new(std::sync::atomic::AtomicU64::new(if restored {
                0
            } else {
                u64::MAX
            })),
        })
    }

    fn spawn<F>(&mut self, name: &'static str, task: F)
    where
        F: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        self.tasks.push((name, tokio::spawn(task)));
    }

    /// Models: the catalog (what the edge accepts) everywhere, the loaded
    /// models where inference runs (with an engine).
    fn follow_models(&mut self, engine: Option<&Arc<dyn model::Engine>>) -> anyhow::Result<()> {
        self.registry = engine.map(|e| Registry::new(e.clone(), self.blobs.clone()));
        let (kafka, brokers, catalog, registry, token) = (
            self.config.kafka.clone(),
            self.brokers.clone(),
            self.catalog.clone(),
            self.registry.clone(),
            self.shutdown.clone(),
        );
        self.spawn("models follower", async move {
            Ok(registry::follow(&kafka, &brokers, catalog, registry, token).await?)
        });
        Ok(())
    }

    /// The inference role: the worker in its stage's current consumer group.
    fn start_infer(&mut self) {
        let Some(registry) = self.registry.clone() else {
            return;
        };
        let worker = InferWorker {
            cfg: self.config.infer.clone(),
            uploads: self.config.uploads.clone(),
            kafka: self.config.kafka.clone(),
            brokers: self.brokers.clone(),
            registry,
            blobs: self.blobs.clone(),
            models_ready: self.catalog.ready(),
            group: String::new(),
        };
        let (gens, token) = (self.views.clone(), self.shutdown.clone());
        self.spawn("inference worker", async move {
            run_infer(worker, gens, token).await
        });
    }

    /// The projector role: one projector per view and generation, under a
    /// supervisor. Returns once the active ones have joined their groups, so
    /// that the first read-your-write does not wait out a group join.
    /// [`App::start`] calls it for [`Roles::projector`]; a test may call it
    /// later, on an app started without, to start them over a backlog.
    pub async fn start_projectors(&mut self) -> anyhow::Result<()> {
        let mut sup = Supervisor::new(
            self.views.clone(),
            &self.config,
            &self.brokers,
            self.watermarks.clone(),
            self.heads.clone(),
        )?;
        self.projectors = sup.start(&self.shutdown).await?;
        let token = self.shutdown.clone();
        self.spawn("projector supervisor", async move { sup.run(token).await });
        let wait = Duration::from_secs(30);
        let joined =
            futures::future::join_all(self.projectors.iter().map(|p| p.wait_assigned(wait)));
        if !joined.await.into_iter().all(|j| j) {
            tracing::warn!("a projector has no partitions yet; reads may lag");
        }
        Ok(())
    }

    /// An API process without projectors learns about view changes by
    /// following the topics behind the checkpoints (live updates, prompt
    /// `?after`).
    fn start_change_follower(&mut self) {
        let (kafka, brokers, views, wm, token) = (
            self.config.kafka.clone(),
            self.brokers.clone(),
            self.views.clone(),
            self.watermarks.clone(),
            self.shutdown.clone(),
        );
        self.spawn("change follower", async move {
            crate::project::follow::follow(&kafka, &brokers, views, wm, token)
                .await
                .context("change follower")
        });
    }

    /// The API role: the HTTP server, with its state built complete.
    async fn start_api(&mut self) -> anyhow::Result<()> {
        let cfg = &self.config.clone();
        // The recorder before the first request: what happens before the
        // first scrape counts too (the binary installs it at start already).
        let _ = crate::telemetry::prometheus();
        let auth = Arc::new(Auth::new(&cfg.auth).map_err(anyhow::Error::msg)?);
        if auth
            .load_jwks()
            .await
            .map_err(anyhow::Error::msg)?
            .is_some()
        {
            let (auth, every, token) = (
                auth.clone(),
                Duration::from_secs(cfg.auth.jwks_refresh_secs.max(1)),
                self.shutdown.clone(),
            );
            self.spawn("jwks refresh", async move {
                api::refresh_jwks(auth, every, token).await;
                Ok(())
            });
        }
        let state = AppState::new(
            cfg,
            api::Parts {
                producer: self.producer.clone(),
                views: self.views.clone(),
                heads: self.heads.clone(),
                auth,
                watermarks: self.watermarks.clone(),
                blobs: self.blobs.clone(),
                catalog: self.catalog.clone(),
                brokers: self.brokers.clone(),
                shutdown: self.shutdown.clone(),
            },
        );
        {
            let (state, token) = (state.clone(), self.shutdown.clone());
            self.spawn("limits", async move {
                state.forget_idle_callers(token).await;
                Ok(())
            });
        }
        // The embedded blob store is this data directory's: images a crash
        // left without their event are swept once the views caught up.
        if cfg.kafka.is_embedded()
            && cfg.uploads.sweep_at_start
            && self.projector(crate::view::cards::VIEW).is_some()
        {
            tokio::spawn(api::sweep_blobs_at_start(
                state.clone(),
                self.shutdown.clone(),
            ));
        }
        let (main, ops) = if cfg.http.ops_listen.is_empty() {
            (api::Listener::All, None)
        } else {
            let addr: SocketAddr = cfg
                .http
                .ops_listen
                .parse()
                .with_context(|| format!("http.ops_listen {:?}", cfg.http.ops_listen))?;
            (api::Listener::Api, Some(addr))
        };
        if let Some(addr) = ops {
            let ops_app = api::router_for(
                state.clone(),
                cfg.http.body_limit,
                api::Listener::Ops,
                cfg.http.ops_token,
            );
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding {addr} (http.ops_listen)"))?;
            self.ops_addr = Some(listener.local_addr()?);
            let token = self.shutdown.clone();
            self.spawn("ops http", async move {
                axum::serve(listener, ops_app)
                    .with_graceful_shutdown(async move { token.cancelled().await })
                    .await
                    .context("ops http server")
            });
        }
        let app = api::router_for(state, cfg.http.body_limit, main, cfg.http.ops_token);
        let listener = tokio::net::TcpListener::bind(cfg.http.listen)
            .await
            .with_context(|| format!("binding {}", cfg.http.listen))?;
        self.addr = Some(listener.local_addr()?);
        let token = self.shutdown.clone();
        self.spawn("http", async move {
            // With each connection's address: per-address read limits.
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(async move { token.cancelled().await })
            .await
            .context("http server")
        });
        Ok(())
    }

    /// The running projector of `view` (when this process projects).
    pub fn projector(&self, view: View) -> Option<&Arc<dyn ViewProjector>> {
        self.projectors.iter().find(|p| p.view() == view)
    }

    /// Records of the embedded log's journal that its in-process cluster
    /// could not keep at start, which the projectors read from its journal
    /// (see `bus::durable::Restored::dropped`).
    pub fn dropped_at_start(&self) -> u64 {
        self.cluster
            .as_ref()
            .and_then(|c| c.durable())
            .map_or(0, |d| d.restored().dropped)
    }

    /// The API's base URL.
    pub fn url(&self) -> String {
        self.addr.map(|a| format!("http://{a}")).unwrap_or_default()
    }

    /// Waits until a task ends (an error, or shutdown), then stops the rest.
    pub async fn wait(mut self) -> anyhow::Result<()> {
        let mut first_err = None;
        if !self.tasks.is_empty() {
            let (res, idx, _) =
                futures::future::select_all(self.tasks.iter_mut().map(|(_, t)| t)).await;
            let name = self.tasks[idx].0;
            match res {
                Ok(Ok(())) => {}
                Ok(Err(e)) => first_err = Some(e.context(name)),
                Err(e) => first_err = Some(anyhow::anyhow!("{name} panicked: {e}")),
            }
            self.tasks.remove(idx);
        }
        let rest = self.stop().await;
        match first_err {
            Some(e) => Err(e),
            None => rest,
        }
    }

    /// The views' snapshot writer, on the embedded default with its
    /// durable log and snapshots on.
    fn snapshotter(&self) -> Option<Snapshotter> {
        let durable = self.cluster.as_ref()?.durable()?.clone();
        (self.config.views.snapshot_secs > 0 && self.views.base().as_embedded().is_some()).then(
            || Snapshotter {
                views: self.views.clone(),
                durable,
                path: snapshot_path(&self.config),
                on_disk: self.snapshot_writes.clone(),
            },
        )
    }

    /// Snapshots the embedded views every `views.snapshot_secs` when they
    /// changed.
    fn start_snapshots(&mut self) {
        let Some(s) = self.snapshotter() else { return };
        let every = Duration::from_secs(self.config.views.snapshot_secs);
        let token = self.shutdown.clone();
        let s = Arc::new(s);
        self.spawn("view snapshots", async move {
            loop {
                tokio::select! {
                    _ = token.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(every) => {}
                }
                let job = s.clone();
                if let Err(e) = tokio::task::spawn_blocking(move || job.save()).await? {
                    tracing::warn!(error = %e, "a view snapshot failed; the last one stays")
                }
            }
        });
    }

    /// Stops everything: cancel, drain, flush.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        let mut result = Ok(());
        for (name, t) in self.tasks.drain(..) {
            match tokio::time::timeout(Duration::from_secs(20), t).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => result = Err(e.context(name)),
                Ok(Err(e)) => result = Err(anyhow::anyhow!("{name} panicked: {e}")),
                Err(_) => result = Err(anyhow::anyhow!("{name} did not stop within 20 s")),
            }
        }
        let _ = self.producer.flush(Duration::from_secs(5));
        // The projectors have stopped: what the views hold now is what the
        // next start begins from.
        if let Some(s) = self.snapshotter() {
            match tokio::task::spawn_blocking(move || s.save()).await {
                Ok(Err(e)) => tracing::warn!(error = %e, "the last view snapshot failed"),
                Err(e) => tracing::warn!(error = %e, "the last view snapshot failed"),
                Ok(Ok(_)) => {}
            }
        }
        // Clients first, the mock cluster last: a client outliving its
        // cluster logs "all brokers down" on its way out.
        let cluster = self.cluster.take();
        drop(self);
        drop(cluster);
        result
    }
}

/// Where the embedded views' snapshot lives.
fn snapshot_path(cfg: &Config) -> std::path::PathBuf {
    cfg.data_dir.join("views.snapshot")
}

/// The view stores. On the embedded default with its durable log, they
/// are read from the last snapshot when it is whole and the log holds
/// everything it applied; otherwise (none, damaged, or ahead of the log)
/// they start empty and the projectors rebuild them from the log.
async fn open_views(
    cfg: &Config,
    durable: Option<&Arc<crate::bus::durable::Durable>>,
    snapshot: Option<Result<Option<view::snapshot::Restored>, view::snapshot::SnapshotError>>,
) -> anyhow::Result<(Arc<Generations>, bool)> {
    if let (Some(d), Some(read)) = (durable, snapshot) {
        let path = snapshot_path(cfg);
        let refuse = |why: String| {
            let aside = path.with_extension("unusable");
            tracing::warn!(
                snapshot = %path.display(),
                moved_to = %aside.display(),
                %why,
                "the view snapshot is not used: the views are rebuilt from the log"
            );
            let _ = std::fs::rename(&path, &aside);
        };
        match read {
            Ok(Some(r)) => match ahead_of_log(&r, d).await {
                None => {
                    tracing::info!(
                        snapshot = %path.display(),
                        bytes = r.bytes,
                        took_ms = r.took.as_millis() as u64,
                        "the views start from their snapshot"
                    );
                    if let Some(spill) = open_spill(cfg, false)? {
                        r.base.attach(&spill, view::embedded::BASE_TAG);
                        for ((v, n), s) in &r.generations {
                            if let Some(e) = s.as_embedded() {
                                e.attach(&spill, &view::embedded::generation_tag(*v, *n));
                            }
                        }
                        let removed = spill
                            .collect_unreferenced()
                            .context("collecting the view spill file's garbage")?;
                        if removed > 0 {
                            tracing::info!(
                                removed,
                                "partitions of cleared views removed from the spill file"
                            );
                        }
                    }
                    return Ok((
                        Generations::with_stores(r.base, r.generations, &cfg.views),
                        true,
                    ));
                }
                Some(why) => refuse(why),
            },
            Ok(None) => {}
            Err(e) => refuse(e.to_string()),
        }
    }
    let base = view::open(&cfg.views)
        .await
        .context("opening the view store")?;
    if durable.is_some()
        && let Some(e) = base.as_embedded()
        && let Some(spill) = open_spill(cfg, true)?
    {
        e.attach(&spill, view::embedded::BASE_TAG);
    }
    Ok((Generations::new(base, &cfg.views), false))
}

/// Where the embedded views' partitions past their memory budget go.
pub fn spill_path(cfg: &Config) -> std::path::PathBuf {
    cfg.data_dir.join("views.spill")
}

/// The embedded views' spill file under their memory budget (`None`: no
/// budget); `fresh` empties it (the views are rebuilt from the log).
fn open_spill(
    cfg: &Config,
    fresh: bool,
) -> anyhow::Result<Option<Arc<view::embedded::spill::Spill>>> {
    let path = spill_path(cfg);
    let budget = match cfg.views.memory_mb {
        // Without a budget nothing is spilled, but partitions an earlier
        // run spilled are still read back from the file.
        0 if !fresh && path.exists() => u64::MAX,
        0 => {
            let _ = std::fs::remove_file(&path);
            return Ok(None);
        }
        mb => mb << 20,
    };
    let spill =
        view::embedded::spill::Spill::open(&path, budget, fresh, cfg.views.snapshot_secs > 0)
            .with_context(|| format!("opening the views' spill file {}", path.display()))?;
    Ok(Some(spill))
}

/// Why a snapshot's views cannot be continued from the log (a checkpoint
/// past what the journal holds: the log lost what the views applied).
async fn ahead_of_log(
    r: &view::snapshot::Restored,
    d: &crate::bus::durable::Durable,
) -> Option<String> {
    let base: Arc<dyn view::Store> = r.base.clone();
    let stores = std::iter::once(&base).chain(r.generations.iter().map(|(_, s)| s));
    for store in stores {
        for v in [view::polls::VIEW, view::feed::VIEW, view::cards::VIEW] {
            let cps = match store.checkpoints(v.as_str()).await {
                Ok(c) => c,
                Err(e) => return Some(e.to_string()),
            };
            for cp in cps {
                match d.mark(&(cp.topic.clone(), cp.partition)) {
                    Some(m) if cp.offset < m => {}
                    m => {
                        return Some(format!(
                            "its {} checkpoint of {} [{}] is at offset {}, the log holds {}",
                            v.as_str(),
                            cp.topic,
                            cp.partition,
                            cp.offset,
                            m.map_or("no such partition".to_owned(), |m| format!("{m} records"))
                        ));
                    }
                }
            }
        }
    }
    None
}

/// Writes the embedded views' snapshot (see `view::snapshot`).
struct Snapshotter {
    views: Arc<Generations>,
    durable: Arc<crate::bus::durable::Durable>,
    path: std::path::PathBuf,
    /// The views' write count when the snapshot on disk was taken
    /// (`u64::MAX`: none matches them).
    on_disk: Arc<std::sync::atomic::AtomicU64>,
}

impl Snapshotter {
    /// Blocking, and only when the views changed since the snapshot on
    /// disk: serializes, waits until the journal holds everything the views
    /// may have applied, installs.
    fn save(&self) -> Result<Option<view::snapshot::Saved>, view::snapshot::SnapshotError> {
        use std::sync::atomic::Ordering;
        // Read before serializing: a write during it counts as a change.
        let writes = self.views.counts().1;
        if self.on_disk.load(Ordering::Relaxed) == writes {
            return Ok(None);
        }
        let d = self.durable.clone();
        let saved = view::snapshot::save(&self.views, &self.path, move || {
            d.barrier(Duration::from_secs(30))
                .map_err(|e| e.to_string())
        })?;
        if let Some(s) = saved {
            self.on_disk.store(writes, Ordering::Relaxed);
            tracing::info!(
                bytes = s.bytes,
                took_ms = s.took.as_millis() as u64,
                "view snapshot written"
            );
        }
        Ok(saved)
    }
}

/// Runs the inference worker in its stage's current consumer group, and
/// moves it to the next group when `replay --stage infer` starts one: the
/// worker drains (in-flight uploads commit in the old group), then starts
/// over in the new one.
async fn run_infer(
    proto: InferWorker,
    gens: Arc<Generations>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let current = || async {
        gens.row(crate::infer::replay::STAGE)
            .await
            .map(|g| g.active)
    };
    let mut generation = loop {
        match current().await {
            Ok(g) => break g,
            Err(e) => {
                tracing::warn!(error = %e, "reading the inference stage's generation");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    };
    loop {
        let mut w = proto.clone();
        w.group = crate::infer::replay::infer_group(generation);
        let child = shutdown.child_token();
        tracing::info!(group = %w.group, "inference worker starting");
        let mut task = tokio::spawn(w.run(child.clone()));
        loop {
            tokio::select! {
                r = &mut task => {
                    r.context("inference worker panicked")??;
                    return Ok(());
                }
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            if let Ok(g) = current().await
                && g != generation
            {
                child.cancel();
                (&mut task).await.context("inference worker panicked")??;
                generation = g;
                break;
            }
        }
        if shutdown.is_cancelled() {
            return Ok(());
        }
    }
}

/// Publishes every `{style}.pt` of `infer.models_dir` whose style has no
/// model with the same bytes yet (the embedded log starts empty on every
/// `atelier up`; on real Kafka this is a no-op after the first start).
async fn bootstrap_models(
    app: &App,
    engine: Option<&Arc<dyn model::Engine>>,
) -> anyhow::Result<()> {
    let dir = Path::new(&app.config.infer.models_dir);
    let Some(engine) = engine else {
        tracing::warn!(
            dir = %dir.display(),
            "infer.models_dir is set but this process runs no model engine; not publishing"
        );
        return Ok(());
    };
    let mut ready = app.catalog.ready();
    tokio::time::timeout(Duration::from_secs(60), ready.wait_for(|r| *r))
        .await
        .context("reading the models topic")?
        .context("reading the models topic")?;
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("infer.models_dir {}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "pt"))
        .collect();
    files.sort();
    let mut published = Vec::new();
    for path in files {
        let Some(style) = path
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| Style::parse(s).ok())
        else {
            continue;
        };
        let bytes = bytes::Bytes::from(std::fs::read(&path)?);
        let sha = registry::sha256_hex(&bytes);
        if app.catalog.get(&style).is_some_and(|p| p.sha256 == sha) {
            continue;
        }
        let (p, _) = publish::publish(
            engine,
            app.blobs.as_ref(),
            &app.producer,
            style,
            None,
            bytes,
        )
        .await
        .with_context(|| format!("publishing {}", path.display()))?;
        // Known at once (the follower will say the same a moment later).
        app.catalog.publish(&p);
        published.push((p.style, p.version));
    }
    // The inference worker starts after this: every model it may be asked
    // for is loaded first (the follower installs what was just published).
    if let Some(reg) = &app.registry {
        let loaded = || {
            published
                .iter()
                .all(|(s, v)| reg.get(s).is_some_and(|l| l.version == *v))
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        while !loaded() {
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "the published models were not loaded within 120 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    Ok(())
}

/// Deletes a run's topics (its namespace) and its keyspace on real
/// services, best effort: for benchmarks and tests, which each use their own.
pub async fn delete_run_data(cfg: &Config) {
    if !cfg.kafka.is_embedded() {
        let names: Vec<String> = Topic::ALL.iter().map(|&t| cfg.kafka.topic(t)).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        let deleted = match client_config(&cfg.kafka, &cfg.kafka.brokers)
            .create::<AdminClient<DefaultClientContext>>()
        {
            Ok(admin) => admin
                .delete_topics(&refs, &opts)
                .await
                .map_err(|e| e.to_string())
                .and_then(|rs| {
                    rs.into_iter()
                        .try_for_each(|r| r.map(drop).map_err(|(t, e)| format!("{t}: {e}")))
                }),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = deleted {
            eprintln!("warning: deleting the run's topics: {e}");
        }
    }
    if cfg.views.backend == ViewBackend::Cql {
        let mut b = scylla::client::session_builder::SessionBuilder::new()
            .known_nodes(&cfg.views.contact_points);
        if !cfg.views.username.is_empty() {
            b = b.user(&cfg.views.username, cfg.views.password.expose());
        }
        let dropped = match b.build().await {
            Ok(s) => s
                .query_unpaged(
                    format!("DROP KEYSPACE IF EXISTS {}", cfg.views.keyspace),
                    (),
                )
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = dropped {
            eprintln!("warning: dropping keyspace {}: {e}", cfg.views.keyspace);
        }
    }
}

/// Cancels `token` on SIGINT or SIGTERM.
pub fn cancel_on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let mut term = match signal(SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return,
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutting down");
        token.cancel();
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_directory_is_held_by_one_process_and_read_only_in_its_format() {
        let dir = tempfile::tempdir().unwrap();
        let held = DataDir::claim(dir.path()).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("FORMAT")).unwrap(),
            format!("atelier-data {DATA_FORMAT}\n")
        );
        let e = DataDir::claim(dir.path()).unwrap_err().to_string();
        assert!(e.contains("another atelier process"), "{e}");
        assert!(e.contains(&std::process::id().to_string()), "{e}");
        drop(held);
        let again = DataDir::claim(dir.path()).unwrap();
        drop(again);
        std::fs::write(dir.path().join("FORMAT"), "atelier-data 99\n").unwrap();
        let e = DataDir::claim(dir.path()).unwrap_err().to_string();
        assert!(e.contains("has format 99"), "{e}");
        assert!(e.contains("reads format 1"), "{e}");
        std::fs::write(dir.path().join("FORMAT"), "something else").unwrap();
        let e = DataDir::claim(dir.path()).unwrap_err().to_string();
        assert!(e.contains("not an atelier data format file"), "{e}");
    }
}
