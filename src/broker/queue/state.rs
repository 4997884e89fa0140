//! A queue's state behind its lock: the ready messages in memory (in priority, then publish
//! order), the on-disk tail of a queue with a log, the window of messages kept in memory, and
//! the bookkeeping of expiry, length limits, flow control and dead letters. `Queue` in the
//! parent module takes the lock and drives it; nothing here blocks on I/O except through the
//! queue's `MessageLog`.

use super::*;

#[derive(Debug, Default)]
pub(super) struct QueueState {
    pub(super) ready: VecDeque<QueuedMessage>,
    pub(super) next_seq: u64,
    pub(super) unacked: usize,
    pub(super) consumers: Vec<Arc<Consumer>>,
    /// A stream's consumers with their offsets (see `stream`); empty for other queues.
    pub(super) readers: Vec<super::stream::Reader>,
    /// A stream's task that serves its readers as the log grows is running.
    pub(super) stream_watched: bool,
    /// Stream protocol subscriptions reading a stream (see `Queue::stream_reader`).
    pub(super) stream_subscriptions: u32,
    pub(super) next_consumer: usize,
    pub(super) had_consumer: bool,
    pub(super) log: Option<Box<dyn MessageLog>>,
    /// Publishers waiting for this queue to drain.
    pub(super) flow_waiters: Vec<Arc<tokio::sync::Notify>>,
    /// Body bytes of the ready messages in memory, and of those waiting on disk.
    pub(super) ready_bytes: u64,
    pub(super) tail_bytes: u64,
    /// Messages to dead-letter once the lock is released.
    pub(super) dead: Vec<(QueuedMessage, Reason)>,
    /// Some consumer has a non-zero x-priority.
    pub(super) prioritized: bool,
    /// When the queue was last used (declared, consumed from, got from), for x-expires.
    pub(super) last_used: u64,
    /// Messages that come after the on-disk tail but are in memory: those a page-out could
    /// not write (the disk failed), and the ones published after them. They join `ready`
    /// once the tail is read back.
    pub(super) after_tail: VecDeque<QueuedMessage>,
    /// Messages handed to consumers so far, and the count as last seen by the flow check
    /// with when it was seen: a count that has not moved for [`STALL_AFTER`] means stalled
    /// consumers.
    pub(super) dispatched: u64,
    pub(super) flow_probe: Option<(u64, Instant)>,
    /// The broker's memory pressure, for a queue that pages to disk under it.
    pub(super) pressure: Option<Arc<AtomicBool>>,
    /// Message counters, their rates as last sampled, and the latency distributions (made
    /// when the first stamped message leaves).
    pub(super) counts: MessageCounts,
    pub(super) meter: stats::RateMeter,
    pub(super) latency: Option<Box<stats::QueueLatency>>,
    /// Depths (ready, unacked) at the last sample, when, and their rates of change per second.
    pub(super) last_depth: Option<(u64, u64, u64)>,
    pub(super) depth_rates: (f64, f64),
    /// Counts and lengths over time, made at the first sample with anything in them.
    pub(super) history: Option<Box<super::QueueHistory>>,
    /// Body bytes of the messages out with consumers (not yet acked).
    pub(super) unacked_bytes: u64,
    /// Persistent messages (count, body bytes) among the ready ones, in memory or on disk,
    /// and among those out with consumers: RabbitMQ's `messages_persistent` of a durable
    /// queue. Kept where messages enter and leave the ready list (`push_ready`,
    /// `pop_ready`, the tail, purge) and the unacked set (`went_out`, `came_back`).
    pub(super) persistent_ready: (u64, u64),
    pub(super) persistent_unacked: (u64, u64),
    /// Messages written to the queue's log and read back from it (RabbitMQ's disk_writes and
    /// disk_reads), counted under the lock the writes and reads already hold.
    pub(super) disk_writes: u64,
    pub(super) disk_reads: u64,
    /// The settings the queue runs with: its declared arguments resolved against the policy
    /// and operator policy that apply to it (`applied`), kept here so that a policy change
    /// takes effect under the lock every publish already holds.
    pub(super) args: QueueArguments,
    pub(super) applied: crate::broker::policy::Applied,
}

/// Adds (`up`) or takes away a message from a (count, bytes) pair.
pub(super) fn tally(slot: &mut (u64, u64), m: &Message, up: bool) {
    let len = m.body.len() as u64;
    if up {
        slot.0 += 1;
        slot.1 += len;
    } else {
        slot.0 = slot.0.saturating_sub(1);
        slot.1 = slot.1.saturating_sub(len);
    }
}

impl QueueState {
    pub(super) fn latency(&mut self) -> &mut stats::QueueLatency {
        self.latency.get_or_insert_with(Default::default)
    }

