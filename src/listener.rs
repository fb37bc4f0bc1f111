//! Serving HTTP with a limit on every door: the accept loop of every node.
//!
//! - The open-file limit is raised to the hard limit at start ([`raise_open_file_limit`]).
//! - Connections are admitted by a [`Gate`]: at most `max_connections` in all (by default the
//!   open-file limit less a reserve for logs, Kafka and PostgreSQL, so the process refuses before
//!   the kernel does) and `max_connections_per_address` from one address. A connection over
//!   either cap gets a short JSON answer (503, or 429 for one address) with `Retry-After` and is
//!   closed; it never waits in a queue.
//! - If accepting fails anyway for want of file descriptors, the loop pauses briefly and counts it
//!   instead of spinning on the error (the pending connection stays in the kernel's backlog).
//! - Each connection is HTTP/1.1 (with upgrades, for WebSocket) under hyper's header read timeout,
//!   which runs whenever the connection waits for a request: it bounds slow headers, a client that
//!   connects and says nothing, and a kept-alive connection's idle wait. The body read timeout is a
//!   layer on the router ([`body_read_timeout`]: the longest pause within a body) and, at the edge,
//!   one deadline for a vote's whole body (`ingest::routes::read_body`).
//! - A write the client does not take within `http.write_stall_timeout_ms` ends the connection,
//!   whatever it carries (a response, an event stream, a WebSocket): a client that stops reading
//!   holds its socket and buffers for at most that long.
//! - A live stream's handler may ask for a small kernel send buffer
//!   (`realtime.socket_send_buffer_bytes`), set before the socket's next write, and learn how much
//!   the socket has written ([`realtime::LiveSocket`]).
//! - On a node taking votes, the kernel stamps what each connection receives, and each read
//!   records the receipt time of its bytes ([`crate::receive_stamp`], [`ingest::Arrival`]): the
//!   edge judges a vote by how long it waited for a core, which no clock in the handler sees.
//! - While the edge holds `ingest.pause_reads_in_flight` votes waiting for the log, reads that
//!   start a request wait (not bodies, not live streams), for at most `MAX_READ_PAUSE`
//!   ([`ingest::read_gate`]): the votes taken are answered before new ones are read.
//! - A connection's place at the gate goes with its socket, into a WebSocket after an upgrade, and
//!   is freed when the socket closes: viewers count against the caps.
//!
//! On shutdown the loop stops accepting, lets each connection finish the request in flight, and
//! closes what is still busy (live streams) after a grace period.

use crate::config::HttpSection;
use crate::receive_stamp;
use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use ingest::read_gate::ReadGate;
use ingest::Arrival;
use parking_lot::Mutex;
use realtime::LiveSocket;
use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, Interest, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// File descriptors kept free for everything but client connections (the log's files, Kafka and
/// PostgreSQL connections, the refusals themselves).
const DESCRIPTOR_RESERVE: u64 = 512;
/// The longest the listener stops reading new requests for the votes it holds
/// ([`ingest::read_gate`]): probes and everything else on the node wait at most this long.
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
    /// The cap in force (`max_connections`, or the one derived from the open-file limit).
    pub max_connections: AtomicU64,
    /// Connections closed because a write waited `http.write_stall_timeout_ms` for the client
    /// to make room.
    pub write_stalls: AtomicU64,
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

/// The router's layer that cuts off a request body that does not arrive within `limits`.
pub fn body_read_timeout(router: Router, limits: &HttpSection) -> Router {
    router.layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
        Duration::from_millis(limits.body_read_timeout_ms),
    ))
}

