//! `roost serve`: the echo app over ws:// or wss://.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use roost::{Config, proto::MAX_TIMEOUT};
use tokio::net::{TcpSocket, TcpStream};
use tracing::{debug, info};

/// Arguments of `roost serve`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The application to run.
    #[arg(long, value_enum, default_value_t = App::Echo)]
    app: App,
    /// The address to listen on.
    #[arg(long, default_value = "127.0.0.1:9001")]
    listen: SocketAddr,
    /// PEM certificate chain: serve wss:// (needs --tls-key).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Largest message accepted, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 16 << 20)]
    max_message_size: usize,
    /// Do not negotiate permessage-deflate.
    #[arg(long)]
    no_compression: bool,
    /// Keep attachments and the resume key in this directory (chat, bench): written durably
    /// before the app is told they are stored, recovered after a crash.
    #[arg(long)]
    durable: Option<PathBuf>,
    /// Most WebSocket connections at once (chat, bench); past it the handshake gets 503.
    /// Default 20,000.
    #[arg(long)]
    max_connections: Option<usize>,
    /// Allowed Origin (chat, bench; repeatable); others get 403. Default: any origin.
    #[arg(long = "allow-origin")]
    allowed_origins: Vec<String>,
    /// Share rooms, presence and attachments with other roost processes through this Redis
    /// server (chat, bench): `redis://HOST:PORT`.
    #[arg(long)]
    cluster: Option<String>,
    /// Serve /metrics, /healthz, /readyz and /presence on this address instead of --listen
    /// (chat, bench): a private interface keeps them from the clients.
    #[arg(long)]
    admin_listen: Option<SocketAddr>,
    /// With --cluster: seconds after which the members of a vanished process leave presence.
    /// Default 6.
    #[arg(long, value_name = "SECONDS", value_parser = seconds, requires = "cluster")]
    presence_ttl: Option<f64>,
    /// Seconds without a frame from a client after which its connection is closed (1001):
    /// drops peers that vanished without a word. Chat and bench ping a quiet client first.
    /// 0 keeps quiet connections forever.
    #[arg(long, value_name = "SECONDS", default_value_t = 75.0, value_parser = seconds)]
    idle_timeout: f64,
    /// Seconds a connection stays quiet before it turns dormant and hibernates (chat,
    /// bench): its task, buffers and compression state are released until it has input.
    /// Default 10.
    #[arg(long, value_name = "SECONDS", value_parser = seconds)]
    dormant_after: Option<f64>,
    /// Seconds a connection stays quiet before the server pings it (chat, bench); 0 never
    /// pings. Default 30, or half of --idle-timeout if that is less.
    #[arg(long, value_name = "SECONDS", value_parser = seconds)]
    ping_interval: Option<f64>,
    /// Bytes that may wait in one connection's outbound queue (chat, bench): a client that
    /// reads too slowly meets --backpressure past it. Default 1 MiB.
    #[arg(long, value_name = "BYTES", value_parser = at_least_one::<usize>)]
    max_outbound: Option<usize>,
    /// What a connection whose outbound queue is full gets (chat, bench). Default close-1013.
    #[arg(long, value_enum)]
    backpressure: Option<Backpressure>,
    /// Whole seconds a resume token stays valid after its connection's last attachment
    /// write (chat, bench); tokens expire on a whole second, so up to one second sooner.
    /// Stored attachments no token can reach any more are removed. Default 86400 (a day).
    #[arg(long, value_name = "SECONDS", value_parser = whole_seconds)]
    resume_ttl: Option<u64>,
    /// Largest attachment a connection may store, in bytes (chat, bench). Default 64 KiB.
    #[arg(long, value_name = "BYTES")]
    max_attachment_size: Option<usize>,
    /// Seconds a graceful shutdown (SIGTERM, SIGINT) waits for the close handshakes before it
    /// drops the connections left.
    #[arg(long, value_name = "SECONDS", default_value_t = 5.0, value_parser = seconds)]
    shutdown_timeout: f64,
}

/// What `--backpressure` does to a connection whose outbound queue is full.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Backpressure {
    /// Close it with 1013 (try again later).
    #[value(name = "close-1013")]
    Close1013,
    /// Close it with 1008 (policy violation).
    #[value(name = "close-1008")]
    Close1008,
    /// Drop the message for that connection only; it stays open.
    Drop,
}

