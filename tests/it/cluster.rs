//! The distributed mode as separate processes of the built binary: ingest edges, a consumer group of
//! processors, a query node and realtime nodes, on a tansu broker started here, the machine's
//! PostgreSQL (a schema of the test's own) and Redis (a key prefix of the test's own).
//!
//! - `cluster_counts_exactly_through_kills_and_rebalances`: votes with duplicates and same-vote_id
//!   retries through two edges while one processor is SIGKILLed and restarted, a processor is
//!   added and one is removed; every poll ends exact on the query node and on both realtime nodes,
//!   moved partitions were restored from checkpoints, a Redis flush is refilled from PostgreSQL at
//!   once, and `recount` agrees. (`scripts/cluster-test.sh` runs the full-size variant: 500k
//!   votes, 10 kills, and the broker (SQLite storage) stopped for 3 s under load and restarted.)
//! - `broker_outage_gets_503_within_the_deadline_and_service_resumes`: the broker (SQLite storage,
//!   so its log survives) is stopped for a while: every vote in that time gets 503 with Retry-After
//!   within the edge's deadline, nothing acknowledged is lost, and votes are taken again on their own
//!   soon after the broker returns.

use crate::helpers::{free_port, readiness, wait_healthy, wait_ready, KEY};
use futures::StreamExt;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use storage::test_broker::TansuBroker;

