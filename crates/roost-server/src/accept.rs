//! One TCP connection up to its handler: the request head, then plain HTTP or the WebSocket
//! handshake (admission, origin, resume) and the connection's task.

use std::{
    io,
    net::SocketAddr,
    sync::{Arc, atomic::Ordering::Relaxed},
    time::SystemTime,
};

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use roost::proto::{
    Connection,
    handshake::{self, Accepted, Refusal, Rejected, RequestReader},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::{
    app::{AppRoutes, WsRoute},
    peer::Peer,
    plain_http::{Answers, query_param, serve_http},
    shared::{Guards, OpenGuard, Shared, TaskGuard},
    store::ConnectionId,
};

pub(crate) async fn handle_tcp(
    task: TaskGuard,
    app: &AppRoutes,
    mut tcp: TcpStream,
    addr: SocketAddr,
) {
    let shared = &task.0.clone();
    let _ = tcp.set_nodelay(true);
    let config = &shared.config.protocol;
    let deadline = tokio::time::Instant::now() + config.limits().handshake_timeout;
    let mut reader = RequestReader::new(config);
    let mut raw = Vec::new();
    let mut buf = vec![0u8; 4096];
    let (request, leftover) = loop {
        let n = match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(n)) => n,
            Err(_) => {
                tracing::debug!(%addr, "handshake timed out");
                shared.metrics.record_rejection(408);
                return;
            }
        };
        raw.extend_from_slice(&buf[..n]);
        match reader.feed(&buf[..n]) {
            Ok(Some(head)) => break head,
            Ok(None) => {}
            Err(error) => {
                shared.metrics.record_rejection(error.status());
                let _ = write_and_close(&mut tcp, &handshake::reject_response(&error)).await;
                return;
            }
        }
    };
    let route = app.router.at(request.uri().path()).ok().map(|matched| {
        let route = &app.routes[*matched.value];
        let room = match &route.room_param {
            Some(name) => matched.params.get(name).unwrap_or_default().to_owned(),
            None => request.uri().path().to_owned(),
        };
        (route, room)
    });
    match route {
        Some((route, room)) if roost::upgrade::is_upgrade_request(&request) => {
            drop((raw, buf, reader));
            accept_ws(task, route, room, tcp, request, leftover).await;
        }
        _ => {
            let answers = Answers::Public {
                own_paths: shared.config.admin_addr.is_none(),
                app: app.http.clone(),
            };
            serve_http(shared, answers, tcp, Bytes::from(raw)).await;
        }
    }
}

/// Admission, origin, resume and the handshake itself; then the connection runs in a task of
/// its own, sized for the connection alone: nothing of the handshake stays in its memory.
async fn accept_ws(
    task: TaskGuard,
    route: &WsRoute,
    room: String,
    mut tcp: TcpStream,
    request: Request<()>,
    leftover: Bytes,
) {
    let shared = &task.0.clone();
    let Admitted {
        open,
        accepted,
        id,
        expires,
        resumed,
    } = match admit(shared, route, &request).await {
        Ok(admitted) => admitted,
        Err(refusal) => {
            shared
                .metrics
                .record_rejection(refusal.response.status().as_u16());
            let _ = write_and_close(&mut tcp, &refusal.to_bytes()).await;
            return;
        }
    };
    if tcp.write_all(&accepted.to_bytes()).await.is_err() {
        // The client is gone before its new connection began: the attachment goes back where
        // its token points, so a retry with that token resumes.
        if let Some((old, _)) = resumed
            && let Ok(Some(_)) = shared.adopt(id, old).await
        {
            shared.used_tokens.release(old);
        }
        return;
    }
    let attachment = resumed.map(|(old, attachment)| {
        // Only now that the resume stands: the old connection's writes were refused since the
        // token was spent, and it is still open if the attachment had to go back.
        shared.took_session(old);
        shared.metrics.resumes.fetch_add(1, Relaxed);
        attachment
    });
    let mut core = Connection::server(shared.config.protocol.clone(), accepted.negotiated);
    if let Some((request, response)) = &shared.config.auto_response {
        core.set_auto_response(Some(shared.auto_response(request, response)));
    }
    let peer = Arc::new(Peer::new(
        id,
        shared.rooms.intern(&room),
        shared.clone(),
        tcp,
        core,
        expires,
    ));
    peer.set_attachment(attachment);
    shared.peers.lock().insert(id, Arc::downgrade(&peer));
    let (handler, url) = (route.handler.clone(), request.uri().clone());
    drop(request);
    handler.spawn_open(
        peer,
        url,
        leftover,
        Guards {
            _open: open,
            _task: task,
        },
    );
}

