//! Handler calls: auto-responses, close codes, errors and panics.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicUsize, Ordering::SeqCst},
};

use roost::{CloseCode, CloseFrame, Message};
use roost_server::{App, Data, Disconnect, Handler, Room, ServerConfig, Ws};

use super::{connect, eventually, next_text, start, until_closed, within};

#[derive(Default)]
struct Recorder {
    messages: AtomicUsize,
    closes: Mutex<Vec<(u16, String)>>,
}

struct Recording(Arc<Recorder>);

impl Handler for Recording {
    async fn on_open(&self, ws: &Ws, _url: &http::Uri) -> Result<(), Disconnect> {
        ws.set_auto_response("heartbeat", "alive");
        Ok(())
    }

    async fn on_message(&self, ws: &Ws, data: Data, _room: &Room) -> Result<(), Disconnect> {
        self.0.messages.fetch_add(1, SeqCst);
        match data.as_text() {
            Some("panic") => panic!("the handler was asked to panic"),
            Some("fail") => Err(Disconnect::new(4400, "asked to fail")),
            _ => {
                ws.send(data);
                Ok(())
            }
        }
    }

    async fn on_close(&self, _ws: &Ws, code: CloseCode, reason: &str) {
        self.0
            .closes
            .lock()
            .unwrap()
            .push((code.0, reason.to_owned()));
    }
}

async fn recording_server() -> (
    std::net::SocketAddr,
    roost_server::ServerHandle,
    Arc<Recorder>,
) {
    let recorder = Arc::new(Recorder::default());
    let app = App::new().ws("/r", Recording(recorder.clone())).unwrap();
    let (addr, handle) = start(app, ServerConfig::default()).await;
    (addr, handle, recorder)
}

#[tokio::test]
async fn the_auto_response_never_reaches_the_handler() {
    let (addr, handle, recorder) = recording_server().await;
    let mut ws = connect(addr, "/r").await;
    for _ in 0..5 {
        within(ws.send(Message::text("heartbeat"))).await.unwrap();
        assert_eq!(next_text(&mut ws).await, "alive");
    }
    within(ws.send(Message::text("real"))).await.unwrap();
    assert_eq!(next_text(&mut ws).await, "real");
    assert_eq!(
        recorder.messages.load(SeqCst),
        1,
        "only the real message woke the handler"
    );
    eventually("the metrics count the hits", || {
        handle.metrics().auto_response_hits() == 5
    })
    .await;
}

#[tokio::test]
async fn the_peers_close_code_and_reason_reach_on_close() {
    let (addr, _handle, recorder) = recording_server().await;
    let mut ws = connect(addr, "/r").await;
    within(ws.close(Some(CloseFrame::new(4321, "see you"))))
        .await
        .unwrap();
    assert_eq!(until_closed(&mut ws).await, Some(CloseFrame::new(4321, "")));
    let mut ws = connect(addr, "/r").await;
    within(ws.close(None)).await.unwrap();
    until_closed(&mut ws).await;
    // A connection lost without a close frame reports 1006.
    let ws = connect(addr, "/r").await;
    drop(ws);
    eventually("three closes recorded", || {
        recorder.closes.lock().unwrap().len() == 3
    })
    .await;
    let closes = recorder.closes.lock().unwrap().clone();
    assert_eq!(closes[0], (4321, "see you".to_owned()));
    assert_eq!(closes[1], (1005, String::new()));
    assert_eq!(closes[2], (1006, String::new()));
}

#[tokio::test]
async fn a_panic_closes_only_that_connection_with_1011() {
    let (addr, handle, recorder) = recording_server().await;
    let mut bystander = connect(addr, "/r").await;
    let mut victim = connect(addr, "/r").await;
    within(victim.send(Message::text("panic"))).await.unwrap();
    let close = until_closed(&mut victim).await.unwrap();
    assert_eq!(close.code, CloseCode::INTERNAL_ERROR);
    within(bystander.send(Message::text("still here")))
        .await
        .unwrap();
    assert_eq!(next_text(&mut bystander).await, "still here");
    let mut failing = connect(addr, "/r").await;
    let before = recorder.messages.load(SeqCst);
    // Messages right behind the failing one never reach the handler.
    failing.feed(&Message::text("fail")).unwrap();
    for _ in 0..5 {
        failing.feed(&Message::text("after the failure")).unwrap();
    }
    within(failing.flush()).await.unwrap();
    let close = until_closed(&mut failing).await.unwrap();
    assert_eq!(
        (close.code.0, close.reason.as_str()),
        (4400, "asked to fail")
    );
    assert_eq!(
        recorder.messages.load(SeqCst) - before,
        1,
        "only the failing message was handled"
    );
    assert!(
        handle
            .metrics()
            .render()
            .contains("roost_handler_panics_total 1\n")
    );
}

struct Attach;

