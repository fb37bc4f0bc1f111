//! Against a real PostgreSQL (`CROWDTICK_TEST_POSTGRES`, default
//! `postgres://postgres@127.0.0.1:5432/test`). Each test works in a schema of its own, dropped at
//! the end, so tests run side by side. An unreachable server fails the test: never skipped.

use super::*;
use crate::polls::PollCatalog;
use crate::tally_store::MemoryTallyStore;
use proptest::prelude::*;
use schemas::{Rejections, Timestamp};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

fn test_url() -> String {
    std::env::var("CROWDTICK_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

async fn test_pool() -> Pool {
    let url = test_url();
    connect(&url).await.unwrap_or_else(|e| {
        panic!(
            "{e}\n\nThe storage tests need PostgreSQL at {url} (trust auth, user postgres, \
             database test). Start it with:\n  \
             pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start\n\
             (or set CROWDTICK_TEST_POSTGRES to another server's URL)"
        )
    })
}

/// A migrated schema of this test's own, dropped when the value goes (also on a failure).
struct TestDb {
    pool: Pool,
    schema: String,
}

impl TestDb {
    async fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let schema = format!(
            "ct_test_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        let pool = test_pool().await;
        let mut client = pool.get().await.unwrap();
        client
            .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
            .await
            .unwrap();
        migrate(&mut client, &schema).await.unwrap();
        drop(client);
        Self { pool, schema }
    }

    fn polls(&self) -> PgPollStore {
        PgPollStore::new(self.pool.clone(), &self.schema).unwrap()
    }

    fn tallies(&self) -> PgTallyStore {
        PgTallyStore::new(self.pool.clone(), &self.schema).unwrap()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let (url, schema) = (test_url(), self.schema.clone());
        // Drop runs inside a test's runtime: do the async cleanup on a thread of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok((client, conn)) = tokio_postgres::connect(&url, NoTls).await {
                    tokio::spawn(conn);
                    let _ = client
                        .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                        .await;
                }
            });
        })
        .join();
    }
}

fn poll(id: i64, slug: String) -> Poll {
    Poll {
        id,
        slug,
        title: "Who wins? \"Quotes\" and ünïcode".into(),
        options: vec!["A".into(), "B, with a comma".into(), "C".into()],
        max_choices: 2,
        visibility: Visibility::OnReveal,
        opens_at: Some(Timestamp(1_700_000_000_000_000)),
        closes_at: None,
        opened_at: None,
        closed_at: None,
        revealed: false,
        created_at: Timestamp(1_699_999_999_000_000),
        creator: Some("operator".into()),
        voters: schemas::Voters::Verified,
    }
}

/// A partial whose content is a function of its key, offset and completeness (as the processor's
/// are of the log), so two partials with the same ones are equal.
fn partial(
    poll_id: i64,
    partition: i32,
    offset: i64,
    complete_until: i64,
    windows: &[i64],
) -> PartialTally {
    PartialTally {
        poll_id,
        partition: Partition(partition),
        offset: Offset(offset),
        counts: vec![offset, 2 * offset + poll_id],
        voters: 3 * offset,
        rejected: Rejections {
            duplicate: offset / 2,
            late: 1,
            closed: partition as i64,
            invalid: 0,
        },
        late_for_window: offset / 3,
        windows: windows
            .iter()
            .map(|&start_ms| WindowCount {
                start_ms,
                votes: window_votes(poll_id, partition, start_ms, offset),
            })
            .collect(),
        complete_until: Timestamp(complete_until),
        emitted_at: Timestamp(1_000 + offset),
    }
}

fn window_votes(poll_id: i64, partition: i32, start_ms: i64, offset: i64) -> i64 {
    (poll_id * 7 + partition as i64 * 3 + start_ms / 1000 + offset * 11) % 1000
}

fn windows(t: &PartialTally) -> Vec<(i64, i64)> {
    t.windows.iter().map(|w| (w.start_ms, w.votes)).collect()
}

fn bare(t: &PartialTally) -> PartialTally {
    PartialTally {
        windows: Vec::new(),
        ..t.clone()
    }
}

