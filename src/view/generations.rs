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
//! - Readers go through [`RoutedStore`], which sends each read to its view's
//!   active generation, consulting the control rows through a short cache.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use super::{
    Checkpoint, CqlStore, EmbeddedStore, FeedCursor, OwnerCursor, OwnerPollRow, TimelineRow,
    ViewError, ViewStore, VoterRow,
};
use crate::config::{ViewBackend, ViewsConfig};
use crate::event::{FeedItemId, PollId, QuestionId, SessionKey, Topic, UploadId, UserId};
use crate::fold::cards::{Card, Patch};
use crate::fold::feed::{FeedKind, ItemCommit, ItemState, Member, MemberKey};
use crate::fold::poll::{Ballot, PollCommit, PollState, VoterKey};

/// A materialized view that can be rebuilt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum View {
    /// Polls, ballots, voters, polls by owner.
    Polls,
    /// Feed items, memberships, timelines.
    Feed,
    /// Session cards and upload status.
    Cards,
    /// Not a view: the inference stage, whose generation names its consumer
    /// group (`replay --stage infer` starts a new one to re-run uploads).
    Infer,
}

impl View {
    /// Every view.
    pub const ALL: [View; 3] = [View::Polls, View::Feed, View::Cards];

    /// The name in checkpoints, control rows and URLs.
    pub fn as_str(self) -> &'static str {
        match self {
            View::Polls => "polls",
            View::Feed => "feed",
            View::Cards => "cards",
            View::Infer => "infer",
        }
    }

    /// From its name.
    pub fn parse(s: &str) -> Option<View> {
        View::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// The topics folded into it.
    pub fn topics(self) -> &'static [Topic] {
        match self {
            View::Polls => &[Topic::Polls],
            View::Feed => &[Topic::Feed],
            View::Cards => &[Topic::Uploads, Topic::Completions],
            View::Infer => &[Topic::Uploads],
        }
    }
}

/// Where a rebuild stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
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

