//! A client core against a server core in memory: no sockets, no sleeps, a fake clock.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use proptest::prelude::*;

use super::*;
use crate::{DeflateParams, UsageError, config::Limits, frame::Frame, mask::apply_mask};

fn fixed_masks() -> impl MaskSource {
    let mut next = 0u8;
    move || {
        next = next.wrapping_add(37);
        [next, next ^ 0x5a, next.wrapping_mul(3), 0xc3]
    }
}

fn pair_with(config: Config, negotiated: Negotiated) -> (Connection, Connection) {
    let client = Connection::client(config.clone(), negotiated.clone(), fixed_masks());
    let server = Connection::server(config, negotiated);
    (client, server)
}

fn pair() -> (Connection, Connection) {
    pair_with(Config::default(), Negotiated::default())
}

/// Everything `connection` has queued, in one piece.
fn output(connection: &mut Connection) -> Vec<u8> {
    connection.take_output().flatten().collect()
}

/// Moves everything `from` has queued into `to`, in one piece.
fn pump(from: &mut Connection, to: &mut Connection, now: Instant) {
    let bytes = output(from);
    to.receive(&bytes, now);
}

fn events(connection: &mut Connection) -> Vec<Event> {
    std::iter::from_fn(|| connection.next_event()).collect()
}

fn text(text: &str) -> Event {
    Event::Message(Message::text(text))
}

/// A raw frame, for frames the API refuses to build: `first_byte` holds FIN, RSV and opcode.
fn raw_frame(first_byte: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let mut out = vec![first_byte];
    match payload.len() {
        len if len < 126 => out.push(mask_bit | len as u8),
        len if len <= 0xffff => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask.unwrap_or_default()[..if mask.is_some() { 4 } else { 0 }]);
    let start = out.len();
    out.extend_from_slice(payload);
    if let Some(key) = mask {
        apply_mask(&mut out[start..], key, 0);
    }
    out
}

const KEY: Option<[u8; 4]> = Some([1, 2, 3, 4]);

/// Sends raw client bytes to a fresh server; returns its events and the close code it sent.
fn server_reaction(bytes: &[u8], config: Config) -> (Vec<Event>, Option<u16>) {
    let mut server = Connection::server(config, Negotiated::default());
    server.receive(bytes, Instant::now());
    let events = events(&mut server);
    let out = server.pending_output();
    let code = (out.len() >= 4 && out[0] == 0x88).then(|| u16::from_be_bytes([out[2], out[3]]));
    (events, code)
}

#[test]
fn rfc_6455_section_5_7_examples() {
    let now = Instant::now();
    // A single-frame masked text message, to a server.
    let mut server = Connection::server(Config::default(), Negotiated::default());
    server.receive(
        &[
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ],
        now,
    );
    assert_eq!(events(&mut server), vec![text("Hello")]);
    // A fragmented unmasked text message, to a client.
    let mut client = Connection::client(Config::default(), Negotiated::default(), fixed_masks());
    client.receive(&[0x01, 0x03, 0x48, 0x65, 0x6c, 0x80, 0x02, 0x6c, 0x6f], now);
    assert_eq!(events(&mut client), vec![text("Hello")]);
    // An unmasked ping to a client is answered by a masked pong with the same payload.
    client.receive(&[0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f], now);
    assert_eq!(
        events(&mut client),
        vec![Event::Message(Message::Ping(Bytes::from("Hello")))]
    );
    let pong = output(&mut client);
    assert_eq!(&pong[..2], &[0x8a, 0x85]);
    let mut unmasked = pong[6..].to_vec();
    apply_mask(&mut unmasked, [pong[2], pong[3], pong[4], pong[5]], 0);
    assert_eq!(unmasked, b"Hello");
}

#[test]
fn messages_round_trip_both_ways_at_every_size() {
    let now = Instant::now();
    let (mut client, mut server) = pair();
    for size in [0, 1, 125, 126, 65535, 65536, 300_000] {
        let data: Vec<u8> = (0..size).map(|i| (i * 7) as u8).collect();
        client.send_binary(&data).unwrap();
        pump(&mut client, &mut server, now);
        assert_eq!(
            events(&mut server),
            vec![Event::Message(Message::binary(data.clone()))]
        );
        let text_payload = "é".repeat(size / 2);
        server.send_text(&text_payload).unwrap();
        pump(&mut server, &mut client, now);
        assert_eq!(events(&mut client), vec![text(&text_payload)]);
    }
}

