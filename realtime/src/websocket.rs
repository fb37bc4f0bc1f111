//! The WebSocket protocol as the realtime service speaks it to `/v1` viewers, with tungstenite's
//! frame codec and accept key: the opening handshake ([`Handshake`], an extractor), the server's
//! frames (written once per message and shared, [`server_frame`]), and what a viewer may send
//! ([`ClientFrames`]: pings are answered, a close is returned, data is checked and dropped).
//! Pure but for the handshake's upgrade: no socket here.

use crate::MAX_CLIENT_MESSAGE_BYTES;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::{Buf, Bytes, BytesMut};
use edge::listener::LiveConnection;
use edge::ApiError;
use hyper::upgrade::OnUpgrade;
use std::future::Future;
use std::io::Cursor;
use tungstenite::protocol::frame::coding::{CloseCode, Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

/// A valid WebSocket opening request (RFC 6455, section 4.2.1), its upgrade still to come.
pub struct Handshake {
    key: HeaderValue,
    on_upgrade: OnUpgrade,
}

fn not_a_websocket(what: &str) -> ApiError {
    ApiError::bad_request(
        "not_a_websocket",
        format!("this endpoint speaks WebSocket: {what}"),
    )
}

fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

impl<S: Send + Sync> FromRequestParts<S> for Handshake {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        if parts.method != Method::GET {
            return Err(not_a_websocket("the opening request is a GET"));
        }
        let h = &parts.headers;
        if !has_token(h, header::CONNECTION, "upgrade") {
            return Err(not_a_websocket(
                "the request has no `Connection: upgrade` header",
            ));
        }
        if !has_token(h, header::UPGRADE, "websocket") {
            return Err(not_a_websocket(
                "the request has no `Upgrade: websocket` header",
            ));
        }
        if h.get(header::SEC_WEBSOCKET_VERSION)
            .map(HeaderValue::as_bytes)
            != Some(b"13")
        {
            return Err(not_a_websocket("`Sec-WebSocket-Version` must be 13"));
        }
        let key = h
            .get(header::SEC_WEBSOCKET_KEY)
            .cloned()
            .ok_or_else(|| not_a_websocket("the request has no `Sec-WebSocket-Key` header"))?;
        let on_upgrade = parts
            .extensions
            .remove::<OnUpgrade>()
            .ok_or_else(|| not_a_websocket("this connection cannot be upgraded (HTTP/1.1 only)"))?;
        Ok(Self { key, on_upgrade })
    }
}

impl Handshake {
    /// The `101 Switching Protocols` answer; once the client has it, `serve` gets the socket and
    /// the bytes the client sent behind its request. A connection this node's listener did not
    /// accept cannot be served so, and is closed (logged).
    pub fn accept<F, Fut>(self, serve: F) -> Response
    where
        F: FnOnce(LiveConnection, Bytes) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let accept = tungstenite::handshake::derive_accept_key(self.key.as_bytes());
        let on_upgrade = self.on_upgrade;
        tokio::spawn(async move {
            let upgraded = match on_upgrade.await {
                Ok(upgraded) => upgraded,
                Err(e) => return tracing::debug!(error = %e, "a WebSocket upgrade failed"),
            };
            match LiveConnection::take(upgraded) {
                Some((conn, early)) => serve(conn, early).await,
                None => tracing::error!(
                    "a WebSocket connection not accepted by the node's listener was closed"
                ),
            }
        });
        (
            StatusCode::SWITCHING_PROTOCOLS,
            [
                (header::CONNECTION, HeaderValue::from_static("upgrade")),
                (header::UPGRADE, HeaderValue::from_static("websocket")),
                (
                    header::SEC_WEBSOCKET_ACCEPT,
                    HeaderValue::from_str(&accept).expect("base64 is a valid header value"),
                ),
            ],
        )
            .into_response()
    }
}

