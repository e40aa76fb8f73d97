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
    /// Payload body: `letters` (a-z repeated) or `json` (JSON-like records, for compression).
    #[arg(long, default_value = "letters")]
    payload: String,
    /// Speak raw TCP instead of WebSocket (for a raw echo server: the ceiling for the same
    /// system-call pattern).
    #[arg(long)]
    raw_tcp: bool,
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

    /// JSON-like records, as chat or market-data messages look: compressible, not trivially.
    pub(crate) fn json(size: usize, text: bool) -> Self {
        let mut body = String::with_capacity(size + 128);
        let mut i = 0u32;
        while body.len() < size {
            body.push_str(&format!(
                r#"{{"id":{i},"user":"user{}","price":{}.{:02},"side":"{}","tags":["a{}","b{}"]}},"#,
                i * 7919 % 1000,
                100 + i * 37 % 900,
                i * 13 % 100,
                if i.is_multiple_of(2) { "buy" } else { "sell" },
                i % 5,
                i % 3
            ));
            i += 1;
        }
        body.truncate(size);
        Payloads {
            template: body.into_bytes(),
            text,
        }
    }

    /// The raw bytes of message `seq`.
    pub(crate) fn bytes(&self, seq: u64) -> Vec<u8> {
        let mut body = self.template.clone();
        self.number(seq, &mut body);
        body
    }

    /// Writes the number `seq` over the start of `body` (a copy of the template).
    fn number(&self, seq: u64, body: &mut [u8]) {
        let n = self.numbered();
        self.prefix(seq, &mut body[..n]);
    }

    /// How many leading bytes carry the number: sixteen hex digits in text, eight
    /// little-endian bytes in binary, or the whole of a shorter payload.
    fn numbered(&self) -> usize {
        self.template.len().min(if self.text { 16 } else { 8 })
    }

    /// The first `out.len()` bytes of the number `seq` as a payload carries it.
    fn prefix(&self, seq: u64, out: &mut [u8]) {
        if self.text {
            // Hex digits, without the formatting machinery (this runs per message).
            for (i, digit) in out.iter_mut().enumerate() {
                *digit = b"0123456789abcdef"[(seq >> (60 - 4 * i)) as usize & 0xf];
            }
        } else {
            out.copy_from_slice(&seq.to_le_bytes()[..out.len()]);
        }
    }

    pub(crate) fn message(&self, seq: u64) -> Message {
        let body = self.bytes(seq);
        if self.text {
            match String::from_utf8(body) {
                Ok(text) => Message::text(text),
                Err(_) => unreachable!("the template and the prefix are ASCII"),
            }
        } else {
            Message::Binary(Bytes::from(body))
        }
    }

    /// Queues message `seq` on `ws`, put together in `scratch` (a copy of the template kept
    /// between calls): nothing is allocated per message.
    fn feed(
        &self,
        seq: u64,
        scratch: &mut [u8],
        ws: &mut WebSocket<TcpStream>,
    ) -> Result<(), roost::Error> {
        self.number(seq, scratch);
        if self.text {
            match std::str::from_utf8(scratch) {
                Ok(text) => ws.feed_text(text),
                Err(_) => unreachable!("the template and the prefix are ASCII"),
            }
        } else {
            ws.feed_binary(scratch)
        }
    }

    pub(crate) fn matches(&self, seq: u64, message: &Message) -> bool {
        match (message, self.text) {
            (Message::Text(text), true) => self.matches_bytes(seq, text.as_bytes()),
            (Message::Binary(bytes), false) => self.matches_bytes(seq, bytes),
            _ => false,
        }
    }

    pub(crate) fn matches_bytes(&self, seq: u64, bytes: &[u8]) -> bool {
        let n = self.numbered();
        let mut prefix = [0u8; 16];
        self.prefix(seq, &mut prefix[..n]);
        bytes.len() == self.template.len()
            && bytes[..n] == prefix[..n]
            && bytes[n..] == self.template[n..]
    }
}

