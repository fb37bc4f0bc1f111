//! Votes lost to retention, and the operator's word that the count may go on without them
//! (`processor.accept_lost_votes`).
//!
//! A votes partition whose records were deleted before they were counted (a Kafka topic's
//! `retention.ms` outran a processor that was down or behind; embedded, snapshot files lost with
//! `log.retire_after_snapshot` on) stops: its counts would silently lack those votes. Its
//! readiness names the partition and the offset its log now starts at. An operator who decides the
//! show must go on writes that pair as `"PARTITION:OFFSET"`: that partition then counts on from its
//! log's start, provided it is at or before OFFSET (a later, larger loss stops it again). Each loss
//! taken is logged at error level and counted in `crowdtick_processor_votes_lost_total`.

use crate::ProcessorMetrics;
use schemas::{Offset, Partition};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

/// The losses an operator accepted: per votes partition, the latest log start it may count on
/// from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AcceptedLosses(BTreeMap<Partition, Offset>);

impl AcceptedLosses {
    /// Parses `PARTITION:OFFSET` entries (as the readiness message and the error log write them).
    pub fn parse(entries: &[String]) -> Result<Self, String> {
        let mut accepted = BTreeMap::new();
        for entry in entries {
            let parsed = entry.split_once(':').and_then(|(p, o)| {
                let partition = p.trim().parse::<i32>().ok().filter(|p| *p >= 0)?;
                let offset = o.trim().parse::<i64>().ok().filter(|o| *o > 0)?;
                Some((Partition(partition), Offset(offset)))
            });
            let Some((partition, offset)) = parsed else {
                return Err(format!(
                    "processor.accept_lost_votes: {entry:?} is not PARTITION:OFFSET (a votes \
                     partition and the offset its log starts at, as readiness says, e.g. \"3:120000\")"
                ));
            };
            if accepted.insert(partition, offset).is_some() {
                return Err(format!(
                    "processor.accept_lost_votes names partition {partition} twice"
                ));
            }
        }
        Ok(Self(accepted))
    }

    /// Whether `partition` may count on from a log that starts at `start`, without what was
    /// before it.
    pub fn accepts(&self, partition: Partition, start: Offset) -> bool {
        self.0.get(&partition).is_some_and(|&upto| start <= upto)
    }
}

/// The hint a stopped partition's message ends with.
pub fn how_to_accept(partition: Partition, start: Offset) -> String {
    format!(
        "To count on without them, accept the loss: processor.accept_lost_votes = \
         [\"{partition}:{start}\"]"
    )
}

/// Counts and logs an accepted loss: the records from `counted_to` to `start` were never counted.
pub fn take(metrics: &ProcessorMetrics, partition: Partition, counted_to: Offset, start: Offset) {
    let lost = start.0.saturating_sub(counted_to.0).max(0) as u64;
    metrics.votes_lost.fetch_add(lost, Ordering::Relaxed);
    tracing::error!(
        partition = partition.0,
        from = counted_to.0,
        to = start.0,
        records = lost,
        "votes deleted by retention before they were counted are lost: counting on without them, \
         as processor.accept_lost_votes allows"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(e: &[&str]) -> Vec<String> {
        e.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_loss_is_accepted_only_up_to_the_offset_the_operator_wrote() {
        let accepted = AcceptedLosses::parse(&entries(&["3:120000", " 0 : 4 "])).unwrap();
        assert!(accepted.accepts(Partition(3), Offset(120_000)));
        assert!(accepted.accepts(Partition(3), Offset(1)));
        assert!(!accepted.accepts(Partition(3), Offset(120_001)));
        assert!(accepted.accepts(Partition(0), Offset(4)));
        assert!(!accepted.accepts(Partition(1), Offset(1)));
        assert!(!AcceptedLosses::default().accepts(Partition(0), Offset(1)));
    }

    #[test]
    fn entries_that_are_not_partition_and_offset_are_refused_with_the_form() {
        for bad in ["3", "x:1", "3:x", "-1:5", "3:0", "3:-2", ""] {
            let err = AcceptedLosses::parse(&entries(&[bad])).unwrap_err();
            assert!(err.contains("PARTITION:OFFSET"), "{bad:?}: {err}");
        }
        let err = AcceptedLosses::parse(&entries(&["3:5", "3:6"])).unwrap_err();
        assert!(err.contains("twice"), "{err}");
    }

    #[test]
    fn the_hint_is_what_parse_accepts() {
        let hint = how_to_accept(Partition(7), Offset(42));
        let entry = hint.split('"').nth(1).unwrap().to_string();
        let accepted = AcceptedLosses::parse(&[entry]).unwrap();
        assert!(accepted.accepts(Partition(7), Offset(42)));
    }
}
