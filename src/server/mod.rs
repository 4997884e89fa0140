//! The network side: accepting sockets and running one connection task per socket.

pub mod alarms;
pub mod channel;
pub mod connection;
pub mod context;
pub mod output;
pub mod pending;
pub mod read_buf;
pub mod writer;

use crate::broker::Broker;
use crate::config::Config;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

/// Binds with SO_REUSEADDR, so a restarted broker gets its port back at once, and a backlog
/// large enough for bursts of new connections.
async fn listen(host: &str, port: u16) -> std::io::Result<TcpListener> {
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

/// A bound AMQP listener and what its connections share.
pub struct Server {
    listener: TcpListener,
    /// The AMQPS listener and its TLS configuration, when a certificate is configured.
    tls: Option<(TcpListener, Arc<crate::tls::Tls>)>,
    broker: Arc<Broker>,
    config: Arc<Config>,
    durable: Option<watch::Receiver<u64>>,
    /// Connections beyond this many are refused: their descriptors would take those the
    /// broker's files need.
    max_connections: u64,
    /// Connections not yet logged in, by source address (see [`pending`]).
    pending: Arc<pending::Pending>,
}

impl Server {
    /// Binds the AMQP listener. `durable` is storage's group-commit watermark, which confirms
    /// of persistent messages wait for.
    pub async fn bind(
        config: Config,
        broker: Arc<Broker>,
        durable: Option<watch::Receiver<u64>>,
    ) -> std::io::Result<Server> {
        let listener = listen(&config.bind, config.port).await?;
        let pending = pending::Pending::new(config.max_pending_per_source);
        Ok(Server {
            listener,
            tls: None,
            broker,
            config: Arc::new(config),
            durable,
            max_connections: u64::MAX,
            pending,
        })
    }

    /// Also listens for AMQP over TLS on `port` (0 picks a free one).
    pub async fn with_tls(mut self, port: u16, tls: Arc<crate::tls::Tls>) -> std::io::Result<Server> {
        let listener = listen(&self.config.bind, port).await?;
        self.tls = Some((listener, tls));
        Ok(self)
    }

    /// The AMQPS listener's address, if there is one.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    /// Refuses connections beyond `n` open at once (the file descriptor budget).
    pub fn with_connection_limit(mut self, n: u64) -> Server {
        self.max_connections = n;
        self
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts connections until `shutdown` resolves, then closes every connection with
    /// 320 CONNECTION_FORCED and waits (bounded) for them to finish.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        let (stop_tx, stop_rx) = watch::channel(false);
        // Each connection holds a sender; when all are dropped, every connection has ended.
        let (alive_tx, mut alive_rx) = mpsc::channel::<()>(1);
        let disk = self
            .broker
            .has_storage()
            .then(|| alarms::DiskLimit { path: self.config.data_dir.clone(), free_limit: self.config.disk_free_limit });
        let alarm = alarms::spawn_monitor(self.broker.clone(), self.config.memory_limit, disk);
        let timers = tokio::spawn(run_timers(self.broker.clone()));
        let sampler =
            tokio::spawn(run_sampler(self.broker.clone(), self.config.stats_interval_ms, self.config.data_dir.clone()));
        let mut refused_logged: Option<std::time::Instant> = None;
        let shared = (stop_rx, alive_tx, alarm);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                accepted = self.listener.accept() => self.admit(accepted, None, &shared, &mut refused_logged).await,
                accepted = async { match &self.tls { Some((l, _)) => l.accept().await, None => std::future::pending().await } } => {
                    let tls = self.tls.as_ref().map(|(_, t)| t.clone());
                    self.admit(accepted, tls, &shared, &mut refused_logged).await
                }
            }
        }
        tracing::info!("shutting down: closing connections");
        let _ = stop_tx.send(true);
        drop(shared);
        drop(self.listener);
        let _ = tokio::time::timeout(Duration::from_secs(5), alive_rx.recv()).await;
        timers.abort();
        sampler.abort();
    }
}

