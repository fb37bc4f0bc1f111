//! Admission by the wait for a core (`ingest::admission::WaitJudge`, `edge/src/listener/receive_stamp.rs`): a
//! vote that waited too long for the node is shed with a fast 503 and `Retry-After` before anything
//! is written, and votes beside it are acknowledged and counted exactly; reads pause while the edge
//! holds many votes (`edge/src/listener/read_gate.rs`), and with `shed_backlog_appends` set, a
//! backlog is shed after a pause; shed votes are told to come back in different seconds.

use crate::helpers::*;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::time::Duration;

fn vote_request(poll: i64, voter: &str, option: i64, path: &str) -> String {
    let body = json!({"poll_id": poll, "option_id": option, "voter_id": voter}).to_string();
    format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Checks an answer is a fast 503 that says when to retry (1 to 3 s, spread over the answers
/// shed together); its JSON body.
fn shed_body(answer: &str) -> Value {
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    let secs = retry_after_secs(answer);
    assert!((1..=3).contains(&secs), "{answer}");
    serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap()
}

fn retry_after_secs(answer: &str) -> u32 {
    let head = answer
        .split("\r\n\r\n")
        .next()
        .unwrap()
        .to_ascii_lowercase();
    head.lines()
        .find_map(|l| l.strip_prefix("retry-after: "))
        .unwrap_or_else(|| panic!("no Retry-After: {answer}"))
        .trim()
        .parse()
        .unwrap()
}

/// Sends each request on its own connection from a plain thread while this test's runtime (the
/// server's one thread) is blocked for 400 ms, so their bytes wait in the kernel; then reads every
/// answer (the connections say `Connection: close`).
async fn send_while_the_node_is_busy(
    addr: std::net::SocketAddr,
    requests: Vec<String>,
) -> Vec<String> {
    let senders: Vec<_> = requests
        .into_iter()
        .map(|request| {
            std::thread::spawn(move || {
                let mut sock = std::net::TcpStream::connect(addr).unwrap();
                sock.write_all(request.as_bytes()).unwrap();
                sock
            })
        })
        .collect();
    // The node's only thread is busy: the requests wait in their sockets.
    std::thread::sleep(Duration::from_millis(400));
    let socks: Vec<_> = senders.into_iter().map(|t| t.join().unwrap()).collect();
    tokio::task::spawn_blocking(move || {
        socks
            .into_iter()
            .map(|mut sock| {
                let mut answer = String::new();
                sock.set_read_timeout(Some(Duration::from_secs(10)))
                    .unwrap();
                sock.read_to_string(&mut answer).unwrap();
                answer
            })
            .collect()
    })
    .await
    .unwrap()
}

/// An app that sheds a request that waited 10 ms once none met that for 100 ms (and one that
/// waited 100 ms at any time).
async fn app_judging_waits() -> TestApp {
    spawn_app_with(|c| {
        c.ingest.shed_wait_target_ms = 10;
        c.ingest.shed_wait_interval_ms = 100;
    })
    .await
}

/// The server runs on this test's runtime (one thread). Votes are sent from plain threads while
/// that thread is blocked, so their bytes wait in the kernel for 400 ms, longer than a whole
/// `shed_wait_interval_ms`: each is shed with 503, `Retry-After` and a JSON reason, and counted in
/// /metrics. Votes that did not wait are acknowledged beside them (one long wait is not
/// overload), and the published counts are exactly the acknowledged votes.
#[tokio::test]
async fn a_vote_that_waited_too_long_for_the_node_is_shed_and_the_rest_count() {
    let app = app_judging_waits().await;
    let poll = app.open_poll(&["A", "B"]).await;
    let vote = |voter: &'static str, option: i64| {
        app.call(
            "POST",
            "/v1/votes",
            Some(json!({"poll_id": poll, "option_id": option, "voter_id": voter})),
            false,
        )
    };
    // A vote that did not wait.
    assert_eq!(vote("early", 0).await.0, 202);
    let requests = (0..6)
        .map(|i| vote_request(poll, &format!("waited-{i}"), 1, "/v1/votes"))
        .collect();
    let answers = send_while_the_node_is_busy(app.addr, requests).await;
    // Shed together, told to come back in different seconds.
    let mut retry_after: Vec<u32> = answers.iter().map(|a| retry_after_secs(a)).collect();
    retry_after.sort();
    assert_eq!(retry_after, [1, 1, 2, 2, 3, 3]);
    for answer in &answers {
        let body = shed_body(answer);
        assert_eq!(body["error"]["code"], "unavailable", "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("busier than it can answer promptly"),
            "{body}"
        );
    }
    // The node is not overloaded: a vote that did not wait is acknowledged.
    assert_eq!(vote("late", 1).await.0, 202);
    app.wait_counts(poll, &[1, 1], 10).await;
    assert_eq!(
        app.metric("crowdtick_ingest_requests_shed_wait_total")
            .await,
        6
    );
    assert_eq!(app.metric("crowdtick_ingest_overloaded").await, 0);
    // The two acknowledged votes' time from the kernel's receipt to the 202.
    assert_eq!(
        app.metric("crowdtick_ingest_vote_sojourn_seconds_count")
            .await,
        2
    );
}

/// The same for the old API's vote (shed before its body is read, answered in DRF's shape), and
/// nothing is shed with the check turned off.
#[tokio::test]
async fn the_old_api_sheds_too_and_a_zero_target_sheds_nothing() {
    let app = spawn_app_with(|c| c.ingest.shed_wait_target_ms = 0).await;
    let poll = app.open_poll(&["A", "B"]).await;
    let answer =
        send_while_the_node_is_busy(app.addr, vec![vote_request(poll, "waited", 1, "/v1/votes")])
            .await
            .remove(0);
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    assert_eq!(
        app.metric("crowdtick_ingest_requests_shed_wait_total")
            .await,
        0
    );
    drop(app);

    let app = spawn_app_with(|_| {}).await;
    let body = r#"{"choice": "A"}"#;
    let request = format!(
        "POST /api/polls/1/vote/ HTTP/1.1\r\nHost: x\r\nAuthorization: Basic dXNlcjpwYXNz\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let answer = send_while_the_node_is_busy(app.addr, vec![request])
        .await
        .remove(0);
    let body = shed_body(&answer);
    assert!(body["detail"].as_str().is_some(), "DRF's shape: {body}");
    assert_eq!(
        app.metric("crowdtick_ingest_requests_shed_wait_total")
            .await,
        1
    );
}

/// A batch is judged by its wait too, against a whole interval rather than the single votes'
/// target (`WaitJudge::judge_batch`): one whose bytes waited 400 ms for the node is shed whole,
/// with the same fast 503, and none of its votes counts; a batch that did not wait is counted.
#[tokio::test]
async fn a_batch_that_waited_past_an_interval_is_shed_whole() {
    let app = app_judging_waits().await;
    let poll = app.open_poll(&["A", "B"]).await;
    let batch = |prefix: &str| {
        let votes: Vec<Value> = (0..50)
            .map(|i| json!({"poll_id": poll, "option_id": i % 2, "voter_id": format!("{prefix}{i}")}))
            .collect();
        json!({ "votes": votes }).to_string()
    };
    let body = batch("waited-");
    let request = format!(
        "POST /v1/votes/batch HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        AGG_KEY,
        body.len()
    );
    let answer = send_while_the_node_is_busy(app.addr, vec![request])
        .await
        .remove(0);
    let shed = shed_body(&answer);
    assert_eq!(shed["error"]["code"], "unavailable", "{shed}");
    assert_eq!(
        app.metric("crowdtick_ingest_requests_shed_wait_total")
            .await,
        1
    );
    let status = (app.client.post(app.url("/v1/votes/batch")))
        .bearer_auth(AGG_KEY)
        .header("content-type", "application/json")
        .body(batch("prompt-"))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status.as_u16(), 200);
    app.wait_counts(poll, &[25, 25], 10).await;
}

/// 400 votes in `poll`, 64 at a time, option `i % 2` for voter `PREFIX{i}`: each answer's status,
/// option and body, after checking each is 202 or 503.
async fn votes_64_at_a_time(app: &TestApp, poll: i64, prefix: &str) -> Vec<(u16, i64, Value)> {
    use futures::StreamExt;
    let answers: Vec<(u16, i64, Value)> = futures::stream::iter(0..400i64)
        .map(|i| async move {
            let vote =
                json!({"poll_id": poll, "option_id": i % 2, "voter_id": format!("{prefix}{i}")});
            let (status, body) = app.call("POST", "/v1/votes", Some(vote), false).await;
            (status, i % 2, body)
        })
        .buffer_unordered(64)
        .collect()
        .await;
    assert!(
        answers.iter().all(|a| a.0 == 202 || a.0 == 503),
        "only 202 or 503"
    );
    answers
}

/// Waits for the poll's published counts to be exactly the acknowledged votes of `answers`.
async fn counts_are_the_acknowledged(app: &TestApp, poll: i64, answers: &[(u16, i64, Value)]) {
    let acked = |option| {
        answers
            .iter()
            .filter(|a| a.0 == 202 && a.1 == option)
            .count() as i64
    };
    assert!(acked(0) + acked(1) > 0);
    app.wait_counts(poll, &[acked(0), acked(1)], 10).await;
}

/// Reads pause while the edge holds `pause_reads_in_flight` vote requests and resume once half
/// are answered (`edge/src/listener/read_gate.rs`): nothing stalls, every vote gets its answer, and the
/// counts are exactly the acknowledged votes.
#[tokio::test]
async fn reads_pause_while_the_edge_holds_votes_and_every_vote_is_answered() {
    let app = spawn_app_with(|c| c.ingest.pause_reads_in_flight = 2).await;
    let poll = app.open_poll(&["A", "B"]).await;
    let answers = votes_64_at_a_time(&app, poll, "p").await;
    counts_are_the_acknowledged(&app, poll, &answers).await;
    assert!(
        app.metric("crowdtick_ingest_read_pauses_total").await > 0,
        "64 votes at once against a bound of 2 paused the reads"
    );
    assert_eq!(app.metric("crowdtick_ingest_reads_paused").await, 0);
}

/// Once reads have paused, the edge sheds votes while `shed_backlog_appends` appends are in flight
/// (`Admission::admit`), with the reason in the body and in /metrics; every vote gets 202 or 503,
/// and the counts are exactly the acknowledged votes.
#[tokio::test]
async fn after_a_read_pause_the_backlog_is_shed_and_the_acknowledged_votes_count() {
    let app = spawn_app_with(|c| {
        c.ingest.pause_reads_in_flight = 8;
        c.ingest.shed_backlog_appends = 2;
    })
    .await;
    let poll = app.open_poll(&["A", "B"]).await;
    let answers = votes_64_at_a_time(&app, poll, "b").await;
    let backlog = answers
        .iter()
        .filter(|a| a.0 == 503)
        .filter(|a| {
            a.2["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("holds more votes than it can answer promptly"))
        })
        .count() as u64;
    assert!(
        app.metric("crowdtick_ingest_read_pauses_total").await > 0,
        "64 votes at once against a bound of 8 paused the reads"
    );
    assert!(
        backlog > 0,
        "after the pause, votes past 2 appends in flight were shed"
    );
    assert_eq!(
        app.metric("crowdtick_ingest_votes_shed_backlog_total")
            .await,
        backlog
    );
    counts_are_the_acknowledged(&app, poll, &answers).await;
}
