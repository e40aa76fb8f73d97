//! WebSocket clients and servers over tokio and std::net, on the sans-IO [`roost_proto`] core.
//!
//! Every driver here runs the same [`roost_proto::Connection`]; they differ only in how bytes
//! move. What the crate does:
//! - [`accept`] / [`accept_with`]: the server handshake over any stream, then a [`WebSocket`];
//! - [`connect`] / [`ClientBuilder`]: `ws://` and `wss://` clients with headers and subprotocols;
//! - [`WebSocket`]: a `Stream` + `Sink` of [`Message`], split into two halves with
//!   `futures_util::StreamExt::split`; pings, pongs and the close handshake are automatic;
//! - lower levels: [`Message::Frame`] for single frames, [`WebSocket::server`] /
//!   [`WebSocket::client`] to wrap an already-upgraded stream, [`accept_request`] for a request
//!   another HTTP parser already read;
//! - [`blocking`]: the same over `std::net`;
//! - `tls` (feature `tls`): rustls for `wss://` on both sides;
//! - `upgrade` (feature `hyper`): upgrade a request inside a hyper or axum server.
//!
//! What it deliberately does not do: application routing, rooms and persistence live in
//! `roost-server`.
//!
//! # Example: an echo server and a client
//! ```no_run
//! # async fn run() -> Result<(), roost::Error> {
//! use roost::Message;
//!
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:9001").await?;
//! tokio::spawn(async move {
//!     while let Ok((tcp, _)) = listener.accept().await {
//!         tokio::spawn(async move {
//!             let mut ws = roost::accept(tcp).await?;
//!             while let Some(message) = ws.recv().await {
//!                 match message? {
//!                     message @ (Message::Text(_) | Message::Binary(_)) => ws.send(message).await?,
//!                     _ => {}
//!                 }
//!             }
//!             Ok::<_, roost::Error>(())
//!         });
//!     }
//! });
//!
//! let (mut ws, _response) = roost::connect("ws://127.0.0.1:9001/").await?;
//! ws.send(Message::text("hello")).await?;
//! assert_eq!(ws.recv().await.transpose()?, Some(Message::text("hello")));
//! ws.close(None).await?;
//! # Ok(()) }
//! ```

mod client;
mod server;
mod stream;

pub mod blocking;
#[cfg(feature = "tls")]
pub mod tls;
#[cfg(feature = "hyper")]
pub mod upgrade;

pub use client::{ClientBuilder, MaybeTlsStream, connect};
/// The `http` crate this API speaks (headers, requests, responses), at the version it uses.
pub use http;
pub use roost_proto::{
    self as proto, CloseCode, CloseFrame, CloseInitiator, CloseStatus, Config, DeflateConfig,
    Frame, Message, Negotiated, OpCode, Utf8Bytes,
    handshake::{HookResult, RequestHead},
};
pub use server::{Accepting, accept, accept_request, accept_with, shutdown_signal};
pub use stream::WebSocket;

use roost_proto::{HandshakeError, MaskSource, ProtocolError, UsageError};

/// Everything that can go wrong in a driver.
///
/// Each message includes the inner error's, so printing it once says everything; for that
/// reason the inner error is not also its [`source`](std::error::Error::source), which
/// would print it twice in a report that walks the chain (anyhow's `{:#}`, `{:?}`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading from or writing to the transport failed.
    #[error("transport error: {0}")]
    Io(std::io::Error),
    /// The peer broke the protocol; the connection sent a close frame with the matching code.
    #[error("protocol error: {0}")]
    Protocol(ProtocolError),
    /// The opening handshake failed.
    #[error("handshake failed: {0}")]
    Handshake(HandshakeError),
    /// The call was not valid in the connection's state (see the inner error).
    #[error("invalid use: {0}")]
    Usage(UsageError),
    /// The connection is closing or closed: nothing more can be sent.
    #[error("the connection is closed")]
    ConnectionClosed,
    /// A timeout ran out; the text says which.
    #[error("timed out: {0}")]
    Timeout(&'static str),
    /// The URL cannot be used; the text says why.
    #[error("invalid URL: {0}")]
    Url(String),
    /// TLS setup or the TLS handshake failed.
    #[cfg(feature = "tls")]
    #[error("TLS error: {0}")]
    Tls(rustls::Error),
}

/// `From` for each inner error, so `?` converts it.
macro_rules! from_inner {
    ($($(#[$attr:meta])* $inner:ty => $variant:ident),* $(,)?) => {$(
        $(#[$attr])*
        impl From<$inner> for Error {
            fn from(error: $inner) -> Self {
                Error::$variant(error)
            }
        }
    )*};
}

from_inner! {
    ProtocolError => Protocol,
    HandshakeError => Handshake,
    UsageError => Usage,
    #[cfg(feature = "tls")]
    rustls::Error => Tls,
}

impl From<std::io::Error> for Error {
    /// [`Error::Io`], or [`Error::Tls`] for the TLS failure an I/O error carries (how rustls
    /// reports a failed handshake through a stream: an unknown issuer, a name mismatch).
    fn from(error: std::io::Error) -> Self {
        #[cfg(feature = "tls")]
        if let Some(tls) = error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Error::Tls(tls.clone());
        }
        Error::Io(error)
    }
}

/// Masking keys from a cryptographically secure generator seeded by the OS
/// (RFC 6455 §10.3 asks for unpredictable keys).
pub(crate) fn mask_source() -> impl MaskSource + 'static {
    use rand::{RngCore, SeedableRng};
    let mut rng = rand::rngs::StdRng::from_os_rng();
    // One 32-bit draw per key (sampling `[u8; 4]` draws once per byte).
    move || rng.next_u32().to_ne_bytes()
}

/// 16 random bytes for a client's `Sec-WebSocket-Key`.
pub(crate) fn handshake_key() -> [u8; 16] {
    rand::random()
}
