//! A poll's live viewers, WebSockets and event streams, written to in sweeps.
//!
//! A poll's viewers sit in shards ([`crate::audience`]), swept in turn on the fan-out runtime as
//! its feed renders, each about once a coalescing interval ([`crate::pacing`]), with the newest
//! frame when its sweep runs. Each viewer whose socket took everything it was last given
//! is written its new messages there and then, with one non-blocking write of the frame's shared
//! bytes ([`crate::frame::Encoded::ws_frame`], or [`crate::frame::Encoded::sse_chunk`] for an
//! event stream, whose socket the listener hands over after the stream's head:
//! `edge::listener::StreamWriter`): no task is woken, no buffer filled and nothing framed per
//! viewer, so a frame costs a viewer little more than the kernel's write. The feed's keep-alive
//! clock sweeps too: an event stream that has been sent nothing for two of its beats is written
//! a comment.
//!
//! A viewer whose socket is full (or that has just joined, or owes a pong) is parked: sweeps pass
//! it by, and its own task ([`serve`]) waits for room, writes the rest, and catches up with the
//! frame its shard was last swept with before it hands the viewer back to the sweeps. So a slow
//! viewer holds at most the rest of one frame and the kernel's small buffer, and gets the latest
//! state next: never a queue. Its task also reads what the viewer sends
//! ([`crate::websocket::ClientFrames`]; an event stream's client has nothing to say, and is gone
//! when it does), ends a WebSocket with a close frame saying the server is going away (1001) and
//! an event stream with its last chunk when the node stops (without them, if its socket then
//! takes nothing for a second), and is the only thing a viewer costs between frames.

use crate::audience::Seat;
use crate::feed::{Feed, Subscription};
use crate::frame::{Encoded, Frame, KEEP_ALIVE_CHUNK};
use crate::websocket::{close_frame, ClientFrames, Reply};
use crate::Realtime;
use bytes::Bytes;
use edge::listener::LiveConnection;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::io::{ErrorKind, IoSlice};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tungstenite::protocol::frame::coding::CloseCode;
/// How a viewer's messages are framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    /// WebSocket text frames.
    WebSocket,
    /// Server-Sent Events, each an HTTP/1.1 chunk, and a comment when the stream has been quiet.
    EventStream,
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Transport::WebSocket => "ws",
            Transport::EventStream => "sse",
        }
    }

    fn bytes(self, message: &Encoded) -> &Bytes {
        match self {
            Transport::WebSocket => message.ws_frame(),
            Transport::EventStream => message.sse_chunk(),
        }
    }

    /// What a viewer is sent last when the node stops: a WebSocket's close frame saying the
    /// server is going away (1001), so its client reconnects elsewhere at once; an event
    /// stream's last chunk.
    fn goodbye(self) -> Bytes {
        match self {
            Transport::WebSocket => close_frame(CloseCode::Away),
            Transport::EventStream => Bytes::from_static(LAST_CHUNK),
        }
    }
}

/// What a viewer's task is given besides its connection: the node's stop signal, after which
/// the viewer is sent its [`Transport::goodbye`] and let go (without it, if its socket takes
/// nothing for [`STOP_WAIT`]).
pub(crate) enum Client {
    /// A WebSocket: what the client sent behind its handshake; the realtime service's stop
    /// ([`crate::Realtime::stop`]).
    WebSocket {
        early: Bytes,
        stopping: watch::Receiver<bool>,
    },
    /// An event stream (its head written): the listener's stop.
    EventStream { stopping: watch::Receiver<bool> },
}

/// An event stream's last chunk.
const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// One live viewer: its socket and what it has been sent.
pub(crate) struct Viewer {
    conn: LiveConnection,
    /// Sees embargoed counts.
    operator: bool,
    transport: Transport,
    state: Mutex<Sent>,
    /// Wakes the viewer's task: a sweep parked it or found its socket gone.
    wake: Notify,
}

