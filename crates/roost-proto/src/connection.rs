//! The WebSocket connection state machine (RFC 6455 §5–§7), after the opening handshake.
//!
//! # Theory of operation
//!
//! A [`Connection`] owns no socket and no clock. The driver calls, in a loop:
//!
//! 1. [`Connection::receive`] with bytes read from the socket (and the current time), or
//!    [`Connection::receive_input`] after reading straight into
//!    [`Connection::input_buffer`], or [`Connection::receive_eof`] when the peer hung up;
//! 2. [`Connection::next_event`] until it returns `None`: messages, pings, the peer's close;
//! 3. commands such as [`Connection::send_text`] or [`Connection::close`] at any time;
//! 4. [`Connection::pending_output`] / [`Connection::consume_output`] (or
//!    [`Connection::take_output`]) to write what is queued: data, automatic pongs, close
//!    replies;
//! 5. [`Connection::next_deadline`] to arm a timer, and [`Connection::on_deadline`] when it
//!    fires;
//! 6. once [`Connection::is_finished`], it writes what is still pending and closes the socket.
//!
//! The read side and the write side keep separate states:
//!
//! | read side        | meaning                                                           |
//! |------------------|-------------------------------------------------------------------|
//! | `Open`           | frames are parsed                                                 |
//! | `CloseReceived`  | the peer's close frame arrived; later bytes are ignored           |
//! | `Failed`         | the peer broke the protocol; a close frame with its code is queued |
//! | `Ended`          | the transport ended without a close frame (1006)                  |
//!
//! | write side  | meaning                                                    |
//! |-------------|------------------------------------------------------------|
//! | `Open`      | messages may be sent                                       |
//! | `CloseSent` | our close frame is queued; nothing more may be sent        |
//!
//! So "the peer said close and we still owe a close frame" never exists: receiving a close
//! queues the reply at once. A close we start arms a deadline
//! ([`crate::Limits::close_timeout`]) so a silent peer cannot hold the connection. A client
//! whose close handshake completed waits (bounded by the same timeout) for the server to close
//! the TCP connection first, as RFC 6455 §7.1.1 asks.

use std::{collections::VecDeque, fmt, sync::Arc, time::Instant};

use bytes::{Bytes, BytesMut};

use crate::{
    close::{CloseCode, CloseFrame, MAX_CLOSE_REASON},
    config::Config,
    deflate::DeflateCodec,
    error::ProtocolError,
    extension::Negotiated,
    frame::{FrameHeader, OpCode},
    message::{Message, Utf8Bytes},
    utf8::Utf8Validator,
};

/// Payloads at least this long are passed without a copy: a received message is a slice of
/// the input buffer ([`Connection::input_buffer`]) and a payload sent with
/// [`Connection::send_binary_bytes`] or [`Connection::send_text_bytes`] goes out as it is
/// (uncompressed and unmasked). Shorter ones are copied: a copy of a few hundred bytes costs
/// less than sharing, and a small message kept by the application does not keep a whole read
/// buffer alive.
pub const SHARED_PAYLOAD_MIN: usize = 1024;

/// Which end of the connection this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Sends masked frames, expects unmasked ones.
    Client,
    /// Sends unmasked frames, expects masked ones.
    Server,
}

/// Where a client's masking keys come from (RFC 6455 §5.3: unpredictable, one per frame).
///
/// The core has no randomness of its own; drivers pass a CSPRNG-backed source, tests a fixed
/// one.
pub trait MaskSource: Send {
    /// The key for the next frame.
    fn next_mask(&mut self) -> [u8; 4];
}

impl<F: FnMut() -> [u8; 4] + Send> MaskSource for F {
    fn next_mask(&mut self) -> [u8; 4] {
        self()
    }
}

/// Something the connection has to tell its driver.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A complete message, a ping (already answered), a pong, or the peer's close frame
    /// (already answered). With message assembly off
    /// ([`crate::ConfigBuilder::assemble_messages`]), data arrives as [`Message::Frame`].
    Message(Message),
    /// The peer broke the protocol. A close frame with [`ProtocolError::close_code`] is queued
    /// and nothing more is read.
    Failed(ProtocolError),
}

