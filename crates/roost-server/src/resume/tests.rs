use std::sync::Arc;
use std::thread;

use super::*;

/// A fixed moment, so tests do not depend on the clock.
fn at(seconds: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(seconds)
}

const NOW: u64 = 1_800_000_000;

#[test]
fn issued_token_verifies() {
    let key = ResumeKey::random();
    let id = ConnectionId::random();
    let token = key.issue(id, at(NOW + 60));
    assert_eq!(token.len(), TOKEN_LEN);
    assert_eq!(TOKEN_LEN, 55);
    assert!(
        token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "url-safe: {token}"
    );
    assert_eq!(key.verify(&token, at(NOW)).expect("verify"), id);
    assert_eq!(
        key.verify_claims(&token, at(NOW + 59)).expect("verify"),
        ResumeClaims {
            id,
            expires_at: at(NOW + 60)
        }
    );
}

#[test]
fn tokens_differ_by_key_and_id() {
    let key = ResumeKey::random();
    let id = ConnectionId::random();
    let token = key.issue(id, at(NOW + 60));
    assert_eq!(token, key.issue(id, at(NOW + 60)), "deterministic");
    assert_ne!(token, key.issue(ConnectionId::random(), at(NOW + 60)));
    assert_ne!(token, ResumeKey::random().issue(id, at(NOW + 60)));
}

#[test]
fn every_tampered_character_is_refused() {
    let key = ResumeKey::random();
    let token = key.issue(ConnectionId::random(), at(NOW + 60));
    for index in 0..token.len() {
        let mut bytes = token.clone().into_bytes();
        bytes[index] = if bytes[index] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes).expect("ascii");
        let error = key.verify(&tampered, at(NOW)).expect_err("tampered");
        // The last character carries 2 padding bits that must be zero, so changing it can
        // also make the text non-canonical base64.
        assert!(
            matches!(
                error,
                ResumeError::BadSignature | ResumeError::Malformed { .. }
            ),
            "index {index}: {error:?}"
        );
        if index < token.len() - 1 && index > 1 {
            assert!(
                matches!(error, ResumeError::BadSignature),
                "index {index}: {error:?}"
            );
        }
    }
}

#[test]
fn tampered_expiry_is_a_bad_signature() {
    let key = ResumeKey::random();
    let token = key.issue(ConnectionId::random(), at(NOW + 60));
    let mut raw = URL_SAFE_NO_PAD.decode(&token).expect("decode");
    raw[CLAIMS_LEN - 1] ^= 0x01;
    let tampered = URL_SAFE_NO_PAD.encode(&raw);
    assert!(matches!(
        key.verify(&tampered, at(NOW)),
        Err(ResumeError::BadSignature)
    ));
}

#[test]
fn another_keys_token_is_a_bad_signature() {
    let token = ResumeKey::random().issue(ConnectionId::random(), at(NOW + 60));
    let error = ResumeKey::random()
        .verify(&token, at(NOW))
        .expect_err("other key");
    assert!(matches!(error, ResumeError::BadSignature));
    let message = error.to_string();
    assert!(
        message.contains("not signed with this server's key"),
        "{message}"
    );
    assert!(message.contains("new key at each start"), "{message}");
}

#[test]
fn expired_token_is_refused() {
    let key = ResumeKey::random();
    let token = key.issue(ConnectionId::random(), at(NOW + 60));
    let error = key.verify(&token, at(NOW + 60)).expect_err("expired");
    assert!(matches!(error, ResumeError::Expired));
    assert_eq!(error.to_string(), "resume token has expired");
    assert!(matches!(
        key.verify(&token, at(NOW + 3600)),
        Err(ResumeError::Expired)
    ));
    let before_epoch = key.issue(ConnectionId::random(), UNIX_EPOCH - Duration::from_secs(1));
    assert!(matches!(
        key.verify(&before_epoch, at(NOW)),
        Err(ResumeError::Expired)
    ));
}

#[test]
fn an_expired_forgery_reports_the_signature() {
    let token = ResumeKey::random().issue(ConnectionId::random(), at(NOW - 60));
    assert!(matches!(
        ResumeKey::random().verify(&token, at(NOW)),
        Err(ResumeError::BadSignature)
    ));
}

