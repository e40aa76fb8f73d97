//! One connection against a hostile peer, for `connection_server` and `connection_client`.
//!
//! The fuzzer plays the peer (well-formed messages, arbitrary frames, raw bytes, in arbitrary
//! chunks) and the application (sends, closes, reads events, writes output, time, EOF). A
//! second connection of the other role, the *checker*, reads everything the connection under
//! test writes. Invariants:
//! - nothing panics (the library's own `expect`s and debug assertions included);
//! - no event follows a `Failed` event or the peer's close;
//! - received messages respect the configured limits and the assembly mode;
//! - the output is always a valid frame stream: the checker never fails, reads our data
//!   messages (sends and auto-responses) intact and in order, sees at most one close frame,
//!   no byte after it, and that close frame says what happened (our close, the echo of the
//!   peer's, or the failure's code);
//! - output the peer causes is bounded: per call at most one control frame plus
//!   auto-responses, and in total `max_queued_output` plus two control frames beyond what the
//!   application and the auto-responses queued;
//! - commands succeed exactly when the state allows them;
//! - [`Connection::close_status`], `is_finished`, `can_send` and `can_receive` agree with the
//!   events that were reported; `is_finished` never goes back to false.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use bytes::Bytes;
use roost_proto::close::MAX_CLOSE_REASON;
use roost_proto::deflate::DeflateCodec;
use roost_proto::frame::MAX_CONTROL_PAYLOAD;
use roost_proto::{
    AutoResponse, CloseCode, CloseFrame, CloseInitiator, Config, Connection, Event, Frame, Message,
    OpCode, ProtocolError, Role, UsageError,
};

use crate::Blob;
use crate::settings::FuzzConnectionConfig;
use crate::wire::{Chunking, FrameSpec, MessageSpec, frame_len};

/// The largest control frame on the wire: a 2-byte header, a mask and 125 bytes.
const MAX_CONTROL_FRAME: usize = 2 + 4 + MAX_CONTROL_PAYLOAD;

/// A whole fuzz input: the connection's settings and a script.
#[derive(Arbitrary, Debug)]
pub struct SingleInput {
    config: FuzzConnectionConfig,
    mask_seed: u32,
    actions: Vec<Action>,
}

/// One step of the script.
#[derive(Arbitrary, Debug)]
pub enum Action {
    /// The peer sends a well-formed (possibly compressed, fragmented) data message.
    Message {
        /// The message.
        spec: MessageSpec,
        /// How it is cut into reads.
        chunking: Chunking,
    },
    /// The peer sends one arbitrary frame.
    Frame {
        /// The frame.
        spec: FrameSpec,
        /// How it is cut into reads.
        chunking: Chunking,
    },
    /// The peer sends arbitrary bytes.
    Raw {
        /// The bytes.
        bytes: Blob,
        /// How they are cut into reads.
        chunking: Chunking,
    },
    /// The application takes up to this many events (0: all of them).
    Events(u8),
    /// The application sends a text message.
    SendText(String),
    /// The application sends a binary message.
    SendBinary(Blob),
    /// The application sends a ping.
    SendPing(Blob),
    /// The application sends a pong.
    SendPong(Blob),
    /// The application sends one frame through the frame-level API.
    SendFrame {
        /// FIN.
        fin: bool,
        /// One of the six opcodes (modulo 6).
        opcode: u8,
        /// The payload.
        payload: Blob,
    },
    /// The application starts the close handshake.
    Close {
        /// The status code, if any.
        code: Option<u16>,
        /// The reason.
        reason: String,
    },
    /// The driver writes up to this many bytes of output (0: all of it at once).
    Write(u16),
    /// The transport ends.
    Eof,
    /// Time passes (milliseconds) and the deadline is checked.
    Advance(u16),
    /// The driver releases idle buffers and compression state.
    ReleaseBuffers,
}

/// Runs one input against a connection of `role`.
pub fn run(role: Role, input: SingleInput) {
    let mut harness = Harness::new(role, &input);
    for action in input.actions {
        harness.step(action);
        harness.check_output_bound();
    }
    harness.finish();
}

/// What ended the read side, as the events reported it.
#[derive(Debug, Clone)]
enum Terminal {
    Failed(ProtocolError),
    Closed(Option<CloseFrame>),
}

struct Harness {
    role: Role,
    config: Config,
    no_masking: bool,
    auto: Option<AutoResponse>,
    conn: Connection,
    /// The peer's compressor, for well-formed compressed messages.
    peer_codec: Option<DeflateCodec>,
    now: Instant,