/// Serves `router` on `listener` until `shutdown` resolves, within `limits`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: &HttpSection,
    metrics: Arc<HttpMetrics>,
    stamp_arrivals: bool,
    read_gate: Option<Arc<ReadGate>>,
    shutdown: impl Future<Output = ()> + Send,
) {
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
    // HTTP/1.1 with upgrades (WebSocket), as axum::serve speaks it without its http2 feature. The
    // header timer runs from the moment the connection waits for a request's first byte: a client
    // that connects and says nothing is closed on time too.
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(limits.header_read_timeout_ms));
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
        // ConnectInfo for the handlers that want the peer (rate limits); what live streams share
        // with the socket (their send buffer, what it has written).
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
        let service = TowerToHyperService::new(
            tower::ServiceBuilder::new()
                .layer(axum::Extension(ConnectInfo(peer)))
                .layer(axum::Extension(live.clone()))
                .option_layer(arrival.clone().map(axum::Extension))
                .service(router.clone()),
        );
        // The permit travels with the socket, into a WebSocket after an upgrade: its place is
        // free only once the socket is closed.
        let io = TokioIo::new(Admitted::new(
            stream,
            permit,
            write_stall_timeout,
            live,
            arrival,
            read_gate.clone(),
        ));
        let connection = http.serve_connection(io, service).with_upgrades();
        let (metrics, mut stopping) = (metrics.clone(), stopping.clone());
        connections.spawn(async move {
            tokio::pin!(connection);
            let ended = tokio::select! {
                ended = connection.as_mut() => ended,
                _ = async { drop(stopping.wait_for(|stop| *stop).await) } => {
                    // Finish the request in flight, take no other.
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = ended {
                if e.is_timeout() {
                    metrics.header_timeouts.fetch_add(1, Ordering::Relaxed);
                }
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if let Some(watch) = gate_watch {
        watch.abort();
    }
    let _ = stop.send(true);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::info!(
            open = connections.len(),
            "connections still busy after the shutdown grace period (live streams); closing them"
        );
        connections.abort_all();
    }
}

/// An admitted connection's socket, holding its place at the gate until it is closed, with a
/// deadline on writes: a write that has waited `write_stall_timeout` for room in the socket fails
/// with `TimedOut`, which ends the connection whatever it carries (a response, an event stream, a
/// WebSocket). The deadline runs only while a write waits (the kernel makes room once the client
/// has taken a good part of what is queued); its timer is made at the first wait.
struct Admitted {
    stream: TcpStream,
    permit: Permit,
    write_stall_timeout: Duration,
    stall: Option<Pin<Box<tokio::time::Sleep>>>,
    stalled: bool,
    /// The deadline passed: every write fails from then on (and is counted once).
    timed_out: bool,
    /// What a live stream's handler shares with this socket.
    live: LiveSocket,
    /// Where reads record the kernel's receipt time of their bytes (reads use `recvmsg` then).
    arrival: Option<Arrival>,
    /// Reads that start a request wait while it is closed (the edge answers the votes it holds
    /// first).
    read_gate: Option<Arc<ReadGate>>,
    /// This connection's waker slot at the gate.
    gate_slot: u64,
    /// The next read starts a request: none has been read since the last write (or ever).
    between_requests: bool,
}

impl Admitted {
    fn new(
        stream: TcpStream,
        permit: Permit,
        write_stall_timeout: Duration,
        live: LiveSocket,
        arrival: Option<Arrival>,
        read_gate: Option<Arc<ReadGate>>,
    ) -> Self {
        Self {
            stream,
            permit,
            write_stall_timeout,
            stall: None,
            stalled: false,
            timed_out: false,
            live,
            arrival,
            read_gate,
            gate_slot: 0,
            between_requests: true,
        }
    }

    /// A write waits for room: starts the deadline if it is not running; the error once it has
    /// passed (counted once; every later write fails too).
    fn waiting(&mut self, cx: &mut Context<'_>) -> Option<std::io::Error> {
        if self.write_stall_timeout.is_zero() {
            return None;
        }
        if !self.stalled {
            self.stalled = true;
            let deadline = tokio::time::Instant::now() + self.write_stall_timeout;
            match &mut self.stall {
                Some(sleep) => sleep.as_mut().reset(deadline),
                None => self.stall = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
        }
        let sleep = self.stall.as_mut()?;
        if sleep.as_mut().poll(cx).is_pending() {
            return None;
        }
        self.timed_out = true;
        self.permit
            .gate
            .metrics
            .write_stalls
            .fetch_add(1, Ordering::Relaxed);
        Some(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "a write waited http.write_stall_timeout_ms for the client to make room",
        ))
    }

    /// Tells a live stream following this socket whether the write had to wait for room; after
    /// a write, the next read starts a request.
    fn count(&mut self, done: Poll<std::io::Result<usize>>) -> Poll<std::io::Result<usize>> {
        match done {
            Poll::Pending => self.live.wrote(true),
            Poll::Ready(Ok(_)) => {
                self.between_requests = true;
                self.live.wrote(false)
            }
            Poll::Ready(Err(_)) => {}
        }
        done
    }

    fn write_with<T>(
        &mut self,
        cx: &mut Context<'_>,
        write: impl FnOnce(Pin<&mut TcpStream>, &mut Context<'_>) -> Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        if self.timed_out {
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "this connection's write deadline has passed",
            )));
        }
        let asked = self.live.take_send_buffer();
        if asked > 0 {
            if let Err(e) =
                socket2::SockRef::from(&self.stream).set_send_buffer_size(asked as usize)
            {
                tracing::debug!(error = %e, "cannot set a live socket's send buffer");
            }
        }
        let done = write(Pin::new(&mut self.stream), cx);
        if done.is_ready() {
            // Progress (or a failure): the deadline is off.
            self.stalled = false;
        } else if let Some(e) = self.waiting(cx) {
            return Poll::Ready(Err(e));
        }
        done
    }
}

