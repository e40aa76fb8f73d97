//! `kill -9` at any moment loses no acknowledged attachment and leaves no torn file.
//!
//! The test re-executes its own binary with [`CHILD_DIR`] set. In that mode it is the child: it
//! opens a [`DirStore`] and puts, overwrites and removes attachments in a loop, printing one
//! line to stdout after each operation returns. The parent kills it with SIGKILL after a
//! number of acknowledgements, reopens the directory and checks that every acknowledged put
//! is there with that version or a later one, every acknowledged remove is gone, and every
//! file on disk holds a complete version. Several rounds reuse the directory, so each child
//! also recovers from the previous one's crash.
//!
//! SIGKILL tests process crashes, where the page cache survives; the fsyncs that protect against
//! power loss cannot be observed from a test.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use roost_server::store::{AttachmentStore, ConnectionId, DirStore};

/// Set in the child's environment to the durable directory it must write to.
const CHILD_DIR: &str = "ROOST_CRASH_STORE_CHILD_DIR";
/// The most operations one child performs before stopping by itself.
const CHILD_OPERATIONS: u32 = 5_000;
/// How long the parent waits for the child's next line.
const LINE_TIMEOUT: Duration = Duration::from_secs(30);

#[test]
fn sigkill_during_writes_loses_nothing_acknowledged() {
    if let Some(dir) = std::env::var_os(CHILD_DIR) {
        child(Path::new(&dir));
        return;
    }

    let temp = tempfile::tempdir().expect("tempdir");
    let mut expected = Expected::default();
    let kill_points = [1, 37, 150, rand::random_range(1..400)];
    for (round, kill_after) in kill_points.into_iter().enumerate() {
        run_child_and_kill(temp.path(), kill_after, &mut expected);
        check(temp.path(), &expected, round);
    }
    assert!(
        expected.versions.len() > 100,
        "the children acknowledged too little to be a test: {}",
        expected.versions.len()
    );
}

/// What the children acknowledged, by id.
#[derive(Default)]
struct Expected {
    versions: HashMap<ConnectionId, State>,
}

#[derive(Clone, Copy)]
enum State {
    /// This version (or a later one being written) must be on disk.
    Present(u32),
    /// A removal started: the file holds at least this version, or is gone.
    Removing(u32),
    /// The removal was acknowledged: the file must be gone.
    Removed,
}

fn run_child_and_kill(dir: &Path, kill_after: u32, expected: &mut Expected) {
    let exe = std::env::current_exe().expect("current exe");
    let mut child = Command::new(exe)
        .args([
            "sigkill_during_writes_loses_nothing_acknowledged",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("piped stdout");
    let (lines_tx, lines_rx) = mpsc::channel();
    let reader = thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });

    let mut acknowledged = 0;
    let mut killed = false;
    let deadline = Instant::now() + LINE_TIMEOUT * 2;
    loop {
        if !killed && acknowledged >= kill_after {
            // A random delay (up to about two operations) spreads the kill over every step of
            // a put: writing, fsync, rename, directory fsync.
            thread::sleep(Duration::from_micros(rand::random_range(0..20_000)));
            // SIGKILL on Unix: no destructor, no flush, no chance to finish the current write.
            child.kill().expect("kill child");
            killed = true;
        }
        let timeout = deadline
            .saturating_duration_since(Instant::now())
            .min(LINE_TIMEOUT);
        match lines_rx.recv_timeout(timeout) {
            Ok(line) => {
                if record(&line, expected) {
                    acknowledged += 1;
                }
            }
            // The child's stdout is closed: it died or finished; every line it printed is in.
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                panic!("the child stopped making progress");
            }
        }
    }
    child.wait().expect("wait for child");
    reader.join().expect("reader thread");
}

/// Applies one line of the child's output; true if it acknowledged an operation.
fn record(line: &str, expected: &mut Expected) -> bool {
    let mut words = line.split(' ');
    match (words.next(), words.next(), words.next()) {
        (Some("put"), Some(id), Some(version)) => {
            let id = id.parse().expect("id");
            let version = version.parse().expect("version");
            expected.versions.insert(id, State::Present(version));
            true
        }
        (Some("removing"), Some(id), None) => {
            let id = id.parse().expect("id");
            let Some(State::Present(version)) = expected.versions.get(&id).copied() else {
                panic!("removing {id}, which is not present");
            };
            expected.versions.insert(id, State::Removing(version));
            false
        }
        (Some("removed"), Some(id), None) => {
            expected
                .versions
                .insert(id.parse().expect("id"), State::Removed);
            true
        }
        // libtest's own output.
        _ => false,
    }
}

