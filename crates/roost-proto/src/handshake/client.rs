//! The client's side: write the upgrade request, check the server's answer.

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode, header};

use super::{
    BASE64, HeadReader, ParseResult, VERSION, accept_key, has_token, header_map, http_version,
    malformed, single_value, write_head,
};
use crate::config::Config;
use crate::error::HandshakeError;
use crate::extension::{self, Negotiated};

/// Headers the handshake writes itself, which extra headers may not set. `Content-Length` and
/// `Transfer-Encoding` are here too: announcing a body would make the server read the first
/// frames as one.
const RESERVED: [HeaderName; 9] = [
    header::HOST,
    header::UPGRADE,
    header::CONNECTION,
    header::SEC_WEBSOCKET_KEY,
    header::SEC_WEBSOCKET_VERSION,
    header::SEC_WEBSOCKET_PROTOCOL,
    header::SEC_WEBSOCKET_EXTENSIONS,
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
];

/// A client's opening handshake in progress: the request was built, the response is awaited.
///
/// Call order: [`ClientHandshake::new`] gives the request bytes to write; feed what the socket
/// returns to [`ClientHandshake::feed`] until it returns [`ClientAccepted`], then run a
/// [`Connection`](crate::Connection) with its `negotiated` and give it its `leftover` first.
#[derive(Debug)]
pub struct ClientHandshake {
    /// Accumulates the response head within the configured limits.
    reader: HeadReader,
    /// The `Sec-WebSocket-Accept` value the server must send back.
    expected_accept: String,
    /// The subprotocols offered, in order.
    protocols: Vec<String>,
    /// Needed again to check the server's extension answer.
    config: Config,
    /// Whether the connection runs over TLS, which the extension offer depends on.
    secure: bool,
}

impl ClientHandshake {
    /// Builds the upgrade request for `uri` and returns the handshake with the bytes to write.
    ///
    /// - `uri` must name a host; its scheme, when given, must be `ws`/`http` for an insecure
    ///   connection and `wss`/`https` for a `secure` one. `Host` carries the port only when it
    ///   is not the default (80, or 443 when `secure`); user information is never sent.
    /// - `key` is 16 random bytes from the driver (RFC 6455 §4.1: a fresh nonce for every
    ///   connection); this crate has no random source.
    /// - `protocols` are offered in `Sec-WebSocket-Protocol`, in order; each must be a token
    ///   (visible ASCII, no separators).
    /// - `extra_headers` are sent after the handshake's own (`Origin`, `Authorization`...). They
    ///   may not set a header the handshake writes (`Host`, `Upgrade`, `Connection`,
    ///   `Sec-WebSocket-*`) or announce a body: [`HandshakeError::ReservedHeader`].
    /// - `Sec-WebSocket-Extensions` comes from the configuration.
    pub fn new(
        config: &Config,
        uri: &http::Uri,
        key: [u8; 16],
        protocols: &[String],
        extra_headers: &HeaderMap,
        secure: bool,
    ) -> Result<(ClientHandshake, Vec<u8>), HandshakeError> {
        let host = host_header(uri, secure)?;
        if let Some(protocol) = protocols.iter().find(|protocol| !is_token(protocol)) {
            return Err(HandshakeError::InvalidProtocol(protocol.clone()));
        }
        if let Some(name) = extra_headers.keys().find(|name| RESERVED.contains(name)) {
            return Err(HandshakeError::ReservedHeader(name.to_string()));
        }

        let key = BASE64.encode(key);
        let mut headers = HeaderMap::with_capacity(8 + extra_headers.len());
        let host = HeaderValue::try_from(host)
            .map_err(|_| HandshakeError::InvalidUri(format!("{uri}: the host cannot be sent")))?;
        headers.insert(header::HOST, host);
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        let key_value = HeaderValue::try_from(&key).expect("base64 is a valid header value");
        headers.insert(header::SEC_WEBSOCKET_KEY, key_value);
        headers.insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static(VERSION),
        );
        if !protocols.is_empty() {
            let offer = HeaderValue::try_from(protocols.join(", "))
                .expect("tokens joined by \", \" are a valid header value");
            headers.insert(header::SEC_WEBSOCKET_PROTOCOL, offer);
        }
        if let Some(offer) = extension::client_offer(config, secure) {
            let offer = HeaderValue::try_from(offer).map_err(|_| {
                HandshakeError::InvalidExtensions("the offer does not fit in a header".to_owned())
            })?;
            headers.insert(header::SEC_WEBSOCKET_EXTENSIONS, offer);
        }
        for (name, value) in extra_headers {
            headers.append(name, value.clone());
        }