impl Handler for Attach {
    async fn on_message(&self, ws: &Ws, data: Data, _room: &Room) -> Result<(), Disconnect> {
        let text = data.as_text().unwrap_or_default().to_owned();
        match ws.serialize_attachment(&text).await {
            Ok(()) => ws.send_text("stored"),
            Err(error) => ws.send_text(error.to_string()),
        };
        Ok(())
    }
}

#[tokio::test]
async fn an_attachment_over_the_cap_is_refused_with_a_clear_error() {
    let config = ServerConfig {
        max_attachment_size: 100,
        auto_response: Some(("ping?".to_owned(), "pong!".to_owned())),
        ..ServerConfig::default()
    };
    let (addr, _) = start(App::new().ws("/a", Attach).unwrap(), config).await;
    let mut ws = connect(addr, "/a").await;
    within(ws.send(Message::text("small"))).await.unwrap();
    assert_eq!(next_text(&mut ws).await, "stored");
    within(ws.send(Message::text("x".repeat(200))))
        .await
        .unwrap();
    let error = next_text(&mut ws).await;
    assert_eq!(
        error,
        "attachment of 202 bytes exceeds the limit of 100 bytes"
    );
    // The server-wide auto-response answers without the handler.
    within(ws.send(Message::text("ping?"))).await.unwrap();
    assert_eq!(next_text(&mut ws).await, "pong!");
}

/// A handler that does work before it returns its future, and panics there.
struct PanicsBeforeItsFuture(Arc<AtomicUsize>);

impl Handler for PanicsBeforeItsFuture {
    fn on_message(
        &self,
        ws: &Ws,
        data: Data,
        _room: &Room,
    ) -> impl Future<Output = Result<(), Disconnect>> + Send {
        let text = data
            .as_text()
            .expect("this handler takes text only")
            .to_owned();
        let ws = ws.clone();
        async move {
            ws.send(Data::from(text));
            Ok(())
        }
    }

    async fn on_close(&self, _ws: &Ws, _code: CloseCode, _reason: &str) {
        self.0.fetch_add(1, SeqCst);
    }
}

#[tokio::test]
async fn a_panic_before_the_handlers_future_is_contained_too() {
    let closed = Arc::new(AtomicUsize::new(0));
    let app = App::new()
        .ws("/p", PanicsBeforeItsFuture(closed.clone()))
        .unwrap();
    let (addr, handle) = start(app, ServerConfig::default()).await;
    let mut bystander = connect(addr, "/p").await;
    let mut victim = connect(addr, "/p").await;
    within(victim.send(Message::binary(vec![1, 2, 3])))
        .await
        .unwrap();
    let close = until_closed(&mut victim).await.unwrap();
    assert_eq!(close.code, CloseCode::INTERNAL_ERROR);
    eventually(
        "on_close ran for the connection whose handler panicked",
        || closed.load(SeqCst) == 1,
    )
    .await;
    within(bystander.send(Message::text("still here")))
        .await
        .unwrap();
    assert_eq!(next_text(&mut bystander).await, "still here");
    assert!(
        handle
            .metrics()
            .render()
            .contains("roost_handler_panics_total 1\n")
    );
}

struct HangsUp;

impl Handler for HangsUp {
    async fn on_message(&self, _ws: &Ws, _data: Data, _room: &Room) -> Result<(), Disconnect> {
        Err(Disconnect::new(4000, "go away"))
    }
}

/// A peer that keeps the socket busy after our close, never answering it, is dropped at the
/// close timeout all the same: a socket that is always readable does not hold the timer off.
#[tokio::test]
async fn a_peer_flooding_after_our_close_is_dropped_at_the_close_timeout() {
    use std::io::{Read as _, Write as _};
    let config = ServerConfig {
        protocol: roost::Config::builder()
            .close_timeout(std::time::Duration::from_millis(200))
            .build()
            .unwrap(),
        ..ServerConfig::default()
    };
    let (addr, _handle) = start(App::new().ws("/h", HangsUp).unwrap(), config).await;
    let flood = std::thread::spawn(move || {
        let mut tcp = std::net::TcpStream::connect(addr).unwrap();
        tcp.write_all(&super::upgrade_request("/h")).unwrap();
        let mut head = [0u8; 256];
        let n = tcp.read(&mut head).unwrap();
        assert!(head[..n].starts_with(b"HTTP/1.1 101"));
        // Masked binary frames of 1 KiB (a zero key leaves the payload as it is).
        let frame = [&[0x82, 0xfe, 0x04, 0x00, 0, 0, 0, 0][..], &[7; 1024]].concat();
        let burst = frame.repeat(64);
        let started = std::time::Instant::now();
        while started.elapsed() < super::LIMIT / 2 {
            if tcp.write_all(&burst).is_err() {
                return true;
            }
        }
        false
    });
    let dropped = within(tokio::task::spawn_blocking(move || flood.join().unwrap()))
        .await
        .unwrap();
    assert!(
        dropped,
        "the server still read the flood after the close timeout"
    );
}
