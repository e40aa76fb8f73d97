//! Resume tokens: a reconnecting client presents `?resume=TOKEN` and gets the attachment of
//! its previous connection adopted onto the new one.
//!
//! A token names a [`ConnectionId`] and an expiry, signed with HMAC-SHA256 under a
//! [`ResumeKey`] that only the server knows, so a client can neither forge one nor guess
//! another client's. [`ResumeKey::verify`] checks the signature and the expiry.
//!
//! "A token works once" is the caller's part: after a successful verify it records the id in
//! [`UsedTokens`] and moves the attachment with
//! [`AttachmentStore::adopt`](crate::store::AttachmentStore::adopt), which finds nothing the
//! second time, even across a restart.
//!
//! # Token format
//!
//! The token is the unpadded base64url encoding (RFC 4648 §5) of 41 bytes, which gives
//! [`TOKEN_LEN`] = 55 characters, all safe in a URL query:
//!
//! ```text
//! version (1 byte, 1) | connection id (16 bytes) | expiry (u64 big-endian, seconds since
//! the Unix epoch) | tag (16 bytes)
//! ```
//!
//! The tag is HMAC-SHA256 under the key over a context label followed by the first 25 bytes,
//! truncated to its first 16 bytes (128 bits, as RFC 2104 §5 allows; forging one still takes
//! about 2^128 tries).

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use sha2::Sha256;
use thiserror::Error;

use crate::store::{
    ConnectionId, StoreError, create_private_dir_all, remove_quietly, sync_dir, write_temp,
};

/// The length of every token [`ResumeKey::issue`] returns, in characters; longer or shorter
/// text is refused before it is decoded.
pub const TOKEN_LEN: usize = (RAW_LEN * 4).div_ceil(3);

/// The name of the key file inside the durable directory.
pub const KEY_FILE_NAME: &str = "resume.key";

const VERSION: u8 = 1;
const KEY_LEN: usize = 32;
/// Rounds of load-or-create before giving up on a key file that keeps changing.
const CREATE_ATTEMPTS: usize = 5;
const TAG_LEN: usize = 16;
/// Version, id and expiry: the signed part.
const CLAIMS_LEN: usize = 1 + 16 + 8;
const RAW_LEN: usize = CLAIMS_LEN + TAG_LEN;
/// Mixed into the MAC so the key could never sign something else's data by accident.
const CONTEXT: &[u8] = b"roost resume token\0";

/// The secret that signs resume tokens: 32 random bytes.
///
/// With a durable directory the key lives in `DIR/resume.key`
/// ([`load_or_create`](Self::load_or_create)), so tokens stay valid across restarts. Without
/// one, [`random`](Self::random) makes a key that lives only as long as the process: a restart
/// invalidates every token issued before it, which is harmless since the attachments they
/// would resume are gone too.
///
/// `Debug` does not show the key.
#[derive(Clone)]
pub struct ResumeKey([u8; KEY_LEN]);

/// What a valid token says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResumeClaims {
    /// The connection whose attachment the client asks to resume.
    pub id: ConnectionId,
    /// When the token stops being valid (whole seconds since the Unix epoch).
    pub expires_at: SystemTime,
}

impl ResumeKey {
    /// A fresh key from rand's OS-seeded cryptographic generator, valid for this process only.
    #[must_use]
    pub fn random() -> Self {
        Self(rand::random())
    }

    /// The key with these bytes, for tests and for keys kept elsewhere.
    #[must_use]
    pub const fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// Loads `dir/resume.key`, or creates it (and `dir`, mode 0700) if it does not exist.
    ///
    /// A new key is written to a temporary file with mode 0600, fsynced, and linked to its name
    /// only if no other key appeared there meanwhile, so a crash never leaves a partial key
    /// and two processes starting at once agree on one key. An existing file that is not
    /// exactly 32 bytes is refused with [`ResumeError::KeyLength`] rather than replaced, since
    /// replacing it would silently invalidate every outstanding token.
    pub fn load_or_create(dir: impl AsRef<Path>) -> Result<Self, ResumeError> {
        let dir = dir.as_ref();
        let path = dir.join(KEY_FILE_NAME);
        // Another process creating the key at the same moment can make one round fail
        // harmlessly (see `create`); the next round then loads its key.
        for _ in 0..CREATE_ATTEMPTS {
            let key = match Self::load(&path)? {
                Some(key) => key,
                None => match Self::create(dir, &path)? {
                    Some(key) => key,
                    None => continue,
                },
            };
            // Only now that the key exists: a temporary file removed here can at worst send
            // a concurrent creator round again, to load this key.
            remove_leftover_temp_files(dir)?;
            return Ok(key);
        }
        Err(ResumeError::io(
            "create",
            path,
            io::Error::other("the key file kept changing while it was being created"),
        ))
    }