#[test]
fn byte_at_a_time_delivery_gives_the_same_messages() {
    let now = Instant::now();
    let (mut client, mut server) = pair();
    client.send_text("fragmented delivery").unwrap();
    client.send_ping(b"p").unwrap();
    client.send_binary(&[9; 300]).unwrap();
    for byte in output(&mut client).iter() {
        server.receive(&[*byte], now);
    }
    assert_eq!(
        events(&mut server),
        vec![
            text("fragmented delivery"),
            Event::Message(Message::Ping(Bytes::from_static(b"p"))),
            Event::Message(Message::binary(vec![9; 300])),
        ]
    );
}

#[test]
fn control_frames_interleave_with_fragments() {
    let now = Instant::now();
    let (mut client, mut server) = pair();
    client
        .send_frame(&Frame::new(false, OpCode::Text, "Hel"), now)
        .unwrap();
    client.send_ping(b"in between").unwrap();
    client
        .send_frame(&Frame::new(false, OpCode::Continuation, "l"), now)
        .unwrap();
    client
        .send_frame(&Frame::new(true, OpCode::Continuation, "o"), now)
        .unwrap();
    pump(&mut client, &mut server, now);
    assert_eq!(
        events(&mut server),
        vec![
            Event::Message(Message::Ping(Bytes::from_static(b"in between"))),
            text("Hello")
        ]
    );
    // The server answered the ping while the message was still open.
    pump(&mut server, &mut client, now);
    assert_eq!(
        events(&mut client),
        vec![Event::Message(Message::Pong(Bytes::from_static(
            b"in between"
        )))]
    );
}

#[test]
fn fragmentation_rules_are_enforced_on_send() {
    let now = Instant::now();
    let (mut client, _) = pair();
    let continuation = Frame::new(true, OpCode::Continuation, "x");
    assert_eq!(
        client.send_frame(&continuation, now),
        Err(UsageError::NoMessageToContinue)
    );
    client
        .send_frame(&Frame::new(false, OpCode::Binary, "a"), now)
        .unwrap();
    assert_eq!(client.send_text("b"), Err(UsageError::MessageUnfinished));
    let text_frame = Frame::new(true, OpCode::Text, "c");
    assert_eq!(
        client.send_frame(&text_frame, now),
        Err(UsageError::MessageUnfinished)
    );
    let ping = Frame::new(false, OpCode::Ping, "");
    assert_eq!(
        client.send_frame(&ping, now),
        Err(UsageError::FragmentedControlFrame)
    );
    let (mut client, _) = pair();
    let split_char = Frame::new(false, OpCode::Text, Bytes::from_static(&[0xc3]));
    client.send_frame(&split_char, now).unwrap();
    let bad_end = Frame::new(true, OpCode::Continuation, Bytes::from_static(&[0x28]));
    assert_eq!(
        client.send_frame(&bad_end, now),
        Err(UsageError::InvalidUtf8)
    );
}

#[test]
fn without_assembly_frames_are_delivered_one_by_one() {
    let now = Instant::now();
    let config = Config::builder().assemble_messages(false).build().unwrap();
    let (mut client, mut server) = pair_with(config, Negotiated::default());
    client
        .send_frame(&Frame::new(false, OpCode::Text, "ab"), now)
        .unwrap();
    client
        .send_frame(&Frame::new(true, OpCode::Continuation, "cd"), now)
        .unwrap();
    pump(&mut client, &mut server, now);
    assert_eq!(
        events(&mut server),
        vec![
            Event::Message(Message::Frame(Frame::new(false, OpCode::Text, "ab"))),
            Event::Message(Message::Frame(Frame::new(true, OpCode::Continuation, "cd"))),
        ]
    );
}

