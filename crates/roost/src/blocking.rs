//! The same WebSocket over blocking `std::net` streams, for programs without an async runtime.
//!
//! ```no_run
//! use roost::{Message, blocking};
//!
//! let listener = std::net::TcpListener::bind("127.0.0.1:9002")?;
//! std::thread::spawn(move || {
//!     for tcp in listener.incoming().flatten() {
//!         std::thread::spawn(move || {
//!             let mut ws = blocking::accept(tcp)?;
//!             while let Some(message) = ws.read()? {
//!                 if message.is_data() {
//!                     ws.send(message)?;
//!                 }
//!             }
//!             Ok::<_, roost::Error>(())
//!         });
//!     }
//! });
//! let mut ws = blocking::connect("ws://127.0.0.1:9002/")?;
//! ws.send(Message::text("hello"))?;
//! assert_eq!(ws.read()?, Some(Message::text("hello")));
//! # Ok::<_, roost::Error>(())
//! ```

use std::{
    io::{self, Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use http::{HeaderMap, Response, Uri};
use roost_proto::{
    CloseFrame, CloseStatus, Config, Connection, Event, Message, Negotiated, UsageError,
    handshake::{self, ClientHandshake, HookResult, RequestReader},
};

use crate::{Error, client::Target, handshake_key, mask_source};

/// A stream whose reads can be bounded in time, so close and handshake timeouts hold.
pub trait Transport: Read + Write {
    /// Bounds the next reads; `None` waits forever.
    fn set_read_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()>;
    /// Closes the write direction once the connection is over.
    fn shutdown(&mut self) -> io::Result<()>;
}

impl Transport for TcpStream {
    fn set_read_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        TcpStream::set_read_timeout(self, timeout)
    }

    fn shutdown(&mut self) -> io::Result<()> {
        TcpStream::shutdown(self, std::net::Shutdown::Write)
    }
}

#[cfg(feature = "tls")]
impl<C, D> Transport for rustls::StreamOwned<C, TcpStream>
where
    C: std::ops::DerefMut<Target = rustls::ConnectionCommon<D>>,
    D: rustls::SideData,
{
    fn set_read_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        self.sock.set_read_timeout(timeout)
    }

    fn shutdown(&mut self) -> io::Result<()> {
        self.conn.send_close_notify();
        let _ = self.flush();
        self.sock.shutdown(std::net::Shutdown::Write)
    }
}

/// A blocking WebSocket. [`WebSocket::read`] answers pings and close frames as it goes.
#[derive(Debug)]
pub struct WebSocket<S> {
    io: S,
    connection: Connection,
    protocol: Option<String>,
    buf: Box<[u8]>,
    /// The transport is known to have no read timeout: reads without a deadline need not
    /// clear it again (a system call each). False at first: the stream's setting is not known.
    no_read_timeout: bool,
    shut_down: bool,
}

impl<S: Transport> WebSocket<S> {
    /// Wraps a stream whose handshake is done; `leftover` are bytes read past it.
    pub fn from_connection(io: S, mut connection: Connection, leftover: &[u8]) -> Self {
        if !leftover.is_empty() {
            connection.receive(leftover, Instant::now());
        }
        WebSocket {
            io,
            connection,
            protocol: None,
            buf: vec![0; 32 << 10].into(),
            no_read_timeout: false,
            shut_down: false,
        }
    }

    /// Wraps an already-upgraded stream as a server-side WebSocket, without a handshake.
    pub fn server(io: S, config: Config, negotiated: Negotiated) -> Self {
        Self::from_connection(io, Connection::server(config, negotiated), &[])
    }

    /// Wraps an already-upgraded stream as a client-side WebSocket, without a handshake.
    pub fn client(io: S, config: Config, negotiated: Negotiated) -> Self {
        Self::from_connection(
            io,
            Connection::client(config, negotiated, mask_source()),
            &[],
        )
    }

    /// The subprotocol the handshake selected, if any.
    pub fn protocol(&self) -> Option<&str> {
        self.protocol.as_deref()
    }

    /// How the connection ended, once it has.
    pub fn close_status(&self) -> Option<CloseStatus> {
        self.connection.close_status()
    }

    /// The underlying stream.
    pub fn get_ref(&self) -> &S {
        &self.io
    }

