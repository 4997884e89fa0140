//! The cluster's Raft types: what the log carries ([`Batch`] of [`Command`]s) and what applying
//! an entry answers (one [`Outcome`] per command), bound together as openraft's type config.

use super::quorum::{ConsumerKey, Msg, Outcome, Settings};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::io::Cursor;
use std::sync::Arc;

/// A node's id in Raft: derived from its node name (see [`node_id`]).
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// The type config of Hare's Raft group.
    pub TypeConfig:
        D = Batch,
        R = Vec<Outcome>,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = super::runtime::Runtime,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type StoredMembership = openraft::StoredMembership<NodeId, openraft::BasicNode>;
pub type StorageError = openraft::StorageError<NodeId>;

/// One log entry's worth of commands, proposed together by one node: many publishes,
/// settlements and declares of one round cost one append and one fsync on each node.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Batch {
    /// The proposing process (a node's incarnation: it changes at each start) and the
    /// batch's number in its sequence: a batch retried after a lost answer is applied once.
    pub from: u64,
    pub seq: u64,
    /// The proposer's clock (ms since the epoch): the time every replica uses for TTLs.
    pub now: u64,
    /// Shared: openraft clones entries to keep, replicate and apply them.
    pub commands: Arc<[Command]>,
}

impl Batch {
    /// About how many bytes the batch is on the wire and in the log.
    pub fn weight(&self) -> usize {
        self.commands.iter().map(Command::weight).sum()
    }
}

impl std::fmt::Display for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "batch {}#{} of {} commands", self.from, self.seq, self.commands.len())
    }
}

/// A queue as the commands name it: vhost and name.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QueueName {
    pub vhost: String,
    pub name: String,
}

/// A change to the replicated state.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum Command {
    /// A process of `node` started as incarnation `from` (the batch's): consumers of the
    /// node's earlier incarnations are gone, and what they held goes back.
    Hello {
        node: NodeId,
        name: String,
    },
    /// A node stopped answering: its consumers are gone (it re-registers them if it returns).
    NodeDown {
        node: NodeId,
    },
    /// A quorum queue: its declare arguments (AMQP table encoding) and the settings parsed
    /// from them.
    Declare {
        queue: QueueName,
        arguments: Bytes,
        settings: Settings,
    },
    Delete {
        queue: QueueName,
    },
    Enqueue {
        queue: QueueName,
        msg: Msg,
    },
    Checkout {
        queue: QueueName,
        consumer: ConsumerKey,
        prefetch: u32,
        no_ack: bool,
    },
    Cancel {
        queue: QueueName,
        consumer: ConsumerKey,
    },
    Settle {
        queue: QueueName,
        consumer: ConsumerKey,
        ids: Vec<u64>,
    },
    Return {
        queue: QueueName,
        consumer: ConsumerKey,
        ids: Vec<u64>,
    },
    Discard {
        queue: QueueName,
        consumer: ConsumerKey,
        ids: Vec<u64>,
    },
    /// basic.get: the next message, settled at once with `no_ack`, else held by `consumer`.
    Dequeue {
        queue: QueueName,
        consumer: ConsumerKey,
        no_ack: bool,
    },
    /// A consumer's channel closed or it was cancelled with messages out: they go back.
    Down {
        queue: QueueName,
        consumer: ConsumerKey,
    },
    Purge {
        queue: QueueName,
    },
    /// Time passes (TTL expiry), stamped by the leader.
    Tick,
    /// An exchange, a binding, or a change to users, vhosts and permissions, applied to
    /// every node's broker in log order.
    Definition(crate::broker::replicated::DefinitionChange),
    /// Messages a consumer's node held beyond its client's prefetch and never sent: back
    /// to the front, not counted as a delivery (see `quorum::QuorumQueue::release`). Last,
    /// so that the log's encoding of the others stays.
    Release {
        queue: QueueName,
        consumer: ConsumerKey,
        ids: Vec<u64>,
    },
}

