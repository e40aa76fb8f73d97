//! The bench app on tokio-tungstenite: echo on any path, broadcast to the others on
//! `/room/<name>`. tungstenite answers pings and close frames itself; they go out on the next
//! read, which this loop always makes. Replies are fed while more input is already decoded or
//! queued and flushed once per batch, the way a tuned tokio-tungstenite server writes.

use std::sync::Arc;

use futures_util::{FutureExt, SinkExt, StreamExt};
use roost_bench_peers::{Args, Membership, Rooms, accept, listen, room_name};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::{Error, Message};

fn main() -> std::io::Result<()> {
    let args = Args::parse("tungstenite-server");
    args.runtime()?.block_on(serve(args))
}

async fn serve(args: Args) -> std::io::Result<()> {
    let listener = listen(args.listen)?;
    println!("tungstenite-server listening on {}", listener.local_addr()?);
    let rooms = Rooms::new();
    loop {
        let stream = accept(&listener).await;
        let rooms = Arc::clone(&rooms);
        tokio::spawn(async move {
            // Peers that hang up or break the protocol are routine under load; log the rest.
            if let Err(err) = connection(stream, rooms).await
                && !matches!(
                    err,
                    Error::ConnectionClosed | Error::Protocol(_) | Error::Io(_)
                )
            {
                eprintln!("connection: {err}");
            }
        });
    }
}

async fn connection(stream: TcpStream, rooms: Arc<Rooms<Message>>) -> Result<(), Error> {
    stream.set_nodelay(true)?;
    let mut path = String::new();
    // tungstenite's callback type fixes the (large) rejection type; this one never rejects.
    #[allow(clippy::result_large_err)]
    let callback = |request: &Request, response: Response| {
        path = request.uri().path().to_owned();
        Ok(response)
    };
    let mut ws = tokio_tungstenite::accept_hdr_async(stream, callback).await?;

    let Some(room) = room_name(&path) else {
        // Echo: answer each message in place, one flush for all the input at hand.
        while let Some(message) = ws.next().await {
            let mut message = message?;
            loop {
                if message.is_text() || message.is_binary() {
                    ws.feed(message).await?;
                }
                match ws.next().now_or_never() {
                    Some(Some(next)) => message = next?,
                    // Nothing decoded yet, or the stream ended: the outer loop sees which.
                    _ => break,
                }
            }
            ws.flush().await?;
        }
        return Ok(());
    };

    let (queue, mut inbox) = mpsc::unbounded_channel();
    let member: Membership<Message> = rooms.join(room, queue);
    loop {
        tokio::select! {
            incoming = ws.next() => match incoming {
                Some(Ok(message)) if message.is_text() || message.is_binary() => {
                    member.broadcast(&message);
                }
                Some(Ok(_)) => {}
                Some(Err(err)) => return Err(err),
                None => return Ok(()),
            },
            Some(message) = inbox.recv() => {
                ws.feed(message).await?;
                while let Ok(message) = inbox.try_recv() {
                    ws.feed(message).await?;
                }
                ws.flush().await?;
            }
        }
    }
}
