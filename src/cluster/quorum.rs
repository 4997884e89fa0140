//! A quorum queue as a deterministic state machine, after RabbitMQ's `rabbit_fifo`.
//!
//! Every member of the queue's Raft group applies the same commands in the same order and so
//! reaches the same state: which messages wait, which consumer holds which message, how often
//! each was delivered. Nothing here reads a clock, a random number or a hash order: time comes
//! in the commands (the leader stamps them), maps are ordered. A command's effects (a message
//! handed to a consumer, a dead letter) are returned to the caller, which acts on those that
//! concern its own node: a consumer is served by the node its channel is on.
//!
//! The commands, as `rabbit_fifo` names them: enqueue, checkout (a consumer with its
//! prefetch), settle (ack), return (requeue: the delivery count goes up), discard (reject
//! without requeue: dead-lettered), dequeue (basic.get), cancel, and `down` (every consumer of
//! a node that left: what they held goes back).

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

/// A consumer across the cluster: the node its channel is on and the id that node gave it.
pub type ConsumerKey = (u64, u64);

/// A message as the log holds it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Msg {
    pub exchange: String,
    pub routing_key: String,
    /// The content header's property flags and list, as published.
    pub properties: Bytes,
    pub body: Bytes,
    /// The per-message TTL (`expiration`), in milliseconds.
    pub ttl: Option<u64>,
}

impl Msg {
    fn size(&self) -> u64 {
        self.body.len() as u64
    }
}

/// `x-overflow` as a quorum queue has it (RabbitMQ's quorum queues have no reject-publish-dlx).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overflow {
    #[default]
    DropHead,
    RejectPublish,
}

/// The settings of a queue that its state machine applies.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct Settings {
    pub max_length: Option<u64>,
    pub max_length_bytes: Option<u64>,
    pub overflow: Overflow,
    /// A message returned more often than this is dead-lettered (`delivery_limit`) or dropped.
    pub delivery_limit: Option<u64>,
    pub single_active_consumer: bool,
    pub message_ttl: Option<u64>,
    /// Whether the queue has a dead-letter exchange: without one, dead letters are dropped.
    pub dead_letters: bool,
}

impl Settings {
    /// A quorum queue's settings from its parsed (or policy-resolved) arguments.
    pub fn from_arguments(args: &crate::broker::arguments::QueueArguments) -> Settings {
        use crate::broker::arguments::Overflow as ArgOverflow;
        Settings {
            max_length: args.max_length,
            max_length_bytes: args.max_length_bytes,
            overflow: match args.overflow {
                ArgOverflow::DropHead => Overflow::DropHead,
                _ => Overflow::RejectPublish,
            },
            delivery_limit: args.delivery_limit,
            single_active_consumer: args.single_active_consumer,
            message_ttl: args.message_ttl,
            dead_letters: args.dead_letter_exchange.is_some(),
        }
    }
}

/// Why a message left the queue without being acknowledged (RabbitMQ's x-death reasons).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Rejected,
    Expired,
    MaxLen,
    DeliveryLimit,
}

/// A message in the queue and how often it went out.
#[derive(Serialize, Deserialize, Debug, Clone)]
struct Slot {
    msg: Arc<Msg>,
    /// Returns so far (the `x-delivery-count` header of a redelivery).
    delivery_count: u32,
    /// Given to a consumer at least once: a later delivery is `redelivered`.
    delivered: bool,
    /// When it expires, in ms since the epoch (0: never).
    expires_at: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default)]
struct ConsumerState {
    /// At most this many unsettled messages (0: [`UNLIMITED_PREFETCH`]).
    prefetch: u32,
    /// Held by the consumer, until settled (a no-ack consumer's node settles each message
    /// once it is written out).
    held: BTreeSet<u64>,
    /// basic.cancel: no new deliveries; gone once it holds nothing.
    cancelled: bool,
}

/// What a prefetch of 0 (no limit) becomes, as RabbitMQ's quorum queues make it: a consumer,
/// with acks or without, holds at most this many messages not yet settled (a no-ack
/// consumer's node settles each once it is written to the client), so that one consumer
/// cannot take a whole queue into one node's buffers at once.
pub const UNLIMITED_PREFETCH: u32 = 2000;

impl ConsumerState {
    fn has_credit(&self) -> bool {
        let limit = if self.prefetch == 0 { UNLIMITED_PREFETCH } else { self.prefetch };
        !self.cancelled && (self.held.len() as u32) < limit
    }
}

