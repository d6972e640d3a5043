//! The embedded view store: an in-process wide-column store with the CQL
//! data model, so that the embedded default and ScyllaDB behave alike. The
//! tables and their semantics are in `table`; one module per view (and one
//! for the control rows) maps that view's rows onto them, as `view/cql/`
//! does onto CQL tables.

mod cards;
mod control;
mod feed;
mod polls;
pub mod spill;
mod table;

use std::sync::Arc;

use async_trait::async_trait;

use super::{Counters, Store, View, ViewError};

/// The spill file's name for the base store (generation 0 of every view,
/// and the control rows).
pub const BASE_TAG: &str = "views";

/// The spill file's name for a store of one generation of a view.
pub fn generation_tag(view: super::View, generation: u32) -> String {
    format!("{}@{generation}", view.as_str())
}

/// The embedded store (the default of `atelier up`). It serializes as a
/// snapshot (`view::snapshot`): the control rows first, then each table
/// under its lock.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct EmbeddedStore {
    control: control::Tables,
    polls: polls::Tables,
    feed: feed::Tables,
    cards: cards::Tables,
    #[serde(skip)]
    counters: Arc<Counters>,
    /// Where partitions past the memory budget go (on the embedded
    /// default with its data directory).
    #[serde(skip)]
    spill: std::sync::OnceLock<Arc<spill::Spill>>,
}

impl Default for EmbeddedStore {
    fn default() -> Self {
        let counters = Arc::new(Counters::default());
        Self {
            polls: polls::Tables::new(&counters),
            feed: feed::Tables::new(&counters),
            cards: cards::Tables::new(&counters),
            control: control::Tables::new(&counters),
            counters,
            spill: Default::default(),
        }
    }
}

impl EmbeddedStore {
    /// A store read from a snapshot, its statements counted again.
    pub(crate) fn rebound(mut self) -> Self {
        let c = self.counters.clone();
        self.control.rebind(&c);
        self.polls.rebind(&c);
        self.feed.rebind(&c);
        self.cards.rebind(&c);
        self
    }

    /// Spills this store's partitions past the budget to `spill`, under
    /// `tag` (unique per store: the base store, or a view's generation).
    /// The control rows stay in memory: they are few, and a snapshot
    /// holds them whole.
    /// Attaching twice does nothing.
    pub fn attach(&self, spill: &Arc<spill::Spill>, tag: &str) {
        if self.spill.set(spill.clone()).is_ok() {
            self.polls.attach(spill, tag);
            self.feed.attach(spill, tag);
            self.cards.attach(spill, tag);
        }
    }

    /// The spill file this store's partitions go to past the budget.
    pub fn spill(&self) -> Option<&Arc<spill::Spill>> {
        self.spill.get()
    }

    /// A new store for one generation of a view, spilling where this one
    /// does.
    pub fn sibling(&self, view: super::View, generation: u32) -> EmbeddedStore {
        let s = EmbeddedStore::default();
        if let Some(sp) = self.spill.get() {
            s.attach(sp, &generation_tag(view, generation));
        }
        s
    }

    /// Clears one view's tables; `false` when this store holds no such view.
    fn clear_view(&self, view: View) -> bool {
        let all: [(View, &dyn Fn()); 3] = [
            (super::polls::VIEW, &|| self.polls.clear()),
            (super::feed::VIEW, &|| self.feed.clear()),
            (super::cards::VIEW, &|| self.cards.clear()),
        ];
        all.iter()
            .find(|(v, _)| *v == view)
            .map(|(_, clear)| clear())
            .is_some()
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    fn backend(&self) -> &'static str {
        "embedded"
    }

    fn as_embedded(&self) -> Option<&EmbeddedStore> {
        Some(self)
    }

    fn counts(&self) -> (u64, u64) {
        self.counters.get()
    }

    fn requests(&self) -> u64 {
        self.counters.requests()
    }

    async fn migrate(&self) -> Result<(), ViewError> {
        Ok(())
    }

    async fn drop_view(&self, view: View) -> Result<(), ViewError> {
        if !self.clear_view(view) {
            return Err(ViewError::Rejected(format!("no view {view}")));
        }
        self.control.drop_checkpoints(view.as_str())
    }

    async fn drop_store(&self) -> Result<(), ViewError> {
        self.polls.clear();
        self.feed.clear();
        self.cards.clear();
        self.control.clear_checkpoints();
        Ok(())
    }
}