/// Who ended the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseInitiator {
    /// This endpoint sent the first close frame.
    Local,
    /// The peer sent the first close frame.
    Peer,
    /// This endpoint failed the connection because the peer broke the protocol.
    ProtocolViolation,
    /// The transport ended, or the close timeout ran out, without a complete close handshake.
    Lost,
}

/// How the connection ended, once it has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseStatus {
    /// Who ended it.
    pub initiator: CloseInitiator,
    /// The code that describes the end: the peer's code when it sent a close frame (1005 when
    /// that frame had none), ours when we failed the connection, 1006 when it was lost.
    pub code: CloseCode,
    /// The reason that goes with `code`.
    pub reason: Utf8Bytes,
    /// Both close frames were exchanged.
    pub clean: bool,
}

enum ReadState {
    Open,
    CloseReceived(Option<CloseFrame>),
    Failed(CloseCode, Utf8Bytes),
    Ended,
}

enum WriteState {
    Open,
    CloseSent { at: Instant },
}

/// The frame being read: its header and how much payload is still to come.
struct InFrame {
    header: FrameHeader,
    remaining: u64,
    /// Payload bytes read so far, the offset into the mask.
    read: usize,
    /// The payload stays in the input buffer until the frame is complete.
    in_place: bool,
}

/// A data message being assembled (or, without assembly, the message whose frames pass by).
struct InMessage {
    opcode: OpCode,
    compressed: bool,
    /// Payload bytes of the message so far, after inflation.
    len: usize,
    /// Without assembly: a frame of this message was already delivered.
    delivered: bool,
}

/// A WebSocket connection after the handshake, for either role. See the module docs for
/// the call order.
pub struct Connection {
    role: Role,
    config: Config,
    negotiated: Negotiated,
    masks: Option<Box<dyn MaskSource>>,
    deflate: Option<DeflateCodec>,

    read: ReadState,
    write: WriteState,
    initiator: Option<CloseInitiator>,
    eof: bool,
    timed_out: bool,
    /// The time of the latest `receive`, for what parsing queues later.
    now: Option<Instant>,
    /// Received bytes not parsed yet: behind an event the application has not taken, an
    /// incomplete header, or the frame read in place.
    input: BytesMut,

    frame: Option<InFrame>,
    message: Option<InMessage>,
    /// Payload of the data message (or frame) being received, unmasked and inflated.
    payload: BytesMut,
    control: Vec<u8>,
    utf8: Utf8Validator,

    /// Opcode of the fragmented message being sent through [`Connection::send_frame`].
    sending_fragmented: Option<OpCode>,
    send_utf8: Utf8Validator,
    scratch: Vec<u8>,
    /// Output ready to write, oldest first: whole pieces (frame headers and payloads sent
    /// without a copy), then `out`, where frames are encoded.
    out_chunks: VecDeque<Bytes>,
    /// Bytes in `out_chunks`.
    out_chunked: usize,
    out: BytesMut,
    events: VecDeque<Event>,
    auto_response: Option<Arc<AutoResponse>>,
    auto_response_hits: u64,
}

/// The masking key for the next frame this endpoint sends: a client masks unless the
/// handshake agreed otherwise, a server never does.
fn outgoing_mask(
    role: Role,
    negotiated: &Negotiated,
    masks: Option<&mut Box<dyn MaskSource>>,
) -> Option<[u8; 4]> {
    match (role, negotiated.no_masking, masks) {
        (Role::Client, false, Some(masks)) => Some(masks.next_mask()),
        _ => None,
    }
}

