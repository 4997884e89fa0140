//! The broker core: vhosts, exchanges, queues, consumers and routing. No sockets, no files:
//! connections call into it and receive deliveries through their [`consumer::ConnectionSink`].

pub mod arguments;
pub mod connections;
pub mod consumer;
pub mod dead_letter;
pub mod definitions;
pub mod error;
pub mod exchange;
pub mod message;
pub mod queue;
pub mod stats;
pub mod store;
pub mod vhost;

pub use error::{AmqpError, AmqpResult, Scope};

use consumer::Consumer;
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use store::{Storage, StoreError};
use vhost::VHost;

/// A hash map for lookups on the per-message path (channel by number, consumer by tag, queue
/// and exchange by name): aHash with a random key per map is several times cheaper than the
/// standard SipHash, and the random key keeps client-chosen names from colliding on purpose.
pub type FastMap<K, V> = HashMap<K, V, ahash::RandomState>;

/// Pseudo-queue a client consumes from (no-ack) to receive direct replies.
pub const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

#[derive(Debug, Clone)]
pub struct User {
    pub password: String,
    /// Like RabbitMQ's guest: may connect only over loopback.
    pub loopback_only: bool,
}

#[derive(Debug)]
pub struct Broker {
    vhosts: RwLock<HashMap<String, Arc<VHost>>>,
    users: RwLock<HashMap<String, User>>,
    next_id: AtomicU64,
    /// Direct reply-to consumers by their reply key.
    reply_consumers: Mutex<HashMap<String, Arc<Consumer>>>,
    storage: Option<Arc<dyn Storage>>,
    /// Memory use is past half the limit: queues page messages to disk.
    memory_pressure: Arc<std::sync::atomic::AtomicBool>,
    /// Client connections accepted and not yet ended.
    connections: AtomicU64,
    /// Why publishers are blocked (a memory or disk alarm), if they are.
    alarm: Mutex<Option<String>>,
    /// Open connections' cards, by connection id.
    registry: Mutex<HashMap<u64, Arc<connections::ConnectionEntry>>>,
    /// Message counts of connections closed so far, so totals never go down.
    closed_counts: Mutex<stats::MessageCounts>,
    /// Rates of the broker-wide counts, sampled off the message path.
    meter: Mutex<stats::RateMeter>,
    /// Connections opened and closed since start (for metrics).
    pub connections_opened: AtomicU64,
    pub connections_closed: AtomicU64,
}

impl Default for Broker {
    fn default() -> Self {
        Self::new()
    }
}

impl Broker {
    /// A broker with vhost "/" and user guest/guest (loopback only), as RabbitMQ starts.
    pub fn new() -> Self {
        Self::with_storage(None)
    }

    /// A broker whose durable entities and persistent messages live in `storage`; what it
    /// holds is recovered first.
    pub fn open(storage: Arc<dyn Storage>) -> Result<Self, StoreError> {
        let broker = Self::with_storage(Some(storage));
        for vhost in broker.vhosts.read().values() {
            vhost.restore()?;
        }
        Ok(broker)
    }

    /// The log ids every durable queue uses, so storage can remove the others.
    pub fn queue_log_ids(&self) -> Vec<String> {
        self.vhosts.read().values().flat_map(|v| v.queue_log_ids()).collect()
    }

    fn with_storage(storage: Option<Arc<dyn Storage>>) -> Self {
        let memory_pressure = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let broker = Broker {
            vhosts: RwLock::new(HashMap::new()),
            users: RwLock::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            reply_consumers: Mutex::new(HashMap::new()),
            storage: storage.clone(),
            memory_pressure: memory_pressure.clone(),
            connections: AtomicU64::new(0),
            alarm: Mutex::new(None),
            registry: Mutex::new(HashMap::new()),
            closed_counts: Mutex::new(stats::MessageCounts::default()),
            meter: Mutex::new(stats::RateMeter::default()),
            connections_opened: AtomicU64::new(0),
            connections_closed: AtomicU64::new(0),
        };
        broker.vhosts.write().insert("/".to_string(), VHost::new("/", storage, memory_pressure));
        broker.users.write().insert("guest".into(), User { password: "guest".into(), loopback_only: true });
        broker
    }

    /// Runs queue timers (message TTL, queue expiry) in every vhost.
    pub fn tick(&self) {
        let now = queue::now_ms();
        let vhosts: Vec<Arc<VHost>> = self.vhosts.read().values().cloned().collect();
        for v in vhosts {
            v.tick(now);
        }
    }

    /// Memory use passed half the limit (or fell back): queues page to disk meanwhile.
    pub fn set_memory_pressure(&self, on: bool) {
        if self.memory_pressure.swap(on, Ordering::AcqRel) != on {
            tracing::info!("memory pressure {}", if on { "on: paging queues to disk" } else { "off" });
        }
    }

    /// Memory is short: every queue moves its messages past the in-memory window to disk.
    /// Returns how many messages moved.
    pub fn page_out(&self) -> usize {
        let vhosts: Vec<Arc<VHost>> = self.vhosts.read().values().cloned().collect();
        vhosts.iter().map(|v| v.page_out()).sum()
    }

