//! `roost connect`: an interactive client.

use anyhow::Context as _;
use roost::{
    ClientBuilder, Message,
    http::{HeaderName, HeaderValue},
};
use tokio::io::{AsyncBufReadExt, BufReader};

/// Arguments of `roost connect`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The server URL, ws:// or wss://.
    url: String,
    /// Offer a subprotocol (repeatable).
    #[arg(long = "protocol")]
    protocols: Vec<String>,
    /// For wss://, trust only the certificates in this PEM file (a private CA, a test
    /// certificate) instead of the web PKI roots.
    #[arg(long)]
    ca: Option<std::path::PathBuf>,
    /// Send a request header, `NAME: VALUE` (repeatable): `Origin`, `Authorization`, a
    /// cookie.
    #[arg(short = 'H', long = "header", value_parser = header)]
    headers: Vec<(HeaderName, HeaderValue)>,
}

/// A `NAME: VALUE` request header.
fn header(text: &str) -> Result<(HeaderName, HeaderValue), String> {
    let (name, value) = text
        .split_once(':')
        .ok_or_else(|| format!("expected NAME: VALUE, got {text:?}"))?;
    let name = HeaderName::try_from(name.trim())
        .map_err(|_| format!("{:?} is not a header name", name.trim()))?;
    let value = HeaderValue::try_from(value.trim())
        .map_err(|_| format!("the value of {name} holds a character headers cannot carry"))?;
    Ok((name, value))
}

pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let mut builder = ClientBuilder::new(&args.url)?;
    for protocol in args.protocols {
        builder = builder.protocol(protocol);
    }
    for (name, value) in args.headers {
        builder = builder.header(name, value);
    }
    if let Some(ca) = &args.ca {
        let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
        builder = builder.tls_config(roost::tls::client_config_with_pem_roots(&pem)?);
    }
    let (mut ws, _response) = builder
        .connect()
        .await
        .with_context(|| format!("connecting to {}", args.url))?;
    eprintln!(
        "connected to {}{}",
        args.url,
        ws.protocol().map(|p| format!(" ({p})")).unwrap_or_default()
    );
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut stdin_open = true;
    loop {
        tokio::select! {
            line = lines.next_line(), if stdin_open => match line? {
                Some(line) => ws.send(Message::text(line)).await?,
                None => {
                    stdin_open = false;
                    ws.close(Some(roost::CloseFrame::new(roost::CloseCode::NORMAL, ""))).await?;
                }
            },
            message = ws.recv() => match message {
                Some(Ok(Message::Text(text))) => println!("{text}"),
                Some(Ok(Message::Binary(data))) => println!("<{} bytes of binary>", data.len()),
                Some(Ok(_)) => {}
                Some(Err(error)) => return Err(error).context("connection failed"),
                None => break,
            },
        }
    }
    if let Some(status) = ws.close_status() {
        let by = match status.initiator {
            roost::CloseInitiator::Local => "closed",
            roost::CloseInitiator::Peer => "closed by the server",
            roost::CloseInitiator::ProtocolViolation => {
                "closed after a protocol error by the server"
            }
            roost::CloseInitiator::Lost => "connection lost",
        };
        let reason = if status.reason.is_empty() {
            String::new()
        } else {
            format!(" ({})", status.reason)
        };
        eprintln!("{by}: {}{reason}", status.code);
    }
    Ok(())
}
