//! Limits on every door (`edge/src/listener.rs`): slow headers, idle kept-alive connections and slow
//! bodies are cut off on time; connections over the caps get a JSON refusal at once; out of file
//! descriptors, the accept loop pauses instead of spinning, and serves again when they return. A
//! node gives its allocator's free memory back on its own (`edge/src/memory.rs`).

use crate::helpers::*;
use serde_json::Value;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads until the peer closes (or `limit` passes); returns what came and when it closed.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (String, Option<Duration>) {
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(
            limit.saturating_sub(started.elapsed()),
            stream.read(&mut buf),
        )
        .await
        {
            Ok(Ok(0)) | Ok(Err(_)) => {
                return (
                    String::from_utf8_lossy(&got).into(),
                    Some(started.elapsed()),
                )
            }
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&got).into(), None),
        }
    }
}

fn json_body(answer: &str) -> Value {
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    serde_json::from_str(body).unwrap_or(Value::Null)
}

#[tokio::test]
async fn slow_headers_idle_connections_and_slow_bodies_are_cut_off_on_time() {
    let app = spawn_app_with(|c| {
        c.http.header_read_timeout_ms = 500;
        c.http.body_read_timeout_ms = 500;
    })
    .await;

    // Headers at a trickle: closed once the header timeout passes, though bytes keep coming.
    let mut slow = TcpStream::connect(app.addr).await.unwrap();
    let started = Instant::now();
    slow.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
    let mut closed = None;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if slow.write_all(b"X-Slow: 1\r\n").await.is_err() {
            closed = Some(started.elapsed());
            break;
        }
        let mut probe = [0u8; 1];
        if let Ok(Ok(0)) =
            tokio::time::timeout(Duration::from_millis(1), slow.read(&mut probe)).await
        {
            closed = Some(started.elapsed());
            break;
        }
    }
    let closed = closed.expect("a client sending headers at a trickle was never cut off");
    assert!(
        closed < Duration::from_millis(2500),
        "cut off after {closed:?}"
    );

    // A client that connects and says nothing: closed after the same timeout.
    let mut silent = TcpStream::connect(app.addr).await.unwrap();
    let (answer, closed) = read_until_closed(&mut silent, Duration::from_secs(5)).await;
    let closed = closed.unwrap_or_else(|| panic!("a silent client was never closed: {answer}"));
    assert!(
        closed < Duration::from_millis(2500),
        "closed after {closed:?}"
    );

    // A kept-alive connection that goes quiet after a request: closed after the same timeout.
    let mut idle = TcpStream::connect(app.addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (answer, closed) = read_until_closed(&mut idle, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let closed = closed.expect("an idle kept-alive connection was never closed");
    assert!(
        closed >= Duration::from_millis(400) && closed < Duration::from_millis(2500),
        "idle connection closed after {closed:?}"
    );

    // A body announced and never sent: 408 with a JSON error, on time.
    let mut stalled = TcpStream::connect(app.addr).await.unwrap();
    let started = Instant::now();
    stalled
        .write_all(
            b"POST /v1/votes HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
              Content-Length: 1000\r\n\r\n{\"poll_id\": 1",
        )
        .await
        .unwrap();
    let (answer, _) = read_until_closed(&mut stalled, Duration::from_secs(5)).await;
    let took = started.elapsed();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert_eq!(
        json_body(&answer)["error"]["code"],
        "body_timeout",
        "{answer}"
    );
    assert!(
        took < Duration::from_millis(2500),
        "answered after {took:?}"
    );

    // A body that trickles in (a byte every 100 ms, never a long pause): one deadline for it all.
    let mut trickle = TcpStream::connect(app.addr).await.unwrap();
    let started = Instant::now();
    trickle
        .write_all(
            b"POST /v1/votes HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
              Content-Length: 1000\r\n\r\n",
        )
        .await
        .unwrap();
    let mut answer = String::new();
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if trickle.write_all(b" ").await.is_err() {
            break;
        }
        let mut buf = [0u8; 2048];
        if let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(1), trickle.read(&mut buf)).await
        {
            answer = String::from_utf8_lossy(&buf[..n]).into_owned();
            break;
        }
    }
    let took = started.elapsed();
    assert!(
        answer.starts_with("HTTP/1.1 408"),
        "{answer:?} after {took:?}"
    );
    assert!(
        took < Duration::from_millis(2500),
        "answered after {took:?}"
    );

    let timeouts = app.metric("crowdtick_http_header_timeouts_total").await;
    assert!(timeouts >= 2, "{timeouts} header timeouts counted");
}