    /// Whether log writes outrun the disk: a publisher that wrote to a log then waits for
    /// `waiter`, notified once they no longer do.
    pub fn storage_backlogged(&self, waiter: &Arc<tokio::sync::Notify>) -> bool {
        self.storage.as_ref().is_some_and(|s| s.backlogged(waiter))
    }

    /// What the group commit has done so far (empty without storage).
    pub fn sync_stats(&self) -> store::SyncStats {
        self.storage.as_ref().map(|s| s.sync_stats()).unwrap_or_default()
    }

    /// Whether the broker keeps data on disk (it does unless run without a data directory).
    pub fn has_storage(&self) -> bool {
        self.storage.is_some()
    }

    /// Why disk writes are failing, if they are: persistent publishes are refused meanwhile.
    pub fn storage_failure(&self) -> Option<String> {
        self.storage.as_ref().and_then(|s| s.failure())
    }

    /// The newest group-commit ticket: waiting for it waits for everything stored so far.
    pub fn storage_last_ticket(&self) -> u64 {
        self.storage.as_ref().map_or(0, |s| s.last_ticket())
    }

    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Counts a connection accepted (`true`) or ended (`false`); returns how many are open.
    pub fn count_connection(&self, opened: bool) -> u64 {
        if opened {
            self.connections.fetch_add(1, Ordering::AcqRel) + 1
        } else {
            self.connections.fetch_sub(1, Ordering::AcqRel) - 1
        }
    }

    /// Lists an open connection (once it has opened its vhost).
    pub fn register_connection(&self, entry: Arc<connections::ConnectionEntry>) {
        self.connections_opened.fetch_add(1, Ordering::Relaxed);
        self.registry.lock().insert(entry.id, entry);
    }

    pub fn unregister_connection(&self, id: u64) {
        let gone = self.registry.lock().remove(&id);
        if let Some(e) = gone {
            self.connections_closed.fetch_add(1, Ordering::Relaxed);
            self.closed_counts.lock().add(&e.counts());
        }
    }

    /// Message counts of every channel since start, as RabbitMQ's overview reports them.
    pub fn message_counts(&self) -> stats::MessageCounts {
        let mut total = *self.closed_counts.lock();
        let open: Vec<_> = self.registry.lock().values().cloned().collect();
        for c in open {
            total.add(&c.counts());
        }
        total
    }

    /// Rates of [`Broker::message_counts`], as last sampled.
    pub fn message_rates(&self) -> stats::RateMeter {
        self.meter.lock().clone()
    }

    /// Samples every counter for its rate: the broker's, each channel's and each queue's.
    /// Run every few seconds by the server, off the message path; it takes
    /// each queue's lock briefly, one at a time.
    pub fn sample_stats(&self, now_ms: u64) {
        let counts = self.message_counts();
        self.meter.lock().sample(now_ms, counts);
        for c in self.connection_list() {
            for ch in c.channels() {
                let counts = ch.counts();
                ch.meter.lock().sample(now_ms, counts);
            }
        }
        for v in self.vhosts() {
            for q in v.queues() {
                q.sample(now_ms);
            }
        }
    }

    /// The open connections, by name.
    pub fn connection_list(&self) -> Vec<Arc<connections::ConnectionEntry>> {
        let mut v: Vec<_> = self.registry.lock().values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Records the alarm in effect (set by the resource monitor).
    pub fn set_alarm(&self, reason: Option<String>) {
        *self.alarm.lock() = reason;
    }

    /// The alarm in effect, if any: why publishers are blocked.
    pub fn alarm(&self) -> Option<String> {
        self.alarm.lock().clone()
    }

    pub fn open_connections(&self) -> u64 {
        self.connections.load(Ordering::Acquire)
    }

    /// Every vhost, by name.
    pub fn vhosts(&self) -> Vec<Arc<VHost>> {
        let mut v: Vec<Arc<VHost>> = self.vhosts.read().values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    pub fn vhost(&self, name: &str) -> Option<Arc<VHost>> {
        self.vhosts.read().get(name).cloned()
    }

    /// Every user's name, sorted.
    pub fn user_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.users.read().keys().cloned().collect();
        v.sort();
        v
    }

    pub fn add_user(&self, name: &str, password: &str, loopback_only: bool) {
        self.users.write().insert(name.into(), User { password: password.into(), loopback_only });
    }

    /// Checks a login; the error text is RabbitMQ's, which names the mechanism.
    pub fn authenticate(&self, user: &str, password: &str, loopback: bool, mechanism: &str) -> AmqpResult<()> {
        let users = self.users.read();
        let ok = match users.get(user) {
            Some(u) => u.password == password && (loopback || !u.loopback_only),
            None => false,
        };
        if ok {
            Ok(())
        } else {
            Err(AmqpError::access_refused(format!(
                "Login was refused using authentication mechanism {mechanism}. For details see the broker logfile."
            )))
        }
    }

    pub fn register_reply_consumer(&self, key: String, consumer: Arc<Consumer>) {
        self.reply_consumers.lock().insert(key, consumer);
    }
    pub fn unregister_reply_consumer(&self, key: &str) {
        self.reply_consumers.lock().remove(key);
    }
    pub fn reply_consumer(&self, key: &str) -> Option<Arc<Consumer>> {
        self.reply_consumers.lock().get(key).cloned()
    }
}
