//! Viewers at scale, as behaviour: one feed per poll shared by its viewers, each message encoded
//! once for both transports, the viewer count as news at most once a second, a feed retired with
//! its last viewer. (What a viewer costs and how fast they are served: BENCHMARKS.md.)

use crate::helpers::{spawn_app, TestApp};
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
    let voted = schemas::now_micros();

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
        (voted - 10_000_000..=schemas::now_micros()).contains(&updated_at),
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
