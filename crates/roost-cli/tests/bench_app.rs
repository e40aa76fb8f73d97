//! The `roost serve --app bench` binary as users run it: echo on any path, fan-out to the
//! other members of a room, and the backpressure flags.

#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use roost::{CloseCode, CloseFrame, Message};

mod common;

use common::{Client, Server, serve, within};

async fn open(server: &Server, path: &str) -> Client {
    let url = format!("ws://{}{path}", server.addr);
    within(roost::connect(&url)).await.unwrap().0
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
            assert_eq!(within(ws.recv()).await.unwrap().unwrap(), message);
        }
    }
    let mut sender = open(&server, "/room/a").await;
    let mut members = Vec::new();
    for _ in 0..3 {
        members.push(open(&server, "/room/a").await);
    }
    let mut elsewhere = open(&server, "/room/b").await;
    // Joining completes on the server after the handshake: a round trip through the room
    // shows every member is in before the message that counts.
    within(sender.send(Message::text("to room a")))
        .await
        .unwrap();
    for member in &mut members {
        assert_eq!(
            within(member.recv()).await.unwrap().unwrap(),
            Message::text("to room a")
        );
    }
    within(elsewhere.send(Message::text("to room b")))
        .await
        .unwrap();
    within(sender.send(Message::text("second"))).await.unwrap();
    for member in &mut members {
        assert_eq!(
            within(member.recv()).await.unwrap().unwrap(),
            Message::text("second")
        );
    }
    // The sender heard neither its own messages nor room b's: the next thing it gets is a
    // member's message.
    within(members[0].send(Message::text("from a member")))
        .await
        .unwrap();
    assert_eq!(
        within(sender.recv()).await.unwrap().unwrap(),
        Message::text("from a member")
    );
}

/// Messages of 16 KiB sent to a room with one member that reads nothing until every other
/// member has them all: 32 MiB, past what the server's socket buffer (4 MiB at most here)
/// and the slow member's small receive buffer hold, so the slow member's outbound queue fills.
const FLOOD: usize = 2048;

/// A member whose socket receives into a buffer of a few KiB, as a slow reader on a
/// distant network would.
async fn open_slow(server: &Server, path: &str) -> roost::WebSocket<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = within(socket.connect(server.addr)).await.unwrap();
    let url = format!("ws://{}{path}", server.addr);
    let client = roost::ClientBuilder::new(&url).unwrap();
    within(client.handshake(tcp)).await.unwrap().0
}

/// Floods room `room` past a member that does not read, then lets it read. Returns the
/// binary messages it got and how its connection ended (`None`: still open, it heard the
/// text sent after the flood).
async fn flood(server: &Server, room: &str) -> (usize, Option<CloseFrame>) {
    let path = format!("/room/{room}");
    let mut slow = open_slow(server, &path).await;
    let mut witness = open(server, &path).await;
    let mut publisher = open(server, &path).await;
    // Every member is in once the others hear it.
    within(publisher.send(Message::text("here"))).await.unwrap();
    let here = Message::text("here");
    assert_eq!(within(slow.recv()).await.unwrap().unwrap(), here);
    assert_eq!(within(witness.recv()).await.unwrap().unwrap(), here);
    let payload = Bytes::from(vec![7u8; 16 << 10]);
    // The publisher keeps at most four messages ahead of the reading member, whose socket
    // buffer takes that much: only the slow member's queue can fill.
    for _ in 0..FLOOD / 4 {
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

/// Past `--max-outbound` a slow member meets `--backpressure`: closed with the code chosen,
/// or left open with the messages that did not fit dropped; below it, it gets everything.
#[tokio::test]
async fn a_member_that_does_not_read_meets_the_backpressure_chosen() {
    let server = serve(&[
        "--app",
        "bench",
        "--no-compression", // the flood must be 32 MiB on the wire too
        "--max-outbound",
        "65536",
        "--backpressure",
        "close-1008",
    ]);
    let (received, close) = flood(&server, "closing").await;
    let close = close.unwrap_or_else(|| panic!("left open after {received} of {FLOOD}"));
    assert_eq!(close.code, CloseCode::POLICY_VIOLATION);
    assert!(received < FLOOD, "{received} of {FLOOD} messages");

    let server = serve(&[
        "--app",
        "bench",
        "--no-compression", // the flood must be 32 MiB on the wire too
        "--max-outbound",
        "65536",
        "--backpressure",
        "drop",
    ]);
    let (received, close) = flood(&server, "dropping").await;
    assert_eq!(close, None, "left open");
    assert!(
        received < FLOOD,
        "{received} of {FLOOD} messages: some were dropped"
    );

    // A queue that takes the whole flood (the default 1 MiB would not): nothing is lost.
    let server = serve(&[
        "--app",
        "bench",
        "--no-compression",
        "--max-outbound",
        "67108864",
        "--backpressure",
        "close-1008",
    ]);
    assert_eq!(flood(&server, "roomy").await, (FLOOD, None));
}
