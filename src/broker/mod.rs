//! The broker core: vhosts, exchanges, queues, consumers and routing. No sockets, no files:
//! connections call into it and receive deliveries through their [`consumer::ConnectionSink`].

pub mod arguments;
pub mod audit;
pub mod clock;
pub mod connections;
pub mod consumer;
pub mod dead_letter;
pub mod definitions;
pub mod error;
pub mod exchange;
pub mod history;
pub mod message;
pub mod parameters;
pub mod policy;
pub mod queue;
pub mod replicated;
pub mod stats;
pub mod store;
pub mod vhost;

pub use error::{AmqpError, AmqpResult, Scope};

use crate::auth::grant::Grant;
use crate::auth::{AccessChange, AccessError, AccessState, PermissionDef, Refused, UserDef, VhostDef};
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

/// How a broker starts its users when its data directory has none yet, and who may log in
/// only from loopback (RabbitMQ's `default_user`, `default_pass`, `loopback_users`).
#[derive(Debug, Clone)]
pub struct AccessSettings {
    /// None: a fresh broker has no user at all (add one with the API before logging in).
    pub default_user: Option<(String, String)>,
    pub loopback_users: Vec<String>,
}

impl Default for AccessSettings {
    fn default() -> Self {
        AccessSettings { default_user: Some(("guest".into(), "guest".into())), loopback_users: vec!["guest".into()] }
    }
}

#[derive(Debug)]
pub struct Broker {
    vhosts: RwLock<HashMap<String, Arc<VHost>>>,
    /// Users, vhosts and permissions; `access_generation` counts its changes, so that a
    /// connection's compiled [`Grant`] notices a change with one load.
    access: RwLock<AccessState>,
    access_generation: AtomicU64,
    loopback_users: Vec<String>,
    /// Failed logins by source, to slow guessing.
    throttle: Mutex<crate::auth::throttle::LoginThrottle>,
    next_id: AtomicU64,
    /// Direct reply-to consumers by their reply key.
    reply_consumers: Mutex<HashMap<String, Arc<Consumer>>>,
    storage: Option<Arc<dyn Storage>>,
    /// Memory use is past half the limit: queues page messages to disk.
    memory_pressure: Arc<std::sync::atomic::AtomicBool>,
    /// Client connections accepted and not yet ended.
    connections: AtomicU64,
    /// Why publishers are blocked (a memory or disk alarm of this node), if they are.
    alarm: Mutex<Option<String>>,
    /// Other cluster members' alarms as (node, resource): they block this node's publishers
    /// too, as RabbitMQ's alarms are cluster-wide.
    remote_alarms: Mutex<Vec<(String, String)>>,
    /// The shovels other cluster members run, as they report them (JSON, as the API shows).
    remote_run_states: Mutex<Vec<serde_json::Value>>,
    /// Open connections' cards, by connection id.
    registry: Mutex<HashMap<u64, Arc<connections::ConnectionEntry>>>,
    /// Message counts of connections closed so far, so totals never go down.
    closed_counts: Mutex<stats::MessageCounts>,
    /// The same by vhost, with the vhost's connections' bytes, and their rates.
    vhost_totals: Mutex<HashMap<String, VhostTotals>>,
    /// Rates of the broker-wide counts, sampled off the message path.
    meter: Mutex<stats::RateMeter>,
    /// Histories of the broker-wide counts and queue totals, for the API's samples.
    history: Mutex<BrokerHistory>,
    /// Connections, channels and queues opened and closed since start (for the API's churn
    /// rates and the metrics), and their rates.
    pub churn: Arc<stats::Churn>,
    churn_meter: Mutex<history::Meter<7>>,
    /// Rates of the node's I/O counters ([`Broker::io_counters`]) and of its gauges (memory
    /// used, free disk, descriptors and sockets used, sampled by the server).
    io_meter: Mutex<history::Meter<13>>,
    gauge_meter: Mutex<history::Meter<5>>,
    /// Where audit events go (see [`audit`]).
    audit: Arc<audit::Audit>,
    /// On a cluster node: the cluster layer, for quorum queues (see `queue::replica`).
    quorum_host: std::sync::OnceLock<Arc<dyn queue::replica::QuorumHost>>,
    /// Every vhost's policies and operator policies (each vhost holds its own compiled).
    policies: RwLock<policy::PolicyState>,
    /// Runtime parameters (shovels), a counter their runner watches, and what it reports.
    parameters: RwLock<parameters::ParameterState>,
    parameter_generation: tokio::sync::watch::Sender<u64>,
    run_states: Mutex<std::collections::BTreeMap<(String, String, String), parameters::RunState>>,
    restarts: Mutex<Vec<(String, String, String)>>,
    /// What a runner of this process logs in to its own listener with (see
    /// [`Broker::internal_secret`]): random at each start, never stored.
    internal_secret: String,
}

