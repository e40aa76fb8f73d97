//! Persistence of connection attachments: the [`AttachmentStore`] trait, an in-memory store
//! ([`MemoryStore`]) and a durable directory store ([`DirStore`]).
//!
//! An attachment is an opaque byte string (the serialized form of a connection's typed data)
//! kept under the [`ConnectionId`] of the connection that owns it. The server writes it with
//! [`AttachmentStore::put`], removes it on a peer's clean close, moves it onto a new
//! connection with [`AttachmentStore::adopt`] when a client resumes, and dates it anew with
//! [`AttachmentStore::touch`] while its connection stays open. A store shared by several
//! processes refuses writes under an id a resume moved away ([`StoreError::Moved`]).
//!
//! What the store does not do: it enforces no size cap (the server refuses oversized
//! attachments before calling [`AttachmentStore::put`]) and it knows nothing of resume tokens
//! (see [`crate::resume`]).

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::SystemTime;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use thiserror::Error;

mod dir;
mod memory;
pub mod redis;

pub use dir::{DirStore, Recovery};
pub use memory::MemoryStore;

pub(crate) use dir::{create_private_dir_all, remove_quietly, sync_dir, write_temp};

/// The identity of one connection: 128 random bits.
///
/// Ids come from rand's OS-seeded cryptographic generator, so they are unique across restarts
/// and processes by construction (a collision among 2^32 ids has a probability near 2^-65) and
/// cannot be guessed by a peer. No counter or clock is involved, so nothing has to be
/// persisted to keep them unique.
///
/// The text form ([`Display`](fmt::Display), [`FromStr`], serde) is exactly 32 lowercase hex
/// digits. Parsing refuses anything else, which is what makes an id safe to use as a file name:
/// no separator, dot or other character can reach the file system through it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId([u8; 16]);

impl ConnectionId {
    /// The length of the text form, in characters.
    pub const TEXT_LEN: usize = 32;

    /// A fresh random id.
    #[must_use]
    pub fn random() -> Self {
        Self(rand::random())
    }

    /// The id with these raw bytes.
    #[must_use]
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }

    /// The raw bytes of the id.
    #[must_use]
    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl fmt::Display for ConnectionId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(formatter, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ConnectionId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "ConnectionId({self})")
    }
}

impl FromStr for ConnectionId {
    type Err = InvalidConnectionId;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.as_bytes();
        if text.len() != Self::TEXT_LEN {
            return Err(InvalidConnectionId::Length(text.len()));
        }
        let mut bytes = [0u8; 16];
        for (byte, pair) in bytes.iter_mut().zip(text.chunks_exact(2)) {
            *byte = (hex_digit(pair[0])? << 4) | hex_digit(pair[1])?;
        }
        Ok(Self(bytes))
    }
}

/// The value of one lowercase hex digit; uppercase is refused so each id has one spelling.
fn hex_digit(digit: u8) -> Result<u8, InvalidConnectionId> {
    match digit {
        b'0'..=b'9' => Ok(digit - b'0'),
        b'a'..=b'f' => Ok(digit - b'a' + 10),
        _ => Err(InvalidConnectionId::Character),
    }
}

impl Serialize for ConnectionId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ConnectionId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct IdVisitor;

        impl Visitor<'_> for IdVisitor {
            type Value = ConnectionId;

            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a connection id of 32 lowercase hex digits")
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<ConnectionId, E> {
                text.parse().map_err(E::custom)
            }
        }

        deserializer.deserialize_str(IdVisitor)
    }
}

/// Text that is not a [`ConnectionId`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum InvalidConnectionId {
    /// The text was not 32 characters long.
    #[error("connection id has {0} characters, expected 32")]
    Length(usize),
    /// The text held a character other than `0-9` and `a-f`.
    #[error("connection id holds a character other than 0-9 and a-f")]
    Character,
}

/// One attachment as listed by [`AttachmentStore::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAttachment {
    /// The connection the attachment belongs to.
    pub id: ConnectionId,
    /// Its size in bytes.
    pub len: u64,
    /// When it was last written, moved or dated (for [`DirStore`], the file's modification
    /// time).
    pub modified: SystemTime,
}

