use std::collections::BTreeSet;
use std::sync::Arc;
use std::thread;

use super::*;
use crate::store::listed;

/// The names in `DIR/ws`, sorted.
fn names(store: &DirStore) -> BTreeSet<String> {
    fs::read_dir(store.dir())
        .expect("read_dir")
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .into_string()
                .expect("utf-8")
        })
        .collect()
}

fn attachment_name(id: ConnectionId) -> String {
    format!("{id}.att")
}

#[test]
fn put_get_remove_list() {
    let temp = tempfile::tempdir().expect("tempdir");
    let store = DirStore::open(temp.path()).expect("open");
    assert_eq!(store.dir(), temp.path().join("ws"));
    assert_eq!(store.recovery(), &Recovery::default());
    let a = ConnectionId::random();
    let b = ConnectionId::random();

    assert_eq!(store.get(a).expect("get"), None);
    assert!(store.list().expect("list").is_empty());
    store.put(a, b"alpha").expect("put");
    store.put(b, b"").expect("put empty");
    assert_eq!(store.get(a).expect("get").as_deref(), Some(&b"alpha"[..]));
    assert_eq!(store.get(b).expect("get").as_deref(), Some(&b""[..]));
    assert_eq!(
        fs::read(store.attachment_path(a)).expect("read file"),
        b"alpha"
    );

    assert_eq!(listed(&store), BTreeSet::from([(a, 5), (b, 0)]));

    store.remove(a).expect("remove");
    store
        .remove(a)
        .expect("removing an absent attachment is fine");
    assert_eq!(store.get(a).expect("get"), None);
    assert_eq!(store.list().expect("list").len(), 1);
}

#[test]
fn overwrite_keeps_exactly_one_file() {
    let temp = tempfile::tempdir().expect("tempdir");
    let store = DirStore::open(temp.path()).expect("open");
    let id = ConnectionId::random();
    for round in 0..20u8 {
        store
            .put(id, &vec![round; usize::from(round) * 100])
            .expect("put");
    }
    assert_eq!(
        store.get(id).expect("get"),
        Some(vec![19u8; 1900]),
        "the last write wins"
    );
    let expected: BTreeSet<String> = [attachment_name(id), ".lock".to_owned()].into();
    assert_eq!(names(&store), expected);
}

#[cfg(unix)]
#[test]
fn directory_and_files_are_private() {
    use std::os::unix::fs::PermissionsExt;

    let temp = tempfile::tempdir().expect("tempdir");
    // Missing parents are created too, each private.
    let durable = temp.path().join("a/b");
    let store = DirStore::open(&durable).expect("open");
    let id = ConnectionId::random();
    store.put(id, b"secret").expect("put");
    let mode = |path: &Path| fs::metadata(path).expect("metadata").permissions().mode() & 0o777;
    for dir in [store.dir(), &durable, &temp.path().join("a")] {
        assert_eq!(mode(dir), 0o700, "{}", dir.display());
    }
    assert_eq!(mode(&store.attachment_path(id)), 0o600);
}

#[test]
fn open_removes_crash_leftovers_and_reports_strangers() {
    let temp = tempfile::tempdir().expect("tempdir");
    let ws = temp.path().join("ws");
    fs::create_dir(&ws).expect("mkdir");
    let kept = ConnectionId::random();
    fs::write(ws.join(attachment_name(kept)), b"acknowledged").expect("write");
    let leftover = ws.join(format!(".{kept}.0123456789abcdef.tmp"));
    fs::write(&leftover, b"torn wri").expect("write");
    let other_leftover = ws.join(format!(".{}.fedcba9876543210.tmp", ConnectionId::random()));
    fs::write(&other_leftover, b"").expect("write");
    let strangers = [
        ws.join("notes.txt"),
        ws.join(format!("{}.att", kept.to_string().to_uppercase())),
        ws.join(format!(".{kept}.0123.tmp")),
        ws.join(format!("{kept}.att.bak")),
    ];
    for path in &strangers {
        fs::write(path, b"x").expect("write");
    }

    let store = DirStore::open(temp.path()).expect("open");
    let mut expected_temp = vec![leftover.clone(), other_leftover.clone()];
    expected_temp.sort();
    assert_eq!(store.recovery().temp_files, expected_temp);
    let mut expected_strangers = strangers.to_vec();
    expected_strangers.sort();
    assert_eq!(store.recovery().unrecognized, expected_strangers);
    assert!(!leftover.exists() && !other_leftover.exists());
    assert!(
        strangers.iter().all(|path| path.exists()),
        "strangers are left alone"
    );

    let listed = store.list().expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, kept);
    assert_eq!(
        store.get(kept).expect("get").as_deref(),
        Some(&b"acknowledged"[..])
    );
}

