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

/// A scripted transport: each read returns the next of `reads` (then end of stream); each
/// write takes what `write` allows. What was written is recorded.
struct Scripted {
    reads: std::collections::VecDeque<Vec<u8>>,
    write: fn(call: usize, len: usize) -> io::Result<usize>,
    calls: usize,
    written: Vec<u8>,
}

impl Scripted {
    fn new(reads: Vec<Vec<u8>>, write: fn(usize, usize) -> io::Result<usize>) -> Self {
        Scripted {
            reads: reads.into(),
            write,
            calls: 0,
            written: Vec::new(),
        }
    }
}

impl io::Read for Scripted {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(next) = self.reads.pop_front() else {
            return Ok(0);
        };
        buf[..next.len()].copy_from_slice(&next);
        Ok(next.len())
    }
}

impl io::Write for Scripted {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.calls += 1;
        let n = (self.write)(self.calls, buf.len())?;
        self.written.extend_from_slice(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl blocking::Transport for Scripted {
    fn set_read_timeout(&mut self, _: Option<Duration>) -> io::Result<()> {
        Ok(())
    }

    fn shutdown(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_write_that_times_out_halfway_is_not_sent_twice() {
    // 10 bytes go out, then the stream's write timeout runs out, then it takes everything.
    let transport = Scripted::new(Vec::new(), |call, len| match call {
        1 => Ok(len.min(10)),
        2 => Err(io::ErrorKind::WouldBlock.into()),
        _ => Ok(len),
    });
    let mut ws = blocking::WebSocket::server(transport, Config::default(), Negotiated::default());
    let payload = vec![7u8; 100];
    let error = ws.send(Message::binary(payload.clone())).unwrap_err();
    assert!(
        matches!(&error, roost::Error::Io(e) if e.kind() == io::ErrorKind::WouldBlock),
        "{error:?}"
    );
    // The caller tries again: the rest of the frame follows what already went out.
    ws.flush().unwrap();
    let mut frame = vec![0x82, 100];
    frame.extend_from_slice(&payload);
    assert_eq!(ws.get_ref().written, frame);
}

#[test]
fn a_transport_that_fails_ends_the_connection_instead_of_failing_forever() {
    // The peer pings, then says "hi"; every write fails, so the pong never goes out.
    let mut input = vec![0x89, 0x80, 1, 2, 3, 4];
    input.extend(masked_text("hi"));
    let transport = Scripted::new(vec![input], |_, _| Err(io::ErrorKind::BrokenPipe.into()));
    let mut ws = blocking::WebSocket::server(transport, Config::default(), Negotiated::default());
    let mut outcomes = Vec::new();
    for _ in 0..4 {
        let outcome = ws.read();
        let end = matches!(outcome, Ok(None));
        outcomes.push(outcome.map_err(|e| e.to_string()));
        if end {
            break;
        }
    }
    // The failed write is reported once; then the connection is over (the message parsed
    // before it may still be handed out), and it stays over.
    assert!(matches!(outcomes.first(), Some(Err(_))), "{outcomes:?}");
    assert!(matches!(outcomes.last(), Some(Ok(None))), "{outcomes:?}");
    assert_eq!(
        outcomes.iter().filter(|o| o.is_err()).count(),
        1,
        "{outcomes:?}"
    );
    assert!(matches!(ws.read(), Ok(None)));
    assert_eq!(
        ws.close_status().map(|status| status.initiator),
        Some(CloseInitiator::Lost)
    );
}

#[test]
fn a_silent_tls_server_cannot_hold_a_blocking_handshake() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // Accepts the TCP connection and never says a word (no ServerHello, no 101) until the
    // test is over, or for 10 s at the most.
    let (done, over) = std::sync::mpsc::channel::<()>();
    let silent = std::thread::spawn(move || {
        let (tcp, _) = listener.accept().unwrap();
        let _ = over.recv_timeout(Duration::from_secs(10));
        drop(tcp);
    });
    let tcp = TcpStream::connect(addr).unwrap();
    let tls = rustls::ClientConfig::builder()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = rustls::StreamOwned::new(
        rustls::ClientConnection::new(Arc::new(tls), name).unwrap(),
        tcp,
    );
    let config = Config::builder()
        .handshake_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let uri: http::Uri = format!("wss://localhost:{}/", addr.port()).parse().unwrap();
    let started = Instant::now();
    let result = blocking::client_handshake(tls, &uri, &config, &[], &Default::default(), true);
    let waited = started.elapsed();
    assert!(
        matches!(result, Err(roost::Error::Timeout(_))),
        "{:?}",
        result.err()
    );
    // The silent server hangs up after 10 s: a handshake it did not bound ends there.
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    drop(done);
    silent.join().unwrap();
}

/// A peer that never stops sending: every read gives one more masked text frame, a few
/// milliseconds apart. Writes go nowhere.
struct Chatty;

impl io::Read for Chatty {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        std::thread::sleep(Duration::from_millis(5));
        let frame = masked_text("more");
        buf[..frame.len()].copy_from_slice(&frame);
        Ok(frame.len())
    }
}

impl io::Write for Chatty {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl blocking::Transport for Chatty {
    fn set_read_timeout(&mut self, _: Option<Duration>) -> io::Result<()> {
        Ok(())
    }

    fn shutdown(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_peer_that_keeps_sending_cannot_hold_a_blocking_close_open() {
    let config = Config::builder()
        .close_timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let mut ws = blocking::WebSocket::server(Chatty, config, Negotiated::default());
    ws.close(None).unwrap();
    // 2,000 reads take 10 s; the close timeout ends it after about 20.
    let mut reads = 0;
    while ws.read().unwrap().is_some() {
        reads += 1;
        assert!(reads < 2_000, "still reading long after the close timeout");
    }
    let status = ws.close_status().unwrap();
    assert!(!status.clean, "{status:?}");
}

#[test]
fn closing_after_the_peers_close_only_flushes_the_echo() {
    let close = [0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8];
    let transport = Scripted::new(vec![close.to_vec()], |_, len| Ok(len));
    let mut ws = blocking::WebSocket::server(transport, Config::default(), Negotiated::default());
    assert!(matches!(ws.read().unwrap(), Some(Message::Close(Some(_)))));
    // What a loop that answers every close frame does.
    ws.close(None).unwrap();
    assert!(ws.read().unwrap().is_none());
    let status = ws.close_status().unwrap();
    assert!(
        status.clean && status.initiator == CloseInitiator::Peer,
        "{status:?}"
    );
    // The echo went out once: the close frame with the peer's code, unmasked.
    assert_eq!(ws.get_ref().written, [0x88, 0x02, 0x03, 0xe8]);
}
