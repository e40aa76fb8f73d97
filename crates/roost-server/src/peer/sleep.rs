//! Hibernation: what a connection keeps while no task runs for it, how it goes to sleep, and
//! how the sleepers' poll answers what it can without waking it.

use std::{
    collections::VecDeque,
    io::{self, Read as _},
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::Ordering::{Relaxed, SeqCst},
    },
    time::Instant,
};

use bytes::{Bytes, BytesMut};
use tokio::net::TcpStream;

use super::{AWAKE, Core, Peer, Socket};
use crate::{ConnState, handler::DynHandler, shared::Guards};

/// Most bytes one turn of [`Sleeper::hear`] reads, and most replies it makes, before it hands
/// the connection to its task.
const HEAR_BUDGET: usize = 64 << 10;

/// The idle bookkeeping of one connection, carried from task to task across hibernation. 16
/// bytes: a hibernating connection keeps it in the table of sleepers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Idle {
    /// When the peer last sent anything, in nanoseconds since [`epoch`] (half an `Instant`).
    last_input: u64,
    /// Auto-response hits already added to the server's metric, modulo 2^32: only the
    /// difference to the core's count matters.
    hits_seen: u32,
    /// A keepalive ping went out since then.
    pub(super) pinged: bool,
    /// The task was just started again for a hibernating connection: it waits for the socket
    /// once before it may hibernate again, since the input that woke it is reported by the
    /// runtime only once the socket is registered there again.
    pub(super) just_woke: bool,
}

/// The instant [`Idle::last_input`] counts from: the first time anyone asked.
fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl Idle {
    pub(super) fn new() -> Self {
        let mut idle = Idle {
            last_input: 0,
            hits_seen: 0,
            pinged: false,
            just_woke: false,
        };
        idle.input();
        idle
    }

    pub(super) fn input(&mut self) {
        // u64 nanoseconds last 584 years.
        self.last_input = Instant::now().saturating_duration_since(epoch()).as_nanos() as u64;
        self.pinged = false;
    }

    pub(super) fn last_input(&self) -> Instant {
        epoch() + std::time::Duration::from_nanos(self.last_input)
    }

    /// Adds the auto-response hits the core counted (`hits`, its running total) since the
    /// last call to the server's metric.
    pub(super) fn count_hits(&mut self, hits: u64, metrics: &crate::Metrics) {
        let hits = hits as u32;
        let new = hits.wrapping_sub(self.hits_seen);
        if new > 0 {
            metrics
                .auto_response_hits
                .fetch_add(u64::from(new), Relaxed);
            self.hits_seen = hits;
        }
    }
}

/// A hibernating connection: everything needed to start its task again, owned by the
/// server's table of sleepers ([`crate::shared::Shared::wake`] takes it out).
pub(crate) struct Sleeper {
    pub(super) peer: Arc<Peer>,
    pub(super) handler: Arc<dyn DynHandler>,
    pub(super) guards: Guards,
    pub(super) idle: Idle,
}

// The table of sleepers holds one per hibernating connection.
#[cfg(target_pointer_width = "64")]
const _: () = assert!(std::mem::size_of::<Sleeper>() <= 56);

impl Sleeper {
    /// What a sleeping connection needs at `now`, for the server's sweeper: a wake-up once
    /// its idle timeout passed (its task then drops it), a keepalive ping once the ping
    /// interval passed (marked as sent here; the caller sends it, with no lock held).
    pub(crate) fn due(&mut self, now: Instant) -> Due {
        let config = &self.peer.shared.config;
        let quiet = now.saturating_duration_since(self.idle.last_input());
        if quiet >= config.idle_timeout {
            Due::Wake
        } else if !self.idle.pinged && quiet >= config.ping_interval {
            self.idle.pinged = true;
            Due::Ping(self.peer.clone())
        } else {
            Due::Nothing
        }
    }

    /// Marks the connection as hibernating under `key` in the server's table of sleepers.
    pub(crate) fn mark_asleep(&self, key: usize) {
        self.peer.sleeping_as.store(key, SeqCst);
    }

    /// Starts the connection's task again, on `runtime`; it takes `input` (read from the
    /// socket while the connection slept, [`hear`](Self::hear)) first.
    pub(crate) fn resume(self, runtime: &tokio::runtime::Handle, input: Bytes) {
        self.peer.sleeping_as.store(AWAKE, SeqCst);
        self.peer.shared.metrics.wakeups.fetch_add(1, Relaxed);
        let handler = self.handler.clone();
        handler.spawn_resume(runtime, self, input);
    }

