//! The end of an async WebSocket against peers that misbehave: one that stops reading, one
//! that drops the connection without a clean transport close, and a close after the peer's.

use std::time::Duration;

use roost::{CloseInitiator, Config, Message, Negotiated, WebSocket};
use tokio::io::{AsyncRead, AsyncWriteExt, DuplexStream, ReadBuf};

use super::{listener, within};

/// A server-side WebSocket over an in-memory pipe of 1 KiB whose other end never reads, with
/// a short close timeout; the other end is returned to keep the pipe open.
fn over_a_full_pipe() -> (WebSocket<DuplexStream>, DuplexStream) {
    let (ours, theirs) = tokio::io::duplex(1024);
    let config = Config::builder()
        .close_timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    (
        WebSocket::server(ours, config, Negotiated::default()),
        theirs,
    )
}

/// A masked close frame (1000) as a client sends it.
fn client_close() -> Vec<u8> {
    let key = [9, 8, 7, 6];
    let mut frame = vec![0x88, 0x82];
    frame.extend_from_slice(&key);
    frame.extend(1000u16.to_be_bytes().iter().zip(key).map(|(b, k)| b ^ k));
    frame
}

#[tokio::test]
async fn close_gives_up_on_a_peer_that_stops_reading() {
    let (mut ws, _peer) = over_a_full_pipe();
    // More than the pipe holds: the close frame queues behind it and cannot leave.
    ws.feed_binary(&[7; 64 << 10]).unwrap();
    within(ws.close(None)).await.unwrap();
    assert!(within(ws.recv()).await.is_none());
    let status = ws.close_status().unwrap();
    assert!(!status.clean, "{status:?}");
    // What was queued is gone, and a flush says so instead of reporting success.
    assert!(within(ws.flush()).await.is_err());
}

#[tokio::test]
async fn the_echo_of_a_close_does_not_wait_forever_on_a_peer_that_stops_reading() {
    let (mut ws, mut peer) = over_a_full_pipe();
    ws.feed_binary(&[7; 64 << 10]).unwrap();
    peer.write_all(&client_close()).await.unwrap();
    let mut seen = Vec::new();
    while let Some(message) = within(ws.recv()).await {
        seen.push(message.unwrap());
        assert!(seen.len() < 4, "{seen:?}");
    }
    assert!(
        matches!(seen.as_slice(), [Message::Close(Some(_))]),
        "{seen:?}"
    );
    assert_eq!(ws.close_status().unwrap().initiator, CloseInitiator::Peer);
}

#[tokio::test]
async fn closing_after_the_peers_close_only_flushes_the_echo() {
    let (listener, url) = listener().await;
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut ws = roost::accept(tcp).await.unwrap();
        ws.close(None).await.unwrap();
        while ws.recv().await.is_some() {}
        ws.close_status().unwrap()
    });
    let (mut client, _) = within(roost::connect(&url)).await.unwrap();
    assert!(matches!(
        within(client.recv()).await,
        Some(Ok(Message::Close(_)))
    ));
    // What a loop that answers every close frame does: the echo is already queued, so this
    // only flushes it.
    within(client.close(None)).await.unwrap();
    assert!(within(client.recv()).await.is_none());
    assert!(client.close_status().unwrap().clean);
    let server = within(server).await.unwrap();
    assert!(
        server.clean && server.initiator == CloseInitiator::Local,
        "{server:?}"
    );
}

/// Reads from a pipe and reports its end as `UnexpectedEof`, as rustls does for a peer that
/// closes TCP without a TLS close_notify.
struct AbruptEnd(DuplexStream);

impl AsyncRead for AbruptEnd {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        std::task::ready!(std::pin::Pin::new(&mut self.0).poll_read(cx, buf))?;
        if buf.filled().len() == before && buf.remaining() > 0 {
            return std::task::Poll::Ready(Err(std::io::ErrorKind::UnexpectedEof.into()));
        }
        std::task::Poll::Ready(Ok(()))
    }
}

impl tokio::io::AsyncWrite for AbruptEnd {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, data)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[tokio::test]
async fn a_server_that_drops_the_connection_after_the_close_handshake_ends_it_cleanly() {
    let (ours, mut server) = tokio::io::duplex(4096);
    let mut client = WebSocket::client(AbruptEnd(ours), Config::default(), Negotiated::default());
    within(client.close(None)).await.unwrap();
    // The server's close (unmasked, 1000), then the connection drops without more ado.
    server.write_all(&[0x88, 0x02, 0x03, 0xe8]).await.unwrap();
    drop(server);
    let mut seen = Vec::new();
    while let Some(message) = within(client.recv()).await {
        seen.push(message.map_err(|error| error.to_string()));
        assert!(seen.len() < 4, "{seen:?}");
    }
    assert!(
        matches!(seen.as_slice(), [Ok(Message::Close(Some(_)))]),
        "{seen:?}"
    );
    assert!(client.close_status().unwrap().clean);
}

/// With tokio's clock paused (as in many applications' tests), waiting out the close
/// timeout advances the clock instead of spinning until the system clock catches up: an
/// hour-long close timeout ends at once.
#[test]
fn a_paused_clock_does_not_make_the_close_timeout_spin() {
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        runtime.block_on(async {
            let (ours, _silent) = tokio::io::duplex(4096);
            let config = Config::builder()
                .close_timeout(Duration::from_secs(3600))
                .build()
                .unwrap();
            let mut ws = WebSocket::server(ours, config, Negotiated::default());
            ws.close(None).await.unwrap();
            while ws.recv().await.is_some() {}
            done.send(ws.close_status().unwrap().clean).unwrap();
        });
    });
    let clean = finished
        .recv_timeout(Duration::from_secs(30))
        .expect("the close timeout was waited out on the system clock");
    assert!(!clean);
}
