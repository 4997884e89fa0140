//! A queue whose state lives in a cluster's replicated log (a quorum queue on a cluster node),
//! or on another node of the cluster (a classic queue declared there): the node's [`Queue`]
//! object is its local face, for routing, consumers and statistics, and forwards what would
//! change the state to its [`Replica`], which the cluster layer provides.
//! The core declares these traits and the cluster implements them, so the core does not
//! depend on the cluster.

use super::Queue;
use crate::broker::arguments::QueueArguments;
use crate::broker::consumer::{Consumer, Origin};
use crate::broker::error::AmqpResult;
use crate::broker::message::{Message, QueuedMessage};
use crate::types::{FieldTable, ShortStr};
use std::sync::Arc;

/// A replicated queue's operations. Each returns at once; what changes state is proposed to
/// the cluster and its ticket returned, to wait for (see [`QuorumHost::resolved`]).
pub trait Replica: Send + Sync + std::fmt::Debug {
    /// Proposes the message's enqueue; returns its ticket.
    fn publish(&self, message: &Arc<Message>) -> u64;
    /// Adds a consumer; returns a ticket its basic.consume-ok waits for (0: none), whose
    /// refusal, if the queue's holder refuses the consumer, closes the channel instead.
    fn add_consumer(&self, queue: &Arc<Queue>, consumer: Arc<Consumer>) -> AmqpResult<u64>;
    fn remove_consumer(&self, connection_id: u64, channel: u16, tag: &ShortStr);
    /// This node's consumers of the queue.
    fn consumers(&self) -> Vec<Arc<Consumer>>;
    /// Ready and unacknowledged messages and consumers, as the replicated state has them.
    fn counts(&self) -> (u32, u32, u32);
    /// Proposes a purge; returns the ready count as this node knows it.
    fn purge(&self) -> u32;
    /// Proposes a basic.get; returns its ticket and what its delivery settles through.
    fn get(&self, no_ack: bool) -> (u64, Arc<dyn Origin>);
    /// The answer to the get of `ticket`, once resolved: the message and the ready count
    /// after it, or None for an empty queue.
    fn take_got(&self, ticket: u64) -> Option<(QueuedMessage, u32)>;
    /// The node that holds the queue, for the face of a classic queue held elsewhere (None
    /// for a quorum queue, which every node holds).
    fn home(&self) -> Option<&str> {
        None
    }
    /// queue.delete of a classic queue held elsewhere, asked of its home; returns the ticket
    /// its answer resolves (a refusal is taken with [`QuorumHost::take_refusal`]).
    fn delete(&self, _if_unused: bool, _if_empty: bool, _user: &str) -> u64 {
        0
    }
    /// Asks the home for the queue's counts now; returns the ticket resolved once
    /// [`Replica::counts`] has them (0: they are always current, as a quorum queue's).
    fn refresh(&self) -> u64 {
        0
    }
}

/// A cluster as one of its nodes sees it (for `/api/nodes`, `hare ctl cluster status`).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ClusterStatus {
    /// This node's name.
    pub node: String,
    /// The node that leads (every quorum queue's leader: one Raft group carries them all).
    pub leader: Option<String>,
    pub term: u64,
    /// The last log index this node has, and the last it applied.
    pub last_log_index: u64,
    pub applied_index: u64,
    pub members: Vec<MemberStatus>,
    pub quorum_queues: Vec<String>,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct MemberStatus {
    pub name: String,
    pub id: String,
    pub address: String,
    /// A voter (false: a learner catching up before it votes).
    pub voter: bool,
    /// Whether it answered this node lately (Raft's calls, or the members' reports; itself:
    /// always).
    pub reachable: bool,
    /// As the leader knows it: the last index it holds, and how far behind the leader's log.
    pub matched_index: Option<u64>,
    pub lag: Option<u64>,
    /// The resources (`memory`, `disk`) it is short of, as it last answered this node.
    pub alarms: Vec<String>,
}

/// A change of a cluster's membership, asked of one of its nodes.
#[derive(Debug, Clone)]
pub enum Membership {
    /// The cluster that `seed` (a member's host:cluster-port) belongs to takes this node in.
    Join { seed: String },
    /// The node named `node` leaves the cluster.
    Forget { node: String },
}

/// What the broker asks of the cluster layer for quorum queues.
pub trait QuorumHost: Send + Sync + std::fmt::Debug {
    /// Proposes a quorum queue's declaration; returns its ticket.
    fn declare(&self, vhost: &str, name: &str, arguments: &FieldTable, args: &QueueArguments) -> u64;
    /// Proposes a quorum queue's deletion; returns its ticket.
    fn delete(&self, vhost: &str, name: &str) -> u64;
    /// Tickets resolved so far: every ticket at or below the watermark is (the channel also
    /// changes when a ticket past it is resolved out of order).
    fn resolved(&self) -> tokio::sync::watch::Receiver<u64>;
    /// Whether `ticket` is resolved, whatever the watermark.
    fn is_resolved(&self, ticket: u64) -> bool;
    /// The ticket of the latest proposal of this node (every earlier one is resolved when it
    /// is).
    fn last_ticket(&self) -> u64;
    /// Whether the enqueue of `ticket` was refused by a full queue (asked once).
    fn take_rejected(&self, ticket: u64) -> bool;
    /// Proposes a definition change, which every node applies in log order; returns its
    /// ticket.
    fn propose_definition(&self, change: crate::broker::replicated::DefinitionChange) -> u64;
    /// Why the change proposed as `ticket` was refused when it was applied, if it was (asked
    /// once).
    fn take_refusal(&self, ticket: u64) -> Option<crate::broker::replicated::Refusal>;
    /// The cluster as this node sees it.
    fn status(&self) -> ClusterStatus;
    /// Whether this node leads the cluster now (it runs the cluster's shovels).
    fn leads(&self) -> bool;
    /// Changes the cluster's membership; resolves once the change is committed.
    fn membership(
        &self,
        change: Membership,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>>;
    /// Whether proposals wait faster than the cluster commits them (no quorum, say): a
    /// publisher that proposed then waits for `waiter`, notified once they no longer do.
    fn backlogged(&self, waiter: &Arc<tokio::sync::Notify>) -> bool;
    /// This node's name in the cluster.
    fn node_name(&self) -> String;
    /// The face of the classic queue `name`, held by node `home`.
    fn face(&self, vhost: &str, name: &str, home: &str) -> Arc<dyn Replica>;
    /// Proposes `place` (a placement of a queue this node makes, or made without one), after
    /// ending a placement this node still has of a namesake that is gone (a queue that
    /// auto-deleted, expired or was deleted by a clean MQTT start, made again before the
    /// reconciler looked): the other nodes drop the old face before they make the new one,
    /// and the reconciler's record of this node's placements stays true. Returns the
    /// placement's ticket.
    fn place_here(&self, place: crate::broker::replicated::DefinitionChange) -> u64;
}
