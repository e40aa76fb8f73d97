//! The async WebSocket: messages, split halves, compression, frames, closing.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use roost::{
    CloseCode, CloseFrame, CloseInitiator, Config, Frame, Message, Negotiated, OpCode, WebSocket,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{addr_of, echo, echo_server, listener, next_data, upgrade_request, within};

#[tokio::test]
async fn messages_round_trip_and_both_sides_see_a_clean_close() {
    let (server, url) = echo_server().await;
    let (mut ws, response) = within(roost::connect(&url)).await.unwrap();
    assert_eq!(response.status(), 101);
    assert!(
        ws.negotiated().deflate.is_some(),
        "deflate is offered and accepted by default"
    );
    let big = "x".repeat(1 << 20);
    for message in [
        Message::text("hello"),
        Message::binary(vec![0u8, 1, 2, 255]),
        Message::text(""),
        Message::text(big.as_str()),
        Message::text("κόσμε"),
    ] {
        within(ws.send(message.clone())).await.unwrap();
        assert_eq!(next_data(&mut ws).await, message);
    }
    within(ws.close(Some(CloseFrame::new(4000, "done"))))
        .await
        .unwrap();
    let mut last = None;
    while let Some(message) = within(ws.recv()).await {
        last = Some(message.unwrap());
    }
    assert_eq!(last, Some(Message::Close(Some(CloseFrame::new(4000, "")))));
    let status = ws.close_status().unwrap();
    assert_eq!(
        (status.initiator, status.clean),
        (CloseInitiator::Local, true)
    );
    let server = within(server).await.unwrap();
    let status = server.close_status().unwrap();
    assert_eq!(status.initiator, CloseInitiator::Peer);
    assert_eq!(
        (status.code, status.reason.as_str()),
        (CloseCode(4000), "done")
    );
}

#[tokio::test]
async fn messages_fed_from_borrowed_data_leave_in_order_with_one_flush() {
    let (server, url) = echo_server().await;
    let (mut ws, _) = within(roost::connect(&url)).await.unwrap();
    let big = vec![7u8; 5000];
    ws.feed_text("borrowed").unwrap();
    ws.feed_binary(&[1, 2, 3]).unwrap();
    ws.feed_binary(&big).unwrap();
    ws.feed(&Message::text("owned")).unwrap();
    within(ws.flush()).await.unwrap();
    for expected in [
        Message::text("borrowed"),
        Message::binary(vec![1u8, 2, 3]),
        Message::binary(big.clone()),
        Message::text("owned"),
    ] {
        assert_eq!(next_data(&mut ws).await, expected);
    }
    within(ws.close(None)).await.unwrap();
    while within(ws.recv()).await.is_some() {}
    // Once our close is out, feeding is refused as a closed connection, not a misuse.
    assert!(matches!(
        ws.feed_text("late"),
        Err(roost::Error::ConnectionClosed)
    ));
    within(server).await.unwrap();
}

#[tokio::test]
async fn split_halves_work_from_two_tasks_and_still_answer_pings() {
    let (listener, url) = listener().await;
    // The server pings, then waits for the pong before echoing anything.
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut ws = roost::accept(tcp).await.unwrap();
        ws.send(Message::Ping("are you there".into()))
            .await
            .unwrap();
        match ws.recv().await.unwrap().unwrap() {
            Message::Pong(payload) => assert_eq!(&payload[..], b"are you there"),
            other => panic!("expected the automatic pong first, got {other:?}"),
        }
        echo(ws).await;
    });
    let (ws, _) = within(roost::connect(&url)).await.unwrap();
    let (mut writer, mut reader) = ws.split();
    let reading = tokio::spawn(async move {
        let mut texts = Vec::new();
        while let Some(message) = reader.next().await {
            match message.unwrap() {
                Message::Text(text) => texts.push(text.to_string()),
                Message::Close(_) => {}
                _ => {}
            }
        }
        texts
    });
    let payload = "compressible ".repeat(200);
    for i in 0..50 {
        within(writer.send(Message::text(format!("{i} {payload}"))))
            .await
            .unwrap();
    }
    // Echoes of everything sent before the close still arrive: the read side stays open until
    // the server answers the close.
    within(writer.close()).await.unwrap();
    let texts = within(reading).await.unwrap();
    let expected: Vec<String> = (0..50).map(|i| format!("{i} {payload}")).collect();
    assert_eq!(texts, expected);
    within(server).await.unwrap();
}