/// The control row of one view.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Generation {
    /// The view.
    pub view: View,
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
    /// The row of a view never rebuilt.
    pub fn initial(view: View) -> Self {
        Self {
            view,
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

/// How long readers trust their copy of the control rows.
pub const READ_CACHE: Duration = Duration::from_millis(500);

/// The generation stores of a process and the cached control rows.
#[derive(Debug)]
pub struct Generations {
    base: Arc<dyn ViewStore>,
    cfg: ViewsConfig,
    stores: RwLock<HashMap<(View, u32), Arc<dyn ViewStore>>>,
    rows: RwLock<(Option<Instant>, BTreeMap<View, Generation>)>,
    refreshing: tokio::sync::Mutex<()>,
}

impl Generations {
    /// Over the base store (generation 0 of every view, and the control
    /// rows).
    pub fn new(base: Arc<dyn ViewStore>, cfg: &ViewsConfig) -> Arc<Self> {
        Arc::new(Self {
            base,
            cfg: cfg.clone(),
            stores: RwLock::new(HashMap::new()),
            rows: RwLock::new((None, BTreeMap::new())),
            refreshing: tokio::sync::Mutex::new(()),
        })
    }

    /// The base store.
    pub fn base(&self) -> &Arc<dyn ViewStore> {
        &self.base
    }

    /// Reads the control rows now (and caches them).
    pub async fn refresh(&self) -> Result<BTreeMap<View, Generation>, ViewError> {
        let mut rows: BTreeMap<View, Generation> = View::ALL
            .into_iter()
            .chain([View::Infer])
            .map(|v| (v, Generation::initial(v)))
            .collect();
        for g in self.base.generations().await? {
            rows.insert(g.view, g);
        }
        *self.rows.write() = (Some(Instant::now()), rows.clone());
        Ok(rows)
    }

    /// The control row of `view`, from a copy at most [`READ_CACHE`] old.
    /// When the control table cannot be read, the last copy is used (reads
    /// keep working through a blip of the store).
    pub async fn row(&self, view: View) -> Result<Generation, ViewError> {
        {
            let rows = self.rows.read();
            if rows.0.is_some_and(|t| t.elapsed() < READ_CACHE)
                && let Some(g) = rows.1.get(&view)
            {
                return Ok(g.clone());
            }
        }
        // One refresh at a time; the others use the copy they have.
        if let Ok(_guard) = self.refreshing.try_lock() {
            match self.refresh().await {
                Ok(rows) => return Ok(rows[&view].clone()),
                Err(e) if self.rows.read().0.is_none() => return Err(e),
                Err(e) => {
                    tracing::warn!(error = %e, "reading view generations; using the last copy")
                }
            }
        }
        let rows = self.rows.read();
        Ok(rows
            .1
            .get(&view)
            .cloned()
            .unwrap_or_else(|| Generation::initial(view)))
    }

    /// Remembers a row this process just wrote (readers here switch at
    /// once instead of after the cache's age).
    pub fn remember(&self, g: &Generation) {
        let mut rows = self.rows.write();
        let newer = rows.1.get(&g.view).is_none_or(|old| old.rev < g.rev);
        if newer {
            rows.1.insert(g.view, g.clone());
        }
    }

    /// The store of one generation of a view (opened and migrated on first
    /// use).
    pub async fn store(
        &self,
        view: View,
        generation: u32,
    ) -> Result<Arc<dyn ViewStore>, ViewError> {
        if generation == 0 {
            return Ok(self.base.clone());
        }
        if let Some(s) = self.stores.read().get(&(view, generation)) {
            return Ok(s.clone());
        }
        let store: Arc<dyn ViewStore> = match self.cfg.backend {
            ViewBackend::Embedded => Arc::new(EmbeddedStore::default()),
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

    /// The store serving reads of `view` now.
    pub async fn active(&self, view: View) -> Result<Arc<dyn ViewStore>, ViewError> {
        let g = self.row(view).await?;
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

    /// Statement counts of every store this process opened.
    fn counts(&self) -> (u64, u64) {
        let (mut r, mut w) = self.base.counts();
        for s in self.stores.read().values() {
            let (r2, w2) = s.counts();
            r += r2;
            w += w2;
        }
        (r, w)
    }
}

/// The keyspace of generation `n ≥ 1` of a view.
pub fn keyspace(base: &str, view: View, n: u32) -> String {
    format!("{base}_{}_g{n}", view.as_str())
}

/// A view store that sends each call to its view's active generation. The
/// API and the change follower read through it; projectors write to their
/// own generation's store directly.
#[derive(Debug, Clone)]
pub struct RoutedStore {
    gens: Arc<Generations>,
}

impl RoutedStore {
    /// Routing over `gens`.
    pub fn new(gens: Arc<Generations>) -> Self {
        Self { gens }
    }

    async fn polls(&self) -> Result<Arc<dyn ViewStore>, ViewError> {
        self.gens.active(View::Polls).await
    }

    async fn feed(&self) -> Result<Arc<dyn ViewStore>, ViewError> {
        self.gens.active(View::Feed).await
    }

    async fn cards_store(&self) -> Result<Arc<dyn ViewStore>, ViewError> {
        self.gens.active(View::Cards).await
    }

    async fn of(&self, view: &str) -> Result<Arc<dyn ViewStore>, ViewError> {
        match View::parse(view) {
            Some(v) => self.gens.active(v).await,
            None => Ok(self.gens.base.clone()),
        }
    }
}

#[async_trait]
impl ViewStore for RoutedStore {
    fn backend(&self) -> &'static str {
        self.gens.base.backend()
    }
    fn counts(&self) -> (u64, u64) {
        self.gens.counts()
    }
    async fn migrate(&self) -> Result<(), ViewError> {
        self.gens.base.migrate().await
    }
    async fn generations(&self) -> Result<Vec<Generation>, ViewError> {
        self.gens.base.generations().await
    }
    async fn set_generation(&self, next: &Generation, expected: i64) -> Result<bool, ViewError> {
        self.gens.base.set_generation(next, expected).await
    }
    async fn drop_view(&self, view: View) -> Result<(), ViewError> {
        self.gens.active(view).await?.drop_view(view).await
    }
    async fn drop_store(&self) -> Result<(), ViewError> {
        Err(ViewError::Rejected(
            "the routed store is not one generation's store".into(),
        ))
    }
    async fn load_polls(&self, ids: &[PollId]) -> Result<Vec<PollState>, ViewError> {
        self.polls().await?.load_polls(ids).await
    }
    async fn load_ballots(
        &self,
        poll: PollId,
        voters: &[VoterKey],
    ) -> Result<Vec<(VoterKey, Ballot)>, ViewError> {
        self.polls().await?.load_ballots(poll, voters).await
    }
    async fn commit_poll(&self, commit: &PollCommit) -> Result<(), ViewError> {
        self.polls().await?.commit_poll(commit).await
    }
    async fn poll(&self, id: PollId) -> Result<Option<PollState>, ViewError> {
        self.polls().await?.poll(id).await
    }
    async fn polls_by_owner(
        &self,
        owner: &UserId,
        before: Option<OwnerCursor>,
        limit: usize,
    ) -> Result<Vec<OwnerPollRow>, ViewError> {
        self.polls()
            .await?
            .polls_by_owner(owner, before, limit)
            .await
    }
    async fn question_voters(
        &self,
        poll: PollId,
        question: QuestionId,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<VoterRow>, ViewError> {
        self.polls()
            .await?
            .question_voters(poll, question, after, limit)
            .await
    }
    async fn load_items(&self, ids: &[FeedItemId]) -> Result<Vec<ItemState>, ViewError> {
        self.feed().await?.load_items(ids).await
    }
    async fn load_members(
        &self,
        item: FeedItemId,
        keys: &[MemberKey],
    ) -> Result<Vec<(MemberKey, Member)>, ViewError> {
        self.feed().await?.load_members(item, keys).await
    }
    async fn commit_item(&self, commit: &ItemCommit) -> Result<(), ViewError> {
        self.feed().await?.commit_item(commit).await
    }
    async fn item(&self, id: FeedItemId) -> Result<Option<ItemState>, ViewError> {
        self.feed().await?.item(id).await
    }
    async fn timeline(
        &self,
        kind: Option<FeedKind>,
        before: Option<FeedCursor>,
        limit: usize,
    ) -> Result<Vec<TimelineRow>, ViewError> {
        self.feed().await?.timeline(kind, before, limit).await
    }
    async fn apply_patches(&self, cards: &[&Patch], uploads: &[&Patch]) -> Result<(), ViewError> {
        self.cards_store()
            .await?
            .apply_patches(cards, uploads)
            .await
    }
    async fn cards(&self, session: &SessionKey) -> Result<Vec<Card>, ViewError> {
        self.cards_store().await?.cards(session).await
    }
    async fn upload(&self, id: UploadId) -> Result<Option<Card>, ViewError> {
        self.cards_store().await?.upload(id).await
    }
    async fn checkpoint(
        &self,
        view: &str,
        topic: &str,
        partition: i32,
    ) -> Result<Option<Checkpoint>, ViewError> {
        self.of(view)
            .await?
            .checkpoint(view, topic, partition)
            .await
    }
    async fn save_checkpoint(&self, cp: &Checkpoint) -> Result<(), ViewError> {
        self.of(&cp.view).await?.save_checkpoint(cp).await
    }
    async fn checkpoints(&self, view: &str) -> Result<Vec<Checkpoint>, ViewError> {
        self.of(view).await?.checkpoints(view).await
    }
    async fn scan_polls(
        &self,
        after: Option<PollId>,
        limit: usize,
    ) -> Result<(Vec<PollState>, Option<PollId>), ViewError> {
        self.polls().await?.scan_polls(after, limit).await
    }
}
