//! Idle connections: buffers given back, the compact form and its answers.

use super::*;

/// permessage-deflate with both sides resetting their context after every message.
fn deflate_without_context() -> Negotiated {
    Negotiated {
        deflate: Some(DeflateParams {
            server_no_context_takeover: true,
            client_no_context_takeover: true,
            ..DeflateParams::default()
        }),
        no_masking: false,
    }
}

#[test]
fn an_idle_connection_gives_its_buffers_back() {
    let now = Instant::now();
    let negotiated = deflate_without_context();
    let (mut client, mut server) = pair_with(Config::default(), negotiated);
    let payload = "release me ".repeat(10_000);
    client.send_text(&payload).unwrap();
    pump(&mut client, &mut server, now);
    assert_eq!(events(&mut server), vec![text(&payload)]);
    assert!(server.payload.capacity() > 0);
    server.release_buffers();
    assert!(server.release_compression_state());
    assert_eq!(server.payload.capacity(), 0);
    assert_eq!(server.out.capacity(), 0);
    // Still works afterwards, compression state made again on demand.
    client.send_text(&payload).unwrap();
    pump(&mut client, &mut server, now);
    assert_eq!(events(&mut server), vec![text(&payload)]);
    server.send_text(&payload).unwrap();
    pump(&mut server, &mut client, now);
    assert_eq!(events(&mut client), vec![text(&payload)]);
}

#[test]
fn an_idle_connection_shrinks_and_resumes_as_it_was() {
    let now = Instant::now();
    let negotiated = deflate_without_context();
    let (mut client, mut server) = pair_with(Config::default(), negotiated.clone());
    server.set_auto_response(Some(Arc::new(AutoResponse {
        request: Utf8Bytes::from_static("heartbeat"),
        response: Utf8Bytes::from_static("alive"),
    })));
    let payload = "compress me ".repeat(100);
    client.send_text("heartbeat").unwrap();
    client.send_text(&payload).unwrap();
    pump(&mut client, &mut server, now);
    // Not idle while an event waits, then while a reply waits to be sent.
    let server = server.into_idle().unwrap_err();
    let mut server = {
        let mut server = server;
        assert_eq!(events(&mut server), vec![text(&payload)]);
        server.into_idle().unwrap_err()
    };
    pump(&mut server, &mut client, now);
    assert_eq!(events(&mut client), vec![text("alive")]);
    // Compression without context takeover keeps nothing between messages.
    server.release_compression_state();
    let idle = server.into_idle().unwrap();
    assert_eq!(idle.auto_response_hits(), 1);
    let mut server = idle.resume(Config::default());
    assert_eq!(server.negotiated(), &negotiated);
    client.send_text("heartbeat").unwrap();
    client.send_text(&payload).unwrap();
    pump(&mut client, &mut server, now);
    assert_eq!(events(&mut server), vec![text(&payload)]);
    assert_eq!(server.auto_response_hits(), 2, "the auto-response survived");
    server.send_text(&payload).unwrap();
    pump(&mut server, &mut client, now);
    assert_eq!(events(&mut client), vec![text("alive"), text(&payload)]);
}

/// An idle server with the auto-response `"heartbeat"` -> `"alive"`.
fn idle_server() -> IdleConnection {
    let mut server = Connection::server(Config::default(), Negotiated::default());
    server.set_auto_response(Some(Arc::new(AutoResponse {
        request: Utf8Bytes::from_static("heartbeat"),
        response: Utf8Bytes::from_static("alive"),
    })));
    server.into_idle().unwrap()
}

#[test]
fn an_idle_connection_answers_pings_pongs_and_the_auto_response() {
    let mut idle = idle_server();
    let mut wire = raw_frame(0x89, b"are you there", KEY);
    wire.extend(raw_frame(0x8A, b"", Some([9, 8, 7, 6])));
    wire.extend(raw_frame(0x81, b"heartbeat", KEY));
    let mut out = BytesMut::new();
    let answered = idle.answer(&wire, &mut out, usize::MAX);
    assert_eq!(
        answered,
        IdleInput {
            consumed: wire.len(),
            wake: false
        }
    );
    let mut expected = raw_frame(0x8A, b"are you there", None);
    expected.extend(raw_frame(0x81, b"alive", None));
    assert_eq!(&out[..], &expected[..]);
    assert_eq!(idle.auto_response_hits(), 1);
    // The client reads the replies as a pong and the response.
    let mut client = Connection::client(Config::default(), Negotiated::default(), fixed_masks());
    client.receive(&out, Instant::now());
    assert_eq!(
        events(&mut client),
        vec![
            Event::Message(Message::Pong(Bytes::from_static(b"are you there"))),
            text("alive"),
        ]
    );
}

