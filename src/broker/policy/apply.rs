//! Policies as the broker holds them: the journal's state of every vhost's policies, a change
//! checked, recorded and applied to the vhost's queues and exchanges at once.

use super::{PolicyChange, PolicyKind, PolicyState};
use crate::broker::audit::{Actor, AuditEvent};
use crate::broker::definitions::Change;
use crate::broker::Broker;

/// Why a policy change was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PolicyError {
    #[error("no vhost '{0}'")]
    NoSuchVhost(String),
}

impl Broker {
    /// Every policy (or operator policy) of every vhost, or of one.
    pub fn policies(&self, kind: PolicyKind, vhost: Option<&str>) -> Vec<super::PolicyDef> {
        self.policies.read().list(kind, vhost).cloned().collect()
    }

    /// One policy.
    pub fn policy(&self, kind: PolicyKind, vhost: &str, name: &str) -> Option<super::PolicyDef> {
        self.policies.read().get(kind, vhost, name).cloned()
    }

    /// The checks [`Broker::change_policy`] makes, without the change (a cluster node makes
    /// them before proposing it).
    pub fn check_policy_change(&self, change: &PolicyChange) -> Result<(), PolicyError> {
        if let PolicyChange::Set { policy, .. } = change {
            if self.vhost(&policy.vhost).is_none() {
                return Err(PolicyError::NoSuchVhost(policy.vhost.clone()));
            }
        }
        Ok(())
    }

    /// Sets or clears a policy: recorded durably (returns the ticket to wait for; 0 when
    /// nothing changed) and applied to every queue and exchange of its vhost before this
    /// returns. The state's lock is held throughout, so changes apply in the journal's order.
    pub fn change_policy(&self, change: PolicyChange, by: &Actor) -> Result<u64, PolicyError> {
        self.check_policy_change(&change)?;
        let vhost_name = change.vhost().to_string();
        let mut state = self.policies.write();
        let same = match &change {
            PolicyChange::Set { kind, policy } => state.get(*kind, &policy.vhost, &policy.name) == Some(policy),
            PolicyChange::Clear { kind, vhost, name } => state.get(*kind, vhost, name).is_none(),
        };
        if same {
            return Ok(0);
        }
        state.apply(&change);
        let ticket = self.storage.as_ref().map_or(0, |s| s.record(&Change::Policy { change: change.clone() }));
        if self.audit.is_on() {
            self.audit.emit(policy_event(&change, by));
        }
        if let Some(v) = self.vhost(&vhost_name) {
            v.set_policies(state.compile(&vhost_name), by);
        }
        Ok(ticket)
    }

    /// Installs the policies read back at start, before the vhosts recover their queues.
    pub(crate) fn install_policies(&self, state: PolicyState) {
        for v in self.vhosts.read().values() {
            v.set_policies(state.compile(&v.name), &Actor::broker());
        }
        *self.policies.write() = state;
    }

    /// A vhost was deleted: its policies go with it.
    pub(crate) fn forget_policies(&self, vhost: &str) {
        self.policies.write().forget_vhost(vhost);
    }

    /// The compiled policies of `vhost`, for a vhost being created.
    pub(crate) fn compiled_policies(&self, vhost: &str) -> super::VhostPolicies {
        self.policies.read().compile(vhost)
    }
}

/// RabbitMQ's events: `policy.set` (for both kinds), `policy.cleared`,
/// `operator.policy.cleared`.
fn policy_event(change: &PolicyChange, by: &Actor) -> AuditEvent {
    match change {
        PolicyChange::Set { policy, .. } => AuditEvent::new("policy.set", by, Some(&policy.vhost))
            .with("name", policy.name.as_str())
            .with("pattern", policy.pattern.as_str())
            .with("apply-to", policy.apply_to.as_str())
            .with("definition", serde_json::to_string(&policy.definition).unwrap_or_default())
            .with("priority", policy.priority.to_string()),
        PolicyChange::Clear { kind, vhost, name } => {
            let event = match kind {
                PolicyKind::Policy => "policy.cleared",
                PolicyKind::OperatorPolicy => "operator.policy.cleared",
            };
            AuditEvent::new(event, by, Some(vhost)).with("name", name.as_str())
        }
    }
}
