//! View generations: a view can be rebuilt from the log into a new
//! generation while the current one keeps serving reads, then swapped in
//! atomically.
//!
//! - One control row per view (`active`, `building`, `phase`, `retired`,
//!   `rev`) lives in the base store; every change is a compare-and-set on
//!   `rev`, so concurrent supervisors agree on one outcome.
//! - Generation 0 is the base store (the configured keyspace); generation
//!   `n ≥ 1` of view `v` is a store of its own (keyspace `{ks}_{v}_g{n}`, or
//!   a separate embedded store), so a rebuild never touches what readers see
//!   and garbage collection drops a whole keyspace.
//! - Readers ask [`Generations`] for a view's store (`polls()`, `feed()`,
//!   `cards()`): routing to the active generation happens once per view and
//!   request, through a short cache of the control rows.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use super::{CqlStore, EmbeddedStore, Store, View, ViewError};
use crate::config::{ViewBackend, ViewsConfig};

/// Where a rebuild stands.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Nothing is being rebuilt.
    #[default]
    Idle,
    /// `building` is catching up with the log's head.
    Building,
    /// The active generation's projectors stop; once `building` has applied
    /// everything the active one had, it becomes active.
    Swapping,
}

/// The control row of one view (or of the inference stage, whose
/// generation names its consumer group).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Generation {
    /// The view's name (or `infer`).
    pub view: String,
    /// The generation serving reads.
    pub active: u32,
    /// The generation being rebuilt.
    pub building: Option<u32>,
    /// Where the rebuild stands.
    pub phase: Phase,
    /// The rebuild starts at the first record at or after this time
    /// (milliseconds since the epoch); `None`: the log's start.
    pub from_ms: Option<i64>,
    /// When the rebuild started (ms).
    pub started_ms: Option<i64>,
    /// When the last swap happened (ms).
    pub swapped_ms: Option<i64>,
    /// Earlier generations whose data is still stored (`atelier replay gc`
    /// drops them).
    pub retired: Vec<u32>,
    /// The highest generation number ever used (never reused: its consumer
    /// group may still hold offsets).
    #[serde(default)]
    pub last: u32,
    /// Bumped by every change (compare-and-set).
    pub rev: i64,
}

impl Generation {
    /// The row of a view (or stage) never rebuilt.
    pub fn initial(view: &str) -> Self {
        Self {
            view: view.to_owned(),
            active: 0,
            building: None,
            phase: Phase::Idle,
            from_ms: None,
            started_ms: None,
            swapped_ms: None,
            retired: Vec::new(),
            last: 0,
            rev: 0,
        }
    }

    /// The highest generation number this row knows of.
    pub fn highest(&self) -> u32 {
        self.retired
            .iter()
            .copied()
            .chain([self.active])
            .chain(self.building)
            .max()
            .unwrap_or(0)
    }
}

/// The control rows as stored; a view (or stage) without one was never
/// rebuilt.
#[derive(Clone, Debug, Default)]
pub struct Rows(BTreeMap<String, Generation>);

impl Rows {
    /// The row of `name` (its initial row when none is stored).
    pub fn get(&self, name: &str) -> Generation {
        self.0
            .get(name)
            .cloned()
            .unwrap_or_else(|| Generation::initial(name))
    }

    /// The stored rows.
    pub fn stored(&self) -> impl Iterator<Item = &Generation> {
        self.0.values()
    }
}

/// How long readers trust their copy of the control rows.
pub const READ_CACHE: Duration = Duration::from_millis(500);

/// The generation stores of a process and the cached control rows: every
/// read of a view goes to the store of its active generation.
#[derive(Debug)]
pub struct Generations {
    base: Arc<dyn Store>,
    cfg: ViewsConfig,
    stores: RwLock<HashMap<(View, u32), Arc<dyn Store>>>,
    rows: RwLock<(Option<Instant>, Rows)>,
    refreshing: tokio::sync::Mutex<()>,
    /// When the control table last failed to read, while it keeps failing:
    /// retried at most every [`READ_CACHE`], reported once per outage.
    failed_at: parking_lot::Mutex<Option<Instant>>,
}

impl Generations {
    /// Over the base store (generation 0 of every view, and the control
    /// rows).
    pub fn new(base: Arc<dyn Store>, cfg: &ViewsConfig) -> Arc<Self> {
        Arc::new(Self {
            base,
            cfg: cfg.clone(),
            stores: RwLock::new(HashMap::new()),
            rows: RwLock::new((None, Rows::default())),
            refreshing: tokio::sync::Mutex::new(()),
            failed_at: parking_lot::Mutex::new(None),
        })
    }

    /// Over the base store and other generations' stores already open
    /// (read from a snapshot).
    pub fn with_stores(
        base: Arc<dyn Store>,
        stores: Vec<((View, u32), Arc<dyn Store>)>,
        cfg: &ViewsConfig,
    ) -> Arc<Self> {
        let g = Self::new(base, cfg);
        g.stores.write().extend(stores);
        g
    }

