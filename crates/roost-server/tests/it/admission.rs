//! Admission: connection cap, Origin allowlist, plain HTTP on the same port.

use http::{HeaderValue, header};
use roost::{ClientBuilder, Error, Message};
use roost_server::{App, Data, Disconnect, Handler, Room, ServerConfig, Ws};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{connect, eventually, next_text, start, within};

struct Echo;

impl Handler for Echo {
    async fn on_message(&self, ws: &Ws, data: Data, _room: &Room) -> Result<(), Disconnect> {
        ws.send(data);
        Ok(())
    }
}

fn status_of(error: &Error) -> String {
    error.to_string()
}

#[tokio::test]
async fn unusable_settings_are_refused_before_serving_with_the_fields_name() {
    let config = ServerConfig {
        max_outbound: 0,
        ..ServerConfig::default()
    };
    let app = App::new().ws("/e", Echo).unwrap().config(config);
    let error = match within(app.bind("127.0.0.1:0".parse().unwrap())).await {
        Ok(_) => panic!("a server with max_outbound 0 started"),
        Err(error) => error,
    };
    assert_eq!(error.kind(), std::io::ErrorKind::InvalidInput);
    assert!(error.to_string().contains("max_outbound is 0"), "{error}");
}

#[tokio::test]
async fn past_the_cap_the_handshake_gets_503_and_a_slot_frees_up() {
    let config = ServerConfig {
        max_connections: 2,
        ..ServerConfig::default()
    };
    let (addr, _) = start(App::new().ws("/e", Echo).unwrap(), config).await;
    let first = connect(addr, "/e").await;
    let _second = connect(addr, "/e").await;
    let error = within(roost::connect(&format!("ws://{addr}/e")))
        .await
        .unwrap_err();
    assert!(status_of(&error).contains("503"), "{error}");
    drop(first);
    // Once the first connection is gone, a new one is admitted.
    let start = std::time::Instant::now();
    loop {
        match within(roost::connect(&format!("ws://{addr}/e"))).await {
            Ok(_) => break,
            Err(_) if start.elapsed() < super::LIMIT => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(error) => panic!("no slot freed up: {error}"),
        }
    }
}

#[tokio::test]
async fn a_foreign_origin_gets_403() {
    let config = ServerConfig {
        allowed_origins: vec!["https://chat.example".to_owned()],
        ..ServerConfig::default()
    };
    let (addr, _) = start(App::new().ws("/e", Echo).unwrap(), config).await;
    let url = format!("ws://{addr}/e");
    let foreign = ClientBuilder::new(&url)
        .unwrap()
        .header(
            header::ORIGIN,
            HeaderValue::from_static("https://evil.example"),
        )
        .connect();
    let error = within(foreign).await.unwrap_err();
    assert!(status_of(&error).contains("403"), "{error}");
    let missing = within(roost::connect(&url)).await.unwrap_err();
    assert!(status_of(&missing).contains("403"), "{missing}");
    let (mut ws, _) = within(
        ClientBuilder::new(&url)
            .unwrap()
            .header(
                header::ORIGIN,
                HeaderValue::from_static("https://chat.example"),
            )
            .connect(),
    )
    .await
    .unwrap();
    within(ws.send(Message::text("allowed"))).await.unwrap();
    assert_eq!(next_text(&mut ws).await, "allowed");
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = Vec::new();
    within(tcp.read_to_end(&mut response)).await.unwrap();
    String::from_utf8_lossy(&response).into_owned()
}

#[tokio::test]
async fn plain_http_shares_the_port() {
    let app = App::new().ws("/e", Echo).unwrap().http(
        |request: http::Request<bytes::Bytes>| async move {
            http::Response::new(bytes::Bytes::from(format!(
                "you asked for {}",
                request.uri().path()
            )))
        },
    );
    let (addr, _) = start(app, ServerConfig::default()).await;
    let page = http_get(addr, "/hello").await;
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(page.ends_with("you asked for /hello"), "{page}");
    let health = http_get(addr, "/healthz").await;
    assert!(health.ends_with("ok\n"), "{health}");
    let metrics = http_get(addr, "/metrics").await;
    assert!(
        metrics.contains("roost_connections{state=\"parked\"}"),
        "{metrics}"
    );
    // A non-upgrade request on the WebSocket route goes to the HTTP handler too.
    assert!(http_get(addr, "/e").await.ends_with("you asked for /e"));
    let (addr, _) = start(App::new().ws("/e", Echo).unwrap(), ServerConfig::default()).await;
    assert!(http_get(addr, "/nothing").await.starts_with("HTTP/1.1 404"));
}

/// With an admin address, the server's own paths are served there and only there: the
/// public port hands them to the app like any other path, and stops them being reachable
/// from where clients connect.
#[tokio::test]
async fn an_admin_address_takes_the_servers_own_paths_off_the_public_port() {
    let config = ServerConfig {
        admin_addr: Some("127.0.0.1:0".parse().unwrap()),
        ..ServerConfig::default()
    };
    let server = App::new()
        .ws("/e", Echo)
        .unwrap()
        .config(config)
        .bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let (addr, admin) = (server.local_addr().unwrap(), server.admin_addr().unwrap());
    let handle = server.handle();
    tokio::spawn(server.run_until(std::future::pending()));
    for path in ["/metrics", "/healthz", "/readyz", "/presence?room=r"] {
        let public = http_get(addr, path).await;
        assert!(
            public.starts_with("HTTP/1.1 404"),
            "{path} on the public port: {public}"
        );
    }
    let metrics = http_get(admin, "/metrics").await;
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    assert!(
        metrics.contains("roost_connections{state=\"parked\"}"),
        "{metrics}"
    );
    assert!(http_get(admin, "/healthz").await.ends_with("ok\n"));
    assert!(http_get(admin, "/readyz").await.ends_with("ready\n"));
    assert!(
        http_get(admin, "/presence?room=r")
            .await
            .contains("\"count\":0")
    );
    assert!(http_get(admin, "/e").await.starts_with("HTTP/1.1 404"));
    // WebSockets stay on the public port.
    let mut ws = connect(addr, "/e").await;
    within(ws.send(Message::text("still here"))).await.unwrap();
    assert_eq!(next_text(&mut ws).await, "still here");
    // The shutdown closes the admin address too.
    handle.shutdown();
    eventually("the admin address stops answering", || {
        std::net::TcpStream::connect(admin).is_err()
    })
    .await;
}
