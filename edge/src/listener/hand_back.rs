//! An event stream's socket, taken back from hyper once hyper has written the stream's head.
//!
//! An event stream is a response that lasts as long as its viewer watches, and while a response
//! lasts hyper keeps its connection's 8 KiB read buffer and state (BENCHMARKS.md, "an SSE viewer
//! on a kept-alive connection at 2.3 KiB"). So hyper holds each connection's socket through a
//! [`HyperIo`], which hands the socket back ([`HandBack`]) at hyper's first flush after an event
//! stream's head: hyper flushes its socket only once it has written all it holds (the responses
//! before, and the stream's head; hyper 1's `Buffered::poll_flush` with `pipeline_flush` off,
//! its default, which the listener keeps), and the body it was given for the stream yields
//! nothing. The connection's task then drops hyper's connection and writes the stream's body
//! itself, as it writes a sniffed stream's (`event_stream.rs`).
//!
//! What the service and the socket share also counts the connection's requests and writes, for
//! the watch that closes it once idle (`idle_watch.rs`).

use super::event_stream::{Framing, Stream};
use super::idle_watch::Activity;
use super::{Admitted, StreamWriter};
use axum::body::Body;
use axum::http::{header, Method, Request, Version};
use parking_lot::Mutex;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What a connection's service and its socket share: an event stream's hand-back, and what the
/// connection has done (for its idle watch).
#[derive(Default)]
pub(super) struct HandBack {
    /// Requests begun and answered, writes (`idle_watch.rs`).
    pub(super) activity: Activity,
    /// How a stream answering the request in flight is framed (`LEFT_TO_HYPER`: hyper writes
    /// it all).
    framing: AtomicU8,
    /// An event stream was answered: the socket is handed back at hyper's next flush.
    answered: AtomicBool,
    /// The socket was handed back.
    handed: AtomicBool,
    parts: Mutex<Parts>,
}

/// The stream's body (from the service) and the socket (from hyper's IO), as each comes.
#[derive(Default)]
struct Parts {
    stream: Option<(Body, Framing, Option<StreamWriter>)>,
    socket: Option<Admitted>,
}

const LEFT_TO_HYPER: u8 = 0;
const CHUNKED: u8 = 1;
const UNTIL_CLOSE: u8 = 2;

impl HandBack {
    /// Notes how a stream answering `request` would be framed: only a body-less `GET`'s stream
    /// is taken (a `HEAD` has no body to write, and a request's own body would still be coming
    /// in), in chunks on HTTP/1.1 and until the connection closes on HTTP/1.0, as hyper would.
    /// The request is counted as begun.
    pub(super) fn note_request<B>(&self, request: &Request<B>) {
        self.activity.request_begun();
        // A vote (a POST) is turned away before any header is looked at.
        let has_body = || {
            let headers = request.headers();
            headers.contains_key(header::CONTENT_LENGTH)
                || headers.contains_key(header::TRANSFER_ENCODING)
        };
        let framing = match (request.method(), request.version()) {
            (&Method::GET, _) if has_body() => LEFT_TO_HYPER,
            (&Method::GET, Version::HTTP_11) => CHUNKED,
            (&Method::GET, Version::HTTP_10) => UNTIL_CLOSE,
            _ => LEFT_TO_HYPER,
        };
        self.framing.store(framing, Ordering::Relaxed);
    }

    /// Keeps the event stream `body` answering the request in flight (and the handler's own
    /// `writer` of it, if any), for the connection's task to write once hyper has handed the
    /// socket back; `body` back if the request's stream is hyper's to write (`note_request`).
    pub(super) fn answer(&self, body: Body, writer: Option<StreamWriter>) -> Result<(), Body> {
        let framing = match self.framing.load(Ordering::Relaxed) {
            CHUNKED => Framing::Chunked,
            UNTIL_CLOSE => Framing::UntilClose,
            _ => return Err(body),
        };
        self.parts.lock().stream = Some((body, framing, writer));
        self.answered.store(true, Ordering::Release);
        Ok(())
    }

    /// Whether the socket has been handed back (then hyper's connection is done with).
    pub(super) fn is_handed_back(&self) -> bool {
        self.handed.load(Ordering::Acquire)
    }

    /// The socket and the stream to write on it (its head written), once handed back.
    pub(super) fn take(&self) -> Option<(Admitted, Stream)> {
        let mut parts = self.parts.lock();
        let socket = parts.socket.take()?;
        let (body, framing, writer) = parts.stream.take()?;
        let stream = Stream {
            head: None,
            body,
            framing,
            writer,
        };
        Some((socket, stream))
    }

    fn hand_back(&self, socket: Admitted) {
        self.parts.lock().socket = Some(socket);
        self.handed.store(true, Ordering::Release);
    }
}

/// A connection's socket as hyper holds it, until an event stream takes it (see the module doc).
pub(super) struct HyperIo {
    socket: Option<Admitted>,
    hand_back: Arc<HandBack>,
}

impl HyperIo {
    pub(super) fn new(socket: Admitted, hand_back: Arc<HandBack>) -> Self {
        Self {
            socket: Some(socket),
            hand_back,
        }
    }

    /// The socket, unless an event stream has taken it.
    pub(super) fn into_socket(self) -> Option<Admitted> {
        self.socket
    }

    /// A write that moved bytes is the connection's activity (a long answer drained slowly), and
    /// one waiting for room keeps it busy (the write-stall timeout bounds that).
    fn count_write(&self, written: &Poll<std::io::Result<usize>>) {
        let activity = &self.hand_back.activity;
        match written {
            Poll::Ready(result) => activity.write_ended(matches!(result, Ok(1..))),
            Poll::Pending => activity.write_blocked(),
        }
    }

    fn socket(&mut self) -> std::io::Result<Pin<&mut Admitted>> {
        match &mut self.socket {
            Some(socket) => Ok(Pin::new(socket)),
            None => Err(std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                "this connection's socket was handed back for its event stream",
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
        let this = self.get_mut();
        let written = this.socket()?.poll_write(cx, buf);
        this.count_write(&written);
        written
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let written = this.socket()?.poll_write_vectored(cx, bufs);
        this.count_write(&written);
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.socket.as_ref().is_some_and(|s| s.is_write_vectored())
    }

    /// hyper flushes its socket once it has written all it holds: after an event stream's head,
    /// the socket is handed back.
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.socket()?.poll_flush(cx))?;
        if this.hand_back.answered.load(Ordering::Acquire) {
            if let Some(socket) = this.socket.take() {
                this.hand_back.hand_back(socket);
            }
        }
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.get_mut().socket()?.poll_shutdown(cx)
    }
}
