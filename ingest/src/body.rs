//! A request's body read whole: within a byte limit and one deadline, its failures mapped to the
//! API's errors (413 `body_too_large`, 408 `body_timeout`, 400 `unreadable_body`).
//!
//! A vote's body comes in one chunk, usually with its head, and is handed on as that chunk, with
//! no timer and no wrapper, list or poll past its end (`read_whole`). axum's `to_bytes` (a
//! limit around the body, and a collector with a `VecDeque` of chunks) took 1,397 instructions a
//! vote for it; this takes 640, with the body boxed once (BENCHMARKS.md, "2026-12-07 (fifth
//! session)").

use crate::Ingest;
use axum::body::{Body, Bytes, HttpBody as _};
use axum::extract::Request;
use axum::http::{header, StatusCode};
use bytes::BytesMut;
use edge::body_gap_timeout::BodyTimeoutError;
use edge::ApiError;
use http_body_util::BodyExt;
use std::future::Future;
use std::task::Poll;

/// Why a body could not be read whole.
#[derive(Debug, thiserror::Error)]
enum BodyError {
    #[error("the body is longer than {0} bytes")]
    TooLarge(usize),
    #[error("no part of the body came within the read timeout")]
    TimedOut,
    #[error("the request body could not be read: {0}")]
    Unreadable(#[source] axum::Error),
}

impl From<BodyError> for ApiError {
    fn from(e: BodyError) -> ApiError {
        match e {
            BodyError::TooLarge(limit) => ApiError::too_large(limit),
            BodyError::TimedOut => ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                "the request body did not arrive in time; send it whole and promptly",
            ),
            BodyError::Unreadable(_) => ApiError::bad_request("unreadable_body", e.to_string()),
        }
    }
}

/// Reads a request body up to `limit` bytes, whole within the body timeout.
pub async fn read_body(ingest: &Ingest, req: Request, limit: usize) -> Result<Bytes, ApiError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::too_large(limit));
    }
    // One deadline for the whole body (`NodeLayer`, around the router, bounds only the gap
    // between chunks).
    // A vote's body has usually come with its head: read it without a timer (tokio locks its
    // timer wheel to drop a timer, even one never armed), and start the deadline only if not.
    let mut read = std::pin::pin!(read_whole(req.into_body(), limit));
    let read_at_once = std::future::poll_fn(|cx| Poll::Ready(read.as_mut().poll(cx))).await;
    let read = match read_at_once {
        Poll::Ready(read) => read,
        Poll::Pending => tokio::time::timeout(ingest.config.body_read_timeout, read)
            .await
            .map_err(|_| BodyError::TimedOut)?,
    };
    Ok(read?)
}

/// The body's bytes: its one chunk as it came, or its chunks joined when there are more. It stops
/// at the body's end as the body knows it (hyper's, once its `Content-Length` is read), without
/// another poll.
async fn read_whole(mut body: Body, limit: usize) -> Result<Bytes, BodyError> {
    let mut first = Bytes::new();
    let mut joined = BytesMut::new();
    while !body.is_end_stream() {
        let Some(frame) = body.frame().await else {
            break;
        };
        let frame = frame.map_err(|e| match timed_out(&e) {
            true => BodyError::TimedOut,
            false => BodyError::Unreadable(e),
        })?;
        let Ok(chunk) = frame.into_data() else {
            continue; // trailers: a vote has no use for them
        };
        if chunk.is_empty() {
            continue;
        }
        if first.len() + joined.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge(limit));
        }
        if first.is_empty() && joined.is_empty() {
            first = chunk;
        } else {
            if joined.is_empty() {
                joined.extend_from_slice(&std::mem::take(&mut first));
            }
            joined.extend_from_slice(&chunk);
        }
    }
    Ok(if joined.is_empty() {
        first
    } else {
        joined.freeze()
    })
}

/// Whether a body's error is the router's gap timeout ([`BodyTimeoutError`]), at any depth.
fn timed_out(e: &axum::Error) -> bool {
    std::iter::successors(Some(e as &(dyn std::error::Error + 'static)), |e| {
        e.source()
    })
    .any(|e| e.is::<BodyTimeoutError>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use edge::body_gap_timeout::GapTimeoutBody;
    use proptest::prelude::*;
    use std::time::Duration;

    fn chunked(chunks: Vec<Vec<u8>>) -> Body {
        Body::from_stream(futures::stream::iter(
            chunks.into_iter().map(Ok::<_, std::io::Error>),
        ))
    }

    fn read(body: Body, limit: usize) -> Result<Bytes, BodyError> {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
            .block_on(read_whole(body, limit))
    }

    #[test]
    fn a_body_of_one_chunk_is_that_chunk_not_a_copy() {
        let chunk = Bytes::from_static(b"{\"poll_id\":1}");
        let read = read(Body::from(chunk.clone()), 64).unwrap();
        assert_eq!(read.as_ptr(), chunk.as_ptr());
        assert_eq!(read, chunk);
    }

    #[test]
    fn a_body_whose_chunks_stop_coming_is_a_408() {
        let (_tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
        let body = Body::new(GapTimeoutBody::new(
            Duration::from_millis(20),
            Body::from_stream(tokio_stream(rx)),
        ));
        let e = read(body, 64).unwrap_err();
        assert!(matches!(e, BodyError::TimedOut), "{e:?}");
        assert_eq!(ApiError::from(e).status, StatusCode::REQUEST_TIMEOUT);
    }

    #[test]
    fn a_body_that_fails_otherwise_is_a_400_that_says_why() {
        let body = Body::from_stream(futures::stream::iter([
            Ok(Bytes::from_static(b"{")),
            Err(std::io::Error::other("connection reset")),
        ]));
        let e = ApiError::from(read(body, 64).unwrap_err());
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(e.message.contains("connection reset"), "{}", e.message);
    }

    fn tokio_stream(
        mut rx: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
    ) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> {
        futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }

    proptest! {
        /// However a body is cut into chunks (empty ones too), it reads as its bytes in order when
        /// it fits the limit, and as too large, with the limit, when it does not.
        #[test]
        fn any_chunking_reads_as_the_whole_body_or_too_large(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..8),
            limit in 0usize..200,
        ) {
            let whole: Vec<u8> = chunks.concat();
            match read(chunked(chunks), limit) {
                Ok(read) => {
                    prop_assert!(whole.len() <= limit);
                    prop_assert_eq!(&read[..], &whole[..]);
                }
                Err(BodyError::TooLarge(l)) => {
                    prop_assert!(whole.len() > limit);
                    prop_assert_eq!(l, limit);
                }
                Err(e) => prop_assert!(false, "{e:?}"),
            }
        }
    }
}
