//! What every wire protocol's listener shares, whichever protocol it speaks: binding a port,
//! the accept loop with its limits (open connections against the file descriptor budget,
//! connections not yet logged in per source), TLS handshakes, socket settings, the resource
//! alarms, pooled read buffers and the writer task that keeps a slow socket from blocking its
//! connection.
//!
//! A protocol (`amqp/`, and the ones beside it) brings a function that serves one admitted
//! connection to its end; [`Listener::run`] accepts, admits and spawns it.

pub mod alarms;
pub mod pending;
pub mod read_buf;
pub mod tasks;
pub mod writer;

use crate::broker::Broker;
use crate::tls::{PeerInfo, Tls};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::server::TlsStream;

/// How long connections have to finish after the broker starts shutting down.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Binds with SO_REUSEADDR, so a restarted broker gets its port back at once, and a backlog
/// large enough for bursts of new connections.
pub async fn listen(host: &str, port: u16) -> std::io::Result<TcpListener> {
    let mut last = None;
    for addr in tokio::net::lookup_host((host, port)).await? {
        let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
        socket.set_reuseaddr(true)?;
        match socket.bind(addr).and_then(|()| socket.listen(4096)) {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other(format!("no address for {host}"))))
}

/// An accepted socket, its TLS handshake done when it came to the TLS port.
pub enum Stream {
    Plain(TcpStream),
    /// Boxed: a TLS session and its record buffers are several KiB.
    Tls(Box<TlsStream<TcpStream>>, PeerInfo),
}

/// What a protocol's serve function gets for one connection.
pub struct Admitted {
    pub stream: Stream,
    /// Counts the connection against its source's limit of connections not yet logged in;
    /// the protocol drops it once the login succeeds.
    pub pending: pending::PendingGuard,
    /// Becomes true when the broker shuts down: close the connection (AMQP's 320).
    pub shutdown: watch::Receiver<bool>,
}

/// A protocol's listening ports (plain, TLS, or both) and the limits every connection is
/// admitted under.
pub struct Listener {
    /// The protocol's name, for the log ("AMQP", ...).
    name: &'static str,
    host: String,
    plain: Option<TcpListener>,
    tls: Option<(TcpListener, Arc<Tls>)>,
    broker: Arc<Broker>,
    /// Connections (of every listener) beyond this many are refused: their descriptors would
    /// take those the broker's files need.
    max_connections: u64,
    /// Connections not yet logged in, by source address (see [`pending`]).
    pending: Arc<pending::Pending>,
    /// SO_SNDBUF for each accepted socket; 0 leaves the kernel's default.
    sndbuf: usize,
}

impl Listener {
    /// A listener of no port yet: [`Listener::with_plain`] and [`Listener::with_tls`] add them.
    pub fn new(
        name: &'static str,
        host: &str,
        broker: Arc<Broker>,
        max_pending_per_source: u32,
        sndbuf: usize,
    ) -> Listener {
        Listener {
            name,
            host: host.to_string(),
            plain: None,
            tls: None,
            broker,
            max_connections: u64::MAX,
            pending: pending::Pending::new(max_pending_per_source),
            sndbuf,
        }
    }

    /// Listens for the protocol without TLS on `port` (0 picks a free one).
    pub async fn with_plain(mut self, port: u16) -> std::io::Result<Listener> {
        self.plain = Some(listen(&self.host, port).await?);
        Ok(self)
    }

    /// Also listens for the protocol over TLS on `port` (0 picks a free one).
    pub async fn with_tls(mut self, port: u16, tls: Arc<Tls>) -> std::io::Result<Listener> {
        self.tls = Some((listen(&self.host, port).await?, tls));
        Ok(self)
    }

    /// Refuses connections beyond `n` open at once (the file descriptor budget).
    pub fn with_connection_limit(mut self, n: u64) -> Listener {
        self.max_connections = n;
        self
    }

