//! What the broker knows of its client connections, for the management API: who is connected
//! from where to which vhost, with how many channels, and a way to ask one to close. The
//! connection task owns the connection; this is only its card.

use super::history::History;
use super::stats::{MessageCounts, RateMeter};
use crate::types::FieldTable;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::Notify;

/// Adds to a counter that only one task writes: a plain load and store, no locked
/// instruction on the message path. Readers see a value at most a few increments old.
#[inline]
pub fn bump(counter: &AtomicU64, n: u64) {
    counter.store(counter.load(Ordering::Relaxed) + n, Ordering::Relaxed);
}

/// One open channel's card: its settings and message counts, written by its connection's
/// task alone and read by the management API and metrics.
#[derive(Debug, Default)]
pub struct ChannelCard {
    pub number: u16,
    pub publish: AtomicU64,
    pub confirm: AtomicU64,
    pub return_unroutable: AtomicU64,
    pub drop_unroutable: AtomicU64,
    pub deliver: AtomicU64,
    pub deliver_no_ack: AtomicU64,
    pub get: AtomicU64,
    pub get_no_ack: AtomicU64,
    pub get_empty: AtomicU64,
    pub redeliver: AtomicU64,
    pub ack: AtomicU64,
    pub prefetch_count: AtomicU32,
    pub global_prefetch_count: AtomicU32,
    pub confirm_mode: AtomicBool,
    pub transactional: AtomicBool,
    pub unacked: AtomicU32,
    pub consumers: AtomicU32,
    /// Rates, sampled off the message path, and the counts' history.
    pub meter: Mutex<RateMeter>,
    pub history: Mutex<History<12>>,
}

impl ChannelCard {
    pub fn new(number: u16) -> Arc<Self> {
        Arc::new(ChannelCard { number, ..Default::default() })
    }

    /// Takes a sample of the counts for their rates and history (the statistics sampler).
    pub fn sample(&self, now_ms: u64) {
        let counts = self.counts();
        self.meter.lock().sample(now_ms, counts);
        self.history.lock().record(now_ms, counts.values());
    }

    pub fn counts(&self) -> MessageCounts {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        MessageCounts {
            publish: l(&self.publish),
            confirm: l(&self.confirm),
            return_unroutable: l(&self.return_unroutable),
            drop_unroutable: l(&self.drop_unroutable),
            deliver: l(&self.deliver),
            deliver_no_ack: l(&self.deliver_no_ack),
            get: l(&self.get),
            get_no_ack: l(&self.get_no_ack),
            get_empty: l(&self.get_empty),
            redeliver: l(&self.redeliver),
            ack: l(&self.ack),
        }
    }
}

/// A TLS connection's session and client certificate, as RabbitMQ reports them
/// (`ssl_protocol` "tlsv1.3", `ssl_cipher` "aes_256_gcm", ...).
#[derive(Debug, Clone, Default)]
pub struct TlsDetails {
    pub protocol: String,
    pub key_exchange: String,
    pub cipher: String,
    pub hash: String,
    /// The client certificate's subject, issuer and validity, if it presented one.
    pub peer_cert_subject: Option<String>,
    pub peer_cert_issuer: Option<String>,
    pub peer_cert_validity: Option<String>,
}

/// What the connection knows of itself beyond its tuning, for its card.
#[derive(Debug, Default)]
pub struct ConnectionDetails {
    /// The wire protocol and its version as RabbitMQ names them ("AMQP 0-9-1", "MQTT 3.1.1").
    pub protocol: &'static str,
    /// The SASL mechanism it logged in with (PLAIN, AMQPLAIN, EXTERNAL).
    pub auth_mechanism: String,
    pub tls: Option<TlsDetails>,
    /// Bytes handed to the connection's writer and not yet written to the socket.
    pub unwritten: Arc<AtomicUsize>,
}

#[derive(Debug)]
pub struct ConnectionEntry {
    pub id: u64,
    /// As RabbitMQ names connections: `peer -> local`.
    pub name: String,
    pub peer: std::net::SocketAddr,
    pub local: std::net::SocketAddr,
    pub user: String,
    pub vhost: String,
    /// Milliseconds since the epoch.
    pub connected_at: u64,
    pub client_properties: FieldTable,
    pub frame_max: u32,
    pub channel_max: u16,
    pub heartbeat: u16,
    /// The open channels' cards, by number.
    channels: Mutex<Vec<Arc<ChannelCard>>>,
    /// Counts of the channels closed so far, so totals do not drop when one closes.
    closed: Mutex<MessageCounts>,
    /// Bytes read from and written to the socket (the connection task and its writer).
    pub recv_oct: AtomicU64,
    pub send_oct: AtomicU64,
    /// Reads from the socket, and writes handed to the writer.
    pub recv_cnt: AtomicU64,
    pub send_cnt: AtomicU64,
    /// Rates of recv_oct and send_oct, sampled off the message path.
    pub oct_meter: Mutex<super::history::Meter<2>>,
    pub details: ConnectionDetails,
    /// The connection closed (sent or answered connection.close) and released its channels;
    /// its card goes once the socket ends.
    ended: AtomicBool,
    /// A close asked for (by the management API), with its reason.
    close: Mutex<Option<String>>,
    pub close_requested: Notify,
    /// A stream protocol connection's subscriptions.
    stream_readers: Mutex<Vec<Arc<StreamReaderCard>>>,
}