#[tokio::test]
async fn fragments_sent_by_hand_arrive_as_one_message_or_as_frames() {
    let (listener, url) = listener().await;
    let frames_config = Config::builder().assemble_messages(false).build().unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut ws = roost::accept_with(tcp, &frames_config, |_, r| Ok(r))
            .await
            .unwrap();
        let mut frames = Vec::new();
        while let Some(Ok(message)) = ws.recv().await {
            if let Message::Frame(frame) = message {
                frames.push(frame);
            }
        }
        frames
    });
    let (mut ws, _) = within(roost::connect(&url)).await.unwrap();
    for frame in [
        Frame::new(false, OpCode::Text, "Hel"),
        Frame::new(false, OpCode::Continuation, "l"),
        Frame::new(true, OpCode::Continuation, "o"),
    ] {
        within(ws.send(Message::Frame(frame))).await.unwrap();
    }
    within(ws.close(None)).await.unwrap();
    while within(ws.recv()).await.is_some() {}
    let frames = within(server).await.unwrap();
    let payloads: Vec<_> = frames
        .iter()
        .map(|f| (f.fin, f.opcode, &f.payload[..]))
        .collect();
    assert_eq!(
        payloads,
        vec![
            (false, OpCode::Text, &b"Hel"[..]),
            (false, OpCode::Continuation, &b"l"[..]),
            (true, OpCode::Continuation, &b"o"[..]),
        ]
    );
}

#[tokio::test]
async fn an_already_upgraded_stream_is_wrapped_without_a_handshake() {
    let (a, b) = tokio::io::duplex(64 << 10);
    let negotiated = Negotiated::default();
    let mut server = WebSocket::server(a, Config::default(), negotiated.clone());
    let mut client = WebSocket::client(b, Config::default(), negotiated);
    within(client.send(Message::text("over a pipe")))
        .await
        .unwrap();
    assert_eq!(next_data(&mut server).await, Message::text("over a pipe"));
    within(server.send(Message::binary(vec![7; 10])))
        .await
        .unwrap();
    assert_eq!(next_data(&mut client).await, Message::binary(vec![7; 10]));
}

/// Runs `serve` on a server-side WebSocket with a 200 ms close timeout whose client
/// completes the handshake and then never answers; checks the close status `serve` returns
/// is that of a lost connection.
async fn against_a_silent_client<F, Fut>(serve: F)
where
    F: FnOnce(WebSocket<tokio::net::TcpStream>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = roost::CloseStatus> + Send,
{
    let (listener, url) = listener().await;
    let addr = addr_of(&url);
    let config = Config::builder()
        .close_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let ws = roost::accept_with(tcp, &config, |_, r| Ok(r))
            .await
            .unwrap();
        serve(ws).await
    });
    let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    tcp.write_all(&upgrade_request("/", 13)).await.unwrap();
    let mut buf = [0; 512];
    let n = within(tcp.read(&mut buf)).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 101"));
    let status = within(server).await.unwrap();
    assert_eq!(
        (status.initiator, status.code),
        (CloseInitiator::Lost, CloseCode::ABNORMAL)
    );
}

#[tokio::test]
async fn a_silent_peer_is_dropped_after_the_close_timeout() {
    against_a_silent_client(|mut ws| async move {
        ws.close(Some(CloseFrame::new(CloseCode::GOING_AWAY, "bye")))
            .await
            .unwrap();
        while ws.recv().await.is_some() {}
        ws.close_status().unwrap()
    })
    .await;
}