    /// Blocks for the next message; `Ok(None)` once the connection is over.
    pub fn read(&mut self) -> Result<Option<Message>, Error> {
        loop {
            self.flush()?;
            // Every pass, not only when a read times out: a peer that keeps sending after our
            // close must not keep the close timeout from running out. The clock is read only
            // while there is a deadline, not for every message of an open connection.
            if self.connection.next_deadline().is_some() {
                self.connection.on_deadline(Instant::now());
            }
            match self.connection.next_event() {
                Some(Event::Message(message)) => return Ok(Some(message)),
                Some(Event::Failed(error)) => return Err(Error::Protocol(error)),
                Some(_) => continue,
                None => {}
            }
            if self.connection.is_finished() {
                if !self.shut_down {
                    self.shut_down = true;
                    let _ = self.io.shutdown();
                }
                return Ok(None);
            }
            let timeout = self.connection.next_deadline().map(|deadline| {
                deadline
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(1))
            });
            // A deadline's timeout shrinks as it nears, so it is set for every read; the
            // common case, no deadline, is set once.
            if timeout.is_some() || !self.no_read_timeout {
                self.io.set_read_timeout(timeout)?;
                self.no_read_timeout = timeout.is_none();
            }
            match self.io.read(&mut self.buf) {
                Ok(0) => self.connection.receive_eof(),
                Ok(n) => self.connection.receive(&self.buf[..n], Instant::now()),
                Err(e) if is_timeout(&e) => self.connection.on_deadline(Instant::now()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.lost(e)),
            }
        }
    }

    /// Sends a message and flushes it.
    pub fn send(&mut self, message: Message) -> Result<(), Error> {
        self.connection
            .send(&message, Instant::now())
            .map_err(|error| {
                if self.connection.can_send() {
                    Error::Usage(error)
                } else {
                    Error::ConnectionClosed
                }
            })?;
        self.flush()
    }

    /// Starts the close handshake; keep calling [`WebSocket::read`] until it returns `None`.
    /// Once a close was sent, by this call or as the echo of the peer's close, closing again
    /// only flushes.
    pub fn close(&mut self, frame: Option<CloseFrame>) -> Result<(), Error> {
        match self.connection.close(frame, Instant::now()) {
            Ok(()) | Err(UsageError::SendAfterClose) => {}
            Err(error) => return Err(Error::Usage(error)),
        }
        self.flush()
    }

    /// Writes everything queued.
    ///
    /// A write that times out (a write timeout set on the stream) or would block returns its
    /// error with the output still consistent: what went out is not sent again, and a later
    /// call carries on from there. Any other write error means the connection is lost: its
    /// queued output is dropped and [`WebSocket::read`] then returns `Ok(None)`.
    pub fn flush(&mut self) -> Result<(), Error> {
        if self.connection.pending_output_len() == 0 {
            return Ok(());
        }
        // Piece by piece: a payload sent without a copy is a piece of its own. Each write is
        // accounted for at once, so a write failing halfway does not repeat bytes later.
        while self.connection.pending_output_len() > 0 {
            match self.io.write(self.connection.pending_output()) {
                Ok(0) => return Err(self.lost(io::ErrorKind::WriteZero.into())),
                Ok(written) => self.connection.consume_output(written),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_timeout(&e) => return Err(Error::Io(e)),
                Err(e) => return Err(self.lost(e)),
            }
        }
        match self.io.flush() {
            Ok(()) => Ok(()),
            Err(e) if is_timeout(&e) => Err(Error::Io(e)),
            Err(e) => Err(self.lost(e)),
        }
    }

    /// The transport failed: the connection is over, and what it still had to send is
    /// dropped (it would fail again on every later call).
    fn lost(&mut self, error: io::Error) -> Error {
        self.connection.transport_failed();
        Error::Io(error)
    }
}

/// Runs the server handshake with the default configuration and no hook.
pub fn accept<S: Transport>(stream: S) -> Result<WebSocket<S>, Error> {
    accept_with(stream, &Config::default(), |_, response| Ok(response))
}

/// Runs the server handshake with `config` and a request hook (see [`crate::accept_with`]).
pub fn accept_with<S, F>(mut stream: S, config: &Config, hook: F) -> Result<WebSocket<S>, Error>
where
    S: Transport,
    F: FnOnce(&http::Request<()>, Response<()>) -> HookResult,
{
    let deadline = Instant::now() + config.limits().handshake_timeout;
    let mut reader = RequestReader::new(config);
    let mut buf = vec![0; 4096];
    let (request, leftover) = loop {
        let n = read_before(
            &mut stream,
            &mut buf,
            deadline,
            "the client did not finish its handshake in time",
        )?;
        match reader.feed(&buf[..n]) {
            Ok(Some(head)) => break head,
            Ok(None) => {}
            Err(error) => {
                let _ = stream.write_all(&handshake::reject_response(&error));
                let _ = stream.shutdown();
                return Err(Error::Handshake(error));
            }
        }
    };
    stream.set_read_timeout(None)?;
    match handshake::accept(config, &request, hook) {
        Ok(accepted) => {
            stream.write_all(&accepted.to_bytes())?;
            stream.flush()?;
            let connection = Connection::server(config.clone(), accepted.negotiated);
            let mut ws = WebSocket::from_connection(stream, connection, &leftover);
            ws.protocol = accepted.protocol;
            Ok(ws)
        }
        Err(rejected) => {
            let _ = stream.write_all(&rejected.to_bytes());
            let _ = stream.shutdown();
            Err(Error::Handshake(rejected.error))
        }
    }
}

