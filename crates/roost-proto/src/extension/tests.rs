use http::HeaderValue;

use super::*;

fn parse(values: &[&str]) -> Result<Vec<ExtensionOffer>, HandshakeError> {
    parse_extensions(values.iter().map(|value| value.as_bytes()))
}

fn offer(name: &str, params: &[(&str, Option<&str>)]) -> ExtensionOffer {
    ExtensionOffer {
        name: name.to_owned(),
        params: params
            .iter()
            .map(|(name, value)| ((*name).to_owned(), value.map(str::to_owned)))
            .collect(),
    }
}

fn headers(values: &[&str]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for value in values {
        headers.append(
            SEC_WEBSOCKET_EXTENSIONS,
            HeaderValue::from_str(value).unwrap(),
        );
    }
    headers
}

fn optional_header(value: Option<&str>) -> HeaderMap {
    headers(value.as_slice())
}

fn config(deflate: DeflateConfig, no_masking: bool) -> Config {
    Config::builder()
        .deflate(deflate)
        .dangerous_no_masking(no_masking)
        .build()
        .unwrap()
}

fn with_deflate(change: impl FnOnce(&mut DeflateConfig)) -> Config {
    let mut deflate = DeflateConfig::default();
    change(&mut deflate);
    config(deflate, false)
}

fn server(config: &Config, values: &[&str]) -> (Negotiated, Option<String>) {
    negotiate_server(config, &headers(values)).unwrap()
}

/// The agreed deflate parameters and the response a default server gives to `values`.
fn server_deflate(config: &Config, values: &[&str]) -> (Option<DeflateParams>, Option<String>) {
    let (negotiated, response) = server(config, values);
    (negotiated.deflate, response)
}

fn client(config: &Config, values: &[&str]) -> Result<Negotiated, HandshakeError> {
    negotiate_client(config, true, &headers(values))
}

fn params(server_bits: u8, client_bits: u8, server_nct: bool, client_nct: bool) -> DeflateParams {
    DeflateParams {
        server_no_context_takeover: server_nct,
        client_no_context_takeover: client_nct,
        server_max_window_bits: server_bits,
        client_max_window_bits: client_bits,
    }
}

fn agreed(deflate: Option<DeflateParams>, no_masking: bool) -> Negotiated {
    Negotiated {
        deflate,
        no_masking,
    }
}

fn assert_invalid(result: Result<Negotiated, HandshakeError>, needle: &str) {
    match result {
        Err(HandshakeError::InvalidExtensions(why)) => assert!(why.contains(needle), "{why}"),
        other => panic!("expected InvalidExtensions({needle:?}), got {other:?}"),
    }
}

// Parsing (RFC 6455 §9.1).

#[test]
fn parses_names_params_and_values() {
    let parsed =
        parse(&["permessage-deflate; client_max_window_bits; server_max_window_bits=10"]).unwrap();
    assert_eq!(
        parsed,
        [offer(
            "permessage-deflate",
            &[
                ("client_max_window_bits", None),
                ("server_max_window_bits", Some("10"))
            ]
        )]
    );
}

#[test]
fn parses_quoted_strings_and_whitespace() {
    let parsed = parse(&[
        " foo \t;\ta = \"1\" ; b=\"x\\y\" ,bar;c ; d= e ",
        "baz",
        "qux ; e=\"15\"",
    ])
    .unwrap();
    assert_eq!(
        parsed,
        [
            offer("foo", &[("a", Some("1")), ("b", Some("xy"))]),
            offer("bar", &[("c", None), ("d", Some("e"))]),
            offer("baz", &[]),
            offer("qux", &[("e", Some("15"))]),
        ]
    );
}

#[test]
fn skips_empty_list_elements() {
    assert_eq!(
        parse(&[", ,foo,, bar ,", ""]).unwrap(),
        [offer("foo", &[]), offer("bar", &[])]
    );
    assert_eq!(parse(&[]).unwrap(), []);
}