impl From<Backpressure> for roost_server::BackpressurePolicy {
    fn from(choice: Backpressure) -> Self {
        match choice {
            Backpressure::Close1013 => Self::Close(roost::CloseCode::TRY_AGAIN_LATER),
            Backpressure::Close1008 => Self::Close(roost::CloseCode::POLICY_VIOLATION),
            Backpressure::Drop => Self::Drop,
        }
    }
}

/// A number of seconds from 0 to a year, for the timing flags.
fn seconds(text: &str) -> Result<f64, String> {
    let year = MAX_TIMEOUT.as_secs_f64();
    match text.parse::<f64>() {
        Ok(seconds) if (0.0..=year).contains(&seconds) => Ok(seconds),
        _ => Err(format!(
            "expected a number of seconds from 0 to {year} (a year)"
        )),
    }
}

/// A whole number of seconds from 1 to a year, for `--resume-ttl`.
fn whole_seconds(text: &str) -> Result<u64, String> {
    let year = MAX_TIMEOUT.as_secs();
    match text.parse::<u64>() {
        Ok(seconds) if (1..=year).contains(&seconds) => Ok(seconds),
        _ => Err(format!(
            "expected a whole number of seconds from 1 to {year} (a year)"
        )),
    }
}

/// A whole number of at least 1.
fn at_least_one<T: std::str::FromStr + PartialOrd + From<u8>>(text: &str) -> Result<T, String> {
    match text.parse::<T>() {
        Ok(number) if number >= T::from(1) => Ok(number),
        _ => Err("expected a whole number of at least 1".to_owned()),
    }
}

impl Args {
    /// How long a graceful shutdown waits for the close handshakes.
    fn shutdown(&self) -> Duration {
        Duration::from_secs_f64(self.shutdown_timeout)
    }

    /// The idle timeout, `None` when disabled.
    fn idle(&self) -> Option<Duration> {
        (self.idle_timeout > 0.0).then(|| Duration::from_secs_f64(self.idle_timeout))
    }
}