impl AsyncRead for Admitted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        // Only a read that starts a request waits at the gate: never a body already begun, nor
        // a live stream's socket.
        if this.between_requests && !this.live.is_live() {
            if let Some(gate) = &this.read_gate {
                std::task::ready!(gate.poll_open(cx, &mut this.gate_slot));
            }
        }
        let filled = buf.filled().len();
        let done = this.read_stamped(cx, buf);
        if matches!(done, Poll::Ready(Ok(()))) && buf.filled().len() > filled {
            this.between_requests = false;
        }
        done
    }
}

impl Admitted {
    fn read_stamped(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self;
        let Some(arrival) = &this.arrival else {
            return Pin::new(&mut this.stream).poll_read(cx, buf);
        };
        // As TcpStream::poll_read does, with recvmsg for the receipt time.
        loop {
            std::task::ready!(this.stream.poll_read_ready(cx))?;
            let fd = this.stream.as_raw_fd();
            // SAFETY: recvmsg only writes bytes into the unfilled part; only the `n` it wrote
            // are marked initialised below.
            let unfilled = unsafe { buf.unfilled_mut() };
            let room = unfilled.len();
            let mut read = None;
            let done = this.stream.try_io(Interest::READABLE, || {
                let (n, stamp) = receive_stamp::recv(fd, unfilled)?;
                read = Some((n, stamp));
                // A short read emptied the socket: readiness is cleared (as tokio does), so the
                // next read waits for the kernel instead of asking it again for nothing.
                if n > 0 && n < room {
                    return Err(std::io::ErrorKind::WouldBlock.into());
                }
                Ok(())
            });
            match (read, done) {
                (Some((n, stamp)), _) => {
                    // SAFETY: recvmsg wrote these `n` bytes.
                    unsafe { buf.assume_init(n) };
                    buf.advance(n);
                    if let Some(at) = stamp {
                        arrival.record(at);
                    }
                    return Poll::Ready(Ok(()));
                }
                (None, Err(e)) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                (None, Err(e)) => return Poll::Ready(Err(e)),
                (None, Ok(())) => unreachable!("a read that succeeded says what it read"),
            }
        }
    }
}

