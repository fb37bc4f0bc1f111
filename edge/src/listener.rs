//! Serving HTTP with a limit on every door: the accept loop of every node.
//!
//! - The open-file limit is raised to the hard limit at start ([`raise_open_file_limit`]), and
//!   the listener asks the kernel for room for `http.listen_backlog` connections not yet
//!   accepted ([`bind`]), so a crowd connecting at once is not dropped at the door.
//! - Connections are admitted by a [`Gate`]: at most `max_connections` in all (by default the
//!   open-file limit less a reserve for logs, Kafka and PostgreSQL, so the process refuses before
//!   the kernel does) and `max_connections_per_address` from one address. A connection over
//!   either cap gets a short JSON answer (503, or 429 for one address) with `Retry-After` and is
//!   closed; it never waits in a queue.
//! - If accepting fails anyway for want of file descriptors, the loop pauses briefly and counts it
//!   instead of spinning on the error (the pending connection stays in the kernel's backlog).
//! - Each connection is HTTP/1.1 (with upgrades, for WebSocket) under a header read timeout of its
//!   own, which runs whenever the connection waits for a request (`idle_watch.rs`, one interval a
//!   connection rather than hyper's timer a request): it bounds slow headers, a client that
//!   connects and says nothing, and a kept-alive connection's idle wait. The body read timeout is
//!   in the layer put around the router ([`crate::node::NodeLayer`]: the longest pause within a
//!   body, and every error answer as JSON) and, at the edge, one deadline for a vote's whole
//!   body (`ingest::body::read_body`). hyper does not read while a request is in flight
//!   (`half_close`): a client that shuts its side after its request is answered, and a client
//!   gone is noticed when its answer is written.
//! - A new connection whose first request is a whole `GET` asking for `text/event-stream` (a
//!   browser's `EventSource`) is served without hyper's connection buffers (`event_stream.rs`
//!   peeks at it; the same router answers it): an SSE viewer costs a few KiB, not hyper's 16.
//!   Once answered, the stream is written on the runtime the node names
//!   ([`Options::event_streams`]: the viewers', below the vote path's priority). An event stream
//!   asked for on a connection that carried other requests first (kept alive, or a proxy's) is
//!   answered through hyper, which writes its head and hands the socket back (`hand_back.rs`);
//!   the stream is then written as a sniffed one is, without hyper (`http_connection.rs`).
//!   A handler that writes its own stream ([`StreamWriter`], the realtime service's sweeps) is
//!   handed the socket once the head is written, on that runtime, instead of its body being
//!   written.
//! - A write the client does not take within `http.write_stall_timeout_ms` ends the connection,
//!   whatever the listener writes on it (a response, an event stream's head and body): a client
//!   that stops reading holds its socket and buffers for at most that long. A socket handed over
//!   (a WebSocket, a [`StreamWriter`]'s stream) is bounded by whoever writes to it.
//! - A live stream's handler may ask for a small kernel send buffer
//!   (`realtime.socket_send_buffer_bytes`), set before the socket's next write, and learn how much
//!   the socket has written ([`LiveSocket`]).
//! - Handlers learn of a request's connection from one request extension
//!   ([`ConnectionContext`]: the client's address, the live socket, the receipt stamp).
//! - On a node taking votes, the kernel stamps what each connection receives, and each read
//!   records the receipt time of its bytes ([`receive_stamp`], [`Arrival`]): the
//!   edge judges a vote by how long it waited for a core, which no clock in the handler sees.
//! - While the edge holds `ingest.pause_reads_in_flight` votes waiting for the log, reads that
//!   start a request wait (not bodies, not live streams), for at most `MAX_READ_PAUSE`
//!   ([`read_gate`]): the votes taken are answered before new ones are read.
//! - A connection's place at the gate goes with its socket, into a WebSocket after an upgrade, and
//!   is freed when the socket closes: viewers count against the caps.
//!
//! On shutdown the loop stops accepting, lets each connection finish the request in flight, and
//! closes what is still busy (live streams) after a grace period (an event stream handed to
//! another runtime is waited for as long, and ends with that runtime).

