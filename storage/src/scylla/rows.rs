//! A flush as rows: [`PollRows`] splits a batch of partials by poll into the statements of one
//! unlogged batch each, and [`assemble`] turns rows read back into partials. Pure: no I/O.

use super::{complete_until_timestamp, offset_timestamp};
use crate::tally_store::Batch;
use crate::tally_store::TallyStoreError;
use schemas::{Offset, PartialTally, Partition, PollId, Timestamp, WindowCount};
use scylla::value::{CqlValue, Row};
use std::collections::BTreeMap;

/// What a statement of a poll's batch writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    Partial,
    CompleteUntil,
    Window,
    PartitionPoll,
}

/// One poll's share of a reduced batch: its partials (newest per partition, windows stripped) and
/// its windows (newest per (partition, start)).
#[derive(Debug, Default)]
pub struct PollRows {
    pub poll_id: PollId,
    pub partials: Vec<PartialTally>,
    /// (partition, start_ms, offset, votes).
    pub windows: Vec<(Partition, i64, Offset, i64)>,
}

impl PollRows {
    /// A batch split by poll, in poll order.
    pub fn split(partials: &[PartialTally]) -> Vec<PollRows> {
        let batch = Batch::of(partials);
        let mut polls: BTreeMap<PollId, PollRows> = BTreeMap::new();
        for (&(poll_id, _), t) in &batch.partials {
            let mut t = (*t).clone();
            t.windows.clear();
            let rows = polls.entry(poll_id).or_default();
            rows.poll_id = poll_id;
            rows.partials.push(t);
        }
        for (&(poll_id, partition, start_ms), &(offset, votes)) in &batch.windows {
            let rows = polls.entry(poll_id).or_default();
            rows.poll_id = poll_id;
            rows.windows.push((partition, start_ms, offset, votes));
        }
        polls.into_values().collect()
    }

    /// The statements and their values, partials first (keyed by the poll: the batch's routing),
    /// then windows, then the `partition_polls` rows.
    pub fn statements(&self) -> Vec<(Put, Vec<CqlValue>)> {
        use CqlValue::{BigInt, Blob, Int};
        let poll = self.poll_id;
        let mut out = Vec::with_capacity(3 * self.partials.len() + self.windows.len());
        for t in &self.partials {
            let ts = offset_timestamp(t.offset);
            out.push((
                Put::Partial,
                vec![
                    BigInt(poll),
                    Int(t.partition.0),
                    Blob(t.to_avro()),
                    BigInt(ts),
                ],
            ));
            out.push((
                Put::CompleteUntil,
                vec![
                    BigInt(complete_until_timestamp(t.complete_until)),
                    BigInt(t.complete_until.micros()),
                    BigInt(poll),
                    Int(t.partition.0),
                ],
            ));
        }
        for &(partition, start_ms, offset, votes) in &self.windows {
            out.push((
                Put::Window,
                vec![
                    BigInt(poll),
                    Int(partition.0),
                    BigInt(start_ms),
                    BigInt(votes),
                    BigInt(offset_timestamp(offset)),
                ],
            ));
        }
        for t in &self.partials {
            out.push((
                Put::PartitionPoll,
                vec![
                    Int(t.partition.0),
                    BigInt(poll),
                    BigInt(offset_timestamp(t.offset)),
                ],
            ));
        }
        out
    }
}

/// A `partials` row: (poll_id, partition, tally, complete_until).
pub type PartialRow = (PollId, i32, Vec<u8>, Option<i64>);
/// A `windows` row: (poll_id, partition, start_ms, votes).
pub type WindowRow = (PollId, i32, i64, i64);

pub(super) fn column(row: &Row, i: usize) -> Option<&CqlValue> {
    row.columns.get(i).and_then(Option::as_ref)
}

pub(super) fn bad(what: &str, row: &Row) -> TallyStoreError {
    TallyStoreError::Data(format!(
        "ScyllaDB {what} row of an unexpected shape: {row:?}"
    ))
}

pub(super) fn partial_row(row: &Row) -> Result<PartialRow, TallyStoreError> {
    match (
        column(row, 0),
        column(row, 1),
        column(row, 2),
        column(row, 3),
    ) {
        (Some(CqlValue::BigInt(poll)), Some(CqlValue::Int(p)), Some(CqlValue::Blob(tally)), cu) => {
            let cu = match cu {
                Some(CqlValue::BigInt(cu)) => Some(*cu),
                _ => None,
            };
            Ok((*poll, *p, tally.clone(), cu))
        }
        _ => Err(bad("partials", row)),
    }
}

pub(super) fn window_row(row: &Row) -> Result<WindowRow, TallyStoreError> {
    match (
        column(row, 0),
        column(row, 1),
        column(row, 2),
        column(row, 3),
    ) {
        (
            Some(CqlValue::BigInt(poll)),
            Some(CqlValue::Int(p)),
            Some(CqlValue::BigInt(start)),
            Some(CqlValue::BigInt(votes)),
        ) => Ok((*poll, *p, *start, *votes)),
        _ => Err(bad("windows", row)),
    }
}