/// The names of [`Broker::io_counters`], as RabbitMQ's node object has them (the last three
/// are the microseconds behind its average times).
pub const IO_COUNTERS: [&str; 13] = [
    "io_read_count",
    "io_read_bytes",
    "io_write_count",
    "io_write_bytes",
    "io_sync_count",
    "io_seek_count",
    "io_reopen_count",
    "msg_store_read_count",
    "msg_store_write_count",
    "mnesia_disk_tx_count",
    "read_us",
    "write_us",
    "sync_us",
];

/// What a vhost's connections did, closed ones included (RabbitMQ's vhost `message_stats`,
/// `recv_oct`, `send_oct`), and the rates of that as last sampled.
#[derive(Debug, Default, Clone)]
pub struct VhostTotals {
    pub closed: stats::MessageCounts,
    /// Bytes received and sent by the vhost's connections that are closed.
    pub closed_oct: [u64; 2],
    pub rates: stats::RateMeter,
    /// Rates of the bytes received and sent (no history kept).
    pub oct_rates: history::Meter<2>,
}

/// The broker-wide series the overview's samples come from.
#[derive(Debug)]
pub struct BrokerHistory {
    /// [`stats::MessageCounts::values`] of every connection.
    pub counts: history::History<12>,
    /// Queue totals: messages, ready, unacknowledged (with their rates).
    pub lengths: history::Meter<3>,
}

impl Default for BrokerHistory {
    fn default() -> Self {
        BrokerHistory {
            counts: history::History::new(history::GLOBAL_RETENTION_MS),
            lengths: history::Meter::new(history::GLOBAL_RETENTION_MS),
        }
    }
}

impl Default for Broker {
    fn default() -> Self {
        Self::new()
    }
}

/// The resource an alarm's reason names, as RabbitMQ names it: `memory` or `disk` (a free
/// space below the limit, or disk writes failing).
pub fn alarm_resource(reason: &str) -> &'static str {
    if reason.starts_with("memory") {
        "memory"
    } else {
        "disk"
    }
}

impl Broker {
    /// A broker with vhost "/" and user guest/guest (loopback only), as RabbitMQ starts.
    pub fn new() -> Self {
        let broker = Self::with_storage(None, &AccessSettings::default(), audit::Audit::off());
        broker.seed(&AccessSettings::default());
        broker
    }

    /// A broker whose durable entities and persistent messages live in `storage`; what it
    /// holds is recovered first. A data directory without users and vhosts yet (a fresh one,
    /// or one from before they were kept) gets vhost "/" and `settings`' default user.
    /// Audit events go to `audit`.
    pub fn open(storage: Arc<dyn Storage>, settings: &AccessSettings, audit: audit::Audit) -> Result<Self, StoreError> {
        let broker = Self::with_storage(Some(storage.clone()), settings, audit);
        match storage.load_access()? {
            Some(state) => {
                for v in state.vhosts() {
                    broker.vhosts.write().insert(v.name.clone(), broker.new_vhost(v));
                }
                *broker.access.write() = state;
            }
            None => broker.seed(settings),
        }
        broker.install_policies(storage.load_policies()?);
        broker.install_parameters(storage.load_parameters()?);
        for vhost in broker.vhosts.read().values() {
            vhost.restore()?;
        }
        Ok(broker)
    }