#[test]
fn invalid_utf8_fails_fast_in_the_middle_of_a_frame() {
    let now = Instant::now();
    let mut server = Connection::server(Config::default(), Negotiated::default());
    let frame = raw_frame(0x81, b"valid\xed\xa0\x80 and more text follows", KEY);
    // Deliver only up to the first impossible byte (0xA0 after 0xED): header 6 + 5 + 2.
    server.receive(&frame[..13], now);
    assert_eq!(
        events(&mut server),
        vec![Event::Failed(ProtocolError::InvalidUtf8)]
    );
    assert_eq!(&server.pending_output()[2..4], &1007u16.to_be_bytes());
    assert!(server.is_finished());
}

#[test]
fn a_text_message_cut_mid_character_is_invalid() {
    let frames = [
        raw_frame(0x01, "é".as_bytes(), KEY),
        raw_frame(0x80, &[0xc3], KEY),
    ]
    .concat();
    let (events, code) = server_reaction(&frames, Config::default());
    assert_eq!(events, vec![Event::Failed(ProtocolError::InvalidUtf8)]);
    assert_eq!(code, Some(1007));
}

#[test]
fn protocol_violations_close_with_the_right_code() {
    let small = Config::builder()
        .max_frame_size(1000)
        .max_message_size(1500)
        .build()
        .unwrap();
    let cases: Vec<(&str, Vec<u8>, ProtocolError, u16)> = vec![
        (
            "unmasked",
            raw_frame(0x81, b"hi", None),
            ProtocolError::UnmaskedClientFrame,
            1002,
        ),
        (
            "reserved opcode",
            raw_frame(0x83, b"", KEY),
            ProtocolError::ReservedOpcode(3),
            1002,
        ),
        (
            "rsv1 without deflate",
            raw_frame(0xc1, b"", KEY),
            ProtocolError::ReservedBits,
            1002,
        ),
        (
            "rsv2",
            raw_frame(0xa1, b"", KEY),
            ProtocolError::ReservedBits,
            1002,
        ),
        (
            "continuation first",
            raw_frame(0x80, b"x", KEY),
            ProtocolError::UnexpectedContinuation,
            1002,
        ),
        (
            "data inside a fragmented message",
            [raw_frame(0x01, b"a", KEY), raw_frame(0x81, b"b", KEY)].concat(),
            ProtocolError::ExpectedContinuation,
            1002,
        ),
        (
            "fragmented ping",
            raw_frame(0x09, b"", KEY),
            ProtocolError::FragmentedControlFrame,
            1002,
        ),
        (
            "oversized ping",
            raw_frame(0x89, &[0; 126], KEY),
            ProtocolError::OversizedControlFrame(126),
            1002,
        ),
        (
            "close of one byte",
            raw_frame(0x88, &[3], KEY),
            ProtocolError::TruncatedClosePayload,
            1002,
        ),
        (
            "reserved close code",
            raw_frame(0x88, &1005u16.to_be_bytes(), KEY),
            ProtocolError::InvalidCloseCode(1005),
            1002,
        ),
        (
            "close reason not UTF-8",
            raw_frame(0x88, &[3, 232, 0xff, 0xfe], KEY),
            ProtocolError::InvalidCloseReason,
            1007,
        ),
    ];
    for (name, bytes, error, code) in cases {
        let (events, sent) = server_reaction(&bytes, Config::default());
        assert_eq!(events, vec![Event::Failed(error)], "{name}");
        assert_eq!(sent, Some(code), "{name}");
    }
    let (events, sent) = server_reaction(&raw_frame(0x82, &[0; 1001], KEY), small.clone());
    assert_eq!(
        events,
        vec![Event::Failed(ProtocolError::FrameTooLarge {
            size: 1001,
            max: 1000
        })]
    );
    assert_eq!(sent, Some(1009));
    let two = [
        raw_frame(0x02, &[0; 1000], KEY),
        raw_frame(0x80, &[0; 501], KEY),
    ]
    .concat();
    let (events, sent) = server_reaction(&two, small);
    assert_eq!(
        events,
        vec![Event::Failed(ProtocolError::MessageTooLarge { max: 1500 })]
    );
    assert_eq!(sent, Some(1009));
}