#[test]
fn an_idle_connection_stops_at_what_needs_the_whole_connection() {
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("a message", raw_frame(0x81, b"hello", KEY)),
        ("a binary heartbeat", raw_frame(0x82, b"heartbeat", KEY)),
        (
            "a fragment of the request",
            raw_frame(0x01, b"heartbeat", KEY),
        ),
        (
            "a text frame as long as the request",
            raw_frame(0x81, b"heartbeaT", KEY),
        ),
        ("a close", raw_frame(0x88, &1000u16.to_be_bytes(), KEY)),
        ("an unmasked ping", raw_frame(0x89, b"", None)),
        ("a ping with RSV1", raw_frame(0xC9, b"", KEY)),
        ("a reserved opcode", raw_frame(0x83, b"", KEY)),
        ("a fragmented ping", raw_frame(0x09, b"", KEY)),
    ];
    for (what, frame) in cases {
        let mut idle = idle_server();
        let mut wire = raw_frame(0x89, b"first", KEY);
        let before = wire.len();
        wire.extend(&frame);
        wire.extend(raw_frame(0x89, b"after", KEY));
        let mut out = BytesMut::new();
        let answered = idle.answer(&wire, &mut out, usize::MAX);
        assert_eq!(
            answered,
            IdleInput {
                consumed: before,
                wake: true
            },
            "{what}"
        );
        assert_eq!(&out[..], &raw_frame(0x8A, b"first", None)[..], "{what}");
        // The whole connection then gets the rest as it arrived and judges it.
        let mut server = idle.resume(Config::default());
        server.receive(&wire[answered.consumed..], Instant::now());
        assert!(!events(&mut server).is_empty(), "{what}");
    }
}

#[test]
fn an_idle_connection_stops_answering_at_the_output_limit() {
    let mut idle = idle_server();
    let ping = raw_frame(0x89, b"are you there", KEY);
    let wire = ping.repeat(3);
    let pong = raw_frame(0x8A, b"are you there", None);
    let mut out = BytesMut::new();
    // Room for one pong: the second ping is left to the whole connection.
    let answered = idle.answer(&wire, &mut out, pong.len());
    assert_eq!(
        answered,
        IdleInput {
            consumed: ping.len(),
            wake: true
        }
    );
    assert_eq!(&out[..], &pong[..]);
}

#[test]
fn an_idle_connection_waits_for_the_rest_of_a_frame_it_may_answer() {
    let mut idle = idle_server();
    let wire = raw_frame(0x81, b"heartbeat", KEY);
    let mut out = BytesMut::new();
    for cut in [1, 2, 5, wire.len() - 1] {
        let answered = idle.answer(&wire[..cut], &mut out, usize::MAX);
        assert_eq!(
            answered,
            IdleInput {
                consumed: 0,
                wake: false
            },
            "cut at {cut}"
        );
        assert!(out.is_empty());
    }
    assert_eq!(
        idle.answer(&wire, &mut out, usize::MAX),
        IdleInput {
            consumed: wire.len(),
            wake: false
        }
    );
    assert_eq!(&out[..], &raw_frame(0x81, b"alive", None)[..]);
}

#[test]
fn an_idle_client_masks_its_keepalive_ping_and_answers_unmasked_pings() {
    let (client, mut server) = pair();
    let mut idle = client.into_idle().unwrap();
    let mut out = BytesMut::new();
    idle.ping(b"keepalive", &mut out).unwrap();
    assert!(matches!(
        idle.ping(&[0; 126], &mut out),
        Err(UsageError::ControlPayloadTooLarge(126))
    ));
    let ping = out.split().freeze();
    assert_eq!(ping[1] & 0x80, 0x80, "a client masks");
    server.receive(&ping, Instant::now());
    assert_eq!(
        events(&mut server),
        vec![Event::Message(Message::Ping(Bytes::from_static(
            b"keepalive"
        )))]
    );
    let answered = idle.answer(&raw_frame(0x89, b"x", None), &mut out, usize::MAX);
    assert!(!answered.wake);
    server.receive(&out, Instant::now());
    assert_eq!(
        events(&mut server),
        vec![Event::Message(Message::Pong(Bytes::from_static(b"x")))]
    );
    assert!(
        idle.answer(&raw_frame(0x89, b"x", KEY), &mut out, usize::MAX)
            .wake,
        "a masked server frame"
    );
}

