//! A client core and a server core talking to each other through arbitrary chunking.
//!
//! Both sides send arbitrary messages (text, binary, pings, pongs, text and binary fragmented
//! by hand with pings between the fragments, cut anywhere, even inside a UTF-8 sequence) and
//! may close; the bytes travel in arbitrary amounts and chunks, under arbitrary
//! permessage-deflate parameters and with or without the no-masking extension; the server may
//! have an auto-response.
//!
//! A model predicts every event exactly. Invariants: every message arrives intact and in
//! order; pings are answered with equal pongs; auto-responses answer exactly the matching
//! text; a message fails the receiver with `MessageTooLarge` if and only if it is larger than
//! the receiver's `max_message_size` (the exact boundary, compressed or not); close frames are
//! echoed with their code and both ends report the same clean close.

#![no_main]

use std::collections::VecDeque;
use std::time::Instant;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use roost_fuzz::Blob;
use roost_fuzz::settings::{FuzzDeflate, FuzzLimits, short};
use roost_fuzz::wire::{Chunking, split};
use roost_proto::frame::MAX_CONTROL_PAYLOAD;
use roost_proto::{
    AutoResponse, CloseCode, CloseFrame, CloseInitiator, Config, Connection, DeflateConfig, Event,
    Frame, Message, Negotiated, OpCode, ProtocolError, UsageError,
};

#[derive(Arbitrary, Debug)]
struct Input {
    deflate: Option<FuzzDeflate>,
    no_masking: bool,
    client_limits: FuzzLimits,
    server_limits: FuzzLimits,
    auto_response: Option<(String, String)>,
    mask_seed: u32,
    actions: Vec<Action>,
}

#[derive(Arbitrary, Debug)]
enum Action {
    Send {
        from_server: bool,
        message: Outgoing,
    },
    Deliver {
        to_server: bool,
        /// Bytes to move (0: everything pending).
        bytes: u16,
        chunking: Chunking,
    },
    Close {
        from_server: bool,
        code: u16,
        reason: String,
    },
}

#[derive(Arbitrary, Debug)]
enum Outgoing {
    Text(String),
    Binary(Blob),
    Ping(Blob),
    Pong(Blob),
    Fragmented {
        text: Option<String>,
        binary: Blob,
        cuts: Vec<u16>,
        ping_between: Option<Blob>,
    },
}

const CLIENT: usize = 0;
const SERVER: usize = 1;

struct Pair {
    /// Indexed by `CLIENT` and `SERVER`.
    sides: [Connection; 2],
    max_message: [usize; 2],
    /// Our close frame is queued.
    close_sent: [bool; 2],
    /// The peer's close frame was read.
    close_received: [Option<Option<CloseFrame>>; 2],
    /// The close was ours first when the peer's arrived.
    closed_first: [bool; 2],
    /// What each side must read next, in order.
    expected: [VecDeque<Message>; 2],
    auto: Option<AutoResponse>,
    auto_hits: u64,
    now: Instant,
}

fuzz_target!(|input: Input| {
    let mut pair = Pair::new(&input);
    for action in input.actions {
        let keep_going = match action {
            Action::Send {
                from_server,
                message,
            } => {
                pair.send(usize::from(from_server), message);
                true
            }
            Action::Deliver {
                to_server,
                bytes,
                chunking,
            } => pair.deliver(usize::from(to_server), usize::from(bytes), chunking),
            Action::Close {
                from_server,
                code,
                reason,
            } => {
                pair.close(usize::from(from_server), code, &reason);
                true
            }
        };
        if !keep_going {
            return;
        }
    }
    pair.finish();
});

impl Pair {
    fn new(input: &Input) -> Self {
        let deflate_config = input
            .deflate
            .map_or_else(DeflateConfig::disabled, |deflate| deflate.config());
        let negotiated = Negotiated {
            deflate: input.deflate.map(|deflate| deflate.params()),
            no_masking: input.no_masking,
        };
        let config = |limits: &FuzzLimits| {
            Config::builder()
                .max_message_size(limits.max_message_size())
                .deflate(deflate_config.clone())
                .dangerous_no_masking(input.no_masking)
                .build()
                .expect("valid by construction")
        };
        let (client_config, server_config) =
            (config(&input.client_limits), config(&input.server_limits));
        let mut seed = input.mask_seed;
        let masks = move || {
            seed = seed.wrapping_mul(0x0101_0101).wrapping_add(0x2545_F491);
            seed.to_le_bytes()
        };
        let client = Connection::client(client_config.clone(), negotiated.clone(), masks);
        let mut server = Connection::server(server_config.clone(), negotiated);
        let auto = input
            .auto_response
            .as_ref()
            .map(|(request, response)| AutoResponse {
                request: short(request).into(),
                response: short(response).into(),
            });
        server.set_auto_response(auto.clone().map(std::sync::Arc::new));
        Pair {
            sides: [client, server],
            max_message: [
                client_config.limits().max_message_size,
                server_config.limits().max_message_size,
            ],
            close_sent: [false; 2],
            close_received: [None, None],
            closed_first: [false; 2],
            expected: [VecDeque::new(), VecDeque::new()],
            auto,
            auto_hits: 0,
            now: Instant::now(),
        }
    }

