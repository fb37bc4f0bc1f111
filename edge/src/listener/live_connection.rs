//! A connection taken back from hyper after an upgrade (a WebSocket), or from the listener after
//! an event stream's head ([`super::StreamWriter`]), so a live stream writes to its socket
//! directly: the realtime service writes a poll's frame to each of its viewers' sockets in one
//! sweep, without a task, a buffer or a framing layer per viewer.
//!
//! The socket keeps its place at the gate (the connection's permit travels with it) until the
//! [`LiveConnection`] is dropped, which closes it. Writes are the caller's to bound: the listener's
//! write-stall deadline applies to writes that go through hyper, and these do not.

use super::hand_back::HyperIo;
use super::Admitted;
use bytes::Bytes;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use std::io::ErrorKind;
use std::net::Shutdown;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::runtime::Handle;

/// An upgraded connection's socket, with its place at the gate.
pub struct LiveConnection {
    admitted: Admitted,
}

impl LiveConnection {
    /// The socket under `upgraded` and the bytes hyper had read past the request (a client may
    /// send its first frames right behind the handshake); none if this listener did not accept
    /// the connection. A send buffer the handler asked for ([`super::LiveSocket`]) is set now.
    pub fn take(upgraded: Upgraded) -> Option<(Self, Bytes)> {
        let parts = upgraded.downcast::<TokioIo<HyperIo>>().ok()?;
        // Only an event stream takes the socket from hyper, and its connection takes no upgrade.
        let admitted = parts.io.into_inner().into_socket()?;
        // The bytes are a slice of hyper's connection read buffer (8 KiB and more), which lives
        // as long as any slice of it does: a viewer keeps a copy of what it needs, not the buffer.
        let early = match parts.read_buf.is_empty() {
            true => Bytes::new(),
            false => Bytes::copy_from_slice(&parts.read_buf),
        };
        Some((Self::new(admitted), early))
    }

    /// An event stream's socket, its head written ([`super::StreamWriter`]); a send buffer the
    /// handler asked for and the head's write did not take is set now.
    pub(super) fn new(admitted: Admitted) -> Self {
        let asked = admitted.live.take_send_buffer();
        if asked > 0 {
            if let Err(e) =
                socket2::SockRef::from(&admitted.stream).set_send_buffer_size(asked as usize)
            {
                tracing::debug!(error = %e, "cannot set a live socket's send buffer");
            }
        }
        Self { admitted }
    }

    /// The same connection, its socket registered with `runtime`'s IO driver instead of the
    /// one that accepted it: a viewer served on another runtime (the realtime service's) is then
    /// woken by that runtime, and its readiness costs the accepting runtime (the votes') nothing.
    /// Wakers left in the old registration (hyper's connection task's) go with it.
    ///
    /// # Panics
    ///
    /// If `runtime`'s IO driver is off (it must be built with `enable_io` or `enable_all`).
    pub fn move_to(self, runtime: &Handle) -> std::io::Result<Self> {
        let _there = runtime.enter();
        let admitted = self.admitted.rehome()?;
        Ok(Self { admitted })
    }

    /// The socket, for its `try_write` and `try_read` (they take `&self`, so a sweep and the
    /// connection's own task can share it; whoever writes must not interleave frames). Waiting
    /// goes through [`Self::readable`] and [`Self::writable`], not the stream's own `readable`
    /// and `writable`, which would keep hyper's task alive (see there).
    pub fn stream(&self) -> &TcpStream {
        &self.admitted.stream
    }

    /// Waits until the socket has something to read (or is closed). Only one task may wait so:
    /// the socket has one reader slot (`poll_read_ready`), and a second task taking it would
    /// leave the first never woken. That slot is where hyper's connection task left its waker
    /// when it last read, and a waker keeps its task's memory (2.4 KiB, the connection's whole
    /// future) alive; the first wait that finds nothing to read puts this task's waker there.
    /// `TcpStream::readable` waits in a list beside the slot and would leave the old waker in
    /// it until the client sent something or closed. (A socket moved to another runtime,
    /// [`Self::move_to`], starts with empty slots.)
    pub async fn readable(&self) -> std::io::Result<()> {
        std::future::poll_fn(|cx| self.stream().poll_read_ready(cx)).await
    }

    /// Waits until the socket takes writes again. Only one task may wait so (as with
    /// [`Self::readable`], in the socket's one writer slot).
    pub async fn writable(&self) -> std::io::Result<()> {
        std::future::poll_fn(|cx| self.stream().poll_write_ready(cx)).await
    }

    /// Ends the connection the way a WebSocket close asks of a server (RFC 6455, 7.1.1): the
    /// write half is shut, so the client reads what was written and then the end, and what the
    /// client still sends is read and dropped until it closes too, `within` passes or 64 KiB
    /// were dropped. Closing with bytes unread resets the connection, and a reset can take the
    /// close frame with it (a client that closes in time sees none).
    pub async fn finish(&self, within: Duration) {
        let stream = self.stream();
        if socket2::SockRef::from(stream)
            .shutdown(Shutdown::Write)
            .is_err()
        {
            return;
        }
        let drained = async {
            let mut dropped = 0;
            while dropped < 64 * 1024 {
                if self.readable().await.is_err() {
                    return;
                }
                // Not held across the await: every viewer's task has room for this future.
                let mut sink = [0u8; 512];
                match stream.try_read(&mut sink) {
                    Ok(0) => return,
                    Ok(n) => dropped += n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(_) => return,
                }
            }
        };
        let _ = tokio::time::timeout(within, drained).await;
    }
}
