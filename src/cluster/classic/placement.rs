//! The placements of this node's classic queues, kept true by a reconciler.
//!
//! A declare over AMQP places its queue through the log before it makes it, and a delete
//! ends the placement as it deletes; the reconciler covers every other way a queue comes or
//! goes. Once a second it places this node's classic queues that are not the cluster's yet
//! (MQTT sessions' queues, a queue whose placement was refused) and ends the placements of
//! queues this node no longer has (auto-delete, `x-expires`; exclusive queues are never
//! placed).

use crate::broker::replicated::DefinitionChange;
use crate::broker::Broker;
use crate::cluster::node::Cluster;
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

/// How often the reconciler looks.
const EVERY: Duration = Duration::from_secs(1);

/// The placements whose home is this node, as applied here: (vhost, name) to id.
#[derive(Debug, Default)]
pub struct Homed {
    placements: Mutex<HashMap<(String, String), u64>>,
}

impl Homed {
    /// Follows an applied change (a placement here, or an end).
    pub fn applied(&self, change: &DefinitionChange, me: &str) {
        match change {
            DefinitionChange::PlaceQueue { vhost, name, home, id, .. } if home == me => {
                self.placements.lock().entry((vhost.clone(), name.clone())).or_insert(*id);
            }
            DefinitionChange::UnplaceQueue { vhost, name, id } => {
                let mut p = self.placements.lock();
                let key = (vhost.clone(), name.clone());
                if p.get(&key) == Some(id) {
                    p.remove(&key);
                }
            }
            _ => {}
        }
    }

    /// Makes the registry a snapshot's.
    pub fn installed(&self, placements: &[DefinitionChange], me: &str) {
        let mut p = self.placements.lock();
        p.clear();
        for c in placements {
            if let DefinitionChange::PlaceQueue { vhost, name, home, id, .. } = c {
                if home == me {
                    p.insert((vhost.clone(), name.clone()), *id);
                }
            }
        }
    }

    /// The id of the placement here of `name`, if it has one.
    pub fn id_of(&self, vhost: &str, name: &str) -> Option<u64> {
        self.placements.lock().get(&(vhost.to_string(), name.to_string())).copied()
    }

    fn snapshot(&self) -> Vec<((String, String), u64)> {
        self.placements.lock().iter().map(|(k, v)| (k.clone(), *v)).collect()
    }
}

/// Runs the reconciler for as long as the node runs.
pub async fn reconcile(broker: Arc<Broker>, cluster: Arc<Cluster>, homed: Arc<Homed>) {
    let mut resolved = cluster.resolved();
    // Not before this process's first proposal (its hello) is applied: by then the log this
    // node had is applied again, and with it the placements of the queues it brought back.
    let _ = resolved.wait_for(|r| *r >= 1).await;
    // What was proposed and not yet seen applied: not proposed again meanwhile.
    let mut asked: HashSet<(String, String)> = HashSet::new();
    loop {
        tokio::time::sleep(EVERY).await;
        let mut still = HashSet::new();
        for ((vhost, name), id) in homed.snapshot() {
            let here =
                broker.vhost(&vhost).and_then(|v| v.replicated_queue(&name)).is_some_and(|q| q.placement() == id);
            if here {
                continue;
            }
            let key = (vhost.clone(), name.clone());
            if !asked.contains(&key) {
                cluster.propose(
                    crate::cluster::types::Command::Definition(DefinitionChange::UnplaceQueue { vhost, name, id }),
                    None,
                );
            }
            still.insert(key);
        }
        for v in broker.vhosts() {
            for q in v.unplaced_queues() {
                let key = (v.name.clone(), q.name.to_string());
                if !asked.contains(&key) {
                    let o = &q.options;
                    let id = crate::broker::replicated::placement_id();
                    let place = DefinitionChange::place_queue(
                        &v.name,
                        &q.name,
                        &cluster.name,
                        id,
                        o.durable,
                        o.auto_delete,
                        &o.arguments,
                        "cluster",
                    );
                    cluster.propose(crate::cluster::types::Command::Definition(place), None);
                }
                still.insert(key);
            }
        }
        asked = still;
    }
}
