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

use bytes::{Buf as _, Bytes, BytesMut};

use crate::{
    close::{CloseCode, CloseFrame, ClosePayloadError, MAX_CLOSE_REASON, parse_close_payload},
    config::Config,
    deflate::DeflateCodec,
    error::ProtocolError,
    extension::Negotiated,
    frame::{Frame, FrameHeader, OpCode},
    mask::apply_mask,
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
    /// Compressed payload of the current frame, inflated when the frame ends.
    compressed: BytesMut,
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
            compressed: BytesMut::new(),
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

    // ----- read side -------------------------------------------------------------------

    /// Feeds bytes read from the transport (copied into the connection's input buffer).
    /// Events become available through [`Connection::next_event`]; replies (pongs, close)
    /// through [`Connection::pending_output`]. Bytes after the peer's close frame, or after a
    /// protocol error, are ignored.
    ///
    /// Drivers that own their read buffer avoid the copy with
    /// [`Connection::input_buffer`] and [`Connection::receive_input`].
    pub fn receive(&mut self, input: &[u8], now: Instant) {
        if matches!(self.read, ReadState::Open) {
            self.input.extend_from_slice(input);
        }
        self.receive_input(now);
    }

    /// The buffer received bytes wait in. A driver reads from the transport straight into its
    /// spare capacity (or, while it is empty, swaps in a buffer of its own), then calls
    /// [`Connection::receive_input`]. A complete data message of at least
    /// [`SHARED_PAYLOAD_MIN`] bytes is then handed out as a slice of this buffer, unmasked in
    /// place, without a copy; so is a payload sent back with
    /// [`Connection::send_binary_bytes`].
    ///
    /// What is left after the connection took its bytes (an empty buffer, perhaps with spare
    /// capacity) may be swapped out again.
    pub fn input_buffer(&mut self) -> &mut BytesMut {
        &mut self.input
    }

    /// Parses what was added to [`Connection::input_buffer`], like [`Connection::receive`].
    ///
    /// Frames are parsed one event at a time: bytes behind an event wait in the input buffer
    /// until the application asks for the next one. So the application can answer a message
    /// before a protocol error further on in the same read closes the connection.
    pub fn receive_input(&mut self, now: Instant) {
        self.now = Some(now);
        self.parse();
    }

    /// Parses the input buffer until it is used up, more bytes are needed or an event is
    /// produced.
    fn parse(&mut self) {
        self.parse_from(false);
    }

    /// [`Connection::parse`]; `whole_tried`: the caller just found that the next frame does
    /// not take the short way ([`Connection::whole_message`]), so its header is not decoded
    /// twice.
    fn parse_from(&mut self, mut whole_tried: bool) {
        while matches!(self.read, ReadState::Open)
            && self.events.is_empty()
            && !self.input.is_empty()
        {
            if !std::mem::take(&mut whole_tried)
                && let Some(message) = self.whole_message()
            {
                self.events.push_back(Event::Message(message));
                break;
            }
            let step = if self.frame.is_none() {
                self.receive_header()
            } else {
                self.receive_payload()
            };
            match step {
                Ok(true) => {}
                Ok(false) => break,
                Err(error) => self.fail(error),
            }
        }
        if !matches!(self.read, ReadState::Open) {
            self.input.clear();
        }
    }

    /// The time of the `receive` whose bytes are being parsed.
    fn parse_time(&self) -> Instant {
        self.now
            .expect("parsing only runs on bytes given to receive, which sets the time")
    }

    /// The transport ended (a read returned 0 bytes or an error).
    pub fn receive_eof(&mut self) {
        self.eof = true;
        if matches!(self.read, ReadState::Open) {
            self.read = ReadState::Ended;
            self.initiator.get_or_insert(CloseInitiator::Lost);
        }
    }

    /// Parses a frame header at the start of the input; false while it is incomplete (the
    /// bytes wait: at most 13 of them).
    fn receive_header(&mut self) -> Result<bool, ProtocolError> {
        let Some((header, header_len)) = FrameHeader::decode(&self.input)? else {
            return Ok(false);
        };
        self.input.advance(header_len);
        self.start_frame(header)?;
        if header.payload_len == 0 {
            self.finish_frame()?;
        }
        Ok(true)
    }

    fn start_frame(&mut self, header: FrameHeader) -> Result<(), ProtocolError> {
        if header.rsv2 || header.rsv3 {
            return Err(ProtocolError::ReservedBits);
        }
        let is_data_start = matches!(header.opcode, OpCode::Text | OpCode::Binary);
        if header.rsv1 {
            if self.deflate.is_none() {
                return Err(ProtocolError::ReservedBits);
            }
            if !is_data_start {
                return Err(ProtocolError::CompressedControlOrContinuation);
            }
        }
        match (self.role, header.mask.is_some()) {
            (Role::Server, false) if !self.negotiated.no_masking => {
                return Err(ProtocolError::UnmaskedClientFrame);
            }
            (Role::Server, true) if self.negotiated.no_masking => {
                return Err(ProtocolError::MaskedClientFrame);
            }
            (Role::Client, true) => return Err(ProtocolError::MaskedServerFrame),
            _ => {}
        }
        let limits = self.config.limits();
        if header.payload_len > limits.max_frame_size as u64 {
            return Err(ProtocolError::FrameTooLarge {
                size: header.payload_len,
                max: limits.max_frame_size,
            });
        }
        match header.opcode {
            OpCode::Continuation => {
                let Some(message) = &self.message else {
                    return Err(ProtocolError::UnexpectedContinuation);
                };
                if !message.compressed
                    && message.len as u64 + header.payload_len > limits.max_message_size as u64
                {
                    return Err(ProtocolError::MessageTooLarge {
                        max: limits.max_message_size,
                    });
                }
            }
            OpCode::Text | OpCode::Binary => {
                if self.message.is_some() {
                    return Err(ProtocolError::ExpectedContinuation);
                }
                if !header.rsv1 && header.payload_len > limits.max_message_size as u64 {
                    return Err(ProtocolError::MessageTooLarge {
                        max: limits.max_message_size,
                    });
                }
                self.message = Some(InMessage {
                    opcode: header.opcode,
                    compressed: header.rsv1,
                    len: 0,
                    delivered: false,
                });
                self.utf8 = Utf8Validator::new();
            }
            OpCode::Close | OpCode::Ping | OpCode::Pong => self.control.clear(),
        }
        // A frame that is a whole message (or, without assembly, any uncompressed data frame)
        // stays where it arrived: it is unmasked and checked there and handed out as a slice.
        let in_place = match (&self.message, header.opcode) {
            (Some(message), OpCode::Text | OpCode::Binary | OpCode::Continuation) => {
                !message.compressed
                    && (!self.config.assemble_messages()
                        || (header.fin && header.opcode != OpCode::Continuation))
            }
            _ => false,
        };
        self.frame = Some(InFrame {
            header,
            remaining: header.payload_len,
            read: 0,
            in_place,
        });
        Ok(())
    }

    /// Takes payload bytes of the current frame from the input; false when the input is used
    /// up before the frame ends.
    fn receive_payload(&mut self) -> Result<bool, ProtocolError> {
        let Some(frame) = self.frame.as_mut() else {
            return Ok(true);
        };
        if frame.in_place {
            return self.receive_payload_in_place();
        }
        let n = self
            .input
            .len()
            .min(usize::try_from(frame.remaining).unwrap_or(usize::MAX));
        let (mask, offset) = (frame.header.mask, frame.read);
        frame.read += n;
        frame.remaining -= n as u64;
        let done = frame.remaining == 0;
        let chunk = &self.input[..n];
        let target = if frame.header.opcode.is_control() {
            let start = self.control.len();
            self.control.extend_from_slice(chunk);
            &mut self.control[start..]
        } else {
            let message = self
                .message
                .as_mut()
                .ok_or(ProtocolError::UnexpectedContinuation)?;
            let buffer = if message.compressed {
                &mut self.compressed
            } else {
                message.len += n;
                &mut self.payload
            };
            let start = buffer.len();
            // Grow with the bytes that actually arrive, never by the declared length.
            buffer.extend_from_slice(chunk);
            &mut buffer[start..]
        };
        if let Some(key) = mask {
            apply_mask(target, key, offset);
        }
        self.input.advance(n);
        let check_text = !self
            .frame
            .as_ref()
            .is_some_and(|f| f.header.opcode.is_control())
            && self
                .message
                .as_ref()
                .is_some_and(|m| m.opcode == OpCode::Text && !m.compressed);
        if check_text {
            let start = self.payload.len() - n;
            self.utf8
                .feed(&self.payload[start..])
                .map_err(|_| ProtocolError::InvalidUtf8)?;
        }
        if done {
            self.finish_frame()?;
        }
        Ok(done)
    }

    /// [`Connection::receive_payload`] for a frame left in the input buffer: unmasks and
    /// checks what arrived since the last call (so invalid UTF-8 fails as soon as it arrives),
    /// and takes the payload out once it is complete.
    fn receive_payload_in_place(&mut self) -> Result<bool, ProtocolError> {
        let Some(frame) = self.frame.as_mut() else {
            return Ok(true);
        };
        // At most max_frame_size, so it fits.
        let len = usize::try_from(frame.header.payload_len).unwrap_or(usize::MAX);
        let have = self.input.len().min(len);
        let text = self
            .message
            .as_ref()
            .is_some_and(|m| m.opcode == OpCode::Text);
        if have > frame.read {
            let fresh = &mut self.input[frame.read..have];
            if let Some(key) = frame.header.mask {
                apply_mask(fresh, key, frame.read);
            }
            if text {
                self.utf8
                    .feed(fresh)
                    .map_err(|_| ProtocolError::InvalidUtf8)?;
            }
            frame.read = have;
        }
        if have < len {
            return Ok(false);
        }
        let fin = frame.header.fin;
        self.frame = None;
        let payload = if len < SHARED_PAYLOAD_MIN {
            // Small: a copy of its own, so it does not keep the whole read buffer alive.
            let payload = Bytes::copy_from_slice(&self.input[..len]);
            self.input.advance(len);
            payload
        } else {
            self.input.split_to(len).freeze()
        };
        if let Some(message) = self.message.as_mut() {
            message.len += len;
        }
        self.finish_data(fin, payload)?;
        Ok(true)
    }

    fn finish_frame(&mut self) -> Result<(), ProtocolError> {
        let Some(frame) = self.frame.take() else {
            return Ok(());
        };
        match frame.header.opcode {
            OpCode::Ping => {
                let payload = Bytes::copy_from_slice(&self.control);
                // A peer that never reads cannot make us queue pongs without bound.
                if matches!(self.write, WriteState::Open)
                    && self.pending_output_len() < self.config.limits().max_queued_output
                {
                    self.write_frame(OpCode::Pong, true, false, &payload);
                }
                self.events
                    .push_back(Event::Message(Message::Ping(payload)));
            }
            OpCode::Pong => {
                let payload = Bytes::copy_from_slice(&self.control);
                self.events
                    .push_back(Event::Message(Message::Pong(payload)));
            }
            OpCode::Close => self.receive_close()?,
            OpCode::Text | OpCode::Binary | OpCode::Continuation => {
                self.finish_data_frame(frame.header.fin)?;
            }
        }
        Ok(())
    }

    fn receive_close(&mut self) -> Result<(), ProtocolError> {
        let frame = parse_close_payload(&self.control).map_err(|error| match error {
            ClosePayloadError::Truncated => ProtocolError::TruncatedClosePayload,
            ClosePayloadError::InvalidCode(code) => ProtocolError::InvalidCloseCode(code),
            ClosePayloadError::InvalidReason => ProtocolError::InvalidCloseReason,
        })?;
        self.initiator.get_or_insert(CloseInitiator::Peer);
        if matches!(self.write, WriteState::Open) {
            // Echo the status code (RFC 6455 §5.5.1); an empty close is answered empty.
            let reply = frame
                .as_ref()
                .map(|f| CloseFrame::new(f.code, Utf8Bytes::new()));
            self.queue_close(reply.as_ref(), self.parse_time());
        }
        self.events
            .push_back(Event::Message(Message::Close(frame.clone())));
        self.read = ReadState::CloseReceived(frame);
        Ok(())
    }

    /// Ends a data frame whose payload was gathered in `payload` (inflated first when
    /// compressed).
    fn finish_data_frame(&mut self, fin: bool) -> Result<(), ProtocolError> {
        let Some(message) = self.message.as_mut() else {
            return Err(ProtocolError::UnexpectedContinuation);
        };
        let max = self.config.limits().max_message_size;
        if message.compressed {
            let Some(codec) = self.deflate.as_mut() else {
                return Err(ProtocolError::ReservedBits);
            };
            let before = self.payload.len();
            // The limit for this frame's output: what the message may still grow by.
            let limit = before + (max - message.len);
            codec
                .decompress(&self.compressed, fin, &mut self.payload, limit)
                .map_err(|error| match error {
                    ProtocolError::MessageTooLarge { .. } => ProtocolError::MessageTooLarge { max },
                    other => other,
                })?;
            self.compressed.clear();
            message.len += self.payload.len() - before;
            if message.opcode == OpCode::Text {
                self.utf8
                    .feed(&self.payload[before..])
                    .map_err(|_| ProtocolError::InvalidUtf8)?;
            }
        }
        // With assembly, `payload` is handed out when the message is complete.
        if fin || !self.config.assemble_messages() {
            let payload = self.payload.split().freeze();
            self.finish_data(fin, payload)?;
        }
        Ok(())
    }

    /// Hands out a data frame's payload: the whole message's with assembly (once `fin`),
    /// each frame's without.
    fn finish_data(&mut self, fin: bool, payload: Bytes) -> Result<(), ProtocolError> {
        let Some(message) = self.message.as_mut() else {
            return Err(ProtocolError::UnexpectedContinuation);
        };
        let opcode = message.opcode;
        if fin && opcode == OpCode::Text {
            self.utf8.finish().map_err(|_| ProtocolError::InvalidUtf8)?;
        }
        if !self.config.assemble_messages() {
            let wire_opcode = if message.delivered {
                OpCode::Continuation
            } else {
                opcode
            };
            message.delivered = true;
            if fin {
                self.message = None;
            }
            let frame = Frame::new(fin, wire_opcode, payload);
            self.events.push_back(Event::Message(Message::Frame(frame)));
            return Ok(());
        }
        self.message = None;
        if opcode == OpCode::Text && self.answer_automatically(&payload) {
            return Ok(());
        }
        let message = match opcode {
            OpCode::Text => Message::Text(Utf8Bytes::from_validated(payload)),
            _ => Message::Binary(payload),
        };
        self.events.push_back(Event::Message(message));
        Ok(())
    }

    /// Fails the connection: queue a close frame with the error's code, stop reading.
    fn fail(&mut self, error: ProtocolError) {
        let code = error.close_code();
        let reason = Utf8Bytes::from(truncate_reason(&error.to_string()));
        if matches!(self.write, WriteState::Open) {
            self.queue_close(
                Some(&CloseFrame::new(code, reason.clone())),
                self.parse_time(),
            );
        }
        self.initiator = Some(CloseInitiator::ProtocolViolation);
        self.read = ReadState::Failed(code, reason);
        self.frame = None;
        self.message = None;
        self.input = BytesMut::new();
        self.events.push_back(Event::Failed(error));
    }

    /// The next event, or `None` when there is nothing to do yet.
    #[must_use]
    pub fn next_event(&mut self) -> Option<Event> {
        if self.events.is_empty() && !self.input.is_empty() {
            if let Some(message) = self.whole_message() {
                return Some(Event::Message(message));
            }
            self.parse_from(true);
        }
        self.events.pop_front()
    }

    /// The common case in one step: a complete, unfragmented, uncompressed data frame at the
    /// start of the input, with no frame or message in progress, becomes its message without
    /// the frame and message state or the event queue. Auto-response requests are answered
    /// on the way. `None` when the next frame is anything else (or incomplete, or invalid):
    /// [`Connection::parse`] then takes it the long way, which reports every error. Invalid
    /// UTF-8 fails the connection here, as it would there.
    fn whole_message(&mut self) -> Option<Message> {
        loop {
            if !matches!(self.read, ReadState::Open)
                || self.frame.is_some()
                || self.message.is_some()
                || !self.config.assemble_messages()
            {
                return None;
            }
            let (header, header_len) = FrameHeader::decode(&self.input).ok().flatten()?;
            let masked_as_it_should = match self.role {
                Role::Server => header.mask.is_some() != self.negotiated.no_masking,
                Role::Client => header.mask.is_none(),
            };
            let text = header.opcode == OpCode::Text;
            if !header.fin
                || header.rsv1
                || header.rsv2
                || header.rsv3
                || !(text || header.opcode == OpCode::Binary)
                || !masked_as_it_should
            {
                return None;
            }
            let limits = self.config.limits();
            let len = usize::try_from(header.payload_len).ok()?;
            if len > limits.max_frame_size
                || len > limits.max_message_size
                || self.input.len() - header_len < len
            {
                return None;
            }
            let payload = &mut self.input[header_len..header_len + len];
            if let Some(key) = header.mask {
                apply_mask(payload, key, 0);
            }
            if text && simdutf8::basic::from_utf8(payload).is_err() {
                self.input.advance(header_len + len);
                self.fail(ProtocolError::InvalidUtf8);
                return None;
            }
            let payload = if len < SHARED_PAYLOAD_MIN {
                // Small: a copy of its own, so it does not keep the whole read buffer alive.
                let payload = Bytes::copy_from_slice(payload);
                self.input.advance(header_len + len);
                payload
            } else {
                self.input.advance(header_len);
                self.input.split_to(len).freeze()
            };
            if !text {
                return Some(Message::Binary(payload));
            }
            if !self.answer_automatically(&payload) {
                return Some(Message::Text(Utf8Bytes::from_validated(payload)));
            }
        }
    }

    /// Answers the complete text message in `payload` if it is the auto-response request.
    fn answer_automatically(&mut self, payload: &[u8]) -> bool {
        let Some(auto) = &self.auto_response else {
            return false;
        };
        // A data frame may not go out in the middle of a fragmented message the application
        // is sending (RFC 6455 §5.4): then the request reaches the application instead.
        if payload != auto.request.as_bytes()
            || !self.can_send()
            || self.sending_fragmented.is_some()
            || self.pending_output_len() >= self.config.limits().max_queued_output
        {
            return false;
        }
        let response = auto.response.clone();
        self.auto_response_hits += 1;
        self.write_frame(OpCode::Text, true, false, response.as_bytes());
        true
    }

    /// Sets (or with `None` clears) the text request answered inside the codec: a received
    /// text message equal to `request` is answered with `response`, uncompressed, without an
    /// event. While the application is in the middle of sending a fragmented message, or
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
            self.compressed = BytesMut::new();
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
mod write;

pub use idle::{IdleConnection, IdleInput};

#[cfg(test)]
mod tests;
