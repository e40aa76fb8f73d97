//! The `roost serve --app echo` binary as users run it: its idle timeout.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use roost::{CloseCode, Message};

mod common;

use common::{LIMIT, serve, within};

/// A client that sends nothing is closed with 1001 once the idle timeout passes; one that
/// keeps talking is not.
#[tokio::test]
async fn quiet_clients_are_closed_after_the_idle_timeout_and_talkative_ones_are_not() {
    let server = serve(&["--app", "echo", "--idle-timeout", "1"]);
    let url = format!("ws://{}/", server.addr);
    // The server's idle clock starts when it accepts the quiet client, so ours starts before
    // the connect: a slow second connect must not make the close look early.
    let opened = Instant::now();
    let (mut quiet, _) = within(roost::connect(&url)).await.unwrap();
    let (mut talkative, _) = within(roost::connect(&url)).await.unwrap();

    // The talkative client sends a message every 300 ms for three idle periods; every one
    // comes back.
    let talk = async {
        for i in 0..10 {
            talkative
                .send(Message::text(format!("still here {i}")))
                .await
                .unwrap();
            match talkative.recv().await {
                Some(Ok(Message::Text(text))) => {
                    assert_eq!(text.as_str(), format!("still here {i}"));
                }
                other => panic!("the talkative client got {other:?}"),
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    };
    // The quiet one hears nothing until the server closes it.
    let wait_for_close = async {
        match quiet.recv().await {
            Some(Ok(Message::Close(Some(frame)))) => {
                assert_eq!(frame.code, CloseCode::GOING_AWAY);
                assert_eq!(frame.reason.as_str(), "idle timeout");
            }
            other => panic!("the quiet client got {other:?}"),
        }
        opened.elapsed()
    };
    let ((), closed_after) = within(async { tokio::join!(talk, wait_for_close) }).await;
    assert!(
        closed_after >= Duration::from_secs(1) && closed_after < LIMIT,
        "closed after {closed_after:?}"
    );
    assert!(
        within(quiet.recv()).await.is_none(),
        "the close handshake completes"
    );
}

/// A client that sends but stops reading is dropped once its echo waited for the idle
/// timeout, instead of holding the connection forever.
#[tokio::test]
async fn a_client_that_stops_reading_is_dropped_after_the_idle_timeout() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    let server = serve(&["--app", "echo", "--idle-timeout", "1"]);
    // A small receive buffer: the echoes back up in the server, not in our kernel.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut tcp = within(socket.connect(server.addr)).await.unwrap();
    tcp.write_all(
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = [0u8; 256];
    let n = within(tcp.read(&mut head)).await.unwrap();
    assert!(head[..n].starts_with(b"HTTP/1.1 101"));
    // 16 binary messages of 1 MiB (masked with a zero key): far more than the socket
    // buffers hold. The writes block once the server stops reading.
    const MESSAGE: usize = 1 << 20;
    const SENT: usize = 16 * MESSAGE;
    let mut frame = vec![0x82, 0x80 | 127];
    frame.extend_from_slice(&(MESSAGE as u64).to_be_bytes());
    frame.extend_from_slice(&[0; 4]);
    frame.resize(frame.len() + MESSAGE, 7);
    let (mut reader, mut writer) = tcp.into_split();
    let sender = tokio::spawn(async move {
        for _ in 0..16 {
            if writer.write_all(&frame).await.is_err() {
                break;
            }
        }
        writer
    });
    // Not reading for three idle periods.
    tokio::time::sleep(Duration::from_secs(3)).await;
    // The server gave up on us: the connection ends before every echo came back.
    let mut received = 0;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match within(reader.read(&mut buf)).await {
            Ok(0) | Err(_) => break,
            Ok(n) => received += n,
        }
    }
    assert!(
        received < SENT,
        "{received} bytes echoed: the client was not dropped"
    );
    sender.abort();
}

/// `roost connect` ends when the server closes the connection, even though its standard
/// input is still open (a terminal where nothing was typed).
#[test]
fn connect_exits_when_the_server_closes_with_stdin_still_open() {
    use std::process::{Command, Stdio};
    let server = serve(&["--app", "echo", "--idle-timeout", "1"]);
    let mut client = Command::new(env!("CARGO_BIN_EXE_roost"))
        .args(["connect", &format!("ws://{}/", server.addr)])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _stdin = client.stdin.take();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = client.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > LIMIT {
            let _ = client.kill();
            panic!("roost connect still runs {LIMIT:?} after connecting");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut log = String::new();
    std::io::Read::read_to_string(&mut client.stderr.take().unwrap(), &mut log).unwrap();
    assert!(status.success(), "{status:?}: {log}");
    assert!(log.contains("closed by the server: 1001"), "{log}");
}

/// SIGTERM closes every connection with 1001 and the process exits 0, as the app server
/// does: a supervisor's stop never looks like a crash to the clients.
#[tokio::test]
async fn sigterm_closes_with_1001_and_exits_0() {
    let mut server = serve(&["--app", "echo"]);
    let url = format!("ws://{}/", server.addr);
    let (mut ws, _) = within(roost::connect(&url)).await.unwrap();
    within(ws.send(Message::text("before"))).await.unwrap();
    assert!(matches!(
        within(ws.recv()).await,
        Some(Ok(Message::Text(_)))
    ));
    server.sigterm();
    match within(ws.recv()).await {
        Some(Ok(Message::Close(Some(frame)))) => {
            assert_eq!(frame.code, CloseCode::GOING_AWAY);
            assert_eq!(frame.reason.as_str(), "server shutting down");
        }
        other => panic!("expected a close frame, got {other:?}"),
    }
    assert!(
        within(ws.recv()).await.is_none(),
        "the close handshake completes"
    );
    let exit = server.exit_status().await;
    assert!(exit.success(), "exit status {exit}");
}

/// `--shutdown-timeout` bounds how long SIGTERM waits for a client that never answers the
/// close: far less than the 5 s close timeout that would otherwise hold the exit.
#[tokio::test]
async fn sigterm_waits_at_most_the_shutdown_timeout_for_a_silent_client() {
    let mut server = serve(&["--app", "echo", "--shutdown-timeout", "0.2"]);
    let url = format!("ws://{}/", server.addr);
    // Connected, then never read again: the server's close frame is never answered.
    let (_silent, _) = within(roost::connect(&url)).await.unwrap();
    let asked = Instant::now();
    server.sigterm();
    let exit = server.exit_status().await;
    assert!(exit.success(), "exit status {exit}");
    let waited = asked.elapsed();
    assert!(
        waited < Duration::from_secs(4),
        "exited {waited:?} after SIGTERM"
    );
}

/// A setting only the application server has is refused with a word on where it applies,
/// instead of being ignored by the echo app.
#[test]
fn echo_refuses_the_app_servers_settings() {
    for flag in [
        &["--durable", "/tmp/x"][..],
        &["--allow-origin", "https://example.com"],
        &["--max-connections", "10"],
        &["--cluster", "redis://127.0.0.1:1"],
        &["--dormant-after", "5"],
        &["--admin-listen", "127.0.0.1:0"],
        &["--ping-interval", "5"],
        &["--max-outbound", "4096"],
        &["--backpressure", "drop"],
        &["--resume-ttl", "60"],
        &["--max-attachment-size", "100"],
    ] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_roost"))
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(flag)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{flag:?} was accepted");
        assert!(
            stderr.contains(flag[0]) && stderr.contains("--app chat"),
            "{flag:?}: {stderr}"
        );
    }
}

/// A setting out of its range is refused at the command line, naming the flag and the range,
/// before anything is bound.
#[test]
fn serve_refuses_settings_out_of_range() {
    for (flag, value) in [
        ("--idle-timeout", "31536001"),
        ("--ping-interval", "-1"),
        ("--shutdown-timeout", "never"),
        ("--resume-ttl", "0"),
        ("--resume-ttl", "31536001"),
        ("--max-outbound", "0"),
    ] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_roost"))
            .args(["serve", "--app", "chat", "--listen", "127.0.0.1:0"])
            .arg(format!("{flag}={value}"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{flag} {value} was accepted");
        assert!(
            stderr.contains(flag) && stderr.contains("expected"),
            "{flag} {value}: {stderr}"
        );
    }
}