struct Sent {
    /// Sequence numbers of the last results and viewer-count messages sent.
    results: u64,
    viewers: u64,
    /// The feed's keep-alive beat when the viewer was last given something.
    beat: u64,
    /// Bytes given to the viewer and not yet written, in order.
    pending: VecDeque<Bytes>,
    /// The viewer's task writes for it; sweeps pass it by.
    parked: bool,
    /// A close frame is queued: nothing else is sent.
    closing: bool,
    /// A write failed: the connection is over.
    failed: bool,
}

/// Why a viewer's connection ended.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    /// The client left or a write failed.
    Gone,
    /// A close frame was written (the client's echoed, or one that says what it did wrong).
    Closed,
    /// A write waited `realtime.send_timeout_ms` for room.
    Slow,
    /// The node stopped and the viewer's socket then took nothing for [`STOP_WAIT`]: it is
    /// closed with what its socket holds, without its goodbye, instead of holding the node's
    /// stop up for as long as the client does not read.
    Stopped,
}

/// Writes as much of `bufs` as the socket takes now: the bytes written (0 when it is full).
fn write_now<'a>(
    stream: &TcpStream,
    bufs: impl Iterator<Item = &'a Bytes>,
) -> std::io::Result<usize> {
    let mut slices = [IoSlice::new(&[]); 8];
    let mut n = 0;
    for (slot, buf) in slices.iter_mut().zip(bufs) {
        *slot = IoSlice::new(buf);
        n += 1;
    }
    match stream.try_write_vectored(&slices[..n]) {
        Ok(written) => Ok(written),
        Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(0),
        Err(e) => Err(e),
    }
}

/// What a frame has new for one viewer: its results message, its viewer count, or both (in
/// that order), or an event stream's keep-alive; borrowed from the frame, so a sweep copies
/// nothing.
#[derive(Default)]
struct News<'a> {
    bytes: [Option<&'a Bytes>; 2],
    /// Messages among them (a keep-alive is none).
    messages: u64,
    /// A results message among them.
    results: bool,
}

/// What a sweep's visit gave a viewer ([`Viewer::offer`]): its messages, and whether new results
/// were among them (given to its socket, whole or in part).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Given {
    pub messages: u64,
    pub results: bool,
}

impl<'a> News<'a> {
    fn iter(&self) -> impl Iterator<Item = &'a Bytes> + '_ {
        self.bytes.iter().flatten().copied()
    }

    fn is_empty(&self) -> bool {
        self.bytes.iter().all(Option::is_none)
    }
}

impl Sent {
    /// The messages of `frame` this viewer has not been sent, framed for `transport`, now
    /// counted as sent; for an event stream given nothing for two beats of the feed's clock, a
    /// keep-alive; nothing while a close is queued.
    fn take_news<'a>(
        &mut self,
        frame: &'a Frame,
        operator: bool,
        transport: Transport,
    ) -> News<'a> {
        let mut news = News::default();
        if self.closing {
            return news;
        }
        // Sequences only grow: a sweep that read its frame before the viewer's task sent a newer
        // one must not send the older one after it.
        let results = frame.results(operator);
        if results.seq > self.results {
            self.results = results.seq;
            news.bytes[0] = Some(transport.bytes(&results.message));
            news.messages += 1;
            news.results = true;
        }
        if frame.viewers_message.seq > self.viewers {
            self.viewers = frame.viewers_message.seq;
            news.bytes[1] = Some(transport.bytes(&frame.viewers_message.message));
            news.messages += 1;
        }
        if news.messages > 0 {
            self.beat = self.beat.max(frame.beat);
        } else if transport == Transport::EventStream && frame.beat >= self.beat + 2 {
            self.beat = frame.beat;
            news.bytes[0] = Some(&KEEP_ALIVE_CHUNK);
        }
        news
    }

    /// Drops the first `written` bytes of `pending`.
    fn consume(&mut self, mut written: usize) {
        while written > 0 {
            let Some(front) = self.pending.front_mut() else {
                return;
            };
            if written < front.len() {
                let _ = front.split_to(written);
                return;
            }
            written -= front.len();
            self.pending.pop_front();
        }
    }
}

