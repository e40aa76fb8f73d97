//! [`DirStore`]: one file per attachment in `DIR/ws/`, written atomically and durably.
//!
//! # On-disk format
//!
//! ```text
//! DIR/ws/                      mode 0700, created by DirStore::open
//!   <id>.att                   one attachment: the raw bytes, nothing else; mode 0600
//!   .<id>.<16 hex>.tmp         a write in progress (or interrupted by a crash)
//!   .lock                      held with an exclusive advisory lock while a store is open
//! ```
//!
//! `<id>` is a [`ConnectionId`] in its 32 lowercase hex digit form. Any other name in the
//! directory is left alone and reported in [`Recovery::unrecognized`].
//!
//! # Crash safety
//!
//! A put writes a temporary file with a unique name in the same directory, fsyncs it, renames it
//! over `<id>.att` and fsyncs the directory. `rename(2)` within one directory is atomic, so after
//! a crash at any point `<id>.att` holds either the old bytes or the new bytes, never a torn
//! mix; the directory fsync makes the new name itself durable before the put returns. A crash
//! can leave a temporary file behind; [`DirStore::open`] removes those. Adopt is one rename
//! followed by a directory fsync, so after a crash the attachment is under exactly one of the
//! two names.

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::{AttachmentStore, ConnectionId, StoreError, StoredAttachment};

/// The subdirectory of the durable directory that holds attachments.
const SUBDIRECTORY: &str = "ws";
/// The extension of an attachment file.
const EXTENSION: &str = ".att";
/// The extension of a temporary file.
const TEMP_EXTENSION: &str = ".tmp";
/// The name of the lock file.
const LOCK_NAME: &str = ".lock";

/// An [`AttachmentStore`] backed by a directory, for `--durable DIR`.
///
/// Attachments live in `DIR/ws/<id>.att` (see the module documentation for the format and the
/// crash guarantees). A store opened with [`open`](Self::open) holds an exclusive advisory
/// lock on `DIR/ws/.lock` until it is dropped, so two servers cannot share a directory; a store
/// opened with [`open_read_only`](Self::open_read_only) takes no lock and refuses every change,
/// for inspecting a directory a running server owns.
///
/// Every method does blocking file system IO; call it from `spawn_blocking` in async code.
#[derive(Debug)]
pub struct DirStore {
    /// `DIR/ws`.
    dir: PathBuf,
    /// The locked `.lock` file for a writable store (the lock lives as long as the handle), or
    /// `None` for a read-only one.
    lock: Option<File>,
    /// What opening found.
    recovery: Recovery,
}

/// What [`DirStore::open`] found in the directory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Temporary files left by writes that a crash interrupted. [`DirStore::open`] removed them
    /// (none of them was ever acknowledged); [`DirStore::open_read_only`] only reports them.
    pub temp_files: Vec<PathBuf>,
    /// Entries whose names are neither `<id>.att` nor one of the store's own files. They are
    /// left untouched and ignored by every operation.
    pub unrecognized: Vec<PathBuf>,
}

impl DirStore {
    /// Opens (creating it with mode 0700 if needed) the attachment directory `dir/ws`, locks
    /// it, and recovers from a crash by removing leftover temporary files.
    ///
    /// Fails with [`StoreError::Locked`] if another store has the directory open.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, StoreError> {
        let dir = dir.as_ref().join(SUBDIRECTORY);
        create_private_dir_all(&dir)?;

