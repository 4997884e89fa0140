//! A classic queue: ready messages in publish order (highest priority first in a priority
//! queue), a count of messages out with consumers, and the consumers it dispatches to
//! round-robin within their credit (highest consumer priority first). TTL, length limits,
//! delivery limits and dead-lettering are applied here; dead letters are republished only
//! after the queue's lock is released, so queues that dead-letter into each other cannot
//! deadlock.

pub mod delayed;
mod dispatch;
mod paging;
pub mod replica;
mod state;
pub mod stream;

use super::arguments::{Overflow, QueueArguments};
use super::clock::now_ms;
use super::consumer::{ConnEvent, Consumer, Delivery, Origin};
use super::dead_letter::{self, Reason};
use super::error::{AmqpError, AmqpResult};
use super::message::{Message, QueuedMessage};
use super::stats::{self, MessageCounts};
use super::store::{LoadedMessage, MessageLog, Pager, RecoveredQueue, StoreError};
use crate::types::{FieldTable, ShortStr};
use parking_lot::Mutex;
use state::QueueState;
use std::cmp::Reverse;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// Per-delivery bytes charged to a sink on top of the message, for the frames around it.
const DELIVERY_OVERHEAD: usize = 64;
/// A queue with consumers holding more ready messages than this makes its publishers wait
/// (they stop being read) until it drains below [`FLOW_LOW`]: publishers cannot outrun
/// consumers without bound.
pub const FLOW_HIGH: usize = 8192;
pub const FLOW_LOW: usize = 4096;
/// The same marks in body bytes, for large messages: 8,192 messages of 64 KiB would be half a
/// gigabyte waiting in memory (each pinning the read buffer it arrived in), where a few MiB
/// keep a consumer as busy. Small messages reach the count marks first.
pub const FLOW_HIGH_BYTES: u64 = 8 * 1024 * 1024;
pub const FLOW_LOW_BYTES: u64 = 4 * 1024 * 1024;
/// Consumers that took nothing from a queue over its flow mark for this long are stalled
/// (a client that stopped reading its socket, or holds its whole prefetch): the queue stops
/// holding its publishers back for them and takes publishes as if it had no consumers, until
/// a consumer takes a message again.
const STALL_AFTER: Duration = Duration::from_millis(200);
/// A durable queue keeps at most this many ready messages, and this many bytes of them, in
/// memory; the rest wait in its log on disk and are read back in order as the front drains.
/// The count keeps small messages flowing from memory; the bytes keep a queue of large ones
/// (2,048 of 1 MiB would be 2 GiB) from holding more than a few MiB.
pub const MEMORY_WINDOW: usize = 2048;
pub const MEMORY_WINDOW_BYTES: u64 = 4 * 1024 * 1024;
/// While memory is short, and while part of it is paged out, a transient queue keeps at most
/// this many ready messages, and this many bytes of them, in memory; the rest go to disk.
/// Small, so that a broker with many flooded queues stays within its memory limit.
const PRESSURE_WINDOW: usize = 64;
const PRESSURE_WINDOW_BYTES: u64 = 256 * 1024;

#[derive(Debug, Clone)]
pub struct QueueOptions {
    pub durable: bool,
    pub exclusive_owner: Option<u64>,
    pub auto_delete: bool,
    pub arguments: FieldTable,
    /// The settings parsed from `arguments`.
    pub args: QueueArguments,
}

/// What a queue asks of the vhost it belongs to: to be visited by the vhost's timers, and to
/// route its dead letters. The vhost implements it and the queue holds it weakly, so the queue
/// does not depend on the layer above it.
pub trait QueueOwner: Send + Sync {
    /// From now on `queue`'s timers run at each of the vhost's ticks (until it is deleted).
    fn watch_queue_timers(&self, queue: &Arc<Queue>);
    /// The queues a dead letter published to `exchange` with `routing_key` (and the keys
    /// `cc`, from its `CC` header) reaches, into `out`.
    fn route_dead_letter(
        &self,
        exchange: &str,
        routing_key: &str,
        cc: &[crate::types::ShortStr],
        properties: &bytes::Bytes,
        out: &mut Vec<Arc<Queue>>,
    ) -> AmqpResult<()>;
    /// A delayed exchange's held message, due: the message as it goes out, and the queues
    /// it reaches through `exchange` now, into `out`.
    fn route_delayed(&self, exchange: &str, message: &Message, out: &mut Vec<Arc<Queue>>) -> Arc<Message>;
}

