//! The server's side: read the upgrade request, check it, answer 101 or an error.

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, Version, header};

use super::reject::{Refusal, Rejected};
use super::{
    BASE64, HeadReader, ParseResult, VERSION, accept_key, has_token, header_map, http_version,
    list_items, malformed, single_value, write_head,
};
use crate::config::Config;
use crate::error::HandshakeError;
use crate::extension::{self, Negotiated};

/// Reads an upgrade request from received bytes, with the configured size and header limits.
///
/// Feed it whatever the socket gives, in any pieces, until it returns the request; then call
/// [`accept`]. On an error, write [`reject_response`](super::reject_response) and close the
/// connection.
#[derive(Debug)]
pub struct RequestReader {
    head: HeadReader,
}

impl RequestReader {
    /// A reader bounded by `config.limits()`: `max_handshake_size` and `max_headers`.
    pub fn new(config: &Config) -> Self {
        let limits = config.limits();
        RequestReader {
            head: HeadReader::new(limits.max_handshake_size, limits.max_headers),
        }
    }

    /// Adds received bytes. Returns `Ok(None)` while the head is incomplete, then the request
    /// and the bytes received after its head, which belong to the connection (a client may send
    /// frames right behind its request).
    ///
    /// Errors: a head over `max_handshake_size` bytes ([`HandshakeError::HeadTooLarge`], 431),
    /// more than `max_headers` headers ([`HandshakeError::TooManyHeaders`], 431), anything
    /// that is not HTTP/1.x ([`HandshakeError::MalformedHttp`], 400). After it returned the
    /// request or an error the reader is spent: later calls return
    /// [`HandshakeError::AlreadyFinished`].
    pub fn feed(
        &mut self,
        bytes: &[u8],
    ) -> Result<Option<(http::Request<()>, Bytes)>, HandshakeError> {
        self.head.feed(bytes, parse_request)
    }
}

fn parse_request<'h>(
    head: &'h [u8],
    headers: &mut [httparse::Header<'h>],
) -> ParseResult<http::Request<()>> {
    let mut parsed = httparse::Request::new(headers);
    let httparse::Status::Complete(length) = parsed.parse(head)? else {
        return Ok(None);
    };
    let method = parsed.method.ok_or_else(|| malformed("missing method"))?;
    let method = Method::from_bytes(method.as_bytes())
        .map_err(|_| malformed(format!("invalid method {method:?}")))?;
    let target = parsed
        .path
        .ok_or_else(|| malformed("missing request target"))?;
    let uri = http::Uri::try_from(target)
        .map_err(|_| malformed(format!("invalid request target {target:?}")))?;
    let mut request = http::Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = http_version(parsed.version);
    *request.headers_mut() = header_map(parsed.headers)?;
    Ok(Some((request, length)))
}

/// The parts of a request the handshake looks at, so [`accept`] serves any driver: it is
/// implemented for [`http::Request`] with any body (hyper's included) and for
/// [`http::request::Parts`].
pub trait RequestHead {
    /// The request method.
    fn method(&self) -> &Method;
    /// The HTTP version.
    fn version(&self) -> Version;
    /// The request headers.
    fn headers(&self) -> &HeaderMap;
}

impl<B> RequestHead for http::Request<B> {
    fn method(&self) -> &Method {
        http::Request::method(self)
    }

    fn version(&self) -> Version {
        http::Request::version(self)
    }

    fn headers(&self) -> &HeaderMap {
        http::Request::headers(self)
    }
}

impl RequestHead for http::request::Parts {
    fn method(&self) -> &Method {
        &self.method
    }

    fn version(&self) -> Version {
        self.version
    }

    fn headers(&self) -> &HeaderMap {
        &self.headers
    }
}