#[test]
fn rejects_malformed_headers() {
    for value in [
        "foo bar",
        "foo;",
        "foo; ",
        "foo;=1",
        "foo;a=",
        "foo;a=b=c",
        "foo;a=\"unterminated",
        "foo;a=\"ends in escape\\",
        "foo;a=\"\"",
        "foo;a=\"two words\"",
        "foo;a=\"x,y\"",
        "foo;a\"b\"",
        ";a",
        "foo,;a",
        "f\u{f6}o",
        "foo;a=\u{e9}",
        "foo\x01",
        "foo/bar",
        "(foo)",
    ] {
        match parse(&[value]) {
            Err(HandshakeError::InvalidExtensions(why)) => assert!(!why.is_empty()),
            other => panic!("{value:?} gave {other:?}"),
        }
    }
}

#[test]
fn error_messages_say_where() {
    let Err(HandshakeError::InvalidExtensions(why)) = parse(&["foo; a=b c"]) else {
        panic!()
    };
    assert_eq!(why, "unexpected 'c' at byte 9, expected ',' or ';'");
    let Err(HandshakeError::InvalidExtensions(why)) = parse(&["foo;\x7f"]) else {
        panic!()
    };
    assert!(why.contains("0x7f"), "{why}");
}

#[test]
fn pathological_headers_parse_in_linear_time() {
    // 50k parameters (~150 KB); a quadratic parser would take minutes here.
    let mut value = String::from("permessage-deflate");
    for _ in 0..50_000 {
        value.push_str("; a");
    }
    let parsed = parse(&[&value]).unwrap();
    assert_eq!(parsed[0].params.len(), 50_000);
    // Declined as an offer (unknown parameter), quickly.
    assert_eq!(
        server(&Config::default(), &[&value]),
        (Negotiated::default(), None)
    );

    let commas = ",".repeat(100_000);
    assert_eq!(parse(&[&commas]).unwrap(), []);
    let quoted = format!("foo; a=\"{}\"", "\\a".repeat(50_000));
    assert_eq!(
        parse(&[&quoted]).unwrap()[0].params[0]
            .1
            .as_ref()
            .map(String::len),
        Some(50_000)
    );
    let many = "x, ".repeat(30_000);
    assert_eq!(parse(&[&many]).unwrap().len(), 30_000);
}

// Server negotiation (RFC 7692 §5, §7.1).

#[test]
fn server_accepts_a_plain_offer() {
    let (deflate, response) = server_deflate(&Config::default(), &["permessage-deflate"]);
    assert_eq!(deflate, Some(DeflateParams::default()));
    assert_eq!(response.as_deref(), Some("permessage-deflate"));
    let (deflate, response) = server_deflate(
        &Config::default(),
        &["permessage-deflate; client_max_window_bits"],
    );
    assert_eq!(deflate, Some(DeflateParams::default()));
    assert_eq!(response.as_deref(), Some("permessage-deflate"));
}

#[test]
fn server_honours_every_client_request() {
    let (deflate, response) = server_deflate(
        &Config::default(),
        &[
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
           server_max_window_bits=10; client_max_window_bits=12",
        ],
    );
    assert_eq!(deflate, Some(params(10, 12, true, true)));
    assert_eq!(
        response.as_deref(),
        Some(
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
             server_max_window_bits=10; client_max_window_bits=12"
        )
    );
}

#[test]
fn server_accepts_quoted_and_differently_cased_values() {
    let (deflate, response) = server_deflate(
        &Config::default(),
        &["PerMessage-Deflate; Server_Max_Window_Bits=\"11\"; SERVER_NO_CONTEXT_TAKEOVER"],
    );
    assert_eq!(deflate, Some(params(11, 15, true, false)));
    assert_eq!(
        response.as_deref(),
        Some("permessage-deflate; server_no_context_takeover; server_max_window_bits=11")
    );
}

