//! roost-server with real clients over 127.0.0.1: every wait bounded.

#![allow(clippy::unwrap_used)]

mod admission;
mod handlers;
mod lifecycle;
mod rooms;

use std::{net::SocketAddr, time::Duration};

use roost::{MaybeTlsStream, Message, WebSocket};
use roost_server::{App, ServerConfig, ServerHandle};
use tokio::net::TcpStream;

const LIMIT: Duration = Duration::from_secs(10);

async fn within<F: std::future::Future>(future: F) -> F::Output {
    tokio::time::timeout(LIMIT, future)
        .await
        .expect("the test step did not finish in time")
}

/// Starts `app` on a free port; returns its address and handle. The server stops when the
/// handle's shutdown is called or the test ends.
async fn start(app: App, config: ServerConfig) -> (SocketAddr, ServerHandle) {
    let server = app
        .config(config)
        .bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = server.local_addr().unwrap();
    let handle = server.handle();
    tokio::spawn(server.run_until(std::future::pending()));
    (addr, handle)
}

type Client = WebSocket<MaybeTlsStream<TcpStream>>;

async fn connect(addr: SocketAddr, path: &str) -> Client {
    within(roost::connect(&format!("ws://{addr}{path}")))
        .await
        .unwrap()
        .0
}

/// The next text message.
async fn next_text(ws: &mut Client) -> String {
    loop {
        match within(ws.recv()).await {
            Some(Ok(Message::Text(text))) => return text.to_string(),
            Some(Ok(_)) => {}
            other => panic!("expected a text message, got {other:?}"),
        }
    }
}

/// Reads until the connection ends; returns the close frame received, if any.
async fn until_closed(ws: &mut Client) -> Option<roost::CloseFrame> {
    let mut close = None;
    while let Some(message) = within(ws.recv()).await {
        if let Ok(Message::Close(frame)) = message {
            close = frame;
        }
    }
    close
}

/// A raw upgrade request for `path` with the RFC 6455 §1.3 sample key.
fn upgrade_request(path: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes()
}

/// Connects a client that completes the handshake and then does not read. Its receive buffer
/// is small, so what the server sends backs up in the server rather than in the kernel.
async fn sleeping_reader(addr: SocketAddr, path: &str) -> TcpStream {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut tcp = within(socket.connect(addr)).await.unwrap();
    tcp.write_all(&upgrade_request(path)).await.unwrap();
    let mut buf = [0u8; 256];
    let n = within(tcp.read(&mut buf)).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 101"));
    tcp
}

/// Polls `check` until it holds, for at most LIMIT.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !check() {
        assert!(start.elapsed() < LIMIT, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[test]
fn handles_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<roost_server::Ws>();
    check::<roost_server::Room>();
    check::<ServerHandle>();
}
