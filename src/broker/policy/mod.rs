//! Policies and operator policies, as RabbitMQ 3.10 has them: named rules of a vhost that give
//! the queues and exchanges whose names match a pattern settings they were not declared with
//! (`max-length`, `message-ttl`, `dead-letter-exchange`, `alternate-exchange`, ...). No I/O:
//! policies change one [`PolicyChange`] at a time, the commands the definitions journal
//! records and a cluster replicates.
//!
//! RabbitMQ's rules, kept:
//! - One policy applies to an object: of those whose pattern matches its name (a regular
//!   expression, matched anywhere), whose `apply-to` takes its kind, and whose every key its
//!   queue type supports, the one of highest priority. Operator policies are chosen the same
//!   way, apart, and merged with it: a key both set takes the lower value.
//! - The effective settings of a queue resolve a policy against the queue's own `x-`
//!   arguments: for limits (`max-length`, `message-ttl`, ...) the lower of the two; for the
//!   dead-letter target and `overflow` the argument (a quorum queue takes the policy's
//!   `overflow` and `expires`, as RabbitMQ's quorum queues do). An exchange's own
//!   `alternate-exchange` argument wins over a policy's.
//! - Matching happens when an object is declared and when a policy changes, never on a
//!   publish: the queue and exchange keep the settings that result.
//!
//! Where RabbitMQ leaves a tie between two matching policies of one priority to the order of
//! its database table, the one whose name sorts first wins here.

use super::arguments::{Overflow, QueueArguments};
use crate::types::{FieldTable, ShortStr};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;

/// A policy or an operator policy (RabbitMQ's runtime parameter components).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum PolicyKind {
    Policy,
    OperatorPolicy,
}

impl PolicyKind {
    /// The component name in definitions and events.
    pub fn component(self) -> &'static str {
        match self {
            PolicyKind::Policy => "policy",
            PolicyKind::OperatorPolicy => "operator_policy",
        }
    }
}

/// A policy as RabbitMQ's API and definitions files show it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct PolicyDef {
    pub vhost: String,
    pub name: String,
    pub pattern: String,
    #[serde(rename = "apply-to")]
    pub apply_to: String,
    pub definition: BTreeMap<String, Value>,
    /// Any JSON number, as RabbitMQ takes it (compared as a float).
    pub priority: serde_json::Number,
}

impl PolicyDef {
    fn priority(&self) -> f64 {
        self.priority.as_f64().unwrap_or(0.0)
    }

    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "vhost": self.vhost,
            "name": self.name,
            "pattern": self.pattern,
            "apply-to": self.apply_to,
            "definition": self.definition,
            "priority": self.priority,
        })
    }
}

/// One change to the policies.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum PolicyChange {
    Set { kind: PolicyKind, policy: PolicyDef },
    Clear { kind: PolicyKind, vhost: String, name: String },
}

impl PolicyChange {
    pub fn vhost(&self) -> &str {
        match self {
            PolicyChange::Set { policy, .. } => &policy.vhost,
            PolicyChange::Clear { vhost, .. } => vhost,
        }
    }
}

/// Every policy of every vhost, as the journal and snapshots keep them.
#[derive(Default, Clone, Debug, PartialEq)]
pub struct PolicyState {
    items: BTreeMap<(String, PolicyKind, String), PolicyDef>,
}

/// A policy in a snapshot or a definitions list: its kind beside its fields.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct StoredPolicy {
    pub kind: PolicyKind,
    #[serde(flatten)]
    pub policy: PolicyDef,
}

impl PolicyState {
    pub fn apply(&mut self, change: &PolicyChange) {
        match change {
            PolicyChange::Set { kind, policy } => {
                self.items.insert((policy.vhost.clone(), *kind, policy.name.clone()), policy.clone());
            }
            PolicyChange::Clear { kind, vhost, name } => {
                self.items.remove(&(vhost.clone(), *kind, name.clone()));
            }
        }
    }

    /// A vhost deleted: its policies go with it.
    pub fn forget_vhost(&mut self, vhost: &str) {
        self.items.retain(|(v, _, _), _| v != vhost);
    }

    pub fn get(&self, kind: PolicyKind, vhost: &str, name: &str) -> Option<&PolicyDef> {
        self.items.get(&(vhost.to_string(), kind, name.to_string()))
    }

    /// The policies of `kind`, of one vhost or all, by vhost then name.
    pub fn list<'a>(&'a self, kind: PolicyKind, vhost: Option<&'a str>) -> impl Iterator<Item = &'a PolicyDef> {
        self.items.iter().filter(move |((v, k, _), _)| *k == kind && vhost.is_none_or(|x| x == v)).map(|(_, p)| p)
    }

    pub fn to_list(&self) -> Vec<StoredPolicy> {
        self.items.iter().map(|((_, kind, _), p)| StoredPolicy { kind: *kind, policy: p.clone() }).collect()
    }