    /// Sends from `side`; every send succeeds exactly while `side` has not closed.
    fn send(&mut self, side: usize, message: Outgoing) {
        let peer = 1 - side;
        let open = !self.close_sent[side];
        let now = self.now;
        let conn = &mut self.sides[side];
        let (result, delivered) = match message {
            Outgoing::Text(text) => (conn.send_text(&text), vec![Message::Text(text.into())]),
            Outgoing::Binary(data) => (
                conn.send_binary(&data),
                vec![Message::Binary(data.0.into())],
            ),
            Outgoing::Ping(Blob(mut payload)) => {
                payload.truncate(MAX_CONTROL_PAYLOAD);
                (
                    conn.send_ping(&payload),
                    vec![Message::Ping(payload.into())],
                )
            }
            Outgoing::Pong(Blob(mut payload)) => {
                payload.truncate(MAX_CONTROL_PAYLOAD);
                (
                    conn.send_pong(&payload),
                    vec![Message::Pong(payload.into())],
                )
            }
            Outgoing::Fragmented {
                text,
                binary,
                cuts,
                ping_between,
            } => {
                let (opcode, payload) = match &text {
                    Some(text) => (OpCode::Text, text.as_bytes()),
                    None => (OpCode::Binary, &binary[..]),
                };
                let pieces = split(payload, &cuts);
                let ping = ping_between.map(|Blob(mut ping)| {
                    ping.truncate(MAX_CONTROL_PAYLOAD);
                    ping
                });
                let mut delivered = Vec::new();
                let mut result = Ok(());
                let last = pieces.len() - 1;
                for (index, piece) in pieces.iter().enumerate() {
                    let frame_opcode = if index == 0 {
                        opcode
                    } else {
                        OpCode::Continuation
                    };
                    let frame = Frame::new(index == last, frame_opcode, piece.to_vec());
                    result = conn.send_frame(&frame, now);
                    if result.is_err() {
                        break;
                    }
                    if let (Some(ping), false) = (&ping, index == last) {
                        conn.send_ping(ping)
                            .expect("a ping between fragments is allowed");
                        delivered.push(Message::Ping(ping.clone().into()));
                    }
                }
                delivered.push(match text {
                    Some(text) => Message::Text(text.into()),
                    None => Message::Binary(binary.0.into()),
                });
                (result, delivered)
            }
        };
        match result {
            Ok(()) => {
                assert!(open, "a send succeeded after close");
                self.expected[peer].extend(delivered);
            }
            Err(error) => {
                assert!(!open, "a valid send failed: {error}");
                assert_eq!(error, UsageError::SendAfterClose);
            }
        }
    }

    fn close(&mut self, side: usize, code: u16, reason: &str) {
        // Any sendable code: 1000-1003, 1007-1014, 3000-4999.
        let code = match code % 3 {
            0 => [
                1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014,
            ][usize::from(code / 3 % 12)],
            _ => 3000 + code % 2000,
        };
        let frame = CloseFrame::new(code, truncate(reason, 123));
        let result = self.sides[side].close(Some(frame.clone()), self.now);
        if self.close_sent[side] {
            assert_eq!(result, Err(UsageError::SendAfterClose));
            return;
        }
        result.expect("the first close succeeds");
        self.close_sent[side] = true;
        if self.close_received[side].is_none() {
            self.closed_first[side] = true;
        }
        self.expected[1 - side].push_back(Message::Close(Some(frame)));
    }

