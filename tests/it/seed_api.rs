//! The seed API (the old Django/DRF surface) end to end: accounts, sessions, Basic, polls, votes,
//! results, the WebSocket, aliases, restarts and concurrent votes.

use crate::helpers::*;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::time::Duration;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const PASSWORD: &str = "correct-horse";

fn new_client() -> reqwest::Client {
    crate::helpers::cookie_client()
}

async fn json_of(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn post(client: &reqwest::Client, url: String, body: Value) -> (u16, Value) {
    json_of(client.post(url).json(&body).send().await.unwrap()).await
}

async fn get(client: &reqwest::Client, url: String) -> (u16, Value) {
    json_of(client.get(url).send().await.unwrap()).await
}

/// Registers `name` on `client` (which keeps the session cookie); answers the cookie's value.
async fn register(app: &TestApp, client: &reqwest::Client, name: &str) -> String {
    let resp = client
        .post(app.url("/api/register/"))
        .json(&json!({"username": name, "email": format!("{name}@example.com"), "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    let cookie = resp
        .headers()
        .get("set-cookie")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let (status, body) = json_of(resp).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        body,
        json!({"username": name, "email": format!("{name}@example.com")})
    );
    let token = cookie
        .strip_prefix("sessionid=")
        .and_then(|c| c.split(';').next())
        .unwrap_or_else(|| panic!("no session cookie: {cookie:?}"));
    token.to_owned()
}

/// A logged-in client.
async fn user(app: &TestApp, name: &str) -> reqwest::Client {
    let c = new_client();
    register(app, &c, name).await;
    c
}

async fn seed_poll(app: &TestApp, client: &reqwest::Client, labels: &[&str]) -> i64 {
    let options: serde_json::Map<String, Value> =
        labels.iter().map(|l| (l.to_string(), json!(0))).collect();
    let (status, body) = post(
        client,
        app.url("/api/polls/"),
        json!({"title": "Seed poll", "options": options}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    body["id"].as_i64().unwrap()
}

/// Waits until the seed results equal `expected` (or panics after 10 s).
async fn wait_results(app: &TestApp, client: &reqwest::Client, poll: i64, expected: Value) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = get(client, app.url(&format!("/api/polls/{poll}/results/"))).await;
        assert_eq!(status, 200, "{body}");
        if body == expected {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "poll {poll}: {body}, expected {expected}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn ws_connect(app: &TestApp, poll: &str, session: Option<&str>) -> Ws {
    let mut req = format!("ws://{}/ws/poll/{poll}/", app.addr)
        .into_client_request()
        .unwrap();
    if let Some(s) = session {
        req.headers_mut()
            .insert("cookie", format!("sessionid={s}").parse().unwrap());
    }
    tokio_tungstenite::connect_async(req).await.unwrap().0
}

/// The next JSON message (panics on close or after 10 s).
async fn ws_json(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("no WebSocket message within 10 s")
            .expect("the WebSocket ended")
            .unwrap();
        match msg {
            Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            Message::Close(f) => panic!("closed: {f:?}"),
            _ => {}
        }
    }
}

/// Reads messages until one satisfies `pred`.
async fn ws_until(ws: &mut Ws, pred: impl Fn(&Value) -> bool) -> Value {
    loop {
        let m = ws_json(ws).await;
        if pred(&m) {
            return m;
        }
    }
}

#[tokio::test]
async fn register_sets_a_session_cookie_and_stores_only_a_hash() {
    let app = spawn_app().await;
    let client = new_client();
    let resp = client
        .post(app.url("/api/register/"))
        .json(&json!({"username": "ana", "email": "ana@example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    let cookie = resp.headers()["set-cookie"].to_str().unwrap().to_owned();
    let token = cookie
        .strip_prefix("sessionid=")
        .unwrap()
        .split(';')
        .next()
        .unwrap();
    assert_eq!(token.len(), 64, "{cookie}");
    assert!(token.chars().all(|c| c.is_ascii_hexdigit()));
    for attr in ["HttpOnly", "Path=/", "SameSite=Lax"] {
        assert!(cookie.contains(attr), "{cookie} lacks {attr}");
    }
    assert_eq!(
        resp.json::<Value>().await.unwrap(),
        json!({"username": "ana", "email": "ana@example.com"})
    );
    // Logged in: the cookie authenticates.
    let poll = seed_poll(&app, &client, &["A", "B"]).await;
    assert!(poll > 0);
    // On disk: a salted hash, never the password nor the session token.
    let accounts = std::fs::read_to_string(app.data.path().join("accounts.jsonl")).unwrap();
    let line: Value = serde_json::from_str(accounts.lines().next().unwrap()).unwrap();
    assert_eq!(
        (line["id"].as_i64(), line["username"].as_str()),
        (Some(1), Some("ana"))
    );
    assert!(line["password"]
        .as_str()
        .unwrap()
        .starts_with("pbkdf2_sha256$"));
    assert!(!accounts.contains(PASSWORD));
    let sessions = std::fs::read_to_string(app.data.path().join("sessions.jsonl")).unwrap();
    assert!(!sessions.is_empty() && !sessions.contains(token));
    // Ids count up.
    let c = new_client();
    register(&app, &c, "bruno").await;
    let (_, body) = post(
        &c,
        app.url("/api/polls/"),
        json!({"title": "t", "options": {"x": 0, "y": 0}}),
    )
    .await;
    assert_eq!(body["creator"], 2);
}

#[tokio::test]
async fn registration_errors_are_drf_shaped() {
    let app = spawn_app().await;
    let c = new_client();
    register(&app, &c, "carla").await;
    let url = app.url("/api/register/");
    let (s, body) = post(
        &c,
        url.clone(),
        json!({"username": "carla", "email": "c2@example.com", "password": PASSWORD}),
    )
    .await;
    assert_eq!(
        (s, body),
        (
            400,
            json!({"username": ["A user with that username already exists."]})
        )
    );
    let (s, body) = post(
        &c,
        url.clone(),
        json!({"username": "dora", "email": "d@example.com", "password": "short"}),
    )
    .await;
    assert_eq!(
        (s, body),
        (
            400,
            json!({"password": ["Ensure this field has at least 8 characters."]})
        )
    );
    let (s, body) = post(&c, url.clone(), json!({})).await;
    let required = json!(["This field is required."]);
    assert_eq!(
        (s, body),
        (
            400,
            json!({"username": required, "email": required, "password": required})
        )
    );
    let (s, body) = post(
        &c,
        url.clone(),
        json!({"username": "dora", "password": PASSWORD}),
    )
    .await;
    assert_eq!(
        (s, body),
        (400, json!({"email": ["This field is required."]}))
    );
    // The failed attempts created nothing: "dora" is still free.
    let d = new_client();
    register(&app, &d, "dora").await;
    // Not JSON.
    let (s, body) = json_of(c.post(url).body("{nope").send().await.unwrap()).await;
    assert_eq!(s, 400);
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .starts_with("JSON parse error"),
        "{body}"
    );
}

#[tokio::test]
async fn credentials_are_required_and_basic_auth_works() {
    let app = spawn_app().await;
    let c = user(&app, "eva").await;
    let poll = seed_poll(&app, &c, &["A", "B"]).await;
    let anon = new_client();
    let not_provided = json!({"detail": "Authentication credentials were not provided."});
    for (method, path) in [
        ("POST", "/api/polls/".to_string()),
        ("POST", format!("/api/polls/{poll}/vote/")),
        ("GET", format!("/api/polls/{poll}/results/")),
        ("POST", "/votes/".to_string()),
    ] {
        let req = anon
            .request(method.parse().unwrap(), app.url(&path))
            .json(&json!({"choice": "A"}));
        assert_eq!(
            json_of(req.send().await.unwrap()).await,
            (403, not_provided.clone()),
            "{method} {path}"
        );
    }
    // A session cookie that is not one of ours is no credential.
    let (s, body) = json_of(
        anon.get(app.url(&format!("/api/polls/{poll}/results/")))
            .header("cookie", "sessionid=0000")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((s, body), (403, not_provided));
    let invalid = json!({"detail": "Invalid username/password."});
    for (name, pass) in [("eva", "wrong-password"), ("nobody", PASSWORD)] {
        let req = anon
            .get(app.url(&format!("/api/polls/{poll}/results/")))
            .basic_auth(name, Some(pass));
        assert_eq!(
            json_of(req.send().await.unwrap()).await,
            (403, invalid.clone())
        );
    }
    // Basic on every request (the second one is served from the cache).
    for _ in 0..3 {
        let req = anon
            .get(app.url(&format!("/api/polls/{poll}/results/")))
            .basic_auth("eva", Some(PASSWORD));
        assert_eq!(
            json_of(req.send().await.unwrap()).await,
            (200, json!({"A": 0, "B": 0}))
        );
    }
    let req = anon
        .post(app.url("/api/polls/"))
        .basic_auth("eva", Some(PASSWORD))
        .json(&json!({"title": "By Basic", "options": {"X": 0, "Y": 0}}));
    let (s, body) = json_of(req.send().await.unwrap()).await;
    assert_eq!((s, &body["creator"]), (201, &json!(1)));
    let req = anon
        .post(app.url(&format!("/api/polls/{poll}/vote/")))
        .basic_auth("eva", Some(PASSWORD))
        .json(&json!({"choice": "B"}));
    assert_eq!(
        json_of(req.send().await.unwrap()).await,
        (202, json!({"choice": "B"}))
    );
}

#[tokio::test]
async fn create_poll_answers_the_seed_shape_and_checks_the_body() {
    let app = spawn_app().await;
    let c = user(&app, "fil").await;
    // Raw text: `json!` would sort the keys.
    let body =
        r#"{"title": "Best option?", "options": {"Option 1": 0, "Option 2": 0, "Option 10": 0}}"#;
    let resp = c
        .post(app.url("/api/polls/"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    // The labels keep the client's order.
    let text = resp.text().await.unwrap();
    assert!(
        text.contains(r#""options":{"Option 1":0,"Option 2":0,"Option 10":0}"#),
        "{text}"
    );
    let created: Value = serde_json::from_str(&text).unwrap();
    let id = created["id"].as_i64().unwrap();
    assert_eq!(
        created,
        json!({"id": id, "title": "Best option?", "options": {"Option 1": 0, "Option 2": 0, "Option 10": 0}, "creator": 1})
    );
    // The same poll in the /v1 API: open, live, created by the user.
    let (_, v1) = app
        .call("GET", &format!("/v1/polls/{id}"), None, false)
        .await;
    assert_eq!(v1["state"], "open");
    assert_eq!(v1["visibility"], "live");
    assert_eq!(v1["options"][2]["label"], "Option 10");

    let url = app.url("/api/polls/");
    let required = json!(["This field is required."]);
    assert_eq!(
        post(&c, url.clone(), json!({})).await,
        (400, json!({"title": required, "options": required}))
    );
    let (s, b) = post(
        &c,
        url.clone(),
        json!({"title": "t", "options": ["a", "b"]}),
    )
    .await;
    assert_eq!(
        (s, b),
        (
            400,
            json!({"options": ["Expected a dictionary of items but got type \"list\"."]})
        )
    );
    let (s, b) = post(
        &c,
        url.clone(),
        json!({"title": "t", "options": {"only": 0}}),
    )
    .await;
    assert_eq!(s, 400);
    assert!(b["options"][0].is_string(), "{b}");
    let (s, b) = post(
        &c,
        url,
        json!({"title": "x".repeat(256), "options": {"a": 0, "b": 0}}),
    )
    .await;
    assert_eq!(
        (s, b),
        (
            400,
            json!({"title": ["Ensure this field has no more than 255 characters."]})
        )
    );
}

#[tokio::test]
async fn one_vote_per_user_and_drf_errors() {
    let app = spawn_app().await;
    let c = user(&app, "gil").await;
    let poll = seed_poll(&app, &c, &["Option 1", "Option 2"]).await;
    let url = app.url(&format!("/api/polls/{poll}/vote/"));
    assert_eq!(
        post(&c, url.clone(), json!({"choice": "Nope"})).await,
        (400, json!({"choice": ["\"Nope\" is not a valid choice."]}))
    );
    assert_eq!(
        post(&c, url.clone(), json!({})).await,
        (400, json!({"choice": ["This field is required."]}))
    );
    assert_eq!(
        post(&c, url.clone(), json!({"choice": "Option 2"})).await,
        (202, json!({"choice": "Option 2"}))
    );
    let (s, body) = post(&c, url.clone(), json!({"choice": "Option 1"})).await;
    assert_eq!(s, 400);
    assert_eq!(
        body,
        json!({"detail": "You have already voted on this poll."})
    );
    assert!(body["detail"].as_str().unwrap().contains("already voted"));
    let no_poll = json!({"detail": "No Poll matches the given query."});
    for path in [
        "/api/polls/9999/vote/",
        "/api/polls/abc/vote/",
        "/api/polls/9999/results/",
        "/api/polls/abc/results/",
    ] {
        let req = c.request(
            if path.ends_with("vote/") {
                reqwest::Method::POST
            } else {
                reqwest::Method::GET
            },
            app.url(path),
        );
        assert_eq!(
            json_of(
                req.json(&json!({"choice": "Option 1"}))
                    .send()
                    .await
                    .unwrap()
            )
            .await,
            (404, no_poll.clone()),
            "{path}"
        );
    }
    // A closed poll (closed through /v1) refuses votes in the seed shape.
    let d = user(&app, "hal").await;
    let (s, _) = app
        .call("POST", &format!("/v1/polls/{poll}/close"), None, true)
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        post(&d, url, json!({"choice": "Option 1"})).await,
        (400, json!({"detail": "This poll is closed."}))
    );
    wait_results(&app, &c, poll, json!({"Option 1": 0, "Option 2": 1})).await;
    // Wrong method: DRF's 405.
    let (s, body) = get(&c, app.url(&format!("/api/polls/{poll}/vote/"))).await;
    assert_eq!(
        (s, body),
        (405, json!({"detail": "Method \"GET\" not allowed."}))
    );
}

#[tokio::test]
async fn results_have_every_label_and_match_the_votes() {
    let app = spawn_app().await;
    let owner = user(&app, "ida").await;
    let poll = seed_poll(&app, &owner, &["A", "B", "C"]).await;
    let (s, body) = get(&owner, app.url(&format!("/api/polls/{poll}/results/"))).await;
    assert_eq!((s, body), (200, json!({"A": 0, "B": 0, "C": 0})));
    let mut voters = Vec::new();
    for (i, choice) in ["A", "B", "B", "A", "B"].iter().enumerate() {
        let c = user(&app, &format!("voter{i}")).await;
        let (s, body) = post(
            &c,
            app.url(&format!("/api/polls/{poll}/vote/")),
            json!({"choice": choice}),
        )
        .await;
        assert_eq!(s, 202, "{body}");
        voters.push(c);
    }
    wait_results(&app, &owner, poll, json!({"A": 2, "B": 3, "C": 0})).await;
    // The /v1 API agrees.
    app.wait_counts(poll, &[2, 3, 0], 10).await;

    // A poll whose results are hidden until it closes (made through /v1) answers 403 until then.
    let (s, body) = app
        .call("POST", "/v1/polls", Some(json!({"title": "Secret", "options": ["x", "y"], "open": true, "visibility": "after_close"})), true)
        .await;
    assert_eq!(s, 201, "{body}");
    let hidden = body["id"].as_i64().unwrap();
    let (s, body) = get(&owner, app.url(&format!("/api/polls/{hidden}/results/"))).await;
    assert_eq!(
        (s, body),
        (
            403,
            json!({"detail": "Results are hidden until the poll closes."})
        )
    );
    assert_eq!(
        post(
            &voters[0],
            app.url(&format!("/api/polls/{hidden}/vote/")),
            json!({"choice": "y"})
        )
        .await
        .0,
        202
    );
    app.call("POST", &format!("/v1/polls/{hidden}/close"), None, true)
        .await;
    wait_results(&app, &owner, hidden, json!({"x": 0, "y": 1})).await;
}

#[tokio::test]
async fn websocket_sends_results_then_updates_and_takes_votes() {
    let app = spawn_app().await;
    let c = new_client();
    let session = register(&app, &c, "jon").await;
    let poll = seed_poll(&app, &c, &["A", "B"]).await;
    let mut ws = ws_connect(&app, &poll.to_string(), Some(&session)).await;
    assert_eq!(ws_json(&mut ws).await, json!({"results": {"A": 0, "B": 0}}));

    // A vote over HTTP by someone else shows up.
    let other = user(&app, "kim").await;
    assert_eq!(
        post(
            &other,
            app.url(&format!("/api/polls/{poll}/vote/")),
            json!({"choice": "B"})
        )
        .await
        .0,
        202
    );
    assert_eq!(ws_json(&mut ws).await, json!({"results": {"A": 0, "B": 1}}));

    // A vote over the socket, then its result; a second one is refused.
    ws.send(Message::Text(json!({"choice": "A"}).to_string().into()))
        .await
        .unwrap();
    assert_eq!(
        ws_until(&mut ws, |m| m.get("vote").is_some()).await,
        json!({"vote": {"choice": "A"}})
    );
    ws_until(&mut ws, |m| m == &json!({"results": {"A": 1, "B": 1}})).await;
    ws.send(Message::Text(json!({"choice": "B"}).to_string().into()))
        .await
        .unwrap();
    let err = ws_until(&mut ws, |m| m.get("error").is_some()).await;
    assert_eq!(
        err,
        json!({"error": "You have already voted on this poll.", "status": 400})
    );
    ws.send(Message::Text(json!({"choice": "Z"}).to_string().into()))
        .await
        .unwrap();
    let err = ws_until(&mut ws, |m| m.get("error").is_some()).await;
    // Unlike the HTTP answer, the socket's error does not repeat the choice it was sent.
    assert_eq!(err["error"], "choice: not a valid choice of this poll.");
    assert_eq!(err["status"], 400);
    // The HTTP side agrees.
    wait_results(&app, &c, poll, json!({"A": 1, "B": 1})).await;

    // Basic on the upgrade request works too.
    let mut req = format!("ws://{}/ws/poll/{poll}", app.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "authorization",
        "Basic a2ltOmNvcnJlY3QtaG9yc2U=".parse().unwrap(),
    ); // kim:correct-horse
    let (mut ws2, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(
        ws_json(&mut ws2).await,
        json!({"results": {"A": 1, "B": 1}})
    );
}

async fn expect_policy_close(ws: &mut Ws) -> String {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("no close within 10 s")
        {
            Some(Ok(Message::Close(Some(frame)))) => {
                assert_eq!(u16::from(frame.code), 1008, "{frame:?}");
                return frame.reason.to_string();
            }
            Some(Ok(Message::Text(t))) => panic!("unexpected message {t}"),
            Some(Ok(_)) => {}
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn websocket_to_an_unknown_poll_or_without_credentials_closes_with_1008() {
    let app = spawn_app().await;
    let c = new_client();
    let session = register(&app, &c, "lea").await;
    for poll in ["9999", "abc"] {
        let mut ws = ws_connect(&app, poll, Some(&session)).await;
        assert_eq!(
            expect_policy_close(&mut ws).await,
            "No Poll matches the given query."
        );
    }
    let poll = seed_poll(&app, &c, &["A", "B"]).await;
    let mut ws = ws_connect(&app, &poll.to_string(), None).await;
    assert_eq!(
        expect_policy_close(&mut ws).await,
        "Authentication credentials were not provided."
    );
    // A plain GET is not a 500.
    let (s, body) = get(&c, app.url(&format!("/ws/poll/{poll}/"))).await;
    assert_eq!(s, 400, "{body}");
}

#[tokio::test]
async fn accounts_sessions_and_votes_survive_a_restart() {
    let app = spawn_app().await;
    let c = new_client();
    let session = register(&app, &c, "max").await;
    let poll = seed_poll(&app, &c, &["A", "B"]).await;
    assert_eq!(
        post(
            &c,
            app.url(&format!("/api/polls/{poll}/vote/")),
            json!({"choice": "A"})
        )
        .await
        .0,
        202
    );
    wait_results(&app, &c, poll, json!({"A": 1, "B": 0})).await;
    let data = app.stop().await;

    let app = spawn_app_in(data, |_| {}).await;
    // The old cookie still logs in (the new server has a new port, so send it by hand).
    let fresh = new_client();
    let with_cookie =
        |req: reqwest::RequestBuilder| req.header("cookie", format!("sessionid={session}"));
    let (s, body) = json_of(
        with_cookie(fresh.post(app.url(&format!("/api/polls/{poll}/vote/"))))
            .json(&json!({"choice": "B"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (s, body),
        (
            400,
            json!({"detail": "You have already voted on this poll."})
        )
    );
    let (s, body) = json_of(
        with_cookie(fresh.get(app.url(&format!("/api/polls/{poll}/results/"))))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((s, body), (200, json!({"A": 1, "B": 0})));
    // Basic still verifies, the username is still taken, and ids go on.
    let (s, _) = json_of(
        fresh
            .get(app.url(&format!("/api/polls/{poll}/results/")))
            .basic_auth("max", Some(PASSWORD))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 200);
    let (s, body) = post(
        &fresh,
        app.url("/api/register/"),
        json!({"username": "max", "email": "m@example.com", "password": PASSWORD}),
    )
    .await;
    assert_eq!(
        (s, body),
        (
            400,
            json!({"username": ["A user with that username already exists."]})
        )
    );
    let n = user(&app, "ned").await;
    let (_, body) = post(
        &n,
        app.url("/api/polls/"),
        json!({"title": "t", "options": {"a": 0, "b": 0}}),
    )
    .await;
    assert_eq!(body["creator"], 2);
}

#[tokio::test]
async fn aliases_and_paths_without_trailing_slashes() {
    let app = spawn_app().await;
    let c = user(&app, "ola").await;
    let (s, body) = post(
        &c,
        app.url("/polls/"),
        json!({"title": "Alias", "options": {"A": 0, "B": 0}}),
    )
    .await;
    assert_eq!(s, 201, "{body}");
    let poll = body["id"].as_i64().unwrap();
    let (s, body) = post(
        &c,
        app.url("/polls"),
        json!({"title": "No slash", "options": {"A": 0, "B": 0}}),
    )
    .await;
    assert_eq!(s, 201, "{body}");
    let (s, body) = post(&c, app.url("/votes/"), json!({"poll": poll, "choice": "B"})).await;
    assert_eq!((s, body), (202, json!({"poll": poll, "choice": "B"})));
    let (s, body) = post(&c, app.url("/votes"), json!({"poll": poll, "choice": "A"})).await;
    assert_eq!(
        (s, body),
        (
            400,
            json!({"detail": "You have already voted on this poll."})
        )
    );
    assert_eq!(
        post(&c, app.url("/votes/"), json!({"choice": "A"})).await,
        (400, json!({"poll": ["This field is required."]}))
    );
    assert_eq!(
        post(&c, app.url("/votes/"), json!({"poll": 9999, "choice": "A"})).await,
        (
            400,
            json!({"poll": ["Invalid pk \"9999\" - object does not exist."]})
        )
    );
    let d = user(&app, "pia").await;
    let (s, body) = post(
        &d,
        app.url(&format!("/api/polls/{poll}/vote")),
        json!({"choice": "A"}),
    )
    .await;
    assert_eq!((s, body), (202, json!({"choice": "A"})));
    wait_results(&app, &c, poll, json!({"A": 1, "B": 1})).await;
    for path in [
        format!("/polls/{poll}/results/"),
        format!("/polls/{poll}/results"),
        format!("/api/polls/{poll}/results"),
    ] {
        assert_eq!(
            get(&c, app.url(&path)).await,
            (200, json!({"A": 1, "B": 1})),
            "{path}"
        );
    }
    let (s, body) = post(
        &c,
        app.url("/api/register"),
        json!({"username": "quin", "email": "q@example.com", "password": PASSWORD}),
    )
    .await;
    assert_eq!(s, 201, "{body}");
}

#[tokio::test]
async fn concurrent_votes_by_one_user_count_once() {
    let app = spawn_app().await;
    let c = user(&app, "rui").await;
    let poll = seed_poll(&app, &c, &["A", "B"]).await;
    let url = app.url(&format!("/api/polls/{poll}/vote/"));
    let answers = futures::future::join_all((0..20).map(|i| {
        let (c, url) = (c.clone(), url.clone());
        async move {
            post(
                &c,
                url,
                json!({"choice": if i % 2 == 0 { "A" } else { "B" }}),
            )
            .await
        }
    }))
    .await;
    let accepted = answers.iter().filter(|(s, _)| *s == 202).count();
    assert_eq!(accepted, 1, "{answers:?}");
    for (s, body) in answers.iter().filter(|(s, _)| *s != 202) {
        assert_eq!(
            (*s, body),
            (
                400,
                &json!({"detail": "You have already voted on this poll."})
            )
        );
    }
    let choice = answers.iter().find(|(s, _)| *s == 202).unwrap().1["choice"]
        .as_str()
        .unwrap()
        .to_owned();
    let expected = if choice == "A" {
        json!({"A": 1, "B": 0})
    } else {
        json!({"A": 0, "B": 1})
    };
    wait_results(&app, &c, poll, expected.clone()).await;
    // And it stays 1.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        get(&c, app.url(&format!("/api/polls/{poll}/results/"))).await,
        (200, expected)
    );
}

/// On a rolling update the old API's socket, like the `/v1` one, is told the server is going
/// away, so its client reconnects elsewhere at once instead of seeing the connection drop.
#[tokio::test]
async fn the_websocket_is_told_the_node_is_going_away_when_it_stops() {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    let app = spawn_app().await;
    let c = new_client();
    let session = register(&app, &c, "jon").await;
    let poll = seed_poll(&app, &c, &["A", "B"]).await;
    let mut ws = ws_connect(&app, &poll.to_string(), Some(&session)).await;
    assert_eq!(ws_json(&mut ws).await, json!({"results": {"A": 0, "B": 0}}));
    let stopping = tokio::spawn(app.stop());
    let frame = close_frame(
        &mut ws,
        tokio::time::Instant::now() + Duration::from_secs(5),
    )
    .await
    .expect("a close code");
    assert_eq!(frame.code, CloseCode::Away);
    assert_eq!(frame.reason, "The server is going away; reconnect.");
    // The node waits for the client's answer, then its stop ends.
    the_stop_waits_for_the_client(&mut ws, stopping, "the socket").await;
}

/// A client that has stopped reading when the node stops does not hold the stop up: its socket is
/// let go a second after the stop, not once `realtime.send_timeout_ms` or the stop's grace runs
/// out.
#[tokio::test]
async fn a_stalled_websocket_does_not_hold_up_the_nodes_stop() {
    let app = spawn_app_with(|c| c.realtime.send_timeout_ms = 60_000).await;
    let session = register(&app, &new_client(), "jon").await;
    let poll = big_poll(&app).await;
    // A client that takes little at a time, and reads nothing after the handshake.
    let stream = small_window(&app).await;
    let mut req = format!("ws://{}/ws/poll/{poll}/", app.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("cookie", format!("sessionid={session}").parse().unwrap());
    let (_stalled, _) = tokio_tungstenite::client_async(req, stream).await.unwrap();
    let voting = keep_voting(&app, poll);
    tokio::time::sleep(Duration::from_secs(3)).await;
    for v in voting {
        v.abort();
    }
    let started = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(10), app.stop())
        .await
        .expect("the node did not stop");
    // A second for the socket's close, against the 3 s the node gives its sockets in all.
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(2500),
        "the node's stop waited {took:?} for a socket whose client does not read"
    );
}