fn postgres_url() -> String {
    std::env::var("CROWDTICK_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

fn redis_url() -> String {
    std::env::var("CROWDTICK_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

pub struct Node {
    pub base: String,
    child: Child,
}

impl Node {
    /// SIGKILL: no flush, no goodbye to the group.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The node's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory in KiB (from /proc).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()));
        edge::metrics::vm_rss_kib(&status.unwrap_or_default()).unwrap_or(0)
    }

    /// SIGTERM, then wait: flushes and leaves the group.
    pub fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// One deployment's shared settings (its own topics, group, schema and key prefix).
pub struct Cluster {
    pub env: Vec<(String, String)>,
    pub dir: tempfile::TempDir,
    pub schema: String,
    pub redis_prefix: String,
    pub client: reqwest::Client,
    /// The binary its nodes run: this build's, unless a measurement compares another.
    pub server: PathBuf,
    started: usize,
}

impl Cluster {
    pub fn new(broker: &str, partitions: u32) -> Self {
        let run = format!("{}_{}", std::process::id(), rand::random::<u32>());
        let schema = format!("ct_cluster_{run}");
        let redis_prefix = format!("itc{run}:");
        let env = [
            ("CROWDTICK_KAFKA__BROKERS", broker.to_owned()),
            ("CROWDTICK_KAFKA__TOPIC_PREFIX", format!("itc{run}.")),
            ("CROWDTICK_KAFKA__REPLICATION_FACTOR", "1".into()),
            ("CROWDTICK_POSTGRES__URL", postgres_url()),
            ("CROWDTICK_POSTGRES__SCHEMA", schema.clone()),
            ("CROWDTICK_REDIS__URL", redis_url()),
            ("CROWDTICK_REDIS__KEY_PREFIX", redis_prefix.clone()),
            ("CROWDTICK_LOG__PARTITIONS", partitions.to_string()),
            ("CROWDTICK_INGEST__DEADLINE_MS", "3000".into()),
            ("CROWDTICK_PROCESSOR__SESSION_TIMEOUT_MS", "6000".into()),
            // Checkpoint often, so the partitions that move in the run are restored from
            // checkpoints and read on from there (the path under test), not replayed.
            ("CROWDTICK_PROCESSOR__CHECKPOINT_INTERVAL_MS", "1000".into()),
            ("RUST_LOG", "info".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        Self {
            env,
            dir: tempfile::tempdir().unwrap(),
            schema,
            redis_prefix,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            server: env!("CARGO_BIN_EXE_crowdtick").into(),
            started: 0,
        }
    }

    pub fn log_path(&self, role: &str, n: usize) -> PathBuf {
        self.dir.path().join(format!("{role}-{n}.log"))
    }

    /// Starts `crowdtick ROLE` on a free port and waits for /healthz.
    pub async fn start(&mut self, role: &'static str) -> Node {
        self.start_with(role, &[]).await
    }

    /// [`start`](Self::start) with settings of this node's own on top of the deployment's.
    pub async fn start_with(&mut self, role: &'static str, own: &[(&str, &str)]) -> Node {
        self.started += 1;
        let port = free_port();
        let log = std::fs::File::create(self.log_path(role, self.started)).unwrap();
        let child = Command::new(&self.server)
            .args([role, "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
            .arg(self.dir.path().join(format!("data-{}", self.started)))
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .envs(own.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start crowdtick");
        let node = Node {
            base: format!("http://127.0.0.1:{port}"),
            child,
        };
        wait_healthy(&self.client, &node.base).await;
        node
    }

    /// What every node printed (for failure messages).
    pub fn logs(&self) -> String {
        let mut out = String::new();
        let mut entries: Vec<_> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
            .collect();
        entries.sort_by_key(|e| e.path());
        for e in entries {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            out.push_str(&format!("--- {}\n", e.path().display()));
            for l in tail.into_iter().rev() {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    pub async fn create_poll(&self, query: &Node, options: usize) -> i64 {
        let opts: Vec<String> = (0..options).map(|i| format!("Option {i}")).collect();
        let r = self
            .client
            .post(format!("{}/v1/polls", query.base))
            .bearer_auth(KEY)
            .json(&json!({"title": "Cluster poll", "options": opts, "open": true}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        r.json::<Value>().await.unwrap()["id"].as_i64().unwrap()
    }

    pub async fn counts(&self, query: &Node, poll: i64) -> Option<Vec<i64>> {
        let r = self
            .client
            .get(format!("{}/v1/polls/{poll}/results", query.base))
            .bearer_auth(KEY)
            .send()
            .await
            .ok()?;
        if !r.status().is_success() {
            return None;
        }
        let v: Value = r.json().await.ok()?;
        Some(counts_of(&v))
    }

    /// Waits until the query node shows `expected` for `poll`; fails with every node's log tail
    /// when it does not by `deadline`.
    pub async fn wait_counts(&self, query: &Node, poll: i64, expected: &[i64], deadline: Instant) {
        loop {
            let got = self.counts(query, poll).await;
            if got.as_deref() == Some(expected) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "poll {poll}: the query node shows {got:?}, expected {expected:?}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Drops every key of this deployment from Redis (what a FLUSHALL does to it).
    pub async fn flush_redis(&self) -> usize {
        let client = redis::Client::open(redis_url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}*", self.redis_prefix))
            .query_async(&mut conn)
            .await
            .unwrap();
        if !keys.is_empty() {
            let _: i64 = redis::cmd("DEL")
                .arg(&keys)
                .query_async(&mut conn)
                .await
                .unwrap();
        }
        keys.len()
    }

    pub async fn drop_schema(&self) {
        if let Ok(pool) = storage::postgres::connect(&postgres_url()).await {
            if let Ok(client) = pool.get().await {
                let _ = client
                    .batch_execute(&format!(
                        "DROP SCHEMA IF EXISTS \"{}\" CASCADE",
                        self.schema
                    ))
                    .await;
            }
        }
    }
}

fn tail(text: &str, lines: usize) -> String {
    let v: Vec<&str> = text.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

fn counts_of(v: &Value) -> Vec<i64> {
    v["counts"]
        .as_array()
        .map(|a| a.iter().filter_map(|c| c.as_i64()).collect())
        .unwrap_or_default()
}

/// Reads a realtime node's SSE stream until the poll's counts equal `expected`.
async fn realtime_shows(
    client: &reqwest::Client,
    node: &Node,
    poll: i64,
    expected: &[i64],
    secs: u64,
) {
    let url = format!("{}/v1/polls/{poll}/sse", node.base);
    let mut resp = reqwest::Client::new()
        .get(&url)
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{url}");
    let _ = client;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    let mut buf = String::new();
    let mut last = Vec::new();
    loop {
        let chunk = tokio::time::timeout_at(deadline, resp.chunk()).await;
        match chunk {
            Ok(Ok(Some(bytes))) => buf.push_str(&String::from_utf8_lossy(&bytes)),
            _ => panic!(
                "realtime node {} never showed {expected:?} for poll {poll}; last {last:?}",
                node.base
            ),
        }
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            for line in event.lines() {
                if let Some(data) = line.strip_prefix("data:") {
                    if let Ok(v) = serde_json::from_str::<Value>(data.trim()) {
                        if v["type"] == "results" {
                            last = counts_of(&v);
                            if last == expected {
                                return;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// One vote to send: (poll, voter, option, vote_id).
type Vote = (i64, String, i64, String);

/// Sends votes in batches through the edges (round robin), re-sending every vote that did not get a
/// 202 with the same vote_id until it does. Returns how many re-sends were needed.
async fn send_all(
    client: &reqwest::Client,
    edges: &[String],
    votes: Vec<Vote>,
    batch: usize,
) -> usize {
    let chunks: Vec<Vec<Vote>> = votes.chunks(batch).map(|c| c.to_vec()).collect();
    let resent = std::sync::atomic::AtomicUsize::new(0);
    // A dead broker must fail the test, not hang it.
    let give_up = Instant::now() + Duration::from_secs(300);
    futures::stream::iter(chunks.into_iter().enumerate())
        .for_each_concurrent(4, |(i, mut pending)| {
            let resent = &resent;
            async move {
                let mut attempt = 0;
                while !pending.is_empty() {
                    let edge = &edges[(i + attempt) % edges.len()];
                    attempt += 1;
                    let body = json!({"votes": pending.iter().map(|(p, voter, o, id)| json!({
                        "poll_id": p, "voter_id": voter, "option_id": o, "vote_id": id
                    })).collect::<Vec<_>>()});
                    let answer = client
                        .post(format!("{edge}/v1/votes/batch"))
                        .bearer_auth(crate::helpers::AGG_KEY)
                        .json(&body)
                        .send()
                        .await;
                    let results: Option<Vec<Value>> = match answer {
                        Ok(r) if r.status().is_success() => r
                            .json::<Value>()
                            .await
                            .ok()
                            .and_then(|v| v["results"].as_array().cloned()),
                        _ => None,
                    };
                    match results {
                        Some(results) => {
                            // The batch was appended as a whole: every vote has its receipt, or
                            // was refused for good (which this plan never does).
                            for (v, r) in pending.iter().zip(&results) {
                                assert!(r.get("offset").is_some(), "vote {v:?} refused: {r}");
                            }
                            pending.clear();
                        }
                        None => {
                            resent.fetch_add(pending.len(), std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                    if !pending.is_empty() {
                        assert!(
                            attempt < 400 && Instant::now() < give_up,
                            "{} votes not acknowledged after {attempt} attempts",
                            pending.len()
                        );
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        })
        .await;
    resent.into_inner()
}

/// The votes of a run: first votes, then duplicates (other option, never counted) and same-vote_id
/// retries; and the counts they must give.
fn plan(
    polls: &[i64],
    options: usize,
    voters: usize,
    per_voter: usize,
    seed: u64,
) -> (Vec<Vote>, Vec<Vote>, HashMap<i64, Vec<i64>>) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut expected: HashMap<i64, Vec<i64>> =
        polls.iter().map(|&p| (p, vec![0; options])).collect();
    let mut first = Vec::new();
    let mut second = Vec::new();
    for (v, k) in (0..voters).flat_map(|v| (0..per_voter).map(move |k| (v, k))) {
        let poll = polls[(v + k) % polls.len()];
        let option = rng.gen_range(0..options) as i64;
        let voter = format!("cv{seed}-{v}");
        let id = format!("cv{seed}-{v}-{k}-a");
        expected.get_mut(&poll).unwrap()[option as usize] += 1;
        first.push((poll, voter.clone(), option, id.clone()));
        let roll: f64 = rng.gen();
        if roll < 0.20 {
            let other = (option + 1 + rng.gen_range(0..options as i64 - 1)) % options as i64;
            second.push((poll, voter, other, format!("cv{seed}-{v}-{k}-b")));
        } else if roll < 0.25 {
            second.push((poll, voter, option, id));
        }
    }
    (first, second, expected)
}

/// The size and the faults of one cluster run.
struct Scenario {
    partitions: u32,
    polls: usize,
    voters: usize,
    per_voter: usize,
    kills: usize,
    kill_every: Duration,
    broker_restart: bool,
    /// Run with the schema registry (its test double): the topics in the Confluent wire format.
    schema_registry: bool,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_counts_exactly_through_kills_and_rebalances() {
    run_cluster(Scenario {
        partitions: 6,
        polls: 3,
        voters: 6_000,
        per_voter: 1,
        kills: 3,
        kill_every: Duration::from_millis(1500),
        // The broker restart under load is in the full run only: on tansu 0.6 with SQLite it
        // can end with tansu's storage panicking (see `run_cluster`), which no client can undo.
        broker_restart: false,
        schema_registry: false,
    })
    .await;
}

/// The same with a schema registry (`tests/it/registry_double.rs`): every node frames and reads
/// the Confluent wire format, and exactly once holds through the kills.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_counts_exactly_with_the_schema_registry() {
    run_cluster(Scenario {
        partitions: 4,
        polls: 2,
        voters: 3_000,
        per_voter: 1,
        kills: 2,
        kill_every: Duration::from_millis(1500),
        broker_restart: false,
        schema_registry: true,
    })
    .await;
}

/// The full-size run of `scripts/cluster-test.sh` (release build): 100,000 voters in 5 polls
/// (500,000 first votes, then 20% duplicates and 5% retries), 10 kills, a processor added and one
/// removed, and the broker (SQLite storage) restarted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "full size, minutes long: run by scripts/cluster-test.sh"]
async fn cluster_full_size() {
    run_cluster(Scenario {
        partitions: 8,
        polls: 5,
        voters: 100_000,
        per_voter: 5,
        kills: 10,
        kill_every: Duration::from_secs(3),
        broker_restart: true,
        schema_registry: false,
    })
    .await;
}

async fn run_cluster(s: Scenario) {
    let started_at = Instant::now();
    let mut broker = if s.broker_restart {
        TansuBroker::start_persistent()
    } else {
        TansuBroker::start()
    };
    let mut c = Cluster::new(broker.addr(), s.partitions);
    let registry = match s.schema_registry {
        true => Some(crate::registry_double::RegistryDouble::start().await),
        false => None,
    };
    if let Some(registry) = &registry {
        c.env.push((
            "CROWDTICK_SCHEMA_REGISTRY__URL".into(),
            registry.url.clone(),
        ));
    }
    if s.broker_restart {
        // tansu on SQLite stalls for seconds under load on two cores (the full run, or CI with
        // every other test beside this one). A produce request that outlives the deadline times
        // out in librdkafka, whose idempotent producer then recovers (retries, bumps its epoch);
        // tansu 0.6's storage panics on what follows ("more or less than one row" in
        // idempotent_message_check; an epoch-bump InitProducerId is a todo!() there) and the
        // broker serves nothing after. Real Kafka handles both; here the deadline is longer
        // than tansu's stalls.
        c.env.retain(|(k, _)| k != "CROWDTICK_INGEST__DEADLINE_MS");
        c.env
            .push(("CROWDTICK_INGEST__DEADLINE_MS".into(), "10000".into()));
    }
    // The query node migrates PostgreSQL; the first edge creates the topics.
    let query = c.start("query").await;
    let edges = vec![c.start("ingest").await, c.start("ingest").await];
    let mut processors = vec![
        c.start("processor").await,
        c.start("processor").await,
        c.start("processor").await,
    ];
    let realtimes = vec![c.start("realtime").await, c.start("realtime").await];
    for r in &realtimes {
        // A realtime node reads only the tallies topic: no `log` check of its own.
        assert_eq!(
            wait_ready(&c.client, &r.base, 30).await,
            ["poll_catalog", "tallies"]
        );
    }
    let mut polls = Vec::new();
    for _ in 0..s.polls {
        polls.push(c.create_poll(&query, 4).await);
    }
    let (first, second, expected) = plan(&polls, 4, s.voters, s.per_voter, 7);
    let edge_urls: Vec<String> = edges.iter().map(|e| e.base.clone()).collect();
    eprintln!(
        "cluster: {} first votes, then {} duplicates and retries",
        first.len(),
        second.len()
    );

    // First votes, while one processor is killed (SIGKILL) and restarted again and again.
    let client = c.client.clone();
    let load = {
        let (client, urls, first) = (client.clone(), edge_urls.clone(), first.clone());
        tokio::spawn(async move { send_all(&client, &urls, first, 100).await })
    };
    let mut kills = 0;
    while kills < s.kills {
        tokio::time::sleep(s.kill_every).await;
        processors[0].kill9();
        processors[0] = c.start("processor").await;
        kills += 1;
        eprintln!(
            "cluster: processor killed and restarted ({kills}/{})",
            s.kills
        );
        if s.broker_restart && kills == s.kills.div_ceil(2) {
            // Mid-load: records are in flight in every producer when the broker goes.
            broker.stop();
            tokio::time::sleep(Duration::from_secs(3)).await;
            broker.restart();
            eprintln!("cluster: broker restarted (stopped for 3 s under load)");
        }
        if load.is_finished() && kills >= 3 && !s.broker_restart {
            break;
        }
    }
    processors.push(c.start("processor").await); // a fourth joins: rebalance
    let resent_first = load.await.unwrap();

    // Duplicates and retries, while one processor leaves (graceful: flush, then rebalance) and,
    // in the full run, the broker restarts.
    let load = {
        let (client, urls, second) = (client.clone(), edge_urls.clone(), second.clone());
        tokio::spawn(async move { send_all(&client, &urls, second, 100).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut leaving = processors.remove(1);
    leaving.stop();
    let resent_second = load.await.unwrap();
    eprintln!(
        "cluster: all acknowledged after {:?}, {} re-sends",
        started_at.elapsed(),
        resent_first + resent_second
    );

    // Every poll exact on the query node (Redis, refilled from PostgreSQL) …
    let deadline = Instant::now() + Duration::from_secs(if s.voters > 10_000 { 600 } else { 120 });
    for &poll in &polls {
        c.wait_counts(&query, poll, &expected[&poll], deadline)
            .await;
    }
    // … and on both realtime nodes.
    for node in &realtimes {
        for &poll in &polls {
            realtime_shows(&client, node, poll, &expected[&poll], 60).await;
        }
    }

    // Redis is a cache: flushed, the answers come back complete at once (from PostgreSQL).
    let flushed = c.flush_redis().await;
    assert!(flushed >= polls.len(), "only {flushed} keys were cached");
    let started = Instant::now();
    for &poll in &polls {
        assert_eq!(
            c.counts(&query, poll).await.as_deref(),
            Some(&expected[&poll][..])
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "refill took {:?}",
        started.elapsed()
    );

    // The audit replays the votes topic and agrees with every published partial.
    let out = Command::new(env!("CARGO_BIN_EXE_crowdtick"))
        .args(["recount"])
        .envs(c.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "recount disagrees:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Every processor's /metrics, as it ends.
    let mut metrics = Vec::new();
    for p in processors.iter() {
        let text = client.get(format!("{}/metrics", p.base)).send().await;
        metrics.push(text.unwrap().text().await.unwrap());
    }
    // Lag metrics come from the processors' own positions.
    assert!(
        metrics[0].contains("crowdtick_processor_lag_records"),
        "{}",
        metrics[0]
    );
    // The partitions that moved were restored from checkpoints, not replayed from the start.
    let restored: u64 = metrics
        .iter()
        .filter_map(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("crowdtick_processor_checkpoints_restored_total "))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .sum();
    assert!(restored > 0, "no partition was restored from a checkpoint");
    // The fourth member got partitions.
    assert!(
        metrics
            .last()
            .unwrap()
            .contains("crowdtick_processor_lag_records{partition="),
        "the processor that joined owns no partition:\n{}",
        c.logs()
    );
    eprintln!("cluster: {restored} partition assignments restored from checkpoints");
    if let Some(registry) = &registry {
        // Every node registered the same two schemas: one version per subject.
        let prefix = &c
            .env
            .iter()
            .find(|(k, _)| k == "CROWDTICK_KAFKA__TOPIC_PREFIX")
            .unwrap()
            .1;
        for topic in ["votes", "tallies"] {
            let subject = format!("{prefix}{topic}-value");
            assert_eq!(registry.versions(&subject).len(), 1, "{subject}");
        }
    }

    eprintln!(
        "cluster: every poll exact everywhere, recount agrees ({:?} in all)",
        started_at.elapsed()
    );
    drop(processors);
    drop(realtimes);
    drop(edges);
    drop(query);
    c.flush_redis().await;
    c.drop_schema().await;
}

/// Static membership (`processor.instance_id`): two static members share the partitions; one is
/// SIGKILLed and comes back under the same instance id, takes its partitions back (restored from
/// their checkpoints), and every vote counts once.
///
/// With eager (`range`) assignment and the default 10 s session timeout: on tansu 0.6, a static
/// member joining a cooperative-sticky group never gets the partitions revoked for it (the second
/// round does not complete), and with a 6 s session timeout a lone static member is assigned and
/// revoked every 6 s. Real Kafka supports static members with cooperative-sticky (KIP-345,
/// KIP-429); that combination is not tested here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_members_keep_their_partitions_through_a_kill() {
    let broker = TansuBroker::start();
    let mut c = Cluster::new(broker.addr(), 4);
    c.env.push((
        "CROWDTICK_PROCESSOR__ASSIGNMENT_STRATEGY".into(),
        "range".into(),
    ));
    c.env
        .retain(|(k, _)| k != "CROWDTICK_PROCESSOR__SESSION_TIMEOUT_MS");
    let query = c.start("query").await;
    let edge = c.start("ingest").await;
    let one = [("CROWDTICK_PROCESSOR__INSTANCE_ID", "static-1")];
    let two = [("CROWDTICK_PROCESSOR__INSTANCE_ID", "static-2")];
    let mut first = c.start_with("processor", &one).await;
    let poll = c.create_poll(&query, 3).await;
    let (votes, _, expected) = plan(&[poll], 3, 3_000, 1, 11);
    let (before, after) = votes.split_at(1_500);
    let urls = [edge.base.clone()];
    send_all(&c.client, &urls, before.to_vec(), 100).await;
    let client = c.client.clone();
    let owned = |node: &Node| {
        let (client, url) = (client.clone(), format!("{}/metrics", node.base));
        async move {
            let text = client.get(url).send().await.unwrap().text().await.unwrap();
            text.lines()
                .filter_map(|l| l.strip_prefix("crowdtick_processor_lag_records{partition=\""))
                .filter_map(|l| l.split('"').next()?.parse::<u32>().ok())
                .collect::<Vec<u32>>()
        }
    };
    // The first member takes every partition; once the second joins, they share them.
    let deadline = Instant::now() + Duration::from_secs(60);
    while owned(&first).await.len() != 4 {
        assert!(Instant::now() < deadline, "{}", c.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let second = c.start_with("processor", &two).await;
    let (mine, theirs) = loop {
        let (a, b) = (owned(&first).await, owned(&second).await);
        if !a.is_empty() && !b.is_empty() && a.len() + b.len() == 4 {
            break (a, b);
        }
        assert!(
            Instant::now() < deadline,
            "static members own {a:?} and {b:?}\n{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    first.kill9();
    first = c.start_with("processor", &one).await;
    send_all(&c.client, &urls, after.to_vec(), 100).await;
    let deadline = Instant::now() + Duration::from_secs(90);
    c.wait_counts(&query, poll, &expected[&poll], deadline)
        .await;
    // The same instance id came back to the same partitions; the other member kept its own.
    assert_eq!(owned(&first).await, mine, "{}", c.logs());
    assert_eq!(owned(&second).await, theirs);
    eprintln!("static: {mine:?} and {theirs:?} kept through a SIGKILL");
    drop((first, second, edge, query));
    c.flush_redis().await;
    c.drop_schema().await;
}

/// A poll created on one node takes votes on another at once: an edge that does not know the poll
/// re-reads the catalog (a re-read begun after the vote arrived) before refusing it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_created_elsewhere_takes_votes_at_once() {
    let broker = TansuBroker::start();
    let mut c = Cluster::new(broker.addr(), 2);
    let query = c.start("query").await;
    let edge = c.start("ingest").await;
    for i in 0..30 {
        let poll = c.create_poll(&query, 2).await;
        let r = c
            .client
            .post(format!("{}/v1/votes", edge.base))
            .json(&json!({"poll_id": poll, "option_id": 0, "voter_id": format!("new-{i}")}))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        assert_eq!(
            status,
            202,
            "poll {poll} ({i}): {}",
            r.text().await.unwrap()
        );
    }
    // A poll nobody created is still refused (after the re-read).
    let r = c
        .client
        .post(format!("{}/v1/votes", edge.base))
        .json(&json!({"poll_id": 999_999, "option_id": 0, "voter_id": "nobody"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_outage_gets_503_within_the_deadline_and_service_resumes() {
    broker_outage(Duration::from_secs(8)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "30 s outage, as the issue states it: run by scripts/cluster-test.sh"]
async fn broker_outage_30s() {
    broker_outage(Duration::from_secs(30)).await;
}

/// The broker (SQLite storage) stopped for `length` while votes keep coming: each gets 503 with
/// Retry-After within the edge's deadline, the edge's memory stays flat, every 202 counts, and the
/// edge takes votes again on its own within 15 s of the broker's return.
async fn broker_outage(length: Duration) {
    let mut broker = TansuBroker::start_persistent();
    let mut c = Cluster::new(broker.addr(), 2);
    c.env
        .push(("CROWDTICK_INGEST__DEADLINE_MS".into(), "1000".into()));
    let query = c.start("query").await;
    let edge = c.start("ingest").await;
    let processor = c.start("processor").await;
    let poll = c.create_poll(&query, 2).await;
    let client = c.client.clone();
    let vote = |voter: String, option: i64| {
        let (client, base) = (client.clone(), edge.base.clone());
        async move {
            let started = Instant::now();
            let r = client
                .post(format!("{base}/v1/votes"))
                .json(&json!({"poll_id": poll, "option_id": option, "voter_id": voter, "vote_id": format!("{voter}-id")}))
                .send()
                .await
                .unwrap();
            let retry_after = r.headers().get("retry-after").is_some();
            (r.status().as_u16(), retry_after, started.elapsed())
        }
    };
    // Before: every node is ready, each with its own checks.
    let http = &c.client;
    assert_eq!(
        wait_ready(http, &edge.base, 30).await,
        ["log", "poll_catalog"]
    );
    assert_eq!(
        wait_ready(http, &processor.base, 60).await,
        ["log", "poll_catalog", "partitions"]
    );
    assert_eq!(wait_ready(http, &query.base, 30).await, ["poll_catalog"]);
    // Before: votes are taken.
    let mut acked: Vec<(String, i64)> = Vec::new();
    for i in 0..50 {
        let v = format!("ov-before-{i}");
        assert_eq!(vote(v.clone(), i % 2).await.0, 202);
        acked.push((v, i % 2));
    }

    let rss_before = edge.rss_kib();
    broker.stop();
    let outage = Instant::now();
    let mut refused = 0;
    let mut pending = Vec::new();
    let mut rss_during = Vec::new();
    let mut slowest = Duration::ZERO;
    while outage.elapsed() < length {
        // 32 votes at a time, each waiting out the edge's deadline.
        let round: Vec<String> = (0..32)
            .map(|i| format!("ov-during-{}", refused + i))
            .collect();
        let answers = futures::future::join_all(round.iter().map(|v| vote(v.clone(), 1))).await;
        for (v, (status, retry_after, took)) in round.into_iter().zip(answers) {
            slowest = slowest.max(took);
            assert!(
                took < Duration::from_millis(1000 + 1500),
                "an answer took {took:?} with a 1 s deadline"
            );
            match status {
                503 => {
                    assert!(retry_after, "503 without Retry-After");
                    pending.push(v);
                }
                202 => acked.push((v, 1)), // buffered before the edge noticed: must still count
                other => panic!("status {other} during the outage"),
            }
            refused += 1;
        }
        rss_during.push(edge.rss_kib());
    }
    // The edge says why it is not ready while the broker is away.
    let (status, failing, body) = readiness(&c.client, &edge.base).await;
    assert_eq!((status, failing), (503, vec!["log".to_owned()]), "{body}");
    let rss_max = rss_during.iter().copied().max().unwrap_or(0);
    eprintln!("outage: edge RSS {rss_before} KiB before, at most {rss_max} KiB during; slowest answer {slowest:?} (deadline 1 s)");
    assert!(
        rss_max < rss_before + 64 * 1024,
        "the edge's memory grew from {rss_before} KiB to {rss_max} KiB during the outage"
    );
    assert!(
        pending.len() >= refused / 2,
        "most votes in the outage got 503: {pending:?}"
    );

    let got_503 = pending.len();
    broker.restart();
    let back = Instant::now();
    // The same votes again (same vote_id) until taken: service resumes on its own.
    let mut resumed = None;
    for v in pending {
        loop {
            let (status, _, _) = vote(v.clone(), 1).await;
            if status == 202 {
                resumed.get_or_insert(back.elapsed());
                acked.push((v, 1));
                break;
            }
            assert!(
                back.elapsed() < Duration::from_secs(60),
                "votes still refused {:?} after the broker returned\n{}\n--- broker\n{}",
                back.elapsed(),
                c.logs(),
                tail(&broker.output(), 400)
                    .lines()
                    .filter(|l| !l.contains("UnableToSend") && !l.contains("SendError"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let resumed = resumed.unwrap_or_default();
    wait_ready(&c.client, &edge.base, 30).await;
    eprintln!(
        "outage: {length:?}, {refused} votes during it, {got_503} got 503; taken again {resumed:?} after the broker returned"
    );
    assert!(
        resumed < Duration::from_secs(15),
        "resumed only after {resumed:?}"
    );

    let mut expected = vec![0i64; 2];
    for (_, o) in &acked {
        expected[*o as usize] += 1;
    }
    let deadline = Instant::now() + Duration::from_secs(90);
    c.wait_counts(&query, poll, &expected, deadline).await;
    drop(edge);
    drop(query);
    c.flush_redis().await;
    c.drop_schema().await;
}

/// Distributed throughput beside the broker's raw produce rate, in one run on one broker:
/// 1. raw: two bare rdkafka producers (one per edge) with the edge's producer settings send N vote
///    records between them (the same Avro records, keys and partitions the edges would write) and
///    wait for every report;
/// 2. the pipeline: 2 ingest edges, 3 processors and a query node as separate processes; N votes
///    from N voters go through the edges' batch endpoint (1,000 votes a request, bodies built before
///    the clock starts); acknowledged votes/s, and the time until the query node shows them all;
/// 3. raw again (the machine's noise shows as the gap between 1 and 3).
///
/// Passes when the acknowledged rate is at least half the better raw rate. Run by
/// `scripts/distributed-bench.sh`; `CROWDTICK_BENCH_VOTES` (default 300000) and
/// `CROWDTICK_BENCH_BROKER` (`memory`, the default, or `sqlite`) set the size and the storage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run by scripts/distributed-bench.sh"]
async fn distributed_throughput() {
    let n: usize = std::env::var("CROWDTICK_BENCH_VOTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300_000);
    let storage = std::env::var("CROWDTICK_BENCH_BROKER").unwrap_or_else(|_| "memory".into());
    let broker = match storage.as_str() {
        "sqlite" => TansuBroker::start_persistent(),
        _ => TansuBroker::start(),
    };
    let partitions = 8u32;
    let polls: Vec<i64> = (1..=5).collect();
    let vote_of = |i: usize, run: &str| schemas::Vote {
        vote_id: format!("{run}-{i}"),
        poll_id: polls[i % polls.len()],
        voter_id: format!("{run}-voter-{i}"),
        options: vec![(i % 4) as u32],
        accepted_at: schemas::Timestamp::now(),
        source: "web".into(),
    };

    let raw = |round: &'static str| {
        let broker = broker.addr().to_owned();
        let vote_of = &vote_of;
        async move {
            let mut config = storage::KafkaConfig::new(broker);
            config.votes_topic = format!("rawbench-{round}-{}", rand::random::<u32>());
            config.tallies_topic = format!("{}-tallies", config.votes_topic);
            config.votes_partitions = partitions;
            config.replication_factor = 1;
            // Creates the topics with the same partitions.
            let log = storage::KafkaLog::connect(config.clone()).await.unwrap();
            let records: Vec<(schemas::Partition, Vec<u8>, Vec<u8>)> = (0..n)
                .map(|i| {
                    let v = vote_of(i, round);
                    let (mut key, mut value) = (Vec::new(), Vec::new());
                    schemas::vote::vote_key(v.poll_id, &v.voter_id, &mut key);
                    v.encode(&mut value);
                    let p = schemas::partition_for(v.poll_id, &v.voter_id, partitions);
                    (p, key, value)
                })
                .collect();
            // As many producers as the pipeline has edges, side by side.
            let started = Instant::now();
            let halves = records
                .chunks(n.div_ceil(2))
                .map(|part| storage::kafka::raw_produce(&config, &config.votes_topic, part));
            let delivered: usize = futures::future::join_all(halves)
                .await
                .into_iter()
                .map(|r| r.unwrap().0)
                .sum();
            let took = started.elapsed();
            drop(log);
            assert_eq!(delivered, n, "the raw producers lost records");
            let rate = n as f64 / took.as_secs_f64();
            eprintln!(
                "bench: raw produce ({round}, 2 producers): {n} records in {took:?}: {rate:.0}/s"
            );
            rate
        }
    };

    let raw_before = raw("before").await;

    let mut c = Cluster::new(broker.addr(), partitions);
    c.env.retain(|(k, _)| k != "RUST_LOG");
    c.env.push(("RUST_LOG".into(), "warn".into()));
    let query = c.start("query").await;
    for &p in &polls {
        // A new schema's id sequence starts at 1.
        assert_eq!(c.create_poll(&query, 4).await, p);
    }
    let edges = [c.start("ingest").await, c.start("ingest").await];
    let processors = [
        c.start("processor").await,
        c.start("processor").await,
        c.start("processor").await,
    ];
    // Let the group settle before the clock starts.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let bodies: Vec<(usize, String)> = (0..n)
        .collect::<Vec<_>>()
        .chunks(1_000)
        .map(|chunk| {
            let body = json!({"votes": chunk.iter().map(|&i| {
                let v = vote_of(i, "pipeline");
                json!({"poll_id": v.poll_id, "voter_id": v.voter_id, "option_id": v.options[0], "vote_id": v.vote_id})
            }).collect::<Vec<_>>()});
            (chunk.len(), body.to_string())
        })
        .collect();
    let client = &c.client;
    let started = Instant::now();
    let acked = std::sync::atomic::AtomicUsize::new(0);
    futures::stream::iter(bodies.into_iter().enumerate())
        .for_each_concurrent(8, |(i, (len, body))| {
            let acked = &acked;
            let edges = &edges;
            async move {
                for attempt in 0.. {
                    let edge = &edges[(i + attempt) % edges.len()].base;
                    let r = client
                        .post(format!("{edge}/v1/votes/batch?results=rejected"))
                        .bearer_auth(crate::helpers::AGG_KEY)
                        .header("content-type", "application/json")
                        .body(body.clone())
                        .send()
                        .await;
                    if let Ok(r) = r {
                        if r.status() == 200 {
                            let v: Value = r.json().await.unwrap();
                            assert_eq!(v["accepted"].as_u64(), Some(len as u64), "{v}");
                            acked.fetch_add(len, std::sync::atomic::Ordering::Relaxed);
                            return;
                        }
                    }
                    assert!(attempt < 100, "a batch never acknowledged");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        })
        .await;
    let ack_time = started.elapsed();
    let acked = acked.into_inner();
    assert_eq!(acked, n);
    let ack_rate = n as f64 / ack_time.as_secs_f64();
    eprintln!("bench: pipeline acknowledged {n} votes in {ack_time:?}: {ack_rate:.0}/s");
    // Counted: every poll's total on the query node.
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let mut total = 0;
        for &p in &polls {
            total += c
                .counts(&query, p)
                .await
                .unwrap_or_default()
                .iter()
                .sum::<i64>();
        }
        if total == n as i64 {
            break;
        }
        assert!(total <= n as i64, "counted {total} of {n}");
        assert!(
            Instant::now() < deadline,
            "only {total} of {n} counted\n{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let count_time = started.elapsed();
    eprintln!(
        "bench: pipeline counted all {n} on the query node {count_time:?} after the first request: {:.0}/s",
        n as f64 / count_time.as_secs_f64()
    );
    drop(processors);
    drop(edges);
    drop(query);

    let raw_after = raw("after").await;
    let best = raw_before.max(raw_after);
    let ratio = ack_rate / best;
    eprintln!(
        "bench: {storage} broker: acknowledged {ack_rate:.0}/s = {:.0}% of the better raw rate ({best:.0}/s; before {raw_before:.0}, after {raw_after:.0})",
        ratio * 100.0
    );
    c.flush_redis().await;
    c.drop_schema().await;
    assert!(
        ratio >= 0.5,
        "the pipeline took {:.0}% of the broker's raw rate (at least 50% wanted)",
        ratio * 100.0
    );
}