#[test]
fn a_huge_declared_length_allocates_nothing_up_front() {
    let mut server = Connection::server(
        Config::builder()
            .max_frame_size(usize::MAX)
            .max_message_size(usize::MAX)
            .build()
            .unwrap(),
        Negotiated::default(),
    );
    let header = [0x82, 0xff, 0, 0, 0, 1, 0, 0, 0, 0, 1, 2, 3, 4]; // 1 TiB, masked
    server.receive(&header, Instant::now());
    server.receive(&[0; 10], Instant::now());
    assert!(
        server.payload.capacity() < 1 << 20,
        "capacity {}",
        server.payload.capacity()
    );
    assert!(events(&mut server).is_empty());
}

#[test]
fn masking_rules_follow_the_role() {
    let now = Instant::now();
    let mut client = Connection::client(Config::default(), Negotiated::default(), fixed_masks());
    client.receive(&raw_frame(0x81, b"hi", KEY), now);
    assert_eq!(
        events(&mut client),
        vec![Event::Failed(ProtocolError::MaskedServerFrame)]
    );
    // With no-masking negotiated, client frames travel unmasked and masked ones are refused.
    let negotiated = Negotiated {
        no_masking: true,
        ..Negotiated::default()
    };
    let (mut client, mut server) = pair_with(Config::default(), negotiated.clone());
    client.send_text("plain").unwrap();
    assert_eq!(client.pending_output()[1] & 0x80, 0, "no mask bit");
    pump(&mut client, &mut server, now);
    assert_eq!(events(&mut server), vec![text("plain")]);
    let mut server = Connection::server(Config::default(), negotiated);
    server.receive(&raw_frame(0x81, b"hi", KEY), now);
    assert_eq!(
        events(&mut server),
        vec![Event::Failed(ProtocolError::MaskedClientFrame)]
    );
}

#[test]
fn a_ping_flood_from_a_peer_that_never_reads_stays_bounded() {
    let config = Config::builder().max_queued_output(1000).build().unwrap();
    let mut server = Connection::server(config, Negotiated::default());
    let ping = raw_frame(0x89, &[7; 100], KEY);
    for _ in 0..1000 {
        server.receive(&ping, Instant::now());
        while server.next_event().is_some() {}
    }
    assert!(
        server.pending_output().len() < 1200,
        "{}",
        server.pending_output().len()
    );
}

#[test]
fn compressed_messages_round_trip_with_context_takeover() {
    let now = Instant::now();
    let negotiated = Negotiated {
        deflate: Some(DeflateParams::default()),
        no_masking: false,
    };
    let (mut client, mut server) = pair_with(Config::default(), negotiated);
    let payload = r#"{"event":"tick","value":12345,"tags":["a","b","c"]}"#.repeat(20);
    for _ in 0..3 {
        client.send_text(&payload).unwrap();
        let wire = client.pending_output().len();
        assert!(wire < payload.len() / 4, "compressed to {wire} bytes");
        assert_eq!(client.pending_output()[0], 0xc1, "FIN, RSV1 and text");
        pump(&mut client, &mut server, now);
        assert_eq!(events(&mut server), vec![text(&payload)]);
        server.send_text(&payload).unwrap();
        pump(&mut server, &mut client, now);
        assert_eq!(events(&mut client), vec![text(&payload)]);
    }
    // Below the threshold a message goes uncompressed.
    client.send_text("tiny").unwrap();
    assert_eq!(client.pending_output()[0], 0x81);
}

#[test]
fn a_decompression_bomb_fails_as_soon_as_it_inflates_past_the_limit() {
    let negotiated = Negotiated {
        deflate: Some(DeflateParams::default()),
        no_masking: false,
    };
    let config = Config::builder()
        .max_message_size(64 << 10)
        .build()
        .unwrap();
    let (mut client, _) = pair_with(Config::default(), negotiated.clone());
    let mut server = Connection::server(config, negotiated);
    client.send_binary(&vec![0; 8 << 20]).unwrap();
    let wire = output(&mut client);
    assert_eq!(wire[0], 0xc2, "one compressed binary frame");
    // The first half of the frame already inflates past the limit: the server says so
    // without waiting for (and holding) the rest.
    server.receive(&wire[..wire.len() / 2], Instant::now());
    assert_eq!(
        events(&mut server),
        vec![Event::Failed(ProtocolError::MessageTooLarge {
            max: 64 << 10
        })]
    );
    assert!(
        server.payload.capacity() < 1 << 20,
        "{}",
        server.payload.capacity()
    );
}

