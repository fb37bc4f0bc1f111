//! Voters who cannot be impersonated (issue 9): each door names its voters in its own namespace,
//! batches need an aggregator key, verified polls need voter tokens, limits count votes, and the
//! edge sheds load with a fast 503 — with every acknowledged vote counted once.

use crate::helpers::{spawn_app_with, TestApp, AGG_KEY, KEY};
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const SECRET: &str = "the-identity-service-secret-32bytes+";

fn token(claims: Value) -> String {
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
    )
    .unwrap()
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

async fn post(app: &TestApp, path: &str, bearer: Option<&str>, body: Value) -> (u16, Value) {
    let mut req = app.client.post(app.url(path)).json(&body);
    if let Some(b) = bearer {
        req = req.bearer_auth(b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// The finding: an anonymous batch claiming `user:1` … `user:N` was accepted, and each real old-API
/// user's own vote afterwards got 202 and was then discarded as a duplicate.
#[tokio::test]
async fn no_door_can_take_an_old_api_users_vote() {
    let app = spawn_app_with(|_| {}).await;
    let jar = crate::helpers::cookie_client;
    // Three old-API users and their poll.
    let mut users = Vec::new();
    for name in ["ann", "ben", "cat"] {
        let c = jar();
        let (s, b) = (
            c.post(app.url("/api/register/"))
                .json(&json!({"username": name, "email": format!("{name}@example.com"), "password": "correct horse battery"}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16(),
            (),
        );
        assert_eq!(s, 201, "{b:?}");
        users.push(c);
    }
    let r = users[0]
        .post(app.url("/api/polls/"))
        .json(&json!({"title": "Final", "options": {"A": 0, "B": 0}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let poll = r.json::<Value>().await.unwrap()["id"].as_i64().unwrap();

    // An anonymous batch is refused outright, and its body is never judged.
    let claims: Vec<Value> = (1..=200)
        .map(|i| json!({"poll_id": poll, "option_id": 0, "voter_id": format!("user:{i}")}))
        .collect();
    let (s, b) = post(&app, "/v1/votes/batch", None, json!({"votes": claims})).await;
    assert_eq!(s, 401, "{b}");
    assert!(b["error"]["message"]
        .as_str()
        .unwrap()
        .contains("aggregator"));
    let (s, _) = post(
        &app,
        "/v1/votes/batch",
        Some("not-an-aggregator-key"),
        json!({"votes": claims}),
    )
    .await;
    assert_eq!(s, 401);
    let (s, _) = post(&app, "/v1/votes/batch", Some(KEY), json!({"votes": claims})).await;
    assert_eq!(s, 401, "an operator key is not an aggregator key");

    // An aggregator's voters named `user:N` are its own, not the old API's accounts.
    let (s, b) = post(
        &app,
        "/v1/votes/batch",
        Some(AGG_KEY),
        json!({"votes": claims}),
    )
    .await;
    assert_eq!((s, b["accepted"].as_i64()), (200, Some(200)), "{b}");
    // So are a public device's.
    for i in 1..=5 {
        let (s, b) = app.vote(poll, 0, &format!("user:{i}")).await;
        assert_eq!(s, 202, "{b}");
    }

    // Each real user's own vote still counts.
    for c in &users {
        let r = c
            .post(app.url(&format!("/api/polls/{poll}/vote/")))
            .json(&json!({"choice": "B"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }
    app.wait_counts(poll, &[205, 3], 20).await;
}

/// Batches are for aggregators; an aggregator's quota counts votes, and its key is checked before
/// the body is read.
#[tokio::test]
async fn aggregators_have_keys_namespaces_and_quotas() {
    let app = spawn_app_with(|c| {
        c.ingest.aggregators = vec![
            ingest::identity::AggregatorConfig {
                name: "sms".into(),
                key: "the-sms-gateway-key".into(),
                votes_per_sec: 10,
                burst: 300,
            },
            ingest::identity::AggregatorConfig {
                name: "app".into(),
                key: "the-partner-app-key".into(),
                votes_per_sec: 0,
                burst: 0,
            },
        ];
    })
    .await;
    let poll = app.open_poll(&["A", "B"]).await;
    let votes = |n: usize, option: i64| -> Value {
        let v: Vec<Value> = (0..n)
            .map(
                |i| json!({"poll_id": poll, "option_id": option, "voter_id": format!("+44{i:07}")}),
            )
            .collect();
        json!({ "votes": v })
    };
    // Two aggregators may name the same phone number: two voters.
    let (s, b) = post(
        &app,
        "/v1/votes/batch",
        Some("the-sms-gateway-key"),
        votes(250, 0),
    )
    .await;
    assert_eq!((s, b["accepted"].as_i64()), (200, Some(250)), "{b}");
    let (s, b) = post(
        &app,
        "/v1/votes/batch",
        Some("the-partner-app-key"),
        votes(250, 1),
    )
    .await;
    assert_eq!((s, b["accepted"].as_i64()), (200, Some(250)), "{b}");
    // The quota counts votes: 250 of 300 spent, 100 more is over it; one request is not one token.
    let (s, b) = post(
        &app,
        "/v1/votes/batch",
        Some("the-sms-gateway-key"),
        votes(100, 0),
    )
    .await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (429, Some("rate_limited")),
        "{b}"
    );
    let (s, b) = post(
        &app,
        "/v1/votes/batch",
        Some("the-sms-gateway-key"),
        votes(301, 0),
    )
    .await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (413, Some("over_burst")),
        "{b}"
    );
    // The unlimited one is not slowed by the other's quota.
    let (s, _) = post(
        &app,
        "/v1/votes/batch",
        Some("the-partner-app-key"),
        votes(250, 1),
    )
    .await;
    assert_eq!(s, 200);
    // `?results=` takes only `all` or `rejected`.
    let (s, b) = post(
        &app,
        "/v1/votes/batch?results=AAA",
        Some("the-partner-app-key"),
        votes(1, 1),
    )
    .await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (400, Some("invalid_parameter")),
        "{b}"
    );
    app.wait_counts(poll, &[250, 250], 20).await;

    // The key is checked before the body: a request announcing a large body and sending none is
    // refused at once, not after the body timeout.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut sock = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    sock.write_all(
        b"POST /v1/votes/batch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n",
    )
    .await
    .unwrap();
    let started = Instant::now();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), sock.read(&mut buf))
        .await
        .expect("an unauthenticated batch is answered without waiting for its body")
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

/// Limits count votes, per client address (loopback exemption turned off to test it here).
#[tokio::test]
async fn public_votes_are_limited_per_address() {
    let app = spawn_app_with(|c| {
        c.ingest.rate_limit_per_sec = 1;
        c.ingest.rate_limit_burst = 5;
        c.ingest.rate_limit_exempt_loopback = false;
    })
    .await;
    let poll = app.open_poll(&["A", "B"]).await;
    for i in 0..5 {
        let (s, b) = app.vote(poll, 0, &format!("v{i}")).await;
        assert_eq!(s, 202, "{b}");
    }
    let resp = app
        .client
        .post(app.url("/v1/votes"))
        .json(&json!({"poll_id": poll, "option_id": 0, "voter_id": "v6"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().get("retry-after").is_some());
    app.wait_counts(poll, &[5, 0], 10).await;
}

/// A poll can require verified voters: a voter token signed by the broadcaster's identity service,
/// for that poll, not expired.
#[tokio::test]
async fn verified_polls_take_only_voter_tokens() {
    let app = spawn_app_with(|c| {
        c.ingest.voter_tokens.hmac_secret = SECRET.into();
        c.ingest.voter_tokens.issuer = "https://id.example.tv".into();
    })
    .await;
    let (s, b) = app
        .call(
            "POST",
            "/v1/polls",
            Some(json!({"title": "Verified final", "options": ["A", "B"], "open": true, "voters": "verified"})),
            true,
        )
        .await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(b["voters"], "verified", "{b}");
    let poll = b["id"].as_i64().unwrap();
    let open = app.open_poll(&["A", "B"]).await;
    let exp = now_secs() + 600;
    let iss = "https://id.example.tv";
    let good = |sub: &str, p: i64| token(json!({"sub": sub, "poll": p, "exp": exp, "iss": iss}));
    let vote = |p: i64, o: i64| json!({"poll_id": p, "option_id": o});

    // No token: refused with a message that says what to send.
    let (s, b) = app.vote(poll, 0, "device-1").await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (403, Some("verified_voters_only")),
        "{b}"
    );
    // Aggregators are not verified voters either.
    let (s, b) = post(
        &app,
        "/v1/votes/batch",
        Some(AGG_KEY),
        json!({"votes": [{"poll_id": poll, "option_id": 0, "voter_id": "x"}]}),
    )
    .await;
    assert_eq!(
        b["results"][0]["error"]["code"], "verified_voters_only",
        "{s} {b}"
    );
    // Good tokens count once per subject.
    for (sub, option) in [("alice", 0), ("bob", 1), ("alice", 1)] {
        let (s, b) = post(
            &app,
            "/v1/votes",
            Some(&good(sub, poll)),
            vote(poll, option),
        )
        .await;
        assert_eq!(s, 202, "{b}");
    }
    // A token for another poll, an expired, forged, foreign-issuer or garbled one: refused.
    let (s, b) = post(&app, "/v1/votes", Some(&good("carol", open)), vote(poll, 0)).await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (403, Some("token_for_another_poll")),
        "{b}"
    );
    let expired =
        token(json!({"sub": "carol", "poll": poll, "exp": now_secs() - 3600, "iss": iss}));
    let (s, b) = post(&app, "/v1/votes", Some(&expired), vote(poll, 0)).await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (401, Some("voter_token_expired")),
        "{b}"
    );
    let forged = encode(
        &Header::default(),
        &json!({"sub": "carol", "poll": poll, "exp": exp, "iss": iss}),
        &EncodingKey::from_secret(b"somebody-elses-secret-of-32-bytes!!").unwrap(),
    )
    .unwrap();
    let (s, b) = post(&app, "/v1/votes", Some(&forged), vote(poll, 0)).await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (401, Some("invalid_voter_token")),
        "{b}"
    );
    let foreign = token(json!({"sub": "carol", "poll": poll, "exp": exp, "iss": "https://evil"}));
    let (s, _) = post(&app, "/v1/votes", Some(&foreign), vote(poll, 0)).await;
    assert_eq!(s, 401);
    let (s, _) = post(&app, "/v1/votes", Some("garbage"), vote(poll, 0)).await;
    assert_eq!(s, 401);
    // A voter_id beside a token must be the token's subject.
    let (s, b) = post(
        &app,
        "/v1/votes",
        Some(&good("dave", poll)),
        json!({"poll_id": poll, "option_id": 0, "voter_id": "alice"}),
    )
    .await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (422, Some("voter_mismatch")),
        "{b}"
    );
    app.wait_counts(poll, &[1, 1], 10).await;

    // In an ordinary poll a token is welcome too, and its voter is not the device of that name.
    let (s, _) = post(&app, "/v1/votes", Some(&good("erin", open)), vote(open, 0)).await;
    assert_eq!(s, 202);
    let (s, _) = app.vote(open, 1, "erin").await;
    assert_eq!(s, 202);
    app.wait_counts(open, &[1, 1], 10).await;
}

/// Admission control: past the bound of votes in flight the edge answers a fast 503 with
/// `Retry-After` instead of queueing, and every acknowledged vote is counted once.
#[tokio::test]
async fn the_edge_sheds_load_and_counts_what_it_acknowledged() {
    let app = spawn_app_with(|c| {
        c.ingest.max_in_flight_votes = 4;
    })
    .await;
    let poll = app.open_poll(&["A", "B"]).await;
    use futures::StreamExt;
    // (status, has Retry-After, option chosen)
    let outcomes: Vec<(u16, bool, i64)> = futures::stream::iter(0..600i64)
        .map(|i| {
            let app = &app;
            async move {
                let resp = app
                    .client
                    .post(app.url("/v1/votes"))
                    .json(
                        &json!({"poll_id": poll, "option_id": i % 2, "voter_id": format!("v{i}")}),
                    )
                    .send()
                    .await
                    .unwrap();
                let retry_after = resp.headers().contains_key("retry-after");
                (resp.status().as_u16(), retry_after, i % 2)
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let shed = outcomes.iter().filter(|o| o.0 == 503).count();
    assert!(
        outcomes.iter().all(|o| o.0 == 202 || o.0 == 503),
        "only 202 or 503"
    );
    assert!(
        shed > 0,
        "64 concurrent votes against a bound of 4 shed some"
    );
    assert!(
        outcomes.iter().filter(|o| o.0 == 503).all(|o| o.1),
        "every 503 says when to retry"
    );
    let acked = |option| {
        outcomes
            .iter()
            .filter(|o| o.0 == 202 && o.2 == option)
            .count() as i64
    };
    app.wait_counts(poll, &[acked(0), acked(1)], 10).await;
    assert!(
        app.metric("crowdtick_ingest_votes_shed_in_flight_total")
            .await
            > 0,
        "the shed votes are in /metrics"
    );
}

/// The old API (as DRF does) and poll creation authenticate before they read a body: an anonymous
/// request announcing a large body and sending none is refused at once, not after the body timeout.
#[tokio::test]
async fn the_old_api_and_poll_creation_authenticate_before_they_read_a_body() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app_with(|_| {}).await;
    for (path, refusal) in [
        ("/api/polls/", "HTTP/1.1 403"),
        ("/api/polls/1/vote/", "HTTP/1.1 403"),
        ("/votes/", "HTTP/1.1 403"),
        ("/v1/polls", "HTTP/1.1 401"),
    ] {
        let mut sock = tokio::net::TcpStream::connect(app.addr).await.unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
        );
        sock.write_all(head.as_bytes()).await.unwrap();
        let started = Instant::now();
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), sock.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("{path}: no answer before the body"))
            .unwrap();
        let answer = String::from_utf8_lossy(&buf[..n]);
        assert!(answer.starts_with(refusal), "{path}: {answer}");
        assert!(started.elapsed() < Duration::from_secs(2), "{path}");
    }
}
