//! Rooms and broadcast: keys, membership, encode-once delivery, slow readers.

use std::time::Duration;

use roost::{CloseCode, Message};
use roost_server::{
    App, BackpressurePolicy, Data, Disconnect, Handler, Room, ServerConfig, Ws, WsRoute,
};
use tokio::io::AsyncWriteExt;

use super::{connect, eventually, next_text, sleeping_reader, start, until_closed, within};

/// `who` answers the room's size; `flood N` broadcasts N messages of 64 KiB and answers the
/// totals; `reply then broadcast X` answers and then broadcasts; anything else is broadcast
/// as is.
struct Broadcaster;

impl Handler for Broadcaster {
    async fn on_message(&self, ws: &Ws, data: Data, room: &Room) -> Result<(), Disconnect> {
        let text = data.as_text().unwrap_or_default().to_owned();
        if text == "who" {
            ws.send_text(format!("{} in {}", room.websockets().len(), room.key()));
        } else if let Some(count) = text.strip_prefix("flood ") {
            let count: usize = count.parse().unwrap();
            let payload = bytes::Bytes::from(vec![7u8; 64 << 10]);
            let started = std::time::Instant::now();
            let mut total = roost_server::BroadcastReport::default();
            for _ in 0..count {
                let report = room.broadcast_except(ws, payload.clone());
                total.sent += report.sent;
                total.queued += report.queued;
                total.dropped += report.dropped;
                total.closed += report.closed;
            }
            let took = started.elapsed().as_millis();
            ws.send_text(format!(
                "sent {} queued {} dropped {} closed {} ms {took}",
                total.sent, total.queued, total.dropped, total.closed
            ));
        } else if let Some(rest) = text.strip_prefix("reply then broadcast ") {
            ws.send_text(format!("reply {rest}"));
            room.broadcast(format!("broadcast {rest}"));
        } else {
            room.broadcast(data);
        }
        Ok(())
    }
}

#[tokio::test]
async fn rooms_keyed_by_a_path_parameter_only_hear_their_own() {
    let app = App::new()
        .route(
            "/chat/:room",
            WsRoute::new(Broadcaster).room_from_path("room"),
        )
        .unwrap();
    let (addr, _) = start(app, ServerConfig::default()).await;
    let mut a1 = connect(addr, "/chat/a").await;
    let mut a2 = connect(addr, "/chat/a?x=1").await;
    let mut b1 = connect(addr, "/chat/b").await;
    within(a1.send(Message::text("who"))).await.unwrap();
    assert_eq!(next_text(&mut a1).await, "2 in a");
    within(a2.send(Message::text("hello a"))).await.unwrap();
    assert_eq!(next_text(&mut a1).await, "hello a");
    assert_eq!(
        next_text(&mut a2).await,
        "hello a",
        "the sender is a member too"
    );
    within(b1.send(Message::text("who"))).await.unwrap();
    assert_eq!(next_text(&mut b1).await, "1 in b", "b heard nothing from a");
}

#[tokio::test]
async fn members_leave_in_any_order_and_broadcasts_reach_those_left() {
    let app = App::new().ws("/r", Broadcaster).unwrap();
    let (addr, _) = start(app, ServerConfig::default()).await;
    let mut members = Vec::new();
    for _ in 0..6 {
        members.push(connect(addr, "/r").await);
    }
    // Three leave from different places of the member list; the members moved into their
    // slots must still be found when they leave, and still hear broadcasts.
    for gone in [5, 2, 0] {
        let mut ws = members.remove(gone);
        within(ws.close(None)).await.unwrap();
        until_closed(&mut ws).await;
    }
    let count = members.len();
    // The server leaves the room as it finishes each connection: ask until it has.
    within(members[0].send(Message::text("who"))).await.unwrap();
    let mut answer = next_text(&mut members[0]).await;
    for _ in 0..20 {
        if answer == format!("{count} in /r") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        within(members[0].send(Message::text("who"))).await.unwrap();
        answer = next_text(&mut members[0]).await;
    }
    assert_eq!(answer, format!("{count} in /r"));
    within(members[1].send(Message::text("to all")))
        .await
        .unwrap();
    for ws in &mut members {
        assert_eq!(next_text(ws).await, "to all");
    }
}

#[tokio::test]
async fn the_default_room_key_is_the_path_without_the_query() {
    let (addr, _) = start(
        App::new().ws("/lobby", Broadcaster).unwrap(),
        ServerConfig::default(),
    )
    .await;
    let mut one = connect(addr, "/lobby?me=1").await;
    let _two = connect(addr, "/lobby?me=2").await;
    within(one.send(Message::text("who"))).await.unwrap();
    assert_eq!(next_text(&mut one).await, "2 in /lobby");
}

