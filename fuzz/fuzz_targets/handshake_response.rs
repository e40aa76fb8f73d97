//! The client's side of the opening handshake: `ClientHandshake::feed` with arbitrary bytes
//! in arbitrary chunks, after a request built from arbitrary settings.
//!
//! Input: 8 settings bytes (chunking, extension settings, TLS, protocols offered, limits),
//! then the server's response. The key is fixed ([`KEY`]), so a response that carries its
//! accept value ([`ACCEPT`]) lets the fuzzer reach
//! the protocol and extension checks.
//!
//! Invariants: the outcome does not depend on how the bytes were cut; a spent handshake says
//! so; an accepted response is a 101 over HTTP/1.1 with the right accept value; the protocol
//! chosen is one that was offered; the negotiated extensions are ones that were offered, with
//! parameters the client can honour (no-masking only over TLS, a window of at least 9 bits
//! for our compressor, no larger window for the server than the client allowed).

#![no_main]

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use http::{HeaderMap, header};
use libfuzzer_sys::fuzz_target;
use roost_fuzz::settings::window_bits;
use roost_fuzz::settings_and_rest;
use roost_fuzz::wire::Chunking;
use roost_proto::handshake::{ClientAccepted, ClientHandshake, accept_key};
use roost_proto::{Config, DeflateConfig, HandshakeError};

/// The client's key (RFC 6455 §4.1 nonce), fixed so that seeds can carry the accept value.
const KEY: [u8; 16] = *b"roost-fuzz-key!!";

/// The `Sec-WebSocket-Accept` value for [`KEY`] (RFC 6455 §1.3), as the seeds carry it.
const ACCEPT: &str = "qrDf9AC59ACsViwhFsPhXsCuXEo=";

/// The subprotocols the client may offer, chosen by the bits of one settings byte.
const PROTOCOLS: [&str; 3] = ["chat", "superchat", "v2.json"];

type Outcome = Result<Option<ClientAccepted>, HandshakeError>;

fuzz_target!(|data: &[u8]| {
    let (s, response) = settings_and_rest::<8>(data);
    let chunking = Chunking::from_bits(u16::from_le_bytes([s[0], s[1]]));
    let deflate = DeflateConfig {
        enabled: s[2] & 1 == 0,
        server_no_context_takeover: s[2] & 2 != 0,
        client_no_context_takeover: s[2] & 4 != 0,
        server_max_window_bits: window_bits(s[3]),
        client_max_window_bits: window_bits(s[3] >> 3),
        ..DeflateConfig::default()
    };
    let secure = s[2] & 8 != 0;
    let config = Config::builder()
        .deflate(deflate.clone())
        .dangerous_no_masking(s[2] & 16 != 0)
        .max_headers(if s[5] == 0 { 64 } else { usize::from(s[5]) })
        .build()
        .expect("valid by construction");
    let protocols: Vec<String> = PROTOCOLS
        .iter()
        .enumerate()
        .filter(|(index, _)| s[4] & (1 << index) != 0)
        .map(|(_, protocol)| (*protocol).to_owned())
        .collect();
    let uri: http::Uri = if secure {
        "wss://example.com/chat"
    } else {
        "ws://example.com/chat"
    }
    .parse()
    .expect("a valid URI");
    let start = || {
        ClientHandshake::new(&config, &uri, KEY, &protocols, &HeaderMap::new(), secure)
            .expect("a valid request")
            .0
    };

    let mut client = start();
    let mut outcome: Outcome = Ok(None);
    let mut unfed = Vec::new();
    for chunk in chunking.chunks(response) {
        if matches!(outcome, Ok(None)) {
            outcome = client.feed(chunk);
        } else {
            unfed.extend_from_slice(chunk);
        }
    }
    let whole = start().feed(response);
    same_outcome(&outcome, &unfed, &whole);
    if !matches!(outcome, Ok(None)) {
        assert!(matches!(
            client.feed(b"x"),
            Err(HandshakeError::AlreadyFinished)
        ));
    }

    let Ok(Some(accepted)) = outcome else {
        return;
    };
    let response = &accepted.response;
    assert_eq!(response.status(), http::StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(response.version(), http::Version::HTTP_11);
    let expected_accept = accept_key(BASE64.encode(KEY).as_bytes());
    assert_eq!(expected_accept, ACCEPT);
    let accept = response.headers().get(header::SEC_WEBSOCKET_ACCEPT);
    assert_eq!(
        accept.map(|value| value.as_bytes().trim_ascii()),
        Some(expected_accept.as_bytes())
    );
    if let Some(protocol) = &accepted.protocol {
        assert!(
            protocols.contains(protocol),
            "protocol {protocol:?} was not offered"
        );
    }
    let negotiated = &accepted.negotiated;
    if negotiated.no_masking {
        assert!(config.no_masking() && secure, "no-masking was not offered");
    }
    if let Some(params) = negotiated.deflate {
        assert!(deflate.enabled, "permessage-deflate was not offered");
        assert!((9..=15).contains(&params.client_max_window_bits));
        assert!((8..=15).contains(&params.server_max_window_bits));
        // We asked for at most this window (8 is asked as 9, see roost_proto::deflate).
        let allowed = deflate.server_max_window_bits.max(9);
        assert!(params.server_max_window_bits <= allowed);
        if deflate.server_no_context_takeover {
            assert!(params.server_no_context_takeover);
        }
        if deflate.client_no_context_takeover {
            assert!(params.client_no_context_takeover);
        }
    }
});

fn same_outcome(chunked: &Outcome, unfed: &[u8], whole: &Outcome) {
    match (chunked, whole) {
        (Ok(Some(a)), Ok(Some(b))) => {
            assert_eq!(a.response.status(), b.response.status());
            assert_eq!(a.response.headers(), b.response.headers());
            assert_eq!(a.protocol, b.protocol);
            assert_eq!(a.negotiated, b.negotiated);
            assert_eq!([&a.leftover[..], unfed].concat(), &b.leftover[..]);
        }
        (Ok(None), Ok(None)) => {}
        (
            Err(HandshakeError::UnexpectedStatus {
                status: a,
                body: part,
                ..
            }),
            Err(HandshakeError::UnexpectedStatus {
                status: b,
                body: all,
                ..
            }),
        ) => {
            // The body line is what came with the head: a split can cut it short (a character
            // cut in two reads as U+FFFD), never change what it says.
            assert_eq!(a, b);
            let part = part.trim_end_matches('\u{fffd}').trim_end();
            assert!(all.starts_with(part), "chunked body {part:?}, whole {all:?}");
        }
        (Err(a), Err(b)) => assert_eq!(a, b),
        (a, b) => panic!("chunked: {a:?}, whole: {b:?}"),
    }
}
