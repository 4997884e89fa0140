//! Classic queues of a cluster: each lives on the node that declared it (its home) and is
//! reachable from every node, as RabbitMQ's classic queues are.
//!
//! - Where a queue lives is a replicated definition (`PlaceQueue`, `UnplaceQueue`): every
//!   node applies it in log order, so a name means one queue in the whole cluster. The home
//!   makes the queue itself; every other node makes a *face* ([`face`]): a `Queue` object
//!   that routes, counts and takes consumers like any other, and forwards what it is asked
//!   to the home over the cluster port.
//! - The home serves those requests ([`home`]): it enqueues forwarded publishes and answers
//!   once they are on its disk (the publisher's confirm waits for that answer), registers
//!   other nodes' consumers on the real queue, and hands their deliveries back when the
//!   consumer's node polls for them (a poll also carries that node's acks, rejects and
//!   requeues).
//! - [`placement`]: applying placements on this node, their part of a snapshot, and the
//!   reconciler that places queues made another way (the HTTP API, a restart) and unplaces
//!   those that went (auto-delete, x-expires, a deleted vhost).
//!
//! Deliberately not replicated: the messages. A classic queue whose home is down is
//! unreachable until it returns (publishes to it are nacked, its remote consumers are
//! cancelled); quorum queues are the replicated kind.

pub mod face;
pub mod home;
pub mod placement;

use super::types::QueueName;
use crate::broker::message::Message;
use crate::broker::replicated::Refusal;
use crate::types::ShortStr;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// How long a face's poll waits at the home for deliveries before it answers empty.
pub const POLL_WAIT_MS: u64 = 1000;
/// A node that has not polled its consumers' deliveries for this long is gone: the home drops
/// its consumers and what they held goes back to the queue.
pub const POLL_SILENCE: std::time::Duration = std::time::Duration::from_secs(10);
/// A face whose home has not answered for this long cancels its consumers (the client gets
/// basic.cancel, as RabbitMQ's consumers of a queue whose node went down).
pub const HOME_SILENCE: std::time::Duration = std::time::Duration::from_secs(5);

/// A message as it travels to and from the home.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Wire {
    pub exchange: String,
    pub routing_key: String,
    pub properties: Bytes,
    pub body: Bytes,
    pub persistent: bool,
}

impl Wire {
    pub fn of(m: &Message) -> Wire {
        Wire {
            exchange: m.exchange.to_string(),
            routing_key: m.routing_key.to_string(),
            properties: m.properties.clone(),
            body: m.body.to_bytes(),
            persistent: m.persistent,
        }
    }
    pub fn message(&self) -> Message {
        Message::new(
            ShortStr::from(self.exchange.as_str()),
            ShortStr::from(self.routing_key.as_str()),
            self.properties.clone(),
            self.body.clone(),
            self.persistent,
        )
    }
}

/// What became of a delivery, as its consumer's node tells the home.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    Ack,
    /// Rejected or nacked without requeue: dead-lettered if the queue does that.
    Reject,
    /// Back to the queue, redelivered.
    Requeue,
    /// Never reached the client (its channel closed meanwhile): back as it was.
    Undelivered,
}

/// A request of a face's node to a queue's home.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub enum Op {
    /// Messages for queues of the home: each answered once enqueued (and on disk, when the
    /// queue keeps it there).
    Publish {
        messages: Vec<(QueueName, Wire)>,
    },
    /// A consumer of the asking node (`key`, its own number for it) on a queue of the home.
    Consume {
        key: u64,
        queue: QueueName,
        prefetch: u32,
        no_ack: bool,
        exclusive: bool,
        priority: i64,
        /// The consumer's arguments (AMQP table encoding, hex).
        arguments: String,
    },
    Cancel {
        key: u64,
    },
    /// What became of earlier deliveries, by the ids they were sent with.
    Settle {
        settles: Vec<(u64, Settle)>,
    },
    /// The deliveries waiting for the asking node's consumers (within `wait_ms` if none wait
    /// yet). `keys`: the consumers the asking node believes it has here; those the home does
    /// not know are answered cancelled. Without `deliveries`, only that (the asking node's
    /// client connections are behind: the deliveries wait at the home).
    Poll {
        keys: Vec<u64>,
        wait_ms: u64,
        deliveries: bool,
    },
    Get {
        queue: QueueName,
        no_ack: bool,
    },
    Purge {
        queue: QueueName,
    },
    Delete {
        queue: QueueName,
        if_unused: bool,
        if_empty: bool,
        user: String,
    },
    /// Ready, unacknowledged and consumer counts of queues of the home.
    Counts {
        queues: Vec<QueueName>,
    },
}

/// The outcome of one forwarded publish.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    Ok,
    /// A full queue with `x-overflow: reject-publish` refused it: a nack.
    Rejected,
    /// The queue is not (or no longer) on the home, or its disk failed: a nack.
    Failed,
}

/// A message for a consumer of the asking node.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct RemoteDelivery {
    /// The consumer, as the asking node numbered it.
    pub key: u64,
    /// The delivery's id at the home: what the consumer's node settles it by.
    pub id: u64,
    pub message: Wire,
    pub redelivered: bool,
}

/// A basic.get's answer: the message (and its id to settle it by), and the ready count after.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct Got {
    pub id: u64,
    pub message: Wire,
    pub redelivered: bool,
    pub remaining: u32,
}

/// The home's answer.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub enum Reply {
    Published(Vec<Enqueued>),
    Done(Result<(), Refusal>),
    Deliveries { deliveries: Vec<RemoteDelivery>, cancelled: Vec<u64> },
    Got(Result<Option<Got>, Refusal>),
    Count(Result<u32, Refusal>),
    Counts(Vec<(u32, u32, u32)>),
}

/// A refusal with RabbitMQ's code and text, for a queue the home does not have.
pub fn no_queue(queue: &QueueName) -> Refusal {
    Refusal {
        code: crate::types::constants::NOT_FOUND,
        text: format!("no queue '{}' in vhost '{}'", queue.name, queue.vhost),
        connection: false,
    }
}

/// The answer of a node that serves no classic queues.
pub fn unserved() -> Refusal {
    Refusal {
        code: crate::types::constants::INTERNAL_ERROR,
        text: "this node serves no classic queues".into(),
        connection: false,
    }
}