/// The time for expiry checks, read from the system only once a message with an expiry
/// comes up: the hot path of queues without TTLs never asks for it.
#[derive(Debug, Clone, Copy)]
enum Clock {
    At(u64),
    Lazy,
}

impl Clock {
    fn expired(&mut self, m: &QueuedMessage) -> bool {
        if m.expires_at == 0 {
            return false;
        }
        let now = match *self {
            Clock::At(now) => now,
            Clock::Lazy => {
                let now = now_ms();
                *self = Clock::At(now);
                now
            }
        };
        m.expires_at <= now
    }
}

/// What became of one publish to a queue.
#[derive(Debug, Default, Clone, Copy)]
pub struct Published {
    /// Group-commit ticket to wait for before confirming (0: nothing to wait for).
    pub ticket: u64,
    /// The queue is over its flow mark: the publisher should pause.
    pub throttled: bool,
    /// A length limit with reject-publish refused the message: the publisher gets a nack.
    pub rejected: bool,
    /// A replicated queue's ticket to wait for before confirming (0: none).
    pub cluster: u64,
    /// The message was written to the queue's log (durable, or paged to disk).
    pub logged: bool,
}

#[derive(Debug)]
pub struct Queue {
    pub name: ShortStr,
    pub vhost: String,
    pub options: QueueOptions,
    state: Mutex<QueueState>,
    deleted: AtomicBool,
    /// For a queue without a log: where to page messages when memory runs short.
    pager: Option<Pager>,
    /// The vhost, for its timers and for republishing dead letters.
    owner: Weak<dyn QueueOwner>,
    /// The queue has timers to run: a queue TTL, x-expires, or messages with an expiration.
    timed: AtomicBool,
    /// A quorum queue on a cluster node: its state is replicated, and this object forwards
    /// to it (see [`replica`]); or the face of a classic queue another node of the cluster
    /// holds, forwarding to that node.
    pub replica: Option<Arc<dyn replica::Replica>>,
    /// On a cluster node: the id of the placement that makes this queue the cluster's (a
    /// classic queue held here, or a face of one held elsewhere); 0 for none.
    placement: std::sync::atomic::AtomicU64,
    /// A stream queue: its log (see [`stream`]).
    pub stream: Option<Arc<dyn super::store::StreamStore>>,
    /// A delayed exchange's holding queue: its held messages (see [`delayed`]).
    pub delayed: Option<Box<delayed::DelayStore>>,
}

/// A queue's counts ([`stats::MessageCounts::values`]) and lengths (messages, ready,
/// unacknowledged) over time, for the API's samples.
#[derive(Debug, Default)]
pub struct QueueHistory {
    pub counts: super::history::History<12>,
    pub lengths: super::history::History<3>,
}