impl Viewer {
    fn new(conn: LiveConnection, operator: bool, transport: Transport) -> Self {
        Self {
            conn,
            operator,
            transport,
            state: Mutex::new(Sent {
                results: 0,
                viewers: 0,
                beat: 0,
                pending: VecDeque::new(),
                // Its task sends the first frame.
                parked: true,
                closing: false,
                failed: false,
            }),
            wake: Notify::new(),
        }
    }

    /// A sweep's visit: writes what `frame` has new for this viewer unless it is parked;
    /// whatever the socket does not take at once parks it. What it was given.
    pub(crate) fn offer(&self, frame: &Frame) -> Given {
        let mut sent = self.state.lock();
        if sent.parked || sent.failed {
            return Given::default();
        }
        let news = sent.take_news(frame, self.operator, self.transport);
        if news.is_empty() {
            return Given::default();
        }
        let total: usize = news.iter().map(|b| b.len()).sum();
        match write_now(self.conn.stream(), news.iter()) {
            Ok(n) if n == total => {}
            Ok(n) => {
                sent.pending.extend(news.iter().cloned());
                sent.consume(n);
                sent.parked = true;
                self.wake.notify_one();
            }
            Err(_) => {
                sent.failed = true;
                self.wake.notify_one();
            }
        }
        Given {
            messages: news.messages,
            results: news.results,
        }
    }

    /// Whether the viewer's task has writing to do (or its connection is over).
    fn needs_task(&self) -> bool {
        let sent = self.state.lock();
        sent.parked || sent.failed
    }

    /// Queues a control frame (a pong, or a close, after which nothing else is sent) behind
    /// whatever is pending, and parks the viewer so its task writes them.
    fn reply(&self, reply: Reply) {
        let mut sent = self.state.lock();
        let frame = match reply {
            Reply::Send(frame) => frame,
            Reply::Close(frame) => {
                sent.closing = true;
                frame
            }
        };
        sent.pending.push_back(frame);
        sent.parked = true;
    }

    /// The task's side: writes what is pending and then the news of the frame its shard was last
    /// swept with (`feed`'s newest when it joins) until there is none, waiting for room as long
    /// as the socket takes something within `realtime.send_timeout_ms` (within [`STOP_WAIT`]
    /// once the node has stopped, and with no news once pending is written); then hands the
    /// viewer back to the sweeps. After a close, returns once it is written.
    async fn catch_up(
        &self,
        feed: &Feed,
        seat: &Seat,
        rt: &Realtime,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), Ended> {
        let timeout = rt.settings.send_timeout;
        let mut deadline = Instant::now() + timeout;
        // Once the node stops: when the socket must have taken something by.
        let mut stop_by: Option<Instant> = None;
        loop {
            {
                let mut sent = self.state.lock();
                if sent.failed {
                    return Err(Ended::Gone);
                }
                if sent.pending.is_empty() {
                    if sent.closing {
                        return Err(Ended::Closed);
                    }
                    // Once the node stops, its goodbye is next: no more news first, which a
                    // client that reads slowly could be given until the stop's grace ran out.
                    if *stop.borrow() {
                        sent.parked = false;
                        return Ok(());
                    }
                    // The frame its shard was last swept with, which it may have missed (a newer
                    // one is its shard's next sweep's: at most one frame an interval); the
                    // newest when it joins.
                    let frame = match seat.swept_frame() {
                        Some(frame) if sent.results > 0 => frame,
                        _ => feed.latest(),
                    };
                    let news = sent.take_news(&frame, self.operator, self.transport);
                    if news.is_empty() {
                        sent.parked = false;
                        return Ok(());
                    }
                    sent.pending.extend(news.iter().cloned());
                    rt.messages_sent.fetch_add(news.messages, Ordering::Relaxed);
                }
                match write_now(self.conn.stream(), sent.pending.iter()) {
                    Ok(0) => {}
                    Ok(n) => {
                        sent.consume(n);
                        deadline = Instant::now() + timeout;
                        stop_by = stop_by.map(|_| Instant::now() + STOP_WAIT);
                        continue;
                    }
                    Err(_) => {
                        sent.failed = true;
                        return Err(Ended::Gone);
                    }
                }
            }
            let until = stop_by.map_or(deadline, |by| by.min(deadline));
            tokio::select! {
                biased;
                room = tokio::time::timeout_at(until, self.conn.writable()) => match room {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return Err(Ended::Gone),
                    Err(_) if stop_by.is_some() => return Err(Ended::Stopped),
                    Err(_) => return Err(Ended::Slow),
                },
                // (A stop signal gone is a stop.)
                _ = stop.wait_for(|stop| *stop), if stop_by.is_none() => {
                    stop_by = Some(Instant::now() + STOP_WAIT);
                }
            }
        }
    }
}

