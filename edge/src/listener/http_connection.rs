//! A connection hyper serves (everything the listener did not take as an event stream at its
//! start), until it ends or the node stops.
//!
//! An event stream can still come this way: asked for on a connection that carried other requests
//! first (a browser's kept-alive connection, or a proxy's pooled one), or in a head the listener
//! did not take. Once a response on the connection is an event stream ([`on_event_streams`]),
//! hyper writes its head and hands the socket back (`hand_back.rs`); the connection's task drops
//! hyper's connection (its buffers) and writes the stream on the runtime the node names for
//! viewers ([`HandOff`]), as a sniffed stream is: below the vote path's priority, not beside the
//! votes, its socket registered with that runtime. The connection ends with the stream.

use super::event_stream::{is_event_stream, write_stream, HandOff};
use super::hand_back::{HandBack, HyperIo};
use super::idle_watch::idle_past;
use super::{HttpMetrics, StreamWriter};
use axum::body::{Body, Bytes};
use axum::http::{header, HeaderValue, Request};
use axum::response::Response;
use futures::StreamExt;
use hyper::body::{Body as HttpBody, Incoming};
use hyper::server::conn::http1::UpgradeableConnection;
use hyper::service::HttpService;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use tokio::sync::watch;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What the connection's service notes of each request: how an event stream answering it is
/// framed (`HandBack::note_request`).
pub(super) fn note_requests<B>(
    hand_back: Arc<HandBack>,
) -> impl FnMut(Request<B>) -> Request<B> + Clone {
    move |request| {
        hand_back.note_request(&request);
        request
    }
}

/// What the connection's service does to each response. One that is not an event stream answers
/// its request (`idle_watch.rs`): at once when its body's length is known, else at its body's
/// end ([`AnsweredAtEnd`]). An event stream stays in flight while it lasts; it is counted and
/// answered with `connection: close` (the connection ends with the stream, as a sniffed stream's
/// does, and never carries votes on the viewers' runtime), framed by hyper (a handler's own
/// length or encoding is dropped, so the head says what the stream's writer does), and its body
/// kept for the connection's task ([`HandBack::answer`]); hyper is given a body that never
/// yields, so it writes the head and then nothing, and hands the socket back. A stream hyper
/// writes itself (a `HEAD`, or a request with a body) ends when the node stops, instead of
/// holding the shutdown for its grace period.
pub(super) fn on_event_streams(
    hand_back: Arc<HandBack>,
    stopping: watch::Receiver<bool>,
    metrics: Arc<HttpMetrics>,
) -> impl FnOnce(Response) -> Response + Clone {
    // One handle for the connection: the function is cloned for each request (each vote too).
    let shared = Arc::new((hand_back, stopping, metrics));
    move |response| {
        let (hand_back, stopping, metrics) = &*shared;
        if !is_event_stream(response.status(), response.headers()) {
            if response.body().size_hint().exact().is_some() {
                hand_back.activity.request_answered();
                return response;
            }
            return response.map(|body| Body::new(AnsweredAtEnd::new(body, hand_back.clone())));
        }
        metrics
            .event_streams_through_hyper
            .fetch_add(1, Ordering::Relaxed);
        let (mut parts, body) = response.into_parts();
        let writer = parts.extensions.remove::<StreamWriter>();
        let body = match hand_back.answer(body, writer) {
            Ok(()) => Body::from_stream(futures::stream::pending::<Result<Bytes, Infallible>>()),
            Err(body) => {
                let mut stopping = stopping.clone();
                let stopped = async move { drop(stopping.wait_for(|stop| *stop).await) };
                Body::from_stream(body.into_data_stream().take_until(stopped))
            }
        };
        let headers = &mut parts.headers;
        headers.remove(header::CONTENT_LENGTH);
        headers.remove(header::TRANSFER_ENCODING);
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        Response::from_parts(parts, body)
    }
}

/// A connection as hyper serves it, boxed: held inline, hyper's connection state would size the
/// task (BENCHMARKS.md, "an SSE viewer at 2.3 KiB").
pub(super) type Connection<S> = Pin<Box<UpgradeableConnection<TokioIo<HyperIo>, S>>>;

