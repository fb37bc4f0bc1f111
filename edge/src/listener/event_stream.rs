//! Event streams (Server-Sent Events) served without hyper's per-connection buffers.
//!
//! An event stream is one response that never ends: on hyper's HTTP/1 connection it keeps an 8 KiB
//! write buffer for the response head and an 8 KiB read buffer for the client's end, for as long as
//! the viewer watches (BENCHMARKS.md, "Where an SSE viewer's 12.6 KiB went"). So a new connection
//! whose first request is a complete `GET` asking for `text/event-stream` ([`sniff`], which only
//! peeks) is answered here instead: the request goes through the same router (its handler, access
//! checks and JSON errors are the ones hyper's path would run), the head is written once, and the
//! body's frames go out as chunks, each with one vectored write of the shared frame. A one-byte read
//! notices the viewer leaving. The connection closes when the stream ends; anything else (a partial
//! head, another request, a WebSocket upgrade) is hyper's, untouched. A handler that writes its
//! own stream ([`StreamWriter`]) is handed the socket after the head instead of its body being
//! written, here and on hyper's path.

use super::{Admitted, ConnectionContext, LiveConnection, StreamWriter};
use crate::node::NodeService;
use axum::body::Body;
use axum::http::{header, HeaderMap, Method, Request, StatusCode, Version};
use axum::Router;
use http_body_util::BodyExt;
use std::io::IoSlice;
use std::pin::Pin;
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;
use tower::util::Oneshot;
use tower::ServiceExt;

/// The largest request head looked at; a longer one goes to hyper.
const MAX_HEAD: usize = 4096;
/// How long a response that is not a stream (an error) may take to produce its body.
const BODY_TIMEOUT: Duration = Duration::from_secs(5);

/// What a new connection's first bytes are.
pub(super) enum Sniffed {
    /// A whole `GET` head asking for an event stream, already read off the socket.
    EventStream(Box<Request<()>>),
    /// Anything else: for hyper (nothing was read).
    Other,
    /// Nothing arrived within the header timeout.
    Silent,
    /// The client left before saying anything.
    Gone,
}

/// Peeks at a new connection's first request (waiting at most `wait` for its first bytes).
pub(super) async fn sniff(stream: &mut TcpStream, wait: Duration) -> Sniffed {
    let mut buf = vec![0u8; MAX_HEAD];
    let n = match tokio::time::timeout(wait, stream.peek(&mut buf)).await {
        Err(_) => return Sniffed::Silent,
        Ok(Err(_) | Ok(0)) => return Sniffed::Gone,
        Ok(Ok(n)) => n,
    };
    let Some((request, head_len)) = event_stream_request(&buf[..n]) else {
        return Sniffed::Other;
    };
    match stream.read_exact(&mut buf[..head_len]).await {
        Ok(_) => Sniffed::EventStream(Box::new(request)),
        Err(_) => Sniffed::Gone,
    }
}

/// A complete HTTP/1.1 `GET` head with no body whose `Accept` names `text/event-stream`, and its
/// length in bytes.
fn event_stream_request(bytes: &[u8]) -> Option<(Request<()>, usize)> {
    // Votes are POSTs: turned away before any parsing.
    if !bytes.starts_with(b"GET ") {
        return None;
    }
    let mut headers = [httparse::EMPTY_HEADER; 48];
    let mut parsed = httparse::Request::new(&mut headers);
    let httparse::Status::Complete(head_len) = parsed.parse(bytes).ok()? else {
        return None;
    };
    if parsed.version != Some(1) {
        return None;
    }
    let headers = parsed.headers.iter();
    let named =
        |name: &'static str| (headers.clone()).filter(move |h| h.name.eq_ignore_ascii_case(name));
    let wants_events = named("accept")
        .any(|h| (h.value.windows(17)).any(|w| w.eq_ignore_ascii_case(b"text/event-stream")));
    let has_body =
        named("content-length").next().is_some() || named("transfer-encoding").next().is_some();
    // An upgrade (a WebSocket) is hyper's, whatever it accepts.
    let upgrade = named("upgrade").next().is_some();
    if !wants_events || has_body || upgrade {
        return None;
    }
    let mut request = Request::builder()
        .method(Method::GET)
        .uri(parsed.path?)
        .version(Version::HTTP_11);
    for h in parsed.headers.iter() {
        request = request.header(h.name, h.value);
    }
    Some((request.body(()).ok()?, head_len))
}