/// A queue's numbers at one moment (see [`Queue::stats`]).
#[derive(Debug, Clone, Default)]
pub struct QueueStats {
    pub ready: u64,
    pub unacked: u64,
    pub consumers: u32,
    /// Body bytes of the ready messages, and of those of them held in memory.
    pub ready_bytes: u64,
    pub ready_bytes_ram: u64,
    pub ready_ram: u64,
    pub counts: MessageCounts,
    pub rates: stats::RateMeter,
    pub time_in_queue: stats::Percentiles,
    pub time_to_ack: stats::Percentiles,
    pub forecast: stats::Forecast,
    pub idle_since_ms: u64,
    /// How fast the ready and unacknowledged counts change, per second, between the last
    /// two samples.
    pub depth_rates: (f64, f64),
    /// Body bytes of the unacknowledged messages.
    pub unacked_bytes: u64,
    /// Persistent messages, ready and unacknowledged, and their body bytes.
    pub persistent: (u64, u64),
    /// The `timestamp` property of the message at the head, if it has one.
    pub head_timestamp: Option<u64>,
    /// Messages written to the queue's log, and read back from it.
    pub disk: (u64, u64),
    /// The tag of the consumer that has the queue to itself: an exclusive consumer, or the
    /// single active one.
    pub exclusive_consumer: Option<ShortStr>,
    pub single_active_consumer: Option<ShortStr>,
    /// Whether a message published now would go to a consumer at once (one of those
    /// eligible has credit): RabbitMQ's consumer capacity, taken at this moment.
    pub consumer_capacity: f64,
}

impl QueuedMessage {
    /// A message read back from the queue's log.
    fn loaded(m: LoadedMessage, priority: u8) -> Self {
        QueuedMessage {
            seq: m.seq,
            message: m.message,
            redelivered: m.redelivered,
            logged: true,
            expires_at: m.expires_at,
            deliveries: 0,
            priority,
            stamp: 0,
        }
    }

    /// Where it belongs among ready messages: higher priority first, then publish order.
    fn order(&self) -> (Reverse<u8>, u64) {
        (Reverse(self.priority), self.seq)
    }
}

impl Queue {
    pub fn new(
        name: ShortStr,
        vhost: &str,
        options: QueueOptions,
        log: Option<Box<dyn MessageLog>>,
        pager: Option<Pager>,
        owner: Weak<dyn QueueOwner>,
    ) -> Arc<Self> {
        // A priority queue keeps every ready message in memory, in priority order.
        let pager = pager.filter(|_| options.args.max_priority.is_none());
        Arc::new(Queue {
            name,
            vhost: vhost.to_string(),
            state: Mutex::new(QueueState {
                log,
                last_used: now_ms(),
                pressure: pager.as_ref().map(|p| p.pressure.clone()),
                args: options.args.clone(),
                ..Default::default()
            }),
            deleted: AtomicBool::new(false),
            pager,
            timed: AtomicBool::new(options.args.message_ttl.is_some() || options.args.expires.is_some()),
            owner,
            options,
            replica: None,
            placement: Default::default(),
            stream: None,
            delayed: None,
        })
    }

    /// The local face of a replicated queue (see [`replica`]).
    pub fn replicated(
        name: ShortStr,
        vhost: &str,
        options: QueueOptions,
        replica: Arc<dyn replica::Replica>,
        owner: Weak<dyn QueueOwner>,
    ) -> Arc<Self> {
        Self::kept_elsewhere(name, vhost, options, owner, Some(replica), None)
    }

    /// A queue whose messages live elsewhere (a cluster's replicated log, a stream's log):
    /// its own state keeps only consumers, counters and settings.
    fn kept_elsewhere(
        name: ShortStr,
        vhost: &str,
        options: QueueOptions,
        owner: Weak<dyn QueueOwner>,
        replica: Option<Arc<dyn replica::Replica>>,
        stream: Option<Arc<dyn super::store::StreamStore>>,
    ) -> Arc<Self> {
        let mut q = Self::kept_elsewhere_parts(name, vhost, options, owner);
        q.replica = replica;
        q.stream = stream;
        Arc::new(q)
    }

    fn kept_elsewhere_parts(name: ShortStr, vhost: &str, options: QueueOptions, owner: Weak<dyn QueueOwner>) -> Self {
        Queue {
            name,
            vhost: vhost.to_string(),
            state: Mutex::new(QueueState { last_used: now_ms(), args: options.args.clone(), ..Default::default() }),
            deleted: AtomicBool::new(false),
            pager: None,
            timed: AtomicBool::new(false),
            owner,
            options,
            replica: None,
            placement: Default::default(),
            stream: None,
            delayed: None,
        }
    }

