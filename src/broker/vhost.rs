//! A virtual host: its exchanges, queues and bindings, and the operations on them with
//! RabbitMQ's checks and reply texts. Routing a message is in `route`, recovery at start in
//! `recovery`.

use super::arguments::QueueArguments;
use super::audit::{Actor, Audit, AuditEvent};
use super::definitions::{BindingDef, Change, ExchangeDef, QueueDef};
use super::error::{describe_args, AmqpError, AmqpResult};
use super::exchange::{Binding, Destination, Exchange, ExchangeKind, ExchangeStats};
use super::queue::{Queue, QueueOptions, QueueOwner};
use super::store::{table_to_hex, Pager, Storage};
use crate::broker::FastMap;
use crate::types::{FieldTable, FieldValue, ShortStr};
use bytes::Bytes;
use parking_lot::RwLock;
use std::sync::{Arc, Weak};

mod delayed;
mod exchanges;
mod policy;
mod recovery;
mod replicated;
mod route;
mod stream;

/// The exchange audit events are published to (RabbitMQ's event exchange plugin's): a
/// topic exchange, internal, in vhost "/" when the audit log is on. Made at each start like
/// the default exchanges, so bindings to it are restored.
pub const EVENT_EXCHANGE: &str = "amq.rabbitmq.event";
pub const EVENT_VHOST: &str = "/";

const DEFAULT_EXCHANGES: &[(&str, ExchangeKind)] = &[
    ("", ExchangeKind::Direct),
    ("amq.direct", ExchangeKind::Direct),
    ("amq.fanout", ExchangeKind::Fanout),
    ("amq.topic", ExchangeKind::Topic),
    ("amq.headers", ExchangeKind::Headers),
    ("amq.match", ExchangeKind::Headers),
];

#[derive(Debug, Default)]
struct Topology {
    exchanges: FastMap<ShortStr, Exchange>,
    queues: FastMap<ShortStr, Arc<Queue>>,
    /// The on-disk log id of each durable queue.
    logs: FastMap<ShortStr, String>,
    /// The holding queue of each delayed-message exchange, by the exchange's name.
    delayed: FastMap<ShortStr, Arc<Queue>>,
}

impl Topology {
    /// Removes exchange `name` (with its holding queue and held messages, if it delays);
    /// reports it in `removed` with whether it was durable.
    fn remove_exchange(&mut self, name: &ShortStr, removed: &mut Removed) -> Option<Exchange> {
        let ex = self.exchanges.remove(name.as_str())?;
        if let Some(holder) = self.delayed.remove(name.as_str()) {
            holder.delete();
        }
        removed.exchanges.push((name.clone(), ex.durable));
        Some(ex)
    }
}

/// What deleting one object took with it: bindings (with their source exchange) and
/// auto-delete exchanges left without bindings (with whether they were durable). Each is
/// reported to the audit log as RabbitMQ reports them: binding.deleted, exchange.deleted.
#[derive(Default)]
struct Removed {
    bindings: Vec<(ShortStr, Binding)>,
    exchanges: Vec<(ShortStr, bool)>,
}

/// Whether an exchange's definition is saved: durable, not auto-delete, not built in.
fn saved_exchange(ex: &Exchange) -> bool {
    ex.durable
        && !ex.auto_delete
        && !ex.name.is_empty()
        && !DEFAULT_EXCHANGES.iter().any(|(n, _)| *n == ex.name.as_str())
        && ex.name.as_str() != EVENT_EXCHANGE
}

/// Whether a binding is saved: from a saved exchange to a saved queue or a durable exchange.
/// Changes to anything unsaved are not journaled.
fn binding_is_saved(topo: &Topology, source: &str, dest: &Destination) -> bool {
    let Some(ex) = topo.exchanges.get(source) else { return false };
    if !ex.durable || ex.auto_delete || ex.name.is_empty() {
        return false;
    }
    match dest {
        Destination::Queue(q) => topo.logs.contains_key(q.as_str()),
        Destination::Exchange(e) => topo.exchanges.get(e.as_str()).is_some_and(|e| e.durable),
    }
}

/// A binding as the journal saves it.
fn binding_def(source: &str, b: &Binding) -> BindingDef {
    BindingDef {
        source: source.to_string(),
        destination: b.destination.name().to_string(),
        destination_kind: b.destination.kind().into(),
        routing_key: b.routing_key.to_string(),
        arguments: table_to_hex(&b.arguments),
    }
}