/// Forgets the test client's pooled connections (its health check holds one), then waits until
/// the server has let them go: a fresh connection must be admitted and answered.
async fn without_pooled_connections(app: &mut TestApp) {
    app.client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
}

/// Opens a kept-alive connection and makes one request on it; the status line's code.
async fn keep_alive(app: &TestApp) -> (TcpStream, String) {
    let mut s = TcpStream::connect(app.addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    let head = String::from_utf8_lossy(&buf[..n]).into_owned();
    (s, head)
}

#[tokio::test]
async fn connections_over_the_caps_are_refused_at_once_with_json() {
    let mut app = spawn_app_with(|c| {
        c.http.max_connections = 4;
        c.http.max_connections_per_address = 2;
        c.http.limits_exempt_loopback = false;
    })
    .await;
    without_pooled_connections(&mut app).await;
    let (first, head) = keep_alive(&app).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (_second, head) = keep_alive(&app).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let started = Instant::now();
    let mut third = TcpStream::connect(app.addr).await.unwrap();
    let (answer, closed) = read_until_closed(&mut third, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("retry-after: 1"),
        "{answer}"
    );
    assert_eq!(
        json_body(&answer)["error"]["code"],
        "too_many_connections_from_address"
    );
    assert!(closed.is_some() && started.elapsed() < Duration::from_secs(2));

    // A freed place is given again (once the server has seen the close).
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_again, head) = keep_alive(&app).await;
        if head.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(head.starts_with("HTTP/1.1 429"), "{head}");
        assert!(
            Instant::now() < deadline,
            "the freed place was never given again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_total_cap_answers_503_and_websocket_viewers_hold_their_places() {
    let mut app = spawn_app_with(|c| c.http.max_connections = 3).await;
    let poll = app.open_poll(&["A", "B"]).await;
    without_pooled_connections(&mut app).await;
    // Three viewers: each keeps its place after the upgrade, for as long as its socket is open.
    let mut viewers = Vec::new();
    for _ in 0..3 {
        let (ws, _) =
            tokio_tungstenite::connect_async(format!("ws://{}/v1/polls/{poll}/ws", app.addr))
                .await
                .unwrap();
        viewers.push(ws);
    }
    let mut over = TcpStream::connect(app.addr).await.unwrap();
    let (answer, _) = read_until_closed(&mut over, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert_eq!(json_body(&answer)["error"]["code"], "too_many_connections");
    let (status, _) = ws_handshake(&app, &format!("/v1/polls/{poll}/ws"), None).await;
    assert_eq!(status, 503);
    // A viewer leaves: its place is free again.
    viewers.pop();
    let deadline = Instant::now() + Duration::from_secs(5);
    while ws_handshake(&app, &format!("/v1/polls/{poll}/ws"), None)
        .await
        .0
        != 101
    {
        assert!(
            Instant::now() < deadline,
            "the viewer's place was never freed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn out_of_file_descriptors_the_accept_loop_pauses_and_recovers() {
    // A server whose hard open-file limit is 256, told to accept up to 1,000 connections: the
    // kernel runs out of descriptors before the cap does.
    let (server, port, _data) =
        serve_under_ulimit("-n 256", &[("CROWDTICK_HTTP__MAX_CONNECTIONS", "1000")]);
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    wait_healthy(&client, &base).await;

    let mut held = Vec::new();
    for _ in 0..400 {
        // Once the listen backlog is full too, a connect waits for SYN retries: stop there.
        let connect = TcpStream::connect(("127.0.0.1", port));
        match tokio::time::timeout(Duration::from_millis(2000), connect).await {
            Ok(Ok(s)) => held.push(s),
            _ => break,
        }
    }
    assert!(held.len() > 256, "only {} connections", held.len());
    tokio::time::sleep(Duration::from_millis(500)).await;
    // With connections waiting that it cannot accept, the loop must not spin.
    let before = cpu_ticks(server.0.id());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let spent = cpu_ticks(server.0.id()) - before;
    assert!(
        spent < 50,
        "the server used {spent} ticks of CPU in 2 s while out of descriptors"
    );

    drop(held);
    let deadline = Instant::now() + Duration::from_secs(20);
    let metrics = loop {
        if let Ok(r) = client.get(format!("{base}/metrics")).send().await {
            break r.text().await.unwrap();
        }
        assert!(Instant::now() < deadline, "the server never served again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let errors: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("crowdtick_http_accept_descriptor_errors_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        errors > 0,
        "the accept loop never ran out of descriptors: {errors}"
    );
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the node from a shell that first runs `ulimit ULIMIT` (with `env` set), on a free port
/// and a fresh data directory: the node, killed however the test ends; its port; its directory.
fn serve_under_ulimit(ulimit: &str, env: &[(&str, &str)]) -> (KillOnDrop, u16, tempfile::TempDir) {
    serve_from_shell(&format!("ulimit {ulimit} && "), env)
}

/// Starts the node as a process of its own, as `serve_under_ulimit` does, with no limit set.
fn serve_alone() -> (KillOnDrop, u16, tempfile::TempDir) {
    serve_from_shell("", &[])
}

/// Starts the node from a shell that first runs `setup` (with `env` set).
fn serve_from_shell(setup: &str, env: &[(&str, &str)]) -> (KillOnDrop, u16, tempfile::TempDir) {
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let server = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "{setup}exec {} serve --listen 127.0.0.1:{port} --data-dir {} --partitions 2",
            env!("CARGO_BIN_EXE_crowdtick"),
            data.path().display()
        ))
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    (KillOnDrop(server), port, data)
}

/// A WebSocket handshake to `path` with an optional `Origin`: the HTTP status of the answer (101 on
/// success) and, when refused, its JSON body.
async fn ws_handshake(app: &TestApp, path: &str, origin: Option<&str>) -> (u16, Value) {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Error;
    let mut req = format!("ws://{}{path}", app.addr)
        .into_client_request()
        .unwrap();
    if let Some(o) = origin {
        req.headers_mut().insert("origin", o.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((_, resp)) => (resp.status().as_u16(), Value::Null),
        Err(Error::Http(resp)) => {
            let body = resp.body().clone().unwrap_or_default();
            (
                resp.status().as_u16(),
                serde_json::from_slice(&body).unwrap_or(Value::Null),
            )
        }
        Err(e) => panic!("handshake failed: {e}"),
    }
}

#[tokio::test]
async fn pages_of_other_sites_cannot_open_live_sockets() {
    let app = spawn_app_with(|c| {
        c.realtime.allowed_origins = vec!["https://partner.example.com".into()];
    })
    .await;
    let poll = app.open_poll(&["A", "B"]).await;
    let own = format!("http://{}", app.addr);
    let v1 = format!("/v1/polls/{poll}/ws");
    for (origin, expected) in [
        (None, 101),
        (Some(own.as_str()), 101),
        (Some("https://partner.example.com"), 101),
        (Some("https://evil.example"), 403),
    ] {
        let (status, body) = ws_handshake(&app, &v1, origin).await;
        assert_eq!(status, expected, "{origin:?}: {body}");
        if expected == 403 {
            assert_eq!(body["error"]["code"], "origin_not_allowed", "{body}");
        }
    }
    // The old API's socket votes with the session cookie: the same rule, in its own error shape.
    let (status, body) = ws_handshake(
        &app,
        &format!("/ws/poll/{poll}/"),
        Some("https://evil.example"),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(body["detail"].as_str().is_some(), "{body}");
}

/// A message over the limit is answered with close code 1009 and the connection ends cleanly:
/// the server reads what the client still sends until it closes (dropping a socket with bytes
/// unread would reset it, and the client could lose the close frame or see a reset).
#[tokio::test]
async fn an_oversized_socket_message_is_closed_with_1009_and_the_connection_ends_cleanly() {
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::Message;
    let app = spawn_app().await;
    let poll = app.open_poll(&["A", "B"]).await;
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/v1/polls/{poll}/ws", app.addr))
            .await
            .unwrap();
    // A small message is taken (and ignored).
    ws.send(Message::Text("hello".into())).await.unwrap();
    let _ = ws.send(Message::Text("x".repeat(64 * 1024).into())).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    assert_eq!(close_code(&mut ws, deadline).await, Some(CloseCode::Size));
    // The socket itself, not the WebSocket client (which takes a reset after a close for an end):
    // the server's end of stream, well before its second's wait is up, and not a reset.
    let tokio_tungstenite::MaybeTlsStream::Plain(socket) = ws.get_mut() else {
        unreachable!("ws:// is plain TCP")
    };
    let mut rest = [0u8; 64];
    match tokio::time::timeout(Duration::from_millis(500), socket.read(&mut rest)).await {
        Ok(Ok(0)) => {}
        other => panic!("the connection did not end cleanly after the close: {other:?}"),
    }
}

/// The soft and hard open-file limits of a process, from `/proc/<pid>/limits`.
fn open_file_limits(pid: &str) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let mut numbers = line
        .split_whitespace()
        .filter_map(|w| w.parse::<u64>().ok());
    (numbers.next().unwrap(), numbers.next().unwrap())
}

#[tokio::test]
async fn a_node_raises_its_open_file_limit_to_the_hard_limit_and_caps_connections_below_it() {
    // Started with a soft limit of 300 under the machine's hard limit (20,000 on these machines),
    // as a shell's default 1,024 would start it: the node must take the hard limit for itself
    // and size its connection cap from it, not from the 300.
    let (_, hard) = open_file_limits("self");
    if hard <= 1_000 {
        eprintln!("SKIPPED: the hard open-file limit is {hard}; this test needs one above 1,000");
        return;
    }
    let (server, port, _data) = serve_under_ulimit("-S -n 300", &[]);
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    wait_healthy(&client, &base).await;

    let (soft, node_hard) = open_file_limits(&server.0.id().to_string());
    assert_eq!(node_hard, hard);
    assert_eq!(soft, hard, "the node kept a soft open-file limit of {soft}");
    let cap = metric_at(&client, &base, "crowdtick_http_max_connections").await;
    assert!(
        cap > 300 && cap < hard,
        "the connection cap is {cap}: it should be the hard limit ({hard}) less a reserve"
    );
}

/// A node gives its allocator's free memory back once it has gone quiet (`edge/src/memory.rs`):
/// a process of its own (this test binary's other nodes keep its process busy), idle after its
/// start, trims at one of its first looks and counts it. `edge`'s unit tests show that a trim
/// returns a burst's holes, that the process's CPU time is read right, and that the policy
/// trims once per busy spell and never at a busy look. (glibc only: elsewhere nodes do not trim.)
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[tokio::test]
async fn a_quiet_node_gives_its_free_memory_back() {
    let (_server, port, _data) = serve_alone();
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    wait_healthy(&client, &base).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric_at(&client, &base, "crowdtick_memory_trims_total").await == 0 {
        assert!(
            Instant::now() < deadline,
            "an idle node did not trim within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Exported beside it: what the trims gave back.
    metric_at(&client, &base, "crowdtick_memory_trimmed_bytes_total").await;
}
