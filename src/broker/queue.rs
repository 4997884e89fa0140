//! A classic queue held in memory: ready messages in publish order, a count of messages out
//! with consumers, and the consumers it dispatches to round-robin within their credit.

use super::consumer::{ConnEvent, Consumer, Delivery};
use super::error::{AmqpError, AmqpResult};
use super::message::Message;
use crate::protocol::{FieldTable, ShortStr};
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Per-delivery bytes charged to a sink on top of the message, for the frames around it.
const DELIVERY_OVERHEAD: usize = 64;

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
}

/// A message waiting in the queue, or handed out and owed back.
#[derive(Debug, Clone)]
pub struct QueuedMessage {
    /// Position in the queue; requeued messages go back to their place by it.
    pub seq: u64,
    pub message: Arc<Message>,
    pub redelivered: bool,
}

#[derive(Debug, Default)]
struct QueueState {
    ready: VecDeque<QueuedMessage>,
    next_seq: u64,
    unacked: usize,
    consumers: Vec<Arc<Consumer>>,
    next_consumer: usize,
    had_consumer: bool,
}

impl Queue {
    pub fn new(name: ShortStr, vhost: &str, options: QueueOptions) -> Arc<Self> {
        Arc::new(Queue {
            name,
            vhost: vhost.to_string(),
            options,
            state: Mutex::new(QueueState::default()),
            deleted: AtomicBool::new(false),
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
        self.state.lock().ready.len() as u32
    }
    pub fn consumer_count(&self) -> u32 {
        self.state.lock().consumers.len() as u32
    }
    pub fn counts(&self) -> (u32, u32) {
        let st = self.state.lock();
        (st.ready.len() as u32, st.consumers.len() as u32)
    }
    pub fn unacked_count(&self) -> usize {
        self.state.lock().unacked
    }

    /// Enqueues a routed message and hands it to a consumer if one has credit.
    pub fn publish(self: &Arc<Self>, message: Arc<Message>) {
        if self.is_deleted() {
            return;
        }
        let mut st = self.state.lock();
        let seq = st.next_seq;
        st.next_seq += 1;
        st.ready.push_back(QueuedMessage { seq, message, redelivered: false });
        self.dispatch_locked(&mut st);
    }

    pub fn dispatch(self: &Arc<Self>) {
        let mut st = self.state.lock();
        self.dispatch_locked(&mut st);
    }

    fn dispatch_locked(self: &Arc<Self>, st: &mut QueueState) {
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
                no_ack: consumer.no_ack,
                charge,
            }));
        }
    }

    /// basic.get: the head message, if any, and how many remain ready.
    pub fn get(&self, no_ack: bool) -> Option<(QueuedMessage, u32)> {
        let mut st = self.state.lock();
        let m = st.ready.pop_front()?;
        if !no_ack {
            st.unacked += 1;
        }
        Some((m, st.ready.len() as u32))
    }

    /// Messages acknowledged (or dropped without requeue) by a consumer.
    pub fn settle(&self, count: usize) {
        let mut st = self.state.lock();
        st.unacked = st.unacked.saturating_sub(count);
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
        let n = st.ready.len() as u32;
        st.ready.clear();
        n
    }

    /// Marks the queue deleted and tells its consumers; returns the ready count it had.
    pub fn delete(&self) -> u32 {
        self.deleted.store(true, Ordering::Release);
        let mut st = self.state.lock();
        let n = st.ready.len() as u32;
        st.ready.clear();
        for c in st.consumers.drain(..) {
            c.sink.send(ConnEvent::ConsumerCancelled { channel: c.channel, consumer_tag: c.tag.clone() });
        }
        n
    }
}
