//! AMQP 0-9-1, the broker's first wire protocol: the frame and method codec (`frame`,
//! `method`, `reader`), one task per connection (`connection`, with the handshake), the
//! channels that run its methods against the core (`channel`), and the output a connection
//! encodes for its writer (`output`). The value types it shares with the core (field tables,
//! properties, reply codes) are in [`crate::types`]; the accept loop, limits, TLS and alarms
//! it shares with every protocol are in [`crate::net`].

pub mod channel;
pub mod connection;
pub mod context;
pub mod frame;
pub mod method;
pub mod output;
pub mod reader;

pub use frame::{ContentHeader, Frame, FrameError};
pub use method::Method;

use crate::broker::Broker;
use crate::config::Config;
use crate::net::{Admitted, Listener, Stream};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::watch;

/// The AMQP listener (and AMQPS, when a certificate is configured) and what its connections
/// share.
pub struct Server {
    listener: Listener,
    broker: Arc<Broker>,
    config: Arc<Config>,
    /// Storage's group-commit watermark, which confirms of persistent messages wait for.
    durable: Option<watch::Receiver<u64>>,
    /// Why publishers are blocked now (see [`crate::net::tasks`]).
    alarm: watch::Receiver<Option<String>>,
}

impl Server {
    /// Binds the AMQP listener on the configured address and port.
    pub async fn bind(
        config: Config,
        broker: Arc<Broker>,
        durable: Option<watch::Receiver<u64>>,
        alarm: watch::Receiver<Option<String>>,
    ) -> std::io::Result<Server> {
        let listener = Listener::new(
            "AMQP",
            &config.bind,
            broker.clone(),
            config.max_pending_per_source,
            config.tcp_sndbuf as usize,
        )
        .with_plain(config.port)
        .await?;
        Ok(Server { listener, broker, config: Arc::new(config), durable, alarm })
    }

    /// Also listens for AMQP over TLS on `port` (0 picks a free one).
    pub async fn with_tls(mut self, port: u16, tls: Arc<crate::tls::Tls>) -> std::io::Result<Server> {
        self.listener = self.listener.with_tls(port, tls).await?;
        Ok(self)
    }

    /// The AMQPS listener's address, if there is one.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.listener.tls_addr()
    }

    /// Refuses connections beyond `n` open at once (the file descriptor budget).
    pub fn with_connection_limit(mut self, n: u64) -> Server {
        self.listener = self.listener.with_connection_limit(n);
        self
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr().ok_or_else(|| std::io::Error::other("the AMQP port's address is unknown"))
    }

    /// Serves connections until `shutdown` resolves, then closes every connection with
    /// 320 CONNECTION_FORCED and waits (bounded) for them to finish.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        let Server { listener, broker, config, durable, alarm } = self;
        listener
            .run(shutdown, move |admitted: Admitted| {
                let shared = connection::Shared {
                    pending: Some(admitted.pending),
                    broker: broker.clone(),
                    config: config.clone(),
                    shutdown: admitted.shutdown,
                    durable: durable.clone(),
                    alarm: alarm.clone(),
                };
                async move {
                    match admitted.stream {
                        Stream::Plain(s) => connection::serve(s, shared).await,
                        // Boxed, so that a plain connection's future does not carry the size
                        // of a TLS one's.
                        Stream::Tls(s, info) => Box::pin(connection::serve_tls(*s, info, shared)).await,
                    }
                }
            })
            .await
    }
}
