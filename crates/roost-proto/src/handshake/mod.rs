//! The opening handshake (RFC 6455 §4) for both roles, as pure parsing and decisions.
//!
//! Nothing here reads a socket. A server driver feeds received bytes to a [`RequestReader`]
//! until it yields the request head and the bytes read past it, then calls [`accept`] and writes
//! either [`Accepted::to_bytes`] or [`Rejected::to_bytes`]. A client driver builds the request
//! with [`ClientHandshake::new`], writes it, and feeds the answer to [`ClientHandshake::feed`].
//! Drivers that parse HTTP elsewhere (hyper, axum) skip the reader and call [`accept`] with
//! their own request or [`http::request::Parts`]: validation and the response are the same.
//!
//! Either way the bytes after the head are handed back, never dropped: a peer may send its
//! first frames in the same packet as the handshake.
//!
//! ```
//! use roost_proto::Config;
//! use roost_proto::handshake::{ClientHandshake, RequestReader, accept};
//!
//! let config = Config::default();
//! let uri: http::Uri = "ws://example.com/chat".parse().unwrap();
//! let (mut client, request) =
//!     ClientHandshake::new(&config, &uri, [7; 16], &[], &http::HeaderMap::new(), false).unwrap();
//!
//! let mut reader = RequestReader::new(&config);
//! let (head, _leftover) = reader.feed(&request).unwrap().expect("a whole request");
//! let accepted = accept(&config, &head, |_request, response| Ok(response)).unwrap();
//!
//! let done = client.feed(&accepted.to_bytes()).unwrap().expect("a whole response");
//! assert_eq!(done.negotiated, accepted.negotiated);
//! ```

mod client;
mod reject;
mod server;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, header};
use sha1::{Digest as _, Sha1};

use crate::error::HandshakeError;

pub use client::{ClientAccepted, ClientHandshake};
pub use reject::{Refusal, Rejected, reject_response};
pub use server::{Accepted, HookResult, RequestHead, RequestReader, accept, validate_request};

/// The GUID every server appends to the client's key (RFC 6455 §1.3).
const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The only protocol version this crate speaks (RFC 6455 §4.1).
const VERSION: &str = "13";

/// The `Sec-WebSocket-Accept` value for a `Sec-WebSocket-Key` value (RFC 6455 §1.3): base64 of
/// the SHA-1 of the key as sent (the base64 text itself, not its decoding) followed by the
/// protocol's GUID.
pub fn accept_key(key: &[u8]) -> String {
    let mut sha1 = Sha1::new();
    sha1.update(key);
    sha1.update(GUID);
    BASE64.encode(sha1.finalize())
}

/// Whether any of the comma-separated tokens in any `name` header equals `token`, ignoring
/// ASCII case (RFC 9110 §5.6.1 lists; `Upgrade` and `Connection` are such lists).
fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|value| {
        value
            .as_bytes()
            .split(|&byte| byte == b',')
            .any(|item| item.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

/// The value of a header that must appear exactly once, whitespace trimmed.
fn single_value<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a [u8]> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (Some(value), None) => Some(value.as_bytes().trim_ascii()),
        _ => None,
    }
}

/// The comma-separated items of every `name` header, trimmed, empty items skipped.
fn list_items<'a>(headers: &'a HeaderMap, name: &HeaderName) -> impl Iterator<Item = &'a [u8]> {
    headers
        .get_all(name)
        .iter()
        .flat_map(|value| value.as_bytes().split(|&byte| byte == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|item| !item.is_empty())
}

/// Accumulates an HTTP head until its blank line arrives, within the configured limits.
///
/// Fed one byte at a time it stays linear: each call scans only the new bytes (looking back at
/// most two bytes for a line break split across calls), and the head is parsed only when a blank
/// line has just completed.
#[derive(Debug)]
struct HeadReader {
    /// Everything received so far; the head and possibly bytes after it.
    buffer: BytesMut,
    /// Where the next scan for the end of the head starts.
    scanned: usize,
    /// Index of the first byte that is not CR or LF. Empty lines before the start line are
    /// skipped (RFC 9112 §2.2), so a blank line only ends the head once the head has begun.
    start: Option<usize>,
    /// Largest head accepted, in bytes.
    max_size: usize,
    /// Most header lines accepted.
    max_headers: usize,
    /// A head was returned or an error reported: the reader is spent.
    finished: bool,
}

impl HeadReader {
    fn new(max_size: usize, max_headers: usize) -> Self {
        HeadReader {
            buffer: BytesMut::new(),
            scanned: 0,
            start: None,
            max_size,
            max_headers,
            finished: false,
        }
    }