/// A whole server frame (final, unmasked) carrying `payload`.
pub fn server_frame(opcode: OpCode, payload: &[u8]) -> Bytes {
    let header = FrameHeader {
        opcode,
        ..FrameHeader::default()
    };
    let len = payload.len() as u64;
    let mut out = Vec::with_capacity(header.len(len) + payload.len());
    // Writing to a Vec cannot fail.
    let _ = header.format(len, &mut out);
    out.extend_from_slice(payload);
    Bytes::from(out)
}

/// A close frame with `code` (and no reason).
pub fn close_frame(code: CloseCode) -> Bytes {
    server_frame(
        OpCode::Control(Control::Close),
        &u16::from(code).to_be_bytes(),
    )
}

/// What a viewer's frames ask of the server.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    /// Write this (a pong).
    Send(Bytes),
    /// Write this close frame, then close the connection.
    Close(Bytes),
}

/// The frames a viewer sends, as they arrive: pings are answered with pongs carrying their
/// payload, a close with a close carrying its code (RFC 6455, 5.5.1), and what breaks the
/// protocol with a close that says so: 1002 for a bad frame or fragments out of order, 1009 for
/// a message larger than [`MAX_CLIENT_MESSAGE_BYTES`] (in all its fragments), 1007 for text (or
/// a close's reason) that is not UTF-8. Messages and pongs are then dropped: the `/v1` socket
/// takes no messages, but it reads them as RFC 6455 says, so a client's bug is named, not passed
/// over.
#[derive(Debug, Default)]
pub struct ClientFrames {
    /// Bytes of a frame not yet whole.
    partial: BytesMut,
    /// The data message whose frames are arriving, if its first was not final.
    message: Option<Message>,
}

/// A data message in fragments: its size so far (never over [`MAX_CLIENT_MESSAGE_BYTES`]) and,
/// for text, the check of its UTF-8. Eight bytes a viewer.
#[derive(Debug, Clone, Copy)]
struct Message {
    len: u16,
    text: Option<Utf8Check>,
}

const _: () = assert!(MAX_CLIENT_MESSAGE_BYTES <= u16::MAX as usize);

/// Checks UTF-8 given in pieces: keeps the start of a character cut between two pieces.
#[derive(Debug, Clone, Copy)]
struct Utf8Check(utf8::Incomplete);

impl Default for Utf8Check {
    fn default() -> Self {
        Self(utf8::Incomplete::empty())
    }
}

impl Utf8Check {
    /// Takes the next piece; false if the text so far is not UTF-8.
    fn take(&mut self, mut bytes: &[u8]) -> bool {
        if !self.0.is_empty() {
            match self.0.try_complete(bytes) {
                // Still cut short: all of `bytes` was taken.
                None => return true,
                Some((Err(_), _)) => return false,
                Some((Ok(_), rest)) => bytes = rest,
            }
        }
        match utf8::decode(bytes) {
            Ok(_) => true,
            Err(utf8::DecodeError::Incomplete {
                incomplete_suffix, ..
            }) => {
                self.0 = incomplete_suffix;
                true
            }
            Err(utf8::DecodeError::Invalid { .. }) => false,
        }
    }

    /// Whether the text ended on a whole character.
    fn is_whole(&self) -> bool {
        self.0.is_empty()
    }
}

/// A whole data frame as it came: its payload still masked.
struct DataFrame<'a> {
    opcode: OpCode,
    is_final: bool,
    payload: &'a [u8],
    mask: [u8; 4],
}

