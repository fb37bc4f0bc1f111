//! The schema registry (`storage/src/registry_log.rs`) against the registry test double
//! (`registry_double.rs`; no registry server installs on the build machines): the Kafka topics
//! carry the Confluent wire format, consumers the project did not write (Python's
//! `confluent-kafka`, and the Rust example on `schema_registry_converter`) read the tallies topic
//! and get the results API's totals, and the tally schema evolves BACKWARD compatibly both ways.

use crate::helpers::*;
use crate::registry_double::RegistryDouble;
use apache_avro::types::Value as Avro;
use apache_avro::Schema;
use schemas::{Offset, PartialTally, Partition, Timestamp};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use storage::registry_log::{parse_wire, RegistryError, Wire};
use storage::test_broker::TansuBroker;
use storage::{
    AppendBatch, EmbeddedLog, EmbeddedLogConfig, Log, RegistryConfig, RegistryLog, Topic,
};

const TALLY_V2: &str = include_str!("../../schemas/avro/tally.v2.avsc");

fn postgres_url() -> String {
    std::env::var("CROWDTICK_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

fn registry_config(url: &str) -> RegistryConfig {
    RegistryConfig {
        url: url.into(),
        auto_register: true,
        timeout: Duration::from_secs(5),
    }
}

/// Every record of `topic` from the start, as stored (no registry in between).
async fn raw_records(log: &dyn Log, topic: Topic) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for p in Partition::all(log.partitions(topic)) {
        let end = log.high_watermark(topic, p).await.unwrap();
        let mut offset = Offset::ZERO;
        while offset < end {
            let f = log
                .fetch(topic, p, offset, 1 << 20, Duration::from_secs(5))
                .await
                .unwrap();
            out.extend(f.iter().map(|(_, _, _, v)| v.to_vec()));
            offset = f.next_offset();
        }
    }
    out
}

fn tally(poll_id: i64, offset: i64) -> PartialTally {
    PartialTally {
        poll_id,
        partition: Partition(0),
        offset: Offset(offset),
        counts: vec![offset, 2],
        voters: offset + 2,
        complete_until: Timestamp(1_000 + offset),
        emitted_at: Timestamp(2_000 + offset),
        ..Default::default()
    }
}

/// The repository's root (examples, schemas, target/pyenv).
fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The Python of target/pyenv (scripts/test.sh makes it), when it has confluent-kafka.
fn python() -> Option<PathBuf> {
    let python = std::env::var_os("CROWDTICK_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/pyenv/bin/python"));
    let ok = std::process::Command::new(&python)
        .args(["-c", "import confluent_kafka.schema_registry.avro"])
        .status()
        .is_ok_and(|s| s.success());
    ok.then_some(python)
}