    /// Republishes a replicated queue's dead letter through its dead-letter exchange (the
    /// cluster's leader does this once for the group).
    pub fn dead_letter_replicated(self: &Arc<Self>, message: Arc<Message>, reason: Reason) {
        self.dead_letter(vec![(QueuedMessage::unqueued(message), reason)]);
    }

    /// A durable queue brought back from its log after a restart.
    pub fn restore(
        name: ShortStr,
        vhost: &str,
        options: QueueOptions,
        recovered: RecoveredQueue,
        owner: Weak<dyn QueueOwner>,
    ) -> Arc<Self> {
        let max_priority = options.args.max_priority;
        let mut st = QueueState {
            next_seq: recovered.next_seq,
            log: Some(recovered.log),
            last_used: now_ms(),
            args: options.args.clone(),
            ..Default::default()
        };
        for m in recovered.messages {
            let priority = max_priority.map_or(0, |max| m.message.priority.min(max));
            st.push_ready(QueuedMessage::loaded(m, priority));
        }
        // What stayed on disk is persistent (transient messages do not survive a restart);
        // its bytes are counted as it is read back.
        st.persistent_ready.0 += st.tail_len();
        let timed =
            AtomicBool::new(options.args.message_ttl.is_some() || options.args.expires.is_some() || st.may_expire());
        Arc::new(Queue {
            name,
            vhost: vhost.to_string(),
            options,
            state: Mutex::new(st),
            deleted: AtomicBool::new(false),
            pager: None,
            owner,
            timed,
            replica: None,
            placement: Default::default(),
            stream: None,
            delayed: None,
        })
    }