impl Server {
    /// Takes an accepted socket: refused at once past the connection limit, else served by a
    /// task of its own (after its TLS handshake, for `tls`).
    async fn admit(
        &self,
        accepted: std::io::Result<(tokio::net::TcpStream, SocketAddr)>,
        tls: Option<Arc<crate::tls::Tls>>,
        (stop, alive, alarm): &(watch::Receiver<bool>, mpsc::Sender<()>, watch::Receiver<Option<String>>),
        refused_logged: &mut Option<std::time::Instant>,
    ) {
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                return;
            }
        };
        if self.broker.open_connections() >= self.max_connections {
            // Closed at once: the client sees the connection reset. Logged at most once a
            // second, as a flood of them is the usual case.
            drop(stream);
            if refused_logged.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                *refused_logged = Some(std::time::Instant::now());
                tracing::warn!(
                    "file descriptor limit: connection from {peer} refused ({} connections open)",
                    self.max_connections
                );
            }
            return;
        }
        let Some(pending) = self.pending.enter(peer.ip()) else {
            // This source already has as many sockets waiting to log in as it may.
            drop(stream);
            if refused_logged.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                *refused_logged = Some(std::time::Instant::now());
                tracing::warn!(
                    "connection from {peer} refused: {} connections from {} have not logged in yet \
                     (max_pending_connections_per_source)",
                    self.pending.limit(),
                    peer.ip()
                );
            }
            return;
        };
        if self.config.tcp_sndbuf > 0 {
            // The kernel doubles it (room for its own bookkeeping) and caps it at wmem_max.
            if let Err(e) = socket2::SockRef::from(&stream).set_send_buffer_size(self.config.tcp_sndbuf as usize) {
                tracing::debug!("cannot set the send buffer of {peer}'s socket: {e}");
            }
        }
        self.broker.count_connection(true);
        let broker = self.broker.clone();
        let shared = connection::Shared {
            pending: Some(pending),
            broker: broker.clone(),
            config: self.config.clone(),
            shutdown: stop.clone(),
            durable: self.durable.clone(),
            alarm: alarm.clone(),
        };
        let alive = alive.clone();
        tokio::spawn(async move {
            match tls {
                None => connection::serve(stream, shared).await,
                // Boxed: a future is as large as its largest state, and a TLS connection's
                // (its session and record buffers) is several KiB more than a plain one's;
                // unboxed, every plain connection would carry that size as well.
                Some(tls) => {
                    Box::pin(async move {
                        if let Some((s, info)) = crate::tls::handshake(&tls, stream).await {
                            connection::serve_tls(s, info, shared).await;
                        }
                    })
                    .await
                }
            }
            broker.count_connection(false);
            drop(alive);
        });
    }
}

/// Samples message statistics for their rates every `interval_ms` (5 s by default, as
/// RabbitMQ), and the node's gauges (memory, free disk in `data_dir`, descriptors, sockets).
/// The sampling visits every queue, so it runs on a blocking thread, away from the
/// connections' workers.
async fn run_sampler(broker: Arc<Broker>, interval_ms: u64, data_dir: std::path::PathBuf) {
    let mut tick = tokio::time::interval(Duration::from_millis(interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (b, dir) = (broker.clone(), data_dir.clone());
        let _ = tokio::task::spawn_blocking(move || {
            let now = crate::broker::clock::now_ms();
            b.sample_stats(now);
            let gauges = [
                alarms::resident_bytes().unwrap_or(0),
                alarms::free_disk_bytes(&dir).unwrap_or(0),
                alarms::file_descriptors().0,
                b.open_connections(),
                alarms::context_switches(),
            ];
            b.sample_gauges(now, gauges);
        })
        .await;
    }
}

/// How often queue timers (message TTL, queue expiry) run.
const TIMER_TICK: Duration = Duration::from_millis(20);

async fn run_timers(broker: Arc<Broker>) {
    let mut tick = tokio::time::interval(TIMER_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        broker.tick();
    }
}
