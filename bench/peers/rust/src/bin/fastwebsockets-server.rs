//! The bench app on fastwebsockets, upgraded from a hyper HTTP/1.1 connection: echo on any
//! path, broadcast to the others on `/room/<name>`. fastwebsockets answers pings and close
//! frames itself (`auto_pong`, `auto_close`, both on by default); `FragmentCollector`
//! reassembles fragmented messages.

use std::convert::Infallible;
use std::io;
use std::sync::Arc;

use bytes::Bytes;
use fastwebsockets::upgrade::{UpgradeFut, is_upgrade_request, upgrade};
use fastwebsockets::{
    FragmentCollector, FragmentCollectorRead, Frame, OpCode, Payload, WebSocketError,
};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use roost_bench_peers::{Args, Membership, Rooms, accept, listen, room_name};
use tokio::sync::mpsc;

/// What a room member's writer task sends: an opcode and the whole payload.
type Outgoing = (OpCode, Bytes);

fn main() -> io::Result<()> {
    let args = Args::parse("fastwebsockets-server");
    args.runtime()?.block_on(serve(args))
}

async fn serve(args: Args) -> io::Result<()> {
    let listener = listen(args.listen)?;
    println!(
        "fastwebsockets-server listening on {}",
        listener.local_addr()?
    );
    let rooms = Rooms::new();
    loop {
        let stream = accept(&listener).await;
        // Latency over batching, as every peer sets it.
        let _ = stream.set_nodelay(true);
        let rooms = Arc::clone(&rooms);
        tokio::spawn(async move {
            let service = service_fn(move |request| handle(request, Arc::clone(&rooms)));
            // A client that hangs up mid-request is not worth a log line.
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
        });
    }
}

async fn handle(
    mut request: Request<Incoming>,
    rooms: Arc<Rooms<Outgoing>>,
) -> Result<Response<Empty<Bytes>>, Infallible> {
    if !is_upgrade_request(&request) {
        return Ok(status(StatusCode::UPGRADE_REQUIRED));
    }
    let room = room_name(request.uri().path()).map(str::to_owned);
    let (response, upgraded) = match upgrade(&mut request) {
        Ok(upgrade) => upgrade,
        Err(_) => return Ok(status(StatusCode::BAD_REQUEST)),
    };
    tokio::spawn(async move {
        let result = match room {
            None => echo(upgraded).await,
            Some(room) => room_member(upgraded, &room, &rooms).await,
        };
        // Peers that hang up are routine under load; log the rest.
        if let Err(err) = result
            && !matches!(
                err,
                WebSocketError::UnexpectedEOF
                    | WebSocketError::ConnectionClosed
                    | WebSocketError::IoError(_)
            )
        {
            eprintln!("connection: {err}");
        }
    });
    Ok(response)
}

fn status(code: StatusCode) -> Response<Empty<Bytes>> {
    let mut response = Response::new(Empty::new());
    *response.status_mut() = code;
    response
}

/// Answers each message in place, borrowing the payload straight back.
async fn echo(upgraded: UpgradeFut) -> Result<(), WebSocketError> {
    let mut ws = FragmentCollector::new(upgraded.await?);
    loop {
        let frame = ws.read_frame().await?;
        match frame.opcode {
            OpCode::Text | OpCode::Binary => ws.write_frame(frame).await?,
            OpCode::Close => return Ok(()),
            _ => {}
        }
    }
}

/// Reads on this task and writes on another, so messages from the room reach this client while
/// it is quiet. The library's pong and close replies take the same queue as room messages.
async fn room_member(
    upgraded: UpgradeFut,
    room: &str,
    rooms: &Arc<Rooms<Outgoing>>,
) -> Result<(), WebSocketError> {
    let (read, mut write) = upgraded.await?.split(tokio::io::split);
    let mut read = FragmentCollectorRead::new(read);
    let (queue, mut inbox) = mpsc::unbounded_channel::<Outgoing>();

    let writer = tokio::spawn(async move {
        while let Some((opcode, payload)) = inbox.recv().await {
            write
                .write_frame(Frame::new(true, opcode, None, Payload::Borrowed(&payload)))
                .await?;
            if opcode == OpCode::Close {
                break;
            }
        }
        Ok::<(), WebSocketError>(())
    });

    let member: Membership<Outgoing> = rooms.join(room, queue.clone());
    let mut reply = |frame: Frame<'_>| {
        let queued = queue.send((frame.opcode, Bytes::copy_from_slice(&frame.payload)));
        std::future::ready(queued.map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe)))
    };
    let read_result = loop {
        match read.read_frame(&mut reply).await {
            Ok(frame) => match frame.opcode {
                OpCode::Text | OpCode::Binary => {
                    member.broadcast(&(frame.opcode, into_bytes(frame.payload)))
                }
                OpCode::Close => break Ok(()),
                _ => {}
            },
            Err(err) => break Err(err),
        }
    };
    // Leaving the room and dropping the last queue handle lets the writer drain and stop.
    drop(member);
    drop(queue);
    let write_result = writer.await.unwrap_or(Ok(()));
    read_result.and(write_result)
}

fn into_bytes(payload: Payload<'_>) -> Bytes {
    match payload {
        Payload::Bytes(bytes) => bytes.freeze(),
        other => Bytes::from(Vec::from(other)),
    }
}
