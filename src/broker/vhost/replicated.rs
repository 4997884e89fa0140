//! Queues of a cluster in a vhost: the local faces of quorum queues appear when the
//! replicated state declares them and go when it deletes them, on every node alike (see
//! `queue::replica`); a classic queue's placement makes it on its home node and its face on
//! the others, and its end removes the faces.

use super::{QueueDeclaration, VHost};
use crate::broker::arguments::QueueArguments;
use crate::broker::audit::Actor;
use crate::broker::error::AmqpResult;
use crate::broker::exchange::Destination;
use crate::broker::queue::replica::Replica;
use crate::broker::queue::{Queue, QueueOptions, QueueOwner};
use crate::types::{FieldTable, ShortStr};
use std::sync::Arc;

impl VHost {
    /// Makes the replicated queue `name` routable here (nothing if it is already).
    pub fn install_replicated(&self, name: &str, arguments: FieldTable, replica: Arc<dyn Replica>) {
        let mut topo = self.topology.write();
        if topo.queues.contains_key(name) {
            return;
        }
        let args = QueueArguments::stored(&arguments, name, &self.name);
        let options = QueueOptions { durable: true, exclusive_owner: None, auto_delete: false, arguments, args };
        let owner: std::sync::Weak<dyn QueueOwner> = self.me.clone();
        let q = Queue::replicated(ShortStr::from(name), &self.name, options, replica, owner);
        q.set_policy(self.policy_for_queue(&q));
        topo.queues.insert(ShortStr::from(name), q);
        super::super::stats::Churn::bump(&self.churn.queue_created);
        self.had_queue.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Removes the replicated queue `name`'s local face and its bindings here (the cluster
    /// layer tells its consumers).
    pub fn drop_replicated(&self, name: &str) {
        let mut topo = self.topology.write();
        let Some(q) = topo.queues.remove(name) else { return };
        super::super::stats::Churn::bump(&self.churn.queue_deleted);
        let mut removed = super::Removed::default();
        Self::remove_destination(&mut topo, &Destination::Queue(q.name.clone()), &mut removed);
        drop(topo);
        q.delete();
    }

    /// Queue `name` if it is the cluster's: a quorum queue's face, a classic queue placed
    /// here or its face on another node (bindings to it are replicated definitions).
    pub fn replicated_queue(&self, name: &str) -> Option<Arc<Queue>> {
        self.topology.read().queues.get(name).filter(|q| q.replica.is_some() || q.placement() != 0).cloned()
    }

    /// The face of quorum queue `name`, if it is one.
    pub fn quorum_queue(&self, name: &str) -> Option<Arc<Queue>> {
        self.topology.read().queues.get(name).filter(|q| q.replica.is_some() && q.home().is_none()).cloned()
    }

    /// Applies the placement `id` of classic queue `d.name` on node `home`, as this node
    /// (`me`) sees it, in the cluster log's order:
    /// - a queue of that name that is the cluster's already: a declare of it again, with
    ///   RabbitMQ's equivalence checks (the same answer on every node, which all have it);
    /// - this node's own queue, made another way (the API, a restart) and not yet placed:
    ///   placed now;
    /// - none, on its home: made here, as a declare makes it;
    /// - none, elsewhere: its face, from `face`.
    ///
    /// Returns the placement of the queue now (the existing one's, for a queue placed before).
    pub fn place(
        &self,
        d: &QueueDeclaration,
        home: &str,
        id: u64,
        me: &str,
        face: impl FnOnce() -> Arc<dyn Replica>,
        by: &Actor,
    ) -> AmqpResult<u64> {
        let existing = self.topology.read().queues.get(d.name.as_str()).cloned();
        match existing {
            Some(q) if q.placement() == 0 && q.replica.is_none() => {
                if home == me && q.options.exclusive_owner.is_none() {
                    q.set_placement(id);
                } else {
                    // Another node's queue of a name this node used for its own (exclusive,
                    // or made before the placement reached it): it stays this node's.
                    tracing::warn!(
                        "queue '{}' in vhost '{}' of node {home} has a namesake of this node's own",
                        d.name,
                        self.name
                    );
                }
                Ok(q.placement())
            }
            Some(_) => {
                let (q, ..) = self.declare_queue(d, by)?;
                Ok(q.placement())
            }
            None if home == me => {
                let (q, ..) = self.declare_queue(d, by)?;
                q.set_placement(id);
                Ok(id)
            }
            None => {
                let args = QueueArguments::stored(&d.arguments, &d.name, &self.name);
                let options = QueueOptions {
                    durable: d.durable,
                    exclusive_owner: None,
                    auto_delete: d.auto_delete,
                    arguments: d.arguments.clone(),
                    args,
                };
                let mut topo = self.topology.write();
                let owner: std::sync::Weak<dyn QueueOwner> = self.me.clone();
                let q = Queue::replicated(d.name.clone(), &self.name, options, face(), owner);
                q.set_placement(id);
                q.set_policy(self.policy_for_queue(&q));
                topo.queues.insert(d.name.clone(), q);
                super::super::stats::Churn::bump(&self.churn.queue_created);
                self.had_queue.store(true, std::sync::atomic::Ordering::Relaxed);
                Ok(id)
            }
        }
    }

    /// The placement `id` of queue `name` ended (its home deleted it): its face here goes with
    /// its bindings. On its home, a queue still there under that placement goes too: it was
    /// made again by replaying its placement at a restart, before its end was replayed.
    pub fn unplace(&self, name: &str, id: u64, by: &Actor) {
        let Some(q) = self.topology.read().queues.get(name).filter(|q| q.placement() == id).cloned() else {
            return;
        };
        if q.home().is_some() {
            self.drop_replicated(name);
        } else {
            self.force_delete_queue(&q, by);
        }
    }

    /// The queues of this vhost that are the cluster's classic queues (held here, or faces).
    pub fn placed_queues(&self) -> Vec<Arc<Queue>> {
        self.topology.read().queues.values().filter(|q| q.placement() != 0).cloned().collect()
    }

    /// This node's classic queues that are not the cluster's yet (not exclusive, not
    /// streams or delayed exchanges' holders).
    pub fn unplaced_queues(&self) -> Vec<Arc<Queue>> {
        let topo = self.topology.read();
        let local = |q: &&Arc<Queue>| {
            q.placement() == 0
                && q.replica.is_none()
                && q.stream.is_none()
                && q.delayed.is_none()
                && q.options.exclusive_owner.is_none()
        };
        topo.queues.values().filter(local).cloned().collect()
    }
}