/// Rows back into partials: each (poll, partition)'s tally with its stored `complete_until` (the
/// highest claim) and every stored window of it, oldest first. A window without a partial (its
/// partial's write lost to nothing yet) waits for one.
pub fn assemble(
    partials: Vec<PartialRow>,
    windows: Vec<WindowRow>,
) -> Result<Vec<PartialTally>, TallyStoreError> {
    let mut out: BTreeMap<(PollId, i32), PartialTally> = BTreeMap::new();
    for (poll_id, partition, tally, complete_until) in partials {
        let mut t = PartialTally::from_avro(&tally)
            .map_err(|e| TallyStoreError::Data(format!("partial ({poll_id}, {partition}): {e}")))?;
        if let Some(cu) = complete_until {
            t.complete_until = t.complete_until.max(Timestamp(cu));
        }
        t.windows.clear();
        out.insert((poll_id, partition), t);
    }
    let mut windows = windows;
    windows.sort_unstable();
    for (poll_id, partition, start_ms, votes) in windows {
        if let Some(t) = out.get_mut(&(poll_id, partition)) {
            t.windows.push(WindowCount { start_ms, votes });
        }
    }
    Ok(out.into_values().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tally_store::tests::tally;
    use schemas::cql;

    #[test]
    fn every_write_carries_its_timestamp_and_none_is_a_counter_or_a_transaction() {
        for write in [
            cql::PUT_PARTIAL,
            cql::PUT_COMPLETE_UNTIL,
            cql::PUT_WINDOW,
            cql::PUT_PARTITION_POLL,
        ] {
            assert!(write.contains("USING TIMESTAMP ?"), "{write}");
            assert!(!write.contains(" IF ") && !write.contains(" + "), "{write}");
            // As many values as bind markers.
            let markers = write.matches('?').count();
            let rows = PollRows::split(&[tally(1, 0, 5, 7, &[(1000, 2)])]);
            let (put, row) = rows[0]
                .statements()
                .into_iter()
                .find(|(put, _)| match put {
                    Put::Partial => write == cql::PUT_PARTIAL,
                    Put::CompleteUntil => write == cql::PUT_COMPLETE_UNTIL,
                    Put::Window => write == cql::PUT_WINDOW,
                    Put::PartitionPoll => write == cql::PUT_PARTITION_POLL,
                })
                .unwrap();
            assert_eq!(row.len(), markers, "{put:?}: {write}");
        }
    }

    #[test]
    fn a_flush_becomes_one_batch_per_poll_with_the_newest_rows() {
        let batch = [
            tally(2, 0, 5, 10, &[(1000, 3)]),
            tally(1, 1, 9, 20, &[(1000, 1), (2000, 4)]),
            tally(2, 0, 7, 30, &[(2000, 6)]),
            tally(2, 0, 6, 40, &[(1000, 5)]),
        ];
        let polls = PollRows::split(&batch);
        assert_eq!(polls.iter().map(|p| p.poll_id).collect::<Vec<_>>(), [1, 2]);
        let two = &polls[1];
        assert_eq!(two.partials.len(), 1);
        assert_eq!(two.partials[0].offset, Offset(7));
        assert!(two.partials[0].windows.is_empty());
        // Windows: the newest offset of each window of (poll 2, partition 0).
        assert_eq!(
            two.windows,
            [
                (Partition(0), 1000, Offset(6), 5),
                (Partition(0), 2000, Offset(7), 6)
            ]
        );
        let statements = two.statements();
        let kinds: Vec<Put> = statements.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            kinds,
            [
                Put::Partial,
                Put::CompleteUntil,
                Put::Window,
                Put::Window,
                Put::PartitionPoll
            ]
        );
        use CqlValue::{BigInt, Int};
        assert_eq!(statements[0].1[3], BigInt(8), "offset 7 writes at 8");
        assert_eq!(statements[1].1[..2], [BigInt(31), BigInt(30)]);
        assert_eq!(
            statements[2].1,
            [BigInt(2), Int(0), BigInt(1000), BigInt(5), BigInt(7)]
        );
        assert_eq!(statements[4].1, [Int(0), BigInt(2), BigInt(8)]);
    }

    #[test]
    fn rows_become_partials_with_their_windows_and_the_highest_claim() {
        let stored = tally(3, 1, 12, 100, &[]);
        let partials = vec![
            (3, 1, stored.to_avro(), Some(250)),
            (3, 0, tally(3, 0, 4, 90, &[]).to_avro(), None),
        ];
        let windows = vec![(3, 1, 2000, 7), (3, 1, 1000, 5), (3, 2, 1000, 9)];
        let out = assemble(partials, windows).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(out[0], tally(3, 0, 4, 90, &[]));
        assert_eq!(out[1], tally(3, 1, 12, 250, &[(1000, 5), (2000, 7)]));
        assert!(assemble(vec![(3, 1, vec![0xff], None)], vec![]).is_err());
    }
}
