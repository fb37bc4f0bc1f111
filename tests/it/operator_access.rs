//! Operator access without keys in URLs, and the live sockets' remaining limits (issue 9, items 3
//! and 6): `?key=` refused, the console's cookie session (REST, WebSocket, SSE), screen tokens
//! scoped to one poll and expiring, wrong keys of any length refused, slow live clients dropped on
//! time, embargoed streams carrying nothing that moves with the votes, errors that do not echo
//! what the client sent, and the per-address cap holding for sockets.

use crate::helpers::{poll_with, spawn_app_with, TestApp, KEY};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A client with no credentials and no cookie jar.
fn bare() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

async fn json_of(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Opens a WebSocket to `path` with extra headers; `Err((status, JSON body))` when refused.
async fn ws_open(
    app: &TestApp,
    path: &str,
    headers: &[(&str, String)],
) -> Result<Ws, (u16, Value)> {
    let mut req = format!("ws://{}{path}", app.addr)
        .into_client_request()
        .unwrap();
    for (name, value) in headers {
        req.headers_mut().insert(
            reqwest::header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => Ok(ws),
        Err(WsError::Http(resp)) => {
            let body = resp.body().clone().unwrap_or_default();
            Err((
                resp.status().as_u16(),
                serde_json::from_slice(&body).unwrap_or(Value::Null),
            ))
        }
        Err(e) => panic!("handshake failed: {e}"),
    }
}

/// The next `results` message on a socket (viewer counts are skipped), within `limit`.
async fn next_results(ws: &mut Ws, limit: Duration) -> Option<Value> {
    let deadline = Instant::now() + limit;
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next()).await.ok()??;
        if let Ok(Message::Text(t)) = msg {
            let v: Value = serde_json::from_str(t.as_str()).unwrap();
            if v["type"] == "results" {
                return Some(v);
            }
        }
    }
}

/// The first `results` event of an SSE stream.
async fn first_sse_results(resp: &mut reqwest::Response) -> Value {
    let mut buf = String::new();
    loop {
        let chunk = tokio::time::timeout(Duration::from_secs(10), resp.chunk())
            .await
            .expect("an SSE event in time")
            .unwrap()
            .expect("the stream goes on");
        buf.push_str(&String::from_utf8_lossy(&chunk));
        if let Some(data) = buf
            .split("\n\n")
            .find(|e| e.contains("event: results"))
            .and_then(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
        {
            return serde_json::from_str(data).unwrap();
        }
    }
}

async fn metric(app: &TestApp, name: &str) -> u64 {
    app.metric(name).await
}

#[tokio::test]
async fn an_operator_key_in_the_url_is_refused_with_what_to_use_instead() {
    let app = spawn_app_with(|_| {}).await;
    let poll = poll_with(&app, "on_reveal", &["A", "B"]).await;
    let c = bare();
    for path in [
        format!("/v1/polls/{poll}/results?key={KEY}"),
        format!("/v1/polls/{poll}/timeline?key={KEY}"),
        format!("/v1/polls/{poll}/sse?key={KEY}"),
        format!("/screen/{poll}?key={KEY}"),
        // Even beside a valid key header: the key has already travelled in the URL.
        format!("/v1/polls/{poll}/results?key=anything"),
    ] {
        let (status, body) =
            json_of(c.get(app.url(&path)).bearer_auth(KEY).send().await.unwrap()).await;
        assert_eq!(status, 401, "{path}: {body}");
        assert_eq!(body["error"]["code"], "key_in_url", "{path}");
        let message = body["error"]["message"].as_str().unwrap();
        for hint in [
            "Authorization: Bearer",
            "/v1/operator/session",
            "screen-token",
        ] {
            assert!(message.contains(hint), "{path}: {message}");
        }
    }
    let (status, body) = ws_open(&app, &format!("/v1/polls/{poll}/ws?key={KEY}"), &[])
        .await
        .map(|_| ())
        .unwrap_err();
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "key_in_url");
    // Without the key, the screen page itself is served, and sends no Referer.
    let page = c
        .get(app.url(&format!("/screen/{poll}")))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["referrer-policy"], "no-referrer");
}