#[tokio::test]
async fn unreachable_server_is_a_clear_error() {
    let err = connect("postgres://postgres:secret@127.0.0.1:1/test")
        .await
        .unwrap_err();
    assert!(err.unreachable);
    let e = err.to_string();
    assert!(
        e.starts_with(
            "cannot connect to PostgreSQL at postgres://postgres:<redacted>@127.0.0.1:1/test: "
        ),
        "{e}"
    );
    assert!(!e.contains("secret"), "{e}");
    assert!(e.to_lowercase().contains("refused"), "{e}");
    // A scheme tokio-postgres does not know: it reads the string as key=value words and quotes
    // the one it cannot read, password and all.
    for (url, tell) in [
        (
            "Postgres://postgres:secret@127.0.0.1:1/test?sslmode=disable",
            "unknown option `…`",
        ),
        (
            "Postgres://postgres:se`cret@127.0.0.1:1/test?sslmode=disable",
            "unknown option `…`",
        ),
        ("host=127.0.0.1 password secret", "but got `…`"),
    ] {
        let e = connect(url).await.unwrap_err().to_string();
        assert!(e.starts_with("invalid PostgreSQL URL <redacted>: "), "{e}");
        assert!(e.contains(tell) && !e.contains("cret"), "{e}");
    }
    let e = connect("host=127.0.0.1 port=x")
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("invalid value for option `port`"), "{e}");
    assert!(quote_ident("").is_err());
    assert_eq!(quote_ident("a\"b").unwrap(), "\"a\"\"b\"");
}

#[tokio::test]
async fn a_server_that_refuses_the_login_is_not_unreachable() {
    test_pool().await;
    let err = connect("postgres://no_such_role_crowdtick@127.0.0.1:5432/test")
        .await
        .unwrap_err();
    assert!(!err.unreachable, "{err}");
    assert!(err.to_string().contains("no_such_role_crowdtick"), "{err}");
}

#[tokio::test]
async fn migrate_is_idempotent_and_stays_in_its_schema() {
    let db = TestDb::new().await;
    let mut client = db.pool.get().await.unwrap();
    migrate(&mut client, &db.schema).await.unwrap();
    migrate(&mut client, &db.schema).await.unwrap();
    // Concurrent runs (services starting together) wait for each other.
    let mut other = db.pool.get().await.unwrap();
    let (a, b) = tokio::join!(
        migrate(&mut client, &db.schema),
        migrate(&mut other, &db.schema)
    );
    a.unwrap();
    b.unwrap();
    let tables: Vec<String> = client
        .query(
            "SELECT table_name::text FROM information_schema.tables \
             WHERE table_schema = $1 ORDER BY 1",
            &[&db.schema],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        tables,
        [
            "partial_tallies",
            "partition_checkpoints",
            "polls",
            "tally_windows"
        ]
    );
    // The session's search_path is untouched (SET LOCAL).
    let path: String = client
        .query_one("SHOW search_path", &[])
        .await
        .unwrap()
        .get(0);
    assert!(!path.contains(&db.schema), "{path}");
    // The tables work after the repeated migrations.
    let store = db.polls();
    store.save(&poll(1, "abc".into())).await.unwrap();
    migrate(&mut client, &db.schema).await.unwrap();
    assert_eq!(store.load().await.unwrap().len(), 1);
}

#[tokio::test]
async fn polls_roundtrip_and_catalog() {
    let db = TestDb::new().await;
    let store = db.polls();
    assert!(store.load().await.unwrap().is_empty());
    let a = poll(1, "aaaaaa".into());
    let mut b = poll(2, "bbbbbb".into());
    b.visibility = Visibility::Live;
    b.creator = None;
    b.opens_at = None;
    b.closes_at = Some(Timestamp(5));
    b.voters = Voters::Anyone;
    store.save(&b).await.unwrap();
    store.save(&a).await.unwrap();
    assert_eq!(store.load().await.unwrap(), vec![a.clone(), b.clone()]);

    // save is an upsert.
    let mut a2 = a.clone();
    a2.title = "Renamed".into();
    a2.visibility = Visibility::AfterClose;
    a2.revealed = true;
    store.save(&a2).await.unwrap();
    assert_eq!(store.load().await.unwrap(), vec![a2.clone(), b.clone()]);

    // A slug taken by another poll, or a title over the limit, is refused.
    let taken = poll(3, "aaaaaa".into());
    assert!(matches!(
        store.save(&taken).await,
        Err(StoreError::Rejected(_))
    ));
    let mut long = poll(3, "cccccc".into());
    long.title = "x".repeat(256);
    assert!(matches!(
        store.save(&long).await,
        Err(StoreError::Rejected(_))
    ));

    // Through the catalog: create, close by hand, reload from a fresh store.
    let catalog = PollCatalog::load(Arc::new(db.polls())).await.unwrap();
    assert_eq!(catalog.list().len(), 2);
    let c = catalog.create(poll).await.unwrap();
    assert_eq!(c.id, 3);
    let (stamp, _) = catalog.stamp_and_get(3);
    let closed = catalog
        .update(3, |p, now| {
            p.closed_at = Some(now);
            Ok(())
        })
        .await
        .unwrap();
    assert!(closed.closed_at.unwrap() >= stamp);
    let again = PollCatalog::load(Arc::new(db.polls())).await.unwrap();
    assert_eq!(*again.get(3).unwrap(), *closed);
    assert_eq!(again.by_slug(&c.slug).unwrap().id, 3);
    assert_eq!(*again.get(1).unwrap(), a2);
    assert_eq!(again.list().len(), 3);
}

