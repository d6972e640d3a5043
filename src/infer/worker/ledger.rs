//! What the committer may commit: per partition, the offsets registered
//! since the partition was (last) assigned, each finished or not. An
//! upload finishes out of order (a small image overtakes a large one), but
//! a partition's offset may only move past a contiguous finished prefix:
//! committing past an unfinished upload would lose it in a crash.
//!
//! Pure bookkeeping, no I/O: the committer drives it with what the stages
//! report and commits what [`Ledger::prefixes`] answers.

use std::collections::{BTreeMap, HashMap};

use crate::bus::Tp;

/// One partition's registered offsets since its assignment.
#[derive(Debug)]
struct Part<T> {
    /// Which assignment registered them: an outcome of an earlier one (the
    /// partition was revoked and assigned again meanwhile) is stale.
    generation: u64,
    /// Registered offsets; `Some` once finished.
    offsets: BTreeMap<i64, Option<T>>,
}

impl<T> Part<T> {
    fn new(generation: u64) -> Self {
        Self {
            generation,
            offsets: BTreeMap::new(),
        }
    }
}

/// Per partition, the registered offsets and their outcomes (`T`).
#[derive(Debug)]
pub(super) struct Ledger<T> {
    parts: HashMap<Tp, Part<T>>,
}

impl<T> Default for Ledger<T> {
    fn default() -> Self {
        Self {
            parts: HashMap::new(),
        }
    }
}

/// A partition's committable prefix: the last offset of it and the
/// outcomes in it, in offset order.
pub(super) struct Prefix<'a, T> {
    /// The partition.
    pub(super) tp: &'a Tp,
    /// The last finished offset of the prefix (the commit is `last + 1`).
    pub(super) last: i64,
    /// The outcomes of the prefix's offsets, in order.
    pub(super) outcomes: Vec<&'a T>,
}

impl<T> Ledger<T> {
    /// `tp` was assigned (as assignment `generation`): whatever was
    /// registered for it before is dropped.
    pub(super) fn assigned(&mut self, tp: Tp, generation: u64) {
        self.parts.insert(tp, Part::new(generation));
    }

    /// `tp` was revoked: its unfinished work is its next owner's.
    pub(super) fn revoked(&mut self, tp: &Tp) {
        self.parts.remove(tp);
    }

    /// `offset` of `tp` was consumed under assignment `generation`. A newer
    /// generation than the one on record drops what the older registered.
    pub(super) fn register(&mut self, tp: Tp, generation: u64, offset: i64) {
        let p = self
            .parts
            .entry(tp)
            .or_insert_with(|| Part::new(generation));
        if p.generation != generation {
            *p = Part::new(generation);
        }
        p.offsets.insert(offset, None);
    }

    /// `offset` of `tp` finished with `outcome`. Answers `false` (and
    /// drops the outcome) when it is stale: the partition was revoked or
    /// assigned again since it was registered, or the offset was never
    /// registered.
    pub(super) fn finish(&mut self, tp: &Tp, generation: u64, offset: i64, outcome: T) -> bool {
        match self.parts.get_mut(tp) {
            Some(p) if p.generation == generation => match p.offsets.get_mut(&offset) {
                Some(slot) => {
                    *slot = Some(outcome);
                    true
                }
                None => false,
            },
            _ => false,
        }
    }

    /// Whether some partition's lowest registered offset is finished.
    pub(super) fn ready(&self) -> bool {
        self.parts.values().any(|p| {
            p.offsets
                .first_key_value()
                .is_some_and(|(_, d)| d.is_some())
        })
    }

