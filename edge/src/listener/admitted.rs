//! An admitted connection's socket ([`Admitted`]): its place at the gate, the write-stall
//! deadline, the kernel's receive stamps, and the read gate's pause of reads that start a request.

use super::{receive_stamp, Arrival, LiveSocket, Permit, ReadGate};
use std::future::Future;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

/// An admitted connection's socket, holding its place at the gate until it is closed, with a
/// deadline on writes: a write that has waited `write_stall_timeout` for room in the socket fails
/// with `TimedOut`, which ends the connection (a response, an event stream's head or the body the
/// listener writes; a socket handed over, a WebSocket or a `StreamWriter`'s stream, is written
/// directly and bounded by its writer). The deadline runs only while a write waits (the kernel makes room once the client
/// has taken a good part of what is queued); its timer is made at the first wait.
pub(super) struct Admitted {
    pub(super) stream: TcpStream,
    permit: Permit,
    write_stall_timeout: Duration,
    stall: Option<Pin<Box<tokio::time::Sleep>>>,
    stalled: bool,
    /// The deadline passed: every write fails from then on (and is counted once).
    timed_out: bool,
    /// What a live stream's handler shares with this socket.
    pub(super) live: LiveSocket,
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
    pub(super) fn new(
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

    /// This socket, served from now on by the runtime this is called on: registered with its IO
    /// driver (readiness is then that runtime's work, not the one's that accepted the socket),
    /// and a running write-stall timer made anew there with its deadline (a timer belongs to the
    /// runtime that made it, and fires only while that one runs).
    pub(super) fn rehome(self) -> std::io::Result<Self> {
        let stream = TcpStream::from_std(self.stream.into_std()?)?;
        let stall = (self.stall)
            .filter(|_| self.stalled)
            .map(|old| Box::pin(tokio::time::sleep_until(old.deadline())));
        Ok(Self {
            stream,
            stall,
            ..self
        })
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
        let done = Self::read_stamped(this, cx, buf);
        if matches!(done, Poll::Ready(Ok(()))) && buf.filled().len() > filled {
            this.between_requests = false;
        }
        done
    }
}

impl Admitted {
    /// A read, with the kernel's receipt time of its bytes recorded when arrivals are stamped.
    fn read_stamped(
        this: &mut Self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
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

#[cfg(test)]
mod tests {
    use super::super::{Gate, HttpMetrics};
    use super::*;
    use std::time::Instant;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

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

    /// A write already waiting when its connection moves to another runtime still fails at its
    /// deadline there, though the runtime it left no longer runs (its timers never fire).
    #[test]
    fn a_stalled_write_keeps_its_deadline_on_the_runtime_it_moves_to() {
        let runtime = || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
        };
        let (left, moved_to) = (runtime(), runtime());
        let chunk = vec![7u8; 64 << 10];
        let (server, _client, metrics) = left.block_on(async {
            let (mut server, client, metrics) =
                admitted_pair(Duration::from_millis(300), LiveSocket::default()).await;
            // Write until a write waits for room: the deadline runs, on this runtime.
            while tokio::time::timeout(Duration::from_millis(100), server.write_all(&chunk))
                .await
                .is_ok()
            {}
            (server, client, metrics)
        });
        let failed = moved_to.block_on(async {
            let mut server = server.rehome().unwrap();
            tokio::time::timeout(Duration::from_secs(5), async {
                loop {
                    if let Err(e) = server.write_all(&chunk).await {
                        return e;
                    }
                }
            })
            .await
            .expect("the deadline stayed on the runtime the write left")
        });
        assert_eq!(failed.kind(), std::io::ErrorKind::TimedOut);
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
