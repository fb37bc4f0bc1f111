//! The partition task (its reads between flushes and at a stop, a log whose start is gone, its
//! snapshots' turn), `recount` against a log whose start is gone, and the flush grid.

use super::group::run_owned_partition;
use super::*;
use async_trait::async_trait;
use std::sync::atomic::AtomicU64;
use storage::{
    AppendBatch, EmbeddedLog, EmbeddedLogConfig, Fetched, FilePollStore, Position, ShutdownTrigger,
};
use tokio::task::JoinHandle;

#[test]
fn a_flush_follows_an_interval_later_or_on_the_grid_once_that_has_passed() {
    let interval = Duration::from_millis(25);
    let soon = Instant::now() + Duration::from_millis(10);
    assert_eq!(following_flush(soon, interval), soon + interval);
    // Quiet for a second: the next one is on the grid, within an interval from now.
    let long_ago = Instant::now() - Duration::from_secs(1);
    let next = following_flush(long_ago, interval);
    let now = Instant::now();
    assert!(
        next > now - Duration::from_millis(1) && next <= now + interval,
        "{next:?}"
    );
}

/// A real embedded log whose votes before `gone` are no longer there, as after a Kafka topic's
/// retention (tansu, the test broker, cannot delete records): a fetch from before it answers
/// with the records from `gone` on, as librdkafka does once the broker says the offset is out of
/// range (`auto.offset.reset=earliest`).
struct Retained {
    log: EmbeddedLog,
    gone: Offset,
    /// Whether `log_start` says so (the broker's low watermark), or still 0 (retention ran after
    /// the task started).
    says_start: bool,
    /// The fetches made of it.
    fetches: Arc<AtomicU64>,
}

#[async_trait]
impl Log for Retained {
    fn partitions(&self, topic: Topic) -> u32 {
        self.log.partitions(topic)
    }
    async fn append(
        &self,
        topic: Topic,
        batch: AppendBatch,
        deadline: std::time::Instant,
    ) -> Result<Vec<Position>, LogError> {
        self.log.append(topic, batch, deadline).await
    }
    async fn fetch(
        &self,
        topic: Topic,
        partition: Partition,
        offset: Offset,
        max_bytes: usize,
        max_wait: Duration,
    ) -> Result<Fetched, LogError> {
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let from = offset.max(self.gone);
        self.log
            .fetch(topic, partition, from, max_bytes, max_wait)
            .await
    }
    async fn high_watermark(&self, topic: Topic, partition: Partition) -> Result<Offset, LogError> {
        self.log.high_watermark(topic, partition).await
    }
    async fn log_start(&self, _topic: Topic, _partition: Partition) -> Result<Offset, LogError> {
        Ok(if self.says_start {
            self.gone
        } else {
            Offset::ZERO
        })
    }
}

/// A pipeline on a log holding 10 records in partition 0, those before `gone` deleted, with the
/// log's start said or not.
async fn pipeline_with_gone(gone: i64, says_start: bool) -> (Pipeline, tempfile::TempDir) {
    let (pipeline, dir, _) = pipeline_counting_fetches(gone, says_start).await;
    (pipeline, dir)
}