    /// Appends `bytes` and calls `parse` on the candidate head each time a blank line ends one.
    /// `parse` gets the head and a header array sized for the limit, and answers
    /// `Ok(Some((value, head_length)))` when the head is complete, `Ok(None)` when it is not.
    /// Returns the value and the bytes after the head.
    fn feed<T>(
        &mut self,
        bytes: &[u8],
        mut parse: impl for<'h> FnMut(&'h [u8], &mut [httparse::Header<'h>]) -> ParseResult<T>,
    ) -> Result<Option<(T, Bytes)>, HandshakeError> {
        if self.finished {
            return Err(HandshakeError::AlreadyFinished);
        }
        self.buffer.extend_from_slice(bytes);
        let result = self.advance(&mut parse);
        if !matches!(result, Ok(None)) {
            self.finished = true;
        }
        result
    }

    fn advance<T>(
        &mut self,
        parse: &mut impl for<'h> FnMut(&'h [u8], &mut [httparse::Header<'h>]) -> ParseResult<T>,
    ) -> Result<Option<(T, Bytes)>, HandshakeError> {
        // Past `max_size` no head can end within the limit, so never scan further: a huge chunk
        // costs no more than a full one.
        let scan_end = self.buffer.len().min(self.max_size);
        while self.scanned < scan_end {
            let index = self.scanned;
            self.scanned += 1;
            let byte = self.buffer[index];
            if self.start.is_none() {
                if byte != b'\r' && byte != b'\n' {
                    self.start = Some(index);
                }
                continue;
            }
            if byte != b'\n' || !self.ends_blank_line(index) {
                continue;
            }
            let length = index + 1;
            let outcome = {
                let mut headers =
                    vec![httparse::EMPTY_HEADER; header_capacity(self.max_headers, length)];
                parse(&self.buffer[..length], &mut headers)
            };
            match outcome {
                Ok(Some((value, parsed))) => {
                    let rest = self.buffer.split_off(parsed.min(length));
                    self.buffer.clear();
                    return Ok(Some((value, rest.freeze())));
                }
                Ok(None) => {}
                Err(ParseError::TooManyHeaders) => {
                    return Err(HandshakeError::TooManyHeaders {
                        max: self.max_headers,
                    });
                }
                Err(ParseError::Invalid(error)) => return Err(error),
            }
        }
        if self.buffer.len() > self.max_size {
            return Err(HandshakeError::HeadTooLarge { max: self.max_size });
        }
        Ok(None)
    }

    /// Whether the LF at `index` ends an empty line: LF LF or LF CR LF (so CRLF CRLF too; bare
    /// LF line ends are accepted as httparse and RFC 9112 §2.2 allow). Called only once the head
    /// has started; the bytes looked at then lie after `start`, which is neither CR nor LF, so
    /// leading empty lines never end a head.
    fn ends_blank_line(&self, index: usize) -> bool {
        let before = |back: usize| index.checked_sub(back).map(|at| self.buffer[at]);
        match before(1) {
            Some(b'\n') => true,
            Some(b'\r') => before(2) == Some(b'\n'),
            _ => false,
        }
    }
}

/// What a head parser answers: the value and the head length, nothing yet, or an error.
type ParseResult<T> = Result<Option<(T, usize)>, ParseError>;

/// Why a candidate head was refused.
enum ParseError {
    /// More headers than the array holds, which is sized to the limit.
    TooManyHeaders,
    /// Any other fault, already as the error to report.
    Invalid(HandshakeError),
}

impl From<httparse::Error> for ParseError {
    fn from(error: httparse::Error) -> Self {
        match error {
            httparse::Error::TooManyHeaders => ParseError::TooManyHeaders,
            other => ParseError::Invalid(HandshakeError::MalformedHttp(other.to_string())),
        }
    }
}

impl From<HandshakeError> for ParseError {
    fn from(error: HandshakeError) -> Self {
        ParseError::Invalid(error)
    }
}

/// How many header slots to give httparse for a head of `length` bytes: the limit, but never
/// more than the head could hold. A header line takes at least three bytes (`a:` and LF), so
/// a generous limit does not make every parse allocate for it.
fn header_capacity(max_headers: usize, length: usize) -> usize {
    max_headers.min(length / 3 + 1)
}

/// Copies parsed headers into a [`HeaderMap`], keeping repeated names.
fn header_map(parsed: &[httparse::Header<'_>]) -> Result<HeaderMap, HandshakeError> {
    let mut headers = HeaderMap::with_capacity(parsed.len());
    for field in parsed {
        let name = HeaderName::from_bytes(field.name.as_bytes())
            .map_err(|_| malformed(format!("invalid header name {:?}", field.name)))?;
        let value = HeaderValue::from_bytes(field.value)
            .map_err(|_| malformed(format!("invalid value in header {:?}", field.name)))?;
        headers.append(name, value);
    }
    Ok(headers)
}

/// The [`http::Version`] for httparse's minor version (it parses HTTP/1.x only).
fn http_version(minor: Option<u8>) -> http::Version {
    match minor {
        Some(0) => http::Version::HTTP_10,
        _ => http::Version::HTTP_11,
    }
}

fn malformed(message: impl Into<String>) -> HandshakeError {
    HandshakeError::MalformedHttp(message.into())
}

/// The headers the handshake writes itself, in the order they are written, before any other.
const HANDSHAKE_HEADERS: [HeaderName; 8] = [
    header::HOST,
    header::UPGRADE,
    header::CONNECTION,
    header::SEC_WEBSOCKET_KEY,
    header::SEC_WEBSOCKET_ACCEPT,
    header::SEC_WEBSOCKET_VERSION,
    header::SEC_WEBSOCKET_PROTOCOL,
    header::SEC_WEBSOCKET_EXTENSIONS,
];

/// Writes `start_line`, the headers and the blank line. The handshake's own headers come first
/// in a fixed order, then the rest in map order; names are written in their usual
/// capitalisation (`Sec-WebSocket-Accept`), which HTTP ignores but some old peers do not.
fn write_head(out: &mut Vec<u8>, start_line: &str, headers: &HeaderMap) {
    out.extend_from_slice(start_line.as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut write = |name: &HeaderName, value: &HeaderValue| {
        write_name(out, name.as_str());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    };
    for name in &HANDSHAKE_HEADERS {
        for value in headers.get_all(name) {
            write(name, value);
        }
    }
    for (name, value) in headers {
        if !HANDSHAKE_HEADERS.contains(name) {
            write(name, value);
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// Writes a lowercase header name with each dash-separated word capitalised, and `WebSocket`
/// spelled as RFC 6455 does.
fn write_name(out: &mut Vec<u8>, name: &str) {
    let rest = match name.strip_prefix("sec-websocket-") {
        Some(rest) => {
            out.extend_from_slice(b"Sec-WebSocket-");
            rest
        }
        None => name,
    };
    let mut word_start = true;
    for &byte in rest.as_bytes() {
        out.push(if word_start {
            byte.to_ascii_uppercase()
        } else {
            byte
        });
        word_start = byte == b'-';
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]
mod tests {
    use super::*;

    /// RFC 6455 §1.3: the sample nonce and the accept value it yields.
    #[test]
    fn accept_key_matches_rfc_6455_section_1_3() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    fn complete_at_blank_line(
        head: &[u8],
        _headers: &mut [httparse::Header<'_>],
    ) -> ParseResult<usize> {
        Ok(Some((head.len(), head.len())))
    }

    #[test]
    fn head_ends_at_first_blank_line_after_leading_empty_lines() {
        let mut reader = HeadReader::new(1024, 8);
        let input = b"\r\n\r\nGET / HTTP/1.1\r\nA: b\r\n\r\nrest";
        let (length, rest) = reader
            .feed(input, complete_at_blank_line)
            .unwrap()
            .expect("complete");
        assert_eq!(length, input.len() - 4);
        assert_eq!(&rest[..], b"rest");
        assert!(matches!(
            reader.feed(b"x", complete_at_blank_line),
            Err(HandshakeError::AlreadyFinished)
        ));
    }

    #[test]
    fn bare_lf_line_ends_are_recognised() {
        let mut reader = HeadReader::new(1024, 8);
        let (length, rest) = reader
            .feed(b"GET / HTTP/1.1\nA: b\n\n", complete_at_blank_line)
            .unwrap()
            .unwrap();
        assert_eq!(length, 21);
        assert!(rest.is_empty());
    }

    #[test]
    fn parses_only_when_a_blank_line_completes() {
        let mut reader = HeadReader::new(1 << 20, 8);
        let mut calls = 0;
        let input = [
            b"GET / HTTP/1.1\r\n".as_slice(),
            &b"A: b\r\n".repeat(1000),
            b"\r\n",
        ]
        .concat();
        for (index, byte) in input.iter().enumerate() {
            let done = reader
                .feed(std::slice::from_ref(byte), |head, _| {
                    calls += 1;
                    Ok(Some((head.len(), head.len())))
                })
                .unwrap();
            assert_eq!(done.is_some(), index == input.len() - 1);
        }
        assert_eq!(calls, 1);
    }

    #[test]
    fn head_over_the_limit_is_refused_without_a_blank_line() {
        let mut reader = HeadReader::new(300, 8);
        assert!(
            reader
                .feed(&[b'a'; 300], complete_at_blank_line)
                .unwrap()
                .is_none()
        );
        assert_eq!(
            reader.feed(b"a", complete_at_blank_line).unwrap_err(),
            HandshakeError::HeadTooLarge { max: 300 }
        );
    }

    #[test]
    fn header_names_are_written_in_usual_case() {
        let mut headers = HeaderMap::new();
        headers.insert("x-custom-thing", HeaderValue::from_static("1"));
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, HeaderValue::from_static("k"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        let mut out = Vec::new();
        write_head(&mut out, "HTTP/1.1 101 Switching Protocols", &headers);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Accept: k\r\nX-Custom-Thing: 1\r\n\r\n"
        );
    }

    #[test]
    fn token_lists_match_case_insensitively_across_lines() {
        let mut headers = HeaderMap::new();
        headers.append(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        headers.append(
            header::CONNECTION,
            HeaderValue::from_static("foo ,  UpGrade"),
        );
        assert!(has_token(&headers, &header::CONNECTION, "upgrade"));
        assert!(!has_token(&headers, &header::CONNECTION, "close"));
        assert!(!has_token(&headers, &header::UPGRADE, "websocket"));
    }
}