#[test]
fn compressed_text_split_anywhere_arrives_whole() {
    let now = Instant::now();
    let negotiated = Negotiated {
        deflate: Some(DeflateParams::default()),
        no_masking: false,
    };
    let (mut client, mut server) = pair_with(Config::default(), negotiated);
    let payload = "héllo wörld, ".repeat(500);
    for _ in 0..2 {
        client.send_text(&payload).unwrap();
        let wire = output(&mut client);
        for piece in wire.chunks(7) {
            server.receive(piece, now);
        }
        assert_eq!(events(&mut server), vec![text(&payload)]);
    }
}

/// `payload` compressed by a fresh client codec: a message's data as it goes out with RSV1.
fn client_compressed(payload: &[u8]) -> Vec<u8> {
    let mut codec = crate::deflate::DeflateCodec::new(
        false,
        DeflateParams::default(),
        &crate::DeflateConfig::default(),
    );
    let mut compressed = Vec::new();
    codec.compress(payload, &mut compressed);
    compressed
}

/// `payload` compressed by a fresh client codec, cut into `frames` masked raw frames: a text
/// frame with RSV1, continuations, the last with FIN.
fn compressed_text_frames(payload: &[u8], frames: usize) -> Vec<Vec<u8>> {
    let compressed = client_compressed(payload);
    let piece = compressed.len().div_ceil(frames);
    let pieces: Vec<&[u8]> = compressed.chunks(piece).collect();
    assert_eq!(
        pieces.len(),
        frames,
        "{} compressed bytes",
        compressed.len()
    );
    pieces
        .iter()
        .enumerate()
        .map(|(index, piece)| {
            let first = if index == 0 { 0x41 } else { 0x00 };
            let fin = if index + 1 == frames { 0x80 } else { 0x00 };
            raw_frame(first | fin, piece, KEY)
        })
        .collect()
}

#[test]
fn a_compressed_message_over_several_frames_arrives_whole_or_frame_by_frame() {
    let now = Instant::now();
    let negotiated = Negotiated {
        deflate: Some(DeflateParams::default()),
        no_masking: false,
    };
    let payload = "héllo wörld, ".repeat(400);
    let wire: Vec<u8> = compressed_text_frames(payload.as_bytes(), 3).concat();
    for pieces in [wire.len(), 7] {
        let mut server = Connection::server(Config::default(), negotiated.clone());
        for piece in wire.chunks(pieces) {
            server.receive(piece, now);
        }
        assert_eq!(events(&mut server), vec![text(&payload)]);
    }
    // Without assembly: three frames, inflated, opcodes as sent and RSV1 gone; together the
    // message.
    let config = Config::builder().assemble_messages(false).build().unwrap();
    let mut server = Connection::server(config, negotiated);
    server.receive(&wire, now);
    let frames: Vec<Frame> = events(&mut server)
        .into_iter()
        .map(|event| match event {
            Event::Message(Message::Frame(frame)) => frame,
            other => panic!("expected a frame, got {other:?}"),
        })
        .collect();
    let shape: Vec<(bool, OpCode)> = frames.iter().map(|f| (f.fin, f.opcode)).collect();
    assert_eq!(
        shape,
        [
            (false, OpCode::Text),
            (false, OpCode::Continuation),
            (true, OpCode::Continuation)
        ]
    );
    let joined: Vec<u8> = frames.iter().flat_map(|f| f.payload.to_vec()).collect();
    assert_eq!(joined, payload.as_bytes());
}