async fn flood(policy: BackpressurePolicy) -> (String, roost_server::ServerHandle) {
    let config = ServerConfig {
        max_outbound: 256 << 10,
        backpressure: policy,
        ..ServerConfig::default()
    };
    let (addr, handle) = start(App::new().ws("/room", Broadcaster).unwrap(), config).await;
    let _slow = sleeping_reader(addr, "/room").await;
    let mut fast = connect(addr, "/room").await;
    let mut sender = connect(addr, "/room").await;
    eventually("three members", || handle.metrics().open_connections() == 3).await;
    within(sender.send(Message::text("flood 400")))
        .await
        .unwrap();
    // The fast reader gets every message.
    let mut received = 0;
    while received < 400 {
        match within(fast.recv()).await {
            Some(Ok(Message::Binary(data))) => {
                assert_eq!(data.len(), 64 << 10);
                received += 1;
            }
            other => panic!("fast reader got {other:?} after {received} messages"),
        }
    }
    (next_text(&mut sender).await, handle)
}

fn field(report: &str, name: &str) -> usize {
    let mut words = report.split(' ');
    while let Some(word) = words.next() {
        if word == name {
            return words.next().unwrap().parse().unwrap();
        }
    }
    panic!("{name} missing in {report}")
}

#[tokio::test]
async fn a_slow_reader_is_closed_and_slows_no_one() {
    let (report, handle) = flood(BackpressurePolicy::Close(CloseCode::TRY_AGAIN_LATER)).await;
    // 400 deliveries to the fast reader, and to the slow one until the policy closed it.
    assert!(field(&report, "closed") > 0, "{report}");
    assert_eq!(
        field(&report, "sent")
            + field(&report, "queued")
            + field(&report, "dropped")
            + field(&report, "closed"),
        800,
        "{report}"
    );
    assert!(
        handle
            .metrics()
            .render()
            .contains("roost_backpressure_closes_total 1\n"),
        "{report}"
    );
}

#[tokio::test]
async fn with_the_drop_policy_the_slow_reader_loses_messages_not_the_others() {
    let (report, handle) = flood(BackpressurePolicy::Drop).await;
    assert!(field(&report, "dropped") > 0, "{report}");
    assert_eq!(field(&report, "closed"), 0, "{report}");
    assert!(handle.metrics().dropped() > 0);
}

/// A burst read in one batch is broadcast with one write per member at the batch's end:
/// every member, the sender included, still gets every message, in order.
#[tokio::test]
async fn a_burst_of_broadcasts_reaches_every_member_in_order() {
    let (addr, handle) = start(
        App::new().ws("/room", Broadcaster).unwrap(),
        ServerConfig::default(),
    )
    .await;
    let mut members = Vec::new();
    for _ in 0..3 {
        members.push(connect(addr, "/room").await);
    }
    let mut sender = connect(addr, "/room").await;
    eventually("four members", || handle.metrics().open_connections() == 4).await;
    for i in 0..300 {
        sender.feed(&Message::text(format!("burst {i}"))).unwrap();
    }
    within(sender.flush()).await.unwrap();
    members.push(sender);
    // Deferred writes leave at the batch's end, not whenever a member's task next wakes (its
    // ping timer, seconds later): the bound is far above the milliseconds this takes.
    let everyone = async {
        for member in &mut members {
            for i in 0..300 {
                assert_eq!(next_text(member).await, format!("burst {i}"));
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(3), everyone)
        .await
        .expect("the burst reached every member within the bound");
}

/// The text sender `from` sends as its message `n`: a header, then a body of one letter
/// that depends on both, 1 to 24 KiB long, so that writes often end in the middle of a frame.
fn numbered(from: usize, n: usize) -> String {
    let letter = char::from(b'a' + ((from * 7 + n) % 26) as u8);
    let len = 1024 + (from * 5_003 + n * 7_919) % (23 << 10);
    format!("{from} {n} {}", letter.to_string().repeat(len))
}

/// Several members broadcast at once to a member that reads slowly, so that its queue is
/// written both by its own task and by the broadcasters' batch ends, on other threads. Its
/// stream stays whole: every message arrives once, intact, in each sender's order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_member_written_from_several_threads_gets_every_message_whole() {
    const SENDERS: usize = 3;
    const EACH: usize = 300;
    let config = ServerConfig {
        // Nothing is dropped or closed here: every byte queued must arrive.
        max_outbound: 256 << 20,
        ..ServerConfig::default()
    };
    let (addr, handle) = start(App::new().ws("/room", Broadcaster).unwrap(), config).await;
    let mut reader = connect(addr, "/room").await;
    let mut senders = Vec::new();
    for _ in 0..SENDERS {
        senders.push(connect(addr, "/room").await);
    }
    eventually("every member", || {
        handle.metrics().open_connections() == SENDERS as i64 + 1
    })
    .await;
    let mut tasks = Vec::new();
    for (from, mut sender) in senders.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            for n in 0..EACH {
                sender.feed(&Message::text(numbered(from, n))).unwrap();
                if n % 20 == 19 {
                    within(sender.flush()).await.unwrap();
                }
            }
            within(sender.flush()).await.unwrap();
            // Reads its share too (everyone's messages come back to every member).
            for _ in 0..SENDERS * EACH {
                next_text(&mut sender).await;
            }
        }));
    }
    let mut next = [0usize; SENDERS];
    for received in 0..SENDERS * EACH {
        if received % 8 == 0 {
            // Slow: the server's writes to this member keep finding its socket full.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let text = next_text(&mut reader).await;
        let mut parts = text.splitn(3, ' ');
        let from: usize = parts.next().unwrap().parse().unwrap();
        let n: usize = parts.next().unwrap().parse().unwrap();
        assert_eq!(
            n, next[from],
            "sender {from}'s messages out of order or lost"
        );
        assert!(
            text == numbered(from, n),
            "message {n} of sender {from} arrived damaged ({} bytes)",
            text.len()
        );
        next[from] += 1;
    }
    for task in tasks {
        within(task).await.unwrap();
    }
}