/// A WebSocket request the server said yes to, before the response is written.
struct Admitted {
    /// Its slot among `max_connections`.
    open: OpenGuard,
    accepted: Accepted,
    /// The new connection's id.
    id: ConnectionId,
    /// When the resume token it hands out expires.
    expires: SystemTime,
    /// With a resume: the old connection's id and the attachment moved from it to `id`.
    resumed: Option<(ConnectionId, Bytes)>,
}

/// Decides on a WebSocket request, in order: room among `max_connections` (503), Origin
/// (403), the handshake (its own status), then the resume token (401, 410 or 503), which is
/// spent only on a request that passed everything else.
async fn admit(
    shared: &Arc<Shared>,
    route: &WsRoute,
    request: &Request<()>,
) -> Result<Admitted, Rejected> {
    if shared.open.fetch_add(1, Relaxed) >= shared.config.max_connections {
        shared.open.fetch_sub(1, Relaxed);
        return Err(refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many connections, try again later",
        ));
    }
    let open = OpenGuard(shared.clone());
    if !shared.config.allowed_origins.is_empty() {
        let origin = request
            .headers()
            .get(header::ORIGIN)
            .and_then(|v| v.to_str().ok());
        if !origin.is_some_and(|o| shared.config.allowed_origins.iter().any(|a| a == o)) {
            return Err(refusal(StatusCode::FORBIDDEN, "origin not allowed"));
        }
    }
    let accepted = handshake::accept(&shared.config.protocol, request, |request, response| {
        Ok(choose_protocol(&route.protocols, request, response))
    })?;
    let id = ConnectionId::random();
    // Before the attachment moves: an attachment is written (or moved) no earlier than the
    // handshake of the token that reaches it, which `expire_attachments` relies on.
    let expires = SystemTime::now() + shared.config.resume_ttl;
    let resumed = match query_param(request.uri(), "resume") {
        None => None,
        Some(token) => Some(resume(shared, token, id).await?),
    };
    Ok(Admitted {
        open,
        accepted,
        id,
        expires,
        resumed,
    })
}

/// Answers with the first of the route's subprotocols the client offers, if any.
fn choose_protocol(
    protocols: &[String],
    request: &Request<()>,
    mut response: Response<()>,
) -> Response<()> {
    let offered: Vec<&str> = request
        .headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    if let Some(chosen) = protocols.iter().find(|p| offered.contains(&p.as_str()))
        && let Ok(value) = http::HeaderValue::from_str(chosen)
    {
        response
            .headers_mut()
            .insert(header::SEC_WEBSOCKET_PROTOCOL, value);
    }
    response
}

/// Spends `token` and moves its session's attachment to the new connection `id`; returns
/// the old connection's id and the attachment.
async fn resume(
    shared: &Shared,
    token: &str,
    id: ConnectionId,
) -> Result<(ConnectionId, Bytes), Rejected> {
    let old = check_resume(shared, token)?;
    match shared.adopt(old, id).await {
        Ok(Some(attachment)) => Ok((old, attachment)),
        Ok(None) => {
            // Nothing moved: a connection of that id still open (one that had written no
            // attachment yet) keeps writing as before.
            shared.used_tokens.release(old);
            Err(refusal(
                StatusCode::GONE,
                "nothing to resume: the session ended (closed with 1000) or was already resumed",
            ))
        }
        Err(_) => {
            // Try again later, with the same token: it is not spent by this attempt. The
            // store's error (logged) stays here: it may name paths of the server's.
            shared.used_tokens.release(old);
            Err(refusal(
                StatusCode::SERVICE_UNAVAILABLE,
                "cannot resume now: the attachment could not be moved; try again with the same token",
            ))
        }
    }
}

/// Spends `token` if this server signed it, it has not expired and it was not used: 401
/// otherwise, saying which.
fn check_resume(shared: &Shared, token: &str) -> Result<ConnectionId, Rejected> {
    let now = SystemTime::now();
    let claims = shared
        .resume_key
        .verify_claims(token, now)
        .map_err(|error| {
            refusal(
                StatusCode::UNAUTHORIZED,
                &format!("resume refused: {error}"),
            )
        })?;
    if !shared
        .used_tokens
        .consume(claims.id, claims.expires_at, now)
    {
        return Err(refusal(
            StatusCode::UNAUTHORIZED,
            "resume refused: the token was already used",
        ));
    }
    Ok(claims.id)
}

/// A refusal of the handshake with `status` and a one-line plain-text body saying why.
fn refusal(status: StatusCode, why: &str) -> Rejected {
    Rejected::from(Refusal::new(status, Some(format!("{why}\n"))))
}

async fn write_and_close(tcp: &mut TcpStream, bytes: &[u8]) -> io::Result<()> {
    tcp.write_all(bytes).await?;
    tcp.shutdown().await
}
