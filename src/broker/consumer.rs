//! Consumers as queues see them, and the sink through which a queue hands deliveries to the
//! connection that owns the consumer. Credit (prefetch and outbound bytes) is checked here so a
//! slow consumer can never make the broker buffer without bound.
//!
//! A delivery carries its [`Origin`], the queue it came from, as a trait: channels settle
//! through it and sinks wake it when they have room again, without knowing the queue's kind.

use super::message::QueuedMessage;
use crate::types::{FieldTable, ShortStr};
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use tokio::sync::Notify;

/// Outbound bytes of deliveries a connection may have queued before queues stop dispatching to it.
pub const SINK_HIGH_WATER: usize = 4 * 1024 * 1024;

/// The queue a delivery came from, as the channel that received it settles with it. Each
/// call says what became of deliveries; the queue acts on it and hands out what it can next.
pub trait Origin: Send + Sync + std::fmt::Debug {
    /// Acknowledged: gone for good.
    fn acked(self: Arc<Self>, messages: &[QueuedMessage]);
    /// Rejected or nacked without requeue: settled, and dead-lettered if the queue does that.
    fn rejected(self: Arc<Self>, messages: Vec<QueuedMessage>);
    /// Nacked or rejected with requeue, or left unacknowledged by a closed channel: back at
    /// their places, marked redelivered.
    fn requeued(self: Arc<Self>, messages: Vec<QueuedMessage>);
    /// Never reached its consumer (cancelled, or its channel closed, meanwhile): back as it was.
    fn undelivered(self: Arc<Self>, message: QueuedMessage, counted_unacked: bool);
    /// Written out to a no-ack consumer: settled now.
    fn sent_no_ack(&self, message: &QueuedMessage);
    /// Credit or sink room came back: hand out ready messages again.
    fn redispatch(self: Arc<Self>);
    /// Why its deliveries may not be rejected or nacked, if they may not (a stream's).
    fn refuses_reject(&self) -> Option<super::error::AmqpError> {
        None
    }
}

/// The origin of a delivery with nothing to settle (a replicated queue's get that could not be
/// asked, its node shutting down).
#[derive(Debug)]
pub struct NoOrigin;

impl Origin for NoOrigin {
    fn acked(self: Arc<Self>, _: &[QueuedMessage]) {}
    fn rejected(self: Arc<Self>, _: Vec<QueuedMessage>) {}
    fn requeued(self: Arc<Self>, _: Vec<QueuedMessage>) {}
    fn undelivered(self: Arc<Self>, _: QueuedMessage, _: bool) {}
    fn sent_no_ack(&self, _: &QueuedMessage) {}
    fn redispatch(self: Arc<Self>) {}
}

/// What a queue (or the broker) tells a connection.
#[derive(Debug)]
pub enum ConnEvent {
    Deliver(Delivery),
    /// The queue went away: basic.cancel to the client (consumer_cancel_notify).
    ConsumerCancelled {
        channel: u16,
        consumer_tag: ShortStr,
    },
}

#[derive(Debug)]
pub struct Delivery {
    pub channel: u16,
    pub consumer_tag: ShortStr,
    /// None for direct reply-to deliveries, which have no queue.
    pub queue: Option<Arc<dyn Origin>>,
    pub item: QueuedMessage,
    pub no_ack: bool,
    /// Flow-control bytes charged to the sink for this delivery.
    pub charge: usize,
}

/// The receiving end of a connection, shared by all of its consumers. Events wait in a
/// queue that allocates nothing until used, so idle connections stay small.
#[derive(Debug)]
pub struct ConnectionSink {
    pub connection_id: u64,
    events: Mutex<VecDeque<ConnEvent>>,
    ready: Notify,
    pending: AtomicUsize,
    waiting: Mutex<Vec<Weak<dyn Origin>>>,
}

impl ConnectionSink {
    pub fn new(connection_id: u64) -> Arc<Self> {
        Arc::new(ConnectionSink {
            connection_id,
            events: Mutex::new(VecDeque::new()),
            ready: Notify::new(),
            pending: AtomicUsize::new(0),
            waiting: Mutex::new(Vec::new()),
        })
    }

