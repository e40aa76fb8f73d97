//! The blocking driver over std::net.

use roost::{CloseCode, CloseFrame, CloseInitiator, Message, blocking};

#[test]
fn blocking_client_and_server_echo_and_close() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (tcp, _) = listener.accept().unwrap();
        let mut ws = blocking::accept(tcp).unwrap();
        while let Some(message) = ws.read().unwrap() {
            if message.is_data() {
                ws.send(message).unwrap();
            }
        }
        ws.close_status().unwrap()
    });
    let mut ws = blocking::connect(&format!("ws://{addr}/")).unwrap();
    for message in [Message::text("blocking"), Message::binary(vec![1; 100_000])] {
        ws.send(message.clone()).unwrap();
        assert_eq!(ws.read().unwrap(), Some(message));
    }
    ws.close(Some(CloseFrame::new(CloseCode::NORMAL, "finished")))
        .unwrap();
    assert_eq!(
        ws.read().unwrap(),
        Some(Message::Close(Some(CloseFrame::new(1000, ""))))
    );
    assert_eq!(ws.read().unwrap(), None);
    let status = server.join().unwrap();
    assert_eq!(status.initiator, CloseInitiator::Peer);
    assert_eq!(status.reason.as_str(), "finished");
}

#[test]
fn a_blocking_async_mix_interoperates() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        runtime.block_on(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            super::echo(roost::accept(tcp).await.unwrap()).await;
        });
    });
    let mut ws = blocking::connect(&format!("ws://{addr}/")).unwrap();
    let text = "compress me ".repeat(100);
    ws.send(Message::text(text.as_str())).unwrap();
    assert_eq!(ws.read().unwrap(), Some(Message::text(text.as_str())));
    ws.close(None).unwrap();
    while ws.read().unwrap().is_some() {}
    server.join().unwrap();
}
