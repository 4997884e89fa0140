//! Transport security for the AMQP listener (AMQPS) and the management API (HTTPS), with
//! rustls: a certificate chain and key from PEM files, TLS 1.2 and 1.3 only, and optionally
//! client certificates verified against a CA file (RabbitMQ's `verify_peer`, with
//! `fail_if_no_peer_cert` deciding whether a client without one is turned away).
//!
//! The configuration sits behind a lock and is rebuilt from the files by [`Tls::reload`] (on
//! SIGHUP): handshakes after it use the new certificate, connections already open keep theirs.
//! Handshakes run in their own tasks with a deadline, so a client that never finishes one
//! holds only its own socket.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::{self, pki_types::CertificateDer, server::WebPkiClientVerifier, ServerConfig};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// How long a client has to complete its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshaken connections waiting for the server to take them; beyond it, new handshakes wait.
const ACCEPT_BACKLOG: usize = 128;

#[derive(Debug, Clone)]
pub struct TlsSettings {
    /// PEM certificate chain, the server's own certificate first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM CA certificates that client certificates are verified against; none: clients are
    /// not asked for one.
    pub ca: Option<PathBuf>,
    /// With a CA: refuse clients that present no certificate.
    pub fail_if_no_peer_cert: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{0} holds no certificate")]
    NoCertificate(PathBuf),
    #[error("{0} holds no private key")]
    NoKey(PathBuf),
    #[error("TLS configuration: {0}")]
    Config(String),
}

fn read(path: &PathBuf) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { path: path.clone(), source })
}

fn certificates(path: &PathBuf) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|source| TlsError::Read { path: path.clone(), source })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(path.clone()));
    }
    Ok(certs)
}

/// The certificates of a PEM file (a chain, or CAs).
pub fn certificates_of(path: &PathBuf) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    certificates(path)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn private_key_of(path: &PathBuf) -> Result<rustls::pki_types::PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|source| TlsError::Read { path: path.clone(), source })?
        .ok_or_else(|| TlsError::NoKey(path.clone()))
}

fn build(s: &TlsSettings) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = certificates(&s.cert)?;
    let key = private_key_of(&s.key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match &s.ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in certificates(ca)? {
                roots.add(c).map_err(|e| TlsError::Config(format!("{}: {e}", ca.display())))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if s.fail_if_no_peer_cert { verifier } else { verifier.allow_unauthenticated() };
            builder.with_client_cert_verifier(verifier.build().map_err(|e| TlsError::Config(e.to_string()))?)
        }
    };
    let config = builder.with_single_cert(chain, key).map_err(|e| TlsError::Config(e.to_string()))?;
    Ok(Arc::new(config))
}

/// A client configuration trusting the CA certificates in `ca` (PEM), TLS 1.2 and 1.3: for
/// `hare perf` against an AMQPS listener.
pub fn client_config(ca: &PathBuf) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in certificates(ca)? {
        roots.add(c).map_err(|e| TlsError::Config(format!("{}: {e}", ca.display())))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The configurations of a cluster node's connections to other nodes (mutual TLS): each
/// node presents its certificate both ways and verifies the other's against the CA file, or,
/// without one, against its own certificate chain (nodes sharing one certificate).
pub fn node_configs(s: &TlsSettings) -> Result<(Arc<ServerConfig>, Arc<rustls::ClientConfig>), TlsError> {
    let chain = certificates(&s.cert)?;
    let pem = read(&s.key)?;
    let key = rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|source| TlsError::Read { path: s.key.clone(), source })?
        .ok_or_else(|| TlsError::NoKey(s.key.clone()))?;
    let anchors = match &s.ca {
        Some(ca) => certificates(ca)?,
        None => chain.clone(),
    };
    let mut roots = rustls::RootCertStore::empty();
    for c in anchors {
        roots.add(c).map_err(|e| TlsError::Config(format!("trust anchor: {e}")))?;
    }
    let roots = Arc::new(roots);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let server = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    Ok((Arc::new(server), Arc::new(client)))
}

/// The TLS configuration in force, reloadable.
#[derive(Debug)]
pub struct Tls {
    settings: TlsSettings,
    config: parking_lot::RwLock<Arc<ServerConfig>>,
}

impl Tls {
    /// Reads the files; an unreadable or mismatched certificate or key is an error that
    /// names the file.
    pub fn load(settings: TlsSettings) -> Result<Arc<Tls>, TlsError> {
        let config = build(&settings)?;
        Ok(Arc::new(Tls { settings, config: parking_lot::RwLock::new(config) }))
    }

    /// Reads the files again; on an error the configuration in force stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = build(&self.settings)?;
        *self.config.write() = config;
        Ok(())
    }

    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.config.read().clone())
    }
}

