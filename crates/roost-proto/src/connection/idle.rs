//! [`IdleConnection`]: an open connection with nothing in flight, in the few bytes a
//! hibernating server keeps for it, and the input it can answer without becoming whole again.

use std::{fmt, sync::Arc};

use bytes::BytesMut;

use super::{AutoResponse, Connection, MaskSource, Role, outgoing_mask};
use crate::{
    config::Config,
    error::UsageError,
    extension::Negotiated,
    frame::{FrameHeader, MAX_CONTROL_PAYLOAD, OpCode, encode_frame},
    mask::apply_mask,
};

/// An open connection with nothing in flight, reduced to what it needs to go on: its role,
/// what the handshake negotiated, its masking keys (client), its auto-response. A server that
/// holds many idle connections keeps this (tens of bytes) instead of a [`Connection`] (about a
/// kilobyte, plus its buffers). Made by [`Connection::into_idle`]; [`IdleConnection::resume`]
/// gives the connection back.
///
/// It still answers what a quiet peer sends most: pings, pongs to the keepalive ping and the
/// auto-response request ([`IdleConnection::answer`]), and it sends keepalive pings
/// ([`IdleConnection::ping`]), so those never need the whole connection.
pub struct IdleConnection {
    pub(super) role: Role,
    pub(super) negotiated: Negotiated,
    pub(super) masks: Option<Box<dyn MaskSource>>,
    pub(super) auto_response: Option<Arc<AutoResponse>>,
    pub(super) auto_response_hits: u64,
}

/// What [`IdleConnection::answer`] made of the input it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdleInput {
    /// Bytes at the front of the input that were whole frames, handled: their replies are in
    /// the output. The rest is kept by the caller.
    pub consumed: usize,
    /// The frame at `consumed` needs the whole connection ([`IdleConnection::resume`], then
    /// [`Connection::receive`] with the rest of the input): a data message, a close, a
    /// fragment, a compressed frame or a protocol error, or any frame once the output limit
    /// was reached. When `false`, the rest of the input
    /// (if any) is the start of a frame this may still answer: call again once more bytes
    /// arrived, with those bytes appended.
    pub wake: bool,
}

impl fmt::Debug for IdleConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdleConnection")
            .field("role", &self.role)
            .field("negotiated", &self.negotiated)
            .finish_non_exhaustive()
    }
}

impl IdleConnection {
    /// The connection again, as it was: `config` must be the configuration it was made with
    /// (it is not kept here, to keep this small).
    pub fn resume(self, config: Config) -> Connection {
        let mut connection = Connection::new(self.role, config, self.negotiated, self.masks);
        connection.auto_response = self.auto_response;
        connection.auto_response_hits = self.auto_response_hits;
        connection
    }

    /// How many messages the auto-response answered.
    pub fn auto_response_hits(&self) -> u64 {
        self.auto_response_hits
    }

    /// Sets (or with `None` clears) the auto-response, as [`Connection::set_auto_response`]
    /// does, without making the connection whole.
    pub fn set_auto_response(&mut self, auto_response: Option<Arc<AutoResponse>>) {
        self.auto_response = auto_response;
    }

    /// Handles the whole frames at the front of `input` that need no more than this: a ping
    /// is answered with its pong, a pong is taken (there is nobody to tell), and an unfragmented,
    /// uncompressed text message equal to the auto-response request is answered with the
    /// response, counted in [`auto_response_hits`](Self::auto_response_hits). Replies are
    /// appended to `out`, to be written in order before anything else.
    ///
    /// Stops at the first frame that needs the whole connection, without touching it, so
    /// [`Connection::receive`] gets it exactly as it arrived and judges it by every rule.
    /// Stops the same way (`wake`) once `out` holds `max_output` bytes or more: a peer that
    /// asks for replies without reading them is then left to the whole connection's limits.
    /// `input` must start at a frame boundary, as it does for a connection made idle by
    /// [`Connection::into_idle`] (nothing of a frame was left in it).
    pub fn answer(&mut self, input: &[u8], out: &mut BytesMut, max_output: usize) -> IdleInput {
        let mut consumed = 0;
        loop {
            let rest = &input[consumed..];
            if rest.is_empty() {
                return IdleInput {
                    consumed,
                    wake: false,
                };
            }
            let wake = IdleInput {
                consumed,
                wake: true,
            };
            if out.len() >= max_output {
                return wake;
            }
            let (header, header_len) = match FrameHeader::decode(rest) {
                Ok(Some(decoded)) => decoded,
                Ok(None) => {
                    return IdleInput {
                        consumed,
                        wake: false,
                    };
                }
                Err(_) => return wake,
            };
            if !self.may_answer(&header) {
                return wake;
            }
            // At most 125 bytes for a control frame, the request's length for a text one.
            let payload_len = header.payload_len as usize;
            let Some(payload) = rest.get(header_len..header_len + payload_len) else {
                return IdleInput {
                    consumed,
                    wake: false,
                };
            };
            let mut unmasked = [0u8; MAX_CONTROL_PAYLOAD];
            let payload = if header.opcode.is_control() {
                let unmasked = &mut unmasked[..payload_len];
                unmasked.copy_from_slice(payload);
                if let Some(key) = header.mask {
                    apply_mask(unmasked, key, 0);
                }
                &*unmasked
            } else {
                payload
            };
            match header.opcode {
                OpCode::Ping => self.write(out, OpCode::Pong, payload),
                OpCode::Pong => {}
                _ => {
                    if !self.is_request(payload, header.mask) {
                        return wake;
                    }
                    let response = self
                        .auto_response
                        .as_ref()
                        .map(|auto| auto.response.clone())
                        .unwrap_or_default();
                    self.write(out, OpCode::Text, response.as_bytes());
                    self.auto_response_hits += 1;
                }
            }
            consumed += header_len + payload_len;
        }
    }

