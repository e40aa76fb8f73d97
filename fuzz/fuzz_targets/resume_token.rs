//! Resume tokens and the used-token set.
//!
//! Invariants: verifying any text never panics; whatever verifies is exactly the token the
//! key issues for the claims it carries (one spelling per token, so no altered text passes),
//! and is not yet expired; an issued token verifies to its id until its expiry and not from
//! then on, and under no other key; a token altered anywhere is refused; `UsedTokens`
//! consumes each id once per token lifetime, exactly as a simple model says.

#![no_main]

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use roost_server::resume::{ResumeError, ResumeKey, TOKEN_LEN, UsedTokens};
use roost_server::store::ConnectionId;

#[derive(Arbitrary, Debug)]
struct Input {
    key: [u8; 32],
    ops: Vec<Op>,
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// Verify arbitrary text at a time (seconds, nanoseconds).
    Verify { token: String, now: (u64, u32) },
    /// Issue, then verify at a time and alter one character.
    Issue {
        id: [u8; 16],
        expires: u64,
        now: (u64, u32),
        position: u8,
        replacement: u8,
    },
    /// Consume a token for one of eight ids.
    Consume { id: u8, expires: u32, now: u32 },
}

fuzz_target!(|input: Input| {
    let key = ResumeKey::from_bytes(input.key);
    let mut other_key_bytes = input.key;
    other_key_bytes[0] ^= 1;
    let other_key = ResumeKey::from_bytes(other_key_bytes);
    let used = UsedTokens::new();
    let mut model: HashMap<u8, u32> = HashMap::new();

    for op in input.ops {
        match op {
            Op::Verify { token, now } => {
                let Some(now) = time(now.0, now.1) else {
                    continue;
                };
                if let Ok(claims) = key.verify_claims(&token, now) {
                    assert_eq!(key.issue(claims.id, claims.expires_at), token);
                    assert!(claims.expires_at > now);
                }
            }
            Op::Issue {
                id,
                expires,
                now,
                position,
                replacement,
            } => {
                let (Some(expires_at), Some(now)) = (time(expires, 0), time(now.0, now.1)) else {
                    continue;
                };
                let id = ConnectionId::from_bytes(id);
                let token = key.issue(id, expires_at);
                assert_eq!(token.len(), TOKEN_LEN);
                assert!(
                    token
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                );
                match key.verify(&token, now) {
                    Ok(verified) => {
                        assert!(now < expires_at);
                        assert_eq!(verified, id);
                    }
                    Err(ResumeError::Expired) => assert!(now >= expires_at),
                    Err(error) => panic!("an issued token refused: {error}"),
                }
                assert!(other_key.verify(&token, UNIX_EPOCH).is_err());
                let mut altered = token.clone().into_bytes();
                let index = usize::from(position) % altered.len();
                altered[index] = replacement;
                if let Ok(altered) = String::from_utf8(altered)
                    && altered != token
                {
                    assert!(
                        key.verify(&altered, UNIX_EPOCH).is_err(),
                        "{altered} passed"
                    );
                }
            }
            Op::Consume { id, expires, now } => {
                let id = id % 8;
                let at = |seconds: u32| UNIX_EPOCH + Duration::from_secs(u64::from(seconds));
                let consumed =
                    used.consume(ConnectionId::from_bytes([id; 16]), at(expires), at(now));
                model.retain(|_, expiry| *expiry > now);
                let expected = expires > now && !model.contains_key(&id);
                if expected {
                    model.insert(id, expires);
                }
                assert_eq!(consumed, expected);
                assert_eq!(used.len(), model.len());
            }
        }
    }
});

/// `seconds` and `nanos` after the epoch, if the platform's clock can hold it.
fn time(seconds: u64, nanos: u32) -> Option<SystemTime> {
    UNIX_EPOCH.checked_add(Duration::new(seconds, nanos % 1_000_000_000))
}