#[test]
fn server_limits_its_window_to_the_config() {
    let config = with_deflate(|deflate| deflate.server_max_window_bits = 11);
    for (offer, bits) in [
        ("permessage-deflate", 11),
        ("permessage-deflate; server_max_window_bits=13", 11),
        ("permessage-deflate; server_max_window_bits=9", 9),
    ] {
        let (deflate, response) = server_deflate(&config, &[offer]);
        assert_eq!(deflate, Some(params(bits, 15, false, false)), "{offer}");
        assert_eq!(
            response,
            Some(format!("permessage-deflate; server_max_window_bits={bits}"))
        );
    }
}

#[test]
fn server_answers_an_offered_server_window_even_at_15() {
    let (deflate, response) = server_deflate(
        &Config::default(),
        &["permessage-deflate; server_max_window_bits=15"],
    );
    assert_eq!(deflate, Some(DeflateParams::default()));
    assert_eq!(
        response.as_deref(),
        Some("permessage-deflate; server_max_window_bits=15")
    );
}

#[test]
fn server_declines_an_offer_demanding_an_8_bit_window() {
    // zlib cannot compress with 8 bits: decline, take the fallback offer.
    let (deflate, response) = server_deflate(
        &Config::default(),
        &[
            "permessage-deflate; server_max_window_bits=8, permessage-deflate; server_max_window_bits=9",
        ],
    );
    assert_eq!(deflate, Some(params(9, 15, false, false)));
    assert_eq!(
        response.as_deref(),
        Some("permessage-deflate; server_max_window_bits=9")
    );
    let only_8 = ["permessage-deflate; server_max_window_bits=8"];
    assert_eq!(server_deflate(&Config::default(), &only_8), (None, None));
}

#[test]
fn server_configured_with_8_bits_uses_9() {
    let config = with_deflate(|deflate| {
        deflate.server_max_window_bits = 8;
        deflate.client_max_window_bits = 8;
    });
    let (deflate, response) =
        server_deflate(&config, &["permessage-deflate; client_max_window_bits"]);
    assert_eq!(deflate, Some(params(9, 9, false, false)));
    assert_eq!(
        response.as_deref(),
        Some("permessage-deflate; server_max_window_bits=9; client_max_window_bits=9")
    );
}

#[test]
fn server_limits_the_client_window_only_when_the_offer_allows_it() {
    let config = with_deflate(|deflate| deflate.client_max_window_bits = 10);
    // Without the parameter in the offer the response may not carry it (RFC 7692 §7.1.2.2).
    let (deflate, response) = server_deflate(&config, &["permessage-deflate"]);
    assert_eq!(deflate, Some(DeflateParams::default()));
    assert_eq!(response.as_deref(), Some("permessage-deflate"));
    for (offer, bits) in [
        ("permessage-deflate; client_max_window_bits", 10),
        ("permessage-deflate; client_max_window_bits=12", 10),
        ("permessage-deflate; client_max_window_bits=9", 9),
        // The client's own promise of 8: answered as is; our inflater uses 9.
        ("permessage-deflate; client_max_window_bits=8", 8),
    ] {
        let (deflate, response) = server_deflate(&config, &[offer]);
        assert_eq!(deflate, Some(params(15, bits, false, false)), "{offer}");
        assert_eq!(
            response,
            Some(format!("permessage-deflate; client_max_window_bits={bits}"))
        );
    }
}

#[test]
fn server_takes_the_client_window_hint() {
    let (deflate, response) = server_deflate(
        &Config::default(),
        &["permessage-deflate; client_max_window_bits=11"],
    );
    assert_eq!(deflate, Some(params(15, 11, false, false)));
    assert_eq!(
        response.as_deref(),
        Some("permessage-deflate; client_max_window_bits=11")
    );
}

