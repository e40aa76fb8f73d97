//! One connected client: its protocol core, its outbound queue, and the task that drives it.
//!
//! # Theory of operation
//!
//! A connection in use is one tokio task waiting on its socket's readiness; there is no
//! thread per connection. Bytes are read into a per-thread buffer, so a waiting connection
//! holds no receive buffer. A connection idle past `dormant_after` *hibernates*: its buffers
//! are released, its protocol core shrinks to an [`IdleConnection`], its socket leaves the
//! runtime's reactor for the server's poll of sleepers ([`crate::sleepers`]) and its task
//! ends; what is left is the [`Peer`] and a [`Sleeper`] in the server's table. Input on the
//! socket, a send that has to wait, a close or the server's shutdown starts a new task for it
//! ([`Shared::wake`]); the server's sweeper sends its keepalive pings and wakes it at its idle
//! timeout. Three kinds of code write to a
//! connection:
//! - its own task (pongs, close replies, auto-responses, the handler's sends);
//! - any task holding a [`crate::Ws`] (sends from other connections' handlers);
//! - broadcasts, which encode a frame once and hand the same bytes to every member.
//!
//! All of them go through [`Peer::push`]: when nothing is queued the bytes are written to the
//! socket at once (`try_write`, no task wake-up); what does not fit waits in a bounded queue
//! that the connection's task drains when the socket is writable. The queue's bound and the
//! [`crate::BackpressurePolicy`] keep one slow reader from holding memory or slowing anyone
//! else. Lock order: `core` before `out`, never the reverse.

use std::{
    cell::RefCell,
    collections::VecDeque,
    io::{self, Read as _, Write as _},
    os::fd::AsRawFd,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{
            AtomicBool, AtomicU8, AtomicU32, AtomicUsize,
            Ordering::{Relaxed, SeqCst},
        },
    },
    time::Instant,
};

use bytes::{Bytes, BytesMut};
use futures_util::task::AtomicWaker;
use roost::{
    CloseCode, CloseFrame, CloseInitiator, Message, OpCode,
    proto::{AutoResponse, Connection, Event, IdleConnection, UsageError},
};
use tokio::net::TcpStream;

use crate::{
    BackpressurePolicy, ConnState, Data, Handler, Room, Ws,
    app::{Guards, Shared},
    handler::{Disconnect, DynHandler},
    store::ConnectionId,
};

/// Most bytes a connection holds back while it works through a batch of messages.
const CORK_LIMIT: usize = 64 << 10;

/// Bytes read from a socket per read call, in a buffer shared by every connection of a thread.
const READ_CHUNK: usize = 64 << 10;

thread_local! {
    /// The read buffer a thread's connections share while they hold no bytes of their own.
    static READ_BUF: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

/// Keeps `buf` as the thread's read buffer if it has more room than the one there (the
/// other is dropped). One grown for a large message is dropped: the thread keeps a few read
/// chunks, not the largest message it ever saw.
fn give_back_read_buffer(buf: BytesMut) {
    if buf.capacity() == 0 || buf.capacity() > 4 * READ_CHUNK {
        return;
    }
    READ_BUF.with(|shared| {
        let mut shared = shared.borrow_mut();
        if shared.capacity() < buf.capacity() {
            *shared = buf;
        }
    });
}

tokio::task_local! {
    /// The connection whose task is running: only that task's writes are batched.
    static OWN_TASK: ConnectionId;
}

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
    pinged: bool,
    /// The task was just started again for a hibernating connection: it waits for the socket
    /// once before it may hibernate again, since the input that woke it is reported by the
    /// runtime only once the socket is registered there again.
    just_woke: bool,
}

