//! What a request's handler learns of the connection it came on: one request extension, so a
//! request costs one entry in its extensions, not one per fact.
//!
//! - the client's address (rate limits per address);
//! - what a live stream shares with the socket's owner ([`LiveSocket`]: a small send buffer, what
//!   the socket has written);
//! - on a node taking votes, when the kernel received the request's bytes ([`Arrival`]: the
//!   edge's admission judges a vote by how long it waited for a core).
//!
//! The node's listener inserts it into every request it serves; a router served elsewhere (a
//! test's, another server's) finds none, and each accessor answers `None` there.

use super::{Arrival, LiveSocket};
use axum::http::Request;
use std::net::SocketAddr;
use std::time::Duration;

/// What the node's listener tells a request's handler about the connection the request came on
/// (one request extension; cloning it clones two `Arc`s).
#[derive(Debug, Clone)]
pub struct ConnectionContext {
    /// The client's address.
    pub peer: SocketAddr,
    /// What a live stream's handler shares with the socket's owner.
    pub live: LiveSocket,
    /// When the kernel received what the connection read (none where stamps are off).
    pub arrival: Option<Arrival>,
}

impl ConnectionContext {
    /// The context the listener gave `request`, if it came through the node's listener.
    pub fn of<B>(request: &Request<B>) -> Option<&Self> {
        request.extensions().get::<Self>()
    }

    /// The client's address of `request`, where the listener gave it.
    pub fn peer_of<B>(request: &Request<B>) -> Option<SocketAddr> {
        Self::of(request).map(|context| context.peer)
    }

    /// How long `request` had waited for the node when this is called, once per read (see
    /// [`Arrival::waited`]); `None` where nothing was stamped.
    pub fn waited_of<B>(request: &Request<B>) -> Option<Duration> {
        Self::of(request)?.arrival.as_ref()?.waited()
    }
}
