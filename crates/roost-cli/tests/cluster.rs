//! Rooms across three roost processes over a real Redis, as users run them.

#![allow(clippy::unwrap_used)]

mod common;

use std::{
    net::SocketAddr,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{Server, eventually, http_get, join, next_text, serve, within};
use roost::{CloseCode, Message};

/// A redis-server on a free loopback port, without persistence; killed when dropped.
struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    fn start() -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Redis::on(port)
    }

    fn on(port: u16) -> Redis {
        let binary = ["/usr/bin/redis-server", "/usr/local/bin/redis-server"]
            .into_iter()
            .find(|path| std::path::Path::new(path).exists())
            .expect("redis-server is not installed: apt-get install redis-server (scripts/test.sh does)");
        let child = Command::new(binary)
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let redis = Redis { child, port };
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < common::LIMIT,
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn node(redis: &Redis) -> Server {
    node_with(redis, &[])
}

fn node_with(redis: &Redis, extra: &[&str]) -> Server {
    let url = redis.url();
    let mut args = vec!["--app", "chat", "--cluster", &url, "--presence-ttl", "1.5"];
    args.extend_from_slice(extra);
    serve(&args)
}

async fn presence_count(addr: SocketAddr, room: &str) -> usize {
    let (status, body) = http_get(addr, &format!("/presence?room={room}")).await;
    if status != 200 {
        return usize::MAX;
    }
    let value: serde_json::Value = serde_json::from_str(&body).unwrap();
    value["count"].as_u64().unwrap() as usize
}

#[tokio::test]
async fn rooms_span_processes_in_order_and_presence_counts_everyone() {
    let redis = Redis::start();
    let (a, b, c) = (node(&redis), node(&redis), node(&redis));
    let (mut alice, _) = join(a.addr, "x", "alice").await;
    let (mut bob, _) = join(b.addr, "x", "bob").await;
    let (mut carol, _) = join(c.addr, "x", "carol").await;
    eventually("all three in presence", Duration::from_secs(5), || {
        presence_count(c.addr, "x").then_some_count(3)
    })
    .await;
    for i in 0..30 {
        within(alice.send(Message::text(format!("m{i}"))))
            .await
            .unwrap();
    }
    for (who, ws) in [
        ("alice", &mut alice),
        ("bob", &mut bob),
        ("carol", &mut carol),
    ] {
        for i in 0..30 {
            assert_eq!(
                next_text(ws).await,
                format!("alice: m{i}"),
                "{who}, message {i}"
            );
        }
    }
    // Another room on the same processes hears nothing of it.
    let (mut dave, _) = join(b.addr, "y", "dave").await;
    within(bob.send(Message::text("only x"))).await.unwrap();
    assert_eq!(next_text(&mut carol).await, "bob: only x");
    within(dave.send(Message::text("in y"))).await.unwrap();
    assert_eq!(next_text(&mut dave).await, "dave: in y");
}

/// Messages from another process arrive in bursts, delivered as one write per member: two
/// rooms' messages interleaved in one burst each reach every member of their own room, in
/// the order sent, and nothing of the other room.
#[tokio::test]
async fn bursts_from_another_process_reach_each_rooms_members_in_order() {
    const MESSAGES: usize = 300;
    let redis = Redis::start();
    // No member turns dormant during the test: a burst left unwritten would stay so, not
    // go out with the connection's own timer.
    let quiet = ["--dormant-after", "600", "--idle-timeout", "0"];
    let (a, b) = (node_with(&redis, &quiet), node_with(&redis, &quiet));
    let (mut alice, _) = join(a.addr, "x", "alice").await;
    let (mut erin, _) = join(a.addr, "y", "erin").await;
    let (mut bob, _) = join(b.addr, "x", "bob").await;
    let (mut bea, _) = join(b.addr, "x", "bea").await;
    let (mut dave, _) = join(b.addr, "y", "dave").await;
    eventually("both rooms in presence", Duration::from_secs(5), || async {
        presence_count(a.addr, "x").await == 3 && presence_count(a.addr, "y").await == 2
    })
    .await;
    for i in 0..MESSAGES {
        within(alice.send(Message::text(format!("x{i}"))))
            .await
            .unwrap();
        within(erin.send(Message::text(format!("y{i}"))))
            .await
            .unwrap();
    }
    for (who, ws, sender, prefix) in [
        ("bob", &mut bob, "alice", "x"),
        ("bea", &mut bea, "alice", "x"),
        ("dave", &mut dave, "erin", "y"),
    ] {
        for i in 0..MESSAGES {
            assert_eq!(
                next_text(ws).await,
                format!("{sender}: {prefix}{i}"),
                "{who}, message {i}"
            );
        }
    }
}

/// `then_some_count(n)`: a future resolving to whether the count is `n`.
trait CountIs {
    fn then_some_count(self, n: usize) -> impl std::future::Future<Output = bool>;
}

impl<F: std::future::Future<Output = usize>> CountIs for F {
    async fn then_some_count(self, n: usize) -> bool {
        self.await == n
    }
}

#[tokio::test]
async fn a_killed_process_leaves_presence_and_its_clients_resume_elsewhere() {
    let redis = Redis::start();
    let (a, b) = (node(&redis), node(&redis));
    let c = node(&redis);
    let (mut alice, _) = join(a.addr, "z", "alice").await;
    let (_bob, _) = join(b.addr, "z", "bob").await;
    let (_carol, carol_token) = join(c.addr, "z", "carol").await;
    eventually("three in presence", Duration::from_secs(5), || {
        presence_count(a.addr, "z").then_some_count(3)
    })
    .await;
    let killed_at = Instant::now();
    drop(c); // SIGKILL
    eventually(
        "carol's process left presence",
        Duration::from_secs(5),
        || presence_count(a.addr, "z").then_some_count(2),
    )
    .await;
    assert!(
        killed_at.elapsed() < Duration::from_secs(5),
        "within the presence period and a margin"
    );
    // Carol resumes on another process, with her name.
    let url = format!("ws://{}/chat/z?resume={carol_token}", b.addr);
    let (mut carol, _) = within(roost::connect(&url)).await.unwrap();
    assert_eq!(next_text(&mut carol).await, "welcome back carol");
    assert!(next_text(&mut carol).await.starts_with("resume "));
    within(carol.send(Message::text("I'm back"))).await.unwrap();
    assert_eq!(next_text(&mut alice).await, "carol: I'm back");
    // The token worked once, cluster-wide.
    let again = format!("ws://{}/chat/z?resume={carol_token}", a.addr);
    let error = within(roost::connect(&again))
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("401") || error.contains("410"), "{error}");
}