impl ClientFrames {
    /// Reads `bytes` (what the socket gave) and returns what to answer, in order; stops at the
    /// first close.
    pub fn read(&mut self, bytes: &[u8], replies: &mut Vec<Reply>) {
        self.partial.extend_from_slice(bytes);
        loop {
            let mut cursor = Cursor::new(&self.partial[..]);
            let (header, len) = match FrameHeader::parse(&mut cursor) {
                Ok(Some(parsed)) => parsed,
                Ok(None) => return self.release_if_empty(),
                Err(_) => return self.end(replies, CloseCode::Protocol),
            };
            if len > MAX_CLIENT_MESSAGE_BYTES as u64 {
                return self.end(replies, CloseCode::Size);
            }
            let Some(mask) = header.mask else {
                // A client's frames are always masked.
                return self.end(replies, CloseCode::Protocol);
            };
            let control = matches!(header.opcode, OpCode::Control(_));
            let reserved = matches!(
                header.opcode,
                OpCode::Data(Data::Reserved(_)) | OpCode::Control(Control::Reserved(_))
            );
            if header.rsv1 || header.rsv2 || header.rsv3 || reserved {
                return self.end(replies, CloseCode::Protocol);
            }
            if control && (len > 125 || !header.is_final) {
                return self.end(replies, CloseCode::Protocol);
            }
            let start = cursor.position() as usize;
            let end = start + len as usize;
            if self.partial.len() < end {
                return self.release_if_empty();
            }
            if !control {
                let data = DataFrame {
                    opcode: header.opcode,
                    is_final: header.is_final,
                    payload: &self.partial[start..end],
                    mask,
                };
                if let Err(code) = take_data(&mut self.message, data) {
                    return self.end(replies, code);
                }
                self.partial.advance(end);
                continue;
            }
            let mut payload = [0u8; 125];
            let payload = &mut payload[..len as usize];
            unmask(&self.partial[start..end], mask, payload);
            self.partial.advance(end);
            match header.opcode {
                OpCode::Control(Control::Ping) => replies.push(Reply::Send(server_frame(
                    OpCode::Control(Control::Pong),
                    payload,
                ))),
                OpCode::Control(Control::Close) => {
                    // Its code back (a close with none gets none; one that is not a code a
                    // client may send, 1002); nothing is read after it.
                    let code = match *payload {
                        [] => &[][..],
                        [hi, lo, ref reason @ ..]
                            if CloseCode::from(u16::from_be_bytes([hi, lo])).is_allowed() =>
                        {
                            if std::str::from_utf8(reason).is_err() {
                                return self.end(replies, CloseCode::Invalid);
                            }
                            &payload[..2]
                        }
                        _ => return self.end(replies, CloseCode::Protocol),
                    };
                    let close = server_frame(OpCode::Control(Control::Close), code);
                    self.partial.clear();
                    self.message = None;
                    return replies.push(Reply::Close(close));
                }
                _ => {}
            }
        }
    }

    /// A viewer keeps no buffer between its frames.
    fn release_if_empty(&mut self) {
        if self.partial.is_empty() {
            self.partial = BytesMut::new();
        }
    }

    fn end(&mut self, replies: &mut Vec<Reply>, code: CloseCode) {
        self.partial.clear();
        self.message = None;
        replies.push(Reply::Close(close_frame(code)));
    }
}

/// A data frame, whole: in its place among its message's fragments, within the size limit,
/// and UTF-8 if its message is text. Its payload is read only for that check.
fn take_data(message: &mut Option<Message>, frame: DataFrame<'_>) -> Result<(), CloseCode> {
    let mut current = match (frame.opcode, message.take()) {
        (OpCode::Data(Data::Continue), Some(current)) => current,
        (OpCode::Data(Data::Text), None) => Message {
            len: 0,
            text: Some(Utf8Check::default()),
        },
        (OpCode::Data(Data::Binary), None) => Message { len: 0, text: None },
        // A continuation of nothing, or a new message before the last one ended.
        _ => return Err(CloseCode::Protocol),
    };
    let len = usize::from(current.len) + frame.payload.len();
    if len > MAX_CLIENT_MESSAGE_BYTES {
        return Err(CloseCode::Size);
    }
    current.len = len as u16;
    if let Some(text) = &mut current.text {
        // Unmasked a piece at a time on the stack (a multiple of 4: the mask lines up).
        let mut piece = [0u8; 256];
        for chunk in frame.payload.chunks(piece.len()) {
            let piece = &mut piece[..chunk.len()];
            unmask(chunk, frame.mask, piece);
            if !text.take(piece) {
                return Err(CloseCode::Invalid);
            }
        }
        if frame.is_final && !text.is_whole() {
            return Err(CloseCode::Invalid);
        }
    }
    if !frame.is_final {
        *message = Some(current);
    }
    Ok(())
}