    /// Reads what arrived on the socket and answers it from the idle core when that is all
    /// it needs: pings, the pong to the keepalive ping, the auto-response request. Called by
    /// the sleepers' poll, under the table's lock, so no task runs for the connection
    /// meanwhile. `None`: everything was answered and the connection sleeps on. Otherwise it
    /// must wake, and its task takes the bytes returned first.
    pub(crate) fn hear(&mut self, scratch: &mut [u8]) -> Option<Bytes> {
        let peer = &*self.peer;
        // `try_lock`: a thread holding one of these may be waking this connection, for which
        // it waits on the table's lock, which this thread holds. The task sees to it then.
        let Some(mut core) = peer.core.try_lock() else {
            return Some(Bytes::new());
        };
        let Core::Idle(core) = &mut *core else {
            return Some(Bytes::new());
        };
        let Some(mut out) = peer.out.try_lock() else {
            return Some(Bytes::new());
        };
        if !out.queue.is_empty() || out.closed || out.kick.is_some() {
            return Some(Bytes::new());
        }
        let Socket::Asleep(socket) = &out.socket else {
            return Some(Bytes::new());
        };
        let mut replies = BytesMut::new();
        let reply_limit = peer.shared.config.max_outbound.min(HEAR_BUDGET);
        let (mut filled, mut heard) = (0, 0);
        // Read until the socket is empty (its readiness is edge-triggered), until a frame
        // needs the whole connection, or until this turn has done enough: then the task
        // takes over, under the outbound limit (a peer that asks for replies without reading
        // them queues no more here) and the runtime's fairness (a peer that floods holds the
        // table's lock no longer).
        let mut wake = loop {
            let Some(space) = scratch.get_mut(filled..).filter(|space| !space.is_empty()) else {
                // A frame longer than the scratch space: not one the idle core answers.
                break true;
            };
            match (&*socket).read(space) {
                Ok(0) => break true,
                Ok(n) => {
                    self.idle.input();
                    filled += n;
                    heard += n;
                    let answered = core.answer(&scratch[..filled], &mut replies, reply_limit);
                    scratch.copy_within(answered.consumed..filled, 0);
                    filled -= answered.consumed;
                    if answered.wake || heard >= HEAR_BUDGET {
                        break true;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // A partial frame waits in the woken task, which reads the rest.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break filled > 0,
                Err(_) => break true,
            }
        };
        let metrics = &peer.shared.metrics;
        self.idle.count_hits(core.auto_response_hits(), metrics);
        if !replies.is_empty() {
            metrics.bytes_out.fetch_add(replies.len() as u64, Relaxed);
            let written = match out.socket.try_write(&replies) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                Err(_) => {
                    out.closed = true;
                    replies.len()
                }
            };
            if written < replies.len() {
                // The task writes the rest once the socket drains.
                let rest = replies.freeze().slice(written..);
                out.front_started = written > 0;
                out.queued += rest.len();
                out.queue.push_back(rest);
            }
            wake |= !out.queue.is_empty() || out.closed;
        }
        wake.then(|| Bytes::copy_from_slice(&scratch[..filled]))
    }
}

/// What a sleeping connection needs from the sweeper.
pub(crate) enum Due {
    Nothing,
    /// Send it a keepalive ping ([`Peer::ping`]).
    Ping(Arc<Peer>),
    /// Start its task: its idle timeout passed.
    Wake,
}

/// Ends the connection's task and leaves it to its socket, out of the runtime and watched by
/// the server's poll of sleepers: input (or anything [`Peer::notify`] hears) starts a new one.
pub(super) fn hibernate(sleeper: Sleeper) {
    let peer = sleeper.peer.clone();
    let shared = peer.shared.clone();
    peer.release_buffers();
    peer.idle_core();
    let fd = peer.sleeping_socket();
    shared.metrics.hibernating.fetch_add(1, Relaxed);
    // Input that arrived before the socket was watched is reported by the poll at once; a
    // notice sent before the connection was marked asleep is caught by `needs_task`.
    let (key, watched) = shared.sleepers.insert(sleeper, fd);
    if watched.is_err() || peer.needs_task() || shared.shutting_down.load(SeqCst) {
        shared.wake(key);
    }
}

impl Peer {
    /// Reduces the core to its compact form if nothing is in flight (hibernation).
    pub(super) fn idle_core(&self) {
        let mut slot = self.core.lock();
        if let Core::Awake(_) = &*slot
            && let Core::Awake(connection) = std::mem::replace(&mut *slot, Core::Changing)
        {
            *slot = match (*connection).into_idle() {
                Ok(idle) => Core::Idle(idle),
                Err(connection) => Core::Awake(Box::new(connection)),
            };
        }
    }

    pub(super) fn release_buffers(&self) {
        let mut core = self.core();
        core.release_buffers();
        core.release_compression_state();
        let mut out = self.out();
        if out.queue.is_empty() {
            out.queue = VecDeque::new();
        }
        drop((out, core));
    }

    /// Whether the connection hibernates (no task runs for it).
    pub(super) fn is_asleep(&self) -> bool {
        self.sleeping_as.load(SeqCst) != AWAKE
    }

    /// The socket, registered with the runtime (again, if the connection slept), for the
    /// connection's task. `Err` if it could not be registered: the connection is lost.
    pub(super) fn awake_socket(&self) -> io::Result<Arc<TcpStream>> {
        let mut out = self.out();
        let socket = match std::mem::replace(&mut out.socket, Socket::Lost) {
            Socket::Awake(socket) => socket,
            Socket::Asleep(socket) => {
                self.shared.sleepers.unwatch(socket.as_raw_fd());
                Arc::new(TcpStream::from_std(socket)?)
            }
            Socket::Lost => return Err(io::ErrorKind::NotConnected.into()),
        };
        out.socket = Socket::Awake(socket.clone());
        Ok(socket)
    }

    /// Takes the socket out of the runtime for hibernation, once the task let go of its
    /// clone; returns its descriptor, for the sleepers' poll. `None` if it is lost.
    pub(super) fn sleeping_socket(&self) -> Option<std::os::fd::RawFd> {
        let mut out = self.out();
        let socket = match std::mem::replace(&mut out.socket, Socket::Lost) {
            Socket::Awake(socket) => match Arc::try_unwrap(socket) {
                Ok(socket) => socket.into_std().ok()?,
                Err(socket) => {
                    // Still in use: stays registered (the caller wakes the connection).
                    out.socket = Socket::Awake(socket);
                    return None;
                }
            },
            Socket::Asleep(socket) => socket,
            Socket::Lost => return None,
        };
        let fd = socket.as_raw_fd();
        out.socket = Socket::Asleep(socket);
        Some(fd)
    }

    pub(super) fn go_dormant(&self) {
        self.release_buffers();
        self.set_state(ConnState::Dormant);
    }
}
