//! The application's side: [`Handler`] for WebSocket routes, [`HttpHandler`] for plain HTTP.
//!
//! # Guarantees
//! - Calls for one connection never overlap: `on_open` finishes before the first
//!   `on_message`, each `on_message` finishes before the next, and `on_close` comes last,
//!   exactly once. Calls for different connections run concurrently.
//! - Messages are delivered in the order they arrived. A message answered by the connection's
//!   auto-response never reaches `on_message`.
//! - An `Err(Disconnect)` from `on_open` or `on_message` closes that connection with the
//!   disconnect's code and reason; a panic closes it with 1011. Nothing else is affected.

use std::{fmt, future::Future, pin::Pin, sync::Arc};

use bytes::Bytes;
use http::{Request, Response, Uri};
use roost::{CloseCode, Utf8Bytes, proto::close::MAX_CLOSE_REASON};

use crate::{
    Room, Ws,
    peer::{Peer, Sleeper},
    shared::Guards,
};

/// A received data message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Data {
    /// A text message.
    Text(Utf8Bytes),
    /// A binary message.
    Binary(Bytes),
}

impl Data {
    /// The payload bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Data::Text(text) => text.as_bytes(),
            Data::Binary(bytes) => bytes,
        }
    }

    /// The text, if this is a text message.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Data::Text(text) => Some(text.as_str()),
            Data::Binary(_) => None,
        }
    }
}

impl From<&str> for Data {
    fn from(text: &str) -> Self {
        Data::Text(text.into())
    }
}

impl From<String> for Data {
    fn from(text: String) -> Self {
        Data::Text(text.into())
    }
}

impl From<Utf8Bytes> for Data {
    fn from(text: Utf8Bytes) -> Self {
        Data::Text(text)
    }
}

impl From<Bytes> for Data {
    fn from(bytes: Bytes) -> Self {
        Data::Binary(bytes)
    }
}

impl From<Vec<u8>> for Data {
    fn from(bytes: Vec<u8>) -> Self {
        Data::Binary(bytes.into())
    }
}

/// Why a handler ends its connection: a close code and a reason that fits a close frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disconnect {
    code: CloseCode,
    reason: String,
}

impl Disconnect {
    /// A disconnect with `code` and `reason`.
    ///
    /// Application codes are 4000–4999 (RFC 6455 §7.4.2); the registered codes that may be
    /// sent (1000–1003, 1007–1014, 3000–3999) are accepted too. Any other code becomes 1011,
    /// since sending it would break the protocol. A reason longer than 123 bytes is cut at a
    /// character boundary.
    pub fn new(code: u16, reason: impl Into<String>) -> Self {
        let code = CloseCode(code);
        let code = if code.is_sendable() {
            code
        } else {
            CloseCode::INTERNAL_ERROR
        };
        let mut reason = reason.into();
        if reason.len() > MAX_CLOSE_REASON {
            let mut end = MAX_CLOSE_REASON;
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            reason.truncate(end);
        }
        Disconnect { code, reason }
    }

    /// 1008: the peer broke the application's rules.
    pub fn policy(reason: impl Into<String>) -> Self {
        Self::new(CloseCode::POLICY_VIOLATION.0, reason)
    }

    /// The close code.
    pub fn code(&self) -> CloseCode {
        self.code
    }

    /// The close reason.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for Disconnect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "disconnect {} ({})", self.code, self.reason)
    }
}

impl std::error::Error for Disconnect {}

/// What a WebSocket route runs. Only `on_message` is required; the compiler makes sure a
/// route has one.
pub trait Handler: Send + Sync + 'static {
    /// The connection is open: `url` is the request's path and query. Runs before any
    /// message; set the auto-response and attachment here.
    fn on_open(&self, ws: &Ws, url: &Uri) -> impl Future<Output = Result<(), Disconnect>> + Send {
        let _ = (ws, url);
        async { Ok(()) }
    }

    /// A text or binary message arrived on `ws`, whose room is `room`.
    fn on_message(
        &self,
        ws: &Ws,
        data: Data,
        room: &Room,
    ) -> impl Future<Output = Result<(), Disconnect>> + Send;

    /// The connection ended: `code` and `reason` are the peer's (1005 when its close frame
    /// had no code, 1006 when the connection was lost without one).
    fn on_close(&self, ws: &Ws, code: CloseCode, reason: &str) -> impl Future<Output = ()> + Send {
        let _ = (ws, code, reason);
        async {}
    }
}

