//! The close handshake: who starts it, timeouts, a lost transport, bytes after the close.

use super::*;

#[test]
fn close_handshake_started_by_the_client() {
    let now = Instant::now();
    let (mut client, mut server) = pair();
    client
        .close(Some(CloseFrame::new(CloseCode::NORMAL, "bye")), now)
        .unwrap();
    assert_eq!(client.send_text("late"), Err(UsageError::SendAfterClose));
    assert!(
        client.close_status().is_none(),
        "still waiting for the reply"
    );
    pump(&mut client, &mut server, now);
    let peer_frame = CloseFrame::new(CloseCode::NORMAL, "bye");
    assert_eq!(
        events(&mut server),
        vec![Event::Message(Message::Close(Some(peer_frame.clone())))]
    );
    assert!(
        server.is_finished(),
        "a server closes TCP once its reply is written"
    );
    let status = server.close_status().unwrap();
    assert_eq!(status.initiator, CloseInitiator::Peer);
    assert_eq!(
        (status.code, status.reason.as_str(), status.clean),
        (CloseCode::NORMAL, "bye", true)
    );
    pump(&mut server, &mut client, now);
    assert_eq!(
        events(&mut client),
        vec![Event::Message(Message::Close(Some(CloseFrame::new(
            CloseCode::NORMAL,
            ""
        ))))]
    );
    assert!(
        !client.is_finished(),
        "the client waits for the server to close TCP first"
    );
    let deadline = client.next_deadline().unwrap();
    client.receive_eof();
    assert!(client.is_finished());
    assert!(deadline > now);
    let status = client.close_status().unwrap();
    assert_eq!(
        (status.initiator, status.clean),
        (CloseInitiator::Local, true)
    );
}

#[test]
fn close_handshake_started_by_the_server_and_without_a_code() {
    let now = Instant::now();
    let (mut client, mut server) = pair();
    server.close(None, now).unwrap();
    pump(&mut server, &mut client, now);
    assert_eq!(
        events(&mut client),
        vec![Event::Message(Message::Close(None))]
    );
    pump(&mut client, &mut server, now);
    assert_eq!(
        events(&mut server),
        vec![Event::Message(Message::Close(None))]
    );
    let status = server.close_status().unwrap();
    assert_eq!(
        (status.initiator, status.code),
        (CloseInitiator::Local, CloseCode::NO_STATUS)
    );
    assert!(server.is_finished());
}

#[test]
fn a_silent_peer_cannot_hold_the_connection_open() {
    let now = Instant::now();
    let config = Config::builder()
        .close_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let (_, mut server) = pair_with(config, Negotiated::default());
    server
        .close(Some(CloseFrame::new(CloseCode::GOING_AWAY, "")), now)
        .unwrap();
    assert_eq!(server.next_deadline(), Some(now + Duration::from_secs(2)));
    server.on_deadline(now + Duration::from_secs(1));
    assert!(!server.is_finished());
    server.on_deadline(now + Duration::from_secs(2));
    assert!(server.is_finished());
    let status = server.close_status().unwrap();
    assert_eq!(
        (status.initiator, status.code),
        (CloseInitiator::Lost, CloseCode::ABNORMAL)
    );
    assert_eq!(server.next_deadline(), None);
}

#[test]
fn a_lost_transport_reports_1006() {
    let (_, mut server) = pair();
    server.receive(&[0x81], Instant::now());
    server.receive_eof();
    assert!(server.is_finished());
    let status = server.close_status().unwrap();
    assert_eq!(
        (status.initiator, status.code, status.clean),
        (CloseInitiator::Lost, CloseCode::ABNORMAL, false)
    );
}

#[test]
fn a_failed_transport_ends_the_connection_and_drops_its_output() {
    let (_, mut server) = pair();
    server.send_text("never written").unwrap();
    assert!(server.pending_output_len() > 0);
    server.transport_failed();
    assert_eq!(server.pending_output_len(), 0);
    assert!(server.pending_output().is_empty());
    assert!(server.is_finished());
    let status = server.close_status().unwrap();
    assert_eq!(
        (status.initiator, status.code),
        (CloseInitiator::Lost, CloseCode::ABNORMAL)
    );
}

#[test]
fn bytes_after_the_close_frame_are_ignored() {
    let bytes = [
        raw_frame(0x88, &[3, 232], KEY),
        raw_frame(0x81, b"late", KEY),
    ]
    .concat();
    let (events, code) = server_reaction(&bytes, Config::default());
    let close = CloseFrame::new(CloseCode::NORMAL, "");
    assert_eq!(events, vec![Event::Message(Message::Close(Some(close)))]);
    assert_eq!(code, Some(1000), "the echo carries the peer's code");
}

#[test]
fn invalid_close_commands_are_usage_errors() {
    let now = Instant::now();
    let (mut client, _) = pair();
    assert_eq!(
        client.close(Some(CloseFrame::new(1005, "")), now),
        Err(UsageError::InvalidCloseCode(1005))
    );
    let long = "x".repeat(124);
    assert_eq!(
        client.close(Some(CloseFrame::new(1000, long.as_str())), now),
        Err(UsageError::CloseReasonTooLong(124))
    );
    assert_eq!(
        client.send_ping(&[0; 126]),
        Err(UsageError::ControlPayloadTooLarge(126))
    );
    client
        .close(Some(CloseFrame::new(4000, "custom")), now)
        .unwrap();
    assert_eq!(client.close(None, now), Err(UsageError::SendAfterClose));
}
