//! An event stream's socket, taken back from hyper once hyper has written the stream's head.
//!
//! An event stream is a response that lasts as long as its viewer watches, and while a response
//! lasts hyper keeps its connection's 8 KiB read buffer and state (BENCHMARKS.md, "an SSE
//! viewer on a kept-alive connection at 2.3 KiB"). So hyper holds each connection's socket through a
//! [`HyperIo`], which hands the socket over ([`HandOver`]) at hyper's first flush after an event
//! stream's head: hyper flushes its socket only once it has written all it holds (the responses
//! before, and the stream's head), and the body it was given for the stream waits for nothing.
//! The connection's task then drops hyper's connection and writes the stream's body itself, as
//! it writes a sniffed stream's (`event_stream.rs`).

use super::event_stream::Framing;
use super::Admitted;
use axum::body::Body;
use axum::http::{Method, Request, Version};
use parking_lot::Mutex;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What a connection's service and its socket share for an event stream's hand-over.
#[derive(Default)]
pub(super) struct HandOver {
    /// How a stream answering the request in flight is framed (`NOT_TAKEN`: hyper's to answer).
    framing: AtomicU8,
    /// An event stream was answered: the socket is handed over at hyper's next flush.
    answered: AtomicBool,
    /// The socket was handed over.
    handed: AtomicBool,
    taken: Mutex<Taken>,
}

#[derive(Default)]
struct Taken {
    stream: Option<(Body, Framing)>,
    socket: Option<Admitted>,
}

const NOT_TAKEN: u8 = 0;
const CHUNKED: u8 = 1;
const UNTIL_CLOSE: u8 = 2;

impl HandOver {
    /// Notes how a stream answering `request` would be framed: only a `GET`'s body is written
    /// (a `HEAD` has none), in chunks on HTTP/1.1 and until the connection closes on HTTP/1.0,
    /// as hyper would.
    pub(super) fn note_request<B>(&self, request: &Request<B>) {
        let framing = match (request.method(), request.version()) {
            (&Method::GET, Version::HTTP_11) => CHUNKED,
            (&Method::GET, Version::HTTP_10) => UNTIL_CLOSE,
            _ => NOT_TAKEN,
        };
        self.framing.store(framing, Ordering::Relaxed);
    }

    /// Keeps the event stream `body` answering the request in flight, for the connection's task
    /// to write once hyper has handed the socket over; `body` back if the request's stream is
    /// hyper's to write (not a `GET`).
    pub(super) fn answer(&self, body: Body) -> Result<(), Body> {
        let framing = match self.framing.load(Ordering::Relaxed) {
            CHUNKED => Framing::Chunked,
            UNTIL_CLOSE => Framing::UntilClose,
            _ => return Err(body),
        };
        self.taken.lock().stream = Some((body, framing));
        self.answered.store(true, Ordering::Release);
        Ok(())
    }

    /// Whether the socket has been handed over (then hyper's connection is done with).
    pub(super) fn is_handed_over(&self) -> bool {
        self.handed.load(Ordering::Acquire)
    }

    /// The socket and the stream to write on it, once handed over.
    pub(super) fn take(&self) -> Option<(Admitted, Body, Framing)> {
        let mut taken = self.taken.lock();
        let socket = taken.socket.take()?;
        let (body, framing) = taken.stream.take()?;
        Some((socket, body, framing))
    }

    fn hand_over(&self, socket: Admitted) {
        self.taken.lock().socket = Some(socket);
        self.handed.store(true, Ordering::Release);
    }
}

/// A connection's socket as hyper holds it, until an event stream takes it (see the module doc).
pub(super) struct HyperIo {
    socket: Option<Admitted>,
    hand_over: Arc<HandOver>,
}

impl HyperIo {
    pub(super) fn new(socket: Admitted, hand_over: Arc<HandOver>) -> Self {
        Self {
            socket: Some(socket),
            hand_over,
        }
    }

    /// The socket, unless an event stream has taken it.
    pub(super) fn into_socket(self) -> Option<Admitted> {
        self.socket
    }

    fn socket(&mut self) -> std::io::Result<Pin<&mut Admitted>> {
        match &mut self.socket {
            Some(socket) => Ok(Pin::new(socket)),
            None => Err(std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                "this connection's socket was handed to its event stream",
            )),
        }
    }
}

impl AsyncRead for HyperIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.get_mut().socket()?.poll_read(cx, buf)
    }
}

impl AsyncWrite for HyperIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.get_mut().socket()?.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.get_mut().socket()?.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.socket.as_ref().is_some_and(|s| s.is_write_vectored())
    }

    /// hyper flushes its socket once it has written all it holds: after an event stream's head,
    /// the socket is handed over.
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.socket()?.poll_flush(cx))?;
        if this.hand_over.answered.load(Ordering::Acquire) {
            if let Some(socket) = this.socket.take() {
                this.hand_over.hand_over(socket);
            }
        }
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.get_mut().socket()?.poll_shutdown(cx)
    }
}
