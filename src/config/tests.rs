//! The configuration's layering, defaults and checks.

use super::*;
use crate::backends::{CacheBackend, LogBackend, PollBackend, TallyBackend};
use std::collections::BTreeSet;

#[test]
#[allow(clippy::result_large_err)] // figment::Jail's closure signature, not ours
fn file_then_env_override_defaults() {
    figment::Jail::expect_with(|jail| {
        jail.create_file(
            "c.toml",
            "listen = \"0.0.0.0:9000\"\n[ingest]\ndeadline_ms = 500\n",
        )?;
        jail.set_env("CROWDTICK_INGEST__DEADLINE_MS", "750");
        jail.set_env("CROWDTICK_TEST_SCREENSHOTS", "1"); // a test switch, not a setting
        let c = Config::load(Some(Path::new("c.toml"))).unwrap();
        assert_eq!(c.listen, "0.0.0.0:9000");
        assert_eq!(c.ingest.deadline_ms, 750);
        assert_eq!(c.log.partitions, 8);
        jail.create_file("bad.toml", "lisen = 1\n")?;
        let err = Config::load(Some(Path::new("bad.toml")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("lisen"), "unknown keys are named: {err}");
        Ok(())
    });
}

#[test]
fn environment_variables_that_name_no_setting_are_refused() {
    let names = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
    check_environment(names(&[
        "CROWDTICK_KAFKA__BROKERS",
        "CROWDTICK_OPERATOR_KEYS",
        "CROWDTICK_CONFIG",
        "CROWDTICK_TEST_POSTGRES",
        "crowdtick_listen",
        "PATH",
    ]))
    .unwrap();
    // What Kubernetes injects for Services named crowdtick and crowdtick-query (service links).
    let links = [
        "CROWDTICK_SERVICE_HOST",
        "CROWDTICK_SERVICE_PORT",
        "CROWDTICK_PORT",
        "CROWDTICK_PORT_8080_TCP",
        "CROWDTICK_PORT_8080_TCP_ADDR",
        "CROWDTICK_QUERY_SERVICE_HOST",
        "CROWDTICK_QUERY_SERVICE_PORT",
        "CROWDTICK_QUERY_SERVICE_PORT_HTTP",
        "CROWDTICK_QUERY_PORT",
        "CROWDTICK_QUERY_PORT_8080_TCP",
        "CROWDTICK_QUERY_PORT_8080_TCP_PROTO",
        "CROWDTICK_QUERY_PORT_8080_TCP_PORT",
    ];
    check_environment(names(&links)).unwrap();
    for typo in [
        "CROWDTICK_KAFKA_BROKERS",
        "CROWDTICK_LISTN",
        "crowdtick_partitions",
        // Shaped like service links, but of no Service that is there.
        "CROWDTICK_LISTEN_PORT",
        "CROWDTICK_REDIS_SERVICE_PORT",
        "CROWDTICK_QUERY_PORT_8080_TCP_HOST",
    ] {
        let mut all = names(&links);
        all.push(typo.to_owned());
        let err = check_environment(all).unwrap_err().to_string();
        assert!(err.starts_with(&format!("{typo} is not")), "{typo}: {err}");
    }
    let err = check_environment(names(&["CROWDTICK_LISTN", "CROWDTICK_KAFKA_BROKERS"]))
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("CROWDTICK_LISTN, CROWDTICK_KAFKA_BROKERS are not"),
        "{err}"
    );
}

#[test]
#[allow(clippy::result_large_err)]
fn a_misspelled_key_inside_a_section_is_refused() {
    figment::Jail::expect_with(|jail| {
        jail.set_env("CROWDTICK_INGEST__DEADLINE_MSS", "750");
        let err = Config::load(None).unwrap_err().to_string();
        assert!(err.contains("deadline_mss"), "{err}");
        Ok(())
    });
}

#[test]
#[allow(clippy::result_large_err)]
fn aggregators_and_voter_tokens_come_from_the_environment() {
    figment::Jail::expect_with(|jail| {
        let c = Config::load(None).unwrap();
        assert_eq!(c.ingest.aggregators.len(), 1, "the laptop default: `dev`");
        assert_eq!(c.ingest.aggregators[0].key, DEV_AGGREGATOR_KEY);
        jail.set_env(
            "CROWDTICK_INGEST__AGGREGATORS",
            r#"[{name="sms", key="the-sms-gateway-key", votes_per_sec=50000}, {name="app", key="the-partner-app-key", votes_per_sec=0, burst=10}]"#,
        );
        jail.set_env(
            "CROWDTICK_INGEST__VOTER_TOKENS__HMAC_SECRET",
            "a-secret-of-the-identity-service-32b",
        );
        let c = Config::load(None).unwrap();
        let names: Vec<_> = c
            .ingest
            .aggregators
            .iter()
            .map(|a| a.name.as_str())
            .collect();
        assert_eq!(names, ["sms", "app"]);
        assert_eq!(c.ingest.aggregators[0].votes_per_sec, 50_000);
        assert_eq!(c.ingest.aggregators[1].burst, 10);
        assert!(!c.ingest.voter_tokens.hmac_secret.is_empty());
        jail.set_env("CROWDTICK_INGEST__AGGREGATORS", "[]");
        assert!(Config::load(None).unwrap().ingest.aggregators.is_empty());
        Ok(())
    });
}

