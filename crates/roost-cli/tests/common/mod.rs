//! Helpers for tests that run the `roost` binary as users do.

#![allow(dead_code, clippy::unwrap_used, unreachable_pub)]

use std::{
    net::SocketAddr,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use roost::Message;

pub(crate) const LIMIT: Duration = Duration::from_secs(10);

pub(crate) async fn within<F: std::future::Future>(future: F) -> F::Output {
    tokio::time::timeout(LIMIT, future)
        .await
        .expect("the test step did not finish in time")
}

/// A running `roost serve`; killed (SIGKILL) when dropped.
pub(crate) struct Server {
    pub(crate) child: Child,
    pub(crate) addr: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Asks the server to stop, as a supervisor does.
    pub(crate) fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        assert!(status.unwrap().success());
    }

    /// Waits, at most [`LIMIT`], for the process to exit after [`Server::sigterm`].
    pub(crate) async fn exit_status(&mut self) -> std::process::ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(exit) = self.child.try_wait().unwrap() {
                return exit;
            }
            assert!(
                started.elapsed() < LIMIT,
                "the server did not exit after SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Starts `roost serve --listen 127.0.0.1:0 ARGS…` and reads the address it bound from its
/// log: no port is picked in advance, so parallel tests never meet on one port.
pub(crate) fn serve(args: &[&str]) -> Server {
    use std::io::BufRead as _;
    let mut child = Command::new(env!("CARGO_BIN_EXE_roost"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(args)
        .env("ROOST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (found, addr) = std::sync::mpsc::channel();
    // Keep draining the log so the server never blocks on a full pipe.
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(rest) = line.split("listening on ws://").nth(1) {
                let addr = rest
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                let _ = found.send(addr);
            }
        }
    });
    let addr = addr
        .recv_timeout(LIMIT)
        .expect("the server did not report its address");
    let addr = addr
        .parse()
        .unwrap_or_else(|_| panic!("bad address in the log: {addr:?}"));
    Server { child, addr }
}

pub(crate) type Client = roost::WebSocket<roost::MaybeTlsStream<tokio::net::TcpStream>>;

pub(crate) async fn next_text(ws: &mut Client) -> String {
    loop {
        match within(ws.recv()).await {
            Some(Ok(Message::Text(text))) => return text.to_string(),
            Some(Ok(_)) => {}
            other => panic!("expected text, got {other:?}"),
        }
    }
}

/// Joins chat `room` as `name` on `addr`; returns the connection and its resume token.
pub(crate) async fn join(addr: SocketAddr, room: &str, name: &str) -> (Client, String) {
    let (mut ws, _) = within(roost::connect(&format!("ws://{addr}/chat/{room}")))
        .await
        .unwrap();
    within(ws.send(Message::text(name))).await.unwrap();
    assert_eq!(next_text(&mut ws).await, format!("hello {name}"));
    let token = next_text(&mut ws)
        .await
        .strip_prefix("resume ")
        .unwrap()
        .to_owned();
    (ws, token)
}

/// A plain HTTP GET; returns the status code and the body.
pub(crate) async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    within(tcp.read_to_string(&mut response)).await.unwrap();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    (status, body)
}

/// Polls `check` until it holds, for at most `limit`.
pub(crate) async fn eventually<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < limit, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
