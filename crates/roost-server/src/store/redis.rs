//! [`RedisStore`]: attachments kept in Redis and shared by every roost process of a cluster,
//! so a client can resume on any of them.
//!
//! # Key layout
//!
//! ```text
//! roost:att:<id>      hash, one per attachment (<id> = the 32 hex digits of the ConnectionId)
//!   data              the attachment bytes, binary
//!   at                when it was last written: milliseconds since the Unix epoch, decimal
//! roost:moved:<id>    string, present for a while after <id>'s attachment was adopted away
//! roost:resume-key    string, the cluster's 32-byte resume key (see RedisStore::shared_resume_key)
//! ```
//!
//! Keys under `roost:att:` whose suffix is not a valid id, or that are not hashes, are ignored
//! by [`list`](AttachmentStore::list); nothing here ever writes such a key.
//!
//! # Atomicity
//!
//! - `touch` is a Lua script: if the hash exists, `HSET at`.
//! - `put` is a Lua script: unless `roost:moved:<id>` exists, one `HSET` of both fields, so a
//!   reader sees the old hash or the new one.
//! - `adopt` is a Lua script (`EXISTS from`, `RENAME from to`, `HSET to at`, `SET moved:from`
//!   with a time to live, `DEL moved:to`, `HGET to data`). Redis runs a script without
//!   interleaving any other command, so of concurrent adopts of one id, whichever process
//!   they come from, exactly one finds it: this is what makes a resume token single-use
//!   across the cluster. Like [`DirStore`](super::DirStore), the adopted attachment is dated
//!   at the move (`at` is the time the caller passes).
//! - The `moved` marker is what keeps the connection that lost its session, which may live
//!   in another process, from writing its attachment back under its spent id, where a token
//!   could reach it again: `put` refuses with [`StoreError::Moved`] while the marker lives
//!   ([`RedisStore::with_moved_ttl`], by default [`DEFAULT_MOVED_TTL`]). Adopting an
//!   attachment back onto an id (a resume whose client vanished before its handshake ended)
//!   removes that id's marker.
//!
//! # Connections and failures
//!
//! The store holds up to [`MAX_CONNECTIONS`] blocking connections; a caller finding all of
//! them busy waits for one. Connecting is bounded by [`CONNECT_TIMEOUT`] and every read or
//! write by [`IO_TIMEOUT`]. When an operation finds its connection lost (Redis restarted, the
//! network dropped it), the store discards every idle connection and retries the operation
//! once on a fresh one; if that fails too, the error is returned. Timeouts are not retried.
//! Every operation is idempotent except `adopt`: if the connection drops after Redis ran the
//! script but before its reply arrived, the retry finds nothing and returns `Ok(None)`, so
//! that one resume fails (the client starts afresh). The moved attachment then stays under
//! the new id, which no connection uses, until it expires, and the old id stays marked moved.
//!
//! # Deployment limits
//!
//! - One Redis server (with replicas or Sentinel if wanted), not Redis Cluster: `adopt`
//!   touches four keys and `put` two, which would usually hash to different slots, and `list`
//!   scans one server.
//! - Redis 6 or later (`list` uses `SCAN ... TYPE hash`).
//! - Durability is Redis's: without RDB or AOF persistence a Redis restart loses every
//!   attachment, and the resume key too. Processes that read the key before the restart keep
//!   using it while later ones create a new one, so restart the roost processes after such a
//!   Redis restart, or configure persistence.
//!
//! Error messages show the URL with any password masked.

use std::collections::HashSet;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::{Condvar, Mutex};
use redis::{Client, Connection, RedisError, RedisResult, Script};

use super::{AttachmentStore, ConnectionId, StoreError, StoredAttachment};
use crate::resume::ResumeKey;

/// The prefix of every attachment key; the id's text form follows it.
pub const ATTACHMENT_PREFIX: &str = "roost:att:";

/// The key holding the cluster's resume key.
pub const RESUME_KEY: &str = "roost:resume-key";