impl AsyncWrite for Admitted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let done = this.write_with(cx, |stream, cx| stream.poll_write(cx, buf));
        this.count(done)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let done = this.write_with(cx, |stream, cx| stream.poll_write_vectored(cx, bufs));
        this.count(done)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.get_mut()
            .write_with(cx, |stream, cx| stream.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.get_mut()
            .write_with(cx, |stream, cx| stream.poll_shutdown(cx))
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
mod tests {
    use super::*;

    #[test]
    fn the_gate_caps_connections_in_all_and_per_address_and_frees_them_on_drop() {
        let gate = Gate::new(3, 2, true, Default::default());
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let loopback: IpAddr = "127.0.0.1".parse().unwrap();
        let a1 = gate.admit(a).unwrap();
        let _a2 = gate.admit(a).unwrap();
        assert_eq!(gate.admit(a).unwrap_err(), Refusal::AddressCap);
        let _b1 = gate.admit(b).unwrap();
        assert_eq!(gate.open(), 3);
        assert_eq!(gate.admit(b).unwrap_err(), Refusal::TotalCap);
        assert_eq!(gate.admit(loopback).unwrap_err(), Refusal::TotalCap);
        drop(a1);
        assert_eq!(gate.open(), 2);
        // Loopback is exempt from the per-address cap, not from the total.
        let _l1 = gate.admit(loopback).unwrap();
        assert_eq!(gate.admit(loopback).unwrap_err(), Refusal::TotalCap);
        assert_eq!(gate.open.lock().get(&a), Some(&1));
    }

    #[test]
    fn the_default_cap_leaves_a_reserve_below_the_open_file_limit() {
        assert_eq!(
            connection_cap(0, 20_000),
            20_000 - DESCRIPTOR_RESERVE as usize
        );
        assert_eq!(connection_cap(0, 256), 64);
        assert_eq!(connection_cap(100, 20_000), 100);
    }

    /// A connected pair: the server's side admitted, the client's side raw.
    async fn admitted_pair(
        stall: Duration,
        live: LiveSocket,
    ) -> (Admitted, TcpStream, Arc<HttpMetrics>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, peer) = listener.accept().await.unwrap();
        let metrics = Arc::new(HttpMetrics::default());
        let permit = Gate::new(10, 0, true, metrics.clone())
            .admit(peer.ip())
            .unwrap();
        (
            Admitted::new(server, permit, stall, live, None, None),
            client,
            metrics,
        )
    }

    /// A read that starts a request waits while the gate is closed; a read within a request (no
    /// write since the last read) and a live stream's read do not; the gate opening wakes it.
    #[tokio::test]
    async fn reads_that_start_a_request_wait_at_a_closed_gate() {
        let (server, mut client, _) =
            admitted_pair(Duration::from_secs(10), LiveSocket::default()).await;
        let gate = Arc::new(ReadGate::new(1));
        let mut server = Admitted {
            read_gate: Some(gate.clone()),
            ..server
        };
        client.write_all(b"first").await.unwrap();
        let mut buf = [0u8; 16];
        let n = server.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"first");
        // Within a request (nothing written since): not paused.
        let held = gate.hold().unwrap();
        assert!(gate.is_closed());
        client.write_all(b"body").await.unwrap();
        let n = tokio::time::timeout(Duration::from_secs(5), server.read(&mut buf))
            .await
            .expect("a body already begun is read")
            .unwrap();
        assert_eq!(&buf[..n], b"body");
        // A response goes out: the next read starts a request and waits for the gate.
        server.write_all(b"answer").await.unwrap();
        client.write_all(b"next").await.unwrap();
        let read = tokio::spawn(async move {
            let mut buf = [0u8; 16];
            let n = server.read(&mut buf).await.unwrap();
            (buf[..n].to_vec(), server)
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!read.is_finished(), "paused while the gate is closed");
        drop(held);
        let (bytes, mut server) = tokio::time::timeout(Duration::from_secs(5), read)
            .await
            .expect("the gate opening wakes the read")
            .unwrap();
        assert_eq!(bytes, b"next");
        // A live stream's socket is never paused.
        server.live.track();
        server.write_all(b"frame").await.unwrap();
        let _held = gate.hold().unwrap();
        client.write_all(b"ping").await.unwrap();
        let n = tokio::time::timeout(Duration::from_secs(5), server.read(&mut buf))
            .await
            .expect("a live stream reads on")
            .unwrap();
        assert_eq!(&buf[..n], b"ping");
    }

    #[tokio::test]
    async fn reads_record_when_the_kernel_received_their_bytes() {
        let (server, mut client, _) =
            admitted_pair(Duration::from_secs(10), LiveSocket::default()).await;
        let _on = tokio::task::spawn_blocking(receive_stamp::tests::timestamping_on)
            .await
            .unwrap();
        receive_stamp::enable(&server.stream).unwrap();
        let arrival = Arrival::default();
        let mut server = Admitted {
            arrival: Some(arrival.clone()),
            ..server
        };
        let sent: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        client.write_all(&sent).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Read in pieces smaller than what waits: every byte arrives, in order.
        let mut got = vec![0u8; sent.len()];
        let mut at = 0;
        while at < got.len() {
            let end = (at + 1_000).min(got.len());
            at += server.read(&mut got[at..end]).await.unwrap();
        }
        assert_eq!(got, sent);
        // The bytes waited in the kernel 300 ms before they were read, and the wait shows.
        let waited = arrival.waited().expect("a stamp was recorded");
        assert!(waited >= Duration::from_millis(250), "waited {waited:?}");
        assert_eq!(arrival.waited(), None, "a stamp is taken once");
        // Bytes that arrive while a read waits carry a fresh stamp.
        let read = tokio::spawn(async move {
            let mut buf = [0u8; 16];
            let n = server.read(&mut buf).await.unwrap();
            (buf[..n].to_vec(), arrival.waited().unwrap())
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        client.write_all(b"next").await.unwrap();
        let (bytes, waited) = read.await.unwrap();
        assert_eq!(bytes, b"next");
        assert!(waited < Duration::from_millis(200), "waited {waited:?}");
    }

    #[tokio::test]
    async fn a_write_the_client_does_not_take_fails_at_the_deadline_and_is_counted() {
        let (mut server, _client, metrics) =
            admitted_pair(Duration::from_millis(300), LiveSocket::default()).await;
        let chunk = vec![7u8; 64 << 10];
        let started = Instant::now();
        let failed = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                if let Err(e) = server.write_all(&chunk).await {
                    return e;
                }
            }
        })
        .await
        .expect("the stalled write never failed");
        assert_eq!(failed.kind(), std::io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert_eq!(metrics.write_stalls.load(Ordering::Relaxed), 1);
        // Done for good: a caller that tries again fails at once and is not counted twice.
        let again = server.write_all(b"x").await.unwrap_err();
        assert_eq!(again.kind(), std::io::ErrorKind::TimedOut);
        assert_eq!(metrics.write_stalls.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn only_time_spent_waiting_to_write_counts_toward_the_deadline() {
        let (mut server, mut client, metrics) =
            admitted_pair(Duration::from_millis(200), LiveSocket::default()).await;
        let reader = tokio::spawn(async move {
            // Late to start (the first writes wait up to 100 ms), then reads everything.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let mut buf = vec![0u8; 64 << 10];
            let mut total = 0;
            while let Ok(n @ 1..) = client.read(&mut buf).await {
                total += n;
            }
            total
        });
        // Bursts with pauses longer than the deadline between them: idle time is not a stall.
        let chunk = vec![7u8; 1 << 20];
        for _ in 0..4 {
            server.write_all(&chunk).await.unwrap();
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        server.shutdown().await.unwrap();
        assert_eq!(reader.await.unwrap(), 4 << 20);
        assert_eq!(metrics.write_stalls.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_requested_send_buffer_is_set_before_the_next_write() {
        let request = LiveSocket::default();
        let (mut server, _client, _) =
            admitted_pair(Duration::from_secs(10), request.clone()).await;
        let before = socket2::SockRef::from(&server.stream)
            .send_buffer_size()
            .unwrap();
        request.request_send_buffer(4096);
        server.write_all(b"x").await.unwrap();
        let after = socket2::SockRef::from(&server.stream)
            .send_buffer_size()
            .unwrap();
        // Linux doubles what is asked (for its bookkeeping).
        assert!(after < before, "send buffer {before} -> {after}");
        assert!(after <= 2 * 4096, "send buffer {after}");
    }
}
