//! Hibernation states and the graceful shutdown.

use std::time::Duration;

use bytes::Bytes;
use roost::{CloseCode, Message};
use roost_server::{App, ConnState, Data, Disconnect, Handler, Room, ServerConfig, Ws};
use tokio::io::AsyncWriteExt as _;

use super::{Client, connect, eventually, next_text, sleeping_reader, start, until_closed, within};

struct Named;

impl Handler for Named {
    async fn on_open(&self, ws: &Ws, _url: &http::Uri) -> Result<(), Disconnect> {
        if let Some(name) = ws.deserialize_attachment::<String>().unwrap() {
            ws.send_text(format!("welcome back {name}"));
        }
        Ok(())
    }

    async fn on_message(&self, ws: &Ws, data: Data, _room: &Room) -> Result<(), Disconnect> {
        let name = data.as_text().unwrap().to_owned();
        ws.serialize_attachment(&name).await.unwrap();
        ws.send_text(format!("resume {}", ws.resume_token()));
        Ok(())
    }
}

/// Starts `handler` on `path`, its connections dormant (and hibernating) after `after`.
async fn start_dozing(
    path: &str,
    handler: impl Handler,
    after: Duration,
) -> (std::net::SocketAddr, roost_server::ServerHandle) {
    let config = ServerConfig {
        dormant_after: after,
        ..ServerConfig::default()
    };
    start(App::new().ws(path, handler).unwrap(), config).await
}

#[tokio::test]
async fn idle_connections_hibernate_and_wake_on_the_next_frame() {
    let (addr, handle) = start_dozing("/n", Renewing, Duration::from_millis(100)).await;
    let mut ws = connect(addr, "/n").await;
    let _other = connect(addr, "/n").await;
    let metrics = handle.metrics();
    eventually("both dormant, with no task", || {
        metrics.connections(ConnState::Dormant) == 2 && metrics.hibernating() == 2
    })
    .await;
    assert_eq!(metrics.connections(ConnState::Parked), 0);
    within(ws.send(Message::text("sleeper"))).await.unwrap();
    let token = next_text(&mut ws).await;
    assert!(token.starts_with("resume "));
    eventually("one woke up", || {
        metrics.connections(ConnState::Dormant) == 1
    })
    .await;
    eventually("and dozed off again", || {
        metrics.connections(ConnState::Dormant) == 2 && metrics.hibernating() == 2
    })
    .await;
    // Hibernating again, it wakes again on the next frame; its resume token, signed on
    // demand, is the same (nothing was written since).
    within(ws.send(Message::text("token?"))).await.unwrap();
    assert_eq!(next_text(&mut ws).await, token);
}

/// Sends each message to the rest of the room.
struct Shout;

impl Handler for Shout {
    async fn on_message(&self, ws: &Ws, data: Data, room: &Room) -> Result<(), Disconnect> {
        room.broadcast_except(ws, data);
        Ok(())
    }
}

/// Two connections to `/r` run by `handler`, both hibernating; then the talker (second)
/// says "psst", which the sleeper (first) must hear.
async fn psst_to_a_sleeper(handler: impl Handler) -> (Client, Client, roost_server::ServerHandle) {
    let (addr, handle) = start_dozing("/r", handler, Duration::from_millis(50)).await;
    let mut sleeper = connect(addr, "/r").await;
    let mut talker = connect(addr, "/r").await;
    let metrics = handle.metrics();
    eventually("both hibernating", || metrics.hibernating() == 2).await;
    within(talker.send(Message::text("psst"))).await.unwrap();
    assert_eq!(next_text(&mut sleeper).await, "psst");
    (sleeper, talker, handle)
}

/// Sends a ping with `payload` and expects its pong next.
async fn ping_pong(ws: &mut Client, payload: &'static [u8]) {
    within(ws.send(Message::Ping(Bytes::from_static(payload))))
        .await
        .unwrap();
    match within(ws.recv()).await {
        Some(Ok(Message::Pong(echoed))) => assert_eq!(&echoed[..], payload),
        other => panic!("expected the pong, got {other:?}"),
    }
}

