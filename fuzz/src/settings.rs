//! Arbitrary configurations that are always valid, so every input reaches the code under test
//! instead of stopping at `Config::build`.

use std::time::Duration;

use arbitrary::Arbitrary;
use roost_proto::{AutoResponse, Config, DeflateConfig, DeflateParams, Negotiated};

/// The default limit of the frame and message sizes, 16 MiB.
const LARGE_LIMIT: usize = 16 << 20;

/// Limits biased towards small values, so inputs of a few kilobytes reach every boundary.
#[derive(Arbitrary, Debug, Clone)]
pub struct FuzzLimits {
    max_frame_size: u32,
    max_message_size: u32,
    max_queued_output: u32,
    close_timeout_ms: u16,
}

impl FuzzLimits {
    /// The largest frame payload: 1..=100_000 bytes, or 16 MiB when the top bit is set.
    pub fn max_frame_size(&self) -> usize {
        size(self.max_frame_size)
    }

    /// The largest message: 1..=100_000 bytes, or 16 MiB when the top bit is set.
    pub fn max_message_size(&self) -> usize {
        size(self.max_message_size)
    }

    /// The output queued before back-pressure: 1..=100_000 bytes, or 16 MiB.
    pub fn max_queued_output(&self) -> usize {
        size(self.max_queued_output)
    }

    /// The close timeout, 0..=65.535 s.
    pub fn close_timeout(&self) -> Duration {
        Duration::from_millis(u64::from(self.close_timeout_ms))
    }
}

fn size(raw: u32) -> usize {
    if raw & 0x8000_0000 != 0 {
        LARGE_LIMIT
    } else {
        1 + (raw as usize) % 100_000
    }
}

/// permessage-deflate as both ends agreed on it, plus the local compression settings.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub struct FuzzDeflate {
    server_no_context_takeover: bool,
    client_no_context_takeover: bool,
    server_max_window_bits: u8,
    client_max_window_bits: u8,
    level: u8,
    compression_threshold: u8,
}

impl FuzzDeflate {
    /// The agreed parameters; window bits 8..=15, as negotiation may produce.
    pub fn params(&self) -> DeflateParams {
        DeflateParams {
            server_no_context_takeover: self.server_no_context_takeover,
            client_no_context_takeover: self.client_no_context_takeover,
            server_max_window_bits: window_bits(self.server_max_window_bits),
            client_max_window_bits: window_bits(self.client_max_window_bits),
        }
    }

    /// The local settings: the same window bits, level 0..=9, threshold 0..=255 bytes.
    pub fn config(&self) -> DeflateConfig {
        DeflateConfig {
            enabled: true,
            server_no_context_takeover: self.server_no_context_takeover,
            client_no_context_takeover: self.client_no_context_takeover,
            server_max_window_bits: window_bits(self.server_max_window_bits),
            client_max_window_bits: window_bits(self.client_max_window_bits),
            compression_threshold: usize::from(self.compression_threshold),
            level: u32::from(self.level % 10),
        }
    }
}

/// Window bits 8..=15 from any byte.
pub fn window_bits(raw: u8) -> u8 {
    8 + raw % 8
}

/// Everything a connection is built with: configuration, negotiated extensions and an
/// optional auto-response.
#[derive(Arbitrary, Debug, Clone)]
pub struct FuzzConnectionConfig {
    /// Size limits and the close timeout.
    pub limits: FuzzLimits,
    /// Assemble messages, or deliver frames one by one.
    pub assemble_messages: bool,
    /// The no-masking extension was negotiated.
    pub no_masking: bool,
    /// permessage-deflate was negotiated with these parameters.
    pub deflate: Option<FuzzDeflate>,
    /// A request/response pair answered inside the codec.
    pub auto_response: Option<(String, String)>,
}

impl FuzzConnectionConfig {
    /// The configuration; valid by construction.
    pub fn config(&self) -> Config {
        let limits = &self.limits;
        Config::builder()
            .max_frame_size(limits.max_frame_size())
            .max_message_size(limits.max_message_size())
            .max_queued_output(limits.max_queued_output())
            .close_timeout(limits.close_timeout())
            .deflate(
                self.deflate
                    .map_or_else(DeflateConfig::disabled, |d| d.config()),
            )
            .dangerous_no_masking(self.no_masking)
            .assemble_messages(self.assemble_messages)
            .build()
            .expect("every value is in range by construction")
    }

    /// What the handshake negotiated.
    pub fn negotiated(&self) -> Negotiated {
        Negotiated {
            deflate: self.deflate.map(|d| d.params()),
            no_masking: self.no_masking,
        }
    }

    /// The auto-response, each text cut to at most 32 bytes.
    pub fn auto_response(&self) -> Option<AutoResponse> {
        self.auto_response
            .as_ref()
            .map(|(request, response)| AutoResponse {
                request: short(request).into(),
                response: short(response).into(),
            })
    }
}

/// `text` cut to at most 32 bytes on a character boundary.
pub fn short(text: &str) -> &str {
    let mut end = text.len().min(32);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}