/// `masked` unmasked into `out` (as long), its first byte at the mask's first.
fn unmask(masked: &[u8], mask: [u8; 4], out: &mut [u8]) {
    for (i, (out, byte)) in out.iter_mut().zip(masked).enumerate() {
        *out = byte ^ mask[i % 4];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tungstenite::protocol::frame::Frame;

    /// A client's mask: each byte flips high bits too, so text unmasked out of line is not UTF-8.
    const MASK: [u8; 4] = [0x9d, 0x3a, 0xe7, 0x51];

    /// A frame as a client writes it (masked).
    fn client(opcode: OpCode, payload: &[u8]) -> Vec<u8> {
        fragment(opcode, payload, true)
    }

    /// A frame of a message that may go on in continuation frames.
    fn fragment(opcode: OpCode, payload: &[u8], is_final: bool) -> Vec<u8> {
        let header = FrameHeader {
            is_final,
            opcode,
            mask: Some(MASK),
            ..FrameHeader::default()
        };
        let mut out = Vec::new();
        header.format(payload.len() as u64, &mut out).unwrap();
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
        out
    }

    fn parse(bytes: &[u8]) -> Frame {
        let mut cursor = Cursor::new(bytes);
        let (header, len) = FrameHeader::parse(&mut cursor).unwrap().unwrap();
        let start = cursor.position() as usize;
        assert_eq!(bytes.len(), start + len as usize, "one whole frame");
        Frame::from_payload(header, Bytes::copy_from_slice(&bytes[start..]))
    }

    #[test]
    fn a_ping_split_anywhere_is_answered_with_its_payload_and_data_is_dropped() {
        let mut wire = client(OpCode::Data(Data::Text), b"hello");
        wire.extend(client(OpCode::Control(Control::Ping), b"abc"));
        wire.extend(client(OpCode::Control(Control::Pong), b""));
        for split in 0..wire.len() {
            let mut frames = ClientFrames::default();
            let mut replies = Vec::new();
            frames.read(&wire[..split], &mut replies);
            frames.read(&wire[split..], &mut replies);
            assert_eq!(replies.len(), 1, "split at {split}: {replies:?}");
            let Reply::Send(pong) = &replies[0] else {
                panic!("{replies:?}")
            };
            let pong = parse(pong);
            assert_eq!(pong.header().opcode, OpCode::Control(Control::Pong));
            assert_eq!(pong.header().mask, None);
            assert_eq!(pong.payload(), b"abc");
        }
    }

    #[test]
    fn a_close_is_returned_with_its_code_and_ends_the_reading() {
        let mut wire = client(OpCode::Control(Control::Close), &[0x03, 0xe8, b'b', b'y']);
        wire.extend(client(OpCode::Control(Control::Ping), b"late"));
        let mut replies = Vec::new();
        ClientFrames::default().read(&wire, &mut replies);
        let [Reply::Close(close)] = &replies[..] else {
            panic!("{replies:?}")
        };
        let close = parse(close);
        assert_eq!(close.header().opcode, OpCode::Control(Control::Close));
        assert_eq!(close.payload(), [0x03, 0xe8]);
    }

    fn closed_with(wire: &[u8]) -> Vec<u8> {
        let mut replies = Vec::new();
        ClientFrames::default().read(wire, &mut replies);
        match &replies[..] {
            [Reply::Close(close)] => parse(close).payload().to_vec(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn frames_that_break_the_protocol_or_the_size_limit_close_with_the_reason() {
        let big = vec![b'x'; MAX_CLIENT_MESSAGE_BYTES + 1];
        // Only the header is needed to refuse it.
        let header_only = &client(OpCode::Data(Data::Binary), &big)[..8];
        assert_eq!(closed_with(header_only), 1009u16.to_be_bytes());
        let mut unmasked = Vec::new();
        FrameHeader::default().format(0, &mut unmasked).unwrap();
        unmasked[0] = 0x89; // a ping, not masked
        assert_eq!(closed_with(&unmasked), 1002u16.to_be_bytes());
        let long_ping = client(OpCode::Control(Control::Ping), &[0; 126]);
        assert_eq!(closed_with(&long_ping), 1002u16.to_be_bytes());
        let mut reserved = client(OpCode::Data(Data::Text), b"x");
        reserved[0] |= 0x40; // rsv1 without an extension
        assert_eq!(closed_with(&reserved), 1002u16.to_be_bytes());
        let mut opcode = client(OpCode::Data(Data::Text), b"x");
        opcode[0] = 0x83; // a reserved data opcode
        assert_eq!(closed_with(&opcode), 1002u16.to_be_bytes());
        // A close whose code no client may send (1006: abnormal), or half a code.
        let abnormal = client(OpCode::Control(Control::Close), &1006u16.to_be_bytes());
        assert_eq!(closed_with(&abnormal), 1002u16.to_be_bytes());
        let half = client(OpCode::Control(Control::Close), &[3]);
        assert_eq!(closed_with(&half), 1002u16.to_be_bytes());
        let none = client(OpCode::Control(Control::Close), &[]);
        assert_eq!(closed_with(&none), b"");
    }

    const TEXT: OpCode = OpCode::Data(Data::Text);
    const BINARY: OpCode = OpCode::Data(Data::Binary);
    const CONTINUE: OpCode = OpCode::Data(Data::Continue);

    /// What `frames` are answered, read whole.
    fn replies(frames: &[Vec<u8>]) -> Vec<Reply> {
        let mut replies = Vec::new();
        ClientFrames::default().read(&frames.concat(), &mut replies);
        replies
    }

    #[test]
    fn fragmented_messages_are_read_in_order_with_pings_between_them() {
        let ping = client(OpCode::Control(Control::Ping), b"p");
        // "h\u{e9}" cut inside the \u{e9}, a ping between its fragments, then a binary message.
        let wire = [
            fragment(TEXT, &[b'h', 0xc3], false),
            ping.clone(),
            fragment(CONTINUE, &[], false),
            fragment(CONTINUE, &[0xa9], true),
            fragment(BINARY, &[0xff; 3], false),
            fragment(CONTINUE, &[0xfe], true),
            ping,
        ];
        let replies = replies(&wire);
        assert_eq!(replies.len(), 2, "{replies:?}");
        assert!(replies.iter().all(|r| matches!(r, Reply::Send(_))));
    }

    #[test]
    fn fragments_out_of_order_too_large_in_all_or_not_utf8_close_with_the_reason() {
        let closed = |wire: &[Vec<u8>]| closed_with(&wire.concat());
        let half = vec![b'x'; MAX_CLIENT_MESSAGE_BYTES / 2];
        let cases: [(&[Vec<u8>], u16); 11] = [
            // A continuation of nothing.
            (&[client(CONTINUE, b"x")], 1002),
            // A new message before the last one ended.
            (&[fragment(TEXT, b"a", false), client(TEXT, b"b")], 1002),
            (&[fragment(BINARY, b"a", false), client(BINARY, b"b")], 1002),
            // Each fragment within the limit, the message over it.
            (
                &[
                    fragment(BINARY, &half, false),
                    fragment(CONTINUE, &half, false),
                    client(CONTINUE, b"x"),
                ],
                1009,
            ),
            (
                &[
                    fragment(TEXT, &half, false),
                    fragment(CONTINUE, &half, false),
                    client(CONTINUE, b"x"),
                ],
                1009,
            ),
            (&[client(TEXT, &[b'a', 0xff])], 1007),
            // An overlong encoding, a surrogate.
            (&[client(TEXT, &[0xc0, 0xaf])], 1007),
            (&[client(TEXT, &[0xed, 0xa0, 0x80])], 1007),
            // Ends inside a character, or a bad byte in a later fragment.
            (&[client(TEXT, &[0xe2, 0x82])], 1007),
            (
                &[
                    fragment(TEXT, &[0xe2], false),
                    client(CONTINUE, &[0x82, 0x41]),
                ],
                1007,
            ),
            // A close whose reason is not UTF-8.
            (
                &[client(
                    OpCode::Control(Control::Close),
                    &[0x03, 0xe8, 0xc0, 0xaf],
                )],
                1007,
            ),
        ];
        for (i, (wire, code)) in cases.into_iter().enumerate() {
            assert_eq!(closed(wire), code.to_be_bytes(), "case {i}");
        }
        // The same limit, met exactly, is fine.
        let exact = [fragment(BINARY, &half, false), client(CONTINUE, &half)];
        assert!(replies(&exact).is_empty());
        // A close with a UTF-8 reason (1000, "bye \u{2713}") is answered with its code.
        let reason = [&[0x03, 0xe8][..], "bye \u{2713}".as_bytes()].concat();
        let close = client(OpCode::Control(Control::Close), &reason);
        assert_eq!(closed(&[close]), [0x03, 0xe8]);
    }

    #[test]
    fn long_text_is_unmasked_in_line_and_checked_across_its_pieces() {
        // Characters cut at the 256-byte pieces the reader unmasks in, and at the fragments.
        let text = format!("{}\u{e9}{}", "a".repeat(255), "\u{2713}".repeat(300)).into_bytes();
        let ping = client(OpCode::Control(Control::Ping), b"p");
        let fragments = |text: &[u8]| {
            vec![
                fragment(TEXT, &text[..100], false),
                fragment(CONTINUE, &text[100..701], false),
                client(CONTINUE, &text[701..]),
            ]
        };
        for wire in [vec![client(TEXT, &text)], fragments(&text)] {
            let replies = replies(&[wire, vec![ping.clone()]].concat());
            assert!(matches!(&replies[..], [Reply::Send(_)]), "{replies:?}");
        }
        let mut broken = text.clone();
        broken[600] = 0xff;
        for wire in [vec![client(TEXT, &broken)], fragments(&broken)] {
            assert_eq!(closed_with(&wire.concat()), 1007u16.to_be_bytes());
        }
    }

    mod utf8_pieces {
        use super::super::Utf8Check;
        use proptest::prelude::*;

        proptest! {
            /// Bytes checked in pieces get the verdict they get whole, wherever they are cut.
            #[test]
            fn utf8_in_pieces_is_judged_as_it_is_whole(
                // Whole characters (1 to 4 bytes) and stray bytes, mixed.
                parts in prop::collection::vec(
                    prop_oneof![
                        (0x80u32..0x11_0000)
                            .prop_filter_map("a char", char::from_u32)
                            .prop_map(|c| c.to_string().into_bytes()),
                        any::<char>().prop_map(|c| c.to_string().into_bytes()),
                        prop::collection::vec(any::<u8>(), 1..3),
                    ],
                    0..12,
                ),
                cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
            ) {
                let bytes = parts.concat();
                let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
                cuts.sort_unstable();
                let mut check = Utf8Check::default();
                let (mut ok, mut from) = (true, 0);
                for cut in cuts.into_iter().chain([bytes.len()]) {
                    ok = ok && check.take(&bytes[from..cut]);
                    from = cut;
                }
                prop_assert_eq!(ok && check.is_whole(), std::str::from_utf8(&bytes).is_ok());
            }
        }
    }

    #[test]
    fn server_frames_are_final_unmasked_and_carry_their_length() {
        for len in [0usize, 125, 126, 65_535, 65_536] {
            let payload = vec![b'a'; len];
            let frame = parse(&server_frame(OpCode::Data(Data::Text), &payload));
            assert!(frame.header().is_final);
            assert_eq!(frame.header().mask, None);
            assert_eq!(frame.payload().len(), len);
        }
    }
}