#[test]
fn garbage_is_malformed() {
    let key = ResumeKey::random();
    let valid = key.issue(ConnectionId::random(), at(NOW + 60));
    let huge = "A".repeat(10 * 1024 * 1024);
    let cases = [
        String::new(),
        "x".to_owned(),
        "../../etc/passwd".to_owned(),
        valid[..TOKEN_LEN - 1].to_owned(),
        format!("{valid}A"),
        format!("{valid}="),
        valid.replace('A', "+"),
        format!("{}/", &valid[..TOKEN_LEN - 1]),
        format!("{}%", &valid[..TOKEN_LEN - 1]),
        format!("{}é", &valid[..TOKEN_LEN - 2]),
        " ".repeat(TOKEN_LEN),
        huge,
    ];
    for case in &cases {
        if case == &valid {
            continue;
        }
        let error = key.verify(case, at(NOW)).expect_err("garbage");
        assert!(
            matches!(error, ResumeError::Malformed { .. }),
            "{:?}: {error:?}",
            &case[..case.len().min(80)]
        );
        assert!(error.to_string().starts_with("malformed resume token: "));
    }
}

#[test]
fn unknown_version_is_malformed() {
    let key = ResumeKey::random();
    let token = key.issue(ConnectionId::random(), at(NOW + 60));
    let mut raw = URL_SAFE_NO_PAD.decode(&token).expect("decode");
    raw[0] = 2;
    let error = key
        .verify(&URL_SAFE_NO_PAD.encode(&raw), at(NOW))
        .expect_err("version");
    assert_eq!(error.to_string(), "malformed resume token: unknown version");
}

#[test]
fn key_debug_hides_the_secret() {
    let key = ResumeKey::from_bytes([0xab; 32]);
    assert_eq!(format!("{key:?}"), "ResumeKey(..)");
}

#[test]
fn key_is_created_once_and_reloaded() {
    let temp = tempfile::tempdir().expect("tempdir");
    let dir = temp.path().join("durable");
    let key = ResumeKey::load_or_create(&dir).expect("create");
    let token = key.issue(ConnectionId::random(), at(NOW + 60));
    let path = dir.join(KEY_FILE_NAME);
    assert_eq!(fs::read(&path).expect("read").len(), 32);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |path: &Path| fs::metadata(path).expect("metadata").permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&dir), 0o700);
    }
    let again = ResumeKey::load_or_create(&dir).expect("load");
    assert!(
        again.verify(&token, at(NOW)).is_ok(),
        "same key after reload"
    );
    let names: Vec<_> = fs::read_dir(&dir)
        .expect("read_dir")
        .map(|entry| entry.expect("entry").file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from(KEY_FILE_NAME)]);
}

#[test]
fn key_of_the_wrong_length_is_refused() {
    let temp = tempfile::tempdir().expect("tempdir");
    let path = temp.path().join(KEY_FILE_NAME);
    for (content, reported) in [(vec![7u8; 31], 31), (vec![7u8; 4096], 33), (Vec::new(), 0)] {
        fs::write(&path, &content).expect("write");
        let error = ResumeKey::load_or_create(temp.path()).expect_err("wrong length");
        assert!(
            matches!(&error, ResumeError::KeyLength { len, .. } if *len == reported),
            "{error:?}"
        );
        assert!(error.to_string().contains("expected 32"), "{error}");
        assert_eq!(fs::read(&path).expect("read"), content, "left untouched");
    }
}

#[test]
fn leftover_temporary_key_is_removed() {
    let temp = tempfile::tempdir().expect("tempdir");
    let leftover = temp
        .path()
        .join(format!(".{KEY_FILE_NAME}.0123456789abcdef.tmp"));
    fs::write(&leftover, [1u8; 5]).expect("write");
    ResumeKey::load_or_create(temp.path()).expect("create");
    assert!(!leftover.exists());
}