/// The instant [`Idle::last_input`] counts from: the first time anyone asked.
fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl Idle {
    fn new() -> Self {
        let mut idle = Idle {
            last_input: 0,
            hits_seen: 0,
            pinged: false,
            just_woke: false,
        };
        idle.input();
        idle
    }

    fn input(&mut self) {
        // u64 nanoseconds last 584 years.
        self.last_input = Instant::now().saturating_duration_since(epoch()).as_nanos() as u64;
        self.pinged = false;
    }

    fn last_input(&self) -> Instant {
        epoch() + std::time::Duration::from_nanos(self.last_input)
    }

    /// Adds the auto-response hits the core counted (`hits`, its running total) since the
    /// last call to the server's metric.
    fn count_hits(&mut self, hits: u64, metrics: &crate::Metrics) {
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
/// server's table of sleepers ([`Shared::wake`] takes it out).
pub(crate) struct Sleeper {
    peer: Arc<Peer>,
    handler: Arc<dyn DynHandler>,
    guards: Guards,
    idle: Idle,
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
        let Ok(mut core) = peer.core.try_lock() else {
            return Some(Bytes::new());
        };
        let Core::Idle(core) = &mut *core else {
            return Some(Bytes::new());
        };
        let Ok(mut out) = peer.out.try_lock() else {
            return Some(Bytes::new());
        };
        if !out.queue.is_empty() || out.closed || out.kick.is_some() {
            return Some(Bytes::new());
        }
        let Socket::Asleep(socket) = &out.socket else {
            return Some(Bytes::new());
        };
        let mut replies = BytesMut::new();
        let mut filled = 0;
        // Read until the socket is empty (its readiness is edge-triggered) or until a frame
        // needs the whole connection.
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
                    let answered = core.answer(&scratch[..filled], &mut replies);
                    scratch.copy_within(answered.consumed..filled, 0);
                    filled -= answered.consumed;
                    if answered.wake {
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

/// [`Peer::sleeping_as`] of a connection that has a task.
const AWAKE: usize = usize::MAX;

/// A connection's socket: registered with the runtime while a task runs for it, out of it
/// while it hibernates. Writes go through whichever form it has, always under the outbound
/// lock; only the connection's task reads.
pub(crate) enum Socket {
    /// The connection's task holds a clone and waits on its readiness.
    Awake(Arc<TcpStream>),
    /// Watched by the server's poll of sleepers instead ([`crate::sleepers`]).
    Asleep(std::net::TcpStream),
    /// Lost while changing form (the system refused to deregister it).
    Lost,
}

impl Socket {
    fn try_write(&self, bytes: &[u8]) -> io::Result<usize> {
        match self {
            Socket::Awake(socket) => socket.try_write(bytes),
            Socket::Asleep(socket) => (&*socket).write(bytes),
            Socket::Lost => Err(io::ErrorKind::NotConnected.into()),
        }
    }

    fn try_write_vectored(&self, slices: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Socket::Awake(socket) => socket.try_write_vectored(slices),
            Socket::Asleep(socket) => (&*socket).write_vectored(slices),
            Socket::Lost => Err(io::ErrorKind::NotConnected.into()),
        }
    }
}

/// What happened to one message handed to one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendOutcome {
    /// Written to the socket.
    Sent,
    /// Queued behind earlier bytes; the connection's task writes it when the socket drains.
    Queued,
    /// Dropped: the connection's queue was full and the policy is to drop.
    Dropped,
    /// Not sent: the connection is closing or closed (also when the policy closed it now).
    Closed,
}

pub(crate) struct Outbound {
    socket: Socket,
    queue: VecDeque<Bytes>,
    queued: usize,
    /// Our close frame is queued: nothing more may be added.
    closed: bool,
    /// The connection's task is working through a batch of received messages: writes wait
    /// in the queue and leave in one system call when the batch is done.
    corked: bool,
    /// Part of the queue's first buffer was already written: it must be finished before
    /// anything else goes out, or the peer would see a torn frame.
    front_started: bool,
    /// The backpressure policy closes this connection: its task sends the close frame (no
    /// lock may be held for that, and the push that found the queue full may hold one).
    kick: Option<CloseCode>,
    /// Another connection's broadcast queued bytes here without writing them: the end of
    /// that connection's batch writes them ([`Peer::flush_deferred`]).
    flush_pending: bool,
}

impl Outbound {
    /// Drops what waits, except the rest of a frame already partly written.
    fn discard(&mut self) {
        let keep = if self.front_started {
            self.queue.pop_front()
        } else {
            None
        };
        self.queue.clear();
        self.queued = 0;
        if let Some(front) = keep {
            self.queued = front.len();
            self.queue.push_back(front);
        }
    }
}

/// A connection's protocol core: all of it while in use, its compact form while it
/// hibernates with nothing in flight.
pub(crate) enum Core {
    Awake(Box<Connection>),
    Idle(IdleConnection),
    /// Only while one form is turned into the other, under the lock.
    Changing,
}

/// The locked core, woken up: [`Peer::core`] never hands out an idle one.
pub(crate) struct CoreGuard<'a>(MutexGuard<'a, Core>);

impl std::ops::Deref for CoreGuard<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        match &*self.0 {
            Core::Awake(connection) => connection,
            Core::Idle(_) | Core::Changing => {
                unreachable!("Peer::core wakes the core before handing it out")
            }
        }
    }
}