#[test]
fn server_applies_its_configured_no_context_takeover() {
    let config = with_deflate(|deflate| deflate.server_no_context_takeover = true);
    let (deflate, response) = server_deflate(&config, &["permessage-deflate"]);
    assert_eq!(deflate, Some(params(15, 15, true, false)));
    assert_eq!(
        response.as_deref(),
        Some("permessage-deflate; server_no_context_takeover")
    );

    let config = with_deflate(|deflate| deflate.client_no_context_takeover = true);
    let (deflate, response) = server_deflate(&config, &["permessage-deflate"]);
    assert_eq!(deflate, Some(params(15, 15, false, true)));
    assert_eq!(
        response.as_deref(),
        Some("permessage-deflate; client_no_context_takeover")
    );
}

#[test]
fn server_declines_malformed_offers_and_tries_the_next() {
    for bad in [
        "server_no_context_takeover; server_no_context_takeover",
        "client_max_window_bits; client_max_window_bits=10",
        "server_max_window_bits=10; server_max_window_bits=10",
        "x_unknown",
        "server_max_window_bits",
        "server_max_window_bits=16",
        "server_max_window_bits=7",
        "server_max_window_bits=08",
        "server_max_window_bits=+9",
        "server_max_window_bits=0x9",
        "client_max_window_bits=abc",
        "client_max_window_bits=20",
        "server_no_context_takeover=1",
        "client_no_context_takeover=\"true\"",
    ] {
        let values = [format!(
            "permessage-deflate; {bad}, permessage-deflate; client_no_context_takeover"
        )];
        let values: Vec<&str> = values.iter().map(String::as_str).collect();
        let (deflate, response) = server_deflate(&Config::default(), &values);
        assert_eq!(deflate, Some(params(15, 15, false, true)), "{bad}");
        assert_eq!(
            response.as_deref(),
            Some("permessage-deflate; client_no_context_takeover")
        );
        // Alone, the malformed offer is simply declined.
        let alone = format!("permessage-deflate; {bad}");
        assert_eq!(
            server_deflate(&Config::default(), &[&alone]),
            (None, None),
            "{bad}"
        );
    }
}

#[test]
fn server_rejects_a_broken_header_with_400() {
    let err =
        negotiate_server(&Config::default(), &headers(&["permessage-deflate; ="])).unwrap_err();
    assert!(
        matches!(err, HandshakeError::InvalidExtensions(_)),
        "{err:?}"
    );
    assert_eq!(err.status(), 400);
    // A broken second header value fails the whole request too.
    let err =
        negotiate_server(&Config::default(), &headers(&["permessage-deflate", "a b"])).unwrap_err();
    assert_eq!(err.status(), 400);
}

#[test]
fn server_accepts_only_the_first_acceptable_offer() {
    let (deflate, response) = server_deflate(
        &Config::default(),
        &[
            "permessage-deflate; server_max_window_bits=10",
            "permessage-deflate",
        ],
    );
    assert_eq!(deflate, Some(params(10, 15, false, false)));
    assert_eq!(
        response.as_deref(),
        Some("permessage-deflate; server_max_window_bits=10")
    );
}

#[test]
fn server_ignores_unknown_extensions() {
    let (deflate, response) = server_deflate(
        &Config::default(),
        &["x-webkit-deflate-frame, permessage-deflate; foo=1"],
    );
    assert_eq!((deflate, response), (None, None));
    let (deflate, response) = server_deflate(
        &Config::default(),
        &["x-webkit-deflate-frame", "permessage-deflate"],
    );
    assert_eq!(deflate, Some(DeflateParams::default()));
    assert_eq!(response.as_deref(), Some("permessage-deflate"));
}

#[test]
fn server_without_offers_or_with_deflate_disabled_accepts_nothing() {
    let nothing = (Negotiated::default(), None);
    assert_eq!(server(&Config::default(), &[]), nothing);
    let config = config(DeflateConfig::disabled(), false);
    assert_eq!(server(&config, &["permessage-deflate"]), nothing);
}