mod admitted;
pub mod arrival;
pub mod connection_context;
mod event_stream;
mod hand_back;
mod http_connection;
mod idle_watch;
pub mod live_connection;
pub mod live_socket;
pub mod read_gate;
pub mod receive_stamp;
mod stream_writer;

pub use arrival::Arrival;
pub use connection_context::ConnectionContext;
pub use live_connection::LiveConnection;
pub use live_socket::LiveSocket;
pub use read_gate::ReadGate;
pub use stream_writer::StreamWriter;

use crate::node::NodeLayer;
use admitted::Admitted;
use axum::Router;
use event_stream::{HandOff, Sniffed};
use hand_back::{HandBack, HyperIo};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::task::TaskTracker;
use tower::Layer;

/// Limits on every HTTP connection of a node (`[http]` in the configuration).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HttpLimits {
    /// A request's headers must arrive within this; it also bounds how long a kept-alive
    /// connection may wait idle for its next request. A connection is closed between one and one
    /// and a half of it after its last activity (`listener/idle_watch.rs`), never before.
    pub header_read_timeout_ms: u64,
    /// A vote's or batch's body must arrive whole within this (408 otherwise); on every other
    /// endpoint, a pause this long between two pieces of a body ends the request (4xx).
    pub body_read_timeout_ms: u64,
    /// Connections open at once, WebSocket viewers included; 0: the open-file limit (raised to the
    /// hard limit at start) less a reserve of 512, so the node refuses with 503 before the kernel
    /// refuses it descriptors.
    pub max_connections: usize,
    /// Connections open at once from one client address (429 beyond); 0: no cap. Behind a proxy
    /// or load balancer every client has its address: set 0 there.
    pub max_connections_per_address: usize,
    /// Loopback clients (local tools, a sidecar proxy) are exempt from the per-address cap.
    pub limits_exempt_loopback: bool,
    /// A connection whose write through the listener has waited this long for the client to make
    /// room (it stopped reading) is closed (a response, an event stream's head or the body the
    /// listener writes); a socket handed over (a WebSocket, a [`StreamWriter`]'s stream) is bounded
    /// by its writer (`realtime.send_timeout_ms`). 0: no deadline.
    pub write_stall_timeout_ms: u64,
    /// Connections the kernel holds for the accept loop before it takes them (the listen
    /// backlog; the kernel caps it at `net.core.somaxconn`). Past it the kernel drops a new
    /// client's handshake and the client waits a second to try again, a voter as much as a
    /// viewer: when an audience connects at once, as it does when a show starts, this is the
    /// room that keeps those connects from waiting.
    pub listen_backlog: u32,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            header_read_timeout_ms: 10_000,
            body_read_timeout_ms: 10_000,
            max_connections: 0,
            max_connections_per_address: 256,
            limits_exempt_loopback: true,
            write_stall_timeout_ms: 10_000,
            listen_backlog: 4096,
        }
    }
}

impl HttpLimits {
    /// Why these settings cannot run, if they cannot.
    pub fn check(&self) -> Result<(), String> {
        if self.header_read_timeout_ms < 100 || self.body_read_timeout_ms < 100 {
            return Err(
                "http.header_read_timeout_ms and http.body_read_timeout_ms must be at least 100"
                    .into(),
            );
        }
        if self.listen_backlog == 0 {
            return Err("http.listen_backlog must be at least 1 (the default is 4096)".into());
        }
        Ok(())
    }
}

