//! Frame headers: opcodes, FIN and RSV bits, the three length forms and the mask
//! (RFC 6455 §5.2).

use bytes::{Bytes, BytesMut};

use crate::{error::ProtocolError, mask::copy_masked};

/// The largest encoded header: 2 bytes, an 8-byte length and a 4-byte mask.
pub const MAX_HEADER_LEN: usize = 14;

/// The largest payload of a control frame (RFC 6455 §5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// A frame opcode (RFC 6455 §5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpCode {
    /// 0x0: continues a fragmented message.
    Continuation,
    /// 0x1: the first frame of a text message.
    Text,
    /// 0x2: the first frame of a binary message.
    Binary,
    /// 0x8: close.
    Close,
    /// 0x9: ping.
    Ping,
    /// 0xA: pong.
    Pong,
}

impl OpCode {
    /// Decodes the low four bits of the first header byte; reserved opcodes are an error.
    pub fn from_u8(bits: u8) -> Result<OpCode, ProtocolError> {
        Ok(match bits {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            other => return Err(ProtocolError::ReservedOpcode(other)),
        })
    }

    /// The wire value.
    pub fn as_u8(self) -> u8 {
        match self {
            OpCode::Continuation => 0x0,
            OpCode::Text => 0x1,
            OpCode::Binary => 0x2,
            OpCode::Close => 0x8,
            OpCode::Ping => 0x9,
            OpCode::Pong => 0xA,
        }
    }

    /// Close, ping and pong.
    pub fn is_control(self) -> bool {
        matches!(self, OpCode::Close | OpCode::Ping | OpCode::Pong)
    }
}

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Final fragment of a message.
    pub fin: bool,
    /// RSV1: "compressed" under permessage-deflate.
    pub rsv1: bool,
    /// RSV2: reserved.
    pub rsv2: bool,
    /// RSV3: reserved.
    pub rsv3: bool,
    /// The opcode.
    pub opcode: OpCode,
    /// The masking key, if the frame is masked.
    pub mask: Option<[u8; 4]>,
    /// The payload length in bytes.
    pub payload_len: u64,
}

impl FrameHeader {
    /// Decodes a header from the front of `buf`.
    ///
    /// Returns `Ok(None)` while `buf` holds only part of a header, or the header and its encoded
    /// length. Reserved opcodes, a 64-bit length with its top bit set, non-minimal length forms
    /// and malformed control frames are errors; RSV bits and masking are left to the caller,
    /// which knows the negotiated extensions and its role.
    pub fn decode(buf: &[u8]) -> Result<Option<(FrameHeader, usize)>, ProtocolError> {
        let [b0, b1, rest @ ..] = buf else {
            return Ok(None);
        };
        let opcode = OpCode::from_u8(b0 & 0x0F)?;
        let fin = b0 & 0x80 != 0;
        let masked = b1 & 0x80 != 0;
        let (payload_len, len_bytes) = match b1 & 0x7F {
            126 => {
                let Some(bytes) = rest.first_chunk::<2>() else {
                    return Ok(None);
                };
                let len = u64::from(u16::from_be_bytes(*bytes));
                if len < 126 {
                    return Err(ProtocolError::NonMinimalLength);
                }
                (len, 2)
            }
            127 => {
                let Some(bytes) = rest.first_chunk::<8>() else {
                    return Ok(None);
                };
                let len = u64::from_be_bytes(*bytes);
                if len >> 63 != 0 {
                    return Err(ProtocolError::InvalidLength);
                }
                if len <= u64::from(u16::MAX) {
                    return Err(ProtocolError::NonMinimalLength);
                }
                (len, 8)
            }
            short => (u64::from(short), 0),
        };
        if opcode.is_control() {
            if !fin {
                return Err(ProtocolError::FragmentedControlFrame);
            }
            if payload_len > MAX_CONTROL_PAYLOAD as u64 {
                return Err(ProtocolError::OversizedControlFrame(payload_len));
            }
        }
        let mut header_len = 2 + len_bytes;
        let mask = if masked {
            let Some(key) = buf.get(header_len..header_len + 4) else {
                return Ok(None);
            };
            header_len += 4;
            Some([key[0], key[1], key[2], key[3]])
        } else {
            None
        };
        let header = FrameHeader {
            fin,
            rsv1: b0 & 0x40 != 0,
            rsv2: b0 & 0x20 != 0,
            rsv3: b0 & 0x10 != 0,
            opcode,
            mask,
            payload_len,
        };
        Ok(Some((header, header_len)))
    }

