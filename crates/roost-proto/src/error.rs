//! Errors: what the peer did wrong ([`ProtocolError`], [`HandshakeError`]) and what the caller
//! did wrong ([`UsageError`], [`ConfigError`]).

use thiserror::Error;

use crate::close::CloseCode;

/// The peer broke RFC 6455 or RFC 7692 after the handshake.
///
/// The connection queues a close frame with [`ProtocolError::close_code`] and stops reading.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// A frame used opcode 0x3–0x7 or 0xB–0xF, which RFC 6455 §5.2 reserves.
    #[error("reserved opcode {0:#x}")]
    ReservedOpcode(u8),
    /// RSV1, RSV2 or RSV3 was set without a negotiated extension that defines it.
    #[error("reserved bits set without an extension that defines them")]
    ReservedBits,
    /// A client sent a frame without a mask (RFC 6455 §5.1).
    #[error("client frame is not masked")]
    UnmaskedClientFrame,
    /// A client sent a masked frame although the no-masking extension was negotiated
    /// (draft-damjanovic-websockets-nomasking-02 §3).
    #[error("client frame is masked although no-masking was negotiated")]
    MaskedClientFrame,
    /// A server sent a masked frame (RFC 6455 §5.1).
    #[error("server frame is masked")]
    MaskedServerFrame,
    /// A 64-bit payload length had its most significant bit set (RFC 6455 §5.2).
    #[error("payload length has its most significant bit set")]
    InvalidLength,
    /// A length used a longer form than needed (RFC 6455 §5.2: the minimal form must be used).
    #[error("payload length is not in its minimal form")]
    NonMinimalLength,
    /// A control frame had FIN clear (RFC 6455 §5.5).
    #[error("fragmented control frame")]
    FragmentedControlFrame,
    /// A control frame carried more than 125 bytes (RFC 6455 §5.5).
    #[error("control frame payload of {0} bytes exceeds 125")]
    OversizedControlFrame(u64),
    /// A continuation frame arrived with no fragmented message in progress.
    #[error("continuation frame without a message to continue")]
    UnexpectedContinuation,
    /// A new text or binary frame arrived while a fragmented message was unfinished.
    #[error("new data frame while a fragmented message is unfinished")]
    ExpectedContinuation,
    /// A frame declared more payload than the configured maximum frame size.
    #[error("frame of {size} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// The declared payload length.
        size: u64,
        /// The configured limit.
        max: usize,
    },
    /// A message grew past the configured maximum message size (after inflation if compressed).
    #[error("message exceeds the limit of {max} bytes")]
    MessageTooLarge {
        /// The configured limit.
        max: usize,
    },
    /// A text message or a close reason was not valid UTF-8.
    #[error("invalid UTF-8 in a text message")]
    InvalidUtf8,
    /// A close frame carried a single byte, too short for a status code.
    #[error("close frame payload of 1 byte")]
    TruncatedClosePayload,
    /// A close frame carried a code that may not be sent (RFC 6455 §7.4).
    #[error("invalid close code {0}")]
    InvalidCloseCode(u16),
    /// A close frame's reason was not valid UTF-8.
    #[error("close reason is not valid UTF-8")]
    InvalidCloseReason,
    /// RSV1 was set on a control or continuation frame under permessage-deflate (RFC 7692 §6.1).
    #[error("compressed bit set on a control or continuation frame")]
    CompressedControlOrContinuation,
    /// A compressed message could not be inflated.
    #[error("corrupt compressed data: {0}")]
    CorruptDeflate(String),
}

impl ProtocolError {
    /// The close code this violation answers with (RFC 6455 §7.4.1).
    pub fn close_code(&self) -> CloseCode {
        match self {
            ProtocolError::InvalidUtf8 | ProtocolError::InvalidCloseReason => {
                CloseCode::INVALID_PAYLOAD
            }
            ProtocolError::FrameTooLarge { .. } | ProtocolError::MessageTooLarge { .. } => {
                CloseCode::MESSAGE_TOO_BIG
            }
            _ => CloseCode::PROTOCOL_ERROR,
        }
    }
}

/// The caller asked for something the protocol or the connection's state does not allow.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum UsageError {
    /// The connection already sent its close frame: nothing more may be sent.
    #[error("cannot send after the close frame was sent")]
    SendAfterClose,
    /// A control frame payload longer than 125 bytes (RFC 6455 §5.5).
    #[error("control frame payload of {0} bytes exceeds 125")]
    ControlPayloadTooLarge(usize),
    /// A close reason longer than 123 bytes.
    #[error("close reason of {0} bytes exceeds 123")]
    CloseReasonTooLong(usize),
    /// A close code that may not be sent (1005, 1006, 1015, or outside the registered ranges).
    #[error("close code {0} may not be sent")]
    InvalidCloseCode(u16),
    /// A continuation frame was sent with no fragmented message in progress.
    #[error("continuation frame without a message to continue")]
    NoMessageToContinue,
    /// A new data frame was sent while a fragmented message was unfinished: finish it first.
    #[error("a fragmented message is unfinished: send its final continuation first")]
    MessageUnfinished,
    /// A frame sent with [`crate::Frame`] had a control opcode and FIN clear.
    #[error("control frames cannot be fragmented")]
    FragmentedControlFrame,
    /// A text frame or message whose payload is not UTF-8.
    #[error("text payload is not valid UTF-8")]
    InvalidUtf8,
}