        let target = match (uri.path(), uri.query()) {
            ("", None) => "/".to_owned(),
            (path, None) => path.to_owned(),
            ("", Some(query)) => format!("/?{query}"),
            (path, Some(query)) => format!("{path}?{query}"),
        };
        let mut request = Vec::with_capacity(256);
        write_head(&mut request, &format!("GET {target} HTTP/1.1"), &headers);

        let limits = config.limits();
        let handshake = ClientHandshake {
            reader: HeadReader::new(limits.max_handshake_size, limits.max_headers),
            expected_accept: accept_key(key.as_bytes()),
            protocols: protocols.to_vec(),
            config: config.clone(),
            secure,
        };
        Ok((handshake, request))
    }

    /// Adds received bytes. Returns `Ok(None)` while the response head is incomplete, then the
    /// checked response (RFC 6455 §4.1, "the client MUST validate the server's response").
    ///
    /// Errors: a status other than 101 ([`HandshakeError::UnexpectedStatus`]); `Upgrade`
    /// without `websocket` or `Connection` without `upgrade`; a missing or wrong
    /// `Sec-WebSocket-Accept` ([`HandshakeError::AcceptMismatch`]); a subprotocol that was not
    /// offered ([`HandshakeError::UnofferedProtocol`]); an extension answer that does not fit
    /// the offer; a head over the configured size or header limits; malformed HTTP. After it
    /// returned the response or an error, later calls return
    /// [`HandshakeError::AlreadyFinished`].
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Option<ClientAccepted>, HandshakeError> {
        let Some((response, leftover)) = self.reader.feed(bytes, parse_response)? else {
            return Ok(None);
        };
        let status = response.status();
        if status != StatusCode::SWITCHING_PROTOCOLS {
            return Err(HandshakeError::UnexpectedStatus {
                status: status.as_u16(),
                body: first_line(&leftover, is_chunked(response.headers())),
            });
        }
        if response.version() != http::Version::HTTP_11 {
            return Err(HandshakeError::UnsupportedHttpVersion);
        }
        let headers = response.headers();
        if !has_token(headers, &header::UPGRADE, "websocket") {
            return Err(HandshakeError::MissingUpgrade);
        }
        if !has_token(headers, &header::CONNECTION, "upgrade") {
            return Err(HandshakeError::MissingConnectionUpgrade);
        }
        if single_value(headers, &header::SEC_WEBSOCKET_ACCEPT)
            != Some(self.expected_accept.as_bytes())
        {
            return Err(HandshakeError::AcceptMismatch);
        }
        let protocol = self.chosen_protocol(headers)?;
        let negotiated = extension::negotiate_client(&self.config, self.secure, headers)?;
        Ok(Some(ClientAccepted {
            response,
            protocol,
            negotiated,
            leftover,
        }))
    }

    /// The server's subprotocol, which must be one header naming one offered protocol.
    fn chosen_protocol(&self, headers: &HeaderMap) -> Result<Option<String>, HandshakeError> {
        let mut values = headers.get_all(header::SEC_WEBSOCKET_PROTOCOL).iter();
        let Some(first) = values.next() else {
            return Ok(None);
        };
        let chosen = first.as_bytes().trim_ascii();
        match self
            .protocols
            .iter()
            .find(|offered| offered.as_bytes() == chosen)
        {
            Some(offered) if values.next().is_none() => Ok(Some(offered.clone())),
            _ => Err(HandshakeError::UnofferedProtocol(
                String::from_utf8_lossy(first.as_bytes()).into_owned(),
            )),
        }
    }
}

/// The server accepted: run the connection.
#[derive(Debug)]
#[must_use = "run the connection with `negotiated`, giving it `leftover` first"]
pub struct ClientAccepted {
    /// The server's 101 response, with all its headers (cookies, for example).
    pub response: Response<()>,
    /// The subprotocol the server chose among those offered, if any.
    pub protocol: Option<String>,
    /// The extensions agreed on, for the connection.
    pub negotiated: Negotiated,
    /// Bytes received after the response head: the server's first frames, for the connection.
    pub leftover: Bytes,
}

