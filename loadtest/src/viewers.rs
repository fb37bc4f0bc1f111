//! Live viewers (`--viewers N`): N WebSocket (or SSE) connections to the run's polls, held open
//! while the votes flow, as an audience's apps would hold them.
//!
//! - The viewers run on a thread and single-threaded runtime of their own, beside the vote lanes,
//!   at a lower priority (`--viewer-nice`, 10 levels by default): they stand in for an audience
//!   on other machines, so on a shared machine they get the cores the server and the votes leave.
//! - Each binds its own loopback source address (127.0.0.2, 127.0.0.3, … `--viewer-sources` of
//!   them) so the client's ephemeral ports do not run out; more viewers than one process can hold
//!   files for are opened by several `crowdtick loadgen --viewers-only` processes
//!   (`scripts/viewers.sh`).
//! - Each results message's `updated_at` (when the server's board took the tally) gives the
//!   viewer's lag: arrival time less `updated_at`, on the same machine's clock. The report has the
//!   lag percentiles over every message every viewer got, the messages per second, the viewers
//!   held at the end, and how fast they were accepted.

use crate::client::{Conn, Target};
use crate::report::{new_histogram, Latency};
use futures::StreamExt;
use hdrhistogram::Histogram;
use hyper::Method;
use memchr::memmem;
use parking_lot::Mutex;
use serde::Serialize;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// How viewers connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// `GET /v1/polls/{id}/ws`
    Ws,
    /// `GET /v1/polls/{id}/sse`, on a connection of its own (as a browser's `EventSource` opens)
    Sse,
    /// `GET /v1/polls/{id}` then `GET /v1/polls/{id}/sse` on the same connection, as a browser
    /// that reuses a kept-alive connection or a proxy with pooled connections asks
    SseKeptAlive,
}

#[derive(Debug, Clone)]
pub struct ViewerOptions {
    pub count: usize,
    pub transport: Transport,
    /// Loopback source addresses to spread the viewers over (127.0.0.`first_source` onwards).
    pub sources: u8,
    pub first_source: u8,
    /// Connection attempts in flight at once while opening.
    pub concurrency: usize,
    /// Nice levels below the process the viewers' thread runs at.
    pub nice: i32,
    pub polls: Vec<i64>,
    pub progress: bool,
}

/// What the viewers measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ViewerReport {
    pub transport: Option<Transport>,
    pub requested: usize,
    /// Viewers open when the run ended.
    pub held: u64,
    /// Viewers that could not connect (refused, 503, handshake failure).
    pub failed: u64,
    /// Viewers the server closed during the run.
    pub closed: u64,
    pub first_error: Option<String>,
    /// Seconds from the first connection attempt until every viewer was open or had failed.
    pub open_secs: f64,
    pub opened_per_sec: f64,
    /// Messages every viewer got together (results and viewer counts), from the end of opening
    /// to the end of the run.
    pub messages: u64,
    pub messages_per_sec: f64,
    /// From `updated_at` to arrival, over every results message of every viewer.
    pub lag: Latency,
    /// The server's resident memory (its `process_resident_memory_bytes`) before the viewers
    /// came and once they were all open, and the difference per viewer held.
    pub server_rss_mib_before: Option<f64>,
    pub server_rss_mib_holding: Option<f64>,
    pub server_kib_per_viewer: Option<f64>,
}

impl ViewerReport {
    pub fn print(&self) {
        println!(
            "viewers ({}): {} requested, {} held at the end, {} failed to open, {} closed by the server; opened in {:.1} s ({:.0}/s)",
            match self.transport {
                Some(Transport::Sse) => "sse",
                Some(Transport::SseKeptAlive) => "sse on kept-alive connections",
                _ => "ws",
            },
            self.requested,
            self.held,
            self.failed,
            self.closed,
            self.open_secs,
            self.opened_per_sec
        );
        if let Some(e) = &self.first_error {
            println!("  first viewer error: {e}");
        }
        if let (Some(before), Some(holding), Some(each)) = (
            self.server_rss_mib_before,
            self.server_rss_mib_holding,
            self.server_kib_per_viewer,
        ) {
            println!(
                "  server RSS: {before:.1} MiB before, {holding:.1} MiB holding them ({each:.1} KiB per viewer)"
            );
        }
        println!(
            "  messages delivered: {} ({:.0}/s); lag from tally to viewer: p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms  (n={})",
            self.messages,
            self.messages_per_sec,
            self.lag.p50_ms,
            self.lag.p99_ms,
            self.lag.max_ms,
            self.lag.count
        );
    }
}