    /// Resolves once events may be waiting (a permit is stored if none is waiting yet).
    pub async fn notified(&self) {
        self.ready.notified().await
    }

    /// Takes every waiting event, in order.
    pub fn take_events(&self) -> VecDeque<ConnEvent> {
        std::mem::take(&mut *self.events.lock())
    }
    /// Looks at the waiting events without taking them (for tests of the queues that send them).
    #[cfg(test)]
    pub(crate) fn waiting_events<R>(&self, f: impl FnOnce(&VecDeque<ConnEvent>) -> R) -> R {
        f(&self.events.lock())
    }
    pub fn has_capacity(&self) -> bool {
        self.pending.load(Ordering::Acquire) < SINK_HIGH_WATER
    }
    pub fn send(&self, event: ConnEvent) {
        if let ConnEvent::Deliver(d) = &event {
            self.pending.fetch_add(d.charge, Ordering::AcqRel);
        }
        // Events left when the connection ends are taken back by its cleanup.
        let was_empty = {
            let mut events = self.events.lock();
            events.push_back(event);
            events.len() == 1
        };
        if was_empty {
            self.ready.notify_one();
        }
    }
    /// Remembers a queue that stopped dispatching for lack of capacity.
    pub fn wait_for_capacity<Q: Origin + 'static>(&self, queue: &Arc<Q>) {
        let mut w = self.waiting.lock();
        if !w.iter().any(|q| std::ptr::addr_eq(q.as_ptr(), Arc::as_ptr(queue))) {
            w.push(Arc::downgrade(queue) as Weak<dyn Origin>);
        }
    }
    /// Called once delivered bytes are written out; wakes queues when capacity returns.
    /// A delivery the connection will not send (its channel or the connection is gone):
    /// its bytes are released and its message goes back to the queue it came from.
    pub fn return_undelivered(&self, d: Delivery) {
        self.release(d.charge);
        if let Some(q) = d.queue {
            q.undelivered(d.item, !d.no_ack);
        }
    }

    pub fn release(&self, bytes: usize) {
        let before = self.pending.fetch_sub(bytes, Ordering::AcqRel);
        let after = before.saturating_sub(bytes);
        if after < SINK_HIGH_WATER / 2 {
            let waiting = std::mem::take(&mut *self.waiting.lock());
            for q in waiting.iter().filter_map(Weak::upgrade) {
                q.redispatch();
            }
        }
    }
}

/// Per-channel flow state shared by the channel and its consumers.
#[derive(Debug, Default)]
pub struct ChannelFlow {
    /// basic.qos global=true limit across the channel; 0 means none.
    pub global_prefetch: AtomicU32,
    /// Deliveries to this channel's consumers not settled yet, and their bytes.
    pub unacked: AtomicU32,
    pub unacked_bytes: AtomicU64,
    /// False after channel.flow active=false.
    pub paused: AtomicBool,
    /// The broker's own bound on unsettled deliveries, whatever the prefetch (0 included):
    /// a consumer that never acknowledges stops receiving here instead of pulling a whole
    /// queue into memory (`max_unacked_per_channel`, `max_unacked_bytes_per_channel`).
    pub limits: UnackedLimits,
}

/// Bounds on what one channel may hold unacknowledged.
#[derive(Debug, Clone, Copy)]
pub struct UnackedLimits {
    pub count: u32,
    pub bytes: u64,
}

impl Default for UnackedLimits {
    fn default() -> Self {
        UnackedLimits { count: u32::MAX, bytes: u64::MAX }
    }
}

impl ChannelFlow {
    pub fn new(limits: UnackedLimits) -> Self {
        ChannelFlow { limits, ..Default::default() }
    }
    /// Returns the channel's share of one settled delivery's credit.
    pub fn settle(&self, bytes: usize) {
        let _ = self.unacked.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| Some(v.saturating_sub(1)));
        let _ = self
            .unacked_bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| Some(v.saturating_sub(bytes as u64)));
    }
    /// Whether the channel holds as many unsettled deliveries (or bytes) as it may.
    pub fn at_limit(&self) -> bool {
        self.unacked.load(Ordering::Acquire) >= self.limits.count
            || self.unacked_bytes.load(Ordering::Acquire) >= self.limits.bytes
    }
}