    /// What the events said ended the read side.
    terminal: Option<Terminal>,
    /// The close frame our `close` queued.
    local_close: Option<Option<CloseFrame>>,
    eof: bool,
    timed_out: bool,
    finished: bool,
    /// The fragmented message being sent through `send_frame`: opcode and payload so far.
    sending: Option<(OpCode, Vec<u8>)>,
    /// A fragmented send was in progress at some point since the events were last drained,
    /// so an event still to come may have been parsed while it was (and then an
    /// auto-response request reaches the application: RFC 6455 §5.4 keeps the answer out of
    /// the middle of our message).
    fragmented_since_drain: bool,
    /// A parse step ended with the output holding `max_queued_output` or more since the
    /// events were last drained, so an event still to come may have been parsed while it did
    /// (and then an auto-response request reaches the application: a peer that does not
    /// read gets no more answers queued for it).
    full_since_drain: bool,

    /// Auto-responses counted so far.
    auto_hits: u64,
    /// Output queued by the application's commands and by auto-responses, in total.
    commanded_output: usize,

    /// Reads what the connection writes.
    checker: Connection,
    /// Data messages and pings the checker must read next, in order.
    expected: VecDeque<Message>,
    /// Pong payloads the connection may legitimately write: ours, and answers to pings.
    allowed_pongs: Vec<Bytes>,
    /// Pongs the checker read, checked against `allowed_pongs` at the end.
    checker_pongs: Vec<Bytes>,
    /// The close frame the checker read.
    checker_close: Option<Option<CloseFrame>>,
}

impl Harness {
    fn new(role: Role, input: &SingleInput) -> Self {
        let config = input.config.config();
        let negotiated = input.config.negotiated();
        let mut seed = input.mask_seed;
        let masks = move || {
            seed = seed.wrapping_mul(0x0101_0101).wrapping_add(0x2545_F491);
            seed.to_le_bytes()
        };
        let mut conn = match role {
            Role::Server => Connection::server(config.clone(), negotiated.clone()),
            Role::Client => Connection::client(config.clone(), negotiated.clone(), masks),
        };
        let auto = input.config.auto_response();
        conn.set_auto_response(auto.clone().map(std::sync::Arc::new));
        let peer_is_server = role == Role::Client;
        let peer_codec = negotiated
            .deflate
            .map(|params| DeflateCodec::new(peer_is_server, params, config.deflate()));
        let checker = match role {
            Role::Server => Connection::client(Config::default(), negotiated, || [0x5A; 4]),
            Role::Client => Connection::server(Config::default(), negotiated),
        };
        Harness {
            role,
            no_masking: input.config.no_masking,
            auto,
            conn,
            peer_codec,
            now: Instant::now(),
            terminal: None,
            local_close: None,
            eof: false,
            timed_out: false,
            finished: false,
            sending: None,
            fragmented_since_drain: false,
            full_since_drain: false,
            auto_hits: 0,
            commanded_output: 0,
            checker,
            expected: VecDeque::new(),
            allowed_pongs: Vec::new(),
            checker_pongs: Vec::new(),
            checker_close: None,
            config,
        }
    }

    fn peer(&self) -> Role {
        match self.role {
            Role::Server => Role::Client,
            Role::Client => Role::Server,
        }
    }

