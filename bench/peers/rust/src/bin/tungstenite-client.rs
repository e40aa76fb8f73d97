//! The echo load of `roost bench echo`, driven by tokio-tungstenite's client instead of
//! roost's: C connections, P binary messages of S bytes in flight on each, every echo checked
//! against what was sent, for T seconds after a warm-up. Prints one JSON object
//! (`msgs_per_s`, `mib_per_s`, ...), the same keys as `roost bench echo --json`.
//!
//! The loop is the one roost's generator runs: write P messages, then for each batch of echoes
//! (the first awaited, the rest taken while already there) check them and queue as many new
//! messages, written with one flush.
//!
//! ```sh
//! tungstenite-client --url ws://127.0.0.1:9101/ -c 100 -p 16 -s 64 --duration 10 --warmup 2
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

#[derive(Debug)]
struct Args {
    url: String,
    connections: usize,
    in_flight: usize,
    size: usize,
    duration: u64,
    warmup: u64,
}

const USAGE: &str = "usage: tungstenite-client --url ws://HOST:PORT/ [-c CONNECTIONS] \
                     [-p IN_FLIGHT] [-s SIZE] [--duration SECONDS] [--warmup SECONDS]";

fn parse() -> Result<Args, String> {
    let mut args = Args {
        url: "ws://127.0.0.1:9101/".to_owned(),
        connections: 100,
        in_flight: 16,
        size: 64,
        duration: 10,
        warmup: 2,
    };
    let mut argv = std::env::args().skip(1);
    while let Some(flag) = argv.next() {
        if flag == "-h" || flag == "--help" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let value = argv.next().ok_or(format!("{flag} needs a value"))?;
        let number = || {
            value
                .parse::<u64>()
                .map_err(|_| format!("{flag} needs a number"))
        };
        match flag.as_str() {
            "--url" => args.url = value.clone(),
            "-c" | "--connections" => args.connections = number()? as usize,
            "-p" | "--in-flight" => args.in_flight = number()?.max(1) as usize,
            "-s" | "--size" => args.size = number()?.max(8) as usize,
            "-d" | "--duration" => args.duration = number()?.max(1),
            "--warmup" => args.warmup = number()?,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(args)
}

/// Payloads numbered by sequence: letters whose first 8 bytes carry the number
/// (little-endian), so that every echo is checked with one comparison and no copies kept.
struct Payloads {
    template: Vec<u8>,
}

impl Payloads {
    fn new(size: usize) -> Self {
        Payloads {
            template: (0..size).map(|i| b'a' + (i % 26) as u8).collect(),
        }
    }

    fn message(&self, seq: u64) -> Message {
        let mut bytes = self.template.clone();
        bytes[..8].copy_from_slice(&seq.to_le_bytes());
        Message::binary(bytes)
    }

    fn matches(&self, seq: u64, bytes: &[u8]) -> bool {
        bytes.len() == self.template.len()
            && bytes[..8] == seq.to_le_bytes()
            && bytes[8..] == self.template[8..]
    }
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn pump(
    mut ws: Ws,
    args: Arc<Args>,
    received: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> Result<(), String> {
    let payloads = Payloads::new(args.size);
    let (mut sent, mut next) = (0u64, 0u64);
    for _ in 0..args.in_flight {
        ws.feed(payloads.message(sent))
            .await
            .map_err(|e| e.to_string())?;
        sent += 1;
    }
    ws.flush().await.map_err(|e| e.to_string())?;
    let mut echoes = Vec::with_capacity(args.in_flight);
    while !stop.load(Relaxed) {
        let Some(first) = ws.next().await else {
            return Err("the server closed the connection".to_owned());
        };
        echoes.push(first.map_err(|e| e.to_string())?);
        while let Some(Some(more)) = ws.next().now_or_never() {
            echoes.push(more.map_err(|e| e.to_string())?);
        }
        let before = next;
        for echo in echoes.drain(..) {
            let Message::Binary(bytes) = echo else {
                continue;
            };
            if !payloads.matches(next, &bytes) {
                return Err(format!("echo {next} differs from what was sent"));
            }
            next += 1;
            ws.feed(payloads.message(sent))
                .await
                .map_err(|e| e.to_string())?;
            sent += 1;
        }
        received.fetch_add(next - before, Relaxed);
        ws.flush().await.map_err(|e| e.to_string())?;
    }
    let _ = ws.close(None).await;
    Ok(())
}

async fn run(args: Args) -> Result<(), String> {
    let args = Arc::new(args);
    let received = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        let (ws, _) = tokio_tungstenite::connect_async(args.url.as_str())
            .await
            .map_err(|e| format!("connecting to {}: {e}", args.url))?;
        if let MaybeTlsStream::Plain(tcp) = ws.get_ref() {
            tcp.set_nodelay(true).map_err(|e| e.to_string())?;
        }
        let (args, received, stop) = (args.clone(), received.clone(), stop.clone());
        tasks.push(tokio::spawn(pump(ws, args, received, stop)));
    }
    tokio::time::sleep(Duration::from_secs(args.warmup)).await;
    let start = received.load(Relaxed);
    tokio::time::sleep(Duration::from_secs(args.duration)).await;
    let count = received.load(Relaxed) - start;
    stop.store(true, Relaxed);
    let mut errors = 0;
    for task in tasks {
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                errors += 1;
                eprintln!("tungstenite-client: {error}");
            }
            Err(error) => {
                errors += 1;
                eprintln!("tungstenite-client: a connection task failed: {error}");
            }
        }
    }
    let rate = count as f64 / args.duration as f64;
    println!(
        "{{\"mode\":\"echo\",\"client\":\"tokio-tungstenite\",\"url\":\"{}\",\"connections\":{},\
         \"in_flight\":{},\"size\":{},\"seconds\":{},\"messages\":{count},\"msgs_per_s\":{rate},\
         \"mib_per_s\":{},\"errors\":{errors}}}",
        args.url,
        args.connections,
        args.in_flight,
        args.size,
        args.duration,
        rate * args.size as f64 / 1048576.0
    );
    if errors > 0 {
        return Err(format!(
            "{errors} connection(s) failed or echoed a wrong payload"
        ));
    }
    Ok(())
}

fn main() {
    let args = match parse() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("tungstenite-client: {message}\n{USAGE}");
            std::process::exit(2);
        }
    };
    // The same runtime as `roost bench`: multi-thread, one worker per CPU it may use.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build();
    let result = match runtime {
        Ok(runtime) => runtime.block_on(run(args)),
        Err(error) => Err(format!("cannot start the runtime: {error}")),
    };
    if let Err(message) = result {
        eprintln!("tungstenite-client: {message}");
        std::process::exit(1);
    }
}