#[test]
fn failed_write_keeps_old_content_and_leaves_no_temp_file() {
    let temp = tempfile::tempdir().expect("tempdir");
    let store = DirStore::open(temp.path()).expect("open");
    let id = ConnectionId::random();
    store.put(id, b"acknowledged").expect("put");

    // Half the bytes reach the temporary file, then the disk is full.
    let error = store
        .put_with(id, |file| {
            file.write_all(b"new con")?;
            Err(io::Error::from(io::ErrorKind::StorageFull))
        })
        .expect_err("the write fails");
    match &error {
        StoreError::Io {
            action,
            path,
            source,
        } => {
            assert_eq!(*action, "write temporary file");
            assert!(path.starts_with(store.dir()));
            assert_eq!(source.kind(), io::ErrorKind::StorageFull);
        }
        other => panic!("unexpected error {other:?}"),
    }
    assert!(
        error
            .to_string()
            .starts_with("could not write temporary file ")
    );

    assert_eq!(
        store.get(id).expect("get").as_deref(),
        Some(&b"acknowledged"[..])
    );
    let expected: BTreeSet<String> = [attachment_name(id), ".lock".to_owned()].into();
    assert_eq!(names(&store), expected, "no temporary file is left");

    // The store still works afterwards.
    store.put(id, b"next").expect("put");
    assert_eq!(store.get(id).expect("get").as_deref(), Some(&b"next"[..]));
}

#[test]
fn failed_rename_leaves_no_temp_file() {
    let temp = tempfile::tempdir().expect("tempdir");
    let store = DirStore::open(temp.path()).expect("open");
    let id = ConnectionId::random();
    // A non-empty directory where the attachment should go makes the rename fail for real.
    let blocker = store.attachment_path(id);
    fs::create_dir(&blocker).expect("mkdir");
    fs::write(blocker.join("inside"), b"x").expect("write");

    let error = store.put(id, b"bytes").expect_err("rename fails");
    assert!(
        matches!(&error, StoreError::Io { action: "rename temporary file over", path, .. } if *path == blocker),
        "{error:?}"
    );
    let expected: BTreeSet<String> = [attachment_name(id), ".lock".to_owned()].into();
    assert_eq!(names(&store), expected);
    assert!(
        store.list().expect("list").is_empty(),
        "a directory is no attachment"
    );
}

#[test]
fn failed_create_reports_the_path() {
    let temp = tempfile::tempdir().expect("tempdir");
    // `ws` is a file, so the attachment directory cannot be created.
    fs::write(temp.path().join("ws"), b"not a directory").expect("write");
    let error = DirStore::open(temp.path()).expect_err("open fails");
    assert!(
        matches!(
            &error,
            StoreError::Io {
                action: "create directory",
                ..
            }
        ),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        format!(
            "could not create directory {}",
            temp.path().join("ws").display()
        )
    );
    assert!(std::error::Error::source(&error).is_some());
}