#[test]
fn server_accepts_no_masking_only_when_configured() {
    let (negotiated, response) = server(&Config::default(), &["no-masking"]);
    assert_eq!((negotiated, response), (Negotiated::default(), None));

    let config = config(DeflateConfig::default(), true);
    let (negotiated, response) = server(&config, &["no-masking"]);
    assert_eq!(negotiated, agreed(None, true));
    assert_eq!(response.as_deref(), Some("no-masking"));
    // With a parameter the offer is malformed and declined.
    assert_eq!(
        server(&config, &["no-masking; x"]),
        (Negotiated::default(), None)
    );
    // Accepted once, answered in offer order.
    let (negotiated, response) = server(
        &config,
        &["no-masking, permessage-deflate, no-masking, permessage-deflate"],
    );
    assert_eq!(negotiated, agreed(Some(DeflateParams::default()), true));
    assert_eq!(response.as_deref(), Some("no-masking, permessage-deflate"));
}

// Client offer and validation (RFC 7692 §7.1).

#[test]
fn client_offers_deflate_by_default() {
    assert_eq!(
        client_offer(&Config::default(), false).as_deref(),
        Some(
            "permessage-deflate; client_max_window_bits, \
             permessage-deflate; client_no_context_takeover; client_max_window_bits"
        )
    );
}

#[test]
fn client_offer_follows_the_config() {
    let config = with_deflate(|deflate| {
        deflate.server_no_context_takeover = true;
        deflate.client_no_context_takeover = true;
        deflate.server_max_window_bits = 10;
        deflate.client_max_window_bits = 11;
    });
    assert_eq!(
        client_offer(&config, false).as_deref(),
        Some(
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
             server_max_window_bits=10; client_max_window_bits=11"
        )
    );
    let config = with_deflate(|deflate| {
        deflate.server_max_window_bits = 8;
        deflate.client_max_window_bits = 8;
    });
    assert_eq!(
        client_offer(&config, false).as_deref(),
        Some(
            "permessage-deflate; server_max_window_bits=9; client_max_window_bits=9, \
             permessage-deflate; client_no_context_takeover; server_max_window_bits=9; \
             client_max_window_bits=9"
        )
    );
}

#[test]
fn client_offers_no_masking_only_over_tls() {
    let only = config(DeflateConfig::disabled(), true);
    assert_eq!(client_offer(&only, false), None);
    assert_eq!(client_offer(&only, true).as_deref(), Some("no-masking"));
    let both = config(DeflateConfig::default(), true);
    assert_eq!(
        client_offer(&both, true).as_deref(),
        Some(
            "permessage-deflate; client_max_window_bits, \
             permessage-deflate; client_no_context_takeover; client_max_window_bits, no-masking"
        )
    );
    assert_eq!(
        client_offer(&Config::default(), true).as_deref(),
        client_offer(&both, false).as_deref()
    );
}

#[test]
fn client_reads_the_agreed_parameters() {
    assert_eq!(client(&Config::default(), &[]), Ok(Negotiated::default()));
    let negotiated = client(
        &Config::default(),
        &[
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
           server_max_window_bits=10; client_max_window_bits=\"12\"",
        ],
    )
    .unwrap();
    assert_eq!(negotiated.deflate, Some(params(10, 12, true, true)));
    assert_eq!(
        client(&Config::default(), &["permessage-deflate"])
            .unwrap()
            .deflate,
        Some(DeflateParams::default())
    );
}

#[test]
fn client_refuses_8_client_bits_but_takes_8_server_bits() {
    assert_invalid(
        client(
            &Config::default(),
            &["permessage-deflate; client_max_window_bits=8"],
        ),
        "client_max_window_bits=8",
    );
    // 8 server bits only concern our inflater, which reads such streams with 9 bits.
    let negotiated = client(
        &Config::default(),
        &["permessage-deflate; server_max_window_bits=8"],
    )
    .unwrap();
    assert_eq!(negotiated.deflate, Some(params(8, 15, false, false)));
}

