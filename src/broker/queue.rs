//! A classic queue held in memory: ready messages in publish order, a count of messages out
//! with consumers, and the consumers it dispatches to round-robin within their credit.

use super::consumer::{ConnEvent, Consumer, Delivery};
use super::error::{AmqpError, AmqpResult};
use super::message::Message;
use super::store::{MessageLog, Pager, RecoveredQueue, StoreError};
use crate::protocol::{FieldTable, ShortStr};
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Per-delivery bytes charged to a sink on top of the message, for the frames around it.
const DELIVERY_OVERHEAD: usize = 64;
/// A queue with consumers holding more ready messages than this makes its publishers wait
/// (they stop being read) until it drains below [`FLOW_LOW`]: publishers cannot outrun
/// consumers without bound.
pub const FLOW_HIGH: usize = 8192;
pub const FLOW_LOW: usize = 4096;
/// A durable queue keeps at most this many ready messages in memory; the rest wait in its
/// log on disk and are read back in order as the front drains.
pub const MEMORY_WINDOW: usize = 2048;

#[derive(Debug, Clone)]
pub struct QueueOptions {
    pub durable: bool,
    pub exclusive_owner: Option<u64>,
    pub auto_delete: bool,
    pub arguments: FieldTable,
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
}

/// A message waiting in the queue, or handed out and owed back.
#[derive(Debug, Clone)]
pub struct QueuedMessage {
    /// Position in the queue; requeued messages go back to their place by it.
    pub seq: u64,
    pub message: Arc<Message>,
    pub redelivered: bool,
    /// The message is in the queue's log and must be acked there.
    pub logged: bool,
}

#[derive(Debug, Default)]
struct QueueState {
    ready: VecDeque<QueuedMessage>,
    next_seq: u64,
    unacked: usize,
    consumers: Vec<Arc<Consumer>>,
    next_consumer: usize,
    had_consumer: bool,
    log: Option<Box<dyn MessageLog>>,
    /// Publishers waiting for this queue to drain.
    flow_waiters: Vec<Arc<tokio::sync::Notify>>,
}

impl QueueState {
    fn tail_len(&self) -> u64 {
        self.log.as_ref().map_or(0, |l| l.tail_len())
    }

    /// Messages ready for consumers: in memory and on disk.
    fn ready_count(&self) -> u32 {
        (self.ready.len() as u64 + self.tail_len()).min(u32::MAX as u64) as u32
    }

    /// Wakes waiting publishers once the queue is below the low mark or has no consumers.
    fn release_flow(&mut self) {
        if !self.flow_waiters.is_empty() && (self.consumers.is_empty() || (self.ready_count() as usize) < FLOW_LOW) {
            for w in self.flow_waiters.drain(..) {
                w.notify_one();
            }
        }
    }

    /// Reads the next stretch of the on-disk tail once the in-memory front runs low.
    fn refill(&mut self, name: &ShortStr) {
        if self.ready.len() >= MEMORY_WINDOW / 2 || self.tail_len() == 0 {
            return;
        }
        let Some(log) = &mut self.log else { return };
        match log.read_tail(MEMORY_WINDOW / 2) {
            Ok(loaded) => self.ready.extend(loaded.into_iter().map(|m| QueuedMessage {
                seq: m.seq,
                message: m.message,
                redelivered: m.redelivered,
                logged: true,
            })),
            Err(e) => tracing::error!("queue '{name}': cannot read messages back from disk: {e}"),
        }
    }

    /// Records in the log that a message left the queue for good.
    fn log_ack(&mut self, m: &QueuedMessage) {
        if !m.logged {
            return;
        }
        if let Some(Err(e)) = self.log.as_mut().map(|l| l.ack(m.seq)) {
            tracing::error!("cannot record an ack: {e}");
        }
    }

    /// Records that a message went to a consumer that must ack it. No-ack deliveries are
    /// settled in the log only once written out (see [`Queue::settle_delivered`]).
    fn log_out(&mut self, m: &QueuedMessage, no_ack: bool) {
        if m.logged && !no_ack {
            if let Some(log) = &mut self.log {
                log.delivered(m.seq);
            }
        }
    }
}

impl Queue {
    pub fn new(
        name: ShortStr,
        vhost: &str,
        options: QueueOptions,
        log: Option<Box<dyn MessageLog>>,
        pager: Option<Pager>,
    ) -> Arc<Self> {
        Arc::new(Queue {
            name,
            vhost: vhost.to_string(),
            options,
            state: Mutex::new(QueueState { log, ..Default::default() }),
            deleted: AtomicBool::new(false),
            pager,
        })
    }

    /// A durable queue brought back from its log after a restart.
    pub fn restore(name: ShortStr, vhost: &str, options: QueueOptions, recovered: RecoveredQueue) -> Arc<Self> {
        let ready = recovered
            .messages
            .into_iter()
            .map(|m| QueuedMessage { seq: m.seq, message: m.message, redelivered: m.redelivered, logged: true })
            .collect();
        Arc::new(Queue {
            name,
            vhost: vhost.to_string(),
            options,
            state: Mutex::new(QueueState {
                ready,
                next_seq: recovered.next_seq,
                log: Some(recovered.log),
                ..Default::default()
            }),
            deleted: AtomicBool::new(false),
            pager: None,
        })
    }

