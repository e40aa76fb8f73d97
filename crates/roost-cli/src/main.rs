//! The `roost` command: `serve` runs a WebSocket server, `connect` an interactive client.

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

mod allocator;
mod apps;
mod cmd;

/// roost: a WebSocket server and client.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// Log as JSON lines instead of human-readable text.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a WebSocket server.
    Serve(cmd::serve::Args),
    /// Connect to a WebSocket server: lines from stdin are sent as text, messages are printed.
    Connect(cmd::connect::Args),
    /// Inspect or clean a durable attachment directory.
    Attachments(cmd::attachments::Args),
    /// Load-test a WebSocket server.
    Bench(cmd::bench::Args),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_env("ROOST_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if cli.log_json {
        logs.json().init();
    } else {
        logs.init();
    }
    let runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    };
    match cli.command {
        Command::Serve(args) => {
            allocator::spawn_janitor()?;
            runtime()?.block_on(cmd::serve::run(args))
        }
        Command::Connect(args) => {
            let runtime = runtime()?;
            let result = runtime.block_on(cmd::connect::run(args));
            // Standard input is read on a blocking thread no one can interrupt: waiting for
            // it would keep a finished client open until the user pressed Enter.
            runtime.shutdown_background();
            result
        }
        Command::Attachments(args) => cmd::attachments::run(args),
        Command::Bench(args) => runtime()?.block_on(cmd::bench::run(args)),
    }
}