#[tokio::test]
async fn broadcasts_reach_every_member_compressed_or_not() {
    let (addr, _) = start(
        App::new().ws("/room", Broadcaster).unwrap(),
        ServerConfig::default(),
    )
    .await;
    let mut compressed = connect(addr, "/room").await;
    assert!(compressed.negotiated().deflate.is_some());
    let plain_config = roost::Config::builder()
        .deflate(roost::DeflateConfig::disabled())
        .build()
        .unwrap();
    let (mut plain, _) = within(
        roost::ClientBuilder::new(&format!("ws://{addr}/room"))
            .unwrap()
            .config(plain_config)
            .connect(),
    )
    .await
    .unwrap();
    assert!(plain.negotiated().deflate.is_none());
    let text = "a message long enough to be worth compressing, repeated. ".repeat(20);
    within(plain.send(Message::text(text.as_str())))
        .await
        .unwrap();
    assert_eq!(next_text(&mut compressed).await, text);
    assert_eq!(next_text(&mut plain).await, text);
    within(compressed.close(None)).await.unwrap();
    until_closed(&mut compressed).await;
    tokio::time::sleep(Duration::from_millis(10)).await;
}

/// Regression: a full queue met while the connection's own task held its protocol core (here
/// through auto-responses to a client that never reads) deadlocked the connection and, with
/// it, the worker thread. Now the policy closes that connection and everyone else is served.
#[tokio::test]
async fn a_flood_of_auto_responses_to_a_reader_that_never_reads_closes_only_it() {
    let config = ServerConfig {
        max_outbound: 64 << 10,
        auto_response: Some(("heartbeat".to_owned(), "alive".to_owned())),
        ..ServerConfig::default()
    };
    let (addr, handle) = start(App::new().ws("/room", Broadcaster).unwrap(), config).await;
    let mut flooder = sleeping_reader(addr, "/room").await;
    let frame: Vec<u8> = {
        let key = [1u8, 2, 3, 4];
        let mut frame = vec![0x81, 0x80 | 9, key[0], key[1], key[2], key[3]];
        frame.extend(b"heartbeat".iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        frame
    };
    let burst: Vec<u8> = frame
        .iter()
        .copied()
        .cycle()
        .take(frame.len() * 20_000)
        .collect();
    // Bounded: at most 400 bursts (about 120 MB), stopping once the server closes.
    let writer = tokio::spawn(async move {
        for _ in 0..400 {
            if flooder.write_all(&burst).await.is_err() {
                break;
            }
        }
    });
    eventually("the flooder was closed by the policy", || {
        handle
            .metrics()
            .render()
            .contains("roost_backpressure_closes_total 1\n")
    })
    .await;
    let mut fresh = connect(addr, "/room").await;
    within(fresh.send(Message::text("who"))).await.unwrap();
    assert!(next_text(&mut fresh).await.ends_with("in /room"));
    writer.abort();
}

/// A connection's reply and the broadcast it makes next reach it in that order, even when both
/// are held for the end of its batch.
#[tokio::test]
async fn a_reply_and_then_a_broadcast_arrive_in_the_order_they_were_made() {
    let (addr, _handle) = start(
        App::new().ws("/order", Broadcaster).unwrap(),
        ServerConfig::default(),
    )
    .await;
    let mut sender = connect(addr, "/order").await;
    let mut other = connect(addr, "/order").await;
    // One batch of several messages, so the replies are held for its end.
    for n in 0..3 {
        sender
            .feed(&Message::text(format!("reply then broadcast {n}")))
            .unwrap();
    }
    within(sender.flush()).await.unwrap();
    for n in 0..3 {
        assert_eq!(next_text(&mut sender).await, format!("reply {n}"));
        assert_eq!(next_text(&mut sender).await, format!("broadcast {n}"));
        assert_eq!(next_text(&mut other).await, format!("broadcast {n}"));
    }
}