#[tokio::test]
async fn broadcasts_reach_a_hibernating_member_without_waking_it() {
    // The broadcast is written from the sleeping socket, out of the runtime, by the talker's
    // task.
    let (mut sleeper, mut talker, handle) = psst_to_a_sleeper(Shout).await;
    let metrics = handle.metrics();
    assert_eq!(metrics.connections(ConnState::Dormant), 1);
    // The sleeper's reply wakes it from the sleepers' poll, and reaches the talker.
    within(sleeper.send(Message::text("hi"))).await.unwrap();
    assert_eq!(next_text(&mut talker).await, "hi");
    eventually("both hibernating again", || metrics.hibernating() == 2).await;
}

#[tokio::test]
async fn a_hibernating_connection_answers_pings_pongs_and_heartbeats_without_waking() {
    let config = ServerConfig {
        dormant_after: Duration::from_millis(50),
        ping_interval: Duration::from_millis(300),
        auto_response: Some(("heartbeat".to_owned(), "alive".to_owned())),
        ..ServerConfig::default()
    };
    let (addr, handle) = start(App::new().ws("/n", Named).unwrap(), config).await;
    let mut ws = connect(addr, "/n").await;
    let metrics = handle.metrics();
    eventually("hibernating", || metrics.hibernating() == 1).await;
    let wakeups = metrics.wakeups();
    // Our ping is answered from the sleepers' poll.
    ping_pong(&mut ws, b"there?").await;
    // The server's keepalive ping goes out while the connection sleeps; reading it makes
    // our client answer with a pong, which the server takes without waking either.
    match within(ws.recv()).await {
        Some(Ok(Message::Ping(_))) => {}
        other => panic!("expected the keepalive ping, got {other:?}"),
    }
    // The heartbeat goes after that pong: once it is answered, the pong was heard.
    within(ws.send(Message::text("heartbeat"))).await.unwrap();
    assert_eq!(next_text(&mut ws).await, "alive");
    assert_eq!(metrics.auto_response_hits(), 1);
    assert_eq!(metrics.wakeups(), wakeups, "nothing so far needed a task");
    assert_eq!(metrics.hibernating(), 1);
    // A message does wake it, and it answers.
    within(ws.send(Message::text("ada"))).await.unwrap();
    assert!(next_text(&mut ws).await.starts_with("resume "));
    assert!(metrics.wakeups() > wakeups);
}

/// The server's `roost_bytes_out_total`: bytes written or queued for writing.
fn bytes_out(handle: &roost_server::ServerHandle) -> u64 {
    let text = handle.metrics().render();
    let line = text
        .lines()
        .find(|line| line.starts_with("roost_bytes_out_total "))
        .expect("the bytes-out counter");
    line["roost_bytes_out_total ".len()..].parse().unwrap()
}

/// The most a TCP socket's send buffer grows to (Linux: the third field of `tcp_wmem`).
fn kernel_send_buffer_max() -> u64 {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .ok()
        .and_then(|text| text.split_whitespace().nth(2)?.parse().ok())
        .unwrap_or(4 << 20)
}

#[tokio::test]
async fn a_peer_that_asks_a_hibernating_connection_for_replies_without_reading_gets_no_more_than_the_limit()
 {
    let config = ServerConfig {
        dormant_after: Duration::from_millis(50),
        auto_response: Some(("hb".to_owned(), "a".repeat(8 << 10))),
        ..ServerConfig::default()
    };
    let max_outbound = config.max_outbound as u64;
    let (addr, handle) = start(App::new().ws("/n", Named).unwrap(), config).await;
    let mut greedy = sleeping_reader(addr, "/n").await;
    let metrics = handle.metrics();
    eventually("hibernating", || metrics.hibernating() == 1).await;
    let before = bytes_out(&handle);
    // 4,000 requests in one write: 32 MiB of replies asked for, none read.
    let request = [0x81, 0x82, 0, 0, 0, 0, b'h', b'b'];
    within(greedy.write_all(&request.repeat(4000)))
        .await
        .unwrap();
    eventually("woken", || metrics.hibernating() == 0).await;
    // Whatever the server does then (answering until its queue is full, closing with 1013),
    // it makes no more replies than its queue holds, twice over, and the kernel's send
    // buffer for the socket takes.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let made = bytes_out(&handle) - before;
    let bound = 2 * max_outbound + kernel_send_buffer_max() + (64 << 10);
    assert!(
        made <= bound,
        "{made} bytes of replies made for a peer that reads none (at most {bound})"
    );
    // And everyone else is served.
    let mut other = connect(addr, "/n").await;
    within(other.send(Message::text("hb"))).await.unwrap();
    assert_eq!(next_text(&mut other).await.len(), 8 << 10);
}