    pub fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Acquire)
    }

    /// The id of the cluster placement of this queue (0: none; see [`Queue::placement`]).
    pub fn placement(&self) -> u64 {
        self.placement.load(Ordering::Acquire)
    }
    pub fn set_placement(&self, id: u64) {
        self.placement.store(id, Ordering::Release);
    }
    /// The node a cluster's classic queue lives on, if this is its face on another node.
    pub fn home(&self) -> Option<&str> {
        self.replica.as_ref().and_then(|r| r.home())
    }

    /// 405 for any connection but the owner of an exclusive queue.
    pub fn check_access(&self, connection_id: u64) -> AmqpResult<()> {
        match self.options.exclusive_owner {
            Some(owner) if owner != connection_id => Err(self.locked_error()),
            _ => Ok(()),
        }
    }

    /// RabbitMQ's 405 for a queue another connection owns, or whose exclusivity was declared
    /// differently.
    pub fn locked_error(&self) -> AmqpError {
        AmqpError::resource_locked(format!(
            "cannot obtain exclusive access to locked queue '{}' in vhost '{}'. It could be originally \
             declared on another connection or the exclusive property value does not match that of \
             the original declaration.",
            self.name, self.vhost
        ))
    }

    /// Ready messages (not those out with consumers), as declare-ok and get-ok count them.
    pub fn message_count(&self) -> u32 {
        if let Some(r) = &self.replica {
            return r.counts().0;
        }
        if let Some(s) = &self.stream {
            return Self::stream_len(s);
        }
        self.state.lock().ready_count()
    }
    /// The queue's consumers, in the order they are served.
    pub fn consumers(&self) -> Vec<Arc<Consumer>> {
        if let Some(r) = &self.replica {
            return r.consumers();
        }
        self.state.lock().consumers.clone()
    }
    pub fn consumer_count(&self) -> u32 {
        if let Some(r) = &self.replica {
            return r.counts().2;
        }
        self.state.lock().consumers.len() as u32
    }
    /// Ready messages as `st` has them, or a stream's length.
    fn ready_of(&self, st: &QueueState) -> u32 {
        match &self.stream {
            Some(s) => Self::stream_len(s),
            None => st.ready_count(),
        }
    }

    /// How fast the ready and unacknowledged counts change, per second (last two samples).
    pub fn depth_rates(&self) -> (f64, f64) {
        self.state.lock().depth_rates
    }

    /// Messages written to the queue's log and read back from it so far.
    pub fn disk_counts(&self) -> (u64, u64) {
        let st = self.state.lock();
        (st.disk_writes, st.disk_reads)
    }

    pub fn counts(&self) -> (u32, u32) {
        if let Some(r) = &self.replica {
            let (ready, _, consumers) = r.counts();
            return (ready, consumers);
        }
        let st = self.state.lock();
        (self.ready_of(&st), st.consumers.len() as u32)
    }
    pub fn unacked_count(&self) -> usize {
        if let Some(r) = &self.replica {
            return r.counts().1 as usize;
        }
        self.state.lock().unacked
    }

    /// Samples the queue's counters for its rates and rolls its latency windows; called by
    /// the statistics sampler every few seconds, never on the message path.
    /// Returns the queue's depths (ready, unacknowledged).
    pub fn sample(&self, now_ms: u64) -> (u64, u64) {
        let mut st = self.state.lock();
        let counts = st.counts;
        st.meter.sample(now_ms, counts);
        let (ready, unacked) = (self.ready_of(&st) as u64, st.unacked as u64);
        // A history is made once the queue has anything to show; idle queues have none.
        let values = counts.values();
        if st.history.is_some() || ready + unacked > 0 || values.iter().any(|&v| v != 0) {
            let h = st.history.get_or_insert_with(Default::default);
            h.counts.record(now_ms, values);
            h.lengths.record(now_ms, [ready + unacked, ready, unacked]);
        }
        if let Some((at, r, u)) = st.last_depth {
            let dt = now_ms.saturating_sub(at) as f64 / 1000.0;
            if dt > 0.0 {
                st.depth_rates = ((ready as f64 - r as f64) / dt, (unacked as f64 - u as f64) / dt);
            }
        }
        st.last_depth = Some((now_ms, ready, unacked));
        if let Some(l) = st.latency.as_mut() {
            l.roll(now_ms);
        }
        (ready, unacked)
    }

    /// Reads the queue's history (none before it first moved), briefly under its lock.
    pub fn with_history<R>(&self, f: impl FnOnce(Option<&QueueHistory>) -> R) -> R {
        f(self.state.lock().history.as_deref())
    }

    /// Depths, counters, rates and latencies as of now, for the management API and metrics.
    pub fn stats(&self) -> QueueStats {
        let st = self.state.lock();
        let args = &st.args;
        let ready = self.ready_of(&st) as u64;
        let unacked = st.unacked as u64;
        let rate_in = st.meter.rate("publish");
        let rate_out = st.meter.rate("deliver_get");
        QueueStats {
            ready,
            unacked,
            consumers: st.consumers.len() as u32 + st.stream_subscriptions,
            ready_bytes: self.stream.as_ref().map_or_else(|| st.bytes(), |s| s.size().0),
            ready_bytes_ram: st.ready_bytes,
            ready_ram: st.ready.len() as u64,
            counts: st.counts,
            rates: st.meter.clone(),
            time_in_queue: st.latency.as_ref().map(|l| l.time_in_queue()).unwrap_or_default(),
            time_to_ack: st.latency.as_ref().map(|l| l.time_to_ack()).unwrap_or_default(),
            forecast: stats::Forecast::new(
                ready + unacked,
                st.bytes(),
                args.max_length,
                args.max_length_bytes,
                rate_in,
                rate_out,
            ),
            idle_since_ms: st.last_used,
            depth_rates: st.depth_rates,
            unacked_bytes: st.unacked_bytes,
            persistent: (
                st.persistent_ready.0 + st.persistent_unacked.0,
                st.persistent_ready.1 + st.persistent_unacked.1,
            ),
            head_timestamp: st.ready.front().and_then(|m| m.message.decode_properties().timestamp),
            disk: (st.disk_writes, st.disk_reads),
            exclusive_consumer: st.consumers.iter().find(|c| c.exclusive).map(|c| c.tag.clone()),
            single_active_consumer: args
                .single_active_consumer
                .then(|| st.consumers.first().map(|c| c.tag.clone()))
                .flatten(),
            consumer_capacity: {
                let eligible = if args.single_active_consumer { st.consumers.len().min(1) } else { st.consumers.len() };
                if st.consumers[..eligible].iter().any(|c| c.has_credit()) {
                    1.0
                } else {
                    0.0
                }
            },
        }
    }

    /// The policy and operator policy that apply to the queue now.
    pub fn applied_policy(&self) -> crate::broker::policy::Applied {
        self.state.lock().applied.clone()
    }

    /// Applies a policy (or none): the queue's settings become its arguments resolved against
    /// it, at once, as RabbitMQ's queue process does on a policy change: a lowered length
    /// limit drops (or dead-letters) from the head if the old or the new overflow is
    /// drop-head; a new TTL applies to messages published from now on; a new expiry counts
    /// from the last use. Returns whether anything changed.
    pub fn set_policy(self: &Arc<Self>, applied: crate::broker::policy::Applied) -> bool {
        let mut st = self.state.lock();
        if st.applied == applied {
            return false;
        }
        let args = applied.resolve_queue(&self.options.args, &self.options.arguments);
        if let Some(store) = &self.stream {
            // Retention and segment size from now on, applied at the next write.
            store.set_settings(stream::stream_settings(&args));
            st.args = args;
            st.applied = applied;
            return true;
        }
        if self.replica.is_some() {
            // A replicated queue's settings live in the cluster's state machine, which
            // resolves the same policies in log order; this face keeps them for its object
            // and for republishing dead letters.
            st.args = args;
            st.applied = applied;
            return true;
        }
        let before = st.args.overflow;
        let timers = args.message_ttl.is_some() || args.expires.is_some();
        st.args = args;
        st.applied = applied;
        if before == Overflow::DropHead || st.args.overflow == Overflow::DropHead {
            st.drop_head(&self.name);
        }
        drop(st);
        if timers && !self.timed.swap(true, Ordering::Relaxed) {
            if let Some(vhost) = self.owner.upgrade() {
                vhost.watch_queue_timers(self);
            }
        }
        let st = self.state.lock();
        self.unlock_and_dead_letter(st);
        true
    }

    /// The queue was declared again: it counts as used (x-expires).
    pub fn touch(&self) {
        self.state.lock().last_used = now_ms();
    }

    /// Whether the queue has timers to run: message TTLs or its own expiry.
    pub fn has_timers(&self) -> bool {
        self.timed.load(Ordering::Relaxed)
    }

    /// Runs the queue's timers: expires messages at the head and returns true when the queue
    /// itself has been unused for its x-expires period and should be deleted.
    pub fn tick(self: &Arc<Self>, now: u64) -> bool {
        if let Some(d) = &self.delayed {
            self.release_due(d, now);
            return false;
        }
        let mut st = self.state.lock();
        st.expire(&self.name, now);
        let idle = st.args.expires.is_some_and(|e| st.consumers.is_empty() && now >= st.last_used.saturating_add(e));
        self.unlock_and_dead_letter(st);
        idle
    }

    /// Enqueues a routed message and hands it to a consumer if one has credit. When the queue
    /// is over its flow mark, `flow` is registered to be notified once it drains.
    pub fn publish(
        self: &Arc<Self>,
        message: Arc<Message>,
        flow: Option<&Arc<tokio::sync::Notify>>,
    ) -> Result<Published, StoreError> {
        if self.is_deleted() {
            return Ok(Published::default());
        }
        if let Some(r) = &self.replica {
            return Ok(Published { cluster: r.publish(&message), ..Default::default() });
        }
        if let Some(s) = &self.stream {
            return Ok(self.stream_publish(s, &message));
        }
        if let Some(d) = &self.delayed {
            return d.hold_published(message);
        }
        let timed = self.timed.load(Ordering::Relaxed);
        let mut now = if timed || message.expiration.is_some() { now_ms() } else { 0 };
        if message.expiration.is_some() && !timed && !self.timed.swap(true, Ordering::Relaxed) {
            // The first message with an expiration: its vhost's timers visit this queue now.
            if let Some(vhost) = self.owner.upgrade() {
                vhost.watch_queue_timers(self);
            }
        }
        let priority = self.options.args.max_priority.map_or(0, |max| message.priority.min(max));
        let mut st = self.state.lock();
        let ttl = match (st.args.message_ttl, message.expiration) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if ttl.is_some() && now == 0 {
            // A policy gave the queue a TTL since `timed` was read.
            now = now_ms();
        }
        let expires_at = ttl.map_or(0, |t| now + t);
        let overflow = st.args.overflow;
        if overflow != Overflow::DropHead && st.would_overflow(message.body.len() as u64) {
            if overflow == Overflow::RejectPublishDlx && st.args.dead_letter_exchange.is_some() {
                let m = QueuedMessage { expires_at, priority, ..QueuedMessage::unqueued(message) };
                st.dead.push((m, Reason::MaxLen));
            }
            self.unlock_and_dead_letter(st);
            return Ok(Published { rejected: true, ..Default::default() });
        }
        let seq = st.next_seq;
        st.next_seq += 1;
        st.counts.publish += 1;
        let stamp = if st.counts.publish % stats::STAMP_EVERY == 0 { stats::stamp_now() } else { 0 };
        let mut ticket = 0;
        let mut logged = false;
        let mut to_tail = false;
        if st.log.is_none() && st.window_full() {
            self.page_out_locked(&mut st);
        }
        let window_full = st.window_full();
        let size = message.body.len() as u64;
        // After a failed page-out, later messages wait in memory behind what did reach disk.
        let after_tail = !st.after_tail.is_empty();
        let priority_queue_off = self.options.args.max_priority.is_none();
        if let Some(log) = st.log.as_mut().filter(|_| !after_tail) {
            // Past the memory window, messages wait on disk; so do later ones, to keep order.
            // A priority queue keeps all of them in memory, to hand out the highest first.
            to_tail = priority_queue_off && (log.tail_len() > 0 || window_full);
            if message.persistent || to_tail {
                let t = log.append(seq, &message, expires_at, to_tail)?;
                // A transient message on disk is only there to save memory: its confirm
                // need not wait for the fsync.
                ticket = if message.persistent { t } else { 0 };
                logged = true;
                st.disk_writes += 1;
            }
        }
        if message.persistent && (to_tail || after_tail) {
            state::tally(&mut st.persistent_ready, &message, true);
        }
        if to_tail {
            st.tail_bytes += size;
        } else {
            let m =
                QueuedMessage { seq, message, redelivered: false, logged, expires_at, deliveries: 0, priority, stamp };
            if after_tail {
                st.ready_bytes += size;
                st.after_tail.push_back(m);
            } else {
                st.push_ready(m);
            }
        }
        // A message published this millisecond with a TTL of 0 still goes to a waiting
        // consumer; undelivered, it expires at once.
        if now == 0 {
            self.dispatch_at(&mut st, Clock::Lazy);
        } else {
            self.dispatch_at(&mut st, Clock::At(now.saturating_sub(1)));
        }
        // As RabbitMQ: length limits first, then expired messages left at the head.
        if st.args.max_length.is_some() || st.args.max_length_bytes.is_some() {
            st.enforce_limits(&self.name);
        }
        if now != 0 {
            st.expire(&self.name, now);
        }
        let mut throttled = false;
        if let Some(w) = flow {
            if !st.consumers.is_empty() && st.over_flow_mark() && st.consumers_progressing() {
                if !st.flow_waiters.iter().any(|x| Arc::ptr_eq(x, w)) {
                    st.flow_waiters.push(w.clone());
                }
                throttled = true;
            }
        }
        self.unlock_and_dead_letter(st);
        Ok(Published { ticket, throttled, rejected: false, logged, cluster: 0 })
    }
}

#[cfg(test)]
mod dispatch_tests;
#[cfg(test)]
mod tests;