/// How long a closed connection waits for the client to close its side (see
/// [`LiveConnection::finish`]).
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// Once the node stops, how long a viewer's socket may take nothing (a client that reads gets the
/// rest of its frame and its goodbye; one that stopped reading does not hold the node's stop up
/// for `realtime.send_timeout_ms`).
const STOP_WAIT: Duration = Duration::from_secs(1);

/// Bytes read from a viewer at a time (it sends pings and a close, if anything).
const READ_CHUNK: usize = 256;

/// Serves one live viewer of `sub`'s poll on `conn` until it leaves, closes, fails a write, takes
/// too long to make room (`realtime.send_timeout_ms`) or the node stops.
pub(crate) async fn serve(
    rt: Arc<Realtime>,
    sub: Subscription,
    conn: LiveConnection,
    operator: bool,
    client: Client,
) {
    let counted = sub.into_counted();
    let feed = counted.feed().clone();
    let mut frames = ClientFrames::default();
    let mut replies = Vec::new();
    let (transport, mut stop) = match client {
        Client::WebSocket { early, stopping } => {
            frames.read(&early, &mut replies);
            (Transport::WebSocket, stopping)
        }
        Client::EventStream { stopping } => (Transport::EventStream, stopping),
    };
    // The stop is heard once here, where the viewer's goodbye is queued; a wait for room in its
    // catch-up is short from then on.
    let mut told = false;
    let viewer = Arc::new(Viewer::new(conn, operator, transport));
    let seat = feed.audience.join(viewer.clone());
    let ended = loop {
        for reply in replies.drain(..) {
            viewer.reply(reply);
        }
        if viewer.needs_task() {
            if let Err(ended) = viewer.catch_up(&feed, &seat, &rt, &mut stop).await {
                break ended;
            }
        }
        let stream = viewer.conn.stream();
        tokio::select! {
            _ = viewer.wake.notified() => {}
            // (A stop signal gone is a stop.)
            _ = stop.wait_for(|stop| *stop), if !told => {
                replies.push(Reply::Close(transport.goodbye()));
                told = true;
            }
            ready = viewer.conn.readable() => {
                if ready.is_err() {
                    break Ended::Gone;
                }
                // Here, not across the awaits: what the task keeps between frames is small.
                let mut chunk = [0u8; READ_CHUNK];
                match stream.try_read(&mut chunk) {
                    Ok(0) => break Ended::Gone,
                    // An event stream's client has nothing to say.
                    Ok(_) if transport == Transport::EventStream => break Ended::Gone,
                    Ok(n) => frames.read(&chunk[..n], &mut replies),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(_) => break Ended::Gone,
                }
            }
        }
    };
    // While its connection winds down the viewer is no longer counted, and a sweep that listed it
    // before it left writes nothing more to it.
    viewer.state.lock().failed = true;
    drop((seat, counted));
    match ended {
        Ended::Slow => rt.dropped_slow_consumer(feed.poll_id, transport.name()),
        // A WebSocket's client answers a close frame; an event stream's has nothing to say, and
        // its connection ends at once.
        Ended::Closed if transport == Transport::EventStream => {
            viewer.conn.finish(Duration::ZERO).await
        }
        Ended::Closed => viewer.conn.finish(CLOSE_WAIT).await,
        Ended::Gone | Ended::Stopped => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::render;
    use schemas::{Poll, Timestamp, Visibility};

    const WS: Transport = Transport::WebSocket;

    fn sent() -> Sent {
        Sent {
            results: 0,
            viewers: 0,
            beat: 0,
            pending: VecDeque::new(),
            parked: false,
            closing: false,
            failed: false,
        }
    }

    #[test]
    fn what_a_write_took_is_dropped_from_the_front_across_buffers() {
        let mut s = sent();
        s.pending
            .extend([Bytes::from_static(b"abc"), Bytes::from_static(b"defg")]);
        s.consume(2);
        assert_eq!(s.pending, [&b"c"[..], &b"defg"[..]]);
        s.consume(3);
        assert_eq!(s.pending, [&b"fg"[..]]);
        s.consume(2);
        assert!(s.pending.is_empty());
    }

    fn poll() -> Arc<Poll> {
        Arc::new(Poll {
            id: 1,
            slug: "s".into(),
            title: "t".into(),
            options: vec!["a".into()],
            max_choices: 1,
            visibility: Visibility::Live,
            opens_at: None,
            closes_at: None,
            opened_at: Some(Timestamp(0)),
            closed_at: None,
            revealed: false,
            created_at: Timestamp(0),
            creator: None,
            voters: Default::default(),
        })
    }

    #[test]
    fn a_viewer_is_given_each_message_once_results_first_and_nothing_after_a_close() {
        let poll = poll();
        let first = render(None, poll.clone(), Default::default(), 1, Timestamp(0));
        let mut s = sent();
        let news: Vec<_> = s.take_news(&first, false, WS).iter().cloned().collect();
        assert_eq!(
            news,
            [
                first.public.message.ws_frame().clone(),
                first.viewers_message.message.ws_frame().clone()
            ]
        );
        assert!(s.take_news(&first, false, WS).is_empty(), "given once");
        let counted = render(
            Some(&first),
            poll.clone(),
            Default::default(),
            2,
            Timestamp(0),
        );
        let news: Vec<_> = s.take_news(&counted, false, WS).iter().cloned().collect();
        assert_eq!(news, [counted.viewers_message.message.ws_frame().clone()]);
        // A sweep that read the first frame before the viewer's task sent the second.
        assert!(
            s.take_news(&first, false, WS).is_empty(),
            "never an older frame"
        );
        let again = render(Some(&counted), poll, Default::default(), 3, Timestamp(0));
        s.closing = true;
        assert!(
            s.take_news(&again, false, WS).is_empty(),
            "nothing after a close"
        );
    }

    #[test]
    fn an_event_stream_is_given_chunks_and_a_keep_alive_after_two_quiet_beats_a_websocket_none() {
        let first = render(None, poll(), Default::default(), 1, Timestamp(0));
        let (mut sse, mut ws) = (sent(), sent());
        let news = sse.take_news(&first, false, Transport::EventStream);
        assert_eq!(news.messages, 2);
        let bytes: Vec<_> = news.iter().cloned().collect();
        assert_eq!(
            bytes,
            [
                first.public.message.sse_chunk().clone(),
                first.viewers_message.message.sse_chunk().clone()
            ]
        );
        ws.take_news(&first, false, WS);
        let mut beat = Frame::clone(&first);
        beat.beat = 1;
        assert!(
            sse.take_news(&beat, false, Transport::EventStream)
                .is_empty(),
            "one beat"
        );
        beat.beat = 2;
        let news = sse.take_news(&beat, false, Transport::EventStream);
        assert_eq!(news.messages, 0, "a keep-alive is not a message");
        assert_eq!(news.iter().collect::<Vec<_>>(), [&KEEP_ALIVE_CHUNK]);
        assert!(
            sse.take_news(&beat, false, Transport::EventStream)
                .is_empty(),
            "once"
        );
        assert!(
            ws.take_news(&beat, false, WS).is_empty(),
            "a WebSocket gets none"
        );
        // A message resets the clock: the next keep-alive is two beats after it.
        let mut counted = render(Some(&first), poll(), Default::default(), 2, Timestamp(0));
        counted.beat = 3;
        assert_eq!(
            sse.take_news(&counted, false, Transport::EventStream)
                .messages,
            1
        );
        counted.beat = 4;
        assert!(sse
            .take_news(&counted, false, Transport::EventStream)
            .is_empty());
        counted.beat = 5;
        assert!(!sse
            .take_news(&counted, false, Transport::EventStream)
            .is_empty());
    }
}
