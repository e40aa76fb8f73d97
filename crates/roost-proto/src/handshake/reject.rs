//! Refusing an upgrade request: the response for an error, and the hook's own refusals.

use http::{HeaderMap, HeaderValue, Response, StatusCode, Version, header};

use super::{VERSION, write_head};
use crate::error::HandshakeError;

/// The [`accept`](super::accept) hook's refusal: any status, extra headers and an optional body.
///
/// Boxed, so that the hook's [`HookResult`](super::HookResult) stays small.
#[derive(Debug)]
pub struct Refusal(Box<Response<Option<String>>>);

impl Refusal {
    /// A refusal with `status` and, when given, `body`, sent as `text/plain` unless a
    /// `Content-Type` header is added. Without a body, the body states the status.
    pub fn new(status: StatusCode, body: Option<String>) -> Self {
        let mut response = Response::new(body);
        *response.status_mut() = status;
        Refusal(Box::new(response))
    }

    /// The headers sent with the refusal, for `WWW-Authenticate` for example.
    pub fn headers_mut(&mut self) -> &mut HeaderMap {
        self.0.headers_mut()
    }
}

impl From<Response<Option<String>>> for Refusal {
    fn from(response: Response<Option<String>>) -> Self {
        Refusal(Box::new(response))
    }
}

impl From<Refusal> for Rejected {
    /// The refusal as it is sent: a 1xx status becomes 500, and the connection closes after
    /// it (`Connection: close`, the body framed by its length).
    fn from(refusal: Refusal) -> Self {
        let (mut parts, body) = refusal.0.into_parts();
        if parts.status.is_informational() {
            parts.status = StatusCode::INTERNAL_SERVER_ERROR;
        }
        let error = HandshakeError::Rejected(parts.status.as_u16());
        let body = body.unwrap_or_else(|| format!("{error}\n"));
        let mut response = Response::from_parts(parts, body);
        finish_refusal(&mut response);
        Rejected {
            error,
            response: Box::new(response),
        }
    }
}

/// A request the server refuses: write the response and close the connection.
#[derive(Debug)]
#[must_use = "write the response, then close the connection"]
pub struct Rejected {
    /// Why the request was refused.
    pub error: HandshakeError,
    /// The complete response with its body, for drivers that write responses themselves
    /// (hyper). Others write [`Rejected::to_bytes`]. Boxed, to keep `Result`s small.
    pub response: Box<Response<String>>,
}

impl Rejected {
    /// The standard refusal for `error`: its [`status`](HandshakeError::status) with the
    /// reason phrase, `Connection: close`, and a one-line `text/plain` body stating the error.
    /// A 405 carries `Allow: GET`; a 426 carries `Sec-WebSocket-Version: 13` and, as RFC 9110
    /// §15.5.22 asks, `Upgrade: websocket`.
    pub fn new(error: HandshakeError) -> Self {
        let status = StatusCode::from_u16(error.status())
            .ok()
            .filter(|status| !status.is_informational())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = Response::new(format!("{error}\n"));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        if status == StatusCode::METHOD_NOT_ALLOWED {
            headers.insert(header::ALLOW, HeaderValue::from_static("GET"));
        }
        if status == StatusCode::UPGRADE_REQUIRED {
            headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            headers.insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static(VERSION),
            );
        }
        finish_refusal(&mut response);
        Rejected {
            error,
            response: Box::new(response),
        }
    }

    /// The response as bytes to write to the socket.
    #[must_use]
    pub fn to_bytes(&self) -> Vec<u8> {
        let status = self.response.status();
        let reason = status.canonical_reason().unwrap_or("");
        let mut out = Vec::with_capacity(256 + self.response.body().len());
        write_head(
            &mut out,
            &format!("HTTP/1.1 {} {reason}", status.as_u16()),
            self.response.headers(),
        );
        out.extend_from_slice(self.response.body().as_bytes());
        out
    }
}

/// Adds what every refusal needs: the connection closes after it, and the body is framed by
/// its length (none at all for 204 and 304, which cannot carry one).
fn finish_refusal(response: &mut Response<String>) {
    *response.version_mut() = Version::HTTP_11;
    let status = response.status();
    if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        response.body_mut().clear();
    }
    let length = response.body().len();
    let headers = response.headers_mut();
    // RFC 9110 §7.8: whoever sends `Upgrade` lists `upgrade` in `Connection` too.
    let connection = if headers.contains_key(header::UPGRADE) {
        "Upgrade, close"
    } else {
        "close"
    };
    headers.insert(header::CONNECTION, HeaderValue::from_static(connection));
    headers.remove(header::TRANSFER_ENCODING);
    if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        headers.remove(header::CONTENT_LENGTH);
        return;
    }
    if !headers.contains_key(header::CONTENT_TYPE) {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
    }
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
}

/// The bytes of [`Rejected::new`]`(error)`: what to write before closing when a request cannot
/// be read or accepted.
#[must_use]
pub fn reject_response(error: &HandshakeError) -> Vec<u8> {
    Rejected::new(error.clone()).to_bytes()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]
mod tests {
    use super::*;

    fn text(error: HandshakeError) -> String {
        String::from_utf8(reject_response(&error)).unwrap()
    }

    #[test]
    fn errors_answer_with_their_status_and_a_one_line_body() {
        assert_eq!(
            text(HandshakeError::MissingHost),
            "HTTP/1.1 400 Bad Request\r\n\
             Connection: close\r\n\
             Content-Type: text/plain; charset=utf-8\r\n\
             Content-Length: 20\r\n\r\n\
             missing Host header\n"
        );
        assert!(
            text(HandshakeError::HeadTooLarge { max: 300 })
                .starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n")
        );
    }

    #[test]
    fn statuses_that_need_headers_get_them() {
        let method = text(HandshakeError::MethodNotGet("PUT".to_owned()));
        assert!(method.starts_with("HTTP/1.1 405 Method Not Allowed\r\nConnection: close\r\n"));
        assert!(method.contains("\r\nAllow: GET\r\n"), "{method}");
        let version = text(HandshakeError::UnsupportedVersion);
        assert!(version.starts_with(
            "HTTP/1.1 426 Upgrade Required\r\nUpgrade: websocket\r\nConnection: Upgrade, close\r\n\
             Sec-WebSocket-Version: 13\r\n"
        ));
    }

    #[test]
    fn hook_statuses_without_a_reason_phrase_are_sent_bare() {
        let rejected = Rejected::from(Refusal::new(StatusCode::from_u16(599).unwrap(), None));
        let bytes = String::from_utf8(rejected.to_bytes()).unwrap();
        assert!(bytes.starts_with("HTTP/1.1 599 \r\n"), "{bytes}");
        assert_eq!(rejected.error.status(), 599);
    }
}
