//! The write side of [`Connection`]: messages, control frames, the frame-level API and the
//! output buffer.

use std::{collections::vec_deque, time::Instant};

use bytes::{Buf as _, Bytes};

use super::{CloseInitiator, Connection, Role, SHARED_PAYLOAD_MIN, WriteState, outgoing_mask};
use crate::{
    close::{CloseFrame, ClosePayloadError, MAX_CLOSE_REASON, parse_close_payload},
    error::UsageError,
    frame::{Frame, FrameHeader, MAX_CONTROL_PAYLOAD, MAX_HEADER_LEN, OpCode, encode_frame},
    message::{Message, Utf8Bytes},
    utf8::Utf8Validator,
};

impl Connection {
    /// Queues a text message (compressed when negotiated and large enough).
    pub fn send_text(&mut self, text: &str) -> Result<(), UsageError> {
        self.send_data(OpCode::Text, text.as_bytes())
    }

    /// Queues a binary message (compressed when negotiated and large enough).
    pub fn send_binary(&mut self, data: &[u8]) -> Result<(), UsageError> {
        self.send_data(OpCode::Binary, data)
    }

    /// Queues a text message like [`Connection::send_text`], without copying the payload
    /// when it goes out as it is (see [`SHARED_PAYLOAD_MIN`]).
    pub fn send_text_bytes(&mut self, text: Utf8Bytes) -> Result<(), UsageError> {
        self.send_data_bytes(OpCode::Text, Bytes::from(text))
    }

    /// Queues a binary message like [`Connection::send_binary`], without copying the payload
    /// when it goes out as it is (see [`SHARED_PAYLOAD_MIN`]).
    pub fn send_binary_bytes(&mut self, data: Bytes) -> Result<(), UsageError> {
        self.send_data_bytes(OpCode::Binary, data)
    }

    /// Queues any message: data, ping, pong or close. Data payloads are shared, not copied,
    /// where [`Connection::send_binary_bytes`] would.
    pub fn send(&mut self, message: &Message, now: Instant) -> Result<(), UsageError> {
        match message {
            // A clone that would only be copied from is not made (for a payload built from a
            // `Vec`, the first clone allocates).
            Message::Text(text) if self.shares_payload(text.len()) => {
                self.send_text_bytes(text.clone())
            }
            Message::Text(text) => self.send_data(OpCode::Text, text.as_bytes()),
            Message::Binary(data) if self.shares_payload(data.len()) => {
                self.send_binary_bytes(data.clone())
            }
            Message::Binary(data) => self.send_data(OpCode::Binary, data),
            Message::Ping(payload) => self.send_ping(payload),
            Message::Pong(payload) => self.send_pong(payload),
            Message::Close(frame) => self.close(frame.clone(), now),
            Message::Frame(frame) => self.send_frame(frame, now),
        }
    }

    /// Queues a ping; its payload is at most 125 bytes.
    pub fn send_ping(&mut self, payload: &[u8]) -> Result<(), UsageError> {
        self.send_control(OpCode::Ping, payload)
    }

    /// Queues an unsolicited pong (a heartbeat); at most 125 bytes.
    pub fn send_pong(&mut self, payload: &[u8]) -> Result<(), UsageError> {
        self.send_control(OpCode::Pong, payload)
    }

    /// Starts the close handshake (or answers nothing if our close was already sent).
    ///
    /// `None` sends a close frame without a status code. The code must be sendable
    /// (RFC 6455 §7.4) and the reason at most 123 bytes.
    pub fn close(&mut self, frame: Option<CloseFrame>, now: Instant) -> Result<(), UsageError> {
        if let Some(frame) = &frame {
            if !frame.code.is_sendable() {
                return Err(UsageError::InvalidCloseCode(frame.code.0));
            }
            if frame.reason.len() > MAX_CLOSE_REASON {
                return Err(UsageError::CloseReasonTooLong(frame.reason.len()));
            }
        }
        if !matches!(self.write, WriteState::Open) {
            return Err(UsageError::SendAfterClose);
        }
        self.initiator.get_or_insert(CloseInitiator::Local);
        self.queue_close(frame.as_ref(), now);
        Ok(())
    }

