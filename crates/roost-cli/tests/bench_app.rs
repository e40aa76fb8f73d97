//! The `roost serve --app bench` binary as users run it: echo on any path, fan-out to the
//! other members of a room, and the backpressure flags.

#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use roost::{CloseCode, CloseFrame, Message, WebSocket};
use tokio::io::{AsyncRead, AsyncWrite};

mod common;

use common::{Client, Server, serve, within};

async fn open(server: &Server, path: &str) -> Client {
    let url = format!("ws://{}{path}", server.addr);
    within(roost::connect(&url)).await.unwrap().0
}

/// Waits for `ws`'s next message and checks it is `expected`.
async fn hears<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocket<S>, expected: &Message) {
    assert_eq!(&within(ws.recv()).await.unwrap().unwrap(), expected);
}

/// `newcomer` speaks and every member already in the room hears it: the server's side of
/// the newcomer has joined (its task joins before it reads a message), so from here on it
/// hears the room too.
async fn announce<S: AsyncRead + AsyncWrite + Unpin>(
    newcomer: &mut WebSocket<S>,
    members: &mut [&mut Client],
) {
    let hello = Message::text("joined");
    within(newcomer.send(hello.clone())).await.unwrap();
    for member in members {
        hears(member, &hello).await;
    }
}

/// Any path echoes with the message's own opcode; on /room/<name> a message reaches every
/// other member of that room, not its sender and not another room.
#[tokio::test]
async fn echoes_on_any_path_and_fans_out_to_the_other_members_of_a_room() {
    let server = serve(&["--app", "bench"]);
    for path in ["/", "/any/path"] {
        let mut ws = open(&server, path).await;
        for message in [Message::text("text"), Message::binary(&b"\x00\xff"[..])] {
            within(ws.send(message.clone())).await.unwrap();
            hears(&mut ws, &message).await;
        }
    }
    let mut members = vec![open(&server, "/room/a").await];
    for _ in 0..3 {
        let mut newcomer = open(&server, "/room/a").await;
        announce(&mut newcomer, &mut members.iter_mut().collect::<Vec<_>>()).await;
        members.push(newcomer);
    }
    let mut elsewhere = open(&server, "/room/b").await;
    within(elsewhere.send(Message::text("to room b")))
        .await
        .unwrap();
    let (sender, others) = members.split_first_mut().unwrap();
    within(sender.send(Message::text("to room a")))
        .await
        .unwrap();
    for member in others.iter_mut() {
        hears(member, &Message::text("to room a")).await;
    }
    // The sender heard neither its own message nor room b's: the next thing it gets is a
    // member's.
    within(others[0].send(Message::text("from a member")))
        .await
        .unwrap();
    hears(sender, &Message::text("from a member")).await;
}

/// Bytes sent to a room with one member that reads nothing until every other member has
/// them all: past what the server's socket send buffer (at most this host's tcp_wmem
/// maximum) and the slow member's small receive buffer hold, so the slow member's outbound
/// queue fills. Messages of 16 KiB.
fn flood_messages() -> usize {
    let wmem_max = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .ok()
        .and_then(|text| text.split_whitespace().nth(2)?.parse::<usize>().ok())
        .unwrap_or(4 << 20);
    (32 << 20).max(4 * wmem_max) / (16 << 10)
}

/// A member whose socket receives into a buffer of a few KiB, as a slow reader on a
/// distant network would.
async fn open_slow(server: &Server, path: &str) -> WebSocket<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = within(socket.connect(server.addr)).await.unwrap();
    let url = format!("ws://{}{path}", server.addr);
    let client = roost::ClientBuilder::new(&url).unwrap();
    within(client.handshake(tcp)).await.unwrap().0
}

/// Floods room `room` with `messages` past a member that does not read, then lets it read.
/// Returns the binary messages it got and how its connection ended (`None`: still open, it
/// heard the text sent after the flood).
async fn flood(server: &Server, room: &str, messages: usize) -> (usize, Option<CloseFrame>) {
    let path = format!("/room/{room}");
    let mut publisher = open(server, &path).await;
    let mut slow = open_slow(server, &path).await;
    announce(&mut slow, &mut [&mut publisher]).await;
    let mut witness = open(server, &path).await;
    announce(&mut witness, &mut [&mut publisher]).await;
    hears(&mut slow, &Message::text("joined")).await;
    let payload = Bytes::from(vec![7u8; 16 << 10]);
    // The publisher keeps at most four messages ahead of the reading member, whose socket
    // buffer takes that much: only the slow member's queue can fill.
    for _ in 0..messages / 4 {
        for _ in 0..4 {
            within(publisher.send(Message::Binary(payload.clone())))
                .await
                .unwrap();
        }
        for _ in 0..4 {
            match within(witness.recv()).await {
                Some(Ok(Message::Binary(_))) => {}
                other => panic!("the reading member got {other:?}"),
            }
        }
    }
    // The reading member has everything: the server has done what it does with the slow
    // member's share.
    let reader = tokio::spawn(async move {
        let mut binaries = 0;
        loop {
            match within(slow.recv()).await {
                Some(Ok(Message::Binary(_))) => binaries += 1,
                Some(Ok(Message::Text(_))) => return (binaries, None),
                Some(Ok(Message::Close(frame))) => return (binaries, frame),
                Some(Ok(_)) => {}
                other => panic!("the slow member got {other:?}"),
            }
        }
    });
    // A text after the flood reaches the slow member once its queue has room again: sent
    // until it has been heard or the connection has ended.
    for _ in 0..100 {
        if reader.is_finished() {
            break;
        }
        let _ = publisher.send(Message::text("after the flood")).await;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    within(reader).await.unwrap()
}

/// `roost serve --app bench` without compression (the flood must be as large on the wire),
/// with `--max-outbound BYTES --backpressure POLICY`.
fn serve_limited(max_outbound: usize, policy: &str) -> Server {
    let max_outbound = max_outbound.to_string();
    serve(&[
        "--app",
        "bench",
        "--no-compression",
        "--max-outbound",
        &max_outbound,
        "--backpressure",
        policy,
    ])
}

/// Past `--max-outbound` a slow member meets `--backpressure`: closed with the code chosen,
/// or left open with the messages that did not fit dropped; below it, it gets everything.
#[tokio::test]
async fn a_member_that_does_not_read_meets_the_backpressure_chosen() {
    let messages = flood_messages();
    let server = serve_limited(64 << 10, "close-1008");
    let (received, close) = flood(&server, "closing", messages).await;
    let close = close.unwrap_or_else(|| panic!("left open after {received} of {messages}"));
    assert_eq!(close.code, CloseCode::POLICY_VIOLATION);
    assert!(received < messages, "{received} of {messages} messages");

    let server = serve_limited(64 << 10, "drop");
    let (received, close) = flood(&server, "dropping", messages).await;
    assert_eq!(close, None, "left open");
    assert!(
        received < messages,
        "{received} of {messages} messages: some were dropped"
    );

    // A queue that takes the whole flood (the default 1 MiB would not): nothing is lost.
    let server = serve_limited(2 * messages * (16 << 10), "close-1008");
    assert_eq!(flood(&server, "roomy", messages).await, (messages, None));
}