/// What applying a command asks of the nodes.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Hand message `id` to a consumer (on the consumer's node).
    Deliver { consumer: ConsumerKey, id: u64, msg: Arc<Msg>, redelivered: bool, delivery_count: u32 },
    /// Republish to the dead-letter exchange (done once, by the leader).
    DeadLetter { msg: Arc<Msg>, reason: Reason, delivery_count: u32 },
}

/// What a command answers its proposer.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum Outcome {
    Ok,
    /// reject-publish: the enqueue was refused (the publisher gets a nack).
    Rejected,
    /// basic.get's answer: the message, its id, redelivered, delivery count, messages left.
    Got(Option<(u64, Arc<Msg>, bool, u32)>, u32),
    /// purge's answer.
    Count(u32),
    /// A definition change this node's broker refused when it applied it (every node
    /// refuses it alike).
    Refused(crate::broker::replicated::Refusal),
}

/// One quorum queue's state.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct QuorumQueue {
    pub settings: Settings,
    next_id: u64,
    messages: BTreeMap<u64, Slot>,
    /// Returned messages, served before new ones (in the order they came back).
    returns: VecDeque<u64>,
    /// Messages never handed out, in enqueue order.
    ready: VecDeque<u64>,
    consumers: BTreeMap<ConsumerKey, ConsumerState>,
    /// Round-robin order of the consumers (registration order; the first is the single
    /// active consumer).
    order: VecDeque<ConsumerKey>,
    ready_bytes: u64,
}

impl QuorumQueue {
    pub fn new(settings: Settings) -> Self {
        QuorumQueue { settings, ..Default::default() }
    }

