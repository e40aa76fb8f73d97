//! The extension seam: what the opening handshake negotiated and how it changes framing.
//!
//! Two extensions exist: RFC 7692 permessage-deflate (claims RSV1) and the no-masking
//! extension (draft-damjanovic-websockets-nomasking-02, claims no bit). Parsing of the
//! `Sec-WebSocket-Extensions` header and the offer/accept logic live here too.

/// The extensions both ends agreed on; the handshake produces it, the connection obeys it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Negotiated {
    /// permessage-deflate parameters, when negotiated.
    pub deflate: Option<DeflateParams>,
    /// Client frames travel unmasked.
    pub no_masking: bool,
}

/// Agreed permessage-deflate parameters (RFC 7692 §7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeflateParams {
    /// The server resets its compression context after each message.
    pub server_no_context_takeover: bool,
    /// The client resets its compression context after each message.
    pub client_no_context_takeover: bool,
    /// The server compresses with at most this LZ77 window (8..=15).
    pub server_max_window_bits: u8,
    /// The client compresses with at most this LZ77 window (8..=15).
    pub client_max_window_bits: u8,
}

impl Default for DeflateParams {
    fn default() -> Self {
        DeflateParams {
            server_no_context_takeover: false,
            client_no_context_takeover: false,
            server_max_window_bits: 15,
            client_max_window_bits: 15,
        }
    }
}