/// Reads `ws` until its close frame; returns the code.
async fn close_code(ws: &mut common::Client) -> Option<CloseCode> {
    loop {
        match within(ws.recv()).await {
            Some(Ok(Message::Close(frame))) => return frame.map(|frame| frame.code),
            Some(Ok(_)) => {}
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_resume_on_another_process_closes_the_connection_it_displaced() {
    let redis = Redis::start();
    let (a, b) = (node(&redis), node(&redis));
    let (mut carol, carol_token) = join(a.addr, "d", "carol").await;
    let url = format!("ws://{}/chat/d?resume={carol_token}", b.addr);
    let (mut resumed, _) = within(roost::connect(&url)).await.unwrap();
    assert_eq!(next_text(&mut resumed).await, "welcome back carol");
    // The old connection still lived on the other process: it is told why it ends.
    assert_eq!(close_code(&mut carol).await, Some(CloseCode(4001)));
}

#[tokio::test]
async fn a_process_that_missed_a_resume_closes_the_displaced_connection_once_back() {
    let redis = Redis::start();
    let mut unheard = Unheard::resume(&redis, "m").await;
    // b's announcement went out while a was not listening; a finds out once it is back.
    assert_eq!(
        http_get(unheard.a.addr, "/readyz").await.0,
        503,
        "a is still not listening"
    );
    let () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxclients")
        .arg(10_000)
        .query(&mut unheard.admin)
        .unwrap();
    assert_eq!(close_code(&mut unheard.carol).await, Some(CloseCode(4001)));
}

/// carol's session, resumed on b while a, where her old connection lives, cannot hear of it.
struct Unheard {
    a: Server,
    /// Kept to the end: dropping it stops the process.
    b: Server,
    /// The old connection, on a.
    carol: common::Client,
    /// The new one, on b, past its `welcome back` and `resume` lines.
    resumed: common::Client,
    /// A connection to Redis for the test's own commands.
    admin: redis::Connection,
}

impl Unheard {
    /// carol joins `room` on a; both nodes' subscriptions go down and stay down (a's other
    /// connections to Redis, and b's, stay up); then her token resumes the session on b.
    async fn resume(redis: &Redis, room: &str) -> Unheard {
        let (a, b) = (node(redis), node(redis));
        let (carol, carol_token) = join(a.addr, room, "carol").await;
        let mut admin = redis::Client::open(redis.url())
            .unwrap()
            .get_connection()
            .unwrap();
        hold_subscriptions_down(&mut admin);
        eventually(
            "a's subscription is down",
            Duration::from_secs(5),
            || async { http_get(a.addr, "/readyz").await.0 == 503 },
        )
        .await;
        let url = format!("ws://{}/chat/{room}?resume={carol_token}", b.addr);
        let (mut resumed, _) = within(roost::connect(&url)).await.unwrap();
        assert_eq!(next_text(&mut resumed).await, "welcome back carol");
        assert!(next_text(&mut resumed).await.starts_with("resume "));
        Unheard {
            a,
            b,
            carol,
            resumed,
            admin,
        }
    }
}

/// Takes both nodes' subscriptions down and keeps them down: the connection slots they held
/// are taken back (`maxclients`) as the subscribers are killed, while every other connection
/// to Redis stays up.
fn hold_subscriptions_down(admin: &mut redis::Connection) {
    let clients: String = redis::cmd("INFO").arg("clients").query(admin).unwrap();
    let connected: usize = clients
        .lines()
        .find_map(|line| line.strip_prefix("connected_clients:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let subscribers = 2; // one per node
    let () = redis::pipe()
        .atomic()
        .cmd("CONFIG")
        .arg("SET")
        .arg("maxclients")
        .arg(connected - subscribers)
        .ignore()
        .cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .ignore()
        .query(admin)
        .unwrap();
}

/// A displaced connection that has not heard of the resume yet (its process is not
/// listening) and writes its attachment is refused by the store, and closed with 4001: it
/// leaves nothing under its spent id.
#[tokio::test]
async fn a_displaced_connection_that_writes_is_refused_and_closed() {
    let redis = Redis::start();
    let Unheard {
        a,
        b: _b,
        mut carol,
        mut resumed,
        mut admin,
    } = Unheard::resume(&redis, "w").await;
    // The old connection renames itself: its write goes to the store, which refuses it.
    within(carol.send(Message::text("/nick caroline")))
        .await
        .unwrap();
    assert_eq!(close_code(&mut carol).await, Some(CloseCode(4001)));
    assert_eq!(
        http_get(a.addr, "/readyz").await.0,
        503,
        "the store's refusal closed it, not the announcement"
    );
    let attachments: Vec<String> = redis::cmd("KEYS")
        .arg("roost:att:*")
        .query(&mut admin)
        .unwrap();
    assert_eq!(
        attachments.len(),
        1,
        "only the resumed session's: {attachments:?}"
    );
    // The session lives on where it was resumed, under its name.
    within(resumed.send(Message::text("/nick caro")))
        .await
        .unwrap();
    assert_eq!(next_text(&mut resumed).await, "carol is now caro");
}

#[tokio::test]
async fn a_redis_restart_in_the_middle_of_traffic_is_survived() {
    let redis = Redis::start();
    let port = redis.port;
    let (a, b) = (node(&redis), node(&redis));
    let (mut alice, _) = join(a.addr, "r", "alice").await;
    let (mut alice2, _) = join(a.addr, "r", "alice2").await;
    let (mut bob, _) = join(b.addr, "r", "bob").await;
    within(alice.send(Message::text("before"))).await.unwrap();
    assert_eq!(next_text(&mut bob).await, "alice: before");
    assert_eq!(next_text(&mut alice2).await, "alice: before");
    drop(redis);
    eventually(
        "a is not ready without its broker",
        Duration::from_secs(5),
        || async { http_get(a.addr, "/readyz").await.0 == 503 },
    )
    .await;
    // The local room keeps working while Redis is down.
    within(alice.send(Message::text("local"))).await.unwrap();
    assert_eq!(next_text(&mut alice2).await, "alice: local");
    let _redis = Redis::on(port);
    eventually("a is ready again", Duration::from_secs(10), || async {
        http_get(a.addr, "/readyz").await.0 == 200
    })
    .await;
    eventually("b is ready again", Duration::from_secs(10), || async {
        http_get(b.addr, "/readyz").await.0 == 200
    })
    .await;
    // Broadcasts flow across processes again.
    within(alice.send(Message::text("after"))).await.unwrap();
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_millis(500), bob.recv()).await {
            Ok(Some(Ok(Message::Text(text)))) => {
                seen.push(text.to_string());
                if text == "alice: after" {
                    break;
                }
            }
            Ok(Some(Ok(_))) | Err(_) => {}
            other => panic!("bob's connection ended: {other:?}"),
        }
    }
    assert!(
        seen.contains(&"alice: after".to_owned()),
        "bob saw {seen:?}"
    );
    let (status, metrics) = http_get(a.addr, "/metrics").await;
    assert_eq!(status, 200);
    assert!(metrics.contains("roost_cluster_ready 1"), "{metrics}");
}
