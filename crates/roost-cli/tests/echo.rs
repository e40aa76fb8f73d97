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