fn parse_response<'h>(
    head: &'h [u8],
    headers: &mut [httparse::Header<'h>],
) -> ParseResult<Response<()>> {
    let mut parsed = httparse::Response::new(headers);
    let httparse::Status::Complete(length) = parsed.parse(head)? else {
        return Ok(None);
    };
    let code = parsed
        .code
        .ok_or_else(|| malformed("missing status code"))?;
    let status =
        StatusCode::from_u16(code).map_err(|_| malformed(format!("invalid status {code}")))?;
    let mut response = Response::new(());
    *response.status_mut() = status;
    *response.version_mut() = http_version(parsed.version);
    *response.headers_mut() = header_map(parsed.headers)?;
    Ok(Some((response, length)))
}

/// The `Host` value for `uri`: its host, and its port unless the default for `secure`.
fn host_header(uri: &http::Uri, secure: bool) -> Result<String, HandshakeError> {
    let invalid = |why: &str| HandshakeError::InvalidUri(format!("{uri}: {why}"));
    // Schemes are case-insensitive (RFC 3986 §3.1).
    match (
        uri.scheme_str().map(str::to_ascii_lowercase).as_deref(),
        secure,
    ) {
        (None | Some("ws" | "http"), false) | (None | Some("wss" | "https"), true) => {}
        (Some("ws" | "http"), true) => {
            return Err(invalid("the scheme is not secure: use wss:// over TLS"));
        }
        (Some("wss" | "https"), false) => {
            return Err(invalid(
                "the scheme asks for TLS: connect with TLS or use ws://",
            ));
        }
        (Some(_), _) => return Err(invalid("use a ws:// or wss:// URI")),
    }
    let host = match uri.host() {
        Some(host) if !host.is_empty() => host,
        _ => return Err(invalid("no host: use ws://host/path or wss://host/path")),
    };
    let default_port = if secure { 443 } else { 80 };
    Ok(match uri.port_u16() {
        Some(port) if port != default_port => format!("{host}:{port}"),
        _ => host.to_owned(),
    })
}

/// Longest body line kept in [`HandshakeError::UnexpectedStatus`], in characters.
const MAX_BODY_LINE: usize = 200;

/// The first line of a refusal's body, from the bytes that came with its head: printable,
/// at most [`MAX_BODY_LINE`] characters. A chunked body's first line is its chunk size,
/// which is skipped.
fn first_line(body: &[u8], chunked: bool) -> String {
    let mut lines = body.split(|&byte| byte == b'\n');
    if chunked {
        lines.next();
    }
    let line = lines.next().unwrap_or_default();
    String::from_utf8_lossy(line)
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_BODY_LINE)
        .collect::<String>()
        .trim()
        .to_owned()
}

/// Whether the response's body is sent in chunks.
fn is_chunked(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .any(|value| value.as_bytes().eq_ignore_ascii_case(b"chunked"))
}

/// Whether `value` is an RFC 9110 §5.6.2 token, as RFC 6455 §4.1 requires of subprotocols.
fn is_token(value: &str) -> bool {
    !value.is_empty()
        && value
            .bytes()
            .all(|byte| byte.is_ascii_graphic() && !b"(),/:;<=>?@[\\]{}\"".contains(&byte))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]
mod tests {
    use super::*;
    use crate::config::DeflateConfig;
    use crate::handshake::{RequestReader, accept};

    /// The nonce of RFC 6455 §1.3, `dGhlIHNhbXBsZSBub25jZQ==` decoded.
    const RFC_KEY: [u8; 16] = *b"the sample nonce";

    const RFC_RESPONSE: &str = "HTTP/1.1 101 Switching Protocols\r\n\
        Upgrade: websocket\r\n\
        Connection: Upgrade\r\n\
        Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\
        Sec-WebSocket-Protocol: chat\r\n\r\n";

    fn no_deflate() -> Config {
        Config::builder()
            .deflate(DeflateConfig::disabled())
            .build()
            .unwrap()
    }

    fn protocols(names: &[&str]) -> Vec<String> {
        names.iter().map(|name| (*name).to_owned()).collect()
    }