/// File descriptors kept free for everything but client connections (the log's files, Kafka and
/// PostgreSQL connections, the refusals themselves).
const DESCRIPTOR_RESERVE: u64 = 512;
/// The longest the listener stops reading new requests for the votes it holds
/// ([`read_gate`]): probes and everything else on the node wait at most this long.
const MAX_READ_PAUSE: Duration = Duration::from_millis(250);
/// How long open connections may take to finish after shutdown begins.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Counters of the accept loop (rendered by `GET /metrics`).
#[derive(Debug, Default)]
pub struct HttpMetrics {
    pub connections_open: AtomicU64,
    pub connections_accepted: AtomicU64,
    /// Refused because the process holds `max_connections`.
    pub refused_total_cap: AtomicU64,
    /// Refused because their address holds `max_connections_per_address`.
    pub refused_address_cap: AtomicU64,
    /// Accepts that failed for want of file descriptors (EMFILE, ENFILE).
    pub accept_descriptor_errors: AtomicU64,
    /// Connections closed because a request's headers (or the next request on a kept-alive
    /// connection) did not arrive in time.
    pub header_timeouts: AtomicU64,
    /// Event streams served without hyper (`event_stream.rs`): new connections whose first
    /// request asked for `text/event-stream`.
    pub event_streams: AtomicU64,
    /// Event streams hyper served (`http_connection.rs`): asked for on a connection that carried
    /// other requests first (a browser's kept-alive one, a proxy's pooled one), or in a head the
    /// listener did not take; hyper writes the head, then hands the socket back (`hand_back.rs`).
    pub event_streams_through_hyper: AtomicU64,
    /// The cap in force (`max_connections`, or the one derived from the open-file limit).
    pub max_connections: AtomicU64,
    /// Connections closed because a write waited `http.write_stall_timeout_ms` for the client
    /// to make room.
    pub write_stalls: AtomicU64,
}

/// Listens on `addr` (an address or `host:port`, each address it names tried in turn) with a
/// listen backlog of `backlog` ([`HttpLimits::listen_backlog`]); tokio's `TcpListener::bind`
/// asks the kernel for 128, which a thousand viewers connecting at once overflow. Warns when
/// the kernel's `net.core.somaxconn` holds the backlog below what was asked.
pub async fn bind(addr: &str, backlog: u32) -> std::io::Result<TcpListener> {
    let listen_on = |address: std::net::SocketAddr| {
        let socket = if address.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        // As tokio's bind does: a restarted node can listen again at once.
        #[cfg(unix)]
        socket.set_reuseaddr(true)?;
        socket.bind(address)?;
        socket.listen(backlog)
    };
    let mut last_error = None;
    for address in tokio::net::lookup_host(addr).await? {
        match listen_on(address) {
            Ok(listener) => {
                warn_if_the_kernel_caps(backlog);
                return Ok(listener);
            }
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the name resolves to no address",
        )
    }))
}

/// The kernel silently takes the smaller of a listen backlog and `net.core.somaxconn`.
fn warn_if_the_kernel_caps(backlog: u32) {
    let somaxconn = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok());
    match somaxconn {
        Some(cap) if cap < backlog => tracing::warn!(
            listen_backlog = backlog,
            somaxconn = cap,
            "the kernel holds the listen backlog at net.core.somaxconn: a crowd connecting at \
             once may wait a second for dropped connects; raise net.core.somaxconn to \
             http.listen_backlog"
        ),
        _ => tracing::info!(
            listen_backlog = backlog.min(somaxconn.unwrap_or(backlog)),
            "listen backlog"
        ),
    }
}

/// Raises the soft open-file limit to the hard limit; returns the limit now in force.
pub fn raise_open_file_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(e) => {
            tracing::warn!(error = %e, "cannot raise the open-file limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE)
                .map(|(soft, _)| soft)
                .unwrap_or(1024)
        }
    }
}

/// The connection cap: the configured one, or the open-file limit less the reserve.
pub fn connection_cap(configured: usize, open_file_limit: u64) -> usize {
    if configured > 0 {
        return configured;
    }
    open_file_limit
        .saturating_sub(DESCRIPTOR_RESERVE)
        .max(64)
        .min(usize::MAX as u64) as usize
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    TotalCap,
    AddressCap,
}

/// Admission of connections: the caps in all and per address.
#[derive(Debug)]
pub struct Gate {
    max_total: usize,
    max_per_address: usize,
    exempt_loopback: bool,
    /// Connections open per address (only addresses that have one).
    open: Mutex<HashMap<IpAddr, usize>>,
    /// Its `connections_open` is the count the total cap is checked against.
    metrics: Arc<HttpMetrics>,
}