/// [`pipeline_with_gone`], and the count of the fetches made of its log.
async fn pipeline_counting_fetches(
    gone: i64,
    says_start: bool,
) -> (Pipeline, tempfile::TempDir, Arc<AtomicU64>) {
    let fetches = Arc::new(AtomicU64::new(0));
    let dir = tempfile::tempdir().unwrap();
    let mut config = EmbeddedLogConfig::new(dir.path().join("log"));
    config.votes_partitions = 1;
    config.fsync = false;
    let log = EmbeddedLog::open(config).unwrap();
    let mut batch = AppendBatch::default();
    for i in 0..10u8 {
        batch.push(Partition(0), schemas::Timestamp(1), &[i], b"not a vote");
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    log.append(Topic::Votes, batch, deadline).await.unwrap();
    let polls = FilePollStore::open(dir.path().join("polls")).unwrap();
    let pipeline = Pipeline {
        log: Arc::new(Retained {
            log,
            gone: Offset(gone),
            says_start,
            fetches: fetches.clone(),
        }),
        catalog: PollCatalog::load(Arc::new(polls)).await.unwrap(),
        tally_store: None,
        checkpoints: None,
        cache: None,
        config: ProcessorConfig::default(),
        checkpoint_turn: Default::default(),
        metrics: Default::default(),
    };
    (pipeline, dir, fetches)
}

/// Runs partition 0 of `pipeline` in a task of its own until the trigger fires.
fn spawn_partition_0(
    pipeline: &Pipeline,
) -> (ShutdownTrigger, JoinHandle<Result<(), PartitionError>>) {
    let (stop, shutdown) = ShutdownTrigger::new();
    let pipeline = pipeline.clone();
    let task = tokio::spawn(async move {
        let mut published = Published::default();
        run_partition(&pipeline, Partition(0), &mut published, shutdown).await
    });
    (stop, task)
}

/// Waits until `pipeline`'s partition tasks have read `n` records (panics after 5 s).
async fn read(pipeline: &Pipeline, n: u64) {
    let give_up = Instant::now() + Duration::from_secs(5);
    while pipeline.metrics.records_read.load(Ordering::Relaxed) < n {
        assert!(Instant::now() < give_up, "{n} records not read within 5 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A partition task that keeps up reads the log about twice a flush interval, not once a group
/// commit, and reads every record.
#[tokio::test]
async fn a_partition_that_keeps_up_reads_twice_a_flush_not_once_a_commit() {
    let (mut pipeline, _dir, fetches) = pipeline_counting_fetches(0, false).await;
    let interval = Duration::from_millis(100);
    pipeline.config.flush_interval = interval;
    let (stop, task) = spawn_partition_0(&pipeline);
    read(&pipeline, 10).await;
    let (before, began) = (fetches.load(Ordering::Relaxed), Instant::now());
    // 40 group commits over about two flush intervals (each its own: 5 ms apart).
    for i in 0..40u8 {
        let mut batch = AppendBatch::default();
        batch.push(Partition(0), schemas::Timestamp(1), &[i], b"not a vote");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        pipeline
            .log
            .append(Topic::Votes, batch, deadline)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    read(&pipeline, 50).await;
    let made = fetches.load(Ordering::Relaxed) - before;
    // About two a flush interval the commits spanned (three when the read before a flush waits
    // for a record), and a few for the ends; one per commit would be 40 or more.
    let intervals = began.elapsed().as_millis().div_ceil(interval.as_millis()) as u64;
    let bound = 3 * intervals + 4;
    assert!(
        bound < 40,
        "the commits took {intervals} intervals: too slow to judge"
    );
    assert!(
        made <= bound,
        "{made} fetches for 40 commits in {intervals} flush intervals"
    );
    stop.fire();
    task.await.unwrap().unwrap();
    assert_eq!(pipeline.metrics.records_read.load(Ordering::Relaxed), 50);
}

/// A task signalled to stop while it waits to read again reads what was written before the
/// signal, so its last flush and checkpoint hold every vote the node acknowledged.
#[tokio::test]
async fn a_stopping_partition_reads_to_the_end_before_its_last_flush() {
    // Judged only in an attempt where the stop came while the task waited to read again.
    for _attempt in 0..5 {
        let (mut pipeline, dir, fetches) = pipeline_counting_fetches(0, false).await;
        // A long interval: the caught-up task waits LONGEST_WAIT before each read.
        pipeline.config.flush_interval = Duration::from_secs(10);
        let files = Arc::new(storage::CheckpointFiles::open(dir.path().join("snapshots")).unwrap());
        pipeline.checkpoints = Some(files.clone());
        pipeline.config.checkpoint_interval = Some(Duration::from_secs(60));
        let (stop, task) = spawn_partition_0(&pipeline);
        read(&pipeline, 10).await;
        let fetched_before = fetches.load(Ordering::Relaxed);
        // Into the task's wait (it read the 10 at once, and waits 50 ms before reading again).
        tokio::time::sleep(Duration::from_millis(10)).await;
        let mut batch = AppendBatch::default();
        for i in 0..5u8 {
            batch.push(Partition(0), schemas::Timestamp(1), &[i], b"not a vote");
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let log = &pipeline.log;
        log.append(Topic::Votes, batch, deadline).await.unwrap();
        let stopped_in_wait = fetches.load(Ordering::Relaxed) == fetched_before;
        stop.fire();
        task.await.unwrap().unwrap();
        assert_eq!(pipeline.metrics.records_read.load(Ordering::Relaxed), 15);
        let checkpoint = files.load_checkpoint(Partition(0)).await.unwrap();
        assert_eq!(checkpoint.map(|(offset, _)| offset), Some(Offset(15)));
        if stopped_in_wait {
            return;
        }
    }
    panic!("the task read again before the stop in 5 attempts: too slow a machine to judge");
}

/// Runs partition 0 (see [`pipeline_with_gone`]) until it stops by itself or 3 s pass: what it
/// returned (`None`: still running) and the records it read.
async fn run_with_gone(gone: i64, says_start: bool) -> (Option<Result<(), PartitionError>>, u64) {
    let (ended, metrics) = run_with_gone_accepting(gone, says_start, &[]).await;
    (ended, metrics.records_read.load(Ordering::Relaxed))
}

/// [`run_with_gone`] with `processor.accept_lost_votes` set to `accepted`; returns the metrics.
async fn run_with_gone_accepting(
    gone: i64,
    says_start: bool,
    accepted: &[&str],
) -> (Option<Result<(), PartitionError>>, Arc<ProcessorMetrics>) {
    let (mut pipeline, _dir) = pipeline_with_gone(gone, says_start).await;
    let accepted: Vec<String> = accepted.iter().map(|s| s.to_string()).collect();
    pipeline.config.accepted_losses = AcceptedLosses::parse(&accepted).unwrap();
    run_for_3_s(pipeline).await
}

/// Runs partition 0 of `pipeline` until it stops by itself or 3 s pass.
async fn run_for_3_s(
    pipeline: Pipeline,
) -> (Option<Result<(), PartitionError>>, Arc<ProcessorMetrics>) {
    let (stop, shutdown) = ShutdownTrigger::new();
    let mut published = Published::default();
    let task = run_partition(&pipeline, Partition(0), &mut published, shutdown);
    let ended = tokio::time::timeout(Duration::from_secs(3), task)
        .await
        .ok();
    stop.fire();
    (ended, pipeline.metrics.clone())
}

/// An accepted loss goes on from a usable snapshot older than the log's start (losing only what
/// lies between), never past an unusable one (it may hold votes counted before the loss).
#[tokio::test]
async fn an_accepted_loss_goes_on_from_an_older_usable_snapshot_never_past_an_unusable_one() {
    let mut older = PartitionCounter::new(Partition(0), WindowConfig::default());
    older.skip_lost(Offset(2));
    for (state, usable) in [
        (older.checkpoint(), true),
        (b"not a snapshot".to_vec(), false),
    ] {
        let (mut pipeline, dir) = pipeline_with_gone(4, true).await;
        let files = storage::CheckpointFiles::open(dir.path().join("snapshots")).unwrap();
        files
            .put_checkpoint(Partition(0), Offset(2), state.clone())
            .await
            .unwrap();
        let files = Arc::new(files);
        pipeline.checkpoints = Some(files.clone());
        pipeline.config.accepted_losses = AcceptedLosses::parse(&["0:4".into()]).unwrap();
        let (ended, metrics) = run_for_3_s(pipeline).await;
        let (read, lost) = (
            metrics.records_read.load(Ordering::Relaxed),
            metrics.votes_lost.load(Ordering::Relaxed),
        );
        if usable {
            assert!(ended.is_none(), "{ended:?}");
            assert_eq!((read, lost), (6, 2));
            assert_eq!(metrics.checkpoints_restored.load(Ordering::Relaxed), 1);
        } else {
            match ended {
                Some(Err(e @ PartitionError::CannotRebuild { .. })) => {
                    assert!(e.to_string().contains("unusable"), "{e}")
                }
                other => panic!("expected the task to refuse: {other:?}"),
            }
            assert_eq!((read, lost), (0, 0));
            let kept = files.load_checkpoint(Partition(0)).await.unwrap();
            assert_eq!(kept, Some((Offset(2), state)), "the snapshot was cleared");
        }
    }
}

#[tokio::test]
async fn a_loss_the_operator_accepted_is_counted_and_the_partition_counts_on() {
    // Gone while the task ran, and gone before it started (with no snapshot): both count on
    // from the log's start with "0:4" (or a later offset), and the 4 lost records are counted.
    for says_start in [false, true] {
        for accepted in ["0:4", "0:9"] {
            let (ended, metrics) = run_with_gone_accepting(4, says_start, &[accepted]).await;
            assert!(ended.is_none(), "{says_start} {accepted}: {ended:?}");
            assert_eq!(metrics.records_read.load(Ordering::Relaxed), 6);
            assert_eq!(metrics.votes_lost.load(Ordering::Relaxed), 4);
            assert!(metrics.failures.lock().is_empty());
        }
        // A larger loss than the one accepted, or another partition's: still stopped.
        for accepted in ["0:3", "1:4"] {
            let (ended, metrics) = run_with_gone_accepting(4, says_start, &[accepted]).await;
            assert!(
                matches!(ended, Some(Err(_))),
                "{says_start} {accepted}: {ended:?}"
            );
            assert_eq!(metrics.records_read.load(Ordering::Relaxed), 0);
            assert_eq!(metrics.votes_lost.load(Ordering::Relaxed), 0);
        }
    }
}

#[tokio::test]
async fn votes_deleted_before_they_were_counted_stop_the_partition_instead_of_being_skipped() {
    // Nothing gone: the task reads all ten and follows the log.
    let (ended, read) = run_with_gone(0, false).await;
    assert!(ended.is_none(), "{ended:?}");
    assert_eq!(read, 10);

    // Gone while the task ran (its start was 0): the first fetch starts at 4, not at 0.
    let (ended, read) = run_with_gone(4, false).await;
    match ended {
        Some(Err(
            e @ PartitionError::VotesDeleted {
                counted_to, start, ..
            },
        )) => {
            assert_eq!((counted_to, start), (Offset(0), Offset(4)));
            let why = e.to_string();
            assert!(why.contains("accept_lost_votes = [\"0:4\"]"), "{why}");
        }
        other => panic!("expected the gap to stop the task: {other:?}"),
    }
    assert_eq!(read, 0, "nothing after the gap was counted");

    // Gone before the task started, and said (the broker's low watermark): with no snapshot
    // to start from, the task refuses, and says why.
    let (ended, read) = run_with_gone(4, true).await;
    match ended {
        Some(Err(e @ PartitionError::CannotRebuild { .. })) => {
            let why = e.to_string();
            assert!(why.contains("before offset 4"), "{why}");
            assert!(why.contains("retention.ms"), "{why}");
            assert!(why.contains("accept_lost_votes = [\"0:4\"]"), "{why}");
        }
        other => panic!("expected the task to refuse: {other:?}"),
    }
    assert_eq!(read, 0);
}

/// Runs partition 0 of `pipeline` under its supervisor until `until` holds of its metrics (10 s
/// at most: then `what` fails the test); returns what readiness said at that moment, then stops it.
async fn supervised_until(
    pipeline: Pipeline,
    what: &str,
    until: impl Fn(&ProcessorMetrics) -> bool,
) -> Result<String, String> {
    let metrics = pipeline.metrics.clone();
    metrics.owns_partitions.store(true, Ordering::Relaxed);
    let (stop, shutdown) = ShutdownTrigger::new();
    let task = tokio::spawn(run_partition_supervised(
        pipeline,
        Partition(0),
        Published::default(),
        shutdown,
    ));
    let waited = std::time::Instant::now();
    while !until(&metrics) {
        assert!(waited.elapsed() < Duration::from_secs(10), "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let readiness = metrics.readiness();
    stop.fire();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
    readiness
}

#[tokio::test]
async fn a_failing_partition_keeps_the_processor_unready_and_readiness_says_why() {
    let (pipeline, _dir) = pipeline_with_gone(4, true).await;
    // Two attempts (a restart a second after the first), both refused.
    let restarted = |m: &ProcessorMetrics| m.restarts.load(Ordering::Relaxed) >= 2;
    let why = supervised_until(pipeline, "no restart", restarted)
        .await
        .unwrap_err();
    assert!(
        why.contains("partition 0 failed") && why.contains("cannot be rebuilt"),
        "{why}"
    );
}

#[tokio::test]
async fn a_partition_that_reads_again_after_a_passing_failure_no_longer_reports_it() {
    let (pipeline, _dir) = pipeline_with_gone(0, false).await;
    pipeline
        .metrics
        .failures
        .lock()
        .insert(Partition(0), "the broker was away".into());
    let cleared = |m: &ProcessorMetrics| !m.failures.lock().contains_key(&Partition(0));
    let _readiness = supervised_until(pipeline, "still reported", cleared).await;
}

#[tokio::test]
async fn recount_refuses_a_log_whose_start_is_gone() {
    let audit = |log: Arc<dyn Log>| async move {
        let published = std::collections::HashMap::new();
        let polls = storage::Polls::default();
        crate::recount::recount(&*log, &polls, &published, Default::default(), |_, _, _| {}).await
    };
    let (whole, _a) = pipeline_with_gone(0, false).await;
    assert_eq!(audit(whole.log).await.unwrap().records, 10);
    let (gone, _b) = pipeline_with_gone(4, false).await;
    match audit(gone.log).await {
        Err(LogError::Retired { offset, first, .. }) => {
            assert_eq!((offset, first), (Offset(0), Offset(4)))
        }
        other => panic!("expected the audit to refuse: {other:?}"),
    }
}

/// A tally store that fails at restore (a real PostgreSQL schema without its tables) keeps the
/// partition unready with readiness saying why, until a retry finds the tables.
#[tokio::test]
async fn a_partition_whose_tally_store_fails_at_restore_is_unready_and_readiness_says_why() {
    let url = std::env::var("CROWDTICK_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let pool = storage::postgres::connect(&url).await.unwrap_or_else(|e| {
        panic!("{e}: this test needs PostgreSQL at {url} (CROWDTICK_TEST_POSTGRES)")
    });
    let schema = format!("ct_never_migrated_{}", std::process::id());
    let store = storage::PgTallyStore::new(pool, &schema).unwrap();
    let (mut pipeline, _dir) = pipeline_with_gone(0, false).await;
    pipeline.tally_store = Some(Arc::new(store));
    let metrics = pipeline.metrics.clone();
    metrics.owns_partitions.store(true, Ordering::Relaxed);
    metrics.catching_up.lock().insert(Partition(0));
    let (stop, shutdown) = ShutdownTrigger::new();
    let task = tokio::spawn(run_owned_partition(pipeline, Partition(0), shutdown));
    let waited = std::time::Instant::now();
    while metrics.restarts.load(Ordering::Relaxed) < 2 {
        assert!(waited.elapsed() < Duration::from_secs(10), "no retry");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let why = metrics.readiness().unwrap_err();
    assert!(
        why.contains("partition 0 failed (restoring what it published from the tally store")
            && why.contains("does not exist"),
        "{why}"
    );
    // The tables arrive: the next retry restores, the partition reads its log, and the failure
    // is no longer reported.
    let pool = storage::postgres::connect_and_migrate(&url, &schema)
        .await
        .unwrap();
    while !metrics.failures.lock().is_empty() || metrics.records_read.load(Ordering::Relaxed) < 10 {
        assert!(waited.elapsed() < Duration::from_secs(20), "still failing");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.fire();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
    let client = pool.get().await.unwrap();
    client
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .unwrap();
}

/// A partition whose snapshot is due takes none while another holds the node's turn
/// ([`CheckpointTurn`]), and takes it at a flush once the turn is free; one that stops waits for
/// the turn to take its last.
#[tokio::test]
async fn a_snapshot_waits_for_the_nodes_turn() {
    for stopping in [false, true] {
        let (mut pipeline, dir) = pipeline_with_gone(0, true).await;
        let files = storage::CheckpointFiles::open(dir.path().join("snapshots")).unwrap();
        pipeline.checkpoints = Some(Arc::new(files));
        // Due 100 ms after the start, or (a minute) only when the task stops.
        let interval = if stopping { 60_000 } else { 100 };
        pipeline.config.checkpoint_interval = Some(Duration::from_millis(interval));
        let held = (pipeline.checkpoint_turn.permits.clone().try_acquire_owned()).unwrap();
        let written = || pipeline.metrics.checkpoints_written.load(Ordering::Relaxed);
        let (stop, shutdown) = ShutdownTrigger::new();
        let mut published = Published::default();
        let task = run_partition(&pipeline, Partition(0), &mut published, shutdown);
        tokio::pin!(task);
        // Runs the task for `ms`; whether it ended meanwhile.
        macro_rules! run_for {
            ($ms:expr) => {
                tokio::time::timeout(Duration::from_millis($ms), &mut task)
                    .await
                    .is_ok()
            };
        }
        assert!(!run_for!(800), "the partition task stopped ({stopping})");
        if stopping {
            stop.fire();
            assert!(!run_for!(500), "stopped without waiting for the turn");
        }
        assert_eq!(
            written(),
            0,
            "a snapshot while the turn was held ({stopping})"
        );
        drop(held);
        let deadline = Instant::now() + Duration::from_secs(5);
        while written() == 0 && Instant::now() < deadline {
            if run_for!(50) {
                assert!(stopping, "the partition task stopped");
                break;
            }
        }
        assert_eq!(
            written(),
            1,
            "the snapshot once the turn was free ({stopping})"
        );
        stop.fire();
    }
}

/// A checkpoint store whose writes take `.0` (a store that hangs a while), and that holds no
/// checkpoint.
struct SlowStore(Duration);

#[async_trait]
impl CheckpointStore for SlowStore {
    async fn put_checkpoint(
        &self,
        _: Partition,
        _: Offset,
        _: Vec<u8>,
    ) -> Result<bool, storage::TallyStoreError> {
        tokio::time::sleep(self.0).await;
        Ok(true)
    }
    async fn load_checkpoint(
        &self,
        _: Partition,
    ) -> Result<Option<(Offset, Vec<u8>)>, storage::TallyStoreError> {
        Ok(None)
    }
    async fn clear_checkpoint(&self, _: Partition) -> Result<(), storage::TallyStoreError> {
        Ok(())
    }
}

/// A snapshot write that hangs holds the node's turn for at most the turn's limit: then the
/// other partitions may take theirs, while the partition still waits for its write to end.
#[tokio::test]
async fn a_hung_snapshot_write_lets_the_turn_go() {
    let (mut pipeline, _dir) = pipeline_with_gone(0, true).await;
    // The write takes 3 s; the turn is held for at most 1 s of it.
    pipeline.checkpoints = Some(Arc::new(SlowStore(Duration::from_secs(3))));
    pipeline.config.checkpoint_interval = Some(Duration::from_millis(100));
    pipeline.checkpoint_turn = CheckpointTurn::with_limit(Duration::from_secs(1));
    let permits = pipeline.checkpoint_turn.permits.clone();
    let written = || pipeline.metrics.checkpoints_written.load(Ordering::Relaxed);
    let (stop, shutdown) = ShutdownTrigger::new();
    let mut published = Published::default();
    let task = run_partition(&pipeline, Partition(0), &mut published, shutdown);
    tokio::pin!(task);
    // Runs the task for 20 ms at a time until `done()` or 10 s pass; when it happened.
    macro_rules! run_until {
        ($what:literal, $done:expr) => {{
            let deadline = Instant::now() + Duration::from_secs(10);
            while !$done {
                assert!(Instant::now() < deadline, "{} did not happen", $what);
                let ran = tokio::time::timeout(Duration::from_millis(20), &mut task).await;
                assert!(ran.is_err(), "the partition task stopped");
            }
            Instant::now()
        }};
    }
    let taken = run_until!(
        "the write taking the turn",
        permits.available_permits() == 0
    );
    let freed = run_until!("the turn let go", permits.available_permits() == 1);
    assert!(
        freed - taken >= Duration::from_millis(900),
        "{:?}",
        freed - taken
    );
    assert_eq!(written(), 0, "the write was over when the turn was let go");
    let _ = run_until!("the write's end", written() == 1);
    stop.fire();
}
