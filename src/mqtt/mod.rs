//! MQTT 3.1, 3.1.1 and 5.0, a wire protocol beside AMQP over the same core, as RabbitMQ's
//! MQTT plugin maps it:
//!
//! - A PUBLISH goes to the `amq.topic` exchange of the client's vhost, its topic turned into
//!   a routing key (`/` to `.`), so AMQP consumers bound there receive it and AMQP publishes
//!   to `amq.topic` reach MQTT subscribers.
//! - A client's subscriptions are bindings of `amq.topic` to its queues,
//!   `mqtt-subscription-<client id>qos0` (not durable, auto-delete, consumed without acks)
//!   and `...qos1` (durable; acknowledged by PUBACK), which the management API, the page,
//!   metrics and policies see as any queue. A session that outlives its connection (clean
//!   session off, or an MQTT 5 session expiry) is that durable queue and its bindings.
//! - QoS 2 publishes are received exactly once (PUBREC, PUBREL, PUBCOMP, a resent identifier
//!   is not routed twice); subscriptions are granted at most QoS 1, as RabbitMQ grants them.
//! - Retained messages are kept in storage (`storage::retained`).
//!
//! `codec` is the packet format, `topic` the names and their translation, `session` the
//! acknowledgement state, `connection` one client's task.

pub mod codec;
pub mod connection;
pub mod session;
pub mod topic;

use crate::broker::connections::ConnectionEntry;
use crate::broker::Broker;
use crate::config::Config;
use crate::net::{Admitted, Listener, Stream};
use crate::storage::retained::RetainedStore;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::{watch, Notify};

/// A connected client, by vhost and client identifier: a new connection with the same
/// identifier takes its session over and it is disconnected, as the specification says.
struct Registered {
    connection: u64,
    entry: Arc<ConnectionEntry>,
    ended: Arc<Notify>,
}

/// The clients connected to this node.
#[derive(Default)]
pub struct Clients {
    by_id: Mutex<HashMap<(String, String), Registered>>,
}

impl Clients {
    /// Registers a connection under its client identifier; the connection that held it
    /// before is asked to close, and this waits (at most 5 s) until it has.
    async fn take_over(
        &self,
        vhost: &str,
        client_id: &str,
        connection: u64,
        entry: Arc<ConnectionEntry>,
    ) -> Arc<Notify> {
        let ended = Arc::new(Notify::new());
        let key = (vhost.to_string(), client_id.to_string());
        let old = self.by_id.lock().insert(key, Registered { connection, entry, ended: ended.clone() });
        if let Some(old) = old {
            let gone = old.ended.notified();
            tokio::pin!(gone);
            gone.as_mut().enable();
            old.entry.request_close("session taken over by a new connection with the same client identifier");
            if tokio::time::timeout(std::time::Duration::from_secs(5), gone).await.is_err() {
                tracing::warn!(client_id, "the connection whose session was taken over did not end within 5 s");
            }
        }
        ended
    }

    /// The connection ended: its identifier is free (unless a newer connection holds it).
    fn release(&self, vhost: &str, client_id: &str, connection: u64) {
        let mut by_id = self.by_id.lock();
        let key = (vhost.to_string(), client_id.to_string());
        if by_id.get(&key).is_some_and(|r| r.connection == connection) {
            if let Some(r) = by_id.remove(&key) {
                r.ended.notify_waiters();
            }
        }
    }

    fn is_connected(&self, vhost: &str, client_id: &str) -> bool {
        self.by_id.lock().contains_key(&(vhost.to_string(), client_id.to_string()))
    }
}

/// What every MQTT connection of the node shares.
pub struct Shared {
    pub broker: Arc<Broker>,
    pub config: Arc<Config>,
    /// Storage's group-commit watermark: QoS 1 and 2 publishes are acknowledged past it.
    pub durable: Option<watch::Receiver<u64>>,
    /// Why publishers are blocked now (see [`crate::net::tasks`]).
    pub alarm: watch::Receiver<Option<String>>,
    pub retained: Arc<RetainedStore>,
    pub clients: Clients,
}

/// The MQTT listener (and MQTT over TLS, when a certificate is configured).
pub struct Server {
    listener: Listener,
    shared: Arc<Shared>,
}

impl Server {
    pub async fn bind(config: Arc<Config>, shared: Shared) -> std::io::Result<Server> {
        let listener = Listener::bind(
            "MQTT",
            &config.bind,
            config.mqtt_port,
            shared.broker.clone(),
            config.max_pending_per_source,
            config.tcp_sndbuf as usize,
        )
        .await?;
        Ok(Server { listener, shared: Arc::new(shared) })
    }

    /// Also listens for MQTT over TLS on `port` (0 picks a free one).
    pub async fn with_tls(mut self, port: u16, tls: Arc<crate::tls::Tls>) -> std::io::Result<Server> {
        self.listener = self.listener.with_tls(port, tls).await?;
        Ok(self)
    }

    pub fn with_connection_limit(mut self, n: u64) -> Server {
        self.listener = self.listener.with_connection_limit(n);
        self
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.listener.tls_addr()
    }

    /// Serves clients until `shutdown` resolves, then disconnects them.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        let shared = self.shared;
        self.listener
            .run(shutdown, move |a: Admitted| {
                let shared = shared.clone();
                async move {
                    match a.stream {
                        Stream::Plain(s) => {
                            let (Ok(peer), Ok(local)) = (s.peer_addr(), s.local_addr()) else { return };
                            let _ = s.set_nodelay(true);
                            let (rd, wr) = s.into_split();
                            connection::serve(rd, wr, peer, local, None, a.pending, a.shutdown, shared).await
                        }
                        Stream::Tls(s, info) => {
                            let (Ok(peer), Ok(local)) = (s.get_ref().0.peer_addr(), s.get_ref().0.local_addr()) else {
                                return;
                            };
                            let (rd, wr) = tokio::io::split(*s);
                            Box::pin(connection::serve(rd, wr, peer, local, Some(info), a.pending, a.shutdown, shared))
                                .await
                        }
                    }
                }
            })
            .await
    }
}