/// The router's answer to a sniffed request, still to run.
pub(super) type Answer = Pin<Box<Oneshot<NodeService<Router>, Request<Body>>>>;

/// What `router` answers the sniffed `request`, with what handlers learn of its connection. Boxed
/// until it has run, and the request out of its box: neither sizes the task that serves the
/// stream for as long as the viewer watches.
pub(super) fn answer(
    router: NodeService<Router>,
    request: Box<Request<()>>,
    context: ConnectionContext,
) -> Answer {
    let mut request = *request;
    request.extensions_mut().insert(context);
    Box::pin(router.oneshot(request.map(|()| Body::empty())))
}

/// Where event streams are written once answered: a task on another runtime, tracked so the
/// listener's shutdown waits for it.
pub(super) struct HandOff<'a> {
    pub runtime: &'a Handle,
    pub tracker: &'a TaskTracker,
}

/// Serves the router's `answer` on `io`: an event stream until it ends, the client leaves or the
/// node stops (`stopping`), handed off when `hand_off` says where (this task returns once it
/// has); any other answer whole. The connection closes after.
pub(super) async fn serve(
    mut io: Admitted,
    answer: Answer,
    stopping: watch::Receiver<bool>,
    hand_off: Option<HandOff<'_>>,
) {
    let response = match answer.await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    let (mut parts, body) = response.into_parts();
    if is_event_stream(parts.status, &parts.headers) {
        let head = response_head(parts.status, &parts.headers, None);
        let writer = parts.extensions.remove::<StreamWriter>();
        // The head is all a stream needs of the response's headers: their map (some 600 bytes)
        // is not held while the viewer watches.
        drop(parts);
        let stream = Stream {
            head: Some(head),
            body,
            framing: Framing::Chunked,
            writer,
        };
        write_stream(io, stream, stopping, hand_off).await
    } else {
        // Boxed: a stream's task is not sized by what only an error's answer needs.
        let ended = Box::pin(whole_response(&mut io, parts.status, &parts.headers, body)).await;
        if let Err(e) = ended {
            tracing::debug!(error = %e, "an event stream's connection ended with an error");
        }
    }
}

/// Whether a response is an event stream (a `200` of `text/event-stream`).
pub(super) fn is_event_stream(status: StatusCode, headers: &HeaderMap) -> bool {
    status == StatusCode::OK
        && (headers.get(header::CONTENT_TYPE))
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"))
}

/// How an event stream's body is framed: chunked (HTTP/1.1), or by the end of the connection
/// (HTTP/1.0, which has no chunks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    Chunked,
    UntilClose,
}

/// An event stream answered, to be written.
pub(super) struct Stream {
    /// The response's head, unless already written (by hyper).
    pub head: Option<Vec<u8>>,
    pub body: Body,
    pub framing: Framing,
    /// What writes the body instead, if the handler offered it: given the socket after the head
    /// of a chunked stream.
    pub writer: Option<StreamWriter>,
}

/// Writes `stream` on `io` until it ends, the client leaves or the node stops (or, after the head
/// of a chunked stream, hands the socket to the handler's [`StreamWriter`]): on the runtime
/// `hand_off` names, the socket registered there (this task returns once it has handed it off),
/// or here.
pub(super) async fn write_stream(
    mut io: Admitted,
    mut stream: Stream,
    stopping: watch::Receiver<bool>,
    hand_off: Option<HandOff<'_>>,
) {
    let writer = stream.writer.take();
    let writer = writer.filter(|_| stream.framing == Framing::Chunked);
    let own = writer.as_ref().and_then(StreamWriter::take);
    if let Some(write) = own {
        // The head here, where the connection was answered (a few hundred bytes a new socket
        // takes at once): the task handed off is the writer's alone, no bigger than it.
        drop(stream.body);
        if let Some(head) = stream.head {
            if let Err(e) = io.write_all(&head).await {
                return tracing::debug!(error = %e, "an event stream's head could not be written");
            }
        }
        return match hand_off {
            Some(to) => hand_to(io, &to, |io| write(LiveConnection::new(io), stopping)),
            None => write(LiveConnection::new(io), stopping).await,
        };
    }
    match hand_off {
        Some(to) => hand_to(io, &to, |io| send_stream(io, stream, stopping)),
        None => send_stream(io, stream, stopping).await,
    }
}

