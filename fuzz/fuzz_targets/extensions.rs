//! The `Sec-WebSocket-Extensions` parser and both negotiators.
//!
//! Input: 16 settings bytes (the server's and the client's extension settings, TLS), then
//! header text; each line is one header value.
//!
//! Invariants:
//! - parsing never panics; what it accepts is tokens only, and re-rendering the parsed offers
//!   parses back to the same offers;
//! - `negotiate_server` fails exactly when the header does not parse; its answer parses, says
//!   exactly what was negotiated (each parameter present if and only if it is in force, with
//!   its value), honours the server's configuration, accepts the first acceptable
//!   permessage-deflate offer (the one it would accept on its own, with the same result) and
//!   answers it as RFC 7692 §7.1 allows (no window larger than offered, no
//!   `client_max_window_bits` the client did not announce, its `*_no_context_takeover`
//!   requests kept);
//! - what a server answers to a real client's offer, that client accepts, and both sides end
//!   up with the same `Negotiated`; permessage-deflate is agreed whenever both enable it;
//! - `negotiate_client` on any answer accepts only what the client offered and can honour.

#![no_main]

use http::header::SEC_WEBSOCKET_EXTENSIONS;
use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use roost_fuzz::settings::window_bits;
use roost_fuzz::settings_and_rest;
use roost_proto::extension::{
    ExtensionOffer, client_offer, negotiate_client, negotiate_server, parse_extensions,
};
use roost_proto::{Config, DeflateConfig, HandshakeError, Negotiated};

fuzz_target!(|data: &[u8]| {
    let (settings, header) = settings_and_rest::<16>(data);
    let server = config(&settings[..8]);
    let client = config(&settings[8..]);
    let secure = settings[15] & 1 != 0;

    // Header values as an HTTP library would hand them over: invalid ones never arrive.
    let values: Vec<&[u8]> = header
        .split(|&byte| byte == b'\n')
        .filter(|value| HeaderValue::from_bytes(value).is_ok())
        .collect();
    let parsed = parse_extensions(values.iter().copied());
    if let Ok(offers) = &parsed {
        for offer in offers {
            assert!(is_token(&offer.name), "name {:?}", offer.name);
            for (name, value) in &offer.params {
                assert!(is_token(name), "parameter {name:?}");
                assert!(value.as_deref().is_none_or(is_token), "value {value:?}");
            }
        }
        let rendered = render(offers);
        assert_eq!(
            parse_extensions([rendered.as_bytes()]).as_ref(),
            Ok(offers),
            "rendered as {rendered:?}"
        );
    }

    let headers = header_map(&values);
    match negotiate_server(&server, &headers) {
        Ok((negotiated, answer)) => {
            let offers = parsed.expect("negotiation succeeded, so the header parses");
            check_server_answer(&server, &offers, &negotiated, answer.as_deref());
        }
        Err(error) => {
            assert!(matches!(error, HandshakeError::InvalidExtensions(_)));
            assert!(
                parsed.is_err(),
                "negotiation failed on a header that parses"
            );
        }
    }

    // A real client's offer, answered by the server, accepted by the client.
    let offer = client_offer(&client, secure);
    let request = header_map(
        offer
            .iter()
            .map(String::as_bytes)
            .collect::<Vec<_>>()
            .as_slice(),
    );
    let (server_side, answer) =
        negotiate_server(&server, &request).expect("the server understands a client's offer");
    let response = header_map(
        answer
            .iter()
            .map(String::as_bytes)
            .collect::<Vec<_>>()
            .as_slice(),
    );
    let client_side = negotiate_client(&client, secure, &response)
        .unwrap_or_else(|error| panic!("the client refused {answer:?} to {offer:?}: {error}"));
    assert_eq!(client_side, server_side, "both ends agree");
    assert_eq!(
        server_side.deflate.is_some(),
        server.deflate().enabled && client.deflate().enabled
    );
    assert_eq!(
        server_side.no_masking,
        server.no_masking() && client.no_masking() && secure
    );

    // Any answer: the client accepts only what it offered and can honour.
    if let Ok(negotiated) = negotiate_client(&client, secure, &headers) {
        if negotiated.no_masking {
            assert!(client.no_masking() && secure);
        }
        if let Some(params) = negotiated.deflate {
            let deflate = client.deflate();
            assert!(deflate.enabled);
            assert!((9..=15).contains(&params.client_max_window_bits));
            assert!(params.server_max_window_bits <= deflate.server_max_window_bits.max(9));
            assert!(params.server_no_context_takeover || !deflate.server_no_context_takeover);
            assert!(params.client_no_context_takeover || !deflate.client_no_context_takeover);
        }
    }
});

fn config(s: &[u8]) -> Config {
    let deflate = DeflateConfig {
        enabled: s[0] & 1 == 0,
        server_no_context_takeover: s[0] & 4 != 0,
        client_no_context_takeover: s[0] & 8 != 0,
        server_max_window_bits: window_bits(s[1]),
        client_max_window_bits: window_bits(s[2]),
        ..DeflateConfig::default()
    };
    Config::builder()
        .deflate(deflate)
        .dangerous_no_masking(s[0] & 2 != 0)
        .build()
        .expect("valid by construction")
}

