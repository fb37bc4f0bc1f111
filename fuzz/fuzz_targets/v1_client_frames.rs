//! Any bytes a viewer sends on the `/v1` socket after the upgrade, read by the service's own frame
//! reader (`realtime::websocket::ClientFrames`), at once and split into pieces (the input's first
//! byte chooses how): never a panic; the same answers either way; every answer a whole, final,
//! unmasked server frame (a pong with at most 125 bytes, or a close with no code or a code a
//! close may carry on the wire, RFC 6455 7.4); nothing after a close. Fragments, their order,
//! their total size and their UTF-8 are judged the same way however the bytes are split.
#![no_main]

use libfuzzer_sys::fuzz_target;
use realtime::websocket::{ClientFrames, Reply};
use std::io::Cursor;
use tungstenite::protocol::frame::coding::{CloseCode, Control, OpCode};
use tungstenite::protocol::frame::FrameHeader;

/// What `bytes` are answered when read in pieces of 1 to 64 bytes, their sizes drawn from
/// `split` (a seed of its own, so the fuzzer varies how the bytes are split apart from what they
/// are).
fn read_in_pieces(split: u8, bytes: &[u8]) -> Vec<Reply> {
    let (mut frames, mut replies) = (ClientFrames::default(), Vec::new());
    let mut rest = bytes;
    let mut state = u32::from(split).wrapping_mul(2_654_435_761) | 1;
    while !rest.is_empty() {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let size = (1 + state as usize % 64).min(rest.len());
        frames.read(&rest[..size], &mut replies);
        rest = &rest[size..];
    }
    replies
}

/// The one server frame in `bytes`: its opcode and payload.
fn server_frame(bytes: &[u8]) -> (OpCode, &[u8]) {
    let mut cursor = Cursor::new(bytes);
    let (header, len) = FrameHeader::parse(&mut cursor)
        .expect("a server frame parses")
        .expect("a server frame is whole");
    assert!(header.is_final && header.mask.is_none(), "{header:?}");
    assert!(!(header.rsv1 || header.rsv2 || header.rsv3), "{header:?}");
    let start = cursor.position() as usize;
    assert_eq!(start + len as usize, bytes.len(), "one frame, nothing after it");
    (header.opcode, &bytes[start..])
}

// The first byte chooses how the rest is split; the rest is what the viewer sent.
fuzz_target!(|input: &[u8]| {
    let Some((&split, data)) = input.split_first() else { return };
    let (mut frames, mut whole) = (ClientFrames::default(), Vec::new());
    frames.read(data, &mut whole);
    let pieces = read_in_pieces(split, data);
    // Bytes after a close are not read, so the two agree up to and including the first close.
    let through_close = |replies: &[Reply]| -> usize {
        replies
            .iter()
            .position(|r| matches!(r, Reply::Close(_)))
            .map_or(replies.len(), |i| i + 1)
    };
    assert_eq!(
        whole[..through_close(&whole)],
        pieces[..through_close(&pieces)],
        "the answers depend on how the bytes were split"
    );
    assert_eq!(through_close(&whole), whole.len(), "nothing after a close");
    for reply in &whole {
        match reply {
            Reply::Send(bytes) => {
                let (opcode, payload) = server_frame(bytes);
                assert_eq!(opcode, OpCode::Control(Control::Pong));
                assert!(payload.len() <= 125);
            }
            Reply::Close(bytes) => {
                let (opcode, payload) = server_frame(bytes);
                assert_eq!(opcode, OpCode::Control(Control::Close));
                assert!(payload.is_empty() || payload.len() == 2, "a code and no reason");
                if let [hi, lo] = *payload {
                    let code = CloseCode::from(u16::from_be_bytes([hi, lo]));
                    assert!(code.is_allowed(), "{code:?} may not be sent");
                }
            }
        }
    }
});
