//! The distributed parts, assembled in one process: `serve` on Kafka (a tansu broker started by the
//! test) and PostgreSQL (the machine's, in a schema of the test's own). Votes go through Kafka,
//! polls and partial tallies land in PostgreSQL, counts are exact, and a restart (new process
//! state, same topics and schema) keeps every poll and every vote, restoring each partition from
//! its checkpoint.

use crate::helpers::*;
use crowdtick::Config;
use futures::StreamExt;
use results::PollResults;
use storage::test_broker::TansuBroker;
use storage::TallyStore;

#[path = "../../storage/tests/support/cql_double.rs"]
mod cql_double;
use cql_double::CqlDouble;

/// Deletes a topic on the test broker (tansu has deleted it when it answers; Kafka itself
/// deletes later).
async fn delete_topic(broker: &TansuBroker, topic: &str) {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", broker.addr())
        .create()
        .unwrap();
    let options = AdminOptions::new().operation_timeout(Some(std::time::Duration::from_secs(10)));
    let deleted = admin.delete_topics(&[topic], &options).await.unwrap();
    assert!(deleted.iter().all(Result::is_ok), "{deleted:?}");
}

fn postgres_url() -> String {
    std::env::var("CROWDTICK_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_on_kafka_and_postgres_counts_exactly_and_survives_a_restart() {
    counts_exactly_and_survives_a_restart(None).await;
}

/// The same with the tallies and checkpoints in ScyllaDB (`--scylla`): against a node named by
/// CROWDTICK_TEST_SCYLLA, else against the CQL test double (ScyllaDB cannot run on the build
/// machines). The restart restores every partition from its checkpoint there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_on_kafka_postgres_and_scylla_counts_exactly_and_survives_a_restart() {
    match std::env::var("CROWDTICK_TEST_SCYLLA") {
        Ok(hosts) => counts_exactly_and_survives_a_restart(Some(hosts)).await,
        Err(_) => {
            let double = CqlDouble::start();
            eprintln!("NOTE: no ScyllaDB node (CROWDTICK_TEST_SCYLLA): on the CQL test double");
            counts_exactly_and_survives_a_restart(Some(double.hosts())).await;
        }
    }
}

