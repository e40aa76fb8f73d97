//! A connection's way out: its socket, in whichever form it has, and the bounded queue of
//! what the socket could not take yet. Writes go straight to the socket when nothing waits;
//! the rest waits here for the connection's task, within the bound the backpressure policy
//! keeps.

use std::{
    collections::VecDeque,
    io::{self, Write as _},
    sync::{Arc, atomic::Ordering::Relaxed},
};

use bytes::Bytes;
use parking_lot::MutexGuard;
use roost::CloseCode;
use tokio::net::TcpStream;

use super::{CORK_LIMIT, Peer};
use crate::BackpressurePolicy;

/// Most queued buffers one vectored write takes.
const MAX_WRITE_SLICES: usize = 64;

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
    pub(super) fn try_write(&self, bytes: &[u8]) -> io::Result<usize> {
        match self {
            Socket::Awake(socket) => socket.try_write(bytes),
            Socket::Asleep(socket) => (&*socket).write(bytes),
            Socket::Lost => Err(io::ErrorKind::NotConnected.into()),
        }
    }

    pub(super) fn try_write_vectored(&self, slices: &[io::IoSlice<'_>]) -> io::Result<usize> {
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
    pub(super) socket: Socket,
    pub(super) queue: VecDeque<Bytes>,
    pub(super) queued: usize,
    /// Our close frame is queued: nothing more may be added.
    pub(super) closed: bool,
    /// The connection's task is working through a batch of received messages: writes wait
    /// in the queue and leave in one system call when the batch is done.
    pub(super) corked: bool,
    /// Part of the queue's first buffer was already written: it must be finished before
    /// anything else goes out, or the peer would see a torn frame.
    pub(super) front_started: bool,
    /// The backpressure policy closes this connection: its task sends the close frame (no
    /// lock may be held for that, and the push that found the queue full may hold one).
    pub(super) kick: Option<CloseCode>,
    /// Another connection's broadcast queued bytes here without writing them: the end of
    /// that connection's batch writes them ([`Peer::flush_deferred`]).
    pub(super) flush_pending: bool,
}

impl Outbound {
    /// Takes `written` bytes, just written to the socket, off the front of the queue.
    fn consume(&mut self, written: usize) {
        self.queued -= written;
        let mut left = written;
        while left > 0 {
            let Some(front) = self.queue.front_mut() else {
                break;
            };
            if front.len() <= left {
                left -= front.len();
                self.queue.pop_front();
                self.front_started = false;
            } else {
                *front = front.slice(left..);
                self.front_started = true;
                left = 0;
            }
        }
    }

    /// Whether nothing more may be queued: the close went out, or the backpressure policy
    /// decided to close the connection and only our close frame (`closing`) may follow.
    fn refuses(&self, closing: bool) -> bool {
        self.closed || (self.kick.is_some() && !closing)
    }

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

impl Peer {
    pub(super) fn out(&self) -> MutexGuard<'_, Outbound> {
        self.out.lock()
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

    pub(super) fn push_with(&self, bytes: Bytes, closing: bool, deferred: bool) -> SendOutcome {
        let len = bytes.len() as u64;
        let mut out = self.out();
        if out.refuses(closing) {
            return SendOutcome::Closed;
        }
        let corked = deferred || (out.corked && self.is_own_task());
        if corked && out.queued + bytes.len() > CORK_LIMIT {
            // A big batch: write what is queued now instead of holding it.
            drop(out);
            let _ = self.flush_ready();
            out = self.out();
            if out.refuses(closing) {
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
    pub(super) fn push_pieces(
        &self,
        pieces: impl Iterator<Item = Bytes>,
        closing: bool,
    ) -> SendOutcome {
        let mut out = self.out();
        if out.refuses(closing) {
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
    pub(super) fn flush_or_hand_over(&self) -> SendOutcome {
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

    pub(super) fn over_limit(&self) -> SendOutcome {
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
    pub(super) fn close_if_kicked(&self) {
        let kick = self.out().kick;
        if let Some(code) = kick {
            // The kick stays until the close frame is queued: meanwhile the queue takes
            // nothing else (see `refuses`).
            self.close(code, "outbound queue full");
            self.out().kick = None;
        }
    }

    /// Writes what broadcasts deferred to this connection, if anything.
    pub(crate) fn flush_deferred(&self) {
        if std::mem::take(&mut self.out().flush_pending) {
            let _ = self.flush_or_hand_over();
        }
    }

    /// Ends a batch's deferred broadcasts: writes each member's share.
    pub(super) fn flush_deferred_broadcasts(&self) {
        if self.deferred.swap(false, Relaxed) {
            self.shared.rooms.flush_deferred(&self.room);
        }
    }

    /// Notes that a broadcast of this connection's batch left writes for its end.
    pub(crate) fn defer_broadcast(&self) {
        self.deferred.store(true, Relaxed);
    }

    pub(super) fn has_queued(&self) -> bool {
        !self.out().queue.is_empty()
    }

    /// Writes queued bytes until the queue is empty or the socket would block, many buffers
    /// per system call.
    pub(super) fn flush_ready(&self) -> io::Result<()> {
        let mut out = self.out();
        while !out.queue.is_empty() {
            let mut slices = [io::IoSlice::new(&[]); MAX_WRITE_SLICES];
            let mut n = 0;
            for (slot, bytes) in slices.iter_mut().zip(&out.queue) {
                *slot = io::IoSlice::new(bytes);
                n += 1;
            }
            match out.socket.try_write_vectored(&slices[..n]) {
                Ok(written) => out.consume(written),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}
