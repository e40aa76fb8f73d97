//! `roost bench echo`: throughput with every echoed payload verified.

use std::sync::{
    Arc,
    atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
};

use anyhow::bail;
use bytes::Bytes;
use futures_util::FutureExt as _;
use roost::{Message, WebSocket};
use tokio::net::TcpStream;

use super::{Common, measure, open, progress, report};

/// Arguments of `roost bench echo`.
#[derive(Debug, clap::Args)]
pub(crate) struct EchoArgs {
    #[command(flatten)]
    common: Common,
    /// Connections.
    #[arg(long, short = 'c', default_value_t = 100)]
    connections: usize,
    /// Messages in flight per connection.
    #[arg(long, short = 'p', default_value_t = 16)]
    in_flight: usize,
    /// Payload size in bytes.
    #[arg(long, short = 's', default_value_t = 64)]
    size: usize,
    /// Send text messages instead of binary ones.
    #[arg(long)]
    text: bool,
}

/// Payloads numbered by sequence: a fixed body whose first bytes carry the number, so every
/// echo can be checked without keeping copies.
pub(crate) struct Payloads {
    template: Vec<u8>,
    text: bool,
}

impl Payloads {
    pub(crate) fn new(size: usize, text: bool) -> Self {
        let template = (0..size).map(|i| b'a' + (i % 26) as u8).collect();
        Payloads { template, text }
    }

    fn prefix(&self, seq: u64) -> ([u8; 16], usize) {
        let mut prefix = [0u8; 16];
        if self.text {
            prefix.copy_from_slice(format!("{seq:016x}").as_bytes());
            (prefix, self.template.len().min(16))
        } else {
            prefix[..8].copy_from_slice(&seq.to_le_bytes());
            (prefix, self.template.len().min(8))
        }
    }

    pub(crate) fn message(&self, seq: u64) -> Message {
        let (prefix, n) = self.prefix(seq);
        let mut body = self.template.clone();
        body[..n].copy_from_slice(&prefix[..n]);
        if self.text {
            match String::from_utf8(body) {
                Ok(text) => Message::text(text),
                Err(_) => unreachable!("the template and the prefix are ASCII"),
            }
        } else {
            Message::Binary(Bytes::from(body))
        }
    }

    pub(crate) fn matches(&self, seq: u64, message: &Message) -> bool {
        let bytes: &[u8] = match (message, self.text) {
            (Message::Text(text), true) => text.as_bytes(),
            (Message::Binary(bytes), false) => bytes,
            _ => return false,
        };
        let (prefix, n) = self.prefix(seq);
        bytes.len() == self.template.len()
            && bytes[..n] == prefix[..n]
            && bytes[n..] == self.template[n..]
    }
}

pub(crate) async fn run(args: EchoArgs) -> anyhow::Result<()> {
    let target = args.common.target()?;
    let mut connections = Vec::with_capacity(args.connections);
    for i in 0..args.connections {
        connections.push(open(&target, &args.common.url, i, args.common.sources).await?);
    }
    let payloads = Arc::new(Payloads::new(args.size, args.text));
    let received = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for ws in connections {
        let (payloads, received, errors, stop) = (
            payloads.clone(),
            received.clone(),
            errors.clone(),
            stop.clone(),
        );
        let in_flight = args.in_flight.max(1);
        tasks.push(tokio::spawn(async move {
            if let Err(error) = pump(ws, &payloads, in_flight, &received, &stop).await {
                errors.fetch_add(1, Relaxed);
                tracing::warn!(%error, "connection failed");
            }
        }));
    }
    let bar = progress(&args.common, args.common.json);
    let start = std::sync::Mutex::new(0);
    let count = measure(
        &args.common,
        &bar,
        || *start.lock().unwrap_or_else(|e| e.into_inner()) = received.load(Relaxed),
        || received.load(Relaxed) - *start.lock().unwrap_or_else(|e| e.into_inner()),
    )
    .await;
    stop.store(true, Relaxed);
    for task in tasks {
        let _ = task.await;
    }
    let seconds = args.common.duration as f64;
    let rate = count as f64 / seconds;
    report(
        args.common.json,
        &serde_json::json!({
            "mode": "echo",
            "url": args.common.url,
            "connections": args.connections,
            "in_flight": args.in_flight,
            "size": args.size,
            "kind": if args.text { "text" } else { "binary" },
            "seconds": seconds,
            "messages": count,
            "msgs_per_s": rate,
            "mib_per_s": rate * args.size as f64 / 1048576.0,
            "errors": errors.load(Relaxed),
        }),
    );
    if errors.load(Relaxed) > 0 {
        bail!(
            "{} connection(s) failed or echoed a wrong payload",
            errors.load(Relaxed)
        );
    }
    Ok(())
}

/// Keeps `in_flight` messages going on one connection until `stop`, checking every echo.
async fn pump(
    mut ws: WebSocket<TcpStream>,
    payloads: &Payloads,
    in_flight: usize,
    received: &AtomicU64,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let (mut sent, mut next) = (0u64, 0u64);
    for _ in 0..in_flight {
        ws.feed(&payloads.message(sent))?;
        sent += 1;
    }
    ws.flush().await?;
    while !stop.load(Relaxed) {
        let Some(first) = ws.recv().await else {
            bail!("the server closed the connection");
        };
        // Answer every echo already here, then write the replies in one go.
        let mut message = Some(first);
        while let Some(result) = message {
            let echo = result?;
            if echo.is_data() {
                if !payloads.matches(next, &echo) {
                    bail!("echo {next} differs from what was sent");
                }
                next += 1;
                received.fetch_add(1, Relaxed);
                ws.feed(&payloads.message(sent))?;
                sent += 1;
            }
            message = ws.recv().now_or_never().flatten();
        }
        ws.flush().await?;
    }
    ws.close(None).await?;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
        while ws.recv().await.is_some() {}
    })
    .await;
    Ok(())
}