/// Sends each message to every other member one by one, with `Ws::send`.
struct Relay;

impl Handler for Relay {
    async fn on_message(&self, ws: &Ws, data: Data, room: &Room) -> Result<(), Disconnect> {
        for other in room.websockets().iter().filter(|other| *other != ws) {
            other.send(data.clone());
        }
        Ok(())
    }
}

#[tokio::test]
async fn a_send_to_a_hibernating_connection_leaves_its_core_idle() {
    let (mut sleeper, _talker, handle) = psst_to_a_sleeper(Relay).await;
    let metrics = handle.metrics();
    // Had the send made the sleeper's core whole, its poll could not answer the ping itself
    // and would wake it.
    let wakeups = metrics.wakeups();
    ping_pong(&mut sleeper, b"idle?").await;
    assert_eq!(metrics.wakeups(), wakeups);
}

#[tokio::test]
async fn shutdown_and_closes_from_elsewhere_reach_hibernating_connections() {
    let (addr, handle) = start_dozing("/n", Named, Duration::from_millis(30)).await;
    let mut first = connect(addr, "/n").await;
    let mut second = connect(addr, "/n").await;
    let metrics = handle.metrics();
    eventually("both hibernating", || metrics.hibernating() == 2).await;
    // A close from another connection's handler: `second` resumes `first`'s session, which
    // closes `first` with 4001 while it sleeps.
    within(first.send(Message::text("ada"))).await.unwrap();
    let token = next_text(&mut first)
        .await
        .strip_prefix("resume ")
        .unwrap()
        .to_owned();
    eventually("hibernating again", || metrics.hibernating() == 2).await;
    let mut resumed = connect(addr, &format!("/n?resume={token}")).await;
    assert_eq!(next_text(&mut resumed).await, "welcome back ada");
    let close = until_closed(&mut first).await.unwrap();
    assert_eq!(close.code, CloseCode(4001));
    eventually("the others hibernating", || metrics.hibernating() == 2).await;
    handle.shutdown();
    for ws in [&mut second, &mut resumed] {
        let close = until_closed(ws).await.unwrap();
        assert_eq!(close.code, CloseCode::GOING_AWAY);
    }
}

#[tokio::test]
async fn shutdown_closes_with_1001_keeps_attachments_and_resume_works_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig {
        durable_dir: Some(dir.path().to_owned()),
        ..ServerConfig::default()
    };
    let server = App::new().ws("/n", Named).unwrap().config(config.clone());
    let server = server.bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let (addr, handle) = (server.local_addr().unwrap(), server.handle());
    let running = tokio::spawn(server.run_until(std::future::pending()));
    let mut ws = connect(addr, "/n").await;
    within(ws.send(Message::text("ada"))).await.unwrap();
    let token = next_text(&mut ws)
        .await
        .strip_prefix("resume ")
        .unwrap()
        .to_owned();
    handle.shutdown();
    let close = until_closed(&mut ws).await.unwrap();
    assert_eq!(close.code, CloseCode::GOING_AWAY);
    let files: Vec<_> = std::fs::read_dir(dir.path().join("ws"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.ends_with(".att"))
        .collect();
    assert_eq!(files.len(), 1, "the attachment stays on disk: {files:?}");
    // The server has stopped (as a process would exit), releasing the directory.
    within(running).await.unwrap().unwrap();
    drop(handle);
    // A new server on the same directory resumes the connection.
    let (addr, _) = start(App::new().ws("/n", Named).unwrap(), config).await;
    let mut ws = connect(addr, &format!("/n?resume={token}")).await;
    assert_eq!(next_text(&mut ws).await, "welcome back ada");
    let error = within(roost::connect(&format!("ws://{addr}/n?resume={token}")))
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("401"),
        "a token works once: {error}"
    );
}