    /// Encodes the header into `out` and returns its length (at most [`MAX_HEADER_LEN`]).
    pub fn encode(&self, out: &mut [u8; MAX_HEADER_LEN]) -> usize {
        out[0] = (u8::from(self.fin) << 7)
            | (u8::from(self.rsv1) << 6)
            | (u8::from(self.rsv2) << 5)
            | (u8::from(self.rsv3) << 4)
            | self.opcode.as_u8();
        let mask_bit = if self.mask.is_some() { 0x80 } else { 0 };
        let mut len = 2;
        if self.payload_len < 126 {
            out[1] = mask_bit | self.payload_len as u8;
        } else if self.payload_len <= u64::from(u16::MAX) {
            out[1] = mask_bit | 126;
            out[2..4].copy_from_slice(&(self.payload_len as u16).to_be_bytes());
            len = 4;
        } else {
            out[1] = mask_bit | 127;
            out[2..10].copy_from_slice(&self.payload_len.to_be_bytes());
            len = 10;
        }
        if let Some(key) = self.mask {
            out[len..len + 4].copy_from_slice(&key);
            len += 4;
        }
        len
    }
}

/// Payloads up to this long fit the short length form and are framed on the stack.
const SMALL_PAYLOAD: usize = 125;

/// Appends one whole frame to `out`: header, then `payload`, masked with `mask` if given.
///
/// The building block for senders that encode a frame once and share the bytes, such as a
/// server broadcasting to a room (server frames are unmasked). RSV2 and RSV3 are always clear.
pub fn encode_frame(
    out: &mut BytesMut,
    opcode: OpCode,
    fin: bool,
    rsv1: bool,
    mask: Option<[u8; 4]>,
    payload: &[u8],
) {
    let header = FrameHeader {
        fin,
        rsv1,
        rsv2: false,
        rsv3: false,
        opcode,
        mask,
        payload_len: payload.len() as u64,
    };
    let mut encoded = [0u8; MAX_HEADER_LEN];
    let header_len = header.encode(&mut encoded);
    let len = payload.len();
    if len <= SMALL_PAYLOAD {
        // Put together on the stack and appended in one copy: for small frames the calls
        // and capacity checks of appending header and payload apart cost more than the bytes.
        let mut frame = [0u8; MAX_HEADER_LEN + SMALL_PAYLOAD];
        frame[..MAX_HEADER_LEN].copy_from_slice(&encoded);
        let body = &mut frame[header_len..header_len + len];
        match mask {
            None => body.copy_from_slice(payload),
            Some(key) => copy_masked(body, payload, key),
        }
        out.extend_from_slice(&frame[..header_len + len]);
        return;
    }
    out.reserve(header_len + payload.len());
    out.extend_from_slice(&encoded[..header_len]);
    match mask {
        None => out.extend_from_slice(payload),
        Some(key) => {
            let start = out.len();
            out.resize(start + payload.len(), 0);
            copy_masked(&mut out[start..], payload, key);
        }
    }
}

/// One frame for the frame-level API: sent with [`crate::Connection::send_frame`] and received as
/// [`crate::Message::Frame`] when message assembly is off.
///
/// Payloads are unmasked and, under permessage-deflate, already inflated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Final fragment of its message.
    pub fin: bool,
    /// Text, Binary or Continuation for data frames; Close, Ping or Pong for control frames.
    pub opcode: OpCode,
    /// The application payload.
    pub payload: Bytes,
}

