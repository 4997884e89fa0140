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
//! acknowledgement state, `connection` one client's task, `websocket` the carrier of Web MQTT.

pub mod codec;
pub mod connection;
pub mod session;
pub mod topic;
pub mod websocket;

use crate::broker::connections::ConnectionEntry;
use crate::broker::Broker;
use crate::config::Config;
use crate::net::{Admitted, Listener, Stream};
use crate::storage::retained::RetainedStore;
use crate::tls::Tls;
use connection::Link;
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

/// How a listener's connections carry MQTT.
#[derive(Clone, Copy)]
enum Carrier {
    Tcp,
    /// An HTTP upgrade to a WebSocket at [`websocket::PATH`] first.
    WebSocket,
}

/// The MQTT listeners: MQTT over TCP and over WebSocket (RabbitMQ's Web MQTT), each also
/// over TLS when a certificate is configured, as the configuration names their ports.
pub struct Server {
    listeners: Vec<(Listener, Carrier)>,
    shared: Arc<Shared>,
}

impl Server {
    /// Binds the ports the configuration names (0 for none), the TLS ones only with `tls`:
    /// MQTT over TLS alone is a configuration too.
    /// Err says which port could not be bound.
    pub async fn bind(shared: Shared, tls: Option<Arc<Tls>>, connection_limit: u64) -> Result<Server, String> {
        let config = shared.config.clone();
        let mut listeners = Vec::new();
        for (name, carrier, port, tls_port) in [
            ("MQTT", Carrier::Tcp, config.mqtt_port, config.mqtt_tls_port),
            ("Web MQTT", Carrier::WebSocket, config.mqtt_ws_port, config.mqtt_wss_port),
        ] {
            let tls_port = if tls.is_some() { tls_port } else { 0 };
            if port == 0 && tls_port == 0 {
                continue;
            }
            let mut listener = Listener::new(
                name,
                &config.bind,
                shared.broker.clone(),
                config.max_pending_per_source,
                config.tcp_sndbuf as usize,
            )
            .with_connection_limit(connection_limit);
            let refused = |port: u16, what: &str, e: std::io::Error| {
                format!("cannot listen on {}:{port} ({what}): {e}", config.bind)
            };
            if port != 0 {
                listener = listener.with_plain(port).await.map_err(|e| refused(port, name, e))?;
            }
            if let (Some(tls), true) = (&tls, tls_port != 0) {
                listener = listener
                    .with_tls(tls_port, tls.clone())
                    .await
                    .map_err(|e| refused(tls_port, &format!("{name} over TLS"), e))?;
            }
            listeners.push((listener, carrier));
        }
        Ok(Server { listeners, shared: Arc::new(shared) })
    }

    /// The addresses listened on: RabbitMQ's name for each (`mqtt`, `mqtt/ssl`,
    /// `http/web-mqtt`, `https/web-mqtt`, as the management API lists listeners), the log's
    /// name, and the address.
    pub fn addresses(&self) -> Vec<(&'static str, &'static str, SocketAddr)> {
        let mut all = Vec::new();
        for (listener, carrier) in &self.listeners {
            let [plain, tls] = match carrier {
                Carrier::Tcp => [("mqtt", "MQTT"), ("mqtt/ssl", "MQTT over TLS")],
                Carrier::WebSocket => [("http/web-mqtt", "Web MQTT"), ("https/web-mqtt", "Web MQTT over TLS")],
            };
            all.extend(listener.local_addr().map(|a| (plain.0, plain.1, a)));
            all.extend(listener.tls_addr().map(|a| (tls.0, tls.1, a)));
        }
        all
    }

    /// Serves clients until `shutdown` resolves, then disconnects them.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        let (stop, stopped) = watch::channel(false);
        let mut tasks = tokio::task::JoinSet::new();
        for (listener, carrier) in self.listeners {
            let (shared, mut stopped) = (self.shared.clone(), stopped.clone());
            let until = async move {
                let _ = stopped.wait_for(|s| *s).await;
            };
            tasks.spawn(listener.run(until, move |a: Admitted| serve(a, carrier, shared.clone())));
        }
        shutdown.await;
        let _ = stop.send(true);
        while tasks.join_next().await.is_some() {}
    }
}

/// Serves one admitted connection: over TCP or TLS, after a WebSocket upgrade if it came to
/// a Web MQTT port.
async fn serve(a: Admitted, carrier: Carrier, shared: Arc<Shared>) {
    let (peer, local) = match &a.stream {
        Stream::Plain(s) => (s.peer_addr(), s.local_addr()),
        Stream::Tls(s, _) => (s.get_ref().0.peer_addr(), s.get_ref().0.local_addr()),
    };
    let (Ok(peer), Ok(local)) = (peer, local) else { return };
    let web = matches!(carrier, Carrier::WebSocket);
    let Admitted { stream, pending, shutdown } = a;
    match stream {
        Stream::Plain(s) if !web => {
            let _ = s.set_nodelay(true);
            let (rd, wr) = s.into_split();
            let link = Link { peer, local, tls: None, web };
            connection::serve(rd, wr, link, pending, shutdown, shared).await
        }
        // Boxed: TLS and WebSocket state are several KiB, which plain connections need not carry.
        Stream::Plain(s) => {
            let _ = s.set_nodelay(true);
            let link = Link { peer, local, tls: None, web };
            Box::pin(serve_over(s, link, pending, shutdown, shared)).await
        }
        Stream::Tls(s, info) => {
            let link = Link { peer, local, tls: Some(info), web };
            Box::pin(serve_over(*s, link, pending, shutdown, shared)).await
        }
    }
}

/// Serves a connection over any byte stream, opening a WebSocket on it first for Web MQTT.
async fn serve_over<S>(
    s: S,
    link: Link,
    pending: crate::net::pending::PendingGuard,
    shutdown: watch::Receiver<bool>,
    shared: Arc<Shared>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    if link.web {
        let Some(ws) = websocket::accept(s, connection::max_packet(&shared)).await else { return };
        let (rd, wr) = tokio::io::split(ws);
        connection::serve(rd, wr, link, pending, shutdown, shared).await
    } else {
        let (rd, wr) = tokio::io::split(s);
        connection::serve(rd, wr, link, pending, shutdown, shared).await
    }
}