    /// The plain port's address, if there is one.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.plain.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The TLS port's address, if there is one.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    /// Accepts connections and serves each with `serve` in a task of its own, until
    /// `shutdown` resolves; then tells every connection to close and waits (bounded) for
    /// them to finish.
    pub async fn run<F, Fut>(self, shutdown: impl Future<Output = ()>, serve: F)
    where
        F: Fn(Admitted) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let serve = Arc::new(serve);
        let (stop_tx, stop_rx) = watch::channel(false);
        // Each connection holds a sender; when all are dropped, every connection has ended.
        let (alive_tx, mut alive_rx) = mpsc::channel::<()>(1);
        let mut refused_logged: Option<Instant> = None;
        tokio::pin!(shutdown);
        loop {
            let (accepted, tls) = tokio::select! {
                _ = &mut shutdown => break,
                accepted = async { match &self.plain { Some(l) => l.accept().await, None => std::future::pending().await } } => {
                    (accepted, None)
                }
                accepted = async { match &self.tls { Some((l, _)) => l.accept().await, None => std::future::pending().await } } => {
                    (accepted, self.tls.as_ref().map(|(_, t)| t.clone()))
                }
            };
            let Some((stream, pending)) = self.admit(accepted, &mut refused_logged).await else { continue };
            let (broker, serve, shutdown, alive) =
                (self.broker.clone(), serve.clone(), stop_rx.clone(), alive_tx.clone());
            broker.count_connection(true);
            tokio::spawn(async move {
                match tls {
                    None => serve(Admitted { stream: Stream::Plain(stream), pending, shutdown }).await,
                    // Boxed: a future is as large as its largest state, and the handshake's
                    // is several KiB; unboxed, every plain connection would carry it too.
                    Some(tls) => {
                        Box::pin(async move {
                            if let Some((s, info)) = crate::tls::handshake(&tls, stream).await {
                                serve(Admitted { stream: Stream::Tls(Box::new(s), info), pending, shutdown }).await
                            }
                        })
                        .await
                    }
                }
                broker.count_connection(false);
                drop(alive);
            });
        }
        tracing::info!("shutting down: closing {} connections", self.name);
        let _ = stop_tx.send(true);
        drop(alive_tx);
        drop(self.plain);
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, alive_rx.recv()).await;
    }

    /// Takes an accepted socket, or refuses it at once: past the connection limit, or when
    /// its source already has as many connections waiting to log in as it may.
    async fn admit(
        &self,
        accepted: std::io::Result<(TcpStream, SocketAddr)>,
        refused_logged: &mut Option<Instant>,
    ) -> Option<(TcpStream, pending::PendingGuard)> {
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!("{} accept failed: {e}", self.name);
                tokio::time::sleep(Duration::from_millis(50)).await;
                return None;
            }
        };
        // Refusals are logged at most once a second, as a flood of them is the usual case;
        // the client sees its connection reset.
        let mut log_refusal = |why: String| {
            if refused_logged.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                *refused_logged = Some(Instant::now());
                tracing::warn!("{why}");
            }
        };
        if self.broker.open_connections() >= self.max_connections {
            log_refusal(format!(
                "file descriptor limit: connection from {peer} refused ({} connections open)",
                self.max_connections
            ));
            return None;
        }
        let Some(pending) = self.pending.enter(peer.ip()) else {
            log_refusal(format!(
                "connection from {peer} refused: {} connections from {} have not logged in yet \
                 (max_pending_connections_per_source)",
                self.pending.limit(),
                peer.ip()
            ));
            return None;
        };
        if self.sndbuf > 0 {
            // The kernel doubles it (room for its own bookkeeping) and caps it at wmem_max.
            if let Err(e) = socket2::SockRef::from(&stream).set_send_buffer_size(self.sndbuf) {
                tracing::debug!("cannot set the send buffer of {peer}'s socket: {e}");
            }
        }
        Some((stream, pending))
    }
}