fn check(dir: &Path, expected: &Expected, round: usize) {
    let store = DirStore::open(dir).expect("reopen after the crash");
    assert!(
        store.recovery().unrecognized.is_empty(),
        "round {round}: unrecognized files {:?}",
        store.recovery().unrecognized
    );
    eprintln!(
        "round {round}: {} ids acknowledged so far, {} interrupted writes cleaned up",
        expected.versions.len(),
        store.recovery().temp_files.len()
    );
    let listed = store.list().expect("list");
    let mut on_disk = HashMap::new();
    for attachment in &listed {
        let bytes = store
            .get(attachment.id)
            .expect("get")
            .expect("listed attachment exists");
        let version = parse(attachment.id, &bytes)
            .unwrap_or_else(|| panic!("round {round}: {} is torn or corrupt", attachment.id));
        on_disk.insert(attachment.id, version);
    }
    for (id, acknowledged) in &expected.versions {
        match (*acknowledged, on_disk.get(id)) {
            (State::Present(acknowledged) | State::Removing(acknowledged), Some(&found)) => {
                assert!(
                    found >= acknowledged,
                    "round {round}: {id} went back from version {acknowledged} to {found}"
                );
            }
            (State::Present(acknowledged), None) => {
                panic!("round {round}: acknowledged version {acknowledged} of {id} was lost")
            }
            (State::Removed, Some(found)) => {
                panic!("round {round}: removed {id} came back with version {found}")
            }
            (State::Removing(_) | State::Removed, None) => {}
        }
    }
    // Anything else on disk is a put that completed but was not yet acknowledged: at most one
    // per child, since the child waits for each put to return.
    let unacknowledged = on_disk
        .keys()
        .filter(|id| !expected.versions.contains_key(id))
        .count();
    assert!(
        unacknowledged <= round + 1,
        "round {round}: {unacknowledged} unacknowledged attachments"
    );
}

/// The bytes of version `version` of `id`'s attachment: a header naming both, then a filler of
/// varying length (up to 24 KiB, so a kill often lands inside a write) that depends on both.
fn content(id: ConnectionId, version: u32) -> Vec<u8> {
    let seed = u32::from(id.as_bytes()[0]) * 97 + version * 31;
    let len = (seed as usize * 211) % (24 * 1024);
    let mut bytes = format!("{id} {version}\n").into_bytes();
    bytes.extend(
        (0..len).map(|index| {
            id.as_bytes()[index % 16] ^ (version as u8) ^ (index as u8).wrapping_mul(7)
        }),
    );
    bytes
}

/// The version a stored attachment holds, if it is exactly one complete version of `id`.
fn parse(id: ConnectionId, bytes: &[u8]) -> Option<u32> {
    let newline = bytes.iter().position(|&b| b == b'\n')?;
    let header = std::str::from_utf8(&bytes[..newline]).ok()?;
    let (named, version) = header.split_once(' ')?;
    if named != id.to_string() {
        return None;
    }
    let version = version.parse().ok()?;
    (content(id, version) == bytes).then_some(version)
}

/// The child: writes until killed (or until [`CHILD_OPERATIONS`]), acknowledging each
/// operation on stdout after it returns.
fn child(dir: &Path) {
    let store = DirStore::open(dir).expect("child: open");
    let mut stdout = std::io::stdout().lock();
    // libtest has printed "test NAME ... " without a newline; the first acknowledgement must
    // start a line of its own, or the parent would take it for libtest's output.
    writeln!(stdout).expect("child: stdout");
    let mut live: Vec<(ConnectionId, u32)> = Vec::new();
    for operation in 0..CHILD_OPERATIONS {
        let line = match operation % 8 {
            // Overwrite an existing attachment with its next version.
            3 | 6 if !live.is_empty() => {
                let index = operation as usize % live.len();
                let (id, version) = &mut live[index];
                *version += 1;
                store
                    .put(*id, &content(*id, *version))
                    .expect("child: overwrite");
                format!("put {id} {version}")
            }
            // A peer's clean close.
            7 if live.len() > 4 => {
                let (id, _) = live.swap_remove(operation as usize % live.len());
                // Announced first, so the parent accepts the file's absence if the kill lands
                // after the removal but before its acknowledgement.
                writeln!(stdout, "removing {id}").expect("child: stdout");
                stdout.flush().expect("child: flush");
                store.remove(id).expect("child: remove");
                format!("removed {id}")
            }
            _ => {
                let id = ConnectionId::random();
                store.put(id, &content(id, 0)).expect("child: put");
                live.push((id, 0));
                format!("put {id} 0")
            }
        };
        writeln!(stdout, "{line}").expect("child: stdout");
        stdout.flush().expect("child: flush");
    }
}
