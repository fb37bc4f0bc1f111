//! Exactly once through kill -9: the server binary is killed with SIGKILL several times while votes
//! pour in (20% duplicates, 5% retries with the same vote_id), restarted on the same data directory,
//! and at the end every poll's published counts equal those computed from the acknowledged votes,
//! and `crowdtick recount` agrees. (The full-size variant is scripts/crash-test.sh.) Again with
//! retention: snapshots due every 200 ms (once the log since the last holds as many records as
//! there are voters, or the partition is quiet), the votes log in 1 MiB segments, those the older
//! snapshot holds deleted; each restart restores the snapshots and reads only the log after them.

use crate::helpers::{free_port, metric_at, wait_healthy};
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const POLLS: i64 = 3;
const OPTIONS: i64 = 3;
const VOTERS: u32 = 3_000;
const SUBMISSIONS: usize = 20_000;
/// With retention: enough that the log outgrows the voters several times (a checkpoint is due
/// once it has grown by as many records as there are voters) and spans several 1 MiB segments.
const SUBMISSIONS_WITH_RETENTION: usize = 80_000;
const LANES: usize = 32;
const KILLS: u64 = 3;

#[derive(Clone, Debug)]
struct Submission {
    poll: i64,
    voter: u32,
    option: i64,
    vote_id: String,
}

/// The plan: first votes, duplicates (same voter, new vote_id, any option) and retries (an earlier
/// submission again, same vote_id), in plan order.
fn plan(seed: u64, first_poll: i64, submissions: usize) -> Vec<Submission> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut subs: Vec<Submission> = Vec::with_capacity(submissions);
    let mut voted: Vec<(i64, u32)> = Vec::new();
    for i in 0..submissions {
        let r: f64 = rng.gen();
        let s = if r < 0.05 && !subs.is_empty() {
            subs[rng.gen_range(0..subs.len())].clone()
        } else if r < 0.25 && !voted.is_empty() {
            let (poll, voter) = voted[rng.gen_range(0..voted.len())];
            Submission {
                poll,
                voter,
                option: rng.gen_range(0..OPTIONS),
                vote_id: format!("c{i}"),
            }
        } else {
            let (poll, voter) = (
                first_poll + rng.gen_range(0..POLLS),
                rng.gen_range(0..VOTERS),
            );
            voted.push((poll, voter));
            Submission {
                poll,
                voter,
                option: rng.gen_range(0..OPTIONS),
                vote_id: format!("c{i}"),
            }
        };
        subs.push(s);
    }
    subs
}

/// Expected counts: each (poll, voter)'s first submission in plan order (all get acknowledged).
fn expected(subs: &[Submission]) -> HashMap<i64, Vec<i64>> {
    let mut first: HashMap<(i64, u32), i64> = HashMap::new();
    for s in subs {
        first.entry((s.poll, s.voter)).or_insert(s.option);
    }
    let mut counts: HashMap<i64, Vec<i64>> = HashMap::new();
    for ((poll, _), option) in first {
        counts
            .entry(poll)
            .or_insert_with(|| vec![0; OPTIONS as usize])[option as usize] += 1;
    }
    counts
}

/// Retention's settings (the second run).
const RETENTION: &[(&str, &str)] = &[
    ("CROWDTICK_LOG__RETIRE_AFTER_SNAPSHOT", "true"),
    ("CROWDTICK_LOG__SEGMENT_MB", "1"),
    ("CROWDTICK_PROCESSOR__CHECKPOINT_INTERVAL_MS", "200"),
];