impl std::ops::DerefMut for CoreGuard<'_> {
    fn deref_mut(&mut self) -> &mut Connection {
        match &mut *self.0 {
            Core::Awake(connection) => connection,
            Core::Idle(_) | Core::Changing => {
                unreachable!("Peer::core wakes the core before handing it out")
            }
        }
    }
}

/// Wakes a connection's task, which alone waits on it: a flag and the task's waker. Anyone
/// may set it; a wake that comes while the task is busy is kept for its next wait.
#[derive(Default)]
struct Wakeup {
    pending: AtomicBool,
    waker: AtomicWaker,
}

impl Wakeup {
    fn wake(&self) {
        self.pending.store(true, SeqCst);
        self.waker.wake();
    }

    /// Lets go of the task's waker when the task ends: a waker keeps the whole task (its
    /// future's state, a kilobyte or two) allocated, which a hibernating connection must not.
    fn forget_task(&self) {
        drop(self.waker.take());
    }

    /// Ready once per wake (or per run of wakes before the task looked).
    fn poll(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        // Registered first, so a wake between the check and the wait is not lost.
        self.waker.register(cx.waker());
        if self.pending.load(SeqCst) && self.pending.swap(false, SeqCst) {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    }
}

pub(crate) struct Peer {
    pub(crate) id: ConnectionId,
    pub(crate) room: Arc<str>,
    pub(crate) shared: Arc<Shared>,
    core: Mutex<Core>,
    pub(crate) out: Mutex<Outbound>,
    wake: Wakeup,
    /// The attachment ([`Peer::attachment`]), in 16 bytes rather than a `Bytes`' 32: this
    /// and the expiry below keep the whole `Peer` in mimalloc's 256-byte size class.
    attachment: Mutex<Option<Arc<[u8]>>>,
    /// When the connection's resume token expires, in seconds since the Unix epoch (in 32
    /// bits: good until 2106; [`Ws::resume_token`] signs it on demand).
    pub(crate) resume_expires: u32,
    /// Where the connection is in its room's member list ([`crate::room::Rooms`]), which
    /// keeps it up to date under its lock: leaving a room of any size is then one swap.
    pub(crate) room_slot: AtomicU32,
    /// Window bits when a broadcast may share one compressed frame with this connection
    /// (permessage-deflate with server_no_context_takeover), else `None`.
    pub(crate) compress_class: Option<u8>,
    state: AtomicU8,
    /// The connection's key among the server's sleepers while it hibernates ([`AWAKE`]
    /// otherwise): no task runs for it, and anything that needs one must wake it
    /// ([`Peer::notify`]).
    sleeping_as: AtomicUsize,
    /// The own task is working through a batch: its output waits in the core and leaves in
    /// one piece when the batch ends.
    batching: AtomicBool,
    /// A broadcast made during the current batch deferred writes to other members of this
    /// connection's room: the batch's end writes them.
    deferred: AtomicBool,
}

// What a hibernating connection costs is mostly this (with the Arc's two counters): it stays
// in mimalloc's 256-byte size class.
#[cfg(target_pointer_width = "64")]
const _: () = assert!(std::mem::size_of::<Peer>() + 16 <= 256);

impl Peer {
    pub(crate) fn new(
        id: ConnectionId,
        room: Arc<str>,
        shared: Arc<Shared>,
        socket: TcpStream,
        core: Connection,
        resume_expires: std::time::SystemTime,
    ) -> Self {
        let resume_expires = resume_expires
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| {
                u32::try_from(since.as_secs()).unwrap_or(u32::MAX)
            });
        let compress_class = core
            .negotiated()
            .deflate
            .filter(|params| params.server_no_context_takeover)
            .map(|params| params.server_max_window_bits);
        shared.metrics.enter(ConnState::Parked);
        Peer {
            id,
            room,
            shared,
            core: Mutex::new(Core::Awake(Box::new(core))),
            out: Mutex::new(Outbound {
                socket: Socket::Awake(Arc::new(socket)),
                queue: VecDeque::new(),
                queued: 0,
                closed: false,
                corked: false,
                front_started: false,
                kick: None,
                flush_pending: false,
            }),
            wake: Wakeup::default(),
            attachment: Mutex::new(None),
            resume_expires,
            room_slot: AtomicU32::new(0),
            compress_class,
            state: AtomicU8::new(ConnState::Parked as u8),
            sleeping_as: AtomicUsize::new(AWAKE),
            batching: AtomicBool::new(false),
            deferred: AtomicBool::new(false),
        }
    }