        let lock_path = dir.join(LOCK_NAME);
        let mut options = OpenOptions::new();
        options.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let lock = options
            .open(&lock_path)
            .map_err(|source| StoreError::io("open lock file", &lock_path, source))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Err(StoreError::Locked { path: lock_path }),
            Err(TryLockError::Error(source)) => {
                return Err(StoreError::io("lock", lock_path, source));
            }
        }

        let recovery = scan(&dir)?;
        for path in &recovery.temp_files {
            tracing::info!(path = %path.display(), "removing temporary file left by a crash");
            match fs::remove_file(path) {
                Ok(()) => {}
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(StoreError::io(
                        "remove leftover temporary file",
                        path,
                        source,
                    ));
                }
            }
        }
        if !recovery.temp_files.is_empty() {
            sync_dir(&dir)?;
        }
        for path in &recovery.unrecognized {
            tracing::warn!(path = %path.display(), "ignoring unrecognized file in attachment directory");
        }
        Ok(Self {
            dir,
            lock: Some(lock),
            recovery,
        })
    }

    /// Opens an existing attachment directory `dir/ws` for reading only: no lock, no recovery,
    /// and [`put`](AttachmentStore::put), [`remove`](AttachmentStore::remove),
    /// [`adopt`](AttachmentStore::adopt) and [`gc`](Self::gc) fail with
    /// [`StoreError::ReadOnly`]. Safe to use while a server has the directory open.
    pub fn open_read_only(dir: impl AsRef<Path>) -> Result<Self, StoreError> {
        let dir = dir.as_ref().join(SUBDIRECTORY);
        let recovery = scan(&dir)?;
        Ok(Self {
            dir,
            lock: None,
            recovery,
        })
    }

    /// The directory holding the attachment files (`DIR/ws`).
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What opening found: temporary files left by a crash and unrecognized entries.
    #[must_use]
    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    /// The file that holds (or would hold) the attachment of `id`.
    #[must_use]
    pub fn attachment_path(&self, id: ConnectionId) -> PathBuf {
        self.dir.join(format!("{id}{EXTENSION}"))
    }

    /// Removes every attachment last written at least `older_than` ago for which `keep`
    /// returns false, and returns how many were removed.
    ///
    /// `keep` must return true for every connection that is still live, since a live
    /// connection may rewrite its attachment at any moment. For `roost attachments gc`, run
    /// while no server has the directory open, `|_| false` is right.
    pub fn gc(
        &self,
        older_than: Duration,
        keep: impl Fn(ConnectionId) -> bool,
    ) -> Result<usize, StoreError> {
        self.writable()?;
        let now = SystemTime::now();
        let mut removed = 0;
        for attachment in self.list()? {
            // A modification time in the future counts as age zero.
            let age = now.duration_since(attachment.modified).unwrap_or_default();
            if age < older_than || keep(attachment.id) {
                continue;
            }
            let path = self.attachment_path(attachment.id);
            match fs::remove_file(&path) {
                Ok(()) => removed += 1,
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                Err(source) => return Err(StoreError::io("remove attachment", path, source)),
            }
        }
        if removed > 0 {
            sync_dir(&self.dir)?;
        }
        Ok(removed)
    }

    /// Fails unless the store was opened for writing.
    fn writable(&self) -> Result<(), StoreError> {
        match self.lock {
            Some(_) => Ok(()),
            None => Err(StoreError::ReadOnly {
                path: self.dir.clone(),
            }),
        }
    }

    /// [`put`](AttachmentStore::put) with the writing of the temporary file's contents passed
    /// in, so tests can make it fail the way a full disk would.
    fn put_with(
        &self,
        id: ConnectionId,
        write: impl FnOnce(&mut File) -> io::Result<()>,
    ) -> Result<(), StoreError> {
        self.writable()?;
        let temp = self.dir.join(format!(
            ".{id}.{:016x}{TEMP_EXTENSION}",
            rand::random::<u64>()
        ));
        write_temp(&temp, write)?;
        let target = self.attachment_path(id);
        if let Err(source) = fs::rename(&temp, &target) {
            remove_quietly(&temp);
            return Err(StoreError::io("rename temporary file over", target, source));
        }
        // Failing here leaves the new bytes in place, not known to be durable: the put is not
        // acknowledged (see `AttachmentStore::put`).
        sync_dir(&self.dir)
    }
}

impl AttachmentStore for DirStore {
    fn put(&self, id: ConnectionId, bytes: &[u8]) -> Result<(), StoreError> {
        self.put_with(id, |file| file.write_all(bytes))
    }

    fn get(&self, id: ConnectionId) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.attachment_path(id);
        match fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StoreError::io("read attachment", path, source)),
        }
    }

    fn remove(&self, id: ConnectionId) -> Result<(), StoreError> {
        self.writable()?;
        let path = self.attachment_path(id);
        match fs::remove_file(&path) {
            Ok(()) => sync_dir(&self.dir),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StoreError::io("remove attachment", path, source)),
        }
    }

    fn list(&self) -> Result<Vec<StoredAttachment>, StoreError> {
        let entries =
            fs::read_dir(&self.dir).map_err(|source| StoreError::io("list", &self.dir, source))?;
        let mut attachments = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| StoreError::io("list", &self.dir, source))?;
            let Name::Attachment(id) = classify(&entry.file_name()) else {
                continue;
            };
            // Does not follow symbolic links: only regular files are attachments.
            let metadata = match entry.metadata() {
                Ok(metadata) => metadata,
                // Removed since the directory was read.
                Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
                Err(source) => return Err(StoreError::io("inspect", entry.path(), source)),
            };
            if !metadata.is_file() {
                continue;
            }
            let modified = metadata.modified().map_err(|source| {
                StoreError::io("read modification time of", entry.path(), source)
            })?;
            attachments.push(StoredAttachment {
                id,
                len: metadata.len(),
                modified,
            });
        }
        Ok(attachments)
    }

    fn touch(&self, id: ConnectionId) -> Result<bool, StoreError> {
        self.writable()?;
        date_now(&self.attachment_path(id))
    }

    fn adopt(&self, from: ConnectionId, to: ConnectionId) -> Result<Option<Vec<u8>>, StoreError> {
        self.writable()?;
        if from == to {
            // Nothing to move; renaming a file onto itself would succeed without a change.
            return self.get(from);
        }
        let source_path = self.attachment_path(from);
        let target = self.attachment_path(to);
        // Dated now, durably, before it moves: the moved attachment counts as written at the
        // move. Of concurrent adopts, the losers date a file the winner moves: no harm.
        if !date_now(&source_path)? {
            return Ok(None);
        }
        // The rename is the commit point: of concurrent adopts of `from`, exactly one finds the
        // file, and after a crash it is under exactly one name.
        match fs::rename(&source_path, &target) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StoreError::io("move attachment to", target, source)),
        }
        sync_dir(&self.dir)?;
        fs::read(&target)
            .map(Some)
            .map_err(|source| StoreError::io("read adopted attachment", target, source))
    }
}