/// Whether a queue and its persistent messages are saved: durable, not exclusive, not
/// auto-delete (those do not survive a restart in RabbitMQ either).
fn saved_queue(o: &QueueOptions) -> bool {
    o.durable && o.exclusive_owner.is_none() && !o.auto_delete
}

/// The default of `x-queue-type`: a queue declared without one equals one declared classic.
static CLASSIC: FieldValue = FieldValue::LongStr(Bytes::from_static(b"classic"));

fn default_exchange_refused() -> AmqpError {
    AmqpError::access_refused("operation not permitted on the default exchange")
}

/// Binding to or from the default exchange is refused (destination checked first).
fn check_not_default(source: &str, dest: &Destination) -> AmqpResult<()> {
    if matches!(dest, Destination::Exchange(n) if n.is_empty()) || source.is_empty() {
        return Err(default_exchange_refused());
    }
    Ok(())
}

/// What a queue declaration asks for.
#[derive(Debug, Clone)]
pub struct QueueDeclaration {
    pub name: ShortStr,
    pub passive: bool,
    pub durable: bool,
    pub exclusive: bool,
    pub auto_delete: bool,
    pub arguments: FieldTable,
}

/// An exchange as the management API describes it.
#[derive(Debug, Clone)]
pub struct ExchangeInfo {
    pub name: ShortStr,
    pub kind: ExchangeKind,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: FieldTable,
    pub stats: Arc<ExchangeStats>,
    pub declared_by: ShortStr,
    pub applied: super::policy::Applied,
    /// Messages a delayed-message exchange holds (None for other types).
    pub messages_delayed: Option<usize>,
}

#[derive(Debug)]
pub struct VHost {
    pub name: String,
    topology: RwLock<Topology>,
    storage: Option<Arc<dyn Storage>>,
    /// Memory pressure, shared by the broker: queues without a log page to disk under it.
    pressure: Arc<std::sync::atomic::AtomicBool>,
    /// The vhost's `max-queues` limit (u64::MAX for none).
    max_queues: std::sync::atomic::AtomicU64,
    /// This vhost, for its queues to republish dead letters through.
    me: Weak<VHost>,
    /// Where declares, deletes and bindings are reported, with who made them.
    audit: Arc<Audit>,
    /// The default exchange's statistics (the same as its `Exchange::stats`).
    default_stats: Arc<ExchangeStats>,
    /// The queues with timers to run (see [`VHost::tick`]): only they are visited each tick,
    /// so a vhost of 100,000 queues without TTLs costs its timers nothing.
    timed: parking_lot::Mutex<Vec<Weak<Queue>>>,
    /// The broker's counts of queues declared, created and deleted.
    churn: Arc<super::stats::Churn>,
    /// Disk writes and reads of the queues deleted so far, so that totals never go down.
    retired_disk: [std::sync::atomic::AtomicU64; 2],
    /// A queue was ever declared here: the vhost has message totals from then on (as
    /// RabbitMQ's vhost statistics, which its first queue starts).
    had_queue: std::sync::atomic::AtomicBool,
    /// The vhost's policies, compiled: matched against a name at declare and on change.
    policies: RwLock<Arc<super::policy::VhostPolicies>>,
}

impl VHost {
    pub fn new(
        name: &str,
        storage: Option<Arc<dyn Storage>>,
        pressure: Arc<std::sync::atomic::AtomicBool>,
        audit: Arc<Audit>,
        churn: Arc<super::stats::Churn>,
    ) -> Arc<Self> {
        let mut topo = Topology::default();
        let default_stats = Arc::new(ExchangeStats::default());
        for (n, kind) in DEFAULT_EXCHANGES {
            let mut ex = Exchange::new(ShortStr::from(*n), *kind, true, false, false, FieldTable::new());
            if n.is_empty() {
                ex.stats = default_stats.clone();
            }
            topo.exchanges.insert(ShortStr::from(*n), ex);
        }
        if name == EVENT_VHOST && audit.is_on() {
            let ex = Exchange::new(EVENT_EXCHANGE.into(), ExchangeKind::Topic, true, false, true, FieldTable::new());
            topo.exchanges.insert(EVENT_EXCHANGE.into(), ex);
        }
        Arc::new_cyclic(|me| VHost {
            name: name.to_string(),
            topology: RwLock::new(topo),
            storage,
            pressure,
            max_queues: std::sync::atomic::AtomicU64::new(u64::MAX),
            me: me.clone(),
            audit,
            default_stats,
            timed: parking_lot::Mutex::new(Vec::new()),
            churn,
            retired_disk: Default::default(),
            had_queue: Default::default(),
            policies: Default::default(),
        })
    }

