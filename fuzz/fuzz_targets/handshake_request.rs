//! The server's side of the opening handshake: `RequestReader` fed in arbitrary chunks, then
//! `accept` with an arbitrary hook.
//!
//! Input: 8 settings bytes (chunking, limits, extension settings, hook), then the request.
//!
//! Invariants: the outcome does not depend on how the bytes were cut (same request, same
//! error, same bytes handed on); a spent reader says so; every answer, 101 or refusal, is a
//! well-formed HTTP/1.1 response with the status the error maps to; a refusal's error is the
//! one `validate_request` gives; a 101 carries the right `Sec-WebSocket-Accept`, and a client
//! that sent this request reads the 101 back with the same protocol and, whenever it accepts
//! the extension answer, compatible extensions (equal, except that the client may hold itself
//! to a smaller window or no context takeover).

#![no_main]

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use libfuzzer_sys::fuzz_target;
use roost_fuzz::http_check::parse_response;
use roost_fuzz::settings::window_bits;
use roost_fuzz::settings_and_rest;
use roost_fuzz::wire::Chunking;
use roost_proto::handshake::{
    ClientHandshake, HookResult, Refusal, RequestReader, accept, accept_key, reject_response,
    validate_request,
};
use roost_proto::{Config, DeflateConfig, HandshakeError, Negotiated};

/// What the hook does.
#[derive(Debug, Clone, Copy)]
enum Hook {
    PassThrough,
    /// Choose the first protocol the client offered.
    ChooseOffered,
    /// Choose a protocol nobody offers.
    ChooseUnoffered,
    /// Refuse with this status.
    Refuse(u16),
}

type Outcome = Result<Option<(http::Request<()>, Bytes)>, HandshakeError>;

fuzz_target!(|data: &[u8]| {
    let (s, request) = settings_and_rest::<8>(data);
    let chunking = Chunking::from_bits(u16::from_le_bytes([s[0], s[1]]));
    let config = config(&s);
    let hook = match s[7] % 4 {
        0 => Hook::PassThrough,
        1 => Hook::ChooseOffered,
        2 => Hook::ChooseUnoffered,
        _ => Hook::Refuse(100 + u16::from(s[6]) * 2 % 500),
    };

    // The same bytes, cut in chunks or given at once, give the same outcome.
    let mut reader = RequestReader::new(&config);
    let mut outcome: Outcome = Ok(None);
    let mut unfed = Vec::new();
    for chunk in chunking.chunks(request) {
        if matches!(outcome, Ok(None)) {
            outcome = reader.feed(chunk);
        } else {
            unfed.extend_from_slice(chunk);
        }
    }
    let whole = RequestReader::new(&config).feed(request);
    same_outcome(&outcome, &unfed, &whole);
    if !matches!(outcome, Ok(None)) {
        assert!(matches!(
            reader.feed(b"x"),
            Err(HandshakeError::AlreadyFinished)
        ));
    }

    let request = match outcome {
        Ok(Some((request, _))) => request,
        Ok(None) => return,
        Err(error) => {
            let response = parse_response(&reject_response(&error));
            assert_eq!(response.status, error.status());
            return;
        }
    };
    let validated = validate_request(&request);
    match accept(&config, &request, |request, response| {
        run_hook(hook, request, response)
    }) {
        Ok(accepted) => {
            assert!(validated.is_ok());
            let bytes = accepted.to_bytes();
            let response = parse_response(&bytes);
            assert_eq!(response.status, 101);
            assert_eq!(response.values("upgrade"), [b"websocket"]);
            let key = request
                .headers()
                .get(header::SEC_WEBSOCKET_KEY)
                .expect("validated")
                .as_bytes()
                .trim_ascii();
            assert_eq!(
                response.values("sec-websocket-accept"),
                [accept_key(key).as_bytes()]
            );
            client_reads_back(&config, key, &accepted, &bytes);
        }
        Err(rejected) => {
            let response = parse_response(&rejected.to_bytes());
            assert_eq!(response.status, rejected.response.status().as_u16());
            match (&validated, &rejected.error, hook) {
                (Err(error), rejected, _) => assert_eq!(error, rejected),
                (Ok(()), HandshakeError::Rejected(status), Hook::Refuse(refused)) => {
                    let expected = if refused < 200 { 500 } else { refused };
                    assert_eq!((*status, response.status), (expected, expected));
                }
                (Ok(()), HandshakeError::HookSelectedUnofferedProtocol(_), _) => {
                    assert!(matches!(hook, Hook::ChooseUnoffered | Hook::ChooseOffered));
                    assert_eq!(response.status, 500);
                }
                (Ok(()), HandshakeError::InvalidExtensions(_), _) => {
                    assert_eq!(response.status, 400)
                }
                (Ok(()), other, _) => panic!("a valid request refused with {other:?}"),
            }
        }
    }
});

