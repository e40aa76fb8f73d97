//! Regression tests for what fuzzing found, written against the public API so that they can
//! live in the crate they test (see README.md next to this file for where each one goes).
//! Each names the fuzz input it was reduced from, if any; `cargo fuzz run <target> <input>`
//! replays the input itself.

use std::time::Instant;

use roost_proto::{
    AutoResponse, Config, Connection, Event, Frame, Message, Negotiated, OpCode,
};

/// A masked text frame as a client sends it (RFC 6455 §5.3), with a fixed key.
fn masked_text(text: &str) -> Vec<u8> {
    let key = [0x37, 0xfa, 0x21, 0x3d];
    assert!(text.len() < 126, "short form only");
    let mut frame = vec![0x81, 0x80 | text.len() as u8];
    frame.extend_from_slice(&key);
    frame.extend(text.bytes().enumerate().map(|(i, byte)| byte ^ key[i % 4]));
    frame
}

/// Everything a client core reads from `bytes`.
fn read_as_client(bytes: &[u8]) -> Vec<Event> {
    let mut client = Connection::client(Config::default(), Negotiated::default(), || [0; 4]);
    client.receive(bytes, Instant::now());
    std::iter::from_fn(|| client.next_event()).collect()
}

/// fuzz/regressions/connection_server/auto-response-inside-fragmented-send: the server was
/// sending a fragmented message through `send_frame` when the auto-response request arrived;
/// the answer was written between the fragments, a data frame inside another message, which
/// the client must fail with 1002 (RFC 6455 §5.4).
#[test]
fn auto_response_is_not_written_inside_a_fragmented_message() {
    let now = Instant::now();
    let mut server = Connection::server(Config::default(), Negotiated::default());
    server.set_auto_response(Some(AutoResponse {
        request: "ping".into(),
        response: "pong".into(),
    }));
    server
        .send_frame(&Frame::new(false, OpCode::Text, "hel"), now)
        .expect("first fragment");
    server.receive(&masked_text("ping"), now);
    while server.next_event().is_some() {}
    server
        .send_frame(&Frame::new(true, OpCode::Continuation, "lo"), now)
        .expect("last fragment");

    let events = read_as_client(&server.pending_output_chunks().flatten().copied().collect::<Vec<u8>>());
    assert!(
        !events.iter().any(|event| matches!(event, Event::Failed(_))),
        "the server's output is not a valid frame stream: {events:?}"
    );
    assert_eq!(
        events.first(),
        Some(&Event::Message(Message::Text("hello".into()))),
        "{events:?}"
    );
}

/// Found while writing the connection harness, not by a fuzz run (the harness checks it, see
/// `send_frame` in fuzz/src/single.rs, but did not reach it in 7 minutes per target): a text
/// fragment `send_frame` refuses as invalid UTF-8 has already advanced the UTF-8 state, so a
/// later fragment is checked against the wrong state and the peer receives invalid UTF-8.
#[test]
fn a_refused_text_fragment_does_not_corrupt_the_utf8_check() {
    let now = Instant::now();
    let mut server = Connection::server(Config::default(), Negotiated::default());
    // "€" is E2 82 AC: the first fragment ends inside it.
    server
        .send_frame(&Frame::new(false, OpCode::Text, &b"\xE2\x82"[..]), now)
        .expect("a code point cut by a fragment boundary is fine");
    // Completes "€", then a byte that is never valid: refused, nothing written.
    assert!(
        server
            .send_frame(&Frame::new(false, OpCode::Continuation, &b"\xAC\xFF"[..]), now)
            .is_err()
    );
    // The message so far is E2 82; ending it with "a" makes it invalid, so this must fail too.
    let last = server.send_frame(&Frame::new(true, OpCode::Continuation, &b"a"[..]), now);
    let events = read_as_client(&server.pending_output_chunks().flatten().copied().collect::<Vec<u8>>());
    assert!(
        last.is_err(),
        "accepted a fragment that ends the text message in invalid UTF-8; the peer read \
         {events:?}"
    );
}