#[derive(Default)]
struct Stats {
    held: AtomicU64,
    failed: AtomicU64,
    closed: AtomicU64,
    messages: AtomicU64,
    first_error: Mutex<Option<String>>,
    lag: Mutex<Option<Histogram<u64>>>,
}

impl Stats {
    fn failed(&self, e: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        self.first_error.lock().get_or_insert(e);
    }

    /// Records a message; its lag if it carries `updated_at`.
    fn message(&self, text: &[u8]) {
        self.messages.fetch_add(1, Ordering::Relaxed);
        if let Some(at) = updated_at(text) {
            let lag = (now_micros() - at).max(1) as u64;
            if let Some(h) = self.lag.lock().as_mut() {
                let _ = h.record(lag);
            }
        }
    }
}

fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or_default()
}

/// `"updated_at":<µs>` in a message, without parsing the rest of it.
pub fn updated_at(text: &[u8]) -> Option<i64> {
    const KEY: &[u8] = b"\"updated_at\":";
    let at = memmem::find(text, KEY)? + KEY.len();
    let digits = text[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&text[at..at + digits])
        .ok()?
        .parse()
        .ok()
}

/// Viewers held open; [`Viewers::finish`] closes them and reports.
pub struct Viewers {
    stats: Arc<Stats>,
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
    requested: usize,
    transport: Transport,
    open_secs: f64,
    /// Messages and time when opening ended (the rate counts from here).
    mark: (u64, Instant),
    /// Server RSS before and holding, and the viewers held then.
    rss: (Option<f64>, Option<f64>, u64),
}

/// The server's `process_resident_memory_bytes`, in MiB.
pub async fn server_rss_mib(target: &Arc<Target>) -> Option<f64> {
    let mut conn = Conn::new(target.clone());
    let (status, body) = conn.json(Method::GET, "/metrics", None, None).await.ok()?;
    if status != 200 {
        return None;
    }
    body.as_str()?
        .lines()
        .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|bytes| bytes / (1024.0 * 1024.0))
}

