//! A connection's task: from the 101 response (or a wake-up from hibernation) through every
//! batch of messages and every wait on its socket, to its close or its next sleep.

use std::{
    sync::{
        Arc,
        atomic::Ordering::{Relaxed, SeqCst},
    },
    time::Instant,
};

use bytes::Bytes;
use roost::{CloseCode, CloseInitiator, Message, proto::Event};
use tokio::net::TcpStream;

use super::{
    OWN_TASK, Peer, Sleeper,
    sleep::{Idle, hibernate},
};
use crate::{
    ConnState, Data, Handler, Room, Ws,
    handler::{Disconnect, DynHandler},
    shared::Guards,
};

/// Runs one connection from the 101 response until it ends (then cleans up after it) or
/// hibernates.
pub(crate) async fn run<H: Handler>(
    peer: Arc<Peer>,
    handler: Arc<H>,
    url: http::Uri,
    leftover: Bytes,
    guards: Guards,
) {
    let id = peer.id;
    OWN_TASK
        .scope(id, open_and_drive(peer, handler, url, leftover, guards))
        .await;
}

async fn open_and_drive<H: Handler>(
    peer: Arc<Peer>,
    handler: Arc<H>,
    url: http::Uri,
    leftover: Bytes,
    guards: Guards,
) {
    let ws = Ws::from_peer(peer.clone());
    let room = Room::of_peer(&peer);
    let shared = peer.shared.clone();
    let cluster = shared.cluster.as_deref();
    shared.rooms.join(&peer, || {
        if let Some(cluster) = cluster {
            cluster.subscribe(&peer.room);
        }
    });
    if let Some(cluster) = cluster {
        cluster.join(&peer.room, peer.id);
    }
    shared.metrics.connections_total.fetch_add(1, Relaxed);
    if !leftover.is_empty() {
        let now = Instant::now();
        let _ = peer.with_core(|core| core.receive(&leftover, now));
    }
    peer.set_state(ConnState::Live);
    let opened = call_handler(&peer, || handler.on_open(&ws, &url)).await;
    // Both may be slices of the buffer the request was read into: it goes now, not when the
    // task ends. Kept that long, it would sit between the long-lived allocations of the
    // connections opened meanwhile and leave their pages half empty once it is freed.
    drop((url, leftover));
    peer.set_state(ConnState::Parked);
    match peer.awake_socket() {
        Ok(socket) if opened => {
            drive_then_rest(peer, handler, ws, room, guards, Idle::new(), socket).await;
        }
        socket => finish(&peer, &*handler, &ws, socket.ok().as_deref()).await,
    }
}

/// A hibernating connection's new task: carries on as before, from a wait on the socket.
/// `handler` is the sleeper's own, with its type known.
pub(crate) async fn resume<H: Handler>(handler: Arc<H>, sleeper: Sleeper, input: Bytes) {
    let Sleeper {
        peer,
        handler: _,
        guards,
        mut idle,
    } = sleeper;
    let id = peer.id;
    OWN_TASK
        .scope(id, async move {
            let ws = Ws::from_peer(peer.clone());
            let room = Room::of_peer(&peer);
            if !input.is_empty() {
                let now = Instant::now();
                let _ = peer.with_core(|core| core.receive(&input, now));
            }
            match peer.awake_socket() {
                Ok(socket) => {
                    idle.just_woke = true;
                    drive_then_rest(peer, handler, ws, room, guards, idle, socket).await;
                }
                Err(error) => {
                    tracing::debug!(id = %peer.id, %error, "socket lost while hibernating");
                    peer.core().receive_eof();
                    finish(&peer, &*handler, &ws, None).await;
                }
            }
        })
        .await;
}

/// Drives the connection until it ends, then cleans up after it, or until it hibernates.
async fn drive_then_rest<H: Handler>(
    peer: Arc<Peer>,
    handler: Arc<H>,
    ws: Ws,
    room: Room,
    guards: Guards,
    mut idle: Idle,
    socket: Arc<TcpStream>,
) {
    let next = drive(&peer, &socket, &*handler, &ws, &room, &mut idle).await;
    peer.wake.forget_task();
    if next == Next::Hibernate {
        drop((ws, room, socket));
        hibernate(Sleeper {
            peer,
            handler: handler as Arc<dyn DynHandler>,
            guards,
            idle,
        });
        return;
    }
    finish(&peer, &*handler, &ws, Some(&socket)).await;
    drop(guards);
}

/// How [`drive`] ended.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    /// The connection is over: clean up.
    Finished,
    /// The connection is dormant and nothing waits: end the task.
    Hibernate,
}

