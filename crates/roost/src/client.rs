//! The client: `ws://` and `wss://` URLs, custom headers, subprotocols.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use http::{HeaderMap, HeaderName, HeaderValue, Response, Uri};
use roost_proto::{Config, Connection, handshake::ClientHandshake};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::TcpStream,
};

use crate::{Error, WebSocket, handshake_key, mask_source};

/// Connects to a `ws://` or `wss://` URL with the default configuration (permessage-deflate
/// offered; `wss://` verified against the web PKI roots). Returns the WebSocket and the
/// server's handshake response.
pub async fn connect(
    url: &str,
) -> Result<(WebSocket<MaybeTlsStream<TcpStream>>, Response<()>), Error> {
    ClientBuilder::new(url)?.connect().await
}

/// Configures a client connection: headers, subprotocols, limits, TLS roots.
#[derive(Debug, Clone)]
#[must_use = "call connect() to open the connection"]
pub struct ClientBuilder {
    uri: Uri,
    secure: bool,
    headers: HeaderMap,
    protocols: Vec<String>,
    config: Config,
    #[cfg(feature = "tls")]
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

impl ClientBuilder {
    /// A client for `url`, which must be `ws://` or `wss://` with a host.
    pub fn new(url: &str) -> Result<Self, Error> {
        let Target { uri, secure, .. } = Target::parse(url)?;
        Ok(ClientBuilder {
            uri,
            secure,
            headers: HeaderMap::new(),
            protocols: Vec::new(),
            config: Config::default(),
            #[cfg(feature = "tls")]
            tls: None,
        })
    }

    /// Adds a request header (`Origin`, `Authorization`, cookies…). The handshake's own
    /// headers cannot be overridden.
    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.append(name, value);
        self
    }

    /// Offers a subprotocol; call once per protocol, in order of preference.
    pub fn protocol(mut self, protocol: impl Into<String>) -> Self {
        self.protocols.push(protocol.into());
        self
    }

    /// Limits, timeouts and permessage-deflate settings.
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// The rustls configuration for `wss://` (custom roots, client certificates). Default:
    /// the web PKI roots.
    #[cfg(feature = "tls")]
    pub fn tls_config(mut self, tls: std::sync::Arc<rustls::ClientConfig>) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Opens the TCP connection (and TLS for `wss://`) and runs the handshake, all within
    /// [`roost_proto::Limits::handshake_timeout`].
    pub async fn connect(
        self,
    ) -> Result<(WebSocket<MaybeTlsStream<TcpStream>>, Response<()>), Error> {
        let timeout = self.config.limits().handshake_timeout;
        tokio::time::timeout(timeout, async {
            let host = self
                .uri
                .host()
                .unwrap_or_default()
                .trim_start_matches('[')
                .trim_end_matches(']');
            let port = self
                .uri
                .port_u16()
                .unwrap_or(if self.secure { 443 } else { 80 });
            let tcp = TcpStream::connect((host, port)).await?;
            tcp.set_nodelay(true)?;
            let stream = if self.secure {
                self.wrap_tls(tcp, host).await?
            } else {
                MaybeTlsStream::Plain(tcp)
            };
            self.handshake(stream).await
        })
        .await
        .map_err(|_| Error::Timeout("the server did not complete the handshake in time"))?
    }

    #[cfg(feature = "tls")]
    async fn wrap_tls(
        &self,
        tcp: TcpStream,
        host: &str,
    ) -> Result<MaybeTlsStream<TcpStream>, Error> {
        let config = match &self.tls {
            Some(config) => config.clone(),
            None => crate::tls::client_config_with_webpki_roots(),
        };
        let name = rustls_pki_types::ServerName::try_from(host.to_owned())
            .map_err(|e| Error::Url(format!("{host:?} is not a valid TLS server name: {e}")))?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await?;
        Ok(MaybeTlsStream::Tls(Box::new(tls)))
    }

    #[cfg(not(feature = "tls"))]
    async fn wrap_tls(&self, _: TcpStream, _: &str) -> Result<MaybeTlsStream<TcpStream>, Error> {
        Err(Error::Url("wss:// needs roost's `tls` feature".to_owned()))
    }

    /// Runs the handshake over a stream that is already connected (a proxy tunnel, a Unix
    /// socket, an in-memory pipe).
    pub async fn handshake<S>(self, mut stream: S) -> Result<(WebSocket<S>, Response<()>), Error>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let (mut handshake, request) = ClientHandshake::new(
            &self.config,
            &self.uri,
            handshake_key(),
            &self.protocols,
            &self.headers,
            self.secure,
        )?;
        stream.write_all(&request).await?;
        stream.flush().await?;
        let mut buf = vec![0; 4096];
        let accepted = loop {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                return Err(Error::Io(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the server closed the connection during the handshake",
                )));
            }
            if let Some(accepted) = handshake.feed(&buf[..n])? {
                break accepted;
            }
        };
        let connection = Connection::client(self.config, accepted.negotiated, mask_source());
        let ws = WebSocket::from_connection(stream, connection, &accepted.leftover)
            .with_protocol(accepted.protocol);
        Ok((ws, accepted.response))
    }
}

/// A parsed `ws://` or `wss://` URL: what both the async and the blocking client connect to.
pub(crate) struct Target {
    pub(crate) uri: Uri,
    pub(crate) secure: bool,
    /// The host without IPv6 brackets.
    pub(crate) host: String,
    pub(crate) port: u16,
}

impl Target {
    pub(crate) fn parse(url: &str) -> Result<Target, Error> {
        let uri: Uri = url
            .parse()
            .map_err(|e| Error::Url(format!("{url:?}: {e}")))?;
        // Schemes are case-insensitive (RFC 3986 §3.1).
        let secure = match uri.scheme_str().map(str::to_ascii_lowercase).as_deref() {
            Some("ws") => false,
            Some("wss") => true,
            Some(other) => {
                return Err(Error::Url(format!(
                    "{url:?} has scheme {other:?}; use ws:// or wss://"
                )));
            }
            None => {
                return Err(Error::Url(format!(
                    "{url:?} has no scheme: write ws://{url} (or wss:// for TLS)"
                )));
            }
        };
        if uri.host().is_none_or(str::is_empty) {
            return Err(Error::Url(format!("{url:?} has no host")));
        }
        Ok(Target::from_uri(uri, secure))
    }

    fn from_uri(uri: Uri, secure: bool) -> Target {
        let host = uri
            .host()
            .unwrap_or_default()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
        Target {
            host: host.to_owned(),
            port,
            secure,
            uri,
        }
    }
}

/// A TCP stream, or a TLS stream over one (`wss://`).
#[derive(Debug)]
#[non_exhaustive]
pub enum MaybeTlsStream<S> {
    /// Plain TCP.
    Plain(S),
    /// TLS through rustls.
    #[cfg(feature = "tls")]
    Tls(Box<tokio_rustls::client::TlsStream<S>>),
}

macro_rules! delegate {
    ($self:ident, $stream:ident => $call:expr) => {
        match $self.get_mut() {
            MaybeTlsStream::Plain($stream) => $call,
            #[cfg(feature = "tls")]
            MaybeTlsStream::Tls($stream) => $call,
        }
    };
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for MaybeTlsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for MaybeTlsStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        delegate!(self, s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_shutdown(cx))
    }
}
