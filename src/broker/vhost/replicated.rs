//! Quorum queues of a cluster in a vhost: their local faces appear when the replicated state
//! declares them and go when it deletes them, on every node alike (see `queue::replica`).

use super::VHost;
use crate::broker::arguments::QueueArguments;
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
        let args = match QueueArguments::parse(&arguments, name, &self.name) {
            Ok(a) => a,
            Err(e) => {
                tracing::error!("replicated queue '{name}' in vhost '{}': {}", self.name, e.text);
                return;
            }
        };
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

    /// The local face of queue `name`, if it is a replicated queue.
    pub fn replicated_queue(&self, name: &str) -> Option<Arc<Queue>> {
        self.topology.read().queues.get(name).filter(|q| q.replica.is_some()).cloned()
    }
}
