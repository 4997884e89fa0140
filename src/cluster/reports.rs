//! What members tell each other twice a second: their resource alarms and the states of the
//! shovels they run.
//!
//! RabbitMQ's alarms are cluster-wide: a member short of memory or disk blocks the publishers
//! of every node, so a flood published through one node into a queue another node holds
//! cannot push that node past its limit. And a shovel runs on one node (the leader) while
//! every node's API lists it, as RabbitMQ's does.
//!
//! Each node asks every other member for its [`NodeReport`] over the cluster port
//! ([`Request::Report`]) and hands what it heard to its broker when it changes. A member that
//! does not answer within a second counts as having no alarm and running no shovel, as
//! RabbitMQ forgets the alarms of a node that went down: a dead node's disk alarm does not
//! block the survivors.

use super::node::Cluster;
use super::transport::{Peer, Request, Response};
use super::types::NodeId;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// How often the members are asked: a remote alarm blocks this node's publishers within
/// about this long (plus the broker's own 100 ms check).
const POLL: Duration = Duration::from_millis(500);
/// A member that has not answered within this long has no alarm as far as this node knows.
const TTL: Duration = Duration::from_secs(1);

/// What a node reports of itself.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct NodeReport {
    /// The resources (`memory`, `disk`) it is short of.
    pub alarms: Vec<String>,
    /// The shovels it runs, each as the management API shows one (JSON text: bincode cannot
    /// carry JSON values).
    pub shovels: Vec<String>,
}

/// The other members' reports, as they last answered, and when each last answered.
#[derive(Default)]
pub struct PeerReports {
    heard: Mutex<BTreeMap<NodeId, NodeReport>>,
    answered: Mutex<HashMap<NodeId, Instant>>,
}

impl PeerReports {
    /// Whether `node` answered this node's last asking (within two rounds): a follower knows
    /// which members it reaches, which Raft tells only the leader.
    pub fn answers(&self, node: NodeId) -> bool {
        self.answered.lock().get(&node).is_some_and(|t| t.elapsed() < 2 * (POLL + TTL))
    }

    /// The resources `node` said it is short of (none if it did not answer).
    pub fn alarms_of(&self, node: NodeId) -> Vec<String> {
        self.heard.lock().get(&node).map(|r| r.alarms.clone()).unwrap_or_default()
    }

    /// Records a round of answers; whether anything changed.
    fn record(&self, heard: BTreeMap<NodeId, NodeReport>) -> bool {
        let mut now = self.heard.lock();
        let changed = *now != heard;
        *now = heard;
        changed
    }
}

/// Asks the members for their reports, for as long as the node runs. Started by the broker
/// (the simulation's nodes have no resources or shovels to watch).
pub async fn watch(c: Arc<Cluster>) {
    let mut peers: HashMap<NodeId, Peer> = HashMap::new();
    loop {
        tokio::time::sleep(POLL).await;
        let (members, _) = c.members();
        // A member forgotten, or at a new address, gets a new connection.
        peers.retain(|id, p| members.iter().any(|(m, addr)| m == id && *addr == p.addr));
        let calls: Vec<_> = members
            .into_iter()
            .filter(|(id, _)| *id != c.id)
            .map(|(id, addr)| {
                let mut peer = peers.remove(&id).unwrap_or_else(|| Peer::new(addr, c.net.clone()));
                tokio::spawn(async move {
                    let answer = peer.call(&Request::Report, TTL).await;
                    (id, peer, answer)
                })
            })
            .collect();
        let mut heard = BTreeMap::new();
        for call in calls {
            let Ok((id, peer, answer)) = call.await else { continue };
            peers.insert(id, peer);
            if let Ok(Response::Report(report)) = answer {
                c.reports.answered.lock().insert(id, Instant::now());
                if report != NodeReport::default() {
                    heard.insert(id, report);
                }
            }
        }
        if c.reports.record(heard.clone()) {
            let named = heard.into_iter().map(|(id, report)| (c.name_of(id), report)).collect();
            c.effects.remote_reports(named);
        }
    }
}