    fn start(config: &Config, uri: &str, offered: &[&str]) -> (ClientHandshake, String) {
        let uri = uri.parse().unwrap();
        let (handshake, request) = ClientHandshake::new(
            config,
            &uri,
            RFC_KEY,
            &protocols(offered),
            &HeaderMap::new(),
            false,
        )
        .unwrap();
        (handshake, String::from_utf8(request).unwrap())
    }

    /// The RFC 6455 §1.3 handshake from the client's side, with the RFC's response.
    fn rfc_client() -> ClientHandshake {
        start(
            &no_deflate(),
            "ws://server.example.com/chat",
            &["chat", "superchat"],
        )
        .0
    }

    /// RFC 6455 §1.3: the client's request for the sample nonce, and the server's answer.
    #[test]
    fn rfc_6455_example_handshake() {
        let mut extra = HeaderMap::new();
        extra.insert(header::ORIGIN, "http://example.com".parse().unwrap());
        let uri = "ws://server.example.com/chat".parse().unwrap();
        let offered = protocols(&["chat", "superchat"]);
        let (mut handshake, request) =
            ClientHandshake::new(&no_deflate(), &uri, RFC_KEY, &offered, &extra, false).unwrap();
        assert_eq!(
            String::from_utf8(request).unwrap(),
            "GET /chat HTTP/1.1\r\n\
             Host: server.example.com\r\n\
             Upgrade: websocket\r\n\
             Connection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Protocol: chat, superchat\r\n\
             Origin: http://example.com\r\n\r\n"
        );
        let accepted = handshake.feed(RFC_RESPONSE.as_bytes()).unwrap().unwrap();
        assert_eq!(accepted.protocol.as_deref(), Some("chat"));
        assert_eq!(accepted.negotiated, Negotiated::default());
        assert!(accepted.leftover.is_empty());
    }

    #[test]
    fn round_trip_against_the_server() {
        let config = Config::default();
        let (mut client, request) = start(&config, "ws://localhost:9001/room?id=7", &["v2", "v1"]);
        assert!(request.starts_with("GET /room?id=7 HTTP/1.1\r\nHost: localhost:9001\r\n"));
        assert!(
            request.contains("\r\nSec-WebSocket-Extensions: permessage-deflate"),
            "{request}"
        );

        let mut reader = RequestReader::new(&config);
        let (head, leftover) = reader.feed(request.as_bytes()).unwrap().unwrap();
        assert!(leftover.is_empty());
        let accepted = accept(&config, &head, |request, mut response| {
            let offered = request.headers()[header::SEC_WEBSOCKET_PROTOCOL].clone();
            assert_eq!(offered, "v2, v1");
            response
                .headers_mut()
                .insert(header::SEC_WEBSOCKET_PROTOCOL, "v1".parse().unwrap());
            Ok(response)
        })
        .unwrap();

        // The response arrives one byte at a time, the server's first frame with its last byte.
        let frame = b"\x81\x02hi";
        let response = accepted.to_bytes();
        let (last, head_bytes) = response.split_last().unwrap();
        for byte in head_bytes {
            assert!(client.feed(std::slice::from_ref(byte)).unwrap().is_none());
        }
        let done = client
            .feed(&[&[*last], frame.as_slice()].concat())
            .unwrap()
            .unwrap();
        assert_eq!(done.protocol.as_deref(), Some("v1"));
        assert_eq!(done.negotiated, accepted.negotiated);
        assert!(done.negotiated.deflate.is_some());
        assert_eq!(&done.leftover[..], frame);
        assert_eq!(
            client.feed(b"\x81").unwrap_err(),
            HandshakeError::AlreadyFinished
        );
    }

    #[test]
    fn host_carries_the_port_only_when_not_default() {
        let cases = [
            (
                "ws://example.com",
                false,
                "GET / HTTP/1.1\r\nHost: example.com\r\n",
            ),
            (
                "ws://example.com:80/a",
                false,
                "GET /a HTTP/1.1\r\nHost: example.com\r\n",
            ),
            (
                "ws://example.com:443/",
                false,
                "GET / HTTP/1.1\r\nHost: example.com:443\r\n",
            ),
            (
                "wss://example.com:443/",
                true,
                "GET / HTTP/1.1\r\nHost: example.com\r\n",
            ),
            (
                "wss://u:p@[::1]:8443/x?q",
                true,
                "GET /x?q HTTP/1.1\r\nHost: [::1]:8443\r\n",
            ),
            (
                "example.com:8080",
                false,
                "GET / HTTP/1.1\r\nHost: example.com:8080\r\n",
            ),
            (
                "WSS://Example.com/",
                true,
                "GET / HTTP/1.1\r\nHost: Example.com\r\n",
            ),
        ];
        for (uri, secure, start) in cases {
            let uri = uri.parse().unwrap();
            let (_, request) =
                ClientHandshake::new(&no_deflate(), &uri, RFC_KEY, &[], &HeaderMap::new(), secure)
                    .unwrap();
            let request = String::from_utf8(request).unwrap();
            assert!(request.starts_with(start), "{uri}: {request}");
        }
    }