    /// Messages waiting (ready, returns included).
    pub fn ready_count(&self) -> u32 {
        (self.ready.len() + self.returns.len()) as u32
    }
    /// Messages out with consumers.
    pub fn unacked_count(&self) -> u32 {
        (self.messages.len() - self.ready.len() - self.returns.len()) as u32
    }
    pub fn consumer_count(&self) -> u32 {
        self.consumers.values().filter(|c| !c.cancelled).count() as u32
    }
    /// The consumers (node and id) that are still consuming.
    pub fn consumers(&self) -> impl Iterator<Item = ConsumerKey> + '_ {
        self.consumers.iter().filter(|(_, c)| !c.cancelled).map(|(k, _)| *k)
    }

    pub fn enqueue(&mut self, msg: Msg, now: u64, fx: &mut Vec<Effect>) -> Outcome {
        let size = msg.size();
        if self.settings.overflow == Overflow::RejectPublish && self.over_limit(1, size) {
            return Outcome::Rejected;
        }
        let ttl = match (self.settings.message_ttl, msg.ttl) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let id = self.next_id;
        self.next_id += 1;
        let expires_at = ttl.map_or(0, |t| now.saturating_add(t).max(1));
        self.messages.insert(id, Slot { msg: Arc::new(msg), delivery_count: 0, delivered: false, expires_at });
        self.ready.push_back(id);
        self.ready_bytes += size;
        self.drop_head(fx);
        self.expire(now, fx);
        self.dispatch(now, fx);
        Outcome::Ok
    }

    /// New settings (a policy changed): a length limit now exceeded drops or dead-letters from
    /// the head with drop-head overflow, as RabbitMQ's quorum queue does on a policy change; a
    /// new TTL applies to messages enqueued from now on.
    pub fn set_settings(&mut self, settings: Settings, now: u64, fx: &mut Vec<Effect>) {
        self.settings = settings;
        self.drop_head(fx);
        self.expire(now, fx);
        self.dispatch(now, fx);
    }

    /// With drop-head overflow, drops (or dead-letters) from the head until within the limits.
    fn drop_head(&mut self, fx: &mut Vec<Effect>) {
        if self.settings.overflow != Overflow::DropHead {
            return;
        }
        while self.over_limit(0, 0) {
            match self.pop_ready() {
                Some(head) => self.dead_letter(head, Reason::MaxLen, fx),
                None => break,
            }
        }
    }

    /// Whether the queue with `extra` more messages of `bytes` in all would be over a length
    /// limit (ready messages count, as in RabbitMQ).
    fn over_limit(&self, extra: u64, bytes: u64) -> bool {
        let n = self.ready_count() as u64 + extra;
        let b = self.ready_bytes + bytes;
        self.settings.max_length.is_some_and(|m| n > m) || self.settings.max_length_bytes.is_some_and(|m| b > m)
    }

    fn pop_ready(&mut self) -> Option<u64> {
        let id = self.returns.pop_front().or_else(|| self.ready.pop_front())?;
        if let Some(s) = self.messages.get(&id) {
            self.ready_bytes -= s.msg.size();
        }
        Some(id)
    }

    fn peek_ready(&self) -> Option<u64> {
        self.returns.front().or(self.ready.front()).copied()
    }

    fn dead_letter(&mut self, id: u64, reason: Reason, fx: &mut Vec<Effect>) {
        if let Some(s) = self.messages.remove(&id) {
            if self.settings.dead_letters {
                fx.push(Effect::DeadLetter { msg: s.msg, reason, delivery_count: s.delivery_count });
            }
        }
    }

    /// Drops or dead-letters expired messages at the head (as RabbitMQ, only the head expires).
    pub fn expire(&mut self, now: u64, fx: &mut Vec<Effect>) {
        while let Some(id) = self.peek_ready() {
            let expired = self.messages.get(&id).is_some_and(|s| s.expires_at != 0 && s.expires_at <= now);
            if !expired {
                break;
            }
            self.pop_ready();
            self.dead_letter(id, Reason::Expired, fx);
        }
    }

    /// Hands ready messages to consumers with credit, round-robin (only the first consumer
    /// with single active consumer).
    fn dispatch(&mut self, now: u64, fx: &mut Vec<Effect>) {
        self.expire(now, fx);
        let mut idle = 0;
        while self.peek_ready().is_some() && idle < self.order.len() {
            let key = if self.settings.single_active_consumer {
                match self.order.iter().find(|k| self.consumers.get(k).is_some_and(|c| !c.cancelled)) {
                    Some(k) => *k,
                    None => return,
                }
            } else {
                let Some(k) = self.order.pop_front() else { return };
                self.order.push_back(k);
                k
            };
            let Some(c) = self.consumers.get(&key) else {
                idle += 1;
                continue;
            };
            if !c.has_credit() {
                if self.settings.single_active_consumer {
                    return;
                }
                idle += 1;
                continue;
            }
            idle = 0;
            let Some(id) = self.pop_ready() else { return };
            let Some(s) = self.messages.get_mut(&id) else { continue };
            let redelivered = s.delivered;
            s.delivered = true;
            let msg = s.msg.clone();
            let delivery_count = s.delivery_count;
            let c = self.consumers.get_mut(&key).expect("checked above");
            // A no-ack consumer holds it too, until its node says it went out (a settle).
            c.held.insert(id);
            fx.push(Effect::Deliver { consumer: key, id, msg, redelivered, delivery_count });
        }
    }

    /// What `process`'s consumers hold, as deliveries again (`redelivered`): for a node that
    /// installed a snapshot, whose entries delivered them without being applied there.
    pub fn held_by(&self, process: u64) -> Vec<Effect> {
        let mut fx = Vec::new();
        for (key, c) in self.consumers.iter().filter(|(k, _)| k.0 == process) {
            for id in &c.held {
                if let Some(slot) = self.messages.get(id) {
                    fx.push(Effect::Deliver {
                        consumer: *key,
                        id: *id,
                        msg: slot.msg.clone(),
                        redelivered: true,
                        delivery_count: slot.delivery_count,
                    });
                }
            }
        }
        fx
    }

    /// A consumer with its prefetch. With acks or without (`_no_ack`), it holds what it is
    /// given until it is settled: its node settles a no-ack consumer's messages as it writes
    /// them out, as RabbitMQ's quorum queues do.
    pub fn checkout(&mut self, consumer: ConsumerKey, prefetch: u32, _no_ack: bool, now: u64, fx: &mut Vec<Effect>) {
        let c = self.consumers.entry(consumer).or_default();
        c.prefetch = prefetch;
        c.cancelled = false;
        if !self.order.contains(&consumer) {
            self.order.push_back(consumer);
        }
        self.dispatch(now, fx);
    }

    /// basic.cancel: no more deliveries; what it holds may still be settled.
    pub fn cancel(&mut self, consumer: ConsumerKey, now: u64, fx: &mut Vec<Effect>) {
        if let Some(c) = self.consumers.get_mut(&consumer) {
            c.cancelled = true;
        }
        self.forget_if_done(consumer);
        // With a single active consumer, the next one takes over.
        self.dispatch(now, fx);
    }

    fn forget_if_done(&mut self, consumer: ConsumerKey) {
        if self.consumers.get(&consumer).is_some_and(|c| c.cancelled && c.held.is_empty()) {
            self.consumers.remove(&consumer);
            self.order.retain(|k| *k != consumer);
        }
    }

    /// Takes `ids` from the consumer's held set (ids it does not hold are ignored, as a
    /// settle that crossed a `down` is).
    fn take_held(&mut self, consumer: ConsumerKey, ids: &[u64]) -> Vec<u64> {
        let Some(c) = self.consumers.get_mut(&consumer) else { return Vec::new() };
        ids.iter().copied().filter(|id| c.held.remove(id)).collect()
    }

    pub fn settle(&mut self, consumer: ConsumerKey, ids: &[u64], now: u64, fx: &mut Vec<Effect>) {
        for id in self.take_held(consumer, ids) {
            self.messages.remove(&id);
        }
        self.forget_if_done(consumer);
        self.dispatch(now, fx);
    }

    /// Requeue: back to the front, delivery count up; past the delivery limit, dead-lettered.
    pub fn return_(&mut self, consumer: ConsumerKey, ids: &[u64], now: u64, fx: &mut Vec<Effect>) {
        let taken = self.take_held(consumer, ids);
        self.requeue(taken, fx);
        self.forget_if_done(consumer);
        self.dispatch(now, fx);
    }

    fn requeue(&mut self, ids: Vec<u64>, fx: &mut Vec<Effect>) {
        for id in ids {
            let Some(s) = self.messages.get_mut(&id) else { continue };
            s.delivery_count += 1;
            if self.settings.delivery_limit.is_some_and(|l| s.delivery_count as u64 > l) {
                self.dead_letter(id, Reason::DeliveryLimit, fx);
                continue;
            }
            self.ready_bytes += s.msg.size();
            self.returns.push_back(id);
        }
    }

    /// Messages the consumer's node took beyond the client's prefetch and never sent (see
    /// `bridge`'s lookahead): back to the very front, in their order, as if never handed
    /// out (the delivery count stays; `redelivered` only if an earlier delivery went out,
    /// which every return counts).
    pub fn release(&mut self, consumer: ConsumerKey, ids: &[u64], now: u64, fx: &mut Vec<Effect>) {
        let taken = self.take_held(consumer, ids);
        for id in taken.into_iter().rev() {
            let Some(s) = self.messages.get_mut(&id) else { continue };
            s.delivered = s.delivery_count > 0;
            self.ready_bytes += s.msg.size();
            self.returns.push_front(id);
        }
        self.forget_if_done(consumer);
        self.dispatch(now, fx);
    }

    /// Reject without requeue: dead-lettered (or dropped without a dead-letter exchange).
    pub fn discard(&mut self, consumer: ConsumerKey, ids: &[u64], now: u64, fx: &mut Vec<Effect>) {
        for id in self.take_held(consumer, ids) {
            self.dead_letter(id, Reason::Rejected, fx);
        }
        self.forget_if_done(consumer);
        self.dispatch(now, fx);
    }

    /// basic.get: the next message, settled at once with `no_ack`, else held by `consumer`
    /// (a per-channel key) until settled.
    pub fn dequeue(&mut self, consumer: ConsumerKey, no_ack: bool, now: u64, fx: &mut Vec<Effect>) -> Outcome {
        self.expire(now, fx);
        let Some(id) = self.pop_ready() else { return Outcome::Got(None, 0) };
        let Some(s) = self.messages.get_mut(&id) else { return Outcome::Got(None, self.ready_count()) };
        let redelivered = s.delivered;
        s.delivered = true;
        let got = (id, s.msg.clone(), redelivered, s.delivery_count);
        if no_ack {
            self.messages.remove(&id);
        } else {
            // A basic.get holder is a cancelled consumer: it gets nothing else.
            let c = self
                .consumers
                .entry(consumer)
                .or_insert_with(|| ConsumerState { cancelled: true, ..Default::default() });
            c.held.insert(id);
        }
        Outcome::Got(Some(got), self.ready_count())
    }

    /// Every consumer of `node` is gone (its channel closed, or the node left): what they
    /// held goes back, counted as a delivery attempt.
    pub fn down(&mut self, node: u64, channel: Option<u64>, now: u64, fx: &mut Vec<Effect>) {
        let gone: Vec<ConsumerKey> =
            self.consumers.keys().filter(|k| k.0 == node && channel.is_none_or(|c| k.1 == c)).copied().collect();
        for key in gone {
            if let Some(c) = self.consumers.remove(&key) {
                self.requeue(c.held.into_iter().collect(), fx);
            }
            self.order.retain(|k| *k != key);
        }
        self.dispatch(now, fx);
    }

    pub fn purge(&mut self) -> u32 {
        let mut n = 0;
        while let Some(id) = self.pop_ready() {
            self.messages.remove(&id);
            n += 1;
        }
        n
    }

    /// Earliest expiry among ready messages' heads, for the leader's timer.
    pub fn next_expiry(&self) -> Option<u64> {
        let id = self.peek_ready()?;
        self.messages.get(&id).map(|s| s.expires_at).filter(|e| *e != 0)
    }
}

#[cfg(test)]
mod tests;
