//! The board's snapshot: its bytes, a property that a snapshot plus the partials after it gives
//! the board every partial gives, and retirement of the tallies topic behind it on a real
//! embedded log.

use super::*;
use crate::board::{follow_tallies, load_tallies};
use proptest::prelude::*;
use schemas::{PollId, Rejections, Timestamp, WindowCount};
use std::collections::BTreeMap;
use std::time::Instant;
use storage::{AppendBatch, CheckpointFiles, EmbeddedLog, EmbeddedLogConfig, ShutdownTrigger};

const WINDOWS: i64 = 4;

/// One (poll, votes partition)'s publishing, as a processor does it: each vote lands in a window;
/// runs of increasing offsets, each run resuming from a checkpoint no later than what was
/// published, each partial carrying the windows that changed since the run's previous one.
#[derive(Debug, Clone)]
struct Stream {
    poll: PollId,
    partition: Partition,
    /// The window of each vote, in offset order.
    votes: Vec<i64>,
    /// Per run: the checkpoint it resumes from (a fraction of what was published), then its
    /// steps (0: the same offset again, knowing more about completeness).
    runs: Vec<(f64, Vec<usize>)>,
}

fn stream() -> impl Strategy<Value = Stream> {
    (
        1..3i64,
        0..3i32,
        prop::collection::vec(0..WINDOWS, 1..40),
        prop::collection::vec((0.0..1.0f64, prop::collection::vec(0..6usize, 1..6)), 1..4),
    )
        .prop_map(|(poll, partition, votes, runs)| Stream {
            poll,
            partition: Partition(partition),
            votes,
            runs,
        })
}

impl Stream {
    fn partial_at(&self, offset: usize, since: usize, clock: i64) -> PartialTally {
        let mut windows: BTreeMap<i64, i64> = BTreeMap::new();
        for &w in &self.votes[..offset] {
            *windows.entry(w).or_default() += 1;
        }
        let changed: Vec<i64> = self.votes[since..offset].to_vec();
        PartialTally {
            poll_id: self.poll,
            partition: self.partition,
            offset: Offset(offset as i64),
            counts: vec![offset as i64, (offset / 2) as i64],
            voters: offset as i64,
            rejected: Rejections {
                duplicate: (offset / 3) as i64,
                ..Default::default()
            },
            late_for_window: (offset / 5) as i64,
            windows: windows
                .into_iter()
                .filter(|(w, _)| changed.contains(w))
                .map(|(start_ms, votes)| WindowCount { start_ms, votes })
                .collect(),
            complete_until: Timestamp(clock),
            emitted_at: Timestamp(clock),
        }
    }

    /// Every partial it publishes, in order.
    fn published(&self, clock: &mut i64) -> Vec<PartialTally> {
        let (mut out, mut furthest) = (Vec::new(), 0usize);
        for (resume, steps) in &self.runs {
            let mut at = (furthest as f64 * resume) as usize;
            let mut since = at;
            for &step in steps {
                at = (at + step).min(self.votes.len());
                *clock += 1;
                out.push(self.partial_at(at, since, *clock));
                since = at;
                furthest = furthest.max(at);
            }
        }
        out
    }
}

fn board_of(partials: &[PartialTally]) -> ResultsBoard {
    let board = ResultsBoard::new(3);
    for t in partials {
        board.apply(t.clone());
    }
    board
}

/// What readers see of polls 1 to `polls` (the time of the snapshot aside).
fn seen(board: &ResultsBoard, polls: PollId) -> Vec<(crate::Snapshot, Vec<WindowCount>)> {
    (1..=polls)
        .map(|poll| {
            let mut s = (*board.snapshot(poll)).clone();
            s.updated_at = Timestamp(0);
            (s, board.timeline(poll))
        })
        .collect()
}