    pub fn from_list(list: &[StoredPolicy]) -> Self {
        let mut s = PolicyState::default();
        for p in list {
            s.apply(&PolicyChange::Set { kind: p.kind, policy: p.policy.clone() });
        }
        s
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The policies of `vhost`, compiled for matching.
    pub fn compile(&self, vhost: &str) -> VhostPolicies {
        let mut out = VhostPolicies::default();
        for ((v, kind, _), p) in &self.items {
            if v == vhost {
                out.insert(*kind, p.clone());
            }
        }
        out
    }
}

/// What a policy is matched against: an exchange, or a queue of a type (a policy with a key
/// the type does not support does not apply to it, as in RabbitMQ).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Exchange,
    ClassicQueue,
    QuorumQueue,
    StreamQueue,
}

impl Target {
    fn is_queue(self) -> bool {
        self != Target::Exchange
    }

    /// RabbitMQ's `unsupported_policies` of each queue type.
    fn supports(self, key: &str) -> bool {
        match self {
            Target::Exchange => true,
            Target::ClassicQueue => !matches!(
                key,
                "max-age"
                    | "stream-max-segment-size-bytes"
                    | "queue-leader-locator"
                    | "initial-cluster-size"
                    | "delivery-limit"
                    | "dead-letter-strategy"
            ),
            Target::QuorumQueue => !matches!(
                key,
                "max-priority"
                    | "queue-mode"
                    | "single-active-consumer"
                    | "ha-mode"
                    | "ha-params"
                    | "ha-sync-mode"
                    | "ha-promote-on-shutdown"
                    | "ha-promote-on-failure"
                    | "queue-master-locator"
                    | "max-age"
                    | "stream-max-segment-size-bytes"
                    | "initial-cluster-size"
            ),
            Target::StreamQueue => !matches!(
                key,
                "expires"
                    | "message-ttl"
                    | "dead-letter-exchange"
                    | "dead-letter-routing-key"
                    | "max-length"
                    | "max-in-memory-length"
                    | "max-in-memory-bytes"
                    | "max-priority"
                    | "overflow"
                    | "queue-mode"
                    | "single-active-consumer"
                    | "delivery-limit"
                    | "ha-mode"
                    | "ha-params"
                    | "ha-sync-mode"
                    | "ha-promote-on-shutdown"
                    | "ha-promote-on-failure"
                    | "queue-master-locator"
                    | "dead-letter-strategy"
            ),
        }
    }
}

#[derive(Clone, Debug)]
struct Compiled {
    def: Arc<PolicyDef>,
    /// None for a pattern that does not compile (validation refuses those; one read back from
    /// an older journal matches nothing).
    regex: Option<fancy_regex::Regex>,
}

impl Compiled {
    fn matches(&self, name: &str, target: Target) -> bool {
        let kind_ok = match self.def.apply_to.as_str() {
            "all" => true,
            "queues" => target.is_queue(),
            "exchanges" => !target.is_queue(),
            _ => false,
        };
        kind_ok
            && self.def.definition.keys().all(|k| target.supports(k))
            && self.regex.as_ref().is_some_and(|r| r.is_match(name).unwrap_or(false))
    }
}

/// The policies of one vhost, compiled: what a declare and a policy change match names with.
#[derive(Clone, Debug, Default)]
pub struct VhostPolicies {
    policies: Vec<Compiled>,
    operator: Vec<Compiled>,
}

impl VhostPolicies {
    fn insert(&mut self, kind: PolicyKind, p: PolicyDef) {
        let regex = fancy_regex::Regex::new(&p.pattern).ok();
        let list = match kind {
            PolicyKind::Policy => &mut self.policies,
            PolicyKind::OperatorPolicy => &mut self.operator,
        };
        list.push(Compiled { def: Arc::new(p), regex });
        // Highest priority first; of equal priority, by name.
        list.sort_by(|a, b| b.def.priority().total_cmp(&a.def.priority()).then_with(|| a.def.name.cmp(&b.def.name)));
    }

    pub fn is_empty(&self) -> bool {
        self.policies.is_empty() && self.operator.is_empty()
    }

    /// The policy and operator policy that apply to the object `name`.
    pub fn matching(&self, name: &str, target: Target) -> Applied {
        let first = |list: &[Compiled]| list.iter().find(|c| c.matches(name, target)).map(|c| c.def.clone());
        Applied { policy: first(&self.policies), operator: first(&self.operator) }
    }
}

/// The policy and operator policy applied to one queue or exchange.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Applied {
    pub policy: Option<Arc<PolicyDef>>,
    pub operator: Option<Arc<PolicyDef>>,
}

/// The keys an operator policy's value and a policy's merge by taking the lower.
fn merged_by_min(key: &str) -> bool {
    matches!(
        key,
        "message-ttl"
            | "max-length"
            | "max-length-bytes"
            | "max-in-memory-length"
            | "max-in-memory-bytes"
            | "expires"
            | "delivery-limit"
    )
}

