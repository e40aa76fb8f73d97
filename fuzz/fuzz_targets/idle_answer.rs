//! An idle connection answering raw input in place ([`IdleConnection::answer`]), checked
//! against a whole connection given the same bytes.
//!
//! The input arrives in arbitrary chunks, kept and fed again as a server's sleepers do.
//! Invariants: nothing panics; what the idle connection answers, a whole connection of the
//! same role and settings answers with exactly the same bytes and with no event but pings and
//! pongs (and the same auto-response count); it answers no frame once its replies reach the
//! output budget (none: unlimited); what it stops at, the connection it resumes into takes
//! without panicking.

#![no_main]

use std::{sync::Arc, time::Instant};

use arbitrary::Arbitrary;
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use roost_fuzz::Blob;
use roost_proto::{AutoResponse, Config, Connection, Event, IdleConnection, Message, Negotiated};

#[derive(Arbitrary, Debug)]
struct Input {
    client: bool,
    no_masking: bool,
    auto_response: Option<(String, String)>,
    mask_seed: u32,
    max_output: Option<u16>,
    chunks: Vec<Blob>,
}

/// The same masking keys for both connections, so their output can be compared.
fn masks(seed: u32) -> impl FnMut() -> [u8; 4] + Send {
    let mut state = seed;
    move || {
        state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        state.to_le_bytes()
    }
}

fn connection(input: &Input) -> Connection {
    let negotiated = Negotiated {
        deflate: None,
        no_masking: input.no_masking,
    };
    let mut connection = if input.client {
        Connection::client(Config::default(), negotiated, masks(input.mask_seed))
    } else {
        Connection::server(Config::default(), negotiated)
    };
    connection.set_auto_response(input.auto_response.as_ref().map(|(request, response)| {
        Arc::new(AutoResponse {
            request: request.as_str().into(),
            response: response.as_str().into(),
        })
    }));
    connection
}

fuzz_target!(|input: Input| {
    let mut idle: IdleConnection = connection(&input)
        .into_idle()
        .expect("a fresh connection goes idle");
    let mut whole = connection(&input);
    let now = Instant::now();
    let mut pending = Vec::new();
    let mut replies = BytesMut::new();
    let max_output = input.max_output.map_or(usize::MAX, usize::from);
    for chunk in &input.chunks {
        pending.extend_from_slice(&chunk.0);
        let answered = idle.answer(&pending, &mut replies, max_output);
        assert!(answered.consumed <= pending.len());
        // The budget: no frame is answered once the replies reach it, so they pass it by
        // one reply at most, and what is left then is left with a wake.
        let largest_reply = 14
            + input
                .auto_response
                .as_ref()
                .map_or(0, |(_, r)| r.len())
                .max(125);
        assert!(replies.len() < max_output.saturating_add(largest_reply));
        assert!(
            answered.wake || replies.len() < max_output || answered.consumed == pending.len(),
            "{} bytes of replies, over the budget of {max_output}, and input left without a wake",
            replies.len()
        );
        whole.receive(&pending[..answered.consumed], now);
        while let Some(event) = whole.next_event() {
            assert!(
                matches!(event, Event::Message(Message::Ping(_) | Message::Pong(_))),
                "answered in place, but the whole connection saw {event:?}"
            );
        }
        let expected: Vec<u8> = whole.take_output().flatten().collect();
        assert_eq!(&replies.split()[..], &expected[..]);
        assert_eq!(idle.auto_response_hits(), whole.auto_response_hits());
        pending.drain(..answered.consumed);
        if answered.wake {
            let mut resumed = idle.resume(Config::default());
            resumed.receive(&pending, now);
            while resumed.next_event().is_some() {}
            return;
        }
    }
});