#[test]
fn a_compressed_message_over_several_frames_may_inflate_to_exactly_the_limit() {
    let now = Instant::now();
    let negotiated = Negotiated {
        deflate: Some(DeflateParams::default()),
        no_masking: false,
    };
    let payload = "héllo wörld, ".repeat(400);
    let wire: Vec<u8> = compressed_text_frames(payload.as_bytes(), 4).concat();
    let limited = |max| {
        let config = Config::builder().max_message_size(max).build().unwrap();
        let mut server = Connection::server(config, negotiated.clone());
        server.receive(&wire, now);
        events(&mut server)
    };
    assert_eq!(limited(payload.len()), vec![text(&payload)]);
    assert_eq!(
        limited(payload.len() - 1),
        vec![Event::Failed(ProtocolError::MessageTooLarge {
            max: payload.len() - 1
        })]
    );
}

#[test]
fn an_oversized_compressed_text_fails_by_its_first_fault_however_it_is_read() {
    // Invalid UTF-8 inside the first max_message_size inflated bytes is 1007, past them 1009:
    // the same verdict whether the frame arrives whole or in pieces of any size.
    let now = Instant::now();
    let negotiated = Negotiated {
        deflate: Some(DeflateParams::default()),
        no_masking: false,
    };
    let max = 64 << 10;
    for (bad_at, expected) in [
        (100, ProtocolError::InvalidUtf8),
        (max - 1, ProtocolError::InvalidUtf8),
        (max, ProtocolError::MessageTooLarge { max }),
        (max + 4000, ProtocolError::MessageTooLarge { max }),
    ] {
        let mut payload = b"abcdefgh".repeat(max / 4);
        payload[bad_at] = 0xff;
        let wire = compressed_text_frames(&payload, 1).concat();
        for piece in [wire.len(), 1000, 7, 1] {
            let config = Config::builder().max_message_size(max).build().unwrap();
            let mut server = Connection::server(config, negotiated.clone());
            for bytes in wire.chunks(piece) {
                server.receive(bytes, now);
            }
            assert_eq!(
                events(&mut server),
                vec![Event::Failed(expected.clone())],
                "invalid byte at {bad_at}, read in pieces of {piece}"
            );
        }
    }
}

#[test]
fn limits_default_to_safe_values() {
    let limits = Limits::default();
    assert_eq!(limits.max_message_size, 16 << 20);
    assert_eq!(limits.close_timeout, Duration::from_secs(5));
}

#[derive(Debug, Clone)]
enum Op {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        "\\PC{0,300}".prop_map(Op::Text),
        proptest::collection::vec(any::<u8>(), 0..3000).prop_map(Op::Binary),
        proptest::collection::vec(any::<u8>(), 0..125).prop_map(Op::Ping),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn any_messages_cut_anywhere_arrive_intact(
        ops in proptest::collection::vec(op(), 1..12),
        cuts in proptest::collection::vec(1usize..700, 1..40),
        deflate in any::<bool>(),
    ) {
        let now = Instant::now();
        let negotiated = Negotiated {
            deflate: deflate.then(DeflateParams::default),
            no_masking: false,
        };
        let (mut client, mut server) = pair_with(Config::default(), negotiated);
        let mut expected = Vec::new();
        for op in &ops {
            match op {
                Op::Text(text) => {
                    client.send_text(text).unwrap();
                    expected.push(Event::Message(Message::text(text.as_str())));
                }
                Op::Binary(data) => {
                    client.send_binary(data).unwrap();
                    expected.push(Event::Message(Message::binary(data.clone())));
                }
                Op::Ping(data) => {
                    client.send_ping(data).unwrap();
                    expected.push(Event::Message(Message::Ping(Bytes::from(data.clone()))));
                }
            }
        }
        let wire = output(&mut client);
        let mut rest = &wire[..];
        for cut in cuts.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (piece, tail) = rest.split_at((*cut).min(rest.len()));
            server.receive(piece, now);
            rest = tail;
        }
        prop_assert_eq!(events(&mut server), expected);
    }
}

