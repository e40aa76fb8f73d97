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
