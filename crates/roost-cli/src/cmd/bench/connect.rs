//! `roost bench connect`: full connections per second, opening and closing handshakes.

use std::sync::{
    Arc,
    atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed},
};

use anyhow::bail;

use super::{Common, measure, open, progress, report};

/// Arguments of `roost bench connect`.
#[derive(Debug, clap::Args)]
pub(crate) struct ConnectArgs {
    #[command(flatten)]
    common: Common,
    /// Connections being opened and closed at once.
    #[arg(long, short = 'c', default_value_t = 16)]
    concurrency: usize,
}

pub(crate) async fn run(args: ConnectArgs) -> anyhow::Result<()> {
    let target = Arc::new(args.common.target()?);
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let index = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..args.concurrency.max(1) {
        let (target, done, errors, stop, index) = (
            target.clone(),
            done.clone(),
            errors.clone(),
            stop.clone(),
            index.clone(),
        );
        let (url, sources) = (args.common.url.clone(), args.common.sources);
        workers.push(tokio::spawn(async move {
            while !stop.load(Relaxed) {
                let i = index.fetch_add(1, Relaxed);
                let cycle = async {
                    let mut ws = open(&target, &url, i, sources).await?;
                    ws.close(None).await?;
                    while ws.recv().await.is_some() {}
                    anyhow::Ok(())
                };
                match cycle.await {
                    Ok(()) => done.fetch_add(1, Relaxed),
                    Err(_) => errors.fetch_add(1, Relaxed),
                };
            }
        }));
    }
    let bar = progress(&args.common, args.common.json);
    let start = std::cell::Cell::new(0);
    let count = measure(
        &args.common,
        &bar,
        || start.set(done.load(Relaxed)),
        || done.load(Relaxed) - start.get(),
    )
    .await;
    stop.store(true, Relaxed);
    for worker in workers {
        let _ = worker.await;
    }
    report(
        args.common.json,
        &serde_json::json!({
            "mode": "connect",
            "url": args.common.url,
            "concurrency": args.concurrency,
            "seconds": args.common.duration,
            "connections": count,
            "connections_per_s": count as f64 / args.common.duration as f64,
            "errors": errors.load(Relaxed),
        }),
    );
    if errors.load(Relaxed) > 0 {
        bail!("{} connection(s) failed", errors.load(Relaxed));
    }
    Ok(())
}