    pub fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Acquire)
    }

    /// 405 for any connection but the owner of an exclusive queue.
    pub fn check_access(&self, connection_id: u64) -> AmqpResult<()> {
        match self.options.exclusive_owner {
            Some(owner) if owner != connection_id => Err(AmqpError::resource_locked(format!(
                "cannot obtain exclusive access to locked queue '{}' in vhost '{}'. It could be originally \
                 declared on another connection or the exclusive property value does not match that of \
                 the original declaration.",
                self.name, self.vhost
            ))),
            _ => Ok(()),
        }
    }

    /// Ready messages (not those out with consumers), as declare-ok and get-ok count them.
    pub fn message_count(&self) -> u32 {
        self.state.lock().ready_count()
    }
    pub fn consumer_count(&self) -> u32 {
        self.state.lock().consumers.len() as u32
    }
    pub fn counts(&self) -> (u32, u32) {
        let st = self.state.lock();
        (st.ready_count(), st.consumers.len() as u32)
    }
    pub fn unacked_count(&self) -> usize {
        self.state.lock().unacked
    }

    /// Enqueues a routed message and hands it to a consumer if one has credit. Returns the
    /// group-commit ticket to wait for before confirming it (0: nothing to wait for). When the
    /// queue is over its flow mark, `flow` is registered to be notified once it drains, and
    /// the publisher should pause.
    pub fn publish(
        self: &Arc<Self>,
        message: Arc<Message>,
        flow: Option<&Arc<tokio::sync::Notify>>,
    ) -> Result<(u64, bool), StoreError> {
        if self.is_deleted() {
            return Ok((0, false));
        }
        let mut st = self.state.lock();
        let seq = st.next_seq;
        st.next_seq += 1;
        let mut ticket = 0;
        let mut logged = false;
        let mut to_tail = false;
        let in_memory = st.ready.len();
        if st.log.is_none() && in_memory >= MEMORY_WINDOW {
            if let Some(p) = self.pager.as_ref().filter(|p| p.pressure.load(Ordering::Acquire)) {
                match p.storage.create_transient_log() {
                    Ok(log) => {
                        tracing::info!("queue '{}': memory is short, paging its messages to disk", self.name);
                        st.log = Some(log);
                    }
                    Err(e) => tracing::warn!("queue '{}': cannot page to disk: {e}", self.name),
                }
            }
        }
        if let Some(log) = &mut st.log {
            // Past the memory window, messages wait on disk; so do later ones, to keep order.
            to_tail = log.tail_len() > 0 || in_memory >= MEMORY_WINDOW;
            if message.persistent || to_tail {
                let t = log.append(seq, &message, to_tail)?;
                // A transient message on disk is only there to save memory: its confirm
                // need not wait for the fsync.
                ticket = if message.persistent { t } else { 0 };
                logged = true;
            }
        }
        if !to_tail {
            st.ready.push_back(QueuedMessage { seq, message, redelivered: false, logged });
        }
        self.dispatch_locked(&mut st);
        let mut throttled = false;
        if let Some(w) = flow {
            if !st.consumers.is_empty() && st.ready_count() as usize > FLOW_HIGH {
                if !st.flow_waiters.iter().any(|x| Arc::ptr_eq(x, w)) {
                    st.flow_waiters.push(w.clone());
                }
                throttled = true;
            }
        }
        Ok((ticket, throttled))
    }

    pub fn dispatch(self: &Arc<Self>) {
        let mut st = self.state.lock();
        self.dispatch_locked(&mut st);
    }

    fn dispatch_locked(self: &Arc<Self>, st: &mut QueueState) {
        loop {
            st.refill(&self.name);
            let loaded = st.ready.len();
            self.dispatch_ready(st);
            // Consumers took all that was in memory and may take more: read on from disk.
            if loaded == 0 || !st.ready.is_empty() || st.tail_len() == 0 {
                break;
            }
        }
        st.release_flow();
    }

    fn dispatch_ready(self: &Arc<Self>, st: &mut QueueState) {
        while !st.ready.is_empty() && !st.consumers.is_empty() {
            let n = st.consumers.len();
            let mut chosen = None;
            for i in 0..n {
                let idx = (st.next_consumer + i) % n;
                let c = &st.consumers[idx];
                if !c.has_credit() {
                    continue;
                }
                if !c.sink.has_capacity() {
                    c.sink.wait_for_capacity(self);
                    // Capacity may have come back between the check and the registration.
                    if !c.sink.has_capacity() {
                        continue;
                    }
                }
                chosen = Some(idx);
                break;
            }
            let Some(idx) = chosen else { return };
            st.next_consumer = (idx + 1) % n;
            let Some(m) = st.ready.pop_front() else {
                return;
            };
            let consumer = st.consumers[idx].clone();
            consumer.charge_unacked();
            if !consumer.no_ack {
                st.unacked += 1;
            }
            let charge = m.message.size() + DELIVERY_OVERHEAD;
            consumer.sink.send(ConnEvent::Deliver(Delivery {
                channel: consumer.channel,
                consumer_tag: consumer.tag.clone(),
                queue: Some(self.clone()),
                seq: m.seq,
                message: m.message,
                redelivered: m.redelivered,
                logged: m.logged,
                no_ack: consumer.no_ack,
                charge,
            }));
        }
    }

    /// basic.get: the head message, if any, and how many remain ready.
    pub fn get(&self, no_ack: bool) -> Option<(QueuedMessage, u32)> {
        let mut st = self.state.lock();
        st.refill(&self.name);
        let m = st.ready.pop_front()?;
        if no_ack {
            st.log_ack(&m);
        } else {
            st.log_out(&m, false);
            st.unacked += 1;
        }
        st.refill(&self.name);
        Some((m, st.ready_count()))
    }

    /// Messages acknowledged (or dropped without requeue) by a consumer.
    pub fn settle(&self, messages: &[QueuedMessage]) {
        let mut st = self.state.lock();
        st.unacked = st.unacked.saturating_sub(messages.len());
        for m in messages {
            st.log_ack(m);
        }
    }

    /// A logged message went out to a no-ack consumer: it is settled now.
    pub fn settle_delivered(&self, m: &QueuedMessage) {
        if m.logged {
            self.state.lock().log_ack(m);
        }
    }

    /// Puts unacknowledged messages back at their places, marked redelivered.
    pub fn requeue(self: &Arc<Self>, messages: impl IntoIterator<Item = QueuedMessage>) {
        let mut st = self.state.lock();
        for mut m in messages {
            st.unacked = st.unacked.saturating_sub(1);
            if self.is_deleted() {
                continue;
            }
            m.redelivered = true;
            let at = st.ready.partition_point(|r| r.seq < m.seq);
            st.ready.insert(at, m);
        }
        self.dispatch_locked(&mut st);
    }

    /// Takes back a dispatched message that never reached its consumer (it was cancelled or its
    /// channel closed meanwhile); it keeps its place and its redelivered flag.
    pub fn requeue_undelivered(self: &Arc<Self>, m: QueuedMessage, counted_unacked: bool) {
        let mut st = self.state.lock();
        if counted_unacked {
            st.unacked = st.unacked.saturating_sub(1);
        }
        if !self.is_deleted() {
            let at = st.ready.partition_point(|r| r.seq < m.seq);
            st.ready.insert(at, m);
        }
        self.dispatch_locked(&mut st);
    }

    /// Adds a consumer, enforcing exclusive consumers as RabbitMQ does (403).
    pub fn add_consumer(self: &Arc<Self>, consumer: Arc<Consumer>) -> AmqpResult<()> {
        let mut st = self.state.lock();
        if st.consumers.iter().any(|c| c.exclusive) || (consumer.exclusive && !st.consumers.is_empty()) {
            return Err(AmqpError::access_refused(format!(
                "queue '{}' in vhost '{}' in exclusive use",
                self.name, self.vhost
            )));
        }
        st.consumers.push(consumer);
        st.had_consumer = true;
        self.dispatch_locked(&mut st);
        Ok(())
    }

    /// Removes a consumer; returns true when it was the last and the queue is auto-delete.
    pub fn remove_consumer(&self, connection_id: u64, channel: u16, tag: &ShortStr) -> bool {
        let mut st = self.state.lock();
        st.consumers.retain(|c| !(c.channel == channel && c.connection_id() == connection_id && &c.tag == tag));
        if st.next_consumer >= st.consumers.len() {
            st.next_consumer = 0;
        }
        self.options.auto_delete && st.had_consumer && st.consumers.is_empty()
    }

    /// Drops every ready message; returns how many.
    pub fn purge(&self) -> u32 {
        let mut st = self.state.lock();
        st.flow_waiters.drain(..).for_each(|w| w.notify_one());
        let n = st.ready_count();
        let ready: Vec<QueuedMessage> = st.ready.drain(..).collect();
        for m in &ready {
            st.log_ack(m);
        }
        if let Some(log) = &mut st.log {
            if let Err(e) = log.purge_tail() {
                tracing::error!("queue '{}': cannot purge messages on disk: {e}", self.name);
            }
        }
        n
    }

    /// Marks the queue deleted and tells its consumers; returns the ready count it had.
    pub fn delete(&self) -> u32 {
        self.deleted.store(true, Ordering::Release);
        let mut st = self.state.lock();
        let n = st.ready_count();
        st.ready.clear();
        st.flow_waiters.drain(..).for_each(|w| w.notify_one());
        if let Some(mut log) = st.log.take() {
            log.destroy();
        }
        for c in st.consumers.drain(..) {
            c.sink.send(ConnEvent::ConsumerCancelled { channel: c.channel, consumer_tag: c.tag.clone() });
        }
        n
    }
}
