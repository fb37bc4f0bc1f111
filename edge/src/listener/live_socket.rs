//! What a live connection's handler shares with the socket's owner (the node's listener).
//!
//! - A request for a small kernel send buffer, set before the socket's next write: a viewer is
//!   sent its next state only once its previous frame has left the process, and a small kernel
//!   buffer keeps the frames waiting in the kernel few too.
//! - Whether the socket's last write had to wait for room, with a waker: an event stream takes
//!   its next frame only once the socket is taking writes again (the HTTP server has written what
//!   it held), so a slow SSE viewer is not handed a queue of old frames (hyper would queue up to
//!   16 behind a slow socket).
//!
//! Handlers find it in the request's [`ConnectionContext`](super::ConnectionContext); it is absent
//! where the socket's owner does not offer it (then nothing is asked and nothing waited for).

use futures::task::AtomicWaker;
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::task::Poll;

#[derive(Debug, Clone, Default)]
pub struct LiveSocket(Arc<State>);

#[derive(Debug, Default)]
struct State {
    /// A live stream's handler has this socket (it asked for a send buffer or follows writes).
    live: AtomicBool,
    send_buffer: AtomicU32,
    /// Someone waits on `blocked` (only then do writes report).
    tracked: AtomicBool,
    /// The socket's last write had to wait for room.
    blocked: AtomicBool,
    waker: AtomicWaker,
}

impl LiveSocket {
    /// Asks for a kernel send buffer of `bytes`.
    pub fn request_send_buffer(&self, bytes: u32) {
        self.0.live.store(true, Ordering::Relaxed);
        self.0.send_buffer.store(bytes, Ordering::Relaxed);
    }

    /// Whether a live stream (a WebSocket or an event stream) has this socket: its reads are not
    /// new requests.
    pub fn is_live(&self) -> bool {
        self.0.live.load(Ordering::Relaxed)
    }

    /// The send buffer asked for, once (0: nothing asked, or already taken).
    pub fn take_send_buffer(&self) -> u32 {
        if self.0.send_buffer.load(Ordering::Relaxed) == 0 {
            return 0;
        }
        self.0.send_buffer.swap(0, Ordering::Relaxed)
    }

    /// The socket's owner reports each write: `blocked` when it had to wait for room.
    pub fn wrote(&self, blocked: bool) {
        if self.0.tracked.load(Ordering::Relaxed) {
            self.0.blocked.store(blocked, Ordering::Release);
            if !blocked {
                self.0.waker.wake();
            }
        }
    }

    /// Starts following the socket's writes.
    pub fn track(&self) {
        self.0.live.store(true, Ordering::Relaxed);
        self.0.tracked.store(true, Ordering::Relaxed);
    }

    /// How many hold this socket's shared state.
    #[cfg(test)]
    pub(super) fn holders(&self) -> usize {
        Arc::strong_count(&self.0)
    }

    /// Waits until the socket's last write did not have to wait (at once if it did not).
    pub async fn writable(&self) {
        poll_fn(|cx| {
            if !self.0.blocked.load(Ordering::Acquire) {
                return Poll::Ready(());
            }
            self.0.waker.register(cx.waker());
            if self.0.blocked.load(Ordering::Acquire) {
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_wait_ends_when_the_socket_takes_writes_again() {
        let live = LiveSocket::default();
        live.wrote(true);
        tokio::time::timeout(Duration::from_secs(1), live.writable())
            .await
            .expect("untracked writes do not block");
        live.track();
        live.wrote(true);
        let waiter = {
            let live = live.clone();
            tokio::spawn(async move { live.writable().await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "the socket is blocked");
        live.wrote(false);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken once the socket takes writes")
            .unwrap();
    }

    #[test]
    fn the_send_buffer_request_is_taken_once() {
        let live = LiveSocket::default();
        assert_eq!(live.take_send_buffer(), 0);
        live.request_send_buffer(8192);
        assert_eq!(live.take_send_buffer(), 8192);
        assert_eq!(live.take_send_buffer(), 0);
    }
}