/// Checks that a request is a WebSocket upgrade this crate can accept (RFC 6455 §4.2.1).
///
/// The checks, in order, with the status [`HandshakeError::status`] gives:
/// - the method is GET, else 405 (the reject response carries `Allow: GET`);
/// - the version is HTTP/1.1 or later, else 400;
/// - exactly one `Host` header, else 400 (two are as bad as none, RFC 9112 §3.2);
/// - `Upgrade` lists the token `websocket` and `Connection` lists `upgrade`, in any case,
///   else 400;
/// - exactly one `Sec-WebSocket-Version`, and it is `13`, else 426 (the reject response
///   carries `Sec-WebSocket-Version: 13`); checked before the key so that a client of an older
///   draft learns which version to speak;
/// - exactly one `Sec-WebSocket-Key`, whose base64 decodes to 16 bytes, else 400.
///
/// `Origin` is not checked: a server that cares does so in the [`accept`] hook.
pub fn validate_request<R: RequestHead + ?Sized>(request: &R) -> Result<(), HandshakeError> {
    if request.method() != Method::GET {
        return Err(HandshakeError::MethodNotGet(request.method().to_string()));
    }
    if request.version() < Version::HTTP_11 {
        return Err(HandshakeError::UnsupportedHttpVersion);
    }
    let headers = request.headers();
    if single_value(headers, &header::HOST).is_none() {
        return Err(HandshakeError::MissingHost);
    }
    if !has_token(headers, &header::UPGRADE, "websocket") {
        return Err(HandshakeError::MissingUpgrade);
    }
    if !has_token(headers, &header::CONNECTION, "upgrade") {
        return Err(HandshakeError::MissingConnectionUpgrade);
    }
    if single_value(headers, &header::SEC_WEBSOCKET_VERSION) != Some(VERSION.as_bytes()) {
        return Err(HandshakeError::UnsupportedVersion);
    }
    client_key(headers).map(drop)
}

/// The client's key, as sent, when it is one base64 value of 16 bytes.
fn client_key(headers: &HeaderMap) -> Result<&[u8], HandshakeError> {
    let key =
        single_value(headers, &header::SEC_WEBSOCKET_KEY).ok_or(HandshakeError::InvalidKey)?;
    // 16 bytes are 24 base64 characters; checking first bounds the decoding work.
    let decoded = (key.len() == 24).then(|| BASE64.decode(key));
    match decoded {
        Some(Ok(bytes)) if bytes.len() == 16 => Ok(key),
        _ => Err(HandshakeError::InvalidKey),
    }
}

/// What the [`accept`] hook returns: the response to send (possibly with headers added, such
/// as `Sec-WebSocket-Protocol`), or a [`Refusal`].
pub type HookResult = Result<Response<()>, Refusal>;

/// Decides on an upgrade request: validates it, negotiates extensions, lets `hook` have its
/// say, and returns the 101 response or the refusal to send.
///
/// `hook` receives the request and the 101 response as it stands (with `Upgrade`,
/// `Connection`, `Sec-WebSocket-Accept` and any `Sec-WebSocket-Extensions`). It may:
/// - add headers (cookies, for example);
/// - choose a subprotocol by setting `Sec-WebSocket-Protocol` to one of the values the client
///   offered. No protocol is ever chosen for it. A value the client did not offer, or more
///   than one, is a server bug: the request is refused with 500
///   ([`HandshakeError::HookSelectedUnofferedProtocol`]) rather than sent to a client that
///   must fail the connection;
/// - refuse with any status of 200 or more and an optional body; the refusal gets
///   `Connection: close`, `Content-Length` and, for a body without a type, `text/plain`.
///   A 1xx status would not end the exchange and is sent as 500 instead.
///
/// The hook cannot change the handshake itself: the status and the `Upgrade`, `Connection`,
/// `Sec-WebSocket-Accept` and `Sec-WebSocket-Extensions` headers are restored after it
/// returns. It runs only for requests that passed [`validate_request`] and whose extension
/// offer was understood.
pub fn accept<R: RequestHead + ?Sized>(
    config: &Config,
    request: &R,
    hook: impl FnOnce(&R, Response<()>) -> HookResult,
) -> Result<Accepted, Rejected> {
    validate_request(request).map_err(Rejected::new)?;
    let headers = request.headers();
    let key = client_key(headers).map_err(Rejected::new)?;
    let accept =
        HeaderValue::try_from(accept_key(key)).expect("base64 is always a valid header value");
    let (negotiated, extensions) =
        extension::negotiate_server(config, headers).map_err(Rejected::new)?;
    let extensions = extensions
        .map(HeaderValue::try_from)
        .transpose()
        .map_err(|_| {
            Rejected::new(HandshakeError::InvalidExtensions(
                "negotiated parameters do not fit in a header".to_owned(),
            ))
        })?;

    let mut response = Response::new(());
    restore_handshake(&mut response, &accept, extensions.as_ref());
    let mut response = hook(request, response).map_err(Rejected::from)?;
    restore_handshake(&mut response, &accept, extensions.as_ref());

    let protocol = chosen_protocol(headers, response.headers()).map_err(Rejected::new)?;
    Ok(Accepted {
        response,
        protocol,
        negotiated,
    })
}