#[test]
fn concurrent_creation_agrees_on_one_key() {
    let temp = tempfile::tempdir().expect("tempdir");
    let dir = Arc::new(temp.path().to_owned());
    let id = ConnectionId::random();
    let tokens: Vec<String> = (0..8)
        .map(|_| {
            let dir = Arc::clone(&dir);
            thread::spawn(move || {
                ResumeKey::load_or_create(dir.as_path())
                    .expect("load or create")
                    .issue(id, at(NOW + 60))
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|handle| handle.join().expect("join"))
        .collect();
    assert!(tokens.windows(2).all(|pair| pair[0] == pair[1]));
}

#[test]
fn key_directory_that_is_a_file_fails_cleanly() {
    let temp = tempfile::tempdir().expect("tempdir");
    let file = temp.path().join("durable");
    fs::write(&file, b"x").expect("write");
    let error = ResumeKey::load_or_create(&file).expect_err("not a directory");
    assert!(std::error::Error::source(&error).is_some() || matches!(error, ResumeError::Store(_)));
}

#[test]
fn used_tokens_consume_once() {
    let used = UsedTokens::new();
    let id = ConnectionId::random();
    assert!(used.is_empty());
    assert!(used.consume(id, at(NOW + 60), at(NOW)));
    assert!(!used.consume(id, at(NOW + 60), at(NOW + 1)));
    assert!(
        !used.consume(id, at(NOW + 120), at(NOW + 2)),
        "by id, whatever the expiry"
    );
    assert!(used.consume(ConnectionId::random(), at(NOW + 60), at(NOW)));
    assert_eq!(used.len(), 2);
}

#[test]
fn a_released_token_can_be_used_again() {
    let used = UsedTokens::new();
    let (id, other) = (ConnectionId::random(), ConnectionId::random());
    assert!(used.consume(id, at(NOW + 60), at(NOW)));
    assert!(used.consume(other, at(NOW + 60), at(NOW)));
    used.release(id);
    assert_eq!(used.len(), 1);
    assert!(used.consume(id, at(NOW + 60), at(NOW + 1)));
    assert!(!used.consume(other, at(NOW + 60), at(NOW + 1)));
    // Releasing what is not held changes nothing.
    used.release(ConnectionId::random());
    assert_eq!(used.len(), 2);
}

#[test]
fn used_tokens_forget_after_expiry() {
    let used = UsedTokens::new();
    let short = ConnectionId::random();
    let long = ConnectionId::random();
    assert!(used.consume(short, at(NOW + 10), at(NOW)));
    assert!(used.consume(long, at(NOW + 100), at(NOW)));
    // The next consume at NOW + 10 forgets `short`, whose token is now refused by verify.
    assert!(used.consume(ConnectionId::random(), at(NOW + 50), at(NOW + 10)));
    assert_eq!(used.len(), 2);
    assert!(!used.consume(long, at(NOW + 100), at(NOW + 10)));
    // An already expired token is never recorded.
    assert!(!used.consume(ConnectionId::random(), at(NOW + 5), at(NOW + 10)));
    assert!(!used.consume(ConnectionId::random(), at(NOW + 500), at(NOW + 500)));
    assert!(used.is_empty(), "everything expired by NOW + 500");
}

#[test]
fn used_tokens_memory_is_bounded_by_live_tokens() {
    let used = UsedTokens::new();
    for second in 0..10_000 {
        assert!(used.consume(
            ConnectionId::random(),
            at(NOW + second + 60),
            at(NOW + second)
        ));
    }
    // Only tokens expiring after the last `now` remain: one per second for 60 seconds.
    assert_eq!(used.len(), 60);
}

#[test]
fn used_tokens_have_one_winner_across_threads() {
    let used = Arc::new(UsedTokens::new());
    let id = ConnectionId::random();
    let winners = (0..8)
        .map(|_| {
            let used = Arc::clone(&used);
            thread::spawn(move || used.consume(id, at(NOW + 60), at(NOW)))
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|handle| handle.join().expect("join"))
        .filter(|won| *won)
        .count();
    assert_eq!(winners, 1);
}

#[test]
fn handles_are_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<ResumeKey>();
    assert_send_sync::<UsedTokens>();
}
