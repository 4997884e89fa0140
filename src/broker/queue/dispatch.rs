//! A queue's dispatch: ready messages handed to its consumers in turn (priority, prefetch,
//! single active consumer), `basic.get`, and what becomes of deliveries (settled, rejected,
//! requeued, never delivered) as the channels report it through [`Origin`].

use super::*;

impl Queue {
    pub fn dispatch(self: &Arc<Self>) {
        let mut st = self.state.lock();
        if let Some(s) = &self.stream {
            self.dispatch_stream(&mut st, s);
            return;
        }
        self.dispatch_at(&mut st, Clock::Lazy);
        self.unlock_and_dead_letter(st);
    }

    /// Hands ready messages to consumers; messages expired by `now` are dropped instead.
    pub(super) fn dispatch_at(self: &Arc<Self>, st: &mut QueueState, mut clock: Clock) {
        loop {
            st.refill(&self.name);
            let loaded = st.ready.len();
            self.dispatch_ready(st, &mut clock);
            // Consumers took all that was in memory and may take more: read on from disk.
            if loaded == 0 || !st.ready.is_empty() || (st.tail_len() == 0 && st.after_tail.is_empty()) {
                break;
            }
        }
        st.release_flow();
    }

    /// The consumer to hand the next message to: the single active one, or round-robin among
    /// those with credit and the highest x-priority.
    pub(super) fn pick_consumer(self: &Arc<Self>, st: &QueueState) -> Option<usize> {
        let n = st.consumers.len();
        let candidates = if self.options.args.single_active_consumer { n.min(1) } else { n };
        let mut chosen: Option<(usize, i64)> = None;
        for i in 0..candidates {
            let idx = (st.next_consumer + i) % n;
            let c = &st.consumers[idx];
            if chosen.is_some_and(|(_, p)| c.priority <= p) || !c.has_credit() {
                continue;
            }
            if !c.sink.has_capacity() {
                c.sink.wait_for_capacity(self);
                // Capacity may have come back between the check and the registration.
                if !c.sink.has_capacity() {
                    continue;
                }
            }
            chosen = Some((idx, c.priority));
            if !st.prioritized {
                break;
            }
        }
        chosen.map(|(idx, _)| idx)
    }

    pub(super) fn dispatch_ready(self: &Arc<Self>, st: &mut QueueState, clock: &mut Clock) {
        while !st.ready.is_empty() && !st.consumers.is_empty() {
            let Some(idx) = self.pick_consumer(st) else { return };
            let Some(m) = st.pop_ready() else {
                return;
            };
            if clock.expired(&m) {
                st.discard(m, Reason::Expired);
                continue;
            }
            if !self.options.args.single_active_consumer {
                st.next_consumer = (idx + 1) % st.consumers.len();
            }
            let consumer = st.consumers[idx].clone();
            self.hand_out(st, &consumer, m);
        }
    }

    /// Hands one message to `consumer`: charged to its credit, counted, and sent to its
    /// connection's sink.
    pub(super) fn hand_out(self: &Arc<Self>, st: &mut QueueState, consumer: &Consumer, mut m: QueuedMessage) {
        st.dispatched += 1;
        let size = m.message.size();
        consumer.charge_unacked(size);
        st.count_out(&mut m, consumer.no_ack, false);
        if !consumer.no_ack {
            st.went_out(&m);
        }
        consumer.sink.send(ConnEvent::Deliver(Delivery {
            channel: consumer.channel,
            consumer_tag: consumer.tag.clone(),
            queue: Some(self.clone() as Arc<dyn Origin>),
            item: m,
            no_ack: consumer.no_ack,
            charge: size + DELIVERY_OVERHEAD,
        }));
    }

    /// basic.get: the head message, if any, and how many remain ready.
    pub fn get(self: &Arc<Self>, no_ack: bool) -> Option<(QueuedMessage, u32)> {
        if self.stream.is_some() {
            // basic.get is refused on streams (540) before it gets here.
            return None;
        }
        let mut st = self.state.lock();
        let now = now_ms();
        st.last_used = now;
        st.expire(&self.name, now);
        let Some(mut m) = st.pop_ready() else {
            st.counts.get_empty += 1;
            self.unlock_and_dead_letter(st);
            return None;
        };
        st.count_out(&mut m, no_ack, true);
        if no_ack {
            st.log_ack(&m);
        } else {
            st.log_out(&m, false);
            st.went_out(&m);
        }
        // As RabbitMQ counts after a fetch: expired messages now at the head are gone.
        st.expire(&self.name, now);
        let count = st.ready_count();
        self.unlock_and_dead_letter(st);
        Some((m, count))
    }