    fn step(&mut self, action: Action) {
        match action {
            Action::Message { spec, chunking } => {
                let mut bytes = Vec::new();
                spec.encode(
                    self.peer(),
                    self.no_masking,
                    self.peer_codec.as_mut(),
                    &mut bytes,
                );
                self.deliver(&bytes, chunking);
            }
            Action::Frame { spec, chunking } => {
                let mut bytes = Vec::new();
                spec.encode(self.peer(), self.no_masking, &mut bytes);
                self.deliver(&bytes, chunking);
            }
            Action::Raw { bytes, chunking } => self.deliver(&bytes, chunking),
            Action::Events(count) => self.take_events(count),
            Action::SendText(text) => {
                let can = self.conn.can_send() && self.sending.is_none();
                let result = self.command(|conn| conn.send_text(&text));
                assert_eq!(result.is_ok(), can, "send_text: {result:?}");
                if result.is_ok() {
                    self.expected.push_back(Message::Text(text.into()));
                }
            }
            Action::SendBinary(data) => {
                let can = self.conn.can_send() && self.sending.is_none();
                // The shared-payload path: a large payload becomes its own output piece.
                let payload = Bytes::copy_from_slice(&data);
                let result = self.command(|conn| conn.send_binary_bytes(payload));
                assert_eq!(result.is_ok(), can, "send_binary: {result:?}");
                if result.is_ok() {
                    self.expected.push_back(Message::Binary(data.0.into()));
                }
            }
            Action::SendPing(payload) => {
                let can = self.conn.can_send() && payload.len() <= MAX_CONTROL_PAYLOAD;
                let result = self.command(|conn| conn.send_ping(&payload));
                assert_eq!(result.is_ok(), can, "send_ping: {result:?}");
                if result.is_ok() {
                    self.expected.push_back(Message::Ping(payload.0.into()));
                }
            }
            Action::SendPong(payload) => {
                let can = self.conn.can_send() && payload.len() <= MAX_CONTROL_PAYLOAD;
                let result = self.command(|conn| conn.send_pong(&payload));
                assert_eq!(result.is_ok(), can, "send_pong: {result:?}");
                if result.is_ok() {
                    self.allowed_pongs.push(payload.0.into());
                }
            }
            Action::SendFrame {
                fin,
                opcode,
                payload,
            } => self.send_frame(fin, opcode, payload.0),
            Action::Close { code, reason } => self.close(code, &reason),
            Action::Write(limit) => self.write(usize::from(limit)),
            Action::Eof => {
                self.conn.receive_eof();
                self.eof = true;
            }
            Action::Advance(ms) => {
                self.now += Duration::from_millis(u64::from(ms));
                let deadline = self.conn.next_deadline();
                self.conn.on_deadline(self.now);
                if deadline.is_some_and(|deadline| self.now >= deadline) {
                    self.timed_out = true;
                    assert!(self.conn.is_finished(), "past the close deadline");
                }
            }
            Action::ReleaseBuffers => {
                self.conn.release_buffers();
                let _ = self.conn.release_compression_state();
            }
        }
        let finished = self.conn.is_finished();
        assert!(finished || !self.finished, "is_finished went back to false");
        self.finished = finished;
    }

    fn output_full(&self) -> bool {
        self.conn.pending_output_len() >= self.config.limits().max_queued_output
    }

    /// Runs an application command and counts the output it queued.
    fn command<T>(&mut self, f: impl FnOnce(&mut Connection) -> T) -> T {
        let before = self.conn.pending_output_len();
        let result = f(&mut self.conn);
        self.commanded_output += self.conn.pending_output_len() - before;
        result
    }

    /// Runs a call that may parse received bytes; checks the output it queued on its own.
    fn parse_call<T>(&mut self, f: impl FnOnce(&mut Connection) -> T) -> T {
        let before = self.conn.pending_output_len();
        let result = f(&mut self.conn);
        let grown = self
            .conn
            .pending_output_len()
            .checked_sub(before)
            .expect("parsing never removes output");
        // Output only grows while parsing: full now if it was when a decision was made.
        self.full_since_drain |= self.output_full();
        let hits = self.conn.auto_response_hits();
        let new_hits = usize::try_from(hits - self.auto_hits).expect("a count fits");
        self.auto_hits = hits;
        let mut auto_output = 0;
        if new_hits > 0 {
            let auto = self.auto.as_ref().expect("hits only with an auto-response");
            let masked = self.role == Role::Client && !self.no_masking;
            auto_output = new_hits * frame_len(auto.response.len(), masked);
            for _ in 0..new_hits {
                self.expected
                    .push_back(Message::Text(auto.response.clone()));
            }
        }
        self.commanded_output += auto_output;
        assert!(
            grown <= auto_output + MAX_CONTROL_FRAME,
            "one parse step queued {grown} bytes: {new_hits} auto-responses and more than one \
             control frame"
        );
        result
    }

    fn deliver(&mut self, bytes: &[u8], chunking: Chunking) {
        let now = self.now;
        for chunk in chunking.chunks(bytes) {
            self.parse_call(|conn| conn.receive(chunk, now));
        }
    }

    fn take_events(&mut self, count: u8) {
        let mut taken = 0;
        while count == 0 || taken < count {
            let Some(event) = self.parse_call(Connection::next_event) else {
                self.fragmented_since_drain = self.sending.is_some();
                self.full_since_drain = self.output_full();
                self.check_status();
                return;
            };
            taken += 1;
            self.check_event(event);
        }
    }