    /// Creates the key file; `None` if another process got in the way and loading should be
    /// tried again.
    fn create(dir: &Path, path: &Path) -> Result<Option<Self>, ResumeError> {
        create_private_dir_all(dir)?;
        let key = Self::random();
        let temp = dir.join(format!(
            ".{KEY_FILE_NAME}.{:016x}.tmp",
            rand::random::<u64>()
        ));
        write_temp(&temp, |file| file.write_all(&key.0))?;
        // A hard link, unlike a rename, never replaces a key another process just created.
        let linked = fs::hard_link(&temp, path);
        remove_quietly(&temp);
        match linked {
            Ok(()) => {
                sync_dir(dir)?;
                tracing::info!(path = %path.display(), "created resume key");
                Ok(Some(key))
            }
            // Another process created the key first, or its cleanup removed our temporary
            // file after it had created the key.
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::AlreadyExists | io::ErrorKind::NotFound
                ) =>
            {
                Ok(None)
            }
            Err(source) => Err(ResumeError::io("create", path, source)),
        }
    }

    /// Reads an existing key file; `None` if there is none.
    fn load(path: &Path) -> Result<Option<Self>, ResumeError> {
        let file = match File::open(path) {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(ResumeError::io("open", path, source)),
        };
        warn_if_readable_by_others(&file, path);
        // One byte more than a key, to tell "too long" without reading a huge file.
        let mut bytes = Vec::with_capacity(KEY_LEN + 1);
        file.take(KEY_LEN as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|source| ResumeError::io("read", path, source))?;
        let key =
            <[u8; KEY_LEN]>::try_from(bytes.as_slice()).map_err(|_| ResumeError::KeyLength {
                path: path.to_owned(),
                len: bytes.len(),
            })?;
        Ok(Some(Self(key)))
    }

    /// A token for resuming `id` until `expires_at` (rounded down to whole seconds; a time
    /// before the Unix epoch gives a token that is already expired).
    #[must_use]
    pub fn issue(&self, id: ConnectionId, expires_at: SystemTime) -> String {
        let seconds = expires_at
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        let mut raw = [0u8; RAW_LEN];
        raw[0] = VERSION;
        raw[1..17].copy_from_slice(id.as_bytes());
        raw[17..CLAIMS_LEN].copy_from_slice(&seconds.to_be_bytes());
        let tag = self.mac(&raw[..CLAIMS_LEN]).finalize().into_bytes();
        raw[CLAIMS_LEN..].copy_from_slice(&tag[..TAG_LEN]);
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// The connection id `token` names, if this key signed it and it has not expired at `now`.
    pub fn verify(&self, token: &str, now: SystemTime) -> Result<ConnectionId, ResumeError> {
        self.verify_claims(token, now).map(|claims| claims.id)
    }

    /// Like [`verify`](Self::verify), also returning the expiry, which
    /// [`UsedTokens::consume`] needs.
    ///
    /// Checks, in order: the length (before any decoding, so hostile input costs nothing), the
    /// base64url alphabet and canonical form, the version, the tag (compared in constant time),
    /// and last the expiry, so an expired forgery reports a bad signature.
    pub fn verify_claims(&self, token: &str, now: SystemTime) -> Result<ResumeClaims, ResumeError> {
        if token.len() != TOKEN_LEN {
            return Err(ResumeError::Malformed {
                reason: "wrong length",
            });
        }
        // Room for the decoder's conservative size estimate.
        let mut raw = [0u8; RAW_LEN + 3];
        let decoded =
            URL_SAFE_NO_PAD
                .decode_slice(token, &mut raw)
                .map_err(|_| ResumeError::Malformed {
                    reason: "not base64url",
                })?;
        if decoded != RAW_LEN {
            return Err(ResumeError::Malformed {
                reason: "wrong length",
            });
        }
        if raw[0] != VERSION {
            return Err(ResumeError::Malformed {
                reason: "unknown version",
            });
        }
        self.mac(&raw[..CLAIMS_LEN])
            .verify_truncated_left(&raw[CLAIMS_LEN..RAW_LEN])
            .map_err(|_| ResumeError::BadSignature)?;

        let mut id = [0u8; 16];
        id.copy_from_slice(&raw[1..17]);
        let mut seconds = [0u8; 8];
        seconds.copy_from_slice(&raw[17..CLAIMS_LEN]);
        let expires_at = UNIX_EPOCH
            .checked_add(Duration::from_secs(u64::from_be_bytes(seconds)))
            .ok_or(ResumeError::Malformed {
                reason: "expiry out of range",
            })?;
        if now >= expires_at {
            return Err(ResumeError::Expired);
        }
        Ok(ResumeClaims {
            id: ConnectionId::from_bytes(id),
            expires_at,
        })
    }

    fn mac(&self, claims: &[u8]) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0)
            .expect("HMAC accepts keys of any length");
        mac.update(CONTEXT);
        mac.update(claims);
        mac
    }
}