#[tokio::test]
async fn checkpoints_only_move_forward() {
    let db = TestDb::new().await;
    let store = db.tallies();
    assert_eq!(store.load_checkpoint(Partition(2)).await.unwrap(), None);
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    // A few MB round-trip whole (a partition of ~150k voters).
    assert!(store
        .put_checkpoint(Partition(2), Offset(100), big.clone())
        .await
        .unwrap());
    assert_eq!(
        store.load_checkpoint(Partition(2)).await.unwrap(),
        Some((Offset(100), big))
    );
    crate::tally_store::tests::checkpoint_contract(&store).await;
}

#[tokio::test]
async fn keeps_the_tally_store_contract() {
    let db = TestDb::new().await;
    crate::tally_store::tests::contract(&db.tallies()).await;
    // The statement's own spelling of "newer partial wins", against schemas::Freshness.
    let db = TestDb::new().await;
    crate::tally_store::tests::newest_wins_grid(&db.tallies(), false).await;
}

/// A failure says which store failed and keeps PostgreSQL's own error as its source.
#[tokio::test]
async fn a_failure_keeps_postgresql_s_error_as_its_source() {
    let db = TestDb::new().await;
    let missing = PgTallyStore::new(db.pool.clone(), &format!("{}_missing", db.schema)).unwrap();
    let err = missing.load_all().await.unwrap_err();
    assert!(
        err.to_string().starts_with("tally store I/O: PostgreSQL: "),
        "{err}"
    );
    assert!(err.to_string().contains("does not exist"), "{err}");
    let source = std::error::Error::source(&err).expect("the cause is kept");
    let db_error = source
        .downcast_ref::<tokio_postgres::Error>()
        .and_then(tokio_postgres::Error::as_db_error)
        .expect("the source is PostgreSQL's own error");
    assert_eq!(
        db_error.code(),
        &tokio_postgres::error::SqlState::UNDEFINED_TABLE
    );
    let polls = PgPollStore::new(db.pool.clone(), &format!("{}_missing", db.schema)).unwrap();
    let err = polls.load().await.unwrap_err();
    assert!(
        err.to_string().starts_with("store I/O: PostgreSQL: "),
        "{err}"
    );
    assert!(std::error::Error::source(&err).is_some());
}