#[test]
fn the_auto_response_answers_inside_the_codec_without_an_event() {
    let now = Instant::now();
    let (mut client, mut server) = pair();
    server.set_auto_response(Some(Arc::new(AutoResponse {
        request: Utf8Bytes::from_static("heartbeat"),
        response: Utf8Bytes::from_static("alive"),
    })));
    client.send_text("heartbeat").unwrap();
    client.send_text("heartbeat!").unwrap();
    client.send_binary(b"heartbeat").unwrap();
    client.send_text("heartbeat").unwrap();
    pump(&mut client, &mut server, now);
    assert_eq!(
        events(&mut server),
        vec![
            text("heartbeat!"),
            Event::Message(Message::binary(&b"heartbeat"[..]))
        ],
        "only the exact text request is answered"
    );
    assert_eq!(server.auto_response_hits(), 2);
    pump(&mut server, &mut client, now);
    assert_eq!(events(&mut client), vec![text("alive"), text("alive")]);
    server.set_auto_response(None);
    client.send_text("heartbeat").unwrap();
    pump(&mut client, &mut server, now);
    assert_eq!(events(&mut server), vec![text("heartbeat")]);
}

#[test]
fn without_assembly_a_request_in_one_frame_is_answered_and_a_fragmented_one_delivered() {
    let now = Instant::now();
    let config = Config::builder().assemble_messages(false).build().unwrap();
    let (mut client, mut server) = pair_with(config, Negotiated::default());
    server.set_auto_response(Some(Arc::new(AutoResponse {
        request: Utf8Bytes::from_static("heartbeat"),
        response: Utf8Bytes::from_static("alive"),
    })));
    client.send_text("heartbeat").unwrap();
    for (fin, opcode, part) in [
        (false, OpCode::Text, "heart"),
        (true, OpCode::Continuation, "beat"),
    ] {
        let part = Frame::new(fin, opcode, Bytes::from_static(part.as_bytes()));
        client.send_frame(&part, now).unwrap();
    }
    pump(&mut client, &mut server, now);
    let frame = |fin, opcode, payload: &'static [u8]| {
        Event::Message(Message::Frame(Frame::new(
            fin,
            opcode,
            Bytes::from_static(payload),
        )))
    };
    assert_eq!(
        events(&mut server),
        vec![
            frame(false, OpCode::Text, b"heart"),
            frame(true, OpCode::Continuation, b"beat")
        ]
    );
    assert_eq!(server.auto_response_hits(), 1);
    pump(&mut server, &mut client, now);
    assert_eq!(
        events(&mut client),
        vec![frame(true, OpCode::Text, b"alive")]
    );
}

/// Found by the `connection_server` fuzz target (fuzz/regressions/connection_server/
/// auto-response-inside-fragmented-send): the auto-response was written inside a fragmented
/// message the application was sending, breaking RFC 6455 §5.4 framing.
#[test]
fn an_auto_response_never_lands_inside_a_fragmented_send() {
    let now = Instant::now();
    let (mut client, mut server) = pair();
    server.set_auto_response(Some(Arc::new(AutoResponse {
        request: Utf8Bytes::new(),
        response: Utf8Bytes::new(),
    })));
    server
        .send_frame(&Frame::new(false, OpCode::Text, ""), now)
        .unwrap();
    client.send_text("").unwrap();
    pump(&mut client, &mut server, now);
    assert_eq!(
        events(&mut server),
        vec![text("")],
        "delivered to the application instead"
    );
    server
        .send_frame(&Frame::new(true, OpCode::Continuation, "done"), now)
        .unwrap();
    pump(&mut server, &mut client, now);
    assert_eq!(
        events(&mut client),
        vec![text("done")],
        "the peer sees one well-formed message"
    );
    // Once the fragmented message is finished, the auto-response works again.
    client.send_text("").unwrap();
    pump(&mut client, &mut server, now);
    assert!(events(&mut server).is_empty());
    assert_eq!(server.auto_response_hits(), 1);
}