    /// Queues one frame: the frame-level API for fragmenting messages by hand.
    ///
    /// Data frames must follow the fragmentation rules (a Text or Binary frame, then
    /// Continuation frames, the last with `fin`); control frames may be interleaved. Text is
    /// checked for UTF-8 across the fragments. Frames sent this way are not compressed.
    pub fn send_frame(&mut self, frame: &Frame, now: Instant) -> Result<(), UsageError> {
        match frame.opcode {
            OpCode::Ping | OpCode::Pong if !frame.fin => Err(UsageError::FragmentedControlFrame),
            OpCode::Ping => self.send_ping(&frame.payload),
            OpCode::Pong => self.send_pong(&frame.payload),
            OpCode::Close => {
                if !frame.fin {
                    return Err(UsageError::FragmentedControlFrame);
                }
                let close = parse_close_payload(&frame.payload).map_err(|error| match error {
                    ClosePayloadError::InvalidCode(code) => UsageError::InvalidCloseCode(code),
                    ClosePayloadError::Truncated => UsageError::InvalidCloseCode(0),
                    ClosePayloadError::InvalidReason => UsageError::InvalidUtf8,
                })?;
                self.close(close, now)
            }
            OpCode::Text | OpCode::Binary | OpCode::Continuation => {
                self.ensure_writable()?;
                let (opcode, mut utf8) = match (frame.opcode, self.sending_fragmented) {
                    (OpCode::Continuation, None) => return Err(UsageError::NoMessageToContinue),
                    (OpCode::Continuation, Some(opcode)) => (opcode, self.send_utf8.clone()),
                    (_, Some(_)) => return Err(UsageError::MessageUnfinished),
                    (opcode, None) => (opcode, Utf8Validator::new()),
                };
                // Checked on a copy: a refused fragment leaves the message's check as it was.
                if opcode == OpCode::Text {
                    utf8.feed(&frame.payload)
                        .map_err(|_| UsageError::InvalidUtf8)?;
                    if frame.fin {
                        utf8.finish().map_err(|_| UsageError::InvalidUtf8)?;
                    }
                }
                self.send_utf8 = utf8;
                self.sending_fragmented = if frame.fin { None } else { Some(opcode) };
                self.write_frame(frame.opcode, frame.fin, false, &frame.payload);
                Ok(())
            }
        }
    }

    pub(super) fn send_data(&mut self, opcode: OpCode, data: &[u8]) -> Result<(), UsageError> {
        self.ensure_writable()?;
        if self.sending_fragmented.is_some() {
            return Err(UsageError::MessageUnfinished);
        }
        match self.deflate.as_mut() {
            Some(codec) if codec.should_compress(data.len()) => {
                let mut compressed = std::mem::take(&mut self.scratch);
                codec.compress(data, &mut compressed);
                self.write_frame(opcode, true, true, &compressed);
                self.scratch = compressed;
            }
            _ => self.write_frame(opcode, true, false, data),
        }
        Ok(())
    }

    /// Whether a payload of `len` bytes goes out as it is, shared rather than copied: long
    /// enough, not compressed, not masked.
    fn shares_payload(&self, len: usize) -> bool {
        len >= SHARED_PAYLOAD_MIN
            && self
                .deflate
                .as_ref()
                .is_none_or(|codec| !codec.should_compress(len))
            && (self.role == Role::Server || self.negotiated.no_masking)
    }

    fn send_data_bytes(&mut self, opcode: OpCode, data: Bytes) -> Result<(), UsageError> {
        if !self.shares_payload(data.len()) {
            return self.send_data(opcode, &data);
        }
        self.ensure_writable()?;
        if self.sending_fragmented.is_some() {
            return Err(UsageError::MessageUnfinished);
        }
        let header = FrameHeader {
            fin: true,
            rsv1: false,
            rsv2: false,
            rsv3: false,
            opcode,
            mask: None,
            payload_len: data.len() as u64,
        };
        let mut encoded = [0u8; MAX_HEADER_LEN];
        let header_len = header.encode(&mut encoded);
        self.out.extend_from_slice(&encoded[..header_len]);
        let head = self.out.split().freeze();
        self.out_chunked += head.len() + data.len();
        self.out_chunks.push_back(head);
        self.out_chunks.push_back(data);
        Ok(())
    }