/// Runs `task` on `to`'s runtime, tracked, with `io` registered there (moved from within that
/// runtime's context, here: the task spawned holds the stream alone).
fn hand_to<F>(io: Admitted, to: &HandOff<'_>, task: impl FnOnce(Admitted) -> F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let moved = {
        let _there = to.runtime.enter();
        io.rehome()
    };
    match moved {
        Ok(io) => drop(to.tracker.spawn_on(task(io), to.runtime)),
        Err(e) => tracing::debug!(error = %e, "an event stream's socket could not move"),
    }
}

/// An event stream's head (unless already written), then its body until it ends, the client
/// leaves or the node stops.
async fn send_stream(mut io: Admitted, stream: Stream, mut stopping: watch::Receiver<bool>) {
    let Stream {
        head,
        body,
        framing,
        writer: _,
    } = stream;
    let written = match head {
        Some(head) => io.write_all(&head).await,
        None => Ok(()),
    };
    let ended = match written {
        Ok(()) => stream_body(&mut io, body, framing, &mut stopping).await,
        Err(e) => Err(e),
    };
    if let Err(e) = ended {
        tracing::debug!(error = %e, "an event stream's connection ended with an error");
    }
}

/// A response that is not a stream, with its length, then the end of the connection.
async fn whole_response(
    io: &mut Admitted,
    status: StatusCode,
    headers: &HeaderMap,
    body: Body,
) -> std::io::Result<()> {
    let body = match tokio::time::timeout(BODY_TIMEOUT, body.collect()).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        _ => {
            return Err(std::io::Error::other(
                "the response's body failed or took too long",
            ))
        }
    };
    // No body, nor a length, where HTTP has none.
    let bodiless = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let body = if bodiless { Default::default() } else { body };
    let head = response_head(status, headers, (!bodiless).then_some(body.len()));
    write_all_vectored(io, &mut [IoSlice::new(&head), IoSlice::new(&body)]).await?;
    io.shutdown().await
}

/// Each data frame of `body` (as a chunk, if `framing` says so), until the body ends, the client
/// leaves or the node stops.
async fn stream_body(
    io: &mut Admitted,
    mut body: Body,
    framing: Framing,
    stopping: &mut watch::Receiver<bool>,
) -> std::io::Result<()> {
    let mut incoming = [0u8; 1];
    // Made once: every stream waits on the node's one stop channel, and a wait made anew for
    // each frame would lock that channel's waiter list to join it and again to leave it.
    let stopped = stopping.wait_for(|stop| *stop);
    tokio::pin!(stopped);
    loop {
        let frame = tokio::select! {
            frame = body.frame() => frame,
            // The client closed (or reset) its end, or says something: an event stream's client
            // has nothing to say, and reading it byte by byte is not worth a core.
            _ = io.read(&mut incoming) => return Ok(()),
            _ = &mut stopped => break,
        };
        match frame {
            None => break,
            Some(Err(e)) => return Err(std::io::Error::other(e)),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    if framing == Framing::UntilClose {
                        io.write_all(&data).await?;
                    } else if !data.is_empty() {
                        let mut size = [0u8; 18];
                        let chunk = &mut [
                            IoSlice::new(chunk_size_line(data.len(), &mut size)),
                            IoSlice::new(&data),
                            IoSlice::new(b"\r\n"),
                        ];
                        write_all_vectored(io, chunk).await?;
                    }
                }
            }
        }
    }
    if framing == Framing::Chunked {
        io.write_all(b"0\r\n\r\n").await?;
    }
    io.shutdown().await
}

/// A chunk's size line (`<hex>\r\n`), written into `buf`: no allocation per frame per viewer.
fn chunk_size_line(len: usize, buf: &mut [u8; 18]) -> &[u8] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    buf[16..].copy_from_slice(b"\r\n");
    let (mut n, mut start) = (len, 16);
    loop {
        start -= 1;
        buf[start] = HEX[n & 0xf];
        n >>= 4;
        if n == 0 {
            return &buf[start..];
        }
    }
}

