//! `roost bench`: a load generator to point at any WebSocket server running the bench app
//! (echo on any path, `/room/<name>` sends to the room's other members).
//!
//! Every mode runs for a fixed time after a warm-up, shows progress on long runs, prints a
//! human summary, and with `--json` one JSON object for machines.

mod broadcast;
mod connect;
mod echo;
mod idle;
mod latency;

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::Duration,
};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use roost::{ClientBuilder, Config, WebSocket};
use tokio::net::{TcpSocket, TcpStream};

/// Arguments of `roost bench`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Debug, clap::Subcommand)]
enum Mode {
    /// C connections, P messages in flight each, size S: messages/s and MiB/s, every echo
    /// verified.
    Echo(echo::EchoArgs),
    /// Strict ping-pong: round-trip percentiles.
    Latency(latency::LatencyArgs),
    /// N subscribers in one room and publishers: deliveries/s and delivery latency.
    Broadcast(broadcast::BroadcastArgs),
    /// Open C idle connections, then report the server's RSS per connection.
    Idle(idle::IdleArgs),
    /// Full handshakes per second, close handshake included.
    Connect(connect::ConnectArgs),
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    match args.mode {
        Mode::Echo(args) => echo::run(args).await,
        Mode::Latency(args) => latency::run(args).await,
        Mode::Broadcast(args) => broadcast::run(args).await,
        Mode::Idle(args) => idle::run(args).await,
        Mode::Connect(args) => connect::run(args).await,
    }
}

/// Options every timed mode shares.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Common {
    /// The server URL (ws:// with an IP address).
    #[arg(long, default_value = "ws://127.0.0.1:9001/")]
    url: String,
    /// Seconds measured, after the warm-up.
    #[arg(long, short = 'd', default_value_t = 10)]
    duration: u64,
    /// Seconds of warm-up, not measured.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Offer permessage-deflate (off by default: most peers do not support it).
    #[arg(long)]
    deflate: bool,
    /// Spread connections over this many source addresses 127.0.0.2, 127.0.0.3, …
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u8).range(1..=253))]
    sources: u8,
    /// Print one JSON object instead of the human summary.
    #[arg(long)]
    json: bool,
}

/// Where the server is, parsed once.
pub(crate) struct Target {
    server: SocketAddr,
    config: Config,
}

impl Common {
    fn target(&self) -> anyhow::Result<Target> {
        self.target_of(&self.url)
    }

    /// The server behind any ws:// URL, with this run's client settings.
    fn target_of(&self, url: &str) -> anyhow::Result<Target> {
        let server = server_addr(url)?;
        let deflate = if self.deflate {
            roost::DeflateConfig::default()
        } else {
            roost::DeflateConfig::disabled()
        };
        let config = Config::builder()
            .deflate(deflate)
            .max_message_size(64 << 20)
            .max_frame_size(64 << 20)
            .build()?;
        Ok(Target { server, config })
    }

    /// The URL with `path` instead of the one given.
    fn url_with_path(&self, path: &str) -> anyhow::Result<String> {
        with_path(&self.url, path)
    }
}

/// `url` with its path replaced by `path`.
fn with_path(url: &str, path: &str) -> anyhow::Result<String> {
    let uri: http::Uri = url.parse()?;
    Ok(format!(
        "ws://{}{path}",
        uri.authority().context("the URL has no authority")?
    ))
}