#[tokio::test]
async fn older_partials_are_refused_newer_accepted() {
    let db = TestDb::new().await;
    let store = db.tallies();
    assert_eq!(store.put(&[]).await.unwrap(), 0);
    let p10 = partial(1, 0, 10, 100, &[]);
    assert_eq!(store.put(std::slice::from_ref(&p10)).await.unwrap(), 1);
    assert_eq!(store.load_all().await.unwrap(), vec![p10.clone()]);

    // Older: refused, the stored one unchanged (a zombie processor).
    assert_eq!(store.put(&[partial(1, 0, 9, 500, &[])]).await.unwrap(), 0);
    // Same offset, same or lower completeness: refused.
    assert_eq!(store.put(&[partial(1, 0, 10, 100, &[])]).await.unwrap(), 0);
    assert_eq!(store.put(&[partial(1, 0, 10, 99, &[])]).await.unwrap(), 0);
    assert_eq!(store.load_all().await.unwrap(), vec![p10.clone()]);

    // Same offset, higher completeness: accepted.
    let p10b = partial(1, 0, 10, 200, &[]);
    assert_eq!(store.put(std::slice::from_ref(&p10b)).await.unwrap(), 1);
    assert_eq!(store.load_all().await.unwrap(), vec![p10b.clone()]);

    // Newer: accepted, even with a lower completeness.
    let p11 = partial(1, 0, 11, 50, &[]);
    assert_eq!(store.put(std::slice::from_ref(&p11)).await.unwrap(), 1);
    assert_eq!(store.load_all().await.unwrap(), vec![p11.clone()]);

    // A batch: other keys, a duplicate key (the newest of the two counts once), a stale one.
    let batch = vec![
        partial(1, 1, 3, 0, &[]),
        partial(2, 0, 7, 0, &[]),
        partial(1, 1, 5, 0, &[]),
        partial(1, 0, 4, 0, &[]),
    ];
    assert_eq!(store.put(&batch).await.unwrap(), 2);
    let all = store.load_all().await.unwrap();
    assert_eq!(
        all,
        vec![
            p11.clone(),
            partial(1, 1, 5, 0, &[]),
            partial(2, 0, 7, 0, &[])
        ]
    );
    assert_eq!(
        store.load_partition(Partition(0)).await.unwrap(),
        vec![p11, partial(2, 0, 7, 0, &[])]
    );
    assert_eq!(
        store.load_partition(Partition(1)).await.unwrap(),
        vec![partial(1, 1, 5, 0, &[])]
    );
    assert!(store.load_partition(Partition(2)).await.unwrap().is_empty());
}

#[tokio::test]
async fn windows_survive_and_merge_by_offset() {
    let db = TestDb::new().await;
    let store = db.tallies();
    let v = |start, offset| window_votes(1, 0, start, offset);
    store
        .put(&[partial(1, 0, 10, 0, &[1000, 2000])])
        .await
        .unwrap();
    // A partial carries only the windows that changed: 1000 stays from offset 10.
    store
        .put(&[partial(1, 0, 20, 0, &[2000, 3000])])
        .await
        .unwrap();
    // A stale partial loses, and so does its window 2000 (older than the stored 20), but its
    // window 4000 is the newest of its own window (merge.rs rules: each window on its own).
    assert_eq!(
        store
            .put(&[partial(1, 0, 15, 0, &[2000, 4000])])
            .await
            .unwrap(),
        0
    );
    // Another partition's windows stay apart.
    store.put(&[partial(1, 1, 5, 0, &[1000])]).await.unwrap();

    let all = store.load_all().await.unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(bare(&all[0]), bare(&partial(1, 0, 20, 0, &[])));
    assert_eq!(
        windows(&all[0]),
        vec![
            (1000, v(1000, 10)),
            (2000, v(2000, 20)),
            (3000, v(3000, 20)),
            (4000, v(4000, 15)),
        ]
    );
    assert_eq!(windows(&all[1]), vec![(1000, window_votes(1, 1, 1000, 5))]);
    // A fresh store on the same tables reads the same (restart).
    assert_eq!(
        db.tallies().load_partition(Partition(0)).await.unwrap(),
        all[..1]
    );
}