/// Runs a handler call with the connection marked live; an error or a panic closes the
/// connection. Returns whether the connection may go on.
async fn call_handler<F: std::future::Future<Output = Result<(), Disconnect>>>(
    peer: &Peer,
    call: impl FnOnce() -> F,
) -> bool {
    let result = contained(call).await;
    match result {
        Ok(Ok(())) => true,
        Ok(Err(disconnect)) => {
            peer.shared.metrics.handler_errors.fetch_add(1, Relaxed);
            peer.close(disconnect.code(), disconnect.reason());
            false
        }
        Err(_) => {
            peer.shared.metrics.handler_panics.fetch_add(1, Relaxed);
            tracing::error!(id = %peer.id, "handler panicked; closing the connection with 1011");
            peer.close(CloseCode::INTERNAL_ERROR, "internal error");
            false
        }
    }
}

async fn drive<H: Handler>(
    peer: &Peer,
    socket: &TcpStream,
    handler: &H,
    ws: &Ws,
    room: &Room,
    idle: &mut Idle,
) -> Next {
    let config = &peer.shared.config;
    let shutdown = &peer.shared.shutting_down;
    // The server's shutdown wakes every connection ([`Peer::notify`]) once the flag is up.
    let mut shutdown_heard = false;
    // The timer lives across the loop instead of being made for every batch (a timer wheel
    // entry each time).
    let mut timer = std::pin::pin!(tokio::time::sleep_until(tokio::time::Instant::now()));
    let mut armed: Option<Instant> = None;
    loop {
        if !shutdown_heard && shutdown.load(SeqCst) {
            shutdown_heard = true;
            peer.close(CloseCode::GOING_AWAY, "server shutting down");
        }
        peer.close_if_kicked();
        // Everything the core has parsed, in order; replies leave together afterwards.
        peer.set_corked(true);
        let mut live = false;
        // Counted once per batch: the server's counters are shared by every thread.
        let (mut messages, mut bytes) = (0, 0);
        loop {
            let ((event, can_send), _) =
                peer.with_core(|core| (core.next_event(), core.can_send()));
            let Some(event) = event else { break };
            let data = match event {
                Event::Message(Message::Text(text)) => Data::Text(text),
                Event::Message(Message::Binary(bytes)) => Data::Binary(bytes),
                Event::Failed(error) => {
                    tracing::debug!(id = %peer.id, %error, "protocol error");
                    continue;
                }
                _ => continue,
            };
            messages += 1;
            bytes += data.as_bytes().len() as u64;
            // Once our close is on its way (the handler said disconnect, the policy or a
            // shutdown closed it), the handler hears nothing more.
            if !can_send {
                continue;
            }
            // Live for the batch as a whole: the gauges move once per batch, not per message.
            if !live {
                peer.set_state(ConnState::Live);
                live = true;
            }
            if !call_handler(peer, || handler.on_message(ws, data, room)).await {
                break;
            }
        }
        if live {
            peer.set_state(ConnState::Parked);
        }
        if messages > 0 {
            let metrics = &peer.shared.metrics;
            metrics.messages_in.fetch_add(messages, Relaxed);
            metrics.bytes_in.fetch_add(bytes, Relaxed);
        }
        peer.set_corked(false);
        peer.flush_deferred_broadcasts();
        peer.close_if_kicked();
        let (hits, finished, close_deadline) = {
            let core = peer.core();
            (
                core.auto_response_hits(),
                core.is_finished(),
                core.next_deadline(),
            )
        };
        idle.count_hits(hits, &peer.shared.metrics);
        if finished {
            return Next::Finished;
        }
        if peer.flush_ready().is_err() {
            peer.core().receive_eof();
            return Next::Finished;
        }
        let now = Instant::now();
        let last_input = idle.last_input();
        let mut deadline = last_input + config.idle_timeout;
        if !idle.pinged {
            deadline = deadline.min(last_input + config.ping_interval);
        }
        let queued = peer.has_queued();
        // Dormancy waits for the queue to drain (the socket's readiness says when): with it
        // as a deadline, a quiet peer that does not read made the timer fire every tick.
        if peer.state() != ConnState::Dormant && !queued {
            deadline = deadline.min(last_input + config.dormant_after);
        }
        if let Some(close_deadline) = close_deadline {
            deadline = deadline.min(close_deadline);
        }
        let just_woke = std::mem::take(&mut idle.just_woke);
        // Dormant with nothing due: the task ends, and the sweeper keeps the timers.
        if peer.state() == ConnState::Dormant
            && deadline > now
            && !shutdown.load(SeqCst)
            && !peer.needs_task()
            && !just_woke
        {
            return Next::Hibernate;
        }
        // The timer may go off before the deadline (each branch below checks what is due);
        // never after it. So a busy connection, whose deadlines move with every batch,
        // re-arms it only when it went off.
        let deadline = deadline.max(now);
        if armed.is_none_or(|at| at > deadline || at <= now) {
            timer.as_mut().reset(deadline.into());
            armed = Some(deadline);
        }
        let woke = if close_deadline.is_some_and(|at| at <= now) {
            // The close timeout is over: a socket that is always ready (a peer that floods
            // us after our close) must not keep it from its turn, and the timer is polled
            // last. Handling it ends the connection, so this cannot come round again.
            Woke::Timer
        } else {
            std::future::poll_fn(|cx| {
                use std::task::Poll;
                if peer.wake.poll(cx).is_ready() {
                    return Poll::Ready(Woke::Notified);
                }
                if queued && let Poll::Ready(ready) = socket.poll_write_ready(cx) {
                    return Poll::Ready(Woke::Writable(ready.is_ok()));
                }
                if let Poll::Ready(ready) = socket.poll_read_ready(cx) {
                    return Poll::Ready(Woke::Readable(ready.is_ok()));
                }
                if timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Woke::Timer);
                }
                Poll::Pending
            })
            .await
        };
        match woke {
            // What it was for (a shutdown, queued bytes, a kick) is seen at the loop's top.
            Woke::Notified => {}
            Woke::Writable(ok) => {
                if !ok {
                    peer.core().receive_eof();
                }
            }
            // The socket failed: the connection is lost.
            Woke::Readable(false) => peer.core().receive_eof(),
            Woke::Readable(true) => {
                // A dormant connection stays dormant for control frames (a pong to its
                // keepalive ping): only a message wakes it up for good.
                if peer.read_ready(socket) {
                    idle.input();
                }
            }
            Woke::Timer => {
                armed = None;
                let now = Instant::now();
                peer.core().on_deadline(now);
                let quiet = now.saturating_duration_since(last_input);
                if quiet >= config.idle_timeout {
                    // A close frame for a peer that is still there but silent: it leaves as
                    // the connection ends (within the close timeout), with no wait for an
                    // answer a vanished peer never sends.
                    tracing::debug!(
                        id = %peer.id,
                        "no frame for the idle timeout; closing with 1001 and dropping the connection"
                    );
                    peer.close(CloseCode::GOING_AWAY, "idle timeout");
                    let _ = peer.flush_ready();
                    peer.core().receive_eof();
                } else if !idle.pinged && quiet >= config.ping_interval {
                    idle.pinged = true;
                    peer.ping();
                }
                if quiet >= config.dormant_after
                    && peer.state() == ConnState::Parked
                    && !peer.has_queued()
                {
                    peer.go_dormant();
                }
            }
        }
    }
}

