//! `roost bench latency`: strict ping-pong round trips.

use std::time::Instant;

use anyhow::bail;

use super::{Common, echo::Payloads, histogram, measure, open, percentiles, progress, report};

/// Arguments of `roost bench latency`.
#[derive(Debug, clap::Args)]
pub(crate) struct LatencyArgs {
    #[command(flatten)]
    common: Common,
    /// Payload size in bytes.
    #[arg(long, short = 's', default_value_t = 64)]
    size: usize,
}

pub(crate) async fn run(args: LatencyArgs) -> anyhow::Result<()> {
    let target = args.common.target()?;
    let mut ws = open(&target, &args.common.url, 0, 1).await?;
    let payloads = Payloads::new(args.size, false);
    let measuring = std::sync::atomic::AtomicBool::new(false);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let mut rtt = histogram();
    let bar = progress(&args.common, args.common.json);
    let work = async {
        let mut seq = 0u64;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let started = Instant::now();
            ws.send(payloads.message(seq)).await?;
            let echo = loop {
                match ws.recv().await {
                    Some(Ok(message)) if message.is_data() => break message,
                    Some(Ok(_)) => {}
                    Some(Err(error)) => return Err(anyhow::Error::from(error)),
                    None => bail!("the server closed the connection"),
                }
            };
            let elapsed = started.elapsed();
            if !payloads.matches(seq, &echo) {
                bail!("echo {seq} differs from what was sent");
            }
            if measuring.load(std::sync::atomic::Ordering::Relaxed) {
                rtt.saturating_record(elapsed.as_nanos() as u64);
            }
            seq += 1;
        }
        Ok::<_, anyhow::Error>(seq)
    };
    let timer = measure(
        &args.common,
        &bar,
        || measuring.store(true, std::sync::atomic::Ordering::Relaxed),
        || stop.store(true, std::sync::atomic::Ordering::Relaxed),
    );
    let (result, ()) = tokio::join!(work, timer);
    result?;
    report(
        args.common.json,
        &serde_json::json!({
            "mode": "latency",
            "url": args.common.url,
            "size": args.size,
            "round_trips": rtt.len(),
            "round_trip": percentiles(&rtt),
        }),
    );
    Ok(())
}