#[test]
fn vanished_directory_fails_cleanly() {
    let temp = tempfile::tempdir().expect("tempdir");
    let store = DirStore::open(temp.path()).expect("open");
    fs::remove_dir_all(store.dir()).expect("rm");
    let error = store
        .put(ConnectionId::random(), b"x")
        .expect_err("put fails");
    assert!(
        matches!(
            &error,
            StoreError::Io {
                action: "create temporary file",
                ..
            }
        ),
        "{error:?}"
    );
}

#[test]
fn reopen_after_drop_sees_the_data() {
    let temp = tempfile::tempdir().expect("tempdir");
    let id = ConnectionId::random();
    {
        let store = DirStore::open(temp.path()).expect("open");
        store.put(id, b"persisted").expect("put");
    }
    let store = DirStore::open(temp.path()).expect("reopen");
    assert_eq!(
        store.get(id).expect("get").as_deref(),
        Some(&b"persisted"[..])
    );
}

#[test]
fn a_second_open_is_refused_until_the_first_is_dropped() {
    let temp = tempfile::tempdir().expect("tempdir");
    let first = DirStore::open(temp.path()).expect("open");
    let error = DirStore::open(temp.path()).expect_err("locked");
    assert!(matches!(error, StoreError::Locked { .. }), "{error:?}");
    assert!(error.to_string().contains("in use by another process"));
    drop(first);
    DirStore::open(temp.path()).expect("open after drop");
}

#[test]
fn read_only_store_reads_beside_a_writer_and_refuses_changes() {
    let temp = tempfile::tempdir().expect("tempdir");
    let writer = DirStore::open(temp.path()).expect("open");
    let id = ConnectionId::random();
    writer.put(id, b"shared").expect("put");
    let leftover = writer.dir().join(format!(".{id}.0000000000000000.tmp"));
    fs::write(&leftover, b"in flight").expect("write");

    let reader = DirStore::open_read_only(temp.path()).expect("open read-only");
    assert_eq!(reader.recovery().temp_files, vec![leftover.clone()]);
    assert!(leftover.exists(), "a reader removes nothing");
    assert_eq!(reader.list().expect("list").len(), 1);
    assert_eq!(
        reader.get(id).expect("get").as_deref(),
        Some(&b"shared"[..])
    );
    assert!(matches!(
        reader.put(id, b"x"),
        Err(StoreError::ReadOnly { .. })
    ));
    assert!(matches!(
        reader.remove(id),
        Err(StoreError::ReadOnly { .. })
    ));
    assert!(matches!(
        reader.adopt(id, ConnectionId::random()),
        Err(StoreError::ReadOnly { .. })
    ));
    assert!(matches!(
        reader.gc(Duration::ZERO, |_| false),
        Err(StoreError::ReadOnly { .. })
    ));
    assert_eq!(
        writer.get(id).expect("get").as_deref(),
        Some(&b"shared"[..])
    );

    let missing = tempfile::tempdir().expect("tempdir");
    assert!(matches!(
        DirStore::open_read_only(missing.path()),
        Err(StoreError::Io {
            action: "open directory",
            ..
        })
    ));
}

#[test]
fn adopt_moves_once_and_survives_reopen() {
    let temp = tempfile::tempdir().expect("tempdir");
    let old = ConnectionId::random();
    let new = ConnectionId::random();
    {
        let store = DirStore::open(temp.path()).expect("open");
        store.put(old, b"state").expect("put");
        assert_eq!(
            store.adopt(old, new).expect("adopt").as_deref(),
            Some(&b"state"[..])
        );
        assert_eq!(store.get(old).expect("get"), None);
        assert_eq!(
            store
                .adopt(old, ConnectionId::random())
                .expect("adopt twice"),
            None
        );
        assert_eq!(
            store.adopt(ConnectionId::random(), new).expect("unknown"),
            None
        );
    }
    let store = DirStore::open(temp.path()).expect("reopen");
    assert_eq!(store.get(old).expect("get"), None);
    assert_eq!(store.get(new).expect("get").as_deref(), Some(&b"state"[..]));
    let expected: BTreeSet<String> = [attachment_name(new), ".lock".to_owned()].into();
    assert_eq!(names(&store), expected);
}

