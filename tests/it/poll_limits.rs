//! Poll creation and listing under hostile use: the seed API's throttles (poll creation per user
//! and in all, registrations and votes per client address), the poll journal (a torn last line
//! after kill -9, migration of an earlier `polls.json`), and the pages of `GET /v1/polls`.

use crate::helpers::*;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const PASSWORD: &str = "correct-horse";

fn new_client() -> reqwest::Client {
    crate::helpers::cookie_client()
}

/// (status, Retry-After, JSON body).
async fn send(req: reqwest::RequestBuilder) -> (u16, Option<u64>, Value) {
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().parse().unwrap());
    let text = resp.text().await.unwrap();
    (
        status,
        retry_after,
        serde_json::from_str(&text).unwrap_or(Value::Null),
    )
}

async fn register(
    app: &TestApp,
    client: &reqwest::Client,
    name: &str,
) -> (u16, Option<u64>, Value) {
    send(client.post(app.url("/api/register/")).json(
        &json!({"username": name, "email": format!("{name}@example.com"), "password": PASSWORD}),
    ))
    .await
}

/// A logged-in client (its cookie store keeps the session) and its session token.
async fn user(app: &TestApp, name: &str) -> (reqwest::Client, String) {
    let c = new_client();
    let resp = c
        .post(app.url("/api/register/"))
        .json(&json!({"username": name, "email": format!("{name}@example.com"), "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    let cookie = resp.headers()["set-cookie"].to_str().unwrap().to_owned();
    let token = cookie
        .strip_prefix("sessionid=")
        .and_then(|c| c.split(';').next())
        .unwrap()
        .to_owned();
    (c, token)
}

async fn create_seed_poll(app: &TestApp, client: &reqwest::Client) -> (u16, Option<u64>, Value) {
    send(
        client
            .post(app.url("/api/polls/"))
            .json(&json!({"title": "Best pizza", "options": {"Margherita": 0, "Funghi": 0}})),
    )
    .await
}

/// Asserts DRF's throttled answer; answers its wait in seconds.
fn assert_throttled((status, retry_after, body): &(u16, Option<u64>, Value), max_wait: u64) -> u64 {
    assert_eq!(*status, 429, "{body}");
    let wait = retry_after.expect("Retry-After on a 429");
    assert!((1..=max_wait).contains(&wait), "Retry-After {wait}");
    let unit = if wait == 1 { "second" } else { "seconds" };
    assert_eq!(
        *body,
        json!({"detail": format!("Request was throttled. Expected available in {wait} {unit}.")})
    );
    wait
}

#[tokio::test]
async fn seed_poll_creation_is_limited_per_user_and_for_all_users() {
    let app = spawn_app_with(|c| {
        c.seed.polls_per_user_per_minute = 3;
        c.seed.polls_per_minute = 5;
    })
    .await;
    let (a, _) = user(&app, "ana").await;
    let (b, _) = user(&app, "bruno").await;
    let (c, _) = user(&app, "carla").await;

    for _ in 0..3 {
        assert_eq!(create_seed_poll(&app, &a).await.0, 201);
    }
    // Ana's fourth poll within the minute: her own limit (3 a minute: one more in 20 s).
    assert_throttled(&create_seed_poll(&app, &a).await, 20);
    // Ana's refusals took nothing from the global budget of 5: Bruno gets the last two.
    assert_eq!(create_seed_poll(&app, &b).await.0, 201);
    assert_eq!(create_seed_poll(&app, &b).await.0, 201);
    // Then everyone is over the global limit (5 a minute: one more in 12 s), Carla included.
    assert_throttled(&create_seed_poll(&app, &b).await, 12);
    assert_throttled(&create_seed_poll(&app, &c).await, 12);
    // HTTP Basic is the same user as the session: still limited.
    let basic = send(
        reqwest::Client::new()
            .post(app.url("/polls/"))
            .basic_auth("ana", Some(PASSWORD))
            .json(&json!({"title": "t", "options": {"x": 0, "y": 0}})),
    )
    .await;
    assert_throttled(&basic, 20);
    // Exactly five polls exist; the operator API is not limited.
    let (status, list) = app.call("GET", "/v1/polls", None, false).await;
    assert_eq!((status, list["polls"].as_array().unwrap().len()), (200, 5));
    app.open_poll(&["A", "B"]).await;
}

#[tokio::test]
async fn seed_registrations_and_votes_are_limited_per_address_off_loopback_exemption() {
    let app = spawn_app_with(|c| {
        // The test's client is on loopback: make it count like any other address.
        c.seed.limits_exempt_loopback = false;
        c.seed.registrations_per_address_per_minute = 3;
        c.seed.votes_per_address_per_sec = 1;
        c.seed.votes_per_address_burst = 2;
    })
    .await;
    let (a, _) = user(&app, "u1").await;
    let (b, _) = user(&app, "u2").await;
    let (c, session_c) = user(&app, "u3").await;
    // The fourth registration from this address within the minute (one more in 20 s).
    assert_throttled(&register(&app, &new_client(), "u4").await, 20);
    // Refused before the body is read: even a bad body gets the 429.
    assert_throttled(
        &send(new_client().post(app.url("/api/register")).body("not json")).await,
        20,
    );

    let (status, _, poll) = create_seed_poll(&app, &a).await;
    assert_eq!(status, 201);
    let id = poll["id"].as_i64().unwrap();
    // Two votes (the burst), then the third within the second is throttled, on either path.
    let vote = |client: &reqwest::Client| {
        send(
            client
                .post(app.url(&format!("/api/polls/{id}/vote/")))
                .json(&json!({"choice": "Funghi"})),
        )
    };
    assert_eq!(vote(&a).await.0, 202);
    assert_eq!(vote(&b).await.0, 202);
    assert_throttled(&vote(&c).await, 1);
    assert_throttled(
        &send(
            c.post(app.url("/votes/"))
                .json(&json!({"poll": id, "choice": "Funghi"})),
        )
        .await,
        1,
    );
    // The socket's votes share the limit.
    let mut req = format!("ws://{}/ws/poll/{id}/", app.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("cookie", format!("sessionid={session_c}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    ws.send(Message::Text(r#"{"choice": "Funghi"}"#.into()))
        .await
        .unwrap();
    let reply = loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Message::Text(t) = msg {
            let v: Value = serde_json::from_str(t.as_str()).unwrap();
            if v.get("results").is_none() {
                break v;
            }
        }
    };
    assert_eq!(
        reply,
        json!({"error": "Request was throttled. Expected available in 1 second.", "status": 429})
    );
    // A refused vote left no mark: once the limit refills, user 3 votes once.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(vote(&c).await.0, 202);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, _, again) = vote(&c).await;
    assert_eq!(status, 400, "{again}");
    assert!(again["detail"].as_str().unwrap().contains("already voted"));
}

#[tokio::test]
async fn loopback_clients_are_exempt_from_the_address_limits_by_default() {
    let app = spawn_app_with(|c| {
        c.seed.registrations_per_address_per_minute = 1;
        c.seed.votes_per_address_per_sec = 1;
        c.seed.votes_per_address_burst = 1;
    })
    .await;
    let mut clients = Vec::new();
    for i in 0..3 {
        clients.push(user(&app, &format!("lo{i}")).await.0);
    }
    let (status, _, poll) = create_seed_poll(&app, &clients[0]).await;
    assert_eq!(status, 201);
    let id = poll["id"].as_i64().unwrap();
    for c in &clients {
        let (status, _, body) = send(
            c.post(app.url(&format!("/api/polls/{id}/vote/")))
                .json(&json!({"choice": "Margherita"})),
        )
        .await;
        assert_eq!(status, 202, "{body}");
    }
}

// ------------------------------------------------------------------------ the poll journal

fn start_server(data: &Path, port: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_crowdtick"))
        .args(["serve", "--data-dir"])
        .arg(data)
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--partitions",
            "2",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start crowdtick")
}

/// Kills the child however the test ends.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn operator_post(client: &reqwest::Client, url: String, body: Value) -> Value {
    let r = client
        .post(url)
        .bearer_auth(KEY)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    r.json().await.unwrap()
}

#[tokio::test]
async fn the_poll_journal_survives_kill_9_and_a_torn_last_line() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut server = Server(start_server(&data, port));
    wait_healthy(&client, &base).await;
    for i in 0..3 {
        operator_post(
            &client,
            format!("{base}/v1/polls"),
            json!({"title": format!("poll {i}"), "options": ["A", "B"], "open": true}),
        )
        .await;
    }
    let closed = operator_post(&client, format!("{base}/v1/polls/2/close"), json!({})).await;
    let journal = data.join("polls.jsonl");
    // One line per saved version: three creations and one close.
    assert_eq!(
        std::fs::read_to_string(&journal).unwrap().lines().count(),
        4
    );

    // kill -9, and a crash mid-append left half a line behind.
    server.0.kill().unwrap();
    server.0.wait().unwrap();
    let mut bytes = std::fs::read(&journal).unwrap();
    let whole = bytes.len();
    bytes.extend_from_slice(br#"{"id":4,"slug":"zzzzzz","title":"torn","opti"#);
    std::fs::write(&journal, &bytes).unwrap();

    let mut server = Server(start_server(&data, port));
    wait_healthy(&client, &base).await;
    assert_eq!(std::fs::metadata(&journal).unwrap().len() as usize, whole);
    let list: Value = client
        .get(format!("{base}/v1/polls"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<i64> = list["polls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [3, 2, 1]);
    assert_eq!(list["polls"][1]["state"], "closed");
    assert_eq!(list["polls"][1]["closed_at"], closed["closed_at"]);
    // Appends go on after the cut: the next poll is 4, and it is there after another kill -9.
    let four = operator_post(
        &client,
        format!("{base}/v1/polls"),
        json!({"title": "after", "options": ["A", "B"]}),
    )
    .await;
    assert_eq!(four["id"], 4);
    server.0.kill().unwrap();
    server.0.wait().unwrap();
    let _server = Server(start_server(&data, port));
    wait_healthy(&client, &base).await;
    let four_again: Value = client
        .get(format!("{base}/v1/polls/4"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(four_again["title"], "after");
    assert_eq!(four_again["slug"], four["slug"]);
}

#[tokio::test]
async fn an_earlier_polls_json_is_migrated_to_the_journal() {
    let data = tempfile::tempdir().unwrap();
    // The format before the journal: every poll in one pretty-printed JSON array.
    std::fs::write(
        data.path().join("polls.json"),
        serde_json::to_vec_pretty(&json!([
            {"id": 1, "slug": "aaaaaa", "title": "Old one", "options": ["A", "B"], "max_choices": 1,
             "visibility": "live", "opens_at": null, "closes_at": null, "opened_at": 1_700_000_000_000_000i64,
             "closed_at": null, "revealed": false, "created_at": 1_700_000_000_000_000i64, "creator": "operator"},
            {"id": 5, "slug": "bbbbbb", "title": "Old five", "options": ["X", "Y", "Z"], "max_choices": 2,
             "opens_at": null, "closes_at": null, "opened_at": null, "closed_at": null,
             "created_at": 1_700_000_000_000_000i64, "creator": "user:1"}
        ]))
        .unwrap(),
    )
    .unwrap();
    let app = spawn_app_in(data, |_| {}).await;
    let (_, list) = app.call("GET", "/v1/polls", None, false).await;
    let titles: Vec<&str> = list["polls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["title"].as_str().unwrap())
        .collect();
    assert_eq!(titles, ["Old five", "Old one"]);
    let (status, by_slug) = app.call("GET", "/v1/s/bbbbbb", None, false).await;
    assert_eq!((status, by_slug["max_choices"].as_i64()), (200, Some(2)));
    // The old poll takes votes; a new poll gets the next id.
    let (status, body) = app.vote(1, 1, "migrated-voter").await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(app.open_poll(&["P", "Q"]).await, 6);
    let dir = app.data.path().to_path_buf();
    assert!(!dir.join("polls.json").exists());
    assert!(dir.join("polls.json.migrated").exists());
    assert_eq!(
        std::fs::read_to_string(dir.join("polls.jsonl"))
            .unwrap()
            .lines()
            .count(),
        3
    );
    // And after a restart everything is read from the journal alone.
    let data = app.stop().await;
    let app = spawn_app_in(data, |_| {}).await;
    let (_, list) = app.call("GET", "/v1/polls", None, false).await;
    let ids: Vec<i64> = list["polls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [6, 5, 1]);
}

// ------------------------------------------------------------------------ GET /v1/polls pages

fn ids_of(page: &Value) -> Vec<i64> {
    page["polls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_i64().unwrap())
        .collect()
}

#[tokio::test]
async fn the_poll_list_comes_in_pages_that_do_not_shift() {
    let app = spawn_app().await;
    for _ in 0..7 {
        app.open_poll(&["A", "B"]).await;
    }
    let resp = app
        .client
        .get(app.url("/v1/polls?limit=3"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.headers()["link"].to_str().unwrap(),
        r#"</v1/polls?limit=3&after=5>; rel="next""#
    );
    let first: Value = resp.json().await.unwrap();
    assert_eq!(ids_of(&first), [7, 6, 5]);
    assert_eq!(first["next"], "/v1/polls?limit=3&after=5");

    // A poll created between two pages appears on the first page, and moves nothing.
    app.open_poll(&["A", "B"]).await;
    let (_, second) = app
        .call("GET", first["next"].as_str().unwrap(), None, false)
        .await;
    assert_eq!(ids_of(&second), [4, 3, 2]);
    let resp = app
        .client
        .get(app.url(second["next"].as_str().unwrap()))
        .send()
        .await
        .unwrap();
    assert!(
        resp.headers().get("link").is_none(),
        "no next on the last page"
    );
    let last: Value = resp.json().await.unwrap();
    assert_eq!(ids_of(&last), [1]);
    assert_eq!(last["next"], Value::Null);
    let (_, top) = app.call("GET", "/v1/polls?limit=1", None, false).await;
    assert_eq!(ids_of(&top), [8]);
    // Unknown parameters are ignored; without `limit`, one page of up to 100 holds them all.
    let (status, all) = app.call("GET", "/v1/polls?x=1", None, false).await;
    assert_eq!(
        (status, ids_of(&all)),
        (200, (1..=8).rev().collect::<Vec<_>>())
    );
    assert_eq!(all["next"], Value::Null);
    let (_, exact) = app.call("GET", "/v1/polls?limit=8", None, false).await;
    assert_eq!((ids_of(&exact).len(), &exact["next"]), (8, &Value::Null));
}

#[tokio::test]
async fn the_default_page_is_100_polls() {
    let app = spawn_app().await;
    for _ in 0..101 {
        app.open_poll(&["A", "B"]).await;
    }
    let (_, page) = app.call("GET", "/v1/polls", None, false).await;
    assert_eq!(ids_of(&page).len(), 100);
    assert_eq!(ids_of(&page)[0], 101);
    assert_eq!(page["next"], "/v1/polls?limit=100&after=2");
    let (_, rest) = app.call("GET", "/v1/polls?after=2", None, false).await;
    assert_eq!(ids_of(&rest), [1]);
    let (_, max) = app.call("GET", "/v1/polls?limit=1000", None, false).await;
    assert_eq!(ids_of(&max).len(), 101);
}

#[tokio::test]
async fn bad_page_parameters_are_400_json() {
    let app = spawn_app().await;
    app.open_poll(&["A", "B"]).await;
    for (query, code) in [
        ("limit=0", "invalid_limit"),
        ("limit=1001", "invalid_limit"),
        ("limit=-5", "invalid_limit"),
        ("limit=ten", "invalid_limit"),
        ("limit=", "invalid_limit"),
        ("after=0", "invalid_cursor"),
        ("after=-1", "invalid_cursor"),
        ("after=abc", "invalid_cursor"),
        ("after=99999999999999999999999", "invalid_cursor"),
        ("limit=5&after=x", "invalid_cursor"),
    ] {
        let (status, body) = app
            .call("GET", &format!("/v1/polls?{query}"), None, false)
            .await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["error"]["code"], code, "{query}: {body}");
        assert!(body["error"]["message"].as_str().unwrap().len() > 10);
    }
}
