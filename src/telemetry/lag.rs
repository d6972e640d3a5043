//! Consumer lag of this process, per consumer group and partition: the
//! consumer loops record it; the `atelier_consumer_lag` gauge, `/readyz` and
//! `GET /v1/pipeline` read it.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use parking_lot::RwLock;

/// One partition's lag as its consumer last measured it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LagRow {
    /// Consumer group.
    pub group: String,
    /// Full topic name.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// The partition's high watermark.
    pub head: i64,
    /// Records not yet applied.
    pub lag: i64,
}

type Key = (String, String, i32);

fn table() -> &'static RwLock<BTreeMap<Key, LagRow>> {
    static T: OnceLock<RwLock<BTreeMap<Key, LagRow>>> = OnceLock::new();
    T.get_or_init(Default::default)
}

/// Records a measurement (and sets the gauge).
pub fn record(group: &str, topic: &str, partition: i32, head: i64, lag: i64) {
    super::emit::lag(group, topic, partition, lag);
    table().write().insert(
        (group.to_owned(), topic.to_owned(), partition),
        LagRow {
            group: group.to_owned(),
            topic: topic.to_owned(),
            partition,
            head,
            lag,
        },
    );
}

/// Forgets a partition this process no longer consumes (its gauge drops to
/// zero: another process reports it now).
pub fn forget(group: &str, topic: &str, partition: i32) {
    super::emit::lag(group, topic, partition, 0);
    table()
        .write()
        .remove(&(group.to_owned(), topic.to_owned(), partition));
}

/// Every partition this process consumes, by group, topic, partition.
pub fn snapshot() -> Vec<LagRow> {
    table().read().values().cloned().collect()
}