/// An admitted connection; dropping it frees its place.
#[derive(Debug)]
pub struct Permit {
    gate: Arc<Gate>,
    address: Option<IpAddr>,
}

impl Gate {
    pub fn new(
        max_total: usize,
        max_per_address: usize,
        exempt_loopback: bool,
        metrics: Arc<HttpMetrics>,
    ) -> Arc<Self> {
        Arc::new(Self {
            max_total,
            max_per_address,
            exempt_loopback,
            open: Mutex::new(HashMap::new()),
            metrics,
        })
    }

    pub fn admit(self: &Arc<Self>, address: IpAddr) -> Result<Permit, Refusal> {
        let total = &self.metrics.connections_open;
        if total.fetch_add(1, Ordering::AcqRel) >= self.max_total as u64 {
            total.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::TotalCap);
        }
        let counted = self.max_per_address > 0 && !(self.exempt_loopback && address.is_loopback());
        if counted {
            let mut open = self.open.lock();
            let n = open.entry(address).or_default();
            if *n >= self.max_per_address {
                drop(open);
                total.fetch_sub(1, Ordering::AcqRel);
                return Err(Refusal::AddressCap);
            }
            *n += 1;
        }
        Ok(Permit {
            gate: self.clone(),
            address: counted.then_some(address),
        })
    }

    /// Connections open now.
    pub fn open(&self) -> u64 {
        self.metrics.connections_open.load(Ordering::Acquire)
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(address) = self.address {
            let mut open = self.gate.open.lock();
            if let Some(n) = open.get_mut(&address) {
                *n -= 1;
                if *n == 0 {
                    open.remove(&address);
                }
            }
        }
        self.gate
            .metrics
            .connections_open
            .fetch_sub(1, Ordering::AcqRel);
    }
}

/// What a node's roles ask of its listener beyond the limits.
#[derive(Default)]
pub struct Options {
    /// The node takes votes: have the kernel stamp what each connection receives ([`Arrival`]).
    pub stamp_arrivals: bool,
    /// The ingest edge's gate on reads that start a request ([`read_gate`]).
    pub read_gate: Option<Arc<ReadGate>>,
    /// The runtime event streams are written on once answered (the viewers' runtime, below the
    /// vote path's priority); `None`: the connection's own. Shutdown waits for them as for
    /// connections, for the grace period; one still busy after it ends when that runtime does.
    /// Its IO and time drivers must be on (`enable_all`): a stream's socket and its write-stall
    /// timer move there.
    pub event_streams: Option<Handle>,
}

