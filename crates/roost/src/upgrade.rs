//! Upgrade a request inside an existing hyper (or axum) server.
//!
//! Answer the request with the response [`upgrade`] returns; the [`UpgradeFut`] resolves to a
//! [`WebSocket`] once hyper hands over the connection. The handshake rules, the hook and the
//! negotiation are those of [`crate::accept_with`].
//!
//! ```no_run
//! use http_body_util::Full;
//! use hyper::{Request, Response, body::{Bytes, Incoming}};
//!
//! async fn handle(mut request: Request<Incoming>) -> Result<Response<Full<Bytes>>, hyper::Error> {
//!     if !roost::upgrade::is_upgrade_request(&request) {
//!         return Ok(Response::new(Full::new(Bytes::from("not a websocket request"))));
//!     }
//!     match roost::upgrade::upgrade(&mut request, &roost::Config::default(), |_, r| Ok(r)) {
//!         Ok((response, websocket)) => {
//!             tokio::spawn(async move {
//!                 let Ok(mut ws) = websocket.await else { return };
//!                 while let Some(Ok(message)) = ws.recv().await {
//!                     if message.is_data() && ws.send(message).await.is_err() {
//!                         break;
//!                     }
//!                 }
//!             });
//!             Ok(response)
//!         }
//!         Err(rejection) => Ok(*rejection.response),
//!     }
//! }
//! ```

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::Bytes;
use http::{Request, Response, header};
use http_body_util::Full;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use roost_proto::{Config, Connection, HandshakeError, Negotiated, handshake};

use crate::{Error, HookResult, WebSocket};

/// The stream a hyper-upgraded WebSocket runs over.
pub type UpgradedStream = TokioIo<Upgraded>;

/// Whether the request asks for a WebSocket (`Upgrade: websocket`), to route it before
/// calling [`upgrade`].
pub fn is_upgrade_request<B>(request: &Request<B>) -> bool {
    request
        .headers()
        .get_all(header::UPGRADE)
        .iter()
        .any(|value| {
            value
                .as_bytes()
                .split(|b| *b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"websocket"))
        })
}

/// A refused upgrade: the response to send and why.
#[derive(Debug)]
pub struct Rejection {
    /// Why the request was refused.
    pub error: HandshakeError,
    /// The response to answer with (400, 426 with `Sec-WebSocket-Version: 13`, the hook's…).
    pub response: Box<Response<Full<Bytes>>>,
}

/// Validates the upgrade request and builds the 101 response; the future yields the
/// WebSocket once hyper has sent the response and released the connection.
pub fn upgrade<B>(
    request: &mut Request<B>,
    config: &Config,
    hook: impl FnOnce(&Request<B>, Response<()>) -> HookResult,
) -> Result<(Response<Full<Bytes>>, UpgradeFut), Rejection> {
    match handshake::accept(config, &*request, hook) {
        Ok(accepted) => {
            let on_upgrade = hyper::upgrade::on(&mut *request);
            let (parts, ()) = accepted.response.into_parts();
            let response = Response::from_parts(parts, Full::new(Bytes::new()));
            let future = UpgradeFut {
                on_upgrade,
                config: config.clone(),
                negotiated: Some(accepted.negotiated),
                protocol: accepted.protocol,
            };
            Ok((response, future))
        }
        Err(rejected) => {
            let (parts, body) = rejected.response.into_parts();
            let response = Response::from_parts(parts, Full::new(Bytes::from(body)));
            Err(Rejection {
                error: rejected.error,
                response: Box::new(response),
            })
        }
    }
}

/// Resolves to the [`WebSocket`] once hyper hands over the upgraded connection.
#[derive(Debug)]
#[must_use = "await it (usually in a spawned task) to get the WebSocket"]
pub struct UpgradeFut {
    on_upgrade: OnUpgrade,
    config: Config,
    negotiated: Option<Negotiated>,
    protocol: Option<String>,
}

impl Future for UpgradeFut {
    type Output = Result<WebSocket<UpgradedStream>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let upgraded = ready!(Pin::new(&mut this.on_upgrade).poll(cx))
            .map_err(|e| Error::Io(std::io::Error::other(e)))?;
        let negotiated = this.negotiated.take().unwrap_or_default();
        let connection = Connection::server(this.config.clone(), negotiated);
        let ws = WebSocket::from_connection(TokioIo::new(upgraded), connection, &[])
            .with_protocol(this.protocol.take());
        Poll::Ready(Ok(ws))
    }
}
