//! Upgrading a request inside a hyper server.

use http_body_util::Full;
use hyper::{
    Request, Response,
    body::{Bytes, Incoming},
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use roost::{Config, Message};

use super::{echo, listener, next_data, upgrade_request, within};

async fn handle(mut request: Request<Incoming>) -> Result<Response<Full<Bytes>>, hyper::Error> {
    if !roost::upgrade::is_upgrade_request(&request) {
        return Ok(Response::new(Full::new(Bytes::from_static(b"plain http"))));
    }
    match roost::upgrade::upgrade(&mut request, &Config::default(), |_, r| Ok(r)) {
        Ok((response, websocket)) => {
            tokio::spawn(async move {
                echo(websocket.await.unwrap()).await;
            });
            Ok(response)
        }
        Err(rejection) => Ok(*rejection.response),
    }
}

#[tokio::test]
async fn a_hyper_server_upgrades_and_keeps_serving_plain_http() {
    let (listener, url) = listener().await;
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service_fn(handle))
                    .with_upgrades()
                    .await;
            });
        }
    });
    let (mut ws, response) = within(roost::connect(&format!("{url}ws"))).await.unwrap();
    assert_eq!(response.status(), 101);
    assert!(ws.negotiated().deflate.is_some());
    within(ws.send(Message::text("through hyper")))
        .await
        .unwrap();
    assert_eq!(next_data(&mut ws).await, Message::text("through hyper"));
    within(ws.close(None)).await.unwrap();

    // A bad upgrade request gets the handshake's answer from inside hyper.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = url.trim_start_matches("ws://").trim_end_matches('/');
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(&upgrade_request("/ws", 7)).await.unwrap();
    let mut buf = vec![0; 1024];
    let n = within(tcp.read(&mut buf)).await.unwrap();
    let response = String::from_utf8_lossy(&buf[..n]);
    assert!(response.starts_with("HTTP/1.1 426"), "{response}");
    assert!(
        response
            .to_lowercase()
            .contains("sec-websocket-version: 13"),
        "{response}"
    );
}

#[tokio::test]
async fn an_axum_route_upgrades_through_the_same_function() {
    use axum::{Router, extract::Request, routing::get};

    async fn ws_route(mut request: Request) -> Response<Full<Bytes>> {
        match roost::upgrade::upgrade(&mut request, &Config::default(), |_, r| Ok(r)) {
            Ok((response, websocket)) => {
                tokio::spawn(async move {
                    echo(websocket.await.unwrap()).await;
                });
                response
            }
            Err(rejection) => *rejection.response,
        }
    }

    let app = Router::new()
        .route("/chat", get(ws_route))
        .route("/", get(|| async { "home" }));
    let (listener, url) = listener().await;
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let (mut ws, _) = within(roost::connect(&format!("{url}chat"))).await.unwrap();
    within(ws.send(Message::binary(vec![1, 2, 3])))
        .await
        .unwrap();
    assert_eq!(next_data(&mut ws).await, Message::binary(vec![1, 2, 3]));
    within(ws.close(None)).await.unwrap();
}
