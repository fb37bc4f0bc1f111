//! The Kafka log against a real Kafka-protocol broker (tansu, started by the tests).

use super::*;
use crate::kafka::raw_produce;
use schemas::Timestamp;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::test_broker::TansuBroker as Tansu;

trait TopicsForTest {
    fn config(&self, votes: u32, tallies: u32) -> KafkaConfig;
}

impl TopicsForTest for Tansu {
    /// A configuration with topic names no other test uses.
    fn config(&self, votes: u32, tallies: u32) -> KafkaConfig {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let id = std::process::id();
        KafkaConfig {
            votes_topic: format!("votes-{id}-{n}"),
            tallies_topic: format!("tallies-{id}-{n}"),
            votes_partitions: votes,
            tallies_partitions: tallies,
            replication_factor: 1,
            deadline: Duration::from_secs(5),
            ..KafkaConfig::new(self.addr().to_owned())
        }
    }
}

fn soon() -> Instant {
    Instant::now() + Duration::from_secs(5)
}

/// A realistic µs timestamp (whole milliseconds: Kafka keeps ms), distinct per `i`.
fn ts(i: u64) -> Timestamp {
    Timestamp(1_700_000_000_000_000 + i as i64 * 1000)
}

/// (offset, timestamp, key, value).
type Rec = (i64, Timestamp, Vec<u8>, Vec<u8>);

fn records(f: &Fetched) -> Vec<Rec> {
    f.iter()
        .map(|(o, t, k, v)| (o.0, t, k.to_vec(), v.to_vec()))
        .collect()
}

/// Everything in the partition from `from` up to `end`, fetched in pieces of `max_bytes`.
async fn read_range(
    log: &KafkaLog,
    topic: Topic,
    p: i32,
    from: i64,
    end: i64,
    max_bytes: usize,
) -> Vec<Rec> {
    let mut out = Vec::new();
    let mut next = Offset(from);
    while next < Offset(end) {
        let f = log
            .fetch(topic, Partition(p), next, max_bytes, Duration::ZERO)
            .await
            .unwrap();
        assert!(
            !f.is_empty(),
            "a zero-wait fetch below the high watermark returned nothing"
        );
        assert_eq!(f.first_offset, next);
        out.extend(records(&f));
        next = f.next_offset();
    }
    out
}