    /// The connection's attachment, if it has one.
    pub(crate) fn attachment(&self) -> Option<Bytes> {
        let attachment = self.attachment.lock().unwrap_or_else(|e| e.into_inner());
        attachment.clone().map(Bytes::from_owner)
    }

    /// Replaces the connection's attachment (`None` removes it).
    pub(crate) fn set_attachment(&self, bytes: Option<Bytes>) {
        let bytes = bytes.map(|bytes| Arc::from(&bytes[..]));
        *self.attachment.lock().unwrap_or_else(|e| e.into_inner()) = bytes;
    }

    pub(crate) fn state(&self) -> ConnState {
        match self.state.load(Relaxed) {
            0 => ConnState::Live,
            1 => ConnState::Parked,
            _ => ConnState::Dormant,
        }
    }

    fn set_state(&self, state: ConnState) {
        let before = self.state.swap(state as u8, Relaxed);
        if before != state as u8 {
            let before = match before {
                0 => ConnState::Live,
                1 => ConnState::Parked,
                _ => ConnState::Dormant,
            };
            self.shared.metrics.leave(before);
            self.shared.metrics.enter(state);
        }
    }

    /// The protocol core, made whole again first if it was idle.
    pub(crate) fn core(&self) -> CoreGuard<'_> {
        let mut slot = self.core.lock().unwrap_or_else(|e| e.into_inner());
        if let Core::Idle(_) = &*slot
            && let Core::Idle(idle) = std::mem::replace(&mut *slot, Core::Changing)
        {
            let config = self.shared.config.protocol.clone();
            *slot = Core::Awake(Box::new(idle.resume(config)));
        }
        CoreGuard(slot)
    }

    /// Reduces the core to its compact form if nothing is in flight (hibernation).
    fn idle_core(&self) {
        let mut slot = self.core.lock().unwrap_or_else(|e| e.into_inner());
        if let Core::Awake(_) = &*slot
            && let Core::Awake(connection) = std::mem::replace(&mut *slot, Core::Changing)
        {
            *slot = match (*connection).into_idle() {
                Ok(idle) => Core::Idle(idle),
                Err(connection) => Core::Awake(Box::new(connection)),
            };
        }
    }

    /// Sets the auto-response, in an idle core too without making it whole.
    pub(crate) fn set_auto_response(&self, auto: Option<Arc<AutoResponse>>) {
        match &mut *self.core.lock().unwrap_or_else(|e| e.into_inner()) {
            Core::Awake(core) => core.set_auto_response(auto),
            Core::Idle(idle) => idle.set_auto_response(auto),
            // Only seen under the lock by the one changing it.
            Core::Changing => {}
        }
    }

    /// How many messages the auto-response answered, read without waking an idle core.
    pub(crate) fn auto_response_hits(&self) -> u64 {
        let slot = self.core.lock().unwrap_or_else(|e| e.into_inner());
        match &*slot {
            Core::Awake(core) => core.auto_response_hits(),
            Core::Idle(idle) => idle.auto_response_hits(),
            Core::Changing => 0,
        }
    }

    /// Whether the core has something a task must see to; an idle core has nothing.
    fn core_needs_task(&self) -> bool {
        let slot = self.core.lock().unwrap_or_else(|e| e.into_inner());
        match &*slot {
            Core::Awake(core) => {
                !core.can_send() || core.is_finished() || core.next_deadline().is_some()
            }
            Core::Idle(_) | Core::Changing => false,
        }
    }

    fn out(&self) -> MutexGuard<'_, Outbound> {
        self.out.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the protocol core and hands whatever it queued (frames, pongs, close) to
    /// the socket, in order, before the core is unlocked: compressed frames with context
    /// takeover must leave in the order they were compressed.
    pub(crate) fn with_core<R>(&self, f: impl FnOnce(&mut Connection) -> R) -> (R, SendOutcome) {
        let mut core = self.core();
        let result = f(&mut core);
        let pending = core.pending_output_len();
        let closing = !core.can_send();
        let outcome = if pending == 0 {
            SendOutcome::Sent
        } else if !closing && pending < CORK_LIMIT && self.is_batching() {
            // Left in the core: the batch's end takes all of it at once.
            SendOutcome::Sent
        } else {
            let mut output = core.take_output();
            match (output.next(), output.len()) {
                (Some(bytes), 0) => self.push(bytes, closing),
                (first, _) => self.push_pieces(first.into_iter().chain(output), closing),
            }
        };
        drop(core);
        if closing && self.is_asleep() {
            // The close handshake has a deadline; a task must watch it.
            self.notify();
        }
        (result, outcome)
    }

    /// Whether the caller is the connection's own task, in the middle of a batch.
    pub(crate) fn is_batching(&self) -> bool {
        self.batching.load(Relaxed) && self.is_own_task()
    }

    /// Whether the caller is this connection's own task.
    fn is_own_task(&self) -> bool {
        OWN_TASK.try_with(|id| *id == self.id).unwrap_or(false)
    }

    /// Tells the connection's task that there is work: queued bytes, a close, a kick. A
    /// hibernating connection gets a task again.
    pub(crate) fn notify(&self) {
        let key = self.sleeping_as.load(SeqCst);
        if key != AWAKE {
            self.shared.wake(key);
        } else {
            self.wake.wake();
        }
    }

    /// Whether something waits that only the connection's task can do.
    fn needs_task(&self) -> bool {
        let busy = {
            let out = self.out();
            !out.queue.is_empty() || out.kick.is_some() || out.closed
        };
        busy || self.core_needs_task()
    }

    /// Writes `bytes` now if nothing is queued, else queues them within the outbound bound.
    /// `closing`: these bytes end with our close frame; they are accepted past the bound and
    /// nothing may follow them.
    pub(crate) fn push(&self, bytes: Bytes, closing: bool) -> SendOutcome {
        self.push_with(bytes, closing, false)
    }

    /// Queues `bytes` for a broadcast made in another connection's batch, without writing
    /// them: that batch's end writes them ([`flush_deferred`](Self::flush_deferred)), with
    /// whatever else the batch sent here, in one system call.
    pub(crate) fn push_deferred(&self, bytes: Bytes) -> SendOutcome {
        self.push_with(bytes, false, true)
    }

    fn push_with(&self, bytes: Bytes, closing: bool, deferred: bool) -> SendOutcome {
        let len = bytes.len() as u64;
        let mut out = self.out();
        if out.closed {
            return SendOutcome::Closed;
        }
        let corked = deferred || (out.corked && self.is_own_task());
        if corked && out.queued + bytes.len() > CORK_LIMIT {
            // A big batch: write what is queued now instead of holding it.
            drop(out);
            let _ = self.flush_ready();
            out = self.out();
            if out.closed {
                return SendOutcome::Closed;
            }
            if deferred && !out.queue.is_empty() {
                // The socket is full: the connection's own task waits for it to drain.
                self.notify();
            }
        }
        out.closed = closing;
        let mut rest = bytes;
        if out.queue.is_empty() && (!corked || rest.len() > CORK_LIMIT) {
            match out.socket.try_write(&rest) {
                Ok(n) if n == rest.len() => {
                    self.shared.metrics.bytes_out.fetch_add(len, Relaxed);
                    return SendOutcome::Sent;
                }
                Ok(n) => {
                    rest = rest.slice(n..);
                    out.front_started = n > 0;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => {
                    // The peer is gone; its task notices on its next read.
                    out.closed = true;
                    drop(out);
                    self.notify();
                    return SendOutcome::Closed;
                }
            }
        }
        // The bound applies to what is already waiting: a queue below it takes one more
        // message whatever its size, so memory stays under the bound plus one message.
        if !closing && out.queued >= self.shared.config.max_outbound {
            drop(out);
            return self.over_limit();
        }
        out.queued += rest.len();
        out.queue.push_back(rest);
        out.flush_pending |= deferred;
        drop(out);
        self.shared.metrics.bytes_out.fetch_add(len, Relaxed);
        if corked {
            // The batch (this connection's, or the broadcaster's) writes it when it is done.
            return SendOutcome::Sent;
        }
        self.notify();
        SendOutcome::Queued
    }

    /// [`push`](Self::push) for output in several pieces (a frame header, then a payload
    /// sent without a copy, then more frames): queued together, written by one vectored call.
    fn push_pieces(&self, pieces: impl Iterator<Item = Bytes>, closing: bool) -> SendOutcome {
        let mut out = self.out();
        if out.closed {
            return SendOutcome::Closed;
        }
        if !closing && out.queued >= self.shared.config.max_outbound {
            drop(out);
            return self.over_limit();
        }
        out.closed = closing;
        let mut len = 0;
        for piece in pieces {
            len += piece.len();
            out.queue.push_back(piece);
        }
        out.queued += len;
        let hold = out.corked && self.is_own_task() && out.queued <= CORK_LIMIT;
        drop(out);
        self.shared.metrics.bytes_out.fetch_add(len as u64, Relaxed);
        if hold {
            // The batch writes it when it is done.
            return SendOutcome::Sent;
        }
        self.flush_or_hand_over()
    }

    /// Writes what is queued; what the socket does not take now is left to the connection's
    /// task, woken for it.
    fn flush_or_hand_over(&self) -> SendOutcome {
        match self.flush_ready() {
            Ok(()) if !self.has_queued() => SendOutcome::Sent,
            Ok(()) => {
                self.notify();
                SendOutcome::Queued
            }
            Err(_) => {
                // The peer is gone; its task notices when woken.
                self.out().closed = true;
                self.notify();
                SendOutcome::Closed
            }
        }
    }

    fn over_limit(&self) -> SendOutcome {
        match self.shared.config.backpressure {
            BackpressurePolicy::Drop => {
                self.shared.metrics.dropped.fetch_add(1, Relaxed);
                SendOutcome::Dropped
            }
            BackpressurePolicy::Close(code) => {
                let mut out = self.out();
                if out.kick.is_none() {
                    self.shared
                        .metrics
                        .backpressure_closes
                        .fetch_add(1, Relaxed);
                }
                self.shared.metrics.dropped.fetch_add(1, Relaxed);
                // What a reader that does not read has queued is worth nothing now; the
                // connection's task replaces it with the close frame.
                out.discard();
                out.kick = Some(code);
                drop(out);
                self.notify();
                SendOutcome::Closed
            }
        }
    }

    /// Sends the close the backpressure policy asked for, if it did. Called by the
    /// connection's task with no lock held.
    fn close_if_kicked(&self) {
        let kick = self.out().kick.take();
        if let Some(code) = kick {
            self.close(code, "outbound queue full");
        }
    }

    /// Sends a data message. A hibernating connection's core stays idle (a few bytes) for a
    /// message it would not compress: the frame is encoded from the idle core, as broadcasts
    /// encode theirs.
    pub(crate) fn send(&self, data: Data) -> (Result<(), UsageError>, SendOutcome) {
        let (opcode, payload) = match &data {
            Data::Text(text) => (OpCode::Text, text.as_bytes()),
            Data::Binary(bytes) => (OpCode::Binary, bytes),
        };
        // Only a hibernating connection keeps its core idle; the check spares a connection in
        // use (an echo's own replies) a second lock per message.
        if self.is_asleep() {
            let config = &self.shared.config.protocol;
            if let Some(frame) =
                self.encode_idle(|idle, frame| idle.send(config, opcode, payload, frame))
            {
                return (Ok(()), self.push(frame, false));
            }
        }
        // The payload is shared with the output, not copied (from 1 KiB; smaller ones are).
        self.with_core(|core| match data {
            Data::Text(text) => core.send_text_bytes(text),
            Data::Binary(bytes) => core.send_binary_bytes(bytes),
        })
    }

    /// Sends a keepalive ping, from an idle core without making it whole. One the socket
    /// cannot take now is queued, and the queue wakes a hibernating connection.
    pub(crate) fn ping(&self) {
        match self.encode_idle(|idle, frame| idle.ping(b"", frame).is_ok()) {
            Some(frame) => {
                let _ = self.push(frame, false);
            }
            None => {
                let _ = self.with_core(|core| core.send_ping(b""));
            }
        }
    }

    /// A frame encoded by the idle core (`encode` returns whether it could), so that the
    /// core is not made whole for it. `None` when the core is awake or `encode` could not.
    /// The caller pushes the frame once the core's lock is let go: pushing may wake the
    /// connection.
    fn encode_idle(
        &self,
        encode: impl FnOnce(&mut IdleConnection, &mut BytesMut) -> bool,
    ) -> Option<Bytes> {
        match &mut *self.core.lock().unwrap_or_else(|e| e.into_inner()) {
            Core::Idle(idle) => {
                let mut frame = BytesMut::new();
                encode(idle, &mut frame).then(|| frame.freeze())
            }
            Core::Awake(_) | Core::Changing => None,
        }
    }

    /// Starts the close handshake (a no-op if ours was already sent).
    pub(crate) fn close(&self, code: CloseCode, reason: &str) {
        let frame = CloseFrame::new(code, reason);
        let _ = self.with_core(|core| core.close(Some(frame), Instant::now()));
    }

    /// Starts or ends a batch of the own task's writes. Ending it hands what the batch
    /// produced to the outbound queue (the caller then flushes) and gives the thread's read
    /// buffer back once the core has parsed all of it, for the next connection's read; what
    /// the messages taken from it still use stays theirs.
    fn set_corked(&self, corked: bool) {
        if corked {
            self.out().corked = true;
            self.batching.store(true, Relaxed);
        } else {
            self.batching.store(false, Relaxed);
            let (buf, _) = self.with_core(|core| {
                let input = core.input_buffer();
                (input.is_empty() && input.capacity() > 0).then(|| std::mem::take(input))
            });
            if let Some(buf) = buf {
                give_back_read_buffer(buf);
            }
            self.out().corked = false;
        }
    }

    /// Writes what broadcasts deferred to this connection, if anything.
    pub(crate) fn flush_deferred(&self) {
        if std::mem::take(&mut self.out().flush_pending) {
            let _ = self.flush_or_hand_over();
        }
    }

    /// Ends a batch's deferred broadcasts: writes each member's share.
    fn flush_deferred_broadcasts(&self) {
        if self.deferred.swap(false, Relaxed) {
            for member in self.shared.rooms.members(&self.room) {
                member.flush_deferred();
            }
        }
    }

    /// Notes that a broadcast of this connection's batch left writes for its end.
    pub(crate) fn defer_broadcast(&self) {
        self.deferred.store(true, Relaxed);
    }

    fn has_queued(&self) -> bool {
        !self.out().queue.is_empty()
    }

    /// Writes queued bytes until the queue is empty or the socket would block, many buffers
    /// per system call.
    fn flush_ready(&self) -> io::Result<()> {
        loop {
            let written = {
                let out = self.out();
                if out.queue.is_empty() {
                    return Ok(());
                }
                let slices: Vec<io::IoSlice<'_>> = out
                    .queue
                    .iter()
                    .take(64)
                    .map(|b| io::IoSlice::new(b))
                    .collect();
                match out.socket.try_write_vectored(&slices) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                    Err(e) => return Err(e),
                }
            };
            let mut out = self.out();
            out.queued -= written;
            let mut left = written;
            while left > 0 {
                let Some(front) = out.queue.front_mut() else {
                    break;
                };
                if front.len() <= left {
                    left -= front.len();
                    out.queue.pop_front();
                    out.front_started = false;
                } else {
                    *front = front.slice(left..);
                    out.front_started = true;
                    left = 0;
                }
            }
        }
    }

    /// Reads what the socket has into the protocol core. Returns false when the socket had
    /// nothing after all (a spurious readiness).
    ///
    /// The bytes land in the core's input buffer, where complete messages are handed out
    /// without a copy. A core that holds no bytes borrows the thread's read buffer for it
    /// (the batch's end gives it back, [`set_corked`](Self::set_corked)), so a quiet
    /// connection holds none.
    fn read_ready(&self, socket: &TcpStream) -> bool {
        let mut buf = {
            let mut core = self.core();
            let input = core.input_buffer();
            if input.is_empty() {
                READ_BUF.with(|shared| std::mem::take(&mut *shared.borrow_mut()))
            } else {
                std::mem::take(input)
            }
        };
        buf.reserve(READ_CHUNK);
        let result = Self::try_read_draining(socket, &mut buf);
        let now = Instant::now();
        let ((), _) = self.with_core(|core| {
            let input = core.input_buffer();
            std::mem::swap(input, &mut buf);
            match &result {
                Ok(n) if *n > 0 => core.receive_input(now),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                _ => core.receive_eof(),
            }
        });
        give_back_read_buffer(buf);
        !matches!(&result, Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Reads once into `buf`'s spare capacity. A short read emptied the socket's receive
    /// queue, so the socket's readiness is cleared as well: the next wait then sleeps until
    /// new bytes arrive instead of returning at once for a read that would only say "would
    /// block" (one system call per batch saved). tokio's `poll_read` does the same; `try_read`
    /// alone does not. A byte that arrives during the read raises readiness again, and tokio
    /// keeps that.
    fn try_read_draining(socket: &TcpStream, buf: &mut BytesMut) -> io::Result<usize> {
        let room = buf.capacity() - buf.len();
        let mut read = None;
        let result = socket.try_io(tokio::io::Interest::READABLE, || {
            let n = socket.try_read_buf(buf)?;
            if n == 0 || n == room {
                return Ok(n);
            }
            read = Some(n);
            Err(io::ErrorKind::WouldBlock.into())
        });
        match read {
            Some(n) => Ok(n),
            None => result,
        }
    }

    fn release_buffers(&self) {
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
    fn is_asleep(&self) -> bool {
        self.sleeping_as.load(SeqCst) != AWAKE
    }

    /// The socket, registered with the runtime (again, if the connection slept), for the
    /// connection's task. `Err` if it could not be registered: the connection is lost.
    fn awake_socket(&self) -> io::Result<Arc<TcpStream>> {
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
    fn sleeping_socket(&self) -> Option<std::os::fd::RawFd> {
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

    fn go_dormant(&self) {
        self.release_buffers();
        self.set_state(ConnState::Dormant);
    }
}

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
    let new_room = shared.rooms.join(&peer);
    if let Some(cluster) = &shared.cluster {
        if new_room {
            cluster.subscribe(&peer.room);
        }
        cluster.join(&peer.room, peer.id);
    }
    shared.metrics.connections_total.fetch_add(1, Relaxed);
    if !leftover.is_empty() {
        let now = Instant::now();
        let _ = peer.with_core(|core| core.receive(&leftover, now));
    }
    peer.set_state(ConnState::Live);
    let opened = call_handler(&peer, handler.on_open(&ws, &url)).await;
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

/// Ends the connection's task and leaves it to its socket, out of the runtime and watched by
/// the server's poll of sleepers: input (or anything [`Peer::notify`] hears) starts a new one.
fn hibernate(sleeper: Sleeper) {
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
async fn call_handler(
    peer: &Peer,
    call: impl std::future::Future<Output = Result<(), Disconnect>>,
) -> bool {
    use futures_util::FutureExt as _;
    let result = std::panic::AssertUnwindSafe(call).catch_unwind().await;
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
            if !call_handler(peer, handler.on_message(ws, data, room)).await {
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
        let woke = std::future::poll_fn(|cx| {
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
        .await;
        match woke {
            // What it was for (a shutdown, queued bytes, a kick) is seen at the loop's top.
            Woke::Notified => {}
            Woke::Writable(ok) => {
                if !ok {
                    peer.core().receive_eof();
                }
            }
            Woke::Readable(ok) => {
                // A dormant connection stays dormant for control frames (a pong to its
                // keepalive ping): only a message wakes it up for good.
                if !ok || peer.read_ready(socket) {
                    idle.input();
                }
            }
            Woke::Timer => {
                armed = None;
                let now = Instant::now();
                peer.core().on_deadline(now);
                let quiet = now.saturating_duration_since(last_input);
                if quiet >= config.idle_timeout {
                    tracing::debug!(id = %peer.id, "no frame for the idle timeout; dropping the connection");
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
    let room_gone = shared.rooms.leave(peer);
    if let Some(cluster) = &shared.cluster {
        if room_gone {
            cluster.unsubscribe(&peer.room);
        }
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
    use futures_util::FutureExt as _;
    std::panic::AssertUnwindSafe(handler.on_close(ws, code, reason))
        .catch_unwind()
        .await
        .is_ok()
}

#[cfg(test)]
mod tests {
    use std::task::{Context, Poll, Wake, Waker};

    use super::*;

    /// A waker that counts its wakes; its `Arc` count says who still holds it.
    #[derive(Default)]
    struct Counting(AtomicUsize);

    impl Wake for Counting {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, SeqCst);
        }
    }

    #[test]
    fn a_wakeup_is_kept_for_the_next_look_and_the_ended_task_is_let_go() {
        let task = Arc::new(Counting::default());
        let waker = Waker::from(task.clone());
        let mut cx = Context::from_waker(&waker);
        let wakeup = Wakeup::default();

        // A wake before the task looks is not lost, and counts once.
        wakeup.wake();
        wakeup.wake();
        assert_eq!(wakeup.poll(&mut cx), Poll::Ready(()));
        assert_eq!(wakeup.poll(&mut cx), Poll::Pending);

        // A wake while the task waits wakes it.
        wakeup.wake();
        assert_eq!(task.0.load(SeqCst), 1);
        assert_eq!(wakeup.poll(&mut cx), Poll::Ready(()));

        // Once the task ends, the wakeup holds no waker: the task's memory can go.
        assert_eq!(wakeup.poll(&mut cx), Poll::Pending);
        drop(waker);
        assert_eq!(
            Arc::strong_count(&task),
            2,
            "the task and the registered waker"
        );
        wakeup.forget_task();
        assert_eq!(Arc::strong_count(&task), 1);
    }
}