/// The name a client certificate logs in as (EXTERNAL): its subject's common name, else its
/// first DNS or e-mail subject alternative name.
pub fn certificate_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    if let Some(cn) = cert.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()) {
        return Some(cn.to_string());
    }
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        x509_parser::extensions::GeneralName::DNSName(s) | x509_parser::extensions::GeneralName::RFC822Name(s) => {
            Some(s.to_string())
        }
        _ => None,
    })
}

/// What a TLS connection tells the broker about its client.
#[derive(Debug, Clone, Default)]
pub struct PeerInfo {
    /// The verified client certificate's login name, if the client presented one.
    pub certificate_name: Option<String>,
    /// The protocol version negotiated, as RabbitMQ reports it ("tlsv1.3").
    pub protocol: String,
    /// The session and the certificate, as the management API shows them.
    pub details: crate::broker::connections::TlsDetails,
}

/// The parts of a cipher suite as Erlang's `ssl` names them, which RabbitMQ reports:
/// key exchange (`any` under TLS 1.3, else `ecdhe_rsa` ...), cipher (`aes_256_gcm` ...) and
/// MAC (`aead` for the AEAD suites, which are all rustls offers).
fn suite_parts(suite: rustls::CipherSuite) -> (String, String, String) {
    let name = format!("{suite:?}");
    let key_exchange = if name.starts_with("TLS13_") {
        "any".to_string()
    } else {
        name.trim_start_matches("TLS_").split("_WITH_").next().unwrap_or("").to_lowercase()
    };
    let cipher = ["AES_256_GCM", "AES_128_GCM", "CHACHA20_POLY1305"]
        .iter()
        .find(|c| name.contains(*c))
        .map_or_else(|| name.to_lowercase(), |c| c.to_lowercase());
    (key_exchange, cipher, "aead".to_string())
}

/// A certificate's subject, issuer and validity, as RabbitMQ prints them
/// (`CN=client,O=example`, and `<not before> - <not after>` in UTC).
fn certificate_details(der: &[u8]) -> Option<(String, String, String)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let name = |n: &x509_parser::x509::X509Name| n.to_string().replace(", ", ",");
    let time = |t: x509_parser::time::ASN1Time| {
        let d = t.to_datetime();
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            d.year(),
            u8::from(d.month()),
            d.day(),
            d.hour(),
            d.minute(),
            d.second()
        )
    };
    let v = cert.validity();
    Some((name(cert.subject()), name(cert.issuer()), format!("{} - {}", time(v.not_before), time(v.not_after))))
}

/// Runs the handshake on an accepted socket, within [`HANDSHAKE_TIMEOUT`].
pub async fn handshake(tls: &Tls, stream: TcpStream) -> Option<(TlsStream<TcpStream>, PeerInfo)> {
    let _ = stream.set_nodelay(true);
    let accepted = tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.acceptor().accept(stream)).await;
    let stream = match accepted {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::info!("TLS handshake failed: {e}");
            return None;
        }
        Err(_) => {
            tracing::info!("TLS handshake timed out");
            return None;
        }
    };
    let (_, conn) = stream.get_ref();
    let protocol = match conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "tlsv1.3".to_string(),
        Some(rustls::ProtocolVersion::TLSv1_2) => "tlsv1.2".to_string(),
        _ => String::new(),
    };
    let (key_exchange, cipher, hash) =
        conn.negotiated_cipher_suite().map(|s| suite_parts(s.suite())).unwrap_or_default();
    let peer = conn.peer_certificates().and_then(|c| c.first());
    let cert = peer.and_then(|c| certificate_details(c));
    let info = PeerInfo {
        certificate_name: peer.and_then(|c| certificate_name(c)),
        protocol: protocol.clone(),
        details: crate::broker::connections::TlsDetails {
            protocol,
            key_exchange,
            cipher,
            hash,
            peer_cert_subject: cert.as_ref().map(|c| c.0.clone()),
            peer_cert_issuer: cert.as_ref().map(|c| c.1.clone()),
            peer_cert_validity: cert.map(|c| c.2),
        },
    };
    Some((stream, info))
}

/// A listener whose connections come out handshaken (for the HTTPS API): accepts and
/// handshakes in the background, one task per handshake.
pub struct TlsListener {
    rx: tokio::sync::mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    pub fn spawn(listener: TcpListener, tls: Arc<Tls>) -> std::io::Result<TlsListener> {
        let local = listener.local_addr()?;
        let (tx, rx) = tokio::sync::mpsc::channel(ACCEPT_BACKLOG);
        let task = tokio::spawn(async move {
            loop {
                let (stream, peer) = match listener.accept().await {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!("HTTPS accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let (tls, tx) = (tls.clone(), tx.clone());
                tokio::spawn(async move {
                    if let Some((s, _)) = handshake(&tls, stream).await {
                        let _ = tx.send((s, peer)).await;
                    }
                });
            }
        });
        Ok(TlsListener { rx, local, task })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The accept task ended (only when the runtime stops): wait for shutdown.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}
