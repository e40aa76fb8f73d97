//! RFC 7692 permessage-deflate: the per-message compression codec.
//!
//! Negotiation lives in [`crate::extension`] ([`crate::extension::negotiate_server`],
//! [`crate::extension::client_offer`], [`crate::extension::negotiate_client`]); it produces
//! the [`DeflateParams`] a [`DeflateCodec`] is built from. The connection then calls
//! [`DeflateCodec::compress`] once per outgoing message and [`DeflateCodec::decompress`] for
//! each piece of a compressed message as it arrives, so a large compressed frame is never
//! held whole.
//!
//! # Wire format (RFC 7692 §7.2)
//! Each message is deflated and ended with a sync flush; the four octets `00 00 ff ff` that
//! the flush ends with are removed before sending and appended again before inflating. With
//! context takeover the LZ77 window carries over from one message to the next; with
//! `*_no_context_takeover` the sender resets after every message.
//!
//! # Window bits 8
//! RFC 7692 allows windows of 8..=15 bits, but zlib (and zlib-rs) cannot compress with an
//! 8-bit window. roost therefore:
//! - inflates a peer's 8-bit stream with a 9-bit window: a larger inflate window reads any
//!   stream a smaller one does;
//! - never compresses with 8 and never asks a peer for 8 (our inflater uses 9 anyway). A
//!   configured 8 acts as 9 for roost's own compressor and requests;
//! - as a server, declines a permessage-deflate offer whose `server_max_window_bits=8`
//!   demands an 8-bit compressor, and accepts the client's next offer or none;
//! - as a client, fails the handshake ([`crate::HandshakeError::InvalidExtensions`]) when the
//!   server answers `client_max_window_bits=8`.
//!
//! # Limits
//! Inflation proceeds in bounded chunks and stops with [`ProtocolError::MessageTooLarge`] as
//! soon as a message would exceed the caller's limit, so a small "decompression bomb" costs
//! at most the limit in memory and the work to produce it.
//!
//! A peer that ends a message with a final (`BFINAL`) block, as RFC 7692 §7.2.3.4 allows,
//! starts a new DEFLATE stream afterwards; its history is gone, so a later message that refers
//! back across that block fails with [`ProtocolError::CorruptDeflate`].

use std::fmt;

use bytes::BytesMut;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use crate::{
    config::DeflateConfig,
    error::ProtocolError,
    extension::{DeflateParams, MIN_ZLIB_WINDOW_BITS},
};

/// The four octets a sync flush ends with: removed after compressing and appended before
/// inflating (RFC 7692 §7.2.1, §7.2.2).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// The largest window RFC 7692 allows and zlib supports.
const MAX_WINDOW_BITS: u8 = 15;

/// Most bytes inflated per step. Steps start smaller (a guess from the input size, so small
/// messages do not pay for zeroing a large buffer) and double up to this.
const INFLATE_CHUNK: usize = 32 * 1024;

/// Fewest bytes inflated per step.
const MIN_INFLATE_STEP: usize = 256;

/// Spare output capacity kept available while compressing.
const MIN_COMPRESS_SPARE: usize = 256;

/// Compresses outgoing and inflates incoming messages of one connection under agreed
/// permessage-deflate parameters.
///
/// One codec holds a compressor and an inflater whose LZ77 windows persist between messages
/// unless the matching `*_no_context_takeover` parameter was agreed.
pub struct DeflateCodec {
    /// Our side's compressor, made on first use; its window size is fixed at construction.
    compressor: Option<Compress>,
    /// The inflater for the peer's messages, made on first use.
    decompressor: Option<Decompress>,
    /// The compression level for `compressor`.
    level: Compression,
    /// Reset `compressor` after every message (our side's `no_context_takeover`).
    reset_compressor: bool,
    /// Reset `decompressor` after every message (the peer's `no_context_takeover`).
    reset_decompressor: bool,
    /// Messages shorter than this are sent uncompressed.
    compression_threshold: usize,
    /// The window bits actually used, for `Debug`.
    compress_window_bits: u8,
    decompress_window_bits: u8,
}

