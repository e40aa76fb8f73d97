//! Integration tests for the roost drivers: real sockets on 127.0.0.1, port 0, every wait
//! bounded by a timeout.

// Test helpers outside #[test] functions panic on failure by design.
#![allow(clippy::unwrap_used)]

mod blocking;
mod closing;
mod handshake;
mod stream;
mod tls;
mod upgrade;

use std::time::Duration;

use roost::{Message, WebSocket};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpListener,
};

/// Every await in these tests finishes within this, or the test fails.
const LIMIT: Duration = Duration::from_secs(10);

async fn within<F: std::future::Future>(future: F) -> F::Output {
    tokio::time::timeout(LIMIT, future)
        .await
        .expect("the test step did not finish in time")
}

/// Echoes data messages until the connection ends.
async fn echo<S: AsyncRead + AsyncWrite + Unpin>(mut ws: WebSocket<S>) -> WebSocket<S> {
    while let Some(Ok(message)) = ws.recv().await {
        if message.is_data() && ws.send(message).await.is_err() {
            break;
        }
    }
    ws
}

/// A listener on a free loopback port and its ws:// URL.
async fn listener() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    (listener, url)
}

/// An echo server for one connection (default handshake) and its ws:// URL; the task hands
/// back the server's side once the connection ends.
async fn echo_server() -> (
    tokio::task::JoinHandle<WebSocket<tokio::net::TcpStream>>,
    String,
) {
    let (listener, url) = listener().await;
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        echo(roost::accept(tcp).await.unwrap()).await
    });
    (server, url)
}

/// The host:port part of a ws:// URL made by [`listener`].
fn addr_of(url: &str) -> String {
    url.trim_start_matches("ws://")
        .trim_end_matches('/')
        .to_owned()
}

/// A raw upgrade request with the RFC 6455 §1.3 sample key, asking for `version`.
fn upgrade_request(path: &str, version: u32) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: {version}\r\n\r\n"
    )
    .into_bytes()
}

/// The next data message, skipping control messages.
async fn next_data<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocket<S>) -> Message {
    loop {
        let message = within(ws.recv())
            .await
            .expect("connection ended")
            .expect("error");
        if message.is_data() {
            return message;
        }
    }
}

#[test]
fn handles_are_send() {
    fn is_send<T: Send>() {}
    is_send::<WebSocket<tokio::net::TcpStream>>();
    is_send::<roost::blocking::WebSocket<std::net::TcpStream>>();
    is_send::<roost::Error>();
}
