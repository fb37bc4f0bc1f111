//! Any bytes a client can send on a live socket after the upgrade, read by the WebSocket protocol
//! with the limits both sockets set (`realtime::MAX_CLIENT_MESSAGE_BYTES` for a message and a
//! frame; server role, so unmasked client frames are refused): never a panic, never a message
//! over the limit delivered. Each text message then goes where the old API's socket sends it
//! (`seed_api::ws::read_vote` and `reply`, see `seed_ws_message`). The `/v1` socket reads
//! frames with its own reader instead: `v1_client_frames`.
#![no_main]

use seed_api::ws::{read_vote, reply};
use crowdtick_fuzz::polls;
use libfuzzer_sys::fuzz_target;
use realtime::MAX_CLIENT_MESSAGE_BYTES;
use std::io::{Read, Write};
use tungstenite::protocol::{Role, WebSocketConfig};
use tungstenite::{Message, WebSocket};

/// The client's bytes to read; what the server writes back (pongs, close frames) is dropped.
struct Client<'a> {
    input: &'a [u8],
}

impl Read for Client<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.input.read(buf)
    }
}

impl Write for Client<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_CLIENT_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_CLIENT_MESSAGE_BYTES));
    let mut socket = WebSocket::from_raw_socket(Client { input: data }, Role::Server, Some(config));
    let polls = polls();
    // Each read consumes input or ends the loop with an error (the input runs out at the latest).
    while let Ok(message) = socket.read() {
        assert!(
            message.len() <= MAX_CLIENT_MESSAGE_BYTES,
            "a {} byte message passed the limit",
            message.len()
        );
        if let Message::Text(text) = message {
            let answer = reply(read_vote(text.as_str(), polls.first()).map(|(poll, option)| {
                poll.options[option].clone()
            }));
            assert!(answer.is_object());
        }
    }
});
