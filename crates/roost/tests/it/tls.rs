//! wss:// through rustls, with a certificate made for the test.

use roost::{ClientBuilder, Message};

use super::{echo, next_data, within};

#[tokio::test]
async fn a_wss_client_and_server_talk_over_rustls() {
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
        echo(roost::accept(tls).await.unwrap()).await;
    });
    let roots = roost::tls::client_config_with_pem_roots(cert_pem.as_bytes()).unwrap();
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
    within(server).await.unwrap();
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
        error.to_string().to_lowercase().contains("certificate"),
        "{error}"
    );
}
