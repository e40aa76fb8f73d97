//! TLS through rustls (ring): configurations for `wss://` clients and servers.
//!
//! A server wraps each accepted TCP stream with [`TlsAcceptor`] and hands the TLS stream to
//! [`crate::accept`]; a client passes a configuration to [`crate::ClientBuilder::tls_config`]
//! (the web PKI roots are used otherwise).

use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
pub use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::Error;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client configuration trusting the Mozilla root store (webpki-roots).
pub fn client_config_with_webpki_roots() -> Arc<ClientConfig> {
    let roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    client_config_with_roots(roots)
}

/// A client configuration trusting exactly `roots`.
pub fn client_config_with_roots(roots: RootCertStore) -> Arc<ClientConfig> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map(|builder| builder.with_root_certificates(roots).with_no_client_auth());
    match config {
        Ok(config) => Arc::new(config),
        Err(_) => unreachable!("ring supports the default protocol versions"),
    }
}

/// A client configuration trusting the certificates in a PEM file's contents (a private CA,
/// a self-signed test certificate).
pub fn client_config_with_pem_roots(pem: &[u8]) -> Result<Arc<ClientConfig>, Error> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| pem_error("root certificate", e))?;
        roots.add(cert)?;
    }
    if roots.is_empty() {
        return Err(Error::Tls(rustls::Error::General(
            "no certificate found in the PEM roots".to_owned(),
        )));
    }
    Ok(client_config_with_roots(roots))
}

/// A server configuration from a PEM certificate chain and a PEM private key (PKCS#8, PKCS#1
/// or SEC1), advertising `http/1.1` over ALPN.
pub fn server_config_from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Arc<ServerConfig>, Error> {
    let certs = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error("certificate", e))?;
    if certs.is_empty() {
        return Err(Error::Tls(rustls::Error::General(
            "no certificate found in the certificate PEM".to_owned(),
        )));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| pem_error("private key", e))?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn pem_error(what: &str, error: rustls_pki_types::pem::Error) -> Error {
    Error::Tls(rustls::Error::General(format!(
        "cannot read the {what} PEM: {error}"
    )))
}
