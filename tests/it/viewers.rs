//! Viewers at scale, as behaviour: one feed per poll shared by its viewers, each message encoded
//! once for both transports, the viewer count as news at most once a second, a feed retired with
//! its last viewer. (What a viewer costs and how fast they are served: BENCHMARKS.md.)

use crate::helpers::{
    big_poll, close_code, keep_voting, poll_with, small_window, spawn_app, spawn_app_with,
    the_stop_waits_for_the_client, ScrapedHistogram, TestApp, KEY,
};
use futures::StreamExt;
use serde_json::Value;
use std::time::Duration;
use tokio::time::Instant;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn viewer(app: &TestApp, poll: i64) -> Ws {
    tokio_tungstenite::connect_async(format!("ws://{}/v1/polls/{poll}/ws", app.addr))
        .await
        .unwrap()
        .0
}

/// Every message `ws` gets until `until`, as JSON.
async fn messages_until(ws: &mut Ws, until: Instant) -> Vec<Value> {
    let mut got = Vec::new();
    while let Ok(Some(Ok(m))) = tokio::time::timeout_at(until, ws.next()).await {
        if m.is_text() {
            got.push(serde_json::from_str(m.to_text().unwrap()).unwrap());
        }
    }
    got
}

fn counts_told(messages: &[Value]) -> Vec<u64> {
    messages
        .iter()
        .filter(|m| m["type"] == "viewers")
        .map(|m| m["count"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn viewers_share_one_feed_and_their_count_is_news_at_most_once_a_second() {
    let app = spawn_app().await;
    let poll = app.open_poll(&["A", "B"]).await;
    let mut first = viewer(&app, poll).await;
    let opening = messages_until(&mut first, Instant::now() + Duration::from_millis(300)).await;
    assert_eq!(opening[0]["type"], "results", "{opening:?}");
    assert_eq!(counts_told(&opening), vec![1]);

    // Thirty more arrive at once: the first viewer hears of it once or twice, not thirty times.
    let mut crowd = Vec::new();
    for _ in 0..30 {
        crowd.push(viewer(&app, poll).await);
    }
    let told = counts_told(
        &messages_until(&mut first, Instant::now() + Duration::from_millis(2500)).await,
    );
    assert!(
        !told.is_empty() && told.len() <= 3,
        "viewer counts told: {told:?}"
    );
    assert_eq!(told.last(), Some(&31));
    assert_eq!(app.metric("crowdtick_realtime_feeds").await, 1);
    assert_eq!(app.metric("crowdtick_realtime_connections").await, 31);

    // They leave: the count is told once more, and the feed goes with the last viewer.
    drop(crowd);
    let told = counts_told(
        &messages_until(&mut first, Instant::now() + Duration::from_millis(2500)).await,
    );
    assert_eq!(told.last(), Some(&1), "{told:?}");
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(5);
    while app.metric("crowdtick_realtime_feeds").await != 0 {
        assert!(Instant::now() < deadline, "the feed outlived its viewers");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn websocket_and_sse_carry_the_same_bytes_with_the_tallys_time() {
    let app = spawn_app().await;
    let poll = app.open_poll(&["A", "B"]).await;
    let mut ws = viewer(&app, poll).await;
    let mut sse = app
        .client
        .get(app.url(&format!("/v1/polls/{poll}/sse")))
        .send()
        .await
        .unwrap();
    assert_eq!(sse.headers()["content-type"], "text/event-stream");
    assert_eq!(app.vote(poll, 1, "v1").await.0, 202);
    let voted = schemas::Timestamp::now().micros();

    // The WebSocket's results message that shows the vote…
    let deadline = Instant::now() + Duration::from_secs(10);
    let ws_text = loop {
        let m = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("no results with the vote")
            .unwrap()
            .unwrap();
        let text = m.to_text().unwrap().to_owned();
        if text.contains(r#""total_votes":1"#) {
            break text;
        }
    };
    let m: Value = serde_json::from_str(&ws_text).unwrap();
    let updated_at = m["updated_at"]
        .as_i64()
        .expect("updated_at with visible counts");
    assert!(
        (voted - 10_000_000..=schemas::Timestamp::now().micros()).contains(&updated_at),
        "updated_at {updated_at} is not the tally's time"
    );
    // …is, byte for byte, the data of the SSE event that shows it.
    let mut buf = String::new();
    let sse_text = loop {
        let chunk = tokio::time::timeout_at(deadline, sse.chunk())
            .await
            .expect("no SSE event with the vote")
            .unwrap()
            .expect("the stream ended");
        buf.push_str(std::str::from_utf8(&chunk).unwrap());
        if let Some(data) = buf
            .split("\n\n")
            .filter(|e| e.starts_with("event: results"))
            .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
            .find(|d| d.contains(r#""total_votes":1"#))
        {
            break data.to_owned();
        }
    };
    assert_eq!(sse_text, ws_text);
}

/// The `version` of each complete results event in `text` (SSE over chunked HTTP/1.1), and the
/// rest of `text` after the last complete event.
fn sse_versions(text: &str) -> (Vec<i64>, String) {
    let Some(end) = text.rfind("\n\n") else {
        return (Vec::new(), text.to_owned());
    };
    let versions = text[..end]
        .split("\n\n")
        .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|m| m["version"].as_i64())
        .collect();
    (versions, text[end + 2..].to_owned())
}

#[tokio::test]
async fn a_slow_sse_viewer_is_behind_by_what_its_socket_holds_not_by_a_queue() {
    slow_sse_viewer("", false).await;
}

/// The same viewer as a browser's `EventSource` asks (`Accept: text/event-stream` on a new
/// connection): served without hyper (edge/src/listener/event_stream.rs), behind by no more.
#[tokio::test]
async fn a_slow_event_source_viewer_is_behind_by_what_its_socket_holds_not_by_a_queue() {
    slow_sse_viewer("Accept: text/event-stream\r\n", false).await;
}

/// The same viewer on a connection that carried a request first (a browser's kept-alive one, a
/// proxy's pooled one): hyper writes the stream's head and hands the socket back
/// (edge/src/listener/hand_back.rs), and the viewer is behind by no more.
#[tokio::test]
async fn a_slow_event_source_viewer_on_a_kept_alive_connection_is_behind_by_no_more() {
    slow_sse_viewer("Accept: text/event-stream\r\n", true).await;
}

/// Stops the voting, then: the slow viewer caught up with `latest`, after at most 6 stale frames
/// (what its socket held, not a queue of everything it missed).
fn judge_catch_up(
    voting: Vec<tokio::task::JoinHandle<()>>,
    caught_up: bool,
    stale: &[i64],
    latest: i64,
) {
    for v in voting {
        v.abort();
    }
    assert!(caught_up, "never caught up with version {latest}");
    assert!(
        stale.len() <= 6,
        "{} stale frames before the newest (versions {stale:?}, newest at resume {latest})",
        stale.len()
    );
}

/// A viewer that stops reading its event stream, asked for with `accept`, after a request for the
/// poll on the same connection if `kept_alive`.
async fn slow_sse_viewer(accept: &str, kept_alive: bool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app().await;
    let poll = big_poll(&app).await;
    let mut sse = small_window(&app).await;
    let before = match kept_alive {
        true => format!("GET /v1/polls/{poll} HTTP/1.1\r\nHost: x\r\n\r\n"),
        false => String::new(),
    };
    let through_hyper = app
        .metric("crowdtick_http_event_streams_through_hyper_total")
        .await;
    sse.write_all(
        format!("{before}GET /v1/polls/{poll}/sse HTTP/1.1\r\nHost: x\r\n{accept}\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let voting = keep_voting(&app, poll);
    // The viewer stops reading for 3 s (about 30 frames are published meanwhile)…
    tokio::time::sleep(Duration::from_secs(3)).await;
    let latest = app.results(poll).await["version"].as_i64().unwrap();
    // …then reads again: the frames it gets before one as new as the results were when it came
    // back are what its socket held, not a queue of everything it missed.
    let mut text = String::new();
    let mut stale = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    let caught_up = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let n = sse.read(&mut buf).await.unwrap();
            assert!(n > 0, "the stream ended");
            text.push_str(&String::from_utf8_lossy(&buf[..n]));
            let (versions, rest) = sse_versions(&text);
            text = rest;
            for v in versions {
                if v >= latest {
                    return;
                }
                stale.push(v);
            }
        }
    })
    .await;
    judge_catch_up(voting, caught_up.is_ok(), &stale, latest);
    // Served without hyper only when the stream opened its connection and asked for events.
    let through_hyper = app
        .metric("crowdtick_http_event_streams_through_hyper_total")
        .await
        - through_hyper;
    let expected = u64::from(kept_alive || accept.is_empty());
    assert_eq!(through_hyper, expected, "event streams through hyper");
}

/// A WebSocket viewer that stops reading is passed by the sweeps once its socket is full, and
/// gets the newest state when it reads again: behind by what its socket holds, not by a queue.
#[tokio::test]
async fn a_slow_websocket_viewer_is_behind_by_what_its_socket_holds_not_by_a_queue() {
    let app = spawn_app().await;
    let poll = big_poll(&app).await;
    let url = format!("ws://{}/v1/polls/{poll}/ws", app.addr);
    let (mut ws, _) = tokio_tungstenite::client_async(url, small_window(&app).await)
        .await
        .unwrap();
    let voting = keep_voting(&app, poll);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let latest = app.results(poll).await["version"].as_i64().unwrap();
    let mut stale = Vec::new();
    let caught_up = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let m = ws.next().await.expect("the socket ended").unwrap();
            let m: Value = serde_json::from_str(m.to_text().unwrap()).unwrap();
            let Some(v) = m["version"].as_i64() else {
                continue;
            };
            if v >= latest {
                return;
            }
            stale.push(v);
        }
    })
    .await;
    judge_catch_up(voting, caught_up.is_ok(), &stale, latest);
}

/// The `/v1` socket answers a ping with its payload and a close with its code, and ends.
#[tokio::test]
async fn a_websocket_viewer_is_answered_pings_and_closes() {
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    use tokio_tungstenite::tungstenite::Message;
    let app = spawn_app().await;
    let poll = app.open_poll(&["A", "B"]).await;
    let mut ws = viewer(&app, poll).await;
    ws.send(Message::Ping(b"are you there".to_vec().into()))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut pong = None;
    while pong.is_none() {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Pong(payload)))) => pong = Some(payload),
            Ok(Some(Ok(_))) => {}
            other => panic!("no pong: {other:?}"),
        }
    }
    assert_eq!(&pong.unwrap()[..], b"are you there");
    ws.send(Message::Close(Some(CloseFrame {
        code: CloseCode::Away,
        reason: "bye".into(),
    })))
    .await
    .unwrap();
    assert_eq!(close_code(&mut ws, deadline).await, Some(CloseCode::Away));
    let deadline = Instant::now() + Duration::from_secs(5);
    while app.metric("crowdtick_realtime_connections").await != 0 {
        assert!(
            Instant::now() < deadline,
            "the closed viewer is still counted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What a browser's `EventSource` opens (a new connection, `Accept: text/event-stream`) is served
/// without hyper's connection buffers: framed as chunks, the router's JSON errors, and let go as
/// soon as the viewer leaves (its poll's feed retires with it).
#[tokio::test]
async fn an_event_source_on_its_own_connection_is_framed_answered_and_let_go() {
    let app = spawn_app().await;
    let poll = app.open_poll(&["A", "B"]).await;
    let fresh = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let get = |path: String| {
        fresh
            .get(app.url(&path))
            .header("accept", "text/event-stream")
            .send()
    };
    let mut sse = get(format!("/v1/polls/{poll}/sse")).await.unwrap();
    assert_eq!(sse.status(), 200);
    assert_eq!(sse.headers()["content-type"], "text/event-stream");
    assert_eq!(sse.headers()["transfer-encoding"], "chunked");
    // Hyper keeps a connection open after a response; this path closes it after the stream.
    assert_eq!(
        sse.headers()["connection"],
        "close",
        "not the event-stream path"
    );
    assert!(sse.headers().contains_key("date"));
    assert_eq!(app.metric("crowdtick_http_event_streams_total").await, 1);
    assert_eq!(app.vote(poll, 1, "v1").await.0, 202);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut text = String::new();
    while !text.contains(r#""total_votes":1"#) {
        let chunk = tokio::time::timeout_at(deadline, sse.chunk())
            .await
            .expect("no event with the vote")
            .unwrap()
            .expect("the stream ended");
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert!(text.contains("event: results"), "{text}");

    let missing = get("/v1/polls/987654/sse".into()).await.unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(missing.headers()["connection"], "close");
    let body: Value = missing.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unknown_poll", "{body}");

    assert_eq!(app.metric("crowdtick_realtime_feeds").await, 1);
    drop(sse);
    let deadline = Instant::now() + Duration::from_secs(5);
    while app.metric("crowdtick_realtime_feeds").await != 0 {
        assert!(
            Instant::now() < deadline,
            "the feed outlived its only viewer"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An event stream that has had nothing to send for two beats of its poll's keep-alive clock
/// (half `realtime.sse_keep_alive_secs` apart) gets a comment line: the public's stream of an
/// embargoed poll too while votes flow, every `sse_keep_alive_secs`, the votes and their
/// coalescing waits (made long here) neither hurrying nor holding up the clock; a stream with
/// news gets none.
#[tokio::test]
async fn a_quiet_event_stream_gets_a_comment_on_its_polls_clock_and_a_busy_one_does_not() {
    let app = spawn_app_with(|c| {
        c.realtime.sse_keep_alive_secs = 2;
        (c.realtime.coalesce_ms, c.realtime.min_coalesce_ms) = (900, 900);
    })
    .await;
    let poll = poll_with(&app, "on_reveal", &["A", "B"]).await;
    let stream = |operator: bool| {
        let mut req = reqwest::Client::new().get(app.url(&format!("/v1/polls/{poll}/sse")));
        if operator {
            req = req.bearer_auth(KEY);
        }
        req.send()
    };
    let (public, operator) = (stream(false).await.unwrap(), stream(true).await.unwrap());
    // Each stream read by a task of its own, which notes when each comment arrived.
    let read_for = |mut sse: reqwest::Response, secs: u64| {
        tokio::spawn(async move {
            let until = Instant::now() + Duration::from_secs(secs);
            let (mut text, mut comments_at) = (String::new(), Vec::new());
            while let Ok(chunk) = tokio::time::timeout_at(until, sse.chunk()).await {
                let chunk = chunk.unwrap().expect("the stream ended");
                let before = comments(&text);
                text.push_str(std::str::from_utf8(&chunk).unwrap());
                comments_at.extend((before..comments(&text)).map(|_| Instant::now()));
            }
            (text, comments_at)
        })
    };
    let (public, operator) = (read_for(public, 7), read_for(operator, 7));
    // Votes for 7 s.
    let start = Instant::now();
    let mut votes = 0;
    while start.elapsed() < Duration::from_secs(7) {
        assert_eq!(app.vote(poll, votes % 2, &format!("q{votes}")).await.0, 202);
        votes += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (public_text, comments_at) = public.await.unwrap();
    let (operator_text, _) = operator.await.unwrap();
    let count = |text: &str, what: &str| text.split("\n\n").filter(|e| e.starts_with(what)).count();
    assert_eq!(count(&public_text, "event: results"), 1, "{public_text}");
    assert!(
        comments_at.len() >= 2,
        "{} comments in 7 s: {public_text}",
        comments_at.len()
    );
    let gaps: Vec<_> = comments_at.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps.iter()
            .all(|g| (1_500..=2_600).contains(&g.as_millis())),
        "comments {gaps:?} apart, not every 2 s"
    );
    assert!(
        count(&operator_text, "event: results") > 3,
        "{operator_text}"
    );
    assert_eq!(comments(&operator_text), 0, "{operator_text}");
    app.wait_counts(poll, &[(votes + 1) / 2, votes / 2], 10)
        .await;
}

/// The comment lines (`:`) among the complete events of an event stream's `text`.
fn comments(text: &str) -> usize {
    let whole = text.rfind("\n\n").map_or("", |end| &text[..end + 2]);
    whole.split("\n\n").filter(|e| *e == ":").count()
}

/// An event stream is written in its poll's sweeps, on a connection of its own (as a browser's
/// `EventSource` opens it) or after another request on a kept-alive one, and when the node stops
/// it ends at once with its last chunk and the connection closes: the node does not wait out its
/// grace period for it.
#[tokio::test]
async fn an_event_stream_ends_with_its_last_chunk_when_the_node_stops() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app().await;
    let poll = app.open_poll(&["A", "B"]).await;
    let sse = format!(
        "GET /v1/polls/{poll}/sse HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n"
    );
    let kept_alive = format!("GET /v1/polls/{poll} HTTP/1.1\r\nHost: x\r\n\r\n{sse}");
    let mut streams = Vec::new();
    for request in [sse, kept_alive] {
        let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut text = String::new();
        let mut buf = vec![0u8; 16 << 10];
        while !text.contains("event: viewers") {
            let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
                .await
                .expect("no events")
                .unwrap();
            assert!(n > 0, "the stream ended: {text}");
            text.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        assert!(text.contains("transfer-encoding: chunked"), "{text}");
        streams.push(stream);
    }
    assert_eq!(app.vote(poll, 1, "v1").await.0, 202);
    tokio::time::sleep(Duration::from_millis(300)).await;
    tokio::time::timeout(Duration::from_secs(3), app.stop())
        .await
        .expect("the node waited for its event streams");
    for mut stream in streams {
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut rest))
            .await
            .expect("the connection was not closed")
            .unwrap();
        let rest = String::from_utf8_lossy(&rest);
        assert!(
            rest.contains(r#""total_votes":1"#),
            "the vote's event: {rest}"
        );
        assert!(rest.ends_with("\r\n0\r\n\r\n"), "no last chunk: {rest:?}");
    }
}

/// An event stream whose client stopped reading does not hold the node's stop up: its socket full,
/// it is closed a second after the stop (without its last chunk), not once
/// `realtime.send_timeout_ms` or the listener's grace period has passed.
#[tokio::test]
async fn a_stalled_event_stream_does_not_hold_up_the_nodes_stop() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app_with(|c| c.realtime.send_timeout_ms = 60_000).await;
    let poll = big_poll(&app).await;
    let mut sse = small_window(&app).await;
    sse.write_all(
        format!(
            "GET /v1/polls/{poll}/sse HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let voting = keep_voting(&app, poll);
    // Frames of ~17 KB are published while the viewer does not read: its socket fills.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for v in voting {
        v.abort();
    }
    tokio::time::timeout(Duration::from_secs(5), app.stop())
        .await
        .expect("the node's stop waited for a stream whose client does not read");
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), sse.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the stream was not closed");
    // What the socket held: the stream's head and its first events, and no last chunk.
    let rest = String::from_utf8_lossy(&rest);
    assert!(
        rest.starts_with("HTTP/1.1 200"),
        "not a stream: {rest:.200}"
    );
    assert!(rest.contains("event: results"), "no events: {rest:.200}");
    assert!(
        !rest.ends_with("\r\n0\r\n\r\n"),
        "a last chunk through a full socket"
    );
}

/// When the node stops, a WebSocket viewer is told the server is going away (1001), so its client
/// can reconnect elsewhere at once instead of seeing the connection drop; the node waits for it
/// to close.
#[tokio::test]
async fn a_websocket_viewer_is_told_the_node_is_going_away_when_it_stops() {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    let app = spawn_app().await;
    let poll = app.open_poll(&["A", "B"]).await;
    let mut ws = viewer(&app, poll).await;
    let first = messages_until(&mut ws, Instant::now() + Duration::from_millis(500)).await;
    assert!(!first.is_empty(), "the viewer was sent nothing");
    let stopping = tokio::spawn(app.stop());
    let code = close_code(&mut ws, Instant::now() + Duration::from_secs(5)).await;
    assert_eq!(code, Some(CloseCode::Away));
    // The node waits for its viewer to close (at most a second after its close frame), then its
    // stop ends.
    the_stop_waits_for_the_client(&mut ws, stopping, "its viewer").await;
}

/// The load generator's viewers (`crowdtick loadgen --viewers`, the measuring end of
/// BENCHMARKS.md's viewer rows) against a node, over both transports: every viewer opens and is
/// held to the end, each reads the node's messages, and the lag of each results message is read
/// from its `updated_at`; the run ends, verified, and its viewers are closed with their runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_generators_viewers_are_held_and_measure_their_lag() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().unwrap();
    for transport in ["ws", "sse"] {
        let report = dir.path().join(format!("{transport}.json"));
        let url = format!("http://{}", app.addr);
        let args = [
            "--url",
            &url,
            "--operator-key",
            KEY,
            "--rate",
            "400",
            "--duration",
            "2",
            "--voters",
            "1000",
            "--connections",
            "4",
            "--viewers",
            "40",
            "--viewer-transport",
            transport,
            "--verify",
            "--quiet",
            "--json-report",
            report.to_str().unwrap(),
        ];
        let run = loadtest::main(loadtest::LoadgenArgs::try_parse_flags(args).unwrap());
        tokio::time::timeout(Duration::from_secs(60), run)
            .await
            .expect("the run ended")
            .expect("the run verified");
        let r: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
        let v = &r["viewers"];
        assert_eq!(
            (v["held"].as_u64(), v["failed"].as_u64()),
            (Some(40), Some(0)),
            "{v}"
        );
        assert!(v["messages"].as_u64().unwrap() >= 40, "{v}");
        // Each lag is read from the message: not the 1 µs floor a lag from the future is taken
        // as, nor longer than the run.
        let lag = &v["lag"];
        assert!(lag["count"].as_u64().unwrap() >= 40, "{v}");
        assert!(lag["p50_ms"].as_f64().unwrap() > 0.01, "{v}");
        assert!(lag["max_ms"].as_f64().unwrap() < 10_000.0, "{v}");
        // The run's end dropped its viewers: the node sees their connections close.
        let deadline = Instant::now() + Duration::from_secs(10);
        while app.metric("crowdtick_realtime_connections").await > 0 {
            assert!(Instant::now() < deadline, "the viewers were left open");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A poll with more viewers than one shard holds (`realtime::audience::SHARD`, 512) has its
/// shards swept in turn over its coalescing interval: each viewer is still written about once an
/// interval, but the shards get different renders of the poll as votes flow (rendered for their
/// turns), each fresher than an interval, instead of all of them one render at the start of a
/// sweep of the whole audience; and once the votes stop, every viewer gets the final results.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_audience_is_swept_in_turns_each_viewer_once_an_interval_with_a_fresh_frame() {
    // 1,100 viewers, three shards: an interval of 1 s (1,100 over a budget of 1,000 frames a
    // second, at most `coalesce_ms`), a render every third of it.
    let app = spawn_app_with(|c| {
        (c.realtime.coalesce_ms, c.realtime.frame_budget) = (1_000, 1_000);
        c.http.max_connections_per_address = 0;
    })
    .await;
    let poll = big_poll(&app).await;
    let mut viewers = Vec::new();
    for _ in 0..1_100 {
        viewers.push(viewer(&app, poll).await);
    }
    // Votes for 5 s, then 3 s more for the last of them to reach every viewer.
    let voting = keep_voting(&app, poll);
    let until = Instant::now() + Duration::from_secs(8);
    // Each viewer's results messages: when each came, its version and total, its tally's age.
    let readers: Vec<_> = viewers
        .into_iter()
        .map(|mut ws| {
            tokio::spawn(async move {
                let mut got = Vec::new();
                while let Ok(Some(Ok(m))) = tokio::time::timeout_at(until, ws.next()).await {
                    let Ok(m) = serde_json::from_str::<Value>(m.to_text().unwrap_or("")) else {
                        continue;
                    };
                    if m["type"] == "results" {
                        let at = m["updated_at"].as_i64().unwrap();
                        let age = schemas::Timestamp::now().micros() - at;
                        let (version, total) = (m["version"].as_i64(), m["total_votes"].as_i64());
                        got.push((Instant::now(), version.unwrap(), total.unwrap(), age));
                    }
                }
                got
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(5)).await;
    voting.iter().for_each(|lane| lane.abort());
    let stopped = Instant::now();
    let mut received = Vec::new();
    for reader in readers {
        received.push(reader.await.unwrap());
    }
    let last = app.results(poll).await;

    let mut versions = std::collections::BTreeSet::new();
    let mut most_a_viewer_got = 0;
    for got in &received {
        // Past the first message (the viewer's own, when it joined, or its shard's first turn).
        let turns = got.get(1..).unwrap_or_default();
        for pair in turns.windows(2) {
            let gap = pair[1].0 - pair[0].0;
            // A render each turn would write them a third of that apart.
            assert!(
                gap >= Duration::from_millis(500),
                "a viewer written {gap:?} apart"
            );
        }
        for (at, version, _, age) in turns {
            // (The last votes' results reach the last shard up to an interval after them.)
            if *at < stopped {
                assert!(
                    *age < 1_000_000,
                    "a frame {age} µs old on arrival while votes flow"
                );
            }
            versions.insert(*version);
        }
        most_a_viewer_got = most_a_viewer_got.max(turns.len());
        let (_, version, total, _) = got.last().expect("a viewer got no results");
        assert_eq!(
            (Some(*version), Some(*total)),
            (last["version"].as_i64(), last["total_votes"].as_i64()),
            "a viewer's last results are not the final ones"
        );
    }
    assert!(most_a_viewer_got >= 2, "{received:?}");
    // One render for the whole audience an interval would give every viewer the same versions.
    assert!(
        versions.len() >= 2 * most_a_viewer_got,
        "{} versions across the audience, at most {most_a_viewer_got} a viewer",
        versions.len()
    );

    // The node's own account of it (`/metrics`): sweeps gave every viewer results several
    // times, half of them younger than an interval and none much older (the final results
    // too); the three shards were swept; the tallies came through the log to the board.
    let scrape = |name: &'static str| {
        let app = &app;
        async move {
            let mut h = ScrapedHistogram::default();
            h.add_from(&app.client, &app.base, name).await;
            h
        }
    };
    let age = scrape("crowdtick_realtime_results_age_seconds").await;
    assert!(age.count >= 2 * 1_100, "{age:?}");
    let under = |h: &ScrapedHistogram, secs: f64| h.buckets.iter().find(|b| b.0 >= secs).unwrap().1;
    assert_eq!(
        under(&age, 5.0),
        age.count,
        "results older than 5 s: {age:?}"
    );
    assert!(age.quantile(0.5).unwrap() < 1.0, "{age:?}");
    let sweeps = scrape("crowdtick_realtime_sweep_duration_seconds").await;
    assert!(sweeps.count >= 3 * 2, "{sweeps:?}");
    let tallies = scrape("crowdtick_results_tally_delay_seconds").await;
    assert!(tallies.count >= 1, "{tallies:?}");
    assert_eq!(under(&tallies, 5.0), tallies.count, "{tallies:?}");
}