#[test]
fn an_idle_connection_sends_what_needs_no_compression_as_the_whole_one_would() {
    let config = Config::default();
    let threshold = config.deflate().compression_threshold;
    assert!(40 < threshold, "the small messages below stay uncompressed");
    for negotiated in [Negotiated::default(), deflate_without_context()] {
        let (client, server) = pair_with(config.clone(), negotiated.clone());
        for mut whole in [client, server] {
            let mut idle = Connection::new(
                whole.role(),
                config.clone(),
                negotiated.clone(),
                Some(Box::new(fixed_masks())),
            )
            .into_idle()
            .unwrap();
            let mut out = BytesMut::new();
            assert!(idle.send_text(&config, "small", &mut out));
            assert!(idle.send_binary(&config, &[7; 40], &mut out));
            whole.send_text("small").unwrap();
            whole.send_binary(&[7; 40]).unwrap();
            assert_eq!(&out[..], &output(&mut whole)[..], "{negotiated:?}");
            let large = "a".repeat(threshold.max(1) * 2);
            let compressed = negotiated.deflate.is_some();
            assert_eq!(idle.send_text(&config, &large, &mut out), !compressed);
        }
    }
}

proptest! {
    /// Whatever the bytes, the idle connection and the whole one agree: what the idle one
    /// answers, the whole one answers with the same bytes and no message or failure; what it
    /// stops at, the whole one gets unchanged.
    #[test]
    fn an_idle_connection_answers_as_the_whole_one_would(
        frames in proptest::collection::vec(
            (prop_oneof![Just(0x89u8), Just(0x8A), Just(0x81), Just(0x82), Just(0x88), Just(0x01), Just(0xC9)],
             prop_oneof![Just(b"heartbeat".to_vec()), proptest::collection::vec(any::<u8>(), 0..20)],
             any::<bool>()),
            0..6,
        ),
    ) {
        let wire: Vec<u8> = frames
            .iter()
            .flat_map(|(first, payload, masked)| raw_frame(*first, payload, masked.then_some([7, 1, 9, 3])))
            .collect();
        let mut idle = idle_server();
        let mut out = BytesMut::new();
        let answered = idle.answer(&wire, &mut out, usize::MAX);
        prop_assert!(answered.consumed <= wire.len());
        // Whether or not the whole connection assembles messages.
        for assemble in [true, false] {
            let config = Config::builder().assemble_messages(assemble).build().unwrap();
            let mut whole = Connection::server(config, Negotiated::default());
            whole.set_auto_response(Some(Arc::new(AutoResponse {
                request: Utf8Bytes::from_static("heartbeat"),
                response: Utf8Bytes::from_static("alive"),
            })));
            whole.receive(&wire[..answered.consumed], Instant::now());
            let heard = events(&mut whole);
            prop_assert!(
                heard.iter().all(|event| matches!(event, Event::Message(Message::Ping(_) | Message::Pong(_)))),
                "the idle connection answered something the whole one does not: {heard:?}"
            );
            prop_assert_eq!(output(&mut whole), out.to_vec());
            prop_assert_eq!(whole.auto_response_hits(), idle.auto_response_hits());
        }
    }
}

#[test]
fn a_connection_with_something_in_flight_does_not_go_idle() {
    let now = Instant::now();
    // Half a frame received.
    let (mut client, mut server) = pair();
    client.send_text("half of this").unwrap();
    let wire = output(&mut client);
    server.receive(&wire[..4], now);
    let server = server.into_idle().unwrap_err();
    assert!(events(&mut { server }).is_empty());
    // Our close sent, the peer's not received yet.
    let (_, mut server) = pair();
    server.close(None, now).unwrap();
    let _ = output(&mut server);
    assert!(server.into_idle().is_err());
    // A compression window that the next message depends on.
    let negotiated = Negotiated {
        deflate: Some(DeflateParams::default()),
        no_masking: false,
    };
    let (mut client, mut server) = pair_with(Config::default(), negotiated);
    let payload = "context ".repeat(100);
    client.send_text(&payload).unwrap();
    pump(&mut client, &mut server, now);
    assert_eq!(events(&mut server), vec![text(&payload)]);
    server.release_compression_state();
    assert!(server.into_idle().is_err(), "the inflater's window is kept");
}