    #[test]
    fn bad_arguments_are_refused_before_anything_is_sent() {
        let config = no_deflate();
        let new = |uri: &str, offered: &[&str], extra: &HeaderMap, secure: bool| {
            let uri = uri.parse().unwrap();
            ClientHandshake::new(&config, &uri, RFC_KEY, &protocols(offered), extra, secure)
                .map(drop)
                .unwrap_err()
        };
        let none = HeaderMap::new();
        assert!(matches!(
            new("/chat", &[], &none, false),
            HandshakeError::InvalidUri(_)
        ));
        assert!(matches!(
            new("wss://a/", &[], &none, false),
            HandshakeError::InvalidUri(_)
        ));
        assert!(matches!(
            new("ws://a/", &[], &none, true),
            HandshakeError::InvalidUri(_)
        ));
        assert!(matches!(
            new("ftp://a/", &[], &none, false),
            HandshakeError::InvalidUri(_)
        ));
        assert_eq!(
            new("ws://a/", &["chat", "a b"], &none, false),
            HandshakeError::InvalidProtocol("a b".to_owned())
        );
        assert_eq!(
            new("ws://a/", &[""], &none, false),
            HandshakeError::InvalidProtocol(String::new())
        );
        for name in [
            header::SEC_WEBSOCKET_PROTOCOL,
            header::HOST,
            header::CONTENT_LENGTH,
        ] {
            let mut extra = HeaderMap::new();
            extra.insert(name.clone(), "1".parse().unwrap());
            assert_eq!(
                new("ws://a/", &[], &extra, false),
                HandshakeError::ReservedHeader(name.to_string())
            );
        }
    }

    #[test]
    fn forged_or_missing_accept_is_refused() {
        let forged =
            RFC_RESPONSE.replace("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", "dGhlIHNhbXBsZSBub25jZQ==");
        assert_eq!(
            rfc_client().feed(forged.as_bytes()).unwrap_err(),
            HandshakeError::AcceptMismatch
        );
        let missing =
            RFC_RESPONSE.replace("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n", "");
        assert_eq!(
            rfc_client().feed(missing.as_bytes()).unwrap_err(),
            HandshakeError::AcceptMismatch
        );
    }

    #[test]
    fn unoffered_protocol_is_refused() {
        let other = RFC_RESPONSE.replace("Protocol: chat", "Protocol: mqtt");
        assert_eq!(
            rfc_client().feed(other.as_bytes()).unwrap_err(),
            HandshakeError::UnofferedProtocol("mqtt".to_owned())
        );
        let both = RFC_RESPONSE.replace("Protocol: chat", "Protocol: chat, superchat");
        assert!(matches!(
            rfc_client().feed(both.as_bytes()),
            Err(HandshakeError::UnofferedProtocol(_))
        ));
        let (mut none_offered, _) = start(&no_deflate(), "ws://server.example.com/chat", &[]);
        assert_eq!(
            none_offered.feed(RFC_RESPONSE.as_bytes()).unwrap_err(),
            HandshakeError::UnofferedProtocol("chat".to_owned())
        );
        let without = RFC_RESPONSE.replace("Sec-WebSocket-Protocol: chat\r\n", "");
        assert_eq!(
            rfc_client()
                .feed(without.as_bytes())
                .unwrap()
                .unwrap()
                .protocol,
            None
        );
    }

