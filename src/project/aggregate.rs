//! The [`Projection`] of a read-modify-write aggregate (polls, feed items),
//! generic over its fold ([`Aggregate`]) and its store
//! ([`AggregateStore`]). Per batch:
//!
//! 1. group the events by aggregate, in log order;
//! 2. load the states (bounded LRU cache per partition first, then one read
//!    per missing aggregate) and only the rows the batch touches;
//! 3. fold in log order (the pure fold skips what the version covers),
//!    cutting a commit every `commit_rows` changed rows, so no single write
//!    grows huge;
//! 4. write the batch's derived rows, grouped by partition where the store
//!    can, then each aggregate's commits in order, aggregates concurrently
//!    (bounded by `write_concurrency`).

use std::num::NonZeroUsize;
use std::sync::Arc;

use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use lru::LruCache;
use parking_lot::Mutex;
use rustc_hash::FxHashMap as HashMap;

use super::Change;
use super::runtime::{Announce, BatchStats, Positioned, Projection};
use crate::config::ProjectorConfig;
use crate::fold::{Aggregate, Outcome, Position, Reason, Versioned};
use crate::telemetry::emit;
use crate::view::{AggregateStore, Checkpoint, View, ViewError};

/// Cached states, by partition and aggregate.
type Cache<A> = Mutex<LruCache<(i32, <A as Aggregate>::Id), <A as Aggregate>::State>>;

/// Every row of an aggregate, as this projector wrote them.
/// Keys are aggregate ids and row keys (authenticated user ids, or their
/// keyed hashes), as in the folds' own maps: a fast hasher is acceptable.
type RowSet<A> = HashMap<<A as Aggregate>::Key, <A as Aggregate>::Row>;

/// The rows of aggregates this projector knows whole, so that their
/// events read no row from the store: those created while it owned their
/// partition (it wrote every row they have), bounded in rows altogether
/// (`cache_rows`), least recently used dropped first.
struct KnownRows<A: Aggregate> {
    sets: LruCache<(i32, A::Id), RowSet<A>>,
    rows: usize,
    cap: usize,
}

impl<A: Aggregate> KnownRows<A> {
    fn forget(&mut self, key: &(i32, A::Id)) {
        if let Some(set) = self.sets.pop(key) {
            self.rows -= set.len();
        }
    }

    /// Applies a batch's durable commits to a known (or newly created)
    /// aggregate, moving their rows in.
    fn apply(&mut self, key: (i32, A::Id), commits: Vec<A::Commit>) {
        let set = self.sets.get_or_insert_mut(key, HashMap::default);
        let before = set.len();
        for c in commits {
            for (k, r) in A::into_rows(c) {
                match r {
                    Some(r) => {
                        set.insert(k, r);
                    }
                    None => {
                        set.remove(&k);
                    }
                }
            }
        }
        let after = set.len();
        self.rows = self.rows + after - before;
        while self.rows > self.cap {
            match self.sets.pop_lru() {
                Some((_, set)) => self.rows -= set.len(),
                None => break,
            }
        }
    }
}

/// An aggregate view's projection.
pub struct Aggregates<A: Aggregate, S: ?Sized> {
    view: View,
    store: Arc<S>,
    fold: A::Config,
    cfg: ProjectorConfig,
    /// What a changed state announces.
    change: fn(&A::State) -> Change,
    cache: Cache<A>,
    known: Mutex<KnownRows<A>>,
}

impl<A: Aggregate, S: ?Sized> std::fmt::Debug for Aggregates<A, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Aggregates")
            .field("view", &self.view)
            .finish_non_exhaustive()
    }
}

impl<A: Aggregate, S: AggregateStore<A> + ?Sized> Aggregates<A, S> {
    /// The projection of `view` into `store`; `change` says what a changed
    /// state announces.
    pub fn new(
        view: View,
        store: Arc<S>,
        fold: A::Config,
        cfg: ProjectorConfig,
        change: fn(&A::State) -> Change,
    ) -> Self {
        let cap = NonZeroUsize::new(cfg.cache_aggregates.max(1)).expect("nonzero");
        Self {
            view,
            store,
            fold,
            change,
            cache: Mutex::new(LruCache::new(cap)),
            known: Mutex::new(KnownRows {
                sets: LruCache::unbounded(),
                rows: 0,
                cap: cfg.cache_rows,
            }),
            cfg,
        }
    }