    /// Messages acknowledged by a consumer.
    pub fn settle(&self, messages: &[QueuedMessage]) {
        let mut st = self.state.lock();
        for m in messages {
            st.came_back(m);
        }
        st.counts.ack += messages.len() as u64;
        let now = if messages.iter().any(|m| m.stamp != 0) { stats::stamp_now() } else { 0 };
        for m in messages {
            if m.stamp != 0 {
                st.latency().to_ack[0].record(now.saturating_sub(m.stamp));
            }
            st.log_ack(m);
        }
    }

    /// Messages rejected or nacked without requeue: settled, and dead-lettered if the queue
    /// has a dead-letter exchange.
    pub fn reject(self: &Arc<Self>, messages: Vec<QueuedMessage>) {
        let mut st = self.state.lock();
        for m in messages {
            st.came_back(&m);
            st.discard(m, Reason::Rejected);
        }
        self.unlock_and_dead_letter(st);
    }

    /// A logged message went out to a no-ack consumer: it is settled now.
    pub fn settle_delivered(&self, m: &QueuedMessage) {
        if m.logged {
            self.state.lock().log_ack(m);
        }
    }

    /// Puts unacknowledged messages back at their places, marked redelivered. With a delivery
    /// limit (or as a quorum queue) each return is counted in `x-delivery-count`, and a
    /// message returned more often than the limit is dead-lettered instead.
    pub fn requeue(self: &Arc<Self>, messages: impl IntoIterator<Item = QueuedMessage>) {
        let mut st = self.state.lock();
        let limit = st.args.delivery_limit;
        let counted = limit.is_some() || self.options.args.quorum;
        for mut m in messages {
            st.came_back(&m);
            if self.is_deleted() {
                continue;
            }
            m.redelivered = true;
            // Its stamp was the delivery: time in queue from here on would not be one.
            m.stamp = 0;
            if counted {
                m.deliveries += 1;
                if limit.is_some_and(|limit| m.deliveries as u64 > limit) {
                    st.discard(m, Reason::DeliveryLimit);
                    continue;
                }
                m.message = Arc::new(dead_letter::with_delivery_count(&m.message, m.deliveries as u64));
            }
            st.push_ready(m);
        }
        self.dispatch_at(&mut st, Clock::Lazy);
        self.unlock_and_dead_letter(st);
    }

    /// Takes back a dispatched message that never reached its consumer (it was cancelled or its
    /// channel closed meanwhile); it keeps its place and its redelivered flag.
    pub fn requeue_undelivered(self: &Arc<Self>, m: QueuedMessage, counted_unacked: bool) {
        let mut st = self.state.lock();
        if counted_unacked {
            st.came_back(&m);
        }
        if !self.is_deleted() {
            st.push_ready(QueuedMessage { stamp: 0, ..m });
        }
        self.dispatch_at(&mut st, Clock::Lazy);
        self.unlock_and_dead_letter(st);
    }

    /// Adds a consumer, enforcing exclusive consumers as RabbitMQ does (403).
    /// Adds a consumer; returns a cluster ticket its consume-ok waits for (0: none; see
    /// [`Replica::add_consumer`]).
    pub fn add_consumer(self: &Arc<Self>, consumer: Arc<Consumer>) -> AmqpResult<u64> {
        if let Some(r) = &self.replica {
            return r.add_consumer(self, consumer);
        }
        if self.stream.is_some() {
            return self.add_stream_consumer(consumer, crate::broker::arguments::StreamOffset::Next).map(|_| 0);
        }
        let mut st = self.state.lock();
        // A single-active-consumer queue takes no exclusive consumer at all (RabbitMQ's
        // exclusive_consume_unavailable, reported with the same text).
        let sac = self.options.args.single_active_consumer && consumer.exclusive;
        if sac || st.consumers.iter().any(|c| c.exclusive) || (consumer.exclusive && !st.consumers.is_empty()) {
            return Err(AmqpError::access_refused(format!(
                "queue '{}' in vhost '{}' in exclusive use",
                self.name, self.vhost
            )));
        }
        st.prioritized |= consumer.priority != 0;
        st.consumers.push(consumer);
        st.had_consumer = true;
        st.last_used = now_ms();
        self.dispatch_at(&mut st, Clock::Lazy);
        self.unlock_and_dead_letter(st);
        Ok(0)
    }