    /// The type of exchange `name`, if it exists.
    /// An exchange's bindings; None if there is no such exchange.
    pub fn exchange_bindings(&self, name: &str) -> Option<Vec<Binding>> {
        self.topology.read().exchanges.get(name).map(|e| e.bindings().to_vec())
    }

    pub fn exchange_kind(&self, name: &str) -> Option<ExchangeKind> {
        self.topology.read().exchanges.get(name).map(|e| e.kind)
    }

    pub fn has_queue(&self, name: &str) -> bool {
        self.topology.read().queues.contains_key(name)
    }

    /// Sets the vhost's `max-queues` limit (None: no limit); queues already there stay.
    pub fn set_max_queues(&self, limit: Option<u64>) {
        self.max_queues.store(limit.unwrap_or(u64::MAX), std::sync::atomic::Ordering::Relaxed);
    }

    /// The vhost is deleted: every queue goes, with its messages and its data on disk, and
    /// every exchange with it.
    pub fn delete_all(&self) {
        let mut topo = self.topology.write();
        let queues: Vec<Arc<Queue>> = topo.queues.values().cloned().collect();
        for q in &queues {
            self.remove_queue(&mut topo, q, &Actor::broker());
        }
        topo.exchanges.clear();
        for (_, holder) in topo.delayed.drain() {
            holder.delete();
        }
    }

