//! `roost bench idle`: many idle connections, the server's memory per connection.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use indicatif::{ProgressBar, ProgressStyle};
use roost::{ClientBuilder, Message};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// Arguments of `roost bench idle`.
#[derive(Debug, clap::Args)]
pub(crate) struct IdleArgs {
    /// The WebSocket URL to open connections to (ws:// only).
    #[arg(long, default_value = "ws://127.0.0.1:9001/")]
    url: String,
    /// How many connections to open and hold.
    #[arg(long, short = 'c', default_value_t = 10_000)]
    connections: usize,
    /// The server's process id, to read its resident memory from /proc.
    #[arg(long)]
    server_pid: u32,
    /// Spread connections over this many source addresses 127.0.0.2, 127.0.0.3, … so more
    /// than one address's ephemeral ports can be used.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u8).range(1..=253))]
    sources: u8,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Seconds to wait with every connection open before measuring (give the server time to
    /// make them dormant).
    #[arg(long, default_value_t = 12)]
    settle: u64,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

/// Resident memory of a process, in bytes, from /proc.
fn rss(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status (is the server running?)"))?;
    let line = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .context("no VmRSS line in /proc status")?;
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .context("malformed VmRSS")?
        .parse()?;
    Ok(kib * 1024)
}

pub(crate) async fn run(args: IdleArgs) -> anyhow::Result<()> {
    let server = super::server_addr(&args.url).context("--url")?;
    let before = rss(args.server_pid)?;
    let started = Instant::now();
    let bar = ProgressBar::new(args.connections as u64).with_style(
        ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({per_sec}, {eta})")?
            .progress_chars("=> "),
    );
    bar.set_message("opening");
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..args.concurrency.max(1) {
        let (next, bar, url, sources) = (
            next.clone(),
            bar.clone(),
            args.url.clone(),
            args.sources.max(1),
        );
        let total = args.connections;
        workers.push(tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                let i = next.fetch_add(1, Relaxed);
                if i >= total {
                    return Ok::<_, anyhow::Error>(held);
                }
                let tcp = super::connect_tcp(server, i, sources).await?;
                let (ws, _) = ClientBuilder::new(&url)?
                    .handshake(tcp)
                    .await
                    .with_context(|| format!("handshake {i}"))?;
                held.push(ws);
                bar.inc(1);
            }
        }));
    }
    let mut held = Vec::with_capacity(args.connections);
    for worker in workers {
        held.extend(worker.await??);
    }
    let opened_in = started.elapsed();
    bar.finish_with_message("open");
    eprintln!(
        "holding {} connections for {} s before measuring",
        held.len(),
        args.settle
    );
    tokio::time::sleep(Duration::from_secs(args.settle)).await;
    let after = rss(args.server_pid)?;
    let metrics = fetch_metrics(server).await.unwrap_or_default();
    let state = |name: &str| {
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(&format!("roost_connections{{state=\"{name}\"}} ")))
            .map(str::to_owned)
            .unwrap_or_else(|| "-".to_owned())
    };
    // A fresh connection must still be served: a ping gets its pong.
    let (mut fresh, _) = roost::connect(&args.url)
        .await
        .context("a fresh connection after the load")?;
    fresh.send(Message::Ping("still there?".into())).await?;
    let answered = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(message) = fresh.recv().await {
            if matches!(message?, Message::Pong(_)) {
                return Ok::<_, roost::Error>(true);
            }
        }
        Ok(false)
    })
    .await
    .unwrap_or(Ok(false))?;
    let per_connection = after.saturating_sub(before) as f64 / held.len().max(1) as f64;
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "mode": "idle",
                "connections": held.len(),
                "opened_in_s": opened_in.as_secs_f64(),
                "server_rss_before": before,
                "server_rss_after": after,
                "bytes_per_connection": per_connection,
                "states": { "live": state("live"), "parked": state("parked"), "dormant": state("dormant") },
                "fresh_connection_answered": answered,
            })
        );
    } else {
        println!("idle connections:      {}", held.len());
        println!("opened in:             {:.1} s", opened_in.as_secs_f64());
        println!(
            "server RSS before:     {:.1} MiB",
            before as f64 / 1048576.0
        );
        println!("server RSS after:      {:.1} MiB", after as f64 / 1048576.0);
        println!("per idle connection:   {per_connection:.0} bytes");
        println!(
            "states (from /metrics): live {} parked {} dormant {}",
            state("live"),
            state("parked"),
            state("dormant")
        );
        println!(
            "fresh connection:      {}",
            if answered {
                "answered a ping"
            } else {
                "NO ANSWER"
            }
        );
    }
    if !answered {
        bail!("the server did not answer a fresh connection under load");
    }
    Ok(())
}

/// GET /metrics over plain HTTP/1.1.
pub(crate) async fn fetch_metrics(server: SocketAddr) -> anyhow::Result<String> {
    let mut tcp = TcpStream::connect(server).await?;
    tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        .await?;
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_string(&mut response)).await??;
    Ok(response)
}