fn start_server(data: &Path, port: u16, env: &[(&str, &str)]) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(data.with_extension("server.log"))
        .unwrap();
    Command::new(env!("CARGO_BIN_EXE_crowdtick"))
        .args(["serve", "--data-dir"])
        .arg(data)
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--partitions",
            "4",
        ])
        .env("CROWDTICK_PROCESSOR__FLUSH_INTERVAL_MS", "20")
        .env("CROWDTICK_INGEST__DEADLINE_MS", "1000")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start crowdtick")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_load_loses_no_acknowledged_vote_and_counts_none_twice() {
    let (data, recount, _dir) = kill_9_mid_load(&[], SUBMISSIONS).await;
    assert!(
        recount.status.success(),
        "recount disagreed:\n{}",
        show(&recount)
    );
    assert!(
        show(&recount).contains("recount agrees"),
        "{}",
        show(&recount)
    );
    eprintln!("{}", show(&recount));
    // Without retention the log is kept whole.
    assert!(data.join("log/votes.log").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_with_retention_restores_snapshots_and_counts_exactly_once() {
    let (data, recount, _dir) = kill_9_mid_load(RETENTION, SUBMISSIONS_WITH_RETENTION).await;
    let server_log = std::fs::read_to_string(data.with_extension("server.log")).unwrap();
    assert!(
        server_log.contains("partition state restored from its checkpoint"),
        "no restart restored a snapshot:\n{server_log}"
    );
    assert!(
        server_log.contains("retired log segments every consumer released"),
        "no segment was retired:\n{server_log}"
    );
    assert!(
        server_log.contains("results board restored from its snapshot"),
        "no restart restored the results board's snapshot:\n{server_log}"
    );
    assert!(
        !data.join("log/votes.log").exists(),
        "the first segment is still there"
    );
    // The audit needs the whole log, and says why it cannot run.
    assert!(!recount.status.success(), "{}", show(&recount));
    assert!(show(&recount).contains("was retired"), "{}", show(&recount));

    // Without the snapshots the retired part cannot be rebuilt: the node says so and never turns
    // ready, and nothing is cleared or replayed.
    std::fs::rename(data.join("log/snapshots"), data.join("snapshots.moved")).unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut server = start_server(&data, port, RETENTION);
    let client = reqwest::Client::new();
    wait_healthy(&client, &base).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ready = client.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status().as_u16(), 503);
    let why = ready.text().await.unwrap();
    assert!(why.contains("cannot be rebuilt"), "{why}");
    server.kill().unwrap();
    let _ = server.wait();
    let server_log = std::fs::read_to_string(data.with_extension("server.log")).unwrap();
    assert!(
        server_log.contains("cannot be rebuilt: the log before offset"),
        "{server_log}"
    );

    // The operator accepts the loss readiness names for each partition: they count on from
    // the log's start, and the loss is counted. (The board's own snapshot went too: if the
    // tallies were retired, the results are short, and readiness keeps saying so.)
    let unquoted = why.replace(r#"\""#, "\""); // the hint, as JSON wrote it
    let accepted: Vec<&str> = unquoted
        .split("accept_lost_votes = [")
        .skip(1)
        .filter_map(|rest| rest.split(']').next())
        .collect();
    assert!(!accepted.is_empty(), "{why}");
    let accepted = format!("[{}]", accepted.join(","));
    let env: Vec<(&str, &str)> = RETENTION
        .iter()
        .copied()
        .chain([("CROWDTICK_PROCESSOR__ACCEPT_LOST_VOTES", accepted.as_str())])
        .collect();
    let mut server = start_server(&data, port, &env);
    wait_healthy(&client, &base).await;
    let waited = Instant::now();
    let why = loop {
        let ready = client.get(format!("{base}/readyz")).send().await.unwrap();
        let why = ready.text().await.unwrap();
        if !why.contains("restoring or replaying") && !why.contains("assign") {
            break why;
        }
        assert!(waited.elapsed() < Duration::from_secs(30), "{why}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let lost = metric_at(&client, &base, "crowdtick_processor_votes_lost_total").await;
    let counted = metric_at(&client, &base, "crowdtick_processor_votes_counted_total").await;
    server.kill().unwrap();
    let _ = server.wait();
    assert!(!why.contains("cannot be rebuilt"), "{accepted}: {why}");
    assert!(why.contains("caught up"), "{why}");
    assert!(lost > 0, "no loss counted");
    assert!(counted > 0, "nothing counted");
    let server_log = std::fs::read_to_string(data.with_extension("server.log")).unwrap();
    assert!(
        server_log.contains("counting on without them, as processor.accept_lost_votes allows"),
        "{server_log}"
    );
}

fn show(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The load with three kill -9s; every poll's counts checked. Returns the data directory, what
/// `crowdtick recount` said beside the running server, and the directory's guard.
async fn kill_9_mid_load(
    env: &[(&str, &str)],
    submissions: usize,
) -> (std::path::PathBuf, std::process::Output, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .pool_max_idle_per_host(LANES)
        .build()
        .unwrap();
    let mut server = start_server(&data, port, env);
    wait_healthy(&client, &base).await;

    let mut first_poll = 0;
    for p in 0..POLLS {
        let r = client
            .post(format!("{base}/v1/polls"))
            .bearer_auth("dev-operator-key")
            .json(&serde_json::json!({"title": format!("crash {p}"), "options": ["A", "B", "C"], "open": true}))
            .send()
            .await
            .unwrap();
        let id = r.json::<serde_json::Value>().await.unwrap()["id"]
            .as_i64()
            .unwrap();
        if p == 0 {
            first_poll = id;
        }
    }
    let subs = plan(42, first_poll, submissions);
    let want = expected(&subs);

    // Lanes keep each (poll, voter)'s submissions in plan order; each is retried until acknowledged.
    let mut lanes: Vec<Vec<Submission>> = vec![Vec::new(); LANES];
    for s in &subs {
        lanes[(s.poll as usize * 7919 + s.voter as usize) % LANES].push(s.clone());
    }
    let acked = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = lanes
        .into_iter()
        .map(|lane| {
            let (client, base, acked, failures) = (client.clone(), base.clone(), acked.clone(), failures.clone());
            tokio::spawn(async move {
                for s in lane {
                    let body = serde_json::json!({"poll_id": s.poll, "option_id": s.option, "voter_id": format!("voter-{}", s.voter), "vote_id": s.vote_id});
                    let give_up = Instant::now() + Duration::from_secs(120);
                    loop {
                        match client.post(format!("{base}/v1/votes")).json(&body).send().await {
                            Ok(r) if r.status().as_u16() == 202 => break,
                            Ok(r) if r.status().is_client_error() => panic!("{body} refused: {}", r.text().await.unwrap()),
                            _ => {
                                failures.fetch_add(1, Ordering::Relaxed);
                                assert!(Instant::now() < give_up, "{body} never acknowledged");
                                tokio::time::sleep(Duration::from_millis(30)).await;
                            }
                        }
                    }
                    acked.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();

    // Kill -9 at 20%, 45% and 70% of the load; restart at once on the same data directory.
    let mut kills = 0;
    while kills < KILLS {
        let at = submissions as u64 * (20 + 25 * kills) / 100;
        while acked.load(Ordering::Relaxed) < at {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        server.kill().unwrap(); // SIGKILL
        server.wait().unwrap();
        kills += 1;
        server = start_server(&data, port, env);
        wait_healthy(&client, &base).await;
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(acked.load(Ordering::Relaxed), submissions as u64);
    eprintln!("{submissions} submissions acknowledged through {kills} kill -9s; {} attempts failed and were retried", failures.load(Ordering::Relaxed));
    assert!(
        failures.load(Ordering::Relaxed) > 0,
        "the kills should have interrupted requests in flight"
    );

    for (poll, counts) in &want {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let r: serde_json::Value = client
                .get(format!("{base}/v1/polls/{poll}/results"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let got: Vec<i64> = r["counts"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c.as_i64().unwrap())
                .collect();
            if &got == counts {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "poll {poll}: published {got:?}, expected {counts:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // The audit, beside the running server.
    let recount = Command::new(env!("CARGO_BIN_EXE_crowdtick"))
        .args(["recount", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    server.kill().unwrap();
    let _ = server.wait();
    (data, recount, dir)
}