fn config(s: &[u8; 8]) -> Config {
    let deflate = if s[5] & 1 == 0 {
        DeflateConfig::default()
    } else {
        DeflateConfig {
            enabled: s[5] & 2 != 0,
            server_no_context_takeover: s[5] & 4 != 0,
            client_no_context_takeover: s[5] & 8 != 0,
            server_max_window_bits: window_bits(s[6]),
            client_max_window_bits: window_bits(s[6] >> 3),
            ..DeflateConfig::default()
        }
    };
    let max_handshake_size = match u16::from_le_bytes([s[3], s[4]]) {
        0 => 16 << 10,
        size => 256 + usize::from(size) % 8192,
    };
    Config::builder()
        .max_headers(if s[2] == 0 { 64 } else { usize::from(s[2]) })
        .max_handshake_size(max_handshake_size)
        .deflate(deflate)
        .dangerous_no_masking(s[5] & 16 != 0)
        .build()
        .expect("valid by construction")
}

fn run_hook(hook: Hook, request: &http::Request<()>, mut response: Response<()>) -> HookResult {
    let offered = request
        .headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .flat_map(|value| value.as_bytes().split(|&byte| byte == b','))
        .map(<[u8]>::trim_ascii)
        .find(|item| !item.is_empty())
        .map(|item| HeaderValue::from_bytes(item).expect("part of a header value"));
    match hook {
        Hook::PassThrough => {}
        Hook::ChooseOffered => {
            if let Some(protocol) = offered {
                response
                    .headers_mut()
                    .insert(header::SEC_WEBSOCKET_PROTOCOL, protocol);
            }
        }
        Hook::ChooseUnoffered => {
            response.headers_mut().insert(
                header::SEC_WEBSOCKET_PROTOCOL,
                HeaderValue::from_static("x-never-offered"),
            );
            // The hook cannot change the handshake: these are restored.
            response
                .headers_mut()
                .insert(header::UPGRADE, HeaderValue::from_static("h2c"));
            *response.status_mut() = StatusCode::OK;
        }
        Hook::Refuse(status) => {
            let status = StatusCode::from_u16(status).expect("100..=599");
            return Err(Refusal::new(status, None));
        }
    }
    Ok(response)
}

/// Reads the 101 back as the client that sent the request would.
fn client_reads_back(config: &Config, key: &[u8], accepted: &roost_proto::Accepted, bytes: &[u8]) {
    let Ok(key) = <[u8; 16]>::try_from(BASE64.decode(key).expect("validated")) else {
        panic!("a validated key is 16 bytes");
    };
    let protocols: Vec<String> = accepted.protocol.iter().cloned().collect();
    let uri: http::Uri = "ws://example.com/".parse().expect("a valid URI");
    // A protocol that is no token cannot be offered by our client; nothing to compare then.
    let Ok((mut client, _)) =
        ClientHandshake::new(config, &uri, key, &protocols, &HeaderMap::new(), false)
    else {
        return;
    };
    match client.feed(bytes) {
        Ok(Some(done)) => {
            assert_eq!(done.protocol, accepted.protocol);
            compatible(&done.negotiated, &accepted.negotiated);
            assert!(done.leftover.is_empty());
        }
        // The server answered the request's offer, not the one this client would make.
        Err(HandshakeError::InvalidExtensions(_) | HandshakeError::UnofferedExtension(_)) => {}
        other => panic!("the client cannot read the 101 back: {other:?}"),
    }
}

/// The client read the 101 with the same extensions as the server, except that it may hold
/// itself to more than the server asked: the offer the server answered was the request's, not
/// the one this client would have made, so the client's own limits (a smaller window, no
/// context takeover) can come on top. The server's inflater copes with both.
fn compatible(client: &Negotiated, server: &Negotiated) {
    assert_eq!(client.no_masking, server.no_masking);
    match (client.deflate, server.deflate) {
        (None, None) => {}
        (Some(client), Some(server)) => {
            assert_eq!(client.server_max_window_bits, server.server_max_window_bits);
            assert_eq!(
                client.server_no_context_takeover,
                server.server_no_context_takeover
            );
            assert!(
                client.client_max_window_bits <= server.client_max_window_bits,
                "the client compresses with a larger window than the server inflates"
            );
            assert!(client.client_no_context_takeover || !server.client_no_context_takeover);
        }
        (client, server) => panic!("client {client:?}, server {server:?}"),
    }
}

fn same_outcome(chunked: &Outcome, unfed: &[u8], whole: &Outcome) {
    match (chunked, whole) {
        (Ok(Some((a, rest_a))), Ok(Some((b, rest_b)))) => {
            assert_eq!(a.method(), b.method());
            assert_eq!(a.uri(), b.uri());
            assert_eq!(a.version(), b.version());
            assert_eq!(a.headers(), b.headers());
            assert_eq!([&rest_a[..], unfed].concat(), &rest_b[..]);
        }
        (Ok(None), Ok(None)) => {}
        (Err(a), Err(b)) => assert_eq!(a, b),
        (a, b) => panic!("chunked: {a:?}, whole: {b:?}"),
    }
}