impl Frame {
    /// A frame with the given parts.
    pub fn new(fin: bool, opcode: OpCode, payload: impl Into<Bytes>) -> Self {
        Frame {
            fin,
            opcode,
            payload: payload.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn decode(bytes: &[u8]) -> FrameHeader {
        let (header, len) = FrameHeader::decode(bytes).unwrap().unwrap();
        assert_eq!(len, bytes.len());
        header
    }

    #[test]
    fn rfc_6455_section_5_7_single_frame_unmasked_text() {
        // 0x81 0x05 "Hello"
        let header = decode(&[0x81, 0x05]);
        assert!(header.fin);
        assert_eq!(header.opcode, OpCode::Text);
        assert_eq!(header.payload_len, 5);
        assert_eq!(header.mask, None);
    }

    #[test]
    fn rfc_6455_section_5_7_masked_text() {
        let header = decode(&[0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d]);
        assert_eq!(header.mask, Some([0x37, 0xfa, 0x21, 0x3d]));
        assert_eq!(header.payload_len, 5);
    }

    #[test]
    fn rfc_6455_section_5_7_fragments_and_lengths() {
        let first = decode(&[0x01, 0x03]);
        assert!(!first.fin);
        assert_eq!(first.opcode, OpCode::Text);
        let last = decode(&[0x80, 0x02]);
        assert!(last.fin);
        assert_eq!(last.opcode, OpCode::Continuation);
        // 256 bytes binary message in a single unmasked frame: 0x82 0x7E 0x0100
        assert_eq!(decode(&[0x82, 0x7E, 0x01, 0x00]).payload_len, 256);
        // 64 KiB: 0x82 0x7F 0x0000000000010000
        assert_eq!(
            decode(&[0x82, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0]).payload_len,
            65536
        );
    }

    #[test]
    fn partial_headers_ask_for_more() {
        let full = [0x82, 0xFF, 0, 0, 0, 0, 0, 1, 0, 0, 1, 2, 3, 4];
        for cut in 0..full.len() {
            assert_eq!(FrameHeader::decode(&full[..cut]), Ok(None), "cut at {cut}");
        }
        assert!(FrameHeader::decode(&full).unwrap().is_some());
    }

    #[test]
    fn malformed_headers_are_rejected() {
        assert_eq!(
            FrameHeader::decode(&[0x83, 0]),
            Err(ProtocolError::ReservedOpcode(3))
        );
        assert_eq!(
            FrameHeader::decode(&[0x8B, 0]),
            Err(ProtocolError::ReservedOpcode(0xB))
        );
        assert_eq!(
            FrameHeader::decode(&[0x09, 0]),
            Err(ProtocolError::FragmentedControlFrame)
        );
        assert_eq!(
            FrameHeader::decode(&[0x89, 126, 0, 126]),
            Err(ProtocolError::OversizedControlFrame(126))
        );
        assert_eq!(
            FrameHeader::decode(&[0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 0]),
            Err(ProtocolError::InvalidLength)
        );
        assert_eq!(
            FrameHeader::decode(&[0x82, 126, 0, 5]),
            Err(ProtocolError::NonMinimalLength)
        );
    }

    #[test]
    fn encode_round_trips_every_length_form() {
        for len in [0u64, 1, 125, 126, 65535, 65536, 1 << 40] {
            for mask in [None, Some([1, 2, 3, 4])] {
                let header = FrameHeader {
                    fin: len % 2 == 0,
                    rsv1: true,
                    rsv2: false,
                    rsv3: false,
                    opcode: OpCode::Binary,
                    mask,
                    payload_len: len,
                };
                let mut buf = [0; MAX_HEADER_LEN];
                let n = header.encode(&mut buf);
                assert_eq!(decode(&buf[..n]), header);
            }
        }
    }

    fn opcode() -> impl Strategy<Value = OpCode> {
        prop_oneof![
            Just(OpCode::Continuation),
            Just(OpCode::Text),
            Just(OpCode::Binary),
            Just(OpCode::Close),
            Just(OpCode::Ping),
            Just(OpCode::Pong),
        ]
    }

    proptest! {
        #[test]
        fn any_valid_header_round_trips(
            fin in any::<bool>(),
            rsv in any::<[bool; 3]>(),
            opcode in opcode(),
            mask in any::<Option<[u8; 4]>>(),
            len in prop_oneof![0u64..126, 126u64..=65535, 65536u64..(1 << 63)],
        ) {
            let header = FrameHeader {
                fin: fin || opcode.is_control(),
                rsv1: rsv[0],
                rsv2: rsv[1],
                rsv3: rsv[2],
                opcode,
                mask,
                payload_len: if opcode.is_control() { len % 126 } else { len },
            };
            let mut buf = [0; MAX_HEADER_LEN];
            let n = header.encode(&mut buf);
            prop_assert_eq!(FrameHeader::decode(&buf[..n]), Ok(Some((header, n))));
            // Any shorter prefix asks for more bytes instead of guessing.
            for cut in 0..n {
                prop_assert_eq!(FrameHeader::decode(&buf[..cut]), Ok(None));
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..20)) {
            let _ = FrameHeader::decode(&bytes);
        }
    }
}
