//! Membership: the first start's bootstrap from the seeds, and nodes joining and leaving
//! through openraft's membership changes.

use super::{Cluster, ClusterSettings};
use crate::cluster::transport::{Peer, Request, Response};
use crate::cluster::types::{node_id, NodeId};
use openraft::BasicNode;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

impl Cluster {
    /// Adds a node (as a learner that catches up, then a voter) or removes one; on a node that
    /// does not lead, the request goes to the leader.
    pub async fn change_members(&self, add: Option<(NodeId, String)>, remove: Option<NodeId>) -> Result<(), String> {
        let leader = self.raft.metrics().borrow().current_leader;
        match leader {
            Some(l) if l == self.id => {}
            Some(l) => {
                let addr = self.address_of(l).ok_or("the leader's address is unknown")?;
                let req = match (add, remove) {
                    (Some((id, addr)), _) => Request::Join { id, addr },
                    (None, Some(id)) => Request::Forget { id },
                    (None, None) => return Ok(()),
                };
                let mut p = Peer::new(addr, self.net.clone());
                return match p.call(&req, Duration::from_secs(60)).await {
                    Ok(Response::Membership(r)) => r,
                    Ok(_) => Err("unexpected response".into()),
                    Err(e) => Err(format!("the leader did not answer: {e}")),
                };
            }
            None => return Err("the cluster has no leader now".into()),
        }
        if let Some((id, addr)) = add {
            // A learner first: it receives the log (or a snapshot) without voting, then votes.
            self.raft.add_learner(id, BasicNode { addr }, true).await.map_err(|e| e.to_string())?;
            let voters: BTreeSet<NodeId> = [id].into();
            self.raft
                .change_membership(openraft::ChangeMembers::AddVoterIds(voters), false)
                .await
                .map_err(|e| e.to_string())?;
        }
        if let Some(id) = remove {
            let voters: BTreeSet<NodeId> = [id].into();
            self.raft
                .change_membership(openraft::ChangeMembers::RemoveVoters(voters), false)
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Asks the cluster `seed` belongs to to take this node in.
    pub async fn join(&self, seed: &str) -> Result<(), String> {
        let mut p = Peer::new(seed.to_string(), self.net.clone());
        match p.call(&Request::Join { id: self.id, addr: self.advertise.clone() }, Duration::from_secs(60)).await {
            Ok(Response::Membership(r)) => r,
            Ok(_) => Err("unexpected response".into()),
            Err(e) => Err(format!("{seed}: {e}")),
        }
    }

    /// Takes the node named `name` out of the cluster.
    pub async fn forget(&self, name: &str) -> Result<(), String> {
        let id = node_id(name);
        if self.address_of(id).is_none() {
            return Err(format!("node '{name}' is not a member"));
        }
        self.change_members(None, Some(id)).await
    }
}

/// The first start of a cluster: once every seed answers, the node with the lowest id among
/// them makes the membership of all of them. A node that has a membership already (it was
/// formed before, or another node added it) does nothing here.
pub(super) async fn bootstrap(c: Arc<Cluster>, s: ClusterSettings) {
    let formed = |c: &Cluster| c.raft.metrics().borrow().membership_config.nodes().next().is_some();
    if s.seeds.is_empty() {
        // A cluster of one.
        if !formed(&c) {
            let mut m = BTreeMap::new();
            m.insert(c.id, BasicNode { addr: s.advertise.clone() });
            let _ = c.raft.initialize(m).await;
        }
        return;
    }
    for attempt in 0u64.. {
        if formed(&c) {
            return;
        }
        let mut found = BTreeMap::new();
        let mut member = None;
        for addr in &s.seeds {
            let mut p = Peer::new(addr.clone(), c.net.clone());
            match p.call(&Request::Info, Duration::from_secs(5)).await {
                Ok(Response::Info { name, formed }) => {
                    found.insert(node_id(&name), BasicNode { addr: addr.clone() });
                    if formed && name != c.name {
                        member = Some(addr.clone());
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    if attempt % 20 == 0 {
                        tracing::info!("cluster: seed {addr} not reachable yet: {e}");
                    }
                }
            }
        }
        if let Some(seed) = member {
            // A cluster exists already: this node asks to be taken in rather than forming one.
            match c.join(&seed).await {
                Ok(()) => tracing::info!("cluster: joined through {seed}"),
                Err(e) => tracing::info!("cluster: joining through {seed}: {e}"),
            }
        } else if found.len() == s.seeds.len() && found.keys().next() == Some(&c.id) {
            match c.raft.initialize(found.clone()).await {
                Ok(()) => tracing::info!("cluster: formed with {} nodes", found.len()),
                Err(e) => tracing::info!("cluster: not formed by this node: {e}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
