//! RabbitMQ's stream protocol (port 5552, 5551 over TLS), a wire protocol beside AMQP over
//! the same core: the streams it publishes to and reads from are the stream queues AMQP
//! 0-9-1 declares (`x-queue-type: stream`), so a message published over one protocol is
//! read over the other (messages are AMQP 1.0 here, AMQP 0-9-1 there: see
//! [`crate::types::amqp10`]).
//!
//! `codec` is the frame format, `connection` one client's task (handshake, publishers,
//! confirms, stream management, offsets), `deliver` a subscription's task.

pub mod codec;
pub mod connection;
pub mod deliver;
pub mod sac;

use crate::broker::Broker;
use crate::config::Config;
use crate::net::{Admitted, Listener, Stream};
use crate::tls::Tls;
use connection::Link;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::watch;

/// What every stream protocol connection of the node shares.
pub struct Shared {
    pub broker: Arc<Broker>,
    pub config: Arc<Config>,
    /// Storage's group-commit watermark: publishes are confirmed past it.
    pub durable: Option<watch::Receiver<u64>>,
    /// Why publishers are blocked now (see [`crate::net::tasks`]).
    pub alarm: watch::Receiver<Option<String>>,
    /// Single active consumers' groups, and the connections their members are on.
    pub sac: connection::Coordinator,
}

/// The stream protocol's listener: plain, and over TLS when a certificate is configured.
pub struct Server {
    listener: Listener,
    shared: Arc<Shared>,
}

impl Server {
    /// Binds the ports the configuration names (0 for none); None if there are none.
    /// Err says which port could not be bound.
    pub async fn bind(shared: Shared, tls: Option<Arc<Tls>>, connection_limit: u64) -> Result<Option<Server>, String> {
        let config = shared.config.clone();
        let (port, tls_port) = (config.stream_port, if tls.is_some() { config.stream_tls_port } else { 0 });
        if port == 0 && tls_port == 0 {
            return Ok(None);
        }
        let mut listener = Listener::new(
            "stream",
            &config.bind,
            shared.broker.clone(),
            config.max_pending_per_source,
            config.tcp_sndbuf as usize,
        )
        .with_connection_limit(connection_limit);
        let refused =
            |port: u16, what: &str, e: std::io::Error| format!("cannot listen on {}:{port} ({what}): {e}", config.bind);
        if port != 0 {
            listener = listener.with_plain(port).await.map_err(|e| refused(port, "stream", e))?;
        }
        if let (Some(tls), true) = (&tls, tls_port != 0) {
            listener =
                listener.with_tls(tls_port, tls.clone()).await.map_err(|e| refused(tls_port, "stream over TLS", e))?;
        }
        Ok(Some(Server { listener, shared: Arc::new(shared) }))
    }

    /// The addresses listened on: RabbitMQ's name for each (`stream`, `stream/ssl`, as the
    /// management API lists listeners), the log's name, and the address.
    pub fn addresses(&self) -> Vec<(&'static str, &'static str, SocketAddr)> {
        let mut all = Vec::new();
        all.extend(self.listener.local_addr().map(|a| ("stream", "stream protocol", a)));
        all.extend(self.listener.tls_addr().map(|a| ("stream/ssl", "stream protocol over TLS", a)));
        all
    }

    /// Serves clients until `shutdown` resolves.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()> + Send + 'static) {
        let shared = self.shared;
        self.listener.run(shutdown, move |a: Admitted| serve(a, shared.clone())).await
    }
}

/// Serves one admitted connection, over TCP or TLS.
async fn serve(a: Admitted, shared: Arc<Shared>) {
    let (peer, local) = match &a.stream {
        Stream::Plain(s) => (s.peer_addr(), s.local_addr()),
        Stream::Tls(s, _) => (s.get_ref().0.peer_addr(), s.get_ref().0.local_addr()),
    };
    let (Ok(peer), Ok(local)) = (peer, local) else { return };
    let Admitted { stream, pending, shutdown } = a;
    match stream {
        Stream::Plain(s) => {
            let _ = s.set_nodelay(true);
            let (rd, wr) = s.into_split();
            connection::serve(rd, wr, Link { peer, local, tls: None }, pending, shutdown, shared).await
        }
        // Boxed: TLS state is several KiB, which plain connections need not carry.
        Stream::Tls(s, info) => {
            let (rd, wr) = tokio::io::split(*s);
            let link = Link { peer, local, tls: Some(info) };
            Box::pin(connection::serve(rd, wr, link, pending, shutdown, shared)).await
        }
    }
}