/// Sets what makes `response` a 101 for this request, over whatever the hook did.
fn restore_handshake(
    response: &mut Response<()>,
    accept: &HeaderValue,
    extensions: Option<&HeaderValue>,
) {
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    *response.version_mut() = Version::HTTP_11;
    let headers = response.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept.clone());
    match extensions {
        Some(value) => headers.insert(header::SEC_WEBSOCKET_EXTENSIONS, value.clone()),
        None => headers.remove(header::SEC_WEBSOCKET_EXTENSIONS),
    };
}

/// The subprotocol the hook set, when it is exactly one of those the client offered.
fn chosen_protocol(
    request: &HeaderMap,
    response: &HeaderMap,
) -> Result<Option<String>, HandshakeError> {
    let mut values = response.get_all(header::SEC_WEBSOCKET_PROTOCOL).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    let chosen = first.as_bytes().trim_ascii();
    let offered = list_items(request, &header::SEC_WEBSOCKET_PROTOCOL).any(|item| item == chosen);
    match std::str::from_utf8(chosen) {
        Ok(chosen) if offered && values.next().is_none() => Ok(Some(chosen.to_owned())),
        _ => Err(HandshakeError::HookSelectedUnofferedProtocol(
            String::from_utf8_lossy(first.as_bytes()).into_owned(),
        )),
    }
}

/// A request the server accepts: write the response, then run a
/// [`Connection`](crate::Connection) with `negotiated`.
#[derive(Debug)]
#[must_use = "write the 101 response before running the connection"]
pub struct Accepted {
    /// The 101 Switching Protocols response, for drivers that write responses themselves
    /// (hyper). Others write [`Accepted::to_bytes`].
    pub response: Response<()>,
    /// The subprotocol the hook chose, if any.
    pub protocol: Option<String>,
    /// The extensions agreed on, for the connection.
    pub negotiated: Negotiated,
}

impl Accepted {
    /// The response as bytes to write to the socket.
    #[must_use]
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        write_head(
            &mut out,
            "HTTP/1.1 101 Switching Protocols",
            self.response.headers(),
        );
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]
mod tests {
    use super::*;
    use crate::handshake::reject_response;

    /// The opening handshake of RFC 6455 §1.3, as sent.
    const RFC_REQUEST: &str = "GET /chat HTTP/1.1\r\n\
        Host: server.example.com\r\n\
        Upgrade: websocket\r\n\
        Connection: Upgrade\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Origin: http://example.com\r\n\
        Sec-WebSocket-Protocol: chat, superchat\r\n\
        Sec-WebSocket-Version: 13\r\n\r\n";

    fn read(config: &Config, request: &[u8]) -> Result<(http::Request<()>, Bytes), HandshakeError> {
        let reader = &mut RequestReader::new(config);
        Ok(reader.feed(request)?.expect("a complete head"))
    }

    /// Runs a server over `request` and returns the bytes it writes.
    fn serve(
        request: &str,
        hook: impl FnOnce(&http::Request<()>, Response<()>) -> HookResult,
    ) -> String {
        let config = Config::default();
        let bytes = match read(&config, request.as_bytes()) {
            Ok((head, _)) => match accept(&config, &head, hook) {
                Ok(accepted) => accepted.to_bytes(),
                Err(rejected) => rejected.to_bytes(),
            },
            Err(error) => reject_response(&error),
        };
        String::from_utf8(bytes).expect("responses are ASCII")
    }

    fn no_hook(_: &http::Request<()>, response: Response<()>) -> HookResult {
        Ok(response)
    }