    /// The aggregates of these groups, from the cache or the store, with
    /// the rows their events touch (from the rows known whole, or the
    /// store); and for each, whether this projector knows every row it
    /// will have (created here, or known whole already).
    async fn load(
        &self,
        partition: i32,
        groups: &[(A::Id, Vec<Positioned>)],
    ) -> Result<(Vec<A>, Vec<bool>), ViewError> {
        let mut states: HashMap<A::Id, A::State> = HashMap::default();
        let mut missing = Vec::new();
        {
            let mut cache = self.cache.lock();
            for (id, _) in groups {
                match cache.get(&(partition, *id)) {
                    Some(s) => {
                        states.insert(*id, s.clone());
                    }
                    None => missing.push(*id),
                }
            }
        }
        if !missing.is_empty() {
            for s in self.store.load(&missing).await? {
                states.insert(A::id(&s), s);
            }
        }
        let mut whole = Vec::with_capacity(groups.len());
        let loads: Vec<_> = {
            let mut known = self.known.lock();
            groups
                .iter()
                .map(|(id, events)| {
                    let state = states.remove(id);
                    let touched = match &state {
                        // Created in this batch: no row stored.
                        None => Vec::new(),
                        // Only the rows this batch touches, never all.
                        Some(s) => A::touched(&self.fold, s, events),
                    };
                    let set = known.sets.get(&(partition, *id));
                    whole.push(state.is_none() || set.is_some());
                    let mut agg = A::from_state(state);
                    let stored: Vec<A::Key> = match (set, agg.state()) {
                        (Some(set), _) => {
                            for k in touched {
                                let r = set.get(&k).cloned();
                                agg.load_row(k, r);
                            }
                            Vec::new()
                        }
                        (None, Some(s)) => {
                            let (absent, stored): (Vec<_>, Vec<_>) =
                                touched.into_iter().partition(|k| A::surely_absent(s, k));
                            for k in absent {
                                agg.load_row(k, None);
                            }
                            stored
                        }
                        (None, None) => Vec::new(),
                    };
                    async move {
                        if !stored.is_empty() {
                            let found = self.store.load_rows(*id, &stored).await?;
                            for k in stored {
                                agg.load_row(k, None);
                            }
                            for (k, r) in found {
                                agg.load_row(k, Some(r));
                            }
                        }
                        Ok::<_, ViewError>(agg)
                    }
                })
                .collect()
        };
        let aggs = futures::stream::iter(loads)
            .buffered(self.cfg.write_concurrency.max(1))
            .try_collect()
            .await?;
        Ok((aggs, whole))
    }
}

/// What a batch of aggregates writes, and their states once it is durable.
#[allow(missing_debug_implementations)]
pub struct Plan<A: Aggregate> {
    /// Per aggregate, its commits in order.
    commits: Vec<(A::Id, Vec<A::Commit>)>,
    /// Every aggregate of the batch: its state, and whether it changed.
    finals: Vec<(A::Id, A::State, bool)>,
    /// Every aggregate of the batch (to forget on failure).
    ids: Vec<A::Id>,
    /// The aggregates whose every row this projector knows, with the
    /// index of their commits in `commits` (if any changed).
    whole: Vec<(A::Id, Option<usize>)>,
}