/// What ended one wait of [`drive`], in the order they are checked.
enum Woke {
    /// [`Peer::notify`].
    Notified,
    /// The socket can take more (`false`: it failed).
    Writable(bool),
    /// The socket has input (`false`: it failed).
    Readable(bool),
    Timer,
}

async fn finish<H: Handler>(peer: &Arc<Peer>, handler: &H, ws: &Ws, socket: Option<&TcpStream>) {
    // What is still queued (our close frame among it) gets a bounded chance to leave.
    let limit = peer.shared.config.protocol.limits().close_timeout;
    if let Some(socket) = socket {
        let _ = tokio::time::timeout(limit, async {
            while peer.has_queued() {
                if socket.writable().await.is_err() || peer.flush_ready().is_err() {
                    break;
                }
            }
        })
        .await;
    }
    let shared = &peer.shared;
    let cluster = shared.cluster.as_deref();
    shared.rooms.leave(peer, || {
        if let Some(cluster) = cluster {
            cluster.unsubscribe(&peer.room);
        }
    });
    if let Some(cluster) = cluster {
        cluster.leave(&peer.room, peer.id);
    }
    shared.forget(peer.id);
    let status = peer.core().close_status();
    let (code, reason, initiator, clean) = match &status {
        Some(status) => (
            status.code,
            status.reason.to_string(),
            status.initiator,
            status.clean,
        ),
        None => (
            CloseCode::ABNORMAL,
            String::new(),
            CloseInitiator::Lost,
            false,
        ),
    };
    shared.metrics.record_close(code.0);
    let _ = call_on_close(handler, ws, code, &reason).await;
    // A peer that closed normally (1000: "the purpose is fulfilled") will not resume: its
    // attachment goes. Anything else keeps it for resume: a browser reloading or navigating
    // away closes cleanly with 1001, and a shutdown, a crash or a lost connection say nothing.
    if initiator == CloseInitiator::Peer && clean && code == CloseCode::NORMAL {
        shared.discard_attachment(peer.id).await;
    }
    shared.metrics.leave(peer.state());
}

async fn call_on_close<H: Handler>(handler: &H, ws: &Ws, code: CloseCode, reason: &str) -> bool {
    contained(|| handler.on_close(ws, code, reason))
        .await
        .is_ok()
}

/// Runs a handler's call with its panics caught: those of the call itself (a handler may do
/// work before it returns its future) as well as those of the future.
async fn contained<F: std::future::Future>(
    call: impl FnOnce() -> F,
) -> std::thread::Result<F::Output> {
    use futures_util::FutureExt as _;
    std::panic::AssertUnwindSafe(async move { call().await })
        .catch_unwind()
        .await
}
