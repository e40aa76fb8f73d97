//! The server handshake over any tokio stream.

use http::Response;
use roost_proto::{
    Config, Connection,
    handshake::{self, HookResult, RequestHead, RequestReader},
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::{Error, WebSocket};

/// Runs the server handshake on `stream` with the default [`Config`] and no hook: any valid
/// upgrade request is accepted, no subprotocol is chosen, permessage-deflate is negotiated
/// when offered.
pub async fn accept<S>(stream: S) -> Result<WebSocket<S>, Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    accept_with(stream, &Config::default(), |_, response| Ok(response)).await
}

/// Runs the server handshake with `config` and a `hook` that sees the request before the
/// answer: it may add response headers, choose a subprotocol by setting
/// `Sec-WebSocket-Protocol` (never echoed automatically), or refuse with any status.
///
/// A bad request is answered with the right status (400, 405, 426, 431, or the hook's) and
/// returned as [`Error::Handshake`]. The whole handshake is bounded by
/// [`roost_proto::Limits::handshake_timeout`].
pub async fn accept_with<S, F>(
    mut stream: S,
    config: &Config,
    hook: F,
) -> Result<WebSocket<S>, Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnOnce(&http::Request<()>, Response<()>) -> HookResult,
{
    let deadline = tokio::time::Instant::now() + config.limits().handshake_timeout;
    let read_head = async {
        let mut reader = RequestReader::new(config);
        let mut buf = vec![0; 4096];
        loop {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                return Err(Error::Io(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the client closed the connection during the handshake",
                )));
            }
            match reader.feed(&buf[..n]) {
                Ok(Some(head)) => return Ok(Ok(head)),
                Ok(None) => {}
                Err(error) => return Ok(Err(error)),
            }
        }
    };
    let head = tokio::time::timeout_at(deadline, read_head)
        .await
        .map_err(|_| Error::Timeout("the client did not finish its handshake in time"))??;
    let (request, leftover) = match head {
        Ok(head) => head,
        Err(error) => {
            let response = handshake::reject_response(&error);
            let _ =
                tokio::time::timeout_at(deadline, write_and_close(&mut stream, &response)).await;
            return Err(Error::Handshake(error));
        }
    };
    tokio::time::timeout_at(
        deadline,
        accept_request(stream, config, &request, &leftover, hook),
    )
    .await
    .map_err(|_| Error::Timeout("the handshake response could not be written in time"))?
}

/// Answers an upgrade request whose head was already read by another HTTP parser, then runs
/// the WebSocket on `stream`. `leftover` holds bytes read past the head.
pub async fn accept_request<S, R, F>(
    mut stream: S,
    config: &Config,
    request: &R,
    leftover: &[u8],
    hook: F,
) -> Result<WebSocket<S>, Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
    R: RequestHead + ?Sized,
    F: FnOnce(&R, Response<()>) -> HookResult,
{
    match handshake::accept(config, request, hook) {
        Ok(accepted) => {
            stream.write_all(&accepted.to_bytes()).await?;
            stream.flush().await?;
            let connection = Connection::server(config.clone(), accepted.negotiated);
            Ok(WebSocket::from_connection(stream, connection, leftover)
                .with_protocol(accepted.protocol))
        }
        Err(rejected) => {
            let _ = write_and_close(&mut stream, &rejected.to_bytes()).await;
            Err(Error::Handshake(rejected.error))
        }
    }
}

async fn write_and_close<S: AsyncWrite + Unpin>(
    stream: &mut S,
    bytes: &[u8],
) -> std::io::Result<()> {
    stream.write_all(bytes).await?;
    stream.shutdown().await
}

/// Completes when the process is asked to stop: SIGTERM (systemd, Kubernetes, `kill`) or
/// SIGINT (Ctrl-C); on other platforms, Ctrl-C. A server selects on it beside its accept
/// loop, then closes its connections with 1001 (going away).
///
/// Errors if the signal handlers cannot be installed. Once it was first polled, the handlers
/// stay installed for the life of the process (tokio's, which cannot be removed): a later
/// SIGTERM or SIGINT no longer ends the process by itself.
pub async fn shutdown_signal() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            result = tokio::signal::ctrl_c() => {
                result?;
                tracing::info!("SIGINT received");
            }
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c().await?;
    Ok(())
}

/// Accepts connections from a listener and rides out failures to accept.
///
/// Accepting fails mostly when the process is out of file descriptors (EMFILE). A server
/// should then keep serving the connections it has and accept again once some end (waiting
/// clients stay in the listen backlog), not exit or spin. [`Accepting::next`] retries every
/// [`Accepting::RETRY`], says so once per outage (a warning with what to do), and says when
/// accepting works again.
#[derive(Debug, Default)]
pub struct Accepting {
    /// While accepting fails: when it started and how many attempts failed.
    outage: Option<(std::time::Instant, u64)>,
}

impl Accepting {
    /// How long to wait before accepting again after a failure.
    pub const RETRY: std::time::Duration = std::time::Duration::from_millis(50);

    /// The next connection. `on_failure` hears every failed attempt (for a metric).
    ///
    /// Cancel-safe: dropped while it waits, it loses no connection.
    pub async fn next(
        &mut self,
        listener: &tokio::net::TcpListener,
        mut on_failure: impl FnMut(&std::io::Error),
    ) -> (tokio::net::TcpStream, std::net::SocketAddr) {
        loop {
            match listener.accept().await {
                Ok(accepted) => {
                    if let Some((since, failures)) = self.outage.take() {
                        tracing::info!(
                            failures,
                            seconds = since.elapsed().as_secs_f64(),
                            "accepting connections again"
                        );
                    }
                    return accepted;
                }
                Err(error) => {
                    on_failure(&error);
                    match &mut self.outage {
                        Some((_, failures)) => *failures += 1,
                        None => {
                            tracing::warn!(
                                %error,
                                "cannot accept connections{}; retrying every {} ms",
                                advice(&error),
                                Self::RETRY.as_millis()
                            );
                            self.outage = Some((std::time::Instant::now(), 1));
                        }
                    }
                    tokio::time::sleep(Self::RETRY).await;
                }
            }
        }
    }
}

/// What to do about a failure to accept, for the warning: the usual causes have a remedy.
fn advice(error: &std::io::Error) -> &'static str {
    #[cfg(unix)]
    match error.raw_os_error() {
        Some(libc::EMFILE) => return " (out of file descriptors: raise `ulimit -n`)",
        Some(libc::ENFILE) => return " (the system is out of file descriptors: raise fs.file-max)",
        Some(libc::ENOBUFS | libc::ENOMEM) => return " (out of kernel memory for sockets)",
        _ => {}
    }
    let _ = error;
    ""
}