    pub(super) fn send_control(
        &mut self,
        opcode: OpCode,
        payload: &[u8],
    ) -> Result<(), UsageError> {
        if payload.len() > MAX_CONTROL_PAYLOAD {
            return Err(UsageError::ControlPayloadTooLarge(payload.len()));
        }
        self.ensure_writable()?;
        self.write_frame(opcode, true, false, payload);
        Ok(())
    }

    pub(super) fn ensure_writable(&self) -> Result<(), UsageError> {
        match self.write {
            WriteState::Open => Ok(()),
            WriteState::CloseSent { .. } => Err(UsageError::SendAfterClose),
        }
    }

    pub(super) fn queue_close(&mut self, frame: Option<&CloseFrame>, now: Instant) {
        let mut payload = [0u8; MAX_CONTROL_PAYLOAD];
        let len = match frame {
            None => 0,
            Some(frame) => {
                payload[..2].copy_from_slice(&frame.code.0.to_be_bytes());
                let reason = frame.reason.as_bytes();
                payload[2..2 + reason.len()].copy_from_slice(reason);
                2 + reason.len()
            }
        };
        self.write_frame(OpCode::Close, true, false, &payload[..len]);
        self.write = WriteState::CloseSent { at: now };
    }

    pub(super) fn write_frame(&mut self, opcode: OpCode, fin: bool, rsv1: bool, payload: &[u8]) {
        let mask = outgoing_mask(self.role, &self.negotiated, self.masks.as_mut());
        encode_frame(&mut self.out, opcode, fin, rsv1, mask, payload);
    }

    /// The first piece of the bytes waiting to be written to the transport (empty when
    /// nothing waits). Output is kept in pieces so payloads can go out without a copy: a
    /// driver writes this piece (or all of [`Connection::pending_output_chunks`] in one
    /// vectored write), reports it with [`Connection::consume_output`] and asks again.
    #[must_use]
    pub fn pending_output(&self) -> &[u8] {
        self.out_chunks
            .front()
            .map_or(&self.out[..], |chunk| &chunk[..])
    }

    /// Every piece of the pending output, in order, for a vectored write.
    pub fn pending_output_chunks(&self) -> impl Iterator<Item = &[u8]> {
        self.out_chunks
            .iter()
            .map(|chunk| &chunk[..])
            .chain((!self.out.is_empty()).then_some(&self.out[..]))
    }

    /// How many bytes wait to be written, in all pieces.
    #[must_use]
    pub fn pending_output_len(&self) -> usize {
        self.out_chunked + self.out.len()
    }

    /// Marks the first `written` bytes of the pending output as written; they may span
    /// several pieces.
    pub fn consume_output(&mut self, written: usize) {
        let mut left = written.min(self.pending_output_len());
        while left > 0 {
            let Some(front) = self.out_chunks.front_mut() else {
                self.out.advance(left);
                return;
            };
            let n = left.min(front.len());
            front.advance(n);
            self.out_chunked -= n;
            left -= n;
            if front.is_empty() {
                self.out_chunks.pop_front();
            }
        }
    }

    /// The transport failed (a write or flush error): nothing more can go out. The connection
    /// ends as lost, like [`Connection::receive_eof`], and the output still queued is dropped,
    /// so a driver does not try it again on every later call.
    pub fn transport_failed(&mut self) {
        self.receive_eof();
        self.consume_output(self.pending_output_len());
    }

    /// Takes all pending output at once, in order, for drivers that hand buffers to the
    /// transport.
    pub fn take_output(&mut self) -> vec_deque::Drain<'_, Bytes> {
        if !self.out.is_empty() {
            self.out_chunks.push_back(self.out.split().freeze());
        }
        self.out_chunked = 0;
        self.out_chunks.drain(..)
    }

    /// Whether the queued output has reached [`crate::Limits::max_queued_output`]: a driver
    /// should stop accepting sends until the transport drains it.
    pub fn is_write_blocked(&self) -> bool {
        self.pending_output_len() >= self.config.limits().max_queued_output
    }
}
