//! Spawning servers for tests, and a small HTTP client.

use crowdtick::Config;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::Duration;
use tempfile::TempDir;

pub const KEY: &str = "dev-operator-key";
/// The default configuration's aggregator key (batches need one).
pub const AGG_KEY: &str = "dev-aggregator-key";

/// A free loopback port (for a server the test starts as a child process).
/// A client that keeps cookies (an old-API session, an operator session), with a 20 s timeout.
pub fn cookie_client() -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(true)
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits up to 30 s for `{base}/healthz` to answer 200.
pub async fn wait_healthy(client: &reqwest::Client, base: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if client
            .get(format!("{base}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{base}/healthz never answered 200"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// `GET {base}/readyz`: the status and the failing checks' names.
pub async fn readiness(client: &reqwest::Client, base: &str) -> (u16, Vec<String>, Value) {
    let r = client.get(format!("{base}/readyz")).send().await.unwrap();
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap();
    let failing = body["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["ok"] == false)
        .map(|c| c["name"].as_str().unwrap().to_owned())
        .collect();
    (status, failing, body)
}

/// Waits up to `secs` for `{base}/readyz` to answer 200; returns its checks' names.
pub async fn wait_ready(client: &reqwest::Client, base: &str, secs: u64) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let (status, _, body) = readiness(client, base).await;
        if status == 200 {
            return body["checks"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["name"].as_str().unwrap().to_owned())
                .collect();
        }
        assert_eq!(status, 503, "{body}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "{base}/readyz still not ready after {secs} s: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A server running in this process on a free port, on its own data directory.
pub struct TestApp {
    pub addr: SocketAddr,
    pub base: String,
    pub client: reqwest::Client,
    pub data: TempDir,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<()>>,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(configure: impl FnOnce(&mut Config)) -> TestApp {
    let data = tempfile::tempdir().unwrap();
    spawn_app_in(data, configure).await
}

pub async fn spawn_app_in(data: TempDir, configure: impl FnOnce(&mut Config)) -> TestApp {
    let mut config = Config {
        data_dir: data.path().to_path_buf(),
        ..Config::default()
    };
    config.log.partitions = 4;
    config.realtime.coalesce_ms = 20;
    config.processor.flush_interval_ms = 10;
    config.ingest.deadline_ms = 1_000;
    configure(&mut config);
    let listener = edge::listener::bind("127.0.0.1:0", config.http.listen_backlog)
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(async move {
        crowdtick::serve::run(listener, config, async move {
            let _ = rx.await;
        })
        .await
        .expect("server failed");
    });
    let client = reqwest::Client::builder()
        .cookie_store(true)
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let app = TestApp {
        addr,
        base: format!("http://{addr}"),
        client,
        data,
        shutdown: Some(tx),
        handle: Some(handle),
    };
    app.wait_healthy().await;
    app
}

impl TestApp {
    pub async fn wait_healthy(&self) {
        wait_healthy(&self.client, &self.base).await
    }

    /// Stops the server gracefully and hands back its data directory.
    pub async fn stop(mut self) -> TempDir {
        let _ = self.shutdown.take().unwrap().send(());
        self.handle.take().unwrap().await.unwrap();
        let data = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self.data, data)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A request; answers (status, JSON body or Null).
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        operator: bool,
    ) -> (u16, Value) {
        let mut req = self.client.request(method.parse().unwrap(), self.url(path));
        if path.starts_with("/v1/votes/batch") {
            req = req.bearer_auth(AGG_KEY);
        } else if operator {
            req = req.bearer_auth(KEY);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Creates an open poll with the given options; returns its id.
    pub async fn open_poll(&self, options: &[&str]) -> i64 {
        let (status, body) = self
            .call(
                "POST",
                "/v1/polls",
                Some(json!({"title": "Test poll", "options": options, "open": true})),
                true,
            )
            .await;
        assert_eq!(status, 201, "{body}");
        body["id"].as_i64().unwrap()
    }

    pub async fn vote(&self, poll: i64, option: i64, voter: &str) -> (u16, Value) {
        self.call(
            "POST",
            "/v1/votes",
            Some(json!({"poll_id": poll, "option_id": option, "voter_id": voter})),
            false,
        )
        .await
    }

    /// The value of a metric without labels in `GET /metrics` (panics if it is not exported).
    pub async fn metric(&self, name: &str) -> u64 {
        metric_at(&self.client, &self.base, name).await
    }

    pub async fn results(&self, poll: i64) -> Value {
        let (status, body) = self
            .call("GET", &format!("/v1/polls/{poll}/results"), None, true)
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Waits until a poll's counts equal `expected` (or panics after `secs`).
    pub async fn wait_counts(&self, poll: i64, expected: &[i64], secs: u64) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let r = self.results(poll).await;
            let counts: Vec<i64> = r["counts"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c.as_i64().unwrap())
                .collect();
            if counts == expected {
                return r;
            }
            if tokio::time::Instant::now() > deadline {
                // What the node says of itself, for the failure message.
                let (_, _, ready) = readiness(&self.client, &self.base).await;
                let metrics = self.client.get(self.url("/metrics")).send().await;
                let metrics = match metrics {
                    Ok(r) => r.text().await.unwrap_or_default(),
                    Err(e) => e.to_string(),
                };
                let processor: Vec<&str> = metrics
                    .lines()
                    .filter(|l| {
                        l.starts_with("crowdtick_processor_") || l.starts_with("crowdtick_log_")
                    })
                    .collect();
                panic!(
                    "poll {poll}: counts {counts:?}, expected {expected:?}\n/readyz: {ready}\n{}",
                    processor.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Creates an open poll with `visibility`; returns its id.
pub async fn poll_with(app: &TestApp, visibility: &str, options: &[&str]) -> i64 {
    let (status, body) = app
        .call(
            "POST",
            "/v1/polls",
            Some(json!({"title": "Who stays?", "options": options, "open": true, "visibility": visibility})),
            true,
        )
        .await;
    assert_eq!(status, 201, "{body}");
    body["id"].as_i64().unwrap()
}

/// The value of a metric without labels in `GET {base}/metrics` (panics if it is not exported).
pub async fn metric_at(client: &reqwest::Client, base: &str, name: &str) -> u64 {
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("{name} is not exported"))
        .parse()
        .unwrap()
}

/// The next close frame on `ws` (`None`: a close without one), skipping other messages; panics
/// when the connection ends or errs first, or at `deadline`.
pub async fn close_frame<S>(
    ws: &mut tokio_tungstenite::WebSocketStream<S>,
    deadline: tokio::time::Instant,
) -> Option<tokio_tungstenite::tungstenite::protocol::CloseFrame>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => return frame,
            Ok(Some(Ok(_))) => {}
            other => panic!("no close frame: {other:?}"),
        }
    }
}

/// The code of the next close frame on `ws` (`None`: a close without one); as [`close_frame`].
pub async fn close_code<S>(
    ws: &mut tokio_tungstenite::WebSocketStream<S>,
    deadline: tokio::time::Instant,
) -> Option<tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    close_frame(ws, deadline).await.map(|f| f.code)
}

/// After a stopping node's close frame on `ws`: the node's stop (`stopping`) still waits for
/// `who` half a second on, and ends within 5 s once the client answers the close (tungstenite
/// answers as the socket is read on).
pub async fn the_stop_waits_for_the_client<S, T>(
    ws: &mut tokio_tungstenite::WebSocketStream<S>,
    stopping: tokio::task::JoinHandle<T>,
    who: &str,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures::StreamExt;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!stopping.is_finished(), "the node did not wait for {who}");
    while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {}
    tokio::time::timeout(Duration::from_secs(5), stopping)
        .await
        .unwrap_or_else(|_| panic!("the node's stop waited for {who}"))
        .unwrap();
}

/// A poll with big messages (64 options of 200 characters: ~17 KB each on `/v1`, ~13 KB on the
/// old API's socket), so a few fill the buffers.
pub async fn big_poll(app: &TestApp) -> i64 {
    let labels: Vec<String> = (0..64)
        .map(|i| format!("{i:02}{}", "x".repeat(198)))
        .collect();
    let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
    app.open_poll(&labels).await
}

/// Votes from four senders until aborted: the results change in every coalescing period.
pub fn keep_voting(app: &TestApp, poll: i64) -> Vec<tokio::task::JoinHandle<()>> {
    (0..4)
        .map(|lane| {
            let (client, url) = (app.client.clone(), app.url("/v1/votes"));
            tokio::spawn(async move {
                for i in 0.. {
                    let _ = client
                        .post(&url)
                        .json(&json!({"poll_id": poll, "option_id": i % 64, "voter_id": format!("s{lane}-{i}")}))
                        .send()
                        .await;
                }
            })
        })
        .collect()
}

/// A socket that takes little at a time (a 4 KiB receive buffer), connected to `app`.
pub async fn small_window(app: &TestApp) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(app.addr).await.unwrap()
}

/// CPU time (user + system) a process has spent, in clock ticks (USER_HZ, 1/100 s on Linux);
/// a zombie not yet waited for still has its own.
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = format!("/proc/{pid}/stat");
    stat_ticks(std::path::Path::new(&stat)).unwrap_or_else(|| panic!("no CPU time in {stat}"))
}

/// The user + system clock ticks in a process's or a thread's `stat` file under /proc (None
/// once it is gone).
pub fn stat_ticks(stat: &std::path::Path) -> Option<u64> {
    let stat = std::fs::read_to_string(stat).ok()?;
    // The fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.rsplit(')').next()?.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// The whole machine's clock ticks so far, (busy, all), from the first line of /proc/stat.
pub fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Option<Vec<u64>> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|t| t.parse().ok())
        .collect();
    let ticks = ticks
        .filter(|t| t.len() == 8)
        .expect("/proc/stat's first line has 8 counts of clock ticks");
    let all: u64 = ticks.iter().sum();
    // user nice system idle iowait irq softirq steal (guest time is in user's): idle and iowait
    // are not busy.
    (all - ticks[3] - ticks[4], all)
}

/// A histogram of `GET /metrics` (summed over the nodes it was read from): its cumulative
/// buckets by upper bound (`+Inf` last), its sum and its count.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScrapedHistogram {
    pub buckets: Vec<(f64, u64)>,
    pub sum: f64,
    pub count: u64,
}

impl ScrapedHistogram {
    /// The histogram `name` (without labels) in `GET {base}/metrics`, added to this one (empty if
    /// the node does not export it).
    pub async fn add_from(&mut self, client: &reqwest::Client, base: &str, name: &str) {
        let Ok(r) = client.get(format!("{base}/metrics")).send().await else {
            return;
        };
        let text = r.text().await.unwrap_or_default();
        let mut at = 0;
        for line in text.lines() {
            let Some((key, value)) = line.rsplit_once(' ') else {
                continue;
            };
            if let Some(le) = key
                .strip_prefix(&format!("{name}_bucket{{le=\""))
                .and_then(|l| l.strip_suffix("\"}"))
            {
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap()
                };
                let n: u64 = value.parse().unwrap();
                match self.buckets.get_mut(at) {
                    Some(b) => {
                        assert_eq!(b.0, le, "{name}: nodes with other buckets");
                        b.1 += n
                    }
                    None => self.buckets.push((le, n)),
                }
                at += 1;
            } else if key == format!("{name}_sum") {
                self.sum += value.parse::<f64>().unwrap();
            } else if key == format!("{name}_count") {
                self.count += value.parse::<u64>().unwrap();
            }
        }
    }

    /// What was observed since `before` (an earlier reading of the same nodes).
    pub fn since(&self, before: &Self) -> Self {
        let old = |i: usize| {
            before.buckets.get(i).map_or(0, |b| {
                assert_eq!(b.0, self.buckets[i].0, "readings with other buckets");
                b.1
            })
        };
        Self {
            buckets: (self.buckets.iter().enumerate())
                .map(|(i, &(le, n))| (le, n.saturating_sub(old(i))))
                .collect(),
            sum: self.sum - before.sum,
            count: self.count.saturating_sub(before.count),
        }
    }

    /// The `q` quantile in seconds, interpolated within its bucket as Prometheus'
    /// `histogram_quantile` does (the last finite bound when it falls in `+Inf`; `None` when
    /// nothing was observed).
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.buckets.last()?.1;
        if total == 0 {
            return None;
        }
        let rank = q * total as f64;
        let (mut lower, mut below) = (0.0, 0);
        for &(le, n) in &self.buckets {
            if n as f64 >= rank {
                if le.is_infinite() {
                    return Some(lower);
                }
                let within = (rank - below as f64) / (n - below).max(1) as f64;
                return Some(lower + (le - lower) * within);
            }
            (lower, below) = (le, n);
        }
        Some(lower)
    }

    pub fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum / self.count as f64)
    }
}

#[test]
fn a_scraped_histograms_quantiles_interpolate_within_their_bucket() {
    let h = ScrapedHistogram {
        buckets: vec![(0.1, 50), (0.2, 90), (0.5, 100), (f64::INFINITY, 100)],
        sum: 12.0,
        count: 100,
    };
    assert!((h.quantile(0.5).unwrap() - 0.1).abs() < 1e-9);
    assert!((h.quantile(0.7).unwrap() - 0.15).abs() < 1e-9);
    assert!((h.quantile(0.99).unwrap() - 0.47).abs() < 1e-9);
    let before = ScrapedHistogram {
        buckets: vec![(0.1, 50), (0.2, 50), (0.5, 50), (f64::INFINITY, 50)],
        sum: 2.0,
        count: 50,
    };
    let later = h.since(&before);
    assert_eq!(later.buckets[0], (0.1, 0));
    assert_eq!(later.count, 50);
    assert!((later.quantile(0.8).unwrap() - 0.2).abs() < 1e-9);
    assert!((later.mean().unwrap() - 0.2).abs() < 1e-9);
    assert_eq!(ScrapedHistogram::default().quantile(0.5), None);
}
