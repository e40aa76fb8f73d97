//! The read side of [`Connection`]: input, frame parsing, message assembly, events and the
//! codec-level auto-response.

use std::time::Instant;

use bytes::{Buf as _, Bytes, BytesMut};

use super::{
    CloseInitiator, Connection, Event, InFrame, InMessage, ReadState, Role, SHARED_PAYLOAD_MIN,
    WriteState, truncate_reason,
};
use crate::{
    close::{CloseFrame, ClosePayloadError, parse_close_payload},
    error::ProtocolError,
    frame::{Frame, FrameHeader, OpCode},
    mask::apply_mask,
    message::{Message, Utf8Bytes},
    utf8::Utf8Validator,
};

impl Connection {
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
        let control = frame.header.opcode.is_control();
        frame.read += n;
        frame.remaining -= n as u64;
        let done = frame.remaining == 0;
        let chunk = &mut self.input[..n];
        if let Some(key) = mask {
            apply_mask(chunk, key, offset);
        }
        if control {
            self.control.extend_from_slice(chunk);
        } else {
            let message = self
                .message
                .as_mut()
                .ok_or(ProtocolError::UnexpectedContinuation)?;
            if message.compressed {
                // Inflated as it arrives: what the connection holds for a compressed message
                // is bounded by max_message_size, however large its frames are.
                let input = std::mem::take(&mut self.input);
                let inflated = self.inflate(&input[..n], false);
                self.input = input;
                inflated?;
            } else {
                message.len += n;
                if message.opcode == OpCode::Text {
                    self.utf8
                        .feed(chunk)
                        .map_err(|_| ProtocolError::InvalidUtf8)?;
                }
                // Grow with the bytes that actually arrive, never by the declared length.
                self.payload.extend_from_slice(chunk);
            }
        }
        self.input.advance(n);
        if done {
            self.finish_frame()?;
        }
        Ok(done)
    }

    /// Inflates received bytes of the compressed message into `payload`, checking the
    /// message's size and (for text) its UTF-8 as the bytes come. `fin`: the message ends
    /// here.
    ///
    /// The first fault in the inflated bytes decides the error, however the input was split:
    /// invalid UTF-8 within the first `max_message_size` bytes fails with
    /// [`ProtocolError::InvalidUtf8`] even when this call also inflated past the limit.
    fn inflate(&mut self, compressed: &[u8], fin: bool) -> Result<(), ProtocolError> {
        let (Some(message), Some(codec)) = (self.message.as_mut(), self.deflate.as_mut()) else {
            return Err(ProtocolError::ReservedBits);
        };
        let max = self.config.limits().max_message_size;
        let before = self.payload.len();
        // The limit for this output: what the message may still grow by.
        let limit = before + (max - message.len);
        let inflated = codec.decompress(compressed, fin, &mut self.payload, limit);
        // On an error the payload holds what inflated before it, at most one byte past the
        // limit: those bytes are checked first.
        let fresh = &self.payload[before..self.payload.len().min(limit)];
        message.len += fresh.len();
        if message.opcode == OpCode::Text {
            self.utf8
                .feed(fresh)
                .map_err(|_| ProtocolError::InvalidUtf8)?;
        }
        inflated.map_err(|error| match error {
            ProtocolError::MessageTooLarge { .. } => ProtocolError::MessageTooLarge { max },
            other => other,
        })
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

    /// Ends a data frame whose payload was gathered (and inflated) in `payload`.
    fn finish_data_frame(&mut self, fin: bool) -> Result<(), ProtocolError> {
        let Some(message) = self.message.as_ref() else {
            return Err(ProtocolError::UnexpectedContinuation);
        };
        if message.compressed && fin {
            self.inflate(&[], true)?;
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
        let first = !message.delivered;
        message.delivered = true;
        if fin {
            self.message = None;
            if opcode == OpCode::Text {
                self.utf8.finish().map_err(|_| ProtocolError::InvalidUtf8)?;
            }
        }
        let assembled = self.config.assemble_messages();
        // A whole text message (with or without assembly, then in one frame) may be the
        // auto-response request.
        let whole = fin && (assembled || first);
        if whole && opcode == OpCode::Text && self.answer_automatically(&payload) {
            return Ok(());
        }
        let message = if !assembled {
            let wire_opcode = if first { opcode } else { OpCode::Continuation };
            Message::Frame(Frame::new(fin, wire_opcode, payload))
        } else if opcode == OpCode::Text {
            Message::Text(Utf8Bytes::from_validated(payload))
        } else {
            Message::Binary(payload)
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

    /// The next event, or `None` when there is nothing to do yet. Hand bytes put into
    /// [`Connection::input_buffer`] over with [`Connection::receive_input`], which dates
    /// them; before the first call they wait for it (later, they are parsed with the time of
    /// the last one).
    #[must_use]
    pub fn next_event(&mut self) -> Option<Event> {
        // Before the first receive there is no time to date what parsing queues.
        if self.events.is_empty() && !self.input.is_empty() && self.now.is_some() {
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
}