proptest! {
    #[test]
    fn a_snapshot_and_the_partials_after_it_give_the_board_all_partials_give(
        streams in prop::collection::vec(stream(), 1..5),
        interleave in prop::collection::vec(any::<prop::sample::Index>(), 0..200),
        cut in any::<prop::sample::Index>(),
        extra in any::<prop::sample::Index>(),
    ) {
        // One history per (poll, partition).
        let mut streams = streams;
        let mut keys = std::collections::HashSet::new();
        streams.retain(|s| keys.insert((s.poll, s.partition)));
        // The tallies topic: every stream's partials, interleaved, each stream in its order.
        let mut clock = 0;
        let mut queues: Vec<std::collections::VecDeque<PartialTally>> =
            streams.iter().map(|s| s.published(&mut clock).into()).collect();
        let mut topic = Vec::new();
        let mut picks = interleave.iter();
        while queues.iter().any(|q| !q.is_empty()) {
            let live: Vec<usize> = (0..queues.len()).filter(|&i| !queues[i].is_empty()).collect();
            let i = picks.next().map_or(live[0], |ix| live[ix.index(live.len())]);
            topic.push(queues[i].pop_front().unwrap());
        }
        let everything = board_of(&topic);
        // A snapshot at position `cut` that holds some partials after it too.
        let cut = cut.index(topic.len() + 1);
        let held = cut + extra.index(topic.len() - cut + 1);
        let bytes = encode(&[Offset(cut as i64)], &board_of(&topic[..held]).to_partials());
        let (positions, partials) = decode(&bytes).unwrap();
        prop_assert_eq!(positions, vec![Offset(cut as i64)]);
        let restored = board_of(&partials);
        for t in &topic[cut..] {
            restored.apply(t.clone());
        }
        prop_assert_eq!(seen(&restored, 2), seen(&everything, 2));
    }
}

