//! The embedded log's tests: appends, reopening, torn tails, fetch sizes, segments and retirement.

use super::*;
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;

fn config(dir: &Path) -> EmbeddedLogConfig {
    EmbeddedLogConfig {
        votes_partitions: 3,
        ..EmbeddedLogConfig::new(dir)
    }
}

fn far() -> Instant {
    Instant::now() + Duration::from_secs(10)
}

async fn read_all(log: &EmbeddedLog, p: i32) -> Vec<(i64, Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    let mut next = Offset::ZERO;
    loop {
        let f = log
            .fetch(Topic::Votes, Partition(p), next, 100, Duration::ZERO)
            .await
            .unwrap();
        if f.is_empty() {
            return out;
        }
        out.extend(f.iter().map(|(o, _, k, v)| (o.0, k.to_vec(), v.to_vec())));
        next = f.next_offset();
    }
}

#[tokio::test]
async fn appends_get_dense_offsets_per_partition_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = EmbeddedLog::open(config(dir.path())).unwrap();
        let mut b = AppendBatch::default();
        for i in 0..10u8 {
            b.push(
                Partition((i % 3) as i32),
                Timestamp(i as i64),
                &[i],
                &[i, i],
            );
        }
        let pos = log.append(Topic::Votes, b, far()).await.unwrap();
        assert_eq!(
            pos[0],
            Position {
                partition: Partition(0),
                offset: Offset(0)
            }
        );
        assert_eq!(
            pos[3],
            Position {
                partition: Partition(0),
                offset: Offset(1)
            }
        );
        assert_eq!(
            pos[9],
            Position {
                partition: Partition(0),
                offset: Offset(3)
            }
        );
        assert_eq!(
            log.high_watermark(Topic::Votes, Partition(1))
                .await
                .unwrap(),
            Offset(3)
        );
    }
    let log = EmbeddedLog::open(config(dir.path())).unwrap();
    let p0 = read_all(&log, 0).await;
    assert_eq!(
        p0.iter().map(|r| r.1[0]).collect::<Vec<_>>(),
        vec![0, 3, 6, 9]
    );
    assert_eq!(p0[2], (2, vec![6], vec![6, 6]));
    let mut b = AppendBatch::default();
    b.push(Partition(0), Timestamp(0), b"k", b"v");
    assert_eq!(
        log.append(Topic::Votes, b, far()).await.unwrap()[0].offset,
        Offset(4)
    );
}

#[tokio::test]
async fn a_torn_tail_is_cut_and_earlier_records_stay() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = EmbeddedLog::open(config(dir.path())).unwrap();
        for i in 0..5u8 {
            let mut b = AppendBatch::default();
            b.push(Partition(1), Timestamp(0), b"key", &[i; 20]);
            log.append(Topic::Votes, b, far()).await.unwrap();
        }
    }
    let path = dir.path().join("votes.log");
    // Five frames of 8 + 16 + 3 + 20 bytes, then the writer's zeros ahead.
    let len = 5 * 47;
    // A crash mid-write: the last record is half there, zeros where the rest should be.
    OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .write_all_at(&[0; 7], len - 7)
        .unwrap();
    let log = EmbeddedLog::open(config(dir.path())).unwrap();
    assert_eq!(read_all(&log, 1).await.len(), 4);
    // A flipped bit in the (now) last record: cut there too.
    drop(log);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let l = f.metadata().unwrap().len();
    f.write_all_at(&[0xAA], l - 3).unwrap();
    let log = EmbeddedLog::open(config(dir.path())).unwrap();
    assert_eq!(read_all(&log, 1).await.len(), 3);
    let mut b = AppendBatch::default();
    b.push(Partition(1), Timestamp(0), b"key", b"after");
    assert_eq!(
        log.append(Topic::Votes, b, far()).await.unwrap()[0].offset,
        Offset(3)
    );
}