#[test]
fn client_rejects_invalid_parameters() {
    for (answer, needle) in [
        (
            "permessage-deflate; client_max_window_bits",
            "needs a value",
        ),
        (
            "permessage-deflate; server_max_window_bits",
            "needs a value",
        ),
        (
            "permessage-deflate; server_max_window_bits=16",
            "from 8 to 15",
        ),
        (
            "permessage-deflate; client_max_window_bits=7",
            "from 8 to 15",
        ),
        (
            "permessage-deflate; server_no_context_takeover=x",
            "takes no value",
        ),
        ("permessage-deflate; x=1", "unknown parameter"),
        (
            "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
            "duplicate parameter",
        ),
        ("permessage-deflate, permessage-deflate", "accepted twice"),
        ("permessage-deflate;", "parameter name"),
    ] {
        assert_invalid(client(&Config::default(), &[answer]), needle);
    }
}

#[test]
fn client_rejects_answers_that_ignore_the_offer() {
    let config = with_deflate(|deflate| {
        deflate.server_no_context_takeover = true;
        deflate.server_max_window_bits = 10;
        deflate.client_max_window_bits = 11;
    });
    let base = "permessage-deflate; server_no_context_takeover";
    assert_invalid(
        client(&config, &["permessage-deflate; server_max_window_bits=10"]),
        "server_no_context_takeover",
    );
    assert_invalid(client(&config, &[base]), "server_max_window_bits=10");
    assert_invalid(
        client(&config, &[&format!("{base}; server_max_window_bits=11")]),
        "exceeds the 10 offered",
    );
    assert_invalid(
        client(
            &config,
            &[&format!(
                "{base}; server_max_window_bits=10; client_max_window_bits=12"
            )],
        ),
        "exceeds the 11 offered",
    );
    // Smaller values are fine; an omitted client window keeps the value we promised.
    let negotiated = client(&config, &[&format!("{base}; server_max_window_bits=9")]).unwrap();
    assert_eq!(negotiated.deflate, Some(params(9, 11, true, false)));
    let negotiated = client(
        &config,
        &[&format!(
            "{base}; server_max_window_bits=10; client_max_window_bits=9"
        )],
    )
    .unwrap();
    assert_eq!(negotiated.deflate, Some(params(10, 9, true, false)));
}

#[test]
fn client_accepts_unrequested_no_context_takeover() {
    // RFC 7692 §7.1.1: the server may declare either without being asked.
    let negotiated = client(
        &Config::default(),
        &["permessage-deflate; server_no_context_takeover; client_no_context_takeover"],
    )
    .unwrap();
    assert_eq!(negotiated.deflate, Some(params(15, 15, true, true)));
}

#[test]
fn client_rejects_unoffered_extensions() {
    let err = client(&Config::default(), &["x-foo"]).unwrap_err();
    assert_eq!(err, HandshakeError::UnofferedExtension("x-foo".to_owned()));
    let disabled = config(DeflateConfig::disabled(), false);
    let err = client(&disabled, &["permessage-deflate"]).unwrap_err();
    assert_eq!(
        err,
        HandshakeError::UnofferedExtension("permessage-deflate".to_owned())
    );
    let err = client(&Config::default(), &["no-masking"]).unwrap_err();
    assert_eq!(
        err,
        HandshakeError::UnofferedExtension("no-masking".to_owned())
    );
    // Offered only over TLS.
    let no_masking = config(DeflateConfig::default(), true);
    let err = negotiate_client(&no_masking, false, &headers(&["no-masking"])).unwrap_err();
    assert_eq!(
        err,
        HandshakeError::UnofferedExtension("no-masking".to_owned())
    );
}