    /// Vhost "/" and the default user with every permission on it, recorded as changes.
    fn seed(&self, settings: &AccessSettings) {
        // As RabbitMQ names its default vhost.
        let default_vhost = VhostDef { description: "Default virtual host".into(), ..VhostDef::new("/") };
        let mut changes = vec![AccessChange::PutVhost { vhost: default_vhost }];
        if let Some((name, pass)) = &settings.default_user {
            changes.push(AccessChange::PutUser {
                user: UserDef {
                    name: name.clone(),
                    password_hash: crate::auth::password::hash(pass),
                    hashing_algorithm: crate::auth::password::SHA256.into(),
                    tags: vec!["administrator".into()],
                    limits: Default::default(),
                },
            });
            changes.push(AccessChange::SetPermissions {
                permission: PermissionDef {
                    user: name.clone(),
                    vhost: "/".into(),
                    configure: ".*".into(),
                    write: ".*".into(),
                    read: ".*".into(),
                },
            });
        }
        for c in changes {
            if let Err(e) = self.change_access(c, &audit::Actor::broker()) {
                tracing::error!("cannot create the default definitions: {e}");
            }
        }
    }

    fn new_vhost(&self, def: &VhostDef) -> Arc<VHost> {
        let v = VHost::new(
            &def.name,
            self.storage.clone(),
            self.memory_pressure.clone(),
            self.audit.clone(),
            self.churn.clone(),
        );
        v.set_max_queues(def.limit("max-queues"));
        let policies = self.compiled_policies(&def.name);
        if !policies.is_empty() {
            v.set_policies(policies, &audit::Actor::broker());
        }
        v
    }

    /// The log ids every durable queue uses, so storage can remove the others.
    pub fn queue_log_ids(&self) -> Vec<String> {
        self.vhosts.read().values().flat_map(|v| v.queue_log_ids()).collect()
    }

    fn with_storage(storage: Option<Arc<dyn Storage>>, settings: &AccessSettings, audit: audit::Audit) -> Self {
        let memory_pressure = Arc::new(std::sync::atomic::AtomicBool::new(false));
        Broker {
            vhosts: RwLock::new(HashMap::new()),
            access: RwLock::new(AccessState::default()),
            access_generation: AtomicU64::new(1),
            loopback_users: settings.loopback_users.clone(),
            throttle: Mutex::new(Default::default()),
            next_id: AtomicU64::new(1),
            reply_consumers: Mutex::new(HashMap::new()),
            storage: storage.clone(),
            memory_pressure: memory_pressure.clone(),
            connections: AtomicU64::new(0),
            alarm: Mutex::new(None),
            remote_alarms: Mutex::new(Vec::new()),
            remote_run_states: Mutex::new(Vec::new()),
            registry: Mutex::new(HashMap::new()),
            closed_counts: Mutex::new(stats::MessageCounts::default()),
            vhost_totals: Mutex::new(HashMap::new()),
            meter: Mutex::new(stats::RateMeter::default()),
            history: Mutex::new(BrokerHistory::default()),
            churn: Default::default(),
            churn_meter: Mutex::new(history::Meter::new(0)),
            io_meter: Mutex::new(history::Meter::new(0)),
            gauge_meter: Mutex::new(history::Meter::new(0)),
            audit: Arc::new(audit),
            quorum_host: std::sync::OnceLock::new(),
            policies: RwLock::new(policy::PolicyState::default()),
            parameters: RwLock::new(parameters::ParameterState::default()),
            parameter_generation: tokio::sync::watch::channel(0).0,
            run_states: Mutex::new(Default::default()),
            restarts: Mutex::new(Vec::new()),
            internal_secret: format!("hare-internal:{:032x}{:032x}", rand::random::<u128>(), rand::random::<u128>()),
        }
    }