impl fmt::Debug for ResumeKey {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("ResumeKey(..)")
    }
}

/// Removes temporary key files a crash during [`ResumeKey::load_or_create`] left in `dir`.
fn remove_leftover_temp_files(dir: &Path) -> Result<(), ResumeError> {
    let prefix = format!(".{KEY_FILE_NAME}.");
    let entries = fs::read_dir(dir).map_err(|source| StoreError::io("list", dir, source))?;
    for entry in entries {
        let entry = entry.map_err(|source| StoreError::io("list", dir, source))?;
        let name = entry.file_name();
        let is_leftover = name
            .to_str()
            .and_then(|name| name.strip_prefix(prefix.as_str()))
            .and_then(|rest| rest.strip_suffix(".tmp"))
            .is_some_and(|random| {
                random.len() == 16 && random.bytes().all(|b| b.is_ascii_hexdigit())
            });
        if is_leftover {
            remove_quietly(&entry.path());
        }
    }
    Ok(())
}

#[cfg(unix)]
fn warn_if_readable_by_others(file: &File, path: &Path) {
    use std::os::unix::fs::PermissionsExt;

    if let Ok(metadata) = file.metadata()
        && metadata.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            path = %path.display(),
            "resume key is accessible to other users; anyone who can read it can forge resume \
             tokens"
        );
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_file: &File, _path: &Path) {}

/// A resume token or key was refused.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ResumeError {
    /// The text is not a token: wrong length, characters outside base64url, or an unknown
    /// version.
    #[error("malformed resume token: {reason}")]
    Malformed {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The token was not signed with this key, or was altered.
    #[error(
        "resume token was not signed with this server's key: altered, or issued under another \
         key (without a durable directory or a cluster, a server makes a new key at each start)"
    )]
    BadSignature,
    /// The token was valid but its expiry has passed.
    #[error("resume token has expired")]
    Expired,
    /// The key file exists with a length other than 32 bytes.
    #[error("resume key {} holds {len} bytes, expected 32", path.display())]
    KeyLength {
        /// The key file.
        path: PathBuf,
        /// How many bytes it holds (33 means "more than 32").
        len: usize,
    },
    /// Reading or creating the key file failed.
    #[error("could not {action} resume key {}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or directory it was done to.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Creating the key's directory or temporary file failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ResumeError {
    fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io {
            action,
            path: path.into(),
            source,
        }
    }
}

/// The ids of tokens already used, so each token resumes at most once while the process lives.
///
/// An id is remembered until the expiry of the token that consumed it and then forgotten, as
/// the token itself is refused from then on; memory is therefore bounded by the number of
/// tokens consumed within one token lifetime. Across restarts, once-only is kept by
/// [`AttachmentStore::adopt`](crate::store::AttachmentStore::adopt) instead. Thread-safe.
#[derive(Debug, Default)]
pub struct UsedTokens {
    inner: Mutex<Used>,
}

#[derive(Debug, Default)]
struct Used {
    /// Consumed ids and their token's expiry.
    by_id: HashMap<ConnectionId, SystemTime>,
    /// The same entries ordered by expiry, for forgetting them in order.
    by_expiry: BTreeSet<(SystemTime, ConnectionId)>,
}

impl UsedTokens {
    /// An empty set.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Marks the token for `id` expiring at `expires_at` as used at `now`.
    ///
    /// Returns true if this call consumed it; false if `id` was already consumed, or if
    /// `expires_at` is not after `now` (such a token is refused anyway).
    #[must_use]
    pub fn consume(&self, id: ConnectionId, expires_at: SystemTime, now: SystemTime) -> bool {
        let mut used = self.inner.lock();
        used.forget_expired(now);
        if expires_at <= now || used.by_id.contains_key(&id) {
            return false;
        }
        used.by_id.insert(id, expires_at);
        used.by_expiry.insert((expires_at, id));
        true
    }

    /// Gives the token for `id` back after a resume that failed before the attachment moved
    /// (or once it was moved back), so that the client can try again with it.
    pub fn release(&self, id: ConnectionId) {
        let mut used = self.inner.lock();
        if let Some(expires_at) = used.by_id.remove(&id) {
            used.by_expiry.remove(&(expires_at, id));
        }
    }

    /// Whether the token for `id` was used (and not given back): a resume took, or is
    /// taking, that connection's session.
    #[must_use]
    pub fn is_used(&self, id: ConnectionId) -> bool {
        self.inner.lock().by_id.contains_key(&id)
    }

    /// How many ids are remembered.
    #[must_use]
    pub fn len(&self) -> usize {
        self.inner.lock().by_id.len()
    }

    /// Whether no id is remembered.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Used {
    fn forget_expired(&mut self, now: SystemTime) {
        while let Some(&(expires_at, id)) = self.by_expiry.first() {
            if expires_at > now {
                break;
            }
            self.by_expiry.pop_first();
            self.by_id.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests;