    /// Appends a ping frame with `payload` (at most 125 bytes) to `out`: a keepalive that
    /// does not need the whole connection.
    pub fn ping(&mut self, payload: &[u8], out: &mut BytesMut) -> Result<(), UsageError> {
        if payload.len() > MAX_CONTROL_PAYLOAD {
            return Err(UsageError::ControlPayloadTooLarge(payload.len()));
        }
        self.write(out, OpCode::Ping, payload);
        Ok(())
    }

    /// Appends a whole text message to `out` as the whole connection would send it, when that
    /// needs nothing this does not keep. Returns false, appending nothing, for a message the
    /// whole connection would compress (permessage-deflate negotiated and the payload at least
    /// `config`'s compression threshold): resume the connection to send that. `config` is the
    /// configuration the connection was made with.
    pub fn send_text(&mut self, config: &Config, text: &str, out: &mut BytesMut) -> bool {
        self.send(config, OpCode::Text, text.as_bytes(), out)
    }

    /// [`IdleConnection::send_text`] for a binary message.
    pub fn send_binary(&mut self, config: &Config, payload: &[u8], out: &mut BytesMut) -> bool {
        self.send(config, OpCode::Binary, payload, out)
    }

    fn send(
        &mut self,
        config: &Config,
        opcode: OpCode,
        payload: &[u8],
        out: &mut BytesMut,
    ) -> bool {
        let compress = self.negotiated.deflate.is_some()
            && payload.len() >= config.deflate().compression_threshold;
        if !compress {
            self.write(out, opcode, payload);
        }
        !compress
    }

    /// Whether the frame `header` starts is one this may answer: masked as the role wants, no
    /// reserved bit, and a ping, a pong or a whole text frame as long as the request.
    fn may_answer(&self, header: &FrameHeader) -> bool {
        let masked_right = match self.role {
            Role::Server => header.mask.is_some() != self.negotiated.no_masking,
            Role::Client => header.mask.is_none(),
        };
        if !masked_right || header.rsv1 || header.rsv2 || header.rsv3 {
            return false;
        }
        match header.opcode {
            OpCode::Ping | OpCode::Pong => true,
            OpCode::Text => {
                header.fin
                    && self
                        .auto_response
                        .as_ref()
                        .is_some_and(|auto| auto.request.len() as u64 == header.payload_len)
            }
            OpCode::Binary | OpCode::Continuation | OpCode::Close => false,
        }
    }

    /// Whether the (still masked, if `mask`) text payload is the auto-response request.
    fn is_request(&self, payload: &[u8], mask: Option<[u8; 4]>) -> bool {
        let Some(auto) = &self.auto_response else {
            return false;
        };
        let request = auto.request.as_bytes();
        match mask {
            None => payload == request,
            Some(key) => payload
                .iter()
                .zip(request)
                .enumerate()
                .all(|(i, (byte, want))| byte ^ key[i % 4] == *want),
        }
    }

    fn write(&mut self, out: &mut BytesMut, opcode: OpCode, payload: &[u8]) {
        let mask = outgoing_mask(self.role, &self.negotiated, self.masks.as_mut());
        encode_frame(out, opcode, true, false, mask, payload);
    }
}