/// Serves `router` on `listener` until `shutdown` resolves, within `limits`. The router is served
/// inside [`NodeLayer`] (the body read timeout, every error answer as JSON): this is the one place
/// that puts it, so a router given here carries no layer of its own.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: &HttpLimits,
    metrics: Arc<HttpMetrics>,
    options: Options,
    shutdown: impl Future<Output = ()> + Send,
) {
    let Options {
        stamp_arrivals,
        read_gate,
        event_streams,
    } = options;
    // Around the whole router, not on it: one layer of a router is a box and a clone a request.
    let router = NodeLayer::new(limits).layer(router);
    let open_files = rlimit::getrlimit(rlimit::Resource::NOFILE)
        .map(|(soft, _)| soft)
        .unwrap_or(1024);
    let cap = connection_cap(limits.max_connections, open_files);
    metrics.max_connections.store(cap as u64, Ordering::Relaxed);
    let gate = Gate::new(
        cap,
        limits.max_connections_per_address,
        limits.limits_exempt_loopback,
        metrics.clone(),
    );
    // HTTP/1.1 with upgrades (WebSocket), as axum::serve speaks it without its http2 feature.
    // hyper's header timer (a timer for every request) is off: each connection's wait for a head
    // is bounded by a watch of its own (`idle_watch.rs`), and its first bytes by the sniff.
    // hyper's `pipeline_flush` stays off (its default): with it on, hyper would not flush its
    // socket while a pipelined request waits, and an event stream's socket is handed back at
    // that flush (`hand_back.rs`).
    // hyper does not read while a request is in flight (`half_close`). That read, its watch for
    // a client gone mid-request, took a new 8 KiB read buffer for every request (the one before
    // still held by the request's head and body), and it closed unanswered a connection whose
    // client had shut its side after its request. A client gone is noticed when its answer is
    // written; from an event stream hyper writes itself (asked for by a `GET` with a body, which
    // is not handed back), at the second write after it left (a keep-alive every
    // `realtime.sse_keep_alive_secs`, or a frame), and never while a stream with no keep-alive
    // has nothing to send.
    let mut http = hyper::server::conn::http1::Builder::new();
    http.header_read_timeout(None);
    http.half_close(true);
    // Shared: each connection's task holds a pointer, not a copy of the settings.
    let http = Arc::new(http);
    let write_stall_timeout = Duration::from_millis(limits.write_stall_timeout_ms);
    // No pause outlasts MAX_READ_PAUSE, whatever holds the votes (a stalled disk, say).
    let gate_watch = read_gate.clone().map(|gate| {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            loop {
                tick.tick().await;
                gate.expire(MAX_READ_PAUSE);
            }
        })
    });
    // Stamps from the first request on (held while the loop runs).
    let _timestamping = stamp_arrivals
        .then(|| {
            receive_stamp::keep_on()
                .inspect_err(|e| tracing::warn!(error = %e, "cannot turn on the kernel's receive timestamps: votes are not judged by their wait"))
                .ok()
        })
        .flatten();
    let (stop, stopping) = watch::channel(false);
    let mut connections = JoinSet::new();
    // Event streams written on another runtime (`Options::event_streams`), waited for on shutdown
    // as connections are.
    let handed_off = TaskTracker::new();
    let mut last_descriptor_warning: Option<Instant> = None;
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_failed(&e, &metrics, &mut last_descriptor_warning).await;
                    continue;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            _ = &mut shutdown => break,
        };
        let permit = match gate.admit(peer.ip().to_canonical()) {
            Ok(permit) => permit,
            Err(refusal) => {
                match refusal {
                    Refusal::TotalCap => &metrics.refused_total_cap,
                    Refusal::AddressCap => &metrics.refused_address_cap,
                }
                .fetch_add(1, Ordering::Relaxed);
                tokio::spawn(refuse(stream, refusal));
                continue;
            }
        };
        metrics.connections_accepted.fetch_add(1, Ordering::Relaxed);
        let _ = stream.set_nodelay(true);
        // What live streams share with the socket (their send buffer, what it has written).
        let live = LiveSocket::default();
        // When the kernel received each request (for the edge's admission), if asked.
        let arrival = stamp_arrivals
            .then(|| match receive_stamp::enable(&stream) {
                Ok(()) => Some(Arrival::default()),
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "cannot turn on receive timestamps for a connection: its votes are not judged by their wait");
                    None
                }
            })
            .flatten();
        let (http, router, read_gate) = (http.clone(), router.clone(), read_gate.clone());
        let (event_streams, handed_off) = (event_streams.clone(), handed_off.clone());
        let header_read_timeout = Duration::from_millis(limits.header_read_timeout_ms);
        let (metrics, mut stopping) = (metrics.clone(), stopping.clone());
        connections.spawn(async move {
            let mut stream = stream;
            // A viewer's event stream is served without hyper's buffers (`event_stream.rs`).
            let sniffed = tokio::select! {
                sniffed = event_stream::sniff(&mut stream, header_read_timeout) => sniffed,
                // Stopping: a connection that has said nothing yet is closed, as hyper would.
                _ = stopping.wait_for(|stop| *stop) => return,
            };
            // The permit travels with the socket, into a WebSocket after an upgrade: its place
            // is free only once the socket is closed.
            let admitted = Admitted::new(
                stream,
                permit,
                write_stall_timeout,
                live.clone(),
                arrival.clone(),
                read_gate,
            );
            // What handlers learn of the connection: the client's address (rate limits), the
            // live socket, the receipt stamps; one extension, so one entry a request.
            let context = ConnectionContext {
                peer,
                live,
                arrival,
            };
            // Where a connection's event stream is written once answered.
            let hand_off = event_streams.as_ref().map(|runtime| HandOff {
                runtime,
                tracker: &handed_off,
            });
            match sniffed {
                Sniffed::Other => {}
                Sniffed::EventStream(request) => {
                    metrics.event_streams.fetch_add(1, Ordering::Relaxed);
                    let answer = event_stream::answer(router, request, context);
                    return event_stream::serve(admitted, answer, stopping, hand_off).await;
                }
                Sniffed::Silent => {
                    metrics.header_timeouts.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Sniffed::Gone => return,
            }
            let hand_back = Arc::new(HandBack::default());
            let service = TowerToHyperService::new(
                tower::ServiceBuilder::new()
                    .layer(axum::Extension(context))
                    .map_request(http_connection::note_requests(hand_back.clone()))
                    .map_response(http_connection::on_event_streams(
                        hand_back.clone(),
                        stopping.clone(),
                        metrics.clone(),
                    ))
                    .service(router),
            );
            let io = TokioIo::new(HyperIo::new(admitted, hand_back.clone()));
            let connection = Box::pin(http.serve_connection(io, service).with_upgrades());
            http_connection::serve(
                connection,
                hand_back,
                header_read_timeout,
                stopping,
                hand_off,
                metrics,
                peer,
            )
            .await
        });
    }
    drop(listener);
    if let Some(watch) = gate_watch {
        watch.abort();
    }
    let _ = stop.send(true);
    handed_off.close();
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while connections.join_next().await.is_some() {}
        handed_off.wait().await;
    })
    .await;
    if drained.is_err() {
        tracing::info!(
            open = connections.len() + handed_off.len(),
            "connections still busy after the shutdown grace period (live streams); closing them"
        );
        // Event streams handed off to another runtime end with it (the realtime service's, when
        // the node drops it).
        connections.abort_all();
    }
}