    /// Where audit events go: the protocol layers report logins, connections and refusals.
    /// Makes this broker a cluster node's: quorum queues are declared through `host`.
    pub fn set_quorum_host(&self, host: Arc<dyn queue::replica::QuorumHost>) {
        let _ = self.quorum_host.set(host);
    }

    /// The cluster layer, on a cluster node.
    pub fn quorum_host(&self) -> Option<&Arc<dyn queue::replica::QuorumHost>> {
        self.quorum_host.get()
    }

    pub fn audit(&self) -> &audit::Audit {
        &self.audit
    }

    /// Runs queue timers (message TTL, queue expiry) in every vhost.
    pub fn tick(&self) {
        let now = clock::now_ms();
        let vhosts: Vec<Arc<VHost>> = self.vhosts.read().values().cloned().collect();
        for v in vhosts {
            v.tick(now);
        }
    }

    /// At shutdown, once everything appended is on disk: delayed exchanges ack the records of
    /// the messages they released, so that none goes out twice after the restart.
    pub fn settle_delayed(&self) {
        let vhosts: Vec<Arc<VHost>> = self.vhosts.read().values().cloned().collect();
        for v in vhosts {
            v.settle_delayed();
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
        stats::Churn::bump(&self.churn.connection_created);
        self.registry.lock().insert(entry.id, entry);
    }

    pub fn unregister_connection(&self, id: u64) {
        let gone = self.registry.lock().remove(&id);
        if let Some(e) = gone {
            stats::Churn::bump(&self.churn.connection_closed);
            let counts = e.counts();
            self.closed_counts.lock().add(&counts);
            let mut totals = self.vhost_totals.lock();
            let t = totals.entry(e.vhost.clone()).or_default();
            t.closed.add(&counts);
            t.closed_oct[0] += e.recv_oct.load(Ordering::Relaxed);
            t.closed_oct[1] += e.send_oct.load(Ordering::Relaxed);
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

    /// The node's I/O counters, in the order of [`IO_COUNTERS`]: storage's reads, writes,
    /// fsyncs, reopens and journalled definition changes, and the messages written to and
    /// read from queue logs (deleted queues' included).
    pub fn io_counters(&self) -> [u64; 13] {
        let s = self.sync_stats();
        let (writes, reads) = self.vhosts().iter().map(|v| v.disk_totals()).fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
        [
            s.reads,
            s.read_bytes,
            s.writes,
            s.bytes_written,
            s.syncs,
            0,
            s.reopens,
            reads,
            writes,
            s.definition_changes,
            s.read_us,
            s.write_us,
            s.sync_us,
        ]
    }

    /// Rates of [`Broker::io_counters`], as last sampled.
    pub fn io_rates(&self) -> [f64; 13] {
        self.io_meter.lock().rates()
    }

    /// Takes a sample of the node's gauges (memory used, free disk, descriptors and sockets
    /// used, context switches so far), which the server reads from the system, for their
    /// rates of change.
    pub fn sample_gauges(&self, now_ms: u64, values: [u64; 5]) {
        self.gauge_meter.lock().sample(now_ms, values);
    }

    pub fn gauge_rates(&self) -> [f64; 5] {
        self.gauge_meter.lock().rates()
    }

    /// The churn counters' rates, as last sampled.
    pub fn churn_rates(&self) -> [f64; 7] {
        self.churn_meter.lock().rates()
    }

    /// A vhost's message counts and bytes received and sent, over its connections open and
    /// closed, with their rates as last sampled.
    pub fn vhost_totals(&self, vhost: &str) -> (stats::MessageCounts, [u64; 2], VhostTotals) {
        let t = self.vhost_totals.lock().get(vhost).cloned().unwrap_or_default();
        let (counts, oct) = self.open_sums(Some(vhost)).remove(vhost).unwrap_or_default();
        let mut total = t.closed;
        total.add(&counts);
        (total, [t.closed_oct[0] + oct[0], t.closed_oct[1] + oct[1]], t)
    }

    /// The message counts and bytes of the open connections, by vhost (of `only`, or all), in
    /// one pass over them.
    fn open_sums(&self, only: Option<&str>) -> HashMap<String, (stats::MessageCounts, [u64; 2])> {
        let mut sums: HashMap<String, (stats::MessageCounts, [u64; 2])> = HashMap::new();
        for c in self.registry.lock().values().filter(|c| only.is_none_or(|v| c.vhost == v)) {
            let (counts, oct) = sums.entry(c.vhost.clone()).or_default();
            counts.add(&c.counts());
            oct[0] += c.recv_oct.load(Ordering::Relaxed);
            oct[1] += c.send_oct.load(Ordering::Relaxed);
        }
        sums
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
            c.sample(now_ms);
            for ch in c.channels() {
                ch.sample(now_ms);
            }
        }
        let mut open = self.open_sums(None);
        for v in self.vhosts() {
            let (counts, oct) = open.remove(&v.name).unwrap_or_default();
            let mut totals = self.vhost_totals.lock();
            let t = totals.entry(v.name.clone()).or_default();
            let mut total = t.closed;
            total.add(&counts);
            t.rates.sample(now_ms, total);
            let oct = [t.closed_oct[0] + oct[0], t.closed_oct[1] + oct[1]];
            t.oct_rates.sample(now_ms, oct);
        }
        let (mut ready, mut unacked) = (0, 0);
        for v in self.vhosts() {
            for q in v.queues() {
                let (r, u) = q.sample(now_ms);
                ready += r;
                unacked += u;
            }
            v.sample_exchanges(now_ms);
        }
        self.churn_meter.lock().sample(now_ms, self.churn.values());
        let io = self.io_counters();
        self.io_meter.lock().sample(now_ms, io);
        let mut h = self.history.lock();
        h.counts.record(now_ms, counts.values());
        h.lengths.sample(now_ms, [ready + unacked, ready, unacked]);
    }

    /// Reads the broker-wide histories (briefly under their lock).
    pub fn with_history<R>(&self, f: impl FnOnce(&BrokerHistory) -> R) -> R {
        f(&self.history.lock())
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

    /// This node's alarm in effect, if any: why publishers are blocked.
    pub fn alarm(&self) -> Option<String> {
        self.alarm.lock().clone()
    }

    /// Records the alarms other members of the cluster report, as (node, resource).
    pub fn set_remote_alarms(&self, alarms: Vec<(String, String)>) {
        *self.remote_alarms.lock() = alarms;
    }

    /// Other members' alarms in effect, as (node, resource).
    pub fn remote_alarms(&self) -> Vec<(String, String)> {
        self.remote_alarms.lock().clone()
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

    /// Users, vhosts and permissions as they are now (a copy, for the management API).
    pub fn access(&self) -> AccessState {
        self.access.read().clone()
    }

    /// The user's record, if there is such a user.
    pub fn user(&self, name: &str) -> Option<UserDef> {
        self.access.read().user(name).cloned()
    }

    /// Checks a login by password; the error text is RabbitMQ's, which names the mechanism.
    /// Users in `loopback_users` (guest, by default) may log in only from loopback.
    pub fn authenticate(&self, user: &str, password: &str, loopback: bool, mechanism: &str) -> AmqpResult<UserDef> {
        let found = self.access.read().user(user).cloned();
        // A runner inside this process (a shovel's local end) logs in as the user who set
        // it up, with the process's own secret, from loopback only.
        if loopback && constant_time_eq(password.as_bytes(), self.internal_secret.as_bytes()) {
            if let Some(u) = found {
                return Ok(u);
            }
        }
        match found {
            Some(u)
                if crate::auth::password::verify(&u.password_hash, &u.hashing_algorithm, password)
                    && (loopback || !self.loopback_users.iter().any(|l| l == user)) =>
            {
                Ok(u)
            }
            _ => Err(AmqpError::access_refused(format!(
                "Login was refused using authentication mechanism {mechanism}. For details see the broker logfile."
            ))),
        }
    }

    /// A login from `ip` failed: how long to hold its refusal back (None: not at all).
    pub fn login_failed(&self, ip: std::net::IpAddr) -> Option<std::time::Duration> {
        self.throttle.lock().failed(ip, std::time::Instant::now())
    }

    pub fn login_succeeded(&self, ip: std::net::IpAddr) {
        self.throttle.lock().succeeded(ip);
    }

    /// A login by a client certificate's name (EXTERNAL): the user must exist.
    pub fn authenticate_external(&self, user: &str) -> AmqpResult<UserDef> {
        self.user(user).ok_or_else(|| {
            AmqpError::access_refused(
                "Login was refused using authentication mechanism EXTERNAL. For details see the broker logfile.",
            )
        })
    }

    /// The generation of the access state: a [`Grant`] compiled at an older one is stale.
    pub fn access_generation(&self) -> u64 {
        self.access_generation.load(Ordering::Acquire)
    }

    /// `user`'s permissions in `vhost`, compiled.
    /// Compiles `grant` again for `user` in `vhost` if permissions changed since it was
    /// compiled (one atomic load when they did not): a connection's permissions apply from
    /// its next operation.
    pub fn refresh_grant(&self, grant: &mut Grant, user: &str, vhost: &str) {
        if grant.generation != self.access_generation.load(Ordering::Acquire) {
            *grant = self.grant(user, vhost);
        }
    }

    pub fn grant(&self, user: &str, vhost: &str) -> Grant {
        let state = self.access.read();
        Grant::compile(&state, user, vhost, self.access_generation.load(Ordering::Acquire))
    }

    /// Applies a change to users, vhosts or permissions, after RabbitMQ's checks; records
    /// it durably and returns the ticket to wait for. Creating a vhost starts it; deleting
    /// one closes its connections and deletes its queues and their data; deleting a user
    /// closes the user's connections.
    /// The checks [`Broker::change_access`] makes, without the change: a cluster node makes
    /// them before proposing a change, to answer what is wrong with it at once.
    pub fn check_access_change(&self, change: &AccessChange) -> Result<(), AccessError> {
        Self::check_change(&self.access.read(), change)
    }

    /// What must hold of the access state for `change` to apply: the user and vhost it names
    /// exist, its expressions compile, a new user has a name.
    fn check_change(state: &AccessState, change: &AccessChange) -> Result<(), AccessError> {
        match change {
            AccessChange::SetPermissions { permission: p } => {
                Self::check_user_and_vhost(state, &p.user, &p.vhost)?;
                for expr in [&p.configure, &p.write, &p.read] {
                    crate::auth::grant::validate(expr)?;
                }
            }
            AccessChange::SetTopicPermissions { permission: p } => {
                Self::check_user_and_vhost(state, &p.user, &p.vhost)?;
                for expr in [&p.write, &p.read] {
                    crate::auth::grant::validate_topic(expr)?;
                }
            }
            AccessChange::DeleteUser { name } if state.user(name).is_none() => {
                return Err(AccessError::NoSuchUser(name.clone()));
            }
            AccessChange::DeleteVhost { name } if state.vhost(name).is_none() => {
                return Err(AccessError::NoSuchVhost(name.clone()));
            }
            AccessChange::PutUser { user } if user.name.is_empty() => {
                return Err(AccessError::Invalid("a user needs a name".into()));
            }
            _ => {}
        }
        Ok(())
    }

    pub fn change_access(&self, change: AccessChange, by: &audit::Actor) -> Result<u64, AccessError> {
        let mut closing: Vec<(Box<dyn Fn(&connections::ConnectionEntry) -> bool>, String)> = Vec::new();
        let mut deleted_vhost = None;
        let ticket = {
            let mut state = self.access.write();
            Self::check_change(&state, &change)?;
            match &change {
                AccessChange::DeleteUser { name } => {
                    let n = name.clone();
                    closing.push((Box::new(move |c| c.user == n), format!("user '{name}' is deleted")));
                }
                AccessChange::DeleteVhost { name } => {
                    let n = name.clone();
                    closing.push((Box::new(move |c| c.vhost == n), format!("vhost '{name}' is deleted")));
                    deleted_vhost = self.vhosts.write().remove(name);
                }
                AccessChange::PutVhost { vhost } => {
                    let mut vhosts = self.vhosts.write();
                    match vhosts.get(&vhost.name) {
                        Some(v) => v.set_max_queues(vhost.limit("max-queues")),
                        None => {
                            vhosts.insert(vhost.name.clone(), self.new_vhost(vhost));
                        }
                    }
                }
                _ => {}
            }
            if self.audit.is_on() {
                for e in audit::access_events(&state, &change, by) {
                    self.audit.emit(e);
                }
            }
            state.apply(&change);
            self.access_generation.fetch_add(1, Ordering::AcqRel);
            // Recorded under the lock, so the journal has the changes in the order applied.
            self.storage.as_ref().map_or(0, |s| s.record(&definitions::Change::Access { change: change.clone() }))
        };
        for (which, reason) in closing {
            for c in self.connection_list().iter().filter(|c| which(c)) {
                c.request_close(&reason);
            }
        }
        if let Some(v) = deleted_vhost {
            self.forget_policies(&v.name);
            self.forget_parameters(&v.name);
            v.delete_all();
            self.vhost_totals.lock().remove(&v.name);
        }
        Ok(ticket)
    }

    fn check_user_and_vhost(state: &AccessState, user: &str, vhost: &str) -> Result<(), AccessError> {
        if state.user(user).is_none() {
            return Err(AccessError::NoSuchUser(user.into()));
        }
        if state.vhost(vhost).is_none() {
            return Err(AccessError::NoSuchVhost(vhost.into()));
        }
        Ok(())
    }

    /// RabbitMQ's limits at connection.open, in its order: the vhost's connection limit,
    /// then the user's. Counted only when a limit is set.
    pub fn check_connection_limits(&self, user: &str, vhost: &str) -> Result<(), Refused> {
        let (vhost_limit, user_limit) = {
            let state = self.access.read();
            (
                state.vhost(vhost).and_then(|v| v.limit("max-connections")),
                state.user(user).and_then(|u| u.limit("max-connections")),
            )
        };
        if let Some(limit) = vhost_limit {
            let open = self.registry.lock().values().filter(|c| c.vhost == vhost).count() as u64;
            if open >= limit {
                return Err(Refused::not_allowed(format!(
                    "access to vhost '{vhost}' refused for user '{user}': connection limit ({limit}) is reached"
                )));
            }
        }
        if let Some(limit) = user_limit {
            let open = self.registry.lock().values().filter(|c| c.user == user).count() as u64;
            if open >= limit {
                return Err(Refused::not_allowed(format!(
                    "connection refused for user '{user}': user connection limit ({limit}) is reached"
                )));
            }
        }
        Ok(())
    }

    /// The user's channel limit at channel.open: `open_here` are the channels of the asking
    /// connection (its card may lag).
    pub fn check_channel_limit(&self, user: &str, connection_id: u64, open_here: usize) -> Result<(), Refused> {
        let Some(limit) = self.access.read().user(user).and_then(|u| u.limit("max-channels")) else {
            return Ok(());
        };
        let elsewhere: u64 = self
            .registry
            .lock()
            .values()
            .filter(|c| c.user == user && c.id != connection_id)
            .map(|c| c.channel_count() as u64)
            .sum();
        if elsewhere + open_here as u64 >= limit {
            return Err(Refused::not_allowed(format!(
                "number of channels opened for user '{user}' has reached the maximum allowed user limit of {limit}"
            )));
        }
        Ok(())
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

/// Compares two secrets in time that depends on their lengths only.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
