//! Resource alarms across the cluster. RabbitMQ's alarms are cluster-wide: a member short of
//! memory or disk blocks the publishers of every node, so a flood published through one node
//! into a queue another node holds cannot push that node past its limit.
//!
//! Each node asks every other member for its alarms twice a second over the cluster port
//! ([`Request::Alarms`]), and hands what it heard to its broker when it changes. A member that
//! does not answer within a second counts as having none, as RabbitMQ forgets the alarms of
//! a node that went down: a dead node's disk alarm does not block the survivors.

use super::node::Cluster;
use super::transport::{Peer, Request, Response};
use super::types::NodeId;
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

/// How often the members are asked: a remote alarm blocks this node's publishers within
/// about this long (plus the broker's own 100 ms check).
const POLL: Duration = Duration::from_millis(500);
/// A member that has not answered within this long has no alarm as far as this node knows.
const TTL: Duration = Duration::from_secs(1);

/// The other members' alarms, as they last answered.
#[derive(Default)]
pub struct PeerAlarms {
    heard: Mutex<BTreeMap<NodeId, Vec<String>>>,
}

impl PeerAlarms {
    /// The resources `node` said it is short of (none if it did not answer).
    pub fn of(&self, node: NodeId) -> Vec<String> {
        self.heard.lock().get(&node).cloned().unwrap_or_default()
    }

    /// Records a round of answers; whether anything changed.
    fn record(&self, heard: BTreeMap<NodeId, Vec<String>>) -> bool {
        let mut now = self.heard.lock();
        let changed = *now != heard;
        *now = heard;
        changed
    }
}

/// Asks the members for their alarms, for as long as the node runs. Started by the broker
/// (the simulation's nodes have no resources to watch).
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
                    let answer = peer.call(&Request::Alarms, TTL).await;
                    (id, peer, answer)
                })
            })
            .collect();
        let mut heard = BTreeMap::new();
        for call in calls {
            let Ok((id, peer, answer)) = call.await else { continue };
            peers.insert(id, peer);
            if let Ok(Response::Alarms(resources)) = answer {
                if !resources.is_empty() {
                    heard.insert(id, resources);
                }
            }
        }
        if c.alarms.record(heard.clone()) {
            let named = heard
                .into_iter()
                .flat_map(|(id, resources)| {
                    let name = c.name_of(id);
                    resources.into_iter().map(move |r| (name.clone(), r))
                })
                .collect();
            c.effects.remote_alarms(named);
        }
    }
}
