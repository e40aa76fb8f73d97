//! wss:// through rustls, with a certificate made for the test.

use roost::{ClientBuilder, Config, Message};

use super::{echo, next_data, within};

/// A TLS echo server on a free port; returns its port and the CA PEM that verifies it.
async fn tls_echo_server(config: Config) -> (u16, String, tokio::task::JoinHandle<bool>) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert_pem = cert.cert.pem();
    let key_pem = cert.signing_key.serialize_pem();
    let acceptor = roost::tls::TlsAcceptor::from(
        roost::tls::server_config_from_pem(cert_pem.as_bytes(), key_pem.as_bytes()).unwrap(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let tls = acceptor.accept(tcp).await.unwrap();
        let ws = roost::accept_with(tls, &config, |_, r| Ok(r))
            .await
            .unwrap();
        let no_masking = ws.negotiated().no_masking;
        echo(ws).await;
        no_masking
    });
    (port, cert_pem, server)
}

#[tokio::test]
async fn a_wss_client_and_server_talk_over_rustls() {
    let (port, ca, server) = tls_echo_server(Config::default()).await;
    let roots = roost::tls::client_config_with_pem_roots(ca.as_bytes()).unwrap();
    let (mut ws, _) = within(
        ClientBuilder::new(&format!("wss://localhost:{port}/secure"))
            .unwrap()
            .tls_config(roots)
            .connect(),
    )
    .await
    .unwrap();
    within(ws.send(Message::text("over TLS"))).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::text("over TLS"));
    within(ws.close(None)).await.unwrap();
    while within(ws.recv()).await.is_some() {}
    assert!(
        !within(server).await.unwrap(),
        "no-masking is off by default"
    );
}

#[tokio::test]
async fn no_masking_is_used_over_tls_when_both_ends_opt_in() {
    let config = Config::builder()
        .dangerous_no_masking(true)
        .build()
        .unwrap();
    let (port, ca, server) = tls_echo_server(config.clone()).await;
    let roots = roost::tls::client_config_with_pem_roots(ca.as_bytes()).unwrap();
    let (mut ws, response) = within(
        ClientBuilder::new(&format!("wss://localhost:{port}/"))
            .unwrap()
            .config(config)
            .tls_config(roots)
            .connect(),
    )
    .await
    .unwrap();
    let extensions = response.headers()["sec-websocket-extensions"]
        .to_str()
        .unwrap();
    assert!(extensions.contains("no-masking"), "{extensions}");
    assert!(ws.negotiated().no_masking);
    within(ws.send(Message::text("unmasked"))).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::text("unmasked"));
    within(ws.close(None)).await.unwrap();
    while within(ws.recv()).await.is_some() {}
    assert!(
        within(server).await.unwrap(),
        "the server saw no-masking negotiated"
    );
}

#[tokio::test]
async fn a_certificate_from_an_unknown_issuer_is_refused() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let acceptor = roost::tls::TlsAcceptor::from(
        roost::tls::server_config_from_pem(
            cert.cert.pem().as_bytes(),
            cert.signing_key.serialize_pem().as_bytes(),
        )
        .unwrap(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let _ = acceptor.accept(tcp).await;
    });
    let other = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let roots = roost::tls::client_config_with_pem_roots(other.cert.pem().as_bytes()).unwrap();
    let result = within(
        ClientBuilder::new(&format!("wss://localhost:{port}/"))
            .unwrap()
            .tls_config(roots)
            .connect(),
    )
    .await;
    let error = result.unwrap_err();
    assert!(
        matches!(
            error,
            roost::Error::Tls(rustls::Error::InvalidCertificate(_))
        ),
        "{error:?}"
    );
}
