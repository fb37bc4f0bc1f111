//! Merging absolute partial tallies into a poll's results: pure, idempotent, order-free.
//!
//! Per partition the partial with the highest offset wins (at an equal offset, the one that knows
//! more about completeness). A poll's counts are the sum over partitions; its version is the sum of
//! the held offsets, so it only grows, and any two readers holding the same partials agree.

use schemas::{Freshness, Offset, PartialTally, Partition, Rejections, Timestamp, WindowCount};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Default)]
pub struct PollResults {
    /// Latest partial per partition (its `windows` moved into `windows` below).
    partials: BTreeMap<Partition, PartialTally>,
    /// start_ms → partition → (offset, votes): each window merges on its own, since a partial only
    /// carries the windows that changed since the previous one of its partition.
    windows: BTreeMap<i64, BTreeMap<Partition, (Offset, i64)>>,
}

impl PollResults {
    /// Merges one partial; returns whether anything changed.
    pub fn apply(&mut self, mut tally: PartialTally) -> bool {
        let mut changed = false;
        for w in tally.windows.drain(..) {
            let slot = self
                .windows
                .entry(w.start_ms)
                .or_default()
                .entry(tally.partition)
                .or_insert((Offset(-1), 0));
            if Freshness::window_supersedes(tally.offset, slot.0) {
                changed |= slot.1 != w.votes;
                *slot = (tally.offset, w.votes);
            }
        }
        let newer = match self.partials.get(&tally.partition) {
            None => true,
            Some(held) => tally.supersedes(held),
        };
        if newer {
            self.partials.insert(tally.partition, tally);
        }
        changed || newer
    }

    /// Sum of the held offsets: grows with every newer partial, never shrinks.
    pub fn version(&self) -> i64 {
        self.partials.values().map(|p| p.offset.0).sum()
    }

    /// Votes per option, summed over partitions (at least `options` long).
    pub fn counts(&self, options: usize) -> Vec<i64> {
        let mut total = vec![0i64; options];
        for p in self.partials.values() {
            if p.counts.len() > total.len() {
                total.resize(p.counts.len(), 0);
            }
            for (t, c) in total.iter_mut().zip(&p.counts) {
                *t += c;
            }
        }
        total
    }

    pub fn voters(&self) -> i64 {
        self.partials.values().map(|p| p.voters).sum()
    }

    pub fn rejected(&self) -> Rejections {
        let mut r = Rejections::default();
        for p in self.partials.values() {
            r.add(&p.rejected);
        }
        r
    }

    pub fn late_for_window(&self) -> i64 {
        self.partials.values().map(|p| p.late_for_window).sum()
    }

    /// The time up to which every one of `partitions` partitions has counted everything, if all
    /// have reported.
    pub fn complete_until(&self, partitions: u32) -> Option<Timestamp> {
        if self.partials.len() < partitions as usize {
            return None;
        }
        self.partials.values().map(|p| p.complete_until).min()
    }

    /// Votes per window, summed over partitions, oldest first.
    pub fn timeline(&self) -> Vec<WindowCount> {
        self.windows
            .iter()
            .map(|(&start_ms, parts)| WindowCount {
                start_ms,
                votes: parts.values().map(|&(_, v)| v).sum(),
            })
            .collect()
    }

    /// The offset held per partition.
    pub fn offsets(&self) -> impl Iterator<Item = (Partition, Offset)> + '_ {
        self.partials.iter().map(|(&p, t)| (p, t.offset))
    }

    /// The held partial of one partition.
    pub fn partial(&self, partition: Partition) -> Option<&PartialTally> {
        self.partials.get(&partition)
    }

    /// What these results hold, as one partial per partition carrying every window count held
    /// for it: applied to empty results, they give results that merge on exactly as these do.
    ///
    /// A window count is held at the offset of the partial that last changed it, and comes back
    /// at its partition's (higher or equal) partial offset. Nothing told apart by that could
    /// replace it: a later partial carrying the window either has a higher offset still, or
    /// carries the same count (a window that changed after its held offset would have been
    /// carried, and held, at that later offset).
    pub fn to_partials(&self) -> Vec<PartialTally> {
        let mut out: BTreeMap<Partition, PartialTally> = self.partials.clone();
        for (&start_ms, parts) in &self.windows {
            for (partition, &(_, votes)) in parts {
                if let Some(t) = out.get_mut(partition) {
                    t.windows.push(WindowCount { start_ms, votes });
                }
            }
        }
        out.into_values().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_offset_with_more_completeness_is_taken() {
        let mut r = PollResults::default();
        let t = PartialTally {
            poll_id: 1,
            partition: Partition(0),
            offset: Offset(5),
            counts: vec![1],
            complete_until: Timestamp(10),
            ..Default::default()
        };
        assert!(r.apply(t.clone()));
        assert!(
            !r.apply(t.clone()),
            "the same partial twice changes nothing"
        );
        assert!(r.apply(PartialTally {
            complete_until: Timestamp(20),
            ..t.clone()
        }));
        assert!(
            !r.apply(PartialTally {
                offset: Offset(4),
                counts: vec![0],
                complete_until: Timestamp(99),
                ..t
            }),
            "older offset ignored"
        );
        assert_eq!(r.counts(1), vec![1]);
        assert_eq!(r.complete_until(1), Some(Timestamp(20)));
        assert_eq!(r.complete_until(2), None);
    }
}
