//! Browser end-to-end test of the web UI: a real `crowdtick serve` process, headless Chromium driven
//! over WebDriver (chromedriver + fantoccini).
//!
//! The results screen (`/screen/{id}`) and the voter page (`/p/{slug}`) are open in two windows; a
//! click on an option must give a receipt on the phone and move the TV's bar and total to 1 within
//! a few seconds; the operator console (`/`) then takes the key, shows the live counts and closes
//! the poll, and the screen must show FINAL.
//!
//! Needs `/usr/bin/chromium` and `/usr/bin/chromedriver` (Debian: `apt-get install chromium
//! chromium-driver`); the test fails, never skips, without them.
//!
//! - `CROWDTICK_TEST_SCREENSHOTS=1` also writes `docs/screenshot-screen.png`, `docs/screenshot-vote.png`
//!   and `docs/screenshot-console.png` (after some extra generated votes, so the charts have data).
//! - `CROWDTICK_TEST_E2E_BASE=http://127.0.0.1:PORT` runs against an already running server instead of
//!   starting one (handy while working on the pages).

use crate::helpers::{free_port, wait_healthy};
use fantoccini::{Client, ClientBuilder, Locator};
use futures::FutureExt;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const KEY: &str = "dev-operator-key";

/// A child process killed (and reaped) when dropped, also when the test panics.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn require_browser() {
    for (path, what) in [(CHROMIUM, "Chromium"), (CHROMEDRIVER, "chromedriver")] {
        assert!(
            Path::new(path).exists(),
            "{path} ({what}) is missing: the browser end-to-end test needs Chromium and its \
             WebDriver. Install them with `apt-get install chromium chromium-driver` \
             (Debian packages) and run the test again."
        );
    }
}