    /// The request of RFC 6455 §1.3 with one header line replaced (or removed, for "").
    fn rfc_request_with(name: &str, line: &str) -> String {
        let mut request = String::new();
        for header in RFC_REQUEST.split_inclusive("\r\n") {
            if header
                .to_ascii_lowercase()
                .starts_with(&format!("{}:", name.to_ascii_lowercase()))
            {
                request.push_str(line);
            } else {
                request.push_str(header);
            }
        }
        request
    }

    fn refusal(status: &str, extra_headers: &str, body: &str) -> String {
        format!(
            "HTTP/1.1 {status}\r\nConnection: close\r\n{extra_headers}\
             Content-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    /// RFC 6455 §1.3 and §4.2.2: the server picks `chat` and answers with the accept value
    /// computed from the sample nonce.
    #[test]
    fn rfc_6455_example_handshake() {
        let response = serve(RFC_REQUEST, |request, mut response| {
            assert_eq!(request.headers()[header::ORIGIN], "http://example.com");
            response
                .headers_mut()
                .insert(header::SEC_WEBSOCKET_PROTOCOL, "chat".parse().unwrap());
            Ok(response)
        });
        assert_eq!(
            response,
            "HTTP/1.1 101 Switching Protocols\r\n\
             Upgrade: websocket\r\n\
             Connection: Upgrade\r\n\
             Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\
             Sec-WebSocket-Protocol: chat\r\n\r\n"
        );
    }

    #[test]
    fn accepted_carries_protocol_and_negotiated_extensions() {
        let config = Config::default();
        let request = rfc_request_with(
            "Origin",
            "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n",
        );
        let (head, _) = read(&config, request.as_bytes()).unwrap();
        let accepted = accept(&config, &head, |_, mut response| {
            response
                .headers_mut()
                .insert(header::SEC_WEBSOCKET_PROTOCOL, "superchat".parse().unwrap());
            Ok(response)
        })
        .unwrap();
        assert_eq!(accepted.protocol.as_deref(), Some("superchat"));
        assert!(accepted.negotiated.deflate.is_some());
        let bytes = String::from_utf8(accepted.to_bytes()).unwrap();
        assert!(
            bytes.contains("\r\nSec-WebSocket-Extensions: permessage-deflate"),
            "{bytes}"
        );
    }

    #[test]
    fn protocol_is_never_chosen_for_the_hook() {
        let response = serve(RFC_REQUEST, no_hook);
        assert!(!response.contains("Sec-WebSocket-Protocol"), "{response}");
    }

    #[test]
    fn hook_choosing_an_unoffered_protocol_is_a_500() {
        let response = serve(RFC_REQUEST, |_, mut response| {
            response
                .headers_mut()
                .insert(header::SEC_WEBSOCKET_PROTOCOL, "mqtt".parse().unwrap());
            Ok(response)
        });
        let body =
            "the request hook selected subprotocol \"mqtt\", which the client did not offer\n";
        assert_eq!(response, refusal("500 Internal Server Error", "", body));
    }

    #[test]
    fn hook_rejects_with_403_and_a_body() {
        let response = serve(RFC_REQUEST, |_, _| {
            Err(Refusal::new(
                StatusCode::FORBIDDEN,
                Some("origin not allowed".to_owned()),
            ))
        });
        assert_eq!(response, refusal("403 Forbidden", "", "origin not allowed"));
    }

    #[test]
    fn hook_rejection_keeps_its_headers_and_content_type() {
        let config = Config::default();
        let (head, _) = read(&config, RFC_REQUEST.as_bytes()).unwrap();
        let rejected = accept(&config, &head, |_, _| {
            let refusal = Response::builder()
                .status(StatusCode::UNAUTHORIZED)
                .header(header::WWW_AUTHENTICATE, "Bearer")
                .header(header::CONTENT_TYPE, "application/json")
                .body(None)
                .unwrap();
            Err(refusal.into())
        })
        .unwrap_err();
        assert_eq!(rejected.error, HandshakeError::Rejected(401));
        assert_eq!(
            String::from_utf8(rejected.to_bytes()).unwrap(),
            "HTTP/1.1 401 Unauthorized\r\nConnection: close\r\nWww-Authenticate: Bearer\r\n\
             Content-Type: application/json\r\nContent-Length: 33\r\n\r\n\
             request rejected with status 401\n"
        );
    }

    #[test]
    fn hook_refusals_that_cannot_carry_a_body_are_made_safe() {
        let informational = serve(RFC_REQUEST, |_, _| {
            Err(Refusal::new(StatusCode::SWITCHING_PROTOCOLS, None))
        });
        let body = "request rejected with status 500\n";
        assert_eq!(
            informational,
            refusal("500 Internal Server Error", "", body)
        );
        let no_content = serve(RFC_REQUEST, |_, _| {
            let mut refusal = Refusal::new(StatusCode::NO_CONTENT, Some("dropped".to_owned()));
            refusal
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(30));
            Err(refusal)
        });
        assert_eq!(
            no_content,
            "HTTP/1.1 204 No Content\r\nConnection: close\r\nRetry-After: 30\r\n\r\n"
        );
    }

    #[test]
    fn hook_cannot_alter_the_handshake() {
        let response = serve(RFC_REQUEST, |_, _| {
            let replaced = Response::builder()
                .status(StatusCode::OK)
                .header(header::CONNECTION, "close")
                .header(header::SET_COOKIE, "session=1")
                .body(())
                .unwrap();
            Ok(replaced)
        });
        assert_eq!(
            response,
            "HTTP/1.1 101 Switching Protocols\r\n\
             Upgrade: websocket\r\n\
             Connection: Upgrade\r\n\
             Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\
             Set-Cookie: session=1\r\n\r\n"
        );
    }

    #[test]
    fn method_other_than_get_is_405_with_allow() {
        let request = RFC_REQUEST.replacen("GET", "POST", 1);
        assert_eq!(
            serve(&request, no_hook),
            refusal(
                "405 Method Not Allowed",
                "Allow: GET\r\n",
                "method POST is not GET\n"
            )
        );
    }

    #[test]
    fn http_1_0_is_400() {
        let request = RFC_REQUEST.replacen("HTTP/1.1", "HTTP/1.0", 1);
        assert_eq!(
            serve(&request, no_hook),
            refusal("400 Bad Request", "", "HTTP version is not 1.1\n")
        );
    }

    #[test]
    fn wrong_version_is_426_with_the_supported_version() {
        let request = rfc_request_with("Sec-WebSocket-Version", "Sec-WebSocket-Version: 8\r\n");
        assert_eq!(
            serve(&request, no_hook),
            "HTTP/1.1 426 Upgrade Required\r\n\
             Upgrade: websocket\r\n\
             Connection: Upgrade, close\r\n\
             Sec-WebSocket-Version: 13\r\n\
             Content-Type: text/plain; charset=utf-8\r\n\
             Content-Length: 56\r\n\r\n\
             unsupported Sec-WebSocket-Version: only 13 is supported\n"
        );
        let missing = rfc_request_with("Sec-WebSocket-Version", "");
        assert!(serve(&missing, no_hook).starts_with("HTTP/1.1 426 "));
    }

    #[test]
    fn each_missing_or_invalid_header_is_400() {
        let key = "Sec-WebSocket-Key is missing or is not a base64-encoded 16-byte value\n";
        let cases = [
            ("Host", "", "missing Host header\n"),
            ("Host", "Host: a\r\nHost: b\r\n", "missing Host header\n"),
            ("Upgrade", "", "Upgrade header does not list websocket\n"),
            (
                "Upgrade",
                "Upgrade: h2c\r\n",
                "Upgrade header does not list websocket\n",
            ),
            (
                "Connection",
                "Connection: keep-alive\r\n",
                "Connection header does not list upgrade\n",
            ),
            ("Sec-WebSocket-Key", "", key),
            ("Sec-WebSocket-Key", "Sec-WebSocket-Key: c2hvcnQ=\r\n", key),
            (
                "Sec-WebSocket-Key",
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=!\r\n",
                key,
            ),
            (
                "Sec-WebSocket-Key",
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
                key,
            ),
        ];
        for (name, line, body) in cases {
            let request = rfc_request_with(name, line);
            assert_eq!(
                serve(&request, no_hook),
                refusal("400 Bad Request", "", body),
                "{line:?}"
            );
        }
    }

    #[test]
    fn token_lists_and_case_are_accepted() {
        let request = rfc_request_with("Connection", "connection: keep-alive, UPGRADE\r\n");
        let request = request.replace("Upgrade: websocket", "upgrade: WebSocket");
        assert!(serve(&request, no_hook).starts_with("HTTP/1.1 101 "));
    }

    #[test]
    fn malformed_http_is_400() {
        assert_eq!(
            serve("GET /chat HTTP/1.1\r\nHost server\r\n\r\n", no_hook),
            refusal(
                "400 Bad Request",
                "",
                "malformed HTTP: invalid header name\n"
            )
        );
    }

    #[test]
    fn oversized_head_is_431() {
        let padding = format!("X-Padding: {}\r\n", "a".repeat(16 << 10));
        let request = rfc_request_with("Origin", &padding);
        assert_eq!(
            serve(&request, no_hook),
            refusal(
                "431 Request Header Fields Too Large",
                "",
                "HTTP head exceeds 16384 bytes\n"
            )
        );
    }

    #[test]
    fn too_many_headers_is_431() {
        // The request has 7 headers.
        let config = Config::builder().max_headers(6).build().unwrap();
        let error = read(&config, RFC_REQUEST.as_bytes()).unwrap_err();
        assert_eq!(error, HandshakeError::TooManyHeaders { max: 6 });
        assert_eq!(
            String::from_utf8(reject_response(&error)).unwrap(),
            refusal(
                "431 Request Header Fields Too Large",
                "",
                "more than 6 headers\n"
            )
        );
        let config = Config::builder().max_headers(7).build().unwrap();
        assert!(read(&config, RFC_REQUEST.as_bytes()).is_ok());
    }

    #[test]
    fn fed_one_byte_at_a_time() {
        let config = Config::default();
        let mut reader = RequestReader::new(&config);
        let input = RFC_REQUEST.as_bytes();
        for byte in &input[..input.len() - 1] {
            assert!(reader.feed(std::slice::from_ref(byte)).unwrap().is_none());
        }
        let (request, leftover) = reader
            .feed(b"\n")
            .unwrap()
            .expect("the last byte ends the head");
        assert_eq!(request.uri(), "/chat");
        assert!(leftover.is_empty());
        assert_eq!(
            reader.feed(b"x").unwrap_err(),
            HandshakeError::AlreadyFinished
        );
    }

    #[test]
    fn bytes_after_the_head_are_handed_over() {
        let frame = b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58";
        let config = Config::default();
        let mut reader = RequestReader::new(&config);
        assert!(
            reader
                .feed(&RFC_REQUEST.as_bytes()[..10])
                .unwrap()
                .is_none()
        );
        let rest = [&RFC_REQUEST.as_bytes()[10..], frame].concat();
        let (request, leftover) = reader.feed(&rest).unwrap().unwrap();
        assert_eq!(request.method(), Method::GET);
        assert_eq!(request.version(), Version::HTTP_11);
        assert_eq!(
            request
                .headers()
                .get_all(header::SEC_WEBSOCKET_PROTOCOL)
                .iter()
                .count(),
            1
        );
        assert_eq!(&leftover[..], frame);
    }

    #[test]
    fn parts_from_another_http_stack_take_the_same_path() {
        let config = Config::default();
        let (head, _) = read(&config, RFC_REQUEST.as_bytes()).unwrap();
        let (parts, ()) = head.into_parts();
        let accepted = accept(&config, &parts, |parts, response| {
            assert_eq!(parts.uri, "/chat");
            Ok(response)
        })
        .unwrap();
        assert_eq!(accepted.response.status(), StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(
            accepted.response.headers()[header::SEC_WEBSOCKET_ACCEPT],
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        assert_eq!(accepted.protocol, None);
    }

    #[test]
    fn bad_extension_header_is_400_before_the_hook_runs() {
        let request = rfc_request_with("Origin", "Sec-WebSocket-Extensions: ;;=\"\r\n");
        let response = serve(&request, |_, _| panic!("the hook must not run"));
        assert!(
            response.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{response}"
        );
    }
}