/// A request/response pair answered inside the codec: a text message equal to `request` is
/// answered with the text `response` and never becomes an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AutoResponse {
    /// The exact text to answer.
    pub request: Utf8Bytes,
    /// The text sent back.
    pub response: Utf8Bytes,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("role", &self.role)
            .field("negotiated", &self.negotiated)
            .field("pending_output", &self.pending_output_len())
            .field("close_status", &self.close_status())
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// A server-side connection with what the handshake negotiated.
    pub fn server(config: Config, negotiated: Negotiated) -> Self {
        Self::new(Role::Server, config, negotiated, None)
    }

    /// A client-side connection; `masks` supplies a fresh masking key for every frame.
    pub fn client(
        config: Config,
        negotiated: Negotiated,
        masks: impl MaskSource + 'static,
    ) -> Self {
        Self::new(Role::Client, config, negotiated, Some(Box::new(masks)))
    }

    fn new(
        role: Role,
        config: Config,
        negotiated: Negotiated,
        masks: Option<Box<dyn MaskSource>>,
    ) -> Self {
        let deflate = negotiated
            .deflate
            .map(|params| DeflateCodec::new(role == Role::Server, params, config.deflate()));
        Connection {
            role,
            config,
            negotiated,
            masks,
            deflate,
            read: ReadState::Open,
            write: WriteState::Open,
            initiator: None,
            eof: false,
            timed_out: false,
            now: None,
            input: BytesMut::new(),
            frame: None,
            message: None,
            payload: BytesMut::new(),
            control: Vec::new(),
            utf8: Utf8Validator::new(),
            sending_fragmented: None,
            send_utf8: Utf8Validator::new(),
            scratch: Vec::new(),
            out_chunks: VecDeque::new(),
            out_chunked: 0,
            out: BytesMut::new(),
            events: VecDeque::new(),
            auto_response: None,
            auto_response_hits: 0,
        }
    }

    /// This endpoint's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The extensions in force.
    pub fn negotiated(&self) -> &Negotiated {
        &self.negotiated
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    // ----- auto-response and memory ---------------------------------------------------

    /// Sets (or with `None` clears) the text request answered inside the codec: a received
    /// text message equal to `request` is answered with `response`, uncompressed, without an
    /// event. Without message assembly only a request sent in one frame is answered; a
    /// fragmented one arrives as its frames. While the application is in the middle of sending a fragmented message, or
    /// while the output already holds `max_queued_output` bytes (a peer that does not read),
    /// the request is delivered as an event instead. Heartbeats (`"ping"` / `"pong"`) then
    /// never reach the application. Shared: a server that gives every connection the same pair
    /// keeps it once.
    pub fn set_auto_response(&mut self, auto_response: Option<Arc<AutoResponse>>) {
        self.auto_response = auto_response;
    }

    /// The auto-response in force.
    pub fn auto_response(&self) -> Option<&AutoResponse> {
        self.auto_response.as_deref()
    }

    /// How many messages the auto-response answered.
    pub fn auto_response_hits(&self) -> u64 {
        self.auto_response_hits
    }

    /// Gives back the memory of empty receive and send buffers. Does nothing to a buffer that
    /// holds data (a partial frame, unsent output). Cheap to call when the connection goes
    /// quiet; buffers grow again on the next message.
    pub fn release_buffers(&mut self) {
        if self.frame.is_none() && self.message.is_none() {
            self.payload = BytesMut::new();
            self.control = Vec::new();
        }
        if self.input.is_empty() {
            self.input = BytesMut::new();
        }
        if self.out.is_empty() {
            self.out = BytesMut::new();
        }
        if self.out_chunks.is_empty() {
            self.out_chunks = VecDeque::new();
        }
        self.scratch = Vec::new();
    }

    /// Reduces the connection to an [`IdleConnection`] when nothing is in flight: open both
    /// ways, no byte received or to send waiting, no message being received or sent in
    /// fragments, no event untaken, and no compression window that later messages depend on
    /// (context takeover after first use). Otherwise gives the connection back unchanged.
    #[allow(clippy::result_large_err)] // the error is the connection itself, given back
    pub fn into_idle(self) -> Result<IdleConnection, Connection> {
        let idle = matches!(self.read, ReadState::Open)
            && matches!(self.write, WriteState::Open)
            && self.initiator.is_none()
            && !self.eof
            && !self.timed_out
            && self.input.is_empty()
            && self.frame.is_none()
            && self.message.is_none()
            && self.sending_fragmented.is_none()
            && self.pending_output_len() == 0
            && self.events.is_empty()
            && self
                .deflate
                .as_ref()
                .is_none_or(|codec| !codec.holds_context());
        if !idle {
            return Err(self);
        }
        Ok(IdleConnection {
            role: self.role,
            negotiated: self.negotiated,
            masks: self.masks,
            auto_response: self.auto_response,
            auto_response_hits: self.auto_response_hits,
        })
    }

    /// Drops permessage-deflate state that is reset after every message anyway (the sides
    /// with `no_context_takeover`); it is made again on next use. For connections idle long
    /// enough that the memory matters more than the set-up cost. Returns whether anything was
    /// freed.
    pub fn release_compression_state(&mut self) -> bool {
        match self.deflate.as_mut() {
            Some(codec) if self.message.is_none() => codec.release_idle_state(),
            _ => false,
        }
    }

    // ----- time and state --------------------------------------------------------------

    /// When [`Connection::on_deadline`] must be called next, if at all.
    #[must_use]
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.timed_out || self.eof {
            return None;
        }
        let WriteState::CloseSent { at } = self.write else {
            return None;
        };
        let waiting = match self.read {
            ReadState::Open => true,
            // A client waits for the server to close the TCP connection first.
            ReadState::CloseReceived(_) => self.role == Role::Client,
            ReadState::Failed(..) | ReadState::Ended => false,
        };
        waiting.then(|| at + self.config.limits().close_timeout)
    }

    /// Tells the connection the time; past the close deadline it gives up on the peer.
    pub fn on_deadline(&mut self, now: Instant) {
        if self.next_deadline().is_some_and(|deadline| now >= deadline) {
            self.timed_out = true;
            if matches!(self.read, ReadState::Open) {
                self.read = ReadState::Ended;
            }
        }
    }

    /// Whether the connection is over: the driver writes what is still pending (best effort)
    /// and closes the transport.
    pub fn is_finished(&self) -> bool {
        match self.read {
            ReadState::Failed(..) | ReadState::Ended => true,
            ReadState::CloseReceived(_) => match self.role {
                Role::Server => true,
                Role::Client => self.eof || self.timed_out,
            },
            ReadState::Open => self.timed_out,
        }
    }

    /// Whether messages may still be sent.
    pub fn can_send(&self) -> bool {
        matches!(self.write, WriteState::Open)
    }

    /// Whether frames are still being read.
    pub fn can_receive(&self) -> bool {
        matches!(self.read, ReadState::Open)
    }

    /// How the connection ended, once it has (or is ending): who closed it and with what.
    pub fn close_status(&self) -> Option<CloseStatus> {
        let initiator = self.initiator?;
        let sent = matches!(self.write, WriteState::CloseSent { .. });
        let (code, reason, clean) = match &self.read {
            ReadState::CloseReceived(frame) => {
                let (code, reason) = frame
                    .as_ref()
                    .map_or((CloseCode::NO_STATUS, Utf8Bytes::new()), |f| {
                        (f.code, f.reason.clone())
                    });
                (code, reason, sent)
            }
            ReadState::Failed(code, reason) => (*code, reason.clone(), false),
            ReadState::Ended => (CloseCode::ABNORMAL, Utf8Bytes::new(), false),
            // Our close is out and the reply has not come yet.
            ReadState::Open => return None,
        };
        let initiator = match (&self.read, initiator) {
            (ReadState::Ended, CloseInitiator::Local) => CloseInitiator::Lost,
            _ => initiator,
        };
        Some(CloseStatus {
            initiator,
            code,
            reason,
            clean,
        })
    }
}

/// Cuts a message to fit a close reason, on a character boundary.
fn truncate_reason(text: &str) -> String {
    let mut end = text.len().min(MAX_CLOSE_REASON);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

mod idle;
mod read;
mod write;

pub use idle::{IdleConnection, IdleInput};

#[cfg(test)]
mod tests;
