//! A connection hyper serves (everything the listener did not take as an event stream at its
//! start), until it ends or the node stops.
//!
//! An event stream can still come this way: asked for on a connection that carried other requests
//! first (a browser's kept-alive connection, or a proxy's pooled one), or in a head the listener
//! did not take. Once a response on the connection is an event stream (the listener's service
//! marks it on the [`LiveSocket`], [`on_event_streams`]), the connection moves to the runtime the
//! node names for viewers ([`HandOff`]) for the rest of its life, which ends with the stream, as a
//! sniffed stream does: its frames are written below the vote path's priority, not beside the
//! votes. The socket stays registered with the runtime that accepted it; only the task moves.

use super::event_stream::{is_event_stream, HandOff};
use super::{Admitted, HttpMetrics, LiveSocket};
use axum::body::Body;
use axum::http::{header, HeaderValue};
use axum::response::Response;
use futures::StreamExt;
use hyper::body::{Body as HttpBody, Incoming};
use hyper::server::conn::http1::UpgradeableConnection;
use hyper::service::HttpService;
use hyper_util::rt::TokioIo;
use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use tokio::sync::watch;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What the connection's service does to each response: an event stream is counted and marked on
/// `live` (for [`serve`] to move the connection), and answered with `connection: close`, so the
/// connection ends with the stream (as a sniffed stream's does) and never carries votes on the
/// viewers' runtime; its body ends when the node stops, so the stream ends cleanly (its last
/// chunk) instead of holding the shutdown for its grace period.
pub(super) fn on_event_streams(
    live: LiveSocket,
    stopping: watch::Receiver<bool>,
    metrics: Arc<HttpMetrics>,
) -> impl FnOnce(Response) -> Response + Clone {
    // One handle for the connection: the function is cloned for each request (each vote too).
    let shared = Arc::new((live, stopping, metrics));
    move |response| {
        if !is_event_stream(response.status(), response.headers()) {
            return response;
        }
        let (live, stopping, metrics) = &*shared;
        metrics
            .event_streams_through_hyper
            .fetch_add(1, Ordering::Relaxed);
        live.answered_event_stream();
        let (mut parts, body) = response.into_parts();
        (parts.headers).insert(header::CONNECTION, HeaderValue::from_static("close"));
        let mut stopping = stopping.clone();
        let stopped = async move { drop(stopping.wait_for(|stop| *stop).await) };
        let body = Body::from_stream(body.into_data_stream().take_until(stopped));
        Response::from_parts(parts, body)
    }
}

/// A connection as hyper serves it, boxed: held inline, hyper's connection state would size the
/// task (BENCHMARKS.md, "an SSE viewer at 2.3 KiB").
pub(super) type Connection<S> = Pin<Box<UpgradeableConnection<TokioIo<Admitted>, S>>>;

/// Serves hyper's `connection` until it ends, or until the node stops (then the request in flight
/// finishes and no other is taken); once a response on it is an event stream, on the runtime
/// `hand_off` names (this task returns once it has moved it).
pub(super) async fn serve<S, B>(
    mut connection: Connection<S>,
    live: LiveSocket,
    mut stopping: watch::Receiver<bool>,
    hand_off: Option<HandOff<'_>>,
    metrics: Arc<HttpMetrics>,
    peer: SocketAddr,
) where
    S: HttpService<Incoming, ResBody = B> + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    B: HttpBody + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    if let Some(to) = hand_off {
        let streaming = tokio::select! {
            ended = until_event_stream(connection.as_mut(), &live) => match ended {
                Some(ended) => return report(ended, &metrics, peer),
                None => true,
            },
            // Stopping: finished here.
            _ = stopping.wait_for(|stop| *stop) => false,
        };
        if streaming {
            live.moving();
            let rest = to_the_end(connection, stopping, metrics, peer);
            drop(to.tracker.spawn_on(rest, to.runtime));
            return;
        }
    }
    to_the_end(connection, stopping, metrics, peer).await
}

/// Polls `connection` until it ends (`Some`) or a response on it has been an event stream
/// (`None`). The mark is set while the connection is polled (its service answers within that
/// poll), so it is looked at after each poll, with no waker of its own.
async fn until_event_stream<S, B>(
    mut connection: Pin<&mut UpgradeableConnection<TokioIo<Admitted>, S>>,
    live: &LiveSocket,
) -> Option<hyper::Result<()>>
where
    S: HttpService<Incoming, ResBody = B>,
    S::Error: Into<BoxError>,
    B: HttpBody + 'static,
    B::Error: Into<BoxError>,
{
    poll_fn(|cx| match connection.as_mut().poll(cx) {
        Poll::Ready(ended) => Poll::Ready(Some(ended)),
        Poll::Pending if live.has_event_stream() => Poll::Ready(None),
        Poll::Pending => Poll::Pending,
    })
    .await
}

/// Serves `connection` until it ends, finishing the request in flight once the node stops.
async fn to_the_end<S, B>(
    mut connection: Connection<S>,
    mut stopping: watch::Receiver<bool>,
    metrics: Arc<HttpMetrics>,
    peer: SocketAddr,
) where
    S: HttpService<Incoming, ResBody = B>,
    S::Error: Into<BoxError>,
    B: HttpBody + 'static,
    B::Error: Into<BoxError>,
{
    let ended = tokio::select! {
        ended = connection.as_mut() => ended,
        _ = async { drop(stopping.wait_for(|stop| *stop).await) } => {
            // Finish the request in flight, take no other.
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    report(ended, &metrics, peer)
}

fn report(ended: hyper::Result<()>, metrics: &HttpMetrics, peer: SocketAddr) {
    if let Err(e) = ended {
        if e.is_timeout() {
            metrics.header_timeouts.fetch_add(1, Ordering::Relaxed);
        }
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}