/// Where attachments are kept between a connection's messages and, for durable stores, across
/// restarts.
///
/// The API is blocking: the server calls it from `tokio::task::spawn_blocking`. Every method
/// may be called from several threads at once; operations on different ids never interfere.
///
/// Guarantees every implementation keeps:
/// - [`put`](Self::put) is all-or-nothing: a reader sees the previous bytes or the new bytes,
///   never a mix. For a durable store the new bytes survive a crash once `put` returns `Ok`.
///   `Err` means the put is not acknowledged. The previous bytes are then usually still
///   there; but a store that fails after the new bytes are in place (a directory fsync that
///   fails after the rename, a network store whose reply is lost) may leave the new bytes,
///   not known to survive a crash. A caller never reports such a put as done.
/// - [`adopt`](Self::adopt) moves an attachment exactly once: of several adopts of the same
///   `from`, at most one returns `Ok(Some(_))`.
///
/// A store that several processes share also refuses, with [`StoreError::Moved`], a `put`
/// under an id an `adopt` moved away: the connection that lost its session may live in
/// another process, where the server cannot see that its token was spent. A store of one
/// process need not (the server refuses those writes itself).
pub trait AttachmentStore: Send + Sync + 'static {
    /// Stores `bytes` as the attachment of `id`, replacing any previous one.
    ///
    /// For a durable store the bytes are on stable storage when this returns `Ok`.
    fn put(&self, id: ConnectionId, bytes: &[u8]) -> Result<(), StoreError>;

    /// The attachment of `id`, or `None` if it has none.
    fn get(&self, id: ConnectionId) -> Result<Option<Vec<u8>>, StoreError>;

    /// Removes the attachment of `id`; removing one that does not exist is not an error.
    fn remove(&self, id: ConnectionId) -> Result<(), StoreError>;

    /// Every stored attachment, in no particular order.
    fn list(&self) -> Result<Vec<StoredAttachment>, StoreError>;

    /// Moves the attachment of `from` to `to` and returns its bytes.
    ///
    /// After `Ok(Some(bytes))`, `from` has no attachment and `to` holds `bytes` (durably, for
    /// a durable store), written as of the move: [`StoredAttachment::modified`] is the time of
    /// the move, from which the server counts the attachment's life anew (see
    /// [`ServerConfig::resume_ttl`](crate::ServerConfig::resume_ttl)). An attachment `to` had
    /// before is replaced. `Ok(None)` means `from` has
    /// no attachment, for instance because it was already adopted: this is what makes a resume
    /// token work once.
    fn adopt(&self, from: ConnectionId, to: ConnectionId) -> Result<Option<Vec<u8>>, StoreError>;

    /// Dates the attachment of `id` now without changing its bytes, as if it had just been
    /// written; returns whether there was one. For a durable store the new date survives a
    /// crash once this returns `Ok(true)`.
    ///
    /// The server dates the attachments of its open connections this way now and then, so a
    /// resume token handed out late in a long connection reaches an attachment that lasts as
    /// long as the token (see
    /// [`ServerConfig::resume_ttl`](crate::ServerConfig::resume_ttl)). It never writes bytes,
    /// so it cannot undo a `put` that raced it; a racing `put` may leave the date of its own
    /// write, up to that write's duration earlier (the directory store: the rename of a file
    /// written before the touch), by which a token may outlive the attachment.
    fn touch(&self, id: ConnectionId) -> Result<bool, StoreError>;
}

/// A store operation failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A file system operation failed; `source` holds the operating system's error.
    #[error("could not {action} {}", path.display())]
    Io {
        /// What was being done, such as "write temporary file".
        action: &'static str,
        /// The file or directory it was done to.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Another [`DirStore`] (in this or another process) has the directory open.
    #[error("attachment directory {} is in use by another process", path.display())]
    Locked {
        /// The lock file that is held.
        path: PathBuf,
    },
    /// The store was opened with [`DirStore::open_read_only`] and cannot change anything.
    #[error("attachment directory {} is open read-only", path.display())]
    ReadOnly {
        /// The store's directory.
        path: PathBuf,
    },
    /// A Redis operation of a [`RedisStore`](redis::RedisStore) failed, Redis could not be
    /// reached, or its URL is malformed; `source` holds the Redis client's error.
    #[error("could not {action} redis at {url}")]
    Redis {
        /// What was being done, such as "store an attachment in".
        action: &'static str,
        /// The Redis URL, with any password masked.
        url: String,
        /// The underlying error.
        #[source]
        source: ::redis::RedisError,
    },
    /// The attachment of `id` was moved to another connection by a resume (possibly in
    /// another process), so writes under `id` are refused: that connection's session
    /// continues elsewhere. See [`AttachmentStore`].
    #[error("the attachment of connection {id} was moved to another connection by a resume")]
    Moved {
        /// The connection whose session was resumed elsewhere.
        id: ConnectionId,
    },
    /// The cluster's resume key stored in Redis is not 32 bytes long.
    #[error("resume key in redis at {url} holds {len} bytes, expected 32")]
    ResumeKeyLength {
        /// The Redis URL, with any password masked.
        url: String,
        /// How many bytes it holds.
        len: usize,
    },
}

impl StoreError {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io {
            action,
            path: path.into(),
            source,
        }
    }
}

