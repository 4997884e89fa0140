//! What a node needs from the machine it runs on: connections to and from other nodes, the
//! wall clock, and how its Raft log reaches the disk. In the broker that is TCP (with mutual
//! TLS when the broker has a certificate), the system clock and a writer thread that syncs
//! ([`TcpHost`]); the deterministic simulation
//! ([`super::sim`]) gives a node a simulated network and clock instead, so that the same node
//! code runs under both.

use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::rustls;

/// A byte stream to or from another node.
pub trait Conn: AsyncRead + AsyncWrite + Unpin + Send + Sync + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync + 'static> Conn for T {}
pub type BoxConn = Box<dyn Conn>;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where other nodes' connections arrive.
pub trait Listener: Send + 'static {
    /// The next connection, and the address it came from.
    fn accept(&mut self) -> BoxFuture<'_, io::Result<(BoxConn, String)>>;
}

pub trait Host: Send + Sync + 'static {
    /// Listens for other nodes at `addr`.
    fn listen(&self, addr: String) -> BoxFuture<'static, io::Result<Box<dyn Listener>>>;
    /// What an accepted connection becomes before the cluster's handshake (TLS, if any); run
    /// in the connection's own task, so a slow peer holds up no other.
    fn secure(&self, conn: BoxConn) -> BoxFuture<'static, io::Result<BoxConn>> {
        Box::pin(async move { Ok(conn) })
    }
    /// A connection to the node at `addr`.
    fn dial(&self, addr: String) -> BoxFuture<'static, io::Result<BoxConn>>;
    /// Milliseconds since the Unix epoch: the time a batch is stamped with (TTLs).
    fn now_ms(&self) -> u64;
    /// Whether the Raft log is synced to the disk by a writer thread before an append counts
    /// as done (the broker), rather than written in place without a sync (the simulation,
    /// whose crashes end a node's process, not its machine: files survive as after kill -9).
    fn synced_log(&self) -> bool;
}

/// Mutual TLS between nodes: how this node accepts and how it connects.
pub type NodeTls = (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>);

/// The real machine: TCP, connections leaving from the cluster port's address.
pub struct TcpHost {
    /// Connections to peers are made from this address (the one the cluster port listens
    /// on), so that peers and firewalls see each node at one address.
    source: Option<IpAddr>,
    tls: Option<NodeTls>,
}

impl TcpHost {
    pub fn new(source: Option<IpAddr>, tls: Option<NodeTls>) -> TcpHost {
        TcpHost { source: source.filter(|ip| !ip.is_unspecified()), tls }
    }
}

struct TcpListener(tokio::net::TcpListener);

impl Listener for TcpListener {
    fn accept(&mut self) -> BoxFuture<'_, io::Result<(BoxConn, String)>> {
        Box::pin(async move {
            let (sock, addr) = self.0.accept().await?;
            let _ = sock.set_nodelay(true);
            Ok((Box::new(sock) as BoxConn, addr.to_string()))
        })
    }
}

impl Host for TcpHost {
    fn listen(&self, addr: String) -> BoxFuture<'static, io::Result<Box<dyn Listener>>> {
        Box::pin(async move {
            let l = tokio::net::TcpListener::bind(&addr).await?;
            Ok(Box::new(TcpListener(l)) as Box<dyn Listener>)
        })
    }

    fn secure(&self, conn: BoxConn) -> BoxFuture<'static, io::Result<BoxConn>> {
        let Some((server, _)) = &self.tls else { return Box::pin(async move { Ok(conn) }) };
        let acceptor = tokio_rustls::TlsAcceptor::from(server.clone());
        Box::pin(async move { Ok(Box::new(acceptor.accept(conn).await?) as BoxConn) })
    }

    fn dial(&self, addr: String) -> BoxFuture<'static, io::Result<BoxConn>> {
        let source = self.source;
        let tls = self.tls.as_ref().map(|(_, client)| client.clone());
        Box::pin(async move {
            let target = tokio::net::lookup_host(&addr)
                .await?
                .next()
                .ok_or_else(|| io::Error::other(format!("{addr} resolves to no address")))?;
            let socket =
                if target.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
            if let Some(ip) = source.filter(|ip| ip.is_ipv4() == target.is_ipv4()) {
                socket.bind(std::net::SocketAddr::new(ip, 0))?;
            }
            let s = socket.connect(target).await?;
            let _ = s.set_nodelay(true);
            let Some(client) = tls else { return Ok(Box::new(s) as BoxConn) };
            // The peer's certificate must name the host part of its address (IP or DNS).
            let host = addr.rsplit_once(':').map_or(addr.as_str(), |(h, _)| h).trim_matches(['[', ']']);
            let name = rustls::pki_types::ServerName::try_from(host.to_string())
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{host}: {e}")))?;
            let s = tokio_rustls::TlsConnector::from(client).connect(name, s).await?;
            Ok(Box::new(s) as BoxConn)
        })
    }

    fn now_ms(&self) -> u64 {
        crate::broker::clock::now_ms()
    }

    fn synced_log(&self) -> bool {
        true
    }
}