/// The most connections one [`RedisStore`] opens at once: 8. Bounds the load one process puts
/// on Redis; further callers wait for a connection to come back.
pub const MAX_CONNECTIONS: usize = 8;

/// How long opening a connection may take: 5 seconds, so an unreachable Redis fails an
/// operation instead of holding a blocking thread for the operating system's TCP timeout.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long one read or write on a connection may take: 5 seconds, for the same reason.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// The prefix of the keys marking an id whose attachment was adopted away; the id's text form
/// follows it.
pub const MOVED_PREFIX: &str = "roost:moved:";

/// How long a `moved` marker lives unless [`RedisStore::with_moved_ttl`] says otherwise: 24
/// hours, the server's default `resume_ttl`.
pub const DEFAULT_MOVED_TTL: Duration = Duration::from_secs(24 * 3600);

/// How many keys one `SCAN` round asks for while listing.
const SCAN_COUNT: usize = 512;

/// The length of the resume key, in bytes.
const RESUME_KEY_LEN: usize = 32;

/// Moves the hash `KEYS[1]` to `KEYS[2]` (replacing it), dates it `ARGV[1]`, marks `KEYS[1]`
/// moved (the marker `KEYS[3]` lives `ARGV[2]` milliseconds), unmarks `KEYS[2]` (its marker
/// `KEYS[4]`) and returns the `data`; or nil if `KEYS[1]` does not exist.
const ADOPT_SCRIPT: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then
    return false
end
redis.call('RENAME', KEYS[1], KEYS[2])
redis.call('HSET', KEYS[2], 'at', ARGV[1])
redis.call('SET', KEYS[3], 1, 'PX', ARGV[2])
redis.call('DEL', KEYS[4])
return redis.call('HGET', KEYS[2], 'data')
";

/// Dates the hash `KEYS[1]` `ARGV[1]` and returns 1, or returns 0 if it does not exist.
const TOUCH_SCRIPT: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then
    return 0
end
redis.call('HSET', KEYS[1], 'at', ARGV[1])
return 1
";

/// Writes `ARGV[1]` as the data of the hash `KEYS[1]`, dated `ARGV[2]` (or its date, if
/// later: a `touch` that overtook this put stays), and returns 1; or returns 0 and writes
/// nothing if the marker `KEYS[2]` says the attachment was moved away.
const PUT_SCRIPT: &str = r"
if redis.call('EXISTS', KEYS[2]) == 1 then
    return 0
end
local at = math.max(tonumber(ARGV[2]), tonumber(redis.call('HGET', KEYS[1], 'at') or '0'))
redis.call('HSET', KEYS[1], 'data', ARGV[1], 'at', string.format('%d', at))
return 1
";

/// An [`AttachmentStore`] in Redis, shared by several roost processes. See the
/// [module documentation](self) for the key layout, the atomicity of each operation and the
/// deployment limits.
///
/// ```no_run
/// use roost_server::store::redis::RedisStore;
///
/// let store = RedisStore::open("redis://127.0.0.1:6379")?;
/// let resume_key = store.shared_resume_key()?;
/// # Ok::<(), roost_server::store::StoreError>(())
/// ```
pub struct RedisStore {
    /// Opens connections; holds the parsed URL, password included.
    client: Client,
    /// The URL with any password masked, for errors and `Debug`.
    url: String,
    /// Connections not in use, and how many exist.
    pool: Pool,
    /// The `adopt`, `put` and `touch` scripts; their SHA-1s are computed once.
    adopt: Script,
    put: Script,
    touch: Script,
    /// How long an id stays marked moved after an adopt.
    moved_ttl: Duration,
}