/// Sets the modification time of the attachment file at `path` to now, durably; false if
/// there is no such file.
fn date_now(path: &Path) -> Result<bool, StoreError> {
    match File::options().write(true).open(path) {
        Ok(file) => file
            .set_modified(SystemTime::now())
            .and_then(|()| file.sync_all())
            .map(|()| true)
            .map_err(|source| StoreError::io("date attachment", path, source)),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(StoreError::io("open attachment", path, source)),
    }
}

/// The kinds of names found in the attachment directory.
enum Name {
    Attachment(ConnectionId),
    Temp,
    Lock,
    Other,
}

fn classify(name: &OsStr) -> Name {
    let Some(name) = name.to_str() else {
        return Name::Other;
    };
    if name == LOCK_NAME {
        return Name::Lock;
    }
    if let Some(id) = name.strip_suffix(EXTENSION) {
        return match id.parse::<ConnectionId>() {
            Ok(id) => Name::Attachment(id),
            Err(_) => Name::Other,
        };
    }
    // `.<id>.<16 hex>.tmp`
    let temp = name
        .strip_prefix('.')
        .and_then(|rest| rest.strip_suffix(TEMP_EXTENSION))
        .and_then(|rest| rest.split_once('.'));
    match temp {
        Some((id, suffix))
            if id.parse::<ConnectionId>().is_ok()
                && suffix.len() == 16
                && suffix
                    .bytes()
                    .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) =>
        {
            Name::Temp
        }
        _ => Name::Other,
    }
}

/// Sorts the directory's entries into leftover temporary files and unrecognized names.
fn scan(dir: &Path) -> Result<Recovery, StoreError> {
    let entries =
        fs::read_dir(dir).map_err(|source| StoreError::io("open directory", dir, source))?;
    let mut recovery = Recovery::default();
    for entry in entries {
        let entry = entry.map_err(|source| StoreError::io("list", dir, source))?;
        match classify(&entry.file_name()) {
            Name::Attachment(_) | Name::Lock => {}
            Name::Temp => recovery.temp_files.push(entry.path()),
            Name::Other => recovery.unrecognized.push(entry.path()),
        }
    }
    recovery.temp_files.sort();
    recovery.unrecognized.sort();
    Ok(recovery)
}

/// Creates `path` as a new file with mode 0600, fills it with `write` and fsyncs it. On any
/// failure the file is removed, so no partial file is left behind.
pub(crate) fn write_temp(
    path: &Path,
    write: impl FnOnce(&mut File) -> io::Result<()>,
) -> Result<(), StoreError> {
    let mut file = create_private_file(path)
        .map_err(|source| StoreError::io("create temporary file", path, source))?;
    let written = write(&mut file)
        .map_err(|source| StoreError::io("write temporary file", path, source))
        .and_then(|()| {
            file.sync_all()
                .map_err(|source| StoreError::io("fsync temporary file", path, source))
        });
    if written.is_err() {
        drop(file);
        remove_quietly(path);
    }
    written
}

/// Removes a temporary file after a failure; the original error is the one worth reporting, and
/// a file that cannot be removed now is removed by the next [`DirStore::open`].
pub(crate) fn remove_quietly(path: &Path) {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "could not remove temporary file");
        }
    }
}

/// Creates a new file readable and writable by its owner only; fails if `path` exists.
pub(crate) fn create_private_file(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

/// Creates `path` and missing parents with mode 0700, each new directory made durable in its
/// parent (so it survives a crash right after); an existing directory is fine.
pub(crate) fn create_private_dir_all(path: &Path) -> Result<(), StoreError> {
    let missing: Vec<&Path> = path
        .ancestors()
        .take_while(|dir| !dir.as_os_str().is_empty() && !dir.is_dir())
        .collect();
    let mut builder = fs::DirBuilder::new();
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    for dir in missing.into_iter().rev() {
        match builder.create(dir) {
            Ok(()) => {}
            // Created by someone else meanwhile: they make it durable.
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => continue,
            Err(source) => return Err(StoreError::io("create directory", dir, source)),
        }
        let parent = dir.parent().filter(|parent| !parent.as_os_str().is_empty());
        sync_dir(parent.unwrap_or(Path::new(".")))?;
    }
    Ok(())
}

/// Makes the directory's entries (created, renamed, removed names) durable.
pub(crate) fn sync_dir(path: &Path) -> Result<(), StoreError> {
    #[cfg(unix)]
    File::open(path)
        .and_then(|dir| dir.sync_all())
        .map_err(|source| StoreError::io("fsync directory", path, source))?;
    // Elsewhere a directory cannot be opened as a file; renames are made durable by the file
    // system itself.
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

#[cfg(test)]
mod tests;