/// What `store` lists, as (id, length) pairs: what the store tests compare with a model.
#[cfg(test)]
pub(crate) fn listed(
    store: &dyn AttachmentStore,
) -> std::collections::BTreeSet<(ConnectionId, u64)> {
    store
        .list()
        .expect("list")
        .into_iter()
        .map(|entry| (entry.id, entry.len))
        .collect()
}

/// Checks that `store`'s `adopt` dates the moved attachment at the move, not at its last
/// write, and that `touch` dates it now and keeps its bytes: the server counts an
/// attachment's life from there.
#[cfg(test)]
pub(crate) fn check_adopt_and_touch_date_the_attachment(store: &dyn AttachmentStore) {
    let modified = |id| {
        let listed = store.list().expect("list");
        let entry = listed.iter().find(|entry| entry.id == id).expect("listed");
        entry.modified
    };
    let (old, new) = (ConnectionId::random(), ConnectionId::random());
    store.put(old, b"state").expect("put");
    let written = modified(old);
    std::thread::sleep(std::time::Duration::from_millis(50));
    store.adopt(old, new).expect("adopt");
    let moved = modified(new);
    assert!(
        moved >= written + std::time::Duration::from_millis(40),
        "written {written:?}, moved {moved:?}"
    );
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert!(store.touch(new).expect("touch"));
    let touched = modified(new);
    assert!(
        touched >= moved + std::time::Duration::from_millis(40),
        "moved {moved:?}, touched {touched:?}"
    );
    assert_eq!(store.get(new).expect("get").as_deref(), Some(&b"state"[..]));
    // Nothing to date: nothing is created.
    assert!(!store.touch(old).expect("touch a moved attachment"));
    assert_eq!(store.get(old).expect("get"), None);
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn id_text_round_trips() {
        let id = ConnectionId::random();
        let text = id.to_string();
        assert_eq!(text.len(), ConnectionId::TEXT_LEN);
        assert!(
            text.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        );
        assert_eq!(text.parse::<ConnectionId>(), Ok(id));
        assert_eq!(format!("{id:?}"), format!("ConnectionId({text})"));
    }

    #[test]
    fn id_known_value() {
        let id = ConnectionId::from_bytes([
            0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d,
            0xef, 0xff,
        ]);
        assert_eq!(id.to_string(), "000102030405060708090a0b0c0defff");
    }

    #[test]
    fn id_parse_refuses_other_text() {
        let good = ConnectionId::random().to_string();
        let cases = [
            String::new(),
            "../x".to_owned(),
            "../../../../../../../../etc/passwd".to_owned(),
            good.to_uppercase(),
            good[..31].to_owned(),
            format!("{good}0"),
            format!("{}/", &good[..31]),
            format!("{}.", &good[..31]),
            format!("{}\0", &good[..31]),
            format!("{}g", &good[..31]),
            format!(" {}", &good[..31]),
            // 32 bytes but not 32 ASCII characters.
            format!("{}é", &good[..30]),
        ];
        for case in cases {
            assert!(case.parse::<ConnectionId>().is_err(), "accepted {case:?}");
        }
        assert_eq!(
            "../x".parse::<ConnectionId>(),
            Err(InvalidConnectionId::Length(4))
        );
    }

    #[test]
    fn ids_do_not_repeat() {
        let ids: HashSet<ConnectionId> = (0..10_000).map(|_| ConnectionId::random()).collect();
        assert_eq!(ids.len(), 10_000);
    }

    #[test]
    fn id_serde_is_the_hex_string() {
        let id = ConnectionId::random();
        let json = serde_json::to_string(&id).expect("serialize");
        assert_eq!(json, format!("\"{id}\""));
        assert_eq!(
            serde_json::from_str::<ConnectionId>(&json).expect("deserialize"),
            id
        );
        assert!(serde_json::from_str::<ConnectionId>("\"../x\"").is_err());
        assert!(serde_json::from_str::<ConnectionId>("17").is_err());
    }

    #[test]
    fn stores_are_usable_as_trait_objects() {
        fn assert_store<T: AttachmentStore>() {}
        assert_store::<MemoryStore>();
        assert_store::<DirStore>();
        let _: Box<dyn AttachmentStore> = Box::new(MemoryStore::new());
    }

    #[test]
    fn io_error_is_reachable_as_source() {
        let error = StoreError::io(
            "write temporary file",
            "/tmp/x",
            io::Error::from(io::ErrorKind::StorageFull),
        );
        assert_eq!(error.to_string(), "could not write temporary file /tmp/x");
        let source = std::error::Error::source(&error).expect("source");
        assert!(source.to_string().contains("storage") || source.to_string().contains("space"));
    }
}