impl Command {
    /// What the command counts for in a batch, in the backlog and in an AppendEntries: its
    /// message's bytes, and 64 for the rest of it.
    pub fn weight(&self) -> usize {
        match self {
            Command::Enqueue { msg, .. } => msg.body.len() + msg.properties.len() + 64,
            _ => 64,
        }
    }
}

/// A node's Raft id from its name: the first 8 bytes of the name's SHA-256, so that every
/// node computes every other node's id from its name alone.
pub fn node_id(name: &str) -> NodeId {
    use sha2::Digest;
    let d = sha2::Sha256::digest(name.as_bytes());
    // Never 0: openraft takes no special meaning from it, but our status output does.
    u64::from_be_bytes(d[..8].try_into().unwrap_or([1; 8])).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{AccessChange, PermissionDef, UserDef};
    use crate::broker::replicated::DefinitionChange;
    use crate::cluster::quorum::Overflow;

    /// Every command survives the log's encoding (bincode has no self-describing forms: a
    /// type with serde's tagged or skipped fields would be unreadable on the other nodes).
    #[test]
    fn every_command_round_trips_through_the_log_encoding() {
        let queue = QueueName { vhost: "/".into(), name: "q".into() };
        let msg = Msg {
            exchange: "x".into(),
            routing_key: "k".into(),
            properties: Bytes::from_static(b"\x00\x00"),
            body: Bytes::from_static(b"body"),
            ttl: Some(5),
        };
        let settings = Settings { max_length: Some(3), overflow: Overflow::RejectPublish, ..Default::default() };
        let user = UserDef {
            name: "u".into(),
            password_hash: "aGFzaA==".into(),
            hashing_algorithm: "rabbit_password_hashing_sha256".into(),
            tags: vec!["administrator".into()],
            limits: Default::default(),
        };
        let permission = PermissionDef {
            user: "u".into(),
            vhost: "/".into(),
            configure: ".*".into(),
            write: "".into(),
            read: "a".into(),
        };
        let commands = vec![
            Command::Hello { node: 7, name: "n7".into() },
            Command::NodeDown { node: 7 },
            Command::Declare { queue: queue.clone(), arguments: Bytes::from_static(b"00"), settings },
            Command::Delete { queue: queue.clone() },
            Command::Enqueue { queue: queue.clone(), msg },
            Command::Checkout { queue: queue.clone(), consumer: (1, 2), prefetch: 10, no_ack: false },
            Command::Cancel { queue: queue.clone(), consumer: (1, 2) },
            Command::Settle { queue: queue.clone(), consumer: (1, 2), ids: vec![1, 2] },
            Command::Return { queue: queue.clone(), consumer: (1, 2), ids: vec![3] },
            Command::Release { queue: queue.clone(), consumer: (1, 2), ids: vec![4, 5] },
            Command::Discard { queue: queue.clone(), consumer: (1, 2), ids: vec![4] },
            Command::Dequeue { queue: queue.clone(), consumer: (1, 3), no_ack: true },
            Command::Down { queue: queue.clone(), consumer: (1, 2) },
            Command::Purge { queue },
            Command::Tick,
            Command::Definition(DefinitionChange::access(&AccessChange::PutUser { user }, "guest")),
            Command::Definition(DefinitionChange::access(&AccessChange::SetPermissions { permission }, "guest")),
            Command::Definition(DefinitionChange::parameter(
                &crate::broker::parameters::ParameterChange::Set {
                    parameter: crate::broker::parameters::Parameter {
                        component: "shovel".into(),
                        vhost: "/".into(),
                        name: "s".into(),
                        value: serde_json::json!({ "src-queue": "a", "prefetch": 10 }),
                        user: "guest".into(),
                    },
                },
                "guest",
            )),
            Command::Definition(DefinitionChange::DeleteExchange {
                vhost: "/".into(),
                name: "x".into(),
                if_unused: true,
                user: "guest".into(),
            }),
        ];
        let batch = Batch { from: 1, seq: 2, now: 3, commands: commands.into() };
        let bytes = bincode::serialize(&batch).expect("encodes");
        let back: Batch = bincode::deserialize(&bytes).expect("decodes");
        assert_eq!(back, batch);
    }
}
