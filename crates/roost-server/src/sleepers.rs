//! Hibernating connections: the table that keeps them, and the poll that wakes them.
//!
//! A hibernating connection has no task and is not registered with the runtime's reactor
//! (whose per-socket state is a few hundred bytes). Its socket is registered instead with a
//! poll of the server's own, by its key in the table; one thread blocks on that poll. It
//! answers what the connection's idle core can (pings, pongs, the auto-response request)
//! itself and hands any other input back to the runtime ([`Shared::hear`]).

use std::{
    io,
    os::fd::RawFd,
    sync::{
        Weak,
        atomic::{AtomicUsize, Ordering::Relaxed},
    },
};

use bytes::Bytes;
use mio::{Events, Interest, Poll, Token, unix::SourceFd};
use parking_lot::{Mutex, MutexGuard};
use slab::Slab;

use crate::{peer::Sleeper, shared::Shared};

/// Readiness events taken from the poll per system call.
const EVENTS: usize = 256;

/// Bytes read at once from a hibernating connection: enough for any control frame and a
/// heartbeat request, which it answers without waking.
const SCRATCH: usize = 4096;

/// The token of the poll's own waker, which stops the thread. No table key reaches it: the
/// table would need more entries than memory holds.
const STOP: Token = Token(usize::MAX);

/// How many independently locked parts the table has: the poll thread answering a sleeper's
/// socket (reads and writes under the lock), the runtime's threads putting connections to
/// sleep and waking them, and the sweeper walking them mostly meet in different parts.
const SHARDS: usize = 16;

/// The hibernating connections, each under a key that is also its socket's poll token. Key
/// `k` lives in shard `k % SHARDS`, in that shard's slot `k / SHARDS`.
pub(crate) struct Sleepers {
    shards: [Mutex<Slab<Sleeper>>; SHARDS],
    /// Where the next sleeper goes: round the shards in turn.
    next_shard: AtomicUsize,
    registry: mio::Registry,
    /// Stops the waker thread when the server is gone.
    stop: mio::Waker,
}

impl Drop for Sleepers {
    fn drop(&mut self) {
        let _ = self.stop.wake();
    }
}

impl Sleepers {
    /// An empty table, and the poll its sockets are registered with (for
    /// [`spawn_waker_thread`]).
    pub(crate) fn new() -> io::Result<(Self, Poll)> {
        let poll = Poll::new()?;
        let registry = poll.registry().try_clone()?;
        let stop = mio::Waker::new(&registry, STOP)?;
        let sleepers = Sleepers {
            shards: std::array::from_fn(|_| Mutex::new(Slab::new())),
            next_shard: AtomicUsize::new(0),
            registry,
            stop,
        };
        Ok((sleepers, poll))
    }

    /// The shard that holds `key` (or one to insert into), locked.
    fn shard(&self, key: usize) -> MutexGuard<'_, Slab<Sleeper>> {
        self.shards[key % SHARDS].lock()
    }

    /// Keeps `sleeper`, its socket `fd` watched for input, and returns its key. `Err` if the
    /// socket cannot be watched (or there is none): the sleeper is kept all the same, and the
    /// caller wakes it.
    pub(crate) fn insert(&self, sleeper: Sleeper, fd: Option<RawFd>) -> (usize, io::Result<()>) {
        // All under the shard's lock: a wake-up for this key, which takes the lock, always
        // finds the connection marked with its key and its socket registered.
        let shard = self.next_shard.fetch_add(1, Relaxed) % SHARDS;
        let mut table = self.shard(shard);
        let entry = table.vacant_entry();
        let key = entry.key() * SHARDS + shard;
        sleeper.mark_asleep(key);
        let watched = match fd {
            Some(fd) => self
                .registry
                .register(&mut SourceFd(&fd), Token(key), Interest::READABLE),
            None => Err(io::ErrorKind::NotConnected.into()),
        };
        entry.insert(sleeper);
        (key, watched)
    }

    /// Takes the sleeper under `key`, if it is still there.
    pub(crate) fn remove(&self, key: usize) -> Option<Sleeper> {
        self.shard(key).try_remove(key / SHARDS)
    }

    /// Lets the sleeper under `key` hear its socket's input ([`Sleeper::hear`]), under its
    /// shard's lock; takes it out when it must wake, with the input its task takes first.
    /// `None` if it sleeps on, or is no longer there.
    pub(crate) fn hear(&self, key: usize, scratch: &mut [u8]) -> Option<(Sleeper, Bytes)> {
        let mut table = self.shard(key);
        let input = table.get_mut(key / SHARDS)?.hear(scratch)?;
        Some((table.remove(key / SHARDS), input))
    }

    /// Takes every sleeper.
    pub(crate) fn drain(&self) -> Vec<Sleeper> {
        (0..SHARDS)
            .flat_map(|shard| self.shard(shard).drain().collect::<Vec<_>>())
            .collect()
    }

    /// Stops watching a woken connection's socket, before the runtime's reactor takes it.
    pub(crate) fn unwatch(&self, fd: RawFd) {
        // It fails only for a socket not registered, which is what the caller wants.
        let _ = self.registry.deregister(&mut SourceFd(&fd));
    }

    /// Runs `f` on each sleeper, with its key, under its shard's lock (one shard at a time).
    pub(crate) fn for_each(&self, mut f: impl FnMut(usize, &mut Sleeper)) {
        for shard in 0..SHARDS {
            for (slot, sleeper) in self.shard(shard).iter_mut() {
                f(slot * SHARDS + shard, sleeper);
            }
        }
    }
}

/// Starts the thread that wakes each hibernating connection whose socket has input. It ends
/// once the server is gone ([`Sleepers`]' drop wakes it for that).
pub(crate) fn spawn_waker_thread(shared: Weak<Shared>, mut poll: Poll) -> io::Result<()> {
    std::thread::Builder::new()
        .name("roost-sleepers".into())
        .spawn(move || {
            let mut events = Events::with_capacity(EVENTS);
            let mut scratch = vec![0; SCRATCH];
            loop {
                if let Err(error) = poll.poll(&mut events, None)
                    && error.kind() != io::ErrorKind::Interrupted
                {
                    tracing::error!(%error, "polling hibernating connections failed; they wake only for their timers and sends now");
                    return;
                }
                let Some(shared) = shared.upgrade() else {
                    return;
                };
                for event in events.iter() {
                    if event.token() != STOP {
                        shared.hear(event.token().0, &mut scratch);
                    }
                }
            }
        })?;
    Ok(())
}