    /// Counts a message leaving to a consumer (`get` false) or a basic.get, and records its
    /// time in queue if it is stamped; it is then stamped with the delivery, for its time to
    /// ack (or unstamped, when no ack will come).
    pub(super) fn count_out(&mut self, m: &mut QueuedMessage, no_ack: bool, get: bool) {
        match (get, no_ack) {
            (false, false) => self.counts.deliver += 1,
            (false, true) => self.counts.deliver_no_ack += 1,
            (true, false) => self.counts.get += 1,
            (true, true) => self.counts.get_no_ack += 1,
        }
        if m.redelivered {
            self.counts.redeliver += 1;
        }
        if m.stamp != 0 {
            let now = stats::stamp_now();
            self.latency().in_queue[0].record(now.saturating_sub(m.stamp));
            m.stamp = if no_ack { 0 } else { now };
        }
    }

    pub(super) fn tail_len(&self) -> u64 {
        self.log.as_ref().map_or(0, |l| l.tail_len())
    }

    /// Messages ready for consumers: in memory and on disk.
    pub(super) fn ready_count(&self) -> u32 {
        (self.ready.len() as u64 + self.tail_len() + self.after_tail.len() as u64).min(u32::MAX as u64) as u32
    }

    /// Whether the queue holds more ready messages, or bytes of them, than its publishers may
    /// run ahead of its consumers.
    pub(super) fn over_flow_mark(&self) -> bool {
        self.ready_count() as usize > FLOW_HIGH || self.bytes() > FLOW_HIGH_BYTES
    }

    /// Wakes waiting publishers once the queue is below both low marks or has no consumers.
    pub(super) fn release_flow(&mut self) {
        let below = (self.ready_count() as usize) < FLOW_LOW && self.bytes() < FLOW_LOW_BYTES;
        if !self.flow_waiters.is_empty() && (self.consumers.is_empty() || below) {
            for w in self.flow_waiters.drain(..) {
                w.notify_one();
            }
        }
    }

    /// Whether the queue's consumers took a message lately. Asked only while the queue is over
    /// its flow mark, so the clock is read only then.
    pub(super) fn consumers_progressing(&mut self) -> bool {
        let now = Instant::now();
        match self.flow_probe {
            Some((seen, at)) if seen == self.dispatched => now.duration_since(at) < STALL_AFTER,
            _ => {
                self.flow_probe = Some((self.dispatched, now));
                true
            }
        }
    }

    /// Whether the queue keeps only the small window in memory: while memory is short, and,
    /// for a queue that pages to disk under pressure, as long as part of it is still on disk.
    /// A front that grew while the tail is on disk could not go back to disk (it would have
    /// to go before the tail), so such a queue does not let it grow.
    pub(super) fn small_window(&self) -> bool {
        self.pressure.as_ref().is_some_and(|p| p.load(Ordering::Acquire) || self.tail_len() > 0)
    }

    /// How many ready messages, and how many bytes of them, may be in memory now: the
    /// window, or the small one (see [`QueueState::small_window`]).
    pub(super) fn window(&self) -> (usize, u64) {
        if self.small_window() {
            (PRESSURE_WINDOW, PRESSURE_WINDOW_BYTES)
        } else {
            (MEMORY_WINDOW, MEMORY_WINDOW_BYTES)
        }
    }

    /// Whether the messages in memory fill the window, by count or by bytes.
    pub(super) fn window_full(&self) -> bool {
        let (count, bytes) = self.window();
        self.ready.len() >= count || self.ready_bytes >= bytes
    }

    /// Whether a message here may carry an expiration: one in memory does, or some are on
    /// disk (not looked at until read back).
    pub(super) fn may_expire(&self) -> bool {
        self.tail_len() > 0 || self.ready.iter().any(|m| m.expires_at != 0)
    }

    /// Reads the next stretch of the on-disk tail once the in-memory front runs low.
    pub(super) fn refill(&mut self, name: &ShortStr) {
        if self.tail_len() == 0 && !self.after_tail.is_empty() {
            self.ready.append(&mut self.after_tail);
        }
        // Below half the window, read up to half a window more (by count; by bytes, up to
        // the window): one sequential read per half window, not one per message consumed.
        let (count, bytes) = self.window();
        let batch = (count / 2).max(1);
        if self.ready.len() >= batch || self.ready_bytes >= bytes / 2 || self.tail_len() == 0 {
            return;
        }
        let Some(log) = &mut self.log else { return };
        match log.read_tail(batch, bytes - self.ready_bytes) {
            Ok(loaded) => {
                self.disk_reads += loaded.len() as u64;
                for m in loaded {
                    let size = m.message.body.len() as u64;
                    self.tail_bytes = self.tail_bytes.saturating_sub(size);
                    self.ready_bytes += size;
                    self.ready.push_back(QueuedMessage::loaded(m, 0));
                }
            }
            Err(e) => tracing::error!("queue '{name}': cannot read messages back from disk: {e}"),
        }
    }

    /// Adds a ready message at its place (publish order within its priority).
    pub(super) fn push_ready(&mut self, m: QueuedMessage) {
        self.ready_bytes += m.message.body.len() as u64;
        if m.message.persistent {
            tally(&mut self.persistent_ready, &m.message, true);
        }
        if self.ready.back().is_none_or(|b| b.order() <= m.order()) {
            self.ready.push_back(m);
        } else {
            let at = self.ready.partition_point(|r| r.order() < m.order());
            self.ready.insert(at, m);
        }
    }