/// The server a `ws://` URL names. The benchmark does not resolve names: the host is an IPv4
/// or IPv6 address.
pub(crate) fn server_addr(url: &str) -> anyhow::Result<SocketAddr> {
    let uri: http::Uri = url.parse().with_context(|| format!("parsing {url:?}"))?;
    match uri.scheme_str() {
        Some(scheme) if scheme.eq_ignore_ascii_case("ws") => {}
        Some(_) => anyhow::bail!("{url:?} must be ws:// (the benchmark measures servers, not TLS)"),
        None => anyhow::bail!("{url:?} has no scheme: write ws://{url}"),
    }
    let host = uri
        .host()
        .with_context(|| format!("{url:?} has no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']');
    let ip: IpAddr = host.parse().with_context(|| {
        format!("{url:?}: the host must be an IP address, e.g. ws://127.0.0.1:9001/")
    })?;
    Ok(SocketAddr::new(ip, uri.port_u16().unwrap_or(80)))
}

/// A TCP connection (number `index`) to `server`. To a loopback IPv4 server it comes from
/// source address 127.0.0.(2 + index % sources), so that more connections than one source
/// address has ports can be open at once.
pub(crate) async fn connect_tcp(
    server: SocketAddr,
    index: usize,
    sources: u8,
) -> anyhow::Result<TcpStream> {
    let socket = match server.ip() {
        IpAddr::V4(ip) => {
            let socket = TcpSocket::new_v4()?;
            if ip.is_loopback() {
                let spread = index % usize::from(sources.max(1));
                let source = Ipv4Addr::new(127, 0, 0, 2 + spread as u8);
                socket.bind(SocketAddr::new(source.into(), 0))?;
            }
            socket
        }
        IpAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket
        .connect(server)
        .await
        .with_context(|| format!("connection {index} to {server}"))
}

/// Opens connection number `index` to `url` ([`connect_tcp`]).
pub(crate) async fn open(
    target: &Target,
    url: &str,
    index: usize,
    sources: u8,
) -> anyhow::Result<WebSocket<TcpStream>> {
    let tcp = connect_tcp(target.server, index, sources).await?;
    tcp.set_nodelay(true)?;
    let builder = ClientBuilder::new(url)?.config(target.config.clone());
    let (ws, _) = builder
        .handshake(tcp)
        .await
        .with_context(|| format!("handshake {index}"))?;
    // A server that declines compression would turn a compressed benchmark into a plain one
    // without anyone noticing.
    if target.config.deflate().enabled && ws.negotiated().deflate.is_none() {
        anyhow::bail!(
            "the server declined permessage-deflate (connection {index}); enable compression \
             on the server or drop --deflate"
        );
    }
    Ok(ws)
}

/// A progress bar over the warm-up and the measured time.
pub(crate) fn progress(common: &Common, json: bool) -> ProgressBar {
    let total = common.warmup + common.duration;
    if json {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    if let Ok(style) = ProgressStyle::with_template("{msg:>10} [{bar:40}] {pos}/{len} s") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// Sleeps through the warm-up and the measured time, ticking the progress bar; calls
/// `at_start` when measuring begins and returns what `at_end` returns when it ends.
pub(crate) async fn measure<T>(
    common: &Common,
    bar: &ProgressBar,
    at_start: impl FnOnce(),
    at_end: impl FnOnce() -> T,
) -> T {
    bar.set_message("warm-up");
    for _ in 0..common.warmup {
        tokio::time::sleep(Duration::from_secs(1)).await;
        bar.inc(1);
    }
    at_start();
    bar.set_message("measuring");
    for _ in 0..common.duration {
        tokio::time::sleep(Duration::from_secs(1)).await;
        bar.inc(1);
    }
    let result = at_end();
    bar.finish_and_clear();
    result
}

/// A histogram of durations in nanoseconds, 1 ns to 60 s, 3 significant digits.
pub(crate) fn histogram() -> Histogram<u64> {
    match Histogram::new_with_bounds(1, 60_000_000_000, 3) {
        Ok(histogram) => histogram,
        Err(_) => unreachable!("the bounds are valid"),
    }
}

/// Percentiles in microseconds, for reports.
pub(crate) fn percentiles(histogram: &Histogram<u64>) -> serde_json::Value {
    let us = |ns: u64| ns as f64 / 1000.0;
    serde_json::json!({
        "samples": histogram.len(),
        "p50_us": us(histogram.value_at_quantile(0.50)),
        "p99_us": us(histogram.value_at_quantile(0.99)),
        "p99_9_us": us(histogram.value_at_quantile(0.999)),
        "max_us": us(histogram.max()),
    })
}

/// Prints a report: JSON, or `label: value` lines.
pub(crate) fn report(json: bool, value: &serde_json::Value) {
    if json {
        println!("{value}");
        return;
    }
    if let Some(map) = value.as_object() {
        for (key, value) in map {
            match value {
                serde_json::Value::Object(inner) => {
                    let parts: Vec<String> =
                        inner.iter().map(|(k, v)| format!("{k} {v}")).collect();
                    println!("{key:>22}: {}", parts.join(", "));
                }
                serde_json::Value::Number(n) if n.as_f64().is_some_and(|f| f.fract() != 0.0) => {
                    println!("{key:>22}: {:.1}", n.as_f64().unwrap_or_default());
                }
                other => println!("{key:>22}: {}", other.to_string().trim_matches('"')),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls_take_any_case_ipv6_and_say_what_is_wrong() {
        let addr = |url: &str| server_addr(url).map_err(|e| format!("{e:#}"));
        assert_eq!(
            addr("ws://127.0.0.1:9001/"),
            Ok("127.0.0.1:9001".parse().unwrap())
        );
        assert_eq!(
            addr("WS://127.0.0.1/x"),
            Ok("127.0.0.1:80".parse().unwrap())
        );
        assert_eq!(addr("ws://[::1]:9001/"), Ok("[::1]:9001".parse().unwrap()));
        for (url, says) in [
            ("127.0.0.1:9001", "write ws://127.0.0.1:9001"),
            ("wss://127.0.0.1/", "must be ws://"),
            ("ws://localhost:9001/", "must be an IP address"),
        ] {
            let error = addr(url).unwrap_err();
            assert!(error.contains(says), "{url}: {error}");
        }
    }
}