#[test]
fn adopt_and_touch_date_the_attachment() {
    let temp = tempfile::tempdir().expect("tempdir");
    let store = DirStore::open(temp.path()).expect("open");
    crate::store::check_adopt_and_touch_date_the_attachment(&store);
}

#[test]
fn adopt_replaces_the_new_connections_attachment() {
    let temp = tempfile::tempdir().expect("tempdir");
    let store = DirStore::open(temp.path()).expect("open");
    let old = ConnectionId::random();
    let new = ConnectionId::random();
    store.put(old, b"resumed").expect("put");
    store.put(new, b"fresh").expect("put");
    assert_eq!(
        store.adopt(old, new).expect("adopt").as_deref(),
        Some(&b"resumed"[..])
    );
    assert_eq!(
        store.get(new).expect("get").as_deref(),
        Some(&b"resumed"[..])
    );
    assert_eq!(store.list().expect("list").len(), 1);
}

#[test]
fn concurrent_adopts_have_one_winner() {
    let temp = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(DirStore::open(temp.path()).expect("open"));
    let old = ConnectionId::random();
    store.put(old, b"state").expect("put");
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let store = Arc::clone(&store);
            thread::spawn(move || store.adopt(old, ConnectionId::random()))
        })
        .collect();
    let winners = handles
        .into_iter()
        .map(|handle| handle.join().expect("join").expect("adopt"))
        .filter(Option::is_some)
        .count();
    assert_eq!(winners, 1);
    assert_eq!(store.list().expect("list").len(), 1);
}

#[test]
fn gc_removes_old_attachments_not_kept() {
    let temp = tempfile::tempdir().expect("tempdir");
    let store = DirStore::open(temp.path()).expect("open");
    let live = ConnectionId::random();
    let stale = ConnectionId::random();
    let also_stale = ConnectionId::random();
    for id in [live, stale, also_stale] {
        store.put(id, b"x").expect("put");
    }
    // Nothing is an hour old yet.
    assert_eq!(
        store.gc(Duration::from_secs(3600), |_| false).expect("gc"),
        0
    );
    assert_eq!(store.list().expect("list").len(), 3);

    // Age `stale` by an hour and a bit.
    let old = SystemTime::now() - Duration::from_secs(3700);
    File::options()
        .write(true)
        .open(store.attachment_path(stale))
        .and_then(|file| file.set_modified(old))
        .expect("set mtime");
    assert_eq!(
        store.gc(Duration::from_secs(3600), |_| false).expect("gc"),
        1
    );
    assert_eq!(store.get(stale).expect("get"), None);

    assert_eq!(store.gc(Duration::ZERO, |id| id == live).expect("gc"), 1);
    let remaining: Vec<_> = store
        .list()
        .expect("list")
        .into_iter()
        .map(|entry| entry.id)
        .collect();
    assert_eq!(remaining, vec![live]);
}

#[test]
fn names_are_classified_strictly() {
    let id = ConnectionId::random();
    assert!(
        matches!(classify(OsStr::new(&format!("{id}.att"))), Name::Attachment(found) if found == id)
    );
    assert!(matches!(classify(OsStr::new(".lock")), Name::Lock));
    assert!(matches!(
        classify(OsStr::new(&format!(".{id}.00112233445566ff.tmp"))),
        Name::Temp
    ));
    for other in [
        "..".to_owned(),
        ".att".to_owned(),
        format!("../{id}.att"),
        format!("{id}.tmp"),
        format!(".{id}.00112233445566FF.tmp"),
        format!(".{id}.00112233445566f.tmp"),
        format!(".{id}..tmp"),
        format!("{id}"),
    ] {
        assert!(
            matches!(classify(OsStr::new(&other)), Name::Other),
            "{other}"
        );
    }
}