#[test]
fn client_checks_the_no_masking_answer() {
    let config = config(DeflateConfig::default(), true);
    let negotiated = client(&config, &["permessage-deflate", "no-masking"]).unwrap();
    assert_eq!(negotiated, agreed(Some(DeflateParams::default()), true));
    assert_invalid(client(&config, &["no-masking; x"]), "no parameters");
    assert_invalid(
        client(&config, &["no-masking, no-masking"]),
        "accepted twice",
    );
}

#[test]
fn client_rejects_a_broken_header() {
    assert_invalid(
        client(&Config::default(), &["permessage-deflate; a=\"b"]),
        "unterminated",
    );
}

// Both roles together.

#[test]
fn client_offer_server_answer_and_client_check_agree() {
    let bits = [8, 9, 12, 15];
    let mut configs = Vec::new();
    for server_max_window_bits in bits {
        for client_max_window_bits in bits {
            for flags in 0..16 {
                let deflate = DeflateConfig {
                    enabled: flags & 8 == 0,
                    server_no_context_takeover: flags & 1 != 0,
                    client_no_context_takeover: flags & 2 != 0,
                    server_max_window_bits,
                    client_max_window_bits,
                    ..DeflateConfig::default()
                };
                configs.push(config(deflate, flags & 4 != 0));
            }
        }
    }
    let mut agreed_deflate = 0;
    for client_config in &configs {
        for server_config in configs.iter().step_by(7) {
            for secure in [false, true] {
                let offer = client_offer(client_config, secure);
                let request = optional_header(offer.as_deref());
                let (on_server, response) = negotiate_server(server_config, &request).unwrap();
                let answer = optional_header(response.as_deref());
                let on_client = negotiate_client(client_config, secure, &answer).unwrap();
                assert_eq!(on_server, on_client, "{offer:?} -> {response:?}");
                assert_eq!(
                    on_client.deflate.is_some(),
                    client_config.deflate().enabled && server_config.deflate().enabled
                );
                assert_eq!(
                    on_client.no_masking,
                    secure && client_config.no_masking() && server_config.no_masking()
                );
                if let Some(params) = on_client.deflate {
                    agreed_deflate += 1;
                    // Neither compressor is ever asked for 8 bits.
                    assert!(params.server_max_window_bits >= MIN_ZLIB_WINDOW_BITS);
                    assert!(params.client_max_window_bits >= MIN_ZLIB_WINDOW_BITS);
                }
            }
        }
    }
    assert!(agreed_deflate > 100);
}

#[test]
fn negotiated_codecs_talk() {
    use bytes::BytesMut;

    use crate::deflate::DeflateCodec;

    let client_config = with_deflate(|deflate| {
        deflate.client_max_window_bits = 10;
        deflate.server_no_context_takeover = true;
    });
    let server_config = with_deflate(|deflate| deflate.server_max_window_bits = 11);
    let offer = client_offer(&client_config, false).unwrap();
    let (on_server, response) = negotiate_server(&server_config, &headers(&[&offer])).unwrap();
    let on_client =
        negotiate_client(&client_config, false, &headers(&[&response.unwrap()])).unwrap();
    let params = on_server.deflate.unwrap();
    assert_eq!(on_client.deflate, Some(params));
    assert_eq!(params, self::params(11, 10, true, false));

    let mut server_codec = DeflateCodec::new(true, params, server_config.deflate());
    let mut client_codec = DeflateCodec::new(false, params, client_config.deflate());
    let message = b"a message that is long enough to compress, a message that repeats itself";
    for _ in 0..3 {
        let mut payload = Vec::new();
        server_codec.compress(message, &mut payload);
        let mut out = BytesMut::new();
        client_codec
            .decompress(&payload, true, &mut out, 1 << 20)
            .unwrap();
        assert_eq!(&out[..], message);
        client_codec.compress(message, &mut payload);
        let mut out = BytesMut::new();
        server_codec
            .decompress(&payload, true, &mut out, 1 << 20)
            .unwrap();
        assert_eq!(&out[..], message);
    }
}
