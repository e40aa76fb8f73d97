//! Attachment stores under arbitrary operation sequences, against a model.
//!
//! `MemoryStore` and a `DirStore` in a fresh directory (on tmpfs when `/dev/shm` exists, so
//! fsyncs are cheap) run the same operations as a `HashMap`. Invariants: every `get`, `list`,
//! `adopt` and `gc` answers as the model does; adopt moves exactly once (a second adopt of the
//! same id finds nothing); a reopened `DirStore` finds exactly the model's attachments and no
//! temporary or unrecognized file; a read-only view sees the same and refuses changes; ids
//! parse from exactly their own 32-character spelling, so no text becomes another file name.

#![no_main]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use roost_fuzz::Blob;
use roost_server::store::{AttachmentStore, ConnectionId, DirStore, MemoryStore, StoreError};

#[derive(Arbitrary, Debug)]
enum Id {
    /// One of eight ids, so operations often meet.
    Small(u8),
    Any([u8; 16]),
}

impl Id {
    fn id(&self) -> ConnectionId {
        match self {
            Id::Small(n) => ConnectionId::from_bytes([n % 8; 16]),
            Id::Any(bytes) => ConnectionId::from_bytes(*bytes),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Op {
    Put {
        id: Id,
        bytes: Blob,
    },
    Get(Id),
    Remove(Id),
    Adopt {
        from: Id,
        to: Id,
    },
    List,
    /// `DirStore::gc` with no age limit, keeping ids whose first byte's bit is set in the mask.
    Gc {
        keep: u8,
    },
    Reopen,
    ReadOnly,
    ParseId(String),
}

type Model = HashMap<ConnectionId, Vec<u8>>;

fuzz_target!(|ops: Vec<Op>| {
    let dir = Scratch::new();
    let memory = MemoryStore::new();
    let mut durable = Some(DirStore::open(&dir.0).expect("open a fresh directory"));
    let mut model = Model::new();
    for op in ops {
        let store = durable.as_ref().expect("reopened after every drop");
        match op {
            Op::Put { id, bytes } => {
                let id = id.id();
                assert_eq!(store.attachment_path(id).parent(), Some(store.dir()));
                memory.put(id, &bytes).expect("memory put");
                store.put(id, &bytes).expect("durable put");
                model.insert(id, bytes.0);
            }
            Op::Get(id) => {
                let id = id.id();
                let expected = model.get(&id).cloned();
                assert_eq!(memory.get(id).expect("memory get"), expected);
                assert_eq!(store.get(id).expect("durable get"), expected);
            }
            Op::Remove(id) => {
                let id = id.id();
                memory.remove(id).expect("memory remove");
                store.remove(id).expect("durable remove");
                model.remove(&id);
            }
            Op::Adopt { from, to } => {
                let (from, to) = (from.id(), to.id());
                let expected = model.remove(&from);
                if let Some(bytes) = &expected {
                    model.insert(to, bytes.clone());
                }
                assert_eq!(memory.adopt(from, to).expect("memory adopt"), expected);
                assert_eq!(store.adopt(from, to).expect("durable adopt"), expected);
                if expected.is_some() && from != to {
                    assert_eq!(memory.adopt(from, to).expect("memory adopt again"), None);
                    assert_eq!(store.adopt(from, to).expect("durable adopt again"), None);
                }
            }
            Op::List => {
                check_list(&memory, &model);
                check_list(store, &model);
            }
            Op::Gc { keep } => {
                let kept = |id: ConnectionId| keep & (1 << (id.as_bytes()[0] % 8)) != 0;
                let removed = store.gc(Duration::ZERO, kept).expect("gc");
                let doomed: Vec<ConnectionId> =
                    model.keys().copied().filter(|&id| !kept(id)).collect();
                assert_eq!(removed, doomed.len());
                for id in doomed {
                    model.remove(&id);
                    memory.remove(id).expect("memory remove");
                }
                check_list(store, &model);
            }
            Op::Reopen => {
                drop(durable.take());
                let store = DirStore::open(&dir.0).expect("reopen");
                assert!(store.recovery().temp_files.is_empty());
                assert!(store.recovery().unrecognized.is_empty());
                check_list(&store, &model);
                for (id, bytes) in &model {
                    assert_eq!(store.get(*id).expect("get").as_ref(), Some(bytes));
                }
                durable = Some(store);
            }
            Op::ReadOnly => {
                let view = DirStore::open_read_only(&dir.0).expect("read-only view");
                check_list(&view, &model);
                let id = ConnectionId::from_bytes([0; 16]);
                assert!(matches!(
                    view.put(id, b"x"),
                    Err(StoreError::ReadOnly { .. })
                ));
                assert!(matches!(view.remove(id), Err(StoreError::ReadOnly { .. })));
                assert!(matches!(
                    view.adopt(id, id),
                    Err(StoreError::ReadOnly { .. })
                ));
            }
            Op::ParseId(text) => {
                let is_id = text.len() == ConnectionId::TEXT_LEN
                    && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
                match text.parse::<ConnectionId>() {
                    Ok(id) => {
                        assert!(is_id, "{text:?} parsed as an id");
                        assert_eq!(id.to_string(), text);
                    }
                    Err(_) => assert!(!is_id, "{text:?} refused"),
                }
            }
        }
    }
    check_list(&memory, &model);
    check_list(durable.as_ref().expect("open"), &model);
});

fn check_list(store: &dyn AttachmentStore, model: &Model) {
    let mut listed: Vec<(ConnectionId, u64)> = store
        .list()
        .expect("list")
        .into_iter()
        .map(|entry| (entry.id, entry.len))
        .collect();
    listed.sort();
    let mut expected: Vec<(ConnectionId, u64)> = model
        .iter()
        .map(|(id, bytes)| (*id, bytes.len() as u64))
        .collect();
    expected.sort();
    assert_eq!(listed, expected);
}

/// A fresh directory for one input, removed afterwards.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let shm = PathBuf::from("/dev/shm");
        let base = if shm.is_dir() {
            shm
        } else {
            std::env::temp_dir()
        };
        let path = base.join(format!(
            "roost-fuzz-store-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).expect("create a scratch directory");
        Scratch(path)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
