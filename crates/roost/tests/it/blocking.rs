//! The blocking driver over std::net.

use std::{
    io::{self, Read as _, Write as _},
    net::{Shutdown, TcpListener, TcpStream},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use roost::{CloseCode, CloseFrame, CloseInitiator, Config, Message, Negotiated, blocking};

#[test]
fn blocking_client_and_server_echo_and_close() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (tcp, _) = listener.accept().unwrap();
        let mut ws = blocking::accept(tcp).unwrap();
        while let Some(message) = ws.read().unwrap() {
            if message.is_data() {
                ws.send(message).unwrap();
            }
        }
        ws.close_status().unwrap()
    });
    let mut ws = blocking::connect(&format!("ws://{addr}/")).unwrap();
    for message in [Message::text("blocking"), Message::binary(vec![1; 100_000])] {
        ws.send(message.clone()).unwrap();
        assert_eq!(ws.read().unwrap(), Some(message));
    }
    ws.close(Some(CloseFrame::new(CloseCode::NORMAL, "finished")))
        .unwrap();
    assert_eq!(
        ws.read().unwrap(),
        Some(Message::Close(Some(CloseFrame::new(1000, ""))))
    );
    assert_eq!(ws.read().unwrap(), None);
    let status = server.join().unwrap();
    assert_eq!(status.initiator, CloseInitiator::Peer);
    assert_eq!(status.reason.as_str(), "finished");
}

#[test]
fn a_blocking_async_mix_interoperates() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        runtime.block_on(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            super::echo(roost::accept(tcp).await.unwrap()).await;
        });
    });
    let mut ws = blocking::connect(&format!("ws://{addr}/")).unwrap();
    let text = "compress me ".repeat(100);
    ws.send(Message::text(text.as_str())).unwrap();
    assert_eq!(ws.read().unwrap(), Some(Message::text(text.as_str())));
    ws.close(None).unwrap();
    while ws.read().unwrap().is_some() {}
    server.join().unwrap();
}

/// The read timeouts set on a transport, in order.
type Timeouts = Arc<Mutex<Vec<Option<Duration>>>>;

/// A TCP stream that records the read timeouts set on it.
struct RecordingTimeouts {
    tcp: TcpStream,
    set: Timeouts,
}

impl io::Read for RecordingTimeouts {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.tcp.read(buf)
    }
}

impl io::Write for RecordingTimeouts {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tcp.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.tcp.flush()
    }
}

impl blocking::Transport for RecordingTimeouts {
    fn set_read_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        self.set.lock().unwrap().push(timeout);
        self.tcp.set_read_timeout(timeout)
    }

    fn shutdown(&mut self) -> io::Result<()> {
        self.tcp.shutdown(Shutdown::Write)
    }
}

/// A blocking server over [`RecordingTimeouts`], and the raw client socket talking to it.
fn recorded_server(
    config: Config,
) -> (blocking::WebSocket<RecordingTimeouts>, TcpStream, Timeouts) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (tcp, _) = listener.accept().unwrap();
    let set = Arc::default();
    let transport = RecordingTimeouts {
        tcp,
        set: Arc::clone(&set),
    };
    let ws = blocking::WebSocket::server(transport, config, Negotiated::default());
    (ws, client, set)
}

/// A masked client text frame, as a client sends it (payloads under 126 bytes: the length
/// fits the first header byte).
fn masked_text(text: &str) -> Vec<u8> {
    assert!(
        text.len() < 126,
        "a longer payload needs an extended length"
    );
    let key = [9, 8, 7, 6];
    let mut frame = vec![0x81, 0x80 | text.len() as u8];
    frame.extend_from_slice(&key);
    frame.extend(text.bytes().enumerate().map(|(i, b)| b ^ key[i % 4]));
    frame
}

#[test]
fn reads_without_a_deadline_set_the_socket_timeout_once() {
    let (mut ws, mut client, set) = recorded_server(Config::default());
    for i in 0..20 {
        let text = format!("message {i}");
        // One message per read: the next is sent only once the echo came back.
        client.write_all(&masked_text(&text)).unwrap();
        let message = ws.read().unwrap().unwrap();
        assert_eq!(message, Message::text(text.as_str()));
        ws.send(message).unwrap();
        let mut echo = vec![0; 2 + text.len()];
        client.read_exact(&mut echo).unwrap();
        assert_eq!(&echo[2..], text.as_bytes());
    }
    // Whatever the stream had is cleared once, then left alone: no system call per read.
    assert_eq!(*set.lock().unwrap(), [None]);
}

#[test]
fn a_silent_peer_cannot_hold_a_blocking_close_open() {
    let close_timeout = Duration::from_millis(300);
    let config = Config::builder()
        .close_timeout(close_timeout)
        .build()
        .unwrap();
    let (mut ws, client, set) = recorded_server(config);
    // Bounds the test should the deadline stop bounding reads: the client hangs up after
    // 10 s, which ends the read and fails the check on the time waited below.
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(10));
        let _ = client.shutdown(Shutdown::Both);
    });
    let started = Instant::now();
    ws.close(None).unwrap();
    // The client never answers: the read gives up at the close deadline.
    while ws.read().unwrap().is_some() {}
    let waited = started.elapsed();
    assert!(waited >= close_timeout, "gave up after {waited:?}");
    assert!(waited < Duration::from_secs(10), "{waited:?}");
    // As the sans-IO core reports a close handshake that never completed.
    let status = ws.close_status().unwrap();
    assert_eq!(
        (status.initiator, status.code),
        (CloseInitiator::Lost, CloseCode::ABNORMAL)
    );
    // Each read waited for what was left of the deadline.
    let set = set.lock().unwrap();
    assert!(
        !set.is_empty()
            && set
                .iter()
                .all(|timeout| timeout.is_some_and(|t| t <= close_timeout)),
        "{set:?}"
    );
}