    /// Removes a consumer; returns true when it was the last and the queue is auto-delete.
    /// With a single active consumer, the next one registered takes over.
    pub fn remove_consumer(self: &Arc<Self>, connection_id: u64, channel: u16, tag: &ShortStr) -> bool {
        if let Some(r) = &self.replica {
            r.remove_consumer(connection_id, channel, tag);
            return false;
        }
        let mut st = self.state.lock();
        st.consumers.retain(|c| !c.is(connection_id, channel, tag));
        st.readers.retain(|r| !r.consumer.is(connection_id, channel, tag));
        if st.next_consumer >= st.consumers.len() {
            st.next_consumer = 0;
        }
        st.prioritized = st.consumers.iter().any(|c| c.priority != 0);
        st.last_used = now_ms();
        if self.options.args.single_active_consumer && !st.consumers.is_empty() {
            self.dispatch_at(&mut st, Clock::Lazy);
        }
        let last = self.options.auto_delete && st.had_consumer && st.consumers.is_empty();
        self.unlock_and_dead_letter(st);
        last
    }

    /// Drops every ready message; returns how many.
    pub fn purge(&self) -> u32 {
        if let Some(r) = &self.replica {
            return r.purge();
        }
        if self.stream.is_some() {
            // queue.purge is refused on streams (540) before it gets here.
            return 0;
        }
        let mut st = self.state.lock();
        st.flow_waiters.drain(..).for_each(|w| w.notify_one());
        let n = st.ready_count();
        let ready: Vec<QueuedMessage> = st.ready.drain(..).collect();
        for m in &ready {
            st.log_ack(m);
        }
        st.after_tail.clear();
        st.ready_bytes = 0;
        st.tail_bytes = 0;
        st.persistent_ready = (0, 0);
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
        st.after_tail.clear();
        st.ready_bytes = 0;
        st.tail_bytes = 0;
        st.flow_waiters.drain(..).for_each(|w| w.notify_one());
        if let Some(mut log) = st.log.take() {
            log.destroy();
        }
        if let Some(s) = &self.stream {
            // Its readers (the consumers' task, stream protocol subscriptions) wake and end.
            s.destroy();
        }
        if let Some(d) = &self.delayed {
            d.destroy();
        }
        st.readers.clear();
        for c in st.consumers.drain(..) {
            c.sink.send(ConnEvent::ConsumerCancelled { channel: c.channel, consumer_tag: c.tag.clone() });
        }
        n
    }
}

/// What channels tell a queue about the deliveries it made (see [`Origin`]).
impl Origin for Queue {
    fn acked(self: Arc<Self>, messages: &[QueuedMessage]) {
        if self.stream.is_some() {
            return self.stream_settled(messages, true);
        }
        self.settle(messages);
        self.dispatch();
    }
    fn rejected(self: Arc<Self>, messages: Vec<QueuedMessage>) {
        if self.stream.is_some() {
            return self.stream_settled(&messages, false);
        }
        self.reject(messages);
        self.dispatch();
    }
    fn requeued(self: Arc<Self>, messages: Vec<QueuedMessage>) {
        if self.stream.is_some() {
            return self.stream_settled(&messages, false);
        }
        self.requeue(messages);
    }
    fn undelivered(self: Arc<Self>, message: QueuedMessage, counted_unacked: bool) {
        if self.stream.is_some() {
            let settled = if counted_unacked { std::slice::from_ref(&message) } else { &[] };
            return self.stream_settled(settled, false);
        }
        self.requeue_undelivered(message, counted_unacked);
    }
    fn sent_no_ack(&self, message: &QueuedMessage) {
        self.settle_delivered(message);
    }
    fn redispatch(self: Arc<Self>) {
        self.dispatch();
    }
    fn refuses_reject(&self) -> Option<AmqpError> {
        self.stream_refusal("basic.nack and basic.reject")
    }
}