impl Applied {
    pub fn is_empty(&self) -> bool {
        self.policy.is_none() && self.operator.is_none()
    }

    pub fn policy_name(&self) -> Option<&str> {
        self.policy.as_ref().map(|p| p.name.as_str())
    }

    pub fn operator_name(&self) -> Option<&str> {
        self.operator.as_ref().map(|p| p.name.as_str())
    }

    /// One key of the merged definition.
    pub fn get(&self, key: &str) -> Option<Value> {
        let p = self.policy.as_ref().and_then(|p| p.definition.get(key));
        let o = self.operator.as_ref().and_then(|p| p.definition.get(key));
        match (p, o) {
            (Some(p), Some(o)) => Some(merge(key, p, o)),
            (p, o) => p.or(o).cloned(),
        }
    }

    /// RabbitMQ's `effective_policy_definition`: the policy's definition with the operator
    /// policy's merged in.
    pub fn effective_definition(&self) -> BTreeMap<String, Value> {
        let mut out: BTreeMap<String, Value> = BTreeMap::new();
        for def in [&self.policy, &self.operator].into_iter().flatten() {
            for key in def.definition.keys() {
                if let Some(v) = self.get(key) {
                    out.insert(key.clone(), v);
                }
            }
        }
        out
    }

    fn number(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(|v| v.as_u64())
    }

    fn string(&self, key: &str) -> Option<ShortStr> {
        self.get(key).and_then(|v| v.as_str().map(|s| ShortStr::from(s.to_string())))
    }

    /// A queue's settings: its declared arguments resolved against this policy as RabbitMQ
    /// 3.10 resolves them (see the module's notes).
    pub fn resolve_queue(&self, declared: &QueueArguments, arguments: &FieldTable) -> QueueArguments {
        let mut a = declared.clone();
        if self.is_empty() {
            return a;
        }
        if declared.stream {
            // A stream takes the policy's value over its argument (rabbit_stream_queue's
            // policy_precedence).
            a.max_length_bytes = self.number("max-length-bytes").or(declared.max_length_bytes);
            a.max_age =
                self.string("max-age").and_then(|s| crate::broker::arguments::parse_max_age(&s)).or(declared.max_age);
            a.max_segment_bytes = self.number("stream-max-segment-size-bytes").or(declared.max_segment_bytes);
            return a;
        }
        let lower = |arg: Option<u64>, policy: Option<u64>| match (arg, policy) {
            (Some(a), Some(p)) => Some(a.min(p)),
            (a, p) => a.or(p),
        };
        a.message_ttl = lower(declared.message_ttl, self.number("message-ttl"));
        a.max_length = lower(declared.max_length, self.number("max-length"));
        a.max_length_bytes = lower(declared.max_length_bytes, self.number("max-length-bytes"));
        a.delivery_limit = lower(declared.delivery_limit, self.number("delivery-limit"));
        a.dead_letter_exchange = declared.dead_letter_exchange.clone().or_else(|| self.string("dead-letter-exchange"));
        a.dead_letter_routing_key =
            declared.dead_letter_routing_key.clone().or_else(|| self.string("dead-letter-routing-key"));
        let overflow = self.string("overflow").and_then(|s| overflow(&s));
        if declared.quorum {
            // A quorum queue gives the policy's overflow and expires precedence.
            a.expires = self.number("expires").or(declared.expires);
            a.overflow = overflow.unwrap_or(declared.overflow);
        } else {
            a.expires = lower(declared.expires, self.number("expires"));
            if arguments.get("x-overflow").is_none() {
                a.overflow = overflow.unwrap_or(declared.overflow);
            }
        }
        a
    }

    /// An exchange's alternate exchange: its own argument, else the policy's.
    pub fn alternate_exchange(&self, arguments: &FieldTable) -> Option<ShortStr> {
        match arguments.get("alternate-exchange").and_then(|v| v.as_str()) {
            Some(ae) => Some(ShortStr::from(ae.to_string())),
            None => self.string("alternate-exchange"),
        }
    }
}

fn overflow(s: &str) -> Option<Overflow> {
    match s {
        "drop-head" => Some(Overflow::DropHead),
        "reject-publish" => Some(Overflow::RejectPublish),
        "reject-publish-dlx" => Some(Overflow::RejectPublishDlx),
        _ => None,
    }
}

/// RabbitMQ's merge of a policy's and an operator policy's value for one key.
fn merge(key: &str, policy: &Value, operator: &Value) -> Value {
    if merged_by_min(key) {
        if let (Some(p), Some(o)) = (policy.as_f64(), operator.as_f64()) {
            return if o < p { operator.clone() } else { policy.clone() };
        }
    }
    // Booleans (and anything else): the operator's.
    operator.clone()
}

mod apply;
mod validate;
pub use apply::PolicyError;
pub use validate::{erlang_term, validate, PolicyRequest};

#[cfg(test)]
mod tests;