#[tokio::test]
async fn a_protocol_error_reaches_the_application_and_the_peer_gets_1002() {
    let (listener, url) = listener().await;
    let addr = addr_of(&url);
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut ws = roost::accept(tcp).await.unwrap();
        let first = ws.recv().await;
        let rest = ws.recv().await;
        (first.map(|r| r.map_err(|e| e.to_string())), rest.is_none())
    });
    let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    // An unmasked frame right behind the request.
    let request = [upgrade_request("/", 13), b"\x81\x02hi".to_vec()].concat();
    tcp.write_all(&request).await.unwrap();
    let mut response = Vec::new();
    within(tcp.read_to_end(&mut response)).await.unwrap();
    let close_at = response.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert_eq!(
        response[close_at], 0x88,
        "a close frame follows the 101 response"
    );
    assert_eq!(
        &response[close_at + 2..close_at + 4],
        &1002u16.to_be_bytes()
    );
    let (first, ended) = within(server).await.unwrap();
    assert_eq!(
        first,
        Some(Err("protocol error: client frame is not masked".to_owned()))
    );
    assert!(ended);
}

#[tokio::test]
async fn a_close_from_the_writer_half_bounds_an_idle_reader() {
    against_a_silent_client(|ws| async move {
        let (mut writer, mut reader) = ws.split();
        // The reader is already waiting on the socket, with no deadline yet, when the writer
        // half closes.
        let reading = tokio::spawn(async move {
            while reader.next().await.is_some() {}
            reader
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        writer.close().await.unwrap();
        let reader = reading.await.unwrap();
        reader.reunite(writer).unwrap().close_status().unwrap()
    })
    .await;
}

/// Reads from a duplex pipe; every write fails as on a reset connection.
struct WritesFail(tokio::io::DuplexStream);

impl tokio::io::AsyncRead for WritesFail {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for WritesFail {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        _: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::task::Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()))
    }
}

#[tokio::test]
async fn a_transport_that_fails_ends_the_stream_instead_of_failing_forever() {
    let (ours, mut peer) = tokio::io::duplex(4096);
    let mut ws = WebSocket::server(WritesFail(ours), Config::default(), Negotiated::default());
    // The peer pings (the pong cannot be written), then says "hi".
    let key = [1, 2, 3, 4];
    let mut input = vec![0x89, 0x80];
    input.extend_from_slice(&key);
    input.extend_from_slice(&[0x81, 0x82]);
    input.extend_from_slice(&key);
    input.extend(b"hi".iter().zip(key).map(|(b, k)| b ^ k));
    peer.write_all(&input).await.unwrap();
    let mut outcomes = Vec::new();
    for _ in 0..4 {
        match within(ws.recv()).await {
            Some(outcome) => outcomes.push(outcome.map_err(|e| e.to_string())),
            None => break,
        }
    }
    // The failed write is reported once, then the stream ends (the message parsed before it
    // may still be handed out).
    assert!(
        outcomes.len() < 4 && matches!(outcomes.first(), Some(Err(_))),
        "{outcomes:?}"
    );
    assert_eq!(
        outcomes.iter().filter(|o| o.is_err()).count(),
        1,
        "{outcomes:?}"
    );
    assert!(within(ws.recv()).await.is_none());
}

#[tokio::test]
async fn automatic_replies_leave_a_buffering_transport() {
    let (ours, theirs) = tokio::io::duplex(4096);
    // A transport that holds what it is given until flushed, as TLS may when the socket is
    // full.
    let mut server = WebSocket::server(
        tokio::io::BufWriter::new(ours),
        Config::default(),
        Negotiated::default(),
    );
    let serving = tokio::spawn(async move { while server.next().await.is_some() {} });
    let mut client = WebSocket::client(theirs, Config::default(), Negotiated::default());
    within(client.send(Message::Ping("x".into())))
        .await
        .unwrap();
    // Only the server's automatic pong can answer: the server application never sends.
    match within(client.recv()).await {
        Some(Ok(Message::Pong(payload))) => assert_eq!(&payload[..], b"x"),
        other => panic!("expected the pong, got {other:?}"),
    }
    within(client.close(None)).await.unwrap();
    while within(client.recv()).await.is_some() {}
    within(serving).await.unwrap();
}