/// The applications `roost serve` can run.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum App {
    /// Echo every text and binary message back with the same type.
    Echo,
    /// Chat rooms at /chat/<room> with a demo page at /, resume and durable attachments.
    Chat,
    /// The benchmark app: echo on any path, /room/<name> sends to every other member.
    Bench,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    if let App::Chat | App::Bench = args.app {
        return run_server_app(args).await;
    }
    let server_flags = [
        ("--durable", args.durable.is_some()),
        ("--max-connections", args.max_connections.is_some()),
        ("--allow-origin", !args.allowed_origins.is_empty()),
        ("--cluster", args.cluster.is_some()),
        ("--dormant-after", args.dormant_after.is_some()),
        ("--admin-listen", args.admin_listen.is_some()),
        ("--ping-interval", args.ping_interval.is_some()),
        ("--max-outbound", args.max_outbound.is_some()),
        ("--backpressure", args.backpressure.is_some()),
        ("--resume-ttl", args.resume_ttl.is_some()),
        ("--max-attachment-size", args.max_attachment_size.is_some()),
    ];
    if let Some((flag, _)) = server_flags.iter().find(|(_, given)| *given) {
        anyhow::bail!(
            "{flag} is a setting of the application server: use it with --app chat or --app \
             bench (the echo app runs on the bare driver)"
        );
    }
    let deflate = roost::DeflateConfig {
        enabled: !args.no_compression,
        ..Default::default()
    };
    let config = Config::builder()
        .max_message_size(args.max_message_size)
        .max_frame_size(args.max_message_size)
        .deflate(deflate)
        .build()
        .context("invalid limits")?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            let cert_pem =
                std::fs::read(cert).with_context(|| format!("reading {}", cert.display()))?;
            let key_pem =
                std::fs::read(key).with_context(|| format!("reading {}", key.display()))?;
            let config = roost::tls::server_config_from_pem(&cert_pem, &key_pem)
                .context("loading the TLS certificate and key")?;
            Some(roost::tls::TlsAcceptor::from(config))
        }
        _ => None,
    };
    let socket = if args.listen.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket
        .bind(args.listen)
        .with_context(|| format!("binding {}", args.listen))?;
    let listener = socket.listen(4096)?;
    let scheme = if tls.is_some() { "wss" } else { "ws" };
    info!(app = ?args.app, "listening on {scheme}://{}", listener.local_addr()?);
    let shutdown_timeout = args.shutdown();
    let config = Arc::new(config);
    let idle = args.idle();
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    // Out of descriptors, accepting fails: the server keeps serving and tries again.
    let mut accepting = roost::Accepting::default();
    let signal = roost::shutdown_signal();
    tokio::pin!(signal);
    loop {
        tokio::select! {
            (tcp, peer) = accepting.next(&listener, |_| {}) => {
                let (config, tls, stopping) = (config.clone(), tls.clone(), stopping.clone());
                connections.spawn(async move {
                    if let Err(error) = serve_connection(tcp, &config, tls, idle, stopping).await {
                        debug!(%peer, %error, "connection ended with an error");
                    }
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            result = &mut signal => {
                result?;
                break;
            }
        }
    }
    // Stop accepting, close every connection with 1001, wait for the close handshakes (each
    // bounded by the close timeout), then drop what is left.
    drop(listener);
    info!(
        open = connections.len(),
        "shutting down: closing every connection with 1001"
    );
    let _ = stop.send(true);
    let drained = tokio::time::timeout(shutdown_timeout, async {
        while connections.join_next().await.is_some() {}
    });
    if drained.await.is_err() {
        info!(
            left = connections.len(),
            "shutdown timeout: dropping the rest"
        );
    }
    Ok(())
}

async fn serve_connection(
    tcp: TcpStream,
    config: &Config,
    tls: Option<roost::tls::TlsAcceptor>,
    idle: Option<Duration>,
    stopping: tokio::sync::watch::Receiver<bool>,
) -> Result<(), roost::Error> {
    tcp.set_nodelay(true)?;
    match tls {
        Some(acceptor) => {
            let stream =
                tokio::time::timeout(config.limits().handshake_timeout, acceptor.accept(tcp))
                    .await
                    .map_err(|_| roost::Error::Timeout("the TLS handshake took too long"))??;
            let ws = roost::accept_with(stream, config, |_, response| Ok(response)).await?;
            echo(ws, idle, config.limits().close_timeout, stopping).await
        }
        None => {
            let ws = roost::accept_with(tcp, config, |_, response| Ok(response)).await?;
            echo(ws, idle, config.limits().close_timeout, stopping).await
        }
    }
}

async fn echo<S>(
    mut ws: roost::WebSocket<S>,
    idle: Option<Duration>,
    close_timeout: Duration,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) -> Result<(), roost::Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    // The timer is set once per idle period, not per message: when it fires early (frames
    // came meanwhile) it is moved to the last frame plus the timeout.
    let idle = idle.unwrap_or(FOREVER);
    let mut last_frame = Instant::now();
    let timer = tokio::time::sleep_until(deadline(last_frame, idle));
    tokio::pin!(timer);
    loop {
        tokio::select! {
            biased;
            // First: a client that never stops sending must not hold the shutdown off.
            _ = async { stopping.wait_for(|stop| *stop).await.map(|_| ()) } => {
                close_going_away(&mut ws, "server shutting down", close_timeout).await;
                break;
            }
            message = ws.recv() => {
                let Some(message) = message else { break };
                let message = message?;
                last_frame = Instant::now();
                // A client that stops reading gets the idle timeout to take its echo, then
                // is dropped: a blocked send must not hold the connection forever.
                if message.is_data() {
                    match tokio::time::timeout(idle, ws.send(message)).await {
                        Ok(sent) => sent?,
                        Err(_) => {
                            debug!("the client took no echo for the idle timeout; dropping it");
                            return Ok(());
                        }
                    }
                }
            }
            () = &mut timer => {
                if last_frame.elapsed() < idle {
                    timer.as_mut().reset(deadline(last_frame, idle));
                    continue;
                }
                debug!("no frame for the idle timeout; closing with 1001");
                close_going_away(&mut ws, "idle timeout", close_timeout).await;
                break;
            }
        }
    }
    debug!(status = ?ws.close_status(), "connection closed");
    Ok(())
}

/// Closes with 1001 and `reason`, and takes the reply if the peer is still there, within
/// `close_timeout`: a peer that reads nothing cannot hold the connection with it.
async fn close_going_away<S>(ws: &mut roost::WebSocket<S>, reason: &str, close_timeout: Duration)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let frame = roost::CloseFrame::new(roost::CloseCode::GOING_AWAY, reason);
    let _ = tokio::time::timeout(close_timeout, async {
        ws.close(Some(frame)).await?;
        while ws.recv().await.is_some() {}
        Ok::<_, roost::Error>(())
    })
    .await;
}