/// The status line and headers (the handler's, then `date`, `connection: close` and the framing:
/// `content-length` for a whole body, chunked for a stream).
fn response_head(status: StatusCode, headers: &HeaderMap, length: Option<usize>) -> Vec<u8> {
    let mut head = Vec::with_capacity(256);
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(status.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    head.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        if matches!(
            *name,
            header::CONTENT_LENGTH | header::TRANSFER_ENCODING | header::CONNECTION | header::DATE
        ) {
            continue;
        }
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"date: ");
    head.extend_from_slice(httpdate::fmt_http_date(SystemTime::now()).as_bytes());
    head.extend_from_slice(b"\r\nconnection: close\r\n");
    match length {
        Some(n) => head.extend_from_slice(format!("content-length: {n}\r\n\r\n").as_bytes()),
        None if status == StatusCode::OK => {
            head.extend_from_slice(b"transfer-encoding: chunked\r\n\r\n")
        }
        None => head.extend_from_slice(b"\r\n"),
    }
    head
}

async fn write_all_vectored(
    io: &mut Admitted,
    mut bufs: &mut [IoSlice<'_>],
) -> std::io::Result<()> {
    while !bufs.is_empty() {
        let n = io.write_vectored(bufs).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut bufs, n);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_whole_event_stream_gets_are_taken() {
        let sse =
            b"GET /v1/polls/1/sse?key=k HTTP/1.1\r\nhost: x\r\naccept: text/event-stream\r\n\r\n";
        let (request, len) = event_stream_request(sse).expect("an event stream request");
        assert_eq!(len, sse.len());
        assert_eq!(request.uri(), "/v1/polls/1/sse?key=k");
        assert_eq!(request.headers()["host"], "x");
        // Case and other types beside it do not matter.
        assert!(event_stream_request(
            b"GET /s HTTP/1.1\r\nAccept: text/html, Text/Event-Stream\r\n\r\n"
        )
        .is_some());
        for other in [
            &b"POST /v1/votes HTTP/1.1\r\naccept: text/event-stream\r\n\r\n"[..],
            b"GET /v1/polls/1/sse HTTP/1.1\r\naccept: text/event-stream\r\n",
            b"GET /v1/polls/1/sse HTTP/1.0\r\naccept: text/event-stream\r\n\r\n",
            b"GET /v1/polls/1/ws HTTP/1.1\r\nupgrade: websocket\r\n\r\n",
            b"GET /ws HTTP/1.1\r\nupgrade: websocket\r\naccept: text/event-stream\r\n\r\n",
            b"GET /s HTTP/1.1\r\naccept: text/event-stream\r\ncontent-length: 3\r\n\r\nabc",
            b"GET /s HTTP/1.1\r\nbad header\r\n\r\n",
        ] {
            assert!(
                event_stream_request(other).is_none(),
                "{}",
                String::from_utf8_lossy(other)
            );
        }
    }

    #[test]
    fn chunk_sizes_are_lowercase_hex_lines() {
        let mut buf = [0u8; 18];
        for n in [0usize, 9, 10, 255, 4096, 17_301, usize::MAX] {
            let line = chunk_size_line(n, &mut buf).to_vec();
            assert_eq!(line, format!("{n:x}\r\n").into_bytes(), "{n}");
        }
    }

    #[test]
    fn a_head_keeps_the_handlers_headers_and_sets_its_own_framing() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, "text/event-stream".parse().unwrap());
        headers.insert(header::CONTENT_LENGTH, "99".parse().unwrap());
        let head = String::from_utf8(response_head(StatusCode::OK, &headers, None)).unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ndate: "));
        assert!(head.ends_with("connection: close\r\ntransfer-encoding: chunked\r\n\r\n"));
        assert!(!head.contains("99"));
        let head = String::from_utf8(response_head(
            StatusCode::NOT_FOUND,
            &HeaderMap::new(),
            Some(12),
        ))
        .unwrap();
        assert!(head.starts_with("HTTP/1.1 404 Not Found\r\n"));
        assert!(head.ends_with("content-length: 12\r\n\r\n"));
        let head = String::from_utf8(response_head(
            StatusCode::NO_CONTENT,
            &HeaderMap::new(),
            None,
        ))
        .unwrap();
        assert!(head.ends_with("connection: close\r\n\r\n"), "{head}");
    }
}