/// The bytes of the votes topic's only segment.
fn votes_file(dir: &Path) -> Vec<u8> {
    std::fs::read(dir.join("votes.log")).unwrap()
}

/// The file at `path` once it holds at least `len` bytes, or as it is after 10 s: the writer
/// adds zeros ahead after it has answered a group, so a test holding the answer may look too soon.
fn file_once_at_least(path: &Path, len: usize) -> Vec<u8> {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let bytes = std::fs::read(path).unwrap();
        if bytes.len() >= len || Instant::now() > until {
            return bytes;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[tokio::test]
async fn the_writer_keeps_zeros_ahead_of_its_records_and_a_reopen_keeps_them() {
    let dir = tempfile::tempdir().unwrap();
    let ahead = 4096;
    let config = || EmbeddedLogConfig {
        zero_ahead_bytes: ahead,
        ..config(dir.path())
    };
    let frame = 47; // 8 + 16 + 3 + 20 bytes
    {
        let log = EmbeddedLog::open(config()).unwrap();
        for i in 0..5u8 {
            let mut b = AppendBatch::default();
            b.push(Partition(1), Timestamp(0), b"key", &[i + 1; 20]);
            log.append(Topic::Votes, b, far()).await.unwrap();
        }
        // Written once the first group was answered: zeros up to `ahead` past its end.
        let bytes = votes_file(dir.path());
        assert_eq!(bytes.len(), frame + ahead as usize);
        assert!(bytes[5 * frame..].iter().all(|&b| b == 0));
    }
    // Reopened: the records, and the zeros kept for the next appends (not cut as a torn tail).
    let log = EmbeddedLog::open(config()).unwrap();
    assert_eq!(read_all(&log, 1).await.len(), 5);
    assert_eq!(votes_file(dir.path()).len(), frame + ahead as usize);
    // Beside it, a reader (`recount`) finds the records and stops at the zeros.
    let reader = EmbeddedLog::open_read_only(dir.path()).unwrap();
    assert_eq!(read_all(&reader, 1).await.len(), 5);
    // Appends go on after the last record, into the zeros; past half of them, more are written.
    for i in 5..100u8 {
        let mut b = AppendBatch::default();
        b.push(Partition(1), Timestamp(0), b"key", &[i + 1; 20]);
        let at = log.append(Topic::Votes, b, far()).await.unwrap();
        assert_eq!(at[0].offset, Offset(i as i64));
    }
    let end = 100 * frame;
    let bytes = file_once_at_least(&dir.path().join("votes.log"), end + ahead as usize / 2);
    assert!(bytes.len() >= end + ahead as usize / 2, "{}", bytes.len());
    assert!(bytes[end..].iter().all(|&b| b == 0));
    drop(log);
    let log = EmbeddedLog::open(config()).unwrap();
    let records = read_all(&log, 1).await;
    assert_eq!(records.len(), 100);
    assert!(records
        .iter()
        .enumerate()
        .all(|(i, r)| r.2 == [i as u8 + 1; 20]));
}

#[tokio::test]
async fn a_torn_group_in_the_zeros_ahead_is_cut_and_the_records_before_it_stay() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = EmbeddedLog::open(config(dir.path())).unwrap();
        for i in 0..3u8 {
            let mut b = AppendBatch::default();
            b.push(Partition(1), Timestamp(0), b"key", &[i; 20]);
            log.append(Topic::Votes, b, far()).await.unwrap();
        }
    }
    assert_eq!(votes_file(dir.path()).len(), 47 + (1 << 20), "zeros ahead");
    // A crash while a group was written into the zeros: some of its bytes reached the disk, a
    // page further on (a frame's header with no whole frame after it).
    let path = dir.path().join("votes.log");
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all_at(&[9; 30], 3 * 47 + 4096).unwrap();
    let log = EmbeddedLog::open(config(dir.path())).unwrap();
    assert_eq!(read_all(&log, 1).await.len(), 3);
    assert_eq!(
        votes_file(dir.path()).len(),
        3 * 47,
        "cut at the last record"
    );
    let mut b = AppendBatch::default();
    b.push(Partition(1), Timestamp(0), b"key", b"after");
    assert_eq!(
        log.append(Topic::Votes, b, far()).await.unwrap()[0].offset,
        Offset(3)
    );
}