/// An idle timeout that never comes: the longest the server takes (a year: far, and no
/// overflow when added to an instant).
const FOREVER: Duration = MAX_TIMEOUT;

/// When a connection whose last frame came at `last` goes idle.
fn deadline(last: Instant, idle: Duration) -> tokio::time::Instant {
    tokio::time::Instant::from_std(last + idle)
}

/// Runs an app built on roost-server (graceful shutdown on SIGTERM and SIGINT).
async fn run_server_app(args: Args) -> anyhow::Result<()> {
    if args.tls_cert.is_some() {
        anyhow::bail!(
            "--app {:?} serves plain ws:// only; terminate TLS in front of it",
            args.app
        );
    }
    let defaults = roost_server::ServerConfig::default();
    let deflate = if args.no_compression {
        roost::DeflateConfig::disabled()
    } else {
        defaults.protocol.deflate().clone()
    };
    let protocol = Config::builder()
        .max_message_size(args.max_message_size)
        .max_frame_size(args.max_message_size)
        .deflate(deflate)
        .build()
        .context("invalid limits")?;
    let config = roost_server::ServerConfig {
        protocol,
        max_connections: args.max_connections.unwrap_or(defaults.max_connections),
        allowed_origins: args.allowed_origins.clone(),
        durable_dir: args.durable.clone(),
        admin_addr: args.admin_listen,
        cluster: args.cluster.as_ref().map(|url| {
            let cluster = roost_server::ClusterConfig::new(url);
            roost_server::ClusterConfig {
                presence_ttl: args.presence_ttl.map_or(cluster.presence_ttl, |ttl| {
                    Duration::from_secs_f64(ttl.max(0.3))
                }),
                ..cluster
            }
        }),
        idle_timeout: args.idle().unwrap_or(FOREVER),
        dormant_after: args
            .dormant_after
            .map_or(defaults.dormant_after, Duration::from_secs_f64),
        // A quiet client is pinged before it is dropped.
        ping_interval: match args.ping_interval {
            Some(0.0) => FOREVER,
            Some(seconds) => Duration::from_secs_f64(seconds),
            None => args.idle().map_or(defaults.ping_interval, |idle| {
                defaults.ping_interval.min(idle / 2)
            }),
        },
        max_outbound: args.max_outbound.unwrap_or(defaults.max_outbound),
        backpressure: args.backpressure.map_or(defaults.backpressure, Into::into),
        resume_ttl: args
            .resume_ttl
            .map_or(defaults.resume_ttl, Duration::from_secs),
        max_attachment_size: args
            .max_attachment_size
            .unwrap_or(defaults.max_attachment_size),
        shutdown_timeout: args.shutdown(),
        ..defaults
    };
    if args.cluster.is_some() && args.durable.is_some() {
        anyhow::bail!("--cluster keeps attachments in Redis; drop --durable");
    }
    let app = match args.app {
        App::Chat => crate::apps::chat::app()?,
        App::Bench => crate::apps::bench::app()?,
        App::Echo => unreachable!("echo runs on the roost driver directly"),
    };
    let server = app
        .config(config)
        .bind(args.listen)
        .await
        .with_context(|| format!("starting the server on {}", args.listen))?;
    info!(app = ?args.app, durable = ?args.durable, "listening on ws://{}", server.local_addr()?);
    if let Some(admin) = server.admin_addr() {
        info!("metrics, health and presence on http://{admin}");
    }
    server.run().await?;
    info!("stopped");
    Ok(())
}