#[tokio::test]
async fn a_normal_close_ends_the_session_but_going_away_keeps_it() {
    let (addr, _) = start(App::new().ws("/n", Named).unwrap(), ServerConfig::default()).await;
    for (code, resumable) in [(CloseCode::GOING_AWAY, true), (CloseCode::NORMAL, false)] {
        let mut ws = connect(addr, "/n").await;
        within(ws.send(Message::text("tab"))).await.unwrap();
        let token = next_text(&mut ws)
            .await
            .strip_prefix("resume ")
            .unwrap()
            .to_owned();
        within(ws.close(Some(roost::CloseFrame::new(code, ""))))
            .await
            .unwrap();
        until_closed(&mut ws).await;
        let resumed = within(roost::connect(&format!("ws://{addr}/n?resume={token}"))).await;
        match resumed {
            Ok((mut ws, _)) => {
                assert!(resumable, "a session closed with {code} must not resume");
                assert_eq!(next_text(&mut ws).await, "welcome back tab");
            }
            Err(error) => {
                assert!(
                    !resumable,
                    "a session closed with {code} should resume: {error}"
                );
                assert!(error.to_string().contains("410"), "{error}");
            }
        }
    }
}

#[derive(Default)]
struct Closes(std::sync::Mutex<Vec<u16>>);

struct Watcher(std::sync::Arc<Closes>);

impl Handler for Watcher {
    async fn on_message(&self, _ws: &Ws, _data: Data, _room: &Room) -> Result<(), Disconnect> {
        Ok(())
    }

    async fn on_close(&self, _ws: &Ws, code: CloseCode, _reason: &str) {
        self.0.0.lock().unwrap().push(code.0);
    }
}

#[tokio::test]
async fn pings_keep_a_live_peer_and_the_idle_timeout_drops_a_dead_one() {
    pings_and_the_idle_timeout(Duration::from_secs(10)).await;
}

/// The same, with both connections hibernating between pings: the server's sweeper pings
/// them and drops the dead one.
#[tokio::test]
async fn hibernating_connections_are_pinged_and_dropped_when_dead() {
    pings_and_the_idle_timeout(Duration::from_millis(30)).await;
}

async fn pings_and_the_idle_timeout(dormant_after: Duration) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let closes = std::sync::Arc::new(Closes::default());
    let config = ServerConfig {
        ping_interval: Duration::from_millis(100),
        idle_timeout: Duration::from_millis(400),
        dormant_after,
        ..ServerConfig::default()
    };
    let (addr, _) = start(
        App::new().ws("/w", Watcher(closes.clone())).unwrap(),
        config,
    )
    .await;
    // A live client: reading answers the server's pings automatically.
    let mut live = connect(addr, "/w").await;
    let reader = tokio::spawn(async move {
        let mut pings = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(900);
        while let Ok(Some(Ok(message))) = tokio::time::timeout_at(deadline, live.recv()).await {
            if matches!(message, Message::Ping(_)) {
                pings += 1;
            }
        }
        (pings, live)
    });
    // A dead one: completes the handshake, then never sends anything again.
    let mut dead = tokio::net::TcpStream::connect(addr).await.unwrap();
    dead.write_all(
        b"GET /w HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = [0u8; 256];
    let _ = within(dead.read(&mut buf)).await.unwrap();
    eventually("the dead peer was dropped with 1006", || {
        closes.0.lock().unwrap().contains(&1006)
    })
    .await;
    // What it was sent before the drop: the keepalive pings, then a close frame with 1001.
    let mut sent = Vec::new();
    within(dead.read_to_end(&mut sent)).await.unwrap();
    let mut frames = Vec::new();
    let mut rest = &sent[..];
    while let [head, len, tail @ ..] = rest {
        let len = usize::from(*len);
        assert!(
            len < 126 && tail.len() >= len,
            "a short unmasked frame: {sent:?}"
        );
        frames.push((head & 0x0f, tail[..len].to_vec()));
        rest = &tail[len..];
    }
    let last = frames.last().expect("frames before the drop");
    assert_eq!(last.0, 0x8, "the last frame is a close: {frames:?}");
    assert_eq!(&last.1[..2], &1001u16.to_be_bytes(), "{frames:?}");
    assert_eq!(&last.1[2..], b"idle timeout");
    let (pings, mut live) = within(reader).await.unwrap();
    assert!(pings >= 2, "the live client was pinged ({pings} pings)");
    within(live.send(Message::text("still connected")))
        .await
        .unwrap();
    assert_eq!(
        closes.0.lock().unwrap().len(),
        1,
        "only the dead peer was dropped"
    );
}