/// Starts `crowdtick serve` on a free loopback port; answers the child and `http://127.0.0.1:PORT`.
fn start_server(data_dir: &Path) -> (KillOnDrop, String) {
    let log = std::fs::File::create(data_dir.with_extension("log")).expect("server log file");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_crowdtick"));
    // The server reads its configuration from CROWDTICK_* variables and refuses unknown ones, so
    // the test's own switches (CROWDTICK_TEST_SCREENSHOTS, …) and the caller's settings stay out.
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("CROWDTICK_") {
            cmd.env_remove(name);
        }
    }
    let mut child = cmd
        .arg("serve")
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--listen", "127.0.0.1:0"])
        .env("CROWDTICK_OPERATOR_KEYS", format!("[\"{KEY}\"]"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .spawn()
        .expect("cannot start the crowdtick binary");
    let stdout = child.stdout.take().unwrap();
    let guard = KillOnDrop(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // Keep draining stdout after the line we need so the server never blocks on a full pipe.
        let mut tx = Some(tx);
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(rest) = line.trim().strip_prefix("listening on ") {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(rest.trim().to_owned());
                }
            }
        }
    });
    let base = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|e| {
        let log = std::fs::read_to_string(data_dir.with_extension("log")).unwrap_or_default();
        let why = match e {
            std::sync::mpsc::RecvTimeoutError::Timeout => "did not print it within 60 s",
            std::sync::mpsc::RecvTimeoutError::Disconnected => "exited before printing it",
        };
        panic!("`crowdtick serve` {why} (`listening on http://…` expected on stdout); its log:\n{log}")
    });
    assert!(
        base.starts_with("http://127.0.0.1:"),
        "unexpected listen address {base:?}"
    );
    (guard, base)
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// Starts chromedriver on a free port and waits until it is ready.
async fn start_chromedriver(http: &reqwest::Client) -> (KillOnDrop, String) {
    let port = free_port();
    let child = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("cannot start chromedriver");
    let guard = KillOnDrop(child);
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = http.get(format!("{url}/status")).send().await {
            if r.status().is_success() {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "chromedriver did not become ready on {url}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (guard, url)
}

async fn start_browser(webdriver: &str, profile: &Path) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert("browserName".into(), json!("chrome"));
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": CHROMIUM,
            "args": [
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-proxy-server",
                "--hide-scrollbars",
                "--window-size=1920,1080",
                format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(webdriver)
        .await
        .expect("cannot start a headless Chromium session through chromedriver")
}

/// Runs `probe` (JavaScript returning a value) until `ok` accepts its answer; panics with `what`
/// and the last answer after `timeout`.
async fn wait_js(
    c: &Client,
    what: &str,
    timeout: Duration,
    probe: &str,
    ok: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match c.execute(probe, vec![]).await {
            Ok(v) if ok(&v) => return v,
            Ok(v) => v,
            Err(e) => json!(format!("script error: {e}")),
        };
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}; last state: {last}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn api(
    http: &reqwest::Client,
    base: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let key = if path.starts_with("/v1/votes/batch") {
        crate::helpers::AGG_KEY
    } else {
        KEY
    };
    let mut req = http
        .request(method, format!("{base}{path}"))
        .bearer_auth(key);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req.send().await.expect("API request failed");
    let status = res.status().as_u16();
    let text = res.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn docs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("docs")
}

/// Resizes the current window so that its viewport (what a screenshot shows) is `w`×`h`.
async fn set_viewport(c: &Client, w: u32, h: u32) {
    c.set_window_size(w, h).await.unwrap();
    let inner = c
        .execute("return [window.innerWidth, window.innerHeight]", vec![])
        .await
        .unwrap();
    let (iw, ih) = (
        inner[0].as_u64().unwrap_or(w as u64),
        inner[1].as_u64().unwrap_or(h as u64),
    );
    let (dw, dh) = ((w as u64).saturating_sub(iw), (h as u64).saturating_sub(ih));
    if dw > 0 || dh > 0 {
        c.set_window_size(w + dw as u32, h + dh as u32)
            .await
            .unwrap();
    }
}

async fn screenshot(c: &Client, name: &str) {
    let png = c.screenshot().await.expect("screenshot");
    let path = docs_dir().join(name);
    std::fs::write(&path, png).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    eprintln!("wrote {}", path.display());
}

/// Extra votes (some duplicates, one invalid) spread over a few seconds, so the screenshots show
/// a moving votes/s chart and a non-empty rejection accounting.
async fn generate_votes(http: &reqwest::Client, base: &str, poll_id: u64) {
    let mut n = 0u64;
    for round in 0..12u64 {
        let size = 20 + (round * 37) % 90;
        let votes: Vec<Value> = (0..size)
            .map(|i| {
                n += 1;
                let option = match (n * 7919 + i) % 10 {
                    0..=4 => 0,
                    5..=7 => 1,
                    _ => 2,
                };
                json!({"poll_id": poll_id, "option_id": option, "voter_id": format!("gen-{n}")})
            })
            .chain((0..3).map(|d| {
                json!({"poll_id": poll_id, "option_id": 1, "voter_id": format!("gen-{}", d + 1)})
            }))
            .chain(std::iter::once(
                json!({"poll_id": poll_id, "option_id": 9, "voter_id": "gen-invalid"}),
            ))
            .collect();
        let (status, body) = api(
            http,
            base,
            reqwest::Method::POST,
            "/v1/votes/batch",
            Some(json!({ "votes": votes })),
        )
        .await;
        assert_eq!(status, 200, "batch of votes: {body}");
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_vote_moves_the_results_screen() {
    require_browser();
    let screenshots = std::env::var("CROWDTICK_TEST_SCREENSHOTS").is_ok_and(|v| v == "1");
    let tmp = tempfile::tempdir().unwrap();
    let http = http();

    let external = std::env::var("CROWDTICK_TEST_E2E_BASE")
        .ok()
        .filter(|s| !s.is_empty());
    let (server, base) = match external {
        Some(base) => (None, base.trim_end_matches('/').to_owned()),
        None => {
            let (guard, base) = start_server(&tmp.path().join("data"));
            (Some(guard), base)
        }
    };
    wait_healthy(&http, &base).await;

    // A poll, created through the API.
    let (status, poll) = api(
        &http,
        &base,
        reqwest::Method::POST,
        "/v1/polls",
        Some(json!({
            "title": "Who should stay in the house?",
            "options": ["Ana", "Bruno", "Carla"],
            "max_choices": 1,
            "visibility": "live",
            "open": true,
        })),
    )
    .await;
    assert_eq!(status, 201, "create poll: {poll}");
    let poll_id = poll["id"].as_u64().expect("poll id");
    let slug = poll["slug"].as_str().expect("poll slug").to_owned();

    let (_driver, webdriver) = start_chromedriver(&http).await;
    let profile = tempfile::tempdir().unwrap();
    let client = start_browser(&webdriver, profile.path()).await;

    let outcome = AssertUnwindSafe(scenario(&client, &http, &base, poll_id, &slug, screenshots))
        .catch_unwind()
        .await;
    // Always end the browser session (chromedriver then stops Chromium), then report.
    let _ = client.close().await;
    if let Err(panic) = outcome {
        if let Some(log) = server.as_ref().map(|_| tmp.path().join("data.log")) {
            if let Ok(text) = std::fs::read_to_string(&log) {
                let tail: Vec<&str> = text.lines().rev().take(30).collect();
                eprintln!("--- last lines of the server log ---");
                for l in tail.into_iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
        std::panic::resume_unwind(panic);
    }
}

async fn scenario(
    c: &Client,
    http: &reqwest::Client,
    base: &str,
    poll_id: u64,
    slug: &str,
    screenshots: bool,
) {
    let secs = Duration::from_secs;

    // ---- The results screen (TV), in the first window.
    let screen = c.window().await.unwrap();
    c.set_window_size(1920, 1080).await.unwrap();
    c.goto(&format!("{base}/screen/{poll_id}")).await.unwrap();
    wait_js(
        c,
        "the results screen to show the poll with three bars at 0, connected live",
        secs(20),
        r#"const bars = [...document.querySelectorAll('#bars li[data-option-id]')];
           const conn = document.querySelector('#conn');
           return {
             title: document.querySelector('#poll-title').textContent,
             bars: bars.map(b => [b.dataset.optionId, b.dataset.votes]),
             total: document.querySelector('#total-votes').dataset.total,
             conn: conn && conn.dataset.state,
           };"#,
        |v| {
            v["title"] == "Who should stay in the house?"
                && v["bars"] == json!([["0", "0"], ["1", "0"], ["2", "0"]])
                && v["total"] == "0"
                && v["conn"] == "live"
        },
    )
    .await;
    let state = c
        .find(Locator::Css("#state-badge"))
        .await
        .unwrap()
        .attr("data-state")
        .await
        .unwrap();
    assert_eq!(state.as_deref(), Some("open"));
    assert!(
        !c.find(Locator::Css("#final-badge"))
            .await
            .unwrap()
            .is_displayed()
            .await
            .unwrap(),
        "FINAL must not show while the poll is open"
    );

    // ---- A browser's own EventSource on the stream: Chromium takes the framing of the path
    // without hyper (edge/src/listener/event_stream.rs). One after another, each closed after its
    // first event (which ends its connection): once the page's idle connections are used up, the
    // rest open connections of their own, which that path serves.
    let served_before =
        crate::helpers::metric_at(http, base, "crowdtick_http_event_streams_total").await;
    for round in 0..10 {
        let first = c
            .execute_async(
                r#"const [url, done] = arguments;
                   const es = new EventSource(url);
                   es.addEventListener('results', e => { es.close(); done(e.data); });
                   es.onerror = () => { es.close(); done('error'); };"#,
                vec![json!(format!("{base}/v1/polls/{poll_id}/sse"))],
            )
            .await
            .unwrap();
        let first: Value = serde_json::from_str(first.as_str().unwrap())
            .unwrap_or_else(|e| panic!("EventSource {round} got {first}: {e}"));
        assert_eq!(first["poll_id"], json!(poll_id), "{first}");
        assert_eq!(first["total_votes"], 0, "{first}");
    }
    let served = crate::helpers::metric_at(http, base, "crowdtick_http_event_streams_total").await
        - served_before;
    assert!(served >= 1, "no EventSource reached the path without hyper");

    // ---- The voter page (phone), in a second window.
    let phone = c.new_window(false).await.unwrap().handle;
    c.switch_to_window(phone.clone()).await.unwrap();
    c.set_window_size(390, 844).await.unwrap();
    c.goto(&format!("{base}/p/{slug}")).await.unwrap();
    wait_js(
        c,
        "the voter page to show the poll with enabled option buttons",
        secs(20),
        r#"const b = [...document.querySelectorAll('#options button[data-option-id]')];
           return {title: document.querySelector('#poll-title').textContent,
                   buttons: b.map(x => [x.textContent.trim(), x.disabled])};"#,
        |v| {
            v["title"] == "Who should stay in the house?"
                && v["buttons"] == json!([["Ana", false], ["Bruno", false], ["Carla", false]])
        },
    )
    .await;
    let voter_id = c
        .execute("return localStorage.getItem('crowdtick.voter_id')", vec![])
        .await
        .unwrap();
    assert!(
        voter_id.as_str().is_some_and(|s| !s.is_empty()),
        "the voter page keeps a voter id in localStorage, got {voter_id}"
    );

    c.find(Locator::Css("#options button[data-option-id='1']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let receipt = wait_js(
        c,
        "the receipt after the vote",
        secs(15),
        r#"const r = document.querySelector('#receipt');
           const err = document.querySelector('#vote-error');
           return {shown: !!r && !r.hidden && r.offsetParent !== null,
                   text: r ? r.innerText : '',
                   vote_id: document.querySelector('#receipt-vote-id').textContent,
                   error: err && !err.hidden ? err.textContent : null};"#,
        |v| {
            assert!(
                v["error"].is_null(),
                "the vote was rejected: {}",
                v["error"]
            );
            v["shown"] == true && v["vote_id"].as_str().is_some_and(|s| !s.is_empty())
        },
    )
    .await;
    let text = receipt["text"].as_str().unwrap();
    assert!(
        text.contains("Bruno"),
        "the receipt names the choice: {text}"
    );
    assert!(
        text.contains("counted once") && text.contains("a second vote is not counted"),
        "the receipt explains the one-vote rule: {text}"
    );
    // After the vote the buttons are locked.
    let disabled = c
        .execute(
            "return [...document.querySelectorAll('#options button')].every(b => b.disabled)",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        disabled,
        json!(true),
        "option buttons are disabled after voting"
    );

    // ---- Back on the TV: Bruno's bar and the total read 1 within a few seconds.
    c.switch_to_window(screen.clone()).await.unwrap();
    wait_js(
        c,
        "the results screen to count the vote (Bruno 1, total 1)",
        secs(10),
        r#"const b = id => document.querySelector(`#bars li[data-option-id="${id}"]`);
           return {bruno: b(1).dataset.votes, ana: b(0).dataset.votes,
                   bruno_text: b(1).querySelector('.bar-count').textContent,
                   pct: b(1).querySelector('.bar-pct').textContent,
                   total: document.querySelector('#total-votes').dataset.total,
                   total_text: document.querySelector('#total-votes').textContent};"#,
        |v| {
            v["bruno"] == "1"
                && v["ana"] == "0"
                && v["bruno_text"] == "1"
                && v["pct"] == "100.0%"
                && v["total"] == "1"
                && v["total_text"] == "1"
        },
    )
    .await;
    // The API agrees.
    let (_, results) = api(
        http,
        base,
        reqwest::Method::GET,
        &format!("/v1/polls/{poll_id}/results"),
        None,
    )
    .await;
    assert_eq!(results["counts"], json!([0, 1, 0]), "{results}");

    // The phone shows the live results too.
    c.switch_to_window(phone.clone()).await.unwrap();
    wait_js(
        c,
        "the voter page's live results to show the vote",
        secs(10),
        r#"return document.querySelector('#total-votes').dataset.total"#,
        |v| v == "1",
    )
    .await;

    // ---- The operator console, in a third window.
    let console = c.new_window(false).await.unwrap().handle;
    c.switch_to_window(console.clone()).await.unwrap();
    c.set_window_size(1440, 1000).await.unwrap();
    c.goto(&format!("{base}/")).await.unwrap();
    let key_input = c
        .wait()
        .for_element(Locator::Css("#key-input"))
        .await
        .unwrap();
    assert!(
        key_input.is_displayed().await.unwrap(),
        "the console asks for the operator key first"
    );
    key_input.send_keys(KEY).await.unwrap();
    c.find(Locator::Css("#key-form button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let card = format!("article.poll-card[data-poll-id='{poll_id}']");
    wait_js(
        c,
        "the console to list the poll as open with its live count (1) and links",
        secs(15),
        &format!(
            r#"const card = document.querySelector("{card}");
               if (!card) return null;
               return {{state: card.dataset.state,
                        total: card.querySelector('.live-total').dataset.total,
                        qr: card.querySelector('img.qr').getAttribute('src'),
                        link: card.querySelector('.short-link').value,
                        rejections: card.querySelectorAll('table.rej tr').length,
                        stored_key: localStorage.getItem('crowdtick.operator_key'),
                        readable_cookies: document.cookie,
                        signed_in: document.querySelector('#key-status').dataset.valid}};"#
        ),
        |v| {
            v["state"] == "open"
                && v["total"] == "1"
                && v["qr"] == json!(format!("/qr/{slug}.svg"))
                && v["link"] == json!(format!("{base}/p/{slug}"))
                && v["rejections"].as_u64().unwrap_or(0) > 0
                // Signed in by an HttpOnly session cookie: the key is kept nowhere in the page.
                && v["stored_key"].is_null()
                && v["signed_in"] == "true"
                && !v["readable_cookies"].as_str().unwrap_or("").contains("crowdtick_operator")
        },
    )
    .await;

    if screenshots {
        // Votes keep flowing while the TV is photographed, so its votes/s chart is moving.
        let load = tokio::spawn({
            let (http, base) = (http.clone(), base.to_owned());
            async move { generate_votes(&http, &base, poll_id).await }
        });
        c.switch_to_window(screen.clone()).await.unwrap();
        set_viewport(c, 1920, 1080).await;
        tokio::time::sleep(Duration::from_secs(6)).await;
        screenshot(c, "screenshot-screen.png").await;
        load.await.expect("vote generator");
        c.switch_to_window(phone.clone()).await.unwrap();
        set_viewport(c, 390, 844).await;
        c.execute("window.scrollTo(0, 0)", vec![]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        screenshot(c, "screenshot-vote.png").await;
        c.switch_to_window(console.clone()).await.unwrap();
        set_viewport(c, 1440, 900).await;
        tokio::time::sleep(Duration::from_millis(2500)).await;
        screenshot(c, "screenshot-console.png").await;
    }

    // ---- Close from the console (two clicks: the button asks for confirmation).
    c.switch_to_window(console.clone()).await.unwrap();
    let close = format!("{card} button[data-action='close']");
    c.find(Locator::Css(&close))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    c.find(Locator::Css(&close))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_js(
        c,
        "the console to show the poll closed",
        secs(10),
        &format!(
            r#"const card = document.querySelector("{card}"); return card && card.dataset.state"#
        ),
        |v| v == "closed",
    )
    .await;

    // ---- The TV shows FINAL once every vote before the close is counted.
    c.switch_to_window(screen.clone()).await.unwrap();
    wait_js(
        c,
        "the results screen to show FINAL and the closed state",
        secs(30),
        r#"const f = document.querySelector('#final-badge');
           return {final: !f.hidden && f.offsetParent !== null,
                   state: document.querySelector('#state-badge').dataset.state};"#,
        |v| v["final"] == true && v["state"] == "closed",
    )
    .await;

    // ---- The phone says voting is closed.
    c.switch_to_window(phone).await.unwrap();
    wait_js(
        c,
        "the voter page to show the poll closed",
        secs(10),
        "return document.body.dataset.state",
        |v| v == "closed",
    )
    .await;
}