    /// The stores of generations other than 0 this process has open.
    pub fn opened(&self) -> Vec<((View, u32), Arc<dyn Store>)> {
        self.stores
            .read()
            .iter()
            .map(|(k, s)| (*k, s.clone()))
            .collect()
    }

    /// `embedded` or `cql`.
    pub fn backend(&self) -> &'static str {
        self.base.backend()
    }

    /// The base store.
    pub fn base(&self) -> &Arc<dyn Store> {
        &self.base
    }

    /// Reads the control rows now (and caches them).
    pub async fn refresh(&self) -> Result<Rows, ViewError> {
        let rows = Rows(
            self.base
                .generations()
                .await?
                .into_iter()
                .map(|g| (g.view.clone(), g))
                .collect(),
        );
        *self.rows.write() = (Some(Instant::now()), rows.clone());
        Ok(rows)
    }

    /// The control row of `name` (a view's, or `infer`), from a copy at most
    /// [`READ_CACHE`] old. When the control table cannot be read, the last
    /// copy is used (reads keep working through a blip of the store).
    pub async fn row(&self, name: &str) -> Result<Generation, ViewError> {
        {
            let rows = self.rows.read();
            if rows.0.is_some_and(|t| t.elapsed() < READ_CACHE) {
                return Ok(rows.1.get(name));
            }
        }
        let retry = self
            .failed_at
            .lock()
            .is_none_or(|t| t.elapsed() >= READ_CACHE);
        // One refresh at a time; the others use the copy they have.
        if retry && let Ok(_guard) = self.refreshing.try_lock() {
            match self.refresh().await {
                Ok(rows) => {
                    if self.failed_at.lock().take().is_some() {
                        tracing::info!("view generations readable again");
                    }
                    return Ok(rows.get(name));
                }
                Err(e) if self.rows.read().0.is_none() => return Err(e),
                Err(e) => {
                    if self.failed_at.lock().replace(Instant::now()).is_none() {
                        tracing::warn!(error = %e, "reading view generations; using the last copy \
                            until the store answers again")
                    }
                }
            }
        }
        Ok(self.rows.read().1.get(name))
    }

    /// Remembers a row this process just wrote (readers here switch at
    /// once instead of after the cache's age).
    pub fn remember(&self, g: &Generation) {
        let mut rows = self.rows.write();
        let newer = rows.1.0.get(&g.view).is_none_or(|old| old.rev < g.rev);
        if newer {
            rows.1.0.insert(g.view.clone(), g.clone());
        }
    }

    /// The store of one generation of a view (opened and migrated on first
    /// use).
    pub async fn store(&self, view: View, generation: u32) -> Result<Arc<dyn Store>, ViewError> {
        if generation == 0 {
            return Ok(self.base.clone());
        }
        if let Some(s) = self.stores.read().get(&(view, generation)) {
            return Ok(s.clone());
        }
        let store: Arc<dyn Store> = match self.cfg.backend {
            ViewBackend::Embedded => Arc::new(match self.base.as_embedded() {
                Some(base) => base.sibling(view, generation),
                None => EmbeddedStore::default(),
            }),
            ViewBackend::Cql => {
                let mut cfg = self.cfg.clone();
                cfg.keyspace = keyspace(&self.cfg.keyspace, view, generation);
                Arc::new(CqlStore::connect(&cfg).await?)
            }
        };
        store.migrate().await?;
        Ok(self
            .stores
            .write()
            .entry((view, generation))
            .or_insert(store)
            .clone())
    }

    /// The store serving reads of `view` now: routing is per view, and each
    /// view's store module offers a typed accessor over this
    /// (`Generations::polls`, ...).
    pub async fn active(&self, view: View) -> Result<Arc<dyn Store>, ViewError> {
        let g = self.row(view.as_str()).await?;
        self.store(view, g.active).await
    }

    /// Deletes a generation's data (never the active one).
    pub async fn drop_generation(&self, view: View, generation: u32) -> Result<(), ViewError> {
        let store = self.store(view, generation).await?;
        if generation == 0 {
            store.drop_view(view).await?;
        } else {
            store.drop_store().await?;
            self.stores.write().remove(&(view, generation));
        }
        Ok(())
    }

    /// Statements executed by every store this process opened: `(reads,
    /// writes)`.
    pub fn counts(&self) -> (u64, u64) {
        let (mut r, mut w) = self.base.counts();
        for s in self.stores.read().values() {
            let (r2, w2) = s.counts();
            r += r2;
            w += w2;
        }
        (r, w)
    }

    /// Requests made by every store this process opened (see
    /// [`super::Store::requests`]).
    pub fn requests(&self) -> u64 {
        self.base.requests()
            + self
                .stores
                .read()
                .values()
                .map(|s| s.requests())
                .sum::<u64>()
    }
}

/// The keyspace of generation `n ≥ 1` of a view.
pub fn keyspace(base: &str, view: View, n: u32) -> String {
    format!("{base}_{}_g{n}", view.as_str())
}