    pub(super) fn pop_ready(&mut self) -> Option<QueuedMessage> {
        let m = self.ready.pop_front()?;
        self.ready_bytes = self.ready_bytes.saturating_sub(m.message.body.len() as u64);
        if m.message.persistent {
            tally(&mut self.persistent_ready, &m.message, false);
        }
        Some(m)
    }

    /// A message taken from the ready list went to a consumer that will ack it (or to a
    /// basic.get with ack): it is counted as unacknowledged.
    pub(super) fn went_out(&mut self, m: &QueuedMessage) {
        self.unacked += 1;
        self.unacked_bytes += m.message.body.len() as u64;
        if m.message.persistent {
            tally(&mut self.persistent_unacked, &m.message, true);
        }
    }

    /// An unacknowledged message came back: acked, rejected or requeued.
    pub(super) fn came_back(&mut self, m: &QueuedMessage) {
        self.unacked = self.unacked.saturating_sub(1);
        self.unacked_bytes = self.unacked_bytes.saturating_sub(m.message.body.len() as u64);
        if m.message.persistent {
            tally(&mut self.persistent_unacked, &m.message, false);
        }
    }

    /// Body bytes of every ready message.
    pub(super) fn bytes(&self) -> u64 {
        self.ready_bytes + self.tail_bytes
    }

    /// A message leaves the queue without reaching a consumer: it is settled in the log and
    /// kept for dead-lettering if the queue has a dead-letter exchange.
    pub(super) fn discard(&mut self, m: QueuedMessage, reason: Reason) {
        self.log_ack(&m);
        if self.args.dead_letter_exchange.is_some() {
            self.dead.push((m, reason));
        }
    }

    /// Drops (or dead-letters) expired messages at the head, as RabbitMQ does: a message
    /// behind one that has not expired waits until it reaches the head, and never reaches a
    /// consumer once expired.
    pub(super) fn expire(&mut self, name: &ShortStr, now: u64) {
        loop {
            self.refill(name);
            match self.ready.front() {
                Some(m) if m.expires_at != 0 && m.expires_at <= now => {
                    let m = self.pop_ready().expect("front exists");
                    self.discard(m, Reason::Expired);
                }
                _ => return,
            }
        }
    }

    /// With drop-head overflow, drops the oldest messages until the queue is within its limits.
    pub(super) fn enforce_limits(&mut self, name: &ShortStr) {
        if self.args.overflow == Overflow::DropHead {
            self.drop_head(name);
        }
    }

    /// Drops (or dead-letters) the oldest messages until the queue is within its limits.
    pub(super) fn drop_head(&mut self, name: &ShortStr) {
        let (max_length, max_bytes) = (self.args.max_length, self.args.max_length_bytes);
        loop {
            let over = max_length.is_some_and(|max| self.ready_count() as u64 > max)
                || max_bytes.is_some_and(|max| self.bytes() > max);
            if !over {
                return;
            }
            self.refill(name);
            let Some(m) = self.pop_ready() else { return };
            self.discard(m, Reason::MaxLen);
        }
    }

    /// Whether one more message of `size` body bytes would break a length limit.
    pub(super) fn would_overflow(&self, size: u64) -> bool {
        self.args.max_length.is_some_and(|max| self.ready_count() as u64 + 1 > max)
            || self.args.max_length_bytes.is_some_and(|max| self.bytes() + size > max)
    }

    /// Records in the log that a message left the queue for good.
    pub(super) fn log_ack(&mut self, m: &QueuedMessage) {
        if !m.logged {
            return;
        }
        if let Some(Err(e)) = self.log.as_mut().map(|l| l.ack(m.seq)) {
            tracing::error!("cannot record an ack: {e}");
        }
    }

    /// Records that a message went to a consumer that must ack it. No-ack deliveries are
    /// settled in the log only once written out (see [`Queue::settle_delivered`]).
    pub(super) fn log_out(&mut self, m: &QueuedMessage, no_ack: bool) {
        if m.logged && !no_ack {
            if let Some(log) = &mut self.log {
                log.delivered(m.seq);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumers_that_take_nothing_for_a_while_are_stalled() {
        let mut st = QueueState::default();
        // The first look starts the probe; within STALL_AFTER consumers still count as live.
        assert!(st.consumers_progressing());
        assert!(st.consumers_progressing());
        // Nothing dispatched since the probe started, long enough ago: stalled.
        st.flow_probe = Some((st.dispatched, Instant::now() - STALL_AFTER * 2));
        assert!(!st.consumers_progressing());
        assert!(!st.consumers_progressing());
        // One message taken: live again, and the probe restarts from now.
        st.dispatched += 1;
        assert!(st.consumers_progressing());
        assert!(st.flow_probe.is_some_and(|(seen, at)| seen == 1 && at.elapsed() < STALL_AFTER));
    }
}