impl RedisStore {
    /// Connects to the Redis at `url` (such as `redis://127.0.0.1:6379/0` or
    /// `redis://:password@host`) and checks that it answers, so a wrong address fails at
    /// startup with an error naming it rather than at the first attachment.
    pub fn open(url: &str) -> Result<Self, StoreError> {
        let masked = mask_url(url);
        let client = Client::open(url).map_err(|source| StoreError::Redis {
            action: "parse the url of",
            url: masked.clone(),
            source,
        })?;
        let store = Self {
            client,
            url: masked,
            pool: Pool::default(),
            adopt: Script::new(ADOPT_SCRIPT),
            put: Script::new(PUT_SCRIPT),
            touch: Script::new(TOUCH_SCRIPT),
            moved_ttl: DEFAULT_MOVED_TTL,
        };
        store.run("reach", |connection| redis::cmd("PING").exec(connection))?;
        Ok(store)
    }

    /// Sets how long an id whose attachment was adopted away keeps refusing writes
    /// ([`StoreError::Moved`]); at least a millisecond.
    ///
    /// The server sets it to its `resume_ttl`: the displaced connection's writes are refused
    /// from the move on, so every token that names its id expires within `resume_ttl` of the
    /// move; and the server closes that connection long before: the resuming process
    /// announces the resume to the cluster, and the process holding the old connection
    /// closes it with 4001.
    #[must_use]
    pub fn with_moved_ttl(mut self, ttl: Duration) -> Self {
        self.moved_ttl = ttl.max(Duration::from_millis(1));
        self
    }

    /// The resume key every process using this Redis shares, so a token issued by one
    /// process verifies on all of them.
    ///
    /// The first caller in the cluster creates it from 32 random bytes with `SET ... NX`
    /// (only one such write can succeed); every caller then reads the key that won. A stored
    /// value that is not exactly 32 bytes is refused with [`StoreError::ResumeKeyLength`]
    /// rather than replaced, since replacing it would invalidate every outstanding token.
    pub fn shared_resume_key(&self) -> Result<ResumeKey, StoreError> {
        let candidate: [u8; RESUME_KEY_LEN] = rand::random();
        let (stored,): (Option<Vec<u8>>,) = self.run("load the resume key from", |connection| {
            redis::pipe()
                .cmd("SET")
                .arg(RESUME_KEY)
                .arg(&candidate[..])
                .arg("NX")
                .ignore()
                .cmd("GET")
                .arg(RESUME_KEY)
                .query(connection)
        })?;
        let stored = stored.unwrap_or_default();
        let key = <[u8; RESUME_KEY_LEN]>::try_from(stored.as_slice()).map_err(|_| {
            StoreError::ResumeKeyLength {
                url: self.url.clone(),
                len: stored.len(),
            }
        })?;
        Ok(ResumeKey::from_bytes(key))
    }

