//! These tests run against a real Redis: each starts its own `redis-server` on a free port
//! (without persistence) and stops it when done. Without `redis-server` they fail, asking
//! for it to be installed: a skipped test would hide that the Redis store was never checked.

use std::collections::BTreeSet;
use std::error::Error as _;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Instant;

use super::*;
use crate::store::listed;

/// The server binary, looked up on `PATH`.
const REDIS_SERVER: &str = "redis-server";

/// How long a started server may take to answer `PING`.
const STARTUP_LIMIT: Duration = Duration::from_secs(10);

/// A `redis-server` child process on 127.0.0.1, killed on drop.
struct RedisServer {
    child: Child,
    port: u16,
}

impl RedisServer {
    /// Starts a server on a free port. Another process can take the port between the probe
    /// and the server's bind, so a few ports are tried.
    fn start() -> Self {
        let mut last_failure = String::new();
        for _ in 0..5 {
            match Self::start_on(free_port()) {
                Ok(server) => return server,
                Err(failure) => last_failure = failure,
            }
        }
        panic!("could not start {REDIS_SERVER}: {last_failure}");
    }

    /// Starts a server on `port` and waits until it answers `PING`.
    fn start_on(port: u16) -> Result<Self, String> {
        let child = Command::new(REDIS_SERVER)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| {
                panic!(
                    "could not run `{REDIS_SERVER}` ({error}): the RedisStore tests need a real \
                     Redis server; install it with `apt-get install redis-server`"
                )
            });
        let mut server = Self { child, port };
        server.wait_until_ready()?;
        Ok(server)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn wait_until_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + STARTUP_LIMIT;
        let client = Client::open(self.url()).expect("test url parses");
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Err(format!("exited with {status} on port {}", self.port));
            }
            let pong = client
                .get_connection_with_timeout(Duration::from_secs(1))
                .and_then(|mut connection| redis::cmd("PING").query::<String>(&mut connection));
            if pong.is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "no answer to PING on port {} within {STARTUP_LIMIT:?}",
                    self.port
                ));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server; its data is gone.
    fn stop(&mut self) {
        // An error means it has already exited, which is what we want.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Kills the server and starts an empty one on the same port.
    fn restart(&mut self) {
        self.stop();
        let fresh = Self::start_on(self.port).expect("restart on the same port");
        // The killed child is reaped; replacing it runs no drop of interest.
        *self = fresh;
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A port nothing listens on at the time of the call.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("local_addr").port()
}

/// A direct connection, for looking at keys behind the store's back.
fn raw(server: &RedisServer) -> Connection {
    Client::open(server.url())
        .expect("url")
        .get_connection()
        .expect("connect")
}

#[test]
fn put_get_remove_list() {
    let server = RedisServer::start();
    let store = RedisStore::open(&server.url()).expect("open");
    let a = ConnectionId::random();
    let b = ConnectionId::random();

    assert_eq!(store.get(a).expect("get"), None);
    assert!(store.list().expect("list").is_empty());
    let before = SystemTime::now() - Duration::from_secs(1);
    store.put(a, b"alpha").expect("put");
    store.put(b, b"").expect("put empty");
    let binary: Vec<u8> = (0..=255).collect();
    let c = ConnectionId::random();
    store.put(c, &binary).expect("put binary");
    assert_eq!(store.get(a).expect("get").as_deref(), Some(&b"alpha"[..]));
    assert_eq!(store.get(b).expect("get").as_deref(), Some(&b""[..]));
    assert_eq!(store.get(c).expect("get"), Some(binary));

    let entries = store.list().expect("list");
    assert_eq!(entries.len(), 3);
    for entry in &entries {
        assert!(entry.modified >= before && entry.modified <= SystemTime::now() + IO_TIMEOUT);
    }
    assert_eq!(listed(&store), BTreeSet::from([(a, 5), (b, 0), (c, 256)]));

    store.remove(a).expect("remove");
    store
        .remove(a)
        .expect("removing an absent attachment is fine");
    assert_eq!(store.get(a).expect("get"), None);
    assert_eq!(listed(&store), BTreeSet::from([(b, 0), (c, 256)]));
}

#[test]
fn key_layout_is_a_hash_with_data_and_at() {
    let server = RedisServer::start();
    let store = RedisStore::open(&server.url()).expect("open");
    let id = ConnectionId::random();
    store.put(id, b"bytes").expect("put");
    let mut connection = raw(&server);
    let key = format!("roost:att:{id}");
    let data: Vec<u8> = redis::cmd("HGET")
        .arg(&key)
        .arg("data")
        .query(&mut connection)
        .expect("hget data");
    assert_eq!(data, b"bytes");
    let at: u64 = redis::cmd("HGET")
        .arg(&key)
        .arg("at")
        .query(&mut connection)
        .expect("hget at");
    let now = unix_millis(SystemTime::now());
    assert!(at <= now && now - at < 60_000, "at {at}, now {now}");
}

#[test]
fn put_overwrites() {
    let server = RedisServer::start();
    let store = RedisStore::open(&server.url()).expect("open");
    let id = ConnectionId::random();
    store.put(id, b"a much longer first value").expect("put");
    store.put(id, b"short").expect("overwrite");
    assert_eq!(store.get(id).expect("get").as_deref(), Some(&b"short"[..]));
    assert_eq!(listed(&store), BTreeSet::from([(id, 5)]));
}

#[test]
fn list_ignores_foreign_keys_and_spans_scan_rounds() {
    let server = RedisServer::start();
    let store = RedisStore::open(&server.url()).expect("open");
    let mut connection = raw(&server);
    // Keys under the prefix that are not attachments: a string, and hashes with bad ids.
    redis::cmd("SET")
        .arg("roost:att:not-an-id")
        .arg("x")
        .exec(&mut connection)
        .expect("set");
    for key in [
        "roost:att:",
        "roost:att:0000000000000000000000000000000G",
        "other:key",
    ] {
        redis::cmd("HSET")
            .arg(key)
            .arg("data")
            .arg("x")
            .arg("at")
            .arg(1)
            .exec(&mut connection)
            .expect("hset");
    }
    // A string under the prefix with a valid id: not a hash, so not an attachment.
    let string_id = ConnectionId::random();
    redis::cmd("SET")
        .arg(format!("roost:att:{string_id}"))
        .arg("x")
        .exec(&mut connection)
        .expect("set");

    let ids: BTreeSet<ConnectionId> = (0..3 * SCAN_COUNT)
        .map(|_| ConnectionId::random())
        .collect();
    for id in &ids {
        store.put(*id, id.as_bytes()).expect("put");
    }
    let listed = store.list().expect("list");
    assert_eq!(listed.len(), ids.len(), "each attachment listed once");
    let listed_ids: BTreeSet<ConnectionId> = listed.iter().map(|entry| entry.id).collect();
    assert_eq!(listed_ids, ids);
    assert!(listed.iter().all(|entry| entry.len == 16));
}

#[test]
fn adopt_and_touch_date_the_attachment() {
    let server = RedisServer::start();
    let store = RedisStore::open(&server.url()).expect("open");
    crate::store::check_adopt_and_touch_date_the_attachment(&store);
}

#[test]
fn adopt_moves_once() {
    let server = RedisServer::start();
    let store = RedisStore::open(&server.url()).expect("open");
    let old = ConnectionId::random();
    let new = ConnectionId::random();
    store.put(old, b"state").expect("put");
    store.put(new, b"replaced").expect("put target");
    assert_eq!(
        store.adopt(old, new).expect("adopt").as_deref(),
        Some(&b"state"[..])
    );
    assert_eq!(store.get(old).expect("get"), None);
    assert_eq!(store.get(new).expect("get").as_deref(), Some(&b"state"[..]));
    assert_eq!(listed(&store), BTreeSet::from([(new, 5)]));
    assert_eq!(
        store.adopt(old, ConnectionId::random()).expect("again"),
        None
    );
    // Adopting onto itself moves nothing and keeps it.
    assert_eq!(
        store.adopt(new, new).expect("self").as_deref(),
        Some(&b"state"[..])
    );
    assert_eq!(store.get(new).expect("get").as_deref(), Some(&b"state"[..]));
}

#[test]
fn writes_under_an_adopted_id_are_refused_cluster_wide_until_it_is_adopted_back() {
    let server = RedisServer::start();
    let here = RedisStore::open(&server.url()).expect("open");
    // The displaced connection lives in another process, with a store of its own.
    let there = RedisStore::open(&server.url()).expect("open");
    let (old, new) = (ConnectionId::random(), ConnectionId::random());
    there.put(old, b"before").expect("put");
    assert!(here.adopt(old, new).expect("adopt").is_some());
    let refused = there.put(old, b"after the move").unwrap_err();
    assert!(
        matches!(refused, StoreError::Moved { id } if id == old),
        "{refused:?}"
    );
    assert_eq!(there.get(old).expect("get"), None, "nothing was written");
    assert_eq!(
        here.adopt(old, ConnectionId::random()).expect("again"),
        None
    );
    // The new connection writes as usual.
    there.put(new, b"new state").expect("put under the new id");
    // A resume whose client vanished gives the attachment back: the old id writes again.
    assert!(here.adopt(new, old).expect("adopt back").is_some());
    there
        .put(old, b"given back")
        .expect("put after the way back");
    assert!(matches!(
        there.put(new, b"x").unwrap_err(),
        StoreError::Moved { .. }
    ));
}

#[test]
fn the_moved_mark_lasts_its_ttl() {
    let server = RedisServer::start();
    let ttl = Duration::from_millis(300);
    let store = RedisStore::open(&server.url())
        .expect("open")
        .with_moved_ttl(ttl);
    let (old, new) = (ConnectionId::random(), ConnectionId::random());
    store.put(old, b"state").expect("put");
    assert!(store.adopt(old, new).expect("adopt").is_some());
    let mut raw = raw(&server);
    let left: i64 = redis::cmd("PTTL")
        .arg(moved_key(old))
        .query(&mut raw)
        .expect("pttl");
    assert!(0 < left && left <= 300, "{left} ms left");
    // Bounded: the mark is gone within a few times its TTL or the test fails.
    let started = Instant::now();
    while store.put(old, b"late").is_err() {
        assert!(started.elapsed() < 10 * ttl, "the mark outlived its TTL");
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn concurrent_adopts_across_stores_have_one_winner() {
    let server = RedisServer::start();
    // Two stores stand for two roost processes.
    let stores = [
        Arc::new(RedisStore::open(&server.url()).expect("open")),
        Arc::new(RedisStore::open(&server.url()).expect("open")),
    ];
    for round in 0..20 {
        let old = ConnectionId::random();
        stores[0].put(old, b"state").expect("put");
        let barrier = Arc::new(Barrier::new(8));
        let results: Vec<(ConnectionId, Option<Vec<u8>>)> = (0..8)
            .map(|thread_index| {
                let store = Arc::clone(&stores[thread_index % 2]);
                let barrier = Arc::clone(&barrier);
                thread::spawn(move || {
                    let new = ConnectionId::random();
                    barrier.wait();
                    (new, store.adopt(old, new).expect("adopt"))
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|handle| handle.join().expect("join"))
            .collect();
        let winners: Vec<_> = results
            .iter()
            .filter(|(_, bytes)| bytes.is_some())
            .collect();
        assert_eq!(winners.len(), 1, "round {round}");
        let (winner, bytes) = winners[0];
        assert_eq!(bytes.as_deref(), Some(&b"state"[..]));
        assert_eq!(
            stores[1].get(*winner).expect("get").as_deref(),
            Some(&b"state"[..])
        );
        assert_eq!(stores[1].get(old).expect("get"), None);
    }
}

#[test]
fn many_threads_share_the_bounded_pool() {
    let server = RedisServer::start();
    let store = Arc::new(RedisStore::open(&server.url()).expect("open"));
    let handles: Vec<_> = (0..4 * MAX_CONNECTIONS)
        .map(|_| {
            let store = Arc::clone(&store);
            thread::spawn(move || {
                for _ in 0..50 {
                    let id = ConnectionId::random();
                    store.put(id, id.as_bytes()).expect("put");
                    assert_eq!(
                        store.get(id).expect("get").as_deref(),
                        Some(&id.as_bytes()[..])
                    );
                    store.remove(id).expect("remove");
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().expect("join");
    }
    let state = store.pool.state.lock();
    assert!(state.open <= MAX_CONNECTIONS, "{} open", state.open);
    assert_eq!(state.idle.len(), state.open);
}

#[test]
fn resume_key_is_shared() {
    let server = RedisServer::start();
    let first = RedisStore::open(&server.url()).expect("open");
    let second = RedisStore::open(&server.url()).expect("open");
    let key = first.shared_resume_key().expect("key");
    let again = second.shared_resume_key().expect("key");
    let id = ConnectionId::random();
    let now = SystemTime::now();
    let token = key.issue(id, now + Duration::from_secs(60));
    assert_eq!(again.verify(&token, now).expect("verify"), id);
    let token = again.issue(id, now + Duration::from_secs(60));
    assert_eq!(key.verify(&token, now).expect("verify"), id);

    let stored: Vec<u8> = redis::cmd("GET")
        .arg("roost:resume-key")
        .query(&mut raw(&server))
        .expect("get");
    assert_eq!(stored.len(), 32);
    assert_ne!(stored, [0; 32]);
}

#[test]
fn resume_key_of_wrong_length_is_refused() {
    let server = RedisServer::start();
    redis::cmd("SET")
        .arg("roost:resume-key")
        .arg("short")
        .exec(&mut raw(&server))
        .expect("set");
    let store = RedisStore::open(&server.url()).expect("open");
    let error = store.shared_resume_key().expect_err("short key");
    assert!(
        matches!(error, StoreError::ResumeKeyLength { len: 5, .. }),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        format!(
            "resume key in redis at {} holds 5 bytes, expected 32",
            server.url()
        )
    );
}

#[test]
fn unreachable_url_is_a_clear_error() {
    let url = format!("redis://127.0.0.1:{}", free_port());
    let error = RedisStore::open(&url).expect_err("nothing listens there");
    assert!(matches!(error, StoreError::Redis { .. }), "{error:?}");
    assert_eq!(error.to_string(), format!("could not reach redis at {url}"));
    let source = error.source().expect("source").to_string();
    assert!(source.to_lowercase().contains("refused"), "{source}");

    let port = free_port();
    let error = RedisStore::open(&format!("redis://:hunter2@127.0.0.1:{port}"))
        .expect_err("nothing listens there");
    assert_eq!(
        error.to_string(),
        format!("could not reach redis at redis://***@127.0.0.1:{port}")
    );

    let error = RedisStore::open("http://127.0.0.1:6379").expect_err("not a redis url");
    assert_eq!(
        error.to_string(),
        "could not parse the url of redis at http://127.0.0.1:6379"
    );
}

#[test]
fn recovers_after_redis_restarts() {
    let mut server = RedisServer::start();
    let store = Arc::new(RedisStore::open(&server.url()).expect("open"));
    // Fill the pool with several connections, all of which the restart kills.
    let handles: Vec<_> = (0..MAX_CONNECTIONS)
        .map(|_| {
            let store = Arc::clone(&store);
            thread::spawn(move || store.put(ConnectionId::random(), b"x").expect("put"))
        })
        .collect();
    for handle in handles {
        handle.join().expect("join");
    }
    let old = ConnectionId::random();
    store.put(old, b"state").expect("put");
    store.shared_resume_key().expect("key");

    server.stop();
    let error = store.get(old).expect_err("redis is down");
    assert_eq!(
        error.to_string(),
        format!(
            "could not read an attachment from redis at {}",
            server.url()
        )
    );

    server.restart();
    // An in-memory Redis lost everything; what matters is that operations work again.
    assert_eq!(store.get(old).expect("get after restart"), None);
    assert!(store.list().expect("list after restart").is_empty());
    let id = ConnectionId::random();
    store.put(id, b"after").expect("put after restart");
    // The script cache was lost too: adopt has to load the script again.
    let new = ConnectionId::random();
    assert_eq!(
        store
            .adopt(id, new)
            .expect("adopt after restart")
            .as_deref(),
        Some(&b"after"[..])
    );
    for _ in 0..2 * MAX_CONNECTIONS {
        assert_eq!(store.get(new).expect("get").as_deref(), Some(&b"after"[..]));
    }
}

#[test]
fn store_is_a_thread_safe_trait_object() {
    let server = RedisServer::start();
    let store = RedisStore::open(&server.url()).expect("open");
    assert_eq!(
        format!("{store:?}"),
        format!("RedisStore {{ url: {:?}, .. }}", server.url())
    );
    let _: Box<dyn AttachmentStore> = Box::new(store);
}

#[test]
fn urls_are_masked() {
    let cases = [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://:secret@host:6379", "redis://***@host:6379"),
        ("rediss://user:secret@host/2", "rediss://***@host/2"),
        ("redis://user:p@ss@host", "redis://***@host"),
        (
            "redis+unix:///run/redis.sock?db=1&pass=secret",
            "redis+unix:///run/redis.sock?***",
        ),
        ("secret@host", "***@host"),
        ("", ""),
    ];
    for (url, masked) in cases {
        assert_eq!(mask_url(url), masked, "{url}");
    }
}

#[test]
fn attachment_keys_round_trip() {
    let id = ConnectionId::random();
    let key = attachment_key(id);
    assert_eq!(key, format!("roost:att:{id}"));
    assert_eq!(parse_attachment_key(key.as_bytes()), Some(id));
    assert_eq!(parse_attachment_key(b"roost:att:"), None);
    assert_eq!(parse_attachment_key(b"other:att:0"), None);
    assert_eq!(parse_attachment_key(&[0xff; 42]), None);
}