// Which backends a configuration chooses (Config::backends), and the combinations refused.

fn with(f: impl FnOnce(&mut Config)) -> Config {
    let mut c = Config::default();
    f(&mut c);
    c
}

#[test]
fn the_default_is_embedded_with_nothing_shared() {
    let b = Config::default().backends().unwrap();
    assert!(matches!(b.log, LogBackend::Embedded(_)));
    assert!(matches!(b.polls, PollBackend::File(_)));
    assert!(matches!(b.tallies, TallyBackend::TopicOnly));
    assert_eq!(b.cache, CacheBackend::None);
    assert!(!b.on_kafka() && !b.shares_polls());
}

#[test]
fn each_setting_chooses_its_backend() {
    let b = with(|c| {
        c.kafka.brokers = "k:9092".into();
        c.postgres.url = "postgres://p/db".into();
        c.redis.url = "redis://r".into();
    })
    .backends()
    .unwrap();
    assert!(
        matches!(&b.log, LogBackend::Kafka { kafka, registry: None } if kafka.brokers == "k:9092")
    );
    assert!(matches!(&b.polls, PollBackend::Postgres { url, .. } if url == "postgres://p/db"));
    assert!(matches!(b.tallies, TallyBackend::Postgres));
    assert!(matches!(&b.cache, CacheBackend::Redis { url, .. } if url == "redis://r"));
    assert!(b.on_kafka() && b.shares_polls());

    let b = with(|c| {
        c.kafka.brokers = "k:9092".into();
        c.schema_registry.url = "http://sr:8081".into();
        c.postgres.url = "postgres://p/db".into();
        c.scylla.hosts = "s:9042".into();
    })
    .backends()
    .unwrap();
    assert!(
        matches!(&b.log, LogBackend::Kafka { registry: Some(r), .. } if r.url == "http://sr:8081")
    );
    assert!(matches!(&b.tallies, TallyBackend::Scylla(s) if s.hosts == "s:9042"));
}

#[test]
fn backends_that_need_another_are_refused_with_the_reason() {
    let e = with(|c| c.schema_registry.url = "http://sr:8081".into())
        .backends()
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("schema_registry.url is set but Kafka is not"),
        "{e}"
    );
    let e = with(|c| c.scylla.hosts = "s:9042".into())
        .backends()
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("scylla.hosts is set but postgres.url is not"),
        "{e}"
    );
}

#[test]
fn retention_reaches_the_embedded_log_and_is_refused_where_it_cannot_work() {
    let c = with(|c| {
        c.log.retire_after_snapshot = true;
        c.log.segment_mb = 64;
        c.log.zero_ahead_kb = 256;
    });
    c.validate().unwrap();
    let LogBackend::Embedded(log) = c.backends().unwrap().log else {
        panic!("embedded");
    };
    assert!(log.retire_released);
    assert_eq!(log.segment_bytes, 64 << 20);
    assert_eq!(log.zero_ahead_bytes, 256 << 10);
    let LogBackend::Embedded(default) = Config::default().backends().unwrap().log else {
        panic!("embedded");
    };
    let library = EmbeddedLogConfig::new(default.dir.clone());
    assert_eq!(default.zero_ahead_bytes, library.zero_ahead_bytes);
    let err = with(|c| c.log.zero_ahead_kb = 16_385)
        .validate()
        .unwrap_err();
    assert!(err.to_string().contains("zero_ahead_kb"), "{err}");
    let on_kafka = with(|c| {
        c.log.retire_after_snapshot = true;
        c.kafka.brokers = "k:9092".into();
    });
    let err = on_kafka.validate().unwrap_err().to_string();
    assert!(err.contains("retention.ms"), "{err}");
    let no_snapshots = with(|c| {
        c.log.retire_after_snapshot = true;
        c.processor.checkpoint_interval_ms = 0;
    });
    let err = no_snapshots.validate().unwrap_err().to_string();
    assert!(err.contains("checkpoint_interval_ms"), "{err}");
    let on_postgres = with(|c| {
        c.log.retire_after_snapshot = true;
        c.postgres.url = "postgres://p/db".into();
    });
    let err = on_postgres.validate().unwrap_err().to_string();
    assert!(err.contains("two generations"), "{err}");
    let err = with(|c| c.log.segment_mb = 0).validate().unwrap_err();
    assert!(err.to_string().contains("segment_mb"), "{err}");
    let err = with(|c| c.log.commit_interval_us = 200_000)
        .validate()
        .unwrap_err();
    assert!(err.to_string().contains("commit_interval_us"), "{err}");
    let tight = with(|c| {
        c.log.commit_interval_us = 50_000;
        c.ingest.deadline_ms = 100;
    });
    let err = tight.validate().unwrap_err();
    assert!(err.to_string().contains("deadline_ms"), "{err}");
}