#[test]
fn a_damaged_or_foreign_snapshot_is_refused_not_misread() {
    let t = Stream {
        poll: 1,
        partition: Partition(0),
        votes: vec![0, 1, 1, 3],
        runs: vec![],
    }
    .partial_at(4, 0, 7);
    let bytes = encode(&[Offset(9), Offset(2)], std::slice::from_ref(&t));
    assert_eq!(
        decode(&bytes).unwrap(),
        (vec![Offset(9), Offset(2)], vec![t])
    );
    for cut in 0..bytes.len() {
        assert!(decode(&bytes[..cut]).is_err(), "{cut} bytes read");
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(decode(&longer)
        .unwrap_err()
        .to_string()
        .contains("after the end"));
    let mut other = bytes.clone();
    other[0] = 2;
    assert!(decode(&other).unwrap_err().to_string().contains("format 2"));
    // Counts far past the bytes there are: refused, nothing sized by them.
    for at in [4, 4 + 4 + 16] {
        let mut huge = bytes.clone();
        huge[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode(&huge)
            .unwrap_err()
            .to_string()
            .contains("ends early"));
    }
}

/// Partials of 3 polls in 2 votes partitions published to the tallies topic, `rounds` times each.
async fn publish(log: &EmbeddedLog, from_round: i64, rounds: i64) {
    for round in from_round..from_round + rounds {
        let mut batch = AppendBatch::default();
        for poll in 1..=3 {
            for partition in 0..2 {
                let t = PartialTally {
                    poll_id: poll,
                    partition: Partition(partition),
                    offset: Offset(round),
                    counts: vec![round * poll, round],
                    voters: round,
                    windows: vec![WindowCount {
                        start_ms: round / 10 * 1000,
                        votes: round % 10 + 1,
                    }],
                    complete_until: Timestamp(round),
                    ..Default::default()
                };
                batch.push(Partition(0), Timestamp(round), &t.key(), &t.to_avro());
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        log.append(Topic::Tallies, batch, deadline).await.unwrap();
    }
}

fn retiring_log(dir: &std::path::Path) -> Arc<EmbeddedLog> {
    Arc::new(
        EmbeddedLog::open(EmbeddedLogConfig {
            votes_partitions: 2,
            segment_bytes: 4 << 10,
            retire_released: true,
            ..EmbeddedLogConfig::new(dir)
        })
        .unwrap(),
    )
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let give_up = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < give_up, "waited 10 s for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tallies_topic_is_retired_behind_snapshots_and_a_start_reads_only_what_follows() {
    let dir = tempfile::tempdir().unwrap();
    let snapshots_dir = dir.path().join("snapshots");
    let log = retiring_log(&dir.path().join("log"));
    let board = Arc::new(ResultsBoard::new(2));
    let snapshots: Arc<dyn CheckpointStore> =
        Arc::new(CheckpointFiles::open_named(&snapshots_dir, NAME).unwrap());
    let (stop, shutdown) = ShutdownTrigger::new();
    let from = restore(&board, &*snapshots).await.unwrap();
    let dyn_log: Arc<dyn Log> = log.clone();
    let tail = follow_tallies(dyn_log.clone(), board.clone(), &from, shutdown.clone())
        .await
        .unwrap();
    let saver = keep_saving(
        board.clone(),
        dyn_log.clone(),
        snapshots.clone(),
        Duration::from_millis(20),
        &from,
        shutdown,
    );
    // Publish while the snapshots are written, until retention deleted the topic's first records.
    let mut round = 1;
    while log.log_start(Topic::Tallies, Partition(0)).await.unwrap() == Offset::ZERO {
        publish(&log, round, 20).await;
        round += 20;
        assert!(round < 20_000, "the tallies topic was never retired");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    publish(&log, round, 7).await;
    let end = log
        .high_watermark(Topic::Tallies, Partition(0))
        .await
        .unwrap();
    until("the board to read everything", || {
        board.read_up_to() == vec![end]
    })
    .await;
    let want = seen(&board, 3);
    assert_eq!(
        want[0].0.counts,
        vec![2 * (round + 6); 2],
        "two partitions of poll 1"
    );
    stop.fire();
    let _ = (tail.await, saver.await);
    drop((log, dyn_log));

    // A start restores the snapshot and reads the rest of the topic: the same board, and fewer
    // records read than the topic ever held.
    let log: Arc<dyn Log> = retiring_log(&dir.path().join("log"));
    let start = log.log_start(Topic::Tallies, Partition(0)).await.unwrap();
    assert!(start > Offset::ZERO);
    let again = ResultsBoard::new(2);
    let snapshots = CheckpointFiles::open_named(&snapshots_dir, NAME).unwrap();
    let ReadFrom::Positions(from) = restore(&again, &snapshots).await.unwrap() else {
        panic!("no snapshot restored")
    };
    assert!(
        from[0] >= start && from[0] <= end,
        "{from:?} against {start}..{end}"
    );
    load_tallies(&*log, &again, &ReadFrom::Positions(from))
        .await
        .unwrap();
    assert_eq!(seen(&again, 3), want);
    assert!(again.following().is_ok());

    // Without the snapshot the board is short of what was retired, and says so.
    std::fs::remove_dir_all(&snapshots_dir).unwrap();
    let without = ResultsBoard::new(2);
    let snapshots = CheckpointFiles::open_named(&snapshots_dir, NAME).unwrap();
    let from = restore(&without, &snapshots).await.unwrap();
    load_tallies(&*log, &without, &from).await.unwrap();
    let why = without.following().unwrap_err();
    assert!(why.contains("the results are short"), "{why}");
    assert!(why.contains("results-0.checkpoint"), "{why}");
    // And it is never saved: a snapshot of it would hide that from the next start.
    let (stop, shutdown) = ShutdownTrigger::new();
    let snapshots: Arc<dyn CheckpointStore> = Arc::new(snapshots);
    let from = ReadFrom::Positions(Vec::new());
    let saver = keep_saving(
        Arc::new(without),
        log,
        snapshots.clone(),
        Duration::from_millis(5),
        &from,
        shutdown,
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.fire();
    saver.await.unwrap();
    assert!(snapshots.load_checkpoint(KEY).await.unwrap().is_none());
}
