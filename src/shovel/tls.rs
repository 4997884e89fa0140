//! TLS for a shovel's `amqps://` ends, with the broker's rustls: the URI's `cacertfile` to
//! verify the server with `verify=verify_peer`; without it, as RabbitMQ's Erlang client
//! defaults to (`verify_none`), the server's certificate is taken as it is; `certfile` and
//! `keyfile` for a client certificate.

use super::uri::AmqpUri;
use amqprs::tls::TlsAdaptor;
use std::path::PathBuf;
use std::sync::Arc;
use tokio_rustls::rustls::{self, client::danger, pki_types};

/// The TLS set-up of one end.
pub fn adaptor(uri: &AmqpUri, host: &str) -> Result<TlsAdaptor, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?;
    let builder = if uri.verify {
        let ca = uri.cacertfile.as_ref().ok_or("verify_peer needs a cacertfile")?;
        let mut roots = rustls::RootCertStore::empty();
        for c in crate::tls::certificates_of(&PathBuf::from(ca)).map_err(|e| e.to_string())? {
            roots.add(c).map_err(|e| e.to_string())?;
        }
        builder.with_root_certificates(roots)
    } else {
        builder.dangerous().with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
    };
    let config = match (&uri.certfile, &uri.keyfile) {
        (Some(cert), Some(key)) => {
            let chain = crate::tls::certificates_of(&PathBuf::from(cert)).map_err(|e| e.to_string())?;
            let key = crate::tls::private_key_of(&PathBuf::from(key)).map_err(|e| e.to_string())?;
            builder.with_client_auth_cert(chain, key).map_err(|e| e.to_string())?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(TlsAdaptor::new(tokio_rustls::TlsConnector::from(Arc::new(config)), server_name(uri, host)))
}

fn server_name(uri: &AmqpUri, host: &str) -> String {
    uri.server_name.clone().unwrap_or_else(|| host.to_string())
}

/// `verify_none`: any server certificate is taken (the handshake's signatures are still
/// checked).
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &pki_types::CertificateDer<'_>,
        _intermediates: &[pki_types::CertificateDer<'_>],
        _server_name: &pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: pki_types::UnixTime,
    ) -> Result<danger::ServerCertVerified, rustls::Error> {
        Ok(danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
