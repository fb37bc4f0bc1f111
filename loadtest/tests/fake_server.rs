//! End to end against a small fake CrowdTick (raw HTTP/1.1 over tokio, loopback only) that
//! misbehaves on purpose: 503s with Retry-After, connections dropped after the vote was written
//! (the client cannot know it was), connections dropped before. The load generator must retry
//! through all of it and its verification must pass against an honest server and fail against
//! one that counts duplicates.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Default)]
struct State {
    /// Options per poll (poll id = index + 1).
    polls: Vec<usize>,
    counts: Vec<Vec<u64>>,
    counted: HashMap<(i64, String), ()>,
    log_len: u64,
}

struct Fake {
    state: Mutex<State>,
    requests: AtomicU64,
    /// Count every vote (a broken dedupe), for the negative test.
    lie: bool,
}

impl Fake {
    fn record(&self, poll: i64, voter: &str, option: usize) -> bool {
        let mut s = self.state.lock().unwrap();
        let Some(&options) = s.polls.get(poll as usize - 1) else {
            return false;
        };
        if option >= options {
            return false;
        }
        s.log_len += 1;
        let first = s.counted.insert((poll, voter.to_owned()), ()).is_none();
        if first || self.lie {
            s.counts[poll as usize - 1][option] += 1;
        }
        true
    }
}

#[derive(PartialEq)]
enum Fault {
    None,
    /// 503 with Retry-After: 0 (not written).
    Busy,
    /// Written, then the connection dies before the answer.
    WrittenThenDropped,
    /// The connection dies before anything is written.
    Dropped,
}

/// The fault of the n-th vote request.
fn fault(n: u64) -> Fault {
    match (n % 7, n % 11, n % 13) {
        (0, _, _) => Fault::Busy,
        (_, 0, _) => Fault::WrittenThenDropped,
        (_, _, 0) => Fault::Dropped,
        _ => Fault::None,
    }
}

async fn read_request(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> Option<(String, String, Vec<u8>)> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let mut lines = head.split("\r\n");
            let mut first = lines.next()?.split(' ');
            let (method, path) = (first.next()?.to_owned(), first.next()?.to_owned());
            let len: usize = lines
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .map_or(0, |(_, v)| v.trim().parse().unwrap_or(0));
            while buf.len() < end + 4 + len {
                let mut chunk = [0u8; 8192];
                let n = stream.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let body = buf[end + 4..end + 4 + len].to_vec();
            buf.drain(..end + 4 + len);
            return Some((method, path, body));
        }
        let mut chunk = [0u8; 8192];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn answer(stream: &mut TcpStream, status: &str, extra: &str, body: &str) -> bool {
    let msg = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{extra}\r\n{body}",
        body.len()
    );
    stream.write_all(msg.as_bytes()).await.is_ok()
}

async fn serve_conn(fake: Arc<Fake>, mut stream: TcpStream) {
    let mut buf = Vec::new();
    while let Some((method, path, body)) = read_request(&mut stream, &mut buf).await {
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let ok = match (method.as_str(), path.as_str()) {
            ("GET", "/healthz") => answer(&mut stream, "200 OK", "", r#"{"status":"ok"}"#).await,
            ("POST", "/v1/polls") => {
                let options = v["options"].as_array().map_or(0, |o| o.len());
                let id = {
                    let mut s = fake.state.lock().unwrap();
                    s.polls.push(options);
                    s.counts.push(vec![0; options]);
                    s.polls.len()
                };
                answer(
                    &mut stream,
                    "201 Created",
                    "",
                    &format!(r#"{{"id":{id},"state":"open"}}"#),
                )
                .await
            }
            ("GET", p) if p.starts_with("/v1/polls/") && p.ends_with("/results") => {
                let id: usize = p
                    .trim_start_matches("/v1/polls/")
                    .trim_end_matches("/results")
                    .parse()
                    .unwrap_or(0);
                let body = {
                    let s = fake.state.lock().unwrap();
                    match s.counts.get(id.wrapping_sub(1)) {
                        Some(c) => {
                            serde_json::json!({"poll_id": id, "version": s.log_len, "counts": c})
                                .to_string()
                        }
                        None => r#"{"error":{"code":"unknown_poll","message":"no"}}"#.to_owned(),
                    }
                };
                answer(&mut stream, "200 OK", "", &body).await
            }
            ("POST", "/v1/votes") => {
                let n = fake.requests.fetch_add(1, Ordering::Relaxed) + 1;
                let (poll, voter, option) = (
                    v["poll_id"].as_i64().unwrap_or(0),
                    v["voter_id"].as_str().unwrap_or("").to_owned(),
                    v["option_id"].as_u64().unwrap_or(99) as usize,
                );
                if fault(n) == Fault::Busy {
                    answer(
                        &mut stream,
                        "503 Service Unavailable",
                        "retry-after: 0\r\n",
                        r#"{"error":{"code":"unavailable","message":"busy"}}"#,
                    )
                    .await
                } else if fault(n) == Fault::WrittenThenDropped {
                    // Written, then the connection dies before the answer.
                    fake.record(poll, &voter, option);
                    false
                } else if fault(n) == Fault::Dropped {
                    false
                } else if fake.record(poll, &voter, option) {
                    let vote_id = v["vote_id"].as_str().unwrap_or("");
                    answer(
                        &mut stream,
                        "202 Accepted",
                        "",
                        &format!(
                            r#"{{"vote_id":"{vote_id}","poll_id":{poll},"partition":0,"offset":{n}}}"#
                        ),
                    )
                    .await
                } else {
                    answer(
                        &mut stream,
                        "422 Unprocessable Entity",
                        "",
                        r#"{"error":{"code":"invalid_option","message":"no"}}"#,
                    )
                    .await
                }
            }
            ("POST", "/v1/votes/batch?results=rejected") => {
                let votes = v["votes"].as_array().cloned().unwrap_or_default();
                let mut rejected = Vec::new();
                for (i, vote) in votes.iter().enumerate() {
                    let ok = fake.record(
                        vote["poll_id"].as_i64().unwrap_or(0),
                        vote["voter_id"].as_str().unwrap_or(""),
                        vote["option_id"].as_u64().unwrap_or(99) as usize,
                    );
                    if !ok {
                        rejected.push(serde_json::json!({"status": "rejected", "index": i,
                            "error": {"code": "invalid_option", "message": "no"}}));
                    }
                }
                let body = serde_json::json!({"accepted": votes.len() - rejected.len(),
                    "rejected": rejected.len(), "results": rejected});
                answer(&mut stream, "200 OK", "", &body.to_string()).await
            }
            _ => {
                answer(
                    &mut stream,
                    "404 Not Found",
                    "",
                    r#"{"error":{"code":"no_route","message":"no"}}"#,
                )
                .await
            }
        };
        if !ok {
            return;
        }
    }
}

async fn start(lie: bool) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let fake = Arc::new(Fake {
        state: Mutex::default(),
        requests: AtomicU64::new(0),
        lie,
    });
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve_conn(fake.clone(), stream));
        }
    });
    format!("http://{addr}")
}