    /// Runs `operation` on a pooled connection, retrying once on a fresh connection if the
    /// first one turns out to be lost.
    fn run<T>(
        &self,
        action: &'static str,
        mut operation: impl FnMut(&mut Connection) -> RedisResult<T>,
    ) -> Result<T, StoreError> {
        let mut retried = false;
        loop {
            let result = self
                .pool
                .lease(&self.client)
                .and_then(|(mut connection, slot)| {
                    let result = operation(&mut connection);
                    match &result {
                        // After a lost connection or a timeout, the connection is dead or a late
                        // reply could be read as the answer to the next command: close it.
                        Err(error) if error.is_io_error() || error.is_unrecoverable_error() => {}
                        _ => slot.give_back(connection),
                    }
                    result
                });
            match result {
                Ok(value) => return Ok(value),
                Err(error) if !retried && connection_lost(&error) => {
                    // Redis restarted or the network dropped us: the idle connections are
                    // most likely dead as well.
                    self.pool.discard_idle();
                    retried = true;
                    tracing::debug!(url = %self.url, %error, "redis connection lost, retrying");
                }
                Err(source) => {
                    return Err(StoreError::Redis {
                        action,
                        url: self.url.clone(),
                        source,
                    });
                }
            }
        }
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("RedisStore")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl AttachmentStore for RedisStore {
    fn put(&self, id: ConnectionId, bytes: &[u8]) -> Result<(), StoreError> {
        let (key, moved) = (attachment_key(id), moved_key(id));
        let at = unix_millis(SystemTime::now());
        let written: bool = self.run("store an attachment in", |connection| {
            self.put
                .key(&key)
                .key(&moved)
                .arg(bytes)
                .arg(at)
                .invoke(connection)
        })?;
        if written {
            Ok(())
        } else {
            Err(StoreError::Moved { id })
        }
    }

    fn touch(&self, id: ConnectionId) -> Result<bool, StoreError> {
        let key = attachment_key(id);
        let at = unix_millis(SystemTime::now());
        self.run("date an attachment in", |connection| {
            self.touch.key(&key).arg(at).invoke(connection)
        })
    }

    fn get(&self, id: ConnectionId) -> Result<Option<Vec<u8>>, StoreError> {
        let key = attachment_key(id);
        self.run("read an attachment from", |connection| {
            redis::cmd("HGET").arg(&key).arg("data").query(connection)
        })
    }

    fn remove(&self, id: ConnectionId) -> Result<(), StoreError> {
        let key = attachment_key(id);
        self.run("remove an attachment from", |connection| {
            redis::cmd("DEL").arg(&key).exec(connection)
        })
    }

    fn list(&self) -> Result<Vec<StoredAttachment>, StoreError> {
        // The whole scan is retried after a lost connection: a cursor from a previous
        // connection is still valid, but restarting is simpler and the result is the same.
        self.run("list attachments in", list_on)
    }

    fn adopt(&self, from: ConnectionId, to: ConnectionId) -> Result<Option<Vec<u8>>, StoreError> {
        if from == to {
            // Nothing to move.
            return self.get(from);
        }
        let keys = [
            attachment_key(from),
            attachment_key(to),
            moved_key(from),
            moved_key(to),
        ];
        let at = unix_millis(SystemTime::now());
        let moved_ttl = u64::try_from(self.moved_ttl.as_millis()).unwrap_or(u64::MAX);
        self.run("adopt an attachment in", |connection| {
            self.adopt
                .key(&keys[..])
                .arg(at)
                .arg(moved_ttl)
                .invoke(connection)
        })
    }
}

/// Lists every attachment over one connection.
fn list_on(connection: &mut Connection) -> RedisResult<Vec<StoredAttachment>> {
    let pattern = format!("{ATTACHMENT_PREFIX}*");
    // SCAN may return a key more than once.
    let mut seen = HashSet::new();
    let mut listed = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .cursor_arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(SCAN_COUNT)
            .arg("TYPE")
            .arg("hash")
            .query(connection)?;
        let ids: Vec<ConnectionId> = keys
            .iter()
            .filter_map(|key| parse_attachment_key(key))
            .filter(|id| seen.insert(*id))
            .collect();
        if !ids.is_empty() {
            let mut pipe = redis::pipe();
            for id in &ids {
                let key = attachment_key(*id);
                pipe.cmd("HSTRLEN").arg(&key).arg("data");
                pipe.cmd("HGET").arg(&key).arg("at");
            }
            let details: Vec<(u64, Option<u64>)> = pipe.query(connection)?;
            for (id, (len, at)) in ids.into_iter().zip(details) {
                // No `at`: the attachment was removed or moved since the scan saw it.
                if let Some(at) = at {
                    listed.push(StoredAttachment {
                        id,
                        len,
                        modified: UNIX_EPOCH + Duration::from_millis(at),
                    });
                }
            }
        }
        if next == 0 {
            return Ok(listed);
        }
        cursor = next;
    }
}

/// The Redis key of `id`'s attachment.
fn attachment_key(id: ConnectionId) -> String {
    format!("{ATTACHMENT_PREFIX}{id}")
}

/// The Redis key marking `id` as adopted away.
pub(crate) fn moved_key(id: ConnectionId) -> String {
    format!("{MOVED_PREFIX}{id}")
}

/// The id in an attachment key, or `None` for any other key.
fn parse_attachment_key(key: &[u8]) -> Option<ConnectionId> {
    let id = key.strip_prefix(ATTACHMENT_PREFIX.as_bytes())?;
    std::str::from_utf8(id).ok()?.parse().ok()
}

/// Milliseconds since the Unix epoch; 0 for earlier times.
fn unix_millis(time: SystemTime) -> u64 {
    let millis = time
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    u64::try_from(millis).unwrap_or(u64::MAX)
}

/// Whether `error` means the connection is gone (as opposed to Redis refusing a command or
/// not answering in time), so that a fresh connection may succeed.
fn connection_lost(error: &RedisError) -> bool {
    error.is_unrecoverable_error() && !error.is_timeout()
}

/// `url` with the user information and any `pass=` query parameter masked, for messages and
/// logs: the store's and the cluster's.
pub(crate) fn mask_url(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(index) => url.split_at(index + 3),
        None => ("", url),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let host = match authority.rfind('@') {
        Some(index) => format!("***@{}", &authority[index + 1..]),
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) if query.contains("pass") => format!("{path}?***"),
        _ => tail.to_owned(),
    };
    format!("{scheme}{host}{tail}")
}