/// A failed accept: out of file descriptors pauses the loop (and is counted, and logged at most
/// every 10 s); anything else (a connection reset before it was accepted) is passed over.
async fn accept_failed(
    e: &std::io::Error,
    metrics: &HttpMetrics,
    last_warning: &mut Option<Instant>,
) {
    let out_of_descriptors = matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE));
    if !out_of_descriptors {
        tracing::debug!(error = %e, "accepting a connection failed");
        if !matches!(
            e.kind(),
            std::io::ErrorKind::ConnectionAborted | std::io::ErrorKind::ConnectionReset
        ) {
            // ENOBUFS, ENOMEM and the like: do not spin on them either.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        return;
    }
    metrics
        .accept_descriptor_errors
        .fetch_add(1, Ordering::Relaxed);
    if last_warning.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
        *last_warning = Some(Instant::now());
        tracing::warn!(
            error = %e,
            "out of file descriptors: new connections wait; lower http.max_connections or raise the \
             hard open-file limit (ulimit -Hn)"
        );
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// Answers a refused connection in one write and closes it.
async fn refuse(mut stream: TcpStream, refusal: Refusal) {
    let (status, code, message) = match refusal {
        Refusal::TotalCap => (
            "503 Service Unavailable",
            "too_many_connections",
            "this node holds as many connections as it may; try again shortly or another node",
        ),
        Refusal::AddressCap => (
            "429 Too Many Requests",
            "too_many_connections_from_address",
            "too many open connections from your address; close some and try again",
        ),
    };
    let body = format!(r#"{{"error":{{"code":"{code}","message":"{message}"}}}}"#);
    let answer = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\nretry-after: 1\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await?;
        // Read what the client sent before closing, so the close is not a reset that could
        // discard the answer on its way.
        let mut sink = [0u8; 4096];
        let mut drained = 0;
        while drained < 64 << 10 {
            match stream.read(&mut sink).await? {
                0 => break,
                n => drained += n,
            }
        }
        std::io::Result::Ok(())
    })
    .await;
}

#[cfg(test)]
mod tests;