/// The opening handshake failed. On the server side [`HandshakeError::status`] is the HTTP
/// status to answer with; [`crate::handshake::reject_response`] writes the whole response.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The request or response is not valid HTTP/1.1.
    #[error("malformed HTTP: {0}")]
    MalformedHttp(String),
    /// The request or response head is larger than the configured limit.
    #[error("HTTP head exceeds {max} bytes")]
    HeadTooLarge {
        /// The configured limit.
        max: usize,
    },
    /// More header lines than the configured limit.
    #[error("more than {max} headers")]
    TooManyHeaders {
        /// The configured limit.
        max: usize,
    },
    /// The request method is not GET.
    #[error("method {0} is not GET")]
    MethodNotGet(String),
    /// The request is not HTTP/1.1 (or later).
    #[error("HTTP version is not 1.1")]
    UnsupportedHttpVersion,
    /// The Host header is missing.
    #[error("missing Host header")]
    MissingHost,
    /// `Upgrade` does not list `websocket`.
    #[error("Upgrade header does not list websocket")]
    MissingUpgrade,
    /// `Connection` does not list `Upgrade`.
    #[error("Connection header does not list upgrade")]
    MissingConnectionUpgrade,
    /// `Sec-WebSocket-Key` is missing or not a base64 16-byte value.
    #[error("Sec-WebSocket-Key is missing or is not a base64-encoded 16-byte value")]
    InvalidKey,
    /// `Sec-WebSocket-Version` is missing or not 13.
    #[error("unsupported Sec-WebSocket-Version: only 13 is supported")]
    UnsupportedVersion,
    /// A `Sec-WebSocket-Extensions` header could not be parsed, or an offer was malformed.
    #[error("invalid Sec-WebSocket-Extensions: {0}")]
    InvalidExtensions(String),
    /// Client: the server's status was not 101 Switching Protocols. More fields may come:
    /// match it as `UnexpectedStatus { status, .. }`.
    #[non_exhaustive]
    #[error(
        "server answered {status} instead of 101 Switching Protocols{}",
        explain(*status, body)
    )]
    UnexpectedStatus {
        /// The status the server sent.
        status: u16,
        /// The first line of the response body, as far as it arrived with the head (at most
        /// 200 characters, control characters dropped): where a server says why it refused.
        /// Empty when there was none.
        body: String,
    },
    /// `Sec-WebSocket-Accept` did not match the key the client sent.
    #[error("Sec-WebSocket-Accept does not match the key sent")]
    AcceptMismatch,
    /// The server selected a subprotocol the client did not offer, or selected one when none
    /// was offered.
    #[error("server selected subprotocol {0:?}, which was not offered")]
    UnofferedProtocol(String),
    /// The server accepted an extension the client did not offer, or with invalid parameters.
    #[error("server accepted extension {0:?}, which was not offered as accepted")]
    UnofferedExtension(String),
    /// The request hook rejected the request with this status.
    #[error("request rejected with status {0}")]
    Rejected(u16),
    /// The hook chose a subprotocol the client did not offer.
    #[error("the request hook selected subprotocol {0:?}, which the client did not offer")]
    HookSelectedUnofferedProtocol(String),
    /// Client: the URI cannot be connected to as given; the message says why.
    #[error("invalid WebSocket URI {0}")]
    InvalidUri(String),
    /// Client: an extra header would override one the handshake writes itself.
    #[error("header {0} is written by the handshake itself: remove it from the extra headers")]
    ReservedHeader(String),
    /// Client: a subprotocol to offer is not an HTTP token (RFC 6455 §4.1).
    #[error("subprotocol {0:?} is not a token: use visible ASCII without separators")]
    InvalidProtocol(String),
    /// Bytes were fed to a handshake reader that already returned its head or an error.
    #[error("the handshake already finished: hand later bytes to the connection")]
    AlreadyFinished,
}

impl HandshakeError {
    /// The HTTP status a server answers this error with. For a client's errors this is not
    /// the status the server sent: that one is in [`UnexpectedStatus`](Self::UnexpectedStatus).
    pub fn status(&self) -> u16 {
        match self {
            HandshakeError::HeadTooLarge { .. } | HandshakeError::TooManyHeaders { .. } => 431,
            HandshakeError::MethodNotGet(_) => 405,
            HandshakeError::UnsupportedVersion => 426,
            HandshakeError::Rejected(status) => *status,
            HandshakeError::HookSelectedUnofferedProtocol(_) | HandshakeError::AlreadyFinished => {
                500
            }
            _ => 400,
        }
    }
}

/// A configuration value is out of range.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A size limit was zero or inconsistent with another.
    #[error("{name} is {value}, {why}")]
    InvalidLimit {
        /// The setting's name.
        name: &'static str,
        /// The value given.
        value: u64,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A window-bits value outside 8..=15.
    #[error("{name} is {value}, must be between 8 and 15")]
    InvalidWindowBits {
        /// The setting's name.
        name: &'static str,
        /// The value given.
        value: u8,
    },
}

/// The tail of [`HandshakeError::UnexpectedStatus`]'s message: the server's own words, and
/// for a success or a redirect the likely cause.
fn explain(status: u16, body: &str) -> String {
    let said = if body.is_empty() {
        String::new()
    } else {
        format!(": {body:?}")
    };
    let hint = match status {
        200..=299 | 404 => " (is this a WebSocket endpoint? check the URL's path)",
        300..=399 => {
            " (a redirect, which WebSocket clients do not follow: connect where it points)"
        }
        _ => "",
    };
    format!("{said}{hint}")
}