/// A bounded set of connections. Invariant: `idle.len() <= open <= MAX_CONNECTIONS`.
#[derive(Default)]
struct Pool {
    state: Mutex<PoolState>,
    /// Signalled whenever a connection is returned or closed.
    returned: Condvar,
}

#[derive(Default)]
struct PoolState {
    /// Connections not in use.
    idle: Vec<Connection>,
    /// Connections that exist: idle, leased, or being opened.
    open: usize,
}

impl Pool {
    /// An idle connection, or a new one if fewer than [`MAX_CONNECTIONS`] exist; otherwise
    /// waits for one to be returned. The connection counts as open until the slot is dropped
    /// or given it back.
    fn lease<'pool>(&'pool self, client: &Client) -> RedisResult<(Connection, Slot<'pool>)> {
        let mut state = self.state.lock();
        loop {
            if let Some(connection) = state.idle.pop() {
                return Ok((connection, Slot::new(self)));
            }
            if state.open < MAX_CONNECTIONS {
                state.open += 1;
                break;
            }
            self.returned.wait(&mut state);
        }
        drop(state);
        // From here the slot counts the connection being opened, and closes it on failure.
        let slot = Slot::new(self);
        let connection = connect(client)?;
        Ok((connection, slot))
    }

    /// Closes every idle connection.
    fn discard_idle(&self) {
        let idle = {
            let mut state = self.state.lock();
            let idle = std::mem::take(&mut state.idle);
            state.open -= idle.len();
            idle
        };
        // Closing happens outside the lock.
        drop(idle);
        self.returned.notify_all();
    }
}

/// One open connection's place in a [`Pool`], held while the connection is leased: the
/// connection goes back with [`give_back`](Self::give_back); dropping the slot without it
/// counts the connection closed. Either way a waiting caller is woken.
struct Slot<'pool> {
    pool: &'pool Pool,
    given_back: bool,
}

impl<'pool> Slot<'pool> {
    fn new(pool: &'pool Pool) -> Self {
        Self {
            pool,
            given_back: false,
        }
    }

    /// Returns `connection` to the idle set for the next caller.
    fn give_back(mut self, connection: Connection) {
        self.pool.state.lock().idle.push(connection);
        self.given_back = true;
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if !self.given_back {
            self.pool.state.lock().open -= 1;
        }
        self.pool.returned.notify_one();
    }
}

/// Opens a connection with the store's timeouts.
fn connect(client: &Client) -> RedisResult<Connection> {
    let connection = client.get_connection_with_timeout(CONNECT_TIMEOUT)?;
    connection.set_read_timeout(Some(IO_TIMEOUT))?;
    connection.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(connection)
}

#[cfg(test)]
mod tests;