/// Found while writing the fuzz harness (docs/fuzzing.md, finding 2): a refused text fragment
/// used to advance the send-side UTF-8 check, so a later fragment completing invalid text was
/// accepted and the peer failed the connection with 1007.
#[test]
fn a_refused_text_fragment_does_not_corrupt_the_utf8_check() {
    let now = Instant::now();
    let (mut client, mut server) = pair();
    let start = Frame::new(false, OpCode::Text, Bytes::from_static(&[0xE2, 0x82]));
    client.send_frame(&start, now).unwrap();
    let bad = Frame::new(
        false,
        OpCode::Continuation,
        Bytes::from_static(&[0xAC, 0xFF]),
    );
    assert_eq!(client.send_frame(&bad, now), Err(UsageError::InvalidUtf8));
    let wrong_end = Frame::new(true, OpCode::Continuation, Bytes::from_static(b"a"));
    assert_eq!(
        client.send_frame(&wrong_end, now),
        Err(UsageError::InvalidUtf8)
    );
    let right_end = Frame::new(true, OpCode::Continuation, Bytes::from_static(&[0xAC]));
    client.send_frame(&right_end, now).unwrap();
    pump(&mut client, &mut server, now);
    assert_eq!(events(&mut server), vec![text("€")]);
}

/// One frame of a hostile client's stream: any first byte (FIN, RSV bits, opcode, even
/// reserved ones), masked or not, with a payload that may be invalid UTF-8.
fn hostile_frame() -> impl Strategy<Value = Vec<u8>> {
    (
        prop_oneof![
            Just(0x81u8),
            Just(0x82),
            Just(0x01),
            Just(0x80),
            Just(0x89),
            Just(0x8a),
            Just(0x88),
            any::<u8>()
        ],
        prop_oneof![
            Just(b"ping?".to_vec()),
            "\\PC{0,40}".prop_map(String::into_bytes),
            proptest::collection::vec(any::<u8>(), 0..200),
        ],
        prop_oneof![4 => Just(true), 1 => Just(false)],
    )
        .prop_map(|(first, payload, masked)| {
            raw_frame(first, &payload, masked.then_some([9, 8, 7, 6]))
        })
}

/// A compressed text or binary frame whose payload (repeated to inflate well past a small
/// limit) may be invalid UTF-8: only a server that negotiated permessage-deflate takes it.
fn compressed_frame() -> impl Strategy<Value = Vec<u8>> {
    (
        prop_oneof![Just(0xc1u8), Just(0xc2)],
        proptest::collection::vec(any::<u8>(), 0..40),
        1..200usize,
    )
        .prop_map(|(first, payload, times)| {
            raw_frame(first, &client_compressed(&payload.repeat(times)), KEY)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// A whole frame at the start of the input takes a shorter way than one that arrives in
    /// pieces (`Connection::whole_message`): both must say and send exactly the same.
    #[test]
    fn a_stream_read_whole_or_byte_by_byte_gives_the_same_events_and_replies(
        frames in proptest::collection::vec(
            prop_oneof![3 => hostile_frame(), 1 => compressed_frame()],
            1..10,
        ),
        auto in any::<bool>(),
        deflate in any::<bool>(),
        max_message_size in prop_oneof![Just(16 << 20), 1..2000usize],
    ) {
        let now = Instant::now();
        let wire: Vec<u8> = frames.concat();
        let negotiated = Negotiated {
            deflate: deflate.then(DeflateParams::default),
            no_masking: false,
        };
        let config = Config::builder()
            .max_message_size(max_message_size)
            .build()
            .unwrap();
        let server = || {
            let mut server = Connection::server(config.clone(), negotiated.clone());
            if auto {
                server.set_auto_response(Some(Arc::new(AutoResponse {
                    request: Utf8Bytes::from_static("ping?"),
                    response: Utf8Bytes::from_static("pong!"),
                })));
            }
            server
        };
        let mut whole = server();
        whole.receive(&wire, now);
        let whole_events = events(&mut whole);
        let mut pieces = server();
        let mut piece_events = Vec::new();
        for byte in &wire {
            pieces.receive(std::slice::from_ref(byte), now);
            piece_events.extend(events(&mut pieces));
        }
        prop_assert_eq!(whole_events, piece_events);
        prop_assert_eq!(output(&mut whole), output(&mut pieces));
    }
}

mod close;
mod idle;
mod in_place;