    fn check_event(&mut self, event: Event) {
        if let Some(terminal) = &self.terminal {
            panic!("event {event:?} after {terminal:?}");
        }
        let limits = self.config.limits();
        match event {
            Event::Message(message) => match message {
                Message::Text(text) => {
                    assert!(
                        self.config.assemble_messages(),
                        "a message without assembly"
                    );
                    assert!(text.len() <= limits.max_message_size, "text over the limit");
                    if let Some(auto) = &self.auto {
                        // Delivered instead of answered only when no answer could go out:
                        // the connection is closing, a fragmented send is open, or the
                        // output already holds `max_queued_output`.
                        assert!(
                            text != auto.request
                                || !self.conn.can_send()
                                || self.fragmented_since_drain
                                || self.full_since_drain,
                            "the auto-response request reached the application"
                        );
                    }
                }
                Message::Binary(data) => {
                    assert!(
                        self.config.assemble_messages(),
                        "a message without assembly"
                    );
                    assert!(
                        data.len() <= limits.max_message_size,
                        "binary over the limit"
                    );
                }
                Message::Frame(frame) => {
                    assert!(!self.config.assemble_messages(), "a frame with assembly");
                    assert!(
                        matches!(
                            frame.opcode,
                            OpCode::Text | OpCode::Binary | OpCode::Continuation
                        ),
                        "a data frame with opcode {:?}",
                        frame.opcode
                    );
                    assert!(frame.payload.len() <= limits.max_message_size);
                }
                Message::Ping(payload) => {
                    assert!(payload.len() <= MAX_CONTROL_PAYLOAD);
                    self.allowed_pongs.push(payload);
                }
                Message::Pong(payload) => assert!(payload.len() <= MAX_CONTROL_PAYLOAD),
                Message::Close(frame) => {
                    if let Some(frame) = &frame {
                        assert!(frame.code.is_valid_received(), "close code {}", frame.code);
                        assert!(frame.reason.len() <= MAX_CLOSE_REASON);
                    }
                    self.terminal = Some(Terminal::Closed(frame));
                }
            },
            Event::Failed(error) => self.terminal = Some(Terminal::Failed(error)),
            other => panic!("unknown event {other:?}"),
        }
    }

    fn send_frame(&mut self, fin: bool, opcode: u8, payload: Vec<u8>) {
        let opcode = [
            OpCode::Continuation,
            OpCode::Text,
            OpCode::Binary,
            OpCode::Close,
            OpCode::Ping,
            OpCode::Pong,
        ][usize::from(opcode % 6)];
        let now = self.now;
        let frame = Frame::new(fin, opcode, payload.clone());
        let was_open = self.conn.can_send();
        let result = self.command(|conn| conn.send_frame(&frame, now));
        if result.is_err() {
            return;
        }
        assert!(was_open, "send_frame succeeded after close");
        match opcode {
            OpCode::Ping => self.expected.push_back(Message::Ping(payload.into())),
            OpCode::Pong => self.allowed_pongs.push(payload.into()),
            OpCode::Close => self.local_close = Some(close_payload(&payload)),
            OpCode::Text | OpCode::Binary | OpCode::Continuation => {
                let (kind, mut message) = match (opcode, self.sending.take()) {
                    (OpCode::Continuation, Some(sending)) => sending,
                    (OpCode::Continuation, None) => panic!("continuation accepted without a start"),
                    (_, Some(_)) => panic!("new message accepted while one is unfinished"),
                    (kind, None) => (kind, Vec::new()),
                };
                message.extend_from_slice(&payload);
                if !fin {
                    self.sending = Some((kind, message));
                    self.fragmented_since_drain = true;
                    return;
                }
                let message = if kind == OpCode::Text {
                    let text = String::from_utf8(message)
                        .expect("send_frame accepted a text message that is not UTF-8");
                    Message::Text(text.into())
                } else {
                    Message::Binary(message.into())
                };
                self.expected.push_back(message);
            }
        }
    }

    fn close(&mut self, code: Option<u16>, reason: &str) {
        let frame = code.map(|code| CloseFrame::new(code, reason));
        let valid = frame
            .as_ref()
            .is_none_or(|frame| frame.code.is_sendable() && frame.reason.len() <= MAX_CLOSE_REASON);
        let can = self.conn.can_send() && valid;
        let now = self.now;
        let result = self.command(|conn| conn.close(frame.clone(), now));
        assert_eq!(result.is_ok(), can, "close: {result:?}");
        match result {
            Ok(()) => self.local_close = Some(frame),
            Err(UsageError::SendAfterClose) => assert!(valid),
            Err(_) => assert!(!valid),
        }
    }