struct Adopter;

impl Handler for Adopter {
    async fn on_message(&self, ws: &Ws, data: Data, _room: &Room) -> Result<(), Disconnect> {
        let text = data.as_text().unwrap_or_default();
        if let Some(id) = text.strip_prefix("adopt ") {
            let adopted = ws.adopt_attachment(id.parse().unwrap()).await.unwrap();
            let name = ws.deserialize_attachment::<String>().unwrap();
            ws.send_text(format!("adopted {adopted} {name:?}"));
        } else {
            ws.serialize_attachment(text).await.unwrap();
            ws.send_text(format!("id {}", ws.id()));
        }
        Ok(())
    }
}

#[tokio::test]
async fn an_operator_adopts_a_persisted_attachment_onto_a_new_connection() {
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig {
        durable_dir: Some(dir.path().to_owned()),
        ..ServerConfig::default()
    };
    let (addr, _) = start(App::new().ws("/a", Adopter).unwrap(), config).await;
    let mut old = connect(addr, "/a").await;
    within(old.send(Message::text("orphan"))).await.unwrap();
    let old_id = next_text(&mut old)
        .await
        .strip_prefix("id ")
        .unwrap()
        .to_owned();
    drop(old); // lost, not closed: the attachment stays on disk
    let mut new = connect(addr, "/a").await;
    within(new.send(Message::text(format!("adopt {old_id}"))))
        .await
        .unwrap();
    assert_eq!(next_text(&mut new).await, "adopted true Some(\"orphan\")");
    within(new.send(Message::text(format!("adopt {old_id}"))))
        .await
        .unwrap();
    assert_eq!(
        next_text(&mut new).await,
        "adopted false Some(\"orphan\")",
        "only once"
    );
}

/// The attachment files in the durable directory `dir`.
fn attachment_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir.join("ws"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "att"))
        .collect()
}