impl Viewers {
    /// Opens the viewers and returns once each is open or has failed.
    pub async fn open(target: Arc<Target>, opts: ViewerOptions) -> anyhow::Result<Viewers> {
        let target = &target;
        anyhow::ensure!(!opts.polls.is_empty(), "viewers need a poll to watch");
        let rss_before = server_rss_mib(target).await;
        let stats = Arc::new(Stats {
            lag: Mutex::new(Some(new_histogram())),
            ..Default::default()
        });
        let (stop, stop_rx) = watch::channel(false);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let started = Instant::now();
        let thread = {
            let (stats, opts, addr, host) =
                (stats.clone(), opts.clone(), target.addr, target.url.clone());
            std::thread::Builder::new()
                .name("viewers".to_owned())
                .spawn(move || {
                    lower_priority(opts.nice);
                    runtime.block_on(hold(addr, host, opts, stats, stop_rx));
                    runtime.shutdown_background();
                })?
        };
        let mut last_print = Instant::now();
        loop {
            let done = stats.held.load(Ordering::Relaxed)
                + stats.failed.load(Ordering::Relaxed)
                + stats.closed.load(Ordering::Relaxed);
            if done >= opts.count as u64 {
                break;
            }
            if opts.progress && last_print.elapsed() >= Duration::from_secs(1) {
                last_print = Instant::now();
                eprintln!(
                    "viewers: {} of {} open, {} failed ({:.0} s)",
                    stats.held.load(Ordering::Relaxed),
                    opts.count,
                    stats.failed.load(Ordering::Relaxed),
                    started.elapsed().as_secs_f64()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let open_secs = started.elapsed().as_secs_f64();
        if opts.progress {
            eprintln!(
                "viewers: {} open, {} failed, in {open_secs:.1} s",
                stats.held.load(Ordering::Relaxed),
                stats.failed.load(Ordering::Relaxed)
            );
        }
        // The lag of the run counts from here (not the first results each viewer got).
        *stats.lag.lock() = Some(new_histogram());
        // Let the server settle (freed handshake buffers) before reading its memory.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let rss_holding = server_rss_mib(target).await;
        Ok(Viewers {
            rss: (rss_before, rss_holding, stats.held.load(Ordering::Relaxed)),
            mark: (stats.messages.load(Ordering::Relaxed), Instant::now()),
            stats,
            stop,
            thread: Some(thread),
            requested: opts.count,
            transport: opts.transport,
            open_secs,
        })
    }

    /// Closes the viewers and reports.
    pub fn finish(mut self) -> ViewerReport {
        let s = &self.stats;
        let messages = s.messages.load(Ordering::Relaxed) - self.mark.0;
        let secs = self.mark.1.elapsed().as_secs_f64();
        let held = s.held.load(Ordering::Relaxed);
        let lag = s.lag.lock().take().unwrap_or_else(new_histogram);
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let opened = held + s.closed.load(Ordering::Relaxed);
        ViewerReport {
            transport: Some(self.transport),
            requested: self.requested,
            held,
            failed: s.failed.load(Ordering::Relaxed),
            closed: s.closed.load(Ordering::Relaxed),
            first_error: s.first_error.lock().clone(),
            open_secs: self.open_secs,
            opened_per_sec: opened as f64 / self.open_secs.max(1e-3),
            messages,
            messages_per_sec: messages as f64 / secs.max(1e-3),
            lag: Latency::of(&lag),
            server_rss_mib_before: self.rss.0,
            server_rss_mib_holding: self.rss.1,
            server_kib_per_viewer: match self.rss {
                (Some(before), Some(holding), n) if n > 0 => {
                    Some((holding - before) * 1024.0 / n as f64)
                }
                _ => None,
            },
        }
    }
}

/// Lowers the calling thread's priority by `nice` levels (Linux: each thread has its own): the
/// viewers stand in for an audience on other machines, so on a shared machine they take the
/// cores the server and the vote lanes leave.
fn lower_priority(nice: i32) {
    if nice <= 0 {
        return;
    }
    // SAFETY: getpriority and setpriority take plain integers and touch no memory of ours;
    // `who` 0 is the calling thread on Linux.
    unsafe {
        let own = libc::getpriority(libc::PRIO_PROCESS, 0);
        libc::setpriority(libc::PRIO_PROCESS, 0, (own + nice).min(19));
    }
}

/// Opens every viewer (at most `concurrency` at once) and keeps them until `stop`. A viewer's
/// task does not watch `stop` itself (that was a waiter registered and dropped per message): once
/// this returns, its runtime stops polling them and its shutdown drops them, sockets and all.
async fn hold(
    addr: SocketAddr,
    url: String,
    opts: ViewerOptions,
    stats: Arc<Stats>,
    mut stop: watch::Receiver<bool>,
) {
    let opening = Arc::new(Semaphore::new(opts.concurrency.max(1)));
    let host = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    for i in 0..opts.count {
        let Ok(permit) = opening.clone().acquire_owned().await else {
            break;
        };
        let source = IpAddr::V4(Ipv4Addr::new(
            127,
            0,
            0,
            opts.first_source + (i % opts.sources as usize) as u8,
        ));
        let poll = opts.polls[i % opts.polls.len()];
        let (stats, host) = (stats.clone(), host.clone());
        let transport = opts.transport;
        tokio::spawn(async move {
            let stream = match connect(addr, source).await {
                Ok(s) => s,
                Err(e) => {
                    stats.failed(format!("connect from {source}: {e}"));
                    return;
                }
            };
            match transport {
                Transport::Ws => watch_ws(stream, &host, poll, &stats, permit).await,
                Transport::Sse => watch_sse(stream, &host, poll, &stats, permit).await,
                Transport::SseKeptAlive => {
                    let mut stream = stream;
                    if let Err(e) = ask_for_the_poll(&mut stream, &host, poll).await {
                        stats.failed(format!("GET /v1/polls/{poll} before the stream: {e}"));
                        return;
                    }
                    watch_sse(stream, &host, poll, &stats, permit).await
                }
            }
        });
    }
    let _ = stop.wait_for(|s| *s).await;
}

async fn connect(addr: SocketAddr, source: IpAddr) -> std::io::Result<TcpStream> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if addr.ip().is_loopback() && addr.is_ipv4() {
        port_at_connect(&socket);
        socket.bind(SocketAddr::new(source, 0))?;
    }
    // Small buffers: a viewer reads a message at a time.
    let _ = socket.set_recv_buffer_size(16 << 10);
    let stream = socket.connect(addr).await?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Has the kernel choose a bound socket's port at its connect, by the whole connection
/// (`IP_BIND_ADDRESS_NO_PORT`), not at its bind: bind's own search for a free port walks every
/// port bound on the address, those of an earlier run's connections still in `TIME_WAIT`
/// included, and took the viewers' core in back-to-back runs (BENCHMARKS.md, "2026-12-05
/// (second session)").
fn port_at_connect(socket: &TcpSocket) {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: the descriptor is the socket's, open for this call; the option's value is a
    // c_int that lives across it, and its size is passed with it.
    let _refused = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    // A kernel without the option (before Linux 4.2) refuses it, and bind chooses the port as
    // before.
}

async fn watch_ws(
    stream: TcpStream,
    host: &str,
    poll: i64,
    stats: &Stats,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    // tungstenite zeroes the room left in its buffer before each read: a message (a few hundred
    // bytes) fits in 1 KiB, and a larger one takes more reads.
    let config = WebSocketConfig::default().read_buffer_size(1024);
    let url = format!("ws://{host}/v1/polls/{poll}/ws");
    let mut ws = match tokio_tungstenite::client_async_with_config(url, stream, Some(config)).await
    {
        Ok((ws, _)) => ws,
        Err(e) => {
            stats.failed(format!("WebSocket handshake: {e}"));
            return;
        }
    };
    drop(permit);
    stats.held.fetch_add(1, Ordering::Relaxed);
    loop {
        match ws.next().await {
            Some(Ok(m)) if m.is_text() => stats.message(m.into_data().as_ref()),
            Some(Ok(_)) => {}
            _ => {
                stats.held.fetch_sub(1, Ordering::Relaxed);
                stats.closed.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    }
}

/// Asks for the poll on `stream` and reads the whole answer (by its length), leaving the
/// connection open for the next request.
async fn ask_for_the_poll(stream: &mut TcpStream, host: &str, poll: i64) -> anyhow::Result<()> {
    let request = format!("GET /v1/polls/{poll} HTTP/1.1\r\nhost: {host}\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut got = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    loop {
        let n = stream.read(&mut buf).await?;
        anyhow::ensure!(n > 0, "closed before the answer");
        got.extend_from_slice(&buf[..n]);
        let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
        anyhow::ensure!(
            head.starts_with("http/1.1 200"),
            "answered {:?}",
            head.lines().next().unwrap_or("")
        );
        let length: usize = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length:"))
            .and_then(|n| n.trim().parse().ok())
            .ok_or_else(|| anyhow::anyhow!("no content-length in the answer"))?;
        if got.len() >= end + 4 + length {
            anyhow::ensure!(got.len() == end + 4 + length, "more than the answer came");
            return Ok(());
        }
    }
}

async fn watch_sse(
    mut stream: TcpStream,
    host: &str,
    poll: i64,
    stats: &Stats,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let request = format!(
        "GET /v1/polls/{poll}/sse HTTP/1.1\r\nhost: {host}\r\naccept: text/event-stream\r\n\r\n"
    );
    if let Err(e) = stream.write_all(request.as_bytes()).await {
        stats.failed(format!("SSE request: {e}"));
        return;
    }
    let mut permit = Some(permit);
    let mut buf = vec![0u8; 4096];
    // Bytes of a message not yet complete (an event ends with a blank line).
    let mut pending: Vec<u8> = Vec::new();
    let mut header_done = false;
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => {
                if header_done {
                    stats.held.fetch_sub(1, Ordering::Relaxed);
                    stats.closed.fetch_add(1, Ordering::Relaxed);
                } else {
                    stats.failed("SSE: closed before the response".to_owned());
                }
                return;
            }
            Ok(n) => n,
        };
        pending.extend_from_slice(&buf[..n]);
        if !header_done {
            let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            if !pending.starts_with(b"HTTP/1.1 200") {
                let line = String::from_utf8_lossy(&pending[..pending.len().min(40)]).into_owned();
                stats.failed(format!("SSE answered {line:?}"));
                return;
            }
            header_done = true;
            stats.held.fetch_add(1, Ordering::Relaxed);
            pending.drain(..end + 4);
            permit.take();
        }
        // Each complete event (its data line) is one message.
        while let Some(end) = memmem::find(&pending, b"\n\n") {
            let event = &pending[..end];
            if let Some(data) = memmem::find(event, b"data: ") {
                stats.message(&event[data..]);
            }
            pending.drain(..end + 2);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn updated_at_is_read_from_a_message_without_parsing_it() {
        let m = br#"{"type":"results","poll_id":1,"counts":[1,2],"updated_at":1764500000123456}"#;
        assert_eq!(updated_at(m), Some(1_764_500_000_123_456));
        assert_eq!(updated_at(br#"{"type":"results","hidden":true}"#), None);
        assert_eq!(updated_at(br#"{"type":"viewers","count":3}"#), None);
    }
}
