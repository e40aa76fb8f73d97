//! Close codes and close-frame payloads (RFC 6455 §5.5.1, §7.4).

use std::fmt;

use crate::message::Utf8Bytes;

/// The longest close reason that fits a control frame: 125 bytes of payload less the 2-byte code.
pub const MAX_CLOSE_REASON: usize = 123;

/// A close status code (RFC 6455 §7.4).
///
/// Any `u16` can be held; [`CloseCode::is_sendable`] and [`CloseCode::is_valid_received`] tell
/// which ones may appear on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CloseCode(pub u16);

impl CloseCode {
    /// 1000: the purpose of the connection has been fulfilled.
    pub const NORMAL: CloseCode = CloseCode(1000);
    /// 1001: an endpoint is going away (server shutdown, page navigation).
    pub const GOING_AWAY: CloseCode = CloseCode(1001);
    /// 1002: the peer broke the protocol.
    pub const PROTOCOL_ERROR: CloseCode = CloseCode(1002);
    /// 1003: a data type this endpoint cannot accept.
    pub const UNSUPPORTED_DATA: CloseCode = CloseCode(1003);
    /// 1005: no status code was present. Reserved: never sent on the wire.
    pub const NO_STATUS: CloseCode = CloseCode(1005);
    /// 1006: the connection closed without a close frame. Reserved: never sent on the wire.
    pub const ABNORMAL: CloseCode = CloseCode(1006);
    /// 1007: message data inconsistent with its type (invalid UTF-8 in a text message).
    pub const INVALID_PAYLOAD: CloseCode = CloseCode(1007);
    /// 1008: a message violates the endpoint's policy.
    pub const POLICY_VIOLATION: CloseCode = CloseCode(1008);
    /// 1009: a message too big to process.
    pub const MESSAGE_TOO_BIG: CloseCode = CloseCode(1009);
    /// 1010: the client expected an extension the server did not negotiate.
    pub const MANDATORY_EXTENSION: CloseCode = CloseCode(1010);
    /// 1011: the server met an unexpected condition.
    pub const INTERNAL_ERROR: CloseCode = CloseCode(1011);
    /// 1012: the service is restarting.
    pub const SERVICE_RESTART: CloseCode = CloseCode(1012);
    /// 1013: try again later (overload).
    pub const TRY_AGAIN_LATER: CloseCode = CloseCode(1013);
    /// 1014: a gateway received an invalid response upstream.
    pub const BAD_GATEWAY: CloseCode = CloseCode(1014);
    /// 1015: the TLS handshake failed. Reserved: never sent on the wire.
    pub const TLS_HANDSHAKE: CloseCode = CloseCode(1015);

    /// Whether a peer may put this code in a close frame (RFC 6455 §7.4.1 and the IANA
    /// registry): 1000–1003, 1007–1014, and the registered (3000–3999) and private
    /// (4000–4999) ranges. 1004, 1005, 1006, 1015 and everything below 1000 or in
    /// 1016–2999 are not.
    pub fn is_valid_received(self) -> bool {
        matches!(self.0, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }

    /// Whether this endpoint may send the code: the same set as [`Self::is_valid_received`].
    pub fn is_sendable(self) -> bool {
        self.is_valid_received()
    }
}

impl From<u16> for CloseCode {
    fn from(code: u16) -> Self {
        CloseCode(code)
    }
}

impl From<CloseCode> for u16 {
    fn from(code: CloseCode) -> Self {
        code.0
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The payload of a close frame: a code and a UTF-8 reason of at most 123 bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseFrame {
    /// The status code.
    pub code: CloseCode,
    /// Why the endpoint closed; may be empty.
    pub reason: Utf8Bytes,
}

impl CloseFrame {
    /// A close frame with `code` and `reason`.
    pub fn new(code: impl Into<CloseCode>, reason: impl Into<Utf8Bytes>) -> Self {
        CloseFrame {
            code: code.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for CloseFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.reason.is_empty() {
            write!(f, "{}", self.code)
        } else {
            write!(f, "{} ({})", self.code, self.reason.as_str())
        }
    }
}

/// Why a close payload received from the peer is invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClosePayloadError {
    /// One byte: too short for a code.
    Truncated,
    /// A code that may not appear on the wire.
    InvalidCode(u16),
    /// The reason is not UTF-8.
    InvalidReason,
}

/// Parses a received close payload: empty (no status) or a valid code and UTF-8 reason.
pub(crate) fn parse_close_payload(payload: &[u8]) -> Result<Option<CloseFrame>, ClosePayloadError> {
    match payload {
        [] => Ok(None),
        [_] => Err(ClosePayloadError::Truncated),
        [hi, lo, reason @ ..] => {
            let code = CloseCode(u16::from_be_bytes([*hi, *lo]));
            if !code.is_valid_received() {
                return Err(ClosePayloadError::InvalidCode(code.0));
            }
            let reason = Utf8Bytes::try_from(bytes::Bytes::copy_from_slice(reason))
                .map_err(|_| ClosePayloadError::InvalidReason)?;
            Ok(Some(CloseFrame { code, reason }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_codes_follow_rfc_6455_section_7_4() {
        for code in [
            1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014,
        ] {
            assert!(CloseCode(code).is_valid_received(), "{code}");
        }
        for code in [
            0, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535,
        ] {
            assert!(!CloseCode(code).is_valid_received(), "{code}");
        }
        assert!(CloseCode(3000).is_valid_received());
        assert!(CloseCode(4999).is_valid_received());
    }

    #[test]
    fn close_payloads_parse_or_fail_with_the_reason() {
        assert_eq!(parse_close_payload(&[]), Ok(None));
        assert_eq!(parse_close_payload(&[3]), Err(ClosePayloadError::Truncated));
        assert_eq!(
            parse_close_payload(&[3, 237]),
            Err(ClosePayloadError::InvalidCode(1005))
        );
        assert_eq!(
            parse_close_payload(&[3, 232, 0xff]),
            Err(ClosePayloadError::InvalidReason)
        );
        let frame = parse_close_payload(&[3, 232, b'b', b'y', b'e'])
            .unwrap()
            .unwrap();
        assert_eq!(frame.code, CloseCode::NORMAL);
        assert_eq!(frame.reason.as_str(), "bye");
    }
}