impl DeflateCodec {
    /// A codec for agreed `params`.
    ///
    /// `role_is_server`: true when this endpoint is the server. The codec compresses with our
    /// side's window and `no_context_takeover` and inflates with the peer's. Window bits are
    /// raised to 9 where 8 was agreed (see the module docs); negotiation in this crate never
    /// agrees to 8 for our own compressor.
    pub fn new(role_is_server: bool, params: DeflateParams, config: &DeflateConfig) -> Self {
        let (ours, theirs) = if role_is_server {
            (
                (
                    params.server_max_window_bits,
                    params.server_no_context_takeover,
                ),
                (
                    params.client_max_window_bits,
                    params.client_no_context_takeover,
                ),
            )
        } else {
            (
                (
                    params.client_max_window_bits,
                    params.client_no_context_takeover,
                ),
                (
                    params.server_max_window_bits,
                    params.server_no_context_takeover,
                ),
            )
        };
        let compress_window_bits = usable_window_bits(ours.0);
        let decompress_window_bits = usable_window_bits(theirs.0);
        let level = Compression::new(config.level.min(9));
        DeflateCodec {
            compressor: None,
            decompressor: None,
            level,
            reset_compressor: ours.1,
            reset_decompressor: theirs.1,
            compression_threshold: config.compression_threshold,
            compress_window_bits,
            decompress_window_bits,
        }
    }

    /// Whether a message of `len` bytes should be compressed: at least the configured
    /// compression threshold.
    pub fn should_compress(&self, len: usize) -> bool {
        len >= self.compression_threshold
    }

    /// Compresses one whole message: clears `out`, then writes the RFC 7692 §7.2.1 payload
    /// (sync flush, trailing `00 00 ff ff` removed). Resets the context afterwards when
    /// `no_context_takeover` applies to our side.
    pub fn compress(&mut self, payload: &[u8], out: &mut Vec<u8>) {
        let (level, bits) = (self.level, self.compress_window_bits);
        let compressor = self
            .compressor
            .get_or_insert_with(|| Compress::new_with_window_bits(level, false, bits));
        out.clear();
        out.reserve(payload.len() / 4 + MIN_COMPRESS_SPARE);
        let mut consumed = 0;
        loop {
            if out.capacity() - out.len() < MIN_COMPRESS_SPARE {
                out.reserve(MIN_COMPRESS_SPARE);
            }
            let in_before = compressor.total_in();
            let out_before = out.len();
            let status = compressor
                .compress_vec(&payload[consumed..], out, FlushCompress::Sync)
                .expect("deflate on a live stream with a sync flush cannot fail");
            let step_in = (compressor.total_in() - in_before) as usize;
            consumed += step_in;
            // zlib finished the flush when it returns with output space left over.
            let done = consumed == payload.len() && out.len() < out.capacity();
            // zlib never reports "no progress possible" while it has input and output space;
            // this check only guarantees that the loop ends.
            let stuck = status == Status::BufError && step_in == 0 && out.len() == out_before;
            if done || stuck {
                break;
            }
        }
        if out.ends_with(&TAIL) {
            out.truncate(out.len() - TAIL.len());
        }
        if out.is_empty() {
            // A sync flush with nothing new to flush writes nothing. One empty stored-block
            // header keeps the receiver's appended tail well formed (RFC 7692 §7.2.3.6).
            out.push(0x00);
        }
        if self.reset_compressor {
            compressor.reset();
        }
    }

    /// Frees the compression state that no message needs: the compressor or inflater whose
    /// context is reset after every message anyway. Call it between messages (an idle
    /// connection); the state is made again on next use. Returns whether anything was freed.
    pub fn release_idle_state(&mut self) -> bool {
        let mut freed = false;
        if self.reset_compressor {
            freed |= self.compressor.take().is_some();
        }
        if self.reset_decompressor {
            freed |= self.decompressor.take().is_some();
        }
        freed
    }

    /// Whether a compressor or inflater holds a window that later messages depend on
    /// (context takeover, after first use): the codec cannot then be made again from the
    /// parameters alone.
    pub fn holds_context(&self) -> bool {
        (self.compressor.is_some() && !self.reset_compressor)
            || (self.decompressor.is_some() && !self.reset_decompressor)
    }