    /// Every partition's finished prefix (partitions without one are left
    /// out).
    pub(super) fn prefixes(&self) -> Vec<Prefix<'_, T>> {
        let mut out = Vec::new();
        for (tp, p) in &self.parts {
            let mut last = None;
            let mut outcomes = Vec::new();
            for (&offset, d) in &p.offsets {
                let Some(d) = d else { break };
                outcomes.push(d);
                last = Some(offset);
            }
            if let Some(last) = last {
                out.push(Prefix { tp, last, outcomes });
            }
        }
        out
    }

    /// Forgets `tp`'s offsets through `last` (committed): their outcomes
    /// are dropped.
    pub(super) fn release(&mut self, tp: &Tp, last: i64) {
        if let Some(p) = self.parts.get_mut(tp) {
            p.offsets = p.offsets.split_off(&(last + 1));
        }
    }

    /// Offsets registered and not yet released, over all partitions.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.parts.values().map(|p| p.offsets.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp(p: i32) -> Tp {
        ("uploads".to_owned(), p)
    }

    /// `(partition, last, outcomes)` of every prefix, sorted by partition.
    fn prefixes(l: &Ledger<&'static str>) -> Vec<(i32, i64, Vec<&'static str>)> {
        let mut v: Vec<_> = l
            .prefixes()
            .into_iter()
            .map(|p| (p.tp.1, p.last, p.outcomes.into_iter().copied().collect()))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_prefix_stops_at_the_first_unfinished_offset() {
        let mut l = Ledger::default();
        l.assigned(tp(0), 1);
        for o in 10..15 {
            l.register(tp(0), 1, o);
        }
        assert!(!l.ready());
        assert!(prefixes(&l).is_empty());
        // Out of order: 12 and 11 finish before 10.
        assert!(l.finish(&tp(0), 1, 12, "c"));
        assert!(l.finish(&tp(0), 1, 11, "b"));
        assert!(!l.ready(), "10 is unfinished: nothing may be committed");
        assert!(prefixes(&l).is_empty());
        assert!(l.finish(&tp(0), 1, 10, "a"));
        assert!(l.ready());
        assert_eq!(prefixes(&l), vec![(0, 12, vec!["a", "b", "c"])]);
    }

    #[test]
    fn release_keeps_what_follows_the_committed_prefix() {
        let mut l = Ledger::default();
        l.assigned(tp(0), 1);
        for o in 0..4 {
            l.register(tp(0), 1, o);
        }
        l.finish(&tp(0), 1, 0, "a");
        l.finish(&tp(0), 1, 1, "b");
        l.finish(&tp(0), 1, 3, "d");
        assert_eq!(prefixes(&l), vec![(0, 1, vec!["a", "b"])]);
        l.release(&tp(0), 1);
        assert_eq!(l.held(), 2, "2 (unfinished) and 3 (finished) stay");
        assert!(prefixes(&l).is_empty(), "2 still blocks 3");
        l.finish(&tp(0), 1, 2, "c");
        assert_eq!(prefixes(&l), vec![(0, 3, vec!["c", "d"])]);
        l.release(&tp(0), 3);
        assert_eq!(l.held(), 0);
        assert!(!l.ready());
    }

    #[test]
    fn partitions_commit_independently() {
        let mut l = Ledger::default();
        for p in 0..3 {
            l.assigned(tp(p), 1);
            l.register(tp(p), 1, 5);
            l.register(tp(p), 1, 6);
        }
        l.finish(&tp(0), 1, 5, "p0");
        l.finish(&tp(2), 1, 6, "p2-late");
        l.finish(&tp(2), 1, 5, "p2");
        assert_eq!(
            prefixes(&l),
            vec![(0, 5, vec!["p0"]), (2, 6, vec!["p2", "p2-late"])]
        );
    }

    #[test]
    fn outcomes_of_a_revoked_or_reassigned_partition_are_stale() {
        let mut l = Ledger::default();
        l.assigned(tp(0), 1);
        l.register(tp(0), 1, 7);
        l.revoked(&tp(0));
        assert!(!l.finish(&tp(0), 1, 7, "lost"), "revoked: not ours");
        assert!(prefixes(&l).is_empty());

        // Assigned again (generation 2): generation 1's outcome is stale,
        // even for an offset registered again.
        l.assigned(tp(0), 2);
        l.register(tp(0), 2, 7);
        assert!(!l.finish(&tp(0), 1, 7, "old"));
        assert!(prefixes(&l).is_empty());
        assert!(l.finish(&tp(0), 2, 7, "new"));
        assert_eq!(prefixes(&l), vec![(0, 7, vec!["new"])]);
    }

    #[test]
    fn a_newer_generation_drops_what_an_older_one_registered() {
        let mut l = Ledger::default();
        // Records may arrive before the assignment is seen.
        l.register(tp(1), 1, 3);
        l.register(tp(1), 1, 4);
        l.register(tp(1), 2, 9);
        assert_eq!(l.held(), 1, "only generation 2's offset is held");
        assert!(!l.finish(&tp(1), 1, 3, "old"));
        assert!(l.finish(&tp(1), 2, 9, "new"));
        assert_eq!(prefixes(&l), vec![(1, 9, vec!["new"])]);
    }

    #[test]
    fn an_unregistered_offset_is_refused() {
        let mut l = Ledger::default();
        l.assigned(tp(0), 1);
        l.register(tp(0), 1, 1);
        assert!(!l.finish(&tp(0), 1, 2, "never registered"));
        assert!(!l.ready());
    }
}
