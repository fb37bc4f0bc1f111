//! A request body's read timeout between chunks ([`GapTimeoutBody`]), with its timer armed only
//! while the body keeps the node waiting.
//!
//! tower-http's `TimeoutBody` arms a tokio timer before every poll of the body, even one whose
//! data is already there, and disarms it when the data comes: a single vote's body paid that
//! twice (its data, then its end), each a clock read and a lock of the timer wheel to register
//! and another to deregister. Here the body is polled first, and the timer is armed only when it
//! has nothing yet.

use axum::body::Body;
use axum::BoxError;
use bytes::Bytes;
use hyper::body::{Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Sleep;

/// A request body that ends in [`BodyTimeoutError`] once no chunk has come for `gap`: hyper's
/// `Incoming` as the listener serves it (axum boxes it once, around this), or any other body.
pub struct GapTimeoutBody<B = Body> {
    body: B,
    gap: Duration,
    /// Armed while the body keeps us waiting; dropped (deregistered) when a chunk comes.
    timer: Option<Pin<Box<Sleep>>>,
}

impl<B> GapTimeoutBody<B> {
    pub fn new(gap: Duration, body: B) -> Self {
        Self {
            body,
            gap,
            timer: None,
        }
    }
}

/// The error of a [`GapTimeoutBody`] whose client stopped sending: `ingest`'s `read_body` finds
/// it in a body's error by its type, and answers 408 `body_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("no part of the request body came within the read timeout")]
pub struct BodyTimeoutError;

impl<B> hyper::body::Body for GapTimeoutBody<B>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.body).poll_frame(cx) {
            this.timer = None;
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let gap = this.gap;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(gap)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(BodyTimeoutError.into()))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use http_body_util::BodyExt;

    fn chunks_every(pause: Duration, chunks: usize) -> Body {
        let stream = futures::stream::iter(0..chunks).then(move |i| async move {
            tokio::time::sleep(pause).await;
            Ok::<_, std::convert::Infallible>(Bytes::from(vec![b'x'; i + 1]))
        });
        Body::from_stream(stream)
    }

    #[tokio::test]
    async fn a_body_whose_chunks_come_within_the_gap_is_read_whole_however_long_it_takes() {
        // Ten chunks 50 ms apart: 500 ms in all, past the 300 ms gap, never a gap near it.
        let chunks = chunks_every(Duration::from_millis(50), 10);
        let body = GapTimeoutBody::new(Duration::from_millis(300), chunks);
        let bytes = body.collect().await.expect("read whole").to_bytes();
        assert_eq!(bytes.len(), (1..=10).sum::<usize>());
    }

    #[tokio::test]
    async fn a_body_that_pauses_past_the_gap_ends_in_a_timeout() {
        let chunks = chunks_every(Duration::from_millis(1000), 2);
        let body = GapTimeoutBody::new(Duration::from_millis(300), chunks);
        let started = std::time::Instant::now();
        let Err(error) = body.collect().await else {
            panic!("a body that stopped for 1 s was not cut off");
        };
        assert!(error.is::<BodyTimeoutError>(), "{error:?}");
        assert!(
            started.elapsed() < Duration::from_millis(900),
            "cut off only after the chunk"
        );
    }

    #[test]
    fn a_body_that_has_come_is_read_without_a_timer() {
        // No tokio runtime here: arming a timer would panic, so this reads without one.
        let body = GapTimeoutBody::new(Duration::from_millis(300), Body::from("abc"));
        let read = futures::executor::block_on(body.collect()).expect("read whole");
        assert_eq!(read.to_bytes(), "abc");
    }
}
