//! Large payloads: received as slices of the input buffer, sent without a copy.

use super::*;

#[test]
fn a_large_message_is_a_slice_of_the_input_buffer_unmasked_in_place() {
    let now = Instant::now();
    let payload = vec![b'x'; 4 * SHARED_PAYLOAD_MIN];
    let mut wire = raw_frame(0x82, &payload, KEY);
    wire.extend_from_slice(&raw_frame(0x82, b"small", KEY));
    let mut server = Connection::server(Config::default(), Negotiated::default());
    server.input_buffer().extend_from_slice(&wire);
    let start = server.input_buffer().as_ptr() as usize;
    let inside = |bytes: &[u8]| (start..start + wire.len()).contains(&(bytes.as_ptr() as usize));
    server.receive_input(now);
    let Some(Event::Message(Message::Binary(large))) = server.next_event() else {
        panic!("expected the large message")
    };
    assert_eq!(large, payload);
    assert!(inside(&large), "the payload is not a copy");
    assert_eq!(
        large.as_ptr() as usize - start,
        8,
        "it starts right after its 8-byte header"
    );
    let Some(Event::Message(Message::Binary(small))) = server.next_event() else {
        panic!("expected the small message")
    };
    assert_eq!(small, &b"small"[..]);
    assert!(!inside(&small), "a small message is a copy");
    assert_eq!(server.next_event(), None);
}

#[test]
fn a_frame_in_place_is_checked_as_its_bytes_arrive() {
    let now = Instant::now();
    // Invalid UTF-8 at the start of a long text frame, of which only the first bytes arrive.
    let mut payload = vec![b'a'; 8 * SHARED_PAYLOAD_MIN];
    payload[10] = 0xff;
    let wire = raw_frame(0x81, &payload, KEY);
    let mut server = Connection::server(Config::default(), Negotiated::default());
    server.receive(&wire[..40], now);
    assert!(
        matches!(
            server.next_event(),
            Some(Event::Failed(ProtocolError::InvalidUtf8))
        ),
        "fails on the first invalid byte, before the frame is complete"
    );
    // A valid one arriving a byte at a time is unmasked exactly once.
    let payload: Vec<u8> = (0..3 * SHARED_PAYLOAD_MIN)
        .map(|i| b'a' + (i % 26) as u8)
        .collect();
    let wire = raw_frame(0x81, &payload, KEY);
    let mut server = Connection::server(Config::default(), Negotiated::default());
    for byte in &wire {
        server.receive(std::slice::from_ref(byte), now);
    }
    assert_eq!(
        events(&mut server),
        [text(std::str::from_utf8(&payload).unwrap())]
    );
}

#[test]
fn frames_pass_in_place_without_assembly() {
    let now = Instant::now();
    let config = Config::builder().assemble_messages(false).build().unwrap();
    let mut server = Connection::server(config, Negotiated::default());
    let first = vec![b'a'; 2 * SHARED_PAYLOAD_MIN];
    let mut wire = raw_frame(0x01, &first, KEY);
    wire.extend_from_slice(&raw_frame(0x80, b"end", KEY));
    server.receive(&wire, now);
    let got = events(&mut server);
    assert_eq!(
        got,
        [
            Event::Message(Message::Frame(Frame::new(
                false,
                OpCode::Text,
                Bytes::from(first)
            ))),
            Event::Message(Message::Frame(Frame::new(
                true,
                OpCode::Continuation,
                Bytes::from_static(b"end")
            ))),
        ]
    );
}

#[test]
fn a_large_payload_is_sent_without_a_copy_and_written_in_pieces() {
    let now = Instant::now();
    let (mut client, mut server) = pair();
    let payload = Bytes::from(vec![7u8; 2 * SHARED_PAYLOAD_MIN]);
    server.send_binary_bytes(payload.clone()).unwrap();
    server.send_text("after").unwrap();
    let pieces: Vec<&[u8]> = server.pending_output_chunks().collect();
    assert_eq!(
        pieces.len(),
        3,
        "header, the payload itself, then the next frame"
    );
    assert_eq!(
        pieces[1].as_ptr(),
        payload.as_ptr(),
        "the payload is not copied"
    );
    assert_eq!(
        server.pending_output_len(),
        4 + payload.len() + 7,
        "every piece counts"
    );
    // Written in odd pieces across the boundaries, it arrives whole.
    let mut wire = Vec::new();
    while server.pending_output_len() > 0 {
        let piece = server.pending_output();
        let n = piece.len().min(1000);
        wire.extend_from_slice(&piece[..n]);
        server.consume_output(n);
    }
    client.receive(&wire, now);
    assert_eq!(
        events(&mut client),
        [Event::Message(Message::Binary(payload)), text("after")]
    );
    // A client masks, so it copies.
    let big = Bytes::from(vec![1u8; 2 * SHARED_PAYLOAD_MIN]);
    client.send_binary_bytes(big.clone()).unwrap();
    assert_eq!(client.pending_output_chunks().count(), 1);
    pump(&mut client, &mut server, now);
    assert_eq!(events(&mut server), [Event::Message(Message::Binary(big))]);
}

#[test]
fn bytes_put_into_the_input_buffer_wait_for_receive_input() {
    let mut server = Connection::server(Config::default(), Negotiated::default());
    let close = raw_frame(0x88, &[0x03, 0xe8], KEY);
    server.input_buffer().extend_from_slice(&close);
    assert_eq!(server.next_event(), None, "not handed over yet");
    server.receive_input(Instant::now());
    assert!(matches!(
        server.next_event(),
        Some(Event::Message(Message::Close(Some(_))))
    ));
}