#[tokio::test]
async fn a_new_segment_gets_zeros_ahead_when_segments_became_smaller() {
    let dir = tempfile::tempdir().unwrap();
    let config = |segment_bytes| EmbeddedLogConfig {
        zero_ahead_bytes: 4096,
        segment_bytes,
        ..config(dir.path())
    };
    {
        let log = EmbeddedLog::open(config(1 << 20)).unwrap();
        append_one_by_one(&log, 0, 5).await;
    }
    // Reopened with segments smaller than the one there: the next group starts a new one, and
    // the zeros of the old one (past 5 frames) say nothing of the new one.
    let log = EmbeddedLog::open(config(100)).unwrap();
    append_one_by_one(&log, 0, 1).await;
    let files = segment_files(dir.path());
    assert_eq!(files.len(), 2, "{files:?}");
    let frame = 57; // 8 + 16 + 3 + 30 bytes
    let new = file_once_at_least(
        &dir.path().join(format!("votes.{:020}.log", 5 * frame)),
        100,
    );
    assert_eq!(new.len(), 100, "zeros up to where the next segment starts");
    assert!(new[frame..].iter().all(|&b| b == 0));
    drop(log);
    let old = dir.path().join("votes.log");
    let share = 5 * frame as u64;
    assert!(std::fs::metadata(&old).unwrap().len() > share);
    // The old segment's zeros past its share (where the new one starts) are cut on open, as
    // zeros, not as a crash's torn tail.
    capture_logs();
    let log = EmbeddedLog::open(config(100)).unwrap();
    let logs = logs_about(&old);
    assert!(
        logs.contains("cutting zeros") && !logs.contains("torn or corrupt"),
        "{logs}"
    );
    let mut records = 0;
    for p in 0..3 {
        records += read_all(&log, p).await.len();
    }
    assert_eq!(records, 6);
    assert_eq!(std::fs::metadata(&old).unwrap().len(), share);
    drop(log);
    // Bytes past the share that are not all zeros are cut too, with a warning.
    let file = std::fs::OpenOptions::new().write(true).open(&old).unwrap();
    file.write_all_at(&[0, 0, 7, 0], share).unwrap();
    let log = EmbeddedLog::open(config(100)).unwrap();
    let logs = logs_about(&old);
    assert!(
        logs.contains(" WARN ") && logs.contains("torn or corrupt"),
        "{logs}"
    );
    assert_eq!(std::fs::metadata(&old).unwrap().len(), share);
    drop(log);
}

/// The lines this test binary logged about `path` (INFO and above, tracing's plain text), from
/// [`capture_logs`] on.
fn logs_about(path: &Path) -> String {
    let all = capture_logs().lock().unwrap().clone();
    let path = path.display().to_string();
    String::from_utf8_lossy(&all)
        .lines()
        .filter(|line| line.contains(&path))
        .map(|line| format!("{line}\n"))
        .collect()
}

/// Every log line of this test binary from the first call on, through a global subscriber: a
/// thread-local one could miss a line whose callsite another thread reached first.
fn capture_logs() -> &'static std::sync::Mutex<Vec<u8>> {
    #[derive(Clone, Copy)]
    struct Logs(&'static std::sync::Mutex<Vec<u8>>);
    impl std::io::Write for Logs {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    static LOGS: std::sync::OnceLock<&'static std::sync::Mutex<Vec<u8>>> =
        std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let logs: &'static _ = Box::leak(Box::default());
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || Logs(logs))
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("the only global subscriber");
        logs
    })
}