/// Answers plain HTTP requests on the same port (everything that is not a WebSocket route).
/// `/metrics`, `/healthz`, `/readyz` and `/presence` are answered by the server first, unless
/// [`ServerConfig::admin_addr`](crate::ServerConfig::admin_addr) moves them to an address of
/// their own.
pub trait HttpHandler: Send + Sync + 'static {
    /// The response to `request`, its whole body read (at most 1 MiB; a longer body is
    /// answered 413 without a call).
    fn call(&self, request: Request<Bytes>) -> impl Future<Output = Response<Bytes>> + Send;
}

impl<F, Fut> HttpHandler for F
where
    F: Fn(Request<Bytes>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<Bytes>> + Send,
{
    fn call(&self, request: Request<Bytes>) -> impl Future<Output = Response<Bytes>> + Send {
        self(request)
    }
}

/// The default HTTP handler: 404 for everything.
pub(crate) async fn not_found(_: Request<Bytes>) -> Response<Bytes> {
    let mut response = Response::new(Bytes::from_static(b"not found\n"));
    *response.status_mut() = http::StatusCode::NOT_FOUND;
    response
}

pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A [`Handler`] of any type behind one pointer type, so routes can hold different handlers.
/// The type is erased once per connection task, not per call: each task runs code made for
/// its handler, with the handler's futures inline in the task (no allocation per message).
pub(crate) trait DynHandler: Send + Sync + 'static {
    /// Starts the task of a connection that just opened.
    fn spawn_open(self: Arc<Self>, peer: Arc<Peer>, url: Uri, leftover: Bytes, guards: Guards);

    /// Starts the task of a hibernating connection again, on `runtime`; `input` is what was
    /// read from its socket but not answered while it slept.
    fn spawn_resume(
        self: Arc<Self>,
        runtime: &tokio::runtime::Handle,
        sleeper: Sleeper,
        input: Bytes,
    );
}

impl<H: Handler> DynHandler for H {
    fn spawn_open(self: Arc<Self>, peer: Arc<Peer>, url: Uri, leftover: Bytes, guards: Guards) {
        tokio::spawn(crate::peer::run(peer, self, url, leftover, guards));
    }

    fn spawn_resume(
        self: Arc<Self>,
        runtime: &tokio::runtime::Handle,
        sleeper: Sleeper,
        input: Bytes,
    ) {
        runtime.spawn(crate::peer::resume(self, sleeper, input));
    }
}

/// [`HttpHandler`] with a boxed future.
pub(crate) trait DynHttpHandler: Send + Sync + 'static {
    fn call(&self, request: Request<Bytes>) -> BoxFuture<'_, Response<Bytes>>;
}

impl<H: HttpHandler> DynHttpHandler for H {
    fn call(&self, request: Request<Bytes>) -> BoxFuture<'_, Response<Bytes>> {
        Box::pin(HttpHandler::call(self, request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disconnects_always_fit_a_close_frame() {
        let d = Disconnect::new(4001, "é".repeat(100));
        assert_eq!(d.code(), CloseCode(4001));
        assert!(d.reason().len() <= MAX_CLOSE_REASON);
        assert!(d.reason().chars().all(|c| c == 'é'));
        assert_eq!(
            Disconnect::new(1005, "reserved").code(),
            CloseCode::INTERNAL_ERROR
        );
        assert_eq!(Disconnect::new(999, "").code(), CloseCode::INTERNAL_ERROR);
        assert_eq!(Disconnect::policy("no").code(), CloseCode::POLICY_VIOLATION);
    }
}