pub(crate) async fn run(args: EchoArgs) -> anyhow::Result<()> {
    let target = args.common.target()?;
    let payloads = Arc::new(match args.payload.as_str() {
        "letters" => Payloads::new(args.size, args.text),
        "json" => Payloads::json(args.size, args.text),
        other => bail!("--payload {other:?}: use letters or json"),
    });
    let received = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let in_flight = args.in_flight.max(1);
    let mut tasks = Vec::new();
    for i in 0..args.connections {
        let (payloads, received, stop) = (payloads.clone(), received.clone(), stop.clone());
        let connection = if args.raw_tcp {
            let tcp = super::connect_tcp(target.server, i, args.common.sources).await?;
            tcp.set_nodelay(true)?;
            tokio::spawn(async move { pump_raw(tcp, &payloads, in_flight, &received, &stop).await })
        } else {
            let ws = open(&target, &args.common.url, i, args.common.sources).await?;
            tokio::spawn(async move { pump(ws, &payloads, in_flight, &received, &stop).await })
        };
        tasks.push(connection);
    }
    let bar = progress(&args.common, args.common.json);
    let start = std::cell::Cell::new(0);
    let count = measure(
        &args.common,
        &bar,
        || start.set(received.load(Relaxed)),
        || received.load(Relaxed) - start.get(),
    )
    .await;
    stop.store(true, Relaxed);
    for task in tasks {
        if let Ok(Err(error)) = task.await {
            errors.fetch_add(1, Relaxed);
            tracing::warn!(%error, "connection failed");
        }
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
            "kind": if args.raw_tcp { "raw tcp" } else if args.text { "text" } else { "binary" },
            "payload": args.payload,
            "compression": args.common.deflate,
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

/// The same pattern over raw TCP: `in_flight` payloads written, each echoed payload read
/// back whole and checked, then the next written.
async fn pump_raw(
    mut tcp: tokio::net::TcpStream,
    payloads: &Payloads,
    in_flight: usize,
    received: &AtomicU64,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let size = payloads.template.len();
    let (mut sent, mut next) = (0u64, 0u64);
    let mut out = Vec::with_capacity(size * in_flight);
    for _ in 0..in_flight {
        out.extend_from_slice(&payloads.bytes(sent));
        sent += 1;
    }
    tcp.write_all(&out).await?;
    let mut buf = vec![0u8; 64 << 10];
    let mut pending = Vec::new();
    while !stop.load(Relaxed) {
        let n = tcp.read(&mut buf).await?;
        if n == 0 {
            bail!("the server closed the connection");
        }
        pending.extend_from_slice(&buf[..n]);
        out.clear();
        let mut at = 0;
        while pending.len() - at >= size {
            if !payloads.matches_bytes(next, &pending[at..at + size]) {
                bail!("echo {next} differs from what was sent");
            }
            at += size;
            next += 1;
            received.fetch_add(1, Relaxed);
            out.extend_from_slice(&payloads.bytes(sent));
            sent += 1;
        }
        pending.drain(..at);
        tcp.write_all(&out).await?;
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
    let mut scratch = payloads.template.clone();
    for _ in 0..in_flight {
        payloads.feed(sent, &mut scratch, &mut ws)?;
        sent += 1;
    }
    ws.flush().await?;
    let mut echoes = Vec::with_capacity(in_flight);
    while !stop.load(Relaxed) {
        let Some(first) = ws.recv().await else {
            bail!("the server closed the connection");
        };
        // Take every echo already here first (receiving flushes what is queued, so replies
        // are queued only after), then write all the replies in one go.
        echoes.push(first?);
        while let Some(result) = ws.recv().now_or_never().flatten() {
            echoes.push(result?);
        }
        let before = next;
        for echo in echoes.drain(..).filter(Message::is_data) {
            if !payloads.matches(next, &echo) {
                bail!("echo {next} differs from what was sent");
            }
            next += 1;
            payloads.feed(sent, &mut scratch, &mut ws)?;
            sent += 1;
        }
        received.fetch_add(next - before, Relaxed);
        ws.flush().await?;
    }
    ws.close(None).await?;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
        while ws.recv().await.is_some() {}
    })
    .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_payloads_start_with_the_number_in_hex() {
        let payloads = Payloads::new(40, true);
        for seq in [0, 9, 0xabc, u64::MAX, 0x0123_4567_89ab_cdef] {
            let body = payloads.bytes(seq);
            assert_eq!(&body[..16], format!("{seq:016x}").as_bytes());
            assert_eq!(&body[16..], &payloads.template[16..]);
            assert!(payloads.matches_bytes(seq, &body));
            assert!(!payloads.matches_bytes(seq.wrapping_add(1), &body));
        }
    }
}