#[tokio::test]
async fn an_expired_append_is_refused_and_not_written() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(config(dir.path())).unwrap();
    let mut b = AppendBatch::default();
    b.push(Partition(0), Timestamp(0), b"k", b"v");
    let err = log
        .append(Topic::Votes, b, Instant::now() - Duration::from_millis(1))
        .await
        .unwrap_err();
    assert_eq!(err, LogError::Timeout);
    assert_eq!(
        log.high_watermark(Topic::Votes, Partition(0))
            .await
            .unwrap(),
        Offset(0)
    );
}

#[tokio::test]
async fn fetch_waits_for_new_records() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(EmbeddedLog::open(config(dir.path())).unwrap());
    let reader = {
        let log = log.clone();
        tokio::spawn(async move {
            log.fetch(
                Topic::Votes,
                Partition(2),
                Offset::ZERO,
                1 << 20,
                Duration::from_secs(5),
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut b = AppendBatch::default();
    b.push(Partition(2), Timestamp(7), b"k", b"hello");
    log.append(Topic::Votes, b, far()).await.unwrap();
    let f = reader.await.unwrap().unwrap();
    let recs: Vec<_> = f.iter().collect();
    assert_eq!(
        recs,
        vec![(Offset(0), Timestamp(7), &b"k"[..], &b"hello"[..])]
    );
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]
    /// Fetches of any size read every partition's records back whole and in order, each
    /// fetch at least one record and past `max_bytes` only when one record is larger: records
    /// shorter and longer than what a fetch reads past its last frame's header at once
    /// (`LAST_FRAME_GUESS`), in one group or each in its own, in one segment or in many.
    #[test]
    fn fetches_of_any_size_return_every_record_whole(
        records in proptest::collection::vec((0i32..3, 0usize..1500), 1..60),
        max_bytes in 1usize..2000,
        group_each in proptest::bool::ANY,
        segment_bytes in proptest::option::of(200u64..3000),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let mut config = config(dir.path());
            if let Some(bytes) = segment_bytes {
                config.segment_bytes = bytes;
            }
            let log = EmbeddedLog::open(config).unwrap();
            let mut b = AppendBatch::default();
            let mut expected = vec![Vec::new(); 3];
            for (i, &(p, len)) in records.iter().enumerate() {
                let value = vec![i as u8; len];
                b.push(Partition(p), Timestamp(i as i64), format!("k{i}").as_bytes(), &value);
                expected[p as usize].push((format!("k{i}").into_bytes(), value));
                if group_each {
                    log.append(Topic::Votes, std::mem::take(&mut b), far()).await.unwrap();
                }
            }
            log.append(Topic::Votes, b, far()).await.unwrap();
            for (p, expected) in expected.iter().enumerate() {
                let mut got = Vec::new();
                let mut next = Offset::ZERO;
                loop {
                    let f = log
                        .fetch(Topic::Votes, Partition(p as i32), next, max_bytes, Duration::ZERO)
                        .await
                        .unwrap();
                    if f.is_empty() {
                        break;
                    }
                    let n = f.iter().count();
                    assert!(n == 1 || f.data.len() <= max_bytes, "{} bytes over {n} records", f.data.len());
                    got.extend(f.iter().map(|(_, _, k, v)| (k.to_vec(), v.to_vec())));
                    next = f.next_offset();
                }
                assert_eq!(&got, expected, "partition {p}");
            }
        });
    }
}

#[test]
fn changing_the_partition_count_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    drop(EmbeddedLog::open(config(dir.path())).unwrap());
    let err = EmbeddedLog::open(EmbeddedLogConfig {
        votes_partitions: 4,
        ..config(dir.path())
    })
    .err()
    .unwrap();
    assert!(err.to_string().contains("cannot change"), "{err}");
}