    #[test]
    fn status_other_than_101_is_refused() {
        let response = "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(
            rfc_client().feed(response.as_bytes()).unwrap_err(),
            HandshakeError::UnexpectedStatus {
                status: 403,
                body: String::new()
            }
        );
    }

    /// fuzz/regressions/handshake_response/refusal-body-cut-by-a-split: the body line is
    /// what arrived with the head, so a read that ends with the head leaves it empty; a split
    /// can cut it short but never change it.
    #[test]
    fn a_refusals_body_line_is_what_came_with_the_head() {
        let head = "HTTP/1.1 100 Switching Po=\r\nSec-WebSocket-Protocol: chat\r\n\r\n";
        let body = "\u{81}\u{2}hi";
        let whole = rfc_client()
            .feed(format!("{head}{body}").as_bytes())
            .unwrap_err();
        let mut split = rfc_client();
        let cut = split.feed(head.as_bytes()).unwrap_err();
        // Control characters are dropped from the line.
        for (error, expected) in [(whole, "hi"), (cut, "")] {
            match error {
                HandshakeError::UnexpectedStatus { status, body, .. } => {
                    assert_eq!((status, body.as_str()), (100, expected));
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn a_refusal_carries_the_first_line_of_its_body() {
        let response = "HTTP/1.1 401 Unauthorized\r\nContent-Length: 40\r\n\r\n\
                        resume refused: token expired\r\nmore\r\n";
        let error = rfc_client().feed(response.as_bytes()).unwrap_err();
        assert_eq!(
            error.to_string(),
            "server answered 401 instead of 101 Switching Protocols: \"resume refused: token expired\""
        );
        let chunked = "HTTP/1.1 403 Forbidden\r\nTransfer-Encoding: chunked\r\n\r\n\
                       13\r\norigin not allowed\n\r\n0\r\n\r\n";
        let error = rfc_client().feed(chunked.as_bytes()).unwrap_err();
        assert!(
            matches!(error, HandshakeError::UnexpectedStatus { status: 403, ref body } if body == "origin not allowed"),
            "{error:?}"
        );
        let page = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n<html>{}\x1b",
            "x".repeat(4000)
        );
        let error = rfc_client().feed(page.as_bytes()).unwrap_err().to_string();
        assert!(error.contains("is this a WebSocket endpoint?"), "{error}");
        assert!(error.len() < 400 && !error.contains('\x1b'), "{error}");
    }

    #[test]
    fn upgrade_and_connection_tokens_are_required() {
        let no_upgrade = RFC_RESPONSE.replace("Upgrade: websocket\r\n", "");
        assert_eq!(
            rfc_client().feed(no_upgrade.as_bytes()).unwrap_err(),
            HandshakeError::MissingUpgrade
        );
        let no_connection = RFC_RESPONSE.replace("Connection: Upgrade", "Connection: keep-alive");
        assert_eq!(
            rfc_client().feed(no_connection.as_bytes()).unwrap_err(),
            HandshakeError::MissingConnectionUpgrade
        );
        let loose = RFC_RESPONSE
            .replace("Upgrade: websocket", "upgrade: WEBSOCKET")
            .replace("Connection: Upgrade", "connection: keep-alive, upgrade");
        assert!(rfc_client().feed(loose.as_bytes()).unwrap().is_some());
    }

    #[test]
    fn unoffered_extension_is_refused() {
        let response = RFC_RESPONSE.replace(
            "\r\n\r\n",
            "\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n",
        );
        assert_eq!(
            rfc_client().feed(response.as_bytes()).unwrap_err(),
            HandshakeError::UnofferedExtension("permessage-deflate".to_owned())
        );
    }

    #[test]
    fn response_limits_apply() {
        let config = Config::builder()
            .deflate(DeflateConfig::disabled())
            .max_headers(3)
            .build()
            .unwrap();
        let (mut client, _) = start(&config, "ws://server.example.com/chat", &["chat"]);
        assert_eq!(
            client.feed(RFC_RESPONSE.as_bytes()).unwrap_err(),
            HandshakeError::TooManyHeaders { max: 3 }
        );
        let (mut client, _) = start(&no_deflate(), "ws://server.example.com/chat", &[]);
        let padding = format!(
            "HTTP/1.1 101 Switching Protocols\r\nX: {}",
            "a".repeat(16 << 10)
        );
        assert_eq!(
            client.feed(padding.as_bytes()).unwrap_err(),
            HandshakeError::HeadTooLarge { max: 16 << 10 }
        );
    }

    #[test]
    fn malformed_response_is_refused() {
        assert!(matches!(
            rfc_client().feed(b"HTTP/1.1 abc Nope\r\n\r\n"),
            Err(HandshakeError::MalformedHttp(_))
        ));
    }
}