async fn counts_exactly_and_survives_a_restart(scylla: Option<String>) {
    let broker = TansuBroker::start();
    let run = format!("{}_{}", std::process::id(), rand::random::<u32>());
    let schema = format!("ct_it_{run}");
    let pg = postgres_url();
    let configure = |c: &mut Config| {
        c.kafka.brokers = broker.addr().into();
        c.kafka.topic_prefix = format!("it{run}.");
        c.kafka.replication_factor = 1;
        c.postgres.url = pg.clone();
        c.postgres.schema = schema.clone();
        c.ingest.deadline_ms = 5_000;
        // A static member, as a restarted pod of a StatefulSet is: the restarted process takes
        // over the old member's place and partitions at once. (As a dynamic member it depends on
        // the broker reassigning after the old member left; the test broker, tansu, sometimes
        // left the new member with no partitions for over a minute after a clean leave. The
        // dynamic joins and leaves are covered by tests/it/cluster.rs.)
        c.processor.instance_id = format!("it-{run}");
        if let Some(hosts) = &scylla {
            c.scylla.hosts = hosts.clone();
            c.scylla.keyspace = schema.clone();
            c.scylla.replication_class = "SimpleStrategy".into();
            c.scylla.replication_factor = 1;
        }
    };
    let app = spawn_app_with(configure).await;
    let poll = app.open_poll(&["A", "B", "C"]).await;

    // 200 voters vote, then 100 of them vote again for another option (never counted).
    let first: Vec<(i64, String)> = (0..200).map(|i| (i % 3, format!("dv{i}"))).collect();
    let again: Vec<(i64, String)> = (0..100).map(|i| ((i + 1) % 3, format!("dv{i}"))).collect();
    for round in [first, again] {
        let statuses: Vec<u16> = futures::stream::iter(round)
            .map(|(option, voter)| {
                let app = &app;
                async move { app.vote(poll, option, &voter).await.0 }
            })
            .buffer_unordered(32)
            .collect()
            .await;
        assert!(statuses.iter().all(|&s| s == 202), "{statuses:?}");
    }
    let expected = [67, 67, 66];
    app.wait_counts(poll, &expected, 60).await;

    // The partial tallies are in the tally store (PostgreSQL, or ScyllaDB) and add up to the same
    // counts.
    let pool = storage::postgres::connect(&pg).await.expect("PostgreSQL (start it: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start)");
    let store: Box<dyn TallyStore> = match &scylla {
        None => Box::new(storage::PgTallyStore::new(pool.clone(), &schema).unwrap()),
        Some(_) => {
            let mut c = Config::default();
            configure(&mut c);
            let config = c.scylla_config();
            let session = storage::scylla::connect(&config).await.unwrap();
            Box::new(
                storage::ScyllaTallyStore::new(session, &config)
                    .await
                    .unwrap(),
            )
        }
    };
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let mut merged = PollResults::default();
        for t in store
            .load_all()
            .await
            .unwrap()
            .into_iter()
            .filter(|t| t.poll_id == poll)
        {
            merged.apply(t);
        }
        if merged.counts(3) == expected {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "tally store holds {:?}",
            merged.counts(3)
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    // The processors' positions are committed to the group, for lag tools: all 300 votes read.
    let (kafka, group) = {
        let mut c = Config::default();
        c.log.partitions = 4; // as spawn_app_with sets it
        configure(&mut c);
        (c.kafka_config(), c.group_config())
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let committed = storage::kafka::committed_offsets(&kafka, &group).unwrap();
        if committed.values().map(|o| o.count()).sum::<u64>() == 300 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "committed offsets {committed:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }

    // The audit replays the Kafka votes topic and agrees with every published partial.
    let mut audit = Config::default();
    audit.log.partitions = 4; // as spawn_app_with sets it
    configure(&mut audit);
    assert!(
        crowdtick::recount::run(&audit, false).await.unwrap(),
        "recount disagrees"
    );

    // Restart: polls come back from PostgreSQL, counts from Kafka; dedupe still holds. The
    // tallies topic is deleted first, as its retention deletes the partials of a poll quiet for
    // longer than it: the results come back from the tally store.
    let data = app.stop().await;
    delete_topic(&broker, &kafka.tallies_topic).await;
    let app = spawn_app_in(data, configure).await;
    // Ready means the processor owns its partitions again (the group has rebalanced).
    let checks = wait_ready(&app.client, &app.base, 90).await;
    assert!(checks.contains(&"partitions".to_string()), "{checks:?}");
    let (status, body) = app
        .call("GET", &format!("/v1/polls/{poll}"), None, false)
        .await;
    assert_eq!(
        (status, body["state"].as_str()),
        (200, Some("open")),
        "{body}"
    );
    assert_eq!(
        app.vote(poll, 2, "dv0").await.0,
        202,
        "a known voter is acknowledged …"
    );
    assert_eq!(app.vote(poll, 2, "dv-new").await.0, 202);
    app.wait_counts(poll, &[67, 67, 67], 60).await; // … but only the new voter counts
                                                    // The partitions were not replayed: each was restored from the checkpoint written when the
                                                    // first process stopped (with its voters, or "dv0" would have counted again).
    let metrics = reqwest::get(app.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let restored = metrics
        .lines()
        .find_map(|l| l.strip_prefix("crowdtick_processor_checkpoints_restored_total "))
        .unwrap_or_else(|| panic!("no checkpoint metric in\n{metrics}"));
    assert_eq!(restored, "4", "partitions restored from checkpoints");
    let _ = app.stop().await;

    let client = pool.get().await.unwrap();
    client
        .batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
        .await
        .unwrap();
}

#[tokio::test]
async fn settings_that_could_lose_or_skip_votes_are_refused_at_start_up() {
    for (key, value, why) in [
        ("enable.idempotence", "false", "enable.idempotence"),
        ("acks", "1", "acks"),
        ("auto.offset.reset", "latest", "auto.offset.reset"),
    ] {
        let data = tempfile::tempdir().unwrap();
        let mut config = Config {
            data_dir: data.path().to_path_buf(),
            ..Config::default()
        };
        // No broker is needed: the settings are checked before any connection.
        config.kafka.brokers = "127.0.0.1:1".into();
        config.kafka.settings.insert(key.into(), value.into());
        let err = match crowdtick::serve::start(config).await {
            Ok(_) => panic!("{key}={value} was accepted"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(why), "{key}={value}: {err}");
    }
}