fn segmented(dir: &Path) -> EmbeddedLogConfig {
    EmbeddedLogConfig {
        segment_bytes: 200,
        retire_released: true,
        ..config(dir)
    }
}

/// Appends `n` records, one group each (so the writer may start a segment between any two), to
/// partitions 0, 1, 2 in turn; the value is the record's number.
async fn append_one_by_one(log: &EmbeddedLog, from: u8, n: u8) {
    for i in from..from + n {
        let mut b = AppendBatch::default();
        b.push(
            Partition((i % 3) as i32),
            Timestamp(i as i64),
            b"key",
            &[i; 30],
        );
        log.append(Topic::Votes, b, far()).await.unwrap();
    }
}

fn segment_files(dir: &Path) -> Vec<String> {
    topic_segment_files(dir, "votes")
}

fn topic_segment_files(dir: &Path, topic: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with(&format!("{topic}.")) && n.ends_with(".log"))
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn releases_that_come_while_a_retirement_runs_are_acted_on_without_waiting_for_another() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(segmented(dir.path())).unwrap();
    append_one_by_one(&log, 0, 30).await;
    for i in 0..12u8 {
        let mut b = AppendBatch::default();
        b.push(Partition(0), Timestamp(i as i64), b"key", &[i; 30]);
        log.append(Topic::Tallies, b, far()).await.unwrap();
    }
    let (votes, tallies) = (
        segment_files(dir.path()),
        topic_segment_files(dir.path(), "tallies"),
    );
    assert!(tallies.len() > 2, "{tallies:?}");
    // Partition 1 holds every votes segment until it releases.
    log.release(Topic::Votes, Partition(2), Offset(10))
        .await
        .unwrap();
    // `join!` polls the first release, which starts a retirement of the votes topic on a
    // blocking thread (it finds nothing to retire), before the second and the third come.
    let (a, b, c) = tokio::join!(
        log.release(Topic::Votes, Partition(0), Offset(10)),
        log.release(Topic::Votes, Partition(1), Offset(10)),
        log.release(Topic::Tallies, Partition(0), Offset(12)),
    );
    for released in [a, b, c] {
        released.unwrap();
    }
    // Neither waits for a later release: the tallies topic retires beside the votes topic, and
    // partition 1's release was read by the running retirement or made it look again.
    let after = segment_files(dir.path());
    assert!(after.len() < votes.len(), "{votes:?} → {after:?}");
    let after = topic_segment_files(dir.path(), "tallies");
    assert!(after.len() < tallies.len(), "{tallies:?} → {after:?}");
    for topic in [Topic::Votes, Topic::Tallies] {
        let start = log.log_start(topic, Partition(0)).await.unwrap();
        assert!(start > Offset::ZERO, "{topic:?} starts at {start:?}");
    }
}

#[tokio::test]
async fn records_span_segment_files_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = EmbeddedLog::open(segmented(dir.path())).unwrap();
        append_one_by_one(&log, 0, 30).await;
    }
    // 30 frames of 57 bytes in segments of about 200: a file per four frames.
    let files = segment_files(dir.path());
    assert_eq!(files.len(), 8, "{files:?}");
    assert!(files.contains(&"votes.log".to_string()), "{files:?}");
    assert_eq!(files[0], format!("votes.{:020}.log", 4 * 57));
    let log = EmbeddedLog::open(segmented(dir.path())).unwrap();
    for p in 0..3 {
        let values: Vec<u8> = read_all(&log, p).await.iter().map(|r| r.2[0]).collect();
        assert_eq!(
            values,
            (0..30).filter(|i| i % 3 == p as u8).collect::<Vec<_>>()
        );
    }
    // A fetch larger than a segment reads across files.
    let f = log
        .fetch(
            Topic::Votes,
            Partition(1),
            Offset(0),
            1 << 20,
            Duration::ZERO,
        )
        .await
        .unwrap();
    assert_eq!(f.iter().count(), 10);
    append_one_by_one(&log, 30, 3).await;
    assert_eq!(
        log.high_watermark(Topic::Votes, Partition(0))
            .await
            .unwrap(),
        Offset(11)
    );
}

