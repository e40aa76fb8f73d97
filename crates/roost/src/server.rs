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