/// Serves hyper's `connection` until it ends, until it has waited `header_read_timeout` for a
/// request's head (`idle_watch.rs`; counted as a header timeout), or until the node stops (then
/// the request in flight finishes and no other is taken); once hyper has handed the socket to an
/// event stream (`hand_back`), writes the stream (which ends at once with its last chunk if the
/// node is stopping), on the runtime `hand_off` names (this task returns once it has handed it
/// off).
pub(super) async fn serve<S, B>(
    mut connection: Connection<S>,
    hand_back: Arc<HandBack>,
    header_read_timeout: Duration,
    mut stopping: watch::Receiver<bool>,
    hand_off: Option<HandOff<'_>>,
    metrics: Arc<HttpMetrics>,
    peer: SocketAddr,
) where
    S: HttpService<Incoming, ResBody = B>,
    S::Error: Into<BoxError>,
    B: HttpBody + 'static,
    B::Error: Into<BoxError>,
{
    let closed_idle = || {
        metrics.header_timeouts.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(%peer, "closing a connection that waited too long for a request's head");
    };
    // Biased: a head that came as the watch's last tick did is taken, not closed on.
    let ended = {
        // The watch runs on while a stopping node lets the request in flight finish: a head
        // coming at a trickle does not hold the shutdown past the timeout either.
        let idle = idle_past(&hand_back.activity, header_read_timeout);
        tokio::pin!(idle);
        tokio::select! {
            biased;
            ended = until_handed_back(connection.as_mut(), &hand_back) => ended,
            () = idle.as_mut() => return closed_idle(),
            _ = async { drop(stopping.wait_for(|stop| *stop).await) } => {
                // Finish the request in flight, take no other.
                // An event stream answered but not yet handed back is handed back once hyper
                // has written its head.
                connection.as_mut().graceful_shutdown();
                tokio::select! {
                    biased;
                    ended = until_handed_back(connection.as_mut(), &hand_back) => ended,
                    () = idle.as_mut() => return closed_idle(),
                }
            }
        }
    };
    // hyper's buffers go now, whatever comes next.
    drop(connection);
    let Some((socket, stream)) = hand_back.take() else {
        return report(ended.unwrap_or(Ok(())), peer);
    };
    drop(hand_back);
    write_stream(socket, stream, stopping, hand_off).await
}

/// Polls `connection` until it ends (`Some`) or has handed its socket back (`None`), looked at
/// after each poll: the hand-back happens within one.
async fn until_handed_back<S, B>(
    mut connection: Pin<&mut UpgradeableConnection<TokioIo<HyperIo>, S>>,
    hand_back: &HandBack,
) -> Option<hyper::Result<()>>
where
    S: HttpService<Incoming, ResBody = B>,
    S::Error: Into<BoxError>,
    B: HttpBody + 'static,
    B::Error: Into<BoxError>,
{
    poll_fn(|cx| match connection.as_mut().poll(cx) {
        _ if hand_back.is_handed_back() => Poll::Ready(None),
        Poll::Ready(ended) => Poll::Ready(Some(ended)),
        Poll::Pending => Poll::Pending,
    })
    .await
}

fn report(ended: hyper::Result<()>, peer: SocketAddr) {
    if let Err(e) = ended {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// A response body written in pieces, whose end (or drop, when the connection ends first)
/// answers its request for the connection's idle watch: until then the request is in flight.
struct AnsweredAtEnd {
    body: Body,
    hand_back: Option<Arc<HandBack>>,
}

impl AnsweredAtEnd {
    fn new(body: Body, hand_back: Arc<HandBack>) -> Self {
        Self {
            body,
            hand_back: Some(hand_back),
        }
    }

    fn answered(&mut self) {
        if let Some(hand_back) = self.hand_back.take() {
            hand_back.activity.request_answered();
        }
    }
}

impl HttpBody for AnsweredAtEnd {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
            self.answered();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

impl Drop for AnsweredAtEnd {
    fn drop(&mut self) {
        self.answered();
    }
}