#[derive(Debug)]
pub struct Consumer {
    pub tag: ShortStr,
    pub channel: u16,
    pub no_ack: bool,
    pub exclusive: bool,
    pub arguments: FieldTable,
    /// x-priority: consumers with a higher one get messages first.
    pub priority: i64,
    /// basic.qos global=false limit in force when the consumer started; 0 means none.
    pub prefetch: u32,
    pub unacked: AtomicU32,
    pub flow: Arc<ChannelFlow>,
    pub sink: Arc<ConnectionSink>,
}

impl Consumer {
    pub fn connection_id(&self) -> u64 {
        self.sink.connection_id
    }
    /// Whether this is the consumer `tag` of channel `channel` of connection `connection_id`.
    pub fn is(&self, connection_id: u64, channel: u16, tag: &ShortStr) -> bool {
        self.channel == channel && self.connection_id() == connection_id && &self.tag == tag
    }
    /// Whether the consumer may take one more message now (sink capacity aside).
    pub fn has_credit(&self) -> bool {
        if self.flow.paused.load(Ordering::Acquire) {
            return false;
        }
        if self.no_ack {
            return true;
        }
        let own = self.prefetch == 0 || self.unacked.load(Ordering::Acquire) < self.prefetch;
        let global = self.flow.global_prefetch.load(Ordering::Acquire);
        own && (global == 0 || self.flow.unacked.load(Ordering::Acquire) < global) && !self.flow.at_limit()
    }
    /// Counts a delivery of `bytes` against the consumer's and its channel's credit.
    pub fn charge_unacked(&self, bytes: usize) {
        if !self.no_ack {
            self.unacked.fetch_add(1, Ordering::AcqRel);
            self.flow.unacked.fetch_add(1, Ordering::AcqRel);
            self.flow.unacked_bytes.fetch_add(bytes as u64, Ordering::AcqRel);
        }
    }
    /// Returns the credit of one settled delivery of `bytes`.
    pub fn settle(&self, bytes: usize) {
        let _ = self.unacked.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| Some(v.saturating_sub(1)));
        self.flow.settle(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn consumer(flow: Arc<ChannelFlow>, prefetch: u32) -> Consumer {
        Consumer {
            tag: ShortStr::from("c"),
            channel: 1,
            no_ack: false,
            exclusive: false,
            arguments: FieldTable::default(),
            priority: 0,
            prefetch,
            unacked: AtomicU32::new(0),
            flow,
            sink: ConnectionSink::new(1),
        }
    }

    #[test]
    fn the_channel_bound_applies_whatever_the_prefetch() {
        let flow = Arc::new(ChannelFlow::new(UnackedLimits { count: 3, bytes: 1000 }));
        let a = consumer(flow.clone(), 0);
        let b = consumer(flow.clone(), 10);
        for _ in 0..2 {
            assert!(a.has_credit());
            a.charge_unacked(10);
        }
        assert!(b.has_credit());
        b.charge_unacked(10);
        // Three on the channel: neither consumer may take more, prefetch 0 included.
        assert!(!a.has_credit() && !b.has_credit());
        a.settle(10);
        assert!(a.has_credit() && b.has_credit());
        // Bytes: one large delivery fills the channel.
        b.charge_unacked(990);
        assert!(!a.has_credit());
        b.settle(990);
        assert!(a.has_credit());
        assert_eq!(flow.unacked.load(Ordering::Acquire), 2);
        assert_eq!(flow.unacked_bytes.load(Ordering::Acquire), 20);
    }

    #[test]
    fn auto_ack_consumers_are_not_charged() {
        let flow = Arc::new(ChannelFlow::new(UnackedLimits { count: 1, bytes: 1 }));
        let mut c = consumer(flow.clone(), 0);
        c.no_ack = true;
        c.charge_unacked(100);
        c.charge_unacked(100);
        assert!(c.has_credit());
        assert_eq!(flow.unacked.load(Ordering::Acquire), 0);
    }
}