/// Runs a consumer to the end of the tallies topic; its totals by poll id.
fn run_consumer(mut command: std::process::Command) -> serde_json::Map<String, Value> {
    let out = command.output().expect("the consumer runs");
    assert!(
        out.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().last().unwrap_or_default();
    match serde_json::from_str(last) {
        Ok(Value::Object(totals)) => totals,
        _ => panic!("{command:?} printed {text}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_registry_every_record_is_framed_and_third_party_consumers_get_the_api_totals() {
    let broker = TansuBroker::start();
    let registry = RegistryDouble::start().await;
    let run = format!("{}_{}", std::process::id(), rand::random::<u32>());
    let prefix = format!("itsr{run}.");
    let pg = postgres_url();
    let mut config = crowdtick::Config::default();
    let app = spawn_app_with(|c| {
        c.kafka.brokers = broker.addr().into();
        c.kafka.topic_prefix = prefix.clone();
        c.kafka.replication_factor = 1;
        c.postgres.url = pg.clone();
        c.postgres.schema = format!("ct_it_sr_{run}");
        c.ingest.deadline_ms = 5_000;
        c.schema_registry.url = registry.url.clone();
        config = c.clone();
    })
    .await;
    let polls = [
        app.open_poll(&["A", "B", "C"]).await,
        app.open_poll(&["yes", "no"]).await,
    ];
    for i in 0..90 {
        let (status, body) = app.vote(polls[0], i % 3, &format!("sr{i}")).await;
        assert_eq!(status, 202, "{body}");
        let (status, body) = app
            .vote(polls[1], (i % 5 == 0) as i64, &format!("sr{i}"))
            .await;
        assert_eq!(status, 202, "{body}");
    }
    app.wait_counts(polls[0], &[30, 30, 30], 60).await;
    app.wait_counts(polls[1], &[72, 18], 60).await;

    // One schema per subject, named by topic; every record on both topics carries its id.
    let votes = registry.versions(&format!("{prefix}votes-value"));
    let tallies = registry.versions(&format!("{prefix}tallies-value"));
    assert_eq!(
        (votes.len(), tallies.len()),
        (1, 1),
        "{votes:?} {tallies:?}"
    );
    let registered = Schema::parse_str(&registry.schema(tallies[0]).unwrap()).unwrap();
    let ours = Schema::parse_str(schemas::TALLY_AVSC).unwrap();
    assert_eq!(registered.canonical_form(), ours.canonical_form());
    let plain = storage::KafkaLog::connect(config.kafka_config())
        .await
        .unwrap();
    for (topic, id) in [(Topic::Votes, votes[0]), (Topic::Tallies, tallies[0])] {
        let records = raw_records(&plain, topic).await;
        assert!(records.len() >= 2, "{topic:?}: {} records", records.len());
        for value in &records {
            assert!(
                matches!(parse_wire(value), Wire::Framed { id: found, .. } if found == id),
                "{topic:?}: a record not framed with schema {id}: {:?}",
                &value[..value.len().min(8)]
            );
        }
    }

    // The node counts what it framed, and read nothing it had to convert.
    assert!(
        app.metric("crowdtick_schema_registry_records_framed_total")
            .await
            >= 180 + 2
    );
    for none in ["bare", "transcoded", "unreadable"] {
        let name = format!("crowdtick_schema_registry_records_{none}_total");
        assert_eq!(app.metric(&name).await, 0, "{name}");
    }

    // Consumers the project did not write read the tallies topic and get the API's totals. The
    // topic may trail the API by a flush: each consumer gets a few tries.
    let mut expected = serde_json::Map::new();
    for poll in polls {
        let r = app.results(poll).await;
        expected.insert(
            poll.to_string(),
            serde_json::json!({"counts": r["counts"], "voters": r["voters"], "version": r["version"]}),
        );
    }
    let consumers = consumer_commands(broker.addr(), &registry.url, &format!("{prefix}tallies"));
    for (name, make) in consumers {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let totals = run_consumer(make());
            let got: serde_json::Map<String, Value> = totals
                .iter()
                .map(|(poll, t)| {
                    let t = serde_json::json!({"counts": t["counts"], "voters": t["voters"], "version": t["version"]});
                    (poll.clone(), t)
                })
                .collect();
            if got == expected {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{name}: {got:?}, the API: {expected:?}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    app.stop().await;
}

/// The consumers to run: the Rust example always (built by `cargo test`), Python's when
/// target/pyenv has confluent-kafka (scripts/test.sh installs it), both as a reader of the
/// record's own schema and as a reader of the next version (tally.v2.avsc).
#[allow(clippy::type_complexity)]
fn consumer_commands(
    bootstrap: &str,
    registry: &str,
    topic: &str,
) -> Vec<(&'static str, Box<dyn Fn() -> std::process::Command>)> {
    let common = [
        "--bootstrap".to_string(),
        bootstrap.into(),
        "--registry".into(),
        registry.into(),
        "--topic".into(),
        topic.into(),
    ];
    let example = std::env::current_exe()
        .unwrap()
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("examples/tallies_consumer");
    assert!(
        example.exists(),
        "{} is missing: `cargo test` builds it (or `cargo build --example tallies_consumer`)",
        example.display()
    );
    let args = common.clone();
    let mut out: Vec<(&'static str, Box<dyn Fn() -> std::process::Command>)> = vec![(
        "examples/tallies_consumer.rs",
        Box::new(move || {
            let mut c = std::process::Command::new(&example);
            c.args(&args);
            c
        }),
    )];
    let Some(python) = python() else {
        eprintln!(
            "SKIPPED: examples/tallies_consumer.py (confluent-kafka): no Python with confluent-kafka at \
             target/pyenv or CROWDTICK_TEST_PYTHON; scripts/test.sh installs it \
             (deploy/checks/requirements.txt). The Rust consumer ran."
        );
        return out;
    };
    let script = root().join("examples/tallies_consumer.py");
    let v2 = root().join("schemas/avro/tally.v2.avsc");
    for (name, reader) in [
        ("examples/tallies_consumer.py", None),
        (
            "examples/tallies_consumer.py --reader-schema tally.v2.avsc",
            Some(v2),
        ),
    ] {
        let (python, script, args) = (python.clone(), script.clone(), common.clone());
        out.push((
            name,
            Box::new(move || {
                let mut c = std::process::Command::new(&python);
                c.arg(&script).args(&args).arg("--once");
                if let Some(reader) = &reader {
                    c.arg("--reader-schema").arg(reader);
                }
                c
            }),
        ));
    }
    out
}

/// A registry log over an embedded log in `dir` (the framing does not care what is under it).
async fn registry_log(dir: &Path, url: &str) -> (Arc<dyn Log>, RegistryLog) {
    let inner: Arc<dyn Log> = Arc::new(EmbeddedLog::open(EmbeddedLogConfig::new(dir)).unwrap());
    let log = RegistryLog::connect(
        inner.clone(),
        &registry_config(url),
        ("t.votes", "t.tallies"),
    )
    .await
    .unwrap();
    (inner, log)
}

async fn post(url: &str, body: Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/vnd.schemaregistry.v1+json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

fn soon() -> Instant {
    Instant::now() + Duration::from_secs(5)
}

#[tokio::test]
async fn old_and_new_tally_readers_read_each_others_records() {
    let registry = RegistryDouble::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (inner, log) = registry_log(dir.path(), &registry.url).await;
    let subject = format!("{}/subjects/t.tallies-value/versions", registry.url);

    // Version 2 adds an optional field: BACKWARD compatible, so the registry takes it.
    let (status, body) = post(&subject, serde_json::json!({ "schema": TALLY_V2 })).await;
    assert_eq!(status, 200, "{body}");
    let v2_id = body["id"].as_u64().unwrap() as u32;
    assert_ne!(v2_id, log.framing(Topic::Tallies).id);
    // A change that cannot read the old records (a new field without a default) is refused.
    let mut breaking: Value = serde_json::from_str(TALLY_V2).unwrap();
    breaking["fields"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"name": "region", "type": "string"}));
    let (status, body) = post(
        &subject,
        serde_json::json!({ "schema": breaking.to_string() }),
    )
    .await;
    assert_eq!(
        (status, body["error_code"].as_u64()),
        (409, Some(409)),
        "{body}"
    );

    // Records of three writers in one partition: bare (before the registry), framed with
    // version 1 (CrowdTick), framed with version 2 (a newer writer).
    let v2 = Schema::parse_str(TALLY_V2).unwrap();
    let newer = tally(7, 3);
    let Avro::Record(mut fields) = apache_avro::to_value(&newer).unwrap() else {
        unreachable!()
    };
    fields.push((
        "votes_partitions".into(),
        Avro::Union(1, Box::new(Avro::Int(8))),
    ));
    let v2_datum = apache_avro::to_avro_datum(&v2, Avro::Record(fields).resolve(&v2).unwrap())
        .expect("a record of version 2");
    let framed_v2 = schema_registry_converter::schema_registry_common::get_payload(v2_id, v2_datum);
    let mut bare = AppendBatch::default();
    bare.push(
        Partition(0),
        Timestamp(1),
        &7i64.to_be_bytes(),
        &tally(7, 1).to_avro(),
    );
    inner.append(Topic::Tallies, bare, soon()).await.unwrap();
    let mut ours = AppendBatch::default();
    ours.push(
        Partition(0),
        Timestamp(2),
        &7i64.to_be_bytes(),
        &tally(7, 2).to_avro(),
    );
    log.append(Topic::Tallies, ours, soon()).await.unwrap();
    let mut theirs = AppendBatch::default();
    theirs.push(Partition(0), Timestamp(3), &7i64.to_be_bytes(), &framed_v2);
    inner.append(Topic::Tallies, theirs, soon()).await.unwrap();

    // The old reader (CrowdTick, on version 1) reads all three.
    let fetched = log
        .fetch(
            Topic::Tallies,
            Partition(0),
            Offset::ZERO,
            1 << 20,
            Duration::from_secs(1),
        )
        .await
        .unwrap();
    let read: Vec<PartialTally> = fetched
        .iter()
        .map(|(_, _, _, v)| PartialTally::from_avro(v).unwrap())
        .collect();
    assert_eq!(read, vec![tally(7, 1), tally(7, 2), newer]);
    let m = &log.metrics;
    let count = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        [
            &m.records_framed,
            &m.records_bare,
            &m.records_transcoded,
            &m.records_unreadable
        ]
        .map(count),
        [1, 1, 1, 0]
    );

    // A new reader (version 2) reads CrowdTick's version-1 record: the new field takes its default.
    let stored = raw_records(inner.as_ref(), Topic::Tallies).await;
    let decoder = schema_registry_converter::async_impl::avro::AvroDecoder::new(
        schema_registry_converter::async_impl::schema_registry::SrSettings::new(
            registry.url.clone(),
        ),
    );
    let old = decoder.decode(Some(&stored[1])).await.unwrap().value;
    let Avro::Record(as_v2) = old.resolve(&v2).unwrap() else {
        unreachable!()
    };
    let field = |name: &str| as_v2.iter().find(|(n, _)| n == name).unwrap().1.clone();
    assert_eq!(
        field("votes_partitions"),
        Avro::Union(0, Box::new(Avro::Null))
    );
    assert_eq!(field("offset"), Avro::Long(2));
}

#[tokio::test]
async fn the_start_says_what_is_wrong_when_the_registry_refuses_or_lacks_the_schemas() {
    let registry = RegistryDouble::start().await;
    let dir = tempfile::tempdir().unwrap();
    let inner: Arc<dyn Log> =
        Arc::new(EmbeddedLog::open(EmbeddedLogConfig::new(dir.path())).unwrap());
    let topics = ("t.votes", "t.tallies");

    // Auto-registration off and nothing registered: refused, naming the subject and the fix.
    let check_only = RegistryConfig {
        auto_register: false,
        ..registry_config(&registry.url)
    };
    let err = RegistryLog::connect(inner.clone(), &check_only, topics)
        .await
        .err()
        .expect("an empty registry cannot be only checked");
    assert!(
        matches!(err, RegistryError::NotRegistered { .. }),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("t.votes-value") && text.contains("auto_register"),
        "{text}"
    );

    // Registered once, the same ids on every start, and then checking alone passes.
    let first = RegistryLog::connect(inner.clone(), &registry_config(&registry.url), topics)
        .await
        .unwrap();
    let again = RegistryLog::connect(inner.clone(), &check_only, topics)
        .await
        .unwrap();
    for topic in Topic::ALL {
        assert_eq!(first.framing(topic).id, again.framing(topic).id);
    }
    assert_ne!(
        first.framing(Topic::Votes).id,
        first.framing(Topic::Tallies).id
    );

    // A subject holding a schema CrowdTick's cannot read (BACKWARD): the registration is refused.
    let foreign = r#"{"type":"record","name":"PartialTally","namespace":"io.crowdtick","fields":[{"name":"region","type":"string"}]}"#;
    let (status, body) = post(
        &format!("{}/subjects/u.tallies-value/versions", registry.url),
        serde_json::json!({ "schema": foreign }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let err = RegistryLog::connect(
        inner.clone(),
        &registry_config(&registry.url),
        ("u.votes", "u.tallies"),
    )
    .await
    .err()
    .expect("an incompatible subject refuses CrowdTick's schema");
    assert!(
        matches!(err, RegistryError::Register { ref subject, .. } if subject == "u.tallies-value"),
        "{err:?}"
    );

    // No registry at all: the start fails, saying where it looked.
    let nowhere = registry_config(&format!("http://127.0.0.1:{}", free_port()));
    let err = RegistryLog::connect(inner, &nowhere, topics)
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("127.0.0.1"), "{err}");
}
