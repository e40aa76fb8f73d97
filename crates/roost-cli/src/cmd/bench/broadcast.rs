//! `roost bench broadcast`: N subscribers in one room and publishers sending to it;
//! deliveries per second and delivery latency from a timestamp in each payload.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use anyhow::bail;
use bytes::Bytes;
use futures_util::{FutureExt as _, SinkExt, StreamExt};
use roost::Message;

use super::{Common, histogram, measure, open, percentiles, progress, report};

/// Arguments of `roost bench broadcast`.
#[derive(Debug, clap::Args)]
pub(crate) struct BroadcastArgs {
    #[command(flatten)]
    common: Common,
    /// Subscribers in the room.
    #[arg(long, short = 'n', default_value_t = 1000)]
    subscribers: usize,
    /// Publishers in the same room.
    #[arg(long, default_value_t = 1)]
    publishers: usize,
    /// Payload size in bytes (at least 16: a timestamp, a publisher and a sequence number).
    #[arg(long, short = 's', default_value_t = 64)]
    size: usize,
    /// Messages per second from all publishers together; 0 sends as fast as deliveries
    /// keep up (at most `window` messages per publisher not yet delivered to everyone).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Messages per publisher in flight at the maximum rate.
    #[arg(long, default_value_t = 16)]
    window: u64,
    /// The room's name: connections go to /room/<room>.
    #[arg(long, default_value = "bench")]
    room: String,
    /// Connect the publishers to this server instead (another process of a cluster): the
    /// deliveries then cross processes.
    #[arg(long)]
    publish_url: Option<String>,
}

pub(crate) async fn run(args: BroadcastArgs) -> anyhow::Result<()> {
    if args.size < 16 {
        bail!("--size must be at least 16 bytes");
    }
    let target = args.common.target()?;
    let url = args.common.url_with_path(&format!("/room/{}", args.room))?;
    let epoch = Instant::now();
    let delivered = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let measuring = Arc::new(AtomicBool::new(false));
    // One histogram for every subscriber, taken once per batch of deliveries: a histogram of
    // each (300 KB apiece) would make every record a cache miss, and the generator the limit.
    let latency = Arc::new(std::sync::Mutex::new(histogram()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut subscribers = Vec::new();
    for i in 0..args.subscribers {
        let mut ws = open(&target, &url, i, args.common.sources).await?;
        let (delivered, measuring, stop) = (delivered.clone(), measuring.clone(), stop.clone());
        let latency = latency.clone();
        subscribers.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(64);
            while !stop.load(Relaxed) {
                // The first delivery awaited (with a timeout, to see `stop`), then every one
                // already here: one timer and one shared count per batch, not per message, so
                // that the generator is not what limits the rate.
                let Ok(first) = tokio::time::timeout(Duration::from_millis(200), ws.recv()).await
                else {
                    continue;
                };
                let (mut next, mut count) = (first, 0);
                let ended = loop {
                    match next {
                        None => break true,
                        Some(Ok(Message::Binary(payload))) => {
                            if let Some(stamp) = payload.first_chunk::<8>() {
                                count += 1;
                                if measuring.load(Relaxed) {
                                    let now = epoch.elapsed().as_nanos() as u64;
                                    let sent_at = u64::from_le_bytes(*stamp);
                                    latencies.push(now.saturating_sub(sent_at).max(1));
                                }
                            }
                        }
                        Some(_) => {}
                    }
                    match ws.recv().now_or_never() {
                        Some(more) => next = more,
                        None => break false,
                    }
                };
                delivered.fetch_add(count, Relaxed);
                if !latencies.is_empty() {
                    let mut histogram = latency.lock().unwrap_or_else(|e| e.into_inner());
                    for value in latencies.drain(..) {
                        histogram.saturating_record(value);
                    }
                }
                if ended {
                    break;
                }
            }
            let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
        }));
    }
    let publish_url = match &args.publish_url {
        Some(other) => super::with_path(other, &format!("/room/{}", args.room))?,
        None => url.clone(),
    };
    let publish_target = args.common.target_of(&publish_url)?;
    let per_publisher_gap =
        (args.rate > 0).then(|| Duration::from_secs_f64(args.publishers as f64 / args.rate as f64));
    let mut publishers = Vec::new();
    for p in 0..args.publishers {
        let ws = open(
            &publish_target,
            &publish_url,
            args.subscribers + p,
            args.common.sources,
        )
        .await?;
        let (mut writer, mut reader) = ws.split();
        // Publishers are members too: drain what the others publish.
        tokio::spawn(async move { while let Some(Ok(_)) = reader.next().await {} });
        let (sent, delivered, stop) = (sent.clone(), delivered.clone(), stop.clone());
        let (subscribers, window, size) = (args.subscribers as u64, args.window, args.size);
        publishers.push(tokio::spawn(async move {
            let mut seq = 0u32;
            let mut next_at = Instant::now();
            while !stop.load(Relaxed) {
                match per_publisher_gap {
                    Some(gap) => {
                        next_at += gap;
                        tokio::time::sleep_until(next_at.into()).await;
                    }
                    None => {
                        // Bounded in flight: deliveries must catch up with what was sent.
                        while sent.load(Relaxed) * subscribers
                            > delivered.load(Relaxed) + window * subscribers
                            && !stop.load(Relaxed)
                        {
                            tokio::time::sleep(Duration::from_micros(50)).await;
                        }
                    }
                }
                let mut body = vec![0u8; size];
                body[..8].copy_from_slice(&(epoch.elapsed().as_nanos() as u64).to_le_bytes());
                body[8..12].copy_from_slice(&(p as u32).to_le_bytes());
                body[12..16].copy_from_slice(&seq.to_le_bytes());
                seq = seq.wrapping_add(1);
                if writer
                    .send(Message::Binary(Bytes::from(body)))
                    .await
                    .is_err()
                {
                    break;
                }
                sent.fetch_add(1, Relaxed);
            }
            let _ = writer.close().await;
        }));
    }
    let bar = progress(&args.common, args.common.json);
    let start = std::cell::Cell::new(0);
    let count = measure(
        &args.common,
        &bar,
        || {
            start.set(delivered.load(Relaxed));
            measuring.store(true, Relaxed);
        },
        || {
            measuring.store(false, Relaxed);
            delivered.load(Relaxed) - start.get()
        },
    )
    .await;
    stop.store(true, Relaxed);
    for publisher in publishers {
        let _ = publisher.await;
    }
    for subscriber in subscribers {
        let _ = subscriber.await;
    }
    let latency = latency.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let seconds = args.common.duration as f64;
    report(
        args.common.json,
        &serde_json::json!({
            "mode": "broadcast",
            "url": url,
            "publish_url": publish_url,
            "subscribers": args.subscribers,
            "publishers": args.publishers,
            "size": args.size,
            "rate": if args.rate == 0 { "max".to_owned() } else { args.rate.to_string() },
            "seconds": seconds,
            "deliveries": count,
            "deliveries_per_s": count as f64 / seconds,
            "delivery_latency": percentiles(&latency),
        }),
    );
    Ok(())
}