async fn append_n(log: &KafkaLog, p: i32, range: std::ops::Range<u64>) -> Vec<Position> {
    let mut b = AppendBatch::default();
    for i in range {
        b.push(
            Partition(p),
            ts(i),
            format!("k{i}").as_bytes(),
            format!("value {i}").as_bytes(),
        );
    }
    log.append(Topic::Votes, b, soon()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_get_dense_offsets_per_partition_in_batch_order() {
    let broker = Tansu::start();
    let log = KafkaLog::connect(broker.config(3, 1)).await.unwrap();
    assert_eq!(log.partitions(Topic::Votes), 3);
    let mut b = AppendBatch::default();
    for (i, p) in [0, 1, 0, 2, 0, 1].into_iter().enumerate() {
        b.push(
            Partition(p),
            ts(i as u64),
            format!("k{i}").as_bytes(),
            format!("v{i}").as_bytes(),
        );
    }
    let pos = log.append(Topic::Votes, b, soon()).await.unwrap();
    let pairs: Vec<_> = pos.iter().map(|p| (p.partition.0, p.offset.0)).collect();
    assert_eq!(pairs, vec![(0, 0), (1, 0), (0, 1), (2, 0), (0, 2), (1, 1)]);
    let pos = append_n(&log, 0, 6..7).await;
    assert_eq!(
        pos,
        vec![Position {
            partition: Partition(0),
            offset: Offset(3)
        }]
    );

    let p0 = read_range(&log, Topic::Votes, 0, 0, 4, 1 << 20).await;
    let want: Vec<Rec> = [(0, 0), (1, 2), (2, 4), (3, 6)]
        .into_iter()
        .map(|(o, i)| {
            (
                o,
                ts(i),
                format!("k{i}").into_bytes(),
                format!("{}{i}", if i == 6 { "value " } else { "v" }).into_bytes(),
            )
        })
        .collect();
    assert_eq!(p0, want);
    let p2 = read_range(&log, Topic::Votes, 2, 0, 1, 1 << 20).await;
    assert_eq!(p2, vec![(0, ts(3), b"k3".to_vec(), b"v3".to_vec())]);
    // The tallies topic is separate.
    assert_eq!(
        log.high_watermark(Topic::Tallies, Partition(0))
            .await
            .unwrap(),
        Offset(0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_from_an_offset_returns_exactly_the_records_from_there() {
    let broker = Tansu::start();
    let log = KafkaLog::connect(broker.config(2, 1)).await.unwrap();
    append_n(&log, 1, 0..10).await;
    let all = read_range(&log, Topic::Votes, 1, 0, 10, 1 << 20).await;
    assert_eq!(all.len(), 10);
    assert!(all
        .iter()
        .enumerate()
        .all(|(i, r)| r.0 == i as i64 && r.2 == format!("k{i}").as_bytes()));
    // Forward, backward, and again where the reader already stands.
    for from in [4i64, 2, 7, 0, 9] {
        let got = read_range(&log, Topic::Votes, 1, from, 10, 1 << 20).await;
        assert_eq!(got, all[from as usize..], "from {from}");
    }
    // Small fetches: at least one record each, no gap, no repeat.
    let got = read_range(&log, Topic::Votes, 1, 3, 10, 20).await;
    assert_eq!(got, all[3..]);
    let one = log
        .fetch(Topic::Votes, Partition(1), Offset(5), 1, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(records(&one), all[5..6]);
    assert_eq!(one.high_watermark, Offset(10));
    // The other partition is untouched.
    assert_eq!(
        log.high_watermark(Topic::Votes, Partition(0))
            .await
            .unwrap(),
        Offset(0)
    );
    assert!(matches!(
        log.fetch(Topic::Votes, Partition(2), Offset(0), 100, Duration::ZERO)
            .await,
        Err(LogError::NoSuchPartition(Partition(2)))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_waits_up_to_max_wait_for_new_records() {
    let broker = Tansu::start();
    let log = std::sync::Arc::new(KafkaLog::connect(broker.config(1, 1)).await.unwrap());
    // Nothing comes: empty after about max_wait, with the high watermark.
    let started = Instant::now();
    let f = log
        .fetch(
            Topic::Votes,
            Partition(0),
            Offset(0),
            1 << 20,
            Duration::from_millis(300),
        )
        .await
        .unwrap();
    assert!(f.is_empty());
    assert_eq!(
        (f.first_offset, f.high_watermark, f.next_offset()),
        (Offset(0), Offset(0), Offset(0))
    );
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(300), "{waited:?}");
    // A record arrives while waiting: the fetch returns it well before max_wait.
    let reader = {
        let log = log.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let f = log
                .fetch(
                    Topic::Votes,
                    Partition(0),
                    Offset(0),
                    1 << 20,
                    Duration::from_secs(20),
                )
                .await;
            (f, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut b = AppendBatch::default();
    b.push(Partition(0), ts(1), b"k", b"hello");
    log.append(Topic::Votes, b, soon()).await.unwrap();
    let (f, waited) = reader.await.unwrap();
    let f = f.unwrap();
    assert_eq!(
        records(&f),
        vec![(0, ts(1), b"k".to_vec(), b"hello".to_vec())]
    );
    assert_eq!(f.high_watermark, Offset(1));
    assert!(waited >= Duration::from_millis(250), "{waited:?}");
    assert!(waited < Duration::from_secs(10), "{waited:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn high_watermarks_follow_the_appends() {
    let broker = Tansu::start();
    let log = KafkaLog::connect(broker.config(2, 2)).await.unwrap();
    for p in 0..2 {
        assert_eq!(
            log.high_watermark(Topic::Votes, Partition(p))
                .await
                .unwrap(),
            Offset(0)
        );
    }
    append_n(&log, 0, 0..5).await;
    append_n(&log, 1, 0..2).await;
    append_n(&log, 0, 5..7).await;
    assert_eq!(
        log.high_watermark(Topic::Votes, Partition(0))
            .await
            .unwrap(),
        Offset(7)
    );
    assert_eq!(
        log.high_watermark(Topic::Votes, Partition(1))
            .await
            .unwrap(),
        Offset(2)
    );
    // Several records per producer batch, asked through a fresh log too (tansu's memory engine
    // answers ListOffsets with the last batch's base + 1; the fetch response has the truth).
    for (a, b) in [(7, 8), (8, 11), (11, 12), (12, 40)] {
        append_n(&log, 0, a..b).await;
        assert_eq!(
            log.high_watermark(Topic::Votes, Partition(0))
                .await
                .unwrap(),
            Offset(b as i64)
        );
    }
    let fresh = KafkaLog::connect(log.config().clone()).await.unwrap();
    assert_eq!(
        fresh
            .high_watermark(Topic::Votes, Partition(0))
            .await
            .unwrap(),
        Offset(40)
    );
    let f = fresh
        .fetch(
            Topic::Votes,
            Partition(0),
            Offset(39),
            1 << 20,
            Duration::ZERO,
        )
        .await
        .unwrap();
    assert_eq!(
        (f.first_offset, f.len(), f.high_watermark),
        (Offset(39), 1, Offset(40))
    );
    let f = log
        .fetch(
            Topic::Votes,
            Partition(0),
            Offset(40),
            1 << 20,
            Duration::ZERO,
        )
        .await
        .unwrap();
    assert_eq!((f.len(), f.high_watermark), (0, Offset(40)));
    let mut b = AppendBatch::default();
    b.push(Partition(1), ts(0), b"poll", b"partial");
    let pos = log.append(Topic::Tallies, b, soon()).await.unwrap();
    assert_eq!(
        pos,
        vec![Position {
            partition: Partition(1),
            offset: Offset(0)
        }]
    );
    assert_eq!(
        log.high_watermark(Topic::Tallies, Partition(1))
            .await
            .unwrap(),
        Offset(1)
    );
    assert_eq!(
        log.high_watermark(Topic::Tallies, Partition(0))
            .await
            .unwrap(),
        Offset(0)
    );
    let f = log
        .fetch(
            Topic::Votes,
            Partition(0),
            Offset(2),
            1 << 20,
            Duration::ZERO,
        )
        .await
        .unwrap();
    assert_eq!(f.high_watermark, Offset(40));
    assert!(matches!(
        log.high_watermark(Topic::Votes, Partition(2)).await,
        Err(LogError::NoSuchPartition(Partition(2)))
    ));
    // The log's start is the broker's low watermark: 0 while nothing was deleted. (tansu cannot
    // delete records, its DeleteRecords is unimplemented, so a raised start is tested in
    // `processor/src/runner/tests.rs` with a log that answers as Kafka would.)
    assert_eq!(
        log.log_start(Topic::Votes, Partition(0)).await.unwrap(),
        Offset(0)
    );
    assert!(matches!(
        log.log_start(Topic::Votes, Partition(2)).await,
        Err(LogError::NoSuchPartition(Partition(2)))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_log_reads_what_the_first_wrote() {
    let broker = Tansu::start();
    let config = broker.config(2, 1);
    let first = KafkaLog::connect(config.clone()).await.unwrap();
    append_n(&first, 0, 0..20).await;
    append_n(&first, 1, 0..3).await;
    let written = read_range(&first, Topic::Votes, 0, 0, 20, 1 << 20).await;
    drop(first);

    // What a new process does: connect (topics exist, same counts), read from its own positions.
    let second = KafkaLog::connect(config).await.unwrap();
    let end = second
        .high_watermark(Topic::Votes, Partition(0))
        .await
        .unwrap();
    assert_eq!(end, Offset(20));
    assert_eq!(
        read_range(&second, Topic::Votes, 0, 0, end.0, 1 << 20).await,
        written
    );
    assert_eq!(
        read_range(&second, Topic::Votes, 1, 1, 3, 1 << 20)
            .await
            .len(),
        2
    );
    // And it appends after them.
    assert_eq!(append_n(&second, 0, 20..21).await[0].offset, Offset(20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_with_another_partition_count_is_refused_with_the_reason() {
    let broker = Tansu::start();
    let config = broker.config(3, 1);
    drop(KafkaLog::connect(config.clone()).await.unwrap());
    let err = KafkaLog::connect(KafkaConfig {
        votes_partitions: 4,
        ..config.clone()
    })
    .await
    .err()
    .expect("a different partition count must be refused");
    let msg = err.to_string();
    assert!(matches!(err, LogError::Config(_)), "{msg}");
    assert!(
        msg.contains(&config.votes_topic) && msg.contains("3 partitions"),
        "{msg}"
    );
    assert!(msg.contains("hash(poll, voter) mod partitions"), "{msg}");
    let err = KafkaLog::connect(KafkaConfig {
        tallies_partitions: 2,
        ..config
    })
    .await
    .err()
    .expect("a different tallies partition count must be refused");
    assert!(err.to_string().contains("tallies_partitions"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_full_and_misaddressed_appends_are_refused() {
    let broker = Tansu::start();
    let mut config = broker.config(1, 1);
    config
        .extra
        .insert("queue.buffering.max.messages".into(), "10".into());
    let log = KafkaLog::connect(config).await.unwrap();
    let mut b = AppendBatch::default();
    b.push(Partition(0), ts(0), b"k", b"v");
    let past = Instant::now() - Duration::from_millis(1);
    assert_eq!(
        log.append(Topic::Votes, b.clone(), past).await,
        Err(LogError::Timeout)
    );
    let mut big = AppendBatch::default();
    for i in 0..50 {
        big.push(Partition(0), ts(i), b"k", b"v");
    }
    assert_eq!(
        log.append(Topic::Votes, big, soon()).await,
        Err(LogError::Overloaded)
    );
    let mut wrong = AppendBatch::default();
    wrong.push(Partition(1), ts(0), b"k", b"v");
    assert_eq!(
        log.append(Topic::Votes, wrong, soon()).await,
        Err(LogError::NoSuchPartition(Partition(1)))
    );
    // Once the queue drains, appends go through again.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(log.append(Topic::Votes, b, soon()).await.is_ok());
}

#[tokio::test]
async fn connect_refuses_a_risky_setting_before_touching_the_network() {
    let mut c = KafkaConfig::new("127.0.0.1:1");
    c.extra.insert("enable.auto.commit".into(), "true".into());
    let err = KafkaLog::connect(c).await.err().unwrap();
    assert!(err.to_string().contains("enable.auto.commit=true"), "{err}");
}

/// Append throughput against tansu: `cargo test -p storage --release kafka::log::tests::append_throughput -- --ignored --nocapture`
/// (`TANSU_STORAGE=sqlite://data/tansu.db` for the durable engine).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check"]
async fn append_throughput() {
    let broker = Tansu::start();
    let log = std::sync::Arc::new(KafkaLog::connect(broker.config(8, 1)).await.unwrap());
    let value = vec![b'x'; 100];
    let secs = 5;
    // Like the edge: one vote per append, many in flight.
    for concurrency in [64usize, 512] {
        let stop = Instant::now() + Duration::from_secs(secs);
        let tasks: Vec<_> = (0..concurrency)
            .map(|t| {
                let (log, value) = (log.clone(), value.clone());
                tokio::spawn(async move {
                    let (mut ok, mut refused) = (0u64, 0u64);
                    let mut i = t as u64;
                    while Instant::now() < stop {
                        let mut b = AppendBatch::default();
                        b.push(
                            Partition((i % 8) as i32),
                            ts(i),
                            format!("k{i}").as_bytes(),
                            &value,
                        );
                        match log
                            .append(Topic::Votes, b, Instant::now() + Duration::from_secs(2))
                            .await
                        {
                            Ok(_) => ok += 1,
                            Err(_) => refused += 1,
                        }
                        i += concurrency as u64;
                    }
                    (ok, refused)
                })
            })
            .collect();
        let (mut ok, mut refused) = (0, 0);
        for t in tasks {
            let (o, r) = t.await.unwrap();
            ok += o;
            refused += r;
        }
        eprintln!(
            "single-record appends, {concurrency} in flight: {} acknowledged/s ({refused} refused)",
            ok / secs
        );
    }
    // Batched: 1000 records per append, 8 in flight.
    let started = Instant::now();
    let stop = started + Duration::from_secs(secs);
    let tasks: Vec<_> = (0..8u64)
        .map(|t| {
            let (log, value) = (log.clone(), value.clone());
            tokio::spawn(async move {
                let mut ok = 0u64;
                while Instant::now() < stop {
                    let mut b = AppendBatch::default();
                    for i in 0..1000u64 {
                        b.push(
                            Partition(((t + i) % 8) as i32),
                            ts(i),
                            format!("k{i}").as_bytes(),
                            &value,
                        );
                    }
                    if log
                        .append(Topic::Votes, b, Instant::now() + Duration::from_secs(5))
                        .await
                        .is_ok()
                    {
                        ok += 1000;
                    }
                }
                ok
            })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        ok += t.await.unwrap();
    }
    eprintln!(
        "1000-record batches, 8 in flight: {} records/s",
        ok * 1000 / started.elapsed().as_millis() as u64
    );
    // The raw rate beside it: a bare rdkafka producer with the same settings.
    let records: Vec<_> = (0..400_000u64)
        .map(|i| {
            (
                Partition((i % 8) as i32),
                format!("k{i}").into_bytes(),
                value.clone(),
            )
        })
        .collect();
    let (delivered, took) = raw_produce(log.config(), &log.config().votes_topic, &records)
        .await
        .unwrap();
    eprintln!(
        "raw rdkafka producer: {} records/s ({delivered} delivered)",
        delivered as u128 * 1000 / took.as_millis().max(1)
    );
    // Reading them back.
    let started = Instant::now();
    let mut read = 0;
    for p in 0..8 {
        let end = log
            .high_watermark(Topic::Votes, Partition(p))
            .await
            .unwrap();
        read += read_range(&log, Topic::Votes, p, 0, end.0, 1 << 20)
            .await
            .len();
    }
    eprintln!(
        "fetch: {read} records in {:?} ({} records/s)",
        started.elapsed(),
        read as u128 * 1000 / started.elapsed().as_millis().max(1)
    );
}
