//! A live stream that writes its own body: a handler offers a [`StreamWriter`] as an extension of
//! its event-stream response, and once the listener has written the response's head it hands the
//! socket over ([`LiveConnection`]) instead of writing the body. The realtime service writes its
//! event streams so, in the sweeps its WebSocket viewers are written in: one non-blocking write of
//! a frame's shared bytes per viewer, no task woken and no chunk framed per viewer.
//!
//! The body stays the answer wherever the socket is not handed over: a stream on HTTP/1.0, which
//! has no chunks; a `GET` with a body, or a `HEAD` (its head alone), which hyper answers whole; a
//! router served by another server. A handler gives both, and whichever is used first has the
//! stream.

use super::LiveConnection;
use futures::future::BoxFuture;
use parking_lot::Mutex;
use std::future::Future;
use std::sync::Arc;
use tokio::sync::watch;

type Write =
    Box<dyn FnOnce(LiveConnection, watch::Receiver<bool>) -> BoxFuture<'static, ()> + Send>;

/// What writes an event stream's body once its head is written (see the module doc).
#[derive(Clone)]
pub struct StreamWriter(Arc<Mutex<Option<Write>>>);

impl StreamWriter {
    /// `write` gets the connection, its chunked head written, and the node's stop signal (`true`
    /// once it stops: the stream ends then with its last chunk); the connection closes when the
    /// future it returns ends.
    pub fn new<F>(
        write: impl FnOnce(LiveConnection, watch::Receiver<bool>) -> F + Send + 'static,
    ) -> Self
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let write: Write = Box::new(move |conn, stopping| Box::pin(write(conn, stopping)));
        Self(Arc::new(Mutex::new(Some(write))))
    }

    /// The writer, once.
    pub(super) fn take(&self) -> Option<Write> {
        self.0.lock().take()
    }
}

impl std::fmt::Debug for StreamWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StreamWriter")
    }
}