/// Connects to a `ws://` URL (or `wss://` with the `tls` feature, verified against the web
/// PKI roots) with the default configuration.
pub fn connect(url: &str) -> Result<WebSocket<Box<dyn Transport + Send>>, Error> {
    let Target {
        uri,
        secure,
        host,
        port,
    } = Target::parse(url)?;
    let config = Config::default();
    let deadline = Instant::now() + config.limits().handshake_timeout;
    let tcp = connect_before(&host, port, deadline)?;
    tcp.set_nodelay(true)?;
    let stream: Box<dyn Transport + Send> = if secure {
        tls_stream(tcp, &host)?
    } else {
        Box::new(tcp)
    };
    client_handshake(stream, &uri, &config, &[], &HeaderMap::new(), secure)
}

/// Connects to `host:port`, trying each address the name resolves to, before `deadline`.
fn connect_before(host: &str, port: u16, deadline: Instant) -> Result<TcpStream, Error> {
    use std::net::ToSocketAddrs as _;
    let mut last = None;
    for addr in (host, port).to_socket_addrs()? {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match TcpStream::connect_timeout(&addr, left) {
            Ok(tcp) => return Ok(tcp),
            Err(e) => last = Some(e),
        }
    }
    match last {
        Some(e) if !is_timeout(&e) => Err(Error::Io(e)),
        Some(_) => Err(Error::Timeout(
            "the server did not accept the connection in time",
        )),
        None => Err(Error::Io(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{host} resolves to no address"),
        ))),
    }
}

#[cfg(feature = "tls")]
fn tls_stream(tcp: TcpStream, host: &str) -> Result<Box<dyn Transport + Send>, Error> {
    let name = rustls_pki_types::ServerName::try_from(host.to_owned())
        .map_err(|e| Error::Url(format!("{host:?} is not a valid TLS server name: {e}")))?;
    let connection =
        rustls::ClientConnection::new(crate::tls::client_config_with_webpki_roots(), name)?;
    Ok(Box::new(rustls::StreamOwned::new(connection, tcp)))
}

#[cfg(not(feature = "tls"))]
fn tls_stream(_: TcpStream, _: &str) -> Result<Box<dyn Transport + Send>, Error> {
    Err(Error::Url("wss:// needs roost's `tls` feature".to_owned()))
}

impl<T: Transport + ?Sized> Transport for Box<T> {
    fn set_read_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        (**self).set_read_timeout(timeout)
    }

    fn shutdown(&mut self) -> io::Result<()> {
        (**self).shutdown()
    }
}

/// Runs the client handshake over a connected stream: the blocking counterpart of
/// [`crate::ClientBuilder::handshake`].
pub fn client_handshake<S: Transport>(
    mut stream: S,
    uri: &Uri,
    config: &Config,
    protocols: &[String],
    headers: &HeaderMap,
    secure: bool,
) -> Result<WebSocket<S>, Error> {
    let deadline = Instant::now() + config.limits().handshake_timeout;
    let (mut handshake, request) =
        ClientHandshake::new(config, uri, handshake_key(), protocols, headers, secure)?;
    // Bounded too: over TLS this write runs the TLS handshake, reads included.
    stream.set_read_timeout(Some(config.limits().handshake_timeout))?;
    if let Err(e) = stream.write_all(&request).and_then(|()| stream.flush()) {
        return Err(if is_timeout(&e) {
            Error::Timeout(HANDSHAKE_LATE)
        } else {
            Error::from(e)
        });
    }
    let mut buf = vec![0; 4096];
    let accepted = loop {
        let n = read_before(&mut stream, &mut buf, deadline, HANDSHAKE_LATE)?;
        if let Some(accepted) = handshake.feed(&buf[..n])? {
            break accepted;
        }
    };
    stream.set_read_timeout(None)?;
    let connection = Connection::client(config.clone(), accepted.negotiated, mask_source());
    let mut ws = WebSocket::from_connection(stream, connection, &accepted.leftover);
    ws.protocol = accepted.protocol;
    Ok(ws)
}

/// The error of a client handshake that ran past its timeout.
const HANDSHAKE_LATE: &str = "the server did not complete the handshake in time";

/// One read that must finish before `deadline`; end of stream is an error here.
fn read_before<S: Transport>(
    stream: &mut S,
    buf: &mut [u8],
    deadline: Instant,
    timeout_message: &'static str,
) -> Result<usize, Error> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Error::Timeout(timeout_message));
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(buf) {
            Ok(0) => {
                return Err(Error::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the peer closed the connection during the handshake",
                )));
            }
            Ok(n) => return Ok(n),
            Err(e) if is_timeout(&e) || e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::Io(e)),
        }
    }
}

/// Whether `error` is a socket timeout running out (`WouldBlock` on Unix, `TimedOut` on
/// Windows), not a failure of the connection.
fn is_timeout(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}