fn args(url: &str, extra: &[&str]) -> loadtest::LoadgenArgs {
    let base = [
        "--url",
        url,
        "--voters",
        "500",
        "--polls",
        "3",
        "--connections",
        "8",
        "--verify",
        "--verify-timeout-secs",
        "2",
        "--quiet",
    ];
    loadtest::LoadgenArgs::try_parse_flags(base.iter().chain(extra).copied()).unwrap()
}

/// Runs the load generator on `url` with `extra` arguments, which must verify; its JSON report
/// (written in `dir`).
async fn reported_run(url: &str, dir: &std::path::Path, extra: &[&str]) -> serde_json::Value {
    let report = dir.join("report.json");
    let report_arg = ["--json-report", report.to_str().unwrap()];
    let all: Vec<&str> = extra.iter().copied().chain(report_arg).collect();
    loadtest::main(args(url, &all))
        .await
        .expect("an honest server passes");
    serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_through_faults_and_verifies_exactly() {
    let url = start(false).await;
    let dir = std::env::temp_dir().join(format!("lg-fake-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let record = dir.join("run.rec");
    let record_arg = record.to_str().unwrap();
    let r = reported_run(&url, &dir, &["--votes", "3000", "--record", record_arg]).await;
    assert_eq!(r["acknowledged"], 3000, "{r}");
    assert_eq!(r["verify"]["ok"], true);
    // The closed loop has no due time to be late for.
    assert!(r["send_lateness"].is_null(), "{r}");
    assert!(r["errors"]["broken"].as_u64().unwrap() > 0, "{r}");
    assert!(r["status_counts"]["503"].as_u64().unwrap() > 0, "{r}");
    // The record verifies on its own too.
    let mut only = args(&url, &["--record", record.to_str().unwrap()]);
    only.verify = false;
    only.verify_only = true;
    loadtest::main(only).await.expect("the record verifies");
    std::fs::remove_dir_all(&dir).ok();
}

/// The open loop places a voter's first vote on an idle lane and the voter's later votes (the
/// duplicates and retries, 30% here) on the same one: through the faults, each voter's votes
/// still go out in order, and the lanes' expectations merge into the exact count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_single_votes_through_faults_verify_exactly() {
    let url = start(false).await;
    let dir = std::env::temp_dir().join(format!("lg-open-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let extra = [
        "--rate",
        "3000",
        "--duration",
        "1",
        "--duplicate-share",
        "0.2",
        "--retry-share",
        "0.1",
    ];
    let r = reported_run(&url, &dir, &extra).await;
    assert_eq!(r["acknowledged"], 3000, "{r}");
    assert_eq!(r["verify"]["ok"], true, "{r}");
    assert!(r["errors"]["broken"].as_u64().unwrap() > 0, "{r}");
    assert!(r["status_counts"]["503"].as_u64().unwrap() > 0, "{r}");
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_batches_verify() {
    let url = start(false).await;
    loadtest::main(args(
        &url,
        &["--rate", "4000", "--duration", "1", "--batch", "20"],
    ))
    .await
    .expect("batches verify");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_loop_batches_are_as_large_as_asked_and_verify() {
    let url = start(false).await;
    let dir = std::env::temp_dir().join(format!("lg-batches-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let r = reported_run(&url, &dir, &["--votes", "40000", "--batch", "4000"]).await;
    assert_eq!(r["acknowledged"], 40000, "{r}");
    assert_eq!(r["verify"]["ok"], true, "{r}");
    // 8 lanes of about 5,000 votes each: a full batch and the rest, 16 requests (batches never
    // fault here). A lane's batch was capped by its queue of 1,024: 40 requests or more.
    assert_eq!(r["requests"], 16, "{r}");
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_counts_duplicates_fails_verification() {
    let url = start(true).await;
    let e = loadtest::main(args(&url, &["--votes", "2000", "--duplicate-share", "0.3"]))
        .await
        .expect_err("duplicates counted must be caught");
    assert!(e.to_string().contains("differ"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_holds_the_run_second_by_second() {
    let url = start(false).await;
    let dir = std::env::temp_dir().join(format!("lg-seconds-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let r = reported_run(&url, &dir, &["--rate", "1000", "--duration", "2.5"]).await;
    let seconds = r["by_second"].as_array().expect("by_second");
    // Two whole seconds and the rest: the votes due in the last half second, their retries and
    // the answers still in flight at 2 s.
    assert!((3..=5).contains(&seconds.len()), "{seconds:?}");
    let acked: u64 = seconds
        .iter()
        .map(|s| s["acknowledged"].as_u64().unwrap())
        .sum();
    assert_eq!(acked, r["acknowledged"].as_u64().unwrap(), "{seconds:?}");
    let until: Vec<f64> = seconds
        .iter()
        .map(|s| s["until_secs"].as_f64().unwrap())
        .collect();
    assert!(until.windows(2).all(|w| w[0] < w[1]), "{until:?}");
    for s in seconds
        .iter()
        .filter(|s| s["acknowledged"].as_u64() > Some(0))
    {
        let (p99, max) = (s["p99_ms"].as_f64().unwrap(), s["max_ms"].as_f64().unwrap());
        assert!(p99 > 0.0 && max >= p99, "{s}");
    }
    // A request's answer and its acknowledgement are noted one after the other: a second's
    // edge may part them, but not for a whole second's votes.
    for s in seconds
        .iter()
        .filter(|s| s["acknowledged"].as_u64() >= Some(100))
    {
        assert!(s["answer_p99_ms"].as_f64().unwrap() > 0.0, "{s}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// On several threads the lanes note their latencies in several histogram shards: every
/// acknowledged vote still reaches the run's seconds and its totals, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_several_threads_every_vote_reaches_the_report_once() {
    let url = start(false).await;
    let dir = std::env::temp_dir().join(format!("lg-threads-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let extra = ["--rate", "2000", "--duration", "1.5", "--threads", "3"];
    let r = reported_run(&url, &dir, &extra).await;
    let acked = r["acknowledged"].as_u64().unwrap();
    assert_eq!(acked, 3000, "{r}");
    assert_eq!(r["latency"]["count"], acked, "{r}");
    assert_eq!(r["answer_latency"]["count"], acked, "{r}");
    assert_eq!(r["send_lateness"]["count"], acked, "{r}");
    let by_second: u64 = (r["by_second"].as_array().expect("by_second").iter())
        .map(|s| s["acknowledged"].as_u64().unwrap())
        .sum();
    assert_eq!(by_second, acked, "{r}");
    std::fs::remove_dir_all(&dir).ok();
}

/// The open loop's send lateness is the generator's own delay, not the server's: when the server
/// stalls for 300 ms (its runtime blocked; the load generator runs on a runtime of its own), the
/// votes that fall due meanwhile wait in their lanes behind the answers still owed, and their
/// latency from the due time shows the stall, but none of it is counted as sent late.
/// (`lane::tests` checks the other side: a vote due while its lane is free counts every moment it
/// is not sent.)
#[tokio::test]
async fn a_stalled_server_is_not_counted_as_the_generator_sending_late() {
    let url = start(false).await;
    let dir = std::env::temp_dir().join(format!("lg-late-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // This test's runtime has one thread, so this blocks the fake server.
    tokio::spawn(async {
        tokio::time::sleep(std::time::Duration::from_millis(800)).await;
        std::thread::sleep(std::time::Duration::from_millis(300));
    });
    let r = reported_run(&url, &dir, &["--rate", "1000", "--duration", "2"]).await;
    let (late, latency) = (&r["send_lateness"], &r["latency"]);
    let ms = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap();
    assert!(ms(&r["answer_latency"], "max_ms") >= 200.0, "{r}");
    assert!(ms(latency, "p99_ms") >= 150.0, "{r}");
    assert!(ms(late, "max_ms") < 100.0, "{r}");
    assert_eq!(late["count"], r["acknowledged"], "{r}");
    // Not nothing either: the dispatcher releases a vote at the first timer tick (1 ms) at or
    // after its due time, so most votes of an idle lane go out a fraction of a millisecond late.
    assert!(ms(late, "p90_ms") >= 0.1, "{r}");
    std::fs::remove_dir_all(&dir).ok();
}