#[tokio::test]
async fn retention_deletes_only_what_every_partition_released() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(segmented(dir.path())).unwrap();
    append_one_by_one(&log, 0, 30).await;
    let before = segment_files(dir.path());
    // One partition released everything, the others nothing: every segment holds their records.
    log.release(Topic::Votes, Partition(0), Offset(10))
        .await
        .unwrap();
    assert_eq!(segment_files(dir.path()), before);
    // Partitions 1 and 2 released their first 5 records (numbers 0..15): the segments wholly
    // before record 13 (partition 1's sixth) go.
    log.release(Topic::Votes, Partition(1), Offset(4))
        .await
        .unwrap();
    log.release(Topic::Votes, Partition(2), Offset(5))
        .await
        .unwrap();
    let after = segment_files(dir.path());
    assert!(after.len() < before.len(), "{before:?} → {after:?}");
    assert!(!after.contains(&"votes.log".to_string()));
    assert_eq!(
        log.metrics.segments_retired.load(Ordering::Relaxed) as usize,
        before.len() - after.len()
    );
    // What was released may be gone; what was not is all there, at the same offsets.
    let err = log
        .fetch(Topic::Votes, Partition(1), Offset(0), 100, Duration::ZERO)
        .await
        .unwrap_err();
    assert!(matches!(err, LogError::Retired { .. }), "{err}");
    assert!(err.to_string().contains("retire"), "{err}");
    let check = |log: EmbeddedLog| async move {
        let f = log
            .fetch(
                Topic::Votes,
                Partition(1),
                Offset(4),
                1 << 20,
                Duration::ZERO,
            )
            .await
            .unwrap();
        let got: Vec<(Offset, u8)> = f.iter().map(|(o, _, _, v)| (o, v[0])).collect();
        let want: Vec<(Offset, u8)> = (4..10).map(|o| (Offset(o), (o * 3 + 1) as u8)).collect();
        assert_eq!(got, want);
        log
    };
    let log = check(log).await;
    drop(log);
    // Reopened: the same offsets, and appends go on from the same ends.
    let log = check(EmbeddedLog::open(segmented(dir.path())).unwrap()).await;
    assert_eq!(segment_files(dir.path()), after);
    append_one_by_one(&log, 30, 3).await;
    assert_eq!(
        log.high_watermark(Topic::Votes, Partition(2))
            .await
            .unwrap(),
        Offset(11)
    );
    // Without the setting, releasing deletes nothing.
    drop(log);
    let log = EmbeddedLog::open(EmbeddedLogConfig {
        retire_released: false,
        ..segmented(dir.path())
    })
    .unwrap();
    for p in 0..3 {
        log.release(Topic::Votes, Partition(p), Offset(11))
            .await
            .unwrap();
    }
    assert_eq!(segment_files(dir.path()).len(), after.len() + 1);
}

#[tokio::test]
async fn a_segment_left_by_a_crash_during_retirement_is_deleted_on_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = EmbeddedLog::open(segmented(dir.path())).unwrap();
        append_one_by_one(&log, 0, 30).await;
        for p in 0..3 {
            log.release(Topic::Votes, Partition(p), Offset(5))
                .await
                .unwrap();
        }
    }
    // The marker was written, the crash came before the first file was deleted.
    std::fs::write(dir.path().join("votes.log"), b"left behind").unwrap();
    let log = EmbeddedLog::open(segmented(dir.path())).unwrap();
    assert!(!segment_files(dir.path()).contains(&"votes.log".to_string()));
    let f = log
        .fetch(
            Topic::Votes,
            Partition(0),
            Offset(5),
            1 << 20,
            Duration::ZERO,
        )
        .await
        .unwrap();
    assert_eq!(f.iter().next().unwrap().3[0], 15);
}

