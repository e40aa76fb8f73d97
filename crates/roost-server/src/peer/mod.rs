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
//! timeout. Three kinds of code write to a connection:
//! - its own task (pongs, close replies, auto-responses, the handler's sends);
//! - any task holding a [`crate::Ws`] (sends from other connections' handlers);
//! - broadcasts, which encode a frame once and hand the same bytes to every member.
//!
//! All of them go through [`Peer::push`]: when nothing is queued the bytes are written to the
//! socket at once (`try_write`, no task wake-up); what does not fit waits in a bounded queue
//! that the connection's task drains when the socket is writable. The queue's bound and the
//! [`crate::BackpressurePolicy`] keep one slow reader from holding memory or slowing anyone
//! else. Lock order: `core` before `out`, never the reverse.
//!
//! The parts: this module has the connection's shared state ([`Peer`]) and its protocol
//! core; [`outbound`] its socket and queue; [`sleep`] hibernation; [`drive`] its task.

use std::{
    cell::RefCell,
    collections::VecDeque,
    io,
    sync::{
        Arc,
        atomic::{
            AtomicBool, AtomicU8, AtomicU32, AtomicUsize,
            Ordering::{Relaxed, SeqCst},
        },
    },
    time::Instant,
};

use bytes::{Bytes, BytesMut};
use futures_util::task::AtomicWaker;
use parking_lot::{Mutex, MutexGuard};
use roost::{
    CloseCode, CloseFrame,
    proto::{AutoResponse, Connection, IdleConnection, UsageError},
};
use tokio::net::TcpStream;

use crate::{ConnState, Data, shared::Shared, store::ConnectionId};

mod drive;
mod outbound;
mod sleep;

pub(crate) use drive::{resume, run};
pub use outbound::SendOutcome;
use outbound::{Outbound, Socket};
pub(crate) use sleep::{Due, Sleeper};

/// Most bytes a connection holds back while it works through a batch of messages.
pub(crate) const CORK_LIMIT: usize = 64 << 10;

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

/// [`Peer::sleeping_as`] of a connection that has a task.
const AWAKE: usize = usize::MAX;

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
    /// bits: good until 2106; [`crate::Ws::resume_token`] signs it on demand). Moved on by
    /// each attachment write ([`Peer::extend_resume`]).
    resume_expires: AtomicU32,
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
        let resume_expires = AtomicU32::new(unix_seconds(resume_expires));
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

    /// When the connection's resume token expires.
    pub(crate) fn resume_expires(&self) -> std::time::SystemTime {
        let seconds = self.resume_expires.load(Relaxed);
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(seconds.into())
    }

    /// The attachment was written (or moved here) no earlier than `written_from`: a token
    /// signed from now on lasts the resume TTL from then. Rounded down, so a token never
    /// outlives the attachment it reaches, which expires the TTL after its write.
    pub(crate) fn extend_resume(&self, written_from: std::time::SystemTime) {
        let expires = unix_seconds(written_from + self.shared.config.resume_ttl);
        self.resume_expires.fetch_max(expires, Relaxed);
    }

    /// The connection's attachment, if it has one.
    pub(crate) fn attachment(&self) -> Option<Bytes> {
        let attachment = self.attachment.lock();
        attachment.clone().map(Bytes::from_owner)
    }

    /// Replaces the connection's attachment (`None` removes it).
    pub(crate) fn set_attachment(&self, bytes: Option<Bytes>) {
        let bytes = bytes.map(|bytes| Arc::from(&bytes[..]));
        *self.attachment.lock() = bytes;
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
        let mut slot = self.core.lock();
        if let Core::Idle(_) = &*slot
            && let Core::Idle(idle) = std::mem::replace(&mut *slot, Core::Changing)
        {
            let config = self.shared.config.protocol.clone();
            *slot = Core::Awake(Box::new(idle.resume(config)));
        }
        CoreGuard(slot)
    }

    /// Sets the auto-response, in an idle core too without making it whole.
    pub(crate) fn set_auto_response(&self, auto: Option<Arc<AutoResponse>>) {
        match &mut *self.core.lock() {
            Core::Awake(core) => core.set_auto_response(auto),
            Core::Idle(idle) => idle.set_auto_response(auto),
            // Only seen under the lock by the one changing it.
            Core::Changing => {}
        }
    }

    /// How many messages the auto-response answered, read without waking an idle core.
    pub(crate) fn auto_response_hits(&self) -> u64 {
        let slot = self.core.lock();
        match &*slot {
            Core::Awake(core) => core.auto_response_hits(),
            Core::Idle(idle) => idle.auto_response_hits(),
            Core::Changing => 0,
        }
    }

    /// Whether the core has something a task must see to; an idle core has nothing.
    fn core_needs_task(&self) -> bool {
        let slot = self.core.lock();
        match &*slot {
            Core::Awake(core) => {
                !core.can_send() || core.is_finished() || core.next_deadline().is_some()
            }
            Core::Idle(_) | Core::Changing => false,
        }
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
            self.queue_core_output(&mut core, closing)
        };
        drop(core);
        if closing && self.is_asleep() {
            // The close handshake has a deadline; a task must watch it.
            self.notify();
        }
        (result, outcome)
    }

    /// Hands what the core has to send to the outbound queue (the core's lock is held, as
    /// the lock order wants: core, then queue).
    fn queue_core_output(&self, core: &mut Connection, closing: bool) -> SendOutcome {
        let mut output = core.take_output();
        match (output.next(), output.len()) {
            (Some(bytes), 0) => self.push(bytes, closing),
            (first, _) => self.push_pieces(first.into_iter().chain(output), closing),
        }
    }

    /// Queues a broadcast frame its own connection made in the middle of its batch, behind
    /// what the batch sent before it and still left in the core: the peer receives its
    /// messages in the order they were sent.
    pub(crate) fn push_own(&self, frame: Bytes) -> SendOutcome {
        let mut core = self.core();
        if core.pending_output_len() > 0 {
            let closing = !core.can_send();
            let _ = self.queue_core_output(&mut core, closing);
        }
        let outcome = self.push(frame, false);
        drop(core);
        outcome
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

    /// Sends a data message. A hibernating connection's core stays idle (a few bytes) for a
    /// message it would not compress: the frame is encoded from the idle core, as broadcasts
    /// encode theirs.
    pub(crate) fn send(&self, data: Data) -> (Result<(), UsageError>, SendOutcome) {
        // Only a hibernating connection keeps its core idle; the check spares a connection in
        // use (an echo's own replies) a second lock per message.
        if self.is_asleep() {
            let config = &self.shared.config.protocol;
            let encoded = self.encode_idle(|idle, frame| match &data {
                Data::Text(text) => idle.send_text(config, text, frame),
                Data::Binary(bytes) => idle.send_binary(config, bytes, frame),
            });
            if let Some(frame) = encoded {
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
        match &mut *self.core.lock() {
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
}

/// `time` in whole seconds since the Unix epoch (rounded down), within 32 bits.
fn unix_seconds(time: std::time::SystemTime) -> u32 {
    time.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| {
            u32::try_from(since.as_secs()).unwrap_or(u32::MAX)
        })
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
