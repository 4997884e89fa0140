//! The policies of a vhost applied to its queues and exchanges: matched when an object is
//! declared (or recovered) and again for every object when a policy changes, never while
//! routing. The queue or exchange keeps the settings that result (see `crate::broker::policy`).

use super::VHost;
use crate::broker::audit::{Actor, AuditEvent};
use crate::broker::policy::{Applied, Target, VhostPolicies};
use crate::broker::queue::Queue;
use std::sync::Arc;

impl VHost {
    /// What kind of target a queue is for matching policies.
    pub(super) fn target_of(queue: &Queue) -> Target {
        if queue.options.args.stream {
            Target::StreamQueue
        } else if queue.options.args.quorum {
            Target::QuorumQueue
        } else {
            Target::ClassicQueue
        }
    }

    /// The policies that apply to a queue about to be made here.
    pub(super) fn policy_for_queue(&self, queue: &Queue) -> Applied {
        let p = self.policies.read();
        if p.is_empty() {
            return Applied::default();
        }
        p.matching(&queue.name, Self::target_of(queue))
    }

    /// The policies that apply to an exchange named `name`.
    pub(super) fn policy_for_exchange(&self, name: &str) -> Applied {
        let p = self.policies.read();
        if p.is_empty() {
            return Applied::default();
        }
        p.matching(name, Target::Exchange)
    }

    /// Replaces the vhost's policies and applies them to every queue and exchange now;
    /// a queue whose policy changed is reported to the audit log (RabbitMQ's
    /// `queue.policy.updated` and `queue.policy.cleared`). Returns how many objects changed.
    pub fn set_policies(&self, policies: VhostPolicies, by: &Actor) -> usize {
        let policies = Arc::new(policies);
        *self.policies.write() = policies.clone();
        let mut changed = 0;
        {
            let mut topo = self.topology.write();
            for ex in topo.exchanges.values_mut() {
                let applied = policies.matching(&ex.name, Target::Exchange);
                changed += usize::from(ex.set_policy(applied));
            }
        }
        // Queues outside the topology's lock: a lowered limit may dead-letter, which routes.
        let queues: Vec<Arc<Queue>> = self.topology.read().queues.values().cloned().collect();
        for q in queues {
            let applied = policies.matching(&q.name, Self::target_of(&q));
            let cleared = applied.is_empty();
            if q.set_policy(applied) {
                changed += 1;
                if self.audit.is_on() {
                    let event = if cleared { "queue.policy.cleared" } else { "queue.policy.updated" };
                    self.audit.emit(AuditEvent::new(event, by, Some(&self.name)).with("name", q.name.as_str()));
                }
            }
        }
        changed
    }
}