/// A stream protocol subscription as the management API lists it (RabbitMQ's stream
/// management plugin's `/api/stream/consumers`), kept by its delivery task with a relaxed
/// store per chunk sent.
#[derive(Debug)]
pub struct StreamReaderCard {
    pub subscription: u8,
    pub stream: String,
    pub properties: Vec<(String, String)>,
    /// The next offset it is sent, and the messages sent so far.
    pub offset: AtomicU64,
    pub consumed: AtomicU64,
    /// The chunks its client's credit allows now.
    pub credits: Arc<tokio::sync::Semaphore>,
    /// A single active consumer's turn (always true for the others).
    pub active: AtomicBool,
}

impl ConnectionEntry {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: u64,
        peer: std::net::SocketAddr,
        local: std::net::SocketAddr,
        user: String,
        vhost: String,
        client_properties: FieldTable,
        (frame_max, channel_max, heartbeat): (u32, u16, u16),
        details: ConnectionDetails,
    ) -> Arc<Self> {
        let connected_at =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        Arc::new(ConnectionEntry {
            id,
            name: format!("{peer} -> {local}"),
            peer,
            local,
            user,
            vhost,
            connected_at,
            client_properties,
            frame_max,
            channel_max,
            heartbeat,
            channels: Mutex::new(Vec::new()),
            closed: Mutex::new(MessageCounts::default()),
            recv_oct: AtomicU64::new(0),
            send_oct: AtomicU64::new(0),
            recv_cnt: AtomicU64::new(0),
            send_cnt: AtomicU64::new(0),
            // Rates only: no history is kept past the last sample.
            oct_meter: Mutex::new(super::history::Meter::new(0)),
            details,
            ended: AtomicBool::new(false),
            close: Mutex::new(None),
            close_requested: Notify::new(),
            stream_readers: Mutex::new(Vec::new()),
        })
    }

    /// The stream protocol subscriptions of this connection.
    pub fn stream_readers(&self) -> Vec<Arc<StreamReaderCard>> {
        self.stream_readers.lock().clone()
    }

    /// A subscription made (`Some`), or subscription `id` ended.
    pub fn set_stream_reader(&self, id: u8, card: Option<Arc<StreamReaderCard>>) {
        let mut readers = self.stream_readers.lock();
        readers.retain(|r| r.subscription != id);
        readers.extend(card);
        readers.sort_by_key(|r| r.subscription);
    }

    pub fn channel_count(&self) -> u32 {
        self.channels.lock().len() as u32
    }

    /// The open channels' cards.
    pub fn channels(&self) -> Vec<Arc<ChannelCard>> {
        self.channels.lock().clone()
    }

    /// The channels now open (called by the connection when one opens or closes); the
    /// counts of those gone are kept in the connection's totals.
    pub fn set_channels(&self, mut open: Vec<Arc<ChannelCard>>) {
        open.sort_by_key(|c| c.number);
        let mut channels = self.channels.lock();
        for gone in channels.iter().filter(|c| !open.iter().any(|o| Arc::ptr_eq(o, c))) {
            self.closed.lock().add(&gone.counts());
        }
        *channels = open;
    }

    /// Message counts of every channel this connection has had.
    pub fn counts(&self) -> MessageCounts {
        let mut total = *self.closed.lock();
        for c in self.channels.lock().iter() {
            total.add(&c.counts());
        }
        total
    }

    /// The connection is closing: its channels are gone, as RabbitMQ's `closed` state shows.
    pub fn mark_closed(&self) {
        self.ended.store(true, Ordering::Relaxed);
        self.set_channels(Vec::new());
    }

    pub fn is_closed(&self) -> bool {
        self.ended.load(Ordering::Relaxed)
    }

    /// Takes a sample of the byte counters for their rates (the statistics sampler).
    pub fn sample(&self, now_ms: u64) {
        let values = [self.recv_oct.load(Ordering::Relaxed), self.send_oct.load(Ordering::Relaxed)];
        self.oct_meter.lock().sample(now_ms, values);
    }

    /// The name the client gave its connection (`connection_name` in its properties).
    pub fn user_provided_name(&self) -> Option<String> {
        self.client_properties.get("connection_name").and_then(|v| v.as_str()).map(str::to_string)
    }

    /// Asks the connection to close with `reason` (320 CONNECTION_FORCED).
    pub fn request_close(&self, reason: &str) {
        *self.close.lock() = Some(reason.to_string());
        self.close_requested.notify_one();
    }

    /// The close asked for, if any.
    pub fn close_reason(&self) -> Option<String> {
        self.close.lock().clone()
    }
}