    /// Writes up to `limit` bytes (all, through `take_output`, for 0) to the checker.
    fn write(&mut self, limit: usize) {
        let bytes: Vec<u8> = if limit == 0 {
            self.conn.take_output().flatten().collect()
        } else {
            let n = limit.min(self.conn.pending_output_len());
            let bytes = self
                .conn
                .pending_output_chunks()
                .flatten()
                .take(n)
                .copied()
                .collect();
            self.conn.consume_output(n);
            bytes
        };
        if bytes.is_empty() {
            return;
        }
        assert!(
            self.checker_close.is_none(),
            "{} bytes written after the close frame",
            bytes.len()
        );
        self.checker.receive(&bytes, self.now);
        while let Some(event) = self.checker.next_event() {
            match event {
                Event::Message(Message::Close(frame)) => self.checker_close = Some(frame),
                Event::Message(Message::Pong(payload)) => self.checker_pongs.push(payload),
                Event::Message(message) => {
                    let expected = self.expected.pop_front();
                    assert_eq!(
                        Some(&message),
                        expected.as_ref(),
                        "the checker read something other than what was sent"
                    );
                }
                Event::Failed(error) => panic!("the connection wrote an invalid stream: {error}"),
                other => panic!("unknown event {other:?}"),
            }
        }
        let pending = self.checker.pending_output_len();
        self.checker.consume_output(pending);
    }

    /// Output the peer made us queue stays within `max_queued_output` and two control frames.
    fn check_output_bound(&self) {
        let bound =
            self.config.limits().max_queued_output + 2 * MAX_CONTROL_FRAME + self.commanded_output;
        let pending = self.conn.pending_output_len();
        assert!(
            pending <= bound,
            "{pending} bytes pending, more than the bound {bound}"
        );
    }

    /// The state queries agree with what the events said; call only with no event pending.
    fn check_status(&self) {
        let conn = &self.conn;
        let status = conn.close_status();
        match &self.terminal {
            Some(Terminal::Failed(error)) => {
                let status = status.expect("a failed connection has a close status");
                assert_eq!(status.initiator, CloseInitiator::ProtocolViolation);
                assert_eq!(status.code, error.close_code());
                assert!(!status.clean);
                assert!(conn.is_finished() && !conn.can_receive() && !conn.can_send());
            }
            Some(Terminal::Closed(frame)) => {
                let status = status.expect("a closed connection has a close status");
                let initiator = if self.local_close.is_some() {
                    CloseInitiator::Local
                } else {
                    CloseInitiator::Peer
                };
                assert_eq!(status.initiator, initiator);
                let (code, reason) = frame
                    .as_ref()
                    .map_or((CloseCode::NO_STATUS, ""), |f| (f.code, f.reason.as_str()));
                assert_eq!(status.code, code);
                assert_eq!(status.reason.as_str(), reason);
                assert!(status.clean, "both close frames were exchanged");
                assert!(!conn.can_receive() && !conn.can_send());
                if self.role == Role::Server {
                    assert!(conn.is_finished());
                }
            }
            None if self.eof || self.timed_out => {
                let status = status.expect("a lost connection has a close status");
                assert_eq!(status.initiator, CloseInitiator::Lost);
                assert_eq!(status.code, CloseCode::ABNORMAL);
                assert!(!status.clean && conn.is_finished() && !conn.can_receive());
            }
            None => {
                assert_eq!(status, None, "open for reading, yet a close status");
                assert!(conn.can_receive());
            }
        }
    }

    /// Drains everything, then checks what the checker read against what happened.
    fn finish(mut self) {
        self.take_events(0);
        self.write(0);
        // Nothing can be sent after our close frame, so everything sent was read before it.
        assert!(
            self.expected.is_empty(),
            "sent but never read: {:?}",
            self.expected
        );
        let expected_close = match (&self.local_close, &self.terminal) {
            (Some(frame), _) => Some(frame.clone()),
            (None, Some(Terminal::Failed(error))) => {
                let frame = self
                    .checker_close
                    .clone()
                    .flatten()
                    .expect("a failure is announced with a status code");
                assert_eq!(frame.code, error.close_code(), "the failure's close code");
                Some(Some(frame))
            }
            (None, Some(Terminal::Closed(frame))) => {
                Some(frame.as_ref().map(|frame| CloseFrame::new(frame.code, "")))
            }
            (None, None) => None,
        };
        assert_eq!(
            self.checker_close, expected_close,
            "the close frame written"
        );
        for pong in &self.checker_pongs {
            let index = self
                .allowed_pongs
                .iter()
                .position(|allowed| allowed == pong)
                .unwrap_or_else(|| panic!("a pong nobody asked for: {pong:?}"));
            self.allowed_pongs.swap_remove(index);
        }
    }
}

/// The close frame a close payload describes (already validated by `send_frame`).
fn close_payload(payload: &[u8]) -> Option<CloseFrame> {
    match payload {
        [hi, lo, reason @ ..] => Some(CloseFrame::new(
            u16::from_be_bytes([*hi, *lo]),
            std::str::from_utf8(reason).expect("send_frame checked the reason"),
        )),
        _ => None,
    }
}
