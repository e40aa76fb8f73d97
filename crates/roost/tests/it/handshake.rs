//! The opening handshake through the drivers: hooks, refusals, timeouts, foreign parsers.

use std::time::Duration;

use http::{HeaderValue, StatusCode, header};
use roost::{
    ClientBuilder, Config, Error, Message,
    proto::handshake::{Refusal, RequestReader},
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{addr_of, echo, echo_server, listener, next_data, upgrade_request, within};

#[tokio::test]
async fn the_hook_chooses_a_subprotocol_and_adds_headers() {
    let (listener, url) = listener().await;
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let ws = roost::accept_with(tcp, &Config::default(), |request, mut response| {
            let offered = request
                .headers()
                .get(header::SEC_WEBSOCKET_PROTOCOL)
                .unwrap();
            assert_eq!(offered, "superchat, chat");
            let headers = response.headers_mut();
            headers.insert(
                header::SEC_WEBSOCKET_PROTOCOL,
                HeaderValue::from_static("chat"),
            );
            headers.insert("x-served-by", HeaderValue::from_static("roost"));
            Ok(response)
        })
        .await
        .unwrap();
        assert_eq!(ws.protocol(), Some("chat"));
        echo(ws).await;
    });
    let (mut ws, response) = within(
        ClientBuilder::new(&url)
            .unwrap()
            .protocol("superchat")
            .protocol("chat")
            .header(
                header::ORIGIN,
                HeaderValue::from_static("http://example.test"),
            )
            .connect(),
    )
    .await
    .unwrap();
    assert_eq!(ws.protocol(), Some("chat"));
    assert_eq!(response.headers()["x-served-by"], "roost");
    within(ws.send(Message::text("hi"))).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::text("hi"));
    within(ws.close(None)).await.unwrap();
    within(server).await.unwrap();
}

#[tokio::test]
async fn the_hook_refuses_with_its_own_status_and_the_client_sees_it() {
    let (listener, url) = listener().await;
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        roost::accept_with(tcp, &Config::default(), |_, _| {
            Err(Refusal::new(
                StatusCode::FORBIDDEN,
                Some("origin not allowed".to_owned()),
            ))
        })
        .await
    });
    let error = within(roost::connect(&url)).await.unwrap_err();
    assert!(
        matches!(&error, Error::Handshake(e) if e.to_string().contains("403")),
        "{error}"
    );
    let server_error = within(server).await.unwrap().unwrap_err();
    assert!(server_error.to_string().contains("403"), "{server_error}");
}

async fn raw_exchange(request: &[u8]) -> (String, Result<(), Error>) {
    let (listener, url) = listener().await;
    let addr = addr_of(&url);
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        roost::accept(tcp).await.map(|_| ())
    });
    let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    tcp.write_all(request).await.unwrap();
    let mut response = Vec::new();
    within(tcp.read_to_end(&mut response)).await.unwrap();
    (
        String::from_utf8_lossy(&response).into_owned(),
        within(server).await.unwrap(),
    )
}

#[tokio::test]
async fn bad_requests_get_the_right_status() {
    let (response, result) = raw_exchange(&upgrade_request("/", 8)).await;
    assert!(response.starts_with("HTTP/1.1 426 "), "{response}");
    assert!(
        response.contains("Sec-WebSocket-Version: 13\r\n"),
        "{response}"
    );
    assert!(matches!(result, Err(Error::Handshake(_))));

    let (response, _) = raw_exchange(b"POST / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(response.starts_with("HTTP/1.1 405 "), "{response}");

    let (response, _) = raw_exchange(
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Version: 13\r\n\r\n",
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 400 "), "{response}");

    let huge = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let (response, _) = raw_exchange(huge.as_bytes()).await;
    assert!(response.starts_with("HTTP/1.1 431 "), "{response}");
}

#[tokio::test]
async fn an_unfinished_handshake_times_out() {
    let (listener, url) = listener().await;
    let addr = addr_of(&url);
    let config = Config::builder()
        .handshake_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        roost::accept_with(tcp, &config, |_, r| Ok(r))
            .await
            .map(|_| ())
    });
    let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let result = within(server).await.unwrap();
    assert!(matches!(result, Err(Error::Timeout(_))), "{result:?}");
}

#[tokio::test]
async fn a_request_read_by_another_parser_is_accepted_with_its_leftover_bytes() {
    let (listener, url) = listener().await;
    let server = tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        // Another HTTP layer reads the head (here, in one read with whatever follows).
        let config = Config::default();
        let mut reader = RequestReader::new(&config);
        let mut buf = vec![0; 4096];
        let (request, leftover) = loop {
            let n = tcp.read(&mut buf).await.unwrap();
            if let Some(head) = reader.feed(&buf[..n]).unwrap() {
                break head;
            }
        };
        let ws = roost::accept_request(tcp, &config, &request, &leftover, |_, r| Ok(r))
            .await
            .unwrap();
        echo(ws).await;
    });
    let (mut ws, _) = within(roost::connect(&url)).await.unwrap();
    within(ws.send(Message::text("after a foreign parser")))
        .await
        .unwrap();
    assert_eq!(
        next_data(&mut ws).await,
        Message::text("after a foreign parser")
    );
    within(ws.close(None)).await.unwrap();
    within(server).await.unwrap();
}

#[tokio::test]
async fn urls_other_than_ws_and_wss_are_refused_clearly() {
    let error = ClientBuilder::new("http://127.0.0.1/").unwrap_err();
    assert!(error.to_string().contains("use ws:// or wss://"), "{error}");
    let error = ClientBuilder::new("127.0.0.1:9001").unwrap_err();
    assert!(
        error.to_string().contains("write ws://127.0.0.1:9001"),
        "{error}"
    );
}

#[tokio::test]
async fn the_scheme_is_case_insensitive() {
    let (server, url) = echo_server().await;
    let upper = url.replacen("ws://", "WS://", 1);
    let (mut ws, _) = within(roost::connect(&upper)).await.unwrap();
    within(ws.send(Message::text("hi"))).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::text("hi"));
    within(ws.close(None)).await.unwrap();
    within(server).await.unwrap();
}