    /// Moves up to `limit` bytes (0: all) to `to`; false when the receiver failed as
    /// predicted and the run is over.
    fn deliver(&mut self, to: usize, limit: usize, chunking: Chunking) -> bool {
        let from = 1 - to;
        let pending = self.sides[from].pending_output_len();
        let n = if limit == 0 {
            pending
        } else {
            limit.min(pending)
        };
        let bytes: Vec<u8> = self.sides[from]
            .pending_output_chunks()
            .flatten()
            .take(n)
            .copied()
            .collect();
        self.sides[from].consume_output(n);
        for chunk in chunking.chunks(&bytes) {
            let now = self.now;
            self.sides[to].receive(chunk, now);
            self.count_auto_responses(to);
        }
        loop {
            let event = self.sides[to].next_event();
            self.count_auto_responses(to);
            let Some(event) = event else {
                return true;
            };
            if !self.check_event(to, event) {
                return false;
            }
        }
    }

    /// Auto-responses consume the matching text from what the server expects and send the
    /// response to the client.
    fn count_auto_responses(&mut self, side: usize) {
        if side != SERVER {
            return;
        }
        let hits = self.sides[SERVER].auto_response_hits();
        for _ in self.auto_hits..hits {
            let auto = self.auto.as_ref().expect("hits only with an auto-response");
            let consumed = self.expected[SERVER].pop_front();
            assert_eq!(
                consumed,
                Some(Message::Text(auto.request.clone())),
                "the auto-response answered something else"
            );
            self.expected[CLIENT].push_back(Message::Text(auto.response.clone()));
        }
        self.auto_hits = hits;
    }

    /// Checks one event `side` read against the model; false when it ends the run.
    fn check_event(&mut self, side: usize, event: Event) -> bool {
        let expected = self.expected[side].pop_front();
        match event {
            Event::Failed(error) => {
                // A fragmented message fails at the fragment that crosses the limit, before
                // the pings sent between its later fragments.
                let mut expected = expected;
                while let Some(Message::Ping(_)) = expected {
                    expected = self.expected[side].pop_front();
                }
                let size = match &expected {
                    Some(Message::Text(text)) => text.len(),
                    Some(Message::Binary(data)) => data.len(),
                    _ => panic!("failed with {error:?}, expecting {expected:?}"),
                };
                let max = self.max_message[side];
                assert_eq!(error, ProtocolError::MessageTooLarge { max });
                assert!(
                    size > max,
                    "a message of {size} bytes failed the limit of {max}"
                );
                false
            }
            Event::Message(message) => {
                if let Some(Message::Text(text)) = &expected {
                    assert!(
                        text.len() <= self.max_message[side],
                        "an oversized text passed"
                    );
                }
                if let Some(Message::Binary(data)) = &expected {
                    assert!(
                        data.len() <= self.max_message[side],
                        "an oversized binary passed"
                    );
                }
                assert_eq!(Some(&message), expected.as_ref(), "read by side {side}");
                match message {
                    // A side whose close is out no longer answers pings.
                    Message::Ping(payload) if !self.close_sent[side] => {
                        self.expected[1 - side].push_back(Message::Pong(payload));
                    }
                    Message::Close(frame) => {
                        if !self.close_sent[side] {
                            self.close_sent[side] = true;
                            let echo = frame.as_ref().map(|f| CloseFrame::new(f.code, ""));
                            self.expected[1 - side].push_back(Message::Close(echo));
                        }
                        self.close_received[side] = Some(frame);
                    }
                    _ => {}
                }
                true
            }
            other => panic!("unknown event {other:?}"),
        }
    }

    fn finish(mut self) {
        // Pongs and close echoes make more output: a few rounds drain everything.
        for _ in 0..4 {
            for to in [SERVER, CLIENT] {
                if !self.deliver(to, 0, Chunking::WHOLE) {
                    return;
                }
            }
        }
        for side in [CLIENT, SERVER] {
            assert!(self.sides[side].pending_output_len() == 0);
            assert!(
                self.expected[side].is_empty(),
                "side {side} never read {:?}",
                self.expected[side]
            );
            let Some(frame) = &self.close_received[side] else {
                assert_eq!(self.sides[side].close_status(), None);
                continue;
            };
            let status = self.sides[side]
                .close_status()
                .expect("a closed side has a status");
            let initiator = if self.closed_first[side] {
                CloseInitiator::Local
            } else {
                CloseInitiator::Peer
            };
            assert_eq!(status.initiator, initiator);
            assert_eq!(
                status.code,
                frame.as_ref().map_or(CloseCode::NO_STATUS, |f| f.code)
            );
            assert!(status.clean);
        }
    }
}

fn truncate(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}