#[tokio::test]
async fn attachments_no_resume_token_can_reach_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig {
        durable_dir: Some(dir.path().to_owned()),
        resume_ttl: Duration::from_secs(2),
        ..ServerConfig::default()
    };
    let (addr, handle) = start(App::new().ws("/n", Named).unwrap(), config).await;
    let files = || attachment_files(dir.path()).len();
    // A connection that vanishes keeps its attachment for a resume...
    let mut gone = connect(addr, "/n").await;
    within(gone.send(Message::text("ann"))).await.unwrap();
    assert!(next_text(&mut gone).await.starts_with("resume "));
    drop(gone);
    // ...and one that stays keeps it for as long as it lives.
    let mut live = connect(addr, "/n").await;
    within(live.send(Message::text("bob"))).await.unwrap();
    assert!(next_text(&mut live).await.starts_with("resume "));
    assert_eq!(files(), 2);
    // Once no token can reach it (the resume TTL after it was written), the vanished
    // connection's attachment goes; the live one's stays.
    // (The file goes first, then the counter moves.)
    let expired = "roost_attachments_expired_total 1\n";
    eventually("the vanished connection's attachment expired", || {
        files() == 1 && handle.metrics().render().contains(expired)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(files(), 1);
    within(live.send(Message::text("bob again"))).await.unwrap();
    assert!(next_text(&mut live).await.starts_with("resume "));
}

#[tokio::test]
async fn a_resume_the_store_failed_can_be_tried_again_with_the_same_token() {
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig {
        durable_dir: Some(dir.path().to_owned()),
        ..ServerConfig::default()
    };
    let (addr, _handle) = start(App::new().ws("/n", Named).unwrap(), config).await;
    let mut gone = connect(addr, "/n").await;
    within(gone.send(Message::text("ann"))).await.unwrap();
    let token = next_text(&mut gone).await;
    let token = token.strip_prefix("resume ").unwrap().to_owned();
    drop(gone);
    // The store fails the next resume: the attachment's file is, for now, a directory.
    let [file] = attachment_files(dir.path()).try_into().unwrap();
    let bytes = std::fs::read(&file).unwrap();
    std::fs::remove_file(&file).unwrap();
    std::fs::create_dir(&file).unwrap();
    let url = format!("ws://{addr}/n?resume={token}");
    let refused = within(roost::connect(&url)).await.unwrap_err().to_string();
    assert!(refused.contains("503"), "{refused}");
    // The client is told to try again; the store's error, which names the server's files,
    // stays in the server's log.
    assert!(
        refused.contains("try again with the same token"),
        "{refused}"
    );
    let dir_name = dir.path().file_name().unwrap().to_str().unwrap();
    assert!(!refused.contains(dir_name), "{refused}");
    // Once the store works again, the same token resumes.
    std::fs::remove_dir(&file).unwrap();
    std::fs::write(&file, bytes).unwrap();
    let (mut resumed, _) = within(roost::connect(&url)).await.unwrap();
    assert_eq!(next_text(&mut resumed).await, "welcome back ann");
}

/// [`Named`], whose connections also write their attachment when they end, and report how
/// that went.
struct Diary(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl Handler for Diary {
    async fn on_open(&self, ws: &Ws, url: &http::Uri) -> Result<(), Disconnect> {
        Named.on_open(ws, url).await
    }

    async fn on_message(&self, ws: &Ws, data: Data, room: &Room) -> Result<(), Disconnect> {
        Named.on_message(ws, data, room).await
    }

    async fn on_close(&self, ws: &Ws, _code: CloseCode, _reason: &str) {
        let written = ws.serialize_attachment(&"signed off").await;
        let outcome = written.map_or_else(|error| error.to_string(), |()| "written".to_owned());
        self.0.lock().unwrap().push(outcome);
    }
}

#[tokio::test]
async fn a_connection_whose_session_was_resumed_elsewhere_writes_no_more_attachments() {
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig {
        durable_dir: Some(dir.path().to_owned()),
        ..ServerConfig::default()
    };
    let closes = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let app = App::new().ws("/n", Diary(closes.clone())).unwrap();
    let (addr, _handle) = start(app, config).await;
    let mut first = connect(addr, "/n").await;
    within(first.send(Message::text("ada"))).await.unwrap();
    let token = next_text(&mut first).await;
    let token = token.strip_prefix("resume ").unwrap().to_owned();
    // The session moves to a new connection while the first still lingers.
    let mut resumed = connect(addr, &format!("/n?resume={token}")).await;
    assert_eq!(next_text(&mut resumed).await, "welcome back ada");
    assert_eq!(
        until_closed(&mut first).await.unwrap().code,
        CloseCode(4001)
    );
    // The first connection's last write is refused: the only attachment is the one its
    // session moved to, and no file waits under the spent token for a restart to reach.
    eventually("the first connection ended", || {
        !closes.lock().unwrap().is_empty()
    })
    .await;
    let outcome = closes.lock().unwrap()[0].clone();
    assert!(
        outcome.contains("resumed on another connection"),
        "{outcome}"
    );
    assert_eq!(attachment_files(dir.path()).len(), 1);
}

#[tokio::test]
async fn a_token_lasts_the_resume_ttl_from_the_attachments_last_write() {
    let ttl = Duration::from_secs(3);
    let config = ServerConfig {
        resume_ttl: ttl,
        ..ServerConfig::default()
    };
    let (addr, _handle) = start(App::new().ws("/n", Named).unwrap(), config).await;
    let mut ws = connect(addr, "/n").await;
    let connected = std::time::Instant::now();
    // The attachment is written two seconds into the connection; the token handed out then
    // lasts the TTL from that write, not from the handshake.
    tokio::time::sleep(Duration::from_secs(2)).await;
    within(ws.send(Message::text("ada"))).await.unwrap();
    let token = next_text(&mut ws).await;
    let token = token.strip_prefix("resume ").unwrap().to_owned();
    drop(ws);
    // Past the TTL after the handshake (the token would have expired), well within it after
    // the write.
    let after_handshake = ttl + Duration::from_millis(300);
    tokio::time::sleep(after_handshake.saturating_sub(connected.elapsed())).await;
    let mut resumed = connect(addr, &format!("/n?resume={token}")).await;
    assert_eq!(next_text(&mut resumed).await, "welcome back ada");
}

/// [`Named`], except that `token?` asks for a fresh resume token without writing anything.
struct Renewing;

impl Handler for Renewing {
    async fn on_open(&self, ws: &Ws, url: &http::Uri) -> Result<(), Disconnect> {
        Named.on_open(ws, url).await
    }

    async fn on_message(&self, ws: &Ws, data: Data, room: &Room) -> Result<(), Disconnect> {
        if data.as_text() == Some("token?") {
            ws.send_text(format!("resume {}", ws.resume_token()));
            return Ok(());
        }
        Named.on_message(ws, data, room).await
    }
}

#[tokio::test]
async fn a_token_asked_for_late_in_a_long_connection_outlives_the_last_write() {
    let ttl = Duration::from_secs(2);
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig {
        durable_dir: Some(dir.path().to_owned()),
        resume_ttl: ttl,
        ..ServerConfig::default()
    };
    let (addr, _handle) = start(App::new().ws("/n", Renewing).unwrap(), config).await;
    let mut ws = connect(addr, "/n").await;
    within(ws.send(Message::text("ada"))).await.unwrap();
    assert!(next_text(&mut ws).await.starts_with("resume "));
    let written = std::time::Instant::now();
    // Open well past the TTL since the only write; the server dated the attachment anew
    // meanwhile, so a token asked for now still reaches it.
    tokio::time::sleep(ttl + Duration::from_millis(500)).await;
    within(ws.send(Message::text("token?"))).await.unwrap();
    let token = next_text(&mut ws).await;
    let token = token.strip_prefix("resume ").unwrap().to_owned();
    assert!(written.elapsed() > ttl);
    drop(ws);
    let mut resumed = connect(addr, &format!("/n?resume={token}")).await;
    assert_eq!(next_text(&mut resumed).await, "welcome back ada");
}

#[tokio::test]
async fn a_resume_that_finds_nothing_leaves_the_open_connection_writing() {
    let (addr, _handle) = start(
        App::new().ws("/n", Renewing).unwrap(),
        ServerConfig::default(),
    )
    .await;
    let mut ws = connect(addr, "/n").await;
    within(ws.send(Message::text("token?"))).await.unwrap();
    let token = next_text(&mut ws).await;
    let token = token.strip_prefix("resume ").unwrap().to_owned();
    // Nothing written yet: nothing to resume.
    let url = format!("ws://{addr}/n?resume={token}");
    let error = within(roost::connect(&url)).await.unwrap_err();
    assert!(error.to_string().contains("410"), "{error}");
    // The open connection was not resumed, so its write goes through.
    within(ws.send(Message::text("ada"))).await.unwrap();
    let token = next_text(&mut ws).await;
    let token = token.strip_prefix("resume ").unwrap().to_owned();
    drop(ws);
    let mut resumed = connect(addr, &format!("/n?resume={token}")).await;
    assert_eq!(next_text(&mut resumed).await, "welcome back ada");
}