    /// Inflates received bytes of a compressed message (any piece of any of its frames, in
    /// order), appending to `out`.
    ///
    /// `fin`: the message ends after `input`; the `00 00 ff ff` tail is appended, then the
    /// context is reset when the peer's `no_context_takeover` applies.
    ///
    /// # Errors
    /// - [`ProtocolError::MessageTooLarge`] as soon as `out.len()` would exceed
    ///   `max_message`; the rest is not inflated and `out` holds at most one byte more.
    /// - [`ProtocolError::CorruptDeflate`] when the data is not valid DEFLATE.
    ///
    /// After an error the codec's state is unspecified: the connection must close.
    pub fn decompress(
        &mut self,
        input: &[u8],
        fin: bool,
        out: &mut BytesMut,
        max_message: usize,
    ) -> Result<(), ProtocolError> {
        if !input.is_empty() {
            self.inflate(input, out, max_message)?;
        }
        if fin {
            self.inflate(&TAIL, out, max_message)?;
            if let Some(decompressor) = self
                .decompressor
                .as_mut()
                .filter(|_| self.reset_decompressor)
            {
                decompressor.reset(false);
            }
        }
        Ok(())
    }

    /// Feeds all of `input` to the inflater, appending to `out` at most `INFLATE_CHUNK` bytes
    /// per step and never more than one byte past `max_message`.
    fn inflate(
        &mut self,
        mut input: &[u8],
        out: &mut BytesMut,
        max_message: usize,
    ) -> Result<(), ProtocolError> {
        let too_large = ProtocolError::MessageTooLarge { max: max_message };
        let bits = self.decompress_window_bits;
        let decompressor = self
            .decompressor
            .get_or_insert_with(|| Decompress::new_with_window_bits(false, bits));
        let mut step = input
            .len()
            .saturating_mul(4)
            .clamp(MIN_INFLATE_STEP, INFLATE_CHUNK);
        loop {
            let room = max_message
                .checked_sub(out.len())
                .ok_or_else(|| too_large.clone())?;
            // One byte more than allowed tells "exactly at the limit" from "past it".
            let space = room.saturating_add(1).min(step);
            step = (step * 2).min(INFLATE_CHUNK);
            let start = out.len();
            out.resize(start + space, 0);
            let in_before = decompressor.total_in();
            let out_before = decompressor.total_out();
            let result = decompressor.decompress(input, &mut out[start..], FlushDecompress::None);
            let consumed = (decompressor.total_in() - in_before) as usize;
            let produced = (decompressor.total_out() - out_before) as usize;
            out.truncate(start + produced);
            input = &input[consumed..];
            let status = result.map_err(|error| {
                ProtocolError::CorruptDeflate(
                    error.message().unwrap_or("invalid deflate data").to_owned(),
                )
            })?;
            if out.len() > max_message {
                return Err(too_large);
            }
            if status == Status::StreamEnd {
                // A final block ended the DEFLATE stream (RFC 7692 §7.2.3.4): whatever follows
                // starts a new one.
                decompressor.reset(false);
                if input.is_empty() {
                    return Ok(());
                }
                continue;
            }
            if input.is_empty() && produced < space {
                return Ok(());
            }
            if consumed == 0 && produced == 0 {
                return Err(ProtocolError::CorruptDeflate(
                    "inflater made no progress".to_owned(),
                ));
            }
        }
    }
}

impl fmt::Debug for DeflateCodec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeflateCodec")
            .field("compress_window_bits", &self.compress_window_bits)
            .field("decompress_window_bits", &self.decompress_window_bits)
            .field("reset_compressor", &self.reset_compressor)
            .field("reset_decompressor", &self.reset_decompressor)
            .field("compression_threshold", &self.compression_threshold)
            .finish_non_exhaustive()
    }
}

/// Window bits zlib can work with: 8 becomes 9 (see the module docs); out-of-range values,
/// which negotiation never produces, are clamped rather than allowed to panic in flate2.
fn usable_window_bits(bits: u8) -> u8 {
    bits.clamp(MIN_ZLIB_WINDOW_BITS, MAX_WINDOW_BITS)
}

#[cfg(test)]
mod tests;