    /// Every queue, by name (for the management API: a copy of the list, no lock kept).
    pub fn queues(&self) -> Vec<Arc<Queue>> {
        let mut v: Vec<Arc<Queue>> = self.topology.read().queues.values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Every exchange as it is described (name, type, flags, arguments), by name.
    pub fn exchanges(&self) -> Vec<ExchangeInfo> {
        let topo = self.topology.read();
        let mut v: Vec<ExchangeInfo> = topo
            .exchanges
            .values()
            .map(|e| ExchangeInfo {
                name: e.name.clone(),
                kind: e.kind,
                durable: e.durable,
                auto_delete: e.auto_delete,
                internal: e.internal,
                arguments: e.arguments.clone(),
                stats: e.stats.clone(),
                declared_by: e.declared_by.clone(),
                applied: e.applied.clone(),
                messages_delayed: topo.delayed.get(e.name.as_str()).and_then(|q| Some(q.delayed.as_ref()?.len())),
            })
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Every binding as (source exchange, binding), by source.
    pub fn bindings(&self) -> Vec<(ShortStr, Binding)> {
        let topo = self.topology.read();
        let mut v: Vec<(ShortStr, Binding)> =
            topo.exchanges.values().flat_map(|e| e.bindings().iter().map(|b| (e.name.clone(), b.clone()))).collect();
        v.sort_by(|a, b| {
            (&a.0, a.1.destination.name(), &a.1.routing_key).cmp(&(&b.0, b.1.destination.name(), &b.1.routing_key))
        });
        v
    }

    /// The log ids of this vhost's durable queues.
    pub fn queue_log_ids(&self) -> Vec<String> {
        let topo = self.topology.read();
        topo.logs.values().cloned().chain(Self::delayed_log_ids(&topo)).collect()
    }

    /// Appends a durable change to the storage's journal; returns the ticket to wait for
    /// before answering (0 without storage). A buffered append: no I/O under the lock.
    fn record(&self, change: impl FnOnce(String) -> Change) -> u64 {
        self.storage.as_ref().map_or(0, |s| s.record(&change(self.name.clone())))
    }

    /// Reports what a deletion took with it (each binding, each auto-delete exchange left
    /// without bindings) and journals the durable exchanges among them; returns the last
    /// ticket. (Bindings need no record of their own: replaying a deletion removes them.)
    fn record_removed(&self, removed: Removed, by: &Actor) -> u64 {
        for (source, binding) in &removed.bindings {
            self.binding_event("binding.deleted", by, source, binding);
        }
        let mut ticket = 0;
        for (name, durable) in removed.exchanges {
            self.event("exchange.deleted", by, &name);
            if durable {
                ticket = ticket.max(self.record(|vhost| Change::DeleteExchange { vhost, name: name.to_string() }));
            }
        }
        ticket
    }

    /// Reports a change to the audit log: `event` about the object `name`, by `by`.
    fn event(&self, event: &'static str, by: &Actor, name: &str) {
        if self.audit.is_on() {
            self.audit.emit(AuditEvent::new(event, by, Some(&self.name)).with("name", name));
        }
    }

    fn no_exchange(&self, name: &str) -> AmqpError {
        AmqpError::not_found(format!("no exchange '{name}' in vhost '{}'", self.name))
    }
    fn no_queue(&self, name: &str) -> AmqpError {
        AmqpError::not_found(format!("no queue '{name}' in vhost '{}'", self.name))
    }
    fn inequivalent(&self, what: &str, arg: &str, name: &str, received: String, current: String) -> AmqpError {
        AmqpError::precondition_failed(format!(
            "inequivalent arg '{arg}' for {what} '{name}' in vhost '{}': received {received} but current is {current}",
            self.name
        ))
    }

    /// RabbitMQ's argument equivalence: absent on both sides, or present on both with the same
    /// value (integers of any width compare by value).
    fn assert_arg_equivalence(
        &self,
        what: &str,
        name: &str,
        key: &str,
        current: Option<&FieldValue>,
        received: Option<&FieldValue>,
    ) -> AmqpResult<()> {
        let same = match (received, current) {
            (Some(a), Some(b)) => a == b || (a.as_i64().is_some() && a.as_i64() == b.as_i64()),
            (None, None) => true,
            _ => false,
        };
        if same {
            return Ok(());
        }
        let (received, current) = describe_args(received, current);
        Err(self.inequivalent(what, key, name, received, current))
    }

    /// Declares (or checks, when passive) a queue; returns it with its ready and consumer counts.
    ///
    /// For an existing queue RabbitMQ checks, in order: exclusive ownership (405, strictly: an
    /// exclusive declare of a shared queue is refused too), then durable, auto_delete and the
    /// arguments it compares (406 `inequivalent arg`). Argument values are validated (406
    /// `invalid arg`) only when the queue is created.
    /// The last value is the journal ticket to wait for before answering (0: nothing to wait).
    pub fn declare_queue(&self, d: &QueueDeclaration, by: &Actor) -> AmqpResult<(Arc<Queue>, u32, u32, u64)> {
        let connection_id = by.connection;
        // An exclusive queue is never durable, whatever was asked (as in RabbitMQ).
        let durable = d.durable && !d.exclusive;
        super::stats::Churn::bump(&self.churn.queue_declared);
        let mut topo = self.topology.write();
        if let Some(q) = topo.queues.get(d.name.as_str()) {
            if d.passive {
                q.check_access(connection_id)?;
            } else {
                let o = &q.options;
                if o.exclusive_owner != d.exclusive.then_some(connection_id) {
                    return Err(q.locked_error());
                }
                for (arg, got, cur) in [("durable", durable, o.durable), ("auto_delete", d.auto_delete, o.auto_delete)]
                {
                    if got != cur {
                        return Err(self.inequivalent("queue", arg, &d.name, format!("'{got}'"), format!("'{cur}'")));
                    }
                }
                let compared = o.args.type_arguments();
                for arg in compared {
                    let (got, cur) = (d.arguments.get(arg), o.arguments.get(arg));
                    // A queue declared without a type equals one declared classic (and only
                    // classic: RabbitMQ's rabbit_misc:assert_field_equivalence).
                    let classic = |v: Option<&FieldValue>| v == Some(&CLASSIC);
                    if *arg == "x-queue-type" && ((got.is_none() && classic(cur)) || (cur.is_none() && classic(got))) {
                        continue;
                    }
                    self.assert_arg_equivalence("queue", &d.name, arg, cur, got)?;
                }
                q.touch();
            }
            let (m, c) = q.counts();
            return Ok((q.clone(), m, c, 0));
        }
        if d.passive {
            return Err(self.no_queue(&d.name));
        }
        let args = QueueArguments::parse(&d.arguments, &d.name, &self.name)?;
        let limit = self.max_queues.load(std::sync::atomic::Ordering::Relaxed);
        if topo.queues.len() as u64 >= limit {
            return Err(AmqpError::precondition_failed(format!(
                "cannot declare queue '{}': queue limit in vhost '{}' ({limit}) is reached",
                d.name, self.name
            )));
        }
        let options = QueueOptions {
            durable,
            exclusive_owner: d.exclusive.then_some(connection_id),
            auto_delete: d.auto_delete,
            arguments: d.arguments.clone(),
            args,
        };
        if options.args.stream {
            return self.declare_stream(&mut topo, d, options, by);
        }
        let mut log = None;
        let mut def = None;
        if let (Some(storage), true) = (&self.storage, saved_queue(&options)) {
            let (l, id) = storage
                .create_queue_log()
                .map_err(|e| AmqpError::internal_error(format!("cannot create the log of queue '{}': {e}", d.name)))?;
            log = Some(l);
            def = Some(QueueDef {
                name: d.name.to_string(),
                arguments: table_to_hex(&options.arguments),
                log: id.clone(),
            });
            topo.logs.insert(d.name.clone(), id);
        }
        // A queue without a log of its own may page to disk while memory is short.
        let pager = match (&self.storage, &log) {
            (Some(storage), None) => Some(Pager { storage: storage.clone(), pressure: self.pressure.clone() }),
            _ => None,
        };
        let q = Queue::new(d.name.clone(), &self.name, options, log, pager, self.me.clone());
        if q.has_timers() {
            self.watch_queue_timers(&q);
        }
        let ticket = self.add_queue(&mut topo, d, &q, def, by);
        Ok((q, 0, 0, ticket))
    }

    /// Makes a new queue routable and records it: its policy, counters, audit event and
    /// (with `def`, a durable queue) its definition; returns the journal ticket.
    fn add_queue(
        &self,
        topo: &mut Topology,
        d: &QueueDeclaration,
        q: &Arc<Queue>,
        def: Option<QueueDef>,
        by: &Actor,
    ) -> u64 {
        let durable = q.options.durable;
        // After the timers (a policy's TTL registers them only if the arguments did not). A
        // new queue holds nothing yet: applying its policy dead-letters nothing (which would
        // route, under the topology's lock).
        q.set_policy(self.policy_for_queue(q));
        topo.queues.insert(d.name.clone(), q.clone());
        super::stats::Churn::bump(&self.churn.queue_created);
        self.had_queue.store(true, std::sync::atomic::Ordering::Relaxed);
        if self.audit.is_on() {
            let e = AuditEvent::new("queue.created", by, Some(&self.name))
                .with("name", d.name.as_str())
                .with("durable", durable)
                .with("auto_delete", d.auto_delete)
                .with("exclusive", d.exclusive)
                .with("arguments", super::audit::table_text(&d.arguments));
            self.audit.emit(e);
        }
        def.map_or(0, |queue| self.record(|vhost| Change::DeclareQueue { vhost, queue }))
    }

    /// Looks a queue up for use by `connection_id` (404 if missing, 405 if exclusive to another).
    pub fn queue(&self, name: &str, connection_id: u64) -> AmqpResult<Arc<Queue>> {
        let topo = self.topology.read();
        let q = topo.queues.get(name).ok_or_else(|| self.no_queue(name))?;
        q.check_access(connection_id)?;
        Ok(q.clone())
    }

    pub fn delete_queue(&self, name: &ShortStr, if_unused: bool, if_empty: bool, by: &Actor) -> AmqpResult<(u32, u64)> {
        let connection_id = by.connection;
        let mut topo = self.topology.write();
        let Some(q) = topo.queues.get(name.as_str()).cloned() else {
            return Ok((0, 0));
        };
        q.check_access(connection_id)?;
        self.check_delete(&q, if_unused, if_empty)?;
        let (n, ticket) = self.remove_queue(&mut topo, &q, by);
        Ok((n, ticket))
    }

    /// queue.delete's if-empty and if-unused, as RabbitMQ checks them (emptiness before
    /// use); returns the queue's ready count.
    pub fn check_delete(&self, q: &Queue, if_unused: bool, if_empty: bool) -> AmqpResult<u32> {
        let (messages, consumers) = q.counts();
        let name = &q.name;
        if if_empty && messages > 0 {
            return Err(AmqpError::precondition_failed(format!("queue '{name}' in vhost '{}' not empty", self.name)));
        }
        if if_unused && consumers > 0 {
            return Err(AmqpError::precondition_failed(format!("queue '{name}' in vhost '{}' in use", self.name)));
        }
        Ok(messages)
    }

    /// Deletes a queue whatever its state (exclusive owner gone, auto-delete).
    pub fn force_delete_queue(&self, queue: &Arc<Queue>, by: &Actor) {
        let mut topo = self.topology.write();
        if topo.queues.get(queue.name.as_str()).is_some_and(|q| Arc::ptr_eq(q, queue)) {
            self.remove_queue(&mut topo, queue, by);
        }
    }

    /// Removes a queue and its bindings; returns its ready count and the journal ticket.
    fn remove_queue(&self, topo: &mut Topology, q: &Arc<Queue>, by: &Actor) -> (u32, u64) {
        topo.queues.remove(q.name.as_str());
        super::stats::Churn::bump(&self.churn.queue_deleted);
        let (writes, reads) = q.disk_counts();
        self.retired_disk[0].fetch_add(writes, std::sync::atomic::Ordering::Relaxed);
        self.retired_disk[1].fetch_add(reads, std::sync::atomic::Ordering::Relaxed);
        let saved = topo.logs.remove(q.name.as_str()).is_some();
        self.event("queue.deleted", by, &q.name);
        let mut removed = Removed::default();
        Self::remove_destination(topo, &Destination::Queue(q.name.clone()), &mut removed);
        let mut ticket = self.record_removed(removed, by);
        if saved {
            ticket = ticket.max(self.record(|vhost| Change::DeleteQueue { vhost, name: q.name.to_string() }));
        }
        (q.delete(), ticket)
    }

    pub fn purge_queue(&self, name: &str, connection_id: u64) -> AmqpResult<u32> {
        let q = self.queue(name, connection_id)?;
        if let Some(refused) = q.stream_refusal("queue.purge") {
            return Err(refused);
        }
        Ok(q.purge())
    }

    /// Samples every exchange's counters for their rates and history (the statistics
    /// sampler; holds the topology's read lock for the loop, no I/O in it).
    pub fn sample_exchanges(&self, now_ms: u64) {
        let topo = self.topology.read();
        for ex in topo.exchanges.values() {
            ex.stats.sample(now_ms);
        }
    }

    /// Runs the timers of queues that have them (message TTL, x-expires) and deletes the
    /// queues unused for their x-expires period.
    pub fn tick(&self, now: u64) {
        let mut timed = Vec::new();
        self.timed.lock().retain(|w| match w.upgrade() {
            Some(q) if !q.is_deleted() => {
                timed.push(q);
                true
            }
            _ => false,
        });
        for q in timed {
            if q.tick(now) {
                tracing::info!("queue '{}' in vhost '{}' expired unused", q.name, self.name);
                self.force_delete_queue(&q, &Actor::broker());
            }
        }
    }

    /// Pages every queue's messages past its in-memory window to disk (memory is short).
    pub fn page_out(&self) -> usize {
        let queues: Vec<Arc<Queue>> = self.topology.read().queues.values().cloned().collect();
        queues.iter().map(|q| q.page_out()).sum()
    }

    /// Whether a queue was ever declared in this vhost (recovered ones included).
    pub fn had_queue(&self) -> bool {
        self.had_queue.load(std::sync::atomic::Ordering::Relaxed) || !self.topology.read().queues.is_empty()
    }

    /// Messages written to and read from the vhost's queue logs, deleted queues included.
    pub fn disk_totals(&self) -> (u64, u64) {
        let retired = self.retired_disk.each_ref().map(|c| c.load(std::sync::atomic::Ordering::Relaxed));
        self.queues()
            .iter()
            .map(|q| q.disk_counts())
            .fold((retired[0], retired[1]), |(w, r), (qw, qr)| (w + qw, r + qr))
    }

    pub fn queue_names(&self) -> Vec<ShortStr> {
        self.topology.read().queues.keys().cloned().collect()
    }
}

impl QueueOwner for VHost {
    fn watch_queue_timers(&self, queue: &Arc<Queue>) {
        self.timed.lock().push(Arc::downgrade(queue));
    }
    fn route_dead_letter(
        &self,
        exchange: &str,
        routing_key: &str,
        cc: &[ShortStr],
        properties: &Bytes,
        out: &mut Vec<Arc<Queue>>,
    ) -> AmqpResult<()> {
        self.route(exchange, routing_key, cc, properties, out)
    }
    fn route_delayed(
        &self,
        exchange: &str,
        message: &crate::broker::message::Message,
        out: &mut Vec<Arc<Queue>>,
    ) -> Arc<crate::broker::message::Message> {
        self.release(exchange, message, out)
    }
}