#[async_trait]
impl<A, S> Projection for Aggregates<A, S>
where
    A: Aggregate,
    S: AggregateStore<A> + ?Sized + 'static,
{
    type Plan = Plan<A>;

    fn key_of(&self, data: &crate::event::EventData) -> Option<String> {
        A::id_of(data).map(|id| id.to_string())
    }

    async fn plan(
        &self,
        partition: i32,
        events: Vec<Positioned>,
        stats: &mut BatchStats,
        cp: &mut Checkpoint,
    ) -> Result<Plan<A>, ViewError> {
        // Each event's group first, then the groups sized to fit: events
        // are moved once, never again as a group's list grows.
        let mut index: HashMap<A::Id, usize> = HashMap::default();
        let mut sizes: Vec<(A::Id, usize)> = Vec::new();
        let group_of: Vec<Option<usize>> = events
            .iter()
            .map(|(_, event)| {
                let id = A::id_of(&event.data)?;
                let i = *index.entry(id).or_insert_with(|| {
                    sizes.push((id, 0));
                    sizes.len() - 1
                });
                sizes[i].1 += 1;
                Some(i)
            })
            .collect();
        let mut groups: Vec<(A::Id, Vec<Positioned>)> = sizes
            .into_iter()
            .map(|(id, n)| (id, Vec::with_capacity(n)))
            .collect();
        for (e, g) in events.into_iter().zip(group_of) {
            if let Some(i) = g {
                groups[i].1.push(e);
            }
        }
        let (aggs, whole) = self.load(partition, &groups).await?;
        let mut plan = Plan {
            commits: Vec::new(),
            finals: Vec::new(),
            ids: groups.iter().map(|(id, _)| *id).collect(),
            whole: Vec::new(),
        };
        let limit = self.cfg.commit_rows.max(1);
        for (((id, events), mut agg), whole) in groups.iter().zip(aggs).zip(whole) {
            let mut mine = Vec::new();
            for (pos, e) in events {
                match agg.apply(&self.fold, *pos, e) {
                    Outcome::Applied => stats.applied += 1,
                    Outcome::Duplicate => stats.duplicates += 1,
                    Outcome::Rejected(r) => {
                        stats.rejected += 1;
                        emit::fold_rejected(self.view.as_str(), r.as_str());
                        // No aggregate to count it in: the partition does.
                        if agg.state().is_none() {
                            *cp.rejected.entry(r.as_str().to_owned()).or_default() += 1;
                        }
                    }
                }
                if agg.dirty_rows() >= limit
                    && let Some(c) = agg.take_commit()
                {
                    mine.push(c);
                }
            }
            if let Some(c) = agg.take_commit() {
                mine.push(c);
            }
            let changed = !mine.is_empty();
            if let Some(s) = agg.into_state() {
                plan.finals.push((*id, s, changed));
                if whole {
                    plan.whole
                        .push((*id, changed.then_some(plan.commits.len())));
                }
            }
            if changed {
                plan.commits.push((*id, mine));
            }
        }
        stats.commits = plan.commits.iter().map(|(_, c)| c.len() as u64).sum();
        Ok(plan)
    }

    async fn write(&self, plan: &Plan<A>) -> Result<(), ViewError> {
        let store = &self.store;
        // The derived rows of the whole batch first (each aggregate's last
        // commit carries its newest), so a store writes them grouped by
        // partition rather than one request per aggregate.
        let lasts: Vec<&A::Commit> = plan.commits.iter().filter_map(|(_, c)| c.last()).collect();
        store.commit_derived(&lasts).await?;
        // Collected first: a lazy map here trips the compiler's lifetime
        // inference for the `Send` future of the handler.
        let writes: Vec<_> = plan
            .commits
            .iter()
            .map(|(_, cs)| async move {
                for c in cs {
                    store.commit_own(c).await?;
                }
                Ok::<_, ViewError>(())
            })
            .collect();
        futures::stream::iter(writes)
            .buffer_unordered(self.cfg.write_concurrency.max(1))
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    fn applied(&self, last: Position, plan: Plan<A>, mut announce: Option<Announce<'_>>) {
        let partition = last.partition;
        let Plan {
            mut commits,
            finals,
            whole,
            ..
        } = plan;
        {
            let mut known = self.known.lock();
            for (id, at) in whole {
                let mine = at.map_or_else(Vec::new, |i| std::mem::take(&mut commits[i].1));
                known.apply((partition, id), mine);
            }
        }
        let mut cache = self.cache.lock();
        for (id, s, changed) in finals {
            if changed && let Some(a) = announce.as_mut() {
                a((self.change)(&s), s.position());
            }
            cache.put((partition, id), s);
        }
    }

    /// Some writes may have landed: forget the cached states of this batch
    /// so that the retry reloads states consistent with the stored rows.
    fn failed(&self, partition: i32, plan: &Plan<A>) {
        let mut cache = self.cache.lock();
        let mut known = self.known.lock();
        for id in &plan.ids {
            cache.pop(&(partition, *id));
            known.forget(&(partition, *id));
        }
    }

    /// Drops every cached aggregate of the partition, and its rows.
    fn assigned(&self, partition: i32) {
        let mut cache = self.cache.lock();
        for k in of_partition(&cache, partition) {
            cache.pop(&k);
        }
        let mut known = self.known.lock();
        for k in of_partition(&known.sets, partition) {
            known.forget(&k);
        }
    }
}

/// The keys of `partition`'s aggregates in a cache keyed by both.
fn of_partition<I: Copy + Eq + std::hash::Hash, V>(
    cache: &LruCache<(i32, I), V>,
    partition: i32,
) -> Vec<(i32, I)> {
    cache
        .iter()
        .filter(|((p, _), _)| *p == partition)
        .map(|(k, _)| *k)
        .collect()
}