#[tokio::test]
async fn damage_in_an_early_segment_is_refused_and_a_failed_groups_bytes_are_cut() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = EmbeddedLog::open(segmented(dir.path())).unwrap();
        append_one_by_one(&log, 0, 30).await;
    }
    let files = segment_files(dir.path());
    // Bytes of a group that failed after its segment was full, left past where the next begins:
    // never acknowledged, cut; the later segments stay.
    let second = dir.path().join(format!("votes.{:020}.log", 4 * 57));
    let f = OpenOptions::new().write(true).open(&second).unwrap();
    f.write_all_at(&[7; 30], 4 * 57).unwrap();
    let log = EmbeddedLog::open(segmented(dir.path())).unwrap();
    assert_eq!(segment_files(dir.path()), files);
    assert_eq!(std::fs::metadata(&second).unwrap().len(), 4 * 57);
    assert_eq!(read_all(&log, 0).await.len(), 10);
    drop(log);
    // A flipped bit in the second frame of the second segment (record 5), votes after it: the
    // log refuses to open, says why and what to do, and deletes nothing.
    f.write_all_at(&[0xAA], 57 + 40).unwrap();
    let err = EmbeddedLog::open(segmented(dir.path()))
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("is damaged at byte 57") && err.contains("backup"),
        "{err}"
    );
    assert_eq!(segment_files(dir.path()), files);
}

/// One append of a record keyed `i` with a value of `bytes`, on a task of its own.
fn append_task(
    log: &Arc<EmbeddedLog>,
    i: u8,
    bytes: usize,
) -> tokio::task::JoinHandle<Vec<Position>> {
    let log = log.clone();
    tokio::spawn(async move {
        let mut b = AppendBatch::default();
        b.push(
            Partition((i % 3) as i32),
            Timestamp(0),
            &[i],
            &vec![i; bytes],
        );
        log.append(Topic::Votes, b, far()).await.unwrap()
    })
}

#[tokio::test]
async fn appends_within_the_commit_interval_share_a_group_and_enough_bytes_commit_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let with_interval = |interval| EmbeddedLogConfig {
        commit_interval: interval,
        ..config(dir.path())
    };
    let log = Arc::new(EmbeddedLog::open(with_interval(Duration::from_millis(100))).unwrap());
    append_task(&log, 0, 1).await.unwrap();
    // Forty small appends a millisecond apart: without the interval each would be a group of its
    // own (an fsync here takes well under a millisecond); with it (and its quiet spell of 6 ms,
    // longer than a slow machine's gap between them) they share a few.
    let before = log.metrics.group_commits.load(Ordering::Relaxed);
    let mut appends = Vec::new();
    for i in 1..=40 {
        appends.push(append_task(&log, i, 1));
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    for append in appends {
        append.await.unwrap();
    }
    let groups = log.metrics.group_commits.load(Ordering::Relaxed) - before;
    assert!(groups <= 10, "40 appends took {groups} group commits");
    // With a long interval, an append of 4 KiB or more is a group's worth alone: it does not wait.
    drop(log);
    let log = Arc::new(EmbeddedLog::open(with_interval(Duration::from_secs(20))).unwrap());
    append_task(&log, 41, 1).await.unwrap();
    let began = Instant::now();
    append_task(&log, 42, 8 << 10).await.unwrap();
    assert!(
        began.elapsed() < Duration::from_secs(10),
        "waited for the interval"
    );
    drop(log);
    // Every append is durable and readable after a reopen.
    let log = EmbeddedLog::open(config(dir.path())).unwrap();
    let mut keys = Vec::new();
    for p in 0..3 {
        keys.extend(read_all(&log, p).await.into_iter().map(|r| r.1[0]));
    }
    keys.sort_unstable();
    assert_eq!(keys, (0..=42).collect::<Vec<u8>>());
}