fn header_map(values: &[&[u8]]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for value in values {
        let value = HeaderValue::from_bytes(value).expect("filtered");
        headers.append(SEC_WEBSOCKET_EXTENSIONS, value);
    }
    headers
}

/// `tchar` of RFC 7230 §3.2.6, at least one.
fn is_token(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte))
}

fn render(offers: &[ExtensionOffer]) -> String {
    let rendered: Vec<String> = offers
        .iter()
        .map(|offer| {
            let mut text = offer.name.clone();
            for (name, value) in &offer.params {
                text.push_str("; ");
                text.push_str(name);
                if let Some(value) = value {
                    text.push('=');
                    text.push_str(value);
                }
            }
            text
        })
        .collect();
    rendered.join(", ")
}

/// The value of parameter `name` (case-insensitive) of `offer`: absent, valueless or valued.
fn param<'a>(offer: &'a ExtensionOffer, name: &str) -> Option<Option<&'a str>> {
    offer
        .params
        .iter()
        .find(|(param, _)| param.eq_ignore_ascii_case(name))
        .map(|(_, value)| value.as_deref())
}

fn bits(value: Option<Option<&str>>) -> Option<u8> {
    value.map(|value| {
        value
            .and_then(|value| value.parse().ok())
            .expect("a window size with a number")
    })
}

fn check_server_answer(
    config: &Config,
    offers: &[ExtensionOffer],
    negotiated: &Negotiated,
    answer: Option<&str>,
) {
    assert_eq!(answer.is_none(), *negotiated == Negotiated::default());
    let answers = match answer {
        Some(answer) => parse_extensions([answer.as_bytes()]).expect("the answer parses"),
        None => Vec::new(),
    };
    let named = |name: &str| {
        answers
            .iter()
            .filter(|answer| answer.name == name)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        named("no-masking").len(),
        usize::from(negotiated.no_masking)
    );
    assert!(!negotiated.no_masking || config.no_masking());
    let deflate_answers = named("permessage-deflate");
    assert_eq!(
        deflate_answers.len(),
        usize::from(negotiated.deflate.is_some())
    );
    assert_eq!(
        answers.len(),
        deflate_answers.len() + usize::from(negotiated.no_masking)
    );
    let Some(params) = negotiated.deflate else {
        return;
    };
    let deflate = config.deflate();
    assert!(deflate.enabled);
    let answer = deflate_answers[0];

    // The answer says exactly what is in force.
    assert_eq!(
        param(answer, "server_no_context_takeover").is_some(),
        params.server_no_context_takeover
    );
    assert_eq!(
        param(answer, "client_no_context_takeover").is_some(),
        params.client_no_context_takeover
    );
    let server_bits = bits(param(answer, "server_max_window_bits"));
    assert_eq!(server_bits.unwrap_or(15), params.server_max_window_bits);
    let client_bits = bits(param(answer, "client_max_window_bits"));
    assert_eq!(client_bits.unwrap_or(15), params.client_max_window_bits);
    assert_eq!(
        answer.params.len(),
        answer_len(&params, server_bits, client_bits)
    );

    // The server's own configuration is honoured.
    assert!((9..=deflate.server_max_window_bits.max(9)).contains(&params.server_max_window_bits));
    assert!(params.server_no_context_takeover || !deflate.server_no_context_takeover);
    assert!(params.client_no_context_takeover || !deflate.client_no_context_takeover);

    // The first offer the server accepts on its own is the one accepted, with the same result.
    let config = Config::builder()
        .deflate(deflate.clone())
        .build()
        .expect("valid");
    let accepted = offers
        .iter()
        .filter(|offer| offer.name.eq_ignore_ascii_case("permessage-deflate"))
        .find_map(|offer| {
            let alone = render(std::slice::from_ref(offer));
            let (alone, _) = negotiate_server(&config, &header_map(&[alone.as_bytes()]))
                .expect("a rendered offer parses");
            alone.deflate.map(|alone| (offer, alone))
        });
    let (offer, alone) = accepted.expect("some offer was acceptable on its own");
    assert_eq!(alone, params, "accepted {offer:?}");

    // RFC 7692 §7.1 against the accepted offer.
    if let Some(limit) = bits(param(offer, "server_max_window_bits")) {
        assert!(server_bits.is_some_and(|bits| bits <= limit));
    }
    match param(offer, "client_max_window_bits") {
        None => assert_eq!(
            client_bits, None,
            "client_max_window_bits was not announced"
        ),
        Some(Some(limit)) => {
            let limit: u8 = limit.parse().expect("valid offer");
            assert!(params.client_max_window_bits <= limit);
        }
        Some(None) => {}
    }
    if param(offer, "server_no_context_takeover").is_some() {
        assert!(params.server_no_context_takeover);
    }
    if param(offer, "client_no_context_takeover").is_some() {
        assert!(params.client_no_context_takeover);
    }
}

fn answer_len(
    params: &roost_proto::DeflateParams,
    server_bits: Option<u8>,
    client_bits: Option<u8>,
) -> usize {
    usize::from(params.server_no_context_takeover)
        + usize::from(params.client_no_context_takeover)
        + usize::from(server_bits.is_some())
        + usize::from(client_bits.is_some())
}