#[test]
fn a_backlog_bound_at_or_above_the_read_pause_is_refused() {
    with(|c| c.ingest.shed_backlog_appends = 250)
        .validate()
        .unwrap();
    let above = with(|c| c.ingest.shed_backlog_appends = 1_000);
    let err = above.validate().unwrap_err().to_string();
    assert!(
        err.contains("must be below ingest.pause_reads_in_flight (1000)"),
        "{err}"
    );
    let no_pause = with(|c| {
        c.ingest.shed_backlog_appends = 250;
        c.ingest.pause_reads_in_flight = 0;
    });
    let err = no_pause.validate().unwrap_err().to_string();
    assert!(err.contains("shed_backlog_appends (250)"), "{err}");
    with(|c| c.ingest.pause_reads_in_flight = 0)
        .validate()
        .unwrap();
}

#[test]
fn a_quiet_spell_of_zero_and_a_retry_after_outside_an_hour_are_refused() {
    let err = with(|c| c.ingest.shed_backlog_quiet_ms = 0)
        .validate()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("shed_backlog_quiet_ms must be at least 1"),
        "{err}"
    );
    for bad in [0, 3_601] {
        let err = with(|c| c.ingest.shed_retry_after_max_secs = bad)
            .validate()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!(
                "shed_retry_after_max_secs ({bad}) must be 1 to 3600"
            )),
            "{err}"
        );
    }
    for good in [1, 3_600] {
        with(|c| c.ingest.shed_retry_after_max_secs = good)
            .validate()
            .unwrap();
    }
    with(|c| c.ingest.shed_backlog_quiet_ms = 1)
        .validate()
        .unwrap();
}

/// README's configuration example holds every setting, each at its default (but the four a
/// deployment must choose): a setting added, renamed or given a new default fails here until the
/// README says so.
#[test]
fn the_readmes_configuration_example_holds_every_setting_at_its_default() {
    // Read when the test runs, not embedded: the image's build context leaves README.md out.
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/README.md");
    let readme = std::fs::read_to_string(path).expect("README.md beside Cargo.toml");
    let block = readme
        .split("```toml\n")
        .find(|b| b.starts_with("listen = "))
        .and_then(|b| b.split("```").next())
        .expect("README's configuration example (a toml block starting with listen =)");
    let example: toml::Table = toml::from_str(block).expect("README's example is TOML");
    let defaults = toml::Table::try_from(Config::default()).unwrap();
    let (mut documented, mut settings) = (BTreeSet::new(), BTreeSet::new());
    setting_names(&example, "", &mut documented);
    setting_names(&defaults, "", &mut settings);
    let missing: Vec<_> = settings.difference(&documented).collect();
    let unknown: Vec<_> = documented.difference(&settings).collect();
    assert!(
        missing.is_empty(),
        "settings README's example does not list: {missing:?}"
    );
    assert!(
        unknown.is_empty(),
        "README's example lists settings there are not: {unknown:?}"
    );
    let mut parsed: Config = toml::from_str(block)
        .unwrap_or_else(|e| panic!("README's example is not a configuration: {}", e.message()));
    let chosen = Config::default();
    assert_ne!(
        parsed.operator_keys, chosen.operator_keys,
        "the example sets a key of its own"
    );
    parsed.listen.clone_from(&chosen.listen);
    parsed.data_dir.clone_from(&chosen.data_dir);
    parsed.operator_keys.clone_from(&chosen.operator_keys);
    parsed.public_url.clone_from(&chosen.public_url);
    let (documented, default) = (sectioned_lines(&parsed), sectioned_lines(&chosen));
    let only_in = |a: &BTreeSet<String>, b: &BTreeSet<String>| -> Vec<String> {
        a.difference(b).cloned().collect()
    };
    assert!(
        documented == default && parsed == chosen,
        "README's example gives settings other values than their defaults: README {:?}, default {:?}",
        only_in(&documented, &default),
        only_in(&default, &documented)
    );
}

/// Every setting's dotted name in `table`, into sections and their tables (an array of tables by
/// its first), but not into a setting whose value is a map of the user's own (`kafka.settings`)
/// or an empty one (which would leave no name behind).
fn setting_names(table: &toml::Table, prefix: &str, names: &mut BTreeSet<String>) {
    for (key, value) in table {
        let name = format!("{prefix}{key}");
        let inner = match value {
            toml::Value::Table(t) if name != "kafka.settings" && !t.is_empty() => Some(t),
            toml::Value::Array(items) => items.first().and_then(toml::Value::as_table),
            _ => None,
        };
        match inner {
            Some(t) => setting_names(t, &format!("{name}."), names),
            None => {
                names.insert(name);
            }
        }
    }
}

/// A configuration as TOML, each line prefixed with its table's header (`[ingest] deadline_ms =
/// 2000`), so lines that differ say where they are.
fn sectioned_lines(config: &Config) -> BTreeSet<String> {
    let text = toml::to_string(config).unwrap();
    let mut header = String::new();
    let mut lines = BTreeSet::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if line.starts_with('[') {
            header = line.to_owned();
        } else {
            lines.insert(format!("{header} {line}"));
        }
    }
    lines
}