/// Random partials, in random batches and order, end as the per-key maximum (and as the
/// in-memory reference store), windows included.
#[test]
fn random_sequences_end_at_the_maximum() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let db = rt.block_on(TestDb::new());
    let store = db.tallies();
    let case = AtomicUsize::new(0);
    let one = (
        0i64..3,
        0i32..3,
        0i64..12,
        0i64..3,
        proptest::collection::vec(0i64..5, 0..4),
    );
    let strategy = (
        proptest::collection::vec(one, 1..30),
        proptest::collection::vec(1usize..6, 1..30),
    );
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 64,
        ..ProptestConfig::default()
    });
    runner
        .run(&strategy, |(items, batch_sizes)| {
            // Each case has polls of its own in the shared schema.
            let base = case.fetch_add(1, Ordering::SeqCst) as i64 * 100;
            let partials: Vec<PartialTally> = items
                .iter()
                .map(|(poll, part, offset, cu, starts)| {
                    let starts: Vec<i64> = starts.iter().map(|s| s * 1000).collect();
                    partial(base + poll, *part, *offset, *cu, &starts)
                })
                .collect();
            let memory = MemoryTallyStore::new();
            rt.block_on(async {
                let mut rest = &partials[..];
                let mut sizes = batch_sizes.iter().cycle();
                while !rest.is_empty() {
                    let n = (*sizes.next().unwrap()).min(rest.len());
                    let (batch, tail) = rest.split_at(n);
                    rest = tail;
                    let written = store.put(batch).await.unwrap();
                    prop_assert_eq!(written, memory.put(batch).await.unwrap());
                }
                // The expected state, computed independently.
                let mut best: BTreeMap<(i64, i32), (i64, i64)> = BTreeMap::new();
                let mut wins: BTreeMap<(i64, i32, i64), i64> = BTreeMap::new();
                for t in &partials {
                    let slot = best
                        .entry((t.poll_id, t.partition.0))
                        .or_insert((t.offset.0, t.complete_until.micros()));
                    *slot = (*slot).max((t.offset.0, t.complete_until.micros()));
                    for w in &t.windows {
                        let o = wins
                            .entry((t.poll_id, t.partition.0, w.start_ms))
                            .or_insert(t.offset.0);
                        *o = (*o).max(t.offset.0);
                    }
                }
                let expected: Vec<PartialTally> = best
                    .iter()
                    .map(|(&(poll, part), &(offset, cu))| {
                        let mut t = partial(poll, part, offset, cu, &[]);
                        t.windows = wins
                            .range((poll, part, i64::MIN)..=(poll, part, i64::MAX))
                            .map(|(&(_, _, start_ms), &o)| WindowCount {
                                start_ms,
                                votes: window_votes(poll, part, start_ms, o),
                            })
                            .collect();
                        t
                    })
                    .collect();
                let mine: Vec<PartialTally> = store
                    .load_all()
                    .await
                    .unwrap()
                    .into_iter()
                    .filter(|t| t.poll_id >= base && t.poll_id < base + 100)
                    .collect();
                prop_assert_eq!(&mine, &expected);
                prop_assert_eq!(&memory.load_all().await.unwrap(), &expected);
                for part in 0..3 {
                    let got: Vec<_> = store
                        .load_partition(Partition(part))
                        .await
                        .unwrap()
                        .into_iter()
                        .filter(|t| t.poll_id >= base && t.poll_id < base + 100)
                        .collect();
                    let want: Vec<_> = expected
                        .iter()
                        .filter(|t| t.partition == Partition(part))
                        .cloned()
                        .collect();
                    prop_assert_eq!(got, want);
                }
                Ok(())
            })
        })
        .unwrap();
    drop(store);
    drop(db);
}

/// Two writers (a live processor and a zombie, each on its own connections) interleave partials
/// of the same keys; the highest offset of each key wins, and no batch fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_end_at_the_highest_offset() {
    let db = TestDb::new().await;
    let mut tasks = Vec::new();
    for writer in 0..2i64 {
        let store = PgTallyStore::new(test_pool().await, &db.schema).unwrap();
        tasks.push(tokio::spawn(async move {
            let mut written = 0;
            for step in 0..150i64 {
                // Writer 0 writes even offsets, writer 1 odd ones; each batch touches three
                // keys, in a different order per writer, and shared windows.
                let offset = 2 * step + writer;
                let mut batch: Vec<PartialTally> = (0..3)
                    .map(|part| partial(1, part, offset, 0, &[(step % 4) * 1000, 9000]))
                    .collect();
                if writer == 1 {
                    batch.reverse();
                }
                written += store.put(&batch).await.unwrap();
            }
            written
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    // Every key took at least its writers' first partial and at most every one.
    assert!((3..=900).contains(&total), "{total}");
    let all = db.tallies().load_all().await.unwrap();
    assert_eq!(all.len(), 3);
    for (part, t) in all.iter().enumerate() {
        assert_eq!(bare(t), bare(&partial(1, part as i32, 299, 0, &[])));
        let w: BTreeMap<i64, i64> = windows(t).into_iter().collect();
        assert_eq!(w[&9000], window_votes(1, part as i32, 9000, 299));
        // Window 1000 was last written at step 149 (offsets 298 and 299).
        assert_eq!(w[&1000], window_votes(1, part as i32, 1000, 299));
        assert_eq!(w.len(), 5);
    }
}
