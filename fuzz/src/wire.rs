//! What a peer puts on the wire: well-formed messages (so inputs reach deep states such as
//! compressed, fragmented text) and arbitrary single frames (so every header field and every
//! violation is reachable), cut into arbitrary chunks.

use arbitrary::Arbitrary;
use bytes::BytesMut;
use roost_proto::deflate::DeflateCodec;
use roost_proto::frame::{FrameHeader, MAX_HEADER_LEN, encode_frame};
use roost_proto::mask::apply_mask;
use roost_proto::{OpCode, Role};

use crate::Blob;

/// The most fragments one generated message is cut into.
const MAX_FRAGMENTS: usize = 16;

/// One frame with every header field under the fuzzer's control.
#[derive(Arbitrary, Debug, Clone)]
pub struct FrameSpec {
    fin: bool,
    /// RSV1, RSV2 and RSV3 in the low three bits.
    rsv: u8,
    /// Any of the sixteen opcodes, reserved ones included (low four bits).
    opcode: u8,
    /// Mask when the sender's role should not, and the other way round.
    wrong_masking: bool,
    key: [u8; 4],
    payload: Blob,
    /// A length to declare instead of the payload's own.
    declared_len: Option<u64>,
}

impl FrameSpec {
    /// Appends the frame as `sender` would send it (masked from a client unless `no_masking`),
    /// with the fuzzer's deviations.
    pub fn encode(&self, sender: Role, no_masking: bool, out: &mut Vec<u8>) {
        let masks = (sender == Role::Client && !no_masking) != self.wrong_masking;
        let header = FrameHeader {
            fin: self.fin,
            rsv1: self.rsv & 1 != 0,
            rsv2: self.rsv & 2 != 0,
            rsv3: self.rsv & 4 != 0,
            // Patched below: the header type cannot hold a reserved opcode.
            opcode: OpCode::Binary,
            mask: masks.then_some(self.key),
            payload_len: self.declared_len.unwrap_or(self.payload.len() as u64),
        };
        let mut encoded = [0u8; MAX_HEADER_LEN];
        let len = header.encode(&mut encoded);
        encoded[0] = (encoded[0] & 0xF0) | (self.opcode & 0x0F);
        out.extend_from_slice(&encoded[..len]);
        let start = out.len();
        out.extend_from_slice(&self.payload);
        if masks {
            apply_mask(&mut out[start..], self.key, 0);
        }
    }
}

/// A whole data message, possibly compressed and fragmented, as a conforming peer sends it
/// (text payloads may still be invalid UTF-8).
#[derive(Arbitrary, Debug, Clone)]
pub struct MessageSpec {
    text: bool,
    payload: Blob,
    /// Compress with the peer's codec (RSV1 on the first frame).
    compress: bool,
    /// Where to cut the (compressed) payload into fragments.
    cuts: Vec<u16>,
    key: [u8; 4],
}

impl MessageSpec {
    /// Appends the message as `sender` would send it; `codec` is the sender's compressor, used
    /// when `compress` is set (without one, the payload is sent raw with RSV1 set, which the
    /// receiver must refuse).
    pub fn encode(
        &self,
        sender: Role,
        no_masking: bool,
        codec: Option<&mut DeflateCodec>,
        out: &mut Vec<u8>,
    ) {
        let mut compressed = Vec::new();
        let body: &[u8] = match (self.compress, codec) {
            (true, Some(codec)) => {
                codec.compress(&self.payload, &mut compressed);
                &compressed
            }
            _ => &self.payload,
        };
        let pieces = split(body, &self.cuts);
        let mut frames = BytesMut::new();
        let last = pieces.len() - 1;
        let mut key = self.key;
        for (index, piece) in pieces.iter().enumerate() {
            let opcode = match (index, self.text) {
                (0, true) => OpCode::Text,
                (0, false) => OpCode::Binary,
                _ => OpCode::Continuation,
            };
            let mask = (sender == Role::Client && !no_masking).then_some(key);
            encode_frame(
                &mut frames,
                opcode,
                index == last,
                self.compress && index == 0,
                mask,
                piece,
            );
            key = u32::from_le_bytes(key)
                .wrapping_add(0x9E37_79B9)
                .to_le_bytes();
        }
        out.extend_from_slice(&frames);
    }

    /// The uncompressed payload.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// Whether it is a text message.
    pub fn is_text(&self) -> bool {
        self.text
    }
}

/// `bytes` cut at `cuts` (taken modulo the length, sorted), into at most [`MAX_FRAGMENTS`]
/// pieces; repeated cuts give empty fragments, which are legal.
pub fn split<'a>(bytes: &'a [u8], cuts: &[u16]) -> Vec<&'a [u8]> {
    let mut points: Vec<usize> = cuts
        .iter()
        .take(MAX_FRAGMENTS - 1)
        .map(|&cut| usize::from(cut) % (bytes.len() + 1))
        .collect();
    points.sort_unstable();
    let mut pieces = Vec::with_capacity(points.len() + 1);
    let mut start = 0;
    for point in points {
        pieces.push(&bytes[start..point]);
        start = point;
    }
    pieces.push(&bytes[start..]);
    pieces
}

/// How a delivery is cut into `receive` calls: 0 delivers everything at once; otherwise the
/// chunk sizes cycle through the four nibbles (1..=16 bytes, the last one times 64), mixing
/// byte-by-byte reads with larger ones.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub struct Chunking(u16);

impl Chunking {
    /// Everything in one `receive`.
    pub const WHOLE: Chunking = Chunking(0);

    /// The chunking these 16 bits describe (see the type's documentation).
    pub fn from_bits(bits: u16) -> Chunking {
        Chunking(bits)
    }

    /// The chunks of `bytes`, in order.
    pub fn chunks(self, bytes: &[u8]) -> Vec<&[u8]> {
        if self.0 == 0 {
            return vec![bytes];
        }
        let mut chunks = Vec::new();
        let mut rest = bytes;
        let mut turn = 0;
        while !rest.is_empty() {
            let nibble = usize::from((self.0 >> (4 * (turn % 4))) & 0xF);
            let size = if turn % 4 == 3 {
                nibble * 64 + 1
            } else {
                nibble + 1
            };
            let (chunk, tail) = rest.split_at(size.min(rest.len()));
            chunks.push(chunk);
            rest = tail;
            turn += 1;
        }
        chunks
    }
}

/// The encoded length of a frame with `payload_len` bytes of payload.
pub fn frame_len(payload_len: usize, masked: bool) -> usize {
    let length_bytes = match payload_len {
        0..=125 => 0,
        126..=0xFFFF => 2,
        _ => 8,
    };
    2 + length_bytes + if masked { 4 } else { 0 } + payload_len
}
