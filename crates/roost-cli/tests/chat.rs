//! The `roost serve --app chat` binary as users run it: durable attachments across kill -9,
//! graceful SIGTERM, resume after restarts.

#![allow(clippy::unwrap_used)]

use std::{
    collections::BTreeSet,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use roost::{CloseCode, Message};

mod common;

use common::{LIMIT, Server, join, next_text, within};

fn serve_chat(dir: &Path) -> Server {
    let dir = dir.to_str().unwrap();
    common::serve(&["--app", "chat", "--durable", dir])
}

fn attachment_ids(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir.join("ws"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter_map(|name| name.strip_suffix(".att").map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn every_acknowledged_attachment_survives_kill_9_and_resumes_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve_chat(dir.path());
    let mut clients = Vec::new();
    for i in 0..20 {
        // `hello` is only sent once the name is on disk: each of these is acknowledged.
        clients.push((
            format!("user{i}"),
            join(server.addr, "crash", &format!("user{i}")).await,
        ));
    }
    let before = attachment_ids(dir.path());
    assert_eq!(before.len(), 20);
    drop(server); // SIGKILL: no chance to clean up or flush anything
    let server = serve_chat(dir.path());
    for (name, (_old, token)) in &clients {
        let url = format!("ws://{}/chat/crash?resume={token}", server.addr);
        let (mut ws, _) = within(roost::connect(&url)).await.unwrap();
        assert_eq!(next_text(&mut ws).await, format!("welcome back {name}"));
        assert!(
            next_text(&mut ws).await.starts_with("resume "),
            "a fresh token follows"
        );
        within(ws.send(Message::text("still me"))).await.unwrap();
        assert_eq!(next_text(&mut ws).await, format!("{name}: still me"));
        // The token worked once: a second use is refused.
        let error = within(roost::connect(&url)).await.unwrap_err();
        assert!(error.to_string().contains("401"), "{error}");
    }
    let after = attachment_ids(dir.path());
    assert_eq!(
        after.len(),
        20,
        "every attachment moved to its new connection"
    );
    assert!(
        after.is_disjoint(&before),
        "new connection ids never reuse old ones"
    );
}

#[tokio::test]
async fn sigterm_closes_with_1001_keeps_files_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = serve_chat(dir.path());
    let (mut ws, token) = join(server.addr, "lobby", "grace").await;
    server.sigterm();
    let mut close = None;
    while let Some(message) = within(ws.recv()).await {
        if let Ok(Message::Close(frame)) = message {
            close = frame;
        }
    }
    assert_eq!(close.map(|f| f.code), Some(CloseCode::GOING_AWAY));
    let exit = server.exit_status().await;
    assert!(exit.success(), "exit status {exit}");
    assert_eq!(
        attachment_ids(dir.path()).len(),
        1,
        "the graceful shutdown kept the attachment"
    );
    let server = serve_chat(dir.path());
    let url = format!("ws://{}/chat/lobby?resume={token}", server.addr);
    let (mut ws, _) = within(roost::connect(&url)).await.unwrap();
    assert_eq!(next_text(&mut ws).await, "welcome back grace");
}

fn roost(args: &[&str], dir: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_roost"))
        .args(args)
        .arg(dir)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap()
}

#[tokio::test]
async fn operators_list_show_and_collect_attachments() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve_chat(dir.path());
    let (_ws, _) = join(server.addr, "ops", "operator-visible").await;
    let listed = roost(&["attachments", "list"], dir.path());
    assert!(listed.status.success());
    let listed = String::from_utf8(listed.stdout).unwrap();
    let id = attachment_ids(dir.path()).into_iter().next().unwrap();
    assert!(listed.contains(&id), "{listed}");
    let shown = Command::new(env!("CARGO_BIN_EXE_roost"))
        .args(["attachments", "show"])
        .arg(dir.path())
        .arg(&id)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8(shown.stdout).unwrap().trim(),
        "\"operator-visible\""
    );
    let refused = roost(&["attachments", "gc", "--older-than", "0s"], dir.path());
    assert!(
        !refused.status.success(),
        "gc is refused while the server uses the directory"
    );
    assert!(String::from_utf8_lossy(&refused.stderr).contains("stop the server"));
    drop(server);
    let collected = roost(&["attachments", "gc", "--older-than", "0s"], dir.path());
    assert!(collected.status.success(), "{collected:?}");
    assert!(attachment_ids(dir.path()).is_empty());
}

/// `roost connect -H` sends request headers: a server that checks Origin lets it in with
/// the right one, and without it the refusal says why.
#[test]
fn connect_sends_headers_and_shows_why_it_was_refused() {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let server = common::serve(&["--app", "chat", "--allow-origin", "https://ok.example"]);
    let url = format!("ws://{}/chat/lobby", server.addr);
    let connect = |extra: &[&str]| {
        let mut client = Command::new(env!("CARGO_BIN_EXE_roost"))
            .arg("connect")
            .args(extra)
            .arg(&url)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The name, then end of input: the client closes with 1000 and exits.
        // A refused client may be gone before it reads: a broken pipe here is no failure.
        let _ = client.stdin.take().unwrap().write_all(b"ada\n");
        let started = Instant::now();
        while client.try_wait().unwrap().is_none() {
            if started.elapsed() > LIMIT {
                let _ = client.kill();
                panic!("roost connect still runs after {LIMIT:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        client.wait_with_output().unwrap()
    };
    let refused = connect(&[]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        stderr.contains("403") && stderr.contains("origin not allowed"),
        "{stderr}"
    );
    let let_in = connect(&["-H", "Origin: https://ok.example"]);
    let stderr = String::from_utf8_lossy(&let_in.stderr);
    assert!(let_in.status.success(), "{stderr}");
    assert!(stderr.contains("connected to"), "{stderr}");
    assert!(String::from_utf8_lossy(&let_in.stdout).contains("hello ada"));
}

/// The server's limits are flags of `roost serve`: a quiet client is pinged after
/// `--ping-interval`, a name over `--max-attachment-size` is refused with 1008 and the
/// limit, and a token is refused once `--resume-ttl` has passed.
#[tokio::test]
async fn the_server_settings_are_taken_from_the_command_line() {
    let server = common::serve(&[
        "--app",
        "chat",
        "--ping-interval",
        "0.2",
        "--max-attachment-size",
        "12",
        "--resume-ttl",
        "1",
    ]);
    let (mut ws, token) = join(server.addr, "lobby", "short").await;
    match within(ws.recv()).await {
        Some(Ok(Message::Ping(_))) => {}
        other => panic!("expected a keepalive ping, got {other:?}"),
    }
    drop(ws); // no close frame: the session stays for a resume, until the token expires

    let (mut ws, _) = within(roost::connect(&format!("ws://{}/chat/lobby", server.addr)))
        .await
        .unwrap();
    // 15 bytes as JSON: over the 12 allowed.
    within(ws.send(Message::text("a longer name")))
        .await
        .unwrap();
    match within(ws.recv()).await {
        Some(Ok(Message::Close(Some(frame)))) => {
            assert_eq!(frame.code, CloseCode::POLICY_VIOLATION);
            assert!(frame.reason.contains("at most 12 bytes"), "{frame:?}");
        }
        other => panic!("expected a close frame, got {other:?}"),
    }

    // Tokens carry whole seconds: past 1 s and the next second boundary, it has expired.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let url = format!("ws://{}/chat/lobby?resume={token}", server.addr);
    let error = within(roost::connect(&url)).await.unwrap_err().to_string();
    assert!(
        error.contains("401") && error.contains("expired"),
        "{error}"
    );
}
