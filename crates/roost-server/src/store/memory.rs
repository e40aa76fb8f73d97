//! [`MemoryStore`]: attachments in a map, gone when the process ends.

use std::collections::HashMap;
use std::fmt;
use std::time::SystemTime;

use parking_lot::Mutex;

use super::{AttachmentStore, ConnectionId, StoreError, StoredAttachment};

/// An [`AttachmentStore`] that keeps attachments in memory, for servers without `--durable`
/// and for tests.
///
/// Every operation takes one lock for its whole duration, so [`adopt`](AttachmentStore::adopt)
/// is atomic with respect to every other operation. Nothing survives the process; no operation
/// ever fails.
#[derive(Default)]
pub struct MemoryStore {
    /// Attachment bytes and the time they were written, by connection.
    entries: Mutex<HashMap<ConnectionId, Entry>>,
}

struct Entry {
    bytes: Vec<u8>,
    modified: SystemTime,
}

impl MemoryStore {
    /// An empty store.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("MemoryStore")
            .field("attachments", &self.entries.lock().len())
            .finish()
    }
}

impl AttachmentStore for MemoryStore {
    fn put(&self, id: ConnectionId, bytes: &[u8]) -> Result<(), StoreError> {
        let entry = Entry {
            bytes: bytes.to_vec(),
            modified: SystemTime::now(),
        };
        self.entries.lock().insert(id, entry);
        Ok(())
    }

    fn get(&self, id: ConnectionId) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .entries
            .lock()
            .get(&id)
            .map(|entry| entry.bytes.clone()))
    }

    fn remove(&self, id: ConnectionId) -> Result<(), StoreError> {
        self.entries.lock().remove(&id);
        Ok(())
    }

    fn touch(&self, id: ConnectionId) -> Result<bool, StoreError> {
        Ok(self
            .entries
            .lock()
            .get_mut(&id)
            .map(|entry| entry.modified = SystemTime::now())
            .is_some())
    }

    fn list(&self) -> Result<Vec<StoredAttachment>, StoreError> {
        Ok(self
            .entries
            .lock()
            .iter()
            .map(|(id, entry)| StoredAttachment {
                id: *id,
                len: entry.bytes.len() as u64,
                modified: entry.modified,
            })
            .collect())
    }

    fn adopt(&self, from: ConnectionId, to: ConnectionId) -> Result<Option<Vec<u8>>, StoreError> {
        let mut entries = self.entries.lock();
        let Some(mut entry) = entries.remove(&from) else {
            return Ok(None);
        };
        let bytes = entry.bytes.clone();
        entry.modified = SystemTime::now();
        entries.insert(to, entry);
        Ok(Some(bytes))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Arc;
    use std::thread;

    use super::*;
    use crate::store::listed;

    #[test]
    fn put_get_remove_list() {
        let store = MemoryStore::new();
        let a = ConnectionId::random();
        let b = ConnectionId::random();
        assert_eq!(store.get(a).expect("get"), None);
        store.put(a, b"one").expect("put");
        store.put(b, b"two!").expect("put");
        store.put(a, b"three").expect("overwrite");
        assert_eq!(store.get(a).expect("get").as_deref(), Some(&b"three"[..]));
        assert_eq!(listed(&store), BTreeSet::from([(a, 5), (b, 4)]));
        store.remove(a).expect("remove");
        store.remove(a).expect("remove twice");
        assert_eq!(store.get(a).expect("get"), None);
        assert_eq!(format!("{store:?}"), "MemoryStore { attachments: 1 }");
    }

    #[test]
    fn adopt_moves_once() {
        let store = MemoryStore::new();
        let old = ConnectionId::random();
        let new = ConnectionId::random();
        store.put(old, b"state").expect("put");
        assert_eq!(
            store.adopt(old, new).expect("adopt").as_deref(),
            Some(&b"state"[..])
        );
        assert_eq!(store.get(old).expect("get"), None);
        assert_eq!(store.get(new).expect("get").as_deref(), Some(&b"state"[..]));
        assert_eq!(
            store.adopt(old, ConnectionId::random()).expect("again"),
            None
        );
    }

    #[test]
    fn adopt_and_touch_date_the_attachment() {
        crate::store::check_adopt_and_touch_date_the_attachment(&MemoryStore::new());
    }

    #[test]
    fn concurrent_adopts_have_one_winner() {
        let store = Arc::new(MemoryStore::new());
        let old = ConnectionId::random();
        store.put(old, b"state").expect("put");
        let winners: usize = (0..8)
            .map(|_| {
                let store = Arc::clone(&store);
                thread::spawn(move || store.adopt(old, ConnectionId::random()))
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|handle| handle.join().expect("join").expect("adopt"))
            .filter(Option::is_some)
            .count();
        assert_eq!(winners, 1);
    }
}