#[tokio::test]
async fn keys_of_the_wrong_length_or_content_are_refused() {
    let app = spawn_app_with(|_| {}).await;
    let c = bare();
    let body = json!({"title": "t", "options": ["a", "b"]});
    let mut wrong: Vec<String> = vec![
        String::new(),
        KEY[..KEY.len() - 1].into(),
        format!("{KEY}x"),
        format!("{KEY}{KEY}"),
        KEY.to_uppercase(),
        "x".repeat(4096),
    ];
    let mut flipped = KEY.as_bytes().to_vec();
    flipped[0] ^= 1;
    wrong.push(String::from_utf8(flipped).unwrap());
    for w in &wrong {
        for req in [
            c.post(app.url("/v1/polls")).bearer_auth(w),
            c.post(app.url("/v1/polls")).header("x-api-key", w),
        ] {
            let (status, resp) = json_of(req.json(&body).send().await.unwrap()).await;
            assert_eq!(status, 401, "key of {} bytes: {resp}", w.len());
            assert_eq!(resp["error"]["code"], "unauthorized");
        }
    }
    let (status, _) = json_of(
        c.post(app.url("/v1/polls"))
            .bearer_auth(KEY)
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 201);
}

#[tokio::test]
async fn a_cookie_session_signs_the_console_in_for_rest_websocket_and_sse() {
    let app = spawn_app_with(|_| {}).await;
    let poll = poll_with(&app, "on_reveal", &["A", "B"]).await;
    assert_eq!(app.vote(poll, 1, "fan-1").await.0, 202);
    app.wait_counts(poll, &[0, 1], 10).await;

    // Signing in takes the key from a header only, and sets a cookie that is not the key.
    let jar = reqwest::Client::builder()
        .cookie_store(true)
        .build()
        .unwrap();
    let (status, body) = json_of(
        jar.post(app.url("/v1/operator/session"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 401, "{body}");
    let resp = jar
        .post(app.url("/v1/operator/session"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let set_cookie = resp.headers()["set-cookie"].to_str().unwrap().to_owned();
    for attribute in [
        "crowdtick_operator=",
        "HttpOnly",
        "SameSite=Strict",
        "Path=/",
        "Max-Age=28800",
    ] {
        assert!(set_cookie.contains(attribute), "{set_cookie}");
    }
    assert!(
        !set_cookie.contains(KEY),
        "the cookie holds the key: {set_cookie}"
    );
    let cookie = set_cookie.split(';').next().unwrap().to_owned();

    // REST: operator endpoints and embargoed results by the cookie alone.
    let (status, who) = json_of(
        jar.get(app.url("/v1/operator/session"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, who["via"].as_str()),
        (200, Some("session")),
        "{who}"
    );
    let (status, created) = json_of(
        jar.post(app.url("/v1/polls"))
            .json(&json!({"title": "by cookie", "options": ["x", "y"]}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let (status, results) = json_of(
        jar.get(app.url(&format!("/v1/polls/{poll}/results")))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        (results["hidden"].clone(), results["counts"].clone()),
        (json!(false), json!([0, 1]))
    );

    // WebSocket and SSE by the cookie: embargoed counts.
    let mut ws = ws_open(
        &app,
        &format!("/v1/polls/{poll}/ws"),
        &[("cookie", cookie.clone())],
    )
    .await
    .unwrap();
    let first = next_results(&mut ws, Duration::from_secs(5)).await.unwrap();
    assert_eq!(first["hidden"], false, "{first}");
    assert_eq!(first["counts"], json!([0, 1]));
    let mut sse = bare()
        .get(app.url(&format!("/v1/polls/{poll}/sse")))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), 200);
    assert_eq!(first_sse_results(&mut sse).await["counts"], json!([0, 1]));
    // Without it, the same socket is the public's.
    let mut public = ws_open(&app, &format!("/v1/polls/{poll}/ws"), &[])
        .await
        .unwrap();
    assert_eq!(
        next_results(&mut public, Duration::from_secs(5))
            .await
            .unwrap()["hidden"],
        true
    );

    // A forged or altered cookie is nobody's.
    let forged = format!("{cookie}x");
    let (status, _) = json_of(
        bare()
            .post(app.url("/v1/polls/1/close"))
            .header("cookie", forged)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 401);

    // Signing out clears the cookie.
    let resp = jar
        .delete(app.url("/v1/operator/session"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert!(resp.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
    let (status, _) = json_of(
        jar.get(app.url("/v1/operator/session"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 401);

    // The key removed from the configuration: its sessions stop working too.
    let rotated = spawn_app_with(|c| c.operator_keys = vec!["a-new-key".into()]).await;
    let (status, body) = json_of(
        bare()
            .get(rotated.url("/v1/operator/session"))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 401, "{body}");
}

#[tokio::test]
async fn a_screen_token_opens_only_its_poll_and_only_until_it_expires() {
    let app = spawn_app_with(|_| {}).await;
    let poll = poll_with(&app, "after_close", &["A", "B"]).await;
    let other = poll_with(&app, "after_close", &["C", "D"]).await;
    assert_eq!(app.vote(poll, 0, "fan-1").await.0, 202);
    app.wait_counts(poll, &[1, 0], 10).await;
    let c = bare();
    let mint = |poll: i64, body: Value, key: Option<&str>| {
        let mut req = c
            .post(app.url(&format!("/v1/polls/{poll}/screen-token")))
            .json(&body);
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        req.send()
    };
    // Only an operator mints one; bad lifetimes and unknown polls are refused with JSON.
    assert_eq!(
        json_of(mint(poll, json!({}), None).await.unwrap()).await.0,
        401
    );
    let (status, body) =
        json_of(mint(poll, json!({"ttl_secs": 0}), Some(KEY)).await.unwrap()).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("invalid_ttl"))
    );
    let (status, body) = json_of(
        mint(poll, json!({"ttl_secs": 1, "poll": 2}), Some(KEY))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("malformed"))
    );
    assert_eq!(
        json_of(mint(999, json!({}), Some(KEY)).await.unwrap())
            .await
            .0,
        404
    );

    let (status, minted) =
        json_of(mint(poll, json!({"ttl_secs": 3}), Some(KEY)).await.unwrap()).await;
    assert_eq!(status, 201, "{minted}");
    let token = minted["token"].as_str().unwrap().to_owned();
    assert!(!token.contains(KEY));
    assert_eq!(
        minted["screen_url"],
        format!("/screen/{poll}?token={token}")
    );
    let minted_at = Instant::now();

    // Its poll: embargoed counts over REST, timeline, WebSocket and SSE.
    let get = |path: String| c.get(app.url(&path)).send();
    let (status, r) = json_of(
        get(format!("/v1/polls/{poll}/results?token={token}"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, r["hidden"].clone(), r["counts"].clone()),
        (200, json!(false), json!([1, 0]))
    );
    let (status, t) = json_of(
        get(format!("/v1/polls/{poll}/timeline?token={token}"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, t["hidden"].clone()), (200, json!(false)));
    let mut ws = ws_open(&app, &format!("/v1/polls/{poll}/ws?token={token}"), &[])
        .await
        .unwrap();
    assert_eq!(
        next_results(&mut ws, Duration::from_secs(5)).await.unwrap()["counts"],
        json!([1, 0])
    );
    let mut sse = get(format!("/v1/polls/{poll}/sse?token={token}"))
        .await
        .unwrap();
    assert_eq!(first_sse_results(&mut sse).await["hidden"], false);
    assert_eq!(
        get(format!("/screen/{poll}?token={token}"))
            .await
            .unwrap()
            .status(),
        200
    );

    // Another poll: refused, on every door.
    let (status, body) = json_of(
        get(format!("/v1/polls/{other}/results?token={token}"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 401, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("screen-token"));
    assert_eq!(
        json_of(
            get(format!("/v1/polls/{other}/timeline?token={token}"))
                .await
                .unwrap()
        )
        .await
        .0,
        401
    );
    assert_eq!(
        get(format!("/v1/polls/{other}/sse?token={token}"))
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        ws_open(&app, &format!("/v1/polls/{other}/ws?token={token}"), &[])
            .await
            .map(|_| ())
            .unwrap_err()
            .0,
        401
    );
    // Read-only: it is neither a key nor a session.
    for req in [
        c.post(app.url(&format!("/v1/polls/{poll}/close")))
            .bearer_auth(&token),
        c.post(app.url(&format!("/v1/polls/{poll}/close")))
            .header("cookie", format!("crowdtick_operator={token}")),
        c.get(app.url(&format!("/v1/polls/{poll}/rejections?token={token}"))),
        c.post(app.url(&format!("/v1/polls/{poll}/screen-token?token={token}"))),
    ] {
        assert_eq!(req.send().await.unwrap().status(), 401);
    }

    // Expired: refused, saying so.
    tokio::time::sleep_until(minted_at + Duration::from_millis(4_100)).await;
    let (status, body) = json_of(
        get(format!("/v1/polls/{poll}/results?token={token}"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 401, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("expired"),
        "{body}"
    );
    assert_eq!(
        ws_open(&app, &format!("/v1/polls/{poll}/ws?token={token}"), &[])
            .await
            .map(|_| ())
            .unwrap_err()
            .0,
        401
    );
}

/// A WebSocket whose client reads nothing, over a socket with a small receive buffer (so the
/// server's writes back up within a few messages).
async fn non_reading_ws(
    app: &TestApp,
    path: &str,
) -> tokio_tungstenite::WebSocketStream<tokio::net::TcpStream> {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(app.addr).await.unwrap();
    let (ws, _) = tokio_tungstenite::client_async(format!("ws://{}{path}", app.addr), stream)
        .await
        .unwrap();
    ws
}

#[tokio::test]
async fn live_clients_that_stop_reading_are_dropped_within_the_deadline() {
    // The WebSocket and the event stream, both written in their poll's sweeps, meet the realtime
    // send deadline (1 s), not the listener's write-stall deadline (2 s) that bounds writes
    // through the listener.
    let app = spawn_app_with(|c| {
        c.realtime.send_timeout_ms = 1_000;
        c.http.write_stall_timeout_ms = 2_000;
    })
    .await;
    // Big messages (64 options of 200 characters: ~17 KB each), so buffers fill in seconds.
    let labels: Vec<String> = (0..64)
        .map(|i| format!("{i:02}{}", "x".repeat(198)))
        .collect();
    let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
    let poll = poll_with(&app, "live", &labels).await;
    let path = format!("/v1/polls/{poll}/ws");
    let mut stalled = non_reading_ws(&app, &path).await;
    // An SSE client that sends its request and then reads nothing.
    let sse_socket = TcpSocket::new_v4().unwrap();
    sse_socket.set_recv_buffer_size(4096).unwrap();
    let mut stalled_sse = sse_socket.connect(app.addr).await.unwrap();
    stalled_sse
        .write_all(format!("GET /v1/polls/{poll}/sse HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    // A healthy viewer beside them, reading everything.
    let mut healthy = ws_open(&app, &path, &[]).await.unwrap();
    assert!(next_results(&mut healthy, Duration::from_secs(5))
        .await
        .is_some());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(metric(&app, "crowdtick_realtime_connections").await, 3);

    // Votes flow from four senders, so the counts change in every coalescing period: a new
    // ~17 KB message for each viewer every 20 ms.
    let voting: Vec<_> = (0..4)
        .map(|lane| {
            let base = app.base.clone();
            tokio::spawn(async move {
                let c = bare();
                for i in 0.. {
                    let _ = c
                        .post(format!("{base}/v1/votes"))
                        .json(&json!({"poll_id": poll, "option_id": i % 64, "voter_id": format!("fan-{lane}-{i}")}))
                        .send()
                        .await;
                }
            })
        })
        .collect();
    // The healthy viewer reads everything in its own task.
    let healthy_count = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let reader = {
        let count = healthy_count.clone();
        tokio::spawn(async move {
            while next_results(&mut healthy, Duration::from_secs(5))
                .await
                .is_some()
            {
                count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        })
    };
    let started = Instant::now();
    while metric(&app, "crowdtick_realtime_slow_consumers_dropped_total").await < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "the stalled clients were not dropped ({} dropped)",
            metric(&app, "crowdtick_realtime_slow_consumers_dropped_total").await,
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let dropped_after = started.elapsed();
    // The healthy viewer is still served, and is the only viewer left.
    let seen = healthy_count.load(std::sync::atomic::Ordering::Relaxed);
    assert!(seen > 5, "the healthy viewer got {seen} messages");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!reader.is_finished(), "the healthy viewer was cut off");
    assert!(healthy_count.load(std::sync::atomic::Ordering::Relaxed) > seen);
    assert_eq!(metric(&app, "crowdtick_realtime_connections").await, 1);
    assert_eq!(
        metric(&app, "crowdtick_realtime_slow_consumers_dropped_total").await,
        2
    );
    assert_eq!(metric(&app, "crowdtick_http_write_stalls_total").await, 0);
    for v in &voting {
        v.abort();
    }
    reader.abort();
    // The stalled WebSocket finds its connection closed once it reads again.
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(m)) = stalled.next().await {
            if m.is_close() {
                break;
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the dropped socket was never closed");
    // So does the stalled event stream: its TCP connection is closed, not just its subscription.
    let sse_closed = tokio::time::timeout(Duration::from_secs(10), async {
        let mut sink = vec![0u8; 64 << 10];
        loop {
            match stalled_sse.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        sse_closed.is_ok(),
        "the stalled event stream's connection stayed open"
    );
    // How long their buffers took to fill depends on the machine; the deadline itself runs from
    // the moment a message could not be written.
    println!("both stalled clients dropped {dropped_after:?} after votes began (deadline 1 s)");
}

#[tokio::test]
async fn an_embargoed_stream_carries_nothing_that_moves_with_the_votes() {
    let app = spawn_app_with(|_| {}).await;
    let poll = poll_with(&app, "on_reveal", &["A", "B"]).await;
    let path = format!("/v1/polls/{poll}/ws");
    let mut public = ws_open(&app, &path, &[]).await.unwrap();
    let mut operator = ws_open(&app, &path, &[("authorization", format!("Bearer {KEY}"))])
        .await
        .unwrap();
    let mut public_sse = bare()
        .get(app.url(&format!("/v1/polls/{poll}/sse")))
        .send()
        .await
        .unwrap();
    let first = next_results(&mut public, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(first["hidden"], true, "{first}");
    for moving in ["version", "offsets", "counts", "total_votes", "voters"] {
        assert!(first.get(moving).is_none(), "{moving} in {first}");
    }
    assert!(first_sse_results(&mut public_sse)
        .await
        .get("version")
        .is_none());
    next_results(&mut operator, Duration::from_secs(5))
        .await
        .unwrap();

    // Votes arrive over a second: the operator sees them move, the public sees nothing.
    for i in 0..20 {
        assert_eq!(app.vote(poll, i % 2, &format!("fan-{i}")).await.0, 202);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut versions = Vec::new();
    while let Some(m) = next_results(&mut operator, Duration::from_millis(500)).await {
        versions.push(m["version"].as_i64().unwrap());
    }
    assert!(versions.len() >= 2, "the operator saw {versions:?}");
    assert_eq!(app.results(poll).await["total_votes"], 20);
    assert_eq!(
        next_results(&mut public, Duration::from_secs(1)).await,
        None,
        "the public stream moved with the votes"
    );
    let mut rest = String::new();
    while let Ok(Ok(Some(chunk))) =
        tokio::time::timeout(Duration::from_millis(300), public_sse.chunk()).await
    {
        rest.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(!rest.contains("event: results"), "SSE moved: {rest}");
    let (_, r) = json_of(
        bare()
            .get(app.url(&format!("/v1/polls/{poll}/results")))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(
        r.get("version").is_none() && r.get("offsets").is_none(),
        "{r}"
    );

    // Revealed: the public gets the counts at once.
    let (status, _) = app
        .call("POST", &format!("/v1/polls/{poll}/reveal"), None, true)
        .await;
    assert_eq!(status, 200);
    let shown = next_results(&mut public, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(
        (shown["hidden"].clone(), shown["total_votes"].clone()),
        (json!(false), json!(20))
    );
    assert!(shown["version"].as_i64().unwrap() > 0);
}

#[tokio::test]
async fn socket_errors_do_not_echo_what_the_client_sent() {
    let app = spawn_app_with(|_| {}).await;
    let marker = "ZZ-SENT-BY-CLIENT-ZZ";
    // /v1: a path id that is not a number.
    let (status, body) = ws_open(&app, &format!("/v1/polls/{marker}/ws"), &[])
        .await
        .map(|_| ())
        .unwrap_err();
    assert_eq!(status, 404);
    assert!(!body.to_string().contains(marker), "{body}");
    let (status, body) = json_of(
        bare()
            .get(app.url(&format!("/v1/polls/{marker}/sse")))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 404);
    assert!(!body.to_string().contains(marker), "{body}");

    // The old API's socket: a vote for a choice that does not exist.
    let c = reqwest::Client::builder()
        .cookie_store(true)
        .build()
        .unwrap();
    let resp = c
        .post(app.url("/api/register/"))
        .json(
            &json!({"username": "echo", "email": "echo@example.com", "password": "correct-horse"}),
        )
        .send()
        .await
        .unwrap();
    let session = resp.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    assert_eq!(resp.status(), 201);
    let poll = app.open_poll(&["Ana", "Bruno"]).await;
    let mut ws = ws_open(&app, &format!("/ws/poll/{poll}/"), &[("cookie", session)])
        .await
        .unwrap();
    let choice = format!("{marker}{}", "x".repeat(3000));
    ws.send(Message::Text(json!({"choice": choice}).to_string().into()))
        .await
        .unwrap();
    let reply = loop {
        let m = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let v: Value = serde_json::from_str(m.to_text().unwrap()).unwrap();
        if v.get("error").is_some() {
            break v;
        }
    };
    assert_eq!(reply["status"], 400, "{reply}");
    assert_eq!(reply["error"], "choice: not a valid choice of this poll.");
    // A valid vote still works on the same socket.
    ws.send(Message::Text(json!({"choice": "Bruno"}).to_string().into()))
        .await
        .unwrap();
    let ok = loop {
        let m = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let v: Value = serde_json::from_str(m.to_text().unwrap()).unwrap();
        if v.get("vote").is_some() || v.get("error").is_some() {
            break v;
        }
    };
    assert_eq!(ok, json!({"vote": {"choice": "Bruno"}}));
}

#[tokio::test]
async fn the_per_address_cap_holds_for_live_sockets() {
    let mut app = spawn_app_with(|c| {
        c.http.max_connections_per_address = 2;
        c.http.limits_exempt_loopback = false;
    })
    .await;
    let poll = app.open_poll(&["A", "B"]).await;
    // The test client's pooled connection would hold a place.
    app.client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let path = format!("/v1/polls/{poll}/ws");
    let first = ws_open(&app, &path, &[]).await.unwrap();
    let _second = ws_open(&app, &path, &[]).await.unwrap();
    // A third socket (or SSE stream) from the same address is refused before any upgrade.
    let mut third = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    third
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut answer = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), third.read_to_string(&mut answer)).await;
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    assert!(
        answer.contains("too_many_connections_from_address"),
        "{answer}"
    );
    // A viewer leaves: its place is given again.
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match ws_open(&app, &path, &[]).await {
            Ok(_) => break,
            Err((status, _)) => assert_eq!(status, 429),
        }
        assert!(
            Instant::now() < deadline,
            "the viewer's place was never freed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
